"""kvlab bench: the quick run works end to end and its results have the promised shape.

No test asserts a speed: the figures are ratios measured on whatever machine runs the tests, so only their
structure, their consistency (tokens/s = batch / step time) and that they are positive and finite are checked.
"""

import json
import math

import pytest
import torch

import kvlab
from kvlab import benchmark
from kvlab.cli import main
from conftest import random_model

HEADLINE_KEYS = ["format_version", "cache_speedup", "speedup_by_T", "vs_transformers_cached",
                 "vs_transformers_uncached", "static_latency_ratio", "dynamic_latency_ratio", "kernel_floor_fraction",
                 "bandwidth_fraction", "batch_sweep", "machine"]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """`kvlab bench --quick` through the command line, once: (printed table, loaded JSON, output folder)."""
    pytest.importorskip("transformers")
    folder = tmp_path_factory.mktemp("bench")
    out = folder / "quick.json"
    import contextlib
    import io

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        status = main(["bench", "--quick", "--out", str(out)])
    assert status == 0
    return printed.getvalue(), json.loads(out.read_text()), folder


def _positive_finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def test_quick_run_writes_every_headline_key(quick_run):
    _, results, _ = quick_run
    assert all(key in results for key in HEADLINE_KEYS)
    for key in ("vs_transformers_cached", "vs_transformers_cached_generate", "vs_transformers_uncached"):
        assert set(results[key]) == {"small", "gpt2"}
    plan = benchmark.PLANS["quick"]
    assert list(results["speedup_by_T"]) == [str(T) for T in plan.lengths]
    assert results["cache_speedup"] == results["speedup_by_T"][str(plan.lengths[-1])]
    assert [row["batch_size"] for row in results["batch_sweep"]] == list(plan.batch_sizes)
    assert results["plan"]["name"] == "quick"


def test_every_ratio_is_positive_and_finite(quick_run):
    _, results, _ = quick_run
    ratios = [results["cache_speedup"], *results["speedup_by_T"].values(),
              *results["vs_transformers_cached"].values(), *results["vs_transformers_uncached"].values(),
              *results["vs_transformers_cached_generate"].values(),
              results["static_latency_ratio"], results["dynamic_latency_ratio"], results["kernel_floor_fraction"],
              results["bandwidth_fraction"]]
    for row in results["batch_sweep"]:
        ratios += [row["tokens_per_s"], row["latency_s"]]
    assert all(_positive_finite(r) for r in ratios), ratios


def test_batch_sweep_throughput_is_batch_over_step_time(quick_run):
    _, results, _ = quick_run
    for row in results["batch_sweep"]:  # both rounded to 4 significant digits in the file
        assert row["tokens_per_s"] == pytest.approx(row["batch_size"] / row["latency_s"], rel=1e-3)


def test_figure_ratios_are_the_quotients_of_their_timings(quick_run):
    _, results, _ = quick_run
    d = results["details"]
    f3 = d["figure3"]
    assert results["static_latency_ratio"] == pytest.approx(f3["static_2000_s"] / f3["static_100_s"], rel=1e-3)
    assert results["dynamic_latency_ratio"] == pytest.approx(f3["dynamic_2000_s"] / f3["dynamic_100_s"], rel=1e-3)
    f4 = d["figure4"]
    assert results["kernel_floor_fraction"] == pytest.approx(f4["kernel_floor_s"] / f4["decode_step_s"], rel=1e-3)
    assert results["bandwidth_fraction"] == pytest.approx(
        f4["weight_bytes"] / f4["decode_step_s"] / f4["read_bandwidth_bytes_per_s"], rel=1e-3)
    for T, row in d["figure1"]["by_T"].items():
        assert results["speedup_by_T"][T] == pytest.approx(row["uncached_s"] / row["cached_s"], rel=1e-3)


def test_kvlab_and_transformers_made_the_same_tokens(quick_run):
    _, results, _ = quick_run
    for cached in ("cached", "uncached"):
        for regime in ("small", "gpt2"):
            row = results["details"]["figure2"][cached][regime]
            assert row["same_tokens"] is True and row["transformers_messages"] == []
            assert row["kvlab_same_tokens"] is True
            assert row.get("kvlab_lean_same_tokens", cached == "uncached") is True


