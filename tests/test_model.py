"""TinyGPT: the cache must not change a single logit, and bad input must fail loudly."""

import dataclasses
import io

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import kvlab
from kvlab.masks import attention, causal_mask, padding_mask
from tests.helpers import random_model

TOL = dict(rtol=1e-5, atol=1e-5)  # float32 sums in another order differ by ~1e-5 on logits of size ~3


@st.composite
def model_and_schedule(draw):
    """A random config and a random way to feed a sequence: a prefill chunk, then chunks of 1 or more tokens."""
    n_kv_head = draw(st.sampled_from([1, 2, 4]))
    n_head = n_kv_head * draw(st.sampled_from([1, 2]))
    sizes = dict(n_layer=draw(st.integers(1, 3)), n_head=n_head, n_kv_head=n_kv_head,
                 d_model=n_head * draw(st.sampled_from([4, 8, 16])), vocab_size=draw(st.integers(5, 40)))
    chunks = draw(st.lists(st.integers(1, 6), min_size=1, max_size=6))  # chunks[0] is the prefill
    batch = draw(st.integers(1, 3))
    return sizes, chunks, batch, draw(st.integers(0, 2**16))


def _cached_logits(model, idx, chunks, cache):
    outputs, start = [], 0
    for size in chunks:
        outputs.append(model(idx[:, start:start + size], cache))
        start += size
    return torch.cat(outputs, dim=1)


# --- chapter 01: autoregressive generation ---------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(model_and_schedule(), st.sampled_from(["dynamic", "static"]))
def test_cached_logits_equal_uncached(case, kind):
    sizes, chunks, batch, seed = case
    model = random_model(seed, max_seq_len=64, **sizes)
    torch.manual_seed(seed)
    idx = torch.randint(model.config.vocab_size, (batch, sum(chunks)))
    if kind == "dynamic":
        cache = kvlab.DynamicCache()
    else:
        cache = kvlab.StaticCache(model.config, batch_size=batch, max_cache_len=sum(chunks) + 3)
    with torch.no_grad():
        torch.testing.assert_close(_cached_logits(model, idx, chunks, cache), model(idx), **TOL)
    assert cache.get_seq_length() == sum(chunks)


def test_hello_model_prefill_then_decode_matches_full_forward(hello):
    model, tok = hello
    idx = tok.encode_batch("hello world\nthe cache")
    cache = kvlab.DynamicCache()
    with torch.no_grad():
        cached = _cached_logits(model, idx, [8] + [1] * (idx.shape[1] - 8), cache)
        torch.testing.assert_close(cached, model(idx), **TOL)


def test_written_out_attention_equals_fused_attention():
    """`attention` (shown in the chapters) and the model's fused path compute the same numbers, with a past."""
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 3, 4, 8), torch.randn(2, 3, 7, 8), torch.randn(2, 3, 7, 8)
    torch.testing.assert_close(attention(q, k, v), kvlab.model.CausalSelfAttention._attend(q, k, v), **TOL)
    torch.testing.assert_close(attention(q[:, :, -1:], k, v),
                               kvlab.model.CausalSelfAttention._attend(q[:, :, -1:], k, v), **TOL)


def test_causal_mask_with_a_past_sees_all_cached_keys():
    mask = causal_mask(2, 5)
    assert mask.tolist() == [[True, True, True, True, False], [True, True, True, True, True]]


def test_tied_lm_head_and_gpt2_shapes():
    model = random_model(n_layer=1)
    names = dict(model.named_parameters())
    assert "lm_head.weight" not in names  # the LM head is the token embedding
    assert names["blocks.0.attn.qkv.weight"].shape == (3 * 32, 32)
    assert all(name in names for name in ["blocks.0.attn.qkv.bias", "blocks.0.mlp.fc.bias", "ln_f.bias"])
    assert model.blocks[0].ln_1.eps == 1e-5


@pytest.mark.parametrize("sizes, error, message", [
    (dict(d_model=30, n_head=4), ValueError, "must be divisible by n_head"),
    (dict(n_head=4, n_kv_head=3), ValueError, "must be divisible by n_kv_head"),
    (dict(n_layer=0), ValueError, "n_layer"),
    (dict(vocab_size=-1), ValueError, "vocab_size"),
    (dict(d_model=32.0), TypeError, "d_model"),
    (dict(n_head=True), TypeError, "n_head"),
])
def test_config_rejects_bad_sizes(sizes, error, message):
    with pytest.raises(error, match=message):
        kvlab.GPTConfig(**{**dict(vocab_size=10, n_layer=1, n_head=4, d_model=32), **sizes})


def test_config_holds_plain_ints_so_a_checkpoint_loads_with_weights_only():
    config = kvlab.GPTConfig(vocab_size=np.int64(10), n_head=4, d_model=32)
    assert type(config.vocab_size) is int


def test_config_defaults_to_multi_head_and_derives_head_dim():
    config = kvlab.GPTConfig(vocab_size=10, n_head=4, d_model=32)
    assert (config.n_kv_head, config.head_dim) == (4, 8)


