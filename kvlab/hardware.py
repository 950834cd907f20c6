"""The roofline model, and the published peak numbers of a few GPUs to draw it for. Pure Python: no torch needed.

A chip can do at most ``peak_flops`` floating-point operations per second and move at most ``bandwidth`` bytes per
second between its memory and its compute units. A computation that does F FLOPs while moving M bytes has an
*arithmetic intensity* I = F / M (FLOP/byte) and can therefore run at no more than

    attainable FLOP/s = min(peak_flops, bandwidth · I)

(Williams, Waterman & Patterson 2009, "Roofline: an insightful visual performance model for multicore
architectures", Communications of the ACM 52(4)). The two limits meet at the *ridge point*
I* = peak_flops / bandwidth: work with I < I* is memory-bound (more FLOP/s would not help), work with I > I* is
compute-bound (more bandwidth would not help). `kvlab.flops.arithmetic_intensity` gives I for prefill and decode;
`kvlab.measure.measure_peak_flops` and `measure_bandwidth` measure the two roofs of your own machine.

The same two roofs answer what a KV cache saves in *time* rather than in FLOPs (`decode_step_seconds`,
`cache_savings`, `free_refeed_length`): at batch 1 a decode step is memory-bound, so the t-fold FLOPs that an
uncached step spends re-feeding t tokens cost no time until they outgrow the bytes every step must move anyway.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from .checks import check_bool, check_int, check_number, check_one_of
from .flops import bytes_moved, decode_step_coefficients, forward_flops

__all__ = ["GPUSpec", "GPU_PRESETS", "get_gpu", "ridge_point", "attainable_flops", "roofline_time",
           "decode_step_seconds", "CacheSaving", "cache_savings", "free_refeed_length"]

PRECISIONS = ("fp32", "fp16")


def _roofs(peak_flops: float, bandwidth: float) -> tuple[float, float]:
    """The two roofs as floats: rates, so finite and > 0 (a bool is a bug, not a rate)."""
    return (check_number("peak_flops", peak_flops, 0, inclusive=False),
            check_number("bandwidth", bandwidth, 0, inclusive=False))


def ridge_point(peak_flops: float, bandwidth: float) -> float:
    """Arithmetic intensity (FLOP/byte) where the memory roof meets the compute roof: peak_flops / bandwidth."""
    peak_flops, bandwidth = _roofs(peak_flops, bandwidth)
    return peak_flops / bandwidth


def attainable_flops(intensity: float, peak_flops: float, bandwidth: float) -> float:
    """The roofline: the most FLOP/s a computation of this intensity can reach, min(peak, bandwidth · intensity)."""
    intensity = check_number("intensity", intensity, 0)
    peak_flops, bandwidth = _roofs(peak_flops, bandwidth)
    return min(peak_flops, bandwidth * intensity)


def roofline_time(flops: float, n_bytes: float, peak_flops: float, bandwidth: float) -> float:
    """Least seconds a computation can take: max(flops / peak, bytes / bandwidth), whichever roof it hits.

    A lower bound: it assumes compute and memory traffic overlap perfectly and ignores launch overheads.
    """
    flops, n_bytes = check_number("flops", flops, 0), check_number("n_bytes", n_bytes, 0)
    peak_flops, bandwidth = _roofs(peak_flops, bandwidth)
    return max(flops / peak_flops, n_bytes / bandwidth)


@dataclass(frozen=True)
class GPUSpec:
    """One GPU's two roofs, as its maker publishes them (decimal units: FLOP/s and bytes/s).

    `fp16_flops` is the dense tensor-core rate for FP16 inputs with FP32 accumulation, *without* the 2:4
    structured sparsity that datasheets often quote as a second, doubled number. Data-centre cards accumulate in
    FP32 at full rate; a GeForce card such as the RTX 4090 does so at half the rate it reaches with FP16
    accumulation, which its spec sheet also quotes. On the Ampere, Hopper and Ada GPUs listed here BF16 runs at
    the same rate; the T4 (Turing) has no BF16. `fp32_flops` is plain FP32 on the CUDA
    cores (no TF32 tensor cores). `bandwidth` is the device memory's (HBM or GDDR) peak.
    """

    name: str
    fp32_flops: float
    fp16_flops: float
    bandwidth: float
    source: str

    def peak_flops(self, precision: str = "fp16") -> float:
        """Peak FLOP/s for 'fp32' (CUDA cores) or 'fp16' (dense tensor cores; the same for bf16 where supported)."""
        return self.fp32_flops if check_one_of("precision", precision, PRECISIONS) == "fp32" else self.fp16_flops

    def ridge_point(self, precision: str = "fp16") -> float:
        """FLOP/byte a computation needs before this GPU's compute, not its memory, limits it."""
        return ridge_point(self.peak_flops(precision), self.bandwidth)


