"""kvlab.lean_llama: `lean_generate` on a Llama gives `generate`'s tokens (DynamicCache) and the model's logits."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import kvlab
from kvlab import smollm2
from kvlab.lean_decode import lean_generate
from kvlab.lean_llama import lean_llama_forward, lean_weights
from kvlab.llama import Llama, LlamaConfig


def _llama(seed: int = 0, **changes) -> Llama:
    torch.manual_seed(seed)
    sizes = dict(vocab_size=37, n_layer=2, n_head=4, n_kv_head=2, d_model=32, d_ff=48, max_seq_len=64,
                 rope_theta=10_000.0)
    return Llama(LlamaConfig(**{**sizes, **changes})).eval()


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000), n_kv_head=st.sampled_from([1, 2, 4]), batch=st.integers(1, 3),
       prompt_len=st.integers(1, 9), new_tokens=st.integers(1, 8))
def test_same_tokens_as_generate_with_a_dynamic_cache(seed, n_kv_head, batch, prompt_len, new_tokens):
    model = _llama(seed, n_kv_head=n_kv_head, d_ff=96)  # d_ff > d_model: gate_up is copied transposed
    idx = torch.randint(37, (batch, prompt_len), generator=torch.Generator().manual_seed(seed))
    expected = kvlab.generate(model, idx, new_tokens, cache=kvlab.DynamicCache())
    assert torch.equal(lean_generate(model, idx, new_tokens), expected)


@pytest.mark.parametrize("n_kv_head", [4, 2, 1])
def test_prefill_in_chunks_and_decode_logits_match_the_model(n_kv_head):
    model = _llama(3, n_kv_head=n_kv_head)
    c = model.config
    idx = torch.randint(37, (2, 10), generator=torch.Generator().manual_seed(1))
    layers, head = lean_weights(model)
    shape = (2, c.n_kv_head, 10, c.head_dim)
    kv, cache = [(torch.zeros(shape), torch.zeros(shape)) for _ in model.blocks], kvlab.DynamicCache()
    with torch.inference_mode():
        for start, end in [(0, 4), (4, 7), (7, 8), (8, 9), (9, 10)]:  # a prompt in two chunks, then decode
            ours = lean_llama_forward(model, layers, head, kv, idx[:, start:end], start)
            torch.testing.assert_close(ours, model(idx[:, start:end], cache)[:, -1], rtol=0, atol=1e-5)
        torch.testing.assert_close(kv[0][0], cache.keys[0], rtol=0, atol=1e-6)  # rotated keys, as the cache holds


def test_weight_copies_follow_the_models_parameters():
    model = _llama(1, d_ff=96)
    layers, head = lean_weights(model)
    assert lean_weights(model)[0] is layers  # copied once, then kept
    assert layers[0].gate_up.stride() == (1, 96 * 2) and layers[0].down is model.blocks[0].mlp.down.weight
    assert torch.equal(layers[0].gate_up, model.blocks[0].mlp.gate_up.weight)
    with torch.no_grad():
        model.blocks[0].mlp.gate_up.weight.mul_(2)  # changed in place, as load_state_dict does
    assert torch.equal(lean_weights(model)[0][0].gate_up, model.blocks[0].mlp.gate_up.weight)
    idx = torch.randint(37, (1, 5), generator=torch.Generator().manual_seed(0))
    assert torch.equal(lean_generate(model, idx, 6), kvlab.generate(model, idx, 6))


def test_sampling_draws_the_same_tokens_from_the_same_generator():
    model = _llama(5)
    idx = torch.randint(37, (2, 4), generator=torch.Generator().manual_seed(0))
    ours = lean_generate(model, idx, 10, temperature=0.8, top_k=5, generator=torch.Generator().manual_seed(7))
    theirs = kvlab.generate(model, idx, 10, temperature=0.8, top_k=5, generator=torch.Generator().manual_seed(7))
    assert torch.equal(ours, theirs)


def test_bad_position_names_the_allowed_range():
    model = _llama()
    layers, head = lean_weights(model)
    kv = [(torch.zeros(1, 2, 4, 8), torch.zeros(1, 2, 4, 8)) for _ in model.blocks]
    with pytest.raises(ValueError, match=r"pos must be in 0\.\.3 for 1 new tokens"):
        lean_llama_forward(model, layers, head, kv, torch.zeros(1, 1, dtype=torch.long), 4)


def test_smollm2_greedy_tokens_equal_generates_over_64_steps():
    try:
        smollm2.gguf_path()
    except ModuleNotFoundError:
        pytest.skip(f"SmolLM2's weights are not installed: {smollm2.INSTALL_COMMAND}")
    from pydoc_data.topics import topics

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model, tokenizer = smollm2.load_smollm2()
        idx = tokenizer.encode_batch(topics["assignment"])[:, :24]
        expected = kvlab.generate(model, idx, 64, cache=kvlab.DynamicCache())
        assert torch.equal(lean_generate(model, idx, 64), expected)
    finally:
        torch.set_num_threads(threads)
