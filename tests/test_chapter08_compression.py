"""Chapter 08 (compressing the cache): quantised and evicting caches, fewer K/V heads, MLA, and the quality measure.

Bytes are counted by hand in the comments, never copied from a run. Quality bounds are the ones the notebook states
(chosen there with a margin from its measurements); the runs are deterministic, so a bound that fails means the
cache or the model changed.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import kvlab
from kvlab import memory, plots, quality
from kvlab.compressed_cache import (EvictionCache, HeavyHitterCache, QuantizedCache, SinkCache,
                                    SlidingWindowCache, dequantize, quantize, received_attention)
from kvlab.corpus import make_corpus
from kvlab.hello import HELLO_CONFIG, HELLO_KV_HEAD_WEIGHTS, load_kv_head_model
from kvlab.train_hello import mean_pool_kv_heads, save_kv_head_models, train_kv_head_models

from conftest import assert_printed_above, random_model


NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "08_compressing_the_cache.ipynb"


@pytest.fixture(scope="module")
def held_out(hello):
    """The notebook's text (8 × 128 held-out tokens) and the full cache's run over it, computed once."""
    model, tokenizer = hello
    tokens = quality.held_out_tokens(tokenizer, n_sequences=8, seq_len=128)
    return tokens, quality.decode_token_by_token(model, tokens, kvlab.DynamicCache())


def position_keys(start: int, n: int, B: int = 2, H: int = 3, D: int = 4) -> torch.Tensor:
    """(B, H, n, D) keys whose every number is the token's position: what a cache holds can be read off."""
    return torch.arange(start, start + n, dtype=torch.float32).view(1, 1, n, 1).expand(B, H, n, D).clone()


def feed(cache, T: int, chunk: int = 1, n_layer: int = 1, **shape):
    """Feed positions 0..T-1 to every layer in chunks; return what the last update of layer 0 returned."""
    returned = None
    for start in range(0, T, chunk):
        n = min(chunk, T - start)
        for layer in range(n_layer):
            k = position_keys(start, n, **shape)
            out = cache.update(k, -k, layer)
            if layer == 0:
                returned = out
    return returned


# --- quantize / dequantize --------------------------------------------------------------------------------------

@settings(max_examples=40, deadline=None)
@given(bits=st.sampled_from([4, 8]), dim=st.sampled_from([-1, -2]), rows=st.integers(1, 12),
       cols=st.sampled_from([2, 4, 6, 16]), scale=st.floats(1e-3, 1e3), seed=st.integers(0, 2**16))
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


def test_keys_per_channel_beat_per_token_on_the_hello_model(hello, held_out):
    """The notebook's table: per-channel keys have less error than per-token keys (4 bits: 0.032 vs 0.057)."""
    model, _ = hello
    tokens, _ = held_out
    cache = kvlab.DynamicCache()
    with torch.inference_mode():
        model(tokens, cache)
    keys = cache.keys[0].reshape(8, 4, 8, 16, 16)  # groups of 16 tokens
    per_channel, per_token = quality.quantization_error(keys, 4, -2), quality.quantization_error(keys, 4, -1)
    assert per_channel < 0.6 * per_token
    assert round(per_channel, 3) == 0.032 and round(per_token, 3) == 0.057


@pytest.mark.parametrize(("call", "error", "message"), [
    (lambda: quantize(torch.ones(2, 4), 3, -1), ValueError, "bits"),
    (lambda: quantize(torch.ones(2, 4), 16, -1), ValueError, "bits"),
    (lambda: quantize(torch.ones(2, 4), True, -1), TypeError, "bits"),  # a bool is not a width
    (lambda: quantize(torch.ones(2, 4, dtype=torch.long), 8, -1), TypeError, "floating-point"),
    (lambda: quantize([1.0, 2.0], 8, -1), TypeError, "floating-point"),
    (lambda: quantize(torch.ones(2, 3), 4, -1), ValueError, "must be even"),
    (lambda: quantize(torch.tensor([[1.0, math.inf]]), 8, -1), ValueError, "inf or nan"),
    (lambda: quantize(torch.ones(2, 4), 8, 2), ValueError, "dim"),
    (lambda: quantize(torch.ones(0, 4), 8, -1), ValueError, "empty"),
    (lambda: dequantize(torch.ones(2)), TypeError, "QuantizedTensor"),
])
def test_quantize_bad_input(call, error, message):
    with pytest.raises(error, match=re.escape(message)):
        call()


