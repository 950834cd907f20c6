"""What `kvlab bench` prints and writes: the targets checked, the table, the closing note, the JSON and the figure.

The targets are checked and reported by every run, never enforced: they are measurements on one machine, and no
test asserts them.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..checks import check_type
from .results import BenchResults, Target

__all__ = ["TargetSpec", "TARGETS", "TARGET_T", "check_targets", "format_table", "closing_note", "save_results",
           "rounded_results", "load_results", "plot_benchmark"]


@dataclass(frozen=True)
class TargetSpec:
    """A claim of the course as a bound on one value of a run: ``value(results) op threshold``."""

    op: str  # ">=" or "<="
    threshold: float
    what: str
    value: Callable[[BenchResults], float | None]

    def met(self, value: float) -> bool:
        return value >= self.threshold if self.op == ">=" else value <= self.threshold


def _regime(ratios: dict[str, float] | None, regime: str) -> float | None:
    return None if ratios is None else ratios.get(regime)


TARGET_T = 512  # figure 1's target is for 512 new tokens; a run whose longest T differs (--quick) is not checked
TARGETS: dict[str, TargetSpec] = {
    "cache_speedup": TargetSpec(">=", 10.0, "cached ÷ uncached tokens/s, 512 new tokens, course-sized model",
                                lambda r: r.cache_speedup),
    "vs_transformers_cached.small": TargetSpec(
        ">=", 2.5, "lean_generate ÷ transformers tokens/s, cached, course-sized model",
        lambda r: _regime(r.vs_transformers_cached, "small")),
    "vs_transformers_cached.gpt2": TargetSpec(
        ">=", 1.0, "lean_generate ÷ transformers tokens/s, cached, GPT-2-small shape",
        lambda r: _regime(r.vs_transformers_cached, "gpt2")),
    "static_latency_ratio": TargetSpec("<=", 1.3, "StaticCache decode step at the far ÷ near position",
                                       lambda r: r.static_latency_ratio),
    "kernel_floor_fraction": TargetSpec(">=", 0.9, "bare matmuls ÷ lean_generate's decode step, GPT-2-small shape",
                                        lambda r: r.kernel_floor_fraction),
    "vs_transformers_smollm2": TargetSpec(">=", 1.2, "lean_generate ÷ transformers tokens/s, cached, SmolLM2-135M",
                                          lambda r: r.vs_transformers_smollm2),
}


def _figure6_skipped(results: BenchResults) -> str | None:
    figure6 = results.details.figure6
    return "not measured (results from before figure 6)" if figure6 is None else figure6.skipped


def check_targets(results: BenchResults) -> dict[str, Target]:
    """Each of `TARGETS` with the run's value and whether it is met; None where the run has no value (no transformers).

    Also checks figure 1's shape claim: the speed-up grows with T (each longer generation gains more).
    """
    check_type("results", results, BenchResults, "the BenchResults run_benchmarks returns")
    checked = {}
    for key, spec in TARGETS.items():
        value = spec.value(results)
        checked[key] = Target(value, f"{spec.op} {spec.threshold:g}", None if value is None else spec.met(value),
                              spec.what)
        if value is None:
            checked[key].why_not_checked = (_figure6_skipped(results) if key == "vs_transformers_smollm2" else None) \
                or "not measured (transformers not installed, or skipped)"
    headline_T = results.details.figure1.headline_T
    if headline_T != TARGET_T:
        checked["cache_speedup"].met = None
        checked["cache_speedup"].why_not_checked = (f"the target is set for T = {TARGET_T}; this run's longest T is "
                                                    f"{headline_T}")
    speedups = list(results.speedup_by_T.values())
    checked["speedup_grows_with_T"] = Target(speedups, "increasing", all(a < b for a, b in zip(speedups, speedups[1:])),
                                             "cache speed-up grows with the number of new tokens T")
    return checked


def _fmt(value, suffix: str = "×") -> str:
    """3 decimals below 10, so a value next to its threshold (1.304 vs <= 1.3) shows which side it is on."""
    return "n/a" if value is None else f"{value:.{3 if abs(value) < 10 else 1}f}{suffix}"


def format_table(results: BenchResults) -> str:
    """The run as a plain-text table: one line per figure, its value, its target and whether it was met."""
    check_type("results", results, BenchResults, "the BenchResults run_benchmarks returns")
    r, m, d = results, results.machine, results.details
    targets = r.targets or check_targets(r)
    cores = f"{m.cpus_available} of {m.cpu_count}" if m.cpus_available != m.cpu_count else m.cpu_count
    lines = [f"kvlab bench ({r.plan.name}): {m.cpu}, {cores} cores, torch {m.torch}, "
             f"{m.torch_threads} thread{'s' * (m.torch_threads != 1)}, float32, load average {m.load_average_before}",
             f"{'figure':<58} {'value':>9}  {'target':>7}",
             "-" * 82]

    def row(label: str, value: str, key: str | None = None) -> None:
        target, verdict = "", ""
        if key is not None and key in targets:  # a file from before a target existed has no verdict for it
            target, met = targets[key].target, targets[key].met
            verdict = "" if met is None else ("ok" if met else "MISSED")
        lines.append(f"{label:<58} {value:>9}  {target:>7}  {verdict}".rstrip())

    row(f"1  cache speed-up, {d.figure1.headline_T} new tokens (small)", _fmt(r.cache_speedup), "cache_speedup")
    row("   by T: " + ", ".join(f"{t}: {s:.1f}×" for t, s in r.speedup_by_T.items()), "", "speedup_grows_with_T")
    for cache_word, ratios, rows in (("cached", r.vs_transformers_cached, d.figure2.cached),
                                     ("uncached", r.vs_transformers_uncached, d.figure2.uncached)):
        for regime, label in (("small", "2a {} ÷ transformers, {}, small (4 × 128)"),
                              ("gpt2", "2b {} ÷ transformers, {}, GPT-2-small shape")):
            key = f"vs_transformers_{cache_word}.{regime}"
            note = "" if regime not in rows or rows[regime].same_tokens else " (TOKENS DIFFER)"
            how = "lean_generate" if cache_word == "cached" else "generate"
            row(label.format(how, cache_word) + note, _fmt(_regime(ratios, regime)), key if key in targets else None)
            if cache_word == "cached":
                row("   generate ÷ transformers (the readable model)",
                    _fmt(_regime(r.vs_transformers_cached_generate, regime)))
    f3, f4 = d.figure3, d.figure4
    where = f"{f3.far} ÷ {f3.near}"
    row(f"3  StaticCache decode latency, position {where}", _fmt(r.static_latency_ratio), "static_latency_ratio")
    row(f"   DynamicCache decode latency, position {where}", _fmt(r.dynamic_latency_ratio))
    row("   (bytes read per step, same ratio)", _fmt(f3.bytes_ratio))
    row("4  kernel floor ÷ lean_generate's step, time (GPT-2-small)", _fmt(r.kernel_floor_fraction, ""),
        "kernel_floor_fraction")
    row("   kernel floor ÷ generate's step (the readable model)", _fmt(r.kernel_floor_fraction_generate, ""))
    row(f"   weight bytes/s ÷ read bandwidth ({f4.decode_bytes_per_s / 1e9:.1f} of "
        f"{f4.read_bandwidth_bytes_per_s / 1e9:.1f} GB/s)", _fmt(r.bandwidth_fraction, ""))
    row(f"   kernel floor ÷ read bandwidth ({f4.kernel_floor_bytes_per_s / 1e9:.1f} GB/s)",
        _fmt(f4.kernel_floor_bandwidth_fraction, ""))
    row("5  batch " + ", ".join(str(s.batch_size) for s in r.batch_sweep) + ": tokens/s", "")
    lines.append("     " + ", ".join(f"{s.tokens_per_s:.0f}" for s in r.batch_sweep))
    row("   time per step (ms)", "")
    lines.append("     " + ", ".join(f"{s.latency_s * 1e3:.1f}" for s in r.batch_sweep))
    _figure6_rows(r, row, lines)
    lines.append(f"({r.elapsed_s:.0f} s; load average after: {m.load_average_after})")
    return "\n".join(lines)


def _figure6_rows(r: BenchResults, row: Callable, lines: list[str]) -> None:
    """Figure 6's lines of the table: the comparison with transformers, then the cache speed-up, or why not."""
    f6 = r.details.figure6
    comparison = None if f6 is None else f6.comparison
    note = "" if comparison is None or comparison.same_tokens else " (TOKENS DIFFER)"
    row("6  SmolLM2-135M: lean_generate ÷ transformers, cached" + note, _fmt(r.vs_transformers_smollm2),
        "vs_transformers_smollm2")
    row("   generate ÷ transformers (the readable model)", _fmt(r.vs_transformers_smollm2_generate))
    if comparison is not None:
        lines.append(f"     tokens/s, batch 1, 1 thread: lean_generate {comparison.kvlab_lean_tokens_per_s:.1f}, "
                     f"generate {comparison.kvlab_tokens_per_s:.1f}, transformers "
                     f"{comparison.transformers_tokens_per_s:.1f} ({comparison.new_tokens} new tokens)")
    generated = "" if f6 is None or f6.generated is None else f" {f6.generated}"
    row(f"   cache speed-up,{generated} new tokens (integrated from steps)", _fmt(r.smollm2_cache_speedup))
    if f6 is None or f6.skipped:
        lines.append(f"     ({_figure6_skipped(r)})")


