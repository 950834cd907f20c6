"""The one validator of the plotting functions: the numbers a figure draws, checked before anything is drawn.

Every figure takes plain numbers (lists, dicts of lists). They are checked here, with `kvlab.checks`, so that a
bad one gets an error naming where it sits (``flops['with cache'][2] must be a finite number > 0, got 0.0``)
instead of an empty or wrong picture: a log axis cannot show 0, NaN or a negative number, and a curve with one
value too few would be drawn against the wrong lengths.
"""

from __future__ import annotations

from collections.abc import Mapping

from ..checks import check_int, check_number, check_type


def check_entries(name: str, value, what: str) -> dict:
    """`value` as a dict if it is a mapping with at least one entry; `what` describes an entry ("{label: values}")."""
    check_type(name, value, Mapping, f"a dict {what}")
    if not value:
        raise ValueError(f"{name} must hold at least one entry {what}, got an empty dict")
    return dict(value)


def check_values(name: str, given, *, minimum: float = 0, inclusive: bool = False, integer: bool = False,
                 length: int | None = None) -> list:
    """`given` as a list of checked numbers: finite and > `minimum` (>= if `inclusive`), ints if `integer`.

    With `length`, there must be exactly that many (one per length of the x axis); without, at least one.
    Defaults fit a log axis: finite numbers > 0.
    """
    try:
        given = list(given)
    except TypeError:
        raise TypeError(f"{name} must be a list of numbers, got {type(given).__name__}") from None
    if length is not None and len(given) != length:
        raise ValueError(f"{name} must hold one value per x value: {length} expected, got {len(given)}")
    if not given:
        raise ValueError(f"{name} must hold at least one value, got none")
    if integer:
        return [check_int(f"{name}[{i}]", v, minimum if inclusive else minimum + 1) for i, v in enumerate(given)]
    return [check_number(f"{name}[{i}]", v, minimum, inclusive=inclusive) for i, v in enumerate(given)]


def check_curves(name: str, given, length: int, *, required: bool = True, **rule) -> dict:
    """{label: values}, each curve `check_values`-checked with one value per x value; {} for None unless required."""
    if not given and not required:
        return {}
    given = check_entries(name, given, "{label: values}")
    return {label: check_values(f"{name}[{label!r}]", ys, length=length, **rule) for label, ys in given.items()}


def check_xy_series(name: str, given, *, required: bool = False) -> dict:
    """{label: (xs, ys)} for log-log axes: as many ys as xs, at least one point, every number finite and > 0."""
    if not given and not required:
        return {}
    checked = {}
    for label, pair in check_entries(name, given, "{label: (xs, ys)}").items():
        if not (isinstance(pair, (tuple, list)) and len(pair) == 2):
            raise TypeError(f"{name}[{label!r}] must be a pair (xs, ys) of number lists, got {pair!r}")
        xs = check_values(f"{name}[{label!r}] xs", pair[0])
        checked[label] = (xs, check_values(f"{name}[{label!r}] ys", pair[1], length=len(xs)))
    return checked
