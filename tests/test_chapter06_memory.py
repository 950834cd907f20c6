"""Chapter 06 (KV-cache memory): its numeric claims, the formula against real tensors, the calculator, the CLI.

Numbers are worked out by hand from the published architectures (in the comments), never copied from a run.
tests/test_memory.py already checks kv_cache_bytes itself (72 GiB for GPT-3, 512 KiB and 320 KiB per token for
Llama 2 7B and 70B, ...); this file checks what chapter 06 adds on top and that the notebook prints its claims.
"""

from __future__ import annotations

import contextlib
import io
import math
import re
from pathlib import Path

import matplotlib
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import kvlab
from kvlab import memory, plots, widgets
from kvlab.cli import main
from kvlab.memory import GIB, kv_cache_bytes
from conftest import assert_printed_above, notebook_cells, printed_text


NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "06_kv_cache_memory.ipynb"
TORCH_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


# --- the chapter's claims, by hand ---------------------------------------------------------------------------------

GPT3_PER_TOKEN = 2 * 96 * 12288 * 2  # K and V · layers · hidden · fp16 = 4,718,592 bytes
GPT3_WEIGHTS = 175_000_000_000 * 2  # fp16


def test_gpt3_cache_is_about_a_fifth_of_its_fp16_weights():
    gpt3 = memory.get_preset("gpt3-175b")
    assert gpt3.weight_bytes(2) == GPT3_WEIGHTS == 350 * 10**9
    ratio = gpt3.kv_cache_bytes(16, 1024) / gpt3.weight_bytes(2)
    assert ratio == 77_309_411_328 / 350e9
    assert round(ratio, 3) == 0.221 and 0.2 < ratio < 0.25  # "about a fifth", and not larger than the weights


def test_gpt3_per_token_is_4_5_mib():
    assert GPT3_PER_TOKEN == 4_718_592 == 4.5 * 2**20
    assert memory.kv_bytes_per_token(memory.get_preset("gpt3-175b")) == GPT3_PER_TOKEN


def test_gpt3_cache_outgrows_the_weights_from_74_175_tokens():
    # 350e9 / 4,718,592 = 74,174.8: 74,174 tokens are still smaller than the weights, 74,175 are larger
    assert 74_174 * GPT3_PER_TOKEN < GPT3_WEIGHTS < 74_175 * GPT3_PER_TOKEN
    gpt3 = memory.get_preset("gpt3-175b")
    assert memory.tokens_to_outgrow_weights(gpt3, 2) == 74_175
    # batch 16: 16 · 4,635 = 74,160 < 74,175 <= 16 · 4,636 -- longer than GPT-3's 2,048-token context
    assert gpt3.kv_cache_bytes(16, 4635) < GPT3_WEIGHTS < gpt3.kv_cache_bytes(16, 4636)
    assert gpt3.max_seq_len == 2048 < 4636
    # full context: 36 · 2,048 = 73,728 < 74,175 <= 37 · 2,048 = 75,776
    assert gpt3.kv_cache_bytes(36, 2048) < GPT3_WEIGHTS < gpt3.kv_cache_bytes(37, 2048)


def test_tokens_to_outgrow_weights_on_exact_multiples():
    p = memory.get_preset("llama2-7b")  # 524,288 bytes per token
    assert memory.tokens_to_outgrow_weights(p, weight_bytes=0) == 1  # any token beats no weights
    assert memory.tokens_to_outgrow_weights(p, weight_bytes=524_288 * 3) == 4  # 3 tokens only *equal* them
    assert memory.tokens_to_outgrow_weights(p, weight_bytes=524_288 * 3 - 1) == 3
    # int4 cache beside int4 weights: both shrink 4x, so the crossing stays (up to rounding of the weights)
    assert memory.tokens_to_outgrow_weights(p, 0.5) == memory.tokens_to_outgrow_weights(p, 2) == 25_706
    assert 25_705 * 524_288 < 13_476_831_232 < 25_706 * 524_288


