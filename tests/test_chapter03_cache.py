"""Chapter 03, building the cache: the legacy tuple path, counted copies, and beam search with reorder_cache."""

import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import kvlab
from conftest import random_model
from kvlab import legacy, measure
from kvlab.memory import kv_cache_bytes


# --- the legacy path computes what the Cache path computes ---

def _logit_differences(model, prompt, steps):
    """Largest |logit difference| between the legacy and the Cache path at prefill and at each greedy decode step."""
    with torch.inference_mode():
        cache = kvlab.DynamicCache()
        new = model(prompt, cache)
        old, presents = legacy.legacy_forward(model, prompt)
        differences = [(new - old).abs().max().item()]
        for _ in range(steps):
            next_token = new[:, -1:].argmax(dim=-1)
            new = model(next_token, cache)
            old, presents = legacy.legacy_forward(model, next_token, past=presents)
            differences.append((new - old).abs().max().item())
    return differences, presents


def test_legacy_logits_match_the_cache_path_on_the_hello_model(hello):
    model, tok = hello
    differences, presents = _logit_differences(model, tok.encode_batch("hello w"), 20)
    assert len(differences) == 21 and max(differences) <= 1e-5
    assert presents[0][0].shape[2] == 27  # 7 prompt tokens + 20 fed one at a time (the notebook's seq_len)


def test_legacy_generate_gives_the_same_tokens_as_generate(hello):
    model, tok = hello
    for text, n in (("h", 40), ("the qu", 30)):
        prompt = tok.encode_batch(text)
        assert torch.equal(legacy.legacy_generate(model, prompt, n), kvlab.generate(model, prompt, n))


@pytest.mark.parametrize("seed, sizes", [(0, {}), (1, dict(n_layer=3, n_head=2, d_model=16)),
                                         (2, dict(n_layer=1, n_head=8, d_model=64))])
def test_legacy_path_equals_cache_path_on_random_models(seed, sizes):
    model = random_model(seed, **sizes)
    prompt = torch.randint(37, (3, 5), generator=torch.Generator().manual_seed(seed))
    differences, _ = _logit_differences(model, prompt, 12)
    assert max(differences) <= 1e-5
    assert torch.equal(legacy.legacy_generate(model, prompt, 25), kvlab.generate(model, prompt, 25))


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), n_head=st.sampled_from([1, 2, 4]), n_layer=st.integers(1, 3),
       batch=st.integers(1, 3), prompt_len=st.integers(1, 6))
def test_legacy_prefill_logits_equal_model_logits(seed, n_head, n_layer, batch, prompt_len):
    model = random_model(seed, n_head=n_head, n_layer=n_layer, d_model=8 * n_head)
    prompt = torch.randint(37, (batch, prompt_len), generator=torch.Generator().manual_seed(seed))
    with torch.inference_mode():
        old, presents = legacy.legacy_forward(model, prompt)
        assert (old - model(prompt)).abs().max().item() <= 1e-5
    assert legacy.stack_past(presents).shape == (n_layer, 2, batch, n_head, prompt_len, 8)


def test_legacy_path_refuses_grouped_query_attention():
    model = random_model(n_kv_head=2)
    with pytest.raises(ValueError, match="n_kv_head=2 < n_head=4"):
        legacy.legacy_forward(model, torch.tensor([[1, 2]]))
    with pytest.raises(ValueError, match="n_kv_head=1 < n_head=4"):
        legacy.legacy_generate(random_model(n_kv_head=1), torch.tensor([[1, 2]]), 3)


# --- the shape of the past ---

def test_stack_past_shape_and_contents_on_the_hello_model(hello):
    model, tok = hello
    _, presents = _logit_differences(model, tok.encode_batch("hello w"), 20)
    stacked = legacy.stack_past(presents)
    c = model.config
    assert stacked.shape == (c.n_layer, 2, 1, c.n_head, 27, c.head_dim) == (4, 2, 1, 4, 27, 16)
    assert stacked.numel() == 4 * 2 * 1 * 4 * 27 * 16 == 13_824  # the notebook's numbers
    assert stacked.nbytes == 13_824 * 4 == 55_296 == kv_cache_bytes(4, 1, 27, 64, bytes_per_elem=4)
    for layer, (key, value) in enumerate(presents):
        assert torch.equal(stacked[layer, 0], key) and torch.equal(stacked[layer, 1], value)


