"""kvlab.paged_cache (chapter 10): block pool, paged cache, prefix sharing with copy-on-write.

The paged cache is lossless, so every test compares with a DynamicCache; byte counts are worked out by hand.
"""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import kvlab
from kvlab import memory
from kvlab.paged_cache import BlockPool, PagedCache
from tests.helpers import random_model

HELLO_PER_TOKEN = 2 * 4 * 64 * 4  # 2 (K, V) · n_layer · d_model · 4 bytes (fp32) = 2,048


# fp32 logits computed along different paths (batched or alone, cached or not) differ in the last bits: within 1e-5,
# relative to logits of size ~10 (a 16-core CPU gave 1.2e-5 absolute on a logit of 5).
CLOSE = dict(atol=1e-5, rtol=1e-5)


@settings(max_examples=10, deadline=None, derandomize=True)
@given(block_size=st.integers(1, 20), prompt_len=st.integers(1, 15), n_new=st.integers(1, 12),
       seed=st.integers(0, 1000))
def test_paged_cache_generates_what_the_dynamic_cache_does(block_size, prompt_len, n_new, seed):
    model = random_model(seed, n_kv_head=2)
    prompt = torch.randint(37, (2, prompt_len), generator=torch.Generator().manual_seed(seed))
    pool = BlockPool(model.config, n_blocks=2 * math.ceil((prompt_len + n_new) / block_size), block_size=block_size)
    paged, dynamic = PagedCache(pool), kvlab.DynamicCache()
    assert torch.equal(kvlab.generate(model, prompt, n_new, cache=paged),
                       kvlab.generate(model, prompt, n_new, cache=dynamic))
    for layer in range(model.config.n_layer):  # the K/V gathered from the blocks are the very same numbers
        table = torch.tensor(paged.block_tables)
        assert torch.equal(PagedCache._gather(pool.keys[layer], table, paged.lengths[layer]), dynamic.keys[layer])
        assert torch.equal(PagedCache._gather(pool.values[layer], table, paged.lengths[layer]), dynamic.values[layer])


def test_paged_cache_bytes_by_hand(hello):
    """The notebook's example: 26 tokens in blocks of 8 -> 4 blocks, 6 unused slots."""
    model, tokenizer = hello
    pool = BlockPool(model.config, n_blocks=16, block_size=8)
    cache = PagedCache(pool)
    tokens = kvlab.generate(model, tokenizer.encode_batch("hello w"), 20, cache=cache)
    assert torch.equal(tokens, kvlab.generate(model, tokenizer.encode_batch("hello w"), 20))
    assert cache.get_seq_length() == 26 and cache.block_tables == [[0, 1, 2, 3]]
    assert pool.bytes_per_block == 2 * 4 * 4 * 8 * 16 * 4 == 16_384  # 2 · n_layer · H_kv · block_size · D · 4
    assert pool.nbytes == 16 * 16_384
    assert cache.nbytes == pool.allocated_nbytes == 4 * 16_384
    assert cache.used_nbytes == 26 * HELLO_PER_TOKEN
    assert (cache.nbytes - cache.used_nbytes) // HELLO_PER_TOKEN == 6


@pytest.mark.parametrize("length, block_size, blocks", [(1, 1, 1), (16, 16, 1), (17, 16, 2), (100, 16, 7), (5, 128, 1)])
def test_paged_cache_holds_ceil_length_over_block_size_blocks(length, block_size, blocks):
    model = random_model(n_kv_head=1, max_seq_len=128)
    pool = BlockPool(model.config, n_blocks=3 * blocks, block_size=block_size)
    cache = PagedCache(pool)
    with torch.inference_mode():
        model(torch.zeros(3, length, dtype=torch.long), cache)  # three rows, each its own table
    per_block = 2 * 2 * 1 * block_size * 8 * 4  # 2 · n_layer · H_kv · block_size · head_dim · 4
    assert pool.bytes_per_block == per_block
    assert cache.nbytes == 3 * blocks * per_block == pool.allocated_nbytes
    assert cache.used_nbytes == 3 * length * 2 * 2 * 1 * 8 * 4
    assert memory.blocks_needed(length, block_size) == blocks