def closing_note(results: BenchResults) -> str:
    """One line per target this run missed (with its value), or a line saying all were met."""
    check_type("results", results, BenchResults, "the BenchResults run_benchmarks returns")
    targets = results.targets or check_targets(results)
    missed = [f"- {key}: {t.value if isinstance(t.value, list) else _fmt(t.value, '')} (target {t.target}): {t.what}"
              for key, t in targets.items() if t.met is False]
    lines = ["Targets missed on this machine:", *missed] if missed else ["All targets checked were met."]
    lines += [f"Not checked: {key}: {t.why_not_checked or 'no value'}" for key, t in targets.items() if t.met is None]
    figure2 = results.details.figure2
    if not all(row.same_tokens for rows in (figure2.cached, figure2.uncached) for row in rows.values()):
        lines.append("WARNING: kvlab and transformers produced different tokens in figure 2; see details.figure2.")
    figure6 = results.details.figure6
    if figure6 is not None and figure6.comparison is not None and not figure6.comparison.same_tokens:
        lines.append("WARNING: kvlab and transformers produced different tokens in figure 6; see details.figure6.")
    return "\n".join(lines)


def _jsonable(value):
    """Floats rounded for a readable file (4 significant digits); NaN and inf become None (JSON has neither)."""
    if isinstance(value, float):
        return float(f"{value:.4g}") if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def _json_path(path: str | os.PathLike) -> Path:
    path = Path(path)
    if path.suffix != ".json":
        raise ValueError(f"the results file must end in .json, got {str(path)!r}")
    return path


