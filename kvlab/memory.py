"""How many bytes the KV cache takes, in plain Python arithmetic.

The KV cache trades memory for speed: every generated token stores its keys and values so they are never recomputed.
This module counts that memory by hand so a learner can check the formula against real tensors, real GPUs and real
models. It imports neither torch nor numpy on purpose: widgets, the CLI and notebooks reuse these functions, and
tests can check them against numbers worked out on paper.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

from .checks import check_int, check_number, check_one_of, check_type

GIB = 1024**3  # binary gigabyte: what GPU memory and `torch.cuda` report
GB = 10**9  # decimal gigabyte: what spec sheets and disk sizes use

DTYPE_BYTES: dict[str, float] = {"fp32": 4, "fp16": 2, "bf16": 2, "int8": 1, "int4": 0.5}


# --- chapter 03: the formula ---


def bytes_per_element(dtype: str) -> float:
    """Bytes one number takes in `dtype`; int4 packs two numbers into one byte, hence 0.5."""
    return DTYPE_BYTES[check_one_of("dtype", dtype, DTYPE_BYTES)]


def _whole_bytes(n_elements: int, bytes_per_elem: float) -> int:
    """Multiply exactly (Fraction, not float) so 0.5-byte int4 never drifts on huge counts; round up, since a partly
    used byte still has to be allocated."""
    return math.ceil(n_elements * Fraction(bytes_per_elem))


def kv_cache_bytes(n_layer: int, batch_size: int, seq_len: int, hidden_size: int, bytes_per_elem: float = 2, *,
                   n_head: int | None = None, n_kv_head: int | None = None) -> int:
    """Bytes of a full KV cache: 2 · n_layer · batch_size · seq_len · hidden · bytes_per_elem.

    Why this formula: the cache holds one tensor of shape [n_layer, 2, batch_size, n_kv_head, seq_len, head_dim],
    where the 2 is one K and one V per layer. Its element count is the product of that shape. In ordinary
    multi-head attention every head has its own K and V, so n_kv_head = n_head and
    n_kv_head · head_dim = n_head · head_dim = hidden_size (= d_model).

    Grouped-query attention (Ainslie et al. 2023) lets several query heads share one K/V head, and multi-query
    attention (Shazeer 2019) is the case n_kv_head=1. Then the cache shrinks by exactly n_head / n_kv_head, since
    hidden = n_kv_head · head_dim with head_dim = hidden_size // n_head. Pass n_kv_head (with n_head) for that.

    `bytes_per_elem` is a number such as `bytes_per_element("fp16")`; the result is an exact int even for int4
    (0.5 bytes), because of the leading factor 2.
    """
    check_int("n_layer", n_layer, 1)
    check_int("batch_size", batch_size, 0)
    check_int("seq_len", seq_len, 0)
    check_int("hidden_size", hidden_size, 1)
    check_number("bytes_per_elem", bytes_per_elem, 0, inclusive=False)
    hidden = _kv_hidden(hidden_size, n_head, n_kv_head)
    return _whole_bytes(2 * n_layer * batch_size * seq_len * hidden, bytes_per_elem)


def _kv_hidden(hidden_size: int, n_head: int | None, n_kv_head: int | None) -> int:
    """Width of K (and of V) per token and layer: n_kv_head · head_dim."""
    if n_head is None:
        if n_kv_head is not None:
            raise ValueError(f"n_kv_head={n_kv_head!r} needs n_head too, to get head_dim = hidden_size // n_head")
        return hidden_size
    check_int("n_head", n_head, 1)
    if hidden_size % n_head:
        raise ValueError(f"hidden_size must be divisible by n_head, got hidden_size={hidden_size}, n_head={n_head}")
    if n_kv_head is None:
        return hidden_size
    check_int("n_kv_head", n_kv_head, 1)
    if n_head % n_kv_head:
        raise ValueError(f"n_head must be divisible by n_kv_head, got n_head={n_head}, n_kv_head={n_kv_head}")
    return n_kv_head * (hidden_size // n_head)


# --- chapter 04: published models ---


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
    sliding_window: int | None = None  # tokens a rolling cache keeps (Mistral 7B v0.1: 4,096); None: all of them

    @property
    def head_dim(self) -> int:
        """Width of one head's query, key and value vectors."""
        return self.d_model // self.n_head

    def kv_cache_bytes(self, batch_size: int, seq_len: int, bytes_per_elem: float = 2) -> int:
        """Cache bytes for this model's shape after `seq_len` tokens; see the module-level `kv_cache_bytes`.

        A model with a sliding window attends to its last `sliding_window` tokens only, so its cache (a rolling
        buffer) stops growing there: Mistral 7B's holds at most 4,096 tokens, whatever the length of the text.
        """
        held = cached_tokens(check_int("seq_len", seq_len, 0), self.sliding_window)
        return kv_cache_bytes(self.n_layer, batch_size, held, self.d_model, bytes_per_elem, n_head=self.n_head,
                              n_kv_head=self.n_kv_head)

    def weight_bytes(self, bytes_per_elem: float = 2) -> int:
        """Bytes of the weights alone, the memory a GPU spends before caching any token."""
        check_number("bytes_per_elem", bytes_per_elem, 0, inclusive=False)
        return _whole_bytes(self.n_params, bytes_per_elem)


