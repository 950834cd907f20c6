"""Shared fixtures. Everything is seeded: a failing example reproduces."""

import pytest
import torch

import kvlab


@pytest.fixture(scope="session")
def hello():
    """The shipped hello model and its tokenizer (loaded once: tests only read it)."""
    return kvlab.load_hello_model()


def random_model(seed: int = 0, **sizes) -> kvlab.TinyGPT:
    """A randomly initialised TinyGPT in eval mode; `sizes` override a small default config."""
    torch.manual_seed(seed)
    config = kvlab.GPTConfig(**{**dict(vocab_size=37, n_layer=2, n_head=4, d_model=32, max_seq_len=64), **sizes})
    return kvlab.TinyGPT(config).eval()
