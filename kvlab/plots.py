"""Figures for the chapters. Each function draws one idea and returns the matplotlib Figure.

Functions take plain numbers (lists, dicts, dataclasses from kvlab) and an optional ``ax`` to draw into, so a widget
can redraw the same picture and a test can call them without a browser. matplotlib is imported here only, never by
``import kvlab``.
"""

from __future__ import annotations

import math
import numbers

import matplotlib.pyplot as plt

from . import memory
from .measure import cumulative_tokens_per_s  # chapter 01
from .flops import positions_processed  # chapter 01
from .generate import GenerationStats  # chapter 01

__all__: list[str] = [
    "plot_cache_vs_weights", "plot_kv_heads", "plot_memory_report", "copied_bytes_vs_length",
    "plot_attention_weights", "plot_cache_step",
    "plot_intensity", "plot_roofline", "plot_ttft_tpot", "plot_batch_sweep",
    "plot_positions_per_step", "plot_step_times", "plot_throughput",
    "plot_cost_vs_length", "plot_cache_speedup", "plot_cost_split",
    "plot_paging_waste",  # chapter 09
    "plot_quality_vs_budget", "plot_bytes_per_step", "plot_memory_vs_quality",  # chapter 08
    "plot_benchmark",  # benchmarks
]


def _axes(ax=None, figsize=(6.4, 4.0)):
    """The axes to draw into: the given one, or a fresh figure's."""
    if ax is None:
        _, ax = plt.subplots(figsize=figsize, dpi=80, layout="constrained")
    return ax.figure, ax


# --- chapter 03: bytes copied by a cache ---

def copied_bytes_vs_length(lengths, measured: dict, formula: dict | None = None, ax=None):
    """Total bytes a cache copies over a generation, against the tokens it holds at the end, on log-log axes.

    `measured` and `formula` map a label (e.g. "DynamicCache (torch.cat)") to one byte count per length; measured
    counts are drawn as markers, the formula as a line through them. On log-log axes Θ(T²) is a line of slope 2 and
    Θ(T) one of slope 1.
    """
    lengths = list(lengths)
    if not lengths:
        raise ValueError("lengths must hold at least one length (a log axis needs a point)")
    for label, values in list(measured.items()) + list((formula or {}).items()):
        if len(values) != len(lengths):
            raise ValueError(f"{label!r} has {len(values)} values for {len(lengths)} lengths")
        if not all(0 < v < math.inf for v in list(values) + lengths):  # also rejects NaN
            raise ValueError(f"log axes need finite, positive lengths and byte counts; {label!r} has one that is not")
    fig, ax = _axes(ax)
    for i, (label, values) in enumerate(measured.items()):
        color = f"C{i}"
        if formula and label in formula:
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
    ax.legend()
    return fig


# --- chapter 06: KV-cache memory ---


def _gib(n_bytes: int) -> float:
    return n_bytes / memory.GIB


def _check_type(name: str, value, kind: type, hint: str) -> None:
    if not isinstance(value, kind):
        raise TypeError(f"{name} must be a {kind.__name__} ({hint}), got {value!r} ({type(value).__name__})")


def plot_cache_vs_weights(preset, batch_sizes=(1, 16, 64), dtype: str = "fp16", max_seq_len: int | None = None,
                          title: str | None = None, ax=None):
    """KV-cache GiB against seq_len for a few batch sizes, with the weights (same dtype) as a horizontal line.

    The cache is a straight line through 0 whose slope is batch_size × bytes per token; where it crosses the
    weights line, the GPU holds more remembered tokens than model. Dots mark the crossings within the plot.
    """
    _check_type("preset", preset, memory.ModelPreset, "see kvlab.memory.get_preset")
    width = memory.bytes_per_element(dtype)
    max_seq_len = preset.max_seq_len if max_seq_len is None else max_seq_len
    if isinstance(max_seq_len, bool) or not isinstance(max_seq_len, int) or max_seq_len < 1:
        raise ValueError(f"max_seq_len must be None or an int >= 1, got {max_seq_len!r}")
    if not batch_sizes:
        raise ValueError(f"batch_sizes must name at least one batch size, got {batch_sizes!r}")
    per_row = [preset.kv_cache_bytes(batch, 1, width) for batch in batch_sizes]  # also checks each batch size
    weights = _gib(preset.weight_bytes(width))
    fig, ax = _axes(ax)
    lengths = [0, max_seq_len]
    for batch, slope in zip(batch_sizes, per_row):
        line, = ax.plot(lengths, [_gib(preset.kv_cache_bytes(batch, t, width)) for t in lengths],
                        label=f"KV cache, batch {batch}")
        crossing = preset.weight_bytes(width) / slope if slope else float("inf")
        if crossing <= max_seq_len:
            ax.plot([crossing], [weights], "o", color=line.get_color())
    ax.axhline(weights, color="black", linestyle="--", label=f"weights ({preset.n_params / 1e9:g}B params)")
    ax.set_xlim(0, max_seq_len)
    ax.set_ylim(0, None)
    ax.set_xlabel("sequence length seq_len (tokens)")
    ax.set_ylabel(f"memory ({dtype}, GiB)")
    ax.set_title(title or f"{preset.name}: KV cache vs weights in {dtype}")
    ax.legend(loc="upper left")
    return fig


