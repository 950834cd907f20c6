"""How many bytes the KV cache takes, in plain Python arithmetic.

The KV cache trades memory for speed: every generated token stores its keys and
values so they are never recomputed. This module counts that memory by hand so
a learner can check the formula against real tensors, real GPUs and real models.
It imports neither torch nor numpy on purpose: widgets, the CLI and notebooks
reuse these functions, and tests can check them against numbers worked out on paper.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

GIB = 1024**3  # binary gigabyte: what GPU memory and `torch.cuda` report
GB = 10**9  # decimal gigabyte: what spec sheets and disk sizes use

DTYPE_BYTES: dict[str, float] = {"fp32": 4, "fp16": 2, "bf16": 2, "int8": 1, "int4": 0.5}


def bytes_per_element(dtype: str) -> float:
    """Bytes one number takes in `dtype`; int4 packs two numbers into one byte, hence 0.5."""
    if dtype not in DTYPE_BYTES:
        raise ValueError(f"unknown dtype {dtype!r}; allowed: {', '.join(DTYPE_BYTES)}")
    return DTYPE_BYTES[dtype]


def _check_int(name: str, value: object, minimum: int) -> None:
    """Reject bools and floats too: `True` or `12.0` layers is a bug, not a count."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int >= {minimum}, got {value!r} ({type(value).__name__})")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")


def _check_bytes_per_elem(value: object) -> None:
    """Allow 0.5 (int4) and other fractional widths, but nothing that is not a positive size."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"bytes_per_elem must be a number > 0, got {value!r} ({type(value).__name__})")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"bytes_per_elem must be a finite number > 0, got {value!r}")


def _whole_bytes(n_elements: int, bytes_per_elem: float) -> int:
    """Multiply exactly (Fraction, not float) so 0.5-byte int4 never drifts on huge counts.

    Rounds up: a partly used byte still has to be allocated.
    """
    return math.ceil(n_elements * Fraction(bytes_per_elem))


def kv_cache_bytes(
    n_layer: int,
    batch_size: int,
    seq_len: int,
    hidden_size: int,
    bytes_per_elem: float = 2,
    *,
    n_head: int | None = None,
    n_kv_head: int | None = None,
) -> int:
    """Bytes of a full KV cache: 2 · n_layer · batch_size · seq_len · hidden · bytes_per_elem.

    Why this formula: the cache holds one tensor of shape
    [n_layer, 2, batch_size, n_kv_head, seq_len, head_dim], where the 2 is one K and
    one V per layer. Its element count is the product of that shape. In ordinary
    multi-head attention every head has its own K and V, so n_kv_head = n_head and
    n_kv_head · head_dim = n_head · head_dim = hidden_size (= d_model).

    Grouped-query attention (Ainslie et al. 2023) lets several query heads share
    one K/V head, and multi-query attention (Shazeer 2019) is the case n_kv_head=1.
    Then hidden = n_kv_head · head_dim with head_dim = hidden_size // n_head, and the
    cache shrinks by exactly n_head / n_kv_head. Pass n_kv_head (with n_head) for that.

    `bytes_per_elem` is a number such as `bytes_per_element("fp16")`; the result
    is an exact int even for int4 (0.5 bytes), because of the leading factor 2.
    """
    _check_int("n_layer", n_layer, 1)
    _check_int("batch_size", batch_size, 0)
    _check_int("seq_len", seq_len, 0)
    _check_int("hidden_size", hidden_size, 1)
    _check_bytes_per_elem(bytes_per_elem)
    hidden = _kv_hidden(hidden_size, n_head, n_kv_head)
    return _whole_bytes(2 * n_layer * batch_size * seq_len * hidden, bytes_per_elem)


def _kv_hidden(hidden_size: int, n_head: int | None, n_kv_head: int | None) -> int:
    """Width of K (and of V) per token and layer: n_kv_head · head_dim."""
    if n_head is None:
        if n_kv_head is not None:
            raise ValueError(f"n_kv_head={n_kv_head!r} needs n_head too, to get head_dim = hidden_size // n_head")
        return hidden_size
    _check_int("n_head", n_head, 1)
    if hidden_size % n_head:
        raise ValueError(f"hidden_size must be divisible by n_head, got hidden_size={hidden_size}, n_head={n_head}")
    if n_kv_head is None:
        return hidden_size
    _check_int("n_kv_head", n_kv_head, 1)
    if n_head % n_kv_head:
        raise ValueError(f"n_head must be divisible by n_kv_head, got n_head={n_head}, n_kv_head={n_kv_head}")
    return n_kv_head * (hidden_size // n_head)


@dataclass(frozen=True)
class ModelPreset:
    """Shape of a published model: just the numbers the memory arithmetic needs.

    n_params is the parameter count from the paper or the released weights, so
    weight memory can be compared with KV-cache memory on one scale.
    """

    name: str
    n_layer: int
    d_model: int
    n_head: int
    n_kv_head: int  # == n_head for multi-head attention, fewer for GQA/MQA
    vocab_size: int
    max_seq_len: int
    n_params: int
    source: str

    @property
    def head_dim(self) -> int:
        """Width of one head's query, key and value vectors."""
        return self.d_model // self.n_head

    def kv_cache_bytes(self, batch_size: int, seq_len: int, bytes_per_elem: float = 2) -> int:
        """Cache bytes for this model's shape; see the module-level `kv_cache_bytes`."""
        return kv_cache_bytes(
            self.n_layer, batch_size, seq_len, self.d_model, bytes_per_elem,
            n_head=self.n_head, n_kv_head=self.n_kv_head,
        )

    def weight_bytes(self, bytes_per_elem: float = 2) -> int:
        """Bytes of the weights alone, the memory a GPU spends before caching any token."""
        _check_bytes_per_elem(bytes_per_elem)
        return _whole_bytes(self.n_params, bytes_per_elem)


