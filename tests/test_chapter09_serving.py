"""Chapter 09: batching with padding, the paged cache, prefix sharing and the head-split cache.

Every strategy is lossless, so every test compares with the plain path (a DynamicCache, or each prompt alone);
byte counts are checked against numbers worked out by hand from the shapes.
"""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import kvlab
from kvlab import memory, plots
from kvlab.model import padding_mask
from kvlab.paged_cache import BlockPool, PagedCache
from kvlab.serving import HeadSplitCache, generate_batch, pad_left

from conftest import random_model


HELLO_PER_TOKEN = 2 * 4 * 64 * 4  # 2 (K, V) · n_layer · d_model · 4 bytes (fp32) = 2,048
# fp32 logits computed along different paths (batched or alone, cached or not) differ in the last bits: within 1e-5,
# relative to logits of size ~10 (a 16-core CPU gave 1.2e-5 absolute on a logit of 5).
CLOSE = dict(atol=1e-5, rtol=1e-5)


def _alone_logits(model, ids):
    with torch.inference_mode():
        return model(torch.tensor([ids]))[0]


# --- the model's attention mask ---------------------------------------------------------------------------------

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


@settings(max_examples=12, deadline=None, derandomize=True)
@given(lengths=st.lists(st.integers(1, 9), min_size=1, max_size=4), seed=st.integers(0, 1000),
       n_kv_head=st.sampled_from([4, 2, 1]))
def test_padded_batch_logits_equal_each_prompt_alone(lengths, seed, n_kv_head):
    model = random_model(seed, n_kv_head=n_kv_head)
    generator = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(37, (n,), generator=generator).tolist() for n in lengths]
    idx, attention_mask = pad_left(prompts, pad_id=seed % 37)
    with torch.inference_mode():
        batched = model(idx, attention_mask=attention_mask)
    assert bool(batched.isfinite().all())  # no NaN from padding queries, anywhere
    for b, ids in enumerate(prompts):
        torch.testing.assert_close(batched[b, idx.shape[1] - len(ids):], _alone_logits(model, ids),
                                   **CLOSE)


def test_the_pad_token_does_not_matter(hello):
    model, tokenizer = hello
    prompts = [tokenizer.encode("h"), tokenizer.encode("the cache")]
    outputs = [generate_batch(model, prompts, 8, pad_id=pad_id, return_logits=True) for pad_id in (0, 7, 24)]
    for rows, logits in outputs[1:]:
        assert rows == outputs[0][0]
        torch.testing.assert_close(logits, outputs[0][1], **CLOSE)


