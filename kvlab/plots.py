"""Figures for the chapters. Each function draws one idea and returns the matplotlib Figure.

Functions take plain numbers (lists, dicts, dataclasses from kvlab) and an optional ``ax`` to draw into, so a widget
can redraw the same picture and a test can call them without a browser. matplotlib is imported here only, never by
``import kvlab``.
"""

from __future__ import annotations

import matplotlib.pyplot as plt

__all__: list[str] = []


def _axes(ax=None, figsize=(6.4, 4.0)):
    """The axes to draw into: the given one, or a fresh figure's."""
    if ax is None:
        _, ax = plt.subplots(figsize=figsize, dpi=80, layout="constrained")
    return ax.figure, ax
