"""kvlab.hardware (chapter 05): GPU presets hold the published figures, and the roofline arithmetic by hand."""

import ast
import math
from pathlib import Path

import pytest

from kvlab import flops, hardware, memory

A100, H100, T4 = hardware.get_gpu("a100-80gb-sxm"), hardware.get_gpu("h100-sxm"), hardware.get_gpu("t4")


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
    # kvlab.checks and kvlab.flops import no torch at load
    assert imported <= {"__future__", "math", "collections", "dataclasses", "checks", "flops"}


def test_rtx_4090_preset_says_which_fp16_rate_it_holds():
    """165.2 TFLOP/s is FP16 with FP32 accumulate; the card does 330.3 with FP16 accumulate (Ada whitepaper)."""
    rtx = hardware.get_gpu("rtx-4090")
    assert rtx.fp16_flops == 165.2e12
    assert "165.2 TFLOPS FP16 tensor with FP32 accumulate" in rtx.source
    assert "330.3 dense with FP16 accumulate" in rtx.source


# --- what the cache saves in time: every number below is written out from the shapes, not from kvlab.flops ---

LLAMA2_7B = memory.get_preset("llama2-7b")


LLAMA2_7B_WEIGHTS = 6_738_415_616  # the released count (Touvron et al. 2023), not GPT-2's layout of the shape


def _step_counts_by_hand(L, d, V, S, bytes_per_elem, weights=None):
    """(D, A, W, K) for a multi-head GPT-2-shaped stack: FLOPs per fed token and per key; bytes of weights, of one
    token's K and V. Weights: the published count if given, else GPT-2's layout: embeddings V·d + S·d, per layer
    12·d² + 13·d (qkv, projection, MLP, two LayerNorms, with biases), final LayerNorm 2·d."""
    D = L * 2 * (3 * d * d + d * d + 8 * d * d) + 2 * d * V
    A = L * 4 * d
    if weights is None:
        weights = V * d + S * d + L * (12 * d * d + 13 * d) + 2 * d
    W = weights * bytes_per_elem
    K = 2 * L * d * bytes_per_elem
    return D, A, W, K


def _savings_by_hand(T, peak, bandwidth, L=32, d=4096, V=32000, S=4096, bytes_per_elem=2):
    D, A, W, K = _step_counts_by_hand(L, d, V, S, bytes_per_elem, LLAMA2_7B_WEIGHTS)
    with_cache = [((D + A * t), W + K * t) for t in range(1, T + 1)]
    without = [(t * (D + A * t), W + K * t) for t in range(1, T + 1)]  # t tokens re-fed, t keys each
    flops_ratio = sum(f for f, _ in without) / sum(f for f, _ in with_cache)
    seconds = [sum(max(f / peak, b / bandwidth) for f, b in steps) for steps in (without, with_cache)]
    return flops_ratio, seconds[0] / seconds[1]


@pytest.mark.parametrize("T, flops_ratio, time_ratio", [(1000, 504, 1.81), (4000, 2050, 6.82)])
def test_llama2_7b_on_an_h100_saves_far_more_flops_than_time(T, flops_ratio, time_ratio):
    """The roofline estimate: about 500x fewer FLOPs but 1.8x less time at 1,000 tokens; 2,000x and 7x at 4,000."""
    (saving,) = hardware.cache_savings(LLAMA2_7B, [T], H100.fp16_flops, H100.bandwidth)
    by_hand = _savings_by_hand(T, 989e12, 3.35e12)
    assert saving.flops_ratio == pytest.approx(by_hand[0], rel=1e-12)
    assert saving.time_ratio == pytest.approx(by_hand[1], rel=1e-12)
    assert round(saving.flops_ratio) == flops_ratio
    assert round(saving.time_ratio, 2) == time_ratio


def test_cache_savings_adds_up_the_steps_and_chapter_04s_flops():
    """The coefficient form in cache_savings equals summing decode_step_seconds, and its FLOPs are generation_flops."""
    gpt2 = memory.get_preset("gpt2-small")
    for bytes_per_elem, (peak, bandwidth) in ((2, (T4.fp16_flops, T4.bandwidth)), (4, (95e9, 16.3e9))):
        savings = hardware.cache_savings(gpt2, [1, 7, 300], peak, bandwidth, bytes_per_elem)
        for s in savings:
            assert s.flops_with == flops.generation_flops(gpt2, 1, s.n_new, use_cache=True)
            assert s.flops_without == flops.generation_flops(gpt2, 1, s.n_new, use_cache=False)
            for use_cache, total in ((True, s.seconds_with), (False, s.seconds_without)):
                steps = [hardware.decode_step_seconds(gpt2, t, peak, bandwidth, use_cache=use_cache,
                                                      bytes_per_elem=bytes_per_elem) for t in range(1, s.n_new + 1)]
                assert total == pytest.approx(sum(steps), rel=1e-12)
        assert savings[0].flops_ratio == savings[0].time_ratio == 1.0  # one token: the same forward both ways


