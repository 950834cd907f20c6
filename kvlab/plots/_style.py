"""The look every chapter's figures share: a modest figure size and dpi, readable text, plain log tick labels."""

from __future__ import annotations

import matplotlib.pyplot as plt
from matplotlib.ticker import FuncFormatter

TEXT_PT = 10  # legend and tick text, in points: the smallest that still reads on a projector (dpi 80: 11 px)


def axes(ax=None, figsize=(6.4, 4.0)):
    """(figure, axes) to draw into: the given axes' figure, or a fresh small figure (dpi 80 keeps notebooks light)."""
    if ax is None:
        _, ax = plt.subplots(figsize=figsize, dpi=80, layout="constrained")
    readable_ticks(ax)
    return ax.figure, ax


def panels(axes_given, ncols: int, figsize):
    """(figure, axes) for a figure of `ncols` side-by-side panels: the given axes, or a fresh row of them."""
    if axes_given is None:
        _, axes_given = plt.subplots(1, ncols, figsize=figsize, dpi=80, layout="constrained")
    for ax in axes_given:
        readable_ticks(ax)
    return axes_given[0].figure, axes_given


def readable_ticks(ax) -> None:
    """Tick labels at `TEXT_PT`, whatever the reader's matplotlib defaults (call again after ``ax.clear()``)."""
    ax.tick_params(which="both", labelsize=TEXT_PT)


def legend(target, **kwargs):
    """`target.legend(...)` (an Axes or a Figure) with its text at `TEXT_PT`: one size for every chapter's legends."""
    return target.legend(fontsize=TEXT_PT, **kwargs)


def plain_log2_ticks(ax) -> None:
    """Label a base-2 log x axis 1, 2, 4, ... rather than 2^0, 2^1, 2^2."""
    ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
