"""Lossy KV caches: keep fewer bits per number (quantisation) or fewer tokens (eviction), and pay in quality.

Every class here is a `kvlab.Cache`, so the model runs them unchanged through its one call,
``cache.update(k, v, layer_idx)``. What they hand back differs from what went in:

- `QuantizedCache` stores old tokens as 8-, 4- or 2-bit integers with a scale and a zero point, in the style of KIVI
  (Liu et al. 2024, "KIVI: A Tuning-Free Asymmetric 2bit Quantization for KV Cache"): keys per channel, values per
  token, and the most recent tokens in full precision. `update` returns dequantised keys and values: close to the
  originals, not equal.
- `SlidingWindowCache`, `SinkCache` (StreamingLLM, Xiao et al. 2024) and `HeavyHitterCache` (H2O, Zhang et al.
  2023) hold at most a fixed number of tokens and evict the rest, so memory stops growing.

Two rules every cache here keeps, because the model relies on them:

- ``get_seq_length()`` is the number of tokens *seen*, not held: the model uses it as the position of the next
  token, and a token's position does not change when older tokens are dropped.
- the new tokens are the *last* keys `update` returns, in order: the model's causal mask for a multi-token call
  assumes it.

Tensors have the shape ``(B, H_kv, T, D)``, as in `kvlab.cache`. This module never imports the model: the heavy-hitter
cache reads the queries it needs through forward hooks (`HeavyHitterCache.attach`).
"""

from __future__ import annotations

import abc
import math
from dataclasses import dataclass

import torch

from .cache import Cache, _check_beam_idx, _check_fits, _check_layer, _check_new_kv
from .checks import check_int, check_one_of, check_tensor, check_type
from .memory import QUANTIZED_BITS, check_packed_length

__all__ = ["QuantizedTensor", "quantize", "dequantize", "QuantizedCache", "EvictionCache", "SlidingWindowCache",
           "SinkCache", "HeavyHitterCache", "received_attention"]

BITS = QUANTIZED_BITS  # the integer widths `quantize` packs into bytes: 4, 2 or 1 code per byte


def _check_bits(bits: object) -> int:
    return check_one_of("bits", check_int("bits", bits), BITS)


# --- quantisation: x ≈ code · scale + zero ---


