"""kvlab.llama on small random models: the cache equivalences, rotary positions, StreamingLLM's renumbering, errors.

The real SmolLM2 weights, and the comparison with transformers, are in tests/test_smollm2.py.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import kvlab
from kvlab.cache import DynamicCache, StaticCache
from kvlab.compressed_cache import HeavyHitterCache, SinkCache, SlidingWindowCache, received_attention
from kvlab.llama import Llama, LlamaConfig, RotaryEmbedding
from tests.test_cache_contract import REGISTRY

CONFIG = LlamaConfig(vocab_size=37, n_layer=2, n_head=4, n_kv_head=2, d_model=32, d_ff=48, max_seq_len=64,
                     rope_theta=100.0)  # a small theta: positions 0..63 turn the slow pairs too


def small_model(seed: int = 0, **changes) -> Llama:
    torch.manual_seed(seed)
    return Llama(LlamaConfig(**{**CONFIG.__dict__, **changes})).eval()


def tokens(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    return torch.randint(CONFIG.vocab_size, shape, generator=torch.Generator().manual_seed(seed))


def run(model: Llama, idx: torch.Tensor, cache=None) -> torch.Tensor:
    """`model(idx, cache)`, attached for the call if the cache reads the model's queries (H2O, FastGen)."""
    with torch.inference_mode():
        if hasattr(cache, "attach"):
            with cache.attach(model):
                return model(idx, cache)
        return model(idx, cache)


# --- the cache changes no number ---

def test_cached_logits_equal_uncached_ones_prefill_chunks_and_decode():
    model, sequence = small_model(), tokens((2, 20), seed=1)
    full = run(model, sequence)
    cache = DynamicCache()
    pieces = [run(model, sequence[:, :7], cache), run(model, sequence[:, 7:12], cache)]  # prefill, then a chunk
    pieces += [run(model, sequence[:, t:t + 1], cache) for t in range(12, 20)]  # decode steps
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=1e-5, rtol=1e-5)
    assert cache.get_seq_length() == 20


@pytest.mark.parametrize("name", list(REGISTRY))
def test_every_kvlab_cache_drives_the_llama_model(name):
    """Lossless caches give the uncached logits; lossy ones run (prefill, decode steps) and count every token."""
    entry, model = REGISTRY[name], small_model()
    cache = entry.make(CONFIG, 3)
    sequence = tokens((3, 9), seed=2)
    logits = [run(model, sequence[:, :5], cache)] + [run(model, sequence[:, t:t + 1], cache) for t in range(5, 9)]
    logits = torch.cat(logits, dim=1)
    assert cache.get_seq_length() == 9 and bool(torch.isfinite(logits).all())
    if entry.lossless:
        torch.testing.assert_close(logits, run(model, sequence), atol=1e-5, rtol=1e-5)


def test_generate_drives_the_llama_model_cached_and_uncached():
    model, prompt = small_model(), tokens((2, 4), seed=3)
    cached = kvlab.generate(model, prompt, 12)
    assert torch.equal(cached, kvlab.generate(model, prompt, 12, use_cache=False))
    static = StaticCache(model.config, batch_size=2, max_cache_len=16)
    assert torch.equal(cached, kvlab.generate(model, prompt, 12, cache=static))


