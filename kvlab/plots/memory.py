"""Chapter 06 · KV-cache memory: the cache against the weights, bytes per K/V head, and one GPU's report."""

from __future__ import annotations

import math

from .. import memory
from ..checks import check_int, check_type
from ._style import TEXT_PT, axes, legend


def _gib(n_bytes: int) -> float:
    return n_bytes / memory.GIB


def _check_preset(preset) -> memory.ModelPreset:
    return check_type("preset", preset, memory.ModelPreset, "a ModelPreset (see kvlab.memory.get_preset)")


def plot_cache_vs_weights(preset, batch_sizes=(1, 16, 64), dtype: str = "fp16", max_seq_len: int | None = None,
                          title: str | None = None, ax=None):
    """KV-cache GiB against seq_len for a few batch sizes, with the weights (same dtype) as a horizontal line.

    The cache is a straight line through 0 whose slope is batch_size × bytes per token; where it crosses the
    weights line, the GPU holds more remembered tokens than model. Dots mark the crossings within the plot.
    """
    _check_preset(preset)
    width = memory.bytes_per_element(dtype)
    max_seq_len = check_int("max_seq_len", preset.max_seq_len if max_seq_len is None else max_seq_len, 1)
    if not batch_sizes:
        raise ValueError(f"batch_sizes must name at least one batch size, got {batch_sizes!r}")
    per_row = [preset.kv_cache_bytes(batch, 1, width) for batch in batch_sizes]  # also checks each batch size
    weights = _gib(preset.weight_bytes(width))
    fig, ax = axes(ax)
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
    legend(ax, loc="upper left")
    return fig


def plot_kv_heads(preset, dtype: str = "fp16", title: str | None = None, ax=None):
    """Cache bytes per token for every possible number of K/V heads of one model shape (bars, log scale).

    n_kv_head = n_head is multi-head attention, 1 is multi-query, anything between is grouped-query; the
    preset's own choice is drawn in a darker colour.
    """
    _check_preset(preset)
    width = memory.bytes_per_element(dtype)
    options = [h for h in range(1, preset.n_head + 1) if preset.n_head % h == 0]
    per_token = [memory.kv_cache_bytes(preset.n_layer, 1, 1, preset.d_model, width, n_head=preset.n_head, n_kv_head=h)
                 for h in options]
    fig, ax = axes(ax)
    colors = ["tab:blue" if h == preset.n_kv_head else "lightsteelblue" for h in options]
    bars = ax.bar([str(h) for h in options], [b / 1024 for b in per_token], color=colors)
    ax.bar_label(bars, labels=[f"{b / 1024:g}" for b in per_token], fontsize=TEXT_PT)
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
    r = check_type("report", report, memory.MemoryReport, "a MemoryReport (see kvlab.memory.memory_report)")
    longest = r.max_seq_len if r.weights_fit and r.max_seq_len != math.inf else None  # inf: a window caps the cache
    x_max = max(2 * r.seq_len, 16, round(1.25 * longest) if longest else 0)
    lengths = [x_max * i // 64 for i in range(65)]
    width = memory.bytes_per_element(r.dtype)
    cache = [_gib(memory.kv_cache_bytes(r.n_layer, r.batch_size, memory.cached_tokens(t, r.sliding_window),
                                        r.d_model, width, n_head=r.n_head, n_kv_head=r.n_kv_head)) for t in lengths]
    weights, gpu = _gib(r.weight_bytes), _gib(r.gpu_bytes)
    total = [weights + c for c in cache]
    fig, ax = axes(ax)
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
        limit = f"up to {longest:,}" if longest else "any length: its window caps the cache"
        finding = f"seq_len {r.seq_len:,} {verdict} in {gpu:g} GiB ({limit})"
    ax.set_title(f"{r.name}, batch {r.batch_size:,}, {r.dtype}: {finding}")
    legend(ax, loc="upper left")
    return fig
