"""StreamingLLM's experiment on a real model: a long text read through a cache policy, in one forward pass.

Reading a text of T tokens one decode step at a time with a cache that evicts or quantises costs T passes through
the whole model, each for one token. For the policies here the same numbers come out of ONE forward pass over the
whole text, with an attention that lets each query see exactly what the cache hands the model at that query's
decode step (equality with the caches' token-by-token decode is tested in tests/test_streaming.py):

- a full cache: ordinary causal attention (`full_attention`).
- `SlidingWindowCache(budget)` holds the last `budget` tokens between steps; the step of token t attends to them
  and to itself, text positions t - budget .. t, with keys rotated at their positions in the text: a banded causal
  mask (`window_mask`, `sliding_window`).
- sinks and a window, StreamingLLM's way (`SinkCache`, whose keys `Llama` rotates at their slot in the cache): up to
  t = budget nothing is evicted and every slot is a text position. Later, the step of token t attends to budget + 1
  keys in slots 0 .. budget: the `n_sink` first tokens in slots 0 .. n_sink - 1, the last ``budget - n_sink`` tokens,
  and itself in slot `budget`, where its query is rotated. A window key at text position p sits in slot
  p - t + budget, so its distance to the query is t - p, as in the text; sink i sits at distance budget - i,
  whatever t is. So the window keys need the banded mask and the sinks a second rotation of the queries, to slot
  min(t, budget): `attention_sinks`.
- `QuantizedCache(bits, group_size, residual_length)`: group g (tokens g·G .. g·G + G - 1) is quantised once, at
  the step of token (g + 1)·G + R - 1, and never changes; from that step on every query sees it dequantised, and
  earlier ones see it exact (`quantized`). The same computation, but not bit for bit on a real model: the one pass
  computes the keys in one matmul and the cache one token at a time, and float rounding's last digits can flip a
  code to its neighbour (tests/test_streaming.py bounds the effect on SmolLM2).

Heavy hitters (H2O, `HeavyHitterCache`) have no such pass: which tokens they keep depends on attention summed step
by step over what they kept before, which no mask fixed in advance reproduces. `cache_losses` measures any cache
the slow, direct way, one model call per token; `record_heavy_hitters` runs H2O so, and `RecordedRun` saves and
loads the result (chapter 11 reads a run the package ships, which tests/test_streaming.py recomputes).

Each policy is an attention function ``attend(q, k, v, rope) -> y``: queries (B, H, T, D) and keys, values
(B, H_kv, T, D) of all T tokens, before rotation, and the model's `RotaryEmbedding`. `forward_with_attention` runs a
`kvlab.llama.Llama` with it; `token_losses` adds the language-model head, a few hundred positions at a time.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from .cache import Cache
from .checks import check_int, check_one_of, check_tensor, check_type
from .compressed_cache import BITS, HeavyHitterCache, dequantize, quantize
from .llama import Llama, RotaryEmbedding
from .quality import decode_token_by_token

__all__ = ["window_mask", "full_attention", "sliding_window", "attention_sinks", "quantized",
           "forward_with_attention", "PolicyRun", "token_losses", "cache_losses", "RecordedRun",
           "record_heavy_hitters", "SHIPPED_HEAVY_HITTERS", "rolling_perplexity", "first_token_attention"]

SHIPPED_HEAVY_HITTERS = Path(__file__).parent / "data" / "smollm2_heavy_hitters.json"  # chapter 11's H2O row

Attend = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, RotaryEmbedding], torch.Tensor]


# --- the masks and attention functions ---


def window_mask(n_tokens: int, budget: int, device: torch.device | None = None) -> torch.Tensor:
    """(T, T) bool, True where query t may look: key positions t - budget .. t (a causal band).

    What `SlidingWindowCache(budget)` hands the step of token t: the `budget` tokens it held, and the new token.
    """
    n_tokens, budget = check_int("n_tokens", n_tokens, 1), check_int("budget", budget, 0)
    t = torch.arange(n_tokens, device=device)[:, None]
    p = torch.arange(n_tokens, device=device)[None, :]
    return (p <= t) & (p >= t - budget)


def _grouped_scores(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """q kᵀ / √D for grouped-query attention: q (B, H, T, D), k (B, H_kv, S, D) -> (B, H, T, S).

    Query head h reads K/V head h // (H / H_kv), as in the model; the queries of a group share one matmul, so the
    keys are never copied H / H_kv times.
    """
    B, H, T, D = q.shape
    H_kv = k.shape[1]
    scores = q.reshape(B, H_kv, H // H_kv * T, D) @ k.transpose(-2, -1)  # (B, H_kv, group · T, S)
    return scores.view(B, H, T, -1) / math.sqrt(D)


def _grouped_mix(weights: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """weights (B, H, T, S) @ v (B, H_kv, S, D) -> (B, H, T, D), each query head reading its group's values."""
    B, H, T, S = weights.shape
    H_kv = v.shape[1]
    return (weights.reshape(B, H_kv, H // H_kv * T, S) @ v).view(B, H, T, -1)


def full_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rope: RotaryEmbedding) -> torch.Tensor:
    """A full cache: every query sees every earlier key, all rotated at their positions in the text."""
    positions = torch.arange(q.shape[-2], device=q.device)
    return F.scaled_dot_product_attention(rope(q, positions), rope(k, positions), v, is_causal=True,
                                          enable_gqa=q.shape[1] != k.shape[1])


def sliding_window(budget: int) -> Attend:
    """`SlidingWindowCache(budget)`'s attention in one pass: the banded mask, keys at their text positions."""
    budget = check_int("budget", budget, 1)

    def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rope: RotaryEmbedding) -> torch.Tensor:
        positions = torch.arange(q.shape[-2], device=q.device)
        mask = window_mask(q.shape[-2], budget, q.device)
        return F.scaled_dot_product_attention(rope(q, positions), rope(k, positions), v, attn_mask=mask,
                                              enable_gqa=q.shape[1] != k.shape[1])

    attend.__qualname__ = f"sliding_window({budget})"
    return attend


