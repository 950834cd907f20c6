"""kvlab.measure: what the chapters count and time (positions fed, copies, FLOPs, operations, step times) agrees
with the formulas and with the model, and every hook is removed afterwards.
"""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import kvlab
from kvlab import flops, hardware, measure
from kvlab.flops import arithmetic_intensity, bytes_moved, forward_flops
from kvlab.generate import GenerationStats
from tests.helpers import random_model

# The notebook's measured model and sweep (test_notebook_uses_these_settings keeps the two in step).
CHAPTER_CONFIG = dict(vocab_size=64, n_layer=2, n_head=2, d_model=16, max_seq_len=1024)


T_MAX, FIT_FROM = 512, 128


LENGTHS = [2**k for k in range(10)]  # 1, 2, 4, ..., 512


def chapter_config() -> kvlab.GPTConfig:
    return kvlab.GPTConfig(**CHAPTER_CONFIG)


def _curves(config, lengths):
    step = {uc: [flops.decode_step_flops(config, t, uc) for t in lengths] for uc in (True, False)}
    total = {uc: [sum(flops.generation_flops_split(config, 1, T, uc).values()) for T in lengths]
             for uc in (True, False)}
    return step, total


def _positive_finite(x):
    return isinstance(x, float) and math.isfinite(x) and x > 0


# --- chapter 01: autoregressive generation ---------------------------------------------------------------------------


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
    (dict(n_new=60), ValueError, "exceeds max_seq_len=64"),
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


# --- chapter 03: building the cache ----------------------------------------------------------------------------------


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


# --- chapter 04: cost with and without cache -------------------------------------------------------------------------


def test_slopes_attention_dominated():
    """d_model = 4 (t* = 26) and T up to 65,536: per step 1 with a cache, 2 without; in total 2 and 3."""
    config = kvlab.GPTConfig(vocab_size=8, n_layer=2, n_head=1, d_model=4)
    lengths = [2**k for k in range(12, 17)]
    step, total = _curves(config, lengths)
    assert measure.loglog_slope(lengths, step[True]) == pytest.approx(1, abs=0.01)
    assert measure.loglog_slope(lengths, step[False]) == pytest.approx(2, abs=0.01)
    assert measure.loglog_slope(lengths, total[True]) == pytest.approx(2, abs=0.01)
    assert measure.loglog_slope(lengths, total[False]) == pytest.approx(3, abs=0.01)


def test_slopes_dense_dominated():
    """d_model = 65,536 (t* ≈ 393,000) and T up to 1,024: per step 0 with a cache, 1 without; in total 1 and 2."""
    config = kvlab.GPTConfig(vocab_size=8, n_layer=2, n_head=1, d_model=65536)
    lengths = [2**k for k in range(6, 11)]
    step, total = _curves(config, lengths)
    assert measure.loglog_slope(lengths, step[True]) == pytest.approx(0, abs=0.01)
    assert measure.loglog_slope(lengths, step[False]) == pytest.approx(1, abs=0.01)
    assert measure.loglog_slope(lengths, total[True]) == pytest.approx(1, abs=0.01)
    assert measure.loglog_slope(lengths, total[False]) == pytest.approx(2, abs=0.02)


def test_slopes_of_the_chapter_model():
    """Between the regimes: the fit over t = 128..512 matches the exact local slope t/(t + t*) at t = 256 within
    0.02, the uncached slope is exactly one more, and the totals lie strictly between their limits."""
    config = chapter_config()
    step, total = _curves(config, LENGTHS)
    t_star = float(flops.attention_crossover(config))
    with_cache = measure.loglog_slope(LENGTHS, step[True], FIT_FROM)
    without = measure.loglog_slope(LENGTHS, step[False], FIT_FROM)
    assert with_cache == pytest.approx(256 / (256 + t_star), abs=0.02)
    assert without - with_cache == pytest.approx(1, abs=1e-9)
    assert 1 < measure.loglog_slope(LENGTHS, total[True], FIT_FROM) < 2
    assert 2 < measure.loglog_slope(LENGTHS, total[False], FIT_FROM) < 3


@settings(max_examples=10, deadline=None)
@given(n_layer=st.integers(1, 2), n_kv_head=st.sampled_from([1, 2, 4]), prompt_len=st.integers(1, 5),
       n_new=st.integers(1, 6), use_cache=st.booleans())
def test_count_generation_flops_lines_up_with_the_steps(n_layer, n_kv_head, prompt_len, n_new, use_cache):
    model = random_model(n_layer=n_layer, n_head=4, n_kv_head=n_kv_head, d_model=16)
    counted = measure.count_generation_flops(model, prompt_len, n_new, use_cache=use_cache)
    config = model.config
    expected = [flops.forward_flops(config, prompt_len)]
    expected += [flops.decode_step_flops(config, t, use_cache) for t in range(prompt_len + 1, prompt_len + n_new)]
    assert counted == expected
    assert sum(counted) == flops.generation_flops(config, prompt_len, n_new, use_cache)


