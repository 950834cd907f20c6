"""TEMPORARY home of `plot_benchmark`, the figure of `kvlab bench`, until the branches merge.

The suite helper moves it into the `kvlab.bench` subpackage; at merge this file and its re-export in
`kvlab/plots/__init__.py` are deleted. It is kept out of the chapters' `kvlab.plots` modules on purpose.
"""

from __future__ import annotations

import matplotlib.pyplot as plt

from .plots._style import plain_log2_ticks as _plain_log2_ticks


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
