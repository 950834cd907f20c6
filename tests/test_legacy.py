"""kvlab.legacy (chapter 03): the tuple-of-tensors past that transformers once used gives the cache path's logits
and tokens, and refuses what it cannot represent.
"""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import kvlab
from kvlab import legacy
from kvlab.memory import kv_cache_bytes
from tests.helpers import random_model


def _logit_differences(model, prompt, steps):
    """Largest |logit difference| between the legacy and the Cache path at prefill and at each greedy decode step."""
    with torch.inference_mode():
        cache = kvlab.DynamicCache()
        new = model(prompt, cache)
        old, presents = legacy.legacy_forward(model, prompt)
        differences = [(new - old).abs().max().item()]
        for _ in range(steps):
            next_token = new[:, -1:].argmax(dim=-1)
            new = model(next_token, cache)
            old, presents = legacy.legacy_forward(model, next_token, past=presents)
            differences.append((new - old).abs().max().item())
    return differences, presents


def test_legacy_logits_match_the_cache_path_on_the_hello_model(hello):
    model, tok = hello
    differences, presents = _logit_differences(model, tok.encode_batch("hello w"), 20)
    assert len(differences) == 21 and max(differences) <= 1e-5
    assert presents[0][0].shape[2] == 27  # 7 prompt tokens + 20 fed one at a time (the notebook's seq_len)


def test_legacy_generate_gives_the_same_tokens_as_generate(hello):
    model, tok = hello
    for text, n in (("h", 40), ("the qu", 30)):
        prompt = tok.encode_batch(text)
        assert torch.equal(legacy.legacy_generate(model, prompt, n), kvlab.generate(model, prompt, n))


@pytest.mark.parametrize("seed, sizes", [(0, {}), (1, dict(n_layer=3, n_head=2, d_model=16)),
                                         (2, dict(n_layer=1, n_head=8, d_model=64))])
def test_legacy_path_equals_cache_path_on_random_models(seed, sizes):
    model = random_model(seed, **sizes)
    prompt = torch.randint(37, (3, 5), generator=torch.Generator().manual_seed(seed))
    differences, _ = _logit_differences(model, prompt, 12)
    assert max(differences) <= 1e-5
    assert torch.equal(legacy.legacy_generate(model, prompt, 25), kvlab.generate(model, prompt, 25))


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), n_head=st.sampled_from([1, 2, 4]), n_layer=st.integers(1, 3),
       batch=st.integers(1, 3), prompt_len=st.integers(1, 6))
def test_legacy_prefill_logits_equal_model_logits(seed, n_head, n_layer, batch, prompt_len):
    model = random_model(seed, n_head=n_head, n_layer=n_layer, d_model=8 * n_head)
    prompt = torch.randint(37, (batch, prompt_len), generator=torch.Generator().manual_seed(seed))
    with torch.inference_mode():
        old, presents = legacy.legacy_forward(model, prompt)
        assert (old - model(prompt)).abs().max().item() <= 1e-5
    assert legacy.stack_past(presents).shape == (n_layer, 2, batch, n_head, prompt_len, 8)


def test_legacy_path_refuses_grouped_query_attention():
    model = random_model(n_kv_head=2)
    with pytest.raises(ValueError, match="n_kv_head=2 < n_head=4"):
        legacy.legacy_forward(model, torch.tensor([[1, 2]]))
    with pytest.raises(ValueError, match="n_kv_head=1 < n_head=4"):
        legacy.legacy_generate(random_model(n_kv_head=1), torch.tensor([[1, 2]]), 3)


def test_stack_past_shape_and_contents_on_the_hello_model(hello):
    model, tok = hello
    _, presents = _logit_differences(model, tok.encode_batch("hello w"), 20)
    stacked = legacy.stack_past(presents)
    c = model.config
    assert stacked.shape == (c.n_layer, 2, 1, c.n_head, 27, c.head_dim) == (4, 2, 1, 4, 27, 16)
    assert stacked.numel() == 4 * 2 * 1 * 4 * 27 * 16 == 13_824  # the notebook's numbers
    assert stacked.nbytes == 13_824 * 4 == 55_296 == kv_cache_bytes(4, 1, 27, 64, bytes_per_elem=4)
    for layer, (key, value) in enumerate(presents):
        assert torch.equal(stacked[layer, 0], key) and torch.equal(stacked[layer, 1], value)


def test_legacy_forward_accepts_the_stacked_past(hello):
    model, tok = hello
    with torch.inference_mode():
        _, presents = legacy.legacy_forward(model, tok.encode_batch("the ca"))
        token = tok.encode_batch("c")
        from_tuples, _ = legacy.legacy_forward(model, token, presents)
        from_stacked, _ = legacy.legacy_forward(model, token, legacy.stack_past(presents))
    assert torch.equal(from_tuples, from_stacked)


