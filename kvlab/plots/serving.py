"""Chapter 10 · serving many requests: the cache a paged layout reserves but does not use, against the block size."""

from __future__ import annotations

from ..checks import check_number
from . import _checks
from ._style import axes, legend, plain_log2_ticks


def plot_paging_waste(block_sizes, paged_bytes, contiguous_bytes: int, formula_bytes=None, ax=None,
                      title: str | None = None):
    """Reserved-but-unused cache bytes against the block size of a paged cache, with contiguous buffers as a line.

    `paged_bytes` (measured) and `formula_bytes` (optional, drawn as a line) hold one byte count per block size;
    `contiguous_bytes` is the waste of one `max_len` buffer per request, which does not depend on the block size.
    """
    block_sizes = _checks.check_values("block_sizes", block_sizes, minimum=1, inclusive=True, integer=True)
    byte_counts = dict(inclusive=True, length=len(block_sizes))  # waste may be 0: a linear axis from 0
    paged_bytes = _checks.check_values("paged_bytes", paged_bytes, **byte_counts)
    if formula_bytes is not None:
        formula_bytes = _checks.check_values("formula_bytes", formula_bytes, **byte_counts)
    contiguous_bytes = check_number("contiguous_bytes", contiguous_bytes, 0)
    fig, ax = axes(ax)
    kib = 1024
    ax.axhline(contiguous_bytes / kib, color="C3", label="contiguous: one max_len buffer per request")
    if formula_bytes is not None:
        ax.plot(block_sizes, [b / kib for b in formula_bytes], "-", color="C0", alpha=0.6, label="paged: formula")
    ax.plot(block_sizes, [b / kib for b in paged_bytes], "o", color="C0", label="paged: measured (PagedCache)")
    ax.set_xscale("log", base=2)
    ax.set_xticks(block_sizes)
    plain_log2_ticks(ax)
    ax.minorticks_off()
    ax.set_ylim(bottom=0)
    ax.set_xlabel("block size (tokens per block)")
    ax.set_ylabel("reserved but unused cache (KiB)")
    ax.set_title(title or "Paging wastes less than one block per request")
    ax.grid(True, which="major", alpha=0.3)
    legend(ax, loc="center left")
    return fig