def _pack(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """uint8 codes below 2^bits, `8 // bits` of them per byte along the last dim: code j of a byte at bits j·bits."""
    per_byte = 8 // bits
    grouped = codes.view(*codes.shape[:-1], -1, per_byte)
    return sum(grouped[..., j] << (j * bits) for j in range(per_byte)).to(torch.uint8)


def _unpack(packed: torch.Tensor, bits: int) -> torch.Tensor:
    """The inverse of `_pack`: each byte back into its `8 // bits` codes, in order."""
    per_byte, mask = 8 // bits, 2**bits - 1
    return torch.stack([(packed >> (j * bits)) & mask for j in range(per_byte)], dim=-1).flatten(-2)


@dataclass
class QuantizedTensor:
    """Integer codes plus what turns them back into floats: ``x ≈ code · scale + zero``.

    `codes` is uint8. With 8 bits each number has its own byte; with 4 bits two codes share one byte and with 2 bits
    four do (the first of them in the lowest bits), so the last dimension of `codes` is 8 / bits times shorter than
    the tensor's. `scale` and `zero` are stored in the original float dtype and broadcast against the tensor.
    """

    codes: torch.Tensor
    scale: torch.Tensor
    zero: torch.Tensor
    bits: int

    @property
    def nbytes(self) -> int:
        """Bytes held: the codes and the scales and zero points that come with them."""
        return self.codes.nbytes + self.scale.nbytes + self.zero.nbytes

    def index_select(self, dim: int, index: torch.Tensor) -> "QuantizedTensor":
        """Rows `index` along `dim` of codes, scales and zero points alike (beam search reorders the batch)."""
        return QuantizedTensor(*(t.index_select(dim, index.to(t.device)) for t in (self.codes, self.scale, self.zero)),
                               self.bits)


def quantize(x: torch.Tensor, bits: int, dim: int) -> QuantizedTensor:
    """Asymmetric min-max quantisation; numbers along `dim` share one scale and one zero point.

    Each slice along `dim` is mapped linearly onto the integers 0 .. 2^bits - 1: its minimum to 0, its maximum to
    2^bits - 1, so ``scale = (max - min) / (2^bits - 1)`` and ``zero = min``. Rounding to the nearest code moves a
    number by at most half a step, so after `dequantize` every number is within ``scale / 2`` of where it was (plus
    float rounding). A slice whose numbers are all equal gets scale 0 and comes back exactly.

    KIVI's choice for the KV cache: keys are quantised *per channel* (``dim=-2``: the tokens of a group share a
    scale in each channel, because a few channels of the keys hold much larger numbers than the rest), values *per
    token* (``dim=-1``: the channels of one token share a scale).
    """
    if not check_tensor("x", x, what="a floating-point tensor").is_floating_point():
        raise TypeError(f"x must be a floating-point tensor, got {x.dtype}")
    bits, dim = _check_bits(bits), check_int("dim", dim, -x.dim(), x.dim() - 1)
    if x.numel() == 0:
        raise ValueError(f"cannot quantize an empty tensor (shape {tuple(x.shape)})")
    if not torch.isfinite(x).all():
        raise ValueError("cannot quantize inf or nan: the scale (max - min) would not be finite")
    check_packed_length(bits, x.shape[-1], "the last dim")
    levels = 2**bits - 1
    zero = x.amin(dim=dim, keepdim=True)
    scale = (x.amax(dim=dim, keepdim=True) - zero) / levels
    step = torch.where(scale > 0, scale, torch.ones_like(scale))  # an all-equal slice: every code is 0
    codes = ((x - zero) / step).round().clamp(0, levels).to(torch.uint8)
    return QuantizedTensor(_pack(codes, bits), scale, zero, bits)


def dequantize(q: QuantizedTensor) -> torch.Tensor:
    """Back to floats: ``code · scale + zero``, in the dtype of the scale."""
    check_type("q", q, QuantizedTensor, "a QuantizedTensor (from quantize)")
    return _unpack(q.codes, q.bits).to(q.scale.dtype) * q.scale + q.zero


# --- quantised storage ---


class QuantizedCache(Cache):
    """Keys and values stored as `bits`-bit integers (2, 4 or 8), KIVI-style, with the newest tokens in full precision.

    New tokens first go to a full-precision buffer. Whenever it holds ``residual_length + group_size`` tokens, its
    oldest `group_size` tokens are quantised as one group and leave it: the keys with one scale and zero point per
    channel (shared by the group's tokens), the values with one per token (shared by its channels). So the newest
    `residual_length` tokens are always exact, and at most ``residual_length + group_size - 1`` tokens are in full
    precision at any time. Each group is quantised once and never touched again, so errors do not compound.

    `update` returns the dequantised groups followed by the full-precision tokens. (A real kernel would read the
    integers and dequantise inside the attention matmul; here the float copy lives only during the call.)

    Bytes held, per layer, batch row and K/V head, with ``n_q`` quantised tokens, ``n_g = n_q / group_size``
    groups, ``n_r`` full-precision tokens, head_dim ``D`` and ``s`` bytes per float:
    keys ``n_q·D·bits/8 + 2·n_g·D·s``, values ``n_q·D·bits/8 + 2·n_q·s``, residual ``2·n_r·D·s``.
    `kvlab.memory.quantized_kv_cache_bytes` computes the same count without tensors.
    """

    def __init__(self, bits: int = 8, group_size: int = 16, residual_length: int = 16) -> None:
        bits, group_size = _check_bits(bits), check_int("group_size", group_size, 1)
        residual_length = check_int("residual_length", residual_length, 0)
        self.bits, self.group_size, self.residual_length = bits, group_size, residual_length
        self.groups: list[list[tuple[QuantizedTensor, QuantizedTensor]]] = []  # per layer: (keys, values) groups
        self.recent_keys: list[torch.Tensor] = []  # per layer: (B, H_kv, n_r, D) in full precision
        self.recent_values: list[torch.Tensor] = []

    def update(self, key: torch.Tensor, value: torch.Tensor, layer_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        layer_idx = _check_layer(layer_idx, len(self.recent_keys) + 1)  # layers arrive in order: 0, 1, ... at first
        if layer_idx == len(self.recent_keys):  # a layer's first tokens: checked whole, once
            _check_new_kv(key, value)
            check_packed_length(self.bits, key.shape[-1], "head_dim")
            k, v = key.clone(), value.clone()  # copies of their own: `key` is a view into the qkv output
        else:
            _check_fits(key, value, self.recent_keys[layer_idx].shape, self.recent_keys[layer_idx].dtype)
            k = torch.cat([self.recent_keys[layer_idx], key], dim=-2)
            v = torch.cat([self.recent_values[layer_idx], value], dim=-2)
        G = self.group_size
        groups = []  # the groups this update quantizes, stored below with the rest
        while k.shape[-2] >= self.residual_length + G:  # the oldest G tokens become ints
            groups.append((quantize(k[:, :, :G], self.bits, dim=-2),  # keys: per channel
                           quantize(v[:, :, :G], self.bits, dim=-1)))  # values: per token
            k, v = k[:, :, G:].clone(), v[:, :, G:].clone()
        if layer_idx == len(self.recent_keys):  # stored only now: a refused quantize (inf, nan) changes nothing
            self.groups.append(groups)
            self.recent_keys.append(k)
            self.recent_values.append(v)
        else:
            self.groups[layer_idx].extend(groups)
            self.recent_keys[layer_idx], self.recent_values[layer_idx] = k, v
        keys = [dequantize(k) for k, _ in self.groups[layer_idx]] + [self.recent_keys[layer_idx]]
        values = [dequantize(v) for _, v in self.groups[layer_idx]] + [self.recent_values[layer_idx]]
        return torch.cat(keys, dim=-2), torch.cat(values, dim=-2)  # old (dequantised) first, the new tokens last

    def n_quantized(self, layer_idx: int = 0) -> int:
        """Tokens of `layer_idx` stored as integers (the rest are in full precision)."""
        return len(self.groups[layer_idx]) * self.group_size if layer_idx < len(self.groups) else 0

    def get_seq_length(self, layer_idx: int = 0) -> int:
        if layer_idx >= len(self.recent_keys):
            return 0
        return self.n_quantized(layer_idx) + self.recent_keys[layer_idx].shape[-2]

    def reorder_cache(self, beam_idx: torch.Tensor) -> None:
        _check_beam_idx(beam_idx, self.recent_keys[0].shape[0] if self.recent_keys else None)
        self.groups = [[(k.index_select(0, beam_idx), v.index_select(0, beam_idx)) for k, v in layer]
                       for layer in self.groups]
        self.recent_keys = [t.index_select(0, beam_idx.to(t.device)) for t in self.recent_keys]
        self.recent_values = [t.index_select(0, beam_idx.to(t.device)) for t in self.recent_values]
        super().reorder_cache(beam_idx)

    def reset(self) -> None:
        self.groups, self.recent_keys, self.recent_values = [], [], []

    @property
    def nbytes(self) -> int:
        """Integer codes, their scales and zero points, and the full-precision tokens: everything held."""
        quantized = sum(k.nbytes + v.nbytes for layer in self.groups for k, v in layer)
        return quantized + sum(t.nbytes for t in self.recent_keys + self.recent_values)


# --- eviction: hold at most `budget` tokens ---


class EvictionCache(Cache):
    """Holds at most `budget` tokens per layer; a subclass decides which ones (`_keep`).

    `update` appends the new tokens to the ones held, returns all of them (so the new tokens are attended to, and are
    the last keys as the causal mask requires), then evicts down to `budget`. So between calls at most `budget`
    tokens are held, and a decode step attends to `budget + 1` tokens: the ones held and the new one.

    A prompt longer than `budget` is attended to *in full* during its prefill call (every prompt token sees all
    earlier prompt tokens, as without eviction), and only afterwards cut down to `budget`. Feed the prompt in pieces
    (or one token at a time) to evict during the prompt as well.

    `positions[layer]` (B, H_kv, T_held) records where in the text each held token stood, so what a strategy keeps
    can be checked and shown. Each K/V head may keep different tokens; for the window caches they are all the same.
    """

    def __init__(self, budget: int) -> None:
        self.budget = check_int("budget", budget, 1)
        self.keys: list[torch.Tensor] = []  # per layer: (B, H_kv, T_held, D), T_held <= budget between calls
        self.values: list[torch.Tensor] = []
        self.positions: list[torch.Tensor] = []  # per layer: (B, H_kv, T_held) int64, position in the text
        self.seen: list[int] = []  # per layer: tokens seen so far (the next token's position)

    def update(self, key: torch.Tensor, value: torch.Tensor, layer_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        layer_idx = _check_layer(layer_idx, len(self.keys) + 1)  # layers arrive in order: 0, 1, ... at first
        if layer_idx == len(self.keys):  # a layer's first tokens: checked whole, once
            _check_new_kv(key, value)
        else:
            _check_fits(key, value, self.keys[layer_idx].shape, self.keys[layer_idx].dtype)
        B, H, T_new, _ = key.shape
        start = self.seen[layer_idx] if layer_idx < len(self.seen) else 0
        new_positions = torch.arange(start, start + T_new, device=key.device).expand(B, H, T_new)
        if layer_idx == len(self.keys):
            self.keys.append(key.clone())  # a copy of its own: `key` is a view into the model's qkv output
            self.values.append(value.clone())
            self.positions.append(new_positions.clone())
            self.seen.append(T_new)
        else:
            self.keys[layer_idx] = torch.cat([self.keys[layer_idx], key], dim=-2)
            self.values[layer_idx] = torch.cat([self.values[layer_idx], value], dim=-2)
            self.positions[layer_idx] = torch.cat([self.positions[layer_idx], new_positions], dim=-1)
            self.seen[layer_idx] += T_new
        keys, values = self.keys[layer_idx], self.values[layer_idx]  # held + new: what attention sees now
        self._observe(layer_idx, keys, T_new)
        if keys.shape[-2] > self.budget:
            self._evict(layer_idx, self._keep(layer_idx))
        return keys, values

    def _observe(self, layer_idx: int, keys: torch.Tensor, n_new: int) -> None:
        """Called with every key attention sees in this call, before eviction (the heavy-hitter cache scores here)."""

    @abc.abstractmethod
    def _keep(self, layer_idx: int) -> torch.Tensor:
        """Indices (B, H_kv, budget) into the token axis of the tokens to keep, ascending. Subclasses decide."""

    def _evict(self, layer_idx: int, keep: torch.Tensor) -> None:
        """Keep only the tokens at `keep`; `gather` copies them, so nothing of the evicted tokens stays allocated."""
        index = keep.unsqueeze(-1).expand(-1, -1, -1, self.keys[layer_idx].shape[-1])  # (B, H_kv, budget, D)
        self.keys[layer_idx] = self.keys[layer_idx].gather(2, index)
        self.values[layer_idx] = self.values[layer_idx].gather(2, index)
        self.positions[layer_idx] = self.positions[layer_idx].gather(2, keep)

    def kept_positions(self, layer_idx: int = 0, batch: int = 0, head: int = 0) -> list[int]:
        """Where in the text the tokens held for one layer, batch row and K/V head stood."""
        return self.positions[layer_idx][batch, head].tolist()

    def get_seq_length(self, layer_idx: int = 0) -> int:
        """Tokens seen, not held: the next token's position, which eviction does not change."""
        return self.seen[layer_idx] if layer_idx < len(self.seen) else 0

    def get_max_cache_shape(self) -> int:
        return self.budget

    def reorder_cache(self, beam_idx: torch.Tensor) -> None:
        _check_beam_idx(beam_idx, self.keys[0].shape[0] if self.keys else None)
        for tensors in (self.keys, self.values, self.positions):
            tensors[:] = [t.index_select(0, beam_idx.to(t.device)) for t in tensors]
        super().reorder_cache(beam_idx)

    def reset(self) -> None:
        self.keys, self.values, self.positions, self.seen = [], [], [], []

    @property
    def nbytes(self) -> int:
        """Bytes of the K/V tensors held (`positions` is bookkeeping for teaching and is not counted)."""
        return sum(t.nbytes for t in self.keys + self.values)


def _arange_like(keys: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """The same token indices for every batch row and head: (n,) -> (B, H_kv, n)."""
    return indices.to(keys.device).expand(keys.shape[0], keys.shape[1], -1)


class SlidingWindowCache(EvictionCache):
    """Holds the last `window` tokens: memory stops growing, and the beginning of the text is forgotten.

    `window` counts the tokens held *between* steps, so a decode step attends to ``window + 1`` keys: the held ones
    and its own. Mistral and transformers count the new token in the window (transformers'
    ``DynamicSlidingWindowLayer(sliding_window=W)`` keeps W - 1 between steps), so ``SlidingWindowCache(W)`` is
    their window W + 1 (tests/test_compressed_cache.py checks it against transformers' layer).
    """

    def __init__(self, window: int) -> None:
        super().__init__(check_int("window", window, 1))
        self.window = window

    def _keep(self, layer_idx: int) -> torch.Tensor:
        T = self.keys[layer_idx].shape[-2]
        return _arange_like(self.keys[layer_idx], torch.arange(T - self.window, T))


class SinkCache(EvictionCache):
    """StreamingLLM: holds the first `n_sink` tokens ("attention sinks") and the last ``window - n_sink`` tokens.

    Xiao et al. (2024) found that models put a large share of their attention on the first tokens of a text whatever
    those say, because softmax must put its weight somewhere; evicting them (a plain sliding window) breaks the model
    as soon as the text is longer than the window, while keeping a few of them keeps it working. `window` counts the
    sinks too, so a `SinkCache` and a `SlidingWindowCache` with the same `window` hold the same number of tokens.
    StreamingLLM also renumbers positions inside the cache, which needs rotary positions: kvlab's `Llama` (chapter 11)
    reads `stores_unrotated_keys`, hands this cache keys before rotation and turns each one to its slot at every step.
    TinyGPT has learned absolute positions and ignores the flag: there every token keeps its position in the text.
    """

    stores_unrotated_keys = True  # under rotary positions: positions are slots in the cache (StreamingLLM)

    def __init__(self, window: int, n_sink: int = 4) -> None:
        super().__init__(check_int("window", window, 1))
        n_sink = check_int("n_sink", n_sink, 0)
        if n_sink >= window:
            raise ValueError(f"n_sink must be smaller than window (room must be left for recent tokens), "
                             f"got n_sink={n_sink}, window={window}")
        self.window, self.n_sink = window, n_sink

    def _keep(self, layer_idx: int) -> torch.Tensor:
        T = self.keys[layer_idx].shape[-2]
        sinks = torch.arange(self.n_sink)  # the sinks are the first tokens held: positions 0 .. n_sink - 1
        recent = torch.arange(T - (self.window - self.n_sink), T)
        return _arange_like(self.keys[layer_idx], torch.cat([sinks, recent]))


class HeavyHitterCache(EvictionCache):
    """H2O: holds the `n_recent` newest tokens plus the ``budget - n_recent`` older ones that received most attention.

    Zhang et al. (2023) observed that a small set of tokens, the "heavy hitters", receives most of the attention, and
    that keeping them (and a window of recent tokens) preserves quality far better than a window alone. A token's
    score is the sum of the attention weights it has received from every query since it arrived, summed over the
    query heads that share its K/V head; each K/V head keeps its own heavy hitters.

    The score needs the queries, which the model's fused attention does not hand out. So the cache reads them itself:
    ``with cache.attach(model): ...`` registers a forward hook on each layer's ``attn.qkv`` projection that passes the
    new tokens' queries to the cache, and `update` computes ``softmax(q kᵀ / √D)`` over the keys it returns (the same
    weights the model's attention computes) and adds them to the scores. The model itself does not change. The scores
    take one float per held token and K/V head, 1/(2·D) of the K/V bytes; `nbytes` counts K/V only.
    """

    def __init__(self, budget: int, n_recent: int | None = None) -> None:
        super().__init__(budget)
        n_recent = budget // 2 if n_recent is None else n_recent  # H2O's default: half heavy hitters, half recent
        if check_int("n_recent", n_recent, 0) > budget:
            raise ValueError(f"n_recent must be at most budget, got n_recent={n_recent}, budget={budget}")
        self.n_recent = n_recent
        self.scores: list[torch.Tensor] = []  # per layer: (B, H_kv, T_held) attention received so far
        self._queries: dict[int, torch.Tensor] = {}  # layer -> (B, H, T_new, D), written by the hooks
        self._hooks: list = []

    # -- reading the queries --

    def attach(self, model) -> "HeavyHitterCache":
        """Hook every attention layer of `model` so that this cache sees its queries: ``with cache.attach(model):``."""
        blocks = getattr(model, "blocks", None)
        if blocks is None or not all(hasattr(b, "attn") and hasattr(b.attn, "qkv") for b in blocks):
            raise TypeError(f"model must be a kvlab.TinyGPT (blocks[i].attn.qkv), got {type(model).__name__}")
        if self._hooks:
            raise RuntimeError("this HeavyHitterCache is already attached to a model; detach it first")
        for block in blocks:
            self._hooks.append(block.attn.qkv.register_forward_hook(self._capture_queries(block.attn)))
        return self

    @property
    def attached(self) -> bool:
        """Whether hooks on a model pass this cache the queries it needs."""
        return bool(self._hooks)

    def _capture_queries(self, attn):
        def hook(module, inputs, qkv):  # qkv: (B, T, d_model + 2·kv_dim), the projection's output
            B, T, _ = qkv.shape
            q = qkv[..., :attn.split_sizes[0]].view(B, T, attn.n_head, attn.head_dim)
            self._queries[attn.layer_idx] = q.transpose(1, 2)  # (B, H, T, D): the model's own, so no checks
        return hook

    def record_queries(self, q: torch.Tensor, layer_idx: int) -> None:
        """Hand the cache the queries (B, H, T_new, D) of the tokens the next ``update(..., layer_idx)`` brings.

        The hooks of `attach` hand the model's queries over directly; call this to drive the cache without a model
        (it checks what you pass, once, as any public function does).
        """
        if not check_tensor("q", q, dim=4, what="a (B, H, T_new, D) tensor").is_floating_point():
            raise TypeError(f"q must be a floating-point tensor, got {q.dtype}")
        self._queries[check_int("layer_idx", layer_idx, 0)] = q

    def detach(self) -> None:
        """Remove the hooks; the cache keeps its tokens and scores."""
        for hook in self._hooks:
            hook.remove()
        self._hooks, self._queries = [], {}

    def __enter__(self) -> "HeavyHitterCache":
        if not self._hooks:
            raise RuntimeError("use `with cache.attach(model):`, so the cache knows which model's queries to read")
        return self

    def __exit__(self, *exc) -> None:
        self.detach()

    # -- scoring and choosing --

    def update(self, key: torch.Tensor, value: torch.Tensor, layer_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Check the queries first, so that a failed call stores nothing (a retry must not see its tokens twice)."""
        q = self._queries.get(layer_idx)
        if q is None or q.shape[0] != key.shape[0] or q.shape[2:] != key.shape[2:]:
            _check_layer(layer_idx, len(self.keys) + 1)  # a bad index gets the error every cache gives it
            if q is None:
                raise RuntimeError("HeavyHitterCache needs the queries to score tokens: run the model inside "
                                   "`with cache.attach(model):`")
            raise RuntimeError(f"queries {tuple(q.shape)} do not belong to this update (keys {tuple(key.shape)}): "
                               "is the model attached to this cache running with another one?")
        return super().update(key, value, layer_idx)

    def _observe(self, layer_idx: int, keys: torch.Tensor, n_new: int) -> None:
        q = self._queries.pop(layer_idx)  # (B, H, n_new, D), checked in `update`
        received = received_attention(q, keys)  # (B, H_kv, T_all)
        if layer_idx == len(self.scores):
            self.scores.append(received)
        else:
            held = self.scores[layer_idx]
            self.scores[layer_idx] = torch.cat([held, held.new_zeros(*held.shape[:2], n_new)], dim=-1) + received

    def _keep(self, layer_idx: int) -> torch.Tensor:
        scores = self.scores[layer_idx]  # (B, H_kv, T)
        T = scores.shape[-1]
        n_old = T - self.n_recent
        heavy = scores[..., :n_old].topk(self.budget - self.n_recent, dim=-1).indices  # the most attended old tokens
        recent = _arange_like(scores, torch.arange(n_old, T))
        return torch.cat([heavy, recent], dim=-1).sort(dim=-1).values  # ascending: text order, new tokens last

    def _evict(self, layer_idx: int, keep: torch.Tensor) -> None:
        super()._evict(layer_idx, keep)
        self.scores[layer_idx] = self.scores[layer_idx].gather(2, keep)

    def reorder_cache(self, beam_idx: torch.Tensor) -> None:
        super().reorder_cache(beam_idx)
        self.scores = [t.index_select(0, beam_idx.to(t.device)) for t in self.scores]

    def reset(self) -> None:
        super().reset()
        self.scores, self._queries = [], {}


def received_attention(q: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """Attention weight each key receives from the new queries, summed over queries and over each K/V head's group.

    `q` (B, H, T_new, D) are the queries of the last T_new tokens, `keys` (B, H_kv, T_all, D) every key they may look
    at, the new ones last (the causal mask of `kvlab.masks.causal_mask`). Returns (B, H_kv, T_all).
    """
    B, H, T_new, D = q.shape
    H_kv, T_all = keys.shape[1], keys.shape[2]
    k = keys.float().repeat_interleave(H // H_kv, dim=1)  # one key head per query head, as the model pairs them
    scores = q.float() @ k.transpose(-2, -1) / math.sqrt(D)  # (B, H, T_new, T_all), in fp32 even for a bf16 model
    allowed = torch.ones(T_new, T_all, dtype=torch.bool, device=q.device).tril(diagonal=T_all - T_new)
    weights = scores.masked_fill(~allowed, float("-inf")).softmax(dim=-1)
    return weights.sum(dim=2).view(B, H_kv, H // H_kv, T_all).sum(dim=2)
