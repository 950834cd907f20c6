"""Analytic FLOPs (kvlab.flops) against FLOPs counted by PyTorch's FlopCounterMode on a real TinyGPT."""

import dataclasses
import math
from fractions import Fraction
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.flop_counter import FlopCounterMode

import kvlab
from kvlab import flops, hardware, memory
from kvlab.flops import (
    arithmetic_intensity,
    bytes_moved,
    decode_step_flops,
    forward_flops,
    forward_flops_breakdown,
    generation_flops,
    n_params,
    positions_processed,
)
from kvlab.measure import _math_attention, count_flops
from tests.helpers import T_MAX, by_hand, chapter_config, random_model

# The notebook's measured model and sweep (test_notebook_uses_these_settings keeps the two in step).
LENGTHS = [2**k for k in range(10)]  # 1, 2, 4, ..., 512


def _config_or_none(n_layer, n_head, kv_div, head_dim, vocab):
    if n_head % kv_div:
        return None
    return kvlab.GPTConfig(vocab_size=vocab, n_layer=n_layer, n_head=n_head, n_kv_head=n_head // kv_div,
                           d_model=n_head * head_dim)


configs = st.builds(_config_or_none, n_layer=st.integers(1, 96), n_head=st.sampled_from([1, 2, 4, 8]),
                    kv_div=st.sampled_from([1, 2, 4, 8]), head_dim=st.integers(1, 256),
                    vocab=st.integers(1, 200_000)).filter(lambda c: c is not None)


TINY = kvlab.GPTConfig(vocab_size=10, n_layer=1, n_head=1, d_model=2, max_seq_len=4)


TINY_GQA = kvlab.GPTConfig(vocab_size=3, n_layer=2, n_head=2, n_kv_head=1, d_model=4, max_seq_len=5)


CHAPTER = kvlab.GPTConfig(vocab_size=256, n_layer=4, n_head=8, d_model=512, max_seq_len=1024)  # the notebook's model


GPT2 = memory.get_preset("gpt2-small")


A100, H100, T4 = hardware.get_gpu("a100-80gb-sxm"), hardware.get_gpu("h100-sxm"), hardware.get_gpu("t4")


# --- chapter 01: autoregressive generation ---------------------------------------------------------------------------


@pytest.mark.parametrize("prompt_len, n_new, use_cache, expected", [
    (3, 5, False, [3, 4, 5, 6, 7]),
    (3, 5, True, [3, 1, 1, 1, 1]),
    (1, 1, False, [1]),
    (1, 1, True, [1]),
    (1, 4, False, [1, 2, 3, 4]),  # "h" -> "hello": the notebook's first trace
    (6, 8, True, [6, 1, 1, 1, 1, 1, 1, 1]),
])
def test_positions_processed_by_hand(prompt_len, n_new, use_cache, expected):
    assert positions_processed(prompt_len, n_new, use_cache=use_cache) == expected


@settings(max_examples=200, deadline=None)
@given(prompt_len=st.integers(1, 500), n_new=st.integers(1, 500))
def test_positions_processed_totals_follow_the_closed_forms(prompt_len, n_new):
    without = positions_processed(prompt_len, n_new, use_cache=False)
    with_cache = positions_processed(prompt_len, n_new, use_cache=True)
    assert len(without) == len(with_cache) == n_new
    assert without[0] == with_cache[0] == prompt_len  # the prefill is the same either way
    assert sum(without) == prompt_len * n_new + n_new * (n_new - 1) // 2
    assert sum(with_cache) == prompt_len + n_new - 1
    assert all(b - a == 1 for a, b in zip(without, without[1:]))


