"""The KV-cache memory arithmetic against numbers worked out by hand.

memory.py is loaded from its folder without the package __init__ (which imports torch), so these tests need
neither torch nor numpy: the module, with the checks module it uses, promises to stand alone, and this checks it.
"""

from __future__ import annotations

import importlib
import math
import re
import subprocess
import sys
import types
from fractions import Fraction
from pathlib import Path

import pytest
from hypothesis import given, settings
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


_GPT2 = memory.get_preset("gpt2-small")


sizes = st.integers(min_value=1, max_value=4096)


counts = st.integers(min_value=0, max_value=10_000)


widths = st.sampled_from(sorted(set(memory.DTYPE_BYTES.values())))


_P = memory.get_preset("llama2-7b")


_OK = dict(n_layer=32, d_model=4096, n_head=32, n_kv_head=8, batch_size=1, seq_len=1, gpu_gib=80, n_params=7)


# --- chapter 06: kv cache memory -------------------------------------------------------------------------------------


def test_tokens_to_outgrow_weights_on_exact_multiples():
    p = memory.get_preset("llama2-7b")  # 524,288 bytes per token
    assert memory.tokens_to_outgrow_weights(p, weight_bytes=0) == 1  # any token beats no weights
    assert memory.tokens_to_outgrow_weights(p, weight_bytes=524_288 * 3) == 4  # 3 tokens only *equal* them
    assert memory.tokens_to_outgrow_weights(p, weight_bytes=524_288 * 3 - 1) == 3
    # int4 cache beside int4 weights: both shrink 4x, so the crossing stays (up to rounding of the weights)
    assert memory.tokens_to_outgrow_weights(p, 0.5) == memory.tokens_to_outgrow_weights(p, 2) == 25_706
    assert 25_705 * 524_288 < 13_476_831_232 < 25_706 * 524_288


@settings(max_examples=60, deadline=None)
@given(preset_id=st.sampled_from(sorted(memory.MODEL_PRESETS)), batch=st.integers(1, 64),
       seq_len=st.integers(1, 40_000), dtype=st.sampled_from(sorted(memory.DTYPE_BYTES)),
       gpu_gib=st.sampled_from([16, 24, 40, 80, 141]))  # the calculator's GPU sizes
def test_report_limits_are_the_largest_that_fit(preset_id, batch, seq_len, dtype, gpu_gib):
    p = memory.get_preset(preset_id)
    r = memory.preset_report(p, batch, seq_len, dtype, gpu_gib=gpu_gib)
    width = memory.bytes_per_element(dtype)

    def fits(b, t):
        return r.weight_bytes + p.kv_cache_bytes(b, t, width) <= r.gpu_bytes

    assert r.cache_fits == fits(batch, seq_len)
    assert r.weights_fit == (r.weight_bytes <= gpu_gib * memory.GIB)
    assert r.max_tokens == memory.max_tokens_that_fit(p, r.gpu_bytes, width)
    if r.weights_fit:
        if r.max_seq_len == math.inf:  # a sliding window caps every sequence's cache, and batch windows fit
            assert p.sliding_window is not None and fits(batch, 10**12)
        else:
            assert fits(batch, r.max_seq_len) and not fits(batch, r.max_seq_len + 1)
        assert fits(r.max_batch_size, seq_len) and not fits(r.max_batch_size + 1, seq_len)
        assert r.free_bytes + r.weight_bytes == r.gpu_bytes
        assert math.isclose(r.cache_share_of_free, r.cache_bytes / r.free_bytes)
    else:
        assert r.max_tokens == r.free_bytes == 0 and r.cache_share_of_free == math.inf


def test_report_with_zero_batch_or_length():
    r = memory.preset_report("llama2-7b", 0, 0, gpu_gib=80)
    assert r.cache_bytes == 0 and r.cache_fits and r.cache_share_of_free == 0
    assert r.max_seq_len is None and r.max_batch_size is None
    assert r.max_tokens == 138_134  # see tests/test_memory.py
    assert "at batch" not in memory.format_report(r)


def test_report_weight_dtype_defaults_to_the_cache_dtype():
    assert memory.preset_report("llama2-7b", 1, 1, "int8", gpu_gib=16).weight_bytes == 6_738_415_616
    r = memory.preset_report("llama2-7b", 1, 1, "int4", gpu_gib=16, weight_dtype="fp16")
    assert r.weight_bytes == 2 * 6_738_415_616 and r.bytes_per_token == 524_288 // 4


