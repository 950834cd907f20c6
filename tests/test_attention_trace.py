"""kvlab.attention_trace (chapter 02): the attention sums written out by hand equal the model's own, K/V rows never
change as the text grows, the newest row needs only the newest query; and clear errors for bad input.
"""

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import kvlab
from kvlab.attention_trace import (
    AttentionTrace,
    cache_step_grid,
    expand_attention_step,
    format_vectors,
    kv_prefix_change,
    output_change,
    trace_attention,
    trace_with_perturbation,
)
from tests.helpers import random_model


def _attention_module_output(model, idx, layer):
    """(T, d_model) what `blocks[layer].attn` returns, caught with a hook independent of attention_trace."""
    seen = {}
    hook = model.blocks[layer].attn.register_forward_hook(lambda m, i, out: seen.setdefault("out", out))
    try:
        with torch.no_grad():
            model(idx)
    finally:
        hook.remove()
    return seen["out"][0]


def _check_trace_against_model(model, idx, layer):
    """Every head of `layer`: the hand expansion equals the model's head output, and the heads rebuild the layer."""
    config = model.config
    traces = [trace_attention(model, idx, layer, head) for head in range(config.n_head)]
    for trace in traces:
        assert trace.q.shape == trace.k.shape == trace.v.shape == trace.output.shape == (idx.shape[1], config.head_dim)
        for t in range(1, idx.shape[1] + 1):
            step = expand_attention_step(trace, t)
            assert torch.allclose(step.output, trace.output[t - 1].double(), atol=1e-5, rtol=0), (layer, trace.head, t)
            assert torch.allclose(step.weights, trace.weights[t - 1, :t], atol=1e-12)
            assert trace.weights[t - 1, t:].eq(0).all()  # nothing above the diagonal
    # The per-head outputs, side by side and projected, are the attention layer's output: the slicing is right.
    attn = model.blocks[layer].attn
    with torch.no_grad():
        rebuilt = attn.proj(torch.cat([trace.output for trace in traces], dim=-1))
    assert torch.allclose(rebuilt, _attention_module_output(model, idx, layer), atol=1e-6)
    # The K/V head paired with each query head is the one the model's repeat_interleave gives it.
    group = config.n_head // config.n_kv_head
    k_all = torch.stack([trace_attention(model, idx, layer, g * group).k for g in range(config.n_kv_head)], dim=1)
    repeated = k_all.repeat_interleave(group, dim=1)  # (T, n_head, D), as in CausalSelfAttention.forward
    for trace in traces:
        assert trace.kv_head == trace.head // group
        assert torch.equal(trace.k, repeated[:, trace.head])


@pytest.mark.parametrize("layer", [0, 1, 2, 3])
def test_expansion_equals_hello_model_attention(hello, layer):
    model, tokenizer = hello
    _check_trace_against_model(model, tokenizer.encode_batch("hello"), layer)


@pytest.mark.parametrize("n_kv_head", [4, 2, 1])
def test_expansion_equals_attention_with_grouped_query_heads(n_kv_head):
    model = random_model(seed=3, n_kv_head=n_kv_head)
    idx = torch.randint(0, model.config.vocab_size, (1, 9), generator=torch.Generator().manual_seed(1))
    for layer in range(model.config.n_layer):
        _check_trace_against_model(model, idx, layer)


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 10_000), kv_choice=st.sampled_from([(4, 4), (4, 2), (4, 1), (2, 1), (1, 1)]),
       seq_len=st.integers(1, 12))
