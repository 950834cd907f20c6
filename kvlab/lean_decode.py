"""A lean decode loop: the same model and the same numbers, with the per-step overhead taken out.

`TinyGPT.forward` is written to be read: modules that call modules, O(1) input checks on every call, a `Cache`
object that checks its arguments. On a GPT-2-sized model that matters little, because a decode step spends its time
reading the weights. On a course-sized model (4 layers x 128) it matters a lot: a decode step is about a hundred
tiny tensor operations, each a few microseconds of Python and dispatcher work around far less arithmetic, so the
bookkeeping around the maths is a large share of the step (benchmarks/README.md, figure 2a).

`lean_generate` computes exactly what `generate` computes, from the model's own weights, the way inference engines
do it: the weights are gathered once into plain tuples, the keys and values go into one pre-allocated buffer per
layer (a `StaticCache` without the object around it), and prefill and decode are one straight-line function with
no input checks inside the loop beyond one bounds check on the position (the prompt is checked once; every later
token comes from the model's own vocabulary).
The readable model stays the reference: tests check that both give the same tokens and logits.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from .generate import _check_arguments, _sample
from .lean_llama import _check_position, lean_llama_forward, lean_weights
from .llama import Llama
from .masks import causal_mask
from .model import Block, TinyGPT

__all__ = ["LayerWeights", "layer_weights", "lean_generate", "lean_forward"]


class LayerWeights(NamedTuple):
    """One block's tensors, read once: attribute access on a tuple is cheap, on an nn.Module it is not."""

    ln_1_weight: torch.Tensor
    ln_1_bias: torch.Tensor
    qkv_weight: torch.Tensor
    qkv_bias: torch.Tensor
    attn_proj_weight: torch.Tensor
    attn_proj_bias: torch.Tensor
    ln_2_weight: torch.Tensor
    ln_2_bias: torch.Tensor
    fc_weight: torch.Tensor
    fc_bias: torch.Tensor
    mlp_proj_weight: torch.Tensor
    mlp_proj_bias: torch.Tensor


def layer_weights(block: Block) -> LayerWeights:
    """The tensors of one `Block`, in the order its forward uses them (no copies: the model's own parameters)."""
    attn, mlp = block.attn, block.mlp
    return LayerWeights(block.ln_1.weight, block.ln_1.bias, attn.qkv.weight, attn.qkv.bias, attn.proj.weight,
                        attn.proj.bias, block.ln_2.weight, block.ln_2.bias, mlp.fc.weight, mlp.fc.bias,
                        mlp.proj.weight, mlp.proj.bias)


def lean_forward(model: TinyGPT, layers: list[LayerWeights], kv: list[tuple[torch.Tensor, torch.Tensor]],
                 new: torch.Tensor, pos: int) -> torch.Tensor:
    """`TinyGPT.forward` for tokens `new` (B, T) placed at `pos`, as plain tensor operations; last-position logits.

    `kv` holds one pre-allocated (keys, values) pair per layer, each (B, H_kv, T_max, D); positions 0..pos-1 are
    filled. The new keys and values are written in place at pos..pos+T-1 and attention reads the filled prefix.
    A single token needs no mask; several from an empty buffer (pos 0, prefill) the plain causal triangle; several
    after a past (a prompt fed in chunks) the model's `causal_mask`.
    """
    c = model.config
    B, T = new.shape
    C, H, H_kv, D = c.d_model, c.n_head, c.n_kv_head, c.head_dim
    _check_position(kv, pos, T, c.max_seq_len)  # one comparison: the buffers must have room
    eps = model.ln_f.eps
    x = model.wte.weight[new] + model.wpe.weight[pos:pos + T]  # (B, T, C)
    mask = causal_mask(T, pos + T, x.device) if T > 1 and pos > 0 else None  # (T, pos + T), as in the model
    for w, (keys, values) in zip(layers, kv):
        h = F.layer_norm(x, (C,), w.ln_1_weight, w.ln_1_bias, eps)
        qkv = F.linear(h, w.qkv_weight, w.qkv_bias).view(B, T, H + 2 * H_kv, D).transpose(1, 2)  # one view
        q, k, v = qkv.split((H, H_kv, H_kv), dim=1)  # (B, H, T, D), (B, H_kv, T, D), (B, H_kv, T, D)
        keys[:, :, pos:pos + T] = k  # the cache write, in place
        values[:, :, pos:pos + T] = v
        k, v = keys[:, :, :pos + T], values[:, :, :pos + T]  # (B, H_kv, pos + T, D): views of the buffer
        if H_kv != H:  # grouped-query attention, as in the model
            k, v = k.repeat_interleave(H // H_kv, dim=1), v.repeat_interleave(H // H_kv, dim=1)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=T > 1 and pos == 0)
        x = x + F.linear(y.transpose(1, 2).reshape(B, T, C), w.attn_proj_weight, w.attn_proj_bias)
        h = F.layer_norm(x, (C,), w.ln_2_weight, w.ln_2_bias, eps)
        x = x + F.linear(F.gelu(F.linear(h, w.fc_weight, w.fc_bias), approximate="tanh"), w.mlp_proj_weight,
                         w.mlp_proj_bias)
    x = F.layer_norm(x[:, -1], (C,), model.ln_f.weight, model.ln_f.bias, eps)  # only the last position predicts
    return F.linear(x, model.wte.weight)  # (B, vocab_size)


@torch.inference_mode()
def lean_generate(model: TinyGPT | Llama, idx: torch.Tensor, max_new_tokens: int, *, temperature: float = 0.0,
                  top_k: int | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """`generate` with a cache, leaner: the same tokens for the same arguments, (B, T + max_new_tokens).

    Always exactly `max_new_tokens` tokens (no `eos_id`), always a fresh buffer sized for prompt + new tokens; use
    `generate` for everything else (caches passed in, early stopping, timings). A `kvlab.Llama` (SmolLM2) runs
    `kvlab.lean_llama`'s step over the same buffers.
    """
    _check_arguments(model, idx, max_new_tokens, True, None, temperature, top_k)
    model._check_token_ids(idx)  # once, for the prompt: every later token is one the model itself chose
    c, (B, P) = model.config, idx.shape
    weight = model.wte.weight
    shape = (B, c.n_kv_head, P + max_new_tokens, c.head_dim)  # (B, H_kv, T_max, D)
    kv = [(weight.new_empty(shape), weight.new_empty(shape)) for _ in model.blocks]
    if isinstance(model, Llama):
        layers, head = lean_weights(model)

        def step(new: torch.Tensor, pos: int) -> torch.Tensor:
            return lean_llama_forward(model, layers, head, kv, new, pos)
    else:
        layers = [layer_weights(block) for block in model.blocks]

        def step(new: torch.Tensor, pos: int) -> torch.Tensor:
            return lean_forward(model, layers, kv, new, pos)
    tokens = idx.new_empty(B, P + max_new_tokens)
    tokens[:, :P] = idx
    new, pos = idx, 0  # prefill feeds the prompt at position 0; each decode step one token after it
    for _ in range(max_new_tokens):
        logits = step(new, pos)
        pos += new.shape[1]
        tokens[:, pos:pos + 1] = _sample(logits, temperature, top_k, generator)  # arguments checked above
        new = tokens[:, pos:pos + 1]
    return tokens