def save_results(results: BenchResults, path: str | os.PathLike) -> str:
    """Write `results` as indented JSON to `path` (creating its folder), floats rounded; returns the path written."""
    check_type("results", results, BenchResults, "the BenchResults run_benchmarks returns")
    path = _json_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_jsonable(results.to_dict()), indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return str(path)


def rounded_results(results: BenchResults) -> BenchResults:
    """`results` exactly as `save_results` writes them and `load_results` reads them back (floats rounded), so that
    the table printed before the file is written shows the file's numbers."""
    check_type("results", results, BenchResults, "the BenchResults run_benchmarks returns")
    return BenchResults.from_dict(json.loads(json.dumps(_jsonable(results.to_dict()))))


def load_results(path: str | os.PathLike) -> BenchResults:
    """A run read back from the JSON `save_results` wrote (the committed ``benchmarks/results/latest.json``, say)."""
    return BenchResults.from_dict(json.loads(_json_path(path).read_text(encoding="utf-8")))


def _plain_ticks(ax, log_y: bool = True) -> None:
    """Label log axes 1, 2, 4 and 4, 6, 10, 20 rather than 2^0, 2^1 and 4×10⁰, 10¹ (minor ticks too)."""
    from matplotlib.ticker import FuncFormatter

    plain = FuncFormatter(lambda value, _: f"{value:g}")
    ax.xaxis.set_major_formatter(plain)
    if log_y:
        ax.yaxis.set_major_formatter(plain)
        ax.yaxis.set_minor_formatter(plain)


