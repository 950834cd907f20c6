"""kvlab.checks: one convention for every public function (TypeError for a type, ValueError for a value)."""

import math
import re

import numpy as np
import pytest
import torch

from kvlab.checks import check_bool, check_int, check_number, check_one_of, check_tensor, check_type


@pytest.mark.parametrize("value", [True, 12.0, "3", None, [1]])
def test_check_int_refuses_non_integers_with_a_type_error(value):
    with pytest.raises(TypeError, match=r"n_layer must be an int >= 1, got .*\(\w+\)"):
        check_int("n_layer", value, 1)


@pytest.mark.parametrize("value, minimum, maximum", [(0, 1, None), (-1, 0, None), (4, 0, 3), (5, None, 2)])
def test_check_int_refuses_values_out_of_range(value, minimum, maximum):
    with pytest.raises(ValueError, match=rf"layer_idx must be an int.*, got {value}$"):
        check_int("layer_idx", value, minimum, maximum)


def test_check_int_names_both_bounds():
    with pytest.raises(ValueError, match=r"in 0\.\.3"):
        check_int("layer_idx", 7, 0, 3)


def test_check_int_returns_plain_ints_also_for_numpy_integers():
    assert check_int("n", np.int64(5), 1) == 5 and type(check_int("n", np.int64(5), 1)) is int
    assert check_int("n", 0, 0, 0) == 0


@pytest.mark.parametrize("value", [True, "1.0", None, 1j])
def test_check_number_refuses_non_numbers(value):
    with pytest.raises(TypeError, match="temperature must be a finite number"):
        check_number("temperature", value, 0)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, -0.5])
def test_check_number_refuses_nan_inf_and_values_below_the_minimum(value):
    with pytest.raises(ValueError, match="temperature must be a finite number >= 0"):
        check_number("temperature", value, 0)


def test_check_number_names_an_int_beyond_float_range():
    """float(10**400) raised OverflowError, which no caller expects from a check."""
    with pytest.raises(ValueError, match=re.escape("bytes_per_elem must be a finite number > 0, got an int of 401 "
                                                   "digits, beyond the float range")):
        check_number("bytes_per_elem", 10**400, 0, inclusive=False)


def test_check_number_strict_bounds():
    with pytest.raises(ValueError, match="> 0"):
        check_number("bytes_per_elem", 0, 0, inclusive=False)
    with pytest.raises(ValueError, match="0 < value < 1"):
        check_number("p", 1.0, 0, 1, inclusive=False)
    assert check_number("p", np.float32(0.5), 0, 1, inclusive=False) == 0.5
    assert check_number("x", 3) == 3.0


def test_check_bool_refuses_truthy_strings_and_ints():
    assert check_bool("use_cache", False) is False
    for value in ("False", 0, None):
        with pytest.raises(TypeError, match="use_cache must be True or False"):
            check_bool("use_cache", value)


def test_check_one_of_lists_every_choice():
    assert check_one_of("dtype", "fp16", ("fp32", "fp16")) == "fp16"
    with pytest.raises(ValueError, match=r"dtype must be one of 'fp32', 'fp16'; got 'fp12'"):
        check_one_of("dtype", "fp12", ("fp32", "fp16"))
    with pytest.raises(ValueError, match="dtype must be one of"):
        check_one_of("dtype", ["unhashable"], {"fp32": 4})


def test_check_type_names_a_class_passed_for_an_instance():
    with pytest.raises(TypeError, match=r"got the class dict; create one with dict\(\.\.\.\)"):
        check_type("cache", dict, list, "a list")
    with pytest.raises(TypeError, match=r"cache must be a list, got 3 \(int\)"):
        check_type("cache", 3, list, "a list")
    assert check_type("cache", [], list, "a list") == []


def test_check_tensor_type_dtype_and_dimensions():
    ids = torch.zeros(1, 3, dtype=torch.long)
    assert check_tensor("idx", ids, dim=2, dtypes=(torch.long,)) is ids
    with pytest.raises(TypeError, match="idx must be a torch.Tensor, got"):
        check_tensor("idx", [[1, 2]], dim=2)
    with pytest.raises(TypeError, match="idx must have dtype torch.int64, got torch.float32"):
        check_tensor("idx", ids.float(), dtypes=(torch.long,))
    with pytest.raises(ValueError, match=r"idx must be a torch.Tensor with 2 dimensions, got shape \(3,\)"):
        check_tensor("idx", ids[0], dim=2)


def test_long_values_are_cut_short_in_messages():
    with pytest.raises(TypeError) as error:
        check_int("n", "x" * 500, 1)
    assert len(str(error.value)) < 120