@pytest.mark.parametrize("use_cache", [False, True])
@pytest.mark.parametrize("prompt_len, n_new", [(1, 1), (1, 9), (4, 6), (10, 3)])
def test_positions_processed_equal_what_generate_feeds_the_model(prompt_len, n_new, use_cache):
    """Spy on TinyGPT.forward (by wrapping it, independently of record_positions) during a real generate call."""
    model = random_model(prompt_len + n_new)
    seen = []
    original = model.forward

    def spy(idx, cache=None):
        seen.append(idx.shape[1])
        return original(idx, cache)

    model.forward = spy
    prompt = torch.randint(37, (2, prompt_len), generator=torch.Generator().manual_seed(n_new))
    kvlab.generate(model, prompt, n_new, use_cache=use_cache)
    assert seen == positions_processed(prompt_len, n_new, use_cache=use_cache)


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(prompt_len=0, n_new=3), ValueError, "prompt_len"),
    (dict(prompt_len=2, n_new=0), ValueError, "n_new"),
    (dict(prompt_len=2.0, n_new=3), TypeError, "prompt_len"),
    (dict(prompt_len=2, n_new=True), TypeError, "n_new"),
    (dict(prompt_len=2, n_new=3, use_cache="yes"), TypeError, "use_cache"),
])
def test_positions_processed_bad_input(kwargs, error, message):
    with pytest.raises(error, match=message):
        positions_processed(**kwargs)


# --- chapter 04: cost with and without cache -------------------------------------------------------------------------


@pytest.mark.parametrize("use_cache", [True, False])
def test_counted_equals_formula_at_every_plotted_point(counted_steps, use_cache):
    config, counted = chapter_config(), counted_steps[use_cache]
    assert len(counted) == T_MAX
    for t in LENGTHS:  # the per-step figure's points
        assert counted[t - 1] == flops.decode_step_flops(config, t, use_cache)
    for T in LENGTHS:  # the whole-generation figure's points
        assert sum(counted[:T]) == flops.generation_flops(config, 1, T, use_cache)
        assert sum(counted[:T]) == sum(flops.generation_flops_split(config, 1, T, use_cache).values())


@settings(max_examples=60, deadline=None)
@given(config=configs, t=st.integers(1, 10**6))
def test_step_coefficients_describe_every_step(config, t):
    D, A = flops.decode_step_coefficients(config)
    assert (D, A) == by_hand(config)
    assert flops.decode_step_flops(config, t, use_cache=True) == D + A * t
    assert flops.decode_step_flops(config, t, use_cache=False) == t * (D + A * t)
    for use_cache in (True, False):
        split = flops.decode_step_flops_split(config, t, use_cache)
        assert sum(split.values()) == flops.decode_step_flops(config, t, use_cache)
    assert flops.decode_step_flops_split(config, t, False) == {
        part: t * value for part, value in flops.decode_step_flops_split(config, t, True).items()}


@settings(max_examples=60, deadline=None)
@given(config=configs)
def test_crossover_formula(config):
    d, L, V = config.d_model, config.n_layer, config.vocab_size
    kv_dim = config.n_kv_head * config.head_dim
    t_star = flops.attention_crossover(config)
    assert t_star == 5 * d + kv_dim + Fraction(V, 2 * L)
    assert flops.attention_crossover(config, include_lm_head=False) == 5 * d + kv_dim
    if config.n_kv_head == config.n_head:  # multi-head: the chapter's 6·d_model per layer
        assert flops.attention_crossover(config, include_lm_head=False) == 6 * d
    # the definition: below t* dense dominates a step, above it attention does (with and without a cache)
    for use_cache in (True, False):
        low, high = math.floor(t_star), math.floor(t_star) + 1
        if low >= 1:
            split = flops.decode_step_flops_split(config, low, use_cache)
            assert split["attention"] <= split["dense"]
        split = flops.decode_step_flops_split(config, high, use_cache)
        assert split["attention"] > split["dense"]


def test_crossover_is_exact_where_integral():
    config = chapter_config()
    split = flops.decode_step_flops_split(config, 112)
    assert split["attention"] == split["dense"]


