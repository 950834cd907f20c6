"""The autoregressive loop: tokens -> logits -> next token -> append -> repeat.

Two phases. **Prefill** runs the whole prompt through the model at once and yields the first new token (its time is
the *time to first token*). **Decode** then produces one token per step (its time is the *time per output token*).
With a cache, a decode step feeds the model only the newest token; without one, it re-feeds the whole sequence.
Both phases are timed here, once, so every chapter and benchmark measures speed the same way.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch

from .cache import Cache, DynamicCache
from .model import TinyGPT

__all__ = ["GenerationStats", "generate", "generate_with_stats", "sample_next_token", "beam_search",
           "TraceStep", "trace_generation"]


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
    _check_sampling(temperature, top_k)
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(f"logits must be a (batch, vocab_size) tensor, got {shape}; use logits[None] for one row")
    return _sample(logits, temperature, top_k, generator)


def _sample(logits: torch.Tensor, temperature: float, top_k: int | None,
            generator: torch.Generator | None) -> torch.Tensor:
    """`sample_next_token` without its checks, for a loop that checked its arguments once before the first step."""
    if temperature == 0.0:
        return logits.argmax(dim=-1, keepdim=True)  # (B, 1)
    logits = logits / temperature
    if top_k is not None:
        kth_best = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth_best, float("-inf"))
    return torch.multinomial(logits.softmax(dim=-1), num_samples=1, generator=generator)  # (B, 1)


def _check_sampling(temperature: float, top_k: int | None) -> None:
    """A negative or NaN temperature, or a bool top_k, would sample from the wrong distribution or fail deep inside."""
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not 0 <= temperature < math.inf:
        raise ValueError(f"temperature must be a finite number >= 0 (0 means greedy), got {temperature!r}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k must be None or an int >= 1, got {top_k!r}")


def _check_arguments(model: TinyGPT, idx: torch.Tensor, max_new_tokens: int, use_cache: bool, cache: Cache | None,
                     temperature: float, top_k: int | None) -> None:
    """Fail early, naming the bad value, instead of halfway through a generation."""
    if not isinstance(idx, torch.Tensor) or idx.dim() != 2:
        shape = tuple(idx.shape) if isinstance(idx, torch.Tensor) else type(idx).__name__
        raise ValueError(f"idx must be a (batch, seq_len) tensor of token ids, got {shape}; use idx[None] for one row")
    if not isinstance(max_new_tokens, int) or isinstance(max_new_tokens, bool) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be an int >= 1, got {max_new_tokens!r}")
    _check_sampling(temperature, top_k)
    if cache is not None and not isinstance(cache, Cache):
        raise TypeError(f"cache must be a kvlab Cache instance such as kvlab.DynamicCache() (or None), "
                        f"got {cache!r}")
    if cache is not None and not use_cache:
        raise ValueError("a cache was passed with use_cache=False; pass use_cache=True or drop the cache")
    total = idx.shape[1] + max_new_tokens
    if total > model.config.max_seq_len:
        raise ValueError(f"prompt ({idx.shape[1]}) + max_new_tokens ({max_new_tokens}) = {total} exceeds "
                         f"max_seq_len={model.config.max_seq_len}")
    past = cache.get_seq_length() if cache is not None else 0
    if past >= idx.shape[1]:
        raise ValueError(f"the cache already holds {past} tokens but idx has only {idx.shape[1]}; "
                         "pass the full sequence, of which the cache holds a prefix")
    fed = cache.token_ids if cache is not None else None  # what an earlier `generate` fed this cache, if any
    if past and fed is not None and fed.shape[1] >= past and (
            fed.shape[0] != idx.shape[0] or not torch.equal(fed[:, :past].to(idx.device), idx[:, :past])):
        raise ValueError(f"the cache holds {past} tokens of another sequence: idx must start with the tokens it was "
                         "fed (a prefix to reuse), or call cache.reset() first")


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
    if eos_id is not None and (isinstance(eos_id, bool) or not isinstance(eos_id, int)
                               or not 0 <= eos_id < model.config.vocab_size):
        raise ValueError(f"eos_id must be None or a token id in 0..{model.config.vocab_size - 1}, got {eos_id!r}")
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
    if cache is not None:
        cache.token_ids = idx[:, :cache.get_seq_length()]  # what it holds, so a later call can check it continues
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


# --- chapter 03: beam search and reorder_cache ---

@torch.inference_mode()
def beam_search(model: TinyGPT, idx: torch.Tensor, n_beams: int, max_new_tokens: int, *, use_cache: bool = True,
                cache: Cache | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep the `n_beams` most likely continuations of one prompt `idx` (1, T); score = sum of token log-probs.

    Returns ``(beams, scores)``: beams (n_beams, T + max_new_tokens) token ids and their scores (n_beams,), best
    first. Kept short on purpose: no length normalisation, no end-of-sequence handling.

    The batch holds one row per beam from the start (rows 1.. begin with score -inf, so step one expands only
    row 0); this keeps the batch size fixed, which a `StaticCache` needs (``batch_size=n_beams``). After each step
    the surviving beams may come from any parent row, some twice, others not at all: ``cache.reorder_cache(beam_idx)``
    moves every layer's K/V rows along with their beams. With ``use_cache=False`` each step recomputes every beam
    from scratch instead, which must give the same beams.
    """
    _check_arguments(model, idx, max_new_tokens, use_cache, cache, 0.0, None)
    if idx.shape[0] != 1:
        raise ValueError(f"beam_search continues one prompt: idx must have shape (1, seq_len), got {tuple(idx.shape)}")
    vocab_size = model.config.vocab_size
    if not isinstance(n_beams, int) or isinstance(n_beams, bool) or not 1 <= n_beams <= vocab_size:
        raise ValueError(f"n_beams must be an int in 1..vocab_size ({vocab_size}), got {n_beams!r}")
    if cache is not None and cache.get_seq_length() != 0:
        raise ValueError(f"beam_search needs an empty cache, got one holding {cache.get_seq_length()} tokens")
    if use_cache and cache is None:
        cache = DynamicCache()
    beams = idx.repeat(n_beams, 1)  # (n_beams, T): every row starts as the prompt
    scores = torch.full((n_beams,), float("-inf"), device=idx.device)
    scores[0] = 0.0  # only row 0 is a live beam at first
    for _ in range(max_new_tokens):
        model_input = beams if cache is None else beams[:, cache.get_seq_length():]
        log_probs = model(model_input, cache)[:, -1, :].log_softmax(dim=-1)  # (n_beams, vocab)
        candidates = (scores[:, None] + log_probs).view(-1)  # every beam x every next token
        scores, flat = candidates.topk(n_beams)  # best first
        beam_idx, token = flat // vocab_size, flat % vocab_size  # which parent row, which new token
        beams = torch.cat([beams[beam_idx], token[:, None]], dim=1)
        if cache is not None:
            cache.reorder_cache(beam_idx)  # row i of the cache now holds the K/V of beam i's parent
    return beams, scores