def window_note(sliding_window: int | None) -> str:
    """What the reports add to a model's line when its cache is a rolling window ("" when it is not)."""
    if sliding_window is None:
        return ""
    return f", sliding window {sliding_window:,} (the cache holds at most that many tokens per sequence)"


def cached_tokens(seq_len: int, sliding_window: int | None) -> int:
    """Tokens a sequence's cache holds after `seq_len` tokens: all of them, or at most the sliding window."""
    return seq_len if sliding_window is None else min(seq_len, sliding_window)


_GPT2 = "Radford et al. 2019 (GPT-2); Hugging Face gpt2 config.json"
_LLAMA2 = "Touvron et al. 2023 (Llama 2); meta-llama config.json"
_LLAMA3 = "Meta 2024 (Llama 3); meta-llama/Meta-Llama-3 config.json"


# Fields in order: name, n_layer, d_model, n_head, n_kv_head, vocab_size, max_seq_len, n_params, source,
# sliding_window (only where the model has one).
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
                               "(attention window 4096)", sliding_window=4096),
}


def get_preset(name: str) -> ModelPreset:
    """Look a preset up by id, with an error that lists the ids that do exist."""
    return MODEL_PRESETS[check_one_of("preset", name, MODEL_PRESETS)]


# --- chapter 05: bytes in both units ---


def _scaled(n_bytes: Fraction, base: int, units: tuple[str, ...]) -> str:
    """Divide by `base` while the rounded value still reaches it (never '1024.0 KiB'); exact, so any int fits."""
    value, unit = n_bytes, units[0]
    for bigger in units[1:]:
        if round(value, 1) < base:
            break
        value, unit = value / base, bigger
    return "{}.{} {}".format(*divmod(round(value * 10), 10), unit)  # one decimal, rounded half to even


def format_bytes(n_bytes: int) -> str:
    """Both binary and decimal units, e.g. '72.0 GiB (77.3 GB)': GPUs are sold in one unit and report memory in
    the other; showing both stops a 7% gap from looking like a bug."""
    (check_int if isinstance(n_bytes, int) else check_number)("n_bytes", n_bytes, 0)  # an int: any size, no float
    if n_bytes < 1024:
        return f"{n_bytes} B"
    binary = _scaled(Fraction(n_bytes), 1024, ("B", "KiB", "MiB", "GiB", "TiB", "PiB"))
    decimal = _scaled(Fraction(n_bytes), 1000, ("B", "kB", "MB", "GB", "TB", "PB"))
    return f"{binary} ({decimal})"


# --- chapter 06: KV-cache memory ---