def test_pool_dtype_sets_the_bytes():
    model = random_model()
    pool = BlockPool(model.config, n_blocks=3, block_size=4, dtype=torch.bfloat16)
    assert pool.bytes_per_block == 2 * 2 * 4 * 4 * 8 * 2 and pool.nbytes == 3 * pool.bytes_per_block


def test_fork_shares_blocks_and_copy_on_write_keeps_the_parent_intact():
    model = random_model(n_kv_head=1)
    pool = BlockPool(model.config, n_blocks=10, block_size=4)
    parent = PagedCache(pool)
    with torch.inference_mode():
        model(torch.arange(6)[None], parent)  # 6 tokens: block 0 full, block 1 holds 2
        parent_keys = [k.clone() for k in pool.keys]
        child = parent.fork()
        assert child.block_tables == parent.block_tables == [[0, 1]] and pool.ref_counts[:2] == [2, 2]
        assert pool.n_allocated == 2  # forking copied nothing
        model(torch.tensor([[7, 8]]), child)  # writes into block 1: copied first
    assert child.block_tables == [[0, 2]] and pool.ref_counts[:3] == [2, 1, 1]
    for layer, keys in enumerate(parent_keys):
        assert torch.equal(pool.keys[layer][:2], keys[:2])  # the parent's blocks are untouched
        assert torch.equal(pool.keys[layer][2, :, :2], keys[1, :, :2])  # the copy kept the shared slots
    child.reset()
    parent.reset()
    assert pool.n_free == 10


def test_forked_prefix_gives_the_unshared_outputs(hello):
    """The notebook's section 3: four requests after a 33-token system prompt, blocks of 8."""
    model, tokenizer = hello
    system = "the cache trades memory for time\n"
    user_texts = ["hello w", "the qu", "a new t", "prefill r"]
    pool, unshared_pool = (BlockPool(model.config, n_blocks=64, block_size=8) for _ in range(2))
    prefix = PagedCache(pool)
    with torch.inference_mode():
        model(tokenizer.encode_batch(system), prefix)
    assert prefix.get_seq_length() == 33 and prefix.block_tables == [[0, 1, 2, 3, 4]]
    caches = []
    for text in user_texts:
        prompt = tokenizer.encode_batch(system + text)
        cache = prefix.fork()
        assert torch.equal(kvlab.generate(model, prompt, 16, cache=cache), kvlab.generate(model, prompt, 16))
        kvlab.generate(model, prompt, 16, cache=PagedCache(unshared_pool))
        caches.append(cache)
    assert [c.block_tables[0][:5] for c in caches] == [[0, 1, 2, 3, b] for b in (5, 8, 11, 14)]
    assert pool.ref_counts[:5] == [5, 5, 5, 5, 1]
    lengths = [c.get_seq_length() for c in caches]
    assert lengths == [55, 54, 55, 57]
    # by hand: unshared Σ ceil(L/8) = 7+7+7+8 = 29; shared 5 + Σ (ceil(L/8) - 4) = 5+3+3+3+4 = 18
    assert (unshared_pool.n_allocated, pool.n_allocated) == (29, 18)
    assert memory.paged_reserved_tokens(lengths, 8) == 29 * 8
    assert memory.paged_reserved_tokens(lengths, 8, shared_prefix=33) == 18 * 8
    assert round((29 - 18) / 29 * 100) == 38