def plot_kv_heads(preset, dtype: str = "fp16", title: str | None = None, ax=None):
    """Cache bytes per token for every possible number of K/V heads of one model shape (bars, log scale).

    n_kv_head = n_head is multi-head attention, 1 is multi-query, anything between is grouped-query; the
    preset's own choice is drawn in a darker colour.
    """
    _check_type("preset", preset, memory.ModelPreset, "see kvlab.memory.get_preset")
    width = memory.bytes_per_element(dtype)
    options = [h for h in range(1, preset.n_head + 1) if preset.n_head % h == 0]
    per_token = [memory.kv_cache_bytes(preset.n_layer, 1, 1, preset.d_model, width, n_head=preset.n_head, n_kv_head=h)
                 for h in options]
    fig, ax = _axes(ax)
    colors = ["tab:blue" if h == preset.n_kv_head else "lightsteelblue" for h in options]
    bars = ax.bar([str(h) for h in options], [b / 1024 for b in per_token], color=colors)
    ax.bar_label(bars, labels=[f"{b / 1024:g}" for b in per_token], fontsize=8)
    ax.set_yscale("log", base=2)
    ax.set_xlabel(f"K/V heads n_kv_head (of n_head = {preset.n_head}; 1 = MQA, {preset.n_head} = MHA)")
    ax.set_ylabel(f"KV cache per token ({dtype}, KiB)")
    ax.set_title(title or f"{preset.name}: the cache per token is proportional to n_kv_head")
    return fig