def test_report_gpu_gib_is_exact():
    assert memory.memory_report(1, 8, None, None, 1, 1, gpu_gib=141, n_params=0).gpu_bytes == 141 * 2**30
    assert memory.memory_report(1, 8, None, None, 1, 1, gpu_gib=0.5, n_params=0).gpu_bytes == 2**29
    assert memory.memory_report(1, 8, None, None, 1, 1, gpu_gib=10**400, n_params=0).gpu_bytes == 10**400 * 2**30


def test_format_report_text():
    text = memory.format_report(memory.preset_report("gpt3-175b", 16, 1024, gpu_gib=80))
    assert text.splitlines()[:3] == [
        "GPT-3 175B (n_layer=96, d_model=12288, n_head=96, n_kv_head=96), batch 16, seq_len 1024, fp16",
        "KV cache: 77,309,411,328 bytes = 72.0 GiB (77.3 GB)",
        "per token: 4,718,592 bytes = 4.5 MiB (4.7 MB)",
    ]
    # 350e9 / (80 · 2**30) = 4.07: the weights alone take 407% of an 80 GiB GPU
    assert text.splitlines()[-1] == ("does not fit: the weights alone need 407% of the GPU, "
                                     "so no room is left for a KV cache")
    assert memory.bytes_line(0) == "0 bytes = 0 B"


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda: memory.memory_report(**{**_OK, "gpu_gib": 0}), ValueError, "gpu_gib"),
        (lambda: memory.memory_report(**{**_OK, "gpu_gib": float("nan")}), ValueError, "got nan"),
        (lambda: memory.memory_report(**{**_OK, "gpu_gib": "80"}), TypeError, "gpu_gib"),
        (lambda: memory.memory_report(**{**_OK, "n_params": -1}), ValueError, "n_params"),
        (lambda: memory.memory_report(**{**_OK, "n_params": 7.0}), TypeError, "n_params"),
        (lambda: memory.memory_report(**_OK, dtype="fp8"), ValueError, "dtype"),
        (lambda: memory.memory_report(**_OK, weight_dtype="int2"), ValueError, "weight_dtype"),
        (lambda: memory.memory_report(**{**_OK, "n_kv_head": 3}), ValueError, "n_head=32, n_kv_head=3"),
        (lambda: memory.memory_report(**{**_OK, "seq_len": -1}), ValueError, "seq_len"),
        (lambda: memory.memory_report(**_OK, name=3), TypeError, "name"),
        (lambda: memory.preset_report("gpt5", 1, 1, gpu_gib=80), ValueError, "preset"),
        (lambda: memory.preset_report(7, 1, 1, gpu_gib=80), TypeError, "preset"),
        (lambda: memory.format_report("report"), TypeError, "report"),
        (lambda: memory.tokens_to_outgrow_weights("llama2-7b"), TypeError, "preset"),
        (lambda: memory.tokens_to_outgrow_weights(_P, weight_bytes=-1), ValueError, "weight_bytes"),
        (lambda: memory.tokens_to_outgrow_weights(_P, 0), ValueError, "bytes_per_elem"),
    ],
)
def test_report_and_preset_bad_input_raises_with_the_value(call, error, message):
    with pytest.raises(error, match=re.escape(message)):
        call()


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


# --- chapter 08: compressing the cache -------------------------------------------------------------------------------


def test_quantized_bytes_for_llama2_7b():
    # 4,096 tokens, groups of 32, window of 128: n_q = 32·⌊3,968 / 32⌋ = 3,968, n_r = 128. Per layer and head, int8:
    # codes 2·3,968·128 = 1,015,808; floats 2·124·128 + 2·3,968 + 2·128·128 = 72,448 -> 144,896 bytes in fp16
    assert memory.quantized_kv_cache_bytes(32, 1, 4096, 32, 128, 8, group_size=32, residual_length=128) == \
        32 * 32 * (1_015_808 + 144_896) == 1_188_560_896
    # int4: codes 507,904
    assert memory.quantized_kv_cache_bytes(32, 1, 4096, 32, 128, 4, group_size=32, residual_length=128) == \
        32 * 32 * (507_904 + 144_896) == 668_467_200
    # int2 (KIVI's own width): codes 253,952
    assert memory.quantized_kv_cache_bytes(32, 1, 4096, 32, 128, 2, group_size=32, residual_length=128) == \
        32 * 32 * (253_952 + 144_896) == 408_420_352
    assert memory.quantized_kv_cache_bytes(32, 1, 0, 32, 128, 4, group_size=32, residual_length=128) == 0


