"""What chapter 04 (cost_with_and_without_cache.ipynb) shows: numbers and sentences its prose and exercises
state, checked against the committed notebook or recomputed with kvlab.
"""

import json
import re
from fractions import Fraction

import pytest

from kvlab import flops, memory
from tests.helpers import FIT_FROM, NOTEBOOKS, T_MAX, assert_printed_above, by_hand, chapter_config

NOTEBOOK = NOTEBOOKS / "04_cost_with_and_without_cache.ipynb"


# The notebook's measured model and sweep (test_notebook_uses_these_settings keeps the two in step).
def test_notebook_uses_these_settings():
    source = "\n".join("".join(cell["source"]) for cell in json.loads(NOTEBOOK.read_text())["cells"])
    assert "kvlab.GPTConfig(vocab_size=64, n_layer=2, n_head=2, d_model=16, max_seq_len=1024)" in source
    assert f"T_MAX = {T_MAX}" in source and f"FIT_FROM = {FIT_FROM}" in source
    assert "lengths = [2**k for k in range(10)]" in source


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


def test_attention_bottleneck_box_quotes_the_table():
    """§3's box: "attention is the bottleneck" against the printed shares and t* of GPT-2 small and GPT-3 175B."""
    rows = (r"GPT-2 small +768 +12 +4,608 +6,702 +1,024 +13\.3%",
            r"GPT-3 175B +12,288 +96 +73,728 +73,990 +2,048 +2\.7%")
    for row in rows:
        assert_printed_above(NOTEBOOK, "**A common explanation says** that attention, whose cost grows like t² without",
                             re.compile(row))
    assert_printed_above(NOTEBOOK, "only beyond t* (6,702 and 73,990 tokens)", "6,702")


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


def test_conclusion_no_longer_promises_that_a_large_model_closes_the_gap():
    """§6's conclusion: at batch 1 on a GPU the cache saves far more FLOPs than time, even for a 7B model."""
    from kvlab import hardware

    cells = json.loads(NOTEBOOK.read_text())["cells"]
    prose = " ".join(" ".join("".join(c["source"]).split()) for c in cells if c["cell_type"] == "markdown")
    assert "comes much closer to the FLOPs saved" not in prose
    assert "re-feeding even a hundred tokens takes no longer than feeding one" in prose
    assert "There the cache saves far more FLOPs than time" in prose
    for gpu in hardware.GPU_PRESETS.values():
        for key in ("gpt2-small", "llama2-7b"):
            preset = memory.get_preset(key)
            assert hardware.free_refeed_length(preset, gpu.fp16_flops, gpu.bandwidth, 2) >= 100
            (saving,) = hardware.cache_savings(preset, [1000], gpu.fp16_flops, gpu.bandwidth, 2)
            assert saving.time_ratio < saving.flops_ratio / 100
