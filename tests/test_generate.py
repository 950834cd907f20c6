"""generate: the cache changes the speed, never the tokens."""

import pytest
import torch

import kvlab
from conftest import random_model
from kvlab.generate import sample_next_token


def _all_ways(model, prompt, n):
    """Greedy tokens without a cache, with a DynamicCache and with a StaticCache."""
    static = kvlab.StaticCache(model.config, batch_size=prompt.shape[0], max_cache_len=prompt.shape[1] + n)
    return [kvlab.generate(model, prompt, n, use_cache=False),
            kvlab.generate(model, prompt, n),
            kvlab.generate(model, prompt, n, cache=static)]


@pytest.mark.parametrize("seed, sizes", [(0, {}), (1, dict(n_kv_head=2)), (2, dict(n_kv_head=1, n_layer=3))])
def test_greedy_tokens_identical_with_and_without_cache(seed, sizes):
    model = random_model(seed, **sizes)
    prompt = torch.randint(37, (3, 4), generator=torch.Generator().manual_seed(seed))
    no_cache, dynamic, static = _all_ways(model, prompt, 30)
    assert no_cache.shape == (3, 34)
    assert torch.equal(no_cache, dynamic) and torch.equal(no_cache, static)


def test_hello_model_greedy_identical_all_ways(hello):
    model, tok = hello
    outs = _all_ways(model, tok.encode_batch("h"), 40)
    assert all(torch.equal(outs[0], out) for out in outs[1:])


def test_sampling_is_reproducible_and_cache_independent():
    model = random_model(3)
    prompt = torch.tensor([[1, 2, 3]])
    runs = [kvlab.generate(model, prompt, 20, use_cache=use_cache, temperature=0.8, top_k=5,
                           generator=torch.Generator().manual_seed(7)) for use_cache in (False, True)]
    assert torch.equal(runs[0], runs[1])
    greedy = kvlab.generate(model, prompt, 20)
    assert not torch.equal(runs[0], greedy)  # temperature really samples


def test_top_k_one_is_greedy():
    model = random_model(4)
    prompt = torch.tensor([[5, 6]])
    sampled = kvlab.generate(model, prompt, 15, temperature=1.5, top_k=1, generator=torch.Generator().manual_seed(0))
    assert torch.equal(sampled, kvlab.generate(model, prompt, 15))


def test_eos_stops_generation_and_pads_finished_rows(hello):
    model, tok = hello
    newline = tok.stoi["\n"]
    out = kvlab.generate(model, tok.encode_batch("h"), 50, eos_id=newline)
    text = tok.decode(out[0])
    assert text.endswith("\n") and text.count("\n") == 1
    both = kvlab.generate(model, torch.cat([tok.encode_batch("hello w"), tok.encode_batch("the que")]), 50,
                          eos_id=newline)
    first = tok.decode(both[0])
    assert first.startswith("hello world\n") and set(first[len("hello world\n"):]) <= {"\n"}


def test_a_cache_holding_a_prefix_is_reused(hello):
    model, tok = hello
    prompt = tok.encode_batch("the cache ")
    cache = kvlab.DynamicCache()
    model(prompt[:, :4], cache)  # the cache already holds "the "
    assert torch.equal(kvlab.generate(model, prompt, 10, cache=cache), kvlab.generate(model, prompt, 10))


def test_stats_time_every_token():
    model = random_model(5)
    tokens, stats = kvlab.generate(model, torch.tensor([[1, 2, 3, 4]]), 9, return_stats=True)
    assert tokens.shape == (1, 13)
    assert (stats.prompt_len, stats.new_tokens, len(stats.decode_s)) == (4, 9, 8)
    assert stats.prefill_s > 0 and all(t > 0 for t in stats.decode_s)
    assert stats.total_s == pytest.approx(stats.prefill_s + sum(stats.decode_s))
    assert stats.tokens_per_s == pytest.approx(9 / stats.total_s)
    assert stats.time_per_output_token_s == pytest.approx(sum(stats.decode_s) / 8)
    same_tokens, same_stats = kvlab.generate_with_stats(model, torch.tensor([[1, 2, 3, 4]]), 9)
    assert torch.equal(tokens, same_tokens) and (same_stats.prompt_len, same_stats.new_tokens) == (4, 9)
    assert torch.equal(kvlab.generate(model, torch.tensor([[1, 2, 3, 4]]), 9), tokens)  # the same loop, untimed


def test_stats_count_only_the_tokens_made_before_eos(hello):
    model, tok = hello
    tokens, stats = kvlab.generate(model, tok.encode_batch("h"), 50, eos_id=tok.stoi["\n"], return_stats=True)
    assert stats.new_tokens == tokens.shape[1] - 1 == len(stats.decode_s) + 1 < 50