def plot_memory_report(report, ax=None):
    """Weights + KV cache on one GPU against seq_len (at the report's batch size), with the GPU's capacity.

    Drawn from a `kvlab.memory.MemoryReport`: the weights are the grey floor, the cache the band on top of it,
    the dashed line is the GPU's memory, the dot the report's own seq_len, the dotted line the longest that fits.
    """
    _check_type("report", report, memory.MemoryReport, "see kvlab.memory.memory_report")
    r = report
    longest = r.max_seq_len if r.weights_fit else None
    x_max = max(2 * r.seq_len, 16, round(1.25 * longest) if longest else 0)
    lengths = [x_max * i // 64 for i in range(65)]
    width = memory.bytes_per_element(r.dtype)
    cache = [_gib(memory.kv_cache_bytes(r.n_layer, r.batch_size, t, r.d_model, width, n_head=r.n_head,
                                 n_kv_head=r.n_kv_head)) for t in lengths]
    weights, gpu = _gib(r.weight_bytes), _gib(r.gpu_bytes)
    total = [weights + c for c in cache]
    fig, ax = _axes(ax)
    ax.fill_between(lengths, 0, weights, color="lightgrey", label=f"weights ({r.weight_dtype})")
    ax.fill_between(lengths, weights, total, color="tab:blue", alpha=0.5, label=f"KV cache ({r.dtype})")
    ax.axhline(gpu, color="tab:red", linestyle="--", label=f"GPU memory ({gpu:g} GiB)")
    ax.plot([r.seq_len], [weights + _gib(r.cache_bytes)], "o", color="black", label=f"seq_len {r.seq_len:,}")
    if longest:
        ax.axvline(longest, color="tab:red", linestyle=":", label=f"longest that fits: {longest:,}")
    ax.set_xlim(0, x_max)
    ax.set_ylim(0, 1.1 * max(gpu, total[-1]))
    ax.set_xlabel(f"sequence length seq_len (tokens), batch {r.batch_size:,}")
    ax.set_ylabel("GPU memory used (GiB)")
    if not r.weights_fit:
        finding = f"the weights alone exceed {gpu:g} GiB"
    elif r.batch_size == 0:
        finding = "batch 0 caches nothing"
    else:
        verdict = "fits" if r.cache_fits else "does not fit"
        finding = f"seq_len {r.seq_len:,} {verdict} in {gpu:g} GiB (up to {longest:,})"
    ax.set_title(f"{r.name}, batch {r.batch_size:,}, {r.dtype}: {finding}")
    ax.legend(loc="upper left", fontsize=8)
    return fig


# --- chapter 02: attention from "h" to "hello" ---


def plot_attention_weights(weights, tokens=None, ax=None,
                           title: str = "causal attention: query t looks at keys 1..t only"):
    """Heatmap of one head's (T, T) attention weights; the causally masked cells (key after query) are grey.

    Row t is the softmax that mixes v_1..v_t into Att_t, so each coloured row sums to 1. `tokens` labels the
    positions (one string per position).
    """
    import numpy as np

    if hasattr(weights, "detach"):  # a torch tensor, possibly on a GPU
        weights = weights.detach().cpu()
    w = np.asarray(weights, dtype=float)
    if w.ndim != 2 or w.shape[0] != w.shape[1] or w.shape[0] == 0:
        raise ValueError(f"weights must be a square (T, T) matrix with T >= 1, got shape {w.shape}")
    T = w.shape[0]
    labels = _position_labels(T, tokens)
    fig, ax = _axes(ax, figsize=(4.8, 4.0))
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


def _position_labels(T: int, tokens=None) -> list[str]:
    """'1 h', '2 e', ...: 1-based positions, with their tokens when given (newlines and spaces made visible)."""
    if tokens is None:
        return [str(i) for i in range(1, T + 1)]
    tokens = list(tokens)
    if len(tokens) != T:
        raise ValueError(f"tokens must have one entry per position: {T} positions, {len(tokens)} tokens")
    visible = {" ": "␣", "\n": "⏎"}
    return [f"{i} {visible.get(str(tok), str(tok))}" for i, tok in enumerate(tokens, 1)]


def plot_cache_step(t: int, T: int, tokens=None, axes=None):
    """Two T×T score grids at decode step t: without a cache rows 1..t are all (re)computed, with one only row t.

    Step t feeds token t and predicts token t + 1; t = 0 draws the empty grids before the first step. The colours
    are the states of `kvlab.attention_trace.cache_step_grid`; the titles count the scores q_i · k_j each side
    computes at this step: t(t+1)/2 without a cache, t with one.
    """
    import numpy as np
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    from .attention_trace import CELL_STATES, cache_step_grid

    grids = {use_cache: np.array(cache_step_grid(t, T, use_cache)) for use_cache in (False, True)}
    labels = _position_labels(T, tokens)
    colours = ["white", "0.85", "#a6cee3", "#e31a1c", "#ff7f00", "#33a02c"]
    if axes is None:
        fig, axes = plt.subplots(1, 2, figsize=(9.6, 4.8), dpi=80, layout="constrained")
    fig = axes[0].figure
    for old in list(fig.legends):  # redrawing into the same figure: replace the legend, do not stack them
        old.remove()
    for ax, use_cache in zip(axes, (False, True)):
        grid = grids[use_cache]
        ax.clear()
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
        if t == 0:
            ax.set_title(f"{side}: nothing computed yet")
        else:
            ax.set_title(f"{side}: {computed} score{'s' * (computed != 1)} at step {t}")
        if use_cache and t >= 1 and T <= 8:
            for j in range(t):
                ax.text(j, t - 1, "cache" if j < t - 1 else "new", ha="center", va="center", fontsize=7)
    shown = sorted(set(np.unique(grids[False])) | set(np.unique(grids[True])))
    fig.legend(handles=[Patch(facecolor=colours[s], edgecolor="0.5", label=CELL_STATES[s]) for s in shown],
               loc="outside lower center", ncol=2, fontsize=8, frameon=False)
    title = ("step 0: no token fed yet" if t == 0 else
             f"step {t} of {T}: feeds token {t}; only row {t} is new, so a cache computes just that row")
    fig.suptitle(title)
    return fig


# --- chapter 05: prefill, decode and the roofline ---


def _xy_series(name: str, series) -> dict:
    """Check {label: (xs, ys)} for log-log axes: equal lengths, at least one point, every number > 0."""
    import math
    from numbers import Real

    if not hasattr(series, "items"):
        raise TypeError(f"{name} must be a dict {{label: (xs, ys)}}, got {type(series).__name__}")
    checked = {}
    for label, pair in series.items():
        try:
            xs, ys = (list(v) for v in pair)
        except (TypeError, ValueError):
            raise TypeError(f"{name}[{label!r}] must be a pair (xs, ys) of number lists, got {pair!r}") from None
        if not xs or len(xs) != len(ys):
            raise ValueError(f"{name}[{label!r}] needs as many ys as xs, at least one: got {len(xs)} and {len(ys)}")
        if not all(isinstance(v, Real) and not isinstance(v, bool) and math.isfinite(v) and v > 0 for v in xs + ys):
            raise ValueError(f"log axes need finite numbers > 0; {name}[{label!r}] has {xs!r}, {ys!r}")
        checked[label] = (xs, ys)
    return checked


def _rate(value: float, unit: str) -> str:
    """'312 TFLOP/s', '36 GFLOP/s', '2.04 TB/s', '12.2 GB/s': the largest decimal prefix that keeps it >= 1."""
    for prefix, scale in (("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6)):
        if value >= scale:
            return f"{value / scale:.3g} {prefix}{unit}"
    return f"{value:.3g} {unit}"


def _plain_log2_ticks(ax) -> None:
    """Label a base-2 log axis 1, 2, 4, ... rather than 2^0, 2^1, 2^2."""
    from matplotlib.ticker import FuncFormatter

    ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))


def plot_intensity(series, ridges=None, ax=None, title: str | None = None):
    """Arithmetic intensity (FLOP/byte) against the tokens one forward processes, log-log, with ridge points.

    `series` maps a label to (tokens, intensities), e.g. prefill against its prompt length P and decode against its
    batch size B. `ridges` maps a machine to its ridge point, drawn as a horizontal line: a phase below a machine's
    line is memory-bound there, above it compute-bound.
    """
    series = _xy_series("series", series)
    ridges = {} if ridges is None else dict(ridges)
    for label, ridge in ridges.items():
        if not (isinstance(ridge, (int, float)) and ridge > 0):
            raise ValueError(f"ridges[{label!r}] must be a number > 0 (FLOP/byte), got {ridge!r}")
    fig, ax = _axes(ax)
    for i, (label, (xs, ys)) in enumerate(series.items()):
        ax.plot(xs, ys, "o-", color=f"C{i}", label=label, markersize=4)
    for j, (label, ridge) in enumerate(ridges.items()):
        ax.axhline(ridge, color="0.3", linestyle=(0, (1 + j, 2)), linewidth=1)
        ax.annotate(f"ridge: {label} ({ridge:.3g})", (0.01, ridge), xycoords=("axes fraction", "data"),
                    xytext=(0, 2), textcoords="offset points", fontsize=8, color="0.3")
    ax.set_xscale("log", base=2)
    _plain_log2_ticks(ax)
    ax.set_yscale("log")
    ax.set_xlabel("tokens per forward (prompt length P for prefill, batch size B for decode)")
    ax.set_ylabel("arithmetic intensity (FLOP/byte)")
    ax.set_title(title or "Prefill and batched decode gain intensity; long caches cap decode")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return fig


def plot_roofline(roofs, points=None, labels=None, ax=None, title: str | None = None):
    """The roofline of one or more machines, with measured or predicted points (log-log).

    `roofs` maps a machine to (peak FLOP/s, bandwidth bytes/s): its roof is min(peak, bandwidth · I), with a dotted
    line at its ridge point peak / bandwidth. `points` maps a label to (intensities, FLOP/s); `labels` optionally
    maps the same label to one short text per point (e.g. "P=8"), written next to it.
    """
    from .hardware import attainable_flops, ridge_point

    if not hasattr(roofs, "items") or not roofs:
        raise ValueError(f"roofs must be a non-empty dict {{machine: (peak_flops, bandwidth)}}, got {roofs!r}")
    roofs = {name: (float(peak), float(bw)) for name, (peak, bw) in roofs.items()}
    ridges = {name: ridge_point(peak, bw) for name, (peak, bw) in roofs.items()}  # raises on bad numbers
    points = _xy_series("points", points or {})
    labels = dict(labels or {})
    for label, texts in labels.items():
        if label not in points or len(list(texts)) != len(points[label][0]):
            raise ValueError(f"labels[{label!r}] must name a series of points and give one text per point")
    intensities = [x for xs, _ in points.values() for x in xs] + list(ridges.values())
    low, high = min(intensities) / 4, max(intensities) * 4
    grid = [low * (high / low) ** (i / 200) for i in range(201)]
    fig, ax = _axes(ax)
    for i, (name, (peak, bw)) in enumerate(roofs.items()):
        color = f"C{i}"
        ax.plot(grid, [attainable_flops(x, peak, bw) for x in grid], "-", color=color, linewidth=2,
                label=f"{name}: {_rate(peak, 'FLOP/s')}, {_rate(bw, 'B/s')}")
        ax.axvline(ridges[name], color=color, linestyle=":", linewidth=1)
    markers = "osD^vP*X"
    for j, (label, (xs, ys)) in enumerate(points.items()):
        ax.plot(xs, ys, markers[j % len(markers)], color=f"C{len(roofs) + j}", label=label, markersize=6)
        for x, y, text in zip(xs, ys, labels.get(label, [])):
            ax.annotate(str(text), (x, y), xytext=(4, -10), textcoords="offset points", fontsize=7)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(low, high)
    ax.set_xlabel("arithmetic intensity (FLOP/byte)")
    ax.set_ylabel("FLOP/s")
    ax.set_title(title or "Left of the ridge memory limits speed, right of it compute does")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    return fig


def plot_ttft_tpot(prompt_lens, ttft_s, tpot_s, ax=None, title: str | None = None):
    """Time to first token and time per output token (milliseconds) against the prompt length, log-log."""
    series = _xy_series("timings", {"time to first token (prefill)": (prompt_lens, ttft_s),
                                    "time per output token (one decode step)": (prompt_lens, tpot_s)})
    fig, ax = _axes(ax)
    for i, (label, (xs, ys)) in enumerate(series.items()):
        ax.plot(xs, [y * 1e3 for y in ys], "o-", color=f"C{i}", label=label)
    ax.set_xscale("log", base=2)
    _plain_log2_ticks(ax)
    ax.set_yscale("log")
    ax.set_xlabel("prompt length P (tokens)")
    ax.set_ylabel("time (ms)")
    ax.set_title(title or "The first token waits for the whole prompt; later tokens barely notice it")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def plot_batch_sweep(batch_sizes, tokens_per_s, latency_s, budget_s: float = 0.05, axes=None):
    """Two panels against the batch size: decode throughput (tokens/s) and per-token latency (ms, with a budget).

    Batching shares every weight read among the rows, so throughput rises almost in proportion while each step,
    hence each user's wait per token, gets only a little slower, until the budget line says users would notice.
    """
    throughput = _xy_series("throughput", {"decode": (batch_sizes, tokens_per_s)})["decode"]
    latency = _xy_series("latency", {"decode": (batch_sizes, latency_s)})["decode"]
    if not (isinstance(budget_s, (int, float)) and 0 < budget_s < math.inf):
        raise ValueError(f"budget_s must be a finite number of seconds > 0, got {budget_s!r}")
    if axes is None:
        fig, axes = plt.subplots(1, 2, figsize=(9.6, 3.8), dpi=80, layout="constrained")
    fig = axes[0].figure
    left, right = axes
    left.plot(*throughput, "o-", color="C0")
    left.set_ylabel("decode throughput (tokens/s, all rows)")
    gain = throughput[1][-1] / throughput[1][0]
    left.set_title(f"Throughput x{gain:.1f} from batch {throughput[0][0]:g} to {throughput[0][-1]:g}")
    ms = [y * 1e3 for y in latency[1]]
    right.plot(latency[0], ms, "o-", color="C1", label="measured time per output token")
    right.axhline(budget_s * 1e3, color="tab:red", linestyle="--", label=f"budget: {budget_s * 1e3:g} ms per token")
    over = [b for b, y in zip(*latency) if y > budget_s]
    finding = f"over budget from batch {over[0]}" if over else "and stays under budget"
    right.set_title(f"Per-token latency rises too, {finding}")
    right.set_ylabel("time per output token (ms)")
    right.set_ylim(min(ms) / 2, max(max(ms), budget_s * 1e3) * 2)
    right.legend(fontsize=8, loc="upper left")
    for ax in axes:
        ax.set_xscale("log", base=2)
        _plain_log2_ticks(ax)
        ax.set_yscale("log")
        ax.set_xlabel("batch size B (sequences decoded together)")
        ax.grid(True, which="major", alpha=0.3)
    return fig


# --- chapter 01: autoregressive generation ---


def plot_positions_per_step(prompt_len: int, n_new: int, ax=None, title: str | None = None):
    """Bars: token positions the model computes at each generation step, without and with a KV cache.

    The numbers come from `kvlab.flops.positions_processed`; the totals in the legend are their sums.
    """
    without = positions_processed(prompt_len, n_new, use_cache=False)
    with_cache = positions_processed(prompt_len, n_new, use_cache=True)
    fig, ax = _axes(ax)
    steps = range(n_new)
    width = 0.4
    ax.bar([s - width / 2 for s in steps], without, width, color="C0",
           label=f"without cache: P + i, total {sum(without)}")
    ax.bar([s + width / 2 for s in steps], with_cache, width, color="C1",
           label=f"with cache: P, then 1 each, total {sum(with_cache)}")
    ax.set_xticks(list(steps), ["0\nprefill" if s == 0 else str(s) for s in steps])
    ax.set_xlabel("generation step i (step 0 is the prefill; the others are decode steps)")
    ax.set_ylabel("token positions fed to the model")
    ax.set_title(title or f"Without a cache every step re-feeds the whole sequence (P = {prompt_len})")
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(True, axis="y", alpha=0.3)
    return fig


def _check_stats_by_label(stats_by_label) -> dict:
    """{label: GenerationStats}, non-empty: the timings of one generation per label."""
    if not hasattr(stats_by_label, "items"):
        raise TypeError("stats_by_label must be a dict {label: GenerationStats}, "
                        f"got {type(stats_by_label).__name__}")
    if not stats_by_label:
        raise ValueError("stats_by_label is empty: pass at least one {label: GenerationStats}")
    for label, stats in stats_by_label.items():
        if not isinstance(stats, GenerationStats):
            raise TypeError(f"stats_by_label[{label!r}] must be a kvlab.GenerationStats, got {type(stats).__name__}")
    return dict(stats_by_label)


def plot_step_times(stats_by_label, ax=None, title: str | None = None):
    """Milliseconds of each generation step, one line per label; step 0 is the prefill (the time to first token).

    `stats_by_label` maps a label to a `kvlab.GenerationStats` (e.g. from `kvlab.measure.time_generation`).
    """
    stats_by_label = _check_stats_by_label(stats_by_label)
    fig, ax = _axes(ax)
    for i, (label, stats) in enumerate(stats_by_label.items()):
        ms = [s * 1e3 for s in [stats.prefill_s, *stats.decode_s]]
        ax.plot(range(len(ms)), ms, "-", marker="o", markevery=[0], color=f"C{i}", label=label)  # dot: prefill
    ax.set_xlabel("generation step i (step 0, the dot, is the prefill: the time to first token)")
    ax.set_ylabel("time of the step (ms)")
    ax.set_ylim(bottom=0)
    ax.set_title(title or "Without a cache each step is slower than the last; with one they stay flat")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    return fig


def plot_throughput(stats_by_label, ax=None, title: str | None = None):
    """Tokens per second of a generation of n tokens, against n, one line per label (log-scaled n).

    The throughput of the first n steps of one timed generation (`kvlab.measure.cumulative_tokens_per_s`): a greedy
    generation of n tokens does exactly those steps.
    """
    stats_by_label = _check_stats_by_label(stats_by_label)
    fig, ax = _axes(ax)
    for i, (label, stats) in enumerate(stats_by_label.items()):
        throughput = cumulative_tokens_per_s(stats)
        ax.plot(range(1, len(throughput) + 1), throughput, "-", color=f"C{i}", label=label)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("tokens generated n")
    ax.set_ylabel("throughput (new tokens/s)")
    ax.set_ylim(bottom=0)
    ax.set_title(title or "Without a cache throughput falls as the output grows; with one it holds")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8)
    return fig


