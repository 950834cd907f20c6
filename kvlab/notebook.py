"""Small helpers for the chapters: show kvlab's own source, and let learners check their exercise answers.

Three kinds of check, each printing a sentence a learner understands and returning True or False:
`check_answer` (a number or a word), `check_cache` (a `Cache` the learner wrote, run through the checks of
`kvlab.contract`, the same ones every kvlab cache passes in the test suite) and `check_prediction` (a prediction
written before a measurement, and how far it was from it).
"""

from __future__ import annotations

import inspect
import math
import numbers
import traceback
from collections.abc import Callable
from pathlib import Path

from .checks import check_int, check_number, check_type

__all__ = ["show_source", "check_answer", "check_cache", "check_prediction"]


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


def check_answer(answer, expected, *, hint: str = "", also: tuple | list = ()) -> bool:
    """Print whether an exercise answer is right; None means "not attempted yet" (so a fresh run stays quiet).

    `also` lists other answers that are right too, for a question a careful reader can count two ways (the keys a
    step reads: the 49 cached, or 50 with its own), so a right reasoning is not marked wrong.
    """
    check_type("also", also, (tuple, list), "a tuple or list of other right answers")
    if answer is None:
        print("Not answered yet: replace None with your answer and run the cell again.")
        return False
    if any(_same(answer, right) for right in (expected, *also)):
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


# --- check_cache: a learner's Cache through the contract ---

def check_cache(cache: type | Callable, *, window: int | None = None, like: Callable | None = None,
                configs: tuple[str, ...] = ("mha", "gqa", "mqa")) -> bool:
    """Run a `Cache` you wrote through kvlab's cache contract; print each check's result and return True if all pass.

    `cache` is a `kvlab.Cache` subclass, built with no arguments (``check_cache(MyCache)``), or a function that builds
    an empty cache, taking no arguments or ``(config, batch_size)`` for a cache that needs the model's shape up front
    (``check_cache(lambda config, batch_size: kvlab.StaticCache(config, batch_size, 64))``). A fresh cache is built
    for every check.

    What the cache promises decides what it is compared with:
    - by default it is lossless: the model's logits with it equal those without a cache;
    - ``window=W``: a sliding window. A class is built as ``MyCache(W)``, and it must return exactly the keys and
      values, and give exactly the logits, of kvlab's ``SlidingWindowCache(W)`` (W tokens held between calls);
    - ``like=lambda: kvlab.compressed_cache.SinkCache(8, n_sink=2)``: any other lossy strategy, compared the same way
      with the kvlab cache that function builds.
    `configs` names the attention layouts to run on: "mha", "gqa" (4 query heads share 2 K/V heads), "mqa".
    An ordinary failure prints what was expected, what the cache did and a hint; an exception raised inside your code
    is reported with its message, not raised. Bad arguments to `check_cache` itself raise TypeError or ValueError.
    """
    from . import contract  # torch and the model: loaded when a chapter checks a cache, not on `import kvlab`

    spec = _spec_for(cache, window, like, configs)
    print(f"Checking {_label(cache)}{_versus(spec, window, like)}:")
    for name, check in contract.CHECKS.items():
        try:
            for config_name in configs:
                check(spec, config_name)
        except contract.ContractFailure as failure:
            print(f"  FAIL  {name}\n{failure}")
            return False
        except Exception as error:  # noqa: BLE001 - the learner's code may raise anything; report, do not raise
            print(f"  FAIL  {name}\n{_crash_report(error)}")
            return False
        print(f"  ok    {name}")
    print(f"All {len(contract.CHECKS)} checks passed.")
    return True


def _versus(spec, window: int | None, like: Callable | None) -> str:
    """What the learner's cache is compared with, for the first line of the report."""
    if window is None and like is None:
        return " (lossless)"
    from . import contract

    return f", compared with kvlab's {contract._describe(spec.reference(contract.CONFIGS['gqa'], contract.BATCH))}"


def _spec_for(cache: object, window: int | None, like: Callable | None, configs: tuple[str, ...]):
    """The `contract.Spec` of what the learner's cache promises: lossless, a sliding window, or like a kvlab cache."""
    from . import contract
    from .cache import Cache
    from .compressed_cache import SlidingWindowCache

    if window is not None:
        window = check_int("window", window, 1)
        if like is not None:
            raise ValueError("give window= or like=, not both: window=W means like=lambda: SlidingWindowCache(W)")
        like = lambda: SlidingWindowCache(window)  # noqa: E731 - the reference, as if the learner had written it
    unknown = [c for c in configs if c not in contract.CONFIGS] if isinstance(configs, (tuple, list)) else configs
    if not isinstance(configs, (tuple, list)) or unknown or not configs:
        raise ValueError(f"configs must be a non-empty tuple of {sorted(contract.CONFIGS)}, got {configs!r}")

    def checked(make: Callable, whose: str) -> Callable:
        def built(config, batch_size):
            made = make(config, batch_size)
            if not isinstance(made, Cache):
                raise contract.ContractFailure("building the cache", "an instance of a kvlab.Cache subclass",
                                               f"{whose} returned {type(made).__name__}: {made!r}"[:200],
                                               "the function you pass must return the cache it builds")
            return made
        return built

    make = checked(_factory(cache, window), "your function")
    if like is None:
        return contract.Spec(make, configs=tuple(configs))
    if isinstance(like, Cache) or not callable(like):
        raise TypeError(f"like must be a function that builds the kvlab cache to compare with, e.g. "
                        f"like=lambda: SinkCache(8, n_sink=2), got {like!r} ({type(like).__name__})")
    reference = checked(_factory(like, None), "like")
    return contract.Spec(make, lossless=False, configs=tuple(configs), reference=reference)