def test_an_all_ones_mask_gives_the_unmasked_logits():
    model = random_model(3)
    idx = torch.randint(37, (2, 6), generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        torch.testing.assert_close(model(idx, attention_mask=torch.ones(2, 6)), model(idx), atol=1e-6, rtol=0)


def test_without_a_mask_padding_changes_the_logits(hello):
    """The notebook's control: the padded batch without its mask is a different text."""
    model, tokenizer = hello
    prompts = [tokenizer.encode(t) for t in ("h", "the ca", "hello w")]
    idx, _ = pad_left(prompts)
    with torch.inference_mode():
        unmasked = model(idx)
    assert (unmasked[0, -1:] - _alone_logits(model, prompts[0])).abs().max() > 1.0
    assert (unmasked[2] - _alone_logits(model, prompts[2])).abs().max() <= 1e-5  # the unpadded row


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
    (lambda: torch.ones(2, 4), ValueError, r"attention_mask must have shape \(batch, cached \+ new\) = \(2, 5\), "
                                           r"got \(2, 4\)"),
    (lambda: torch.ones(1, 5), ValueError, r"= \(2, 5\), got \(1, 5\)"),
    (lambda: torch.full((2, 5), 2), ValueError, "only 1 \\(real token\\) and 0 \\(padding\\)"),
    (lambda: [[1] * 5] * 2, TypeError, "attention_mask must be a torch.Tensor of 1s and 0s, got list"),
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


# --- pad_left and generate_batch -------------------------------------------------------------------------------

def test_pad_left_by_hand():
    idx, attention_mask = pad_left([[5], [1, 2, 3]], pad_id=9)
    assert idx.tolist() == [[9, 9, 5], [1, 2, 3]]
    assert attention_mask.tolist() == [[0, 0, 1], [1, 1, 1]]


@pytest.mark.parametrize("prompts, pad_id, error, message", [
    ([], 0, ValueError, "prompts"),
    ("hello", 0, TypeError, "prompts"),
    ([[1], []], 0, ValueError, r"prompts\[1\]"),
    ([[1], "ab"], 0, TypeError, r"prompts\[1\]"),
    ([[1, 2.0]], 0, TypeError, r"prompts\[0\] token id"),
    ([[1, True]], 0, TypeError, r"prompts\[0\] token id"),
    ([[1]], None, TypeError, "pad_id"),
])
def test_pad_left_bad_input(prompts, pad_id, error, message):
    with pytest.raises(error, match=message):
        pad_left(prompts, pad_id)


@settings(max_examples=8, deadline=None, derandomize=True)
@given(lengths=st.lists(st.integers(1, 12), min_size=1, max_size=4), seed=st.integers(0, 1000))
def test_generate_batch_equals_generating_each_prompt_alone(hello, lengths, seed):
    """Greedy tokens identical, and every step's logits within 1e-5 of the row's own (teacher-forced) logits."""
    model, tokenizer = hello
    corpus = "hello world\nthe cache stores keys and values\nprefill reads the whole prompt at once\n"
    generator = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, len(corpus) - 12, (len(lengths),), generator=generator).tolist()
    prompts = [tokenizer.encode(corpus[s:s + n]) for s, n in zip(starts, lengths)]
    n_new = 10
    rows, logits = generate_batch(model, prompts, n_new, return_logits=True)
    assert logits.shape == (len(prompts), n_new, tokenizer.vocab_size)
    for b, (ids, row) in enumerate(zip(prompts, rows)):
        assert row == kvlab.generate(model, torch.tensor([ids]), n_new)[0].tolist()
        own = _alone_logits(model, row[:-1])[len(ids) - 1:]
        torch.testing.assert_close(logits[b], own, **CLOSE)


def _batch_with(model, prompts, n_new, cache):
    return generate_batch(model, prompts, n_new, cache=cache, return_logits=True)


@pytest.mark.parametrize("kind", ["static", "paged-1", "paged-5", "head-split-2", "head-split-4"])
def test_generate_batch_with_every_cache_equals_the_dynamic_cache(hello, kind):
    model, tokenizer = hello
    prompts = [tokenizer.encode(t) for t in ("h", "the ca", "hello w", "a new t")]
    n_new = 12
    if kind == "static":
        cache = kvlab.StaticCache(model.config, batch_size=4, max_cache_len=7 + n_new)
    elif kind.startswith("paged"):
        cache = PagedCache(BlockPool(model.config, n_blocks=80, block_size=int(kind.split("-")[1])))
    else:
        cache = HeadSplitCache(model.config, tp=int(kind.split("-")[2]))
    rows, logits = _batch_with(model, prompts, n_new, cache)
    reference_rows, reference_logits = _batch_with(model, prompts, n_new, kvlab.DynamicCache())
    assert rows == reference_rows
    torch.testing.assert_close(logits, reference_logits, **CLOSE)


def test_generate_batch_samples_reproducibly(hello):
    model, tokenizer = hello
    prompts = [tokenizer.encode("h"), tokenizer.encode("the")]
    runs = [generate_batch(model, prompts, 6, temperature=1.0, top_k=5, generator=torch.Generator().manual_seed(1))
            for _ in range(2)]
    assert runs[0] == runs[1]
    assert [row[:len(p)] for row, p in zip(runs[0], prompts)] == prompts


