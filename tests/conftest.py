"""Shared fixtures. Everything is seeded: a failing example reproduces."""

import matplotlib

matplotlib.use("Agg")  # tests draw figures but never show them

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

import kvlab  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures():
    """Close every figure a test drew: pyplot keeps them open, and each holds memory until closed."""
    yield
    plt.close("all")


@pytest.fixture(scope="session")
def hello():
    """The shipped hello model and its tokenizer (loaded once: tests only read it)."""
    return kvlab.load_hello_model()
