"""The lean decode loop computes what the readable model computes: same logits, same tokens, same errors."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import kvlab
from kvlab.lean_decode import layer_weights, lean_forward, lean_generate
from tests.helpers import random_model


def _empty_kv(model, batch_size, capacity):
    c = model.config
    shape = (batch_size, c.n_kv_head, capacity, c.head_dim)
    return [(torch.zeros(shape), torch.zeros(shape)) for _ in model.blocks]


@pytest.mark.parametrize("prompt", ["h", "the ca", "pre", "keys and v"])
def test_hello_model_gives_generates_tokens_and_text(hello, prompt):
    model, tok = hello
    idx = torch.tensor([tok.encode(prompt)])
    expected = kvlab.generate(model, idx, 12)
    assert torch.equal(lean_generate(model, idx, 12), expected)
    if prompt == "h":
        assert tok.decode(lean_generate(model, idx, 4)[0].tolist()) == "hello"


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), n_kv_head=st.sampled_from([1, 2, 4]), batch=st.integers(1, 3),
       prompt_len=st.integers(1, 9), new_tokens=st.integers(1, 8))
def test_same_tokens_as_generate_for_any_model(seed, n_kv_head, batch, prompt_len, new_tokens):
    model = random_model(seed, n_kv_head=n_kv_head)
    idx = torch.randint(model.config.vocab_size, (batch, prompt_len), generator=torch.Generator().manual_seed(seed))
    assert torch.equal(lean_generate(model, idx, new_tokens), kvlab.generate(model, idx, new_tokens))


@pytest.mark.parametrize("n_kv_head", [4, 2, 1])
def test_prefill_and_decode_logits_match_the_model(n_kv_head):
    """Compare logits, not only argmaxes: a 7-token prompt fed as 4 + 3 tokens, then three decode steps."""
    model = random_model(3, n_kv_head=n_kv_head)
    idx = torch.randint(model.config.vocab_size, (2, 10), generator=torch.Generator().manual_seed(1))
    layers = [layer_weights(block) for block in model.blocks]
    kv, cache = _empty_kv(model, 2, 10), kvlab.DynamicCache()
    with torch.inference_mode():
        for start, end in [(0, 4), (4, 7), (7, 8), (8, 9), (9, 10)]:  # a prompt in two chunks, then decode
            ours = lean_forward(model, layers, kv, idx[:, start:end], start)
            reference = model(idx[:, start:end], cache)[:, -1]
            torch.testing.assert_close(ours, reference, rtol=0, atol=1e-5)
        torch.testing.assert_close(kv[0][0], cache.keys[0], rtol=0, atol=0)  # the buffer holds the same keys


def test_sampling_draws_the_same_tokens_from_the_same_generator():
    model = random_model(5)
    idx = torch.randint(model.config.vocab_size, (2, 4), generator=torch.Generator().manual_seed(0))
    ours = lean_generate(model, idx, 10, temperature=0.8, top_k=5, generator=torch.Generator().manual_seed(7))
    theirs = kvlab.generate(model, idx, 10, temperature=0.8, top_k=5, generator=torch.Generator().manual_seed(7))
    assert torch.equal(ours, theirs)


def test_float64_model_and_full_context():
    model = random_model(2, max_seq_len=16).double()
    idx = torch.randint(model.config.vocab_size, (1, 3), generator=torch.Generator().manual_seed(2))
    out = lean_generate(model, idx, 13)  # fills every position the model has
    assert out.shape == (1, 16)
    assert torch.equal(out, kvlab.generate(model, idx, 13))


def test_layer_weights_are_the_models_own_tensors():
    model = random_model(0)
    w = layer_weights(model.blocks[1])
    assert w.qkv_weight is model.blocks[1].attn.qkv.weight
    assert w.mlp_proj_bias is model.blocks[1].mlp.proj.bias
    assert len(w) == sum(1 for _ in model.blocks[1].parameters())  # no tensor of the block is left out


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(max_new_tokens=0), ValueError, "max_new_tokens"),
    (dict(max_new_tokens=60), ValueError, "exceeds max_seq_len=64"),
    (dict(temperature=-1.0), ValueError, "temperature"),
    (dict(top_k=0), ValueError, "top_k"),
    (dict(idx=torch.tensor([[1, 99]])), ValueError, "token id 99 in idx is out of range"),
    (dict(idx=torch.tensor([[-1, 2]])), ValueError, "token id -1 in idx"),  # weight[-1] would be a silent lookup
    (dict(idx=torch.tensor([[1.0, 2.0]])), TypeError, "idx must have dtype"),
    (dict(idx=torch.tensor([1, 2])), ValueError, "idx must be a (batch, seq_len) tensor"),
])
def test_bad_arguments_name_the_value(kwargs, error, message):
    model = random_model(0)
    arguments = {"idx": torch.tensor([[1, 2, 3, 4, 5]]), "max_new_tokens": 4, **kwargs}
    idx, n = arguments.pop("idx"), arguments.pop("max_new_tokens")
    with pytest.raises(error, match=message.replace("(", r"\(").replace(")", r"\)")):
        lean_generate(model, idx, n, **arguments)


def test_lean_step_runs_no_more_operations_than_the_models(hello):
    """Chapter 05 says the lean loop runs nearly the same operations, with less Python around them."""
    from kvlab import measure

    model, tok = hello
    idx = torch.tensor([tok.encode("keys and values ")])
    layers = [layer_weights(block) for block in model.blocks]
    kv, cache = _empty_kv(model, 1, 16), kvlab.DynamicCache()
    with torch.inference_mode():
        lean_forward(model, layers, kv, idx[:, :-1], 0)
        model(idx[:, :-1], cache)
        lean_ops = measure.count_operations(lambda: lean_forward(model, layers, kv, idx[:, -1:], 15)).total()
        model_ops = measure.count_operations(lambda: model(idx[:, -1:], cache)).total()
    assert 0.8 * model_ops <= lean_ops <= model_ops, (lean_ops, model_ops)


@pytest.mark.parametrize("pos, T", [(-1, 1), (16, 1), (14, 3)])
def test_lean_forward_rejects_a_position_outside_its_buffer(pos, T):
    """Writing past the buffer used to be a silent no-op that attended to zeros."""
    model = random_model(0)
    layers = [layer_weights(block) for block in model.blocks]
    with pytest.raises(ValueError, match=f"pos must be in 0..{16 - T} for {T} new tokens .* got {pos}"):
        lean_forward(model, layers, _empty_kv(model, 1, 16), torch.ones(1, T, dtype=torch.long), pos)