@pytest.mark.parametrize("kwargs, message", [
    (dict(max_new_tokens=0), "max_new_tokens"),
    (dict(max_new_tokens=60), "max_seq_len"),
    (dict(max_new_tokens=2, temperature=-1.0), "temperature"),
    (dict(max_new_tokens=2, top_k=0), "top_k"),
])
def test_generate_batch_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        generate_batch(random_model(), [[1, 2], [1, 2, 3, 4, 5]], **kwargs)


def test_generate_batch_needs_an_empty_cache():
    model = random_model()
    cache = kvlab.DynamicCache()
    model(torch.zeros(1, 2, dtype=torch.long), cache)
    with pytest.raises(ValueError, match="empty cache"):
        generate_batch(model, [[1]], 2, cache=cache)
    with pytest.raises(TypeError, match="cache"):
        generate_batch(model, [[1]], 2, cache={})


# --- PagedCache ------------------------------------------------------------------------------------------------

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


# --- the waste arithmetic ------------------------------------------------------------------------------------------

def test_reserved_tokens_by_hand():
    assert memory.contiguous_reserved_tokens([3, 10, 1], 16) == 48
    assert memory.paged_reserved_tokens([3, 10, 1], 4) == (1 + 3 + 1) * 4
    assert memory.paged_reserved_tokens([3, 10, 1], 1) == 14  # block size 1: nothing wasted
    # prefix of 6 in blocks of 4: 2 prefix blocks; each sequence owns ceil(L/4) - 1 from block 1 on
    assert memory.paged_reserved_tokens([6, 9, 13], 4, shared_prefix=6) == (2 + 0 + 2 + 3) * 4
    assert memory.paged_reserved_tokens([8, 9], 4, shared_prefix=8) == (2 + 0 + 1) * 4  # whole blocks: no copy
    assert memory.blocks_needed(0, 4) == 0


@settings(max_examples=25, deadline=None, derandomize=True)
@given(lengths=st.lists(st.integers(0, 40), max_size=6), block_size=st.integers(1, 16))
def test_paged_waste_is_less_than_one_block_per_sequence(lengths, block_size):
    waste = memory.paged_reserved_tokens(lengths, block_size) - sum(lengths)
    assert 0 <= waste <= len(lengths) * (block_size - 1)
    assert memory.paged_reserved_tokens(lengths, 40) == memory.contiguous_reserved_tokens(
        [n for n in lengths if n], 40)  # one block of max_len per (non-empty) request is contiguous allocation


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


def test_notebook_waste_numbers():
    """Section 2's claims, from the same seeded lengths: 49.3% unused contiguous, 11.0% and 8.1 slots at 16."""
    lengths = torch.randint(1, 129, (32,), generator=torch.Generator().manual_seed(0)).tolist()
    used = sum(lengths)
    contiguous = memory.contiguous_reserved_tokens(lengths, 128)
    assert f"{(contiguous - used) / contiguous:.1%}" == "49.3%"
    paged = memory.paged_reserved_tokens(lengths, 16)
    assert f"{(paged - used) / paged:.1%}" == "11.0%"
    assert f"{(paged - used) / 32:.1f}" == "8.1"
    assert memory.paged_reserved_tokens(lengths, 128) == contiguous  # block size = max_len: the same reservation


@pytest.mark.parametrize("call, error, message", [
    (lambda: memory.blocks_needed(5, 0), ValueError, "block_size"),
    (lambda: memory.paged_reserved_tokens([3], 0), ValueError, "block_size"),
    (lambda: memory.paged_reserved_tokens([3, -1], 4), ValueError, "each length"),
    (lambda: memory.paged_reserved_tokens("abc", 4), TypeError, "lengths"),
    (lambda: memory.paged_reserved_tokens([3, 9], 4, shared_prefix=5), ValueError,
     "every sequence must be at least shared_prefix=5 tokens long, got one of 3"),
    (lambda: memory.contiguous_reserved_tokens([3, 20], 16), ValueError,
     "a sequence of 20 tokens does not fit max_len=16"),
    (lambda: memory.contiguous_reserved_tokens([3], 0), ValueError, "max_len"),
])
def test_waste_arithmetic_bad_input(call, error, message):
    with pytest.raises(error, match=message):
        call()


