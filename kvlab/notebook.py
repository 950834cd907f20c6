"""Small helpers for the chapters: show kvlab's own source, and let learners check their exercise answers."""

from __future__ import annotations

import inspect
import math
import numbers

__all__ = ["show_source", "check_answer"]


def show_source(obj, start: str | None = None, stop: str | None = None):
    """Render the source of a kvlab function or class, highlighted, so a chapter shows the code it runs.

    `start`/`stop` cut the listing to the lines from the first containing `start` (default: the first line) up to the
    first after it containing `stop` (inclusive; default: the last line), to focus on the part a chapter is about.
    """
    from IPython.display import Markdown  # only notebooks need IPython

    lines = inspect.getsource(obj).splitlines()
    first = _line_containing(lines, start, 0, obj) if start is not None else 0
    last = _line_containing(lines, stop, first, obj) if stop is not None else len(lines) - 1
    lines = lines[first:last + 1]
    name = f"{obj.__module__}.{obj.__qualname__}"
    return Markdown(f"`{name}`\n```python\n" + "\n".join(lines) + "\n```")


def _line_containing(lines: list[str], text: str, begin: int, obj) -> int:
    """Index of the first line from `begin` on that contains `text`; a clear error when none does."""
    found = next((i for i, line in enumerate(lines[begin:], begin) if text in line), None)
    if found is None:
        raise ValueError(f"{text!r} does not occur in the source of {obj.__qualname__}")
    return found


def check_answer(answer, expected, *, hint: str = "") -> bool:
    """Print whether an exercise answer is right; None means "not attempted yet" (so a fresh run stays quiet)."""
    if answer is None:
        print("Not answered yet: replace None with your answer and run the cell again.")
        return False
    if _same(answer, expected):
        print(f"Correct: {answer!r}")
        return True
    print(f"Not quite: you said {answer!r}. {hint}".rstrip())
    return False


def _same(answer, expected) -> bool:
    """Equal by value: a tuple matches a list, an array or tensor its elements, floats within rounding (0.1 + 0.2 and
    0.3 differ in the last bit), numpy numbers their Python values. Anything `==` cannot decide is not equal."""
    answer, expected = (x.tolist() if hasattr(x, "tolist") else x for x in (answer, expected))
    if isinstance(answer, (list, tuple)) and isinstance(expected, (list, tuple)):
        return len(answer) == len(expected) and all(_same(a, e) for a, e in zip(answer, expected))
    if isinstance(answer, bool) or isinstance(expected, bool):
        return answer is expected
    if isinstance(answer, numbers.Real) and isinstance(expected, numbers.Real):
        return math.isclose(answer, expected, rel_tol=1e-9, abs_tol=1e-12)
    try:
        return bool(answer == expected)
    except (TypeError, ValueError):
        return False
