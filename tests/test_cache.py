"""DynamicCache and StaticCache: what only they do. What every cache does is in test_cache_contract.py."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import kvlab
from kvlab import measure, memory
from kvlab.memory import kv_cache_bytes
from tests.helpers import random_model


def _kv(batch=2, heads=4, tokens=3, dim=8, seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    return torch.randn(batch, heads, tokens, dim, dtype=dtype), torch.randn(batch, heads, tokens, dim, dtype=dtype)


def _config(n_layer=2):
    return kvlab.GPTConfig(vocab_size=10, n_layer=n_layer, n_head=4, d_model=32)


TORCH_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


# --- chapter 03: building the cache ----------------------------------------------------------------------------------


def test_static_cache_returns_views_of_its_buffer_not_copies():
    cache = kvlab.StaticCache(_config(), 2, 10)
    keys, _ = cache.update(*_kv(), 0)
    assert keys.data_ptr() == cache.keys[0].data_ptr()


def test_static_cache_overflow_is_an_error_not_a_truncation():
    cache = kvlab.StaticCache(_config(), 2, 4)
    cache.update(*_kv(tokens=3), 0)
    with pytest.raises(ValueError, match="max_cache_len=4"):
        cache.update(*_kv(tokens=2), 0)
    assert cache.get_seq_length(0) == 3  # the failed write left the cache as it was


def test_static_cache_rejects_wrong_dtype_shape_and_sizes():
    cache = kvlab.StaticCache(_config(), 2, 4)
    with pytest.raises(TypeError, match="dtype"):
        cache.update(*_kv(dtype=torch.float16), 0)
    with pytest.raises(ValueError, match="does not fit the cache"):  # beam_search's tests expect these words too
        cache.update(*_kv(batch=3), 0)
    with pytest.raises(ValueError, match="max_cache_len"):
        kvlab.StaticCache(_config(), 2, 0)
    with pytest.raises(ValueError, match="batch_size"):
        kvlab.StaticCache(_config(), -1, 4)
    with pytest.raises(TypeError, match="max_cache_len"):  # a count, not a bool
        kvlab.StaticCache(_config(), 2, True)


def test_max_cache_shape():
    assert kvlab.DynamicCache().get_max_cache_shape() is None
    assert kvlab.StaticCache(_config(), 1, 7).get_max_cache_shape() == 7


def test_dynamic_cache_holds_views_of_the_qkv_output_until_its_first_concatenation():
    """What DynamicCache.nbytes documents: a prefill's K/V are stored uncopied, so the qkv buffer stays alive."""
    model = random_model()
    cache = kvlab.DynamicCache()
    idx = torch.tensor([[1, 2, 3, 4]])
    with torch.inference_mode():
        model(idx, cache)
        keys = cache.keys[0]  # a view: its memory is the whole (1, 4, 3 * d_model) qkv output, queries included
        assert keys.untyped_storage().nbytes() == 3 * keys.nbytes
        assert cache.nbytes == 2 * 2 * keys.nbytes  # what nbytes counts: K and V of 2 layers, not their buffers
        model(idx[:, :1], cache)
    keys = cache.keys[0]
    assert keys.untyped_storage().nbytes() == keys.nbytes and keys.is_contiguous()  # torch.cat's own tensor


def test_static_cache_reorder_needs_one_index_per_row():
    """It used to broadcast a single index over both rows, silently."""
    cache = kvlab.StaticCache(_config(n_layer=1), 2, 10)
    cache.update(*_kv(), 0)
    with pytest.raises(ValueError, match="one row for each"):
        cache.reorder_cache(torch.tensor([1]))


def test_static_cache_memory_is_held_up_front(hello):
    model, tok = hello
    small, big = kvlab.DynamicCache(), kvlab.StaticCache(model.config, 1, model.config.max_seq_len)
    for cache in (small, big):
        kvlab.generate(model, tok.encode_batch("h"), 10, cache=cache)
    assert small.get_seq_length() == big.get_seq_length() == 10
    assert (small.nbytes, big.nbytes) == (2048 * 10, 2048 * 128) == (20_480, 262_144)
    assert f"{big.nbytes / small.nbytes:.1f}" == "12.8"


