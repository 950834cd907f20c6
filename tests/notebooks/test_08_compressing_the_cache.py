"""What chapter 08 (compressing_the_cache.ipynb: fewer bits or fewer heads) shows: numbers and sentences its prose
and exercises state, checked against the committed notebook or recomputed with kvlab. Eviction is chapter 09's
(tests/notebooks/test_09_evicting_tokens.py).
"""

from __future__ import annotations

import pytest
import torch

import kvlab
from kvlab import quality
from kvlab.compressed_cache import QuantizedCache
from tests.helpers import NOTEBOOKS, assert_printed_above

NOTEBOOK = NOTEBOOKS / "08_compressing_the_cache.ipynb"


CLAIMS = [
    ("2 MiB for 1,024 tokens", "full cache: 2,097,152 bytes = 2.0 MiB"),
    ("2 MiB for 1,024 tokens", "1,024 tokens, 1,016 next-token predictions"),
    ("agrees on 100% of the 1,016", "StaticCache: 2,097,152 B (100.0%)  top-1 100.0%"),
    ("with 8 bits the 16 × 16 codes take 256", "384 bytes instead of 1024"),
    ("(0.032 against 0.057)", "4 bits: keys per channel 0.0318, per token 0.0569"),
    ("(0.057 against 0.064)", "values per channel 0.0572, per token 0.0640"),
    ("holds 45.3% of the fp32 bytes", "(45.3%)"),
    ("(52.3% at its peak", "most held after any step: 1,097,728 bytes (52.3%)"),
    ("0.014 with the window (0.086 without)",
     "int8, residual 0     933,888 B ( 44.5%)  top-1 100.0%  max|Δlogit|  0.0859"),
    ("reaches 1.55, 8 predictions in 1,000 flip (99.2% agreement)", "top-1  99.2%  max|Δlogit|  1.5477"),
    ("rises by 0.0027 nats", "CE 0.2940 (+0.0027)"),
    ("(to 0.32)", "int4, residual 16    901,120 B ( 43.0%)  top-1  99.8%  max|Δlogit|  0.3163"),
    ("55.3% for int8 and 31.1% for int4", "= 31.1% of fp16"),
    ("2.80 (GQA) and 3.64 (MQA)", "hello, mean-pooled to n_kv_head=1  184,896     524,288    25%        3.6447"),
    ("(0.25 and 0.24 against 0.29)", "trained, n_kv_head=1               184,896     524,288    25%        0.2356"),
    ("57 times less", "(56.9× more)"),
    ("8.4 GiB instead of 480 GiB", "128k tokens of context: MLA 8.4 GiB (9.1 GB), MHA 480.0 GiB"),
]


def test_keys_per_channel_beat_per_token_on_the_hello_model(hello, held_out):
    """The notebook's table: per-channel keys have less error than per-token keys (4 bits: 0.032 vs 0.057)."""
    model, _ = hello
    tokens, _ = held_out
    cache = kvlab.DynamicCache()
    with torch.inference_mode():
        model(tokens, cache)
    keys = cache.keys[0].reshape(8, 4, 8, 16, 16)  # groups of 16 tokens
    per_channel, per_token = quality.quantization_error(keys, 4, -2), quality.quantization_error(keys, 4, -1)
    assert per_channel < 0.6 * per_token
    assert round(per_channel, 3) == 0.032 and round(per_token, 3) == 0.057


def test_quantized_cache_bytes_in_the_notebook(hello, held_out):
    """950,272 bytes after 128 tokens (45.3% of 2,097,152), 1,097,728 at the peak (52.3%)."""
    model, _ = hello
    tokens, full = held_out
    # per layer, row and head: n_q = 112, codes 2·112·16 = 3,584 bytes; floats 2·7·16 + 2·112 + 2·16·16 = 960 -> 3,840
    assert 4 * 8 * 4 * (3584 + 3840) == 950_272
    # peak at 127 tokens: n_q = 96, codes 3,072; floats 2·6·16 + 2·96 + 2·31·16 = 1,376 -> 5,504
    assert 4 * 8 * 4 * (3072 + 5504) == 1_097_728
    assert full.peak_nbytes == 2 * 4 * 8 * 128 * 64 * 4 == 2_097_152
    cache = QuantizedCache(bits=8, group_size=16, residual_length=16)
    run = quality.decode_token_by_token(model, tokens, cache)
    assert cache.nbytes == 950_272 and run.peak_nbytes == 1_097_728


@pytest.mark.parametrize("residual_length", [16, 0])
@pytest.mark.parametrize(("bits", "min_top1", "max_logit", "max_loss"), [(8, 0.995, 0.25, 0.001), (4, 0.98, 3.0, 0.01)])
def test_quantized_quality_stays_within_the_notebooks_bounds(hello, held_out, bits, residual_length, min_top1,
                                                             max_logit, max_loss):
    model, _ = hello
    tokens, full = held_out
    report = quality.compare_to_full_cache(model, tokens, lambda: QuantizedCache(bits, 16, residual_length), full=full)
    assert report.top1_agreement >= min_top1
    assert 0 < report.max_abs_logit_diff <= max_logit  # > 0: the cache really is lossy
    assert report.cross_entropy_increase <= max_loss
    assert report.cache_nbytes < full.peak_nbytes / 1.9


def test_quantized_cache_example_from_the_exercise(hello):
    # 40 tokens, G = R = 16: 16 quantised, 24 in fp32. Per layer and head: codes 2·16·16/2 = 256 bytes; floats
    # 2·16 (key scales) + 2·16 (value scales) + 2·24·16 (window) = 832 -> 3,328 bytes; 4 layers × 4 heads
    model, tokenizer = hello
    cache = QuantizedCache(bits=4, group_size=16, residual_length=16)
    quality.decode_token_by_token(model, quality.held_out_tokens(tokenizer, 1, 40), cache)
    assert cache.nbytes == 4 * 4 * (256 + 3328) == 57_344


@pytest.mark.parametrize(("prose", "printed"), CLAIMS)
def test_notebook_prints_each_claim_above_the_prose(prose, printed):
    assert_printed_above(NOTEBOOK, prose, printed)