def test_legacy_cache_conversions_share_tensors_and_continue_generation(hello):
    model, tok = hello
    prompt = tok.encode_batch("hello w")
    with torch.inference_mode():
        _, presents = legacy.legacy_forward(model, prompt[:, :6])
    with pytest.raises(ValueError, match="not all fed through the model"):  # the tuples do not say which tokens
        kvlab.generate(model, prompt, 12, cache=legacy.from_legacy_cache(presents))
    with pytest.raises(ValueError, match="token_ids must have the shape"):
        legacy.from_legacy_cache(presents, token_ids=prompt[:, :5])
    cache = legacy.from_legacy_cache(presents, token_ids=prompt[:, :6])
    with pytest.raises(ValueError, match="does not continue"):
        kvlab.generate(model, tok.encode_batch("help w"), 12, cache=cache)
    assert cache.get_seq_length() == 6 and cache.get_max_cache_shape() is None
    assert all(k is key and v is value for k, v, (key, value) in zip(cache.keys, cache.values, presents))
    back = legacy.to_legacy_cache(cache)
    assert all(a[0] is b[0] and a[1] is b[1] for a, b in zip(back, presents))
    continued = kvlab.generate(model, prompt, 12, cache=cache)
    assert torch.equal(continued, kvlab.generate(model, prompt, 12))
    assert tok.decode(continued[0]) == "hello world\nhello c"  # the notebook's output, checked by the model's tokens


def test_stack_past_rejects_bad_input():
    k = torch.zeros(1, 2, 3, 4)
    with pytest.raises(ValueError, match="presents must be a non-empty sequence"):
        legacy.stack_past([])
    with pytest.raises(TypeError, match=r"(?s)presents must be a sequence .*\(Tensor\)"):
        legacy.stack_past(torch.zeros(2, 2, 1, 2, 3, 4))
    with pytest.raises(ValueError, match=r"presents\[0\] must be a \(key, value\) pair"):
        legacy.stack_past([(k,)])
    with pytest.raises(ValueError, match=r"presents .* one shape"):
        legacy.stack_past([(k, k), (k, torch.zeros(1, 2, 5, 4))])


def test_legacy_forward_rejects_bad_input(hello):
    model, tok = hello
    idx = tok.encode_batch("he")
    with torch.inference_mode():
        _, presents = legacy.legacy_forward(model, idx)
    with pytest.raises(TypeError, match="model must be a kvlab.TinyGPT, got Linear"):
        legacy.legacy_forward(torch.nn.Linear(2, 2), idx)
    with pytest.raises(ValueError, match=r"past .* per layer \(4\)"):
        legacy.legacy_forward(model, idx, presents[:3])
    with pytest.raises(ValueError, match=r"batch=2"):
        legacy.legacy_forward(model, idx.repeat(2, 1), presents)
    bad = list(presents)
    bad[2] = (presents[2][0][:, :, :1], presents[2][1])  # one layer shorter than the others
    with pytest.raises(ValueError, match=r"past .* one shape"):
        legacy.legacy_forward(model, idx, bad)
    with pytest.raises(ValueError, match="token id 99 "):
        legacy.legacy_forward(model, torch.tensor([[99]]))
    with pytest.raises(TypeError, match="idx must have dtype"):
        legacy.legacy_forward(model, torch.zeros(1, 2))
    with pytest.raises(ValueError, match=r"exceeds max_seq_len=128"):
        legacy.legacy_forward(model, torch.zeros(1, 127, dtype=torch.long), presents)
    with pytest.raises(TypeError, match=r"past .* per layer, got 3"):
        legacy.legacy_forward(model, idx, 3)


def test_legacy_generate_rejects_bad_lengths(hello):
    model, tok = hello
    with pytest.raises(ValueError, match="max_new_tokens"):
        legacy.legacy_generate(model, tok.encode_batch("h"), 0)
    with pytest.raises(TypeError, match="model must be a kvlab.TinyGPT"):
        legacy.legacy_generate(torch.nn.Linear(2, 2), tok.encode_batch("h"), 3)
    with pytest.raises(ValueError, match="exceeds max_seq_len=128"):
        legacy.legacy_generate(model, tok.encode_batch("h"), 128)


def test_legacy_conversions_reject_bad_input():
    with pytest.raises(TypeError, match="cache must be a kvlab.DynamicCache"):
        legacy.to_legacy_cache(kvlab.StaticCache(random_model().config, 1, 4))
    with pytest.raises(ValueError, match="past must be a non-empty sequence"):
        legacy.from_legacy_cache([])
    with pytest.raises(ValueError, match=r"past\[0\] must be a \(key, value\) pair"):
        legacy.from_legacy_cache([(torch.zeros(1, 2, 3, 4),)])