def test_mla_bytes_for_deepseek_v2():
    ds = memory.DEEPSEEK_V2
    assert ds.kv_cache_bytes(1, 1) == 60 * (512 + 64) * 2 == 69_120
    assert ds.mha_kv_cache_bytes(1, 1) == 2 * 60 * 128 * 128 * 2 == 3_932_160
    assert round(ds.mha_kv_cache_bytes(1, 1) / ds.kv_cache_bytes(1, 1), 1) == 56.9
    assert ds.kv_cache_bytes(1, 128 * 1024) == 69_120 * 131_072 == int(8.4375 * 2**30)
    assert memory.mla_kv_cache_bytes(2, 3, 5, 7, 0, 4) == 2 * 3 * 5 * 7 * 4


@pytest.mark.parametrize(("call", "error", "message"), [
    (lambda: memory.quantized_kv_cache_bytes(1, 1, 4, 1, 16, 3, group_size=4, residual_length=0), ValueError,
     "bits"),
    (lambda: memory.quantized_kv_cache_bytes(1, 1, 4, 1, 18, 2, group_size=4, residual_length=0), ValueError,
     "multiple of 4, got 18"),
    (lambda: memory.quantized_kv_cache_bytes(1, 1, 4, 1, 15, 4, group_size=4, residual_length=0), ValueError,
     "head_dim"),
    (lambda: memory.quantized_kv_cache_bytes(1, 1, 4, 1, 16, 8, group_size=0, residual_length=0), ValueError,
     "group_size"),
    (lambda: memory.quantized_kv_cache_bytes(1, 1, -1, 1, 16, 8, group_size=4, residual_length=0), ValueError,
     "seq_len"),
    (lambda: memory.quantized_kv_cache_bytes(1, 1, 4, 1, 16, 8, group_size=4, residual_length=0, float_bytes=0),
     ValueError, "float_bytes"),
    (lambda: memory.mla_kv_cache_bytes(0, 1, 1, 512, 64), ValueError, "n_layer"),
    (lambda: memory.mla_kv_cache_bytes(1, 1, 1, 512.0, 64), TypeError, "kv_lora_rank"),
])
def test_memory_bad_input(call, error, message):
    with pytest.raises(error, match=re.escape(message)):
        call()


# --- chapter 10: serving many requests -------------------------------------------------------------------------------


def test_reserved_tokens_by_hand():
    assert memory.contiguous_reserved_tokens([3, 10, 1], 16) == 48
    assert memory.paged_reserved_tokens([3, 10, 1], 4) == (1 + 3 + 1) * 4
    assert memory.paged_reserved_tokens([3, 10, 1], 1) == 14  # block size 1: nothing wasted
    # prefix of 6 in blocks of 4: 2 prefix blocks; each sequence owns ceil(L/4) - 1 from block 1 on
    assert memory.paged_reserved_tokens([6, 9, 13], 4, shared_prefix=6) == (2 + 0 + 2 + 3) * 4
    assert memory.paged_reserved_tokens([8, 9], 4, shared_prefix=8) == (2 + 0 + 1) * 4  # whole blocks: no copy
    assert memory.blocks_needed(0, 4) == 0


@settings(max_examples=25, deadline=None, derandomize=True)
@given(lengths=st.lists(st.integers(0, 40), max_size=6), block_size=st.integers(1, 16))
def test_paged_waste_is_less_than_one_block_per_sequence(lengths, block_size):
    waste = memory.paged_reserved_tokens(lengths, block_size) - sum(lengths)
    assert 0 <= waste <= len(lengths) * (block_size - 1)
    assert memory.paged_reserved_tokens(lengths, 40) == memory.contiguous_reserved_tokens(
        [n for n in lengths if n], 40)  # one block of max_len per (non-empty) request is contiguous allocation


