"""generate: the cache changes the speed, never the tokens."""

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import kvlab
from kvlab.flops import positions_processed
from kvlab.generate import TraceStep, sample_next_token, trace_generation
from tests.helpers import random_model


def _all_ways(model, prompt, n):
    """Greedy tokens without a cache, with a DynamicCache and with a StaticCache."""
    static = kvlab.StaticCache(model.config, batch_size=prompt.shape[0], max_cache_len=prompt.shape[1] + n)
    return [kvlab.generate(model, prompt, n, use_cache=False),
            kvlab.generate(model, prompt, n),
            kvlab.generate(model, prompt, n, cache=static)]


def _three_ways(model, prompt, n_beams, steps):
    static = kvlab.StaticCache(model.config, batch_size=n_beams, max_cache_len=prompt.shape[1] + steps)
    return [kvlab.beam_search(model, prompt, n_beams, steps, use_cache=False),
            kvlab.beam_search(model, prompt, n_beams, steps),
            kvlab.beam_search(model, prompt, n_beams, steps, cache=static)]


# --- chapter 01: autoregressive generation ---------------------------------------------------------------------------


def test_trace_turns_h_into_hello_and_matches_generate(hello):
    model, tok = hello
    prompt = tok.encode_batch("h")
    steps = trace_generation(model, prompt, 4)
    assert [tok.decode(s.fed) for s in steps] == ["h", "he", "hel", "hell"]
    assert tok.decode([s.chosen for s in steps]) == "ello"
    assert [s.chosen for s in steps] == kvlab.generate(model, prompt, 4)[0, 1:].tolist()
    first = steps[0].candidates[0]
    assert tok.decode([first[0]]) == "e" and first[1] > 0.9  # "almost sure that 'e' follows 'h'"


def test_trace_with_and_without_cache_on_the_notebook_prompt(hello):
    model, tok = hello
    prompt = tok.encode_batch("the ca")
    no_cache = trace_generation(model, prompt, 8, use_cache=False)
    cached = trace_generation(model, prompt, 8, use_cache=True)
    text = tok.decode(prompt[0].tolist() + [s.chosen for s in cached])
    assert text == "the cache stor" == tok.decode(kvlab.generate(model, prompt, 8)[0])
    assert [s.chosen for s in no_cache] == [s.chosen for s in cached]
    assert [len(s.fed) for s in no_cache] == positions_processed(6, 8, use_cache=False)
    assert [len(s.fed) for s in cached] == positions_processed(6, 8, use_cache=True)
    assert [s.fed[-1] for s in cached[1:]] == [s.chosen for s in cached[:-1]]  # decode feeds the newest token
    for a, b in zip(no_cache, cached):
        assert [i for i, _ in a.candidates] == [i for i, _ in b.candidates]
        assert [p for _, p in a.candidates] == pytest.approx([p for _, p in b.candidates], abs=1e-5)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), prompt_len=st.integers(1, 6), n_new=st.integers(1, 8),
       use_cache=st.booleans(), top=st.integers(1, 37))
def test_trace_chooses_generates_tokens_and_reports_true_probabilities(seed, prompt_len, n_new, use_cache, top):
    model = random_model(seed % 7)
    prompt = torch.randint(37, (1, prompt_len), generator=torch.Generator().manual_seed(seed))
    steps = trace_generation(model, prompt, n_new, use_cache=use_cache, top=top)
    tokens = kvlab.generate(model, prompt, n_new, use_cache=not use_cache)
    assert [s.chosen for s in steps] == tokens[0, prompt_len:].tolist()
    assert [s.step for s in steps] == list(range(n_new))
    for s in steps:
        assert isinstance(s, TraceStep) and len(s.candidates) == top
        probabilities = [p for _, p in s.candidates]
        assert probabilities == sorted(probabilities, reverse=True) and sum(probabilities) <= 1 + 1e-5
        assert s.candidates[0][1] == pytest.approx(max(probabilities))
        with torch.inference_mode():  # independent: the full sequence so far, no cache
            full = tokens[:, :prompt_len + s.step]
            expected = model(full)[0, -1].softmax(-1)
        assert probabilities == pytest.approx([float(expected[i]) for i, _ in s.candidates], abs=1e-5)
        assert float(expected[s.chosen]) == pytest.approx(float(expected.max()), abs=1e-6)


@pytest.mark.parametrize("kwargs, message", [
    (dict(idx=torch.tensor([[1, 2], [3, 4]])), "idx must have batch size 1, got 2"),
    (dict(top=0), "top must be an int in 1..37, got 0"),
    (dict(top=38), "top must be an int in 1..37, got 38"),
    (dict(max_new_tokens=0), "max_new_tokens"),
    (dict(max_new_tokens=63), "exceeds max_seq_len=64"),
    (dict(idx=torch.tensor([1, 2])), "idx must be a \\(batch, seq_len\\) tensor"),
])
def test_trace_bad_input(kwargs, message):
    arguments = dict(idx=torch.tensor([[1, 2]]), max_new_tokens=3) | kwargs
    with pytest.raises(ValueError, match=message):
        trace_generation(random_model(), arguments.pop("idx"), arguments.pop("max_new_tokens"), **arguments)


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
    (dict(max_new_tokens=61), ValueError, "exceeds max_seq_len=64"),
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
    with pytest.raises(ValueError, match="max_cache_len=6"):
        kvlab.generate(model, torch.tensor([[1, 2, 3, 4]]), 5, cache=cache)


