"""KV-cache strategies: one `Cache` base class, one subclass per strategy.

The model talks to a cache through a single call, ``cache.update(k, v, layer_idx)``, which stores the keys and
values of the new tokens and hands back *all* the keys and values that attention should look at. Everything else
(how memory is laid out, what is kept, what is thrown away) is the strategy's business. The method names mirror
Hugging Face's ``transformers.cache_utils`` so that what learners build here is what they meet there.

Tensors have the shape ``(B, H_kv, T, D)``: batch, key/value heads, sequence positions, head dimension.
"""

from __future__ import annotations

import torch

__all__ = ["Cache", "DynamicCache", "StaticCache"]


class Cache:
    """What every KV cache can do. Subclasses implement the storage; the model only calls `update`."""

    token_ids: torch.Tensor | None = None  # the ids `generate` fed it, so a later call can check it continues them

    def update(self, key: torch.Tensor, value: torch.Tensor, layer_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Store the new tokens' `key`/`value` (B, H_kv, T_new, D) for `layer_idx`; return all keys/values to attend to."""
        raise NotImplementedError

    def get_seq_length(self, layer_idx: int = 0) -> int:
        """How many tokens this layer has seen; the next token goes at this position."""
        raise NotImplementedError

    def get_max_cache_shape(self) -> int | None:
        """The most tokens the cache can hold, or None when it grows without bound."""
        return None

    def reorder_cache(self, beam_idx: torch.Tensor) -> None:
        """Reorder the batch rows (beam search keeps the best beams and drops the rest)."""
        raise NotImplementedError

    def reset(self) -> None:
        """Forget every token, so the cache can serve a new prompt."""
        raise NotImplementedError

    @property
    def nbytes(self) -> int:
        """Bytes of K/V tensors this cache holds in memory right now."""
        raise NotImplementedError

    @staticmethod
    def _check_layer(layer_idx: int, n_layer: int | None = None) -> None:
        if not isinstance(layer_idx, int) or layer_idx < 0 or (n_layer is not None and layer_idx >= n_layer):
            allowed = f"0..{n_layer - 1}" if n_layer is not None else "an int >= 0"
            raise ValueError(f"layer_idx must be {allowed}, got {layer_idx!r}")


def _check_fits(key: torch.Tensor, stored: torch.Tensor) -> None:
    """New keys must match the stored ones in batch, heads and head size; only the token axis may differ."""
    if key.shape[0] != stored.shape[0] or key.shape[1] != stored.shape[1] or key.shape[3] != stored.shape[3]:
        raise ValueError(f"key shape {tuple(key.shape)} does not fit the cache's (B, H_kv, T, D) = "
                         f"{tuple(stored.shape)}")


def _check_beam_idx(beam_idx: object, batch_size: int | None, fixed: bool = False) -> None:
    """`reorder_cache`'s argument: row i of the new cache is row beam_idx[i] of the old one (`fixed`: same count)."""
    if not isinstance(beam_idx, torch.Tensor) or beam_idx.dim() != 1 or beam_idx.dtype not in (torch.int64,
                                                                                               torch.int32):
        is_tensor = isinstance(beam_idx, torch.Tensor)
        shown = f"{beam_idx.dim()}-D {beam_idx.dtype}" if is_tensor else type(beam_idx).__name__
        raise TypeError(f"beam_idx must be a 1-D tensor of row indices (torch.long), got {shown}")
    if batch_size is None:  # nothing stored yet
        return
    if fixed and beam_idx.numel() != batch_size:
        raise ValueError(f"beam_idx must name one row for each of the cache's {batch_size} rows, "
                         f"got {beam_idx.numel()} indices")
    if beam_idx.numel() and not (0 <= int(beam_idx.min()) and int(beam_idx.max()) < batch_size):
        raise ValueError(f"beam_idx must hold rows 0..{batch_size - 1}, got {beam_idx.tolist()}")


class DynamicCache(Cache):
    """Grows by concatenation: each step copies the whole past into a new, one-token-longer tensor.

    This is what the original GPT-2 code did with its ``layer_past`` tuples. It is simple and needs no size up
    front, but step t copies t tokens, so a generation of T tokens copies O(T^2) bytes in total.
    """

    def __init__(self) -> None:
        self.keys: list[torch.Tensor] = []  # one (B, H_kv, T, D) tensor per layer
        self.values: list[torch.Tensor] = []

    def update(self, key: torch.Tensor, value: torch.Tensor, layer_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        self._check_layer(layer_idx, len(self.keys) + 1)
        if layer_idx == len(self.keys):  # first tokens for this layer
            self.keys.append(key)
            self.values.append(value)
        else:
            _check_fits(key, self.keys[layer_idx])  # same batch, heads and head size as what is stored
            self.keys[layer_idx] = torch.cat([self.keys[layer_idx], key], dim=-2)  # <- the copy
            self.values[layer_idx] = torch.cat([self.values[layer_idx], value], dim=-2)
        return self.keys[layer_idx], self.values[layer_idx]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.keys[layer_idx].shape[-2] if layer_idx < len(self.keys) else 0

    def reorder_cache(self, beam_idx: torch.Tensor) -> None:
        _check_beam_idx(beam_idx, self.keys[0].shape[0] if self.keys else None)
        self.keys = [k.index_select(0, beam_idx.to(k.device)) for k in self.keys]
        self.values = [v.index_select(0, beam_idx.to(v.device)) for v in self.values]

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
        for name, value in (("batch_size", batch_size), ("max_cache_len", max_cache_len)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        shape = (batch_size, config.n_kv_head, max_cache_len, config.head_dim)  # (B, H_kv, T_max, D)
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(config.n_layer)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(config.n_layer)]
        self.lengths = [0] * config.n_layer  # tokens written so far, per layer
        self.max_cache_len = max_cache_len

    def update(self, key: torch.Tensor, value: torch.Tensor, layer_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        self._check_layer(layer_idx, len(self.keys))
        buffer = self.keys[layer_idx]
        if key.dtype != buffer.dtype:
            raise TypeError(f"key dtype {key.dtype} does not match the cache's dtype {buffer.dtype}")
        _check_fits(key, buffer)
        start, end = self.lengths[layer_idx], self.lengths[layer_idx] + key.shape[-2]
        if end > self.max_cache_len:
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

    def reset(self) -> None:
        self.lengths = [0] * len(self.lengths)

    @property
    def nbytes(self) -> int:
        """The whole pre-allocated buffer: it is held whether or not it is filled yet."""
        return sum(t.nbytes for t in self.keys + self.values)
