"""The KV-cache memory arithmetic against numbers worked out by hand.

memory.py is loaded from its folder without the package __init__ (which imports torch), so these tests need
neither torch nor numpy: the module, with the checks module it uses, promises to stand alone, and this checks it.
"""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

MEMORY_PY = Path(__file__).resolve().parents[1] / "kvlab" / "memory.py"


def _load_memory_module(package: str = "_kvlab_alone"):
    """Import kvlab/memory.py (and kvlab/checks.py, which it uses) as modules of a bare package named `package`.

    The package's __init__ never runs, and its private name cannot shadow `kvlab.memory`.
    """
    bare = types.ModuleType(package)
    bare.__path__ = [str(MEMORY_PY.parent)]  # submodules are found in kvlab/, `from .checks import` resolves there
    sys.modules[package] = bare
    return importlib.import_module(f"{package}.memory")


memory = _load_memory_module()
kv_cache_bytes = memory.kv_cache_bytes


# --- the seed's worked examples, as literals ------------------------------------------------


def test_gpt3_175b_batch16_seq1024_fp16_is_72_gib():
    expected = 77_309_411_328
    assert expected == 2 * 96 * 16 * 1024 * 12288 * 2  # K and V · layers · batch · seq · d_model · fp16
    assert expected == 72 * memory.GIB
    assert kv_cache_bytes(96, 16, 1024, 12288, memory.bytes_per_element("fp16")) == expected
    assert memory.get_preset("gpt3-175b").kv_cache_bytes(16, 1024) == expected
    assert memory.format_bytes(expected) == "72.0 GiB (77.3 GB)"


@pytest.mark.parametrize(
    ("preset_id", "expected"),
    [
        ("llama2-7b", 524_288),  # 2 · 32 · 4096 · 2: half a MiB per token
        ("llama2-70b", 327_680),  # 2 · 80 · (8 · 128) · 2: GQA keeps 70B below 7B
        ("mistral-7b", 131_072),  # 2 · 32 · (8 · 128) · 2
        ("llama3-8b", 131_072),  # same attention shape as Mistral 7B
        ("gpt2-small", 36_864),  # 2 · 12 · 768 · 2
    ],
)
def test_per_token_fp16_bytes(preset_id, expected):
    assert memory.kv_bytes_per_token(memory.get_preset(preset_id)) == expected


def test_llama2_7b_per_token_is_half_a_mib():
    per_token = memory.kv_bytes_per_token(memory.get_preset("llama2-7b"), 2)
    assert per_token * 2 == 1024**2
    assert memory.format_bytes(per_token) == "512.0 KiB (524.3 kB)"


def test_llama2_7b_weights_and_tokens_on_an_80_gib_gpu():
    preset = memory.get_preset("llama2-7b")
    assert preset.weight_bytes() == 13_476_831_232  # 6_738_415_616 params · 2 bytes
    # (80 · 2**30 − 13_476_831_232) // 524_288 = 72_422_514_688 // 524_288 = 138_134
    assert memory.max_tokens_that_fit(preset, 80 * memory.GIB) == 138_134


def test_max_tokens_that_fit_edges():
    preset = memory.get_preset("llama2-7b")
    assert memory.max_tokens_that_fit(preset, 10 * memory.GB) == 0  # 13.5 GB of weights do not fit
    assert memory.max_tokens_that_fit(preset, 524_288 * 5 + 7, weight_bytes=0) == 5
    assert memory.max_tokens_that_fit(preset, 524_288 * 5, weight_bytes=524_288) == 4


# --- GQA, MQA and dtypes ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("preset_id", "group"),
    [("llama2-70b", 8), ("llama3-70b", 8), ("llama3-8b", 4), ("mistral-7b", 4)],  # n_head / n_kv_head
)
def test_gqa_shrinks_cache_by_exactly_n_head_over_n_kv_head(preset_id, group):
    p = memory.get_preset(preset_id)
    assert p.n_head // p.n_kv_head == group
    mha = kv_cache_bytes(p.n_layer, 3, 100, p.d_model, n_head=p.n_head)
    gqa = p.kv_cache_bytes(3, 100)
    assert mha == group * gqa


def test_only_the_gqa_presets_have_fewer_kv_heads():
    gqa = {k for k, p in memory.MODEL_PRESETS.items() if p.n_kv_head < p.n_head}
    assert gqa == {"llama2-70b", "llama3-70b", "llama3-8b", "mistral-7b"}