def test_reusing_a_cache_for_another_prompt_is_an_error_not_a_wrong_continuation():
    model = random_model(seed=3)
    cache = kvlab.DynamicCache()
    first = kvlab.generate(model, torch.tensor([[1, 2, 3]]), 3, cache=cache)  # the cache now holds 5 tokens
    with pytest.raises(ValueError, match="does not continue"):
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
    with pytest.raises(ValueError, match=r"idx .* at least one row and one token"):
        model(torch.empty(0, 4, dtype=torch.long))


# --- chapter 03: building the cache ----------------------------------------------------------------------------------


@pytest.mark.parametrize("seed, sizes, n_beams", [(0, {}, 3), (1, dict(n_kv_head=2), 4), (2, dict(n_kv_head=1), 2)])
def test_cached_beam_search_equals_uncached(seed, sizes, n_beams):
    model = random_model(seed, **sizes)
    prompt = torch.randint(37, (1, 3), generator=torch.Generator().manual_seed(seed))
    (beams, scores), *cached = _three_ways(model, prompt, n_beams, 10)
    assert beams.shape == (n_beams, 13) and scores.shape == (n_beams,)
    assert torch.all(scores[:-1] >= scores[1:])  # best first
    for other_beams, other_scores in cached:
        assert torch.equal(other_beams, beams)
        assert torch.allclose(other_scores, scores, atol=1e-5)


def test_beam_search_on_the_hello_model_and_a_cache_that_forgets_to_reorder(hello):
    model, tok = hello
    prompt = tok.encode_batch("the ca")
    (beams, scores), *cached = _three_ways(model, prompt, 3, 8)
    for other_beams, other_scores in cached:
        assert torch.equal(other_beams, beams) and torch.allclose(other_scores, scores, atol=1e-5)

    class ForgetfulCache(kvlab.DynamicCache):
        def reorder_cache(self, beam_idx):
            pass

    wrong, _ = kvlab.beam_search(model, prompt, 3, 8, cache=ForgetfulCache())
    assert not torch.equal(wrong, beams)


def test_beam_scores_are_the_log_probabilities_of_the_beams():
    model = random_model(5)
    prompt = torch.tensor([[4, 8, 15]])
    beams, scores = kvlab.beam_search(model, prompt, 4, 6)
    with torch.inference_mode():
        log_probs = model(beams).log_softmax(dim=-1)  # (n_beams, T, vocab), recomputed from scratch
    new = beams[:, 3:]
    by_hand = log_probs[:, 2:-1].gather(-1, new[..., None]).squeeze(-1).sum(dim=-1)
    assert torch.allclose(scores, by_hand, atol=1e-5)


def test_beam_search_with_every_token_as_a_beam_is_exhaustive_over_two_steps():
    model = random_model(6, vocab_size=6)
    prompt = torch.tensor([[1, 2]])
    beams, scores = kvlab.beam_search(model, prompt, 6, 2)  # step 1 keeps all 6 tokens, so step 2 sees all 36 pairs
    with torch.inference_mode():
        everything = []
        for a, b in itertools.product(range(6), repeat=2):
            seq = torch.tensor([[1, 2, a, b]])
            lp = model(seq).log_softmax(dim=-1)[0]
            everything.append((lp[1, a] + lp[2, b]).item())
    best = sorted(everything, reverse=True)[:6]
    assert scores.tolist() == pytest.approx(best, abs=1e-5)
    assert {tuple(b[2:].tolist()) for b in beams} == {divmod(everything.index(s), 6) for s in best}


def test_one_beam_is_greedy(hello):
    model, tok = hello
    prompt = tok.encode_batch("the qu")
    beams, _ = kvlab.beam_search(model, prompt, 1, 20)
    assert torch.equal(beams, kvlab.generate(model, prompt, 20))


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(n_beams=0), ValueError, r"n_beams must be an int in 1..37, got 0"),
    (dict(n_beams=38), ValueError, r"n_beams must be an int in 1..37, got 38"),
    (dict(n_beams=True), TypeError, "n_beams must be an int .* got True"),
    (dict(n_beams=2.0), TypeError, "n_beams must be an int .* got 2.0"),
    (dict(max_new_tokens=0), ValueError, "max_new_tokens"),
    (dict(max_new_tokens=61), ValueError, r"= 65 exceeds max_seq_len=64"),
    (dict(idx=torch.tensor([[1, 2, 3, 4], [1, 2, 3, 4]])), ValueError, r"idx must have shape \(1, seq_len\)"),
    (dict(idx=torch.tensor([1, 2, 3, 4])), ValueError, r"idx must be a \(batch, seq_len\) tensor"),
    (dict(use_cache=False, cache=kvlab.DynamicCache()), ValueError, "use_cache=False"),
])
def test_beam_search_rejects_bad_input(kwargs, error, message):
    model = random_model()
    arguments = dict(idx=torch.tensor([[1, 2, 3, 4]]), n_beams=2, max_new_tokens=5) | kwargs
    with pytest.raises(error, match=message):
        kvlab.beam_search(model, arguments.pop("idx"), arguments.pop("n_beams"), arguments.pop("max_new_tokens"),
                          **arguments)