# Published figures, dense (no sparsity), in FLOP/s and bytes/s with decimal prefixes as on the spec sheets
# (1 TFLOP/s = 1e12 FLOP/s, 1 TB/s = 1e12 bytes/s). Sources: the makers' datasheets/whitepapers named in `source`.
GPU_PRESETS: dict[str, GPUSpec] = {
    "t4": GPUSpec("NVIDIA T4", 8.1e12, 65e12, 320e9,
                  "NVIDIA T4 Tensor Core GPU datasheet: 8.1 TFLOPS FP32, 65 TFLOPS mixed precision (FP16/FP32), "
                  "16 GB GDDR6 at 320 GB/s (256-bit bus at 10 Gbit/s per pin)"),
    "rtx-4090": GPUSpec("NVIDIA GeForce RTX 4090", 82.6e12, 165.2e12, 1008e9,
                        "NVIDIA Ada GPU Architecture whitepaper, GeForce RTX 4090 column: 82.6 TFLOPS FP32, "
                        "165.2 TFLOPS FP16 tensor with FP32 accumulate (330.4 with sparsity; 330.3 dense with FP16 "
                        "accumulate, a GeForce card's faster mode), 1008 GB/s GDDR6X"),
    "a100-80gb-sxm": GPUSpec("NVIDIA A100 80GB SXM", 19.5e12, 312e12, 2039e9,
                             "NVIDIA A100 Tensor Core GPU datasheet, A100 80GB SXM column: 19.5 TFLOPS FP32, "
                             "312 TFLOPS BF16/FP16 tensor (624 with sparsity), 2,039 GB/s HBM2e"),
    "h100-sxm": GPUSpec("NVIDIA H100 SXM", 67e12, 989e12, 3350e9,
                        "NVIDIA H100 Tensor Core GPU datasheet, H100 SXM column: 67 TFLOPS FP32, "
                        "1,979 TFLOPS BF16/FP16 tensor with sparsity (989 dense, half of it), 3.35 TB/s HBM3"),
}


def get_gpu(name: str) -> GPUSpec:
    """Look a GPU up by id, with an error that lists the ids that do exist."""
    return GPU_PRESETS[check_one_of("gpu", name, GPU_PRESETS)]


# --- chapter 05: what the KV cache saves in time, not in FLOPs ---


def decode_step_seconds(config, t: int, peak_flops: float, bandwidth: float, *, use_cache: bool = True,
                        bytes_per_elem: float = 2) -> float:
    """Roofline time (a lower bound) of the forward that yields the next token when the sequence holds `t` tokens.

    With a cache it feeds 1 token over t - 1 cached ones; without one it re-feeds all t. The FLOPs differ t-fold
    (`kvlab.flops.decode_step_coefficients`), but the bytes do not: the weights once plus the K/V of t tokens (read
    t - 1 and write 1, or write all t). At batch 1 both steps are memory-bound for short sequences, so the
    uncached one costs no more *time* until its FLOPs outgrow bytes / bandwidth (`free_refeed_length`).
    """
    t = check_int("t", t, 1)
    check_bool("use_cache", use_cache)
    n_new, n_past = (1, t - 1) if use_cache else (t, 0)
    return roofline_time(forward_flops(config, n_new, n_past), bytes_moved(config, n_new, n_past, bytes_per_elem),
                         peak_flops, bandwidth)


def _bytes_coefficients(config, bytes_per_elem: float) -> tuple[int, int]:
    """(W, K) with bytes_moved(config, n_new, n_past) == W + K·(n_past + n_new) at batch 1, cache or not.

    W is the weights (read once per forward), K the keys and values of one token (each token's are either read
    from the cache or written to it). Read off `bytes_moved` itself, so the two conventions cannot drift apart.
    """
    one, two = bytes_moved(config, 1, 0, bytes_per_elem), bytes_moved(config, 1, 1, bytes_per_elem)
    return one - (two - one), two - one


