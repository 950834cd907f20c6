"""kvlab.hardware (chapter 05): GPU presets hold the published figures, and the roofline arithmetic by hand."""

import ast
import math
from pathlib import Path

import pytest

from kvlab import hardware

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
    assert imported <= {"__future__", "math", "dataclasses", "checks"}  # kvlab.checks imports no torch at load
