"""Chapter 04 · cost with and without a cache: FLOPs and seconds against length, the saving, and where FLOPs go."""

from __future__ import annotations

from . import _checks
from ._style import axes, legend, panels, plain_log2_ticks

_CACHE_STYLE = {"with cache": "C0", "without cache": "C3"}  # the same colours in every chapter-04 figure


def plot_cost_vs_length(lengths, flops: dict, counted: dict | None = None, seconds: dict | None = None, *,
                        fit_from: float | None = None, xlabel: str = "sequence length t (tokens)",
                        title: str | None = None, ax=None):
    """FLOPs (formula and counted) and wall-clock seconds against length, on one pair of log-log axes.

    `flops`, `counted` and `seconds` map a label ("with cache", "without cache") to one value per length. FLOPs
    and seconds have different units, so each kind is divided by its own value at the first length of its first
    label: both start at 1 and a power law c·t^k keeps its slope k. The legend gives the slope that
    `kvlab.measure.loglog_slope` fits through the points with length >= `fit_from`.
    """
    from ..measure import loglog_slope

    lengths = _checks.check_values("lengths", lengths)
    flops = _checks.check_curves("flops", flops, len(lengths))
    counted = _checks.check_curves("counted", counted, len(lengths), required=False)
    seconds = _checks.check_curves("seconds", seconds, len(lengths), required=False)
    fig, ax = axes(ax, figsize=(9.6, 4.0))  # wide: the legend sits right of the curves, not on them
    flop_unit = next(iter(flops.values()))[0]
    time_unit = next(iter(seconds.values()))[0] if seconds else 1.0

    def slope(values) -> str:
        return f" (slope {loglog_slope(lengths, values, fit_from):.2f})" if fit_from is not None else ""

    for i, (label, values) in enumerate(flops.items()):
        colour = _CACHE_STYLE.get(label, f"C{i}")
        ax.plot(lengths, [v / flop_unit for v in values], "-", color=colour, lw=2, alpha=0.7,
                label=f"{label}: FLOPs, formula{slope(values)}")
        if label in counted:
            ax.plot(lengths, [v / flop_unit for v in counted[label]], "o", mfc="none", color=colour, ms=8,
                    label=f"{label}: FLOPs, counted by PyTorch")
        if label in seconds:
            ax.plot(lengths, [v / time_unit for v in seconds[label]], ":s", color=colour, ms=4,
                    label=f"{label}: seconds, measured{slope(seconds[label])}")
    if fit_from is not None:
        ax.axvspan(fit_from, max(lengths), color="0.9", zorder=0, label="range of the slope fits")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    plain_log2_ticks(ax)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("cost ÷ cost at the first length (no unit)")
    ax.set_title(title or "Cost against length, FLOPs and time on one scale")
    ax.grid(True, which="major", alpha=0.3)
    legend(ax, loc="upper left", bbox_to_anchor=(1.01, 1))
    return fig


def plot_cache_speedup(lengths, flop_ratio, time_ratio=None, bounds: dict | None = None, *,
                       title: str | None = None, ax=None):
    """How many times less work (FLOPs) and time a whole generation takes with a cache, against its length.

    `flop_ratio` and `time_ratio` hold one ratio (without cache ÷ with cache) per length; `bounds` maps a label
    such as "(T+1)/2" to reference values drawn as thin dashed lines.
    """
    lengths = _checks.check_values("lengths", lengths)
    flop_ratio = _checks.check_values("flop_ratio", flop_ratio, length=len(lengths))
    if time_ratio is not None:
        time_ratio = _checks.check_values("time_ratio", time_ratio, length=len(lengths))
    bounds = _checks.check_curves("bounds", bounds, len(lengths), required=False)
    fig, ax = axes(ax)
    for k, (label, values) in enumerate(bounds.items()):
        ax.plot(lengths, values, "--", color="0.5", lw=1, dashes=(4, 2 + 2 * k), label=label)
    ax.plot(lengths, flop_ratio, "-o", color="C2", ms=4, label="FLOPs saved (formula)")
    if time_ratio is not None:
        ax.plot(lengths, time_ratio, ":s", color="C4", ms=4, label="time saved (measured)")
    ax.axhline(1, color="k", lw=0.8)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    plain_log2_ticks(ax)
    ax.set_xlabel("tokens generated, T")
    ax.set_ylabel("without cache ÷ with cache (×)")
    ax.set_title(title or "The cache's saving grows in proportion to T")
    ax.grid(True, which="major", alpha=0.3)
    legend(ax)
    return fig


def plot_cost_split(step_lengths, step: dict, total_lengths, total: dict, *, t_star: float | None = None,
                    title: str | None = None, axes=None):
    """Where the FLOPs go: dense matmuls vs attention, with and without a cache; per step (left) and in total (right).

    `step` and `total` map "with cache" / "without cache" to ``{"dense": values, "attention": values}``, one value
    per entry of `step_lengths` / `total_lengths`. Dense parts are solid lines, attention parts dashed. `t_star`
    (where attention catches up with the dense matmuls in a step) is marked on the left when it is in range.
    """
    step_lengths = _checks.check_values("step_lengths", step_lengths)
    total_lengths = _checks.check_values("total_lengths", total_lengths)
    data = {}
    for name, xs, given in (("step", step_lengths, step), ("total", total_lengths, total)):
        modes = _checks.check_entries(name, given, "{mode: {part: values}}")
        data[name] = {mode: _checks.check_curves(f"{name}[{mode!r}]", parts, len(xs)) for mode, parts in modes.items()}
    fig, axes = panels(axes, 2, figsize=(10, 4.2))
    drawn = ((axes[0], step_lengths, data["step"], "sequence length t (tokens)", "FLOPs of one decode step"),
             (axes[1], total_lengths, data["total"], "tokens generated, T", "FLOPs of the whole generation"))
    for ax, xs, modes, xlabel, ylabel in drawn:
        for i, (mode, parts) in enumerate(modes.items()):
            for part, values in parts.items():
                ax.plot(xs, values, "-" if part == "dense" else "--", color=_CACHE_STYLE.get(mode, f"C{i}"),
                        marker="o" if len(xs) == 1 else None, label=f"{mode}: {part}")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(True, which="major", alpha=0.3)
    if t_star is not None and min(step_lengths) <= t_star <= max(step_lengths):
        axes[0].axvline(float(t_star), color="0.3", lw=1, label=f"t* = {float(t_star):,.0f}")
    legend(axes[0])
    fig.suptitle(title or "Dense matmuls and attention, with and without a KV cache")
    return fig