def test_count_generation_flops_removes_its_hook():
    model = random_model()
    measure.count_generation_flops(model, 2, 3)
    assert not model._forward_hooks


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(prompt_len=0, n_new=3), ValueError, "prompt_len"),
    (dict(prompt_len=1, n_new=0), ValueError, "n_new"),
    (dict(prompt_len=1.5, n_new=3), TypeError, "prompt_len"),
    (dict(prompt_len=1, n_new=3, use_cache="yes"), TypeError, "use_cache"),
    (dict(prompt_len=60, n_new=10), ValueError, "exceeds max_seq_len=64"),
])
def test_count_generation_flops_bad_input(kwargs, error, message):
    with pytest.raises(error, match=message):
        measure.count_generation_flops(random_model(), **kwargs)


def test_count_generation_flops_needs_a_tinygpt():
    with pytest.raises(TypeError, match="model"):
        measure.count_generation_flops(torch.nn.Linear(2, 2), 1, 2)


@settings(max_examples=40, deadline=None)
@given(k=st.floats(-3, 3), c=st.floats(1e-3, 1e3), n=st.integers(2, 8))
def test_loglog_slope_recovers_a_power_law(k, c, n):
    x = [2.0**i for i in range(n)]
    assert measure.loglog_slope(x, [c * v**k for v in x]) == pytest.approx(k, abs=1e-9)


def test_loglog_slope_fits_only_from_x_min():
    x = [1, 2, 4, 8, 16]
    y = [1, 1, 1, 8, 64]  # flat, then slope 3
    assert measure.loglog_slope(x, y, x_min=4) == pytest.approx(3)
    assert measure.loglog_slope(x, y) < 3


@pytest.mark.parametrize("x, y, x_min, message", [
    ([1, 2], [1, 2, 3], None, "equal length"),
    ([1, 0], [1, 2], None, "> 0"),
    ([1, 2], [1, -2], None, "> 0"),
    ([1, 2, 4], [1, 2, 4], 3, "need at least 2 distinct x >= x_min=3"),
    ([2, 2], [1, 3], None, "need at least 2 distinct"),
])
def test_loglog_slope_bad_input(x, y, x_min, message):
    with pytest.raises(ValueError, match=message):
        measure.loglog_slope(x, y, x_min)


# --- chapter 05: prefill and decode ----------------------------------------------------------------------------------


def test_measured_roofs_are_positive_finite_numbers():
    assert _positive_finite(measure.measure_peak_flops(n=64, repeats=2))
    assert _positive_finite(measure.measure_peak_flops(n=32, repeats=1, dtype=torch.float64))
    assert _positive_finite(measure.measure_bandwidth(n_bytes=2**20, repeats=2))
    assert _positive_finite(measure.measure_bandwidth(n_bytes=2**20, repeats=2, kind="read"))  # kvlab bench, figure 4
    assert _positive_finite(hardware.ridge_point(measure.measure_peak_flops(n=64, repeats=1),
                                                 measure.measure_bandwidth(n_bytes=2**16, repeats=1)))


def test_median_seconds_runs_warmup_plus_repeats_and_returns_the_median():
    calls = []
    seconds = measure.median_seconds(lambda: calls.append(1), repeats=3, warmup=2)
    assert len(calls) == 5 and seconds >= 0 and math.isfinite(seconds)