def test_stats_from_the_clock_by_hand():
    stats = kvlab.GenerationStats.from_clock(5, [10.0, 10.5, 10.75, 11.0])
    assert (stats.prompt_len, stats.new_tokens, stats.prefill_s, stats.decode_s) == (5, 3, 0.5, [0.25, 0.25])


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(max_new_tokens=0), ValueError, "max_new_tokens"),
    (dict(max_new_tokens=61), ValueError, "prompt \\(4\\) \\+ max_new_tokens \\(61\\) = 65 exceeds max_seq_len=64"),
    (dict(temperature=-1.0), ValueError, "temperature"),
    (dict(temperature=1.0, top_k=0), ValueError, "top_k"),
    (dict(use_cache=False, cache=kvlab.DynamicCache()), ValueError, "use_cache=False"),
    (dict(idx=torch.tensor([1, 2, 3, 4])), ValueError, "idx must be a \\(batch, seq_len\\) tensor"),
    (dict(idx=torch.tensor([[1, 99]])), ValueError, "token id 99"),
    (dict(idx=[[1, 2]]), TypeError, "idx"),
])
def test_bad_arguments_raise_clear_errors(kwargs, error, message):
    model = random_model()
    arguments = dict(idx=torch.tensor([[1, 2, 3, 4]]), max_new_tokens=5) | kwargs
    with pytest.raises(error, match=message):
        kvlab.generate(model, arguments.pop("idx"), arguments.pop("max_new_tokens"), **arguments)


def test_static_cache_too_small_for_the_generation_fails_loudly():
    model = random_model()
    cache = kvlab.StaticCache(model.config, batch_size=1, max_cache_len=6)
    with pytest.raises(ValueError, match="StaticCache overflow: 7 tokens do not fit max_cache_len=6"):
        kvlab.generate(model, torch.tensor([[1, 2, 3, 4]]), 5, cache=cache)


# --- bad input found by an audit: each was a silent wrong answer or a cryptic error ---

def test_reusing_a_cache_for_another_prompt_is_an_error_not_a_wrong_continuation():
    model = random_model(seed=3)
    cache = kvlab.DynamicCache()
    first = kvlab.generate(model, torch.tensor([[1, 2, 3]]), 3, cache=cache)  # the cache now holds 5 tokens
    with pytest.raises(ValueError, match="the cache holds 5 tokens that idx .* does not continue"):
        kvlab.generate(model, torch.tensor([[4, 5, 6, 7, 8, 9, 10]]), 2, cache=cache)
    longer = kvlab.generate(model, first, 2, cache=cache)  # continuing the same text reuses the prefix
    assert torch.equal(longer, kvlab.generate(model, first, 2))
    cache.reset()
    kvlab.generate(model, torch.tensor([[4, 5, 6, 7, 8, 9, 10]]), 2, cache=cache)  # after reset anything goes
    with pytest.raises(ValueError, match="does not continue"):  # a different batch size is another sequence too
        kvlab.generate(model, torch.tensor([[4, 5, 6, 7, 8, 9, 10, 11, 12]] * 2), 2, cache=cache)


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(eos_id=37), ValueError, r"eos_id .* 0..36, got 37"),
    (dict(eos_id=-1), ValueError, r"eos_id .* 0..36, got -1"),
    (dict(eos_id=True), TypeError, r"eos_id"),
    (dict(temperature=float("nan")), ValueError, r"temperature"),
    (dict(temperature=float("inf")), ValueError, r"temperature"),
    (dict(temperature=True), TypeError, r"temperature"),
    (dict(temperature=1.0, top_k=True), TypeError, r"top_k"),
    (dict(cache=kvlab.DynamicCache), TypeError, r"cache must be a kvlab Cache instance .* got the class"),
    (dict(cache={}), TypeError, r"cache must be a kvlab Cache instance .* got \{\}"),
    (dict(cache=kvlab.DynamicCache(), max_new_tokens=1, idx=torch.tensor([[1, 2]])), ValueError, r"cache holds"),
])
def test_generate_rejects_bad_sampling_eos_and_cache(kwargs, error, message):
    model = random_model()
    if "idx" in kwargs:  # a cache already holding the whole prompt: nothing is left to feed it
        kwargs.pop("idx")
        model(torch.tensor([[1, 2]]), kwargs["cache"])
    with pytest.raises(error, match=message):
        kvlab.generate(model, torch.tensor([[1, 2]]), kwargs.pop("max_new_tokens", 3), **kwargs)


@pytest.mark.parametrize("call, message", [
    (lambda: sample_next_token(torch.tensor([[5.0, 0, 0]]), -1.0), "temperature"),
    (lambda: sample_next_token(torch.tensor([5.0, 0, 0])), r"logits must be a \(batch, vocab_size\) tensor"),
    (lambda: sample_next_token(torch.tensor([[5.0, 0, 0]]), 1.0, 0), "top_k"),
])
def test_sample_next_token_checks_its_own_arguments(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_empty_batch_is_a_clear_error():
    model = random_model()
    with pytest.raises(ValueError, match=r"idx must hold at least one row and one token, got shape \(0, 4\)"):
        model(torch.empty(0, 4, dtype=torch.long))
