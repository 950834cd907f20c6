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
from .checks import check_tensor, check_type
from .generate import _check_arguments
from .masks import attention
from .model import Block, CausalSelfAttention, TinyGPT

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
    past_len = _check_legacy_input(model, idx, past)  # the model's own checks, and that `past` fits the model
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
    check_type("model", model, TinyGPT, "a kvlab.TinyGPT")
    _check_arguments(model, idx, max_new_tokens, False, None, 0.0, None)  # generate's checks: lengths, max_seq_len
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
    check_type("presents", presents, Sequence, "a sequence of (key, value) pairs, one per layer")
    _pair_shape("presents", presents)
    return torch.stack([torch.stack([key, value]) for key, value in presents])


def to_legacy_cache(cache: DynamicCache) -> tuple[LayerPast, ...]:
    """A `DynamicCache`'s contents as the tuple of (key, value) pairs `legacy_forward` takes (no copy)."""
    check_type("cache", cache, DynamicCache, "a kvlab.DynamicCache")
    return tuple(zip(cache.keys, cache.values))


def from_legacy_cache(past: Sequence[LayerPast], token_ids: torch.Tensor | None = None) -> DynamicCache:
    """A `DynamicCache` holding the same keys and values as legacy `past` (no copy), so `model(idx, cache)` goes on.

    The tuples do not say which tokens they came from; pass those ids, (batch, seq_len), as `token_ids` so that
    `kvlab.generate` can check that a prompt continues them (it refuses a cache whose tokens it cannot check).
    """
    check_type("past", past, Sequence, "a sequence of (key, value) pairs, one per layer")
    B, _, T, _ = _pair_shape("past", past)
    if token_ids is not None:
        check_tensor("token_ids", token_ids, dim=2, dtypes=(torch.int64, torch.int32), what="a (batch, seq_len) tensor")
        if tuple(token_ids.shape) != (B, T):
            raise ValueError(f"token_ids must have the shape (batch, seq_len) = {(B, T)} of past, "
                             f"got {tuple(token_ids.shape)}")
    cache = DynamicCache()
    for layer_idx, (key, value) in enumerate(past):
        cache.update(key, value, layer_idx)
    if token_ids is not None:
        cache.record_fed(token_ids, 0)
    return cache


def _pair_shape(name: str, pairs: Sequence[LayerPast] | torch.Tensor) -> torch.Size:
    """The one (batch, n_head, seq_len, head_dim) shape that every key and value in `pairs` must share."""
    shapes = set()
    for i, pair in enumerate(pairs):
        if len(pair) != 2 or not all(isinstance(t, torch.Tensor) and t.dim() == 4 for t in pair):
            raise ValueError(f"{name}[{i}] must be a (key, value) pair of (batch, n_head, seq_len, head_dim) tensors")
        shapes |= {pair[0].shape, pair[1].shape}
    if len(shapes) != 1:
        raise ValueError(f"{name} must be a non-empty sequence of (key, value) pairs whose keys and values all have "
                         f"one shape, got shapes {sorted(tuple(shape) for shape in shapes)}")
    return shapes.pop()


def _check_legacy_input(model: TinyGPT, idx: torch.Tensor, past: Sequence[LayerPast] | torch.Tensor | None) -> int:
    """Length of the cached sequence in `past`, after the model's own checks and that `past` fits model and batch."""
    check_type("model", model, TinyGPT, "a kvlab.TinyGPT")
    c = model.config
    if c.n_kv_head != c.n_head:
        raise ValueError(f"the legacy path is GPT-2's, which has one K/V head per query head: got "
                         f"n_kv_head={c.n_kv_head} < n_head={c.n_head}; use model(idx, cache) "
                         f"with a kvlab.Cache for grouped-query attention")
    model._check_input(idx, 0, token_ids=True)  # dtype, shape, every id: the legacy path is not timed
    if past is None:
        return 0
    check_type("past", past, (Sequence, torch.Tensor), "one (key, value) pair per layer")
    B, H, T, D = _pair_shape("past", past)
    if len(past) != c.n_layer or (B, H, D) != (idx.shape[0], c.n_head, c.head_dim):
        raise ValueError(f"past must hold one (key, value) pair per layer ({c.n_layer}), each of shape (batch="
                         f"{idx.shape[0]}, n_head={c.n_head}, seq_len, head_dim={c.head_dim}); got {len(past)} "
                         f"of shape {(B, H, T, D)}")
    model._check_input(idx, T)  # max_seq_len, now that the past is known
    return T