def test_expansion_equals_attention_property(seed, kv_choice, seq_len):
    n_head, n_kv_head = kv_choice
    model = random_model(seed=seed, n_head=n_head, n_kv_head=n_kv_head, d_model=8 * n_head)
    idx = torch.randint(0, model.config.vocab_size, (1, seq_len), generator=torch.Generator().manual_seed(seed))
    layer, head = seed % model.config.n_layer, seed % n_head
    trace = trace_attention(model, idx, layer, head)
    reference = kvlab.masks.attention(trace.q[None, None], trace.k[None, None], trace.v[None, None])[0, 0]
    assert torch.allclose(trace.output, reference, atol=1e-5)  # the model's output == the textbook formula
    for t in range(1, seq_len + 1):
        assert torch.allclose(expand_attention_step(trace, t).output, trace.output[t - 1].double(), atol=1e-5)


def test_att1_is_v1_and_weights_sum_to_one(hello):
    model, tokenizer = hello
    trace = trace_attention(model, tokenizer.encode_batch("hell"), 0, 0)
    first = expand_attention_step(trace, 1)
    assert first.weights.tolist() == [1.0]
    assert torch.equal(first.output, trace.v[0].double())
    for t in range(1, trace.seq_len + 1):
        step = expand_attention_step(trace, t)
        assert step.weights.sum().item() == pytest.approx(1.0, abs=1e-12)
        assert torch.allclose(step.scores, step.dots / 4.0)  # GPT-2 divides by sqrt(head_dim) = sqrt(16) = 4


def test_trace_keys_are_what_a_cache_stores(hello):
    """The keys the chapter prints are those that `DynamicCache` keeps, step by step."""
    model, tokenizer = hello
    idx = tokenizer.encode_batch("hello")
    cache = kvlab.DynamicCache()
    with torch.no_grad():
        for t in range(idx.shape[1]):  # decode token by token
            model(idx[:, t:t + 1], cache)
    for layer in range(model.config.n_layer):
        for head in range(model.config.n_head):
            trace = trace_attention(model, idx, layer, head)
            assert torch.allclose(cache.keys[layer][0, trace.kv_head], trace.k, atol=1e-5)
            assert torch.allclose(cache.values[layer][0, trace.kv_head], trace.v, atol=1e-5)


def test_kv_rows_unchanged_as_prompt_grows(hello):
    model, tokenizer = hello
    idx = tokenizer.encode_batch("hello")
    assert kv_prefix_change(model, idx) <= 1e-5  # float32: rounding only
    assert kv_prefix_change(copy.deepcopy(model).double(), idx) <= 1e-12  # float64: the rounding shrinks with it


def test_kv_rows_unchanged_with_grouped_query_heads():
    model = random_model(seed=5, n_kv_head=2)
    idx = torch.randint(0, model.config.vocab_size, (1, 7), generator=torch.Generator().manual_seed(2))
    assert kv_prefix_change(model, idx) <= 1e-5


def test_kv_prefix_change_detects_a_leak_from_the_future(hello):
    """If a later token could reach earlier positions, earlier K/V would move: the check must see it."""
    model, tokenizer = hello
    leaky = copy.deepcopy(model)
    leaky.blocks[0].register_forward_hook(lambda m, i, out: out + out.mean(dim=1, keepdim=True))  # mixes positions
    assert kv_prefix_change(leaky, tokenizer.encode_batch("hello")) > 1e-2


@pytest.mark.parametrize("layer,head", [(0, 0), (1, 2), (3, 1)])
def test_past_queries_do_not_move_the_newest_row_but_past_keys_do(hello, layer, head):
    model, tokenizer = hello
    idx = tokenizer.encode_batch("hell")
    T = idx.shape[1]
    base = trace_attention(model, idx, layer, head)

    def change(tensor, positions):
        return output_change(base, trace_with_perturbation(model, idx, layer, head, tensor=tensor,
                                                            positions=positions))

    past_q = change("q", range(1, T))
    assert past_q[-1] == 0  # exactly: row T reads no past query
    assert past_q[1:-1].gt(0).all()  # while the rows that own those queries move
    assert change("q", [T])[-1] > 1e-3
    assert change("k", [1])[-1] > 1e-3
    assert change("v", [1])[-1] > 1e-3
    new_key = change("k", [T])
    assert new_key[:-1].eq(0).all() and new_key[-1] > 1e-3  # the causal mask: only row T sees k_T
    assert change("q", [1])[0] == 0 and change("k", [1])[0] == 0  # one visible key: its weight is 1 regardless