# --- HeadSplitCache ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("n_head, n_kv_head, tp", [(4, 4, 1), (4, 4, 2), (4, 4, 4), (8, 8, 8), (8, 4, 2), (8, 2, 2)])
def test_head_split_outputs_are_bit_identical_and_each_shard_holds_its_heads(n_head, n_kv_head, tp):
    model = random_model(tp, n_head=n_head, n_kv_head=n_kv_head)
    prompt = torch.randint(37, (2, 5), generator=torch.Generator().manual_seed(tp))
    split, dynamic = HeadSplitCache(model.config, tp), kvlab.DynamicCache()
    with torch.inference_mode():
        for cache in (split, dynamic):
            logits = [model(prompt, cache), model(torch.tensor([[1], [2]]), cache)]
            cache.logits = logits
    assert all(torch.equal(a, b) for a, b in zip(split.logits, dynamic.logits))
    heads = n_kv_head // tp
    for g, shard in enumerate(split.shards):
        for layer in range(model.config.n_layer):
            assert torch.equal(shard.keys[layer], dynamic.keys[layer][:, g * heads:(g + 1) * heads])
    # by hand: 2 · n_layer · B · T · (n_kv_head / tp) · head_dim · 4 bytes per device
    head_dim = 32 // n_head
    assert split.shard_nbytes == [2 * 2 * 2 * 6 * heads * head_dim * 4] * tp
    assert split.nbytes == dynamic.nbytes


def test_head_split_of_static_shards_and_reorder():
    model = random_model(1)
    shard_configs = []

    def make_shard(shard_config):
        shard_configs.append(shard_config)
        return kvlab.StaticCache(shard_config, batch_size=3, max_cache_len=10)

    split = HeadSplitCache(model.config, 2, make_shard=make_shard)
    assert [(c.n_head, c.n_kv_head, c.head_dim) for c in shard_configs] == [(2, 2, 8)] * 2
    prompt = torch.randint(37, (1, 4), generator=torch.Generator().manual_seed(1))
    beams, scores = kvlab.beam_search(model, prompt, 3, 5, cache=split)
    reference_beams, reference_scores = kvlab.beam_search(model, prompt, 3, 5)
    assert torch.equal(beams, reference_beams)
    torch.testing.assert_close(scores, reference_scores, **CLOSE)
    assert split.get_max_cache_shape() == 10
    assert split.shard_nbytes == [kvlab.StaticCache(model.config, 3, 10).nbytes // 2] * 2
    split.reset()
    assert split.get_seq_length() == 0


def test_notebook_tp_table():
    """Section 4: the 8-head model, batch of 3, 7 + 12 - 1 = 18 cached tokens, fp32, and Llama 3 70B."""
    config8 = kvlab.GPTConfig(vocab_size=25, n_layer=2, n_head=8, d_model=64, max_seq_len=64)
    for tp, expected in ((1, 55_296), (2, 27_648), (4, 13_824), (8, 6_912)):
        assert memory.kv_cache_bytes_per_device(2, 3, 18, 64, 4, n_head=8, tp=tp) == expected
        assert expected == 2 * 2 * 3 * 18 * (8 // tp) * 8 * 4
    llama = memory.get_preset("llama3-70b")
    per_device = [memory.kv_cache_bytes_per_device(80, 8, 8192, 8192, 2, n_head=64, n_kv_head=8, tp=tp)
                  for tp in (1, 8)]
    assert per_device == [20 * memory.GIB, 2.5 * memory.GIB] and llama.n_kv_head == 8 and config8.n_kv_head == 8


@pytest.mark.parametrize("tp, error, message", [
    (3, ValueError, r"allowed: \[1, 2, 4\]"),  # the rule, and the choices
    (8, ValueError, "does not divide n_kv_head"),
    (0, ValueError, "tp"),
    (True, TypeError, "tp"),
])
def test_head_split_bad_tp(tp, error, message):
    with pytest.raises(error, match=message):
        HeadSplitCache(random_model().config, tp)


def test_head_split_rejects_keys_with_other_heads():
    split = HeadSplitCache(random_model().config, 2)
    with pytest.raises(ValueError, match="H_kv=4"):
        split.update(torch.zeros(1, 2, 1, 8), torch.zeros(1, 2, 1, 8), 0)


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(n_head=8, n_kv_head=8, tp=3), ValueError, "tp=3 does not divide n_kv_head=8"),
    (dict(n_head=8, tp=16), ValueError, "tp=16 does not divide n_kv_head=8"),
    (dict(n_head=8, tp=0), ValueError, "tp"),
    (dict(n_head=8, tp=2.0), TypeError, "tp"),
])
def test_bytes_per_device_bad_input(kwargs, error, message):
    with pytest.raises(error, match=message):
        memory.kv_cache_bytes_per_device(2, 1, 10, 64, 2, **kwargs)


