"""The autoregressive loop: tokens -> logits -> next token -> append -> repeat.

Two phases. **Prefill** runs the whole prompt through the model at once and yields the first new token (its time is
the *time to first token*). **Decode** then produces one token per step (its time is the *time per output token*).
With a cache, a decode step feeds the model only the newest token; without one, it re-feeds the whole sequence.
Both phases are timed here, once, so every chapter and benchmark measures speed the same way.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from .cache import Cache, DynamicCache
from .model import TinyGPT

__all__ = ["GenerationStats", "generate", "generate_with_stats", "sample_next_token"]


@dataclass
class GenerationStats:
    """Timings of one `generate` call, in seconds. Prefill yields the first token; each decode step one more."""

    prompt_len: int
    new_tokens: int
    prefill_s: float  # time to first token (TTFT)
    decode_s: list[float] = field(default_factory=list)  # one entry per token after the first

    @property
    def total_s(self) -> float:
        return self.prefill_s + sum(self.decode_s)

    @property
    def time_per_output_token_s(self) -> float:
        """Mean decode-step time (TPOT); NaN when only one token was generated."""
        return sum(self.decode_s) / len(self.decode_s) if self.decode_s else float("nan")

    @property
    def tokens_per_s(self) -> float:
        """New tokens (per batch row) divided by the wall-clock time of the whole call."""
        return self.new_tokens / self.total_s if self.total_s > 0 else float("inf")


def sample_next_token(logits: torch.Tensor, temperature: float = 0.0, top_k: int | None = None,
                      generator: torch.Generator | None = None) -> torch.Tensor:
    """Pick one token per row from last-position logits (B, vocab): argmax when temperature is 0, else sample."""
    if temperature == 0.0:
        return logits.argmax(dim=-1, keepdim=True)  # (B, 1)
    logits = logits / temperature
    if top_k is not None:
        kth_best = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth_best, float("-inf"))
    return torch.multinomial(logits.softmax(dim=-1), num_samples=1, generator=generator)  # (B, 1)


def _check_arguments(model: TinyGPT, idx: torch.Tensor, max_new_tokens: int, use_cache: bool, cache: Cache | None,
                     temperature: float, top_k: int | None) -> None:
    """Fail early, naming the bad value, instead of halfway through a generation."""
    if not isinstance(idx, torch.Tensor) or idx.dim() != 2:
        shape = tuple(idx.shape) if isinstance(idx, torch.Tensor) else type(idx).__name__
        raise ValueError(f"idx must be a (batch, seq_len) tensor of token ids, got {shape}; use idx[None] for one row")
    if not isinstance(max_new_tokens, int) or isinstance(max_new_tokens, bool) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be an int >= 1, got {max_new_tokens!r}")
    if not isinstance(temperature, (int, float)) or temperature < 0:
        raise ValueError(f"temperature must be a number >= 0 (0 means greedy), got {temperature!r}")
    if top_k is not None and (not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k must be None or an int >= 1, got {top_k!r}")
    if cache is not None and not use_cache:
        raise ValueError("a cache was passed with use_cache=False; pass use_cache=True or drop the cache")
    total = idx.shape[1] + max_new_tokens
    if total > model.config.max_seq_len:
        raise ValueError(f"prompt ({idx.shape[1]}) + max_new_tokens ({max_new_tokens}) = {total} exceeds "
                         f"max_seq_len={model.config.max_seq_len}")
    if cache is not None and cache.get_seq_length() >= idx.shape[1]:
        raise ValueError(f"the cache already holds {cache.get_seq_length()} tokens but idx has only {idx.shape[1]}; "
                         "pass the full sequence, of which the cache holds a prefix")


def _clock(device: torch.device) -> float:
    """Wall-clock time after the device has finished its queued work (GPUs run asynchronously)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


@torch.inference_mode()
def generate_with_stats(model: TinyGPT, idx: torch.Tensor, max_new_tokens: int, *, use_cache: bool = True,
                        cache: Cache | None = None, temperature: float = 0.0, top_k: int | None = None,
                        eos_id: int | None = None,
                        generator: torch.Generator | None = None) -> tuple[torch.Tensor, GenerationStats]:
    """`generate`, also returning prefill and per-step decode timings."""
    _check_arguments(model, idx, max_new_tokens, use_cache, cache, temperature, top_k)
    if use_cache and cache is None:
        cache = DynamicCache()
    stats = GenerationStats(prompt_len=idx.shape[1], new_tokens=0, prefill_s=0.0)
    finished = torch.zeros(idx.shape[0], dtype=torch.bool, device=idx.device)
    start = _clock(idx.device)
    for step in range(max_new_tokens):
        if cache is None:
            model_input = idx  # no cache: re-feed the whole sequence every step
        else:
            model_input = idx[:, cache.get_seq_length():]  # prefill: the prompt; decode: the newest token
        logits = model(model_input, cache)[:, -1, :]  # (B, vocab): only the last position predicts what is next
        next_token = sample_next_token(logits, temperature, top_k, generator)
        if eos_id is not None:  # rows that already ended keep emitting eos
            next_token = next_token.masked_fill(finished[:, None], eos_id)
            finished |= next_token[:, 0] == eos_id
        idx = torch.cat([idx, next_token], dim=1)
        now = _clock(idx.device)
        if step == 0:
            stats.prefill_s = now - start
        else:
            stats.decode_s.append(now - start)
        start = now
        stats.new_tokens += 1
        if eos_id is not None and bool(finished.all()):
            break
    return idx, stats


def generate(model: TinyGPT, idx: torch.Tensor, max_new_tokens: int, *, use_cache: bool = True,
             cache: Cache | None = None, temperature: float = 0.0, top_k: int | None = None, eos_id: int | None = None,
             generator: torch.Generator | None = None, return_stats: bool = False):
    """Continue each row of `idx` (B, T) by up to `max_new_tokens` tokens; returns (B, T + new) token ids.

    Greedy when `temperature` is 0, otherwise sampled (optionally among the `top_k` most likely) with `generator`.
    With `use_cache` (the default) a `DynamicCache` is made unless `cache` is given; a given cache may already hold
    a prefix of `idx`, which is then not recomputed. Generation stops early once every row has produced `eos_id`.
    With `return_stats=True` returns ``(tokens, GenerationStats)``.
    """
    tokens, stats = generate_with_stats(model, idx, max_new_tokens, use_cache=use_cache, cache=cache,
                                        temperature=temperature, top_k=top_k, eos_id=eos_id, generator=generator)
    return (tokens, stats) if return_stats else tokens