# --- chapter 04: cost with and without a cache ---

_CACHE_STYLE = {"with cache": "C0", "without cache": "C3"}  # the same colours in every chapter-04 figure


def _positive_curves(name: str, lengths: list, curves) -> dict:
    """Check {label: values} for log axes: one finite value > 0 per length."""
    import math

    if curves is None:
        return {}
    if not hasattr(curves, "items"):
        raise TypeError(f"{name} must be a dict {{label: values}}, got {type(curves).__name__}")
    checked = {}
    for label, values in curves.items():
        values = [float(v) for v in values]
        if len(values) != len(lengths):
            raise ValueError(f"{name}[{label!r}] has {len(values)} values for {len(lengths)} lengths")
        if not all(math.isfinite(v) and v > 0 for v in values):
            raise ValueError(f"log axes need finite values > 0; {name}[{label!r}] has {values!r}")
        checked[label] = values
    return checked


def plot_cost_vs_length(lengths, flops: dict, counted: dict | None = None, seconds: dict | None = None, *,
                        fit_from: float | None = None, xlabel: str = "sequence length t (tokens)",
                        title: str | None = None, ax=None):
    """FLOPs (formula and counted) and wall-clock seconds against length, on one pair of log-log axes.

    `flops`, `counted` and `seconds` map a label ("with cache", "without cache") to one value per length. FLOPs
    and seconds have different units, so each kind is divided by its own value at the first length of its first
    label: both start at 1 and a power law c·t^k keeps its slope k. The legend gives the slope that
    `kvlab.measure.loglog_slope` fits through the points with length >= `fit_from`.
    """
    from .measure import loglog_slope

    lengths = [float(t) for t in lengths]
    if not lengths or not all(t > 0 for t in lengths):
        raise ValueError(f"lengths must be a non-empty list of numbers > 0, got {lengths!r}")
    flops = _positive_curves("flops", lengths, flops)
    if not flops:
        raise ValueError("flops must hold at least one curve")
    counted, seconds = _positive_curves("counted", lengths, counted), _positive_curves("seconds", lengths, seconds)
    fig, ax = _axes(ax)
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
    _plain_log2_ticks(ax)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("cost ÷ cost at the first length (no unit)")
    ax.set_title(title or "Cost against length, FLOPs and time on one scale")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=7)
    return fig


