"""Chapter 05 · prefill, decode and the roofline: intensity, roofs with points, TTFT/TPOT, the batch sweep, and
what the cache saves in FLOPs against time."""

from __future__ import annotations

from ..checks import check_number
from . import _checks
from ._style import TEXT_PT, axes, legend, panels, plain_log2_ticks


def _rate(value: float, unit: str) -> str:
    """'312 TFLOP/s', '36 GFLOP/s', '2.04 TB/s', '12.2 GB/s': the largest decimal prefix that keeps it >= 1."""
    for prefix, scale in (("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6)):
        if value >= scale:
            return f"{value / scale:.3g} {prefix}{unit}"
    return f"{value:.3g} {unit}"


def _log_log_ms(ax, xlabel: str, title: str) -> None:
    """The axes of a time-against-length figure: log2 lengths with plain ticks, log milliseconds, grid, legend."""
    ax.set_xscale("log", base=2)
    plain_log2_ticks(ax)
    ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("time (ms)")
    ax.set_title(title)
    ax.grid(True, which="major", alpha=0.3)
    legend(ax)


def plot_intensity(series, ridges=None, ax=None, title: str | None = None):
    """Arithmetic intensity (FLOP/byte) against the tokens one forward processes, log-log, with ridge points.

    `series` maps a label to (tokens, intensities), e.g. prefill against its prompt length P and decode against its
    batch size B. `ridges` maps a machine to its ridge point, drawn as a horizontal line: a phase below a machine's
    line is memory-bound there, above it compute-bound.
    """
    series = _checks.check_xy_series("series", series, required=True)
    ridges = {} if ridges is None else _checks.check_entries("ridges", ridges, "{machine: FLOP/byte}")
    ridges = {label: check_number(f"ridges[{label!r}]", r, 0, inclusive=False) for label, r in ridges.items()}
    fig, ax = axes(ax)
    for i, (label, (xs, ys)) in enumerate(series.items()):
        ax.plot(xs, ys, "o-", color=f"C{i}", label=label, markersize=4)
    for j, (label, ridge) in enumerate(ridges.items()):
        ax.axhline(ridge, color="0.3", linestyle=(0, (1 + j, 2)), linewidth=1)
        ax.annotate(f"ridge: {label} ({ridge:.3g})", (0.01, ridge), xycoords=("axes fraction", "data"),
                    xytext=(0, 2), textcoords="offset points", fontsize=TEXT_PT, color="0.3")
    ax.set_xscale("log", base=2)
    plain_log2_ticks(ax)
    ax.set_yscale("log")
    ax.set_xlabel("tokens per forward (prompt length P for prefill, batch size B for decode)")
    ax.set_ylabel("arithmetic intensity (FLOP/byte)")
    ax.set_title(title or "Prefill and batched decode gain intensity; long caches cap decode")
    ax.grid(True, which="major", alpha=0.3)
    legend(ax, loc="lower right")
    return fig


def plot_roofline(roofs, points=None, labels=None, ax=None, title: str | None = None):
    """The roofline of one or more machines, with measured or predicted points (log-log).

    `roofs` maps a machine to (peak FLOP/s, bandwidth bytes/s): its roof is min(peak, bandwidth · I), with a dotted
    line at its ridge point peak / bandwidth. `points` maps a label to (intensities, FLOP/s); `labels` optionally
    maps the same label to one short text per point (e.g. "P=8"), written next to it.
    """
    from ..hardware import attainable_flops, ridge_point

    roofs = _checks.check_entries("roofs", roofs, "{machine: (peak_flops, bandwidth)}")
    roofs = {name: (float(peak), float(bw)) for name, (peak, bw) in roofs.items()}
    ridges = {name: ridge_point(peak, bw) for name, (peak, bw) in roofs.items()}  # raises on bad numbers
    points = _checks.check_xy_series("points", points)
    labels = dict(labels or {})
    for label, texts in labels.items():
        if label not in points or len(list(texts)) != len(points[label][0]):
            raise ValueError(f"labels[{label!r}] must name a series of points and give one text per point")
    intensities = [x for xs, _ in points.values() for x in xs] + list(ridges.values())
    low, high = min(intensities) / 4, max(intensities) * 4
    grid = [low * (high / low) ** (i / 200) for i in range(201)]
    fig, ax = axes(ax, figsize=(6.4, 5.2))  # tall: the legend sits under the axes, not on the points
    for i, (name, (peak, bw)) in enumerate(roofs.items()):
        color = f"C{i}"
        ax.plot(grid, [attainable_flops(x, peak, bw) for x in grid], "-", color=color, linewidth=2,
                label=f"{name}: {_rate(peak, 'FLOP/s')}, {_rate(bw, 'B/s')}")
        ax.axvline(ridges[name], color=color, linestyle=":", linewidth=1)
    markers = "osD^vP*X"
    for j, (label, (xs, ys)) in enumerate(points.items()):
        ax.plot(xs, ys, markers[j % len(markers)], color=f"C{len(roofs) + j}", label=label, markersize=6)
        for x, y, text in zip(xs, ys, labels.get(label, [])):
            ax.annotate(str(text), (x, y), xytext=(4, -12), textcoords="offset points", fontsize=TEXT_PT)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(low, high)
    ax.set_xlabel("arithmetic intensity (FLOP/byte)")
    ax.set_ylabel("FLOP/s")
    ax.set_title(title or "Left of the ridge memory limits speed, right of it compute does")
    ax.grid(True, which="major", alpha=0.3)
    legend(ax, loc="upper center", bbox_to_anchor=(0.5, -0.15))
    return fig


def plot_ttft_tpot(prompt_lens, ttft_s, tpot_s, ax=None, title: str | None = None):
    """Time to first token and time per output token (milliseconds) against the prompt length, log-log."""
    prompt_lens = _checks.check_values("prompt_lens", prompt_lens)
    per_length = dict(length=len(prompt_lens))
    series = {"time to first token (prefill)": _checks.check_values("ttft_s", ttft_s, **per_length),
              "time per output token (one decode step)": _checks.check_values("tpot_s", tpot_s, **per_length)}
    fig, ax = axes(ax)
    for i, (label, ys) in enumerate(series.items()):
        ax.plot(prompt_lens, [y * 1e3 for y in ys], "o-", color=f"C{i}", label=label)
    _log_log_ms(ax, "prompt length P (tokens)",
                title or "The first token waits for the whole prompt; later tokens barely notice it")
    return fig


def plot_batch_sweep(batch_sizes, tokens_per_s, latency_s, budget_s: float = 0.05, axes=None):
    """Two panels against the batch size: decode throughput (tokens/s) and per-token latency (ms, with a budget).

    Batching shares every weight read among the rows, so throughput rises almost in proportion while each step,
    hence each user's wait per token, gets only a little slower, until the budget line says users would notice.
    """
    batch_sizes = _checks.check_values("batch_sizes", batch_sizes)
    tokens_per_s = _checks.check_values("tokens_per_s", tokens_per_s, length=len(batch_sizes))
    latency_s = _checks.check_values("latency_s", latency_s, length=len(batch_sizes))
    budget_s = check_number("budget_s", budget_s, 0, inclusive=False)
    fig, axes = panels(axes, 2, figsize=(9.6, 3.8))
    left, right = axes
    left.plot(batch_sizes, tokens_per_s, "o-", color="C0")
    left.set_ylabel("decode throughput (tokens/s, all rows)")
    gain = tokens_per_s[-1] / tokens_per_s[0]
    left.set_title(f"Throughput x{gain:.1f} from batch {batch_sizes[0]:g} to {batch_sizes[-1]:g}")
    ms = [y * 1e3 for y in latency_s]
    right.plot(batch_sizes, ms, "o-", color="C1", label="measured time per output token")
    right.axhline(budget_s * 1e3, color="tab:red", linestyle="--", label=f"budget: {budget_s * 1e3:g} ms per token")
    over = [b for b, y in zip(batch_sizes, latency_s) if y > budget_s]
    finding = f"over budget from batch {over[0]:g}" if over else "and stays under budget"
    right.set_title(f"Per-token latency rises too, {finding}")
    right.set_ylabel("time per output token (ms)")
    right.set_ylim(min(ms) / 2, max(max(ms), budget_s * 1e3) * 2)
    legend(right, loc="upper left")
    for ax in axes:
        ax.set_xscale("log", base=2)
        plain_log2_ticks(ax)
        ax.set_yscale("log")
        ax.set_xlabel("batch size B (sequences decoded together)")
        ax.grid(True, which="major", alpha=0.3)
    return fig


def plot_cache_savings(flops_saved, time_saved, measured=None, ax=None, title: str | None = None):
    """How many times fewer FLOPs, and how many times less time, a KV cache needs, as the generation grows (log-log).

    `flops_saved` maps a model to (lengths T, FLOP ratios); `time_saved` maps a (machine, model) pair to (lengths,
    time ratios), e.g. roofline estimates; `measured` maps a label to measured (lengths, time ratios), drawn as
    markers. Each machine gets a colour and each model a line style (FLOP lines are black), so a machine's models
    can be told apart even where their curves lie on top of each other.
    """
    flops_saved = _checks.check_xy_series("flops_saved", flops_saved, required=True)
    time_saved = _checks.check_xy_series("time_saved", time_saved, required=True)
    measured = _checks.check_xy_series("measured", measured)
    for key in time_saved:
        if not (isinstance(key, tuple) and len(key) == 2):
            raise TypeError(f"time_saved's keys must be (machine, model) pairs, got {key!r}")
    models = list(dict.fromkeys([*flops_saved, *(model for _, model in time_saved)]))
    machines = list(dict.fromkeys(machine for machine, _ in time_saved))
    styles = ["-", "--", ":", "-."]
    style = {model: styles[i % len(styles)] for i, model in enumerate(models)}
    fig, ax = axes(ax, figsize=(9.6, 4.4))
    for model, (xs, ys) in flops_saved.items():
        ax.plot(xs, ys, style[model], color="k", lw=2, label=f"FLOPs saved, {model}")
    labelled = set()
    for (machine, model), (xs, ys) in time_saved.items():
        colour = f"C{machines.index(machine)}"
        label = None if machine in labelled else f"time saved on {machine}"
        labelled.add(machine)
        ax.plot(xs, ys, style[model], color=colour, lw=1.5, label=label)
    for model in models:  # a model with time lines but no FLOP line still needs its line style in the key
        if model not in flops_saved:
            ax.plot([], [], style[model], color="0.4", lw=1.5, label=f"{model} (line style)")
    for j, (label, (xs, ys)) in enumerate(measured.items()):
        ax.plot(xs, ys, "os^D"[j % 4], color=f"C{len(machines) + j}", ms=7, label=label)
    ax.axhline(1, color="0.5", lw=0.8)
    ax.set_xscale("log", base=2)
    plain_log2_ticks(ax)
    ax.set_yscale("log")
    ax.set_xlabel("tokens generated, T (1-token prompt)")
    ax.set_ylabel("without cache ÷ with cache (×)")
    ax.set_title(title or "The cache saves far more FLOPs than time where decode is memory-bound")
    ax.grid(True, which="major", alpha=0.3)
    legend(ax, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    return fig


def plot_step_time_vs_length(measured, estimated=None, ax=None, title: str | None = None):
    """Milliseconds of one forward against the sequence length t, log-log: measured (markers) and roofline (dashed).

    `measured` and `estimated` map a label to (lengths t, seconds). With a cache a step feeds 1 token, without one
    all t, so the two lines show where re-feeding starts to cost time: where the uncached line leaves the cached one.
    Each estimate takes the colour of the measured series listed at the same place.
    """
    measured = _checks.check_xy_series("measured", measured, required=True)
    estimated = _checks.check_xy_series("estimated", estimated)
    fig, ax = axes(ax)
    for i, (label, (xs, ys)) in enumerate(measured.items()):
        ax.plot(xs, [y * 1e3 for y in ys], "o-", color=f"C{i}", ms=4, label=label)
    for i, (label, (xs, ys)) in enumerate(estimated.items()):
        ax.plot(xs, [y * 1e3 for y in ys], "--", color=f"C{i}", lw=1.2, label=label)
    _log_log_ms(ax, "sequence length t (one forward each)", title or "Time of one step with and without a cache")
    return fig