# --- QuantizedCache -----------------------------------------------------------------------------------------------

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
@given(bits=st.sampled_from([4, 8]), G=st.integers(1, 6), R=st.integers(0, 6), T=st.integers(1, 30),
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
    (lambda: QuantizedCache(bits=2), "bits"),
    (lambda: QuantizedCache(bits=16), "bits"),
    (lambda: QuantizedCache(group_size=0), "group_size"),
    (lambda: QuantizedCache(residual_length=-1), "residual_length"),
])
def test_quantized_cache_bad_settings(make, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        make()


def test_quantized_cache_needs_an_even_head_dim_at_4_bits():
    """Checked once, on a layer's first tokens (what every cache checks is in test_cache_contract.py)."""
    with pytest.raises(ValueError, match="head_dim must be even"):
        QuantizedCache(bits=4).update(torch.ones(1, 2, 1, 5), torch.ones(1, 2, 1, 5), 0)


def test_quantized_cache_bytes_in_the_notebook(hello, held_out):
    """950,272 bytes after 128 tokens (45.3% of 2,097,152), 1,097,728 at the peak (52.3%)."""
    model, _ = hello
    tokens, full = held_out
    # per layer, row and head: n_q = 112, codes 2·112·16 = 3,584 bytes; floats 2·7·16 + 2·112 + 2·16·16 = 960 -> 3,840
    assert 4 * 8 * 4 * (3584 + 3840) == 950_272
    # peak at 127 tokens: n_q = 96, codes 3,072; floats 2·6·16 + 2·96 + 2·31·16 = 1,376 -> 5,504
    assert 4 * 8 * 4 * (3072 + 5504) == 1_097_728
    assert full.peak_nbytes == 2 * 4 * 8 * 128 * 64 * 4 == 2_097_152
    cache = QuantizedCache(bits=8, group_size=16, residual_length=16)
    run = quality.decode_token_by_token(model, tokens, cache)
    assert cache.nbytes == 950_272 and run.peak_nbytes == 1_097_728


@pytest.mark.parametrize("residual_length", [16, 0])
@pytest.mark.parametrize(("bits", "min_top1", "max_logit", "max_loss"), [(8, 0.995, 0.25, 0.001), (4, 0.98, 3.0, 0.01)])
def test_quantized_quality_stays_within_the_notebooks_bounds(hello, held_out, bits, residual_length, min_top1,
                                                             max_logit, max_loss):
    model, _ = hello
    tokens, full = held_out
    report = quality.compare_to_full_cache(model, tokens, lambda: QuantizedCache(bits, 16, residual_length), full=full)
    assert report.top1_agreement >= min_top1
    assert 0 < report.max_abs_logit_diff <= max_logit  # > 0: the cache really is lossy
    assert report.cross_entropy_increase <= max_loss
    assert report.cache_nbytes < full.peak_nbytes / 1.9


def test_int8_cache_generates_the_same_text(hello):
    model, tokenizer = hello
    prompt = tokenizer.encode_batch("hello w")
    assert torch.equal(kvlab.generate(model, prompt, 100, cache=QuantizedCache(8)), kvlab.generate(model, prompt, 100))


# --- eviction caches: which positions they hold -------------------------------------------------------------------

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


def test_quantized_cache_example_from_the_exercise(hello):
    # 40 tokens, G = R = 16: 16 quantised, 24 in fp32. Per layer and head: codes 2·16·16/2 = 256 bytes; floats
    # 2·16 (key scales) + 2·16 (value scales) + 2·24·16 (window) = 832 -> 3,328 bytes; 4 layers × 4 heads
    model, tokenizer = hello
    cache = QuantizedCache(bits=4, group_size=16, residual_length=16)
    quality.decode_token_by_token(model, quality.held_out_tokens(tokenizer, 1, 40), cache)
    assert cache.nbytes == 4 * 4 * (256 + 3328) == 57_344


def test_sink_cache_example_from_the_exercise():
    cache = SinkCache(window=6, n_sink=2)
    feed(cache, 15)
    assert cache.kept_positions() == [0, 1, 11, 12, 13, 14]


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


# --- the heavy-hitter cache ---------------------------------------------------------------------------------------

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


# --- quality ------------------------------------------------------------------------------------------------------

def test_full_cache_compared_with_itself_loses_nothing(hello, held_out):
    model, _ = hello
    tokens, full = held_out
    report = quality.compare_to_full_cache(model, tokens, kvlab.DynamicCache)
    assert report.top1_agreement == 1.0 and report.max_abs_logit_diff == 0.0
    assert report.cache_nbytes == report.full_nbytes == 2_097_152 and report.n_predictions == 8 * 127
    assert report.memory_ratio == 1.0 and report.cross_entropy_increase == 0.0
    # token by token with a cache == one pass without (the notebook's 0.2913)
    assert report.full_cross_entropy == pytest.approx(quality.cross_entropy(model, tokens), abs=1e-5)
    assert round(report.full_cross_entropy, 4) == 0.2913
    assert "(+0.0000)" in report.summary()
    static = quality.compare_to_full_cache(model, tokens, lambda: kvlab.StaticCache(model.config, 8, 128), full=full)
    assert static.top1_agreement == 1.0 and static.max_abs_logit_diff <= 1e-4


def test_compare_logits_by_hand():
    tokens = torch.tensor([[0, 1, 2]])
    full = torch.tensor([[[2.0, 1.0, 0.0], [0.0, 2.0, 1.0], [0.0, 0.0, 0.0]]])
    mine = full.clone()
    mine[0, 1] = torch.tensor([0.0, 1.0, 3.0])  # position 1 now prefers token 2: one of two predictions flips
    report = quality.compare_logits(mine, full, tokens, cache_nbytes=10, full_nbytes=40)
    assert report.n_predictions == 2 and report.top1_agreement == 0.5
    assert report.max_abs_logit_diff == 2.0 and report.memory_ratio == 0.25
    targets = tokens[0, 1:]
    assert report.cross_entropy == pytest.approx(F.cross_entropy(mine[0, :2], targets).item())
    assert report.full_cross_entropy == pytest.approx(F.cross_entropy(full[0, :2], targets).item())


def test_held_out_tokens_are_line_starts_of_another_seed(hello):
    _, tokenizer = hello
    tokens = quality.held_out_tokens(tokenizer, n_sequences=5, seq_len=50)
    assert tokens.shape == (5, 50)
    text = "\n".join(make_corpus(n_lines=200, seed=1)) + "\n"
    position = 0
    for row in tokens:
        piece = tokenizer.decode(row)
        found = text.find(piece, position)
        assert found >= position and (found == 0 or text[found - 1] == "\n")  # in order, each at a line start
        position = found + len(piece)
    training = "\n".join(make_corpus(seed=0)) + "\n"
    assert tokenizer.decode(quality.held_out_tokens(tokenizer, 1, 128)[0]) not in training


@pytest.mark.parametrize(("call", "error", "message"), [
    (lambda m, t: quality.held_out_tokens("abc"), TypeError, "tokenizer"),
    (lambda m, t: quality.held_out_tokens(t, n_sequences=0), ValueError, "n_sequences"),
    (lambda m, t: quality.held_out_tokens(t, seq_len=-1), ValueError, "seq_len"),
    (lambda m, t: quality.held_out_tokens(t, seed=True), TypeError, "seed"),
    (lambda m, t: quality.cross_entropy("model", torch.ones(1, 4, dtype=torch.long)), TypeError, "model"),
    (lambda m, t: quality.cross_entropy(m, torch.ones(1, 1, dtype=torch.long)), ValueError, "seq_len >= 2"),
    (lambda m, t: quality.cross_entropy(m, torch.ones(1, 4)), TypeError, "tokens"),
    (lambda m, t: quality.decode_token_by_token(m, torch.ones(1, 4, dtype=torch.long), "cache"), TypeError, "cache"),
    (lambda m, t: quality.compare_to_full_cache(m, torch.ones(1, 4, dtype=torch.long), kvlab.DynamicCache()),
     TypeError, "make_cache"),
    (lambda m, t: quality.compare_logits(torch.ones(1, 3, 5), torch.ones(1, 4, 5), torch.ones(1, 3, dtype=torch.long),
                                         1, 1), ValueError, "(B, T, vocab)"),
    (lambda m, t: quality.generate_with_memory(m, t.encode_batch("h"), 0, kvlab.DynamicCache()), ValueError,
     "max_new_tokens"),
    (lambda m, t: quality.generate_with_memory(m, t.encode_batch("h"), 3, None), TypeError, "cache"),
    (lambda m, t: quality.attention_to_first_tokens(m, t.encode_batch("hello"), 4, 8), ValueError,
     "n_first <= from_position < T"),
    (lambda m, t: quality.attention_to_first_tokens(m, t.encode_batch("hello"), 0, 2), ValueError, "n_first"),
])
def test_quality_bad_input(hello, call, error, message):
    model, tokenizer = hello
    with pytest.raises(error, match=re.escape(message)):
        call(model, tokenizer)


def test_decode_token_by_token_needs_an_empty_cache(hello):
    model, tokenizer = hello
    cache = kvlab.DynamicCache()
    kvlab.generate(model, tokenizer.encode_batch("h"), 2, cache=cache)
    with pytest.raises(ValueError, match="cache must be empty"):
        quality.decode_token_by_token(model, tokenizer.encode_batch("hello"), cache)


def test_generate_with_memory_matches_generate(hello):
    model, tokenizer = hello
    prompt = tokenizer.encode_batch("the ca")
    tokens, held = quality.generate_with_memory(model, prompt, 12, kvlab.DynamicCache())
    assert torch.equal(tokens, kvlab.generate(model, prompt, 12))
    assert held == [2048 * (6 + i) for i in range(12)]  # 2,048 bytes per cached token, prompt first


def test_attention_to_first_tokens_matches_the_trace(hello, held_out):
    model, _ = hello
    tokens, _ = held_out
    shares = quality.attention_to_first_tokens(model, tokens[:1], n_first=4, from_position=64)
    assert shares.shape == (4, 4) and ((shares >= 0) & (shares <= 1)).all()
    trace = kvlab.attention_trace.trace_attention(model, tokens[:1], 2, 2)
    assert shares[2, 2].item() == pytest.approx(trace.weights[64:, :4].sum(-1).mean().item())
    # the notebook: at most 3.8%, below evenly spread attention (4.3%)
    uniform = sum(4 / (t + 1) for t in range(64, 128)) / 64
    assert round(shares.max().item(), 3) == 0.038 and round(uniform, 3) == 0.043 and shares.max() < uniform
    assert (shares < 0.01).sum().item() == shares.numel() // 2  # "half the heads give them under 1%"


# --- eviction quality: the notebook's table and bounds ------------------------------------------------------------

POLICIES = {"window": SlidingWindowCache, "sink": lambda w: SinkCache(w, n_sink=4), "h2o": HeavyHitterCache}


@pytest.mark.parametrize("budget", [64, 96])
@pytest.mark.parametrize("policy", list(POLICIES))
def test_large_budgets_stay_within_the_notebooks_bounds(hello, held_out, policy, budget):
    model, _ = hello
    tokens, full = held_out
    report = quality.compare_to_full_cache(model, tokens, lambda: POLICIES[policy](budget), full=full)
    assert report.top1_agreement >= 0.98 and report.cross_entropy_increase <= 0.01
    assert report.cache_nbytes == 2 * 4 * 8 * budget * 64 * 4  # K and V · layers · batch · budget · d_model · fp32


def test_budget_16_as_the_notebook_states(hello, held_out):
    """'at 16 tokens it agrees on 90.4% of predictions, the sink cache on 87.6%, the heavy-hitter cache on 84.4%'."""
    model, _ = hello
    tokens, full = held_out
    top1 = {name: quality.compare_to_full_cache(model, tokens, lambda: make(16), full=full).top1_agreement
            for name, make in POLICIES.items()}
    assert top1["window"] >= 0.85
    assert top1["window"] > top1["sink"] > top1["h2o"]
    assert top1 == pytest.approx({"window": 0.904, "sink": 0.876, "h2o": 0.844}, abs=0.005)


# --- fewer K/V heads ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("n_kv_head", "ce"), [(2, 0.2517), (1, 0.2356)])
def test_shipped_kv_head_models(hello, held_out, n_kv_head, ce):
    model, tokenizer = load_kv_head_model(n_kv_head)
    hello_model, hello_tokenizer = hello
    tokens, _ = held_out
    assert tokenizer.chars == hello_tokenizer.chars
    expected = kvlab.GPTConfig(vocab_size=tokenizer.vocab_size, n_kv_head=n_kv_head, **HELLO_CONFIG)
    assert model.config == expected
    assert quality.cross_entropy(model, tokens) == pytest.approx(ce, abs=2e-3)  # the notebook's table
    assert tokenizer.decode(kvlab.generate(model, tokenizer.encode_batch("h"), 4)[0]) == "hello"
    run = quality.decode_token_by_token(model, tokens, kvlab.DynamicCache())
    assert run.peak_nbytes == 2_097_152 * n_kv_head // 4  # exactly n_kv_head / n_head of the hello model's


def test_kv_head_weights_are_small():
    assert HELLO_KV_HEAD_WEIGHTS.stat().st_size < 2 * 10**6


def test_load_kv_head_model_bad_input():
    for bad in (3, 0, True, "2"):
        with pytest.raises(ValueError, match="n_kv_head"):
            load_kv_head_model(bad)


def test_load_kv_head_model_4_is_the_hello_model(hello):
    model, _ = load_kv_head_model(4)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), hello[0].state_dict().values()))