def test_gqa_claims():
    llama70, mistral, llama7 = (memory.get_preset(k) for k in ("llama2-70b", "mistral-7b", "llama2-7b"))
    as_mha = kv_cache_bytes(80, 1, 1, 8192, 2, n_head=64)
    assert as_mha == 2 * 80 * 8192 * 2 == 2_621_440 == 2560 * 1024
    assert as_mha // memory.kv_bytes_per_token(llama70) == 8 == llama70.n_head // llama70.n_kv_head
    # Mistral 7B has Llama 2 7B's layers and width, but 8 K/V heads of 32
    assert (mistral.n_layer, mistral.d_model, mistral.n_head) == (llama7.n_layer, llama7.d_model, llama7.n_head)
    assert memory.kv_bytes_per_token(llama7) == 4 * memory.kv_bytes_per_token(mistral)
    assert memory.kv_bytes_per_token(llama70) < memory.kv_bytes_per_token(llama7)  # 70B caches less than 7B
    # 2 · 80 · (8 · 128) · 0.5 bytes = 81,920 = 80 KiB; 2,621,440 / 81,920 = 32
    assert memory.kv_bytes_per_token(llama70, 0.5) == 81_920 == 80 * 1024
    assert as_mha // 81_920 == 32


@pytest.mark.parametrize(("dtype", "gib"), [("fp32", 4), ("fp16", 2), ("bf16", 2), ("int8", 1), ("int4", 0.5)])
def test_llama2_7b_one_4096_token_sequence_per_dtype(dtype, gib):
    # 2 · 32 · 4096 · 4096 = 2**30 numbers: exactly 1 GiB per byte of width
    assert 2 * 32 * 4096 * 4096 == GIB
    assert memory.get_preset("llama2-7b").kv_cache_bytes(1, 4096, memory.bytes_per_element(dtype)) == gib * GIB


def test_llama2_7b_on_24_gib():
    r = memory.preset_report("llama2-7b", 16, 4096, gpu_gib=24)
    assert r.gpu_bytes == 25_769_803_776 == 24 * 2**30
    assert r.weight_bytes == 13_476_831_232
    assert r.free_bytes == 25_769_803_776 - 13_476_831_232 == 12_292_972_544
    assert r.max_tokens == 23_446 == 12_292_972_544 // 524_288  # 23,446.6
    assert r.max_seq_len == 1_465 == 23_446 // 16
    assert r.max_batch_size == 5 == 23_446 // 4096
    assert r.cache_bytes == 16 * 4096 * 524_288 == 32 * GIB
    assert not r.cache_fits and r.weights_fit
    assert round(r.cache_share_of_free, 3) == round(32 * GIB / 12_292_972_544, 3) == 2.795


def test_exercise_answers():
    # 1: OPT-13B, batch 8, 2,048 tokens, fp16: 2 · 40 · 8 · 2048 · 5120 · 2 = 13,421,772,800 = 12.5 GiB
    assert memory.get_preset("opt-13b").kv_cache_bytes(8, 2048) == 13_421_772_800 == 12.5 * GIB
    # 2: Llama 2 13B on 80 GiB: (85,899,345,920 − 26,031,728,640) // 819,200 = 73,080 tokens; // 4096 = 17
    assert memory.kv_bytes_per_token(memory.get_preset("llama2-13b")) == 2 * 40 * 5120 * 2 == 819_200
    assert memory.preset_report("llama2-13b", 1, 4096, gpu_gib=80).max_batch_size == 17
    # 3: MHA fp16 -> MQA int4 on Llama 2 7B's shape: 32 heads · 4x narrower = 128
    assert kv_cache_bytes(32, 1, 1, 4096, 2, n_head=32) // kv_cache_bytes(32, 1, 1, 4096, 0.5, n_head=32,
                                                                           n_kv_head=1) == 128


# --- the notebook prints what its prose claims ----------------------------------------------------------------------

