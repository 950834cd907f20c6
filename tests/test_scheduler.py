"""kvlab.scheduler (chapter 10): static and continuous batching, chunked prefill, preemption, on the hello model.

Scheduling must never change what a request receives, so every run is compared with `kvlab.generate` on each
request alone; the clock counts steps, so step counts and latencies are exact numbers, worked out by hand where small.
"""

import math

import numpy as np
import pytest
import torch

import kvlab
from kvlab.corpus import make_corpus
from kvlab.scheduler import RaggedBatch, Request, Scheduler, _percentile, make_request_stream, run_schedule
from tests.helpers import random_model

CLOSE = dict(atol=1e-5, rtol=1e-5)  # fp32 logits along different paths differ in the last bits (see test_serving)


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: one torch thread for this module


@pytest.fixture(scope="module")
def stream(hello):
    """A small stream of text prompts (fast to serve), and each request's greedy tokens when generated alone."""
    model, tokenizer = hello
    corpus_ids = tokenizer.encode("\n".join(make_corpus(100)))
    requests = make_request_stream(10, seed=1, corpus_ids=corpus_ids, prompt_len=(3, 20), new_tokens=(2, 16),
                                   mean_gap=1.5)
    alone = {r.id: kvlab.generate(model, torch.tensor([r.prompt]), r.max_new_tokens)[0, len(r.prompt):].tolist()
             for r in requests}
    return requests, alone


def _check_run(result, requests, alone, pool):
    """Every request served once with its own tokens; the pool never overfull, and empty at the end."""
    assert [m.id for m in result.requests] == sorted(r.id for r in requests)
    for m in result.requests:
        assert m.tokens == alone[m.id], f"request {m.id} got other tokens than alone"
        assert m.arrival < m.first_token_step <= m.finish_step <= result.steps
    assert pool.n_allocated == 0, "blocks leaked"
    assert len(result.blocks_in_use) == len(result.batch_sizes) == result.steps
    assert result.forwards == sum(n > 0 for n in result.batch_sizes)
    assert max(result.blocks_in_use) <= pool.n_blocks


@pytest.mark.parametrize("policy", ["static", "continuous"])
@pytest.mark.parametrize("chunk_size", [None, 3])
@pytest.mark.parametrize("n_blocks", [64, 9])  # 9 blocks of 4 tokens: the longest request alone needs 9
def test_every_request_gets_the_tokens_it_gets_alone(hello, stream, policy, chunk_size, n_blocks):
    requests, alone = stream
    scheduler = Scheduler(hello[0], policy=policy, max_batch=4, n_blocks=n_blocks, block_size=4,
                          chunk_size=chunk_size)
    result = scheduler.run(requests)
    _check_run(result, requests, alone, scheduler.pool)
    assert max(result.batch_sizes) == 4
    assert result.output_tokens == sum(r.max_new_tokens for r in requests)
    if n_blocks == 9:  # the tiny pool: requests outgrow it and some are preempted, then resume
        assert result.preemptions > 0
        assert max(result.blocks_in_use) == 9
    else:
        assert result.preemptions == 0


def test_a_preempted_request_resumes_with_the_tokens_it_had(hello):
    """Two requests that each fit the pool alone but not together: the later one is preempted after it has already
    generated tokens, waits, re-prefills prompt + those tokens, and still ends with the tokens it gets alone."""
    model, tokenizer = hello
    a, b = tokenizer.encode("the cache s"), tokenizer.encode("hello worl")
    requests = [Request(0, tuple(a), 30, arrival=0), Request(1, tuple(b), 30, arrival=1)]
    scheduler = Scheduler(model, n_blocks=10, block_size=4)  # 10 blocks: one request's 40 - 1 cached tokens
    result = scheduler.run(requests)
    alone = {r.id: kvlab.generate(model, torch.tensor([r.prompt]), 30)[0, len(r.prompt):].tolist() for r in requests}
    _check_run(result, requests, alone, scheduler.pool)
    first, second = result.requests
    assert (first.preemptions, second.preemptions) == (0, 1)
    assert second.first_token_step == 2  # its first token came before the preemption and is kept
    assert first.finish_step == 30 and first.tpot_steps == 1.0  # the oldest request never waits
    assert second.finish_step > first.finish_step  # it resumed only once the first had left
    assert max(result.blocks_in_use) == 10