def test_training_recipe_is_deterministic_and_saves(tmp_path):
    first = train_kv_head_models(n_kv_heads=(2,), steps=3)
    second = train_kv_head_models(n_kv_heads=(2,), steps=3)
    model, tokenizer = first[2]
    assert model.config.n_kv_head == 2
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), second[2][0].state_dict().values()))
    save_kv_head_models(first, tmp_path / "m.pt")
    loaded = torch.load(tmp_path / "m.pt", weights_only=True)
    assert list(loaded) == [2] and loaded[2]["chars"] == tokenizer.chars


def test_mean_pool_averages_each_groups_key_and_value_projections(hello):
    model, _ = hello
    same = mean_pool_kv_heads(model, 4)  # groups of one: nothing changes
    tokens = torch.tensor([[1, 2, 3, 4, 5]])
    with torch.inference_mode():
        torch.testing.assert_close(same(tokens), model(tokens))
    pooled = mean_pool_kv_heads(model, 2)
    assert pooled.config.n_kv_head == 2 and pooled.n_params == 193_216  # qkv loses 2 · 32 · (64 + 1) parameters
    w, new = model.blocks[1].attn.qkv.weight, pooled.blocks[1].attn.qkv.weight  # rows: q (64), k (64), v (64)
    torch.testing.assert_close(new[64:80], (w[64:80] + w[80:96]) / 2)  # K head 0 = mean of heads 0 and 1
    torch.testing.assert_close(new[96 + 16:96 + 32], (w[128 + 32:128 + 48] + w[128 + 48:128 + 64]) / 2)  # V head 1
    torch.testing.assert_close(new[:64], w[:64])  # queries untouched


