"""Chapter 10 · serving many requests: the cache a paged layout reserves but does not use, against the block size;
the blocks a scheduler keeps in use, step by step."""

from __future__ import annotations

from ..checks import check_int, check_number
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


def plot_blocks_in_use(series: dict, pool_blocks: int | None = None, ax=None, title: str | None = None):
    """Blocks of the pool in use after every scheduler step, one line per run (`ScheduleResult.blocks_in_use`).

    Runs of the same requests under different policies take different numbers of steps, so each line has its own
    length: where a line ends, that run has served every request. `pool_blocks` (optional) draws the pool's size,
    the ceiling no line can cross; a run that touches it is one that had to preempt.
    """
    series = _checks.check_entries("series", series, "{label: [blocks after each step]}")
    series = {label: _checks.check_values(f"series[{label!r}]", counts, inclusive=True, integer=True)
              for label, counts in series.items()}
    if pool_blocks is not None:
        pool_blocks = check_int("pool_blocks", pool_blocks, 1)
    fig, ax = axes(ax)
    for label, counts in series.items():
        ax.step(range(1, len(counts) + 1), counts, where="post", label=f"{label} ({len(counts)} steps)")
    if pool_blocks is not None:
        ax.axhline(pool_blocks, color="0.3", linestyle="--", label=f"pool size ({pool_blocks} blocks)")
    ax.set_ylim(bottom=0)
    ax.set_xlabel("scheduler step")
    ax.set_ylabel("blocks in use")
    ax.set_title(title or "Blocks in use after every step")
    ax.grid(True, alpha=0.3)
    legend(ax)
    return fig