def plot_cache_speedup(lengths, flop_ratio, time_ratio=None, bounds: dict | None = None, *,
                       title: str | None = None, ax=None):
    """How many times less work (FLOPs) and time a whole generation takes with a cache, against its length.

    `flop_ratio` and `time_ratio` hold one ratio (without cache ÷ with cache) per length; `bounds` maps a label
    such as "(T+1)/2" to reference values drawn as thin dashed lines.
    """
    lengths = [float(t) for t in lengths]
    if not lengths or not all(t > 0 for t in lengths):
        raise ValueError(f"lengths must be a non-empty list of numbers > 0, got {lengths!r}")
    curves = _positive_curves("ratios", lengths, {"FLOPs (formula)": flop_ratio,
                                                  **({"time (measured)": time_ratio} if time_ratio is not None
                                                     else {})})
    bounds = _positive_curves("bounds", lengths, bounds)
    fig, ax = _axes(ax)
    for k, (label, values) in enumerate(bounds.items()):
        ax.plot(lengths, values, "--", color="0.5", lw=1, dashes=(4, 2 + 2 * k), label=label)
    ax.plot(lengths, curves["FLOPs (formula)"], "-o", color="C2", ms=4, label="FLOPs saved (formula)")
    if "time (measured)" in curves:
        ax.plot(lengths, curves["time (measured)"], ":s", color="C4", ms=4, label="time saved (measured)")
    ax.axhline(1, color="k", lw=0.8)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    _plain_log2_ticks(ax)
    ax.set_xlabel("tokens generated, T")
    ax.set_ylabel("without cache ÷ with cache (×)")
    ax.set_title(title or "The cache's saving grows in proportion to T")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def plot_cost_split(step_lengths, step: dict, total_lengths, total: dict, *, t_star: float | None = None,
                    title: str | None = None, axes=None):
    """Where the FLOPs go: dense matmuls vs attention, with and without a cache; per step (left) and in total (right).

    `step` and `total` map "with cache" / "without cache" to ``{"dense": values, "attention": values}``, one value
    per entry of `step_lengths` / `total_lengths`. Dense parts are solid lines, attention parts dashed. `t_star`
    (where attention catches up with the dense matmuls in a step) is marked on the left when it is in range.
    """
    step_lengths, total_lengths = [float(t) for t in step_lengths], [float(t) for t in total_lengths]
    for name, xs in (("step_lengths", step_lengths), ("total_lengths", total_lengths)):
        if not xs or not all(t > 0 for t in xs):
            raise ValueError(f"{name} must be a non-empty list of numbers > 0, got {xs!r}")
    if axes is None:
        fig, axes = plt.subplots(1, 2, figsize=(10, 4.2), dpi=80, layout="constrained")
    fig = axes[0].figure
    panels = ((axes[0], step_lengths, step, "sequence length t (tokens)", "FLOPs of one decode step"),
              (axes[1], total_lengths, total, "tokens generated, T", "FLOPs of the whole generation"))
    for ax, xs, data, xlabel, ylabel in panels:
        if not hasattr(data, "items"):
            raise TypeError(f"step and total must be dicts {{mode: {{part: values}}}}, got {type(data).__name__}")
        for i, (mode, parts) in enumerate(data.items()):
            parts = _positive_curves(f"[{mode!r}]", xs, parts)
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
    axes[0].legend(fontsize=7)
    fig.suptitle(title or "Dense matmuls and attention, with and without a KV cache")
    return fig