def test_paged_beam_search_shares_blocks_and_matches_the_dynamic_cache(hello):
    model, tokenizer = hello
    prompt = tokenizer.encode_batch("the ca")
    pool = BlockPool(model.config, n_blocks=40, block_size=4)
    cache = PagedCache(pool)
    beams, scores = kvlab.beam_search(model, prompt, 3, 10, cache=cache)
    reference_beams, reference_scores = kvlab.beam_search(model, prompt, 3, 10)
    assert torch.equal(beams, reference_beams)
    torch.testing.assert_close(scores, reference_scores, **CLOSE)
    assert pool.n_allocated < 3 * math.ceil(cache.get_seq_length() / 4)  # beams share their common past
    assert sum(pool.ref_counts) == sum(len(t) for t in cache.block_tables)
    cache.reset()
    assert pool.n_free == 40 and cache.get_seq_length() == 0 and cache.nbytes == 0


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(n_blocks=4, block_size=0), ValueError, "block_size"),
    (dict(n_blocks=0, block_size=4), ValueError, "n_blocks"),
    (dict(n_blocks=4, block_size=2.5), TypeError, "block_size"),
    (dict(n_blocks=True, block_size=4), TypeError, "n_blocks"),
])
def test_block_pool_bad_sizes(kwargs, error, message):
    with pytest.raises(error, match=message):
        BlockPool(random_model().config, **kwargs)


def test_an_exhausted_pool_raises_and_changes_nothing():
    model = random_model()
    pool = BlockPool(model.config, n_blocks=3, block_size=4)
    cache = PagedCache(pool)
    with torch.inference_mode():
        model(torch.zeros(1, 10, dtype=torch.long), cache)  # 3 blocks: the pool is full
        with pytest.raises(ValueError, match="block pool is exhausted"):
            model(torch.zeros(1, 3, dtype=torch.long), cache)
    assert cache.block_tables == [[0, 1, 2]] and cache.get_seq_length() == 10


def test_paged_cache_misuse_raises():
    """What only a paged cache can get wrong; what every cache checks is in test_cache_contract.py."""
    model = random_model()
    pool = BlockPool(model.config, n_blocks=8, block_size=4)
    with pytest.raises(TypeError, match="pool"):
        PagedCache(kvlab.StaticCache(model.config, 1, 4))
    with pytest.raises(ValueError, match="does not fit"):  # the pool's heads, before any token is stored
        PagedCache(pool).update(torch.zeros(2, 2, 3, 8), torch.zeros(2, 2, 3, 8), 0)
    with pytest.raises(ValueError, match="already free"):
        pool.release(7)
    with pytest.raises(ValueError, match="only allocated blocks can be shared"):
        pool.share(7)


@settings(max_examples=6, deadline=None, derandomize=True)
@given(lengths=st.lists(st.integers(1, 30), min_size=1, max_size=4), block_size=st.integers(1, 9),
       prefix_len=st.integers(1, 10))
def test_paged_reserved_tokens_equals_what_the_pool_hands_out(lengths, block_size, prefix_len):
    model = random_model(n_layer=1, n_kv_head=1)
    pool = BlockPool(model.config, n_blocks=64, block_size=block_size)
    prefix = PagedCache(pool)
    with torch.inference_mode():
        model(torch.zeros(1, prefix_len, dtype=torch.long), prefix)
        for n in lengths:
            model(torch.zeros(1, n, dtype=torch.long), prefix.fork())
    total = [prefix_len + n for n in lengths]
    assert pool.n_allocated * block_size == memory.paged_reserved_tokens(total, block_size, shared_prefix=prefix_len)


def test_block_pool_refuses_negative_counts_and_block_ids():
    """allocate(-3) once sliced five blocks off the free list; share(-1) / release(-1) acted on the last block."""
    pool = BlockPool(random_model().config, n_blocks=8, block_size=4)
    with pytest.raises(ValueError, match="n must be an int >= 0"):
        pool.allocate(-3)
    assert pool.n_free == 8 and pool.allocate(0) == []
    (block,) = pool.allocate(1)
    for call in (pool.share, pool.release):
        with pytest.raises(ValueError, match=r"block must be an int in 0\.\.7"):
            call(-1)
        with pytest.raises(TypeError, match="block must be an int"):
            call(float(block))
    assert pool.ref_counts == [1] + [0] * 7  # nothing changed by the refused calls