# (text in a markdown cell, text or pattern that a code cell *above it* must print); whitespace in the prose is
# compared as single spaces, so a claim may wrap across lines
CLAIMS = [
    ("The cache holds 4 tokens, not 5", "tokens in the cache: 4"),
    ("The cache holds 4 tokens, not 5", "(5 tokens)"),
    ("exactly 72 **GiB**", "72.0 GiB"),
    ("which is 77.3 **GB**", "77.3094 GB"),
    ("a GiB is 7.4% larger", "1 GiB / 1 GB = 1.0737"),
    ("The weights take 350 GB (326 GiB)", "350,000,000,000 bytes = 326.0 GiB (350.0 GB)"),
    ("about a fifth of them (0.221)", "= 0.221"),
    ("From 74,175 cached tokens on", "batch × seq_len = 74,175 tokens"),
    ("sequences of 4,636 tokens", "from seq_len 4,636"),
    ("it takes a batch of 37", "from batch 37"),
    ("Half a MiB per token", "= 0.5 MiB per token"),
    ("holds 2 GiB of cache", "(4,096 tokens): 2.0 GiB"),
    ("than Llama 2 7B (320 against 512 KiB)", re.compile(r"Llama 2 70B +80 +8192 +64 +8 +320 ")),
    ("than Llama 2 7B (320 against 512 KiB)", re.compile(r"Llama 2 7B +32 +4096 +32 +32 +512 ")),
    ("a quarter of Llama 2 7B (128 KiB)", re.compile(r"Mistral 7B +32 +4096 +32 +8 +128 ")),
    ("from 2,560 KiB to 320 KiB per token", "= 2560 KiB: 8× more"),
    ("cut it 4-fold", "= 512 KiB: 4× more"),
    ("MQA goes all the way to 32-fold", "32× less than its MHA"),
    ("stores 80 KiB per token, 32 times less", "80 KiB per token, 32× less than as MHA in fp16"),
    ("leave 11.4 GiB, room for 23,446 cached tokens", "largest batch × seq_len that fits: 23,446 cached tokens"),
    ("sequences of at most 1,465 tokens", "at batch 16: seq_len up to 1,465"),
    ("a batch of at most 5", "at seq_len 4,096: batch up to 5"),
    ("32 GiB of cache alone", "KV cache: 34,359,738,368 bytes = 32.0 GiB"),
]


@pytest.mark.parametrize(("prose", "printed"), CLAIMS)
def test_notebook_prints_each_claim_above_the_prose(prose, printed):
    assert_printed_above(NOTEBOOK, prose, printed)


def test_notebook_prints_the_seed_example_and_the_checks():
    printed = "".join(printed_text(c) for c in notebook_cells(NOTEBOOK) if c["cell_type"] == "code")
    assert f"{2 * 96 * 16 * 1024 * 12288 * 2:,} bytes" in printed  # 77,309,411,328
    assert "format_bytes: 72.0 GiB (77.3 GB)" in printed
    assert "all equal: True" in printed and "False" not in printed.split("all equal")[0]
    assert "same text as the calculator: True" in printed


# --- the formula against real tensors ------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["fp32", "bf16", "fp16"])
def test_hello_model_dynamic_cache_bytes_match_the_formula(hello, dtype):
    model, tokenizer = hello
    typed = kvlab.TinyGPT(model.config)
    typed.load_state_dict(model.state_dict())
    typed = typed.to(TORCH_DTYPES[dtype]).eval()
    cache = kvlab.DynamicCache()
    prompts = torch.cat([tokenizer.encode_batch(w) for w in ("the", "key")])
    kvlab.generate(typed, prompts, max_new_tokens=4, cache=cache)
    assert cache.get_seq_length() == 3 + 4 - 1  # the last new token is never fed back
    c = model.config
    expected = 2 * c.n_layer * 2 * 6 * c.d_model * memory.bytes_per_element(dtype)  # by hand
    assert cache.nbytes == expected == kv_cache_bytes(c.n_layer, 2, 6, c.d_model, memory.bytes_per_element(dtype))
    stacked = torch.stack([torch.stack([k, v]) for k, v in zip(cache.keys, cache.values)])
    assert list(stacked.shape) == [c.n_layer, 2, 2, c.n_head, 6, c.head_dim]
    assert stacked.nbytes == cache.nbytes