def test_median_seconds_of_several_functions_times_them_in_turn():
    """`kvlab bench` takes every ratio this way: each round calls every contender once, so load hits all alike."""
    calls = []
    seconds = measure.median_seconds({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, repeats=3,
                                     warmup=1)
    assert calls == ["a", "b"] * 4 and set(seconds) == {"a", "b"} and all(s >= 0 for s in seconds.values())
    reported = iter([3.0, 1.0, 2.0])  # self_timed: each call returns its own seconds, and their median is kept
    assert measure.median_seconds({"x": lambda: next(reported)}, repeats=3, warmup=0, self_timed=True) == {"x": 2.0}


def test_time_phases_carries_the_analytic_flops_and_bytes():
    model = random_model(max_seq_len=64)
    t = measure.time_phases(model, prompt_len=5, batch_size=3, n_decode=4, repeats=2)
    middle = 5 + (4 - 1) // 2  # the middle decode step's cache length
    assert (t.prompt_len, t.batch_size, t.n_decode) == (5, 3, 4)
    assert t.prefill_flops == 3 * forward_flops(model.config, 5, 0)
    assert t.prefill_bytes == bytes_moved(model.config, 5, 0, 4, batch_size=3)
    assert t.decode_flops == 3 * forward_flops(model.config, 1, middle)
    assert t.decode_bytes == bytes_moved(model.config, 1, middle, 4, batch_size=3)
    for value in (t.prefill_s, t.decode_s, t.decode_tokens_per_s, t.prefill_flops_per_s, t.decode_flops_per_s):
        assert _positive_finite(value)
    assert t.decode_tokens_per_s == pytest.approx(3 / t.decode_s)
    assert t.prefill_intensity == pytest.approx(arithmetic_intensity(model.config, 5, 0, 4, batch_size=3))


def test_sweep_phases_runs_every_pair_prompt_lengths_outermost():
    model = random_model(max_seq_len=64)
    sweep = measure.sweep_phases(model, prompt_lens=(2, 4), batch_sizes=(1, 2), n_decode=2, repeats=1)
    assert [(t.prompt_len, t.batch_size) for t in sweep] == [(2, 1), (2, 2), (4, 1), (4, 2)]


@pytest.mark.parametrize("call, error, message", [
    (lambda m: measure.measure_peak_flops(n=0), ValueError, "n must"),
    (lambda m: measure.measure_peak_flops(n=8, repeats=0), ValueError, "repeats"),
    (lambda m: measure.measure_peak_flops(n=8, dtype=torch.int32), ValueError, "dtype"),
    (lambda m: measure.measure_peak_flops(n=8, dtype="float32"), TypeError, "dtype"),
    (lambda m: measure.measure_bandwidth(n_bytes=2), ValueError, "n_bytes"),
    (lambda m: measure.measure_bandwidth(n_bytes=1.5e6), TypeError, "n_bytes"),
    (lambda m: measure.median_seconds("f"), TypeError, "fn"),
    (lambda m: measure.median_seconds({}), ValueError, "fn"),
    (lambda m: measure.median_seconds({"a": 3}), TypeError, r"fn\['a'\]"),
    (lambda m: measure.median_seconds({"a": print}, repeats=0), ValueError, "repeats"),
    (lambda m: measure.measure_bandwidth(n_bytes=2**10, kind="write"), ValueError, "kind"),
    (lambda m: measure.time_phases("model", 4), TypeError, "model"),
    (lambda m: measure.time_phases(m, 0), ValueError, "prompt_len"),
    (lambda m: measure.time_phases(m, 4, batch_size=0), ValueError, "batch_size"),
    (lambda m: measure.time_phases(m, 60, n_decode=4), ValueError, "prompt_len \\+ n_decode \\+ 1 = 65 exceeds"),
    (lambda m: measure.sweep_phases(m, prompt_lens=()), ValueError, "must not be empty"),
])
def test_bench_bad_input_raises(call, error, message):
    with pytest.raises(error, match=message):
        call(random_model(max_seq_len=64))


def test_count_operations_counts_every_operation_views_included():
    x = torch.ones(3, 4)
    ops = measure.count_operations(lambda: (x + 1).t().sum())
    assert ops == {"add": 1, "t": 1, "sum": 1} or ops == {"add": 1, "transpose": 1, "sum": 1}
    assert measure.count_operations(lambda: None).total() == 0
    with pytest.raises(TypeError, match="fn"):
        measure.count_operations(3)


def _fake_cache(root, entries):
    for i, (level, kind, size) in enumerate(entries):
        index = root / f"index{i}"
        index.mkdir(parents=True)
        for name, text in (("level", str(level)), ("type", kind), ("size", size)):
            (index / name).write_text(text + "\n")
    return root


def test_last_level_cache_bytes_reads_the_highest_data_level(tmp_path):
    """The largest level wins, whatever the listing order; instruction caches and unreadable entries do not count."""
    root = _fake_cache(tmp_path, [(3, "Unified", "32768K"), (1, "Data", "32K"), (1, "Instruction", "64K"),
                                  (2, "Unified", "1M")])
    assert measure.last_level_cache_bytes(root) == 32 * 2**20
    only_l1 = _fake_cache(tmp_path / "small", [(1, "Instruction", "64K"), (1, "Data", "48K")])
    assert measure.last_level_cache_bytes(only_l1) == 48 * 2**10
    broken = _fake_cache(tmp_path / "broken", [(2, "Unified", "2M")])
    (broken / "index1").mkdir()  # a directory without files: skipped
    assert measure.last_level_cache_bytes(broken) == 2 * 2**20
    assert measure.last_level_cache_bytes(tmp_path / "absent") is None  # macOS, Windows: not reported