def test_mean_pool_bad_input(hello):
    model, _ = hello
    for bad in (3, 0, True):
        with pytest.raises(ValueError, match="n_kv_head must divide n_head"):
            mean_pool_kv_heads(model, bad)
    with pytest.raises(ValueError, match="must be multi-head"):
        mean_pool_kv_heads(mean_pool_kv_heads(model, 2), 1)
    with pytest.raises(TypeError, match="kvlab.TinyGPT"):
        mean_pool_kv_heads("model", 2)


# --- memory: quantised and MLA caches -----------------------------------------------------------------------------

def test_quantized_bytes_for_llama2_7b():
    # 4,096 tokens, groups of 32, window of 128: n_q = 32·⌊3,968 / 32⌋ = 3,968, n_r = 128. Per layer and head, int8:
    # codes 2·3,968·128 = 1,015,808; floats 2·124·128 + 2·3,968 + 2·128·128 = 72,448 -> 144,896 bytes in fp16
    assert memory.quantized_kv_cache_bytes(32, 1, 4096, 32, 128, 8, group_size=32, residual_length=128) == \
        32 * 32 * (1_015_808 + 144_896) == 1_188_560_896
    # int4: codes 507,904
    assert memory.quantized_kv_cache_bytes(32, 1, 4096, 32, 128, 4, group_size=32, residual_length=128) == \
        32 * 32 * (507_904 + 144_896) == 668_467_200
    assert memory.quantized_kv_cache_bytes(32, 1, 0, 32, 128, 4, group_size=32, residual_length=128) == 0


