"""DynamicCache and StaticCache: what only they do. What every cache does is in test_cache_contract.py."""

import pytest
import torch

import kvlab
from conftest import random_model


def _kv(batch=2, heads=4, tokens=3, dim=8, seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    return torch.randn(batch, heads, tokens, dim, dtype=dtype), torch.randn(batch, heads, tokens, dim, dtype=dtype)


def _config(n_layer=2):
    return kvlab.GPTConfig(vocab_size=10, n_layer=n_layer, n_head=4, d_model=32)


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