def test_config_is_frozen_and_replace_derives_n_kv_head_again():
    """Changing n_head used to keep the old derived n_kv_head: silently a grouped-query model."""
    config = kvlab.GPTConfig(vocab_size=10, n_head=4, d_model=32)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.n_head = 8
    wider = dataclasses.replace(config, n_head=8)
    assert (wider.n_head, wider.n_kv_head) == (8, 8)
    assert kvlab.TinyGPT(wider).blocks[0].attn.n_kv_head == 8  # multi-head, as GPTConfig(n_head=8) is
    grouped = kvlab.GPTConfig(vocab_size=10, n_head=4, n_kv_head=2, d_model=32)
    assert dataclasses.replace(grouped, n_head=8).n_kv_head == 2  # given, so kept
    assert dataclasses.replace(config, n_kv_head=1).n_kv_head == 1
    assert config == kvlab.GPTConfig(vocab_size=10, n_head=4, d_model=32, n_kv_head=4)
    saved = io.BytesIO()
    torch.save(dataclasses.asdict(config), saved)  # a derived count is saved as a plain int
    saved.seek(0)
    assert kvlab.GPTConfig(**torch.load(saved, weights_only=True)) == config


def test_bad_inputs_raise_clear_errors():
    model = random_model(max_seq_len=8)
    with pytest.raises(ValueError, match="exceeds max_seq_len=8"):
        model(torch.zeros(1, 9, dtype=torch.long))
    with pytest.raises(ValueError, match="token id 37 .* 0..36"):
        model(torch.tensor([[1, 37]]))
    with pytest.raises(ValueError, match="token id -1 "):
        model(torch.tensor([[-1, 2]]))
    with pytest.raises(ValueError, match="token id 37 "):  # a decode step with a cache checks ids as well
        model(torch.tensor([[37]], dtype=torch.int32), kvlab.DynamicCache())
    with pytest.raises(TypeError, match="idx must have dtype"):
        model(torch.zeros(1, 3))
    with pytest.raises(ValueError, match="idx must be a \\(batch, seq_len\\) tensor"):
        model(torch.zeros(3, dtype=torch.long))
    with pytest.raises(TypeError, match="idx .* \\(list\\)"):
        model([[1, 2]])


def test_forward_reads_no_ids_on_a_cpu_unless_one_is_bad(monkeypatch):
    """The id-range check is a pass over every id: a decode loop must not pay it per step (the lookup catches it)."""
    model = random_model()
    monkeypatch.setattr(type(model), "_check_token_ids", lambda self, idx: pytest.fail("ids read on a good call"))
    with torch.no_grad():
        kvlab.generate(model, torch.tensor([[1, 2, 3]]), 5)
        model(torch.tensor([[1, 36]]))


def test_weights_have_gpt2s_conv1d_layout_and_the_hello_model_keeps_it(hello):
    """`conv1d_layout`: every Linear weight is stored as its transpose (faster CPU decode), loaded weights too."""
    for model in (random_model(), hello[0]):
        for module in model.modules():
            if isinstance(module, torch.nn.Linear):
                assert module.weight.stride() == (1, module.weight.shape[0])


def test_cache_overflowing_max_seq_len_is_an_error():
    model = random_model(max_seq_len=8)
    cache = kvlab.DynamicCache()
    model(torch.zeros(1, 8, dtype=torch.long), cache)
    with pytest.raises(ValueError, match="exceeds max_seq_len=8"):
        model(torch.zeros(1, 1, dtype=torch.long), cache)


# --- chapter 06: kv cache memory -------------------------------------------------------------------------------------