def kv_bytes_per_token(preset: ModelPreset, bytes_per_elem: float = 2) -> int:
    """Cache bytes each token adds (batch 1, one position): the slope of memory vs. context."""
    return preset.kv_cache_bytes(1, 1, bytes_per_elem)


_GPT2 = "Radford et al. 2019 (GPT-2); Hugging Face gpt2 config.json"
_LLAMA2 = "Touvron et al. 2023 (Llama 2); meta-llama config.json"
_LLAMA3 = "Meta 2024 (Llama 3); meta-llama/Meta-Llama-3 config.json"

# Fields in order: name, n_layer, d_model, n_head, n_kv_head, vocab_size, max_seq_len, n_params, source.
# n_params: exact counts of the released weights where the architecture fixes them,
# the paper's rounded figure otherwise (GPT-3, OPT).
MODEL_PRESETS: dict[str, ModelPreset] = {
    "gpt2-small": ModelPreset("GPT-2 small", 12, 768, 12, 12, 50257, 1024, 124_439_808, _GPT2),
    "gpt2-medium": ModelPreset("GPT-2 medium", 24, 1024, 16, 16, 50257, 1024, 354_823_168, _GPT2),
    "gpt2-large": ModelPreset("GPT-2 large", 36, 1280, 20, 20, 50257, 1024, 774_030_080, _GPT2),
    "gpt2-xl": ModelPreset("GPT-2 XL", 48, 1600, 25, 25, 50257, 1024, 1_557_611_200, _GPT2),
    "gpt3-175b": ModelPreset("GPT-3 175B", 96, 12288, 96, 96, 50257, 2048, 175_000_000_000,
                              "Brown et al. 2020 (GPT-3), Table 2.1"),
    "opt-13b": ModelPreset("OPT-13B", 40, 5120, 40, 40, 50272, 2048, 13_000_000_000,
                            "Zhang et al. 2022 (OPT), Table 1; facebook/opt-13b config.json"),
    "llama2-7b": ModelPreset("Llama 2 7B", 32, 4096, 32, 32, 32000, 4096, 6_738_415_616, _LLAMA2),
    "llama2-13b": ModelPreset("Llama 2 13B", 40, 5120, 40, 40, 32000, 4096, 13_015_864_320, _LLAMA2),
    "llama2-70b": ModelPreset("Llama 2 70B", 80, 8192, 64, 8, 32000, 4096, 68_976_648_192, _LLAMA2),
    "llama3-8b": ModelPreset("Llama 3 8B", 32, 4096, 32, 8, 128256, 8192, 8_030_261_248, _LLAMA3),
    "llama3-70b": ModelPreset("Llama 3 70B", 80, 8192, 64, 8, 128256, 8192, 70_553_706_496, _LLAMA3),
    "mistral-7b": ModelPreset("Mistral 7B", 32, 4096, 32, 8, 32000, 32768, 7_241_732_096,
                               "Jiang et al. 2023 (Mistral 7B); mistralai/Mistral-7B-v0.1 config.json "
                               "(attention window 4096)"),
}


def get_preset(name: str) -> ModelPreset:
    """Look a preset up by id, with an error that lists the ids that do exist."""
    if name not in MODEL_PRESETS:
        raise ValueError(f"unknown preset {name!r}; known: {', '.join(MODEL_PRESETS)}")
    return MODEL_PRESETS[name]


def _scaled(n_bytes: float, base: int, units: tuple[str, ...]) -> str:
    """Divide by `base` while the rounded value still reaches it, so we never print '1024.0 KiB'."""
    value, unit = float(n_bytes), units[0]
    for bigger in units[1:]:
        if round(value, 1) < base:
            break
        value, unit = value / base, bigger
    return f"{value:.1f} {unit}"


def format_bytes(n_bytes: int) -> str:
    """Both binary and decimal units, e.g. '72.0 GiB (77.3 GB)'.

    GPUs are sold in one unit and report memory in the other; showing both stops
    a 7% gap from looking like a bug.
    """
    if isinstance(n_bytes, bool) or not isinstance(n_bytes, (int, float)):
        raise TypeError(f"n_bytes must be a number of bytes, got {n_bytes!r} ({type(n_bytes).__name__})")
    if not n_bytes >= 0:  # also catches NaN
        raise ValueError(f"n_bytes must be >= 0, got {n_bytes!r}")
    if n_bytes < 1024:
        return f"{n_bytes} B"
    binary = _scaled(n_bytes, 1024, ("B", "KiB", "MiB", "GiB", "TiB", "PiB"))
    decimal = _scaled(n_bytes, 1000, ("B", "kB", "MB", "GB", "TB", "PB"))
    return f"{binary} ({decimal})"


def max_tokens_that_fit(
    preset: ModelPreset,
    memory_bytes: int,
    bytes_per_elem: float = 2,
    weight_bytes: int | None = None,
) -> int:
    """How many cached tokens (batch_size × seq_len, summed) fit beside the weights.

    An upper bound: real servers also need room for activations, the CUDA context
    and fragmentation. Returns 0 when the weights alone do not fit.
    `weight_bytes` defaults to the weights stored in the same dtype as the cache.
    """
    _check_int("memory_bytes", memory_bytes, 0)
    if weight_bytes is None:
        weight_bytes = preset.weight_bytes(bytes_per_elem)
    _check_int("weight_bytes", weight_bytes, 0)
    free = memory_bytes - weight_bytes
    return max(free, 0) // kv_bytes_per_token(preset, bytes_per_elem)