def test_mla_bytes_for_deepseek_v2():
    ds = memory.DEEPSEEK_V2
    assert ds.kv_cache_bytes(1, 1) == 60 * (512 + 64) * 2 == 69_120
    assert ds.mha_kv_cache_bytes(1, 1) == 2 * 60 * 128 * 128 * 2 == 3_932_160
    assert round(ds.mha_kv_cache_bytes(1, 1) / ds.kv_cache_bytes(1, 1), 1) == 56.9
    assert ds.kv_cache_bytes(1, 128 * 1024) == 69_120 * 131_072 == int(8.4375 * 2**30)
    assert memory.mla_kv_cache_bytes(2, 3, 5, 7, 0, 4) == 2 * 3 * 5 * 7 * 4


@pytest.mark.parametrize(("call", "error", "message"), [
    (lambda: memory.quantized_kv_cache_bytes(1, 1, 4, 1, 16, 2, group_size=4, residual_length=0), ValueError,
     "bits"),
    (lambda: memory.quantized_kv_cache_bytes(1, 1, 4, 1, 15, 4, group_size=4, residual_length=0), ValueError,
     "head_dim"),
    (lambda: memory.quantized_kv_cache_bytes(1, 1, 4, 1, 16, 8, group_size=0, residual_length=0), ValueError,
     "group_size"),
    (lambda: memory.quantized_kv_cache_bytes(1, 1, -1, 1, 16, 8, group_size=4, residual_length=0), ValueError,
     "seq_len"),
    (lambda: memory.quantized_kv_cache_bytes(1, 1, 4, 1, 16, 8, group_size=4, residual_length=0, float_bytes=0),
     ValueError, "float_bytes"),
    (lambda: memory.mla_kv_cache_bytes(0, 1, 1, 512, 64), ValueError, "n_layer"),
    (lambda: memory.mla_kv_cache_bytes(1, 1, 1, 512.0, 64), TypeError, "kv_lora_rank"),
])
def test_memory_bad_input(call, error, message):
    with pytest.raises(error, match=re.escape(message)):
        call()


