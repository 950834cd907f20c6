"""What a lossy cache costs: its model's predictions against the full cache's, on the same held-out text.

A compressed cache (`kvlab.compressed_cache`) changes the keys and values attention sees, so it can change the
model's next-token logits. `compare_to_full_cache` feeds the same text through the model twice, token by token (as
decode steps, so that quantisation and eviction act exactly as during generation), once with a full `DynamicCache`
and once with the cache under test, and reports three measures of the difference:

- **top-1 agreement**: the share of positions where both pick the same most likely next token (what greedy decoding
  would emit);
- **max |Δlogit|**: the largest change of any logit at any position, the worst case;
- **cross-entropy** of the real next token, in nats per token, with each cache: the language-modelling loss on
  held-out text. Its increase is the cost in quality on average.

Next to them, the bytes: the most the cache held after any step, against the full cache's.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .attention_trace import trace_attention
from .cache import Cache, DynamicCache
from .checks import check_int, check_tensor, check_type
from .compressed_cache import dequantize, quantize
from .corpus import make_corpus
from .llama import Llama
from .model import TinyGPT
from .tokenizer import CharTokenizer

__all__ = ["HELD_OUT_SEED", "held_out_tokens", "cross_entropy", "DecodeRun", "decode_token_by_token",
           "QualityReport", "compare_logits", "compare_to_full_cache", "quantization_error",
           "generate_with_memory", "attention_to_first_tokens"]

HELD_OUT_SEED = 1  # the hello model was trained on make_corpus(seed=0); another seed gives text it never saw


def held_out_tokens(tokenizer: CharTokenizer, n_sequences: int = 4, seq_len: int = 128,
                    seed: int = HELD_OUT_SEED) -> torch.Tensor:
    """(n_sequences, seq_len) token ids of held-out text: consecutive pieces of ``make_corpus(seed=seed)``.

    Each piece starts at the beginning of a line, as the model's training windows did, and the pieces do not
    overlap. `seed` must differ from the training seed (0) for the text to be held out.
    """
    check_type("tokenizer", tokenizer, CharTokenizer, "a kvlab.CharTokenizer")
    n_sequences, seq_len = check_int("n_sequences", n_sequences, 1), check_int("seq_len", seq_len, 1)
    seed = check_int("seed", seed, 0)
    lines = make_corpus(n_lines=n_sequences * (seq_len // 8 + 2), seed=seed)  # lines have >= 8 characters
    pieces, current = [], ""
    for line in lines:
        current += line + "\n"
        if len(current) >= seq_len:
            pieces.append(tokenizer.encode(current[:seq_len]))
            current = ""
            if len(pieces) == n_sequences:
                break
    return torch.tensor(pieces, dtype=torch.long)


Model = TinyGPT | Llama  # the two models whose caches these functions compare


def _check_model_tokens(model: Model, tokens: torch.Tensor) -> None:
    check_type("model", model, (TinyGPT, Llama), "a kvlab.TinyGPT or a kvlab.llama.Llama")
    check_tensor("tokens", tokens, dim=2, dtypes=(torch.long,), what="a (batch, seq_len) tensor of token ids")
    if tokens.shape[1] < 2:
        raise ValueError(f"tokens must have seq_len >= 2 (a next token to predict), got shape {tuple(tokens.shape)}")


@torch.inference_mode()
def cross_entropy(model: Model, tokens: torch.Tensor) -> float:
    """Mean cross-entropy (nats per token) of each next token of `tokens` (B, T), in one forward pass, no cache."""
    _check_model_tokens(model, tokens)
    logits = model(tokens)[:, :-1]  # (B, T - 1, vocab): position t predicts token t + 1
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1)).item()


@dataclass(frozen=True)
class DecodeRun:
    """The logits of a token-by-token run over a text, and the most bytes its cache held after any step."""

    logits: torch.Tensor  # (B, T, vocab): logits[:, t] predicts token t + 1
    peak_nbytes: int


@torch.inference_mode()
def decode_token_by_token(model: Model, tokens: torch.Tensor, cache: Cache, *, prefill: int = 1) -> DecodeRun:
    """Feed `tokens` (B, T) through ``model(token, cache)`` one position at a time, as decode steps do.

    With `prefill` > 1 the first `prefill` tokens go in one call, as a prompt would: the same numbers as one at a
    time for a cache that evicts nothing before it holds them all (a budget of at least `prefill`), and much faster
    on a real model, whose every call reads all its weights. A cache that reads the model's queries
    (`HeavyHitterCache`, `kvlab.fastgen.FastGenCache`) and is not attached yet is attached to `model` for the run.
    """
    _check_model_tokens(model, tokens)
    prefill = check_int("prefill", prefill, 1, tokens.shape[1])
    if check_type("cache", cache, Cache, "a kvlab.Cache").get_seq_length() != 0:
        raise ValueError(f"cache must be empty, it has seen {cache.get_seq_length()} tokens; call cache.reset()")
    logits, peak = [], 0
    with _queries_for(cache, model):
        for start, stop in [(0, prefill)] + [(t, t + 1) for t in range(prefill, tokens.shape[1])]:
            logits.append(model(tokens[:, start:stop], cache))  # (B, stop - start, vocab)
            peak = max(peak, cache.nbytes)
    return DecodeRun(torch.cat(logits, dim=1), peak)


def _queries_for(cache: Cache, model: Model):
    """A cache that reads the model's queries (it has `attach` and `attached`: H2O, FastGen) is attached for the
    run unless it already is."""
    if getattr(cache, "attached", True) is False:
        return cache.attach(model)
    return contextlib.nullcontext()


@dataclass(frozen=True)
class QualityReport:
    """A lossy cache against the full cache on the same text (see the module docstring for each measure)."""

    n_predictions: int  # next-token predictions compared: batch · (seq_len - 1)
    top1_agreement: float  # share of predictions with the same argmax, 0..1
    max_abs_logit_diff: float  # largest |logit - full logit| over all predictions and the whole vocabulary
    cross_entropy: float  # nats per token, with the lossy cache
    full_cross_entropy: float  # nats per token, with the full cache
    cache_nbytes: int  # the most bytes the lossy cache held after any step
    full_nbytes: int  # bytes of the full cache at the end (its most)

    @property
    def memory_ratio(self) -> float:
        """Bytes held as a share of the full cache's: 0.25 means 4 times less memory."""
        return self.cache_nbytes / self.full_nbytes

    @property
    def cross_entropy_increase(self) -> float:
        """Nats per token lost: cross-entropy with the lossy cache minus with the full one."""
        return self.cross_entropy - self.full_cross_entropy

    def summary(self) -> str:
        """One line for a table: memory, agreement, worst logit change, cross-entropy."""
        increase = round(self.cross_entropy_increase, 4) + 0.0  # + 0.0 turns -0.0 into 0.0
        return (f"{self.cache_nbytes:>9,} B ({self.memory_ratio:6.1%})  top-1 {self.top1_agreement:6.1%}  "
                f"max|Δlogit| {self.max_abs_logit_diff:7.4f}  CE {self.cross_entropy:.4f} ({increase:+.4f})")