def test_static_reorder_copies_two_whole_buffers(hello):
    model, tok = hello
    counting = measure.CopyCountingCache(kvlab.StaticCache(model.config, batch_size=3, max_cache_len=20))
    with torch.inference_mode():
        model(tok.encode_batch("the ca").repeat(3, 1), counting)
        before = counting.copied_bytes
        counting.reorder_cache(torch.tensor([0, 0, 1]))
    # index_select then copy_, each over every slot (filled or not) of every key and value buffer: exercise 3
    assert counting.copied_bytes - before == 2 * (2 * 4 * 3 * 64 * 20 * 4) == 245_760


# --- chapter 06: kv cache memory -------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["fp32", "bf16", "fp16"])
def test_hello_model_dynamic_cache_bytes_match_the_formula(hello, dtype):
    model, tokenizer = hello
    typed = kvlab.TinyGPT(model.config)
    typed.load_state_dict(model.state_dict())
    typed = typed.to(TORCH_DTYPES[dtype]).eval()
    cache = kvlab.DynamicCache()
    prompts = torch.cat([tokenizer.encode_batch(w) for w in ("the", "key")])
    kvlab.generate(typed, prompts, max_new_tokens=4, cache=cache)
    assert cache.get_seq_length() == 3 + 4 - 1  # the last new token is never fed back
    c = model.config
    expected = 2 * c.n_layer * 2 * 6 * c.d_model * memory.bytes_per_element(dtype)  # by hand
    assert cache.nbytes == expected == kv_cache_bytes(c.n_layer, 2, 6, c.d_model, memory.bytes_per_element(dtype))
    stacked = torch.stack([torch.stack([k, v]) for k, v in zip(cache.keys, cache.values)])
    assert list(stacked.shape) == [c.n_layer, 2, 2, c.n_head, 6, c.head_dim]
    assert stacked.nbytes == cache.nbytes


@settings(max_examples=25, deadline=None)
@given(n_layer=st.integers(1, 3), n_kv_head=st.integers(1, 4), group=st.integers(1, 3), head_dim=st.integers(1, 8),
       batch=st.integers(1, 3), max_len=st.integers(1, 20), dtype=st.sampled_from(sorted(TORCH_DTYPES)))
def test_static_cache_bytes_match_the_formula(n_layer, n_kv_head, group, head_dim, batch, max_len, dtype):
    n_head = n_kv_head * group
    config = kvlab.GPTConfig(vocab_size=11, n_layer=n_layer, n_head=n_head, d_model=n_head * head_dim,
                             n_kv_head=n_kv_head, max_seq_len=64)
    cache = kvlab.StaticCache(config, batch_size=batch, max_cache_len=max_len, dtype=TORCH_DTYPES[dtype])
    width = memory.bytes_per_element(dtype)
    assert cache.nbytes == kv_cache_bytes(n_layer, batch, max_len, config.d_model, width, n_head=n_head,
                                          n_kv_head=n_kv_head)
    assert cache.nbytes == 2 * n_layer * batch * n_kv_head * max_len * head_dim * width


@pytest.mark.parametrize("n_kv_head", [1, 2, 4])
def test_gqa_dynamic_cache_after_generation_matches_the_formula(n_kv_head):
    torch.manual_seed(0)
    config = kvlab.GPTConfig(vocab_size=13, n_layer=2, n_head=4, d_model=32, n_kv_head=n_kv_head, max_seq_len=32)
    model = kvlab.TinyGPT(config).eval()
    cache = kvlab.DynamicCache()
    kvlab.generate(model, torch.zeros(3, 5, dtype=torch.long), max_new_tokens=4, cache=cache)
    assert cache.nbytes == kv_cache_bytes(2, 3, 8, 32, 4, n_head=4, n_kv_head=n_kv_head) == 2 * 2 * 3 * 8 * (
        n_kv_head * 8) * 4


def test_static_cache_names_a_dtype_given_as_a_string():
    config = kvlab.GPTConfig(vocab_size=8, n_layer=1, n_head=2, d_model=8, max_seq_len=8)
    with pytest.raises(TypeError, match=r"dtype must be a torch.dtype such as torch.float16, got 'float16' \(str\)"):
        kvlab.StaticCache(config, 1, 4, dtype="float16")
