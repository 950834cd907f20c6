"""The look every chapter's figures share: a modest figure size and dpi, and plain tick labels on log axes."""

from __future__ import annotations

import matplotlib.pyplot as plt
from matplotlib.ticker import FuncFormatter


def axes(ax=None, figsize=(6.4, 4.0)):
    """(figure, axes) to draw into: the given axes' figure, or a fresh small figure (dpi 80 keeps notebooks light)."""
    if ax is None:
        _, ax = plt.subplots(figsize=figsize, dpi=80, layout="constrained")
    return ax.figure, ax


def panels(axes_given, ncols: int, figsize):
    """(figure, axes) for a figure of `ncols` side-by-side panels: the given axes, or a fresh row of them."""
    if axes_given is None:
        _, axes_given = plt.subplots(1, ncols, figsize=figsize, dpi=80, layout="constrained")
    return axes_given[0].figure, axes_given


def plain_log2_ticks(ax) -> None:
    """Label a base-2 log x axis 1, 2, 4, ... rather than 2^0, 2^1, 2^2."""
    ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
