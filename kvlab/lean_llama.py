"""`lean_generate` for `kvlab.llama.Llama`: the same tokens as `generate`, with the per-step overhead taken out.

The readable `Llama` runs each decode step through 30 blocks of modules, a `Cache` object per layer, and the rotary
table indexed twice per layer. This is the same arithmetic the way an inference engine writes it:

- one pre-allocated key and value buffer per layer (`lean_decode.lean_generate` makes them), written in place;
- the rotation's cos and sin sliced once per step, for all layers, and queries and keys turned in one operation;
- only the last position's logits (a prompt's other positions predict nothing anyone reads);
- the weights gathered once into plain tuples, and those whose matrix-vector product CPU BLAS streams faster in
  the transposed memory layout (more outputs than inputs: q/k/v, gate/up, the tied head) copied once into that
  layout (`torch.nn.functional.linear` on the transposed view gives the same product; see `model.conv1d_layout`).
  The model itself keeps PyTorch's layout, so its logits stay transformers' to the last bit.

The copies are kept for the model (`lean_weights`) and made again only when its parameters change.
"""

from __future__ import annotations

import weakref
from typing import NamedTuple

import torch
import torch.nn.functional as F

from .llama import Llama, LlamaBlock
from .masks import causal_mask

__all__ = ["LlamaLayerWeights", "lean_weights", "lean_llama_forward"]


class LlamaLayerWeights(NamedTuple):
    """One block's tensors in the order its forward uses them; `_gemv_weight` chose each matrix's memory layout."""

    norm_1: torch.Tensor
    qkv: torch.Tensor
    proj: torch.Tensor
    norm_2: torch.Tensor
    gate_up: torch.Tensor
    down: torch.Tensor


def _gemv_weight(weight: torch.Tensor) -> torch.Tensor:
    """`weight` (out, in) itself, or an (in, out)-contiguous copy when out > in: there one thread's BLAS
    matrix-vector product reads the transposed layout about 1.5-2x faster (benchmarks/README.md, figure 6)."""
    return weight.t().contiguous().t() if weight.shape[0] > weight.shape[1] else weight


def _layer(block: LlamaBlock) -> LlamaLayerWeights:
    attn, mlp = block.attn, block.mlp
    return LlamaLayerWeights(block.norm_1.weight, _gemv_weight(attn.qkv.weight), _gemv_weight(attn.proj.weight),
                             block.norm_2.weight, _gemv_weight(mlp.gate_up.weight), _gemv_weight(mlp.down.weight))


_PREPARED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> (stamp, layers, head)


def lean_weights(model: Llama) -> tuple[list[LlamaLayerWeights], torch.Tensor]:
    """The blocks' weights and the LM head, laid out for decoding; copied once per model and kept until a
    parameter changes (in place, as ``load_state_dict`` does, or replaced): the stamp sees either."""
    stamp = tuple((p.data_ptr(), p._version) for p in model.parameters())
    prepared = _PREPARED.get(model)
    if prepared is None or prepared[0] != stamp:
        with torch.no_grad():
            prepared = (stamp, [_layer(block) for block in model.blocks], _gemv_weight(model.wte.weight))
        _PREPARED[model] = prepared
    return prepared[1], prepared[2]


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return weight * (x * torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + eps))  # `llama.RMSNorm`, same order


def _check_position(kv, pos: int, T: int, max_seq_len: int) -> None:
    """`T` new tokens written at `pos` must fit the K/V buffers and the model's positions: one comparison per step
    (shared with `kvlab.lean_decode.lean_forward`)."""
    if not 0 <= pos <= min(kv[0][0].shape[-2], max_seq_len) - T:
        raise ValueError(f"pos must be in 0..{min(kv[0][0].shape[-2], max_seq_len) - T} for {T} new tokens "
                         f"(buffer of {kv[0][0].shape[-2]} positions, max_seq_len={max_seq_len}), got {pos}")


def lean_llama_forward(model: Llama, layers: list[LlamaLayerWeights], head: torch.Tensor,
                       kv: list[tuple[torch.Tensor, torch.Tensor]], new: torch.Tensor, pos: int) -> torch.Tensor:
    """`Llama.forward` for tokens `new` (B, T) at positions pos..pos+T-1; returns the last position's logits (B, V).

    `kv` holds one (keys, values) buffer pair per layer, (B, H_kv, T_max, D), filled at 0..pos-1 with rotated
    keys, as transformers' and kvlab's `DynamicCache` hold them. Attention is the model's: the same
    ``scaled_dot_product_attention`` calls with the same masks, each K/V head serving H / H_kv query heads.
    """
    c = model.config
    B, T = new.shape
    C, H, H_kv, D = c.d_model, c.n_head, c.n_kv_head, c.head_dim
    _check_position(kv, pos, T, c.max_seq_len)  # one comparison: the buffers must have room
    eps, gqa, half = c.rms_eps, H != H_kv, D // 2
    cos, sin = model.rope.cos[pos:pos + T], model.rope.sin[pos:pos + T]  # (T, D): once for all layers
    mask = causal_mask(T, pos + T, new.device) if T > 1 and pos > 0 else None  # as in the model
    x = model.wte.weight[new]  # (B, T, C)
    for w, (keys, values) in zip(layers, kv):
        qkv = F.linear(_rms_norm(x, w.norm_1, eps), w.qkv).view(B, T, H + 2 * H_kv, D).transpose(1, 2)
        qk, v = qkv[:, :H + H_kv], qkv[:, H + H_kv:]  # queries and keys turn together: one rotation
        qk = qk * cos + torch.cat([-qk[..., half:], qk[..., :half]], dim=-1) * sin  # `llama.rotate_half`
        q = qk[:, :H]
        keys[:, :, pos:pos + T] = qk[:, H:]  # the cache write, in place
        values[:, :, pos:pos + T] = v
        k, v = keys[:, :, :pos + T], values[:, :, :pos + T]  # (B, H_kv, pos + T, D): views of the buffer
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=T > 1 and pos == 0, enable_gqa=gqa)
        x = x + F.linear(y.transpose(1, 2).reshape(B, T, C), w.proj)
        gate, up = F.linear(_rms_norm(x, w.norm_2, eps), w.gate_up).chunk(2, dim=-1)
        x = x + F.linear(F.silu(gate) * up, w.down)
    return F.linear(_rms_norm(x[:, -1], model.norm.weight, model.norm.eps), head)  # (B, vocab_size)
