"""What chapter 01 (autoregressive_generation.ipynb) shows: numbers and sentences its prose and exercises
state, checked against the committed notebook or recomputed with kvlab.
"""

import pytest

import kvlab
from kvlab import measure
from kvlab.flops import positions_processed


def test_notebook_totals_for_the_cache_prompt():
    """The notebook's table: P = 6 ("the ca"), N = 8 -> 76 positions without a cache, 13 with one."""
    assert sum(positions_processed(6, 8, use_cache=False)) == 6 + 7 + 8 + 9 + 10 + 11 + 12 + 13 == 76
    assert sum(positions_processed(6, 8, use_cache=True)) == 6 + 7 == 13


def test_exercise_answers(hello):
    assert sum(positions_processed(4, 10, use_cache=False)) == 4 * 10 + 10 * 9 // 2 == 85
    model, tok = hello
    with measure.record_positions(model) as fed:
        kvlab.generate(model, tok.encode_batch("the qu"), max_new_tokens=5)
    assert (len(fed), sum(1 for n in fed[1:] if n == 1)) == (5, 4)
    ratio = sum(positions_processed(1000, 200, use_cache=False)) / sum(positions_processed(1000, 200))
    assert ratio == pytest.approx((1000 * 200 + 200 * 199 / 2) / 1199) and round(ratio) == 183
