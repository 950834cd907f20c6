"""Chapter 01 (autoregressive generation): the traced loop, the positions each step computes, the timing helpers
and the figures, with every number the notebook states checked independently."""

import math

import matplotlib.pyplot as plt
import pytest
import torch
from hypothesis import given, settings, strategies as st
from matplotlib.figure import Figure

import kvlab
from kvlab import measure, plots
from kvlab.flops import positions_processed
from kvlab.generate import GenerationStats, TraceStep, trace_generation
from conftest import random_model

# --- positions_processed: the arithmetic of the loop -------------------------------------------------------------


@pytest.mark.parametrize("prompt_len, n_new, use_cache, expected", [
    (3, 5, False, [3, 4, 5, 6, 7]),
    (3, 5, True, [3, 1, 1, 1, 1]),
    (1, 1, False, [1]),
    (1, 1, True, [1]),
    (1, 4, False, [1, 2, 3, 4]),  # "h" -> "hello": the notebook's first trace
    (6, 8, True, [6, 1, 1, 1, 1, 1, 1, 1]),
])
def test_positions_processed_by_hand(prompt_len, n_new, use_cache, expected):
    assert positions_processed(prompt_len, n_new, use_cache=use_cache) == expected


def test_notebook_totals_for_the_cache_prompt():
    """The notebook's table: P = 6 ("the ca"), N = 8 -> 76 positions without a cache, 13 with one."""
    assert sum(positions_processed(6, 8, use_cache=False)) == 6 + 7 + 8 + 9 + 10 + 11 + 12 + 13 == 76
    assert sum(positions_processed(6, 8, use_cache=True)) == 6 + 7 == 13


@settings(max_examples=200, deadline=None)
@given(prompt_len=st.integers(1, 500), n_new=st.integers(1, 500))
def test_positions_processed_totals_follow_the_closed_forms(prompt_len, n_new):
    without = positions_processed(prompt_len, n_new, use_cache=False)
    with_cache = positions_processed(prompt_len, n_new, use_cache=True)
    assert len(without) == len(with_cache) == n_new
    assert without[0] == with_cache[0] == prompt_len  # the prefill is the same either way
    assert sum(without) == prompt_len * n_new + n_new * (n_new - 1) // 2
    assert sum(with_cache) == prompt_len + n_new - 1
    assert all(b - a == 1 for a, b in zip(without, without[1:]))


@pytest.mark.parametrize("use_cache", [False, True])
@pytest.mark.parametrize("prompt_len, n_new", [(1, 1), (1, 9), (4, 6), (10, 3)])
def test_positions_processed_equal_what_generate_feeds_the_model(prompt_len, n_new, use_cache):
    """Spy on TinyGPT.forward (by wrapping it, independently of record_positions) during a real generate call."""
    model = random_model(prompt_len + n_new)
    seen = []
    original = model.forward

    def spy(idx, cache=None):
        seen.append(idx.shape[1])
        return original(idx, cache)

    model.forward = spy
    prompt = torch.randint(37, (2, prompt_len), generator=torch.Generator().manual_seed(n_new))
    kvlab.generate(model, prompt, n_new, use_cache=use_cache)
    assert seen == positions_processed(prompt_len, n_new, use_cache=use_cache)


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(prompt_len=0, n_new=3), ValueError, "prompt_len"),
    (dict(prompt_len=2, n_new=0), ValueError, "n_new"),
    (dict(prompt_len=2.0, n_new=3), TypeError, "prompt_len"),
    (dict(prompt_len=2, n_new=True), TypeError, "n_new"),
    (dict(prompt_len=2, n_new=3, use_cache="yes"), TypeError, "use_cache"),
])
def test_positions_processed_bad_input(kwargs, error, message):
    with pytest.raises(error, match=message):
        positions_processed(**kwargs)


# --- record_positions: the spy the notebook uses -----------------------------------------------------------------

def test_record_positions_records_each_call_and_stops_after_the_block():
    model = random_model()
    with measure.record_positions(model) as fed:
        model(torch.zeros(1, 3, dtype=torch.long))
        model(idx=torch.zeros(2, 5, dtype=torch.long))  # keyword call too
    model(torch.zeros(1, 7, dtype=torch.long))
    assert fed == [3, 5]
    assert not model._forward_pre_hooks


def test_record_positions_removes_its_hook_on_error():
    model = random_model()
    with pytest.raises(RuntimeError, match="boom"):
        with measure.record_positions(model):
            raise RuntimeError("boom")
    assert not model._forward_pre_hooks


