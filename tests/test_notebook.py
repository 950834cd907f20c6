"""kvlab.notebook: the source a chapter shows is the code it runs, and exercise checks say what they found."""

import numpy as np
import pytest

import kvlab
from kvlab.notebook import check_answer, show_source


def _listing(markdown) -> list[str]:
    return markdown.data.split("```python\n", 1)[1].rsplit("\n```", 1)[0].splitlines()


def test_show_source_shows_the_whole_function_by_default():
    lines = _listing(show_source(kvlab.model.causal_mask))
    assert lines[0].startswith("def causal_mask(") and "tril(diagonal=past)" in lines[-1]


def test_show_source_cuts_between_start_and_stop():
    forward = kvlab.model.CausalSelfAttention.forward
    lines = _listing(show_source(forward, start="q, k, v =", stop="cache.update"))
    assert "q, k, v =" in lines[0] and "cache.update" in lines[-1] and len(lines) == 6
    up_to_update = _listing(show_source(forward, stop="cache.update"))
    assert up_to_update[0].lstrip().startswith("def forward(") and "cache.update" in up_to_update[-1]


@pytest.mark.parametrize("kwargs, missing", [(dict(start="no such line"), "no such line"),
                                             (dict(stop="no such line"), "no such line")])
def test_show_source_names_text_it_cannot_find(kwargs, missing):
    with pytest.raises(ValueError, match=f"'{missing}'.*causal_mask"):  # the text, and where it was looked for
        show_source(kvlab.model.causal_mask, **kwargs)


def test_check_answer_reports_unanswered_right_and_wrong(capsys):
    assert check_answer(None, 3) is False
    assert check_answer(3, 3) is True
    assert check_answer(4, 3, hint="Count again.") is False
    out = capsys.readouterr().out.splitlines()
    assert out == ["Not answered yet: replace None with your answer and run the cell again.", "Correct: 3",
                   "Not quite: you said 4. Count again."]


# --- issue 13: answers compared by value ---

@pytest.mark.parametrize(("answer", "expected"), [
    ((2, 3), [2, 3]),  # a tuple for a list
    (0.1 + 0.2, 0.3),  # floats within rounding
    (np.array([1, 2]), [1, 2]),  # an array: no "ambiguous truth value"
    (np.int64(7), 7),
    (np.float32(0.5), 0.5),
    ([0.1 + 0.2, "ValueError"], (0.3, "ValueError")),
])
def test_check_answer_compares_by_value(answer, expected, capsys):
    assert check_answer(answer, expected)
    assert capsys.readouterr().out.startswith("Correct")


@pytest.mark.parametrize(("answer", "expected"), [
    ((2, 3), [2, 3, 4]), (0.31, 0.3), (np.array([1, 2]), [1, 3]), ("TypeError", "ValueError"), (1, True),
    (np.zeros((2, 2)), 0.0),
])
def test_check_answer_still_marks_wrong_answers_wrong(answer, expected, capsys):
    assert not check_answer(answer, expected, hint="try again")
    assert capsys.readouterr().out.startswith("Not quite")


def test_check_answer_accepts_the_other_right_answers_it_is_given(capsys):
    assert check_answer(800, 784, also=(800,)) and check_answer(784, 784, also=[800])
    assert not check_answer(816, 784, also=(800,), hint="Count the keys.")
    assert capsys.readouterr().out.splitlines() == ["Correct: 800", "Correct: 784", "Not quite: you said 816. Count "
                                                    "the keys."]
    with pytest.raises(TypeError, match="also"):
        check_answer(800, 784, also=800)
