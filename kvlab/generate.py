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
from .checks import check_int, check_number, check_tensor, check_type
from .model import TinyGPT

__all__ = ["GenerationStats", "sample_next_token", "generate", "generate_with_stats", "TraceStep",
           "trace_generation", "beam_search"]


# --- chapter 01: the autoregressive loop ---



@dataclass
class GenerationStats:
    """Timings of one `generate` call, in seconds. Prefill yields the first token; each decode step one more."""

    prompt_len: int
    new_tokens: int
    prefill_s: float  # time to first token (TTFT)
    decode_s: list[float] = field(default_factory=list)  # one entry per token after the first

    @classmethod
    def from_clock(cls, prompt_len: int, clock: list[float]) -> GenerationStats:
        """Stats from the clock read before the first step and after every step: one entry per token, plus one."""
        steps = [end - start for start, end in zip(clock, clock[1:])]
        return cls(prompt_len, new_tokens=len(steps), prefill_s=steps[0], decode_s=steps[1:])

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
    """Pick one token per row from last-position logits (B, vocab): argmax when temperature is 0, else sample.

    Any temperature > 0 works, however small: the largest logit is subtracted before dividing, so the scaled logits
    are <= 0 and a tiny temperature sends the others to -inf (probability 0) instead of overflowing to inf.
    """
    _check_sampling(temperature, top_k)
    check_tensor("logits", logits, dim=2, what="a (batch, vocab_size) tensor (logits[None] for one row)")
    return _sample(logits, temperature, top_k, generator)


_TINY = torch.finfo(torch.float32).tiny  # a smaller temperature would round to 0 in float32 (0 / 0 = nan)


def _sample(logits: torch.Tensor, temperature: float, top_k: int | None,
            generator: torch.Generator | None) -> torch.Tensor:
    """`sample_next_token` without its checks, for a loop that checked its arguments once before the first step."""
    if temperature == 0.0:
        return logits.argmax(dim=-1, keepdim=True)  # (B, 1)
    logits = (logits - logits.amax(dim=-1, keepdim=True)) / max(temperature, _TINY)  # <= 0: cannot overflow
    if top_k is not None:
        kth_best = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth_best, float("-inf"))
    return torch.multinomial(logits.softmax(dim=-1), num_samples=1, generator=generator)  # (B, 1)


def _check_sampling(temperature: float, top_k: int | None) -> None:
    """A negative or NaN temperature, or a bool top_k, would sample from the wrong distribution or fail deep inside."""
    check_number("temperature", temperature, minimum=0)  # 0 means greedy
    if top_k is not None:
        check_int("top_k", top_k, minimum=1)


def _check_arguments(model: TinyGPT, idx: torch.Tensor, max_new_tokens: int, use_cache: bool, cache: Cache | None,
                     temperature: float, top_k: int | None, eos_id: int | None = None) -> None:
    """The checks `generate`, `trace_generation`, `beam_search` (and `lean_generate`) share, run once before the loop.

    Fail early, naming the bad value, instead of halfway through a generation; the loop then trusts its inputs.
    """
    if not (isinstance(model, torch.nn.Module) and hasattr(model, "_check_input")):  # None, a dict, a tokenizer
        raise TypeError(f"model must be a kvlab model such as TinyGPT (kvlab.load_hello_model() returns (model, "
                        f"tokenizer)), got {type(model).__name__}; the order is generate(model, idx, max_new_tokens)")
    if isinstance(idx, torch.Tensor) and idx.dim() == 2 and idx.shape[0] and not idx.shape[1]:
        raise ValueError(f"the prompt is empty (idx has shape {tuple(idx.shape)}); give at least one token")
    model._check_input(idx, 0)  # a (batch, seq_len) tensor of token ids: the model's own O(1) checks
    check_int("max_new_tokens", max_new_tokens, minimum=1)
    _check_sampling(temperature, top_k)
    if eos_id is not None:
        check_int("eos_id", eos_id, minimum=0, maximum=model.config.vocab_size - 1)
    if cache is not None:
        check_type("cache", cache, Cache, "a kvlab Cache instance such as kvlab.DynamicCache() (or None)")
        if not use_cache:
            raise ValueError("a cache was passed with use_cache=False; pass use_cache=True or drop the cache")
    total = idx.shape[1] + max_new_tokens
    if total > model.config.max_seq_len:
        raise ValueError(f"prompt ({idx.shape[1]}) + max_new_tokens ({max_new_tokens}) = {total} exceeds "
                         f"max_seq_len={model.config.max_seq_len}")
    if cache is not None and cache.get_seq_length():
        _check_cache_prefix(cache, idx)