def kv_bytes_per_token(preset: ModelPreset, bytes_per_elem: float = 2) -> int:
    """Cache bytes each token adds (batch 1, one position): the slope of memory vs. context."""
    check_type("preset", preset, ModelPreset, "a ModelPreset (see get_preset)")
    return preset.kv_cache_bytes(1, 1, bytes_per_elem)


def max_tokens_that_fit(preset: ModelPreset, memory_bytes: int, bytes_per_elem: float = 2,
                        weight_bytes: int | None = None) -> int:
    """How many cached tokens (batch_size × seq_len, summed) fit beside the weights.

    An upper bound: real servers also need room for activations, the CUDA context and fragmentation. Returns 0
    when the weights alone do not fit. `weight_bytes` defaults to the weights stored in the same dtype as the cache.
    """
    check_type("preset", preset, ModelPreset, "a ModelPreset (see get_preset)")
    check_int("memory_bytes", memory_bytes, 0)
    if weight_bytes is None:
        weight_bytes = preset.weight_bytes(bytes_per_elem)
    check_int("weight_bytes", weight_bytes, 0)
    return max(memory_bytes - weight_bytes, 0) // kv_bytes_per_token(preset, bytes_per_elem)


def tokens_to_outgrow_weights(preset: ModelPreset, bytes_per_elem: float = 2, weight_bytes: int | None = None) -> int:
    """Fewest cached tokens (batch_size × seq_len, summed) whose cache takes more bytes than the weights.

    The cache grows linearly in batch_size · seq_len while the weights stay put, so there is always such a
    point; past it, a serving GPU spends more memory on remembered tokens than on the model itself.
    `weight_bytes` defaults to the weights stored in the same dtype as the cache.
    """
    check_type("preset", preset, ModelPreset, "a ModelPreset (see get_preset)")
    if weight_bytes is None:
        weight_bytes = preset.weight_bytes(bytes_per_elem)
    check_int("weight_bytes", weight_bytes, 0)
    return weight_bytes // kv_bytes_per_token(preset, bytes_per_elem) + 1


@dataclass(frozen=True)
class MemoryReport:
    """Where the memory of one GPU goes when it serves a model: weights, KV cache, and what is left.

    Built by `memory_report`, which checks the inputs; the derived numbers are properties, so a report can
    never disagree with itself. The calculator widget and `kvlab memory --gpu-gib` both print one.
    """

    name: str
    n_layer: int
    d_model: int
    n_head: int | None
    n_kv_head: int | None
    batch_size: int
    seq_len: int
    dtype: str
    weight_dtype: str
    n_params: int
    gpu_bytes: int
    cache_bytes: int  # 2 · n_layer · batch_size · cached tokens · (n_kv_head · head_dim) · bytes
    bytes_per_token: int  # the same with batch_size = seq_len = 1
    weight_bytes: int  # n_params · bytes of weight_dtype
    sliding_window: int | None = None  # a rolling cache holds at most this many tokens per sequence

    @property
    def weights_fit(self) -> bool:
        """Whether the weights alone fit on the GPU."""
        return self.weight_bytes <= self.gpu_bytes

    @property
    def free_bytes(self) -> int:
        """Memory left for the cache once the weights are loaded (0 when they do not fit)."""
        return max(self.gpu_bytes - self.weight_bytes, 0)

    @property
    def cache_fits(self) -> bool:
        """Whether weights and cache fit together (an upper bound: activations also need room)."""
        return self.weight_bytes + self.cache_bytes <= self.gpu_bytes

    @property
    def max_tokens(self) -> int:
        """The largest batch_size × seq_len (cached tokens, summed over the batch) that fits beside the weights."""
        return self.free_bytes // self.bytes_per_token

    @property
    def max_batch_size(self) -> int | None:
        """The largest batch that fits at this seq_len (None when seq_len is 0: any batch caches nothing)."""
        held = cached_tokens(self.seq_len, self.sliding_window)
        return self.max_tokens // held if held else None

    @property
    def max_seq_len(self) -> int | float | None:
        """The longest sequence that fits at this batch_size (None when batch_size is 0; ``math.inf`` when a
        sliding window caps every sequence's cache and `batch_size` windows fit)."""
        if not self.batch_size:
            return None
        longest = self.max_tokens // self.batch_size
        return math.inf if self.sliding_window is not None and longest >= self.sliding_window else longest

    @property
    def free_share_of_gpu(self) -> float:
        """Share of the GPU's memory left after the weights, 0..1."""
        return self.free_bytes / self.gpu_bytes

    @property
    def cache_share_of_free(self) -> float:
        """Share of the memory left after the weights that this cache takes; above 1 it does not fit."""
        if self.free_bytes == 0 or self.cache_bytes // self.free_bytes > 10**300:  # inf: past float range
            return 0.0 if self.cache_bytes == 0 else math.inf
        return self.cache_bytes / self.free_bytes