@dataclass(frozen=True)
class CacheSaving:
    """One generation of `n_new` tokens from a 1-token prompt, without and with a KV cache: FLOPs and roofline time.

    The forwards see t = 1, ..., n_new tokens, as in chapter 04 (`kvlab.flops.generation_flops(config, 1, n_new)`).
    """

    n_new: int
    flops_without: int
    flops_with: int
    seconds_without: float
    seconds_with: float

    @property
    def flops_ratio(self) -> float:
        """How many times fewer FLOPs the cache needs: between (T+1)/2 and (2T+1)/3 (chapter 04)."""
        return self.flops_without / self.flops_with

    @property
    def time_ratio(self) -> float:
        """How many times less time the roofline allows with the cache: far below flops_ratio at batch 1 on a GPU."""
        return self.seconds_without / self.seconds_with


def cache_savings(config, lengths: Iterable[int], peak_flops: float, bandwidth: float,
                  bytes_per_elem: float = 2) -> list[CacheSaving]:
    """FLOPs saved against time saved by a KV cache, for whole generations of each length T in `lengths` (batch 1).

    Each forward is timed by the roofline, max(FLOPs / peak, bytes / bandwidth), as `decode_step_seconds` does,
    and the totals add the forwards t = 1..T. To stay instant for thousands of tokens the loop uses the same
    counts in coefficient form: a step at length t does D + A·t FLOPs with a cache and t times that without
    (`kvlab.flops.decode_step_coefficients`), and moves W + K·t bytes either way (`bytes_moved`). One pass over
    t = 1..max(lengths) serves every length. The times are an estimate (a lower bound), not a measurement.
    """
    lengths = [check_int("each length", T, 1) for T in lengths]
    if not lengths:
        raise ValueError("lengths must hold at least one generation length T >= 1, got none")
    peak_flops, bandwidth = _roofs(peak_flops, bandwidth)
    dense, per_key = decode_step_coefficients(config)
    weights, per_token = _bytes_coefficients(config, bytes_per_elem)
    totals, wanted = {}, set(lengths)
    flops_with = flops_without = 0
    seconds_with = seconds_without = 0.0
    for t in range(1, max(lengths) + 1):
        step_flops, step_bytes = dense + per_key * t, weights + per_token * t  # the step with a cache
        flops_with += step_flops
        flops_without += t * step_flops  # re-feeding t tokens: t times the FLOPs, the same bytes
        seconds_with += max(step_flops / peak_flops, step_bytes / bandwidth)
        seconds_without += max(t * step_flops / peak_flops, step_bytes / bandwidth)
        if t in wanted:
            totals[t] = CacheSaving(t, flops_without, flops_with, seconds_without, seconds_with)
    return [totals[T] for T in lengths]


def free_refeed_length(config, peak_flops: float, bandwidth: float, bytes_per_elem: float = 2) -> int:
    """The longest sequence t whose uncached step (all t tokens re-fed, batch 1) is still memory-bound.

    Up to this t, re-feeding the whole sequence takes no more roofline time than feeding one token with a cache:
    the t-fold FLOPs hide behind the bytes both steps move. It is the t where t·(D + A·t) / peak reaches
    (W + K·t) / bandwidth; since the step's intensity is about 2t / bytes_per_elem, that is near
    ridge point · bytes_per_elem / 2: about the ridge itself in fp16. A prefill of t tokens is the same forward,
    so a prefill passes the ridge from t + 1 tokens on. 0 if even one token is compute-bound.
    """
    ridge = ridge_point(peak_flops, bandwidth)
    dense, per_key = decode_step_coefficients(config)
    weights, per_token = _bytes_coefficients(config, bytes_per_elem)

    def memory_bound(t: int) -> bool:  # t·(D + A·t) / peak <= (W + K·t) / bandwidth
        return t * (dense + per_key * t) <= ridge * (weights + per_token * t)

    # the positive root of A·t² + (D − ridge·K)·t − ridge·W = 0, then exact integer steps around it
    b = dense - ridge * per_token
    t = max(0, math.floor((-b + math.sqrt(b * b + 4 * per_key * ridge * weights)) / (2 * per_key)))
    while memory_bound(t + 1):
        t += 1
    while t > 0 and not memory_bound(t):
        t -= 1
    return t
