"""Chapter 01 · autoregressive generation: positions fed per step, and the time and throughput of each step."""

from __future__ import annotations

from ..checks import check_type
from ..flops import positions_processed
from ..generate import GenerationStats
from ..measure import cumulative_tokens_per_s
from ._checks import check_entries
from ._style import axes, legend


def plot_positions_per_step(prompt_len: int, n_new: int, ax=None, title: str | None = None):
    """Bars: token positions the model computes at each generation step, without and with a KV cache.

    The numbers come from `kvlab.flops.positions_processed`; the totals in the legend are their sums.
    """
    without = positions_processed(prompt_len, n_new, use_cache=False)
    with_cache = positions_processed(prompt_len, n_new, use_cache=True)
    fig, ax = axes(ax)
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
    legend(ax, loc="upper left")
    ax.grid(True, axis="y", alpha=0.3)
    return fig


def _check_stats_by_label(given) -> dict:
    """{label: GenerationStats}, at least one: the timings of one generation per label."""
    given = check_entries("stats_by_label", given, "{label: GenerationStats}")
    for label, stats in given.items():
        check_type(f"stats_by_label[{label!r}]", stats, GenerationStats, "a kvlab.GenerationStats")
    return given


def plot_step_times(stats_by_label, ax=None, title: str | None = None):
    """Milliseconds of each generation step, one line per label; step 0 is the prefill (the time to first token).

    `stats_by_label` maps a label to a `kvlab.GenerationStats` (e.g. from `kvlab.measure.time_generation`).
    """
    stats_by_label = _check_stats_by_label(stats_by_label)
    fig, ax = axes(ax)
    for i, (label, stats) in enumerate(stats_by_label.items()):
        ms = [s * 1e3 for s in [stats.prefill_s, *stats.decode_s]]
        ax.plot(range(len(ms)), ms, "-", marker="o", markevery=[0], color=f"C{i}", label=label)  # dot: prefill
    ax.set_xlabel("generation step i (step 0, the dot, is the prefill: the time to first token)")
    ax.set_ylabel("time of the step (ms)")
    ax.set_ylim(bottom=0)
    ax.set_title(title or "Without a cache each step is slower than the last; with one they stay flat")
    ax.grid(True, alpha=0.3)
    legend(ax, loc="upper left")
    return fig


def plot_throughput(stats_by_label, ax=None, title: str | None = None):
    """Tokens per second of a generation of n tokens, against n, one line per label (log-scaled n).

    The throughput of the first n steps of one timed generation (`kvlab.measure.cumulative_tokens_per_s`): a greedy
    generation of n tokens does exactly those steps.
    """
    stats_by_label = _check_stats_by_label(stats_by_label)
    fig, ax = axes(ax)
    for i, (label, stats) in enumerate(stats_by_label.items()):
        throughput = cumulative_tokens_per_s(stats)
        ax.plot(range(1, len(throughput) + 1), throughput, "-", color=f"C{i}", label=label)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("tokens generated n")
    ax.set_ylabel("throughput (new tokens/s)")
    ax.set_ylim(bottom=0)
    ax.set_title(title or "Without a cache throughput falls as the output grows; with one it holds")
    ax.grid(True, which="major", alpha=0.3)
    legend(ax)
    return fig