# --- plots --------------------------------------------------------------------------------------------------------

def _report(ce: float, ratio: float = 0.5, top1: float = 0.9):
    return quality.QualityReport(10, top1, 1.0, ce, 0.3, int(ratio * 1000), 1000)


def test_plots_draw_one_line_or_point_per_strategy():
    fig = plots.plot_quality_vs_budget([8, 16], {"a": [_report(1.0), _report(0.5)], "b": [_report(2.0), _report(1.0)]})
    ax = fig.axes[0]
    assert len(ax.lines) == 3 and list(ax.lines[0].get_ydata()) == [1.0, 0.5]  # two strategies + the full cache
    fig = plots.plot_quality_vs_budget([8], {"a": [_report(1.0, top1=0.75)]}, metric="top1_agreement")
    assert list(fig.axes[0].lines[0].get_ydata()) == [75.0]
    fig = plots.plot_bytes_per_step({"full": [2048, 4096], "window": [2048, 2048]}, first=7)
    assert [list(line.get_ydata()) for line in fig.axes[0].lines] == [[2.0, 4.0], [2.0, 2.0]]  # KiB
    assert list(fig.axes[0].lines[0].get_xdata()) == [7, 8]  # tokens seen
    fig = plots.plot_memory_vs_quality({"quantised": [("int8", _report(0.3, 0.45)), ("int4", _report(0.35, 0.3))],
                                        "window": [("", _report(0.5, 0.125))]})
    xy = [line.get_xydata().tolist() for line in fig.axes[0].lines[:2]]
    assert xy[0] == [[45.0, 0.0], [30.0, pytest.approx(0.05)]] and xy[1] == [[12.5, pytest.approx(0.2)]]
    assert [t.get_text() for t in fig.axes[0].texts] == ["int8", "int4"]  # empty labels are not drawn