def test_past_queries_do_not_move_the_newest_row_with_grouped_query_heads():
    model = random_model(seed=7, n_kv_head=1)
    idx = torch.randint(0, model.config.vocab_size, (1, 6), generator=torch.Generator().manual_seed(3))
    for layer in range(model.config.n_layer):
        for head in range(model.config.n_head):
            base = trace_attention(model, idx, layer, head)
            past = trace_with_perturbation(model, idx, layer, head, tensor="q", positions=range(1, 6), scale=3.0)
            assert output_change(base, past)[-1] == 0
            key = trace_with_perturbation(model, idx, layer, head, tensor="k", positions=[2], scale=3.0)
            assert output_change(base, key)[-1] > 0


def test_perturbation_is_seeded_and_lands_on_the_chosen_rows(hello):
    model, tokenizer = hello
    idx = tokenizer.encode_batch("hell")
    base = trace_attention(model, idx, 2, 3)
    a = trace_with_perturbation(model, idx, 2, 3, tensor="v", positions=[2, 4], scale=0.5, seed=11)
    b = trace_with_perturbation(model, idx, 2, 3, tensor="v", positions=[2, 4], scale=0.5, seed=11)
    assert torch.equal(a.output, b.output)
    moved = (a.v - base.v).abs().amax(dim=-1)
    assert moved[[0, 2]].eq(0).all() and moved[[1, 3]].gt(0).all()
    assert torch.equal(a.q, base.q) and torch.equal(a.k, base.k)