@pytest.mark.parametrize("use_cache", [False, True])
def test_record_positions_agrees_with_positions_processed_on_the_hello_model(hello, use_cache):
    """The notebook's check: prompt "the ca" (6 tokens) and 8 new tokens."""
    model, tok = hello
    with measure.record_positions(model) as fed:
        kvlab.generate(model, tok.encode_batch("the ca"), 8, use_cache=use_cache)
    assert fed == ([6, 7, 8, 9, 10, 11, 12, 13] if not use_cache else [6] + [1] * 7)


def test_record_positions_bad_input():
    with pytest.raises(TypeError, match="model"):
        with measure.record_positions(lambda idx: idx):
            pass


# --- trace_generation: the loop, step by step --------------------------------------------------------------------

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


# --- the exercises' answers, computed by hand --------------------------------------------------------------------

def test_exercise_answers(hello):
    assert sum(positions_processed(4, 10, use_cache=False)) == 4 * 10 + 10 * 9 // 2 == 85
    model, tok = hello
    with measure.record_positions(model) as fed:
        kvlab.generate(model, tok.encode_batch("the qu"), max_new_tokens=5)
    assert (len(fed), sum(1 for n in fed[1:] if n == 1)) == (5, 4)
    ratio = sum(positions_processed(1000, 200, use_cache=False)) / sum(positions_processed(1000, 200))
    assert ratio == pytest.approx((1000 * 200 + 200 * 199 / 2) / 1199) and round(ratio) == 183


# --- timing helpers (shape and sanity only: never speed) ---------------------------------------------------------

@pytest.mark.parametrize("use_cache", [False, True])
def test_time_generation_returns_positive_finite_per_step_timings(use_cache):
    model = random_model()
    stats = measure.time_generation(model, prompt_len=5, n_new=7, use_cache=use_cache, repeats=3, batch_size=2)
    assert isinstance(stats, GenerationStats)
    assert (stats.prompt_len, stats.new_tokens, len(stats.decode_s)) == (5, 7, 6)
    for value in [stats.prefill_s, *stats.decode_s, stats.total_s, stats.time_per_output_token_s,
                  stats.tokens_per_s]:
        assert math.isfinite(value) and value > 0


def test_time_generation_one_token_has_no_decode_steps():
    stats = measure.time_generation(random_model(), prompt_len=3, n_new=1, repeats=1, warmup=0)
    assert stats.decode_s == [] and stats.prefill_s > 0 and math.isnan(stats.time_per_output_token_s)


def test_time_generation_takes_the_median_of_each_step(monkeypatch):
    """Scripted timings in place of the clock: the warm-up is discarded, then each step's median is kept."""
    scripted = iter([
        GenerationStats(3, 3, 100.0, [100.0, 100.0]),  # warm-up: must not count
        GenerationStats(3, 3, 1.0, [5.0, 9.0]),
        GenerationStats(3, 3, 3.0, [4.0, 7.0]),
        GenerationStats(3, 3, 2.0, [6.0, 8.0]),
    ])
    calls = []

    def fake_generate_with_stats(model, idx, max_new_tokens, *, use_cache):
        calls.append((tuple(idx.shape), max_new_tokens, use_cache))
        return idx, next(scripted)

    monkeypatch.setattr(measure, "generate_with_stats", fake_generate_with_stats)
    stats = measure.time_generation(random_model(), prompt_len=3, n_new=3, use_cache=False, repeats=3, warmup=1)
    assert calls == [((1, 3), 3, False)] * 4
    assert (stats.prefill_s, stats.decode_s) == (2.0, [5.0, 8.0])


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(model="gpt"), TypeError, "model"),
    (dict(prompt_len=0), ValueError, "prompt_len"),
    (dict(prompt_len=1.5), TypeError, "prompt_len"),
    (dict(n_new=0), ValueError, "n_new"),
    (dict(repeats=0), ValueError, "repeats"),
    (dict(warmup=-1), ValueError, "warmup"),
    (dict(batch_size=0), ValueError, "batch_size"),
    (dict(use_cache=1), TypeError, "use_cache"),
    (dict(n_new=60), ValueError, "prompt_len \\(5\\) \\+ n_new \\(60\\) = 65 exceeds max_seq_len=64"),
    (dict(num_threads=0), ValueError, "num_threads"),
    (dict(num_threads="2"), TypeError, "num_threads"),
])
def test_time_generation_bad_input(kwargs, error, message):
    arguments = dict(model=random_model(), prompt_len=5, n_new=3) | kwargs
    with pytest.raises(error, match=message):
        measure.time_generation(arguments.pop("model"), arguments.pop("prompt_len"), arguments.pop("n_new"),
                              **arguments)