@pytest.mark.parametrize("n_head, n_kv_head", [(4, 2), (4, 1), (6, 2)])
def test_grouped_query_attention_equals_multi_head_with_each_kv_head_repeated(n_head, n_kv_head):
    """Query head h reads K/V head h // (n_head // n_kv_head), as transformers' `repeat_kv` does.

    Built independently of the model's own grouping: a multi-head model whose K and V projections are the GQA
    model's, each head's rows repeated for its group (heads 0, 0, 1, 1 for 4 over 2), must give the same logits,
    with and without a cache. Cached == uncached alone cannot see a wrong grouping (e.g. `repeat` in place of
    `repeat_interleave`): both paths would share it.
    """
    gqa = random_model(3, n_head=n_head, n_kv_head=n_kv_head, d_model=8 * n_head)
    config = gqa.config
    mha = kvlab.TinyGPT(kvlab.GPTConfig(vocab_size=config.vocab_size, n_layer=config.n_layer, n_head=n_head,
                                        d_model=config.d_model, max_seq_len=config.max_seq_len)).eval()
    group, d, kv_dim = n_head // n_kv_head, config.d_model, n_kv_head * config.head_dim
    state = gqa.state_dict()
    for name, tensor in state.items():
        if name.endswith("qkv.weight") or name.endswith("qkv.bias"):
            q, k, v = tensor.split((d, kv_dim, kv_dim), dim=0)
            per_head = (n_kv_head, config.head_dim) + tuple(tensor.shape[1:])
            k, v = (t.reshape(per_head).repeat_interleave(group, dim=0).reshape((d,) + tuple(tensor.shape[1:]))
                    for t in (k, v))
            state[name] = torch.cat([q, k, v], dim=0)
    mha.load_state_dict(state)
    idx = torch.randint(config.vocab_size, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = mha(idx)
        torch.testing.assert_close(gqa(idx), expected, **TOL)
        cache = kvlab.DynamicCache()
        cached = torch.cat([gqa(idx[:, :5], cache), gqa(idx[:, 5:6], cache), gqa(idx[:, 6:], cache)], dim=1)
    torch.testing.assert_close(cached, expected, **TOL)
    assert cache.keys[0].shape[1] == n_kv_head  # the cache holds the unrepeated heads


# --- chapter 10: serving many requests -------------------------------------------------------------------------------


def test_padding_mask_by_hand():
    attention_mask = torch.tensor([[0, 0, 1], [1, 1, 1]])
    positions, mask = padding_mask(attention_mask, 3)
    assert positions.tolist() == [[0, 0, 0], [0, 1, 2]]
    assert mask.shape == (2, 1, 3, 3)
    assert mask[0, 0].int().tolist() == [[1, 0, 0], [0, 1, 0], [0, 0, 1]]  # padding sees only itself
    assert mask[1, 0].int().tolist() == [[1, 0, 0], [1, 1, 0], [1, 1, 1]]  # no padding: the causal mask


def test_padding_mask_for_a_decode_step_covers_the_cached_keys():
    attention_mask = torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1]])  # 3 cached + 1 new token
    positions, mask = padding_mask(attention_mask, 1)
    assert positions.tolist() == [[2], [3]]
    assert mask[:, 0, 0].int().tolist() == [[0, 1, 1, 1], [1, 1, 1, 1]]


@settings(max_examples=40, deadline=None, derandomize=True)
@given(st.lists(st.lists(st.integers(0, 1), min_size=3, max_size=3), min_size=1, max_size=4), st.integers(1, 3))
def test_padding_mask_never_leaves_a_query_with_nothing_to_see(rows, n_new):
    _, mask = padding_mask(torch.tensor(rows), n_new)
    assert bool(mask.any(dim=-1).all())


def test_an_all_ones_mask_gives_the_unmasked_logits():
    model = random_model(3)
    idx = torch.randint(37, (2, 6), generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        torch.testing.assert_close(model(idx, attention_mask=torch.ones(2, 6)), model(idx), atol=1e-6, rtol=0)


def test_without_an_attention_mask_no_mask_is_built(monkeypatch):
    """The default path does no extra work: padding_mask is never called."""
    def fail(*_):
        raise AssertionError("padding_mask called without an attention_mask")

    monkeypatch.setattr(kvlab.model, "padding_mask", fail)
    model = random_model()
    idx = torch.zeros(2, 4, dtype=torch.long)
    with torch.inference_mode():
        model(idx)
        cache = kvlab.DynamicCache()
        model(idx, cache)
        model(idx[:, :1], cache)
    with pytest.raises(AssertionError, match="padding_mask called"):
        model(idx, attention_mask=torch.ones(2, 4))


def test_the_default_path_is_unchanged_by_the_mask_argument(hello):
    model, tokenizer = hello
    assert tokenizer.decode(kvlab.generate(model, tokenizer.encode_batch("h"), 4)[0]) == "hello"


@pytest.mark.parametrize("make_mask, error, message", [
    (lambda: torch.ones(2, 4), ValueError, r"attention_mask .* = \(2, 5\), got \(2, 4\)"),
    (lambda: torch.ones(1, 5), ValueError, r"= \(2, 5\), got \(1, 5\)"),
    (lambda: torch.full((2, 5), 2), ValueError, "only 1 \\(real token\\) and 0 \\(padding\\)"),
    (lambda: [[1] * 5] * 2, TypeError, "attention_mask .* got list"),
])
def test_bad_attention_masks_raise(make_mask, error, message):
    model = random_model()
    with pytest.raises(error, match=message):
        model(torch.zeros(2, 5, dtype=torch.long), attention_mask=make_mask())


def test_with_a_cache_the_mask_must_cover_the_cached_tokens_too():
    model = random_model()
    cache = kvlab.DynamicCache()
    model(torch.zeros(1, 3, dtype=torch.long), cache, torch.ones(1, 3))
    with pytest.raises(ValueError, match=r"\(1, 4\), got \(1, 1\)"):
        model(torch.zeros(1, 1, dtype=torch.long), cache, torch.ones(1, 1))


def test_model_names_a_mask_that_does_not_cover_the_keys():
    model = random_model()
    cache = kvlab.compressed_cache.SlidingWindowCache(4)
    idx = torch.tensor([[1, 2, 3, 4, 5, 6]])
    with torch.inference_mode():
        model(idx, cache)  # the cache keeps 4 of 6 tokens
        with pytest.raises(ValueError, match="attention_mask covers 7 tokens"):
            model(idx[:, -1:], cache, torch.ones(1, 7, dtype=torch.long))