def test_mqa_keeps_one_head_of_keys_and_values():
    # 2 · 32 layers · 1 head · 128 head_dim · 2 bytes
    assert kv_cache_bytes(32, 1, 1, 4096, 2, n_head=32, n_kv_head=1) == 16_384
    assert kv_cache_bytes(32, 1, 1, 4096, 2, n_head=32) == 32 * 16_384


def test_n_kv_head_equal_n_head_is_plain_multi_head():
    assert kv_cache_bytes(12, 2, 10, 768, n_head=12, n_kv_head=12) == kv_cache_bytes(12, 2, 10, 768)


def test_dtype_widths():
    bpe = memory.bytes_per_element
    args = (32, 4, 1000, 4096)
    assert kv_cache_bytes(*args, bpe("int4")) * 2 == kv_cache_bytes(*args, bpe("int8"))
    assert kv_cache_bytes(*args, bpe("fp32")) == 2 * kv_cache_bytes(*args, bpe("fp16"))
    assert kv_cache_bytes(*args, bpe("bf16")) == kv_cache_bytes(*args, bpe("fp16"))
    assert memory.DTYPE_BYTES == {"fp32": 4, "fp16": 2, "bf16": 2, "int8": 1, "int4": 0.5}


def test_int4_result_is_an_exact_int():
    assert kv_cache_bytes(1, 1, 1, 1, 0.5) == 1  # one K and one V half-byte share one byte
    huge = kv_cache_bytes(95, 1_000_003, 1_000_033, 12289, 0.5)  # odd and > 2**53: floats would round it
    assert type(huge) is int
    assert huge == 95 * 1_000_003 * 1_000_033 * 12289


def test_zero_batch_or_seq_len_is_zero_bytes():
    assert kv_cache_bytes(12, 0, 1024, 768) == 0
    assert kv_cache_bytes(12, 8, 0, 768) == 0


# --- presets ----------------------------------------------------------------------------------


@pytest.mark.parametrize("preset_id", list(memory.MODEL_PRESETS))
def test_preset_shapes_are_consistent(preset_id):
    p = memory.MODEL_PRESETS[preset_id]
    for field in ("n_layer", "d_model", "n_head", "n_kv_head", "vocab_size", "max_seq_len", "n_params"):
        value = getattr(p, field)
        assert isinstance(value, int) and not isinstance(value, bool) and value > 0, (field, value)
    assert p.d_model % p.n_head == 0
    assert p.n_head % p.n_kv_head == 0
    assert p.head_dim * p.n_head == p.d_model
    assert preset_id == preset_id.lower() and p.name and p.source
    assert memory.get_preset(preset_id) is p


def test_preset_is_frozen():
    with pytest.raises(AttributeError):
        memory.get_preset("gpt2-small").n_layer = 1


def test_weight_bytes_per_dtype():
    p = memory.get_preset("gpt2-small")
    assert p.weight_bytes(4) == 4 * 124_439_808
    assert p.weight_bytes(0.5) == 62_219_904


# --- format_bytes -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n_bytes", "text"),
    [
        (0, "0 B"),
        (1023, "1023 B"),
        (1024, "1.0 KiB (1.0 kB)"),
        (1024**2 - 1, "1.0 MiB (1.0 MB)"),  # never '1024.0 KiB'
        (10**9, "953.7 MiB (1.0 GB)"),
        (2 * 1024**4, "2.0 TiB (2.2 TB)"),
    ],
)
def test_format_bytes(n_bytes, text):
    assert memory.format_bytes(n_bytes) == text


# --- bad input names the value ----------------------------------------------------------------

