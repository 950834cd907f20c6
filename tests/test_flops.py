"""Analytic FLOPs (kvlab.flops) against FLOPs counted by PyTorch's FlopCounterMode on a real TinyGPT."""

import pytest
import torch
from hypothesis import given, settings, strategies as st
from torch.utils.flop_counter import FlopCounterMode

import kvlab
from kvlab.measure import _math_attention, count_flops
from kvlab import flops
from kvlab.flops import decode_step_flops, forward_flops, forward_flops_breakdown, generation_flops
from conftest import random_model


@settings(max_examples=25, deadline=None)
@given(n_layer=st.integers(1, 3), n_kv_head=st.sampled_from([1, 2, 4]), width=st.sampled_from([4, 8]),
       vocab=st.integers(5, 50), n_past=st.integers(0, 12), n_new=st.integers(1, 6))
def test_analytic_forward_flops_equal_counted(n_layer, n_kv_head, width, vocab, n_past, n_new):
    model = random_model(n_layer=n_layer, n_head=4, n_kv_head=n_kv_head, d_model=4 * width, vocab_size=vocab)
    cache = kvlab.DynamicCache()
    if n_past:
        model(torch.zeros(1, n_past, dtype=torch.long), cache)
    counted = count_flops(model, torch.zeros(1, n_new, dtype=torch.long), cache if n_past else None)
    assert counted == forward_flops(model.config, n_new, n_past)


@pytest.mark.parametrize("use_cache", [True, False])
def test_generation_flops_equal_flops_counted_during_generate(use_cache):
    model = random_model(n_layer=2, n_head=4, d_model=32)
    with _math_attention(), FlopCounterMode(display=False) as counter:
        kvlab.generate(model, torch.tensor([[1, 2, 3]]), 10, use_cache=use_cache)
    assert counter.get_total_flops() == generation_flops(model.config, prompt_len=3, n_new=10, use_cache=use_cache)


def test_cache_saves_flops_and_the_saving_grows():
    config = kvlab.GPTConfig(vocab_size=50, n_layer=2, n_head=4, d_model=64, max_seq_len=512)
    ratios = [generation_flops(config, 1, T, use_cache=False) / generation_flops(config, 1, T) for T in (16, 64, 256)]
    assert 1 < ratios[0] < ratios[1] < ratios[2]


def test_breakdown_scaling_per_decode_step():
    """Projections/MLP: ∝ t without cache, constant with; attention: ∝ t² without, ∝ t with."""
    config = kvlab.GPTConfig(vocab_size=50, n_layer=2, n_head=4, d_model=64, max_seq_len=512)
    without = [forward_flops_breakdown(config, t, 0) for t in (10, 20)]
    with_cache = [forward_flops_breakdown(config, 1, t - 1) for t in (10, 20)]
    assert without[1]["mlp"] == 2 * without[0]["mlp"] and without[1]["attn_scores"] == 4 * without[0]["attn_scores"]
    assert with_cache[1]["mlp"] == with_cache[0]["mlp"] and with_cache[1]["attn_scores"] == 2 * with_cache[0]["attn_scores"]
    assert decode_step_flops(config, 20, use_cache=False) == forward_flops(config, 20)


@pytest.mark.parametrize("call, error, message", [
    (lambda c: forward_flops(c, 0), ValueError, "n_new"),
    (lambda c: forward_flops(c, 1, -1), ValueError, "n_past"),
    (lambda c: decode_step_flops(c, 0), ValueError, "t must"),
    (lambda c: generation_flops(c, 0, 3), ValueError, "prompt_len"),
    (lambda c: generation_flops(c, 2, 1.5), TypeError, "n_new"),
    (lambda c: forward_flops(c, True), TypeError, "n_new"),  # the same mistake as kv_cache_bytes(n_layer=True)
])
def test_bad_counts_raise(call, error, message):
    with pytest.raises(error, match=message):
        call(kvlab.GPTConfig(vocab_size=10, n_head=2, d_model=8))


# --- bad input found by an audit: each gave a silent wrong number ---

@pytest.mark.parametrize("call", [
    lambda c: flops.generation_flops(c, 4, 10, use_cache="False"),
    lambda c: flops.generation_flops(c, 4, 10, use_cache=None),
    lambda c: flops.decode_step_flops(c, 5, use_cache=1),
])
def test_use_cache_must_be_a_bool_everywhere(call):
    with pytest.raises(TypeError, match="use_cache"):
        call(kvlab.GPTConfig())


@pytest.mark.parametrize("fn", [lambda c: flops.forward_flops(c, 1), flops.n_params])
def test_shapes_that_do_not_divide_are_errors_not_rounded(fn):
    from kvlab.memory import ModelPreset

    uneven = ModelPreset("x", 2, 100, 3, 3, 10, 10, 10, "")  # d_model 100 over 3 heads
    with pytest.raises(ValueError, match=r"config.d_model \(100\) must be divisible by config.n_head \(3\)"):
        fn(uneven)
    more_kv_heads = ModelPreset("y", 2, 96, 12, 24, 10, 10, 10, "")
    with pytest.raises(ValueError, match=r"config.n_head \(12\) must be divisible by config.n_kv_head \(24\)"):
        fn(more_kv_heads)
    with pytest.raises(TypeError, match="config"):
        fn("gpt2-small")
