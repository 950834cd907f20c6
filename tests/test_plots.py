"""kvlab.plots, one section per chapter: each figure draws the numbers it is given, and bad input names the value."""

from __future__ import annotations

import re

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from kvlab import measure, memory, plots, quality
from kvlab.attention_trace import cache_step_grid, trace_attention
from kvlab.fastgen import POLICIES
from kvlab.flops import positions_processed
from kvlab.generate import GenerationStats
from kvlab.memory import GIB
from kvlab.plots import compression
from tests.helpers import random_model


def _fake_runs():
    return {"without cache": GenerationStats(16, 4, 0.002, [0.003, 0.004, 0.005]),
            "with cache": GenerationStats(16, 4, 0.002, [0.001, 0.001, 0.001])}


GPT3_PER_TOKEN = 2 * 96 * 12288 * 2  # K and V · layers · hidden · fp16 = 4,718,592 bytes


GPT3_WEIGHTS = 175_000_000_000 * 2  # fp16


_P = memory.get_preset("llama2-7b")


def _report(ce: float, ratio: float = 0.5, top1: float = 0.9):
    return quality.QualityReport(10, top1, 1.0, ce, 0.3, int(ratio * 1000), 1000)


def test_bytes_per_step_accepts_numpy_ints():
    ax = plots.plot_bytes_per_step({"full": np.array([1024, 2048, 3072])}).axes[0]
    assert list(ax.lines[0].get_xdata()) == [1, 2, 3] and list(ax.lines[0].get_ydata()) == [1.0, 2.0, 3.0]


# --- chapter 01: autoregressive generation ---------------------------------------------------------------------------


@pytest.mark.parametrize("prompt_len, n_new", [(6, 8), (1, 1), (3, 20)])
def test_plot_positions_per_step_draws_one_bar_per_step_and_mode(prompt_len, n_new):
    fig = plots.plot_positions_per_step(prompt_len, n_new)
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    without, with_cache = ax.containers
    assert [bar.get_height() for bar in without] == positions_processed(prompt_len, n_new, use_cache=False)
    assert [bar.get_height() for bar in with_cache] == positions_processed(prompt_len, n_new, use_cache=True)
    assert ax.get_xlabel() and ax.get_ylabel() and ax.get_title()
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert str(sum(positions_processed(prompt_len, n_new, use_cache=False))) in labels[0]


def test_plot_positions_per_step_draws_into_a_given_axes_and_rejects_bad_input():
    fig, ax = plt.subplots()
    assert plots.plot_positions_per_step(2, 3, ax=ax) is fig and len(ax.containers) == 2
    with pytest.raises(ValueError, match="n_new"):
        plots.plot_positions_per_step(2, 0)


def test_plot_step_times_one_line_per_run_in_milliseconds():
    fig = plots.plot_step_times(_fake_runs(), title="a finding")
    ax = fig.axes[0]
    assert isinstance(fig, Figure) and len(ax.lines) == 2 and ax.get_title() == "a finding"
    assert list(ax.lines[0].get_ydata()) == pytest.approx([2.0, 3.0, 4.0, 5.0])
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["without cache", "with cache"]


def test_plot_throughput_one_line_per_run_from_cumulative_tokens_per_s():
    runs = _fake_runs()
    fig = plots.plot_throughput(runs)
    ax = fig.axes[0]
    assert isinstance(fig, Figure) and len(ax.lines) == 2 and ax.get_xscale() == "log"
    for line, stats in zip(ax.lines, runs.values()):
        assert list(line.get_xdata()) == [1, 2, 3, 4]
        assert list(line.get_ydata()) == pytest.approx(measure.cumulative_tokens_per_s(stats))


def test_plots_of_a_real_measurement():
    model = random_model()
    runs = {c: measure.time_generation(model, 4, 6, use_cache=c, repeats=1) for c in (False, True)}
    runs = {f"use_cache={c}": stats for c, stats in runs.items()}
    assert len(plots.plot_step_times(runs).axes[0].lines) == 2
    assert len(plots.plot_throughput(runs).axes[0].lines) == 2


@pytest.mark.parametrize("plot", [plots.plot_step_times, plots.plot_throughput])
@pytest.mark.parametrize("bad, error, message", [
    ({}, ValueError, "stats_by_label"),
    ([1, 2], TypeError, "stats_by_label"),
    ({"run": 0.5}, TypeError, "stats_by_label\\['run'\\]"),
])
def test_timing_plots_bad_input(plot, bad, error, message):
    with pytest.raises(error, match=message):
        plot(bad)


