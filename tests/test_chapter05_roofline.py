"""Chapter 05: arithmetic intensity (kvlab.flops), the roofline (kvlab.hardware), its measurement (kvlab.measure)
and its figures (kvlab.plots). Formulas are checked against values worked out by hand and against real tensors;
measurements only for being positive finite numbers (speed is never asserted: machines are noisy)."""

import ast
import math
from pathlib import Path

import matplotlib.pyplot as plt
import pytest
import torch
from hypothesis import given, settings, strategies as st

import kvlab
from kvlab import hardware, measure, memory, plots
from kvlab.flops import arithmetic_intensity, bytes_moved, forward_flops, n_params
from conftest import random_model


TINY = kvlab.GPTConfig(vocab_size=10, n_layer=1, n_head=1, d_model=2, max_seq_len=4)
TINY_GQA = kvlab.GPTConfig(vocab_size=3, n_layer=2, n_head=2, n_kv_head=1, d_model=4, max_seq_len=5)
CHAPTER = kvlab.GPTConfig(vocab_size=256, n_layer=4, n_head=8, d_model=512, max_seq_len=1024)  # the notebook's model
GPT2 = memory.get_preset("gpt2-small")
A100, H100, T4 = hardware.get_gpu("a100-80gb-sxm"), hardware.get_gpu("h100-sxm"), hardware.get_gpu("t4")


# --- n_params ---------------------------------------------------------------------------------------------------

def test_n_params_by_hand():
    # TINY, d=2: wte 10·2, wpe 4·2; layer: ln 2·2·2, qkv 2·6+6, proj 2·2+2, fc 2·8+8, proj 8·2+2; ln_f 2·2
    assert n_params(TINY) == 20 + 8 + (8 + 18 + 6 + 24 + 18) + 4 == 106
    # TINY_GQA, d=4, kv_dim=2: layer: ln 16, qkv 4·8+8, proj 16+4, fc 4·16+16, proj 16·4+4 = 224; wte 12, wpe 20, ln_f 8
    assert n_params(TINY_GQA) == 12 + 20 + 2 * 224 + 8 == 488


def test_n_params_of_the_chapter_model_is_12_d_squared_plus_13_d_per_layer():
    d = CHAPTER.d_model  # the textbook count for multi-head attention, and the notebook's "50.6 MiB"
    assert n_params(CHAPTER) == 256 * d + 1024 * d + 4 * (12 * d * d + 13 * d) + 2 * d == 13_265_920
    assert memory.format_bytes(n_params(CHAPTER) * 4).startswith("50.6 MiB")


@settings(max_examples=20, deadline=None)
@given(n_layer=st.integers(1, 3), n_head=st.sampled_from([1, 2, 4]), kv_div=st.sampled_from([1, 2, 4]),
       head_dim=st.integers(1, 6), vocab=st.integers(2, 40), max_seq_len=st.integers(1, 30))
