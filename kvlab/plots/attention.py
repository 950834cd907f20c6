"""Chapter 02 · attention from "h" to "hello": one head's attention weights, and the scores a cache saves per step."""

from __future__ import annotations

from collections.abc import Iterable

import matplotlib.pyplot as plt
import numpy as np

from ._style import axes, legend, panels, readable_ticks


def position_labels(T: int, tokens=None) -> list[str]:
    """'1 h', '2 e', ...: 1-based positions, with their tokens when given (newlines and spaces made visible).

    Widgets call it before their first redraw, so that tokens that do not fit T fail at once.
    """
    if tokens is None:
        return [str(i) for i in range(1, T + 1)]
    if not isinstance(tokens, Iterable):  # a str is fine: one character per position
        raise TypeError(f"tokens must be a list of labels, one per position, got {type(tokens).__name__}")
    tokens = list(tokens)
    if len(tokens) != T:
        raise ValueError(f"tokens must have one entry per position: {T} positions, {len(tokens)} tokens")
    visible = {" ": "␣", "\n": "⏎"}
    return [f"{i} {visible.get(str(tok), str(tok))}" for i, tok in enumerate(tokens, 1)]


def plot_attention_weights(weights, tokens=None, ax=None,
                           title: str = "causal attention: query t looks at keys 1..t only"):
    """Heatmap of one head's (T, T) attention weights; the causally masked cells (key after query) are grey.

    Row t is the softmax that mixes v_1..v_t into Att_t, so each coloured row sums to 1. `tokens` labels the
    positions (one string per position).
    """
    w = _checked_weights(weights)
    T = w.shape[0]
    labels = position_labels(T, tokens)
    fig, ax = axes(ax, figsize=(4.8, 4.0))
    masked = np.ma.masked_where(np.triu(np.ones((T, T), dtype=bool), k=1), w)
    cmap = plt.get_cmap("viridis").with_extremes(bad="0.85")  # masked cells grey
    image = ax.imshow(masked, cmap=cmap, vmin=0.0, vmax=1.0)
    if T <= 12:
        for i in range(T):
            for j in range(i + 1):
                ax.text(j, i, f"{w[i, j]:.2f}", ha="center", va="center", fontsize=9,
                        color="black" if w[i, j] > 0.6 else "white")
    ax.set_xticks(range(T), labels)
    ax.set_yticks(range(T), labels)
    ax.set_xlabel("key position j (token)")
    ax.set_ylabel("query position t (token)")
    ax.set_title(title)
    fig.colorbar(image, ax=ax, label="attention weight (probability)", shrink=0.8)
    return fig


ROW_SUM_TOLERANCE = 0.01  # a softmax row sums to 1 up to rounding: about 0.004 at most in bfloat16


def _checked_weights(weights) -> np.ndarray:
    """`weights` as a (T, T) float array, if it holds causal attention probabilities (softmax outputs).

    A heatmap with a 0..1 colour scale draws NaN as a hole and raw scores as a saturated block without a word, so
    those are refused: every weight finite and >= 0, none above the diagonal (a query gives no weight to later
    keys), and each row summing to 1, or to 0 for a query whose keys were all masked.
    """
    if hasattr(weights, "detach"):  # a torch tensor, possibly on a GPU, possibly in a dtype numpy lacks (bfloat16)
        weights = weights.detach().cpu().double()
    try:
        w = np.asarray(weights if weights is not None else {}, dtype=float)  # None would become a NaN
    except (TypeError, ValueError):
        raise TypeError(f"weights must be a (T, T) tensor or array of attention weights, "
                        f"got {type(weights).__name__}") from None
    if w.ndim != 2 or w.shape[0] != w.shape[1] or w.shape[0] == 0:
        raise ValueError(f"weights must be a square (T, T) matrix with T >= 1, got shape {w.shape}")
    advice = "pass softmax outputs, e.g. trace_attention(...).weights"
    for bad, what in ((~np.isfinite(w), "finite"), (w < 0, "probabilities (>= 0)"),
                      (np.triu(w, k=1) != 0, "0 above the diagonal (a query gives no weight to later keys)")):
        if bad.any():
            i, j = np.argwhere(bad)[0]
            raise ValueError(f"weights must be {what}, got weights[{i}, {j}] = {float(w[i, j])!r}; {advice}")
    sums = w.sum(axis=1)
    off = ~(np.isclose(sums, 1, rtol=0, atol=ROW_SUM_TOLERANCE) | (sums == 0))
    if off.any():
        i = int(np.argmax(off))
        raise ValueError(f"each row of weights must sum to 1 (a softmax; 0 for a fully masked query), row {i} sums "
                         f"to {float(sums[i])!r}; {advice}")
    return w


def plot_cache_step(t: int, T: int, tokens=None, axes=None):
    """Two T×T score grids at decode step t: without a cache rows 1..t are all (re)computed, with one only row t.

    Step t feeds token t and predicts token t + 1; t = 0 draws the empty grids before the first step. The colours
    are the states of `kvlab.attention_trace.cache_step_grid`; the titles count the scores q_i · k_j each side
    computes at this step: t(t+1)/2 without a cache, t with one.
    """
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    from ..attention_trace import CELL_STATES, cache_step_grid

    grids = {use_cache: np.array(cache_step_grid(t, T, use_cache)) for use_cache in (False, True)}
    labels = position_labels(T, tokens)
    colours = ["white", "0.85", "#a6cee3", "#e31a1c", "#ff7f00", "#33a02c"]
    fig, axes = panels(axes, 2, figsize=(9.6, 4.8))
    for old in list(fig.legends):  # redrawing into the same figure: replace the legend, do not stack them
        old.remove()
    for ax, use_cache in zip(axes, (False, True)):
        grid = grids[use_cache]
        ax.clear()
        readable_ticks(ax)
        ax.imshow(grid, cmap=ListedColormap(colours), vmin=-0.5, vmax=len(colours) - 0.5)
        ax.set_xticks(np.arange(T + 1) - 0.5, minor=True)
        ax.set_yticks(np.arange(T + 1) - 0.5, minor=True)
        ax.grid(which="minor", color="0.5", linewidth=0.5)
        ax.tick_params(which="minor", length=0)
        ax.set_xticks(range(T), labels, rotation=90 if T > 8 else 0)
        ax.set_yticks(range(T), labels)
        ax.set_xlabel("key position j (k_j, v_j)")
        ax.set_ylabel("query position i (q_i)")
        computed = int(np.isin(grid, (3, 4, 5)).sum())
        side = "with a KV cache" if use_cache else "without a cache"
        # two short lines, narrower than the grid: a title wider than the grid would widen the figure at some t only
        ax.set_title(f"{side}\n{computed} score{'s' * (computed != 1)} at step {t}")
        if use_cache and t >= 1 and T <= 8:
            for j in range(t):
                ax.text(j, t - 1, "cache" if j < t - 1 else "new", ha="center", va="center", fontsize=8)
    # Every state, even those not on the grids yet: the legend, hence the layout, is the same at every t, so a
    # slider over t does not make the figure (and the page) jump.
    legend(fig, handles=[Patch(facecolor=colour, edgecolor="0.5", label=CELL_STATES[s]) for s, colour in
                         enumerate(colours)], loc="outside lower center", ncol=2, frameon=False)
    title = ("step 0: no token fed yet" if t == 0 else
             f"step {t} of {T}: feeds token {t}; only row {t} is new, so a cache computes just that row")
    fig.suptitle(title)
    return fig