def test_legacy_forward_accepts_the_stacked_past(hello):
    model, tok = hello
    with torch.inference_mode():
        _, presents = legacy.legacy_forward(model, tok.encode_batch("the ca"))
        token = tok.encode_batch("c")
        from_tuples, _ = legacy.legacy_forward(model, token, presents)
        from_stacked, _ = legacy.legacy_forward(model, token, legacy.stack_past(presents))
    assert torch.equal(from_tuples, from_stacked)


def test_exercise_two_shape(hello):
    model, tok = hello
    batch = torch.cat([tok.encode_batch("hello"), tok.encode_batch("cache")])
    with torch.inference_mode():
        _, presents = legacy.legacy_forward(model, batch)
    assert tuple(legacy.stack_past(presents).shape) == (4, 2, 2, 4, 5, 16)


def test_legacy_cache_conversions_share_tensors_and_continue_generation(hello):
    model, tok = hello
    prompt = tok.encode_batch("hello w")
    with torch.inference_mode():
        _, presents = legacy.legacy_forward(model, prompt[:, :6])
    cache = legacy.from_legacy_cache(presents)
    assert cache.get_seq_length() == 6 and cache.get_max_cache_shape() is None
    assert all(k is key and v is value for k, v, (key, value) in zip(cache.keys, cache.values, presents))
    back = legacy.to_legacy_cache(cache)
    assert all(a[0] is b[0] and a[1] is b[1] for a, b in zip(back, presents))
    continued = kvlab.generate(model, prompt, 12, cache=cache)
    assert torch.equal(continued, kvlab.generate(model, prompt, 12))
    assert tok.decode(continued[0]) == "hello world\nhello c"  # the notebook's output, checked by the model's tokens


# --- bad input to the legacy functions ---

def test_stack_past_rejects_bad_input():
    k = torch.zeros(1, 2, 3, 4)
    with pytest.raises(ValueError, match="presents must be a non-empty sequence"):
        legacy.stack_past([])
    with pytest.raises(TypeError, match=r"(?s)presents must be a sequence .*\(Tensor\)"):
        legacy.stack_past(torch.zeros(2, 2, 1, 2, 3, 4))
    with pytest.raises(ValueError, match=r"presents\[0\] must be a \(key, value\) pair"):
        legacy.stack_past([(k,)])
    with pytest.raises(ValueError, match=r"presents .* one shape, got shapes \[\(1, 2, 3, 4\), \(1, 2, 5, 4\)\]"):
        legacy.stack_past([(k, k), (k, torch.zeros(1, 2, 5, 4))])


def test_legacy_forward_rejects_bad_input(hello):
    model, tok = hello
    idx = tok.encode_batch("he")
    with torch.inference_mode():
        _, presents = legacy.legacy_forward(model, idx)
    with pytest.raises(TypeError, match="model must be a kvlab.TinyGPT, got Linear"):
        legacy.legacy_forward(torch.nn.Linear(2, 2), idx)
    with pytest.raises(ValueError, match=r"past must hold one \(key, value\) pair per layer \(4\).* got 3 "):
        legacy.legacy_forward(model, idx, presents[:3])
    with pytest.raises(ValueError, match=r"batch=2"):
        legacy.legacy_forward(model, idx.repeat(2, 1), presents)
    bad = list(presents)
    bad[2] = (presents[2][0][:, :, :1], presents[2][1])  # one layer shorter than the others
    with pytest.raises(ValueError, match=r"past .* one shape, got shapes \[\(1, 4, 1, 16\), \(1, 4, 2, 16\)\]"):
        legacy.legacy_forward(model, idx, bad)
    with pytest.raises(ValueError, match="token id 99 "):
        legacy.legacy_forward(model, torch.tensor([[99]]))
    with pytest.raises(TypeError, match="idx must have dtype"):
        legacy.legacy_forward(model, torch.zeros(1, 2))
    with pytest.raises(ValueError, match=r"exceeds max_seq_len=128"):
        legacy.legacy_forward(model, torch.zeros(1, 127, dtype=torch.long), presents)
    with pytest.raises(TypeError, match=r"past must be one \(key, value\) pair per layer, got 3 \(int\)"):
        legacy.legacy_forward(model, idx, 3)