@pytest.mark.parametrize(("call", "error", "message"), [
    (lambda: plots.plot_quality_vs_budget([8], {"a": [_report(1.0)]}, metric="bytes"), ValueError, "metric"),
    (lambda: plots.plot_quality_vs_budget([8, 16], {"a": [_report(1.0)]}), ValueError, "reports_by_label['a']"),
    (lambda: plots.plot_quality_vs_budget([], {}), ValueError, "budgets"),
    (lambda: plots.plot_bytes_per_step({}), ValueError, "bytes_by_label"),
    (lambda: plots.plot_bytes_per_step({"a": [1.5]}), TypeError, "bytes_by_label['a'][0]"),
    (lambda: plots.plot_bytes_per_step({"a": [-1]}), ValueError, "bytes_by_label['a'][0]"),
    (lambda: plots.plot_bytes_per_step({"a": [1]}, first=0), ValueError, "first"),
    (lambda: plots.plot_memory_vs_quality({"a": [3]}), TypeError, "series['a']"),
    (lambda: plots.plot_memory_vs_quality({"a": []}), ValueError, "series['a']"),
    (lambda: plots.plot_memory_vs_quality({}), ValueError, "series"),
])
def test_plots_bad_input(call, error, message):
    with pytest.raises(error, match=re.escape(message)):
        call()


# --- the notebook prints every number its prose states ------------------------------------------------------------