def test_by_hand_steps_ttft_tpot_and_blocks(hello):
    """Two requests at step 0 (3 and 5 new tokens), block_size 4: every number below is worked out by hand."""
    model, tokenizer = hello
    requests = [Request(0, tuple(tokenizer.encode("hello ")), 3, 0), Request(1, tuple(tokenizer.encode("the")), 5, 0)]
    together = run_schedule(model, requests, policy="continuous", n_blocks=8, block_size=4)
    assert together.steps == together.forwards == 5  # one prefill step gives each its first token, then decodes
    assert [(m.ttft_steps, m.tpot_steps, m.finish_step) for m in together.requests] == [(1, 1.0, 3), (1, 1.0, 5)]
    # after step 0: 6 cached tokens -> 2 blocks, 3 -> 1; then 7, 4 -> 2 + 1; 8, 5 -> 2 + 2; A leaves after step 2
    assert together.blocks_in_use == [3, 3, 2, 2, 0]
    assert together.batch_sizes == [2, 2, 2, 1, 1]
    one_at_a_time = run_schedule(model, requests, policy="static", max_batch=1, n_blocks=8, block_size=4)
    assert one_at_a_time.steps == 3 + 5 and one_at_a_time.batch_sizes == [1] * 8
    assert [(m.ttft_steps, m.finish_step) for m in one_at_a_time.requests] == [(1, 3), (4, 8)]
    summary = one_at_a_time.summary()
    assert summary["tokens_per_step"] == 8 / 8 and together.summary()["tokens_per_step"] == 8 / 5
    assert summary["mean_ttft_steps"] == 2.5 and summary["p90_ttft_steps"] == pytest.approx(1 + 0.9 * 3)
    assert summary["peak_blocks"] == 2 and summary["preemptions"] == 0


def test_chunked_prefill_keeps_decodes_flowing(hello):
    """A long prompt fed 8 tokens a step takes ceil(60 / 8) steps to its first token, and the request already
    decoding gets a token in every one of those steps."""
    model, tokenizer = hello
    text = tokenizer.encode("\n".join(make_corpus(20)))
    requests = [Request(0, tuple(text[:5]), 20, 0), Request(1, tuple(text[5:65]), 4, 2)]
    fed = []
    hook = model.register_forward_pre_hook(lambda module, args: fed.append(args[0].shape[1]))
    try:
        result = run_schedule(model, requests, chunk_size=8)
    finally:
        hook.remove()
    decoding, long_prompt = result.requests
    assert max(fed) == 8 and fed[:2] == [5, 1]
    assert long_prompt.ttft_steps == math.ceil(60 / 8)
    assert decoding.tpot_steps == 1.0
    unchunked = run_schedule(model, requests)
    assert unchunked.requests[1].ttft_steps == 1 and max(unchunked.requests[0].tokens) >= 0
    assert [m.tokens for m in unchunked.requests] == [m.tokens for m in result.requests]


def test_continuous_batching_needs_fewer_steps_than_static(hello):
    """Mixed output lengths: a static batch waits for its longest request, continuous batching refills its rows."""
    model, tokenizer = hello
    corpus_ids = tokenizer.encode("\n".join(make_corpus(100)))
    requests = make_request_stream(16, seed=0, corpus_ids=corpus_ids, prompt_len=(3, 12), new_tokens=(2, 30))
    static = run_schedule(model, requests, policy="static", max_batch=4)
    continuous = run_schedule(model, requests, policy="continuous", max_batch=4)
    assert continuous.steps < static.steps
    assert continuous.summary()["mean_ttft_steps"] < static.summary()["mean_ttft_steps"]
    assert [m.tokens for m in continuous.requests] == [m.tokens for m in static.requests]


def test_all_at_once_by_hand(hello):
    """Everyone arrives at step 0 and fits: both policies take max(new tokens) steps with a batch for all; static
    with max_batch=1 serves one after another, sum(new tokens) steps."""
    model, _ = hello
    requests = [Request(i, (1, 2, 3), n, 0) for i, n in enumerate([2, 7, 4])]
    for policy in ("static", "continuous"):
        assert run_schedule(model, requests, policy=policy, max_batch=3).steps == 7
    assert run_schedule(model, requests, policy="static", max_batch=1).steps == 2 + 7 + 4
    assert run_schedule(model, requests, policy="continuous", max_batch=2).steps == 7  # 2 leaves, 4 joins at 2


def test_ragged_batch_logits_equal_each_row_alone():
    """One forward over a decode row and two prefill chunks of different lengths: each row's logits are its own."""
    model = random_model(3, n_kv_head=2)
    pool = kvlab.paged_cache.BlockPool(model.config, n_blocks=30, block_size=3)
    sequences = [list(range(1, 12)), list(range(5, 9)), list(range(20, 27))]
    cached = [10, 0, 2]  # row 0 decodes its 11th token; rows 1 and 2 prefill 4 and 5 tokens
    caches = [kvlab.paged_cache.PagedCache(pool) for _ in sequences]
    with torch.inference_mode():
        for cache, seq, n in zip(caches, sequences, cached):
            if n:
                model(torch.tensor([seq[:n]]), cache)
        n_new = [len(s) - n for s, n in zip(sequences, cached)]
        batch = RaggedBatch(caches, n_new)
        idx = torch.tensor([[0] * (max(n_new) - k) + s[n:] for s, n, k in zip(sequences, cached, n_new)])
        logits = model(idx, batch, batch.attention_mask())
        for b, (seq, k) in enumerate(zip(sequences, n_new)):
            torch.testing.assert_close(logits[b, -k:], model(torch.tensor([seq]))[0, -k:], **CLOSE)
    assert [c.get_seq_length() for c in caches] == [11, 4, 7]
    assert pool.n_allocated == 4 + 2 + 3  # ceil(11 / 3) + ceil(4 / 3) + ceil(7 / 3)
    with pytest.raises(ValueError, match="exhausted: this step needs 23 more blocks, 21 of 30 free"):
        RaggedBatch(caches, [70, 1, 1])  # row 0: 81 tokens need 27 blocks, it holds 4; rows 1, 2 have room
    assert pool.n_allocated == 9  # refused before any block was taken