# --- chapter 02: attention h to hello --------------------------------------------------------------------------------


@pytest.mark.parametrize("T", [1, 4, 10])
def test_cache_step_figure_draws_every_step(T):
    tokens = list("hello cach"[:T])
    for t in sorted({0, 1, T // 2, T}):
        fig = plots.plot_cache_step(t, T, tokens)
        assert len(fig.axes) == 2
        assert f"\n{t * (t + 1) // 2} score" in fig.axes[0].get_title()
        assert f"\n{t} score" in fig.axes[1].get_title()
        plt.close(fig)


def test_cache_step_figure_redraws_into_given_axes():
    fig, axes = plt.subplots(1, 2)
    plots.plot_cache_step(2, 3, axes=axes)
    assert plots.plot_cache_step(3, 3, axes=axes) is fig
    assert len(fig.legends) == 1
    plt.close(fig)


@pytest.mark.parametrize("t, T, error", [(-1, 4, ValueError), (5, 4, ValueError), (1.0, 4, TypeError),
                                         (1, 0, ValueError), (True, 4, TypeError)])
def test_cache_step_rejects_bad_steps(t, T, error):
    with pytest.raises(error, match="seq_len" if T == 0 else "t must be an int"):
        plots.plot_cache_step(t, T)
    with pytest.raises(error, match="seq_len" if T == 0 else "t must be an int"):
        cache_step_grid(t, T, True)
    plt.close("all")


def test_cache_step_rejects_bad_tokens_and_flags():
    with pytest.raises(ValueError, match="tokens"):
        plots.plot_cache_step(1, 3, tokens=["a", "b"])
    with pytest.raises(TypeError, match="use_cache"):
        cache_step_grid(1, 3, use_cache=1)
    plt.close("all")


def test_plot_attention_weights(hello):
    model, tokenizer = hello
    trace = trace_attention(model, tokenizer.encode_batch("hell"), 0, 0)
    ax = plots.plot_attention_weights(trace.weights, list("hell")).axes[0]
    drawn = ax.images[0].get_array()  # the weights, the causally masked cells (key after query) hidden
    weights = trace.weights.numpy()
    assert drawn.mask.tolist() == [[j > i for j in range(4)] for i in range(4)]
    assert np.allclose(drawn.filled(0), np.tril(weights)) and np.allclose(weights.sum(axis=1), 1)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["1 h", "2 e", "3 l", "4 l"]
    for bad in [torch.ones(2, 3), torch.ones(3), torch.ones(0, 0)]:
        with pytest.raises(ValueError, match="weights"):
            plots.plot_attention_weights(bad)
    with pytest.raises(ValueError, match="tokens"):
        plots.plot_attention_weights(trace.weights, list("he"))
    plt.close("all")


def _nan_at_1_0(weights):
    weights = weights.clone()
    weights[1, 0] = float("nan")
    return weights


@pytest.mark.parametrize(("make_bad", "error", "message"), [
    (_nan_at_1_0, ValueError, "weights must be finite, got weights[1, 0] = nan; pass softmax outputs"),
    (lambda w: w.masked_fill(w == 0, float("-inf")).log(), ValueError, "weights must be finite"),  # log-probs
    (lambda w: torch.tril(w * 3 - 1), ValueError, "weights must be probabilities (>= 0)"),  # raw scores
    (lambda w: w * 0.5, ValueError, "each row of weights must sum to 1 (a softmax; 0 for a fully masked query), "
                                    "row 0 sums to 0.5; pass softmax outputs"),
    (lambda w: torch.full_like(w, 0.25), ValueError, "weights must be 0 above the diagonal"),
    (lambda w: None, TypeError, "weights must be a (T, T) tensor or array of attention weights, got NoneType"),
    (lambda w: "weights", TypeError, "got str"),
])
def test_plot_attention_weights_refuses_what_is_not_a_softmax(hello, make_bad, error, message):
    """NaN was drawn as a hole and raw scores as a saturated block, without a word."""
    model, tokenizer = hello
    weights = trace_attention(model, tokenizer.encode_batch("hell"), 0, 0).weights
    with pytest.raises(error, match=re.escape(message)):
        plots.plot_attention_weights(make_bad(weights))
    plt.close("all")


def test_plot_attention_weights_names_tokens_that_are_not_a_list(hello):
    model, tokenizer = hello
    weights = trace_attention(model, tokenizer.encode_batch("hell"), 0, 0).weights
    with pytest.raises(TypeError, match="tokens must be a list of labels, one per position, got int"):
        plots.plot_attention_weights(weights, tokens=4)
    plots.plot_attention_weights(weights, tokens="hell")  # a string: one character per position
    plt.close("all")


def test_plot_attention_weights_takes_low_precision_and_fully_masked_rows(hello):
    model, tokenizer = hello
    weights = trace_attention(model, tokenizer.encode_batch("hell"), 0, 0).weights
    for low in (torch.float16, torch.bfloat16):  # rows sum to 1 only up to rounding
        plots.plot_attention_weights(weights.to(low))
    padded = weights.clone()
    padded[0] = 0  # a padding query whose keys are all masked: no weight anywhere
    plots.plot_attention_weights(padded)
    plt.close("all")


# --- chapter 03: building the cache ----------------------------------------------------------------------------------


def test_copied_bytes_plot(hello):
    plots = pytest.importorskip("kvlab.plots")
    import matplotlib.pyplot as plt

    figure = plots.copied_bytes_vs_length([2, 4], {"a": [4, 16], "b": [2, 4]}, {"a": [4, 16]})
    ax = figure.axes[0]
    assert ax.get_xscale() == ax.get_yscale() == "log" and "Θ(T²)" in ax.get_title()
    assert len(ax.lines) == 3
    plt.close(figure)
    with pytest.raises(ValueError, match=r"measured\['a'\]"):
        plots.copied_bytes_vs_length([2, 4], {"a": [4]})
    with pytest.raises(ValueError, match=r"measured\['a'\]\[0\]"):  # a log axis cannot show 0
        plots.copied_bytes_vs_length([1, 2], {"a": [0, 4]})


@pytest.mark.parametrize("lengths, measured, message", [
    ([], {"a": []}, "lengths"),
    ([1, 2], {"a": [1.0, float("nan")]}, r"measured\['a'\]\[1\]"),
    ([1, 2], {"a": [1.0, float("inf")]}, r"measured\['a'\]\[1\]"),
    ([0, 2], {"a": [1.0, 2.0]}, r"lengths\[0\]"),
    ([1, 2], {"a": [1.0]}, r"measured\['a'\]"),
])
def test_copied_bytes_plot_rejects_what_a_log_axis_cannot_show(lengths, measured, message):
    with pytest.raises(ValueError, match=message):
        plots.copied_bytes_vs_length(lengths, measured)


# --- chapter 04: cost with and without cache -------------------------------------------------------------------------


def test_plot_cost_vs_length_normalises_and_reports_slopes():
    x = [1, 2, 4, 8]
    fig = plots.plot_cost_vs_length(x, {"with cache": [3, 6, 12, 24], "without cache": [3, 12, 48, 192]},
                                    counted={"with cache": [3, 6, 12, 24]},
                                    seconds={"with cache": [0.5, 0.5, 0.5, 0.5]}, fit_from=2)
    labels = [line.get_label() for line in fig.axes[0].get_lines()]
    assert "with cache: FLOPs, formula (slope 1.00)" in labels
    assert "without cache: FLOPs, formula (slope 2.00)" in labels
    assert "with cache: seconds, measured (slope 0.00)" in labels
    first = fig.axes[0].get_lines()[0]
    assert list(first.get_ydata()) == [1, 2, 4, 8]  # divided by its first value


@pytest.mark.parametrize("call, message", [
    (lambda: plots.plot_cost_vs_length([1, 2], {"a": [1]}), r"flops\['a'\]"),  # one value too few
    (lambda: plots.plot_cost_vs_length([1, 2], {"a": [1, 0]}), r"flops\['a'\]\[1\]"),  # 0 on a log axis
    (lambda: plots.plot_cost_vs_length([], {"a": []}), "lengths"),
    (lambda: plots.plot_cost_vs_length([1, 2], {}), "flops"),
    (lambda: plots.plot_cache_speedup([1, 2], [1, 2], [1, -1]), r"time_ratio\[1\]"),
    (lambda: plots.plot_cost_split([0], {}, [1], {}), r"step_lengths\[0\]"),
    (lambda: plots.plot_cost_split([1], {"m": {"dense": [1, 2]}}, [1], {}), r"step\['m'\]\['dense'\]"),
])
def test_chapter04_plots_reject_bad_input(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_plot_cache_speedup_draws_bounds_and_both_ratios():
    fig = plots.plot_cache_speedup([1, 2, 4], [1, 1.5, 2.5], [1.2, 1.1, 1.3],
                                   bounds={"(T+1)/2": [1, 1.5, 2.5], "(2T+1)/3": [1, 5 / 3, 3]})
    labels = [line.get_label() for line in fig.axes[0].get_lines()]
    assert {"(T+1)/2", "(2T+1)/3", "FLOPs saved (formula)", "time saved (measured)"} <= set(labels)


# --- chapter 05: prefill and decode ----------------------------------------------------------------------------------


def test_intensity_plot_draws_each_series_and_ridge():
    ax = plots.plot_intensity({"prefill": ([1, 2, 4], [0.5, 1.0, 2.0])}, {"CPU": 3.0}).axes[0]
    series, ridge = ax.lines
    assert list(series.get_xdata()) == [1, 2, 4] and list(series.get_ydata()) == [0.5, 1.0, 2.0]
    assert list(ridge.get_ydata()) == [3.0, 3.0] and ax.get_xscale() == ax.get_yscale() == "log"
    _, ax = plt.subplots()
    assert plots.plot_intensity({"one point": ([1], [1])}, ax=ax) is ax.figure and len(ax.lines) == 1


def test_roofline_plot_draws_min_of_peak_and_bandwidth_with_ridges_and_points():
    peak, bandwidth = 1e11, 2e10  # ridge at 5 FLOP/byte
    ax = plots.plot_roofline({"CPU": (peak, bandwidth)}, {"decode": ([0.5, 1.0], [1e9, 2e9])},
                             {"decode": ["B=1", "B=2"]}).axes[0]
    roof, ridge, points = ax.lines
    assert list(roof.get_ydata()) == pytest.approx([min(peak, bandwidth * x) for x in roof.get_xdata()])
    assert list(ridge.get_xdata()) == [5.0, 5.0]
    assert list(points.get_ydata()) == [1e9, 2e9] and [t.get_text() for t in ax.texts] == ["B=1", "B=2"]
    assert len(plots.plot_roofline({"only roofs": (1e9, 1e9)}).axes[0].lines) == 2


def test_ttft_tpot_and_batch_sweep_plots_draw_milliseconds_and_the_budget():
    ttft, tpot = plots.plot_ttft_tpot([8, 32], [0.01, 0.02], [0.003, 0.003]).axes[0].lines
    assert list(ttft.get_ydata()) == pytest.approx([10, 20]) and list(tpot.get_ydata()) == pytest.approx([3, 3])
    for latency, finding in (([0.003, 0.004], "stays under budget"), ([0.04, 0.09], "over budget from batch 2")):
        left, right = plots.plot_batch_sweep([1, 2], [300.0, 500.0], latency).axes  # budget: 50 ms
        assert list(left.lines[0].get_ydata()) == [300.0, 500.0] and "x1.7" in left.get_title()
        assert list(right.lines[0].get_ydata()) == pytest.approx([y * 1e3 for y in latency])
        assert finding in right.get_title()


@pytest.mark.parametrize("call, error, message", [
    (lambda: plots.plot_intensity({"a": ([1, 2], [1])}), ValueError, r"series\['a'\] ys"),
    (lambda: plots.plot_intensity({"a": ([], [])}), ValueError, r"series\['a'\] xs"),
    (lambda: plots.plot_intensity({"a": ([0], [1])}), ValueError, r"series\['a'\] xs\[0\]"),
    (lambda: plots.plot_intensity([1, 2]), TypeError, "series"),
    (lambda: plots.plot_intensity({"a": ([1], [1])}, {"CPU": -1}), ValueError, r"ridges\['CPU'\]"),
    (lambda: plots.plot_roofline({}), ValueError, "roofs"),
    (lambda: plots.plot_roofline({"CPU": (0, 1)}), ValueError, "peak_flops"),
    (lambda: plots.plot_roofline({"CPU": (1, 1)}, {"p": ([1], [1])}, {"p": ["a", "b"]}), ValueError,
     r"labels\['p'\]"),
    (lambda: plots.plot_ttft_tpot([8, 16], [0.1, -0.1], [0.1, 0.1]), ValueError, r"ttft_s\[1\]"),
    (lambda: plots.plot_batch_sweep([1, 2], [1.0, 2.0], [0.1, 0.1], budget_s=0), ValueError, "budget_s"),
])
def test_plot_bad_input_raises(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_batch_sweep_budget_must_be_finite():
    with pytest.raises(ValueError, match="budget_s"):
        plots.plot_batch_sweep([1, 2], [10.0, 18.0], [0.01, 0.011], budget_s=float("inf"))


# --- chapter 06: kv cache memory -------------------------------------------------------------------------------------


def test_plot_cache_vs_weights_marks_the_crossings():
    gpt3 = memory.get_preset("gpt3-175b")
    fig = plots.plot_cache_vs_weights(gpt3, (1, 16, 37, 64), title="t")
    ax = fig.axes[0]
    dots = [line for line in ax.lines if line.get_marker() == "o"]
    # only batches 37 and 64 cross the weights within 2,048 tokens: at 74,174.8 / 37 and / 64 tokens
    assert sorted(round(float(d.get_xdata()[0]), 1) for d in dots) == [round(GPT3_WEIGHTS / GPT3_PER_TOKEN / 64, 1),
                                                                        round(GPT3_WEIGHTS / GPT3_PER_TOKEN / 37, 1)]
    assert ax.get_xlim() == (0, 2048) and ax.get_title() == "t"


def test_plot_kv_heads_bars_are_per_token_kib():
    fig = plots.plot_kv_heads(memory.get_preset("llama2-70b"))
    heights = [bar.get_height() for bar in fig.axes[0].patches]
    assert heights == [40, 80, 160, 320, 640, 1280, 2560]  # 2 · 80 · h · 128 · 2 / 1024 for h = 1, 2, 4, ..., 64


def test_plot_memory_report_draws_weights_cache_and_gpu():
    r = memory.preset_report("llama2-7b", 16, 4096, gpu_gib=24)
    ax = plots.plot_memory_report(r).axes[0]
    assert "seq_len 4,096 does not fit in 24 GiB (up to 1,465)" in ax.get_title()
    gpu_line = [line for line in ax.lines if line.get_linestyle() == "--"][0]
    assert gpu_line.get_ydata()[0] == 24
    point = [line for line in ax.lines if line.get_marker() == "o"][0]
    assert point.get_ydata()[0] == (r.weight_bytes + r.cache_bytes) / GIB


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda: plots.plot_cache_vs_weights("gpt3-175b"), TypeError, "preset"),
        (lambda: plots.plot_cache_vs_weights(_P, (1, -2)), ValueError, "batch_size"),
        (lambda: plots.plot_cache_vs_weights(_P, ()), ValueError, "batch_sizes"),
        (lambda: plots.plot_cache_vs_weights(_P, max_seq_len=0), ValueError, "max_seq_len"),
        (lambda: plots.plot_cache_vs_weights(_P, max_seq_len=True), TypeError, "max_seq_len"),
        (lambda: plots.plot_cache_vs_weights(_P, dtype="fp8"), ValueError, "fp8"),
        (lambda: plots.plot_kv_heads(None), TypeError, "preset"),
        (lambda: plots.plot_memory_report({}), TypeError, "report"),
    ],
)
def test_memory_plots_bad_input(call, error, message):
    with pytest.raises(error, match=re.escape(message)):
        call()


# --- chapter 09: evicting tokens --------------------------------------------------------------------------------------


def test_plots_draw_one_line_or_point_per_strategy():
    fig = plots.plot_quality_vs_budget([8, 16], {"a": [_report(1.0), _report(0.5)], "b": [_report(2.0), _report(1.0)]})
    ax = fig.axes[0]
    assert len(ax.lines) == 3 and list(ax.lines[0].get_ydata()) == [1.0, 0.5]  # two strategies + the full cache
    fig = plots.plot_quality_vs_budget([8], {"a": [_report(1.0, top1=0.75)]}, metric="top1_agreement")
    assert list(fig.axes[0].lines[0].get_ydata()) == [75.0]
    fig = plots.plot_bytes_per_step({"full": [2048, 4096], "window": [2048, 2048]}, first=7)
    assert [list(line.get_ydata()) for line in fig.axes[0].lines] == [[2.0, 4.0], [2.0, 2.0]]  # KiB
    assert list(fig.axes[0].lines[0].get_xdata()) == [7, 8]  # tokens seen
    fig = plots.plot_memory_vs_quality({"quantised": [("int8", _report(0.3, 0.45)), ("int4", _report(0.35, 0.3))],
                                        "window": [("", _report(0.5, 0.125))]})
    xy = [line.get_xydata().tolist() for line in fig.axes[0].lines[:2]]
    assert xy[0] == [[45.0, 0.0], [30.0, pytest.approx(0.05)]] and xy[1] == [[12.5, pytest.approx(0.2)]]
    assert [t.get_text() for t in fig.axes[0].texts] == ["int8", "int4"]  # empty labels are not drawn


def test_policy_grid_colours_each_head_by_its_policy_in_10_pt_text():
    fig = plots.plot_policy_grid([["special", "full"], ["special+punct+frequent+local", "special+punct"]],
                                 held=[[1, 128], [59, 20]])
    ax = fig.axes[0]
    assert ax.images[0].get_array().tolist() == [[0, 4], [3, 1]]  # indices into kvlab.fastgen.POLICIES
    assert list(compression._POLICY_SHORT) == list(POLICIES)  # the colours follow FastGen's order
    assert [t.get_text() for t in ax.texts] == ["S\n1 token", "full\n128 tokens", "S+P+F+L\n59 tokens",
                                                "S+P\n20 tokens"]
    fig.canvas.draw()
    labels = [*ax.texts, *ax.get_legend().get_texts(), *ax.get_xticklabels(), *ax.get_yticklabels()]
    assert min(t.get_fontsize() for t in labels) >= 10
    assert [t.get_text() for t in plots.plot_policy_grid([["full"]]).axes[0].texts] == ["full"]  # no counts
    plt.close("all")


def test_a_deep_models_policy_grid_puts_the_layers_across():
    grid = [["special", "full", "special+punct"]] * 29 + [["full", "full", "special"]]  # SmolLM2: 30 x 3
    fig = plots.plot_policy_grid(grid, held=[[1, 2, 3]] * 30)
    ax = fig.axes[0]
    image = ax.images[0].get_array().tolist()
    assert len(image) == 3 and len(image[0]) == 30  # heads down, layers across
    assert image[0][29] == 4 and image[2][29] == 0 and image[0][0] == 0  # layer 29's heads: full, full, special
    assert ax.get_xlabel() == "layer" and ax.get_ylabel() == "K/V head" and not ax.texts
    fig.canvas.draw()
    assert min(t.get_fontsize() for t in [*ax.get_legend().get_texts(), *ax.get_xticklabels()]) >= 10
    plt.close("all")


@pytest.mark.parametrize(("call", "error", "message"), [
    (lambda: plots.plot_policy_grid([["local"]]), ValueError, "policies[0][0] must be one of"),
    (lambda: plots.plot_policy_grid([["full"], ["full", "full"]]), ValueError, "every row as long"),
    (lambda: plots.plot_policy_grid([]), ValueError, "at least one row"),
    (lambda: plots.plot_policy_grid(3), TypeError, "policies must be a table"),
    (lambda: plots.plot_policy_grid([["full"]], held=[[1, 2]]), ValueError, "held must have the shape"),
    (lambda: plots.plot_policy_grid([["full"]], held=[[-1]]), ValueError, "held[0][0]"),
    (lambda: plots.plot_quality_vs_budget([8], {"a": [_report(1.0)]}, metric="bytes"), ValueError, "metric"),
    (lambda: plots.plot_quality_vs_budget([8, 16], {"a": [_report(1.0)]}), ValueError, "reports_by_label['a']"),
    (lambda: plots.plot_quality_vs_budget([], {}), ValueError, "budgets"),
    (lambda: plots.plot_bytes_per_step({}), ValueError, "bytes_by_label"),
    (lambda: plots.plot_bytes_per_step({"a": [1.5]}), TypeError, "bytes_by_label['a'][0]"),
    (lambda: plots.plot_bytes_per_step({"a": [-1]}), ValueError, "bytes_by_label['a'][0]"),
    (lambda: plots.plot_bytes_per_step({"a": [1]}, first=0), ValueError, "first"),
    (lambda: plots.plot_memory_vs_quality({"a": [3]}), TypeError, "series['a']"),
    (lambda: plots.plot_memory_vs_quality({"a": []}), ValueError, "series['a']"),
    (lambda: plots.plot_memory_vs_quality({}), ValueError, "series"),
])
def test_compression_plots_bad_input(call, error, message):
    with pytest.raises(error, match=re.escape(message)):
        call()


@pytest.mark.parametrize("call, error, parameter", [
    (lambda: plots.plot_bytes_per_step({"a": [True]}), TypeError, r"bytes_by_label\['a'\]\[0\]"),
    (lambda: plots.plot_cost_vs_length([1, 2], []), TypeError, "flops"),
    (lambda: plots.plot_roofline({"CPU": (1, 1)}, {"p": (1, 2, 3)}), TypeError, r"points\['p'\]"),
    (lambda: plots.plot_step_times({"a": 0.1}), TypeError, r"stats_by_label\['a'\]"),
    (lambda: plots.plot_step_times({}), ValueError, "stats_by_label"),
    (lambda: plots.plot_intensity({}), ValueError, "series"),  # an empty figure is refused, not drawn
    (lambda: plots.plot_cost_split([1], {"m": {"dense": [1]}}, [1], {}), ValueError, "total"),
    (lambda: plots.plot_quality_vs_budget([8.5], {"a": [None]}), TypeError, r"budgets\[0\]"),  # token counts
])
def test_the_shared_validator_names_where_the_bad_value_sits(call, error, parameter):
    with pytest.raises(error, match=parameter):
        call()


# --- chapter 10: serving many requests -------------------------------------------------------------------------------


def test_plot_paging_waste_draws_and_checks_its_input():
    ax = plots.plot_paging_waste([1, 2, 4], [0, 1024, 3072], 4096, [0, 1024, 2048]).axes[0]
    contiguous, formula, measured = ax.lines
    assert list(contiguous.get_ydata()) == [4.0, 4.0]  # KiB
    assert list(formula.get_ydata()) == [0.0, 1.0, 2.0] and list(measured.get_ydata()) == [0.0, 1.0, 3.0]
    assert list(measured.get_xdata()) == [1, 2, 4] and "block size" in ax.get_xlabel()
    with pytest.raises(ValueError, match="paged_bytes"):
        plots.plot_paging_waste([1, 2, 4], [0, 10], 100)
    with pytest.raises(ValueError, match=r"block_sizes\[0\]"):
        plots.plot_paging_waste([0, 2], [0, 10], 100)
    with pytest.raises(ValueError, match="contiguous_bytes"):
        plots.plot_paging_waste([1, 2], [0, 10], -1)


def test_paging_waste_accepts_numpy_counts_and_rejects_nan():
    ax = plots.plot_paging_waste([1, 2], np.array([1024, 2048]), np.int64(5120)).axes[0]  # numpy numbers count too
    assert list(ax.lines[-1].get_ydata()) == [1.0, 2.0]  # KiB
    assert ax.lines[0].get_ydata()[0] == 5.0  # the contiguous line
    with pytest.raises(ValueError, match=r"paged_bytes\[1\]"):
        plots.plot_paging_waste([1, 2], [1.0, float("nan")], 5)


def test_plot_blocks_in_use_draws_one_line_per_run_and_the_pool():
    ax = plots.plot_blocks_in_use({"static": [2, 3, 3, 0], "continuous": [3, 1, 0]}, pool_blocks=4).axes[0]
    static, continuous, pool = ax.lines
    assert list(static.get_xdata()) == [1, 2, 3, 4] and list(static.get_ydata()) == [2, 3, 3, 0]
    assert list(continuous.get_ydata()) == [3, 1, 0] and list(pool.get_ydata()) == [4, 4]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["static (4 steps)", "continuous (3 steps)",
                                                                  "pool size (4 blocks)"]
    assert ax.get_xlabel() == "scheduler step" and ax.get_ylim()[0] == 0
    assert len(plots.plot_blocks_in_use({"a": np.array([1, 2])}).axes[0].lines) == 1  # no pool line without a pool
    plt.close("all")


@pytest.mark.parametrize("call, error, message", [
    (lambda: plots.plot_blocks_in_use({}), ValueError, "series"),
    (lambda: plots.plot_blocks_in_use([1, 2]), TypeError, "series"),
    (lambda: plots.plot_blocks_in_use({"a": [1, -1]}), ValueError, "series['a'][1]"),
    (lambda: plots.plot_blocks_in_use({"a": [1.5]}), TypeError, "series['a'][0]"),
    (lambda: plots.plot_blocks_in_use({"a": [1]}, pool_blocks=0), ValueError, "pool_blocks"),
])
def test_plot_blocks_in_use_bad_input(call, error, message):
    with pytest.raises(error, match=re.escape(message)):
        call()
