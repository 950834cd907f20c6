"""Cache strategies: same answers, exact byte counts, loud failures."""

import pytest
import torch

import kvlab
from kvlab.memory import kv_cache_bytes
from conftest import random_model


def _kv(batch=2, heads=4, tokens=3, dim=8, seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    return torch.randn(batch, heads, tokens, dim, dtype=dtype), torch.randn(batch, heads, tokens, dim, dtype=dtype)


def _config(n_layer=2):
    return kvlab.GPTConfig(vocab_size=10, n_layer=n_layer, n_head=4, d_model=32)


@pytest.mark.parametrize("make", [kvlab.DynamicCache, lambda: kvlab.StaticCache(_config(), 2, 10)])
def test_update_returns_past_and_new_tokens_in_order(make):
    cache = make()
    k1, v1 = _kv(tokens=3, seed=1)
    k2, v2 = _kv(tokens=2, seed=2)
    for layer in range(2):
        cache.update(k1, v1, layer)
    keys, values = cache.update(k2, v2, 0)
    assert torch.equal(keys, torch.cat([k1, k2], dim=2)) and torch.equal(values, torch.cat([v1, v2], dim=2))
    assert cache.get_seq_length(0) == 5 and cache.get_seq_length(1) == 3


def test_static_cache_returns_views_of_its_buffer_not_copies():
    cache = kvlab.StaticCache(_config(), 2, 10)
    keys, _ = cache.update(*_kv(), 0)
    assert keys.data_ptr() == cache.keys[0].data_ptr()


def test_static_cache_overflow_is_an_error_not_a_truncation():
    cache = kvlab.StaticCache(_config(), 2, 4)
    cache.update(*_kv(tokens=3), 0)
    with pytest.raises(ValueError, match="overflow: 5 tokens do not fit max_cache_len=4"):
        cache.update(*_kv(tokens=2), 0)
    assert cache.get_seq_length(0) == 3  # the failed write left the cache as it was


def test_static_cache_rejects_wrong_dtype_shape_and_sizes():
    cache = kvlab.StaticCache(_config(), 2, 4)
    with pytest.raises(TypeError, match="key dtype torch.float16 does not match the cache's dtype torch.float32"):
        cache.update(*_kv(dtype=torch.float16), 0)
    with pytest.raises(ValueError, match="does not fit the cache"):
        cache.update(*_kv(batch=3), 0)
    with pytest.raises(ValueError, match="max_cache_len must be an int >= 1, got 0"):
        kvlab.StaticCache(_config(), 2, 0)
    with pytest.raises(ValueError, match="batch_size must be an int >= 1, got -1"):
        kvlab.StaticCache(_config(), -1, 4)


@pytest.mark.parametrize("make", [kvlab.DynamicCache, lambda: kvlab.StaticCache(_config(), 2, 10)])
def test_bad_layer_index_is_an_error(make):
    with pytest.raises(ValueError, match="layer_idx must be .*got 5"):
        make().update(*_kv(), 5)


def test_max_cache_shape():
    assert kvlab.DynamicCache().get_max_cache_shape() is None
    assert kvlab.StaticCache(_config(), 1, 7).get_max_cache_shape() == 7


@pytest.mark.parametrize("make", [kvlab.DynamicCache, lambda: kvlab.StaticCache(_config(), 2, 10)])
def test_reorder_cache_permutes_batch_rows(make):
    cache = make()
    keys, values = _kv()
    cache.update(keys, values, 0)
    cache.reorder_cache(torch.tensor([1, 1]))
    reordered_keys, reordered_values = cache.update(*_kv(tokens=1, seed=3), 0)
    assert torch.equal(reordered_keys[:, :, :3], keys[[1, 1]])
    assert torch.equal(reordered_values[:, :, :3], values[[1, 1]])


@pytest.mark.parametrize("make", [kvlab.DynamicCache, lambda: kvlab.StaticCache(_config(), 2, 10)])
def test_reset_forgets_everything(make):
    cache = make()
    cache.update(*_kv(), 0)
    cache.reset()
    assert cache.get_seq_length() == 0
    keys, _ = cache.update(*_kv(tokens=1), 0)
    assert keys.shape[2] == 1


@pytest.mark.parametrize("n_kv_head", [4, 2, 1])
def test_kv_cache_bytes_equals_real_cache_bytes_after_generation(n_kv_head):
    model = random_model(n_layer=3, n_head=4, n_kv_head=n_kv_head, d_model=32)
    prompt = torch.randint(37, (2, 5))
    dynamic, static = kvlab.DynamicCache(), kvlab.StaticCache(model.config, batch_size=2, max_cache_len=5 + 11)
    for cache in (dynamic, static):
        out = kvlab.generate(model, prompt, 12, cache=cache)
    seq_len = out.shape[1] - 1  # the last token is sampled but never fed back, so it has no K/V yet
    expected = kv_cache_bytes(n_layer=3, batch_size=2, seq_len=seq_len, hidden_size=32, bytes_per_elem=4,
                              n_head=4, n_kv_head=n_kv_head)
    assert dynamic.get_seq_length() == seq_len
    assert dynamic.nbytes == expected
    assert static.nbytes == expected  # full: the buffer was sized for exactly this generation


def test_base_class_methods_must_be_implemented():
    with pytest.raises(NotImplementedError):
        kvlab.Cache().update(*_kv(), 0)


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


# --- bad input found by an audit ---

def _filled(cache, batch=2):
    keys, values = _kv(batch=batch, heads=4, tokens=3, dim=8)
    cache.update(keys, values, 0)
    return cache


@pytest.mark.parametrize("make", [
    kvlab.DynamicCache, lambda: kvlab.StaticCache(_config(n_layer=1), 2, 10),
    lambda: kvlab.compressed_cache.QuantizedCache(group_size=2, residual_length=2),
    lambda: kvlab.compressed_cache.SlidingWindowCache(8),
])
def test_reorder_cache_rejects_rows_it_does_not_have(make):
    cache = _filled(make())
    with pytest.raises(ValueError, match=r"beam_idx must hold rows 0..1, got \[0, 2\]"):
        cache.reorder_cache(torch.tensor([0, 2]))
    with pytest.raises(ValueError, match=r"beam_idx must hold rows 0..1, got \[-1, 0\]"):
        cache.reorder_cache(torch.tensor([-1, 0]))
    with pytest.raises(TypeError, match="beam_idx must be a 1-D tensor of row indices .* got list"):
        cache.reorder_cache([1, 0])
    with pytest.raises(TypeError, match="beam_idx must be a 1-D tensor of row indices .* got 1-D torch.float32"):
        cache.reorder_cache(torch.tensor([1.0, 0.0]))


def test_static_cache_reorder_needs_one_index_per_row():
    """It used to broadcast a single index over both rows, silently."""
    cache = _filled(kvlab.StaticCache(_config(n_layer=1), 2, 10))
    with pytest.raises(ValueError, match="one row for each of the cache's 2 rows, got 1 indices"):
        cache.reorder_cache(torch.tensor([1]))


def test_dynamic_cache_rejects_keys_of_another_batch_size():
    cache = _filled(kvlab.DynamicCache(), batch=1)
    keys, values = _kv(batch=2, heads=4, tokens=1, dim=8)
    with pytest.raises(ValueError, match=r"key shape \(2, 4, 1, 8\) does not fit the cache's .* = \(1, 4, 3, 8\)"):
        cache.update(keys, values, 0)


def test_paged_cache_reorder_rejects_a_negative_row():
    from kvlab.paged_cache import BlockPool, PagedCache

    config = _config(n_layer=1)
    cache = PagedCache(BlockPool(config, n_blocks=8, block_size=4))
    cache.update(*_kv(batch=2, heads=4, tokens=3, dim=8), 0)
    with pytest.raises(ValueError, match=r"beam_idx must hold rows 0..1, got \[0, -1\]"):
        cache.reorder_cache(torch.tensor([0, -1]))