# --- chapter 09: serving many requests ---


def plot_paging_waste(block_sizes, paged_bytes, contiguous_bytes: int, formula_bytes=None, ax=None,
                      title: str | None = None):
    """Reserved-but-unused cache bytes against the block size of a paged cache, with contiguous buffers as a line.

    `paged_bytes` (measured) and `formula_bytes` (optional, drawn as a line) hold one byte count per block size;
    `contiguous_bytes` is the waste of one `max_len` buffer per request, which does not depend on the block size.
    """
    block_sizes, paged_bytes = list(block_sizes), list(paged_bytes)
    series = {"paged_bytes": paged_bytes} | ({} if formula_bytes is None else {"formula_bytes": list(formula_bytes)})
    for name, values in series.items():
        if len(values) != len(block_sizes):
            raise ValueError(f"{name} has {len(values)} values for {len(block_sizes)} block sizes")
        if any(not isinstance(v, numbers.Real) or not 0 <= v < math.inf for v in values):
            raise ValueError(f"{name} must hold finite byte counts >= 0, got {values!r}")
    if not block_sizes or any(not isinstance(b, numbers.Integral) or b < 1 for b in block_sizes):
        raise ValueError(f"block_sizes must be ints >= 1 (a log axis), got {block_sizes!r}")
    if not isinstance(contiguous_bytes, numbers.Real) or not 0 <= contiguous_bytes < math.inf:
        raise ValueError(f"contiguous_bytes must be a finite byte count >= 0, got {contiguous_bytes!r}")
    fig, ax = _axes(ax)
    kib = 1024
    ax.axhline(contiguous_bytes / kib, color="C3", label="contiguous: one max_len buffer per request")
    if formula_bytes is not None:
        ax.plot(block_sizes, [b / kib for b in formula_bytes], "-", color="C0", alpha=0.6, label="paged: formula")
    ax.plot(block_sizes, [b / kib for b in paged_bytes], "o", color="C0", label="paged: measured (PagedCache)")
    ax.set_xscale("log", base=2)
    ax.set_xticks(block_sizes)
    _plain_log2_ticks(ax)
    ax.minorticks_off()
    ax.set_ylim(bottom=0)
    ax.set_xlabel("block size (tokens per block)")
    ax.set_ylabel("reserved but unused cache (KiB)")
    ax.set_title(title or "Paging wastes less than one block per request")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8, loc="center left")
    return fig


# --- chapter 08: compressing the cache ---

_QUALITY_METRICS = {
    "cross_entropy": ("held-out cross-entropy (nats per token)", "cross_entropy"),
    "top1_agreement": ("top-1 agreement with the full cache (%)", "top1_agreement"),
}


