"""Measuring: FLOPs counted by PyTorch itself, to check the analytic formulas of `kvlab.flops` against."""

from __future__ import annotations

import contextlib

import torch
from torch.utils.flop_counter import FlopCounterMode

from .cache import Cache
from .model import TinyGPT

__all__ = ["count_flops"]


def _math_attention():
    """Run attention as plain matmuls: PyTorch's counter has no formula for the fused CPU attention kernel."""
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:  # torch < 2.3 has no sdpa_kernel; its CPU attention already decomposes into matmuls
        return contextlib.nullcontext()
    return sdpa_kernel(SDPBackend.MATH)


@torch.inference_mode()
def count_flops(model: TinyGPT, idx: torch.Tensor, cache: Cache | None = None) -> int:
    """FLOPs of ``model(idx, cache)`` as counted by ``torch.utils.flop_counter.FlopCounterMode`` (matmuls only)."""
    with _math_attention(), FlopCounterMode(display=False) as counter:
        model(idx, cache)
    return counter.get_total_flops()