# --- chapter 01: autoregressive generation ---


@dataclass
class TraceStep:
    """One step of a traced greedy generation: what the model was fed, what it proposed, what was appended."""

    step: int
    fed: list[int]  # token ids fed to the model at this step
    candidates: list[tuple[int, float]]  # the most likely next tokens with their probabilities, best first
    chosen: int  # the token appended (greedy: the most likely one)


@torch.inference_mode()
def trace_generation(model: TinyGPT, idx: torch.Tensor, max_new_tokens: int, *, use_cache: bool = False,
                     top: int = 3) -> list[TraceStep]:
    """Greedy generation of one sequence, recording every turn of the loop, to read it step by step.

    The loop is the same as `generate_with_stats`'s (same feeding, same `sample_next_token`), without timing,
    sampling or early stopping, so the chosen tokens are exactly `generate`'s greedy tokens.
    """
    _check_arguments(model, idx, max_new_tokens, use_cache, None, 0.0, None)
    if idx.shape[0] != 1:
        raise ValueError(f"trace_generation follows one sequence: idx must have batch size 1, got {idx.shape[0]}")
    if not isinstance(top, int) or isinstance(top, bool) or not 1 <= top <= model.config.vocab_size:
        raise ValueError(f"top must be an int in 1..vocab_size={model.config.vocab_size}, got {top!r}")
    cache = DynamicCache() if use_cache else None
    steps = []
    for step in range(max_new_tokens):
        model_input = idx if cache is None else idx[:, cache.get_seq_length():]  # whole sequence, or only the new
        logits = model(model_input, cache)[:, -1, :]  # (1, vocab): the prediction for the next position
        best = logits.softmax(dim=-1)[0].topk(top)  # the `top` most likely next tokens
        next_token = sample_next_token(logits)  # greedy: the argmax, (1, 1)
        steps.append(TraceStep(step, model_input[0].tolist(),
                               list(zip(best.indices.tolist(), best.values.tolist())), int(next_token)))
        idx = torch.cat([idx, next_token], dim=1)  # append, and go round again
    return steps
