"""kvlab.serving (chapter 10): a padded batch gives each prompt's own logits, and the head-split cache shards heads.

Every strategy is lossless, so every test compares with the plain path (a DynamicCache, or each prompt alone).
"""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import kvlab
from kvlab.paged_cache import BlockPool, PagedCache
from kvlab.serving import HeadSplitCache, generate_batch, pad_left
from tests.helpers import random_model

# fp32 logits computed along different paths (batched or alone, cached or not) differ in the last bits: within 1e-5,
# relative to logits of size ~10 (a 16-core CPU gave 1.2e-5 absolute on a logit of 5).
CLOSE = dict(atol=1e-5, rtol=1e-5)


def _alone_logits(model, ids):
    with torch.inference_mode():
        return model(torch.tensor([ids]))[0]


def _batch_with(model, prompts, n_new, cache):
    return generate_batch(model, prompts, n_new, cache=cache, return_logits=True)


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


def test_without_a_mask_padding_changes_the_logits(hello):
    """The notebook's control: the padded batch without its mask is a different text."""
    model, tokenizer = hello
    prompts = [tokenizer.encode(t) for t in ("h", "the ca", "hello w")]
    idx, _ = pad_left(prompts)
    with torch.inference_mode():
        unmasked = model(idx)
    assert (unmasked[0, -1:] - _alone_logits(model, prompts[0])).abs().max() > 1.0
    assert (unmasked[2] - _alone_logits(model, prompts[2])).abs().max() <= 1e-5  # the unpadded row


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


@pytest.mark.parametrize("make", [lambda: kvlab.compressed_cache.SlidingWindowCache(4),
                                  lambda: kvlab.compressed_cache.SinkCache(4, 1)])
def test_generate_batch_refuses_caches_that_drop_tokens(make):
    model = random_model()
    with pytest.raises(ValueError, match="a (SlidingWindowCache|SinkCache) drops some"):
        generate_batch(model, [[1, 2, 3, 4, 5], [6, 7]], 4, cache=make())
