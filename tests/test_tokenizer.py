"""kvlab.CharTokenizer: a wrong argument gets an error naming it and what is allowed, never a Python internal."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

import kvlab

TOK = kvlab.CharTokenizer("\n dehlorw")


def test_decode_takes_a_list_a_tuple_a_1d_tensor_or_a_numpy_array():
    ids = TOK.encode("hello world\n")
    assert TOK.decode(ids) == TOK.decode(tuple(ids)) == TOK.decode(torch.tensor(ids)) == "hello world\n"
    assert TOK.decode(torch.tensor(ids, dtype=torch.int32)) == TOK.decode(np.array(ids)) == "hello world\n"
    assert TOK.decode([]) == ""
    predicted = torch.tensor(ids)
    assert TOK.decode([predicted[0], predicted[1]]) == "he"  # 0-d tensors, as chapter 02 passes them


@pytest.mark.parametrize(
    ("ids", "error", "message"),
    [
        (torch.tensor([[3, 4], [5, 6]]), ValueError, "got a tensor of shape (2, 2); for a batch, decode each row"),
        ("hello", TypeError, "got 'hello' (str) (to turn text into ids, use encode)"),
        ([3.0, 4.0], TypeError, "ids[0] must be an int token id, got 3.0 (float)"),
        (torch.tensor([3.0, 4.0]), TypeError, "got dtype torch.float32"),
        ([[3, 4]], TypeError, "ids[0] must be an int token id, got [3, 4] (list) (for a batch, decode each row)"),
        ([3, True], TypeError, "ids[1] must be an int token id, got True (bool)"),
        (None, TypeError, "ids must be a list of int token ids or a 1-D integer tensor, got None"),
        (7, TypeError, "got 7 (int)"),
        ([0, 99], ValueError, "token id 99 is out of range: ids must be in 0..8"),
    ],
)
def test_decode_names_what_it_got_and_what_it_takes(ids, error, message):
    with pytest.raises(error, match=re.escape(message)):
        TOK.decode(ids)


@pytest.mark.parametrize("text", [None, 7, ["h", "e"], b"he"])
def test_encode_takes_only_a_string(text):
    with pytest.raises(TypeError, match=re.escape(f"text must be a string, got {text!r}")):
        TOK.encode(text)
    with pytest.raises(TypeError, match="text must be a string"):
        TOK.encode_batch(text)


def test_encode_names_characters_outside_the_vocabulary():
    with pytest.raises(ValueError, match=re.escape("characters 'HZ' are not in the vocabulary")):
        TOK.encode("Hello Z")


def test_from_text_takes_a_string():
    assert kvlab.CharTokenizer.from_text("hello").chars == "ehlo"
    with pytest.raises(TypeError, match="text must be a string"):
        kvlab.CharTokenizer.from_text(None)
