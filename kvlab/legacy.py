"""The KV cache as the GPT-2 code of 2019 kept it: tuples passed in as ``layer_past``, handed back as ``present``.

Before caches became objects, every attention layer took the previous keys and values of its own layer
(``layer_past``), appended the new ones with ``torch.cat`` and returned the result (``present = (key, value)``);
the model collected the layers' presents into ``presents``, and the caller fed them back as ``past`` on the next
step. This module runs that protocol on a `TinyGPT`'s own weights, so a chapter can set it beside the `Cache`
object and check that both compute the same logits.

GPT-2 had one key/value head per query head, so this path refuses grouped-query models (``n_kv_head < n_head``);
`TinyGPT` with a `kvlab.Cache` handles those.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .cache import DynamicCache
from .model import Block, CausalSelfAttention, TinyGPT, attention

__all__ = ["LayerPast", "legacy_attention", "legacy_block", "legacy_forward", "legacy_generate", "stack_past",
           "to_legacy_cache", "from_legacy_cache"]

LayerPast = tuple[torch.Tensor, torch.Tensor]  # (key, value), each (B, H, T_past, D)


def legacy_attention(attn: CausalSelfAttention, x: torch.Tensor,
                     layer_past: LayerPast | None = None) -> tuple[torch.Tensor, LayerPast]:
    """One attention layer, the GPT-2 way: `layer_past` in, ``present = (key, value)`` out, grown by ``torch.cat``."""
    B, T, C = x.shape
    q, k, v = attn.qkv(x).split(attn.split_sizes, dim=-1)
    q = q.view(B, T, attn.n_head, attn.head_dim).transpose(1, 2)  # (B, H, T, D)
    k = k.view(B, T, attn.n_head, attn.head_dim).transpose(1, 2)  # (B, H, T, D)
    v = v.view(B, T, attn.n_head, attn.head_dim).transpose(1, 2)  # (B, H, T, D)
    if layer_past is not None:
        past_key, past_value = layer_past
        k = torch.cat([past_key, k], dim=-2)  # (B, H, T_past + T, D): a new tensor, the whole past copied
        v = torch.cat([past_value, v], dim=-2)
    present = (k, v)  # handed back to the caller, who must feed it in again next step
    y = attention(q, k, v)  # (B, H, T, D), written out: softmax(q kᵀ / √D) v with a causal mask
    return attn.proj(y.transpose(1, 2).reshape(B, T, C)), present


def legacy_block(block: Block, x: torch.Tensor, layer_past: LayerPast | None = None) -> tuple[torch.Tensor, LayerPast]:
    """A transformer block that threads `layer_past` through to its attention and `present` back out."""
    a, present = legacy_attention(block.attn, block.ln_1(x), layer_past)
    x = x + a
    return x + block.mlp(block.ln_2(x)), present


def legacy_forward(model: TinyGPT, idx: torch.Tensor, past: Sequence[LayerPast] | torch.Tensor | None = None
                   ) -> tuple[torch.Tensor, tuple[LayerPast, ...]]:
    """Token ids (B, T) -> (logits (B, T, vocab_size), presents): one ``(key, value)`` pair per layer.

    `past` is the `presents` of the previous call (or the tensor `stack_past` makes of them); `idx` then holds only
    the new tokens. Uses the model's own modules and weights; only the cache protocol differs from
    ``model(idx, cache)``.
    """
    _check_legacy_model(model)
    past_len = _check_past(model, idx, past)
    model._check_input(idx, past_len)  # the model's own checks: dtype, shape, vocabulary, max_seq_len
    positions = torch.arange(past_len, past_len + idx.shape[1], device=idx.device)
    x = model.wte(idx) + model.wpe(positions)  # (B, T, C)
    presents = []
    for i, block in enumerate(model.blocks):
        x, present = legacy_block(block, x, None if past is None else past[i])
        presents.append(present)
    return F.linear(model.ln_f(x), model.wte.weight), tuple(presents)  # tied LM head: (B, T, vocab_size)


@torch.inference_mode()
def legacy_generate(model: TinyGPT, idx: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
    """Greedy generation the GPT-2 way: feed the prompt once, then one token and the growing `past` per step."""
    if not isinstance(max_new_tokens, int) or isinstance(max_new_tokens, bool) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be an int >= 1, got {max_new_tokens!r}")
    if isinstance(idx, torch.Tensor) and idx.dim() == 2 and idx.shape[1] + max_new_tokens > model.config.max_seq_len:
        raise ValueError(f"prompt ({idx.shape[1]}) + max_new_tokens ({max_new_tokens}) = "
                         f"{idx.shape[1] + max_new_tokens} exceeds max_seq_len={model.config.max_seq_len}")
    logits, past = legacy_forward(model, idx)  # prefill: the whole prompt
    for step in range(max_new_tokens):
        next_token = logits[:, -1, :].argmax(dim=-1, keepdim=True)  # (B, 1)
        idx = torch.cat([idx, next_token], dim=1)
        if step < max_new_tokens - 1:  # the last token is returned, never fed back
            logits, past = legacy_forward(model, next_token, past)  # decode: the new token and the whole past
    return idx


def stack_past(presents: Sequence[LayerPast]) -> torch.Tensor:
    """The presents as one tensor of shape [n_layer, 2, batch, n_head, seq_len, head_dim] (the 2 is K then V).

    The early PyTorch port of GPT-2 kept each layer's present as such a stacked [2, B, H, T, D] tensor; OpenAI's
    TensorFlow original put batch first: [batch, n_layer, 2, n_head, seq_len, head_dim]. `legacy_forward` accepts the
    stacked tensor as `past` too (indexing its first axis gives one layer's (key, value)).
    """
    if isinstance(presents, torch.Tensor) or not isinstance(presents, Sequence) or len(presents) == 0:
        raise ValueError(f"presents must be a non-empty sequence of (key, value) pairs, got {type(presents).__name__}"
                         + (" of length 0" if isinstance(presents, Sequence) and len(presents) == 0 else ""))
    shape = None
    for i, pair in enumerate(presents):
        if not isinstance(pair, Sequence) or len(pair) != 2 or not all(isinstance(t, torch.Tensor) for t in pair):
            raise ValueError(f"presents[{i}] must be a (key, value) pair of tensors, got {type(pair).__name__}")
        for t in pair:
            if t.dim() != 4 or (shape is not None and t.shape != shape):
                raise ValueError(f"presents[{i}] holds a tensor of shape {tuple(t.shape)}; every key and value must "
                                 f"have the same (batch, n_head, seq_len, head_dim) shape"
                                 + (f" {tuple(shape)}" if shape is not None else ""))
            shape = t.shape
    return torch.stack([torch.stack([key, value]) for key, value in presents])


def to_legacy_cache(cache: DynamicCache) -> tuple[LayerPast, ...]:
    """A `DynamicCache`'s contents as the tuple of (key, value) pairs `legacy_forward` takes (no copy)."""
    if not isinstance(cache, DynamicCache):
        raise TypeError(f"cache must be a kvlab.DynamicCache, got {type(cache).__name__}")
    return tuple(zip(cache.keys, cache.values))


def from_legacy_cache(past: Sequence[LayerPast]) -> DynamicCache:
    """A `DynamicCache` holding the same keys and values as legacy `past` (no copy), so `model(idx, cache)` goes on."""
    stack_past(past)  # validates the pairs and their shapes (the stacked copy is dropped)
    cache = DynamicCache()
    for layer_idx, (key, value) in enumerate(past):
        cache.update(key, value, layer_idx)
    return cache


def _check_legacy_model(model: TinyGPT) -> None:
    if not isinstance(model, TinyGPT):
        raise TypeError(f"model must be a kvlab.TinyGPT, got {type(model).__name__}")
    if model.config.n_kv_head != model.config.n_head:
        raise ValueError(f"the legacy path is GPT-2's, which has one K/V head per query head: got "
                         f"n_kv_head={model.config.n_kv_head} < n_head={model.config.n_head}; use model(idx, cache) "
                         f"with a kvlab.Cache for grouped-query attention")


def _check_past(model: TinyGPT, idx: torch.Tensor, past) -> int:
    """Length of the cached sequence in `past`, after checking that every key and value fits the model and batch."""
    if past is None:
        return 0
    c = model.config
    if not isinstance(past, (Sequence, torch.Tensor)) or len(past) != c.n_layer:
        got = f"{len(past)} entries" if isinstance(past, (Sequence, torch.Tensor)) else type(past).__name__
        raise ValueError(f"past must hold one (key, value) pair per layer ({c.n_layer}), got {got}")
    batch = idx.shape[0] if isinstance(idx, torch.Tensor) and idx.dim() == 2 else None
    past_len = None
    for i, layer_past in enumerate(past):
        if len(layer_past) != 2:
            raise ValueError(f"past[{i}] must be a (key, value) pair, got {len(layer_past)} entries")
        for t in layer_past:
            fits = (isinstance(t, torch.Tensor) and t.dim() == 4 and t.shape[1] == c.n_head
                    and t.shape[3] == c.head_dim and batch in (None, t.shape[0])
                    and past_len in (None, t.shape[2]))
            if not fits:
                got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
                want_len = "T_past" if past_len is None else past_len
                raise ValueError(f"past[{i}] holds {got}; every key and value must have shape (batch={batch}, "
                                 f"n_head={c.n_head}, seq_len={want_len}, head_dim={c.head_dim})")
            past_len = t.shape[2]
    return past_len