def _check_cache_prefix(cache: Cache, idx: torch.Tensor) -> None:
    """A cache that already holds tokens may be reused only for a prompt that starts with exactly those tokens.

    The model records the ids it feeds a cache (`Cache.token_ids`), whoever calls it, so a cache filled by
    ``model(idx, cache)``, by an earlier `generate` or by hand is checked the same way; otherwise the new tokens
    would silently attend to another text's keys and values.
    """
    past, fed = cache.get_seq_length(), cache.token_ids
    fix = ("idx must start with the tokens the cache holds and add at least one (pass the whole text so far), "
           "or call cache.reset() first")
    if fed is None:
        raise ValueError(f"the cache holds {past} tokens that were not all fed through the model (was "
                         f"cache.update called by hand?), so they cannot be checked against idx; {fix}")
    if past >= idx.shape[1] or fed.shape[0] != idx.shape[0] or not torch.equal(fed.to(idx.device), idx[:, :past]):
        raise ValueError(f"the cache holds {past} tokens that idx ({idx.shape[0]} x {idx.shape[1]} tokens) does "
                         f"not continue: {fix}")


def _clock(device: torch.device) -> float:
    """Wall-clock time after the device has finished its queued work (GPUs run asynchronously)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


@torch.inference_mode()
def generate(model: TinyGPT, idx: torch.Tensor, max_new_tokens: int, *, use_cache: bool = True,
             cache: Cache | None = None, temperature: float = 0.0, top_k: int | None = None, eos_id: int | None = None,
             generator: torch.Generator | None = None,
             return_stats: bool = False) -> torch.Tensor | tuple[torch.Tensor, GenerationStats]:
    """Continue each row of `idx` (B, T) by up to `max_new_tokens` tokens; returns (B, T + new) token ids.

    Greedy when `temperature` is 0, otherwise sampled (optionally among the `top_k` most likely) with `generator`.
    With `use_cache` (the default) a `DynamicCache` is made unless `cache` is given; a given cache may already hold
    a prefix of `idx`, which is then not recomputed. Generation stops early once every row has produced `eos_id`.

    With `return_stats=True` returns ``(tokens, GenerationStats)``: the clock is read after every token, so every
    chapter and benchmark times prefill and decode the same way, through this one loop. Arguments are checked once,
    here; the loop adds no checks of its own (the model's per-call checks are O(1)).
    """
    _check_arguments(model, idx, max_new_tokens, use_cache, cache, temperature, top_k, eos_id)
    if generator is not None:  # torch.manual_seed(0) returns one; a plain seed such as 0 is not one
        check_type("generator", generator, torch.Generator, "a torch.Generator (or None)")
    if use_cache and cache is None:
        cache = DynamicCache()
    finished = torch.zeros(idx.shape[0], dtype=torch.bool, device=idx.device)  # rows that have emitted eos_id
    prompt_len, clock = idx.shape[1], [_clock(idx.device)] if return_stats else None
    for step in range(max_new_tokens):
        if cache is None:
            model_input = idx  # no cache: re-feed the whole sequence every step
        else:
            model_input = idx[:, cache.get_seq_length():]  # prefill: the prompt; decode: the newest token
        logits = model(model_input, cache)[:, -1, :]  # (B, vocab): only the last position predicts what is next
        next_token = _sample(logits, temperature, top_k, generator)  # (B, 1): sample_next_token, checked above
        if eos_id is not None:  # rows that already ended keep emitting eos
            next_token = next_token.masked_fill(finished[:, None], eos_id)
            finished |= next_token[:, 0] == eos_id
        idx = torch.cat([idx, next_token], dim=1)  # append, and go round again
        if return_stats:
            clock.append(_clock(idx.device))  # step 0 took the time to first token, each later step one TPOT
        if eos_id is not None and bool(finished.all()):
            break
    if return_stats:
        return idx, GenerationStats.from_clock(prompt_len, clock)
    return idx


def generate_with_stats(model: TinyGPT, idx: torch.Tensor, max_new_tokens: int,
                        **kwargs) -> tuple[torch.Tensor, GenerationStats]:
    """``generate(..., return_stats=True)``: the name the measuring code (`kvlab.measure`) times through."""
    return generate(model, idx, max_new_tokens, return_stats=True, **kwargs)


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

    The loop is `generate`'s (same feeding, same greedy choice), without timing, sampling or early stopping, so
    the chosen tokens are exactly `generate`'s greedy tokens.
    """
    _check_arguments(model, idx, max_new_tokens, use_cache, None, 0.0, None)
    if idx.shape[0] != 1:
        raise ValueError(f"trace_generation follows one sequence: idx must have batch size 1, got {idx.shape[0]}")
    check_int("top", top, minimum=1, maximum=model.config.vocab_size)
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
    if isinstance(cache, Cache) and cache.get_seq_length() != 0:  # before the prefix check, which would say less
        raise ValueError(f"beam_search needs an empty cache, got one holding {cache.get_seq_length()} tokens")
    _check_arguments(model, idx, max_new_tokens, use_cache, cache, 0.0, None)
    if idx.shape[0] != 1:
        raise ValueError(f"beam_search continues one prompt: idx must have shape (1, seq_len), got {tuple(idx.shape)}")
    vocab_size = model.config.vocab_size
    check_int("n_beams", n_beams, minimum=1, maximum=vocab_size)
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
