"""What chapter 06 (kv_cache_memory.ipynb) shows: numbers and sentences its prose and exercises
state, checked against the committed notebook or recomputed with kvlab.
"""

from __future__ import annotations

import re

import pytest

from kvlab import memory
from kvlab.memory import GIB, kv_cache_bytes
from tests.helpers import NOTEBOOKS, assert_printed_above, notebook_cells, printed_text

NOTEBOOK = NOTEBOOKS / "06_kv_cache_memory.ipynb"


GPT3_PER_TOKEN = 2 * 96 * 12288 * 2  # K and V · layers · hidden · fp16 = 4,718,592 bytes


GPT3_WEIGHTS = 175_000_000_000 * 2  # fp16


# (text in a markdown cell, text or pattern that a code cell *above it* must print); whitespace in the prose is
# compared as single spaces, so a claim may wrap across lines
CLAIMS = [
    ("72 GiB against 326 GiB of fp16 weights, a ratio of 0.221",
     "cache / weights = 77,309,411,328 / 350,000,000,000 = 0.221"),
    ("72 GiB against 326 GiB of fp16 weights", "weights (fp16): 350,000,000,000 bytes = 326.0 GiB (350.0 GB)"),
    ("a rolling buffer that stops at 512.0 MiB",
     "Mistral 7B        32   4096    32        8       128    512.0 MiB @ 32,768"),
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


def test_gpt3_175b_batch16_seq1024_fp16_is_72_gib():
    expected = 77_309_411_328
    assert expected == 2 * 96 * 16 * 1024 * 12288 * 2  # K and V · layers · batch · seq · d_model · fp16
    assert expected == 72 * memory.GIB
    assert kv_cache_bytes(96, 16, 1024, 12288, memory.bytes_per_element("fp16")) == expected
    assert memory.get_preset("gpt3-175b").kv_cache_bytes(16, 1024) == expected
    assert memory.format_bytes(expected) == "72.0 GiB (77.3 GB)"


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


@pytest.mark.parametrize(("prose", "printed"), CLAIMS)
def test_notebook_prints_each_claim_above_the_prose(prose, printed):
    assert_printed_above(NOTEBOOK, prose, printed)


def test_notebook_prints_the_seed_example_and_the_checks():
    printed = "".join(printed_text(c) for c in notebook_cells(NOTEBOOK) if c["cell_type"] == "code")
    assert f"{2 * 96 * 16 * 1024 * 12288 * 2:,} bytes" in printed  # 77,309,411,328
    assert "format_bytes: 72.0 GiB (77.3 GB)" in printed
    assert "all equal: True" in printed and "False" not in printed.split("all equal")[0]
    assert "same text as the calculator: True" in printed
