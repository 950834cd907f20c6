"""Argument checks shared by every public function: one place, one convention.

A public function checks its arguments once, at its boundary, with these helpers, and then trusts them: nothing
here runs inside a decode loop. The convention, everywhere in kvlab:

- a value of the wrong *type* raises ``TypeError`` (``n_layer=True``, ``seq_len=12.0``, ``idx=[1, 2]``);
- a value of the right type but outside what is allowed raises ``ValueError`` (``n_layer=0``, ``dtype="fp12"``);
- the message names the parameter, shows the value received and says what is allowed:
  ``n_layer must be an int >= 1, got 0``.

Bools are rejected where a count is expected (``True`` layers is a bug, not 1), and so are floats, even whole ones.
Numpy's integer and float scalars are accepted, since learners often pass them from an array.
The module imports no torch at load time, so the pure-arithmetic modules (`memory`, `flops`) can use it.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Collection
from typing import Any

__all__ = ["check_int", "check_number", "check_one_of", "check_type", "check_tensor", "check_bool"]


def _shown(value: object) -> str:
    """The value as a TypeError shows it: its repr, cut short, and its type (``12.0 (float)``)."""
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{text} ({type(value).__name__})"


def _range(kind: str, minimum: float | None, maximum: float | None, inclusive: bool = True) -> str:
    """'an int >= 1', 'an int in 0..3', 'a number > 0' — what is allowed, in words."""
    if minimum is not None and maximum is not None:
        return f"{kind} in {minimum}..{maximum}" if inclusive else f"{kind} with {minimum} < value < {maximum}"
    if minimum is not None:
        return f"{kind} {'>=' if inclusive else '>'} {minimum}"
    if maximum is not None:
        return f"{kind} {'<=' if inclusive else '<'} {maximum}"
    return kind


def check_int(name: str, value: Any, minimum: int | None = None, maximum: int | None = None) -> int:
    """`value` as a plain int, if it is an integer (not a bool, not a float) in minimum..maximum (inclusive)."""
    allowed = _range("an int", minimum, maximum)
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be {allowed}, got {_shown(value)}")
    value = int(value)
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise ValueError(f"{name} must be {allowed}, got {value}")
    return value


def check_number(name: str, value: Any, minimum: float | None = None, maximum: float | None = None, *,
                 inclusive: bool = True) -> float:
    """`value` as a float, if it is a finite real number (not a bool) within the bounds.

    `inclusive=False` makes both bounds strict (``minimum=0, inclusive=False``: a positive number).
    NaN and infinity are always refused: no quantity in kvlab is meaningful at either.
    """
    allowed = _range("a finite number", minimum, maximum, inclusive)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be {allowed}, got {_shown(value)}")
    try:
        value = float(value)
    except OverflowError:  # an int past 1.8e308: no float holds it
        raise ValueError(f"{name} must be {allowed}, got an int of {len(str(abs(value)))} digits, beyond the float "
                         f"range (about 1.8e308)") from None
    low_ok = minimum is None or (value >= minimum if inclusive else value > minimum)
    high_ok = maximum is None or (value <= maximum if inclusive else value < maximum)
    if not (math.isfinite(value) and low_ok and high_ok):
        raise ValueError(f"{name} must be {allowed}, got {value!r}")
    return value


def check_bool(name: str, value: Any) -> bool:
    """`value` if it is True or False: a string such as "False" is truthy, so it must not pass for a bool."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {_shown(value)}")
    return value


def check_one_of(name: str, value: Any, allowed: Collection) -> Any:
    """`value` if it is one of `allowed` (a ValueError lists them all: the learner sees every choice)."""
    try:
        ok = value in allowed
    except TypeError:  # an unhashable value looked up in a set or dict
        ok = False
    if not ok:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}; got {value!r}")
    return value


def check_type(name: str, value: Any, types: type | tuple[type, ...], what: str) -> Any:
    """`value` if it is an instance of `types`; `what` describes the allowed kind in words ("a kvlab Cache")."""
    if not isinstance(value, types):
        if isinstance(value, type):  # the class itself, where an instance was meant: a common slip
            raise TypeError(f"{name} must be {what}, got the class {value.__name__}; create one with "
                            f"{value.__name__}(...)")
        raise TypeError(f"{name} must be {what}, got {_shown(value)}")
    return value


def check_tensor(name: str, value: Any, *, dim: int | None = None, dtypes: Collection | None = None,
                 what: str = "a torch.Tensor") -> Any:
    """`value` if it is a tensor with `dim` dimensions and one of `dtypes` (TypeError for type and dtype,
    ValueError for the number of dimensions)."""
    import torch  # here, not at the top: `memory` and `flops` use this module and stay free of torch

    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be {what}, got {_shown(value)}")
    if dtypes is not None and value.dtype not in dtypes:
        raise TypeError(f"{name} must have dtype {' or '.join(str(d) for d in dtypes)}, got {value.dtype}")
    if dim is not None and value.dim() != dim:
        raise ValueError(f"{name} must be {what} with {dim} dimensions, got shape {tuple(value.shape)}")
    return value