@settings(max_examples=25, deadline=None)
@given(n_layer=st.integers(1, 3), n_kv_head=st.integers(1, 4), group=st.integers(1, 3), head_dim=st.integers(1, 8),
       batch=st.integers(1, 3), max_len=st.integers(1, 20), dtype=st.sampled_from(sorted(TORCH_DTYPES)))
def test_static_cache_bytes_match_the_formula(n_layer, n_kv_head, group, head_dim, batch, max_len, dtype):
    n_head = n_kv_head * group
    config = kvlab.GPTConfig(vocab_size=11, n_layer=n_layer, n_head=n_head, d_model=n_head * head_dim,
                             n_kv_head=n_kv_head, max_seq_len=64)
    cache = kvlab.StaticCache(config, batch_size=batch, max_cache_len=max_len, dtype=TORCH_DTYPES[dtype])
    width = memory.bytes_per_element(dtype)
    assert cache.nbytes == kv_cache_bytes(n_layer, batch, max_len, config.d_model, width, n_head=n_head,
                                          n_kv_head=n_kv_head)
    assert cache.nbytes == 2 * n_layer * batch * n_kv_head * max_len * head_dim * width


@pytest.mark.parametrize("n_kv_head", [1, 2, 4])
def test_gqa_dynamic_cache_after_generation_matches_the_formula(n_kv_head):
    torch.manual_seed(0)
    config = kvlab.GPTConfig(vocab_size=13, n_layer=2, n_head=4, d_model=32, n_kv_head=n_kv_head, max_seq_len=32)
    model = kvlab.TinyGPT(config).eval()
    cache = kvlab.DynamicCache()
    kvlab.generate(model, torch.zeros(3, 5, dtype=torch.long), max_new_tokens=4, cache=cache)
    assert cache.nbytes == kv_cache_bytes(2, 3, 8, 32, 4, n_head=4, n_kv_head=n_kv_head) == 2 * 2 * 3 * 8 * (
        n_kv_head * 8) * 4


# --- memory_report -------------------------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(preset_id=st.sampled_from(sorted(memory.MODEL_PRESETS)), batch=st.integers(1, 64),
       seq_len=st.integers(1, 40_000), dtype=st.sampled_from(sorted(memory.DTYPE_BYTES)),
       gpu_gib=st.sampled_from(widgets.GPU_MEMORY_GIB))
def test_report_limits_are_the_largest_that_fit(preset_id, batch, seq_len, dtype, gpu_gib):
    p = memory.get_preset(preset_id)
    r = memory.preset_report(p, batch, seq_len, dtype, gpu_gib=gpu_gib)
    width = memory.bytes_per_element(dtype)

    def fits(b, t):
        return r.weight_bytes + p.kv_cache_bytes(b, t, width) <= r.gpu_bytes

    assert r.cache_fits == fits(batch, seq_len)
    assert r.weights_fit == (r.weight_bytes <= gpu_gib * GIB)
    assert r.max_tokens == memory.max_tokens_that_fit(p, r.gpu_bytes, width)
    if r.weights_fit:
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


_P = memory.get_preset("llama2-7b")
_OK = dict(n_layer=32, d_model=4096, n_head=32, n_kv_head=8, batch_size=1, seq_len=1, gpu_gib=80, n_params=7)


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
def test_bad_input_raises_with_the_value(call, error, message):
    with pytest.raises(error, match=re.escape(message)):
        call()


# --- plots ---------------------------------------------------------------------------------------------------------


def test_plot_cache_vs_weights_marks_the_crossings():
    gpt3 = memory.get_preset("gpt3-175b")
    fig = plots.plot_cache_vs_weights(gpt3, (1, 16, 37, 64), title="t")
    ax = fig.axes[0]
    dots = [line for line in ax.lines if line.get_marker() == "o"]
    # only batches 37 and 64 cross the weights within 2,048 tokens: at 74,174.8 / 37 and / 64 tokens
    assert sorted(round(float(d.get_xdata()[0]), 1) for d in dots) == [round(GPT3_WEIGHTS / GPT3_PER_TOKEN / 64, 1),
                                                                        round(GPT3_WEIGHTS / GPT3_PER_TOKEN / 37, 1)]
    assert ax.get_xlim() == (0, 2048) and ax.get_title() == "t"