def plot_quality_vs_budget(budgets, reports_by_label: dict, metric: str = "cross_entropy", ax=None,
                           title: str | None = None):
    """Quality of eviction caches against the tokens they may keep: one line per strategy.

    `reports_by_label` maps a strategy's name to one `kvlab.quality.QualityReport` per budget in `budgets`. With
    ``metric="cross_entropy"`` the full cache's cross-entropy is drawn as a dashed line: the floor every strategy
    approaches as its budget grows.
    """
    if metric not in _QUALITY_METRICS:
        raise ValueError(f"metric must be one of {', '.join(_QUALITY_METRICS)}, got {metric!r}")
    budgets = list(budgets)
    if not budgets or not isinstance(reports_by_label, dict) or not reports_by_label:
        raise ValueError("need at least one budget and a non-empty dict {label: [QualityReport per budget]}")
    for label, reports in reports_by_label.items():
        if len(reports) != len(budgets):
            raise ValueError(f"{label!r}: {len(reports)} reports for {len(budgets)} budgets")
    ylabel, field = _QUALITY_METRICS[metric]
    scale = 100 if metric == "top1_agreement" else 1
    fig, ax = _axes(ax)
    for label, reports in reports_by_label.items():
        ax.plot(budgets, [getattr(r, field) * scale for r in reports], "o-", label=label)
    if metric == "cross_entropy":
        full = next(iter(reports_by_label.values()))[0].full_cross_entropy
        ax.axhline(full, color="black", linestyle="--", label=f"full cache ({full:.3f})")
        ax.set_yscale("log")
    ax.set_xscale("log", base=2)
    ax.set_xticks(budgets, [str(b) for b in budgets])
    ax.set_xlabel("tokens kept per layer and head (budget)")
    ax.set_ylabel(ylabel)
    ax.set_title(title or "Quality against the number of tokens kept")
    ax.legend()
    return fig


def plot_bytes_per_step(bytes_by_label: dict, first: int = 1, ax=None, title: str | None = None):
    """Bytes a cache holds after each model call of a generation: a full cache grows, an evicting one levels off.

    `bytes_by_label` maps a cache's name to its ``nbytes`` after each call (`kvlab.quality.generate_with_memory`);
    the first call has fed `first` tokens (the prompt), each later one one more, which is the x axis.
    """
    if not isinstance(bytes_by_label, dict) or not bytes_by_label:
        raise ValueError("bytes_by_label must be a non-empty dict {label: [bytes after each step]}")
    if isinstance(first, bool) or not isinstance(first, int) or first < 1:
        raise ValueError(f"first must be an int >= 1 (tokens fed by the first call), got {first!r}")
    fig, ax = _axes(ax)
    for label, values in bytes_by_label.items():
        values = list(values)
        if not values or any(isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 0 for v in values):
            raise ValueError(f"{label!r}: need a non-empty list of byte counts (ints >= 0)")
        ax.plot(range(first, first + len(values)), [v / 1024 for v in values], label=label)
    ax.set_xlabel("tokens seen by the cache")
    ax.set_ylabel("bytes held by the cache (KiB)")
    ax.set_ylim(0, None)
    ax.set_title(title or "Memory held during generation")
    ax.legend()
    return fig


def plot_memory_vs_quality(series: dict, ax=None, title: str | None = None):
    """Caches as points: bytes held (share of the full cache) against cross-entropy lost; down and left is better.

    `series` maps a family's name (one colour and legend entry) to a list of ``(label, QualityReport)`` pairs;
    each point is annotated with its label unless the label is empty. The y axis is symmetric-log, linear below
    0.001 nats, so that losses of 0.001 and of 1 nat both show.
    """
    if not isinstance(series, dict) or not series:
        raise ValueError("series must be a non-empty dict {family: [(label, QualityReport), ...]}")
    fig, ax = _axes(ax, figsize=(7.2, 4.4))
    highest = 1e-3
    for name, points in series.items():
        points = list(points)
        if not points:
            raise ValueError(f"{name!r}: need at least one (label, QualityReport) pair")
        for pair in points:
            report = pair[1] if isinstance(pair, tuple) and len(pair) == 2 else None
            if not all(hasattr(report, a) for a in ("memory_ratio", "cross_entropy_increase")):
                raise TypeError(f"{name!r}: expected (label, kvlab.quality.QualityReport) pairs, got {pair!r}")
        xs = [report.memory_ratio * 100 for _, report in points]
        ys = [report.cross_entropy_increase for _, report in points]
        (line,) = ax.plot(xs, ys, "o", label=name)
        highest = max(highest, *ys)
        for i, ((label, _), x, y) in enumerate(zip(points, xs, ys)):
            if label:  # alternately above and below the point, so that neighbours' labels do not collide
                ax.annotate(label, (x, y), textcoords="offset points", xytext=(5, 3 if i % 2 == 0 else -11),
                            fontsize=8, color=line.get_color())
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_yscale("symlog", linthresh=1e-3)
    ax.set_ylim(-1e-3, 3 * highest)
    ax.set_xlim(0, 105)
    ax.set_xlabel("bytes held, % of the full fp32 cache")
    ax.set_ylabel("cross-entropy increase (nats per token)")
    ax.set_title(title or "Memory saved against quality lost")
    ax.legend(loc="upper right")
    return fig


# --- benchmarks: kvlab bench ---


def _plain_log_y(ax) -> None:
    """Label a log y axis 4, 6, 10, 20 rather than 4×10⁰, 6×10⁰, 10¹, 2×10¹ (minor ticks too)."""
    from matplotlib.ticker import FuncFormatter

    plain = FuncFormatter(lambda value, _: f"{value:g}")
    ax.yaxis.set_major_formatter(plain)
    ax.yaxis.set_minor_formatter(plain)


