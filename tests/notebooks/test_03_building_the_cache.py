"""What chapter 03 (building_the_cache.ipynb) shows: numbers and sentences its prose and exercises
state, checked against the committed notebook or recomputed with kvlab.
"""

import math

import torch

import kvlab
from kvlab import legacy, measure
from kvlab.memory import kv_cache_bytes


def test_exercise_two_shape(hello):
    model, tok = hello
    batch = torch.cat([tok.encode_batch("hello"), tok.encode_batch("cache")])
    with torch.inference_mode():
        _, presents = legacy.legacy_forward(model, batch)
    assert tuple(legacy.stack_past(presents).shape) == (4, 2, 2, 4, 5, 16)


def test_the_notebooks_copy_numbers(hello):
    model, tok = hello
    config, start = model.config, tok.encode_batch("h")
    per_token = kv_cache_bytes(config.n_layer, 1, 1, config.d_model, bytes_per_elem=4)
    assert per_token == 2 * 4 * 64 * 4 == 2048
    lengths = [2, 4, 8, 16, 32, 64, 127]
    counts = {}
    for kind, cache in (("dynamic", kvlab.DynamicCache()), ("static", kvlab.StaticCache(config, 1, 127))):
        counting = measure.CopyCountingCache(cache)
        kvlab.generate(model, start, 127, cache=counting)
        counts[kind] = [counting.copied_bytes_at[T] for T in lengths]
    assert counts["dynamic"] == [2048 * (T * (T + 1) // 2 - 1) for T in lengths]  # the closed form in the prose
    assert counts["static"] == [2048 * T for T in lengths]
    assert counts["dynamic"][-1] == 16_644_096 and counts["static"][-1] == 260_096
    assert f"{counts['dynamic'][-1] / 2**20:.1f} MiB" == "15.9 MiB" and counts["static"][-1] / 2**10 == 254
    assert f"{counts['dynamic'][-1] / counts['static'][-1]:.1f}" == "64.0"
    slopes = [math.log(v[-1] / v[-2]) / math.log(127 / 64) for v in counts.values()]
    assert [f"{s:.2f}" for s in slopes] == ["1.99", "1.00"]
    assert measure.cache_copied_bytes(model, start, 50, kvlab.DynamicCache()) == 2048 * (50 * 51 // 2 - 1)  # exercise 1