def test_n_params_equals_the_real_model(n_layer, n_head, kv_div, head_dim, vocab, max_seq_len):
    n_kv_head = max(1, n_head // kv_div)
    config = kvlab.GPTConfig(vocab_size=vocab, n_layer=n_layer, n_head=n_head, n_kv_head=n_kv_head,
                             d_model=n_head * head_dim, max_seq_len=max_seq_len)
    assert n_params(config) == kvlab.TinyGPT(config).n_params


@pytest.mark.parametrize("name", ["gpt2-small", "gpt2-medium", "gpt2-large", "gpt2-xl"])
def test_n_params_equals_the_published_gpt2_counts(name):
    preset = memory.get_preset(name)
    assert n_params(preset) == preset.n_params


# --- bytes_moved and arithmetic_intensity -----------------------------------------------------------------------

def test_bytes_moved_by_hand():
    # weights 106 · 4; KV read 2 · 1 layer · 3 tokens · kv_dim 2 · 4 B = 48; KV written 2 · 1 · 1 · 2 · 4 = 16
    assert bytes_moved(TINY, 1, 3, 4) == 424 + 48 + 16 == 488
    # GQA, batch 3, fp16: weights 488 · 2; read 2·2·3·3·2·2 = 144; written 2·2·3·2·2·2 = 96
    assert bytes_moved(TINY_GQA, 2, 3, 2, batch_size=3) == 976 + 144 + 96 == 1216
    assert bytes_moved(TINY, 1, 0, 0.5) == math.ceil(106 * 0.5) + 2  # int4: 53 bytes of weights, 4 elements of KV


def test_arithmetic_intensity_by_hand():
    # TINY, 1 new over 3 cached: qkv 2·2·6=24, scores 2·4·2=16, values 16, proj 2·2·2=8, mlp 2·2·8·2=64, head 2·2·10=40
    assert forward_flops(TINY, 1, 3) == 168
    assert arithmetic_intensity(TINY, 1, 3, 4) == pytest.approx(168 / 488)
    # TINY_GQA, 2 new over 3 cached, per layer: qkv 2·2·4·8=128, scores 2·2·5·4=80, values 80, proj 64, mlp 512;
    # 2 layers; head 2·2·4·3=48 -> 1776 per row, 3 rows
    assert forward_flops(TINY_GQA, 2, 3) == 2 * (128 + 80 + 80 + 64 + 512) + 48 == 1776
    assert arithmetic_intensity(TINY_GQA, 2, 3, 2, batch_size=3) == pytest.approx(3 * 1776 / 1216)


@pytest.mark.parametrize("n_kv_head", [4, 2, 1])
@pytest.mark.parametrize("n_past, n_new, batch", [(0, 3, 1), (5, 1, 2), (4, 2, 3)])
def test_bytes_moved_equals_real_tensor_bytes(n_kv_head, n_past, n_new, batch):
    """Weights = the model's parameter bytes; KV read = the cache before the forward; KV written = its growth."""
    model = random_model(n_kv_head=n_kv_head)
    weights = sum(p.nbytes for p in model.parameters())
    cache = kvlab.DynamicCache()
    if n_past:
        model(torch.zeros(batch, n_past, dtype=torch.long), cache)
    before = cache.nbytes if n_past else 0
    model(torch.zeros(batch, n_new, dtype=torch.long), cache)
    written = cache.nbytes - before
    assert bytes_moved(model.config, n_new, n_past, 4, batch_size=batch) == weights + before + written


@pytest.mark.parametrize("config", [CHAPTER, GPT2], ids=["chapter", "gpt2-small"])
@pytest.mark.parametrize("b", [4, 2])
def test_prefill_intensity_grows_with_p_and_stays_just_below_2p_over_b(config, b):
    """Strictly increasing in P over 1..max_seq_len; and for multi-head attention 0.9 · 2P/b < I < 2P/b.

    Why below 2P/b: the weights give 2 FLOPs per multiply-add per token but are read with their biases, norms and
    position table; attention gives 4·P²·d FLOPs per layer for 2·P·d·b bytes of K/V written, exactly 2P/b.
    """
    values = [arithmetic_intensity(config, P, 0, b) for P in range(1, config.max_seq_len + 1)]
    assert all(x < y for x, y in zip(values, values[1:]))
    for P, value in enumerate(values, 1):
        assert 0.9 * 2 * P / b < value < 2 * P / b


@pytest.mark.parametrize("config", [CHAPTER, GPT2], ids=["chapter", "gpt2-small"])
@pytest.mark.parametrize("b", [4, 2])
def test_batch_one_decode_intensity_is_flat_in_the_past_length(config, b):
    """Batch 1, multi-head attention: below 2/b for every past length (same argument as for prefill) and above
    0.9 · 2/b; for a small past, n_past = 0..128, it varies by less than 1 %."""
    values = [arithmetic_intensity(config, 1, past, b) for past in range(config.max_seq_len)]
    assert all(0.9 * 2 / b < v < 2 / b for v in values)
    small = values[:129]
    assert max(small) / min(small) < 1.01


def test_decode_intensity_scales_with_batch_while_weights_dominate():
    """GPT-2 small, fp16, no past: B rows share one read of the weights, so I(B) / I(1) is in [0.9 B, B]."""
    one = arithmetic_intensity(GPT2, 1, 0, 2)
    for B in (2, 4, 8, 16):
        assert 0.9 * B <= arithmetic_intensity(GPT2, 1, 0, 2, batch_size=B) / one <= B


def test_decode_intensity_with_a_long_cache_rises_to_a_ceiling():
    """With 1000 cached tokens per row the unshared KV bytes cap the intensity at F_row / KV_row (notebook §3)."""
    F_row = forward_flops(GPT2, 1, 1000)
    kv_row = 2 * GPT2.n_layer * 1001 * GPT2.d_model * 2  # read 1000 tokens' K and V, write 1, fp16
    ceiling = F_row / kv_row
    values = [arithmetic_intensity(GPT2, 1, 1000, 2, batch_size=B) for B in (1, 4, 16, 64, 256, 1024, 10**6)]
    assert all(x < y < ceiling for x, y in zip(values, values[1:]))
    assert values[-1] > 0.999 * ceiling
    assert ceiling < A100.ridge_point("fp16")  # exercise 3: never compute-bound on an A100, however large B
    with_16 = forward_flops(GPT2, 1, 16) / (2 * GPT2.n_layer * 17 * GPT2.d_model * 2)
    assert with_16 > A100.ridge_point("fp16")  # but with 16 cached tokens it can be


def test_exercise_2_batch_that_reaches_the_a100_ridge():
    """I(B) = B·F / (W + B·K) >= R  <=>  B >= R·W / (F - R·K): solved in closed form, not by the notebook's loop."""
    F, R = forward_flops(GPT2, 1, 16), A100.ridge_point("fp16")
    W, K = GPT2.n_params * 2, 2 * GPT2.n_layer * 17 * GPT2.d_model * 2
    B = math.ceil(R * W / (F - R * K))
    assert arithmetic_intensity(GPT2, 1, 16, 2, batch_size=B) >= R > arithmetic_intensity(GPT2, 1, 16, 2, batch_size=B - 1)
    assert B > R  # "intensity ≈ B" would have said B ≈ R; the KV caches push it well above


def test_chapter_model_on_gpus_claims():
    """§6: in fp16 a 128-token prefill and every decode step are memory-bound on A100 and H100; 512 tokens are not."""
    for gpu in (A100, H100):
        ridge = gpu.ridge_point("fp16")
        assert arithmetic_intensity(CHAPTER, 128, 0, 2) < ridge < arithmetic_intensity(CHAPTER, 512, 0, 2)
        assert arithmetic_intensity(CHAPTER, 1, 16, 2, batch_size=16) < ridge
    assert 150 < A100.ridge_point("fp16") < H100.ridge_point("fp16") < 300  # "about 150 to 300 FLOPs per byte"
    assert memory.kv_cache_bytes(4, 1, 512, 512, 4) == 8 * 2**20  # "512 cached tokens add 8.0 MiB"


def test_gpt2_xl_on_a_t4_claims():
    """§8: batch 1 takes at least (weights + KV) / bandwidth; batch 32 stays under 50 ms, batch 64 does not and
    would not fit in 16 GB."""
    xl = memory.get_preset("gpt2-xl")

    def step_s(B):
        return hardware.roofline_time(B * forward_flops(xl, 1, 1000), bytes_moved(xl, 1, 1000, 2, B),
                                      T4.fp16_flops, T4.bandwidth)

    assert step_s(1) == pytest.approx((2 * 1_557_611_200 + 2 * 48 * 1001 * 1600 * 2) / 320e9)
    assert step_s(32) < 0.05 < step_s(64)
    assert xl.weight_bytes(2) + xl.kv_cache_bytes(64, 1001, 2) > 16 * memory.GIB


@pytest.mark.parametrize("call, error, message", [
    (lambda: bytes_moved(TINY, 0), ValueError, "n_new"),
    (lambda: bytes_moved(TINY, 1, -1), ValueError, "n_past"),
    (lambda: bytes_moved(TINY, 1, 0, 0), ValueError, "bytes_per_elem"),
    (lambda: bytes_moved(TINY, 1, 0, "fp16"), TypeError, "bytes_per_elem"),
    (lambda: bytes_moved(TINY, 1, 0, 2, batch_size=0), ValueError, "batch_size"),
    (lambda: arithmetic_intensity(TINY, 1, 0, 2, batch_size=1.5), TypeError, "batch_size"),
    (lambda: arithmetic_intensity(TINY, True), TypeError, "n_new"),
    (lambda: n_params(object()), TypeError, "config"),
    (lambda: bytes_moved({"n_layer": 1}, 1), TypeError, "dict lacks"),
])
def test_bad_input_raises(call, error, message):
    with pytest.raises(error, match=message):
        call()


# --- kvlab.hardware ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("key", list(hardware.GPU_PRESETS))
def test_gpu_presets_are_positive_and_ridge_is_flops_over_bandwidth(key):
    gpu = hardware.GPU_PRESETS[key]
    for value in (gpu.fp32_flops, gpu.fp16_flops, gpu.bandwidth):
        assert math.isfinite(value) and value > 0
    assert gpu.fp16_flops > gpu.fp32_flops  # tensor cores beat plain FP32 on every card listed
    for precision in ("fp32", "fp16"):
        assert gpu.ridge_point(precision) == pytest.approx(gpu.peak_flops(precision) / gpu.bandwidth)
    assert gpu.name in gpu.source or gpu.name.split()[-1] in gpu.source
    assert "datasheet" in gpu.source or "whitepaper" in gpu.source


def test_gpu_presets_hold_the_published_dense_figures():
    assert (A100.fp16_flops, A100.fp32_flops, A100.bandwidth) == (312e12, 19.5e12, 2039e9)
    assert (H100.fp16_flops, H100.fp32_flops, H100.bandwidth) == (989e12, 67e12, 3350e9)
    assert H100.fp16_flops == pytest.approx(1979e12 / 2, rel=1e-3)  # the datasheet's figure is with 2:4 sparsity
    assert {"t4", "a100-80gb-sxm", "h100-sxm", "rtx-4090"} <= set(hardware.GPU_PRESETS)
    assert round(H100.ridge_point("fp16")) == 295  # exercise 1: 989 / 3.35 = 295.2


def test_roofline_functions_by_hand():
    assert hardware.ridge_point(100.0, 4.0) == 25.0
    assert hardware.attainable_flops(5, 100.0, 4.0) == 20.0  # memory roof: 4 · 5
    assert hardware.attainable_flops(25, 100.0, 4.0) == 100.0  # at the ridge both roofs agree
    assert hardware.attainable_flops(1000, 100.0, 4.0) == 100.0  # compute roof
    assert hardware.attainable_flops(0, 100.0, 4.0) == 0.0
    assert hardware.roofline_time(200, 8, 100.0, 4.0) == 2.0  # compute-bound: 200 / 100 > 8 / 4
    assert hardware.roofline_time(100, 40, 100.0, 4.0) == 10.0  # memory-bound


@pytest.mark.parametrize("call, error, message", [
    (lambda: hardware.ridge_point(0, 1), ValueError, "peak_flops"),
    (lambda: hardware.ridge_point(1, float("inf")), ValueError, "bandwidth"),
    (lambda: hardware.ridge_point("1", 1), TypeError, "peak_flops"),
    (lambda: hardware.attainable_flops(-1, 1, 1), ValueError, "intensity"),
    (lambda: hardware.attainable_flops(float("nan"), 1, 1), ValueError, "intensity"),
    (lambda: hardware.roofline_time(1, -2, 1, 1), ValueError, "n_bytes"),
    (lambda: hardware.roofline_time(True, 1, 1, 1), TypeError, "flops"),
    (lambda: hardware.get_gpu("a100"), ValueError, "gpu"),
    (lambda: A100.peak_flops("int8"), ValueError, "precision"),
])
def test_hardware_bad_input_raises(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_hardware_module_is_pure_python():
    tree = ast.parse(Path(hardware.__file__).read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                 and node.module}
    assert imported <= {"__future__", "math", "dataclasses", "checks"}  # kvlab.checks imports no torch at load


# --- kvlab.measure ------------------------------------------------------------------------------------------------

def _positive_finite(x):
    return isinstance(x, float) and math.isfinite(x) and x > 0


def test_measured_roofs_are_positive_finite_numbers():
    assert _positive_finite(measure.measure_peak_flops(n=64, repeats=2))
    assert _positive_finite(measure.measure_peak_flops(n=32, repeats=1, dtype=torch.float64))
    assert _positive_finite(measure.measure_bandwidth(n_bytes=2**20, repeats=2))
    assert _positive_finite(measure.measure_bandwidth(n_bytes=2**20, repeats=2, kind="read"))  # kvlab bench, figure 4
    assert _positive_finite(hardware.ridge_point(measure.measure_peak_flops(n=64, repeats=1),
                                                 measure.measure_bandwidth(n_bytes=2**16, repeats=1)))


def test_median_seconds_runs_warmup_plus_repeats_and_returns_the_median():
    calls = []
    seconds = measure.median_seconds(lambda: calls.append(1), repeats=3, warmup=2)
    assert len(calls) == 5 and seconds >= 0 and math.isfinite(seconds)


def test_median_seconds_of_several_functions_times_them_in_turn():
    """`kvlab bench` takes every ratio this way: each round calls every contender once, so load hits all alike."""
    calls = []
    seconds = measure.median_seconds({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, repeats=3,
                                     warmup=1)
    assert calls == ["a", "b"] * 4 and set(seconds) == {"a", "b"} and all(s >= 0 for s in seconds.values())
    reported = iter([3.0, 1.0, 2.0])  # self_timed: each call returns its own seconds, and their median is kept
    assert measure.median_seconds({"x": lambda: next(reported)}, repeats=3, warmup=0, self_timed=True) == {"x": 2.0}


def test_time_phases_carries_the_analytic_flops_and_bytes():
    model = random_model(max_seq_len=64)
    t = measure.time_phases(model, prompt_len=5, batch_size=3, n_decode=4, repeats=2)
    middle = 5 + (4 - 1) // 2  # the middle decode step's cache length
    assert (t.prompt_len, t.batch_size, t.n_decode) == (5, 3, 4)
    assert t.prefill_flops == 3 * forward_flops(model.config, 5, 0)
    assert t.prefill_bytes == bytes_moved(model.config, 5, 0, 4, batch_size=3)
    assert t.decode_flops == 3 * forward_flops(model.config, 1, middle)
    assert t.decode_bytes == bytes_moved(model.config, 1, middle, 4, batch_size=3)
    for value in (t.prefill_s, t.decode_s, t.decode_tokens_per_s, t.prefill_flops_per_s, t.decode_flops_per_s):
        assert _positive_finite(value)
    assert t.decode_tokens_per_s == pytest.approx(3 / t.decode_s)
    assert t.prefill_intensity == pytest.approx(arithmetic_intensity(model.config, 5, 0, 4, batch_size=3))


def test_sweep_phases_runs_every_pair_prompt_lengths_outermost():
    model = random_model(max_seq_len=64)
    sweep = measure.sweep_phases(model, prompt_lens=(2, 4), batch_sizes=(1, 2), n_decode=2, repeats=1)
    assert [(t.prompt_len, t.batch_size) for t in sweep] == [(2, 1), (2, 2), (4, 1), (4, 2)]


@pytest.mark.parametrize("call, error, message", [
    (lambda m: measure.measure_peak_flops(n=0), ValueError, "n must"),
    (lambda m: measure.measure_peak_flops(n=8, repeats=0), ValueError, "repeats"),
    (lambda m: measure.measure_peak_flops(n=8, dtype=torch.int32), ValueError, "dtype"),
    (lambda m: measure.measure_peak_flops(n=8, dtype="float32"), TypeError, "dtype"),
    (lambda m: measure.measure_bandwidth(n_bytes=2), ValueError, "n_bytes"),
    (lambda m: measure.measure_bandwidth(n_bytes=1.5e6), TypeError, "n_bytes"),
    (lambda m: measure.median_seconds("f"), TypeError, "fn"),
    (lambda m: measure.median_seconds({}), ValueError, "fn"),
    (lambda m: measure.median_seconds({"a": 3}), TypeError, r"fn\['a'\]"),
    (lambda m: measure.median_seconds({"a": print}, repeats=0), ValueError, "repeats"),
    (lambda m: measure.measure_bandwidth(n_bytes=2**10, kind="write"), ValueError, "kind"),
    (lambda m: measure.time_phases("model", 4), TypeError, "model"),
    (lambda m: measure.time_phases(m, 0), ValueError, "prompt_len"),
    (lambda m: measure.time_phases(m, 4, batch_size=0), ValueError, "batch_size"),
    (lambda m: measure.time_phases(m, 60, n_decode=4), ValueError, "prompt_len \\+ n_decode \\+ 1 = 65 exceeds"),
    (lambda m: measure.sweep_phases(m, prompt_lens=()), ValueError, "must not be empty"),
])
def test_bench_bad_input_raises(call, error, message):
    with pytest.raises(error, match=message):
        call(random_model(max_seq_len=64))


# --- kvlab.plots ------------------------------------------------------------------------------------------------

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


# --- section 9: the overhead-bound regime ------------------------------------------------------------------------

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "05_prefill_and_decode.ipynb"


def _hello_decode_step_ops(model, prompt):
    cache = kvlab.DynamicCache()
    with torch.inference_mode():
        model(prompt[:, :-1], cache)
        return measure.count_operations(lambda: model(prompt[:, -1:], cache))


def test_section_9_numbers_are_what_the_code_gives(hello):
    from conftest import assert_printed_above

    model, tok = hello
    prompt = torch.tensor([tok.encode("keys and values ")])
    assert prompt.shape == (1, 16)
    ops = _hello_decode_step_ops(model, prompt)
    step_flops, step_bytes = forward_flops(model.config, 1, 15), bytes_moved(model.config, 1, 15, 4)
    assert step_flops < 500_000 and step_bytes < 1_000_000  # "under half a million FLOPs and under a megabyte"
    assert 80 <= ops.total() <= 120  # "about a hundred tiny operations"
    assert_printed_above(NOTEBOOK, "Under half a million FLOPs and under a megabyte",
                         f"{step_flops:,} FLOPs, {step_bytes:,} bytes to move, {ops.total()} PyTorch operations")
    assert_printed_above(NOTEBOOK, "Why does the course not write all its code this way?", "identical tokens: True")


def test_count_operations_counts_every_operation_views_included():
    x = torch.ones(3, 4)
    ops = measure.count_operations(lambda: (x + 1).t().sum())
    assert ops == {"add": 1, "t": 1, "sum": 1} or ops == {"add": 1, "transpose": 1, "sum": 1}
    assert measure.count_operations(lambda: None).total() == 0
    with pytest.raises(TypeError, match="fn"):
        measure.count_operations(3)


def test_exercise_4_operations_per_layer(hello):
    """Each block runs the same operations, so the count grows by a fixed number per layer."""
    model, tok = hello
    prompt = torch.tensor([tok.encode("keys and values ")])
    counts = {}
    for n_layer in (4, 8, 12):
        config = kvlab.GPTConfig(vocab_size=25, n_layer=n_layer, n_head=4, d_model=64, max_seq_len=128)
        counts[n_layer] = _hello_decode_step_ops(kvlab.TinyGPT(config).eval(), prompt).total()
    assert counts[4] == _hello_decode_step_ops(model, prompt).total()  # depth alone sets the count
    per_layer = (counts[8] - counts[4]) // 4
    assert counts[12] - counts[8] == counts[8] - counts[4] == 4 * per_layer
    by_hand = 4 + 4 + 3 + 2 + 2 + 2 + 1 + 1 + 1 + 1  # linear, transpose, view, add, layer_norm, cat, split, sdpa, ...
    assert per_layer == by_hand  # ... reshape, gelu: CausalSelfAttention + MLP + Block, read off model.py