def attention_sinks(budget: int, n_sink: int = 4) -> Attend:
    """`SinkCache(budget, n_sink)`'s attention under `Llama`, in one pass (derived in the module docstring)."""
    budget, n_sink = check_int("budget", budget, 1), check_int("n_sink", n_sink, 1)
    if n_sink >= budget:
        raise ValueError(f"n_sink must be smaller than budget, got n_sink={n_sink}, budget={budget}")

    def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rope: RotaryEmbedding) -> torch.Tensor:
        T, D = q.shape[-2:]
        t = torch.arange(T, device=q.device)
        # One dot product, two rotations: each head is doubled. Its first half holds the queries rotated at their
        # text positions and the window keys (zero in the second half); its second half the queries rotated at their
        # slot min(t, budget) and the sinks at theirs, 0 .. n_sink - 1 (zero in the first half).
        queries = torch.cat([rope(q, t), rope(q, t.clamp(max=budget))], dim=-1)  # (B, H, T, 2D)
        sink_keys = rope(k[:, :, :n_sink], t[:n_sink])
        keys = torch.cat([torch.cat([torch.zeros_like(sink_keys), sink_keys], dim=-1),
                          torch.cat([rope(k, t), torch.zeros_like(k)], dim=-1)], dim=-2)  # (B, H_kv, n_sink + T, 2D)
        window_allowed = window_mask(T, budget - n_sink, q.device)  # the last budget - n_sink tokens and itself
        window_allowed[:, :n_sink] = False  # the sinks are counted once, in their own columns
        sinks_allowed = t[:n_sink] <= t[:, None]  # (T, n_sink): a sink exists once it has been read
        values = torch.cat([v[:, :, :n_sink], v], dim=-2)  # (B, H_kv, n_sink + T, D)
        values = torch.cat([values, torch.zeros_like(values)], dim=-1)  # as wide as the keys: the fused kernel
        y = F.scaled_dot_product_attention(queries, keys, values, attn_mask=torch.cat([sinks_allowed, window_allowed],
                                                                                         dim=-1),
                                           scale=1 / math.sqrt(D), enable_gqa=q.shape[1] != k.shape[1])
        return y[..., :D]  # the zero half of the values adds nothing

    attend.__qualname__ = f"attention_sinks({budget}, n_sink={n_sink})"
    return attend


