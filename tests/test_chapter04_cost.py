"""Chapter 04 (cost with and without a cache): FLOPs counted by PyTorch equal the formulas at every point the
notebook plots, the closed forms and the crossover t* equal independent derivations, the fitted slopes of the
formulas approach the exponents the chapter states, and the widget and figures accept extreme values and reject
bad ones. Every number the notebook prints is re-derived here by hand, not copied from a run."""

import json
import math
from fractions import Fraction
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings, strategies as st

import kvlab
from kvlab import flops, measure, memory, plots, widgets
from conftest import random_model


NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "04_cost_with_and_without_cache.ipynb"

# The notebook's measured model and sweep (test_notebook_uses_these_settings keeps the two in step).
CHAPTER_CONFIG = dict(vocab_size=64, n_layer=2, n_head=2, d_model=16, max_seq_len=1024)
T_MAX, FIT_FROM = 512, 128
LENGTHS = [2**k for k in range(10)]  # 1, 2, 4, ..., 512


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny matmuls: one thread is as fast and does not fight other processes for the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def chapter_config() -> kvlab.GPTConfig:
    return kvlab.GPTConfig(**CHAPTER_CONFIG)


def by_hand(c) -> tuple[int, int]:
    """D and A from the matmul shapes, written out independently of kvlab.flops.

    Per layer and fed token: qkv 2·d·(d + 2·kv_dim), output projection 2·d², MLP 2·(d·4d + 4d·d) = 16·d²;
    once: LM head 2·d·vocab. Per key: q·kᵀ 2·d and weights·v 2·d, in every layer.
    """
    d, kv_dim = c.d_model, c.n_kv_head * (c.d_model // c.n_head)
    dense = c.n_layer * (2 * d * (d + 2 * kv_dim) + 2 * d * d + 16 * d * d) + 2 * d * c.vocab_size
    return dense, c.n_layer * 4 * d


def _config_or_none(n_layer, n_head, kv_div, head_dim, vocab):
    if n_head % kv_div:
        return None
    return kvlab.GPTConfig(vocab_size=vocab, n_layer=n_layer, n_head=n_head, n_kv_head=n_head // kv_div,
                           d_model=n_head * head_dim)


configs = st.builds(_config_or_none, n_layer=st.integers(1, 96), n_head=st.sampled_from([1, 2, 4, 8]),
                    kv_div=st.sampled_from([1, 2, 4, 8]), head_dim=st.integers(1, 256),
                    vocab=st.integers(1, 200_000)).filter(lambda c: c is not None)


# --- the notebook's settings and its counted == analytic claim ----------------------------------------------------

def test_notebook_uses_these_settings():
    source = "\n".join("".join(cell["source"]) for cell in json.loads(NOTEBOOK.read_text())["cells"])
    assert "kvlab.GPTConfig(vocab_size=64, n_layer=2, n_head=2, d_model=16, max_seq_len=1024)" in source
    assert f"T_MAX = {T_MAX}" in source and f"FIT_FROM = {FIT_FROM}" in source
    assert "lengths = [2**k for k in range(10)]" in source


@pytest.fixture(scope="module")
def counted_steps():
    """Every forward of the notebook's two 512-token generations, counted by FlopCounterMode (the slow part)."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = kvlab.TinyGPT(chapter_config()).eval()
    return {use_cache: measure.count_generation_flops(model, 1, T_MAX, use_cache=use_cache)
            for use_cache in (True, False)}


@pytest.mark.parametrize("use_cache", [True, False])
def test_counted_equals_formula_at_every_plotted_point(counted_steps, use_cache):
    config, counted = chapter_config(), counted_steps[use_cache]
    assert len(counted) == T_MAX
    for t in LENGTHS:  # the per-step figure's points
        assert counted[t - 1] == flops.decode_step_flops(config, t, use_cache)
    for T in LENGTHS:  # the whole-generation figure's points
        assert sum(counted[:T]) == flops.generation_flops(config, 1, T, use_cache)
        assert sum(counted[:T]) == sum(flops.generation_flops_split(config, 1, T, use_cache).values())


def test_counted_steps_follow_d_plus_a_t_by_hand(counted_steps):
    """The notebook's 'checked for every t' claim, against D and A derived independently of kvlab.flops."""
    D, A = by_hand(chapter_config())
    assert counted_steps[True] == [D + A * t for t in range(1, T_MAX + 1)]
    assert counted_steps[False] == [t * (D + A * t) for t in range(1, T_MAX + 1)]


def test_notebook_numbers_by_hand():
    config = chapter_config()
    D, A = by_hand(config)
    assert flops.decode_step_coefficients(config) == (D, A)
    assert A == 4 * config.n_layer * config.d_model
    assert flops.attention_crossover(config) == Fraction(D, A) == 6 * 16 + Fraction(64, 2 * 2)  # t* printed: 112
    assert flops.attention_crossover(config, include_lm_head=False) == 6 * 16
    T = T_MAX  # the printed totals
    assert flops.generation_flops(config, 1, T, True) == D * T + A * T * (T + 1) // 2
    assert flops.generation_flops(config, 1, T, False) == D * T * (T + 1) // 2 + A * T * (T + 1) * (2 * T + 1) // 6
    for t in (1, 100, 1024):  # the table at t = 100: every matmul exactly t times dearer without a cache
        with_cache, without = flops.forward_flops_breakdown(config, 1, t - 1), flops.forward_flops_breakdown(config, t)
        assert all(without[name] == t * with_cache[name] for name in with_cache)


@pytest.mark.parametrize("key", ["gpt2-small", "gpt2-xl", "gpt3-175b"])
def test_attention_share_table_by_hand(key):
    """The table's attention share of a cached step at full context: A·t / (D + A·t) with D, A by hand."""
    preset = memory.get_preset(key)
    D, A = by_hand(preset)
    t = preset.max_seq_len
    split = flops.decode_step_flops_split(preset, t)
    assert split["attention"] == A * t and split["dense"] == D
    share = A * t / (D + A * t)
    assert share < 0.15  # the prose: far below t*, attention is a small share (13.3 % for GPT-2 small, 2.7 % GPT-3)
    assert t < 6 * preset.d_model < flops.attention_crossover(preset)


def test_exercise_answers_by_hand():
    config = chapter_config()
    assert Fraction(flops.decode_step_flops(config, 300, False), flops.decode_step_flops(config, 300, True)) == 300
    assert flops.attention_crossover(memory.get_preset("gpt2-xl"), include_lm_head=False) == 6 * 1600
    gpt2 = memory.get_preset("gpt2-small")
    D, A = by_hand(gpt2)
    T = 1000
    ratio = Fraction(D * T * (T + 1) // 2 + A * T * (T + 1) * (2 * T + 1) // 6, D * T + A * T * (T + 1) // 2)
    assert round(flops.generation_flops(gpt2, 1, T, False) / flops.generation_flops(gpt2, 1, T)) == round(ratio)
    assert Fraction(T + 1, 2) < ratio < Fraction(T + 1, 2) + 20  # nearer (T+1)/2: T << t*


# --- the formulas -------------------------------------------------------------------------------------------------

@settings(max_examples=60, deadline=None)
@given(config=configs, t=st.integers(1, 10**6))
def test_step_coefficients_describe_every_step(config, t):
    D, A = flops.decode_step_coefficients(config)
    assert (D, A) == by_hand(config)
    assert flops.decode_step_flops(config, t, use_cache=True) == D + A * t
    assert flops.decode_step_flops(config, t, use_cache=False) == t * (D + A * t)
    for use_cache in (True, False):
        split = flops.decode_step_flops_split(config, t, use_cache)
        assert sum(split.values()) == flops.decode_step_flops(config, t, use_cache)
    assert flops.decode_step_flops_split(config, t, False) == {
        part: t * value for part, value in flops.decode_step_flops_split(config, t, True).items()}


@settings(max_examples=60, deadline=None)
@given(config=configs)
def test_crossover_formula(config):
    d, L, V = config.d_model, config.n_layer, config.vocab_size
    kv_dim = config.n_kv_head * config.head_dim
    t_star = flops.attention_crossover(config)
    assert t_star == 5 * d + kv_dim + Fraction(V, 2 * L)
    assert flops.attention_crossover(config, include_lm_head=False) == 5 * d + kv_dim
    if config.n_kv_head == config.n_head:  # multi-head: the chapter's 6·d_model per layer
        assert flops.attention_crossover(config, include_lm_head=False) == 6 * d
    # the definition: below t* dense dominates a step, above it attention does (with and without a cache)
    for use_cache in (True, False):
        low, high = math.floor(t_star), math.floor(t_star) + 1
        if low >= 1:
            split = flops.decode_step_flops_split(config, low, use_cache)
            assert split["attention"] <= split["dense"]
        split = flops.decode_step_flops_split(config, high, use_cache)
        assert split["attention"] > split["dense"]


def test_crossover_is_exact_where_integral():
    config = chapter_config()
    split = flops.decode_step_flops_split(config, 112)
    assert split["attention"] == split["dense"]


@settings(max_examples=60, deadline=None)
@given(config=configs, prompt_len=st.integers(1, 40), n_new=st.integers(1, 40), use_cache=st.booleans())
def test_generation_split_closed_form_equals_step_sum(config, prompt_len, n_new, use_cache):
    split = flops.generation_flops_split(config, prompt_len, n_new, use_cache)
    prefill = flops.split_dense_attention(flops.forward_flops_breakdown(config, prompt_len))
    steps = [flops.decode_step_flops_split(config, t, use_cache) for t in range(prompt_len + 1, prompt_len + n_new)]
    for part in ("dense", "attention"):
        assert split[part] == prefill[part] + sum(step[part] for step in steps)
    assert sum(split.values()) == flops.generation_flops(config, prompt_len, n_new, use_cache)


@settings(max_examples=60, deadline=None)
@given(config=configs, T=st.integers(1, 10**5))
def test_total_saving_lies_between_the_bounds(config, T):
    saving = Fraction(sum(flops.generation_flops_split(config, 1, T, False).values()),
                      sum(flops.generation_flops_split(config, 1, T, True).values()))
    assert Fraction(T + 1, 2) <= saving <= Fraction(2 * T + 1, 3)


# --- slopes of the analytic curves: the exponents the chapter states ----------------------------------------------

def _curves(config, lengths):
    step = {uc: [flops.decode_step_flops(config, t, uc) for t in lengths] for uc in (True, False)}
    total = {uc: [sum(flops.generation_flops_split(config, 1, T, uc).values()) for T in lengths] for uc in (True, False)}
    return step, total


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


@pytest.mark.parametrize("t", [50, 112, 1000, 10**5])
def test_local_slope_formula(t):
    """d ln(D + A·t) / d ln t = t / (t + t*): a central difference agrees to 1e-4."""
    config = chapter_config()
    t_star = float(flops.attention_crossover(config))
    f = lambda u: math.log(flops.decode_step_flops(config, u))  # noqa: E731
    numeric = (f(t + 1) - f(t - 1)) / (math.log(t + 1) - math.log(t - 1))
    assert numeric == pytest.approx(t / (t + t_star), abs=1e-4)


# --- bench helpers ------------------------------------------------------------------------------------------------

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


# --- bad input to the new flops functions ---------------------------------------------------------------------------

@pytest.mark.parametrize("call, error, message", [
    (lambda c: flops.decode_step_flops_split(c, 0), ValueError, "t must"),
    (lambda c: flops.decode_step_flops_split(c, 3, use_cache=1), TypeError, "use_cache"),
    (lambda c: flops.generation_flops_split(c, 0, 3), ValueError, "prompt_len"),
    (lambda c: flops.generation_flops_split(c, 1, -2), ValueError, "n_new"),
    (lambda c: flops.generation_flops_split(c, 1, 2, None), TypeError, "use_cache"),
    (lambda c: flops.attention_crossover(c, include_lm_head="no"), TypeError, "include_lm_head"),
    (lambda c: flops.split_dense_attention({"qkv": 1}), ValueError, "breakdown"),
    (lambda c: flops.split_dense_attention([1, 2]), TypeError, "breakdown"),
])
def test_new_flops_functions_reject_bad_input(call, error, message):
    with pytest.raises(error, match=message):
        call(chapter_config())


@pytest.mark.parametrize("call", [
    lambda c: flops.decode_step_coefficients(c),
    lambda c: flops.decode_step_flops_split(c, 3),
    lambda c: flops.generation_flops_split(c, 1, 3),
    lambda c: flops.attention_crossover(c),
])
def test_new_flops_functions_reject_a_non_config(call):
    with pytest.raises(TypeError, match="config must have .* lacks n_layer"):
        call(object())


def test_flops_stays_pure_python():
    source = Path(flops.__file__).read_text()
    assert "import torch" not in source and "import numpy" not in source


# --- the widget and the figures -----------------------------------------------------------------------------------

@pytest.mark.parametrize("d_model, n_layer, T", [
    (768, 12, 8192),  # the notebook's GPT-2 small
    (768, 12, 16384),
    (16, 1, 1),  # smallest everything, T = 1: single points
    (16, 128, widgets.COST_LENGTHS[-1]),  # largest T and n_layer
    (widgets.COST_D_MODELS[-1], 1, widgets.COST_LENGTHS[-1]),  # largest d_model
    (widgets.COST_D_MODELS[-1], 128, 1),
    (1, 1, 2),  # below the slider: still valid arithmetic
])
def test_draw_cost_explorer_ordinary_and_extreme(d_model, n_layer, T):
    fig = widgets.draw_cost_explorer(d_model, n_layer, T)
    step_ax, total_ax = fig.axes[:2]
    config = kvlab.GPTConfig(vocab_size=50257, n_layer=n_layer, n_head=1, d_model=d_model)
    lines = {line.get_label(): line for line in step_ax.get_lines()}
    for label, use_cache in (("with cache", True), ("without cache", False)):
        for part in ("dense", "attention"):
            xs, ys = lines[f"{label}: {part}"].get_data()
            assert xs[0] == 1 and xs[-1] == T
            assert list(ys) == [flops.decode_step_flops_split(config, int(t), use_cache)[part] for t in xs]
    totals = {line.get_label(): line for line in total_ax.get_lines()}
    xs, ys = totals["without cache: attention"].get_data()
    assert ys[-1] == flops.generation_flops_split(config, 1, T, False)["attention"]
    t_star = float(flops.attention_crossover(config))
    assert f"{t_star:,.0f}" in fig._suptitle.get_text()
    assert ("attention outweighs" in fig._suptitle.get_text()) == (T >= t_star)


@pytest.mark.parametrize("name", ["d_model", "n_layer", "T"])
@pytest.mark.parametrize("bad", [0, -1, -4096])
def test_draw_cost_explorer_rejects_non_positive(name, bad):
    values = {**dict(d_model=768, n_layer=12, T=1024), name: bad}
    with pytest.raises(ValueError, match=f"^{name} must"):
        widgets.draw_cost_explorer(**values)


@pytest.mark.parametrize("bad", [2.5, "64", True, None])
def test_draw_cost_explorer_rejects_non_ints(bad):
    with pytest.raises(TypeError, match="d_model"):
        widgets.draw_cost_explorer(bad, 12, 1024)
    with pytest.raises(ValueError, match="vocab_size"):
        widgets.draw_cost_explorer(768, 12, 1024, vocab_size=0)


def test_cost_explorer_builds_and_checks_its_start_values():
    ui = widgets.cost_explorer()
    assert [child.description for child in ui.children[:3]] == ["d_model", "n_layer", "T (tokens)"]
    with pytest.raises(ValueError, match="d_model"):
        widgets.cost_explorer(d_model=100)
    with pytest.raises(ValueError, match="^T must"):
        widgets.cost_explorer(T=1000)
    with pytest.raises(ValueError, match="n_layer"):
        widgets.cost_explorer(n_layer=0)


def test_plot_cost_vs_length_normalises_and_reports_slopes():
    x = [1, 2, 4, 8]
    fig = plots.plot_cost_vs_length(x, {"with cache": [3, 6, 12, 24], "without cache": [3, 12, 48, 192]},
                                    counted={"with cache": [3, 6, 12, 24]},
                                    seconds={"with cache": [0.5, 0.5, 0.5, 0.5]}, fit_from=2)
    labels = [line.get_label() for line in fig.axes[0].get_lines()]
    assert "with cache: FLOPs, formula (slope 1.00)" in labels
    assert "without cache: FLOPs, formula (slope 2.00)" in labels
    assert "with cache: seconds, measured (slope 0.00)" in labels
    first = fig.axes[0].get_lines()[0]
    assert list(first.get_ydata()) == [1, 2, 4, 8]  # divided by its first value


@pytest.mark.parametrize("call, message", [
    (lambda: plots.plot_cost_vs_length([1, 2], {"a": [1]}), r"flops\['a'\]"),  # one value too few
    (lambda: plots.plot_cost_vs_length([1, 2], {"a": [1, 0]}), r"flops\['a'\]\[1\]"),  # 0 on a log axis
    (lambda: plots.plot_cost_vs_length([], {"a": []}), "lengths"),
    (lambda: plots.plot_cost_vs_length([1, 2], {}), "flops"),
    (lambda: plots.plot_cache_speedup([1, 2], [1, 2], [1, -1]), r"time_ratio\[1\]"),
    (lambda: plots.plot_cost_split([0], {}, [1], {}), r"step_lengths\[0\]"),
    (lambda: plots.plot_cost_split([1], {"m": {"dense": [1, 2]}}, [1], {}), r"step\['m'\]\['dense'\]"),
])
def test_chapter04_plots_reject_bad_input(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_plot_cache_speedup_draws_bounds_and_both_ratios():
    fig = plots.plot_cache_speedup([1, 2, 4], [1, 1.5, 2.5], [1.2, 1.1, 1.3],
                                   bounds={"(T+1)/2": [1, 1.5, 2.5], "(2T+1)/3": [1, 5 / 3, 3]})
    labels = [line.get_label() for line in fig.axes[0].get_lines()]
    assert {"(T+1)/2", "(2T+1)/3", "FLOPs saved (formula)", "time saved (measured)"} <= set(labels)