_GPT2 = memory.get_preset("gpt2-small")


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda: kv_cache_bytes(12, 1, -3, 768), ValueError, "seq_len"),
        (lambda: kv_cache_bytes(12, -1, 3, 768), ValueError, "batch_size"),
        (lambda: kv_cache_bytes(0, 1, 3, 768), ValueError, "n_layer"),
        (lambda: kv_cache_bytes(2.5, 1, 3, 768), TypeError, "n_layer"),
        (lambda: kv_cache_bytes("12", 1, 3, 768), TypeError, "n_layer"),
        (lambda: kv_cache_bytes(True, 1, 3, 768), TypeError, "n_layer"),
        (lambda: kv_cache_bytes(12, 1, 3, 768, 0), ValueError, "bytes_per_elem"),
        (lambda: kv_cache_bytes(12, 1, 3, 768, "fp16"), TypeError, "bytes_per_elem"),
        (lambda: kv_cache_bytes(12, 1, 3, 768, n_head=7), ValueError, "hidden_size=768, n_head=7"),
        (lambda: kv_cache_bytes(32, 1, 3, 4096, n_head=32, n_kv_head=3), ValueError, "n_head=32, n_kv_head=3"),
        (lambda: kv_cache_bytes(32, 1, 3, 4096, n_head=32, n_kv_head=0), ValueError, "n_kv_head"),
        (lambda: kv_cache_bytes(32, 1, 3, 4096, n_kv_head=8), ValueError, "n_kv_head=8 needs n_head"),
        (lambda: memory.bytes_per_element("fp8"), ValueError, "dtype"),
        (lambda: memory.get_preset("gpt5"), ValueError, "preset"),
        (lambda: memory.format_bytes(-1), ValueError, "n_bytes"),
        (lambda: memory.max_tokens_that_fit(_GPT2, -5), ValueError, "memory_bytes"),
    ],
)
def test_bad_input_raises_with_the_value(call, error, message):
    with pytest.raises(error, match=re.escape(message)):
        call()


# --- properties -------------------------------------------------------------------------------

sizes = st.integers(min_value=1, max_value=4096)
counts = st.integers(min_value=0, max_value=10_000)
widths = st.sampled_from(sorted(set(memory.DTYPE_BYTES.values())))


@given(n_layer=sizes, batch=counts, seq_len=counts, hidden=sizes, bpe=widths)
def test_linear_in_batch_and_seq_len(n_layer, batch, seq_len, hidden, bpe):
    f = kv_cache_bytes
    assert f(n_layer, 2 * batch, seq_len, hidden, bpe) == 2 * f(n_layer, batch, seq_len, hidden, bpe)
    assert f(n_layer, batch, 2 * seq_len, hidden, bpe) == 2 * f(n_layer, batch, seq_len, hidden, bpe)
    assert f(n_layer, batch, seq_len + 1, hidden, bpe) - f(n_layer, batch, seq_len, hidden, bpe) == f(
        n_layer, batch, 1, hidden, bpe
    )


@given(head_dim=st.integers(1, 256), n_kv_head=st.integers(1, 16), group=st.integers(1, 16), batch=counts)
def test_gqa_ratio_property(head_dim, n_kv_head, group, batch):
    n_head = n_kv_head * group
    d_model = n_head * head_dim
    mha = kv_cache_bytes(4, batch, 7, d_model, n_head=n_head)
    gqa = kv_cache_bytes(4, batch, 7, d_model, n_head=n_head, n_kv_head=n_kv_head)
    assert mha == group * gqa


# --- the module stays pure Python -------------------------------------------------------------


def test_memory_module_imports_neither_torch_nor_numpy():
    script = (
        "import importlib, sys, types\n"
        "bare = types.ModuleType('kvlab_alone')\n"
        f"bare.__path__ = [{str(MEMORY_PY.parent)!r}]\n"
        "sys.modules['kvlab_alone'] = bare\n"
        "module = importlib.import_module('kvlab_alone.memory')\n"
        "assert module.kv_bytes_per_token(module.get_preset('llama2-7b')) == 524288\n"
        "module.kv_cache_bytes(1, 1, 1, 8, 2)\n"
        "leaked = sorted({'torch', 'numpy'} & set(sys.modules))\n"
        "assert not leaked, leaked\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


# --- bad input found by an audit ---

def test_preset_functions_name_a_preset_id_passed_by_mistake():
    for call in (lambda: memory.max_tokens_that_fit("llama2-7b", 80 * 2**30),
                 lambda: memory.kv_bytes_per_token("llama2-7b")):
        with pytest.raises(TypeError, match="preset"):
            call()


def test_a_gpu_smaller_than_a_byte_and_infinite_bytes_are_errors():
    with pytest.raises(ValueError, match="gpu_gib"):
        memory.preset_report("llama2-7b", 1, 4096, gpu_gib=1e-10)
    with pytest.raises(ValueError, match="n_bytes"):
        memory.format_bytes(float("inf"))


def test_quantized_bits_must_be_an_int():
    with pytest.raises(TypeError, match="bits"):
        memory.quantized_kv_cache_bytes(1, 1, 100, 1, 64, 4.0, group_size=32, residual_length=32)
    assert isinstance(memory.quantized_kv_cache_bytes(1, 1, 100, 1, 64, 4, group_size=32, residual_length=32), int)