def quantized(bits: int, group_size: int = 32, residual_length: int = 32) -> Attend:
    """`QuantizedCache(bits, group_size, residual_length)`'s attention in one pass.

    Keys (rotated, as the cache stores them) are quantised per channel and values per token in groups of
    `group_size` tokens, with `kvlab.compressed_cache.quantize`, exactly as the cache does; query t sees the groups
    the cache has quantised by its step dequantised, the rest exact.
    """
    bits = check_one_of("bits", check_int("bits", bits), BITS)
    G, R = check_int("group_size", group_size, 1), check_int("residual_length", residual_length, 0)

    def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rope: RotaryEmbedding) -> torch.Tensor:
        B, H_kv, T, D = k.shape
        t = torch.arange(T, device=q.device)
        q, k = rope(q, t), rope(k, t)
        n = T // G * G  # tokens in whole groups: the only ones that ever get quantised
        k_q, v_q = k.clone(), v.clone()
        k_q[:, :, :n] = dequantize(quantize(k[:, :, :n].reshape(B, H_kv, -1, G, D), bits, dim=-2)).view(B, H_kv, n, D)
        v_q[:, :, :n] = dequantize(quantize(v[:, :, :n].reshape(B, H_kv, -1, G, D), bits, dim=-1)).view(B, H_kv, n, D)
        ready = (t // G + 1) * G + R - 1  # the step at which each token's group is quantised
        seen_quantized = t[:, None] >= ready[None, :]  # (T, T): query t sees key p dequantised
        causal = t[None, :] <= t[:, None]
        # attention over both copies of every token, each allowed only where the cache hands that copy over
        mask = torch.cat([causal & seen_quantized, causal & ~seen_quantized], dim=-1)  # (T, 2T)
        return F.scaled_dot_product_attention(q, torch.cat([k_q, k], dim=-2), torch.cat([v_q, v], dim=-2),
                                              attn_mask=mask, enable_gqa=q.shape[1] != k.shape[1])

    attend.__qualname__ = f"quantized({bits}, group_size={G}, residual_length={R})"
    return attend


# --- running the model with one of them ---


def _check_one_sequence(idx: torch.Tensor) -> None:
    """The measurements read one text: (1, T) with T >= 2, so that there is a next token to predict."""
    if check_tensor("idx", idx, dim=2, what="one sequence of token ids, (1, T)").shape[0] != 1 or idx.shape[1] < 2:
        raise ValueError(f"idx must be one sequence of at least 2 tokens, shape (1, T), got {tuple(idx.shape)}")


def _check_model_tokens(model: Llama, idx: torch.Tensor) -> None:
    check_type("model", model, Llama, "a kvlab.llama.Llama (kvlab.smollm2.load_smollm2() returns one)")
    check_tensor("idx", idx, dim=2, dtypes=(torch.long,), what="a (batch, seq_len) tensor of token ids")
    model._check_input(idx, 0, None)  # ids in range, not longer than the model's context


@torch.inference_mode()
def forward_with_attention(model: Llama, idx: torch.Tensor, attend: Attend = full_attention) -> torch.Tensor:
    """The final hidden states (B, T, d_model) of `model` on `idx` (B, T), every layer attending with `attend`.

    The blocks' own modules do everything else, in `kvlab.llama.LlamaBlock.forward`'s order; with
    `full_attention` the logits equal ``model(idx)`` (tested).
    """
    _check_model_tokens(model, idx)
    if not callable(attend):
        raise TypeError(f"attend must be an attention function (q, k, v, rope) -> y, got {type(attend).__name__}")
    B, T = idx.shape
    x = model._embed(idx)  # (B, T, C)
    for block in model.blocks:
        attn = block.attn
        qkv = attn.qkv(block.norm_1(x)).view(B, T, attn.n_head + 2 * attn.n_kv_head, attn.head_dim).transpose(1, 2)
        q, k, v = qkv.split((attn.n_head, attn.n_kv_head, attn.n_kv_head), dim=1)  # before rotation
        y = attend(q, k, v, model.rope)  # (B, H, T, D)
        x = x + attn.proj(y.transpose(1, 2).reshape(B, T, -1))
        x = x + block.mlp(block.norm_2(x))
    return model.norm(x)


@dataclass(frozen=True)
class PolicyRun:
    """What one pass over a text gives: the loss of every next-token prediction and the token predicted."""

    losses: torch.Tensor  # (T - 1,) nats: losses[t] = -log p(token t + 1 | tokens ..t)
    predictions: torch.Tensor  # (T - 1,) the most likely next token at each position

    @property
    def perplexity(self) -> float:
        """exp(mean loss): the number of equally likely tokens the model is as unsure as, on average."""
        return math.exp(self.losses.double().mean().item())

    def perplexity_over(self, start: int = 0, stop: int | None = None) -> float:
        """Perplexity of the predictions made at positions `start` .. `stop` - 1 (say, once a cache evicts)."""
        stop = len(self.losses) if stop is None else check_int("stop", stop, 1, len(self.losses))
        start = check_int("start", start, 0, stop - 1)
        return math.exp(self.losses[start:stop].double().mean().item())

    def top1_agreement(self, other: PolicyRun) -> float:
        """Share of positions where both runs predict the same next token (what greedy decoding would emit)."""
        check_type("other", other, PolicyRun, "a PolicyRun on the same text")
        if other.predictions.shape != self.predictions.shape:
            raise ValueError(f"runs over different lengths: {len(self.predictions)} and {len(other.predictions)}")
        return (self.predictions == other.predictions).double().mean().item()


@torch.inference_mode()
def token_losses(model: Llama, idx: torch.Tensor, attend: Attend = full_attention, chunk: int = 256) -> PolicyRun:
    """Every next-token loss of one sequence `idx` (1, T) read with `attend`, in one forward pass.

    The language-model head runs on `chunk` positions at a time: for 2,048 positions all logits at once would take
    2,048 · 49,152 · 4 bytes = 400 MB.
    """
    _check_one_sequence(idx)
    chunk = check_int("chunk", chunk, 1)
    hidden = forward_with_attention(model, idx, attend)[0, :-1]  # (T - 1, C): the positions with a next token
    targets = idx[0, 1:]
    losses, predictions = [], []
    for start in range(0, len(targets), chunk):
        logits = F.linear(hidden[start:start + chunk], model.wte.weight)  # tied head: (chunk, vocab)
        losses.append(F.cross_entropy(logits, targets[start:start + chunk], reduction="none"))
        predictions.append(logits.argmax(dim=-1))
    return PolicyRun(torch.cat(losses), torch.cat(predictions))


def cache_losses(model: Llama, idx: torch.Tensor, cache: Cache, prefill: int = 1) -> PolicyRun:
    """`token_losses` through a real `cache`, one model call per token after the first `prefill` tokens.

    The way to measure a cache that no single pass reproduces (H2O). Slow on a real model: every call reads all
    the weights, about 0.1 s for SmolLM2 on two cores. A prefill is exact for a cache that evicts nothing before
    it holds `prefill` tokens (see `kvlab.quality.decode_token_by_token`).
    """
    _check_model_tokens(model, idx)
    _check_one_sequence(idx)
    logits = decode_token_by_token(model, idx, cache, prefill=prefill).logits[0, :-1]  # (T - 1, vocab)
    return PolicyRun(F.cross_entropy(logits, idx[0, 1:], reduction="none"), logits.argmax(dim=-1))


@dataclass(frozen=True)
class RecordedRun:
    """A `PolicyRun` saved with the tokens it read and how it was made: a measurement too slow to repeat live."""

    run: PolicyRun
    token_ids: torch.Tensor  # (1, T): the text the run read
    settings: dict  # how it was made (cache, budget, model file...): plain JSON values
    findings: dict = field(default_factory=dict)  # what else the run saw, in plain JSON values

    def save(self, path: str | Path, *, overwrite: bool = False) -> Path:
        """Write the run as JSON; an existing file is replaced only with ``overwrite=True``."""
        path = Path(path)
        if path.exists() and not overwrite:
            raise ValueError(f"{str(path)!r} already exists: choose another path, or pass overwrite=True to replace it")
        record = {"settings": self.settings, "findings": self.findings, "token_ids": self.token_ids[0].tolist(),
                  "losses": self.run.losses.tolist(), "predictions": self.run.predictions.tolist()}
        path.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | Path = SHIPPED_HEAVY_HITTERS) -> RecordedRun:
        """Read a run written by `save` (by default the heavy-hitter run chapter 11 shows)."""
        record = json.loads(Path(path).read_text(encoding="utf-8"))
        run = PolicyRun(torch.tensor(record["losses"], dtype=torch.float32), torch.tensor(record["predictions"]))
        return cls(run, torch.tensor([record["token_ids"]]), record["settings"], record["findings"])