def _percent(part: int, whole: int, decimals: int) -> str:
    """part / whole as '1,234.5%', in exact integer arithmetic: a ratio of two huge counts can exceed any float."""
    if whole == 0 and part:
        return "inf%"
    scaled = round(Fraction(part * 100 * 10**decimals, whole or 1))
    return f"{scaled // 10**decimals:,}" + (f".{scaled % 10**decimals:0{decimals}d}" if decimals else "") + "%"


def memory_report(n_layer: int, d_model: int, n_head: int | None, n_kv_head: int | None, batch_size: int,
                  seq_len: int, dtype: str = "fp16", *, gpu_gib: float, n_params: int, weight_dtype: str | None = None,
                  name: str = "custom model", sliding_window: int | None = None) -> MemoryReport:
    """KV-cache bytes of a model shape and how they sit on a GPU of `gpu_gib` GiB next to the weights.

    The cache follows `kv_cache_bytes`, holding at most `sliding_window` tokens per sequence if the model has one;
    the weights are `n_params` numbers of `weight_dtype` (default: the cache's dtype). Invalid input raises
    ValueError/TypeError naming the value, as everywhere in this module.
    """
    check_one_of("dtype", dtype, DTYPE_BYTES)
    weight_dtype = check_one_of("weight_dtype", dtype if weight_dtype is None else weight_dtype, DTYPE_BYTES)
    check_int("n_params", n_params, 0)
    # an int of GiB stays exact at any size (float() would overflow past 1e308), so only its sign is checked
    check_number("gpu_gib", min(gpu_gib, 1) if isinstance(gpu_gib, int) else gpu_gib, 0, inclusive=False)
    if gpu_gib * GIB < 1:  # rounds to 0 bytes, and every share of the GPU would divide by zero
        raise ValueError(f"gpu_gib must be at least one byte (1 / 2**30 GiB), got {gpu_gib!r}")
    check_type("name", name, str, "a str")
    if sliding_window is not None:
        check_int("sliding_window", sliding_window, 1)
    width = bytes_per_element(dtype)

    def cache(batch: int, length: int) -> int:
        return kv_cache_bytes(n_layer, batch, length, d_model, width, n_head=n_head, n_kv_head=n_kv_head)

    return MemoryReport(name=name, n_layer=n_layer, d_model=d_model, n_head=n_head, n_kv_head=n_kv_head,
                        batch_size=batch_size, seq_len=seq_len, dtype=dtype, weight_dtype=weight_dtype,
                        n_params=n_params, gpu_bytes=math.floor(Fraction(gpu_gib) * GIB),
                        cache_bytes=cache(batch_size, cached_tokens(seq_len, sliding_window)),
                        bytes_per_token=cache(1, 1), sliding_window=sliding_window,
                        weight_bytes=_whole_bytes(n_params, bytes_per_element(weight_dtype)))


def preset_report(preset: str | ModelPreset, batch_size: int, seq_len: int, dtype: str = "fp16", *,
                  gpu_gib: float, weight_dtype: str | None = None) -> MemoryReport:
    """`memory_report` for a published model, by preset id (e.g. "llama2-7b") or `ModelPreset`."""
    preset = get_preset(preset) if isinstance(preset, str) else preset
    check_type("preset", preset, ModelPreset, "a preset id or a ModelPreset")
    return memory_report(preset.n_layer, preset.d_model, preset.n_head, preset.n_kv_head, batch_size, seq_len,
                         dtype, gpu_gib=gpu_gib, n_params=preset.n_params, weight_dtype=weight_dtype,
                         name=preset.name, sliding_window=preset.sliding_window)