def test_legacy_generate_rejects_bad_lengths(hello):
    model, tok = hello
    with pytest.raises(ValueError, match="max_new_tokens"):
        legacy.legacy_generate(model, tok.encode_batch("h"), 0)
    with pytest.raises(TypeError, match="model must be a kvlab.TinyGPT"):
        legacy.legacy_generate(torch.nn.Linear(2, 2), tok.encode_batch("h"), 3)
    with pytest.raises(ValueError, match=r"prompt \(1\) \+ max_new_tokens \(128\) = 129 exceeds max_seq_len=128"):
        legacy.legacy_generate(model, tok.encode_batch("h"), 128)


def test_legacy_conversions_reject_bad_input():
    with pytest.raises(TypeError, match="cache must be a kvlab.DynamicCache, got .*StaticCache"):
        legacy.to_legacy_cache(kvlab.StaticCache(random_model().config, 1, 4))
    with pytest.raises(ValueError, match="past must be a non-empty sequence"):
        legacy.from_legacy_cache([])
    with pytest.raises(ValueError, match=r"past\[0\] must be a \(key, value\) pair"):
        legacy.from_legacy_cache([(torch.zeros(1, 2, 3, 4),)])


# --- counting copied bytes ---

def test_copy_counter_counts_copies_and_ignores_views():
    past, new, buffer = torch.zeros(1000), torch.ones(1), torch.zeros(1001)
    assert measure.count_copied_bytes(lambda: torch.cat([past, new])) == 1001 * 4  # the notebook's 4004 bytes
    assert measure.count_copied_bytes(lambda: buffer[1000:].copy_(new)) == 4
    x = torch.zeros(8, 6, dtype=torch.float16)
    assert measure.count_copied_bytes(lambda: (x.t(), x.view(6, 8), x[2:5], x.unsqueeze(0))) == 0  # views copy nothing
    assert measure.count_copied_bytes(lambda: x.clone()) == 8 * 6 * 2
    assert measure.count_copied_bytes(lambda: x.to(torch.float32)) == 8 * 6 * 4
    assert measure.count_copied_bytes(lambda: x.index_select(0, torch.tensor([0, 0, 3]))) == 3 * 6 * 2

    def slice_assign():
        buffer[3:5] = torch.ones(2)

    with measure.CopyCounter() as counter:
        slice_assign()
    assert counter.bytes == 8 and dict(counter.ops) == {"copy_": 1}


def test_count_copied_bytes_rejects_a_non_callable():
    with pytest.raises(TypeError, match="fn"):
        measure.count_copied_bytes(3)


@pytest.mark.parametrize("seed, sizes, batch, prompt_len, new_tokens", [
    (0, {}, 1, 1, 20),
    (1, dict(n_kv_head=2), 2, 4, 15),  # grouped-query: the cache holds n_kv_head heads, and so do the formulas
    (2, dict(n_kv_head=1, n_layer=3), 3, 7, 9),
])
def test_counted_cache_copies_equal_the_formulas(seed, sizes, batch, prompt_len, new_tokens):
    model = random_model(seed, **sizes)
    prompt = torch.randint(37, (batch, prompt_len), generator=torch.Generator().manual_seed(seed))
    final_len = prompt_len + new_tokens - 1
    caches = {"dynamic": kvlab.DynamicCache(),
              "static": kvlab.StaticCache(model.config, batch_size=batch, max_cache_len=final_len)}
    per_token = 2 * model.config.n_layer * batch * model.config.n_kv_head * model.config.head_dim * 4  # by hand
    by_hand = {"dynamic": per_token * sum(range(prompt_len + 1, final_len + 1)), "static": per_token * final_len}
    for kind, cache in caches.items():
        counting = measure.CopyCountingCache(cache)
        tokens = kvlab.generate(model, prompt, new_tokens, cache=counting)
        assert torch.equal(tokens, kvlab.generate(model, prompt, new_tokens, use_cache=False))  # wrapper is invisible
        expected = measure.expected_copied_bytes(kind, model.config, batch_size=batch, prompt_len=prompt_len,
                                               new_tokens=new_tokens)
        assert counting.copied_bytes == expected == by_hand[kind]
        for length in range(prompt_len, final_len + 1):  # every length along the way
            assert counting.copied_bytes_at[length] == measure.expected_copied_bytes(
                kind, model.config, batch_size=batch, prompt_len=prompt_len, new_tokens=length - prompt_len + 1)