def test_the_stream_is_deterministic_for_a_seed():
    corpus_ids = list(range(50)) * 3
    first, again = (make_request_stream(24, seed=7, corpus_ids=corpus_ids) for _ in range(2))
    assert first == again and first != make_request_stream(24, seed=8, corpus_ids=corpus_ids)
    assert [r.id for r in first] == list(range(24))
    arrivals = [r.arrival for r in first]
    assert arrivals == sorted(arrivals) and arrivals[0] == 0 and arrivals[-1] > 0
    assert all(4 <= len(r.prompt) <= 40 and 2 <= r.max_new_tokens <= 48 for r in first)
    assert len({r.max_new_tokens for r in first}) > 5  # mixed output lengths
    for r in first:  # a slice of the corpus
        start = corpus_ids.index(r.prompt[0])
        assert r.prompt == tuple(corpus_ids[start:start + len(r.prompt)])
    random_ids = make_request_stream(5, seed=0, vocab_size=10)
    assert all(0 <= t < 10 for r in random_ids for t in r.prompt)


def test_percentile_matches_numpy():
    values = [3.0, 1.0, 4.0, 1.0, 5.0, 9.0, 2.0]
    for q in (0, 50, 90, 100):
        assert _percentile(values, q) == pytest.approx(np.percentile(values, q))
    assert math.isnan(_percentile([], 50)) and math.isnan(_percentile([math.nan], 50))


@pytest.mark.parametrize("settings, error, message", [
    (dict(block_size=0), ValueError, "block_size must be an int >= 1, got 0"),
    (dict(block_size="16"), TypeError, "block_size"),
    (dict(max_batch=0), ValueError, "max_batch must be an int >= 1, got 0"),
    (dict(n_blocks=0), ValueError, "n_blocks must be an int >= 1, got 0"),
    (dict(chunk_size=0), ValueError, "chunk_size must be an int >= 1, got 0"),
    (dict(policy="dynamic"), ValueError, "policy must be one of 'static', 'continuous'"),
])
def test_bad_settings(settings, error, message):
    with pytest.raises(error, match=message):
        Scheduler(random_model(), **settings)


@pytest.mark.parametrize("requests, error, message", [
    ([Request(0, (1,) * 60, 10, 0)], ValueError, r"request 0: prompt \(60\) \+ max_new_tokens \(10\) = 70 tokens "
                                                 "exceeds the model's max_seq_len=64"),
    ([Request(0, (1,) * 20, 20, 0)], ValueError, r"request 0 needs 10 blocks of 4 tokens \(39 cached tokens\) but "
                                                 "the pool has only n_blocks=8"),
    ([Request(0, (1,), 2, 0), Request(0, (2,), 2, 0)], ValueError, "id 0 twice"),
    ([Request(3, (), 2, 0)], ValueError, "request 3's prompt"),
    ([Request(3, (1, 99), 2, 0)], ValueError, r"token ids in 0\.\.36"),
    ([Request(3, (1,), 0, 0)], ValueError, "request 3's max_new_tokens must be an int >= 1, got 0"),
    ([Request(3, (1,), 2, -1)], ValueError, "request 3's arrival"),
    ([], ValueError, "at least one Request"),
    ([(1, 2)], TypeError, "each request"),
    (Request(0, (1,), 2, 0), TypeError, "requests must be a list"),
])
def test_bad_requests(requests, error, message):
    scheduler = Scheduler(random_model(), n_blocks=8, block_size=4)
    with pytest.raises(error, match=message):
        scheduler.run(requests)


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(n=0), ValueError, "n must be"),
    (dict(n=2, prompt_len=(5, 4)), ValueError, "low <= high"),
    (dict(n=2, new_tokens=(0, 4)), ValueError, r"new_tokens\[0\]"),
    (dict(n=2, mean_gap=-1), ValueError, "mean_gap"),
    (dict(n=2, corpus_ids=[1, 2, 3]), ValueError, "corpus_ids holds 3 tokens"),
    (dict(n=2.0), TypeError, "n must be"),
])
def test_bad_stream_arguments(kwargs, error, message):
    with pytest.raises(error, match=message):
        make_request_stream(**kwargs)


def test_reexported_from_serving():
    from kvlab import serving

    assert serving.Scheduler is Scheduler and serving.make_request_stream is make_request_stream