def bytes_line(n_bytes: int) -> str:
    """'77,309,411,328 bytes = 72.0 GiB (77.3 GB)': the exact count, then both units. CLI and widget print it."""
    return f"{n_bytes:,} bytes = {format_bytes(n_bytes)}"


def format_report(report: MemoryReport) -> str:
    """The report as the lines the CLI prints and the calculator shows (the first three match `kvlab memory`)."""
    r = check_type("report", report, MemoryReport, "a MemoryReport (see memory_report)")
    shape = {"n_layer": r.n_layer, "d_model": r.d_model, "n_head": r.n_head, "n_kv_head": r.n_kv_head}
    shape_text = ", ".join(f"{k}={v}" for k, v in shape.items() if v is not None)
    lines = [
        f"{r.name} ({shape_text}), batch {r.batch_size}, seq_len {r.seq_len}, {r.dtype}"
        f"{window_note(r.sliding_window)}",
        f"KV cache: {bytes_line(r.cache_bytes)}",
        f"per token: {bytes_line(r.bytes_per_token)}",
        f"weights: {r.n_params:,} parameters in {r.weight_dtype} = {bytes_line(r.weight_bytes)}",
        f"GPU: {bytes_line(r.gpu_bytes)}",
    ]
    if not r.weights_fit:
        lines.append(f"does not fit: the weights alone need {_percent(r.weight_bytes, r.gpu_bytes, 0)} of the GPU, "
                     f"so no room is left for a KV cache")
        return "\n".join(lines)
    verdict = "fits" if r.cache_fits else "does NOT fit"
    lines += [
        f"left after the weights: {bytes_line(r.free_bytes)} ({r.free_share_of_gpu:.1%} of the GPU)",
        f"{verdict}: this cache takes {_percent(r.cache_bytes, r.free_bytes, 1)} of what is left",
        f"largest batch × seq_len that fits: {r.max_tokens:,} cached tokens",
    ]
    if r.max_seq_len == math.inf:
        lines.append(f"  at batch {r.batch_size:,}: any seq_len (each sequence caches at most its window)")
    elif r.max_seq_len is not None:
        lines.append(f"  at batch {r.batch_size:,}: seq_len up to {r.max_seq_len:,}")
    if r.max_batch_size is not None:
        lines.append(f"  at seq_len {r.seq_len:,}: batch up to {r.max_batch_size:,}")
    return "\n".join(lines)


# --- chapter 08: compressing the cache ---


QUANTIZED_BITS = (2, 4, 8)  # the integer widths a quantised cache packs into bytes: 4, 2 or 1 code per byte


def check_packed_length(bits: int, length: int, what: str) -> None:
    """`8 // bits` codes share a byte along the last dim (`what`), so its length must be a multiple of that."""
    per_byte = 8 // bits
    if length % per_byte:
        raise ValueError(f"{bits}-bit codes are packed {per_byte} per byte along {what}, so its length must be a "
                         f"multiple of {per_byte}, got {length}")