def test_plot_kv_heads_bars_are_per_token_kib():
    fig = plots.plot_kv_heads(memory.get_preset("llama2-70b"))
    heights = [bar.get_height() for bar in fig.axes[0].patches]
    assert heights == [40, 80, 160, 320, 640, 1280, 2560]  # 2 · 80 · h · 128 · 2 / 1024 for h = 1, 2, 4, ..., 64


def test_plot_memory_report_draws_weights_cache_and_gpu():
    r = memory.preset_report("llama2-7b", 16, 4096, gpu_gib=24)
    ax = plots.plot_memory_report(r).axes[0]
    assert "seq_len 4,096 does not fit in 24 GiB (up to 1,465)" in ax.get_title()
    gpu_line = [line for line in ax.lines if line.get_linestyle() == "--"][0]
    assert gpu_line.get_ydata()[0] == 24
    point = [line for line in ax.lines if line.get_marker() == "o"][0]
    assert point.get_ydata()[0] == (r.weight_bytes + r.cache_bytes) / GIB


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda: plots.plot_cache_vs_weights("gpt3-175b"), TypeError, "preset"),
        (lambda: plots.plot_cache_vs_weights(_P, (1, -2)), ValueError, "batch_size"),
        (lambda: plots.plot_cache_vs_weights(_P, ()), ValueError, "batch_sizes"),
        (lambda: plots.plot_cache_vs_weights(_P, max_seq_len=0), ValueError, "max_seq_len"),
        (lambda: plots.plot_cache_vs_weights(_P, max_seq_len=True), TypeError, "max_seq_len"),
        (lambda: plots.plot_cache_vs_weights(_P, dtype="fp8"), ValueError, "fp8"),
        (lambda: plots.plot_kv_heads(None), TypeError, "preset"),
        (lambda: plots.plot_memory_report({}), TypeError, "report"),
    ],
)
def test_plots_bad_input(call, error, message):
    with pytest.raises(error, match=re.escape(message)):
        call()


# --- the calculator widget -----------------------------------------------------------------------------------------

LLAMA7 = dict(n_layer=32, d_model=4096, n_head=32, n_kv_head=32, n_params_billion=6.738415616)


def test_calculator_ordinary_setting():
    text, fig = widgets.draw_memory_calculator(**LLAMA7, batch_size=16, seq_len=4096, dtype="fp16", gpu_gib=24)
    assert text == memory.format_report(memory.preset_report("llama2-7b", 16, 4096, gpu_gib=24))
    assert text.startswith("Llama 2 7B (")  # recognised as the preset
    assert isinstance(fig, matplotlib.figure.Figure)


@pytest.mark.parametrize("preset_id", sorted(memory.MODEL_PRESETS))
def test_calculator_recognises_every_preset_from_its_billions(preset_id):
    p = memory.get_preset(preset_id)
    text, _ = widgets.draw_memory_calculator(p.n_layer, p.d_model, p.n_head, p.n_kv_head, 1, 128, "fp16", 141,
                                             p.n_params / 1e9)
    assert text == memory.format_report(memory.preset_report(p, 1, 128, gpu_gib=141))