def test_the_notebooks_copy_numbers(hello):
    model, tok = hello
    config, start = model.config, tok.encode_batch("h")
    per_token = kv_cache_bytes(config.n_layer, 1, 1, config.d_model, bytes_per_elem=4)
    assert per_token == 2 * 4 * 64 * 4 == 2048
    lengths = [2, 4, 8, 16, 32, 64, 127]
    counts = {}
    for kind, cache in (("dynamic", kvlab.DynamicCache()), ("static", kvlab.StaticCache(config, 1, 127))):
        counting = measure.CopyCountingCache(cache)
        kvlab.generate(model, start, 127, cache=counting)
        counts[kind] = [counting.copied_bytes_at[T] for T in lengths]
    assert counts["dynamic"] == [2048 * (T * (T + 1) // 2 - 1) for T in lengths]  # the closed form in the prose
    assert counts["static"] == [2048 * T for T in lengths]
    assert counts["dynamic"][-1] == 16_644_096 and counts["static"][-1] == 260_096
    assert f"{counts['dynamic'][-1] / 2**20:.1f} MiB" == "15.9 MiB" and counts["static"][-1] / 2**10 == 254
    assert f"{counts['dynamic'][-1] / counts['static'][-1]:.1f}" == "64.0"
    slopes = [math.log(v[-1] / v[-2]) / math.log(127 / 64) for v in counts.values()]
    assert [f"{s:.2f}" for s in slopes] == ["1.99", "1.00"]
    assert measure.cache_copied_bytes(model, start, 50, kvlab.DynamicCache()) == 2048 * (50 * 51 // 2 - 1)  # exercise 1


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


def test_copy_counting_cache_and_formulas_reject_bad_input():
    with pytest.raises(TypeError, match="cache"):
        measure.CopyCountingCache({})
    config = random_model().config
    with pytest.raises(ValueError, match="strategy"):
        measure.expected_copied_bytes("paged", config, batch_size=1, prompt_len=1, new_tokens=1)
    for name in ("batch_size", "prompt_len", "new_tokens"):
        arguments = dict(batch_size=1, prompt_len=1, new_tokens=1) | {name: 0}
        with pytest.raises(ValueError, match=name):
            measure.expected_copied_bytes("static", config, **arguments)


def test_copied_bytes_plot(hello):
    plots = pytest.importorskip("kvlab.plots")
    import matplotlib.pyplot as plt

    figure = plots.copied_bytes_vs_length([2, 4], {"a": [4, 16], "b": [2, 4]}, {"a": [4, 16]})
    ax = figure.axes[0]
    assert ax.get_xscale() == ax.get_yscale() == "log" and "Θ(T²)" in ax.get_title()
    assert len(ax.lines) == 3
    plt.close(figure)
    with pytest.raises(ValueError, match=r"measured\['a'\]"):
        plots.copied_bytes_vs_length([2, 4], {"a": [4]})
    with pytest.raises(ValueError, match=r"measured\['a'\]\[0\]"):  # a log axis cannot show 0
        plots.copied_bytes_vs_length([1, 2], {"a": [0, 4]})


# --- beam search: reorder_cache keeps each beam's K/V with its beam ---

def _three_ways(model, prompt, n_beams, steps):
    static = kvlab.StaticCache(model.config, batch_size=n_beams, max_cache_len=prompt.shape[1] + steps)
    return [kvlab.beam_search(model, prompt, n_beams, steps, use_cache=False),
            kvlab.beam_search(model, prompt, n_beams, steps),
            kvlab.beam_search(model, prompt, n_beams, steps, cache=static)]


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


def test_reorder_cache_demo_rows():
    demo = kvlab.DynamicCache()
    keys = torch.arange(3.0).view(3, 1, 1, 1).expand(3, 4, 2, 16)
    demo.update(keys, keys, layer_idx=0)
    demo.reorder_cache(torch.tensor([0, 0, 2]))
    assert demo.keys[0][:, 0, 0, 0].tolist() == [0.0, 0.0, 2.0]


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
    with pytest.raises(ValueError, match="beam_search needs an empty cache, got one holding 2 tokens"):
        kvlab.beam_search(model, torch.tensor([[1, 2, 3, 4]]), 2, 3, cache=cache)
    too_narrow = kvlab.StaticCache(model.config, batch_size=1, max_cache_len=10)
    with pytest.raises(ValueError, match="does not fit the cache"):
        kvlab.beam_search(model, torch.tensor([[1, 2, 3, 4]]), 2, 3, cache=too_narrow)