def compare_logits(logits: torch.Tensor, full_logits: torch.Tensor, tokens: torch.Tensor, cache_nbytes: int,
                   full_nbytes: int) -> QualityReport:
    """The `QualityReport` of two runs' logits (B, T, vocab) over the same `tokens` (B, T)."""
    if logits.shape != full_logits.shape or logits.shape[:2] != tokens.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and full_logits {tuple(full_logits.shape)} must both be "
                         f"(B, T, vocab) for tokens {tuple(tokens.shape)}")
    mine, full = logits[:, :-1].float(), full_logits[:, :-1].float()  # the positions that have a next token
    targets = tokens[:, 1:].reshape(-1)
    ce = F.cross_entropy(mine.reshape(-1, mine.shape[-1]), targets).item()
    full_ce = F.cross_entropy(full.reshape(-1, full.shape[-1]), targets).item()
    if not (math.isfinite(ce) and math.isfinite(full_ce)):
        raise ValueError("logits are not finite: the cache returned inf or nan")
    return QualityReport(
        n_predictions=targets.numel(),
        top1_agreement=(mine.argmax(-1) == full.argmax(-1)).float().mean().item(),
        max_abs_logit_diff=(mine - full).abs().max().item(),
        cross_entropy=ce, full_cross_entropy=full_ce, cache_nbytes=cache_nbytes, full_nbytes=full_nbytes)