@pytest.mark.parametrize(
    ("setting", "expected"),
    [
        (dict(batch_size=0, seq_len=0), "KV cache: 0 bytes = 0 B"),
        (dict(batch_size=0), "KV cache: 0 bytes = 0 B"),
        (dict(seq_len=0), "KV cache: 0 bytes = 0 B"),
        (dict(n_params_billion=0), "weights: 0 parameters"),
        (dict(batch_size=10**9, seq_len=10**12), "does NOT fit"),
        (dict(n_layer=10**6, d_model=10**6, n_head=10**3, n_kv_head=10**3), "does NOT fit"),
        (dict(gpu_gib=10**15, n_params_billion=1e6), "fits: this cache takes 0.0% of what is left"),
        (dict(gpu_gib=16, n_params_billion=175), "the weights alone need 2,037% of the GPU"),  # 350e9 / 16 GiB
    ],
)
def test_calculator_extreme_settings_give_text_and_a_figure(setting, expected):
    values = {**LLAMA7, "batch_size": 16, "seq_len": 4096, "dtype": "fp16", "gpu_gib": 80, **setting}
    text, fig = widgets.draw_memory_calculator(**values)
    assert expected in text and "Traceback" not in text
    assert isinstance(fig, matplotlib.figure.Figure)


def test_weights_larger_than_the_gpu():
    # 175e9 · 2 bytes / (16 · 2**30) = 20.37: the weights alone need 2,037% of a 16 GiB GPU
    text, fig = widgets.draw_memory_calculator(96, 12288, 96, 96, 16, 1024, "fp16", 16, 175)
    assert "does not fit: the weights alone need 2,037% of the GPU" in text
    assert "largest batch" not in text
    assert "the weights alone exceed 16 GiB" in fig.axes[0].get_title()


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        (dict(n_layer=0), "n_layer must be an int >= 1, got 0"),
        (dict(d_model=0), "hidden_size must be an int >= 1, got 0"),
        (dict(n_head=0), "n_head must be an int >= 1, got 0"),
        (dict(n_kv_head=0), "n_kv_head must be an int >= 1, got 0"),
        (dict(n_kv_head=3), "n_head must be divisible by n_kv_head, got n_head=32, n_kv_head=3"),
        (dict(n_head=48), "hidden_size must be divisible by n_head, got hidden_size=4096, n_head=48"),
        (dict(n_kv_head=64), "n_head must be divisible by n_kv_head, got n_head=32, n_kv_head=64"),
        (dict(gpu_gib=0), "gpu_gib must be a finite number > 0, got 0.0"),
        (dict(batch_size=-1), "batch_size must be an int >= 0, got -1"),
        (dict(dtype="fp8"), "dtype must be one of"),
        (dict(weight_dtype="fp64"), "weight_dtype must be one of"),
        (dict(n_params_billion=float("nan")), "n_params_billion must be a finite number >= 0, got nan"),
        (dict(n_params_billion=-1.0), "n_params_billion must be a finite number >= 0, got -1.0"),
        (dict(n_params_billion="7"), "n_params_billion must be a finite number >= 0, got '7'"),
        (dict(n_layer=2.5), "n_layer must be an int >= 1, got 2.5"),
        (dict(gpu_gib=10**400), "the numbers are too large to show"),
    ],
)
def test_calculator_invalid_settings_give_a_message_not_a_traceback(setting, message):
    values = {**LLAMA7, "batch_size": 16, "seq_len": 4096, "dtype": "fp16", "gpu_gib": 80, **setting}
    text, fig = widgets.draw_memory_calculator(**values)
    assert text.startswith("Cannot compute this setting: ") and message in text
    assert fig is None


def _controls(box):
    return {child.description: child for child in box.children if hasattr(child, "description")}


def test_calculator_widget_wires_presets_to_the_controls(capsys):
    box = widgets.memory_calculator(preset="llama2-7b", batch_size=16, seq_len=4096, gpu_gib=24)
    controls = _controls(box)
    assert controls["K/V heads n_kv_head"].value == 32
    assert "Llama 2 7B (" in capsys.readouterr().out  # outside a notebook the Output widget prints through
    controls["model"].value = "mistral-7b"
    assert controls["K/V heads n_kv_head"].value == 8 and controls["layers n_layer"].value == 32
    out = capsys.readouterr().out
    assert out.count("KV cache:") == 1 and "Mistral 7B (" in out  # one redraw per preset, not one per slider
    controls["K/V heads n_kv_head"].value = 3
    assert "Cannot compute this setting" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        (dict(preset="gpt5"), ValueError, "preset"),
        (dict(gpu_gib=33), ValueError, "gpu_gib"),
        (dict(batch_size=0), ValueError, "batch_size"),
        (dict(batch_size=16.0), TypeError, "batch_size"),
        (dict(seq_len=10**6), ValueError, "seq_len"),
    ],
)
def test_calculator_widget_bad_arguments(kwargs, error, message):
    with pytest.raises(error, match=message):
        widgets.memory_calculator(**kwargs)


