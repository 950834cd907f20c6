"""Serving many requests: prompts of different lengths in one batch, and a cache split across devices by heads.

A server answers many requests at once, because one forward over a batch of B rows costs far less than B forwards
(chapter 5: decode is memory-bound, and a batch reads the weights once for all rows). Two things stand in the way.

**Rows have different lengths.** A tensor is rectangular, so shorter prompts are *padded* to the longest. Padding
must change nothing: `pad_left` puts it on the left and records an attention mask (1 = real token, 0 = padding,
Hugging Face's convention), and `TinyGPT.forward(idx, cache, attention_mask)` hides the padding from attention and
does not count it as a position (`kvlab.masks.padding_mask`). `generate_batch` then gives every row exactly the
tokens it gets alone. (Production servers go further and drop padding altogether: continuous batching packs the
requests' tokens into one ragged batch and uses attention kernels that take a length per sequence.)

**The cache outgrows one device.** Tensor parallelism (Shoeybi et al. 2019, Megatron-LM) splits each attention layer
by heads: device g computes the queries, keys and values of its own heads, so it caches only those heads' K/V, and
the bytes per device fall by the parallel degree. `HeadSplitCache` simulates that on one device.

**Requests come and go.** Which requests share each step is the scheduler's choice: `kvlab.scheduler` (its names are
re-exported here) runs a stream of requests with static or continuous batching, chunked prefill and preemption.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import torch

from .cache import Cache, DynamicCache
from .checks import check_int, check_type
from .compressed_cache import EvictionCache
from .generate import _check_arguments, sample_next_token
from .model import GPTConfig, TinyGPT
from .scheduler import (  # re-exported: the scheduler is part of serving, in its own module for length
    RaggedBatch,
    Request,
    RequestMetrics,
    Scheduler,
    ScheduleResult,
    make_request_stream,
    run_schedule,
)

__all__ = ["pad_left", "generate_batch", "HeadSplitCache",
           "Request", "make_request_stream", "Scheduler", "run_schedule", "ScheduleResult", "RequestMetrics",
           "RaggedBatch"]


def pad_left(prompts: list[list[int]], pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Token lists of different lengths -> ids (B, T_max) and attention_mask (B, T_max), padded on the left.

    Left, not right, so that every row's newest token sits in the last column: one decode step then appends one
    column to all rows, and every row's next-token logits are at position -1. `pad_id` can be any valid token id:
    the mask hides it.
    """
    if not check_type("prompts", prompts, (list, tuple), "a list of token-id lists"):
        raise ValueError("prompts must be a non-empty list of token-id lists, got []")
    for i, prompt in enumerate(prompts):
        if not check_type(f"prompts[{i}]", prompt, (list, tuple), "a list of token ids"):
            raise ValueError(f"prompts[{i}] must be a non-empty list of token ids, got []")
        for t in prompt:
            check_int(f"prompts[{i}] token id", t)
    pad_id = check_int("pad_id", pad_id)
    width = max(len(prompt) for prompt in prompts)
    idx = torch.tensor([[pad_id] * (width - len(p)) + list(p) for p in prompts])  # (B, T_max)
    attention_mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])  # (B, T_max)
    return idx, attention_mask