def record_heavy_hitters(model: Llama, idx: torch.Tensor, budget: int, n_recent: int | None = None) -> RecordedRun:
    """H2O over `idx` (1, T) with `HeavyHitterCache(budget, n_recent)`: a prefill of `budget` tokens (nothing is
    evicted before the cache is full), then one decode step per token.

    Its findings say, for each layer and K/V head, whether the text's first token is still held at the end (it
    usually is: it is an attention sink in many heads, and H2O's summed scores favour the oldest tokens).
    """
    _check_model_tokens(model, idx)
    if check_int("budget", budget, 1) >= idx.shape[1]:
        raise ValueError(f"budget must be smaller than the text, got budget={budget} for {idx.shape[1]} tokens")
    cache = HeavyHitterCache(budget, n_recent)
    run = cache_losses(model, idx, cache, prefill=budget)
    settings = {"cache": "HeavyHitterCache", "budget": budget, "n_recent": cache.n_recent, "prefill": budget,
                "torch": torch.__version__}
    first_token_kept = [(positions[0] == 0).any(dim=-1).tolist() for positions in cache.positions]  # (layer, head)
    return RecordedRun(run, idx.clone(), settings, {"first_token_kept": first_token_kept})


def rolling_perplexity(losses: torch.Tensor, width: int) -> torch.Tensor:
    """exp of the mean loss over the last `width` positions (fewer at the start): how well the model does *now*.

    A running mean over the whole text would hide a collapse behind the good start; this shows it where it happens.
    """
    check_tensor("losses", losses, dim=1, what="a 1-D tensor of losses")
    width = check_int("width", width, 1)
    sums = torch.cat([losses.new_zeros(1), losses.double().cumsum(0)])
    end = torch.arange(1, len(losses) + 1)
    start = (end - width).clamp(min=0)
    return ((sums[end] - sums[start]) / (end - start)).exp()


@torch.inference_mode()
def first_token_attention(model: Llama, idx: torch.Tensor, from_position: int = 32) -> torch.Tensor:
    """(n_layer, n_head): the mean attention weight queries at `from_position` and later give the first token.

    StreamingLLM's "attention sinks": a trained model puts a large share of many queries' attention on the first
    token, whatever it says; evenly spread attention would give it 1 / (t + 1) at position t.
    """
    _check_model_tokens(model, idx)
    from_position = check_int("from_position", from_position, 1, idx.shape[1] - 1)
    shares = []

    def recording(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rope: RotaryEmbedding) -> torch.Tensor:
        t = torch.arange(q.shape[-2], device=q.device)
        scores = _grouped_scores(rope(q, t), rope(k, t)).masked_fill(t[None, :] > t[:, None], float("-inf"))
        weights = scores.softmax(dim=-1)  # (B, H, T, T)
        shares.append(weights[:, :, from_position:, 0].mean(dim=(0, 2)))  # (H,)
        return _grouped_mix(weights, v)

    forward_with_attention(model, idx, recording)
    return torch.stack(shares).double()
