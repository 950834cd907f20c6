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
"""

from __future__ import annotations

from dataclasses import dataclass

from .checks import check_number, check_one_of

__all__ = ["GPUSpec", "GPU_PRESETS", "get_gpu", "ridge_point", "attainable_flops", "roofline_time"]

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
    structured sparsity that datasheets often quote as a second, doubled number. On the Ampere, Hopper and Ada GPUs
    listed here BF16 runs at the same rate; the T4 (Turing) has no BF16. `fp32_flops` is plain FP32 on the CUDA
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
                        "165.2 TFLOPS FP16 tensor with FP32 accumulate (330.4 with sparsity), 1008 GB/s GDDR6X"),
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