def test_left_padded_rows_compute_what_each_row_computes_alone():
    model = small_model()
    short, long = tokens((1, 5), seed=4), tokens((1, 9), seed=5)
    batch = torch.cat([torch.cat([torch.zeros(1, 4, dtype=torch.long), short], dim=1), long])  # (2, 9)
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[0, :4] = 0
    logits = run_masked(model, batch, mask)
    torch.testing.assert_close(logits[0, 4:], run(model, short)[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(logits[1], run(model, long)[0], atol=1e-5, rtol=1e-5)


def run_masked(model: Llama, idx: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return model(idx, attention_mask=attention_mask)


def test_the_model_trains_outside_inference_mode():
    """The in-place rotation of q and k must leave autograd able to differentiate through it."""
    model, sequence = small_model(), tokens((2, 8), seed=10)
    loss = F.cross_entropy(model(sequence[:, :-1]).flatten(0, 1), sequence[:, 1:].flatten())
    loss.backward()
    assert all(p.grad is not None and bool(torch.isfinite(p.grad).all()) for p in model.parameters())


# --- rotary positions ---

def rotate_reference(x: torch.Tensor, positions: torch.Tensor, theta: float) -> torch.Tensor:
    """RoPE written as complex multiplication: dims (i, i + D/2) are one complex number, turned by pos·theta^(-2i/D).

    Independent of `RotaryEmbedding`'s cos/sin tables and `rotate_half`: the tests compare the two.
    """
    half = x.shape[-1] // 2
    angles = positions.double()[:, None] * theta ** (-torch.arange(half, dtype=torch.float64) * 2 / x.shape[-1])
    z = torch.complex(x[..., :half].double(), x[..., half:].double()) * torch.polar(torch.ones_like(angles), angles)
    return torch.cat([z.real, z.imag], dim=-1).to(x.dtype)


def test_rotary_embedding_is_a_rotation_of_dimension_pairs_i_and_i_plus_half():
    rope = RotaryEmbedding(head_dim=8, max_seq_len=32, theta=100.0)
    x, positions = torch.randn(2, 3, 5, 8), torch.tensor([0, 1, 7, 20, 31])
    torch.testing.assert_close(rope(x, positions), rotate_reference(x, positions, 100.0), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(rope(x, positions).norm(dim=-1), x.norm(dim=-1))  # lengths are kept


def test_rotated_scores_depend_only_on_the_distance_between_tokens():
    """What RoPE is for: q at position m and k at position n score q·k as a function of m - n alone."""
    rope = RotaryEmbedding(head_dim=8, max_seq_len=64, theta=100.0)
    q, k = torch.randn(1, 1, 1, 8), torch.randn(1, 1, 1, 8)
    scores = [(rope(q, torch.tensor([m])) * rope(k, torch.tensor([m - 3]))).sum() for m in (3, 10, 40)]
    torch.testing.assert_close(torch.stack(scores), scores[0].expand(3), atol=1e-5, rtol=1e-5)


# --- StreamingLLM's renumbering: keys stored unrotated, rotated at their slot in the cache ---

class TextPositionSinkCache(SinkCache):
    stores_unrotated_keys = False  # the transformers way: keys rotated once, at their position in the text


def test_the_sink_cache_asks_for_streaming_llm_positions():
    assert SinkCache.stores_unrotated_keys and not getattr(SlidingWindowCache, "stores_unrotated_keys", False)


def one_layer_reference(model: Llama, fed: torch.Tensor, attended: list[int], positions: list[int]) -> torch.Tensor:
    """Last-token logits of a one-layer model, written out by hand: the last token of `fed` (1, T) attends to the
    tokens at `attended` (indices into `fed`, itself last), rotated to `positions`, with the query at positions[-1]."""
    c, block = model.config, model.blocks[0]
    h = block.norm_1(model.wte.weight[fed[0]])  # (T, C): one layer, so each token's K/V depends on itself alone
    q, k, v = F.linear(h, block.attn.qkv.weight).split(block.attn.split_sizes, dim=-1)
    D, group = c.head_dim, c.n_head // c.n_kv_head
    q = q[-1].view(c.n_head, D)
    k, v = k[attended].view(-1, c.n_kv_head, D), v[attended].view(-1, c.n_kv_head, D)  # (S, H_kv, D)
    where = torch.tensor(positions)
    q = rotate_reference(q[:, None], where[-1:], c.rope_theta)[:, 0]  # (H, D)
    k = rotate_reference(k.transpose(0, 1), where, c.rope_theta)  # (H_kv, S, D)
    heads = []
    for head in range(c.n_head):  # query head h reads K/V head h // group
        weights = (k[head // group] @ q[head] / math.sqrt(D)).softmax(dim=-1)  # (S,)
        heads.append(weights @ v[:, head // group])
    x = model.wte.weight[fed[0, -1]] + block.attn.proj(torch.cat(heads))
    x = x + block.mlp(block.norm_2(x))
    return F.linear(model.norm(x), model.wte.weight)


@pytest.mark.parametrize("streaming", [True, False], ids=["slots-in-cache", "positions-in-text"])
def test_sink_cache_positions_match_a_direct_computation(streaming):
    """Window 6 with 2 sinks over 14 tokens: each step attends to the sinks, the newest held tokens and itself.
    StreamingLLM rotates them at their slots 0..n-1; the transformers way at their positions in the text."""
    model, fed = small_model(n_layer=1), tokens((1, 14), seed=6)
    window, n_sink = 6, 2
    cache = SinkCache(window, n_sink) if streaming else TextPositionSinkCache(window, n_sink)
    for t in range(14):
        logits = run(model, fed[:, t:t + 1], cache)[0, -1]
        held = list(range(t)) if t <= window else list(range(n_sink)) + list(range(t - window + n_sink, t))
        attended = held + [t]
        positions = list(range(len(attended))) if streaming else attended
        with torch.inference_mode():
            expected = one_layer_reference(model, fed[:, :t + 1], attended, positions)
        torch.testing.assert_close(logits, expected, atol=1e-4, rtol=1e-4)


def test_streaming_sink_cache_changes_nothing_before_it_evicts():
    model, sequence = small_model(), tokens((2, 10), seed=7)
    cache = SinkCache(window=12, n_sink=2)
    logits = torch.cat([run(model, sequence[:, :4], cache)] + [run(model, sequence[:, t:t + 1], cache)
                                                               for t in range(4, 10)], dim=1)
    torch.testing.assert_close(logits, run(model, sequence), atol=1e-5, rtol=1e-5)
    block = model.blocks[0]
    with torch.inference_mode():  # layer 0's keys, straight from the projection: the cache holds them unrotated
        raw_keys = F.linear(block.norm_1(model.wte.weight[sequence]), block.attn.qkv.weight).split(
            block.attn.split_sizes, dim=-1)[1]  # (B, T, H_kv·D)
    torch.testing.assert_close(cache.keys[0], raw_keys.view(2, 10, CONFIG.n_kv_head, -1).transpose(1, 2))


def test_heavy_hitter_scores_use_the_rotated_queries_and_keys():
    """H2O's hook reads the `qkv` output, which the model rotates in place: scores are the model's attention."""
    model, fed = small_model(n_layer=1), tokens((1, 5), seed=8)
    cache = HeavyHitterCache(budget=8, n_recent=2)
    run(model, fed, cache)
    block, c = model.blocks[0], model.config
    with torch.inference_mode():
        q, k, _ = F.linear(block.norm_1(model.wte.weight[fed[0]]), block.attn.qkv.weight).split(
            block.attn.split_sizes, dim=-1)
        where = torch.arange(5)
        q = rotate_reference(q.view(5, c.n_head, c.head_dim).transpose(0, 1), where, c.rope_theta)[None]
        k = rotate_reference(k.view(5, c.n_kv_head, c.head_dim).transpose(0, 1), where, c.rope_theta)[None]
    torch.testing.assert_close(cache.scores[0], received_attention(q, k), atol=1e-5, rtol=1e-5)


# --- bad input ---

def test_bad_input_gets_clear_errors():
    model = small_model()
    with pytest.raises(ValueError, match="token id 37 in idx is out of range: ids must be in 0..36"):
        run(model, torch.tensor([[1, 37]]))
    with pytest.raises(ValueError, match="exceeds max_seq_len=64"):
        run(model, torch.zeros(1, 65, dtype=torch.long))
    with pytest.raises(TypeError, match="idx"):
        run(model, torch.zeros(1, 3))
    other = LlamaConfig(**{**CONFIG.__dict__, "n_head": 8, "n_kv_head": 4})  # another head count and size
    for cache in (StaticCache(other, 1, 16), kvlab.paged_cache.PagedCache(kvlab.paged_cache.BlockPool(other, 8, 4))):
        with pytest.raises(ValueError, match=r"key shape \(1, 2, 3, 8\) does not fit"):
            run(model, tokens((1, 3), seed=9), cache)


@pytest.mark.parametrize(("changes", "error", "match"), [
    ({"n_head": 5}, ValueError, "divisible by n_head"),
    ({"n_head": 32}, ValueError, "even head_dim"),  # head_dim 1: rotations need pairs
    ({"n_kv_head": 3}, ValueError, "divisible by n_kv_head"),
    ({"rope_theta": -1.0}, ValueError, "rope_theta"),
    ({"d_ff": 0}, ValueError, "d_ff"),
    ({"n_layer": 2.0}, TypeError, "n_layer"),
])
def test_config_refuses_impossible_sizes(changes, error, match):
    with pytest.raises(error, match=match):
        LlamaConfig(**{**CONFIG.__dict__, **changes})
