"""The shipped hello model: small, safe to load, a real model, and reproducible from the training script."""

from __future__ import annotations

import re

import pytest
import torch

import kvlab
from kvlab import quality
from kvlab.corpus import make_corpus
from kvlab.hello import HELLO_CONFIG, HELLO_KV_HEAD_WEIGHTS, HELLO_WEIGHTS, load_kv_head_model, load_model
from kvlab.train_hello import (
    mean_pool_kv_heads,
    save_kv_head_models,
    save_model,
    train_hello_model,
    train_kv_head_models,
)


def _complete(model, tok, prompt, n):
    return tok.decode(kvlab.generate(model, tok.encode_batch(prompt), n)[0])


# --- chapter 00: start here ------------------------------------------------------------------------------------------


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


# --- chapter 08: compressing the cache -------------------------------------------------------------------------------


@pytest.mark.parametrize(("n_kv_head", "ce"), [(2, 0.2517), (1, 0.2356)])
def test_shipped_kv_head_models(hello, held_out, n_kv_head, ce):
    model, tokenizer = load_kv_head_model(n_kv_head)
    hello_model, hello_tokenizer = hello
    tokens, _ = held_out
    assert tokenizer.chars == hello_tokenizer.chars
    expected = kvlab.GPTConfig(vocab_size=tokenizer.vocab_size, n_kv_head=n_kv_head, **HELLO_CONFIG)
    assert model.config == expected
    assert quality.cross_entropy(model, tokens) == pytest.approx(ce, abs=2e-3)  # the notebook's table
    assert tokenizer.decode(kvlab.generate(model, tokenizer.encode_batch("h"), 4)[0]) == "hello"
    run = quality.decode_token_by_token(model, tokens, kvlab.DynamicCache())
    assert run.peak_nbytes == 2_097_152 * n_kv_head // 4  # exactly n_kv_head / n_head of the hello model's


def test_kv_head_weights_are_small():
    assert HELLO_KV_HEAD_WEIGHTS.stat().st_size < 2 * 10**6


def test_load_kv_head_model_bad_input():
    for bad in (3, 0):
        with pytest.raises(ValueError, match=r"n_kv_head must be one of 4, 2, 1"):
            load_kv_head_model(bad)
    for bad in (True, "2", 2.0):
        with pytest.raises(TypeError, match="n_kv_head must be an int"):
            load_kv_head_model(bad)


def test_load_kv_head_model_4_is_the_hello_model(hello):
    model, _ = load_kv_head_model(4)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), hello[0].state_dict().values()))


def test_training_recipe_is_deterministic_and_saves(tmp_path):
    first = train_kv_head_models(n_kv_heads=(2,), steps=3)
    second = train_kv_head_models(n_kv_heads=(2,), steps=3)
    model, tokenizer = first[2]
    assert model.config.n_kv_head == 2
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), second[2][0].state_dict().values()))
    save_kv_head_models(first, tmp_path / "m.pt")
    loaded = torch.load(tmp_path / "m.pt", weights_only=True)
    assert list(loaded) == [2] and loaded[2]["chars"] == tokenizer.chars


def test_mean_pool_averages_each_groups_key_and_value_projections(hello):
    model, _ = hello
    same = mean_pool_kv_heads(model, 4)  # groups of one: nothing changes
    tokens = torch.tensor([[1, 2, 3, 4, 5]])
    with torch.inference_mode():
        torch.testing.assert_close(same(tokens), model(tokens))
    pooled = mean_pool_kv_heads(model, 2)
    assert pooled.config.n_kv_head == 2 and pooled.n_params == 193_216  # qkv loses 2 · 32 · (64 + 1) parameters
    w, new = model.blocks[1].attn.qkv.weight, pooled.blocks[1].attn.qkv.weight  # rows: q (64), k (64), v (64)
    torch.testing.assert_close(new[64:80], (w[64:80] + w[80:96]) / 2)  # K head 0 = mean of heads 0 and 1
    torch.testing.assert_close(new[96 + 16:96 + 32], (w[128 + 32:128 + 48] + w[128 + 48:128 + 64]) / 2)  # V head 1
    torch.testing.assert_close(new[:64], w[:64])  # queries untouched


def test_mean_pool_bad_input(hello):
    model, _ = hello
    for bad in (3, 0):  # a K/V head must serve a whole group of query heads: a divisor of n_head = 4
        with pytest.raises(ValueError, match=r"n_kv_head must .*(one of 1, 2, 4|>= 1)"):
            mean_pool_kv_heads(model, bad)
    with pytest.raises(TypeError, match="n_kv_head must be an int"):
        mean_pool_kv_heads(model, True)
    with pytest.raises(ValueError, match="must be multi-head"):
        mean_pool_kv_heads(mean_pool_kv_heads(model, 2), 1)
    with pytest.raises(TypeError, match="kvlab.TinyGPT"):
        mean_pool_kv_heads("model", 2)


@pytest.mark.parametrize(("device", "error", "message"), [
    ("gpu", ValueError, "device must be a torch.device or a device string such as 'cpu', 'cuda', 'cuda:0' or 'mps', "
                        "got 'gpu'"),
    ("", ValueError, "got ''"),
    ("cuda:99", ValueError, "device 'cuda:99' is not available on this machine"),  # no machine has 100 GPUs
    (None, TypeError, "got None (NoneType)"),
    (0, TypeError, "got 0 (int)"),
    (torch.device, TypeError, "got <class 'torch.device'>"),
])
def test_loaders_name_a_device_torch_cannot_use(device, error, message):
    """`load_hello_model("gpu")` raised a storage error from deep inside torch.load."""
    for load in (kvlab.load_hello_model, lambda device: load_kv_head_model(2, device)):
        with pytest.raises(error, match=re.escape(message)):
            load(device)


def test_loaders_take_what_torch_accepts_for_this_machine():
    for device in ("cpu", "cpu:0", torch.device("cpu")):
        model, _ = kvlab.load_hello_model(device)
        assert model.wte.weight.device == torch.device("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match=re.escape("device 'cuda' is not available on this machine")):
            kvlab.load_hello_model("cuda")


def test_load_model_names_a_path_that_is_not_one():
    with pytest.raises(TypeError, match=re.escape("path must be a file path (str or pathlib.Path), got None")):
        load_model(None)