def compare_to_full_cache(model: Model, tokens: torch.Tensor, make_cache: Callable[[], Cache], *,
                          full: DecodeRun | None = None) -> QualityReport:
    """Run `tokens` (B, T) token by token with ``make_cache()`` and with a full `DynamicCache`, and compare.

    Pass `full` (a `decode_token_by_token` run with a `DynamicCache` on the same tokens) to reuse the reference
    across many caches.
    """
    if not callable(make_cache):
        raise TypeError(f"make_cache must be a function returning a new Cache, got {type(make_cache).__name__}")
    if full is None:
        full = decode_token_by_token(model, tokens, DynamicCache())
    elif not isinstance(full, DecodeRun) or full.logits.shape[:2] != tokens.shape:
        raise ValueError("full must be the DecodeRun of a DynamicCache on the same tokens")
    run = decode_token_by_token(model, tokens, make_cache())
    return compare_logits(run.logits, full.logits, tokens, run.peak_nbytes, full.peak_nbytes)


def quantization_error(x: torch.Tensor, bits: int, dim: int) -> float:
    """Relative RMS error of quantising `x` and back: ‖dequantize(quantize(x)) - x‖ / ‖x‖ (0 = exact)."""
    error = dequantize(quantize(x, bits, dim)) - x
    return (error.double().norm() / x.double().norm()).item()


@torch.inference_mode()
def generate_with_memory(model: Model, idx: torch.Tensor, max_new_tokens: int,
                         cache: Cache) -> tuple[torch.Tensor, list[int]]:
    """Greedy generation that records ``cache.nbytes`` after every model call (the prefill, then each decode step).

    Returns the tokens (prompt and new ones, like `kvlab.generate`) and the byte counts. A cache that reads the
    model's queries (H2O, FastGen) is attached to `model` for the run.
    """
    check_type("cache", cache, Cache, "a kvlab.Cache")
    max_new_tokens = check_int("max_new_tokens", max_new_tokens, 1)
    check_tensor("idx", idx, dim=2, what="a (batch, seq_len) tensor of token ids")
    tokens, held = idx, []
    with _queries_for(cache, model):
        logits = model(idx, cache)  # prefill
        for _ in range(max_new_tokens):
            held.append(cache.nbytes)
            next_token = logits[:, -1:].argmax(dim=-1)  # (B, 1)
            tokens = torch.cat([tokens, next_token], dim=1)
            if len(held) == max_new_tokens:
                break  # the last token is returned, not fed back (as in kvlab.generate)
            logits = model(next_token, cache)
    return tokens, held


def attention_to_first_tokens(model: TinyGPT, tokens: torch.Tensor, n_first: int = 4,
                              from_position: int = 64) -> torch.Tensor:
    """(n_layer, n_head) mean share of attention that queries at `from_position` and later put on the first tokens.

    StreamingLLM's "attention sinks" show up as a large share (the first tokens take much of every query's weight
    whatever they say); with attention spread evenly, a query at position t would give them ``n_first / (t + 1)``.
    `tokens` is one sequence (1, T) with T > from_position.
    """
    check_type("model", model, TinyGPT, "a kvlab.TinyGPT (for a kvlab.llama.Llama: streaming.first_token_attention)")
    if check_tensor("tokens", tokens, dim=2, what="one sequence of token ids, (1, T)").shape[0] != 1:
        raise ValueError(f"tokens must be one sequence of shape (1, T), got {tuple(tokens.shape)}")
    n_first, from_position = check_int("n_first", n_first, 1), check_int("from_position", from_position, 1)
    if not n_first <= from_position < tokens.shape[1]:
        raise ValueError(f"need n_first <= from_position < T, got n_first={n_first}, from_position={from_position}, "
                         f"T={tokens.shape[1]}")
    config = model.config
    shares = torch.zeros(config.n_layer, config.n_head, dtype=torch.float64)
    for layer in range(config.n_layer):
        for head in range(config.n_head):
            weights = trace_attention(model, tokens, layer, head).weights[from_position:]  # (T - from, T)
            shares[layer, head] = weights[:, :n_first].sum(dim=-1).mean()
    return shares