# --- CLI = function = widget ---------------------------------------------------------------------------------------


def _cli(argv) -> str:
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        assert main(argv) == 0
    return buffer.getvalue().strip()


@pytest.mark.parametrize(
    ("preset_id", "batch", "seq_len", "dtype", "gpu_gib"),
    [("gpt3-175b", 16, 1024, "fp16", 80), ("llama2-7b", 16, 4096, "fp16", 24), ("llama2-70b", 8, 4096, "int8", 141),
     ("mistral-7b", 1, 32768, "bf16", 16), ("gpt2-small", 64, 1024, "fp32", 40), ("llama3-8b", 3, 7, "int4", 24)],
)
def test_cli_function_and_widget_agree(preset_id, batch, seq_len, dtype, gpu_gib):
    p = memory.get_preset(preset_id)
    report = memory.preset_report(p, batch, seq_len, dtype, gpu_gib=gpu_gib)
    bytes_text = f"KV cache: {memory.bytes_line(report.cache_bytes)}"
    assert bytes_text == f"KV cache: {p.kv_cache_bytes(batch, seq_len, memory.bytes_per_element(dtype)):,} bytes = " \
                         f"{memory.format_bytes(p.kv_cache_bytes(batch, seq_len, memory.bytes_per_element(dtype)))}"
    args = ["memory", "--preset", preset_id, "--batch", str(batch), "--seq-len", str(seq_len), "--dtype", dtype]
    plain = _cli(args)
    on_gpu = _cli(args + ["--gpu-gib", str(gpu_gib)])
    widget_text, _ = widgets.draw_memory_calculator(p.n_layer, p.d_model, p.n_head, p.n_kv_head, batch, seq_len,
                                                    dtype, gpu_gib, p.n_params / 1e9)
    assert bytes_text in plain.splitlines() and bytes_text in widget_text.splitlines()
    assert on_gpu == widget_text == memory.format_report(report)
    assert on_gpu.splitlines()[:3] == plain.splitlines()  # --gpu-gib only adds lines


def test_cli_custom_model_with_params_equals_the_widget():
    out = _cli(["memory", "--n-layer", "80", "--hidden", "8192", "--n-head", "64", "--n-kv-head", "8", "--batch", "2",
                "--seq-len", "100", "--gpu-gib", "40", "--params", "1000000000", "--weight-dtype", "int4"])
    text, _ = widgets.draw_memory_calculator(80, 8192, 64, 8, 2, 100, "fp16", 40, 1.0, weight_dtype="int4")
    assert out == text
    assert "weights: 1,000,000,000 parameters in int4 = 500,000,000 bytes" in out
    assert "KV cache: 65,536,000 bytes" in out  # 2 · 80 · 2 · 100 · 1024 · 2


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--params", "7"], "--params and --weight-dtype need --gpu-gib"),
        (["--gpu-gib", "0"], "gpu_gib must be a finite number > 0, got 0.0"),
        (["--gpu-gib", "x"], "invalid float value: 'x'"),
        (["--gpu-gib", "80", "--weight-dtype", "fp8"], "invalid choice: 'fp8'"),
    ],
)
def test_cli_gpu_options_bad_input(capsys, extra, message):
    assert main(["memory", "--preset", "llama2-7b", "--seq-len", "3"] + extra) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_cli_custom_model_needs_params(capsys):
    assert main(["memory", "--n-layer", "2", "--hidden", "64", "--seq-len", "3", "--gpu-gib", "16"]) == 2
    assert "a custom model needs --params" in capsys.readouterr().err