def test_beam_search_needs_an_empty_cache_of_the_right_batch():
    model = random_model()
    cache = kvlab.DynamicCache()
    model(torch.tensor([[1, 2]]).repeat(2, 1), cache)
    with pytest.raises(ValueError, match="empty cache"):
        kvlab.beam_search(model, torch.tensor([[1, 2, 3, 4]]), 2, 3, cache=cache)
    too_narrow = kvlab.StaticCache(model.config, batch_size=1, max_cache_len=10)
    with pytest.raises(ValueError, match="does not fit the cache"):
        kvlab.beam_search(model, torch.tensor([[1, 2, 3, 4]]), 2, 3, cache=too_narrow)


def test_generator_must_be_a_torch_generator():
    model = random_model()
    with pytest.raises(TypeError, match=r"generator must be a torch.Generator \(or None\), got 0 \(int\)"):
        kvlab.generate(model, torch.zeros(1, 2, dtype=torch.long), 2, temperature=1.0, generator=0)


# --- arguments that used to fail deep inside (issue 13) ---

def test_an_empty_prompt_is_named_on_every_path():
    from kvlab.lean_decode import lean_generate
    model, empty = random_model(), torch.zeros(1, 0, dtype=torch.long)
    for call in (lambda: kvlab.generate(model, empty, 3), lambda: kvlab.generate(model, empty, 3, use_cache=False),
                 lambda: kvlab.generate(model, empty, 3, cache=kvlab.DynamicCache()),
                 lambda: kvlab.beam_search(model, empty, 2, 3), lambda: trace_generation(model, empty, 3),
                 lambda: trace_generation(model, empty, 3, use_cache=True), lambda: lean_generate(model, empty, 3)):
        with pytest.raises(ValueError, match=r"the prompt is empty \(idx has shape \(1, 0\)\); give at least one"):
            call()


def test_something_else_than_a_model_is_named(hello):
    model, tok = hello
    prompt = tok.encode_batch("hello")
    for not_a_model, name in ((None, "NoneType"), ({}, "dict"), (tok, type(tok).__name__)):
        with pytest.raises(TypeError, match=f"model must be a kvlab model such as TinyGPT .* got {name}"):
            kvlab.generate(not_a_model, prompt, 3)
    with pytest.raises(TypeError, match="model must be a kvlab model .* generate\\(model, idx, max_new_tokens\\)"):
        kvlab.generate(tok, model, 3)  # model and tokenizer swapped
    with pytest.raises(TypeError, match="model must be a kvlab model"):
        kvlab.beam_search(tok, prompt, 2, 3)


@pytest.mark.parametrize("temperature", [1e-40, 1e-50, 5e-324])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_a_tiny_temperature_samples_the_most_likely_token(temperature, dtype):
    """logits / 1e-40 overflowed to inf (a torch error); now the largest logit is subtracted first."""
    logits = torch.tensor([[0.5, 2.0, -1.0, 1.9], [3.0, 0.0, 2.9, -5.0]], dtype=dtype)
    generator = torch.Generator().manual_seed(0)
    for _ in range(5):
        assert sample_next_token(logits, temperature, generator=generator).tolist() == [[1], [0]]
    assert sample_next_token(logits, temperature, top_k=2, generator=generator).tolist() == [[1], [0]]


def test_generate_with_a_tiny_temperature_is_greedy(hello):
    model, tok = hello
    prompt = tok.encode_batch("hello w")
    greedy = kvlab.generate(model, prompt, 8)
    assert torch.equal(kvlab.generate(model, prompt, 8, temperature=1e-40, generator=torch.manual_seed(0)), greedy)


def test_ctrl_c_in_the_middle_of_generate_leaves_a_cache_that_continues_the_right_text(hello, monkeypatch):
    """Interrupted inside layer 2 of a decode step: layers were left at lengths 8, 8, 7, 7 and the continuation
    differed; now the half-written cache is reset, and reusing it gives the text generated without a cache."""
    model, tok = hello
    prompt, cache = tok.encode_batch("hello w"), kvlab.DynamicCache()
    calls, block_forward = [], model.blocks[2].forward

    def interrupt_on_third_call(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return block_forward(*args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(model.blocks[2], "forward", interrupt_on_third_call)
        with pytest.raises(KeyboardInterrupt):
            kvlab.generate(model, prompt, 10, cache=cache)
    assert len({cache.get_seq_length(layer) for layer in range(model.config.n_layer)}) == 1
    text = tok.encode_batch("hello wor")  # what the user saw before Ctrl-C, passed again
    assert torch.equal(kvlab.generate(model, text, 5, cache=cache), kvlab.generate(model, text, 5, use_cache=False))
