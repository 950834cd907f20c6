"""Shared fixtures. Everything is seeded: a failing example reproduces."""

import matplotlib

matplotlib.use("Agg")  # tests draw figures but never show them

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

import kvlab  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures():
    """Close every figure a test drew: pyplot keeps them open, and each holds memory until closed."""
    yield
    plt.close("all")


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module, restored after: decode steps are many small operations, and on a shared 2-core
    machine two threads wait on each other (a hundred hello-model steps went from 1 s to 30 s)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def hello():
    """The shipped hello model and its tokenizer (loaded once: tests only read it)."""
    return kvlab.load_hello_model()


@pytest.fixture(scope="module")
def held_out(hello):
    """Chapters 08 and 09's text (8 × 128 held-out tokens) and the full cache's run over it, once per module."""
    from kvlab import quality

    model, tokenizer = hello
    tokens = quality.held_out_tokens(tokenizer, n_sequences=8, seq_len=128)
    return tokens, quality.decode_token_by_token(model, tokens, kvlab.DynamicCache())


@pytest.fixture(scope="session")
def counted_steps():
    """Every forward of chapter 04's two 512-token generations, counted by FlopCounterMode (the slow part, once)."""
    from kvlab import measure
    from tests.helpers import T_MAX, chapter_config

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = kvlab.TinyGPT(chapter_config()).eval()
    return {use_cache: measure.count_generation_flops(model, 1, T_MAX, use_cache=use_cache)
            for use_cache in (True, False)}


@pytest.fixture(scope="module")
def smol():
    """SmolLM2 and its tokenizer (`kvlab.load_smollm2`), loaded once per test module; skipped without the weights."""
    smollm2 = pytest.importorskip("kvlab.smollm2")
    try:
        smollm2.gguf_path()
    except ModuleNotFoundError:
        pytest.skip(f"SmolLM2's weights are not installed: {smollm2.INSTALL_COMMAND}")
    return smollm2.load_smollm2()
