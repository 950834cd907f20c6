"""KV-cache strategies: one `Cache` base class, one subclass per strategy.

The model talks to a cache through a single call, ``cache.update(k, v, layer_idx)``, which stores the keys and
values of the new tokens and hands back *all* the keys and values that attention should look at. Everything else
(how memory is laid out, what is kept, what is thrown away) is the strategy's business. The method names mirror
Hugging Face's ``transformers.cache_utils`` so that what learners build here is what they meet there.

Tensors have the shape ``(B, H_kv, T, D)``: batch, key/value heads, sequence positions, head dimension.

`update` runs once per layer per decode step, so it checks only what protects the cache's memory: the layer index,
and that the new keys and values fit what is stored (batch, heads, head size, dtype). Everything else about them is
checked once, when a layer receives its first tokens. Every cache in kvlab uses the helpers below, so the same
mistake raises the same error whatever the cache.
"""

from __future__ import annotations

import abc

import torch

from .checks import check_int, check_tensor, check_type

__all__ = ["Cache", "DynamicCache", "StaticCache"]

_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)  # the dtypes K/V can be stored in


class Cache(abc.ABC):
    """What every KV cache can do. Subclasses implement the storage; the model only calls `update`.

    An abstract base class: a subclass that leaves out one of the abstract methods cannot be built, so the mistake
    shows when the cache is created, not in the middle of a generation.
    """

    _fed: list[torch.Tensor] | None = None  # the ids (B, T_i) of each model call that filled the cache, in order
    _fed_len = 0  # their total T; -1 once tokens came in that the model did not record

    def record_fed(self, idx: torch.Tensor, past: int) -> None:
        """Note the ids (B, T) the model just stored after `past` cached tokens, so `generate` can check that a
        prompt continues them. Called by the model once per forward: an append, O(1) per decode step."""
        if past == 0:  # an empty cache (new, or reset): a new record
            self._fed, self._fed_len = [], 0
        if self._fed_len != past:  # tokens came in without the model (`update` called by hand): no longer known
            self._fed_len = -1
            return
        self._fed.append(idx.clone())  # a copy: the caller may write into `idx` later
        self._fed_len = past + idx.shape[1]

    @property
    def token_ids(self) -> torch.Tensor | None:
        """The ids (B, T) of every token this cache has seen, or None when they are not all known."""
        if not self._fed or self._fed_len != self.get_seq_length():
            return None
        self._fed = [torch.cat(self._fed, dim=1)]  # joined once per read, not per step
        return self._fed[0]

    @abc.abstractmethod
    def update(self, key: torch.Tensor, value: torch.Tensor, layer_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Store the new tokens' K/V (B, H_kv, T_new, D) for `layer_idx`; return all keys/values to attend to."""

    @abc.abstractmethod
    def get_seq_length(self, layer_idx: int = 0) -> int:
        """How many tokens this layer has seen; the next token goes at this position."""

    def get_max_cache_shape(self) -> int | None:
        """The most tokens the cache can hold, or None when it grows without bound."""
        return None

    @abc.abstractmethod
    def reorder_cache(self, beam_idx: torch.Tensor) -> None:
        """Reorder the batch rows (beam search keeps the best beams and drops the rest).

        Subclasses reorder their K/V, then call ``super().reorder_cache(beam_idx)``: it moves the rows of the
        record of fed ids (`token_ids`) along with them.
        """
        if self._fed:
            self._fed = [torch.cat(self._fed, dim=1).index_select(0, beam_idx.to(self._fed[0].device))]

    @abc.abstractmethod
    def reset(self) -> None:
        """Forget every token, so the cache can serve a new prompt."""

    @property
    @abc.abstractmethod
    def nbytes(self) -> int:
        """Bytes of K/V tensors this cache holds in memory right now."""


# --- the checks every cache makes (see the module docstring: cheap per step, thorough once) ---


def _check_layer(layer_idx: int, n_layer: int) -> int:
    """`layer_idx` in 0..n_layer-1. Per step: a type test and a comparison; the checks module explains a failure."""
    if type(layer_idx) is int and 0 <= layer_idx < n_layer:
        return layer_idx
    return check_int("layer_idx", layer_idx, 0, n_layer - 1)


def _check_new_kv(key: torch.Tensor, value: torch.Tensor) -> None:
    """Once, on a layer's first tokens: `key` and `value` are floating-point (B, H_kv, T_new >= 1, D) tensors alike."""
    for name, t in (("key", key), ("value", value)):
        check_tensor(name, t, dim=4, dtypes=_FLOATS, what="a (B, H_kv, T, D) tensor")
    if key.shape != value.shape or key.dtype != value.dtype or key.shape[2] == 0:
        raise ValueError(f"key and value must be (B, H_kv, T_new >= 1, D) tensors of one shape and dtype, got "
                         f"{tuple(key.shape)} {key.dtype} and {tuple(value.shape)} {value.dtype}")


def _check_fits(key: torch.Tensor, value: torch.Tensor, held: tuple[int, ...], dtype: torch.dtype) -> None:
    """Per step: new K/V must match the (B, H_kv, ·, D) shape `held` and the dtype of what the cache stores.

    A misfit could otherwise be broadcast into the stored rows or land in the wrong slots, so this one check stays in
    the decode loop; its fast path is a few comparisons of shapes.
    """
    if (key.shape[:2] == held[:2] and key.shape[3:] == held[3:] and value.shape == key.shape
            and key.dtype == dtype and value.dtype == dtype):
        return
    _check_new_kv(key, value)  # names a non-tensor, a wrong number of dims, or key and value that differ
    if key.dtype != dtype:
        raise TypeError(f"key dtype {key.dtype} does not match the cache's dtype {dtype}")
    shown = f"({held[0]}, {held[1]}, T, {held[3]})"
    raise ValueError(f"key shape {tuple(key.shape)} does not fit the cache's (B, H_kv, T, D) = {shown}")


def _check_beam_idx(beam_idx: object, batch_size: int | None, fixed: bool = False) -> None:
    """`reorder_cache`'s argument: row i of the new cache is row beam_idx[i] of the old one (`fixed`: same count).

    Checked on every call, values included: an index out of range would copy another row's K/V (a negative one
    counts from the end) or, on a GPU, stop the device.
    """
    check_tensor("beam_idx", beam_idx, dim=1, dtypes=(torch.int64, torch.int32), what="a 1-D tensor of row indices")
    if batch_size is None:  # nothing stored yet
        return
    if fixed and beam_idx.numel() != batch_size:
        raise ValueError(f"beam_idx must name one row for each of the cache's {batch_size} rows, "
                         f"got {beam_idx.numel()} indices")
    if beam_idx.numel() and not (0 <= int(beam_idx.min()) and int(beam_idx.max()) < batch_size):
        raise ValueError(f"beam_idx must hold rows 0..{batch_size - 1}, got {beam_idx.tolist()}")


# --- the strategies ---


class DynamicCache(Cache):
    """Grows by concatenation: each step copies the whole past into a new, one-token-longer tensor.

    This is what the original GPT-2 code did with its ``layer_past`` tuples. It is simple and needs no size up
    front, but step t copies t tokens, so a generation of T tokens copies O(T^2) bytes in total.
    """

    def __init__(self) -> None:
        self.keys: list[torch.Tensor] = []  # one (B, H_kv, T, D) tensor per layer
        self.values: list[torch.Tensor] = []

    def update(self, key: torch.Tensor, value: torch.Tensor, layer_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        layer_idx = _check_layer(layer_idx, len(self.keys) + 1)  # layers arrive in order: 0, 1, ... at first
        if layer_idx == len(self.keys):  # first tokens for this layer
            _check_new_kv(key, value)
            self.keys.append(key)
            self.values.append(value)
        else:
            _check_fits(key, value, self.keys[layer_idx].shape, self.keys[layer_idx].dtype)
            self.keys[layer_idx] = torch.cat([self.keys[layer_idx], key], dim=-2)  # <- the copy
            self.values[layer_idx] = torch.cat([self.values[layer_idx], value], dim=-2)
        return self.keys[layer_idx], self.values[layer_idx]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.keys[layer_idx].shape[-2] if layer_idx < len(self.keys) else 0

    def reorder_cache(self, beam_idx: torch.Tensor) -> None:
        _check_beam_idx(beam_idx, self.keys[0].shape[0] if self.keys else None)
        self.keys = [k.index_select(0, beam_idx.to(k.device)) for k in self.keys]
        self.values = [v.index_select(0, beam_idx.to(v.device)) for v in self.values]
        super().reorder_cache(beam_idx)

    def reset(self) -> None:
        self.keys, self.values = [], []

    @property
    def nbytes(self) -> int:
        """Bytes of the stored K/V tensors. Right after a prefill they are views into the model's fused qkv output
        (stored as they are, no copy), which stays allocated, queries included, until the first concatenation."""
        return sum(t.nbytes for t in self.keys + self.values)


class StaticCache(Cache):
    """Pre-allocated: one buffer per layer sized for `max_cache_len` tokens, written in place.

    Nothing is copied except the new tokens, so a generation of T tokens copies O(T) bytes, and memory is known
    before the first token (what servers and compilers want). The price: the size is fixed, and a prompt plus
    generation longer than `max_cache_len` is an error, never a silent truncation.
    """

    def __init__(self, config, batch_size: int, max_cache_len: int, dtype: torch.dtype = torch.float32,
                 device: torch.device | str | None = None) -> None:
        batch_size = check_int("batch_size", batch_size, 1)
        max_cache_len = check_int("max_cache_len", max_cache_len, 1)
        check_type("dtype", dtype, torch.dtype, "a torch.dtype such as torch.float16")  # not the string "float16"
        shape = (batch_size, config.n_kv_head, max_cache_len, config.head_dim)  # (B, H_kv, T_max, D)
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(config.n_layer)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(config.n_layer)]
        self.lengths = [0] * config.n_layer  # tokens written so far, per layer
        self.max_cache_len = max_cache_len

    def update(self, key: torch.Tensor, value: torch.Tensor, layer_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        layer_idx = _check_layer(layer_idx, len(self.keys))
        buffer = self.keys[layer_idx]
        if self.lengths[layer_idx] == 0:  # a layer's first tokens: checked whole, once
            _check_new_kv(key, value)
        _check_fits(key, value, buffer.shape, buffer.dtype)
        start, end = self.lengths[layer_idx], self.lengths[layer_idx] + key.shape[-2]
        if end > self.max_cache_len:  # the capacity: checked on every step, it is what keeps writes in the buffer
            raise ValueError(f"StaticCache overflow: {end} tokens do not fit max_cache_len={self.max_cache_len}; "
                             f"allocate a larger cache")
        buffer[:, :, start:end] = key  # written in place: no copy of the past
        self.values[layer_idx][:, :, start:end] = value
        self.lengths[layer_idx] = end
        return buffer[:, :, :end], self.values[layer_idx][:, :, :end]  # views, not copies

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.lengths[layer_idx]

    def get_max_cache_shape(self) -> int:
        return self.max_cache_len

    def reorder_cache(self, beam_idx: torch.Tensor) -> None:
        _check_beam_idx(beam_idx, self.keys[0].shape[0], fixed=True)  # the buffers' batch size cannot change
        for buffers in (self.keys, self.values):
            for buffer in buffers:
                buffer.copy_(buffer.index_select(0, beam_idx.to(buffer.device)))
        super().reorder_cache(beam_idx)

    def reset(self) -> None:
        self.lengths = [0] * len(self.lengths)

    @property
    def nbytes(self) -> int:
        """The whole pre-allocated buffer: it is held whether or not it is filled yet."""
        return sum(t.nbytes for t in self.keys + self.values)