def quantized_kv_cache_bytes(n_layer: int, batch_size: int, seq_len: int, n_kv_head: int, head_dim: int, bits: int,
                             *, group_size: int, residual_length: int, float_bytes: float = 2) -> int:
    """Bytes of a KIVI-style quantised cache (`kvlab.compressed_cache.QuantizedCache`) after `seq_len` tokens.

    The cache quantises the oldest tokens in groups of `group_size` and keeps the newest `residual_length` to
    ``residual_length + group_size - 1`` in full precision, so ``n_q = group_size · ⌊(seq_len - residual_length) /
    group_size⌋`` tokens (0 if negative) are integers and ``n_r = seq_len - n_q`` are floats. Per layer, batch row
    and K/V head it holds:

    - keys: ``n_q · head_dim`` codes of ``bits / 8`` bytes, plus a scale and a zero point per channel and group:
      ``2 · (n_q / group_size) · head_dim`` floats;
    - values: the same codes, plus a scale and a zero point per token: ``2 · n_q`` floats;
    - the residual: ``2 · n_r · head_dim`` floats (K and V).

    `float_bytes` is the width of those floats (the model's dtype: 2 for fp16/bf16, 4 for fp32).
    """
    for name, value, minimum in (("n_layer", n_layer, 1), ("batch_size", batch_size, 0), ("seq_len", seq_len, 0),
                                 ("n_kv_head", n_kv_head, 1), ("head_dim", head_dim, 1),
                                 ("group_size", group_size, 1), ("residual_length", residual_length, 0)):
        check_int(name, value, minimum)
    check_packed_length(check_one_of("bits", check_int("bits", bits), QUANTIZED_BITS), head_dim, "head_dim")
    check_number("float_bytes", float_bytes, 0, inclusive=False)
    n_q = group_size * (max(seq_len - residual_length, 0) // group_size)
    n_r = seq_len - n_q
    codes = 2 * n_q * head_dim * bits // 8  # keys and values
    floats = 2 * (n_q // group_size) * head_dim + 2 * n_q + 2 * n_r * head_dim  # key scales, value scales, residual
    return n_layer * batch_size * n_kv_head * (codes + _whole_bytes(floats, float_bytes))


@dataclass(frozen=True)
class MLAShape:
    """The sizes of a model with multi-head latent attention (MLA, DeepSeek-AI 2024, "DeepSeek-V2", section 2.1).

    MLA caches, per token and layer, one compressed latent vector ``c_KV`` of `kv_lora_rank` numbers, from which
    every head's key and value are recomputed by matrix products (up-projections), plus one key part of
    `rope_head_dim` numbers that carries the rotary position and is shared by all heads. Multi-head attention
    with the same heads would cache ``2 · n_head · head_dim`` numbers per token and layer.
    """

    name: str
    n_layer: int
    n_head: int
    head_dim: int  # per-head width of the keys' non-rotary part and of the values
    kv_lora_rank: int  # d_c: width of the cached latent
    rope_head_dim: int  # d_h^R: width of the shared rotary key part, also cached
    source: str

    def kv_cache_bytes(self, batch_size: int, seq_len: int, bytes_per_elem: float = 2) -> int:
        """MLA's cache: n_layer · batch_size · seq_len · (kv_lora_rank + rope_head_dim) · bytes_per_elem."""
        return mla_kv_cache_bytes(self.n_layer, batch_size, seq_len, self.kv_lora_rank, self.rope_head_dim,
                                  bytes_per_elem)

    def mha_kv_cache_bytes(self, batch_size: int, seq_len: int, bytes_per_elem: float = 2) -> int:
        """An ordinary multi-head cache of these heads: 2 · n_layer · batch · seq_len · n_head · head_dim · bytes."""
        return kv_cache_bytes(self.n_layer, batch_size, seq_len, self.n_head * self.head_dim, bytes_per_elem)


def mla_kv_cache_bytes(n_layer: int, batch_size: int, seq_len: int, kv_lora_rank: int, rope_head_dim: int,
                       bytes_per_elem: float = 2) -> int:
    """Bytes of an MLA latent cache: n_layer · batch_size · seq_len · (kv_lora_rank + rope_head_dim) · bytes.

    No factor 2 and no heads: one latent per token and layer stands for the keys and the values of all heads
    (DeepSeek-V2, Table 1: (d_c + d_h^R) · l numbers per token).
    """
    for name, value, minimum in (("n_layer", n_layer, 1), ("batch_size", batch_size, 0), ("seq_len", seq_len, 0),
                                 ("kv_lora_rank", kv_lora_rank, 1), ("rope_head_dim", rope_head_dim, 0)):
        check_int(name, value, minimum)
    check_number("bytes_per_elem", bytes_per_elem, 0, inclusive=False)
    return _whole_bytes(n_layer * batch_size * seq_len * (kv_lora_rank + rope_head_dim), bytes_per_elem)


DEEPSEEK_V2 = MLAShape("DeepSeek-V2", n_layer=60, n_head=128, head_dim=128, kv_lora_rank=512, rope_head_dim=64,
                       source="DeepSeek-AI 2024 (DeepSeek-V2), section 2.1 and Table 1; "
                              "deepseek-ai/DeepSeek-V2 config.json")


# --- chapter 10: serving many requests ---


def _token_counts(lengths: object) -> list[int]:
    return [check_int("each length", n, 0) for n in check_type("lengths", lengths, (list, tuple), "a list of lengths")]


def blocks_needed(n_tokens: int, block_size: int) -> int:
    """Blocks of `block_size` tokens that hold `n_tokens` tokens: ceil(n_tokens / block_size)."""
    check_int("n_tokens", n_tokens, 0)
    check_int("block_size", block_size, 1)
    return -(-n_tokens // block_size)


def contiguous_reserved_tokens(lengths: list[int], max_len: int) -> int:
    """Token slots reserved when each sequence gets one contiguous buffer of `max_len` tokens up front.

    A server that cannot grow a buffer in place must reserve, for every request, room for the longest answer it
    allows; a request of L tokens leaves max_len - L slots reserved but unused.
    """
    lengths = _token_counts(lengths)
    check_int("max_len", max_len, 1)
    if lengths and max(lengths) > max_len:
        raise ValueError(f"a sequence of {max(lengths)} tokens does not fit max_len={max_len}")
    return len(lengths) * max_len


def paged_reserved_tokens(lengths: list[int], block_size: int, shared_prefix: int = 0) -> int:
    """Token slots in the blocks a paged cache holds for sequences of these lengths: Σ ceil(L / bs) · bs.

    With `shared_prefix` = P > 0, every sequence begins with the same P tokens, stored once by a prefix cache that
    stays alive: its ceil(P / bs) blocks count once, and each longer sequence adds the blocks from floor(P / bs)
    on, ceil(L / bs) - floor(P / bs) of them (a partly filled last prefix block is copied when the sequence first
    writes into it: copy-on-write). A sequence of exactly P tokens adds none.
    """
    lengths = _token_counts(lengths)
    check_int("block_size", block_size, 1)
    check_int("shared_prefix", shared_prefix, 0)
    if shared_prefix and lengths and min(lengths) < shared_prefix:
        raise ValueError(f"every sequence must be at least shared_prefix={shared_prefix} tokens long, "
                         f"got one of {min(lengths)}")
    if shared_prefix == 0:
        return sum(blocks_needed(n, block_size) for n in lengths) * block_size
    full_prefix_blocks = shared_prefix // block_size
    own = sum(blocks_needed(n, block_size) - full_prefix_blocks for n in lengths if n > shared_prefix)
    return (blocks_needed(shared_prefix, block_size) + own) * block_size


def kv_cache_bytes_per_device(n_layer: int, batch_size: int, seq_len: int, hidden_size: int,
                              bytes_per_elem: float = 2, *, n_head: int, n_kv_head: int | None = None, tp: int) -> int:
    """KV-cache bytes on each of `tp` devices when tensor parallelism splits the attention heads among them.

    Megatron-style tensor parallelism (Shoeybi et al. 2019) gives each device n_kv_head / tp whole K/V heads, so
    each caches `kv_cache_bytes(...) / tp`. `tp` must divide n_kv_head (servers that go further replicate K/V
    heads, which this function does not model).
    """
    check_int("tp", tp, 1)
    heads = n_head if n_kv_head is None else n_kv_head
    total = kv_cache_bytes(n_layer, batch_size, seq_len, hidden_size, bytes_per_elem, n_head=n_head,
                           n_kv_head=n_kv_head)
    if heads % tp:
        raise ValueError(f"tp={tp} does not divide n_kv_head={heads}: each device must hold whole K/V heads")
    return total // tp