def plot_benchmark(results: dict, axes=None):
    """The five figures of one `kvlab bench` run (`kvlab.benchmark.run_benchmarks`, or its JSON loaded), in six panels.

    Top: the cache speed-up against T (log-log), kvlab ÷ transformers in both regimes, decode latency near and far
    into the sequence. Bottom: decode bandwidth against the machine's two ceilings, then the batch sweep's
    throughput and time per step. Every panel is a ratio or a time from the same run; dashed lines are the targets.
    """
    needed = ("speedup_by_T", "vs_transformers_cached", "vs_transformers_uncached", "static_latency_ratio",
              "batch_sweep", "details", "machine")
    if not isinstance(results, dict) or any(key not in results for key in needed):
        raise TypeError("results must be the dict kvlab.benchmark.run_benchmarks returns (or its JSON, loaded)")
    if axes is None:
        fig, axes = plt.subplots(2, 3, figsize=(13.5, 7.2), dpi=80, layout="constrained")
    axes = [ax for row in axes for ax in row] if hasattr(axes[0], "__len__") else list(axes)
    fig = axes[0].figure
    details, m = results["details"], results["machine"]
    threads = m["torch_threads"]
    cores = m.get("cpus_available") or m["cpu_count"]
    fig.suptitle(f"kvlab bench ({results['plan']['name']}): {m['cpu']}, {cores} cores, torch {m['torch']}, "
                 f"{threads} thread{'s' * (threads != 1)}, float32")

    ax = axes[0]  # figure 1
    lengths = [int(t) for t in results["speedup_by_T"]]
    speedups = list(results["speedup_by_T"].values())
    ax.plot(lengths, speedups, "o-", color="C0", label="measured")
    ax.axhline(10, color="tab:red", linestyle="--", label="target: 10×")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    _plain_log2_ticks(ax)
    _plain_log_y(ax)
    ax.set_xlabel("new tokens T (after a 16-token prompt)")
    ax.set_ylabel("cached ÷ uncached tokens/s")
    ax.set_title(f"1. The cache: {speedups[-1]:.0f}× faster at T = {lengths[-1]}")
    ax.legend(fontsize=8)

    ax = axes[1]  # figure 2
    regimes = [("small", "4 × 128"), ("gpt2", "GPT-2-small shape")]
    if results["vs_transformers_cached"] is None:
        ax.text(0.5, 0.5, "transformers not installed:\nnot measured", ha="center", va="center",
                transform=ax.transAxes)
    else:
        contenders = (("vs_transformers_cached", "cached, lean_generate", "C0"),
                      ("vs_transformers_cached_generate", "cached, generate", "C9"),
                      ("vs_transformers_uncached", "uncached, generate", "C7"))
        contenders = [c for c in contenders if results.get(c[0])]  # files from before lean_generate lack one
        for offset, (key, label, color) in enumerate(contenders):
            values = [results[key][regime] for regime, _ in regimes]
            bars = ax.bar([i + 0.27 * offset for i in range(2)], values, width=0.25, color=color, label=label)
            ax.bar_label(bars, fmt="%.2f×", fontsize=7)
        for i, target in enumerate((2.5, 1.0)):
            ax.hlines(target, i - 0.15, i + 0.15, color="tab:red", linestyle="--",
                      label="target (lean, cached)" if i == 0 else None)
        ax.axhline(1, color="black", linewidth=0.8)
        ax.legend(fontsize=8)
    ax.set_xticks([0.27, 1.27], [label for _, label in regimes])
    ax.set_ylabel("kvlab ÷ transformers tokens/s")
    ax.set_title("2. kvlab vs transformers, same weights, same tokens")

    ax = axes[2]  # figure 3
    f3 = details["figure3"]
    near, far = f3["near"], f3["far"]
    for offset, (kind, color) in enumerate((("static", "C0"), ("dynamic", "C1"))):
        ms = [f3[f"{kind}_{p}_s"] * 1e3 for p in (near, far)]
        bars = ax.bar([i + 0.38 * offset for i in range(2)], ms, width=0.36, color=color,
                      label=f"{kind.capitalize()}Cache")
        ax.bar_label(bars, fmt="%.1f", fontsize=8)
    ax.set_xticks([0.19, 1.19], [f"{near} tokens cached", f"{far} tokens cached"])
    ax.set_ylabel("time per decode step (ms)")
    ax.set_title(f"3. Far ÷ near: static ×{results['static_latency_ratio']:.2f}, "
                 f"dynamic ×{results['dynamic_latency_ratio']:.2f}")
    ax.legend(fontsize=8, loc="lower right")

    ax = axes[3]  # figure 4
    f4 = details["figure4"]
    labels = ["read bandwidth\n(sum of 1 GiB)", "kernel floor\n(matmuls only)", "decode step,\nlean_generate",
              "decode step,\ngenerate"]
    rates = [f4[key] / 1e9 for key in ("read_bandwidth_bytes_per_s", "kernel_floor_bytes_per_s",
                                       "decode_bytes_per_s", "generate_decode_bytes_per_s")]
    bars = ax.barh(labels[::-1], rates[::-1], color=["C0", "C7", "C2", "C9"][::-1])
    ax.bar_label(bars, fmt="%.1f GB/s", fontsize=8)
    ax.set_xlabel("weight bytes read per second (GB/s)")
    ax.set_xlim(0, max(rates) * 1.3)
    ax.set_title(f"4. Lean decode at {results['kernel_floor_fraction']:.0%} of the kernel floor, "
                 f"{results['bandwidth_fraction']:.0%} of bandwidth")

    sweep = results["batch_sweep"]
    batches = [row["batch_size"] for row in sweep]
    for ax, key, scale, ylabel, color in ((axes[4], "tokens_per_s", 1, "decode throughput (tokens/s, all rows)", "C0"),
                                          (axes[5], "latency_s", 1e3, "time per decode step (ms)", "C1")):
        values = [row[key] * scale for row in sweep]
        ax.plot(batches, values, "o-", color=color)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        _plain_log2_ticks(ax)
        _plain_log_y(ax)
        ax.set_xlabel("batch size B (GPT-2-small shape)")
        ax.set_ylabel(ylabel)
    gain = sweep[-1]["tokens_per_s"] / sweep[0]["tokens_per_s"]
    slower = sweep[-1]["latency_s"] / sweep[0]["latency_s"]
    axes[4].set_title(f"5. Batch {batches[-1]}: ×{gain:.1f} tokens/s ...")
    axes[5].set_title(f"... for ×{slower:.1f} time per step")
    for ax in axes:
        ax.grid(True, which="major", alpha=0.3)
    return fig