def test_time_generation_sets_threads_for_the_measurement_only(monkeypatch):
    seen = []

    def fake_generate_with_stats(model, idx, max_new_tokens, *, use_cache):
        seen.append(torch.get_num_threads())
        return idx, GenerationStats(idx.shape[1], max_new_tokens, 1.0, [1.0] * (max_new_tokens - 1))

    monkeypatch.setattr(measure, "generate_with_stats", fake_generate_with_stats)
    before = torch.get_num_threads()
    measure.time_generation(random_model(), 2, 3, repeats=2, num_threads=1)
    assert seen == [1, 1, 1] and torch.get_num_threads() == before
    measure.time_generation(random_model(), 2, 3, repeats=1, warmup=0)  # None: PyTorch's setting is kept
    assert seen[-1] == before and torch.get_num_threads() == before


def test_cumulative_tokens_per_s_by_hand():
    stats = GenerationStats(prompt_len=4, new_tokens=3, prefill_s=0.5, decode_s=[0.25, 0.25])
    assert measure.cumulative_tokens_per_s(stats) == [1 / 0.5, 2 / 0.75, 3 / 1.0]
    assert measure.cumulative_tokens_per_s(stats)[-1] == pytest.approx(stats.tokens_per_s)


def test_cumulative_tokens_per_s_last_value_is_the_runs_throughput():
    _, stats = kvlab.generate(random_model(), torch.tensor([[1, 2, 3]]), 12, return_stats=True)
    throughput = measure.cumulative_tokens_per_s(stats)
    assert len(throughput) == 12 and all(math.isfinite(t) and t > 0 for t in throughput)
    assert throughput[-1] == pytest.approx(stats.tokens_per_s)


def test_cumulative_tokens_per_s_bad_input():
    with pytest.raises(TypeError, match="stats"):
        measure.cumulative_tokens_per_s({"prefill_s": 1.0})


# --- figures -------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("prompt_len, n_new", [(6, 8), (1, 1), (3, 20)])
def test_plot_positions_per_step_draws_one_bar_per_step_and_mode(prompt_len, n_new):
    fig = plots.plot_positions_per_step(prompt_len, n_new)
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    without, with_cache = ax.containers
    assert [bar.get_height() for bar in without] == positions_processed(prompt_len, n_new, use_cache=False)
    assert [bar.get_height() for bar in with_cache] == positions_processed(prompt_len, n_new, use_cache=True)
    assert ax.get_xlabel() and ax.get_ylabel() and ax.get_title()
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert str(sum(positions_processed(prompt_len, n_new, use_cache=False))) in labels[0]


def test_plot_positions_per_step_draws_into_a_given_axes_and_rejects_bad_input():
    fig, ax = plt.subplots()
    assert plots.plot_positions_per_step(2, 3, ax=ax) is fig and len(ax.containers) == 2
    with pytest.raises(ValueError, match="n_new"):
        plots.plot_positions_per_step(2, 0)


def _fake_runs():
    return {"without cache": GenerationStats(16, 4, 0.002, [0.003, 0.004, 0.005]),
            "with cache": GenerationStats(16, 4, 0.002, [0.001, 0.001, 0.001])}


def test_plot_step_times_one_line_per_run_in_milliseconds():
    fig = plots.plot_step_times(_fake_runs(), title="a finding")
    ax = fig.axes[0]
    assert isinstance(fig, Figure) and len(ax.lines) == 2 and ax.get_title() == "a finding"
    assert list(ax.lines[0].get_ydata()) == pytest.approx([2.0, 3.0, 4.0, 5.0])
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["without cache", "with cache"]


def test_plot_throughput_one_line_per_run_from_cumulative_tokens_per_s():
    runs = _fake_runs()
    fig = plots.plot_throughput(runs)
    ax = fig.axes[0]
    assert isinstance(fig, Figure) and len(ax.lines) == 2 and ax.get_xscale() == "log"
    for line, stats in zip(ax.lines, runs.values()):
        assert list(line.get_xdata()) == [1, 2, 3, 4]
        assert list(line.get_ydata()) == pytest.approx(measure.cumulative_tokens_per_s(stats))


def test_plots_of_a_real_measurement():
    model = random_model()
    runs = {c: measure.time_generation(model, 4, 6, use_cache=c, repeats=1) for c in (False, True)}
    runs = {f"use_cache={c}": stats for c, stats in runs.items()}
    assert len(plots.plot_step_times(runs).axes[0].lines) == 2
    assert len(plots.plot_throughput(runs).axes[0].lines) == 2


@pytest.mark.parametrize("plot", [plots.plot_step_times, plots.plot_throughput])
@pytest.mark.parametrize("bad, error, message", [
    ({}, ValueError, "stats_by_label"),
    ([1, 2], TypeError, "stats_by_label"),
    ({"run": 0.5}, TypeError, "stats_by_label\\['run'\\]"),
])
def test_timing_plots_bad_input(plot, bad, error, message):
    with pytest.raises(error, match=message):
        plot(bad)