def plot_benchmark(results: BenchResults, axes=None):
    """The six figures of one `kvlab bench` run in eight panels (`run_benchmarks`'s result, or `load_results`').

    Top: the cache speed-up against T (log-log), kvlab ÷ transformers in both regimes, decode latency near and far
    into the sequence. Bottom: decode bandwidth against the machine's two ceilings, then the batch sweep's
    throughput and time per step. Right: SmolLM2's tokens/s in kvlab and transformers, and its step times with and
    without a cache (figure 6). Every panel is a ratio or a time from the same run; dashed lines are the targets.
    """
    import matplotlib.pyplot as plt  # only when drawing: keeps matplotlib out of the measuring

    check_type("results", results, BenchResults, "the BenchResults run_benchmarks returns")
    if axes is None:
        fig, axes = plt.subplots(2, 4, figsize=(18, 7.2), dpi=80, layout="constrained")
    axes = [ax for row in axes for ax in row] if hasattr(axes[0], "__len__") else list(axes)
    if len(axes) == 8:  # a 2 x 4 grid: figures 1-3 and 6 on top, 4, 5 and 6's step times below
        axes = [axes[i] for i in (0, 1, 2, 4, 5, 6, 3, 7)]
    fig = axes[0].figure
    r, d, m = results, results.details, results.machine
    fig.suptitle(f"kvlab bench ({r.plan.name}): {m.cpu}, {m.cpus_available or m.cpu_count} cores, torch {m.torch}, "
                 f"{m.torch_threads} thread{'s' * (m.torch_threads != 1)}, float32")

    ax = axes[0]  # figure 1
    lengths, speedups = [int(t) for t in r.speedup_by_T], list(r.speedup_by_T.values())
    ax.plot(lengths, speedups, "o-", color="C0", label="measured")
    ax.axhline(TARGETS["cache_speedup"].threshold, color="tab:red", linestyle="--", label="target: 10×")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    _plain_ticks(ax)
    ax.set_xlabel(f"new tokens T (after a {d.figure1.prompt_len}-token prompt)")
    ax.set_ylabel("cached ÷ uncached tokens/s")
    ax.set_title(f"1. The cache: {speedups[-1]:.0f}× faster at T = {lengths[-1]}")
    ax.legend(fontsize=8)

    ax = axes[1]  # figure 2
    regimes = [("small", "4 × 128"), ("gpt2", "GPT-2-small shape")]
    if r.vs_transformers_cached is None:
        ax.text(0.5, 0.5, "transformers not installed:\nnot measured", ha="center", va="center",
                transform=ax.transAxes)
    else:
        contenders = ((r.vs_transformers_cached, "cached, lean_generate", "C0"),
                      (r.vs_transformers_cached_generate, "cached, generate", "C9"),
                      (r.vs_transformers_uncached, "uncached, generate", "C7"))
        for offset, (ratios, label, color) in enumerate(contenders):
            bars = ax.bar([i + 0.27 * offset for i in range(2)], [ratios[regime] for regime, _ in regimes],
                          width=0.25, color=color, label=label)
            ax.bar_label(bars, fmt="%.2f×", fontsize=7)
        for i, (regime, _) in enumerate(regimes):
            ax.hlines(TARGETS[f"vs_transformers_cached.{regime}"].threshold, i - 0.15, i + 0.15, color="tab:red",
                      linestyle="--", label="target (lean, cached)" if i == 0 else None)
        ax.axhline(1, color="black", linewidth=0.8)
        ax.legend(fontsize=8)
    ax.set_xticks([0.27, 1.27], [label for _, label in regimes])
    ax.set_ylabel("kvlab ÷ transformers tokens/s")
    ax.set_title("2. kvlab vs transformers, same weights, same tokens")

    ax = axes[2]  # figure 3
    f3 = d.figure3
    for offset, (kind, near_s, far_s, color) in enumerate((("Static", f3.static_near_s, f3.static_far_s, "C0"),
                                                           ("Dynamic", f3.dynamic_near_s, f3.dynamic_far_s, "C1"))):
        bars = ax.bar([0.38 * offset, 1 + 0.38 * offset], [near_s * 1e3, far_s * 1e3], width=0.36, color=color,
                      label=f"{kind}Cache")
        ax.bar_label(bars, fmt="%.1f", fontsize=8)
    ax.set_xticks([0.19, 1.19], [f"{f3.near} tokens cached", f"{f3.far} tokens cached"])
    ax.set_ylabel("time per decode step (ms)")
    ax.set_title(f"3. Far ÷ near: static ×{r.static_latency_ratio:.2f}, dynamic ×{r.dynamic_latency_ratio:.2f}")
    ax.legend(fontsize=8, loc="lower right")

    ax = axes[3]  # figure 4
    f4 = d.figure4
    labels = ["read bandwidth\n(sum of 1 GiB)", "kernel floor\n(matmuls only)", "decode step,\nlean_generate",
              "decode step,\ngenerate"]
    rates = [f4.read_bandwidth_bytes_per_s / 1e9, f4.kernel_floor_bytes_per_s / 1e9, f4.decode_bytes_per_s / 1e9,
             f4.generate_decode_bytes_per_s / 1e9]
    bars = ax.barh(labels[::-1], rates[::-1], color=["C0", "C7", "C2", "C9"][::-1])
    ax.bar_label(bars, fmt="%.1f GB/s", fontsize=8)
    ax.set_xlabel("weight bytes read per second (GB/s)")
    ax.set_xlim(0, max(rates) * 1.3)
    ax.set_title(f"4. Lean decode at {r.kernel_floor_fraction:.0%} of the kernel floor, "
                 f"{r.bandwidth_fraction:.0%} of bandwidth")

    sweep = r.batch_sweep
    batches = [row.batch_size for row in sweep]
    for ax, values, ylabel, color in (
            (axes[4], [row.tokens_per_s for row in sweep], "decode throughput (tokens/s, all rows)", "C0"),
            (axes[5], [row.latency_s * 1e3 for row in sweep], "time per decode step (ms)", "C1")):
        ax.plot(batches, values, "o-", color=color)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        _plain_ticks(ax)
        ax.set_xlabel("batch size B (GPT-2-small shape)")
        ax.set_ylabel(ylabel)
    axes[4].set_title(f"5. Batch {batches[-1]}: ×{sweep[-1].tokens_per_s / sweep[0].tokens_per_s:.1f} tokens/s ...")
    axes[5].set_title(f"... for ×{sweep[-1].latency_s / sweep[0].latency_s:.1f} time per step")
    if len(axes) >= 8:
        _plot_figure6(r, axes[6], axes[7])
    for ax in axes:
        ax.grid(True, which="major", alpha=0.3)
    return fig