@pytest.mark.parametrize("T", [1, 2, 5, 10])
def test_cache_step_grid_counts(T):
    for t in range(0, T + 1):
        for use_cache in (False, True):
            grid = cache_step_grid(t, T, use_cache)
            cells = [state for row in grid for state in row]
            computed = sum(state in (3, 4, 5) for state in cells)
            assert computed == (t if use_cache else t * (t + 1) // 2)
            assert cells.count(1) == T * (T - 1) // 2  # the mask never changes
            assert sum(state == 4 for state in cells) == (max(t - 1, 0) if use_cache else 0)  # keys from the cache


def test_latex_shows_the_numbers(hello):
    model, tokenizer = hello
    trace = trace_attention(model, tokenizer.encode_batch("hell"), 0, 0)
    step = expand_attention_step(trace, 3)
    latex = step.to_latex(digits=2)
    assert "\\sqrt{16}" in latex and "/\\,4" in latex
    for w in step.weights.tolist():
        assert f"{w:.2f}" in latex
    assert latex.count("\\dots") == 1  # the 16-number output is shortened


def test_latex_writes_negative_numbers_as_signed_numbers(hello):
    model, tokenizer = hello
    step = expand_attention_step(trace_attention(model, tokenizer.encode_batch("hello"), 0, 0), 5)
    latex = step.to_latex(digits=2)
    negatives = [x for x in [*step.dots.tolist(), *step.output[:3].tolist()] if round(x, 2) < 0]
    assert negatives  # the test needs some
    for x in negatives:
        assert f"{{{x:.2f}}}" in latex  # {-0.60}: a sign, where a bare -0.60 after ",\\ " reads "− 0.60"
    assert "\\ -" not in latex and "[-" not in latex


def test_format_vectors():
    text = format_vectors(torch.tensor([[1.234, -0.001], [-5.0, 0.5]]), ["a", "bb"], digits=2)
    assert text.splitlines() == ["a    1.23  0.00", "bb  -5.00  0.50"]  # -0.00 is written 0.00


def test_trace_rejects_bad_input(hello):
    model, tokenizer = hello
    idx = tokenizer.encode_batch("hell")
    for bad_layer, error in ((-1, ValueError), (4, ValueError), (1.0, TypeError), (True, TypeError), (None, TypeError)):
        with pytest.raises(error, match="layer must be an int in 0..3"):
            trace_attention(model, idx, bad_layer, 0)
    for bad_head, error in ((-1, ValueError), (4, ValueError), ("0", TypeError)):
        with pytest.raises(error, match="head must be an int in 0..3"):
            trace_attention(model, idx, 0, bad_head)
    with pytest.raises(ValueError, match=r"\(1, seq_len\)"):
        trace_attention(model, idx.repeat(2, 1), 0, 0)
    with pytest.raises(ValueError, match=r"\(1, seq_len\)"):
        trace_attention(model, idx[0], 0, 0)
    with pytest.raises(TypeError, match="TinyGPT"):
        trace_attention("model", idx, 0, 0)


def test_expand_rejects_bad_input(hello):
    model, tokenizer = hello
    trace = trace_attention(model, tokenizer.encode_batch("hell"), 0, 0)
    for bad_t, error in ((0, ValueError), (5, ValueError), (2.0, TypeError), (True, TypeError)):
        with pytest.raises(error, match="t must be an int in 1..4"):
            expand_attention_step(trace, bad_t)
    with pytest.raises(TypeError, match="AttentionTrace"):
        expand_attention_step(trace.q, 1)
    assert isinstance(trace, AttentionTrace)


def test_perturbation_and_helpers_reject_bad_input(hello):
    model, tokenizer = hello
    idx = tokenizer.encode_batch("hell")
    kwargs = dict(tensor="q", positions=[1])
    with pytest.raises(ValueError, match="tensor must be one of 'q', 'k', 'v'"):
        trace_with_perturbation(model, idx, 0, 0, tensor="x", positions=[1])
    for positions, error in (([0], ValueError), ([5], ValueError), ([1.5], TypeError)):
        with pytest.raises(error, match="each position must be an int in 1..4"):
            trace_with_perturbation(model, idx, 0, 0, tensor="k", positions=positions)
    with pytest.raises(ValueError, match="at least one position"):
        trace_with_perturbation(model, idx, 0, 0, tensor="k", positions=[])
    with pytest.raises(ValueError, match="scale must be a finite number"):
        trace_with_perturbation(model, idx, 0, 0, scale=float("nan"), **kwargs)
    with pytest.raises(ValueError, match="seed must be an int >= 0"):
        trace_with_perturbation(model, idx, 0, 0, seed=-1, **kwargs)
    with pytest.raises(ValueError, match="layer must be an int in 0..3"):
        trace_with_perturbation(model, idx, 4, 0, **kwargs)
    with pytest.raises(ValueError, match="head must be an int"):
        trace_with_perturbation(model, idx, 0, 9, **kwargs)
    with pytest.raises(TypeError, match="TinyGPT"):
        trace_with_perturbation(None, idx, 0, 0, **kwargs)
    a = trace_attention(model, idx, 0, 0)
    b = trace_attention(model, idx[:, :3], 0, 0)
    with pytest.raises(ValueError, match="same shape"):
        output_change(a, b)
    with pytest.raises(TypeError, match="AttentionTrace"):
        output_change(a, a.output)
    with pytest.raises(ValueError, match="seq_len >= 2"):
        kv_prefix_change(model, idx[:, :1])
    with pytest.raises(TypeError, match="TinyGPT"):
        kv_prefix_change(object(), idx)
    with pytest.raises(ValueError, match="one label per row"):
        format_vectors(torch.ones(2, 3), ["a"])
    with pytest.raises(ValueError, match="digits must be an int >= 0"):
        format_vectors(torch.ones(1, 3), ["a"], digits=-1)
    with pytest.raises(ValueError, match="rows must be a 2-D tensor"):
        format_vectors(torch.ones(3), ["a"])