def test_decode_step_seconds_by_hand():
    """Re-feeding costs t times the FLOPs at the same bytes: the same time while memory-bound, more past the ridge."""
    D, A, W, K = _step_counts_by_hand(32, 4096, 32000, 4096, 2, LLAMA2_7B_WEIGHTS)
    for t in (1, 100, 302, 303, 2000):
        cached = max((D + A * t) / 989e12, (W + K * t) / 3.35e12)
        uncached = max(t * (D + A * t) / 989e12, (W + K * t) / 3.35e12)
        kw = dict(peak_flops=H100.fp16_flops, bandwidth=H100.bandwidth)
        assert hardware.decode_step_seconds(LLAMA2_7B, t, **kw) == pytest.approx(cached, rel=1e-12)
        assert hardware.decode_step_seconds(LLAMA2_7B, t, **kw, use_cache=False) == pytest.approx(uncached, rel=1e-12)
    # 100 tokens re-fed cost the same time as 1 token with a cache: ~4 ms, the 13.5 GB of weights at 3.35 TB/s
    assert hardware.decode_step_seconds(LLAMA2_7B, 100, H100.fp16_flops, H100.bandwidth, use_cache=False) == \
        hardware.decode_step_seconds(LLAMA2_7B, 100, H100.fp16_flops, H100.bandwidth)


def test_free_refeed_length_is_near_the_ridge_in_fp16_and_twice_it_in_fp32():
    D, A, W, K = _step_counts_by_hand(32, 4096, 32000, 4096, 2, LLAMA2_7B_WEIGHTS)
    brute = max(t for t in range(1, 5000) if t * (D + A * t) / 989e12 <= (W + K * t) / 3.35e12)
    assert hardware.free_refeed_length(LLAMA2_7B, H100.fp16_flops, H100.bandwidth) == brute == 302  # ridge 295.2
    chapter_05 = memory.ModelPreset("chapter 05", 4, 512, 8, 8, 256, 1024, 13_265_920, "")  # n_params of the shape
    D, A, W, K = _step_counts_by_hand(4, 512, 256, 1024, 4)
    for ridge in (1.0, 5.9, 30.0):  # peak / bandwidth; fp32 intensity ~ t / 2, so about 2 · ridge
        brute = max([0] + [t for t in range(1, 5000) if t * (D + A * t) <= ridge * (W + K * t)])
        assert hardware.free_refeed_length(chapter_05, ridge * 1e9, 1e9, 4) == brute
        assert brute == pytest.approx(2 * ridge, rel=0.05, abs=1)
    assert hardware.free_refeed_length(chapter_05, 1e9, 1e10, 4) == 0  # ridge 0.1: even one token is compute-bound


@pytest.mark.parametrize("call, error, message", [
    (lambda: hardware.cache_savings(LLAMA2_7B, [], 1, 1), ValueError, "lengths"),
    (lambda: hardware.cache_savings(LLAMA2_7B, [0], 1, 1), ValueError, "length"),
    (lambda: hardware.cache_savings(LLAMA2_7B, [2.0], 1, 1), TypeError, "length"),
    (lambda: hardware.cache_savings(LLAMA2_7B, [2], 0, 1), ValueError, "peak_flops"),
    (lambda: hardware.cache_savings("llama", [2], 1, 1), TypeError, "config"),
    (lambda: hardware.cache_savings(LLAMA2_7B, [2], 1, 1, bytes_per_elem=0), ValueError, "bytes_per_elem"),
    (lambda: hardware.decode_step_seconds(LLAMA2_7B, 0, 1, 1), ValueError, "t must be"),
    (lambda: hardware.decode_step_seconds(LLAMA2_7B, 3, 1, 1, use_cache="no"), TypeError, "use_cache"),
    (lambda: hardware.free_refeed_length(LLAMA2_7B, 1, float("nan")), ValueError, "bandwidth"),
])
def test_cache_savings_bad_input_raises(call, error, message):
    with pytest.raises(error, match=message):
        call()