def _factory(cache: object, window: int | None) -> Callable:
    """`(config, batch_size) -> empty cache` from a class or a function; a TypeError that names anything else."""
    from .cache import Cache

    if isinstance(cache, Cache):
        raise TypeError(f"check_cache needs the class, not a cache already built: pass {type(cache).__name__}, not "
                        f"{type(cache).__name__}(...) (it builds a fresh cache for every check)")
    if isinstance(cache, type) and not issubclass(cache, Cache):
        raise TypeError(f"check_cache needs a kvlab.Cache subclass, got the class {cache.__name__}")
    if not callable(cache):
        raise TypeError(f"check_cache needs a kvlab.Cache subclass or a function that builds one, got {cache!r} "
                        f"({type(cache).__name__})")
    required = _required_arguments(cache)
    if isinstance(cache, type) and window is not None and required in (0, 1):
        return lambda config, batch_size: cache(window)
    if required == 0:
        return lambda config, batch_size: cache()
    if required == 2 and not isinstance(cache, type):
        return cache
    raise TypeError(f"check_cache cannot guess the {required} arguments {_label(cache)} needs: pass a function "
                    f"that builds the cache, e.g. check_cache(lambda config, batch_size: {_label(cache)}(...))")


def _required_arguments(fn: Callable) -> int | None:
    """How many positional arguments `fn` (a class: its constructor) needs; None when Python cannot tell."""
    try:
        parameters = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return None
    return sum(p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in parameters)


def _label(cache: object) -> str:
    """`MyCache`, or 'your function' for a lambda (its qualified name would show check_cache's insides)."""
    name = getattr(cache, "__qualname__", None) or type(cache).__name__
    return "your function" if name.endswith("<lambda>") else name


def _crash_report(error: Exception) -> str:
    """Where the learner's code raised, by function name and source line: file paths would name this machine."""
    frames = traceback.extract_tb(error.__traceback__)
    theirs = [f for f in frames if _learners(f.filename) and f.name != "<lambda>"]
    what = f"{type(error).__name__}: {error}"
    if isinstance(error, NotImplementedError) and theirs:
        return f"Not written yet: {theirs[-1].name}() raised {what}"
    if theirs:
        frame = theirs[-1]
        line = f" at `{frame.line}`" if frame.line else ""
        return f"Your code crashed in {frame.name}(){line}:\n  {what}"
    return (f"The model crashed while using your cache:\n  {what}\n  hint: check the shapes update returns: "
            "(B, H_kv, T, D) keys and values, all tokens to attend to")


def _learners(filename: str) -> bool:
    """A frame of the learner's code: a notebook cell, or kvlab's exercise skeletons; not kvlab, torch or Python."""
    import torch

    path = Path(filename)
    if path.parent == Path(__file__).parent:
        return path.name == "exercises.py"
    library = (Path(torch.__file__).parent.parent, Path(contextlib_file()).parent)
    return not any(parent in library for parent in path.parents)


def contextlib_file() -> str:
    import contextlib

    return contextlib.__file__


# --- check_prediction: predict, then measure ---

def check_prediction(predicted, measured, tolerance: float = 0.1, *, what: str = "") -> bool:
    """Say how close a prediction was to a measurement, in relative error; True if within `tolerance` (0.1: 10 %).

    None means "not predicted yet". The relative error |predicted - measured| / |measured| is what an estimate is
    judged by: 5 % off is as good for a byte count in the millions as for a speed-up of 3. `what` names the quantity
    in the sentence ("the cache bytes").
    """
    measured = check_number("measured", measured)
    tolerance = check_number("tolerance", tolerance, 0)
    if measured == 0:
        raise ValueError("measured is 0, so a relative error is undefined: compare with check_answer instead")
    thing = f" for {what}" if what else ""
    if predicted is None:
        print(f"Not predicted yet: replace None with your prediction{thing}, and run the cell again.")
        return False
    predicted = check_number("predicted", predicted)
    error = abs(predicted - measured) / abs(measured)
    close = error <= tolerance
    print(f"Your prediction{thing}, {_number(predicted)}, is {_distance(predicted, measured, error)} the measured "
          f"{_number(measured)}: {'within' if close else 'outside'} the {tolerance * 100:g}% you allowed.")
    return close


def _distance(predicted: float, measured: float, error: float) -> str:
    """'exactly', '12% below', or 'a factor 3.2 above' when off by 2x or more (a percentage would mislead there)."""
    if error == 0:
        return "exactly"
    side = "above" if predicted > measured else "below"
    ratio = predicted / measured
    if ratio >= 2 or 0 < ratio <= 0.5:
        return f"a factor {max(ratio, 1 / ratio):.3g} {side}"
    return f"{error:.0%} {side}" if error >= 0.005 else f"{error:.1%} {side}"


def _number(x: float) -> str:
    """1,234,567 for a large whole number, 3.14 otherwise: how a learner writes them."""
    if float(x).is_integer() and abs(x) >= 1000:
        return f"{int(x):,}"
    return f"{x:.4g}"