def test_cached_headline_is_lean_generate_and_readable_ratio_is_kept(quick_run):
    _, results, _ = quick_run
    for regime in ("small", "gpt2"):
        cached = results["details"]["figure2"]["cached"][regime]
        uncached = results["details"]["figure2"]["uncached"][regime]
        assert cached["headline"] == "lean_generate" and uncached["headline"] == "generate"
        assert results["vs_transformers_cached"][regime] == cached["kvlab_lean_ratio"]
        assert results["vs_transformers_cached_generate"][regime] == cached["kvlab_ratio"]
        assert results["vs_transformers_uncached"][regime] == uncached["kvlab_ratio"]
        assert "kvlab_lean_ratio" not in uncached  # no lean loop without a cache


def test_machine_section_names_threads_and_versions(quick_run):
    _, results, _ = quick_run
    machine = results["machine"]
    assert machine["torch_threads"] == 1 and machine["torch"] == torch.__version__
    assert machine["dtype"] == "float32" and machine["cpu_count"] >= 1


def test_table_and_plot_are_written(quick_run):
    printed, results, folder = quick_run
    for label in ("1  cache speed-up", "2a lean_generate ÷ transformers, cached",
                  "generate ÷ transformers (the readable", "2b generate ÷ transformers, uncached",
                  "3  StaticCache", "4  kernel floor ÷ lean_generate's step", "kernel floor ÷ generate's step",
                  "5  batch"):
        assert label in printed
    assert ("All targets checked were met" in printed) or ("Targets missed" in printed)
    assert "Not checked: cache_speedup: the target is set for T = 512; this run's longest T is 128" in printed
    png = folder / "quick.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_benchmark_draws_six_panels(quick_run):
    _, results, _ = quick_run
    import matplotlib.pyplot as plt

    from kvlab import plots

    fig = plots.plot_benchmark(results)
    assert len(fig.axes) == 6
    plt.close(fig)
    with pytest.raises(TypeError, match="run_benchmarks"):
        plots.plot_benchmark({"cache_speedup": 3.0})


# --- the pieces, on tiny inputs ---

def test_decode_weight_bytes_counts_one_row_of_the_position_table():
    model = random_model(n_layer=2, d_model=32, vocab_size=37, max_seq_len=64)
    C, V, L = 32, 37, 2
    per_layer = 2 * 2 * C + (C * 3 * C + 3 * C) + (C * C + C) + (C * 4 * C + 4 * C) + (4 * C * C + C)
    expected = 4 * (V * C + C + L * per_layer + 2 * C)  # wte (also the head), one wpe row, blocks, ln_f
    assert benchmark.decode_weight_bytes(model) == expected


def test_kernel_floor_uses_every_linear_then_the_head():
    model = random_model(n_layer=3)
    layers = benchmark._linears(model)
    assert len(layers) == 4 * 3 + 1 and layers[-1][0] is model.wte.weight
    assert layers[0][0] is model.blocks[0].attn.qkv.weight
    assert _positive_finite(benchmark.kernel_floor_seconds(model, repeats=1, warmup=0))


