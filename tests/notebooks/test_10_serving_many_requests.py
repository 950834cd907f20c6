"""What chapter 10 (serving_many_requests.ipynb) shows: numbers and sentences its prose and exercises
state, checked against the committed notebook or recomputed with kvlab.
"""

import torch

import kvlab
from kvlab import memory


def test_notebook_waste_numbers():
    """Section 2's claims, from the same seeded lengths: 49.3% unused contiguous, 11.0% and 8.1 slots at 16."""
    lengths = torch.randint(1, 129, (32,), generator=torch.Generator().manual_seed(0)).tolist()
    used = sum(lengths)
    contiguous = memory.contiguous_reserved_tokens(lengths, 128)
    assert f"{(contiguous - used) / contiguous:.1%}" == "49.3%"
    paged = memory.paged_reserved_tokens(lengths, 16)
    assert f"{(paged - used) / paged:.1%}" == "11.0%"
    assert f"{(paged - used) / 32:.1f}" == "8.1"
    assert memory.paged_reserved_tokens(lengths, 128) == contiguous  # block size = max_len: the same reservation


def test_notebook_tp_table():
    """Section 4: the 8-head model, batch of 3, 7 + 12 - 1 = 18 cached tokens, fp32, and Llama 3 70B."""
    config8 = kvlab.GPTConfig(vocab_size=25, n_layer=2, n_head=8, d_model=64, max_seq_len=64)
    for tp, expected in ((1, 55_296), (2, 27_648), (4, 13_824), (8, 6_912)):
        assert memory.kv_cache_bytes_per_device(2, 3, 18, 64, 4, n_head=8, tp=tp) == expected
        assert expected == 2 * 2 * 3 * 18 * (8 // tp) * 8 * 4
    llama = memory.get_preset("llama3-70b")
    per_device = [memory.kv_cache_bytes_per_device(80, 8, 8192, 8192, 2, n_head=64, n_kv_head=8, tp=tp)
                  for tp in (1, 8)]
    assert per_device == [20 * memory.GIB, 2.5 * memory.GIB] and llama.n_kv_head == 8 and config8.n_kv_head == 8


def test_exercise_answers():
    """Exercise 1: 7 blocks of 16 hold 100 tokens, 12 slots unused. Exercise 2: 3 + 10 · (5 - 2) = 33 blocks.
    Exercise 3: Llama 3 8B, tp = 8, 2 · 32 · 8192 · 1 · 128 · 2 bytes per device."""
    assert memory.paged_reserved_tokens([100], 16) - 100 == 12
    assert memory.paged_reserved_tokens([65] * 10, 16, shared_prefix=40) // 16 == 33
    llama8 = memory.get_preset("llama3-8b")
    assert memory.kv_cache_bytes_per_device(32, 1, 8192, 4096, 2, n_head=32, n_kv_head=8, tp=8) == \
        2 * 32 * 8192 * 1 * 128 * 2 == 134_217_728
    assert (llama8.n_layer, llama8.d_model, llama8.n_head, llama8.n_kv_head) == (32, 4096, 32, 8)