CLAIMS = [
    ("2 MiB for 1,024 tokens", "full cache: 2,097,152 bytes = 2.0 MiB"),
    ("2 MiB for 1,024 tokens", "1,024 tokens, 1,016 next-token predictions"),
    ("agrees on 100% of the 1,016", "StaticCache: 2,097,152 B (100.0%)  top-1 100.0%"),
    ("with 8 bits the 16 × 16 codes take 256", "384 bytes instead of 1024"),
    ("(0.032 against 0.057)", "4 bits: keys per channel 0.0318, per token 0.0569"),
    ("(0.057 against 0.064)", "values per channel 0.0572, per token 0.0640"),
    ("holds 45.3% of the fp32 bytes", "(45.3%)"),
    ("(52.3% at its peak", "most held after any step: 1,097,728 bytes (52.3%)"),
    ("0.014 with the window (0.086 without)",
     "int8, residual 0     933,888 B ( 44.5%)  top-1 100.0%  max|Δlogit|  0.0859"),
    ("reaches 1.55, 8 predictions in 1,000 flip (99.2% agreement)", "top-1  99.2%  max|Δlogit|  1.5477"),
    ("rises by 0.0027 nats", "CE 0.2940 (+0.0027)"),
    ("(to 0.32)", "int4, residual 16    901,120 B ( 43.0%)  top-1  99.8%  max|Δlogit|  0.3163"),
    ("55.3% for int8 and 31.1% for int4", "= 31.1% of fp16"),
    ("2.80 (GQA) and 3.64 (MQA)", "hello, mean-pooled to n_kv_head=1  184,896     524,288    25%        3.6447"),
    ("(0.25 and 0.24 against 0.29)", "trained, n_kv_head=1               184,896     524,288    25%        0.2356"),
    ("57 times less", "(56.9× more)"),
    ("8.4 GiB instead of 480 GiB", "128k tokens of context: MLA 8.4 GiB (9.1 GB), MHA 480.0 GiB"),
    ("0, 1, 5 and 6", "HeavyHitterCache(8, n_recent=4)  seen 20, holds [0, 1, 5, 6, 16, 17, 18, 19]"),
    ("grows to 217,088 bytes (106 tokens)", "DynamicCache (full)          holds 106 tokens, 217,088 bytes"),
    ("stops at 32,768 bytes, 16 tokens", "SlidingWindowCache(16)       holds  16 tokens,  32,768 bytes"),
    ("stops at 32,768 bytes, 16 tokens", "HeavyHitterCache(16)         holds  16 tokens,  32,768 bytes"),
    ("(0.0195 nats against 0.0266 and 0.0348)", "budget  32:   524,288 B ( 25.0%)  top-1  96.0%"),
    ("At most 3.8% of the attention", "largest 0.038; evenly spread attention would give 0.043"),
    ("55 of 128 go to the first 8 positions, 98 to the first 32",
     "of its 128 heavy slots (8 per layer and head), 55 hold one of the first 8 positions, 98 one of the first 32"),
]


@pytest.mark.parametrize(("prose", "printed"), CLAIMS)
def test_notebook_prints_each_claim_above_the_prose(prose, printed):
    assert_printed_above(NOTEBOOK, prose, printed)


# --- on a GPU (skipped without CUDA) ------------------------------------------------------------------------------

@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_lossy_caches_on_cuda_match_cpu(hello, held_out):
    model, _ = hello
    tokens, _ = held_out
    gpu_model = load_kv_head_model(4, device="cuda")[0]
    makes = {"int8": lambda: QuantizedCache(8), "int4": lambda: QuantizedCache(4),
             "window": lambda: SlidingWindowCache(16), "sink": lambda: SinkCache(16, 4),
             "h2o": lambda: HeavyHitterCache(16)}
    for name, make in makes.items():
        cpu_cache, gpu_cache = make(), make()
        cpu = quality.decode_token_by_token(model, tokens, cpu_cache)
        gpu = quality.decode_token_by_token(gpu_model, tokens.cuda(), gpu_cache)
        assert gpu.logits.device.type == "cuda" and gpu.peak_nbytes == cpu.peak_nbytes, name
        agreement = (gpu.logits.cpu().argmax(-1) == cpu.logits.argmax(-1)).float().mean().item()
        assert agreement >= 0.99, name
        if name in ("window", "sink"):  # same positions held, same logits up to kernel rounding
            assert torch.equal(gpu_cache.positions[0].cpu(), cpu_cache.positions[0])
            torch.testing.assert_close(gpu.logits.cpu(), cpu.logits, atol=1e-3, rtol=0)


def test_heavy_hitter_cache_stores_nothing_when_it_refuses_an_update(hello):
    """The 'not attached' error used to come after layer 0 had stored its tokens, so a retry saw them twice."""
    model, tokenizer = hello
    idx = tokenizer.encode_batch("the cache trades")
    cache = HeavyHitterCache(8)
    with pytest.raises(RuntimeError, match="run the model inside `with cache.attach\\(model\\):`"):
        model(idx, cache)
    assert cache.get_seq_length() == 0 and cache.nbytes == 0
    with cache.attach(model), torch.inference_mode():
        logits = model(idx, cache)
    assert [cache.get_seq_length(layer) for layer in range(4)] == [idx.shape[1]] * 4
    torch.testing.assert_close(logits, model(idx), rtol=0, atol=1e-5)  # the prompt fits the budget's prefill