def test_interleaved_medians_alternates_the_contenders():
    calls = []
    seconds = benchmark.interleaved_medians({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")},
                                            repeats=3, warmup=1)
    assert calls == ["a", "b"] * 4 and set(seconds) == {"a", "b"}
    assert all(s >= 0 for s in seconds.values())


@pytest.mark.parametrize("cache", ["static", "dynamic", "lean"])
def test_decode_step_seconds_fills_the_cache_and_times_steps(cache):
    model = random_model()
    assert _positive_finite(benchmark.decode_step_seconds(model, 40, 3, cache=cache, batch_size=2, repeats=1))


def test_lean_decode_steps_time_n_steps_and_continue_like_generate():
    model = random_model()
    idx = torch.randint(37, (2, 21), generator=torch.Generator().manual_seed(0))
    steps = benchmark._lean_decode_steps(model, idx, 5, 27, torch.Generator().manual_seed(1))
    assert len(steps) == 5 and all(_positive_finite(s) for s in steps)


def test_figure_4_reports_the_readable_models_step_too(quick_run):
    _, results, _ = quick_run
    f4 = results["details"]["figure4"]
    assert results["kernel_floor_fraction_generate"] == pytest.approx(
        f4["kernel_floor_s"] / f4["generate_decode_step_s"], rel=1e-3)
    assert results["bandwidth_fraction_generate"] == pytest.approx(
        f4["weight_bytes"] / f4["generate_decode_step_s"] / f4["read_bandwidth_bytes_per_s"], rel=1e-3)


def test_filled_cache_holds_position_tokens():
    model = random_model()
    for kind in ("static", "dynamic"):
        cache = benchmark._filled_cache(model, kind, 20, 30, 2, torch.Generator().manual_seed(0))
        assert [cache.get_seq_length(layer) for layer in range(2)] == [20, 20]


def test_compare_with_transformers_on_a_small_model():
    pytest.importorskip("transformers")
    model = random_model(n_kv_head=4)
    row = benchmark.compare_with_transformers(model, 4, 6, repeats=1, warmup=0)
    assert row["same_tokens"] is True and _positive_finite(row["ratio"])
    assert row["ratio"] == pytest.approx(row["kvlab_lean_tokens_per_s"] / row["transformers_tokens_per_s"])
    assert row["kvlab_ratio"] == pytest.approx(row["kvlab_tokens_per_s"] / row["transformers_tokens_per_s"])
    row = benchmark.compare_with_transformers(model, 4, 6, use_cache=False, repeats=1, warmup=0)
    assert row["ratio"] == pytest.approx(row["kvlab_tokens_per_s"] / row["transformers_tokens_per_s"])


def test_read_bandwidth_is_positive():
    assert _positive_finite(benchmark.measure_read_bandwidth(2**20, repeats=1))


def test_check_targets_reports_met_missed_and_unmeasured():
    results = {"cache_speedup": 12.0, "speedup_by_T": {"64": 3.0, "128": 2.0},
               "vs_transformers_cached": None, "static_latency_ratio": 1.31, "kernel_floor_fraction": 0.9}
    checked = benchmark.check_targets(results)
    assert checked["cache_speedup"]["met"] is True
    assert checked["static_latency_ratio"]["met"] is False
    assert checked["kernel_floor_fraction"]["met"] is True  # the bound itself counts
    assert checked["vs_transformers_cached.small"]["met"] is None
    assert checked["speedup_grows_with_T"]["met"] is False
    note = benchmark.closing_note({**results, "targets": checked})
    assert "static_latency_ratio: 1.310 (target <= 1.3)" in note and "speedup_grows_with_T" in note
    assert "vs_transformers_cached.small: not measured (transformers not installed, or skipped)" in note


def test_cache_speedup_target_is_only_checked_at_512_tokens():
    results = {"cache_speedup": 8.0, "speedup_by_T": {"32": 3.0, "128": 8.0},
               "details": {"figure1": {"headline_T": 128}}}
    checked = benchmark.check_targets(results)["cache_speedup"]
    assert checked["met"] is None and "longest T is 128" in checked["why_not_checked"]
    results["details"]["figure1"]["headline_T"] = 512
    assert benchmark.check_targets(results)["cache_speedup"]["met"] is False


def test_save_results_writes_json_without_nan(tmp_path):
    path = benchmark.save_results({"a": float("nan"), "b": [1.23456789, float("inf")], 3: {"c": 2}},
                                  tmp_path / "sub" / "r.json")
    assert json.loads(open(path).read()) == {"a": None, "b": [1.235, None], "3": {"c": 2}}


def test_make_model_is_seeded_and_leaves_the_global_rng_alone():
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = benchmark.make_model("small", seed=1)
    assert torch.equal(torch.rand(1), before)
    assert torch.equal(a.wte.weight, benchmark.make_model("small", seed=1).wte.weight)
    assert a.config == benchmark.BENCH_MODELS["small"] and not a.training


# --- bad input ---

@pytest.mark.parametrize("call, error, message", [
    (lambda: benchmark.make_model("gpt3"), ValueError, "name must be one of small, gpt2, long, got 'gpt3'"),
    (lambda: benchmark.run_benchmarks("slow"), ValueError, "plan must be one of default, quick"),
    (lambda: benchmark.run_benchmarks("quick", threads=0), ValueError, "threads must be >= 1, got 0"),
    (lambda: benchmark.interleaved_medians({}), TypeError, "non-empty mapping"),
    (lambda: benchmark.interleaved_medians({"a": 3}), TypeError, "non-empty mapping"),
    (lambda: benchmark.interleaved_medians({"a": print}, repeats=0), ValueError, "repeats must be >= 1, got 0"),
    (lambda: benchmark.measure_read_bandwidth(2), ValueError, "n_bytes must be >= 4, got 2"),
    (lambda: benchmark.decode_weight_bytes("model"), TypeError, "model must be a kvlab.TinyGPT, got str"),
    (lambda: benchmark.kernel_floor_seconds(None), TypeError, "model must be a kvlab.TinyGPT, got NoneType"),
    (lambda: benchmark.kernel_floor_seconds(random_model(), batch_size=0), ValueError, "batch_size must be >= 1"),
    (lambda: benchmark.decode_step_seconds(random_model(), 10, cache="paged"), ValueError,
     "cache must be 'static', 'dynamic' or 'lean', got 'paged'"),
    (lambda: benchmark.decode_step_seconds(random_model(), 60, 8), ValueError,
     r"position \(60\) \+ n_steps \(8\) \+ 1 = 69 exceeds the model's max_seq_len=64"),
    (lambda: benchmark.decode_step_seconds(random_model(), 0), ValueError, "position must be >= 1, got 0"),
    (lambda: benchmark.decode_step_seconds(random_model(), 2.5), TypeError, "position must be an int"),
    (lambda: benchmark.compare_with_transformers(random_model(), 60, 8), ValueError,
     r"prompt_len \(60\) \+ new_tokens \(8\) = 68 exceeds max_seq_len=64"),
    (lambda: benchmark.compare_with_transformers(random_model(), 4, 4, use_cache=1), TypeError,
     "use_cache must be True or False, got 1"),
    (lambda: benchmark.check_targets([]), TypeError, "results must be the dict"),
    (lambda: benchmark.format_table({}), TypeError, "results must be the dict"),
    (lambda: benchmark.save_results({}, "out.txt"), ValueError, "must end in .json, got 'out.txt'"),
])
def test_bad_input_names_the_value(call, error, message):
    with pytest.raises(error, match=message):
        call()


@pytest.mark.parametrize("argv, message", [
    (["bench", "--threads", "0"], "--threads must be >= 1, got 0"),
    (["bench", "--out", "results.csv"], "--out must name a .json file, got 'results.csv'"),
    (["bench", "--plot", "plot.svg"], "--plot must name a .png file, got 'plot.svg'"),
    (["bench", "--threads", "two"], "invalid int value: 'two'"),
])
def test_bench_command_rejects_bad_arguments_in_one_line(capsys, argv, message):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_import_kvlab_does_not_import_the_benchmark_module():
    import subprocess
    import sys

    code = "import kvlab, sys; print('kvlab.benchmark' in sys.modules, 'transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
    assert kvlab.TinyGPT is benchmark.TinyGPT  # the benchmark measures the package's own model


def test_readmes_quote_the_committed_default_run():
    """The Performance tables are the committed run's numbers, rounded, not numbers typed by hand."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    results = json.loads((root / benchmark.DEFAULT_OUT).read_text(encoding="utf-8"))
    assert results["plan"]["name"] == "default" and all(t["met"] is not False for t in results["targets"].values())
    quoted = [f"{results['cache_speedup']:.1f}×", f"{results['elapsed_s']:.0f} s",
              ", ".join(f"{s:.1f}×" for s in results["speedup_by_T"].values()),
              f"{results['static_latency_ratio']:.2f}", f"{results['dynamic_latency_ratio']:.2f}",
              f"{results['kernel_floor_fraction']:.2f}", f"{results['bandwidth_fraction']:.2f}",
              f"{results['kernel_floor_fraction_generate']:.2f}", f"{results['bandwidth_fraction_generate']:.2f}",
              ", ".join(f"{row['tokens_per_s']:.0f}" for row in results["batch_sweep"])]
    for key in ("vs_transformers_cached", "vs_transformers_cached_generate", "vs_transformers_uncached"):
        quoted += [f"{results[key][regime]:.2f}×" for regime in ("small", "gpt2")]
    for readme in (root / "README.md", root / "benchmarks" / "README.md"):
        text = readme.read_text(encoding="utf-8")
        missing = [q for q in quoted if q not in text]
        assert not missing, f"{readme.name} does not quote {missing} from {benchmark.DEFAULT_OUT}"