# --- the plot and the exercises --------------------------------------------------------------------------------------

def test_plot_paging_waste_draws_and_checks_its_input():
    ax = plots.plot_paging_waste([1, 2, 4], [0, 1024, 3072], 4096, [0, 1024, 2048]).axes[0]
    contiguous, formula, measured = ax.lines
    assert list(contiguous.get_ydata()) == [4.0, 4.0]  # KiB
    assert list(formula.get_ydata()) == [0.0, 1.0, 2.0] and list(measured.get_ydata()) == [0.0, 1.0, 3.0]
    assert list(measured.get_xdata()) == [1, 2, 4] and "block size" in ax.get_xlabel()
    with pytest.raises(ValueError, match="paged_bytes"):
        plots.plot_paging_waste([1, 2, 4], [0, 10], 100)
    with pytest.raises(ValueError, match=r"block_sizes\[0\]"):
        plots.plot_paging_waste([0, 2], [0, 10], 100)
    with pytest.raises(ValueError, match="contiguous_bytes"):
        plots.plot_paging_waste([1, 2], [0, 10], -1)


def test_exercise_answers():
    """Exercise 1: 7 blocks of 16 hold 100 tokens, 12 slots unused. Exercise 2: 3 + 10 · (5 - 2) = 33 blocks.
    Exercise 3: Llama 3 8B, tp = 8, 2 · 32 · 8192 · 1 · 128 · 2 bytes per device."""
    assert memory.paged_reserved_tokens([100], 16) - 100 == 12
    assert memory.paged_reserved_tokens([65] * 10, 16, shared_prefix=40) // 16 == 33
    llama8 = memory.get_preset("llama3-8b")
    assert memory.kv_cache_bytes_per_device(32, 1, 8192, 4096, 2, n_head=32, n_kv_head=8, tp=8) == \
        2 * 32 * 8192 * 1 * 128 * 2 == 134_217_728
    assert (llama8.n_layer, llama8.d_model, llama8.n_head, llama8.n_kv_head) == (32, 4096, 32, 8)


@pytest.mark.parametrize("make", [lambda: kvlab.compressed_cache.SlidingWindowCache(4),
                                  lambda: kvlab.compressed_cache.SinkCache(4, 1)])
def test_generate_batch_refuses_caches_that_drop_tokens(make):
    model = random_model()
    with pytest.raises(ValueError, match="a (SlidingWindowCache|SinkCache) drops some"):
        generate_batch(model, [[1, 2, 3, 4, 5], [6, 7]], 4, cache=make())


def test_model_names_a_mask_that_does_not_cover_the_keys():
    model = random_model()
    cache = kvlab.compressed_cache.SlidingWindowCache(4)
    idx = torch.tensor([[1, 2, 3, 4, 5, 6]])
    with torch.inference_mode():
        model(idx, cache)  # the cache keeps 4 of 6 tokens
        with pytest.raises(ValueError, match="attention_mask covers 7 tokens but the cache returned 5 keys"):
            model(idx[:, -1:], cache, torch.ones(1, 7, dtype=torch.long))