@settings(max_examples=60, deadline=None)
@given(config=configs, prompt_len=st.integers(1, 40), n_new=st.integers(1, 40), use_cache=st.booleans())
def test_generation_split_closed_form_equals_step_sum(config, prompt_len, n_new, use_cache):
    split = flops.generation_flops_split(config, prompt_len, n_new, use_cache)
    prefill = flops.split_dense_attention(flops.forward_flops_breakdown(config, prompt_len))
    steps = [flops.decode_step_flops_split(config, t, use_cache) for t in range(prompt_len + 1, prompt_len + n_new)]
    for part in ("dense", "attention"):
        assert split[part] == prefill[part] + sum(step[part] for step in steps)
    assert sum(split.values()) == flops.generation_flops(config, prompt_len, n_new, use_cache)


def _generation_flops_by_steps(config, prompt_len, n_new, use_cache):
    """The reference: the prefill, then every decode step added one by one, as `kvlab.generate` runs them."""
    total = forward_flops(config, prompt_len, 0)
    for t in range(prompt_len + 1, prompt_len + n_new):
        total += decode_step_flops(config, t, use_cache)
    return total


@settings(max_examples=100, deadline=None)
@given(config=configs, prompt_len=st.integers(1, 60), n_new=st.integers(1, 200), use_cache=st.booleans())
def test_generation_flops_equals_the_steps_added_one_by_one(config, prompt_len, n_new, use_cache):
    expected = _generation_flops_by_steps(config, prompt_len, n_new, use_cache)
    assert flops.generation_flops(config, prompt_len, n_new, use_cache) == expected