@torch.inference_mode()
def generate_batch(model: TinyGPT, prompts: list[list[int]], max_new_tokens: int, *, cache: Cache | None = None,
                   pad_id: int = 0, temperature: float = 0.0, top_k: int | None = None,
                   generator: torch.Generator | None = None, return_logits: bool = False):
    """Continue prompts of different lengths together, in one padded batch; returns each row's prompt + new tokens.

    Each step feeds the model the newest token of every row and extends the attention mask by one real column, so
    the padding stays hidden for the whole generation. Greedy (temperature 0) rows equal `kvlab.generate` on each
    prompt alone. `cache` defaults to a fresh `DynamicCache`; any empty cache that keeps every token works (a
    `StaticCache` needs batch_size = len(prompts) and room for T_max + max_new_tokens; evicting caches do not).
    With `return_logits=True` also returns the last-position logits of every step, (B, max_new_tokens, vocab_size).
    """
    idx, attention_mask = pad_left(prompts, pad_id)
    _check_arguments(model, idx, max_new_tokens, True, None, temperature, top_k)  # generate's checks
    if cache is None:
        cache = DynamicCache()
    check_type("cache", cache, Cache, "a kvlab Cache (or None for a DynamicCache)")
    if cache.get_seq_length() != 0:
        raise ValueError(f"generate_batch needs an empty cache, got one holding {cache.get_seq_length()} tokens")
    if isinstance(cache, EvictionCache):
        raise ValueError(f"generate_batch's attention mask covers every token, but a {type(cache).__name__} drops "
                         "some: use a cache that keeps them all (DynamicCache, StaticCache, QuantizedCache, ...)")
    device = model.wte.weight.device
    model_input, attention_mask = idx.to(device), attention_mask.to(device)
    new_tokens, step_logits = [], []
    for _ in range(max_new_tokens):
        logits = model(model_input, cache, attention_mask)[:, -1, :]  # (B, vocab): every row's next token
        next_token = sample_next_token(logits, temperature, top_k, generator)  # (B, 1)
        new_tokens.append(next_token)
        step_logits.append(logits)
        attention_mask = torch.cat([attention_mask, torch.ones_like(next_token)], dim=1)  # the new token is real
        model_input = next_token  # decode: only the newest token, the cache holds the rest
    rows = [list(prompt) + new for prompt, new in zip(prompts, torch.cat(new_tokens, dim=1).tolist())]
    return (rows, torch.stack(step_logits, dim=1)) if return_logits else rows


class HeadSplitCache(Cache):
    """Tensor parallelism by heads, simulated on one device: `tp` shards ("devices"), each caching n_kv_head / tp
    K/V heads, so each holds 1/tp of the bytes.

    `update` splits the new K/V along the head axis, lets shard g store its n_kv_head / tp heads, and concatenates
    the shards' answers back along the head axis, so the one-device model attends as usual (the numbers are
    untouched: outputs equal an unsplit cache's exactly). On real devices that concatenation never happens: device g
    attends with its own query heads to its own K/V heads (with grouped-query attention, query heads are grouped with
    their K/V head, so they split the same way), and only the attention outputs are combined, by the all-reduce after
    the output projection.
    """

    def __init__(self, config, tp: int, make_shard: Callable[[GPTConfig], Cache] | None = None) -> None:
        """`make_shard(shard_config)` builds one device's cache (default: a `DynamicCache`); `shard_config` is the
        model's config with 1/tp of the heads, the slice of every layer that one device computes."""
        if config.n_kv_head % check_int("tp", tp, 1):
            divisors = [d for d in range(1, config.n_kv_head + 1) if config.n_kv_head % d == 0]
            raise ValueError(f"tp={tp} does not divide n_kv_head={config.n_kv_head}: each device must hold whole "
                             f"K/V heads; allowed: {divisors}")
        self.tp, self.n_kv_head = tp, config.n_kv_head
        shard_config = replace(config, n_head=config.n_head // tp, n_kv_head=config.n_kv_head // tp,
                               d_model=config.d_model // tp)  # same head_dim, 1/tp of the heads
        make_shard = make_shard or (lambda _: DynamicCache())
        self.shards = [make_shard(shard_config) for _ in range(tp)]  # shard g plays device g

    def update(self, key: torch.Tensor, value: torch.Tensor, layer_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        if key.dim() != 4 or key.shape[1] != self.n_kv_head:
            raise ValueError(f"key shape {tuple(key.shape)} does not fit: (B, H_kv, T, D) needs H_kv={self.n_kv_head}")
        heads = self.n_kv_head // self.tp
        parts = [shard.update(k, v, layer_idx)
                 for shard, k, v in zip(self.shards, key.split(heads, dim=1), value.split(heads, dim=1))]
        return torch.cat([k for k, _ in parts], dim=1), torch.cat([v for _, v in parts], dim=1)  # simulation only

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.shards[0].get_seq_length(layer_idx)

    def get_max_cache_shape(self) -> int | None:
        return self.shards[0].get_max_cache_shape()

    def reorder_cache(self, beam_idx: torch.Tensor) -> None:
        for shard in self.shards:
            shard.reorder_cache(beam_idx)
        super().reorder_cache(beam_idx)

    def reset(self) -> None:
        for shard in self.shards:
            shard.reset()

    @property
    def shard_nbytes(self) -> list[int]:
        """Bytes held by each simulated device."""
        return [shard.nbytes for shard in self.shards]

    @property
    def nbytes(self) -> int:
        return sum(self.shard_nbytes)
