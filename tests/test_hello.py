"""The shipped hello model: small, safe to load, a real model, and reproducible from the training script."""

import pytest
import torch

import kvlab
from kvlab.corpus import make_corpus
from kvlab.hello import HELLO_WEIGHTS, load_model
from kvlab.train_hello import save_model, train_hello_model


def _complete(model, tok, prompt, n):
    return tok.decode(kvlab.generate(model, tok.encode_batch(prompt), n)[0])


def test_h_becomes_hello(hello):
    assert _complete(*hello, "h", 4) == "hello"


@pytest.mark.parametrize("prompt, expected", [
    ("hello w", "hello world"),
    ("the ca", "the cache"),
    ("the qu", "the query"),
    ("pre", "prefill"),
    ("deco", "decode"),
    ("keys and v", "keys and values"),
])
def test_completes_other_words(hello, prompt, expected):
    """A lookup table for "h" would not do this: the model has learned words in context."""
    assert _complete(*hello, prompt, len(expected) - len(prompt)) == expected


def test_weights_are_small_and_load_without_unpickling_code():
    assert HELLO_WEIGHTS.stat().st_size < 2_000_000
    checkpoint = torch.load(HELLO_WEIGHTS, weights_only=True)
    assert set(checkpoint) == {"config", "chars", "state_dict"}


def test_tokenizer_round_trip_and_errors(hello):
    _, tok = hello
    assert tok.decode(tok.encode("hello world\n")) == "hello world\n"
    with pytest.raises(ValueError, match="characters 'HZ' are not in the vocabulary"):
        tok.encode("Hello Z")
    with pytest.raises(ValueError, match=f"token id {tok.vocab_size} is out of range"):
        tok.decode([0, tok.vocab_size])
    with pytest.raises(ValueError, match="distinct characters"):
        kvlab.CharTokenizer("aab")


def test_corpus_is_deterministic_and_every_h_line_says_hello():
    lines = make_corpus(seed=0)
    assert lines == make_corpus(seed=0) and lines != make_corpus(seed=1)
    assert all(line.startswith("hello ") for line in lines if line.startswith("h"))
    with pytest.raises(ValueError, match="n_lines must be an int >= 1, got 0"):
        make_corpus(0)


def test_training_is_deterministic():
    first, _ = train_hello_model(steps=3, log_every=0)
    second, _ = train_hello_model(steps=3, log_every=0)
    for (name, a), b in zip(first.state_dict().items(), second.state_dict().values()):
        assert torch.equal(a, b), name


def test_training_script_reproduces_a_hello_model(tmp_path):
    """The full recipe (about half a minute on 2 cores): retrain, save, reload, and it says hello."""
    model, tok = train_hello_model(log_every=0)
    save_model(model, tok, tmp_path / "hello.pt")
    reloaded, reloaded_tok = load_model(tmp_path / "hello.pt")
    assert _complete(reloaded, reloaded_tok, "h", 4) == "hello"
    assert _complete(reloaded, reloaded_tok, "the ca", 3) == "the cache"
