"""Chapter 03 · building the cache: the bytes a cache copies over a generation, counted and by formula."""

from __future__ import annotations

from . import _checks
from ._style import axes, legend


def copied_bytes_vs_length(lengths, measured: dict, formula: dict | None = None, ax=None):
    """Total bytes a cache copies over a generation, against the tokens it holds at the end, on log-log axes.

    `measured` and `formula` map a label (e.g. "DynamicCache (torch.cat)") to one byte count per length; measured
    counts are drawn as markers, the formula as a line through them. On log-log axes Θ(T²) is a line of slope 2 and
    Θ(T) one of slope 1.
    """
    lengths = list(lengths)
    _checks.check_values("lengths", lengths)  # a log axis needs a point, and no length <= 0
    measured = _checks.check_curves("measured", measured, len(lengths))
    formula = _checks.check_curves("formula", formula, len(lengths), required=False)
    fig, ax = axes(ax)
    for i, (label, values) in enumerate(measured.items()):
        color = f"C{i}"
        if label in formula:
            ax.plot(lengths, formula[label], "-", color=color, alpha=0.6, label=f"{label}: formula")
        ax.plot(lengths, values, "o", color=color, label=f"{label}: counted")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks(lengths, [str(t) for t in lengths])  # the measured lengths, not powers of ten
    ax.minorticks_off()
    ax.set_xlabel("tokens in the cache at the end, T")
    ax.set_ylabel("bytes copied by the cache, total (B)")
    ax.set_title("Concatenation copies Θ(T²) bytes, in-place writes Θ(T)")
    ax.grid(True, which="major", alpha=0.3)
    legend(ax)
    return fig