def test_generation_flops_is_a_closed_form_not_a_loop_over_steps(monkeypatch):
    """10**8 new tokens: no step is visited one by one (the old loop ran for minutes); the value is the hand formula."""
    config = chapter_config()
    dense, per_key = flops.decode_step_coefficients(config)

    def one_step(*args, **kwargs):
        raise AssertionError("generation_flops visited a decode step")

    monkeypatch.setattr(flops, "decode_step_flops", one_step)
    T = 10**8  # a 1-token prompt: the forwards see the lengths 1..T
    assert flops.generation_flops(config, 1, T) == dense * T + per_key * T * (T + 1) // 2
    assert flops.generation_flops(config, 1, T, False) == (dense * T * (T + 1) // 2
                                                          + per_key * T * (T + 1) * (2 * T + 1) // 6)


@settings(max_examples=60, deadline=None)
@given(config=configs, T=st.integers(1, 10**5))
def test_total_saving_lies_between_the_bounds(config, T):
    saving = Fraction(sum(flops.generation_flops_split(config, 1, T, False).values()),
                      sum(flops.generation_flops_split(config, 1, T, True).values()))
    assert Fraction(T + 1, 2) <= saving <= Fraction(2 * T + 1, 3)


@pytest.mark.parametrize("t", [50, 112, 1000, 10**5])
def test_local_slope_formula(t):
    """d ln(D + A·t) / d ln t = t / (t + t*): a central difference agrees to 1e-4."""
    config = chapter_config()
    t_star = float(flops.attention_crossover(config))
    f = lambda u: math.log(flops.decode_step_flops(config, u))  # noqa: E731
    numeric = (f(t + 1) - f(t - 1)) / (math.log(t + 1) - math.log(t - 1))
    assert numeric == pytest.approx(t / (t + t_star), abs=1e-4)


@pytest.mark.parametrize("call, error, message", [
    (lambda c: flops.decode_step_flops_split(c, 0), ValueError, "t must"),
    (lambda c: flops.decode_step_flops_split(c, 3, use_cache=1), TypeError, "use_cache"),
    (lambda c: flops.generation_flops_split(c, 0, 3), ValueError, "prompt_len"),
    (lambda c: flops.generation_flops_split(c, 1, -2), ValueError, "n_new"),
    (lambda c: flops.generation_flops_split(c, 1, 2, None), TypeError, "use_cache"),
    (lambda c: flops.attention_crossover(c, include_lm_head="no"), TypeError, "include_lm_head"),
    (lambda c: flops.split_dense_attention({"qkv": 1}), ValueError, "breakdown"),
    (lambda c: flops.split_dense_attention([1, 2]), TypeError, "breakdown"),
])
def test_new_flops_functions_reject_bad_input(call, error, message):
    with pytest.raises(error, match=message):
        call(chapter_config())


@pytest.mark.parametrize("call", [
    lambda c: flops.decode_step_coefficients(c),
    lambda c: flops.decode_step_flops_split(c, 3),
    lambda c: flops.generation_flops_split(c, 1, 3),
    lambda c: flops.attention_crossover(c),
])
def test_new_flops_functions_reject_a_non_config(call):
    with pytest.raises(TypeError, match="config must have .* lacks n_layer"):
        call(object())


def test_flops_stays_pure_python():
    source = Path(flops.__file__).read_text()
    assert "import torch" not in source and "import numpy" not in source


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
    assert with_cache[1]["mlp"] == with_cache[0]["mlp"]
    assert with_cache[1]["attn_scores"] == 2 * with_cache[0]["attn_scores"]
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
    with pytest.raises(ValueError, match=r"config.d_model .* divisible by config.n_head"):
        fn(uneven)
    more_kv_heads = ModelPreset("y", 2, 96, 12, 24, 10, 10, 10, "")
    with pytest.raises(ValueError, match=r"config.n_head .* divisible by config.n_kv_head"):
        fn(more_kv_heads)
    with pytest.raises(TypeError, match="config"):
        fn("gpt2-small")


# --- chapter 05: prefill and decode ----------------------------------------------------------------------------------


def test_n_params_by_hand():
    # TINY, d=2: wte 10·2, wpe 4·2; layer: ln 2·2·2, qkv 2·6+6, proj 2·2+2, fc 2·8+8, proj 8·2+2; ln_f 2·2
    assert n_params(TINY) == 20 + 8 + (8 + 18 + 6 + 24 + 18) + 4 == 106
    # TINY_GQA, d=4, kv_dim=2: layer: ln 16, qkv 4·8+8, proj 16+4, fc 4·16+16, proj 16·4+4 = 224; wte 12, wpe 20, ln_f 8
    assert n_params(TINY_GQA) == 12 + 20 + 2 * 224 + 8 == 488


def test_n_params_of_the_chapter_model_is_12_d_squared_plus_13_d_per_layer():
    d = CHAPTER.d_model  # the textbook count for multi-head attention, and the notebook's "50.6 MiB"
    assert n_params(CHAPTER) == 256 * d + 1024 * d + 4 * (12 * d * d + 13 * d) + 2 * d == 13_265_920
    assert memory.format_bytes(n_params(CHAPTER) * 4).startswith("50.6 MiB")


@settings(max_examples=20, deadline=None)
@given(n_layer=st.integers(1, 3), n_head=st.sampled_from([1, 2, 4]), kv_div=st.sampled_from([1, 2, 4]),
       head_dim=st.integers(1, 6), vocab=st.integers(2, 40), max_seq_len=st.integers(1, 30))
def test_n_params_equals_the_real_model(n_layer, n_head, kv_div, head_dim, vocab, max_seq_len):
    n_kv_head = max(1, n_head // kv_div)
    config = kvlab.GPTConfig(vocab_size=vocab, n_layer=n_layer, n_head=n_head, n_kv_head=n_kv_head,
                             d_model=n_head * head_dim, max_seq_len=max_seq_len)
    assert n_params(config) == kvlab.TinyGPT(config).n_params


@pytest.mark.parametrize("name", ["gpt2-small", "gpt2-medium", "gpt2-large", "gpt2-xl"])
def test_n_params_equals_the_published_gpt2_counts(name):
    preset = memory.get_preset(name)
    assert n_params(preset) == preset.n_params


def test_bytes_moved_by_hand():
    # weights 106 · 4; KV read 2 · 1 layer · 3 tokens · kv_dim 2 · 4 B = 48; KV written 2 · 1 · 1 · 2 · 4 = 16
    assert bytes_moved(TINY, 1, 3, 4) == 424 + 48 + 16 == 488
    # GQA, batch 3, fp16: weights 488 · 2; read 2·2·3·3·2·2 = 144; written 2·2·3·2·2·2 = 96
    assert bytes_moved(TINY_GQA, 2, 3, 2, batch_size=3) == 976 + 144 + 96 == 1216
    assert bytes_moved(TINY, 1, 0, 0.5) == math.ceil(106 * 0.5) + 2  # int4: 53 bytes of weights, 4 elements of KV


def test_bytes_moved_reads_a_presets_published_weights():
    """Llama 2 7B's SwiGLU MLP and untied head are not GPT-2's layout: the formula is 2.2% short of the released
    6,738,415,616 weights, and a decode step reads the real ones."""
    llama = memory.get_preset("llama2-7b")
    assert flops.weight_count(llama) == 6_738_415_616 != n_params(llama) == 6_592_012_288
    kv_per_token = 2 * 32 * 4096 * 2  # K and V, 32 layers, d_model 4096, fp16
    assert bytes_moved(llama, 1, 99, 2) == 6_738_415_616 * 2 + 100 * kv_per_token
    assert flops.weight_count(TINY) == n_params(TINY) == 106  # a bare shape: the formula
    with pytest.raises(ValueError, match="config.n_params"):
        flops.weight_count(dataclasses.replace(llama, n_params=0))


def test_arithmetic_intensity_by_hand():
    # TINY, 1 new over 3 cached: qkv 2·2·6=24, scores 2·4·2=16, values 16, proj 2·2·2=8, mlp 2·2·8·2=64, head 2·2·10=40
    assert forward_flops(TINY, 1, 3) == 168
    assert arithmetic_intensity(TINY, 1, 3, 4) == pytest.approx(168 / 488)
    # TINY_GQA, 2 new over 3 cached, per layer: qkv 2·2·4·8=128, scores 2·2·5·4=80, values 80, proj 64, mlp 512;
    # 2 layers; head 2·2·4·3=48 -> 1776 per row, 3 rows
    assert forward_flops(TINY_GQA, 2, 3) == 2 * (128 + 80 + 80 + 64 + 512) + 48 == 1776
    assert arithmetic_intensity(TINY_GQA, 2, 3, 2, batch_size=3) == pytest.approx(3 * 1776 / 1216)


@pytest.mark.parametrize("n_kv_head", [4, 2, 1])
@pytest.mark.parametrize("n_past, n_new, batch", [(0, 3, 1), (5, 1, 2), (4, 2, 3)])
def test_bytes_moved_equals_real_tensor_bytes(n_kv_head, n_past, n_new, batch):
    """Weights = the model's parameter bytes; KV read = the cache before the forward; KV written = its growth."""
    model = random_model(n_kv_head=n_kv_head)
    weights = sum(p.nbytes for p in model.parameters())
    cache = kvlab.DynamicCache()
    if n_past:
        model(torch.zeros(batch, n_past, dtype=torch.long), cache)
    before = cache.nbytes if n_past else 0
    model(torch.zeros(batch, n_new, dtype=torch.long), cache)
    written = cache.nbytes - before
    assert bytes_moved(model.config, n_new, n_past, 4, batch_size=batch) == weights + before + written


@pytest.mark.parametrize("config", [CHAPTER, GPT2], ids=["chapter", "gpt2-small"])
@pytest.mark.parametrize("b", [4, 2])
def test_prefill_intensity_grows_with_p_and_stays_just_below_2p_over_b(config, b):
    """Strictly increasing in P over 1..max_seq_len; and for multi-head attention 0.9 · 2P/b < I < 2P/b.

    Why below 2P/b: the weights give 2 FLOPs per multiply-add per token but are read with their biases, norms and
    position table; attention gives 4·P²·d FLOPs per layer for 2·P·d·b bytes of K/V written, exactly 2P/b.
    """
    values = [arithmetic_intensity(config, P, 0, b) for P in range(1, config.max_seq_len + 1)]
    assert all(x < y for x, y in zip(values, values[1:]))
    for P, value in enumerate(values, 1):
        assert 0.9 * 2 * P / b < value < 2 * P / b


@pytest.mark.parametrize("config", [CHAPTER, GPT2], ids=["chapter", "gpt2-small"])
@pytest.mark.parametrize("b", [4, 2])
def test_batch_one_decode_intensity_is_flat_in_the_past_length(config, b):
    """Batch 1, multi-head attention: below 2/b for every past length (same argument as for prefill) and above
    0.9 · 2/b; for a small past, n_past = 0..128, it varies by less than 1 %."""
    values = [arithmetic_intensity(config, 1, past, b) for past in range(config.max_seq_len)]
    assert all(0.9 * 2 / b < v < 2 / b for v in values)
    small = values[:129]
    assert max(small) / min(small) < 1.01


def test_decode_intensity_scales_with_batch_while_weights_dominate():
    """GPT-2 small, fp16, no past: B rows share one read of the weights, so I(B) / I(1) is in [0.9 B, B]."""
    one = arithmetic_intensity(GPT2, 1, 0, 2)
    for B in (2, 4, 8, 16):
        assert 0.9 * B <= arithmetic_intensity(GPT2, 1, 0, 2, batch_size=B) / one <= B


def test_decode_intensity_with_a_long_cache_rises_to_a_ceiling():
    """With 1000 cached tokens per row the unshared KV bytes cap the intensity at F_row / KV_row (notebook §3)."""
    F_row = forward_flops(GPT2, 1, 1000)
    kv_row = 2 * GPT2.n_layer * 1001 * GPT2.d_model * 2  # read 1000 tokens' K and V, write 1, fp16
    ceiling = F_row / kv_row
    values = [arithmetic_intensity(GPT2, 1, 1000, 2, batch_size=B) for B in (1, 4, 16, 64, 256, 1024, 10**6)]
    assert all(x < y < ceiling for x, y in zip(values, values[1:]))
    assert values[-1] > 0.999 * ceiling
    assert ceiling < A100.ridge_point("fp16")  # exercise 3: never compute-bound on an A100, however large B
    with_16 = forward_flops(GPT2, 1, 16) / (2 * GPT2.n_layer * 17 * GPT2.d_model * 2)
    assert with_16 > A100.ridge_point("fp16")  # but with 16 cached tokens it can be


@pytest.mark.parametrize("call, error, message", [
    (lambda: bytes_moved(TINY, 0), ValueError, "n_new"),
    (lambda: bytes_moved(TINY, 1, -1), ValueError, "n_past"),
    (lambda: bytes_moved(TINY, 1, 0, 0), ValueError, "bytes_per_elem"),
    (lambda: bytes_moved(TINY, 1, 0, "fp16"), TypeError, "bytes_per_elem"),
    (lambda: bytes_moved(TINY, 1, 0, 2, batch_size=0), ValueError, "batch_size"),
    (lambda: arithmetic_intensity(TINY, 1, 0, 2, batch_size=1.5), TypeError, "batch_size"),
    (lambda: arithmetic_intensity(TINY, True), TypeError, "n_new"),
    (lambda: n_params(object()), TypeError, "config"),
    (lambda: bytes_moved({"n_layer": 1}, 1), TypeError, "dict lacks"),
])
def test_bad_input_raises(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_arithmetic_intensity_beyond_float_range_is_a_value_error():
    """10**400 new tokens: int / int raised OverflowError; a huge bytes_per_elem too (in the check)."""
    with pytest.raises(ValueError, match="n_new=1000.*is beyond the float range"):
        arithmetic_intensity(chapter_config(), 10**400)
    with pytest.raises(ValueError, match="bytes_per_elem must be a finite number > 0, got an int of 401 digits"):
        arithmetic_intensity(chapter_config(), 1, bytes_per_elem=10**400)
