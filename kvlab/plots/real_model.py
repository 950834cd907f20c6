"""Chapter 11 · a real model: where its attention goes, and its perplexity as a long text outgrows the cache."""

from __future__ import annotations

from ..checks import check_int
from . import _checks
from ._style import axes, legend


def plot_first_token_attention(shares, ax=None, title: str | None = None):
    """Heatmap of the share of attention each layer's heads give the first token (`kvlab.streaming`'s
    `first_token_attention`): rows are layers, columns heads, 0 (white) to 1 (dark)."""
    rows = [list(row) for row in (shares.tolist() if hasattr(shares, "tolist") else shares)]
    if not rows or not rows[0]:
        raise ValueError("shares must be a (n_layer, n_head) table of shares with at least one row and column")
    rows = [_checks.check_values(f"shares[{i}]", row, inclusive=True, length=len(rows[0]))
            for i, row in enumerate(rows)]
    if max(max(row) for row in rows) > 1:
        raise ValueError(f"shares are attention weights, at most 1, got {max(max(row) for row in rows)}")
    fig, ax = axes(ax, figsize=(4.8, 5.6))
    image = ax.imshow(rows, cmap="Blues", vmin=0.0, vmax=1.0, aspect="auto")
    ax.set_xticks(range(len(rows[0])))
    ax.set_xlabel("query head")
    ax.set_ylabel("layer")
    fig.colorbar(image, ax=ax, label="share of attention on the first token", shrink=0.8)
    ax.set_title(title or "Attention on the first token, per layer and head")
    return fig


def plot_rolling_perplexity(curves: dict, budget: int, width: int, ax=None, title: str | None = None):
    """Perplexity over the last `width` positions against position in the text, one line per cache policy.

    `curves` maps a policy's name to its values (`kvlab.streaming.rolling_perplexity`); position t's value
    covers the predictions made at positions t - width + 1 .. t; the first width - 1 values average fewer tokens (the
    very first ones, with almost no context, are in the thousands) and are not drawn. A dotted line marks `budget`,
    where the evicting caches begin to drop tokens. The y axis is logarithmic: perplexity multiplies.
    """
    curves = _checks.check_entries("curves", curves, "{policy: [perplexity per position]}")
    length = len(next(iter(curves.values())))
    curves = _checks.check_curves("curves", {k: list(map(float, v)) for k, v in curves.items()}, length)
    budget, width = check_int("budget", budget, 1), check_int("width", width, 1, length)
    fig, ax = axes(ax)
    for label, values in curves.items():
        ax.plot(range(width, length + 1), values[width - 1:], label=label)
    ax.axvline(budget, color="black", linestyle=":", label=f"budget ({budget} tokens)")
    ax.set_yscale("log")
    ax.set_xlabel("position in the text (tokens)")
    ax.set_ylabel(f"perplexity over the last {width} tokens")
    ax.set_title(title or "Perplexity as the text grows past the cache's budget")
    legend(ax)
    return fig