def _plot_figure6(r: BenchResults, ax_rates, ax_steps) -> None:
    """Figure 6: SmolLM2's cached tokens/s in each loop (bars), and one step's time against the tokens before it."""
    f6 = r.details.figure6
    why = _figure6_skipped(r)
    comparison = None if f6 is None else f6.comparison
    if comparison is None:
        ax_rates.text(0.5, 0.5, f"{why}", ha="center", va="center", wrap=True, transform=ax_rates.transAxes,
                      fontsize=8)
    else:
        rates = [comparison.transformers_tokens_per_s, comparison.kvlab_tokens_per_s,
                 comparison.kvlab_lean_tokens_per_s]
        bars = ax_rates.bar(["transformers", "kvlab\ngenerate", "kvlab\nlean_generate"], rates,
                            color=["C7", "C9", "C0"])
        ax_rates.bar_label(bars, labels=[f"{x:.1f}" for x in rates], fontsize=8)
        ax_rates.axhline(TARGETS["vs_transformers_smollm2"].threshold * rates[0], color="tab:red", linestyle="--",
                         label="target: 1.2 × transformers")
        ax_rates.legend(fontsize=8, loc="lower right")
    ax_rates.set_ylabel("cached tokens/s, batch 1, 1 thread")
    ratio = "" if r.vs_transformers_smollm2 is None else f": lean ×{r.vs_transformers_smollm2:.2f}"
    ax_rates.set_title(f"6. SmolLM2-135M vs transformers{ratio}")
    if f6 is None or f6.cache_speedup is None:
        ax_steps.text(0.5, 0.5, f"{why}", ha="center", va="center", wrap=True, transform=ax_steps.transAxes,
                      fontsize=8)
        ax_steps.set_title("6. SmolLM2-135M: the cache")
        return
    for times, label, color in ((f6.uncached_step_s, "uncached (reads every token)", "C7"),
                                (f6.cached_step_s, "cached (reads one token)", "C0")):
        ax_steps.plot(f6.step_lengths, [t * 1e3 for t in times], "o-", color=color, label=label)
    ax_steps.set_yscale("log")
    _plain_ticks(ax_steps)
    from matplotlib.ticker import NullFormatter

    ax_steps.yaxis.set_minor_formatter(NullFormatter())  # decades apart: minor labels would overlap
    ax_steps.set_xlabel("tokens before the step")
    ax_steps.set_ylabel("time of one step (ms)")
    ax_steps.set_title(f"6. Cache: {f6.cache_speedup:.0f}× over {f6.generated} tokens (integrated)")
    ax_steps.legend(fontsize=8)