@pytest.mark.parametrize("call, error, message", [
    (lambda: memory.blocks_needed(5, 0), ValueError, "block_size"),
    (lambda: memory.paged_reserved_tokens([3], 0), ValueError, "block_size"),
    (lambda: memory.paged_reserved_tokens([3, -1], 4), ValueError, "each length"),
    (lambda: memory.paged_reserved_tokens("abc", 4), TypeError, "lengths"),
    (lambda: memory.paged_reserved_tokens([3, 9], 4, shared_prefix=5), ValueError,
     "every sequence must be at least shared_prefix=5 tokens long, got one of 3"),
    (lambda: memory.contiguous_reserved_tokens([3, 20], 16), ValueError,
     "a sequence of 20 tokens does not fit max_len=16"),
    (lambda: memory.contiguous_reserved_tokens([3], 0), ValueError, "max_len"),
])
def test_waste_arithmetic_bad_input(call, error, message):
    with pytest.raises(error, match=message):
        call()


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(n_head=8, n_kv_head=8, tp=3), ValueError, "tp=3 does not divide n_kv_head=8"),
    (dict(n_head=8, tp=16), ValueError, "tp=16 does not divide n_kv_head=8"),
    (dict(n_head=8, tp=0), ValueError, "tp"),
    (dict(n_head=8, tp=2.0), TypeError, "tp"),
])
def test_bytes_per_device_bad_input(kwargs, error, message):
    with pytest.raises(error, match=message):
        memory.kv_cache_bytes_per_device(2, 1, 10, 64, 2, **kwargs)


def test_format_bytes_takes_an_int_of_any_size():
    """10**400 bytes: the largest unit, in exact integer arithmetic (float() of it raised OverflowError)."""
    huge = 10**400
    binary, decimal = memory.format_bytes(huge).split(" (")
    assert binary == f"{round(Fraction(huge, 1024**5) * 10) // 10}.{round(Fraction(huge, 1024**5) * 10) % 10} PiB"
    assert decimal == "1" + "0" * 385 + ".0 PB)"
    assert memory.bytes_line(huge).startswith("10,000,000,") and memory.bytes_line(huge).endswith(" PB)")
    with pytest.raises(TypeError, match=re.escape("n_bytes must be an int >= 0, got True (bool)")):
        memory.format_bytes(True)
    with pytest.raises(TypeError, match="n_bytes"):
        memory.format_bytes("1024")
    with pytest.raises(ValueError, match=re.escape("n_bytes must be an int >= 0, got -" + "9" * 400)):
        memory.format_bytes(-int("9" * 400))


def test_a_report_of_huge_counts_prints_exact_percentages():
    """`kvlab memory --seq-len <400 digits>` and a model of 10**400 parameters: a report, never an OverflowError."""
    long = memory.preset_report("llama2-7b", 1, 10**400, gpu_gib=80)
    assert long.cache_share_of_free == math.inf  # beyond float range: the float answer is inf
    text = memory.format_report(long)
    assert "does NOT fit: this cache takes " in text
    share = text.split("this cache takes ")[1].split("%")[0].replace(",", "")
    assert Fraction(share) == round(Fraction(long.cache_bytes * 100, long.free_bytes), 1)
    heavy = memory.memory_report(32, 4096, 32, 32, 1, 1, gpu_gib=80, n_params=10**400)
    need = memory.format_report(heavy).split("the weights alone need ")[1].split("%")[0].replace(",", "")
    assert int(need) == round(Fraction(heavy.weight_bytes * 100, heavy.gpu_bytes))
    small = memory.preset_report("llama2-7b", 16, 4096, gpu_gib=80)  # ordinary sizes: the same text as before
    assert f"this cache takes {small.cache_share_of_free:,.1%} of what" in memory.format_report(small)


def test_mistral_7bs_rolling_cache_stops_growing_at_its_window():
    """Mistral 7B v0.1 attends to its last 4,096 tokens: one sequence's fp16 cache is bounded at 512 MiB."""
    mistral = memory.get_preset("mistral-7b")
    window_bytes = 2 * 32 * 4096 * 8 * 128 * 2  # K and V, layers, window, K/V heads, head_dim, fp16
    assert window_bytes == 512 * 2**20
    assert mistral.kv_cache_bytes(1, 32768) == mistral.kv_cache_bytes(1, 4096) == window_bytes
    assert mistral.kv_cache_bytes(1, 100) == window_bytes * 100 // 4096  # below the window it grows as usual
    report = memory.preset_report(mistral, 8, 32768, gpu_gib=24)
    assert report.cache_bytes == 8 * window_bytes and report.max_seq_len == math.inf
    assert report.max_batch_size == report.max_tokens // 4096
    assert "sliding window 4,096" in memory.format_report(report)
    assert memory.get_preset("llama2-7b").kv_cache_bytes(1, 32768) == 32768 * 512 * 1024  # no window: no cap
