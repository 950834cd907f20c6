"""kvlab.compressed_cache (chapters 08 and 09): quantised and evicting caches hold exactly what they claim.

Bytes are counted by hand in the comments, never copied from a run. What every cache does is in
test_cache_contract.py; this file holds what only a lossy cache does.
"""

from __future__ import annotations

import math
import re

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import kvlab
from kvlab import memory, quality
from kvlab.compressed_cache import (
    EvictionCache,
    HeavyHitterCache,
    QuantizedCache,
    SinkCache,
    SlidingWindowCache,
    dequantize,
    quantize,
    received_attention,
)
from tests.helpers import feed, position_keys, random_model


def quantized_bytes_by_hand(T, bits, G, R, n_layer, B, H, D, float_bytes=4):
    """Worked out from the cache's rule, independently of kvlab.memory."""
    n_q = 0
    held = 0
    for _ in range(T):  # token by token: the buffer gives up its oldest G tokens when it holds R + G
        held += 1
        if held >= R + G:
            n_q, held = n_q + G, held - G
    codes = 2 * n_q * D * bits // 8  # K and V codes
    floats = 2 * (n_q // G) * D + 2 * n_q + 2 * held * D  # key scale+zero per channel and group, value per token, K/V
    return n_layer * B * H * (codes + floats * float_bytes)


@settings(max_examples=40, deadline=None)
@given(bits=st.sampled_from([2, 4, 8]), dim=st.sampled_from([-1, -2]), rows=st.integers(1, 12),
       cols=st.sampled_from([4, 8, 12, 16]), scale=st.floats(1e-3, 1e3), seed=st.integers(0, 2**16))
def test_dequantized_numbers_are_within_half_a_step(bits, dim, rows, cols, scale, seed):
    x = torch.randn(2, rows, cols, generator=torch.Generator().manual_seed(seed)) * scale
    q = quantize(x, bits, dim)
    back = dequantize(q)
    assert back.shape == x.shape and back.dtype == x.dtype
    # one scale per slice along `dim`: (max - min) / (2^bits - 1), zero point = min
    expected_scale = (x.amax(dim, keepdim=True) - x.amin(dim, keepdim=True)) / (2**bits - 1)
    torch.testing.assert_close(q.scale, expected_scale)
    assert ((back - x).abs() <= q.scale / 2 + 1e-5 * scale).all()


def test_codes_are_packed_two_per_byte_at_4_bits():
    x = torch.arange(16.0).view(1, 16)  # 0..15 per token: min 0, max 15 -> scale 1 at 4 bits, codes == x
    q = quantize(x, 4, dim=-1)
    assert q.codes.dtype == torch.uint8 and q.codes.shape == (1, 8)
    assert q.codes[0, 0].item() == 0 | (1 << 4) and q.codes[0, 7].item() == 14 | (15 << 4)
    assert torch.equal(dequantize(q), x)  # exactly representable: no error at all
    # bytes: 8 bytes of codes + one fp32 scale + one fp32 zero point
    assert q.nbytes == 8 + 4 + 4
    q8 = quantize(x, 8, dim=-2)  # per channel over one token: every slice is constant -> scale 0, exact
    assert (q8.scale == 0).all() and torch.equal(dequantize(q8), x) and q8.nbytes == 16 + 16 * 4 * 2


def test_codes_are_packed_four_per_byte_at_2_bits():
    x = torch.tensor([[0.0, 1, 2, 3, 3, 2, 1, 0]])  # min 0, max 3 -> scale 1 at 2 bits, codes == x
    q = quantize(x, 2, dim=-1)
    assert q.codes.dtype == torch.uint8 and q.codes.shape == (1, 2)
    assert q.codes[0, 0].item() == 0 | (1 << 2) | (2 << 4) | (3 << 6)  # the first code in the lowest bits
    assert q.codes[0, 1].item() == 3 | (2 << 2) | (1 << 4) | (0 << 6)
    assert torch.equal(dequantize(q), x) and q.nbytes == 2 + 4 + 4


@pytest.mark.parametrize(("call", "error", "message"), [
    (lambda: quantize(torch.ones(2, 4), 3, -1), ValueError, "bits"),
    (lambda: quantize(torch.ones(2, 4), 16, -1), ValueError, "bits"),
    (lambda: quantize(torch.ones(2, 4), True, -1), TypeError, "bits"),  # a bool is not a width
    (lambda: quantize(torch.ones(2, 4, dtype=torch.long), 8, -1), TypeError, "floating-point"),
    (lambda: quantize([1.0, 2.0], 8, -1), TypeError, "floating-point"),
    (lambda: quantize(torch.ones(2, 3), 4, -1), ValueError, "packed 2 per byte along the last dim, so its length "
                                                            "must be a multiple of 2, got 3"),
    (lambda: quantize(torch.ones(2, 6), 2, -1), ValueError, "multiple of 4, got 6"),
    (lambda: quantize(torch.ones(2, 4), 1, -1), ValueError, "bits"),
    (lambda: quantize(torch.tensor([[1.0, math.inf]]), 8, -1), ValueError, "inf or nan"),
    (lambda: quantize(torch.ones(2, 4), 8, 2), ValueError, "dim"),
    (lambda: quantize(torch.ones(0, 4), 8, -1), ValueError, "empty"),
    (lambda: dequantize(torch.ones(2)), TypeError, "QuantizedTensor"),
])
def test_quantize_bad_input(call, error, message):
    with pytest.raises(error, match=re.escape(message)):
        call()


@settings(max_examples=40, deadline=None)
@given(bits=st.sampled_from([2, 4, 8]), G=st.integers(1, 6), R=st.integers(0, 6), T=st.integers(1, 30),
       chunk=st.integers(1, 7))
def test_quantized_cache_nbytes_is_the_hand_count(bits, G, R, T, chunk):
    cache = QuantizedCache(bits=bits, group_size=G, residual_length=R)
    feed(cache, T, chunk=chunk, n_layer=2)
    assert cache.get_seq_length() == cache.get_seq_length(1) == T
    assert cache.nbytes == quantized_bytes_by_hand(T, bits, G, R, n_layer=2, B=2, H=3, D=4)
    assert cache.nbytes == memory.quantized_kv_cache_bytes(2, 2, T, 3, 4, bits, group_size=G, residual_length=R,
                                                           float_bytes=4)


def test_quantized_cache_keeps_the_newest_tokens_exact_and_the_rest_within_half_a_step():
    torch.manual_seed(0)
    cache = QuantizedCache(bits=4, group_size=4, residual_length=3)
    all_k, all_v = [], []
    for _ in range(13):
        k, v = torch.randn(1, 2, 1, 8), torch.randn(1, 2, 1, 8)
        all_k.append(k)
        all_v.append(v)
        keys, values = cache.update(k, v, 0)
        assert torch.equal(keys[:, :, -1:], k)  # the new token is last and exact (residual_length >= 1)
    K, V = torch.cat(all_k, dim=2), torch.cat(all_v, dim=2)
    assert cache.n_quantized() == 8  # 13 tokens: groups flushed at 7 and 11 tokens held -> 8 quantised, 5 exact
    assert torch.equal(keys[:, :, 8:], K[:, :, 8:]) and torch.equal(values[:, :, 8:], V[:, :, 8:])
    for g, (qk, qv) in enumerate(cache.groups[0]):
        rows = slice(4 * g, 4 * g + 4)
        assert qk.scale.shape == (1, 2, 1, 8) and qv.scale.shape == (1, 2, 4, 1)  # keys per channel, values per token
        assert ((keys[:, :, rows] - K[:, :, rows]).abs() <= qk.scale / 2 + 1e-6).all()
        assert ((values[:, :, rows] - V[:, :, rows]).abs() <= qv.scale / 2 + 1e-6).all()


@pytest.mark.parametrize(("make", "message"), [
    (lambda: QuantizedCache(bits=3), "bits"),
    (lambda: QuantizedCache(bits=16), "bits"),
    (lambda: QuantizedCache(group_size=0), "group_size"),
    (lambda: QuantizedCache(residual_length=-1), "residual_length"),
])
def test_quantized_cache_bad_settings(make, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        make()


def test_quantized_cache_needs_a_head_dim_that_fills_whole_bytes():
    """Checked once, on a layer's first tokens (what every cache checks is in test_cache_contract.py)."""
    with pytest.raises(ValueError, match="2 per byte along head_dim, so its length must be a multiple of 2, got 5"):
        QuantizedCache(bits=4).update(torch.ones(1, 2, 1, 5), torch.ones(1, 2, 1, 5), 0)
    with pytest.raises(ValueError, match="4 per byte along head_dim, so its length must be a multiple of 4, got 6"):
        QuantizedCache(bits=2).update(torch.ones(1, 2, 1, 6), torch.ones(1, 2, 1, 6), 0)


def test_int8_cache_generates_the_same_text(hello):
    model, tokenizer = hello
    prompt = tokenizer.encode_batch("hello w")
    assert torch.equal(kvlab.generate(model, prompt, 100, cache=QuantizedCache(8)), kvlab.generate(model, prompt, 100))


@settings(max_examples=40, deadline=None)
@given(window=st.integers(1, 10), T=st.integers(1, 30), chunk=st.integers(1, 12))
def test_sliding_window_holds_the_last_window_positions(window, T, chunk):
    cache = SlidingWindowCache(window)
    for start in range(0, T, chunk):
        n = min(chunk, T - start)
        held_before = min(start, window)
        keys, values = cache.update(position_keys(start, n), -position_keys(start, n), 0)
        # returned: what was held, then the new tokens, last
        assert keys[0, 0, :, 0].tolist() == list(range(start - held_before, start + n))
        assert torch.equal(values, -keys)
    expected = list(range(max(T - window, 0), T))
    assert cache.kept_positions() == expected and cache.kept_positions(0, 1, 2) == expected
    assert cache.keys[0][1, 2, :, 0].tolist() == expected  # the keys themselves, not just the record
    assert cache.get_seq_length() == T and cache.get_max_cache_shape() == window
    assert cache.nbytes == 2 * 2 * 3 * len(expected) * 4 * 4  # K and V · B · H · tokens · D · fp32
    assert cache.keys[0].untyped_storage().nbytes() == cache.keys[0].nbytes  # nothing evicted stays allocated


@settings(max_examples=40, deadline=None)
@given(window=st.integers(2, 10), data=st.data(), T=st.integers(1, 30))
def test_sink_cache_holds_the_first_n_sink_and_the_last_positions(window, data, T):
    n_sink = data.draw(st.integers(0, window - 1))
    cache = SinkCache(window, n_sink=n_sink)
    feed(cache, T)
    expected = list(range(T)) if T <= window else list(range(n_sink)) + list(range(T - (window - n_sink), T))
    assert cache.kept_positions() == expected == cache.keys[0][0, 0, :, 0].tolist()
    assert cache.nbytes == 2 * 2 * 3 * len(expected) * 4 * 4
    if n_sink == 0:  # no sinks: exactly a sliding window
        window_cache = SlidingWindowCache(window)
        feed(window_cache, T)
        assert torch.equal(window_cache.keys[0], cache.keys[0])


def test_eviction_with_the_model_holds_fixed_memory_and_keeps_positions(hello):
    model, tokenizer = hello
    prompt = tokenizer.encode_batch("hello w")
    per_token = 2 * 4 * 4 * 16 * 4  # K and V · layers · heads · head_dim · fp32 = 2,048 bytes
    for cache in (SlidingWindowCache(16), SinkCache(16, 4), HeavyHitterCache(16)):
        tokens, held = quality.generate_with_memory(model, prompt, 100, cache)
        assert tokens.shape == (1, 107) and len(held) == 100
        assert held[0] == 7 * per_token and held[-1] == 16 * per_token == cache.nbytes == 32_768
        assert max(held) == 16 * per_token  # never more than the budget between steps
        assert cache.get_seq_length() == 106 and all(cache.get_seq_length(i) == 106 for i in range(4))


def test_prefill_longer_than_the_budget_is_attended_in_full(hello):
    model, tokenizer = hello
    prompt = tokenizer.encode_batch("the cache stores keys and values\nhello")  # 38 tokens > 16
    with torch.inference_mode():
        reference = model(prompt)
        for cache in (SlidingWindowCache(16), SinkCache(16, 4), HeavyHitterCache(16)):
            with cache.attach(model) if isinstance(cache, HeavyHitterCache) else torch.inference_mode():
                logits = model(prompt, cache)
            torch.testing.assert_close(logits, reference, atol=1e-5, rtol=0)
            assert cache.keys[0].shape[2] == 16 and cache.get_seq_length() == 38


@pytest.mark.parametrize(("make", "error", "message"), [
    (lambda: SlidingWindowCache(0), ValueError, "window"),
    (lambda: SlidingWindowCache(-4), ValueError, "window"),
    (lambda: SlidingWindowCache(2.5), TypeError, "window"),
    (lambda: SlidingWindowCache(True), TypeError, "window"),
    (lambda: SinkCache(0), ValueError, "window"),
    (lambda: SinkCache(4, n_sink=4), ValueError, "n_sink must be smaller than window"),
    (lambda: SinkCache(4, n_sink=6), ValueError, "n_sink must be smaller than window"),
    (lambda: SinkCache(4, n_sink=-1), ValueError, "n_sink"),
    (lambda: HeavyHitterCache(0), ValueError, "budget"),
    (lambda: HeavyHitterCache(8, n_recent=9), ValueError, "n_recent must be at most budget"),
    (lambda: HeavyHitterCache(8, n_recent=-1), ValueError, "n_recent"),
    (lambda: EvictionCache(4), TypeError, "abstract"),  # which tokens to keep is a subclass's choice: `_keep`
])
def test_eviction_bad_settings(make, error, message):
    with pytest.raises(error, match=re.escape(message)):
        make()


def test_heavy_hitter_scores_are_the_attention_each_key_received():
    """Without eviction, scores = column sums of the full causal attention matrix, summed over each K/V group."""
    torch.manual_seed(0)
    B, H, H_kv, T, D = 2, 4, 2, 9, 8
    q, k = torch.randn(B, H, T, D), torch.randn(B, H_kv, T, D)
    cache = HeavyHitterCache(budget=T)
    for t in range(T):
        cache.record_queries(q[:, :, t:t + 1], 0)
        cache.update(k[:, :, t:t + 1], k[:, :, t:t + 1], 0)
    weights = (q @ k.repeat_interleave(2, dim=1).transpose(-2, -1) / math.sqrt(D)).masked_fill(
        ~torch.ones(T, T, dtype=torch.bool).tril(), float("-inf")).softmax(-1)  # (B, H, T, T)
    expected = weights.sum(dim=2).view(B, H_kv, 2, T).sum(dim=2)
    torch.testing.assert_close(cache.scores[0], expected)
    # the same from one multi-token call (a prefill): the causal mask inside received_attention
    torch.testing.assert_close(received_attention(q, k), expected)


def test_heavy_hitter_keeps_the_keys_that_receive_most_attention():
    # D = 1, every query is 1: a key of 8 gets weight e^8 against e^0 for the others, so positions 1 and 2 collect
    # about half of every later query's attention each, far more than position 0 (1 from its own query, then ~0)
    B, H, T = 1, 2, 12
    special = {1, 2}
    cache = HeavyHitterCache(budget=4, n_recent=2)
    for t in range(T):
        cache.record_queries(torch.ones(B, H, 1, 1), 0)
        k = torch.full((B, H, 1, 1), 8.0 if t in special else 0.0)
        keys, _ = cache.update(k, k, 0)
        assert keys.shape[2] == min(t + 1, 4) + (1 if t >= 4 else 0)  # budget held + the new token
    assert cache.kept_positions(0, 0, 0) == cache.kept_positions(0, 0, 1) == [1, 2, 10, 11]


@settings(max_examples=25, deadline=None)
@given(budget=st.integers(2, 8), n_recent=st.integers(0, 8), T=st.integers(1, 20), seed=st.integers(0, 999))
def test_heavy_hitter_evicts_the_lowest_scores(budget, n_recent, T, seed):
    n_recent = min(n_recent, budget)
    gen = torch.Generator().manual_seed(seed)
    cache = HeavyHitterCache(budget, n_recent)
    for t in range(T):
        q, k = torch.randn(1, 2, 1, 4, generator=gen), torch.randn(1, 2, 1, 4, generator=gen)
        cache.record_queries(q, 0)
        held = cache.keys[0] if cache.keys else torch.zeros(1, 2, 0, 4)
        scores_before = cache.scores[0] if cache.scores else torch.zeros(1, 2, 0)
        positions_before = cache.positions[0] if cache.positions else torch.zeros(1, 2, 0, dtype=torch.long)
        cache.update(k, k, 0)
        all_keys = torch.cat([held, k], dim=2)
        scores = torch.cat([scores_before, torch.zeros(1, 2, 1)], dim=2) + received_attention(q, all_keys)
        positions = torch.cat([positions_before, torch.full((1, 2, 1), t)], dim=2)
        n = all_keys.shape[2]
        for h in range(2):
            if n <= budget:
                expected = positions[0, h].tolist()
            else:
                n_old = n - n_recent
                heavy = scores[0, h, :n_old].topk(budget - n_recent).indices
                expected = sorted(positions[0, h, heavy].tolist() + positions[0, h, n_old:].tolist())
            assert cache.kept_positions(0, 0, h) == expected
    if n_recent == budget:  # no heavy slots: a sliding window
        assert cache.kept_positions() == list(range(max(T - budget, 0), T))


def test_heavy_hitter_attach_and_detach(hello):
    model, tokenizer = hello
    cache = HeavyHitterCache(8)
    with pytest.raises(RuntimeError, match="needs the queries"):
        with torch.inference_mode():
            model(tokenizer.encode_batch("hello"), cache)
    with pytest.raises(RuntimeError, match="cache.attach"):
        with HeavyHitterCache(8):
            pass
    with pytest.raises(TypeError, match="kvlab.TinyGPT"):
        HeavyHitterCache(8).attach(torch.nn.Linear(2, 2))
    fresh = HeavyHitterCache(8)
    with fresh.attach(model):
        assert fresh.attached and all(len(b.attn.qkv._forward_hooks) == 1 for b in model.blocks)
        with pytest.raises(RuntimeError, match="already attached"):
            fresh.attach(model)
        kvlab.generate(model, tokenizer.encode_batch("hello w"), 20, cache=fresh)
    assert not fresh.attached and all(len(b.attn.qkv._forward_hooks) == 0 for b in model.blocks)
    assert fresh.get_seq_length() == 26 and fresh.keys[0].shape[2] == 8
    with pytest.raises(ValueError, match="q"):
        fresh.record_queries(torch.ones(2, 3), 0)
    with pytest.raises(TypeError, match="q"):
        fresh.record_queries(torch.ones(1, 4, 1, 16, dtype=torch.long), 0)


def test_heavy_hitter_reorder_moves_each_rows_scores_with_it():
    """The contract's reorder test runs a model whose scores rarely change the choice; here they decide it."""
    cache = HeavyHitterCache(budget=3, n_recent=1)
    for t in range(4):  # row 0's heavy hitter is position 1, row 1's is position 2
        cache.record_queries(torch.ones(2, 1, 1, 1), 0)
        k = torch.tensor([[[[8.0 if t == 1 else 0.0]]], [[[8.0 if t == 2 else 0.0]]]])  # (2, 1, 1, 1)
        cache.update(k, k, 0)
    before = [cache.scores[0][b].clone() for b in range(2)]
    cache.reorder_cache(torch.tensor([1, 0]))
    assert torch.equal(cache.scores[0][0], before[1]) and torch.equal(cache.scores[0][1], before[0])
    assert cache.kept_positions(0, 0) == [0, 2, 3] and cache.kept_positions(0, 1) == [0, 1, 3]


def test_heavy_hitter_with_grouped_query_attention():
    model = random_model(n_kv_head=2)
    cache = HeavyHitterCache(6)
    with torch.inference_mode(), cache.attach(model):
        for t in range(10):
            model(torch.tensor([[t % 37]]), cache)
    assert cache.keys[0].shape == (1, 2, 6, 8) and cache.scores[0].shape == (1, 2, 6)


def test_heavy_hitter_cache_stores_nothing_when_it_refuses_an_update(hello):
    """The 'not attached' error used to come after layer 0 had stored its tokens, so a retry saw them twice."""
    model, tokenizer = hello
    idx = tokenizer.encode_batch("the cache trades")
    cache = HeavyHitterCache(8)
    with pytest.raises(RuntimeError, match="cache.attach"):
        model(idx, cache)
    assert cache.get_seq_length() == 0 and cache.nbytes == 0
    with cache.attach(model), torch.inference_mode():
        logits = model(idx, cache)
    assert [cache.get_seq_length(layer) for layer in range(4)] == [idx.shape[1]] * 4
    torch.testing.assert_close(logits, model(idx), rtol=0, atol=1e-5)  # the prompt fits the budget's prefill


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_quantized_cache_refusing_a_token_keeps_nothing_of_it(bad):
    """A key the quantizer refuses raises, and the cache holds exactly what it held before (it once kept it)."""
    cache = QuantizedCache(bits=8)
    first = torch.randn(1, 2, cache.residual_length + cache.group_size - 1, 16)
    cache.update(first, first.clone(), 0)
    before = (cache.get_seq_length(), cache.n_quantized(), cache.nbytes)
    new = torch.randn(1, 2, cache.group_size + 1, 16)
    new[0, 0, 0, 0] = bad  # lands in the next group to be quantized
    with pytest.raises(ValueError, match="inf or nan"):
        cache.update(new, new.clone(), 0)
    assert (cache.get_seq_length(), cache.n_quantized(), cache.nbytes) == before
    good = torch.randn(1, 2, 1, 16)
    keys, _ = cache.update(good, good.clone(), 0)  # and it goes on from there
    assert keys.shape[-2] == before[0] + 1 and torch.equal(keys[:, :, -1:], good)


@pytest.mark.parametrize("window", [1, 4])
def test_a_sliding_window_of_w_is_transformers_window_of_w_plus_1(window):
    """kvlab counts the tokens held between steps, transformers (and Mistral) the tokens a step attends to, its own
    included: after each decode step both hand attention the same keys and values."""
    cache_utils = pytest.importorskip("transformers.cache_utils")
    theirs = cache_utils.DynamicSlidingWindowLayer(sliding_window=window + 1)
    ours = SlidingWindowCache(window)
    generator = torch.Generator().manual_seed(0)
    seen = 0
    for n_new in (3, 1, 1, 1, 1, 1, 1):  # a prefill, then decode steps past the window
        k, v = (torch.randn(1, 2, n_new, 4, generator=generator) for _ in range(2))
        their_keys, their_values = theirs.update(k, v)
        our_keys, our_values = ours.update(k, v, 0)
        seen += n_new
        if n_new == 1:  # decode steps (a prefill returns all its tokens in both)
            assert our_keys.shape[-2] == min(seen, window + 1)
            assert torch.equal(our_keys, their_keys) and torch.equal(our_values, their_values)
    assert ours.keys[0].shape[-2] == window and theirs.keys.shape[-2] == window  # held between steps
