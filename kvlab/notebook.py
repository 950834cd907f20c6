"""Small helpers for the chapters: show kvlab's own source, and let learners check their exercise answers."""

from __future__ import annotations

import inspect

__all__ = ["show_source", "check_answer"]


def show_source(obj, start: str | None = None, stop: str | None = None):
    """Render the source of a kvlab function or class, highlighted, so a chapter shows the code it runs.

    `start`/`stop` cut the listing to the lines from the first containing `start` up to the first after it containing
    `stop` (inclusive), to focus on the part a chapter is about.
    """
    from IPython.display import Markdown  # only notebooks need IPython

    lines = inspect.getsource(obj).splitlines()
    if start is not None:
        first = next((i for i, line in enumerate(lines) if start in line), None)
        if first is None:
            raise ValueError(f"{start!r} does not occur in the source of {obj.__qualname__}")
        last = next((i for i, line in enumerate(lines[first:], first) if stop and stop in line), len(lines) - 1)
        lines = lines[first:last + 1]
    name = f"{obj.__module__}.{obj.__qualname__}"
    return Markdown(f"`{name}`\n```python\n" + "\n".join(lines) + "\n```")


def check_answer(answer, expected, *, hint: str = "") -> bool:
    """Print whether an exercise answer is right; None means "not attempted yet" (so a fresh run stays quiet)."""
    if answer is None:
        print("Not answered yet: replace None with your answer and run the cell again.")
        return False
    if answer == expected:
        print(f"Correct: {answer!r}")
        return True
    print(f"Not quite: you said {answer!r}. {hint}".rstrip())
    return False
