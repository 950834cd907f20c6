"""Llama: the architecture of most open language models (Llama 2 and 3, Mistral, SmolLM2), with kvlab's KV cache.

Read top to bottom: `LlamaConfig`, `RotaryEmbedding`, `RMSNorm`, `LlamaAttention` (where the cache lives),
`SwiGLU`, `LlamaBlock`, `Llama`. It is TinyGPT (`kvlab.model`) with four changes, each found in the Llama papers
(Touvron et al. 2023) and in transformers' ``LlamaForCausalLM``, whose numbers this model reproduces:

- **RMSNorm** instead of LayerNorm: ``x / sqrt(mean(x²) + eps) · weight``, no mean subtracted, no bias.
- **Rotary position embeddings** (RoPE, Su et al. 2021) instead of learned positions: before attention, each
  query and key is rotated by angles proportional to its position, so ``q · k`` depends on how far apart two
  tokens are, not on where they stand. Convention: transformers' ("rotate_half": dimension i turns together with
  dimension i + D/2), not llama.cpp's (pairs 2i, 2i + 1); `kvlab.smollm2` undoes the GGUF file's reordering.
- a **SwiGLU** MLP: ``down(silu(gate(x)) · up(x))`` instead of GELU.
- **no biases** anywhere.

Grouped-query attention (Ainslie et al. 2023: fewer K/V heads than query heads, so a smaller cache) is not a change:
TinyGPT has it too (``n_kv_head``); most recent Llama-family models use it (Llama 2 only at 70B).

The cache API is TinyGPT's: attention calls ``cache.update(k, v, layer_idx)`` and nothing else, so every kvlab
cache works here. One question is new with rotary positions: are the cached keys rotated already? By default yes,
at their position in the text (what transformers does). A cache that evicts tokens and renumbers the rest, as
StreamingLLM does (Xiao et al. 2024), says so with the class attribute ``stores_unrotated_keys = True``: it then
gets keys before rotation, and every step the model rotates the keys it returns at their slot in the cache
(0 .. n-1) and the new query at its slot, so positions never run past what the model saw in training.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .cache import Cache
from .checks import check_int, check_number
from .masks import causal_mask, padding_mask
from .model import TinyGPT, feeding

__all__ = ["LlamaConfig", "rotate_half", "RotaryEmbedding", "RMSNorm", "LlamaAttention", "SwiGLU", "LlamaBlock",
           "Llama"]


@dataclass
class LlamaConfig:
    """The sizes of a Llama model; the defaults are SmolLM2-135M's. Names as in `GPTConfig` (and `kvlab.memory`)."""

    vocab_size: int = 49152
    n_layer: int = 30
    n_head: int = 9
    d_model: int = 576
    max_seq_len: int = 8192
    n_kv_head: int | None = 3  # None: one K/V head per query head
    d_ff: int = 1536  # the MLP's hidden width
    rope_theta: float = 100_000.0  # the base of the rotation frequencies
    rms_eps: float = 1e-5

    def __post_init__(self) -> None:
        if self.n_kv_head is None:
            self.n_kv_head = self.n_head
        for name in ("vocab_size", "n_layer", "n_head", "d_model", "max_seq_len", "n_kv_head", "d_ff"):
            setattr(self, name, check_int(name, getattr(self, name), minimum=1))
        self.rope_theta = check_number("rope_theta", self.rope_theta, minimum=1, inclusive=False)
        self.rms_eps = check_number("rms_eps", self.rms_eps, minimum=0, inclusive=False)
        if self.d_model % self.n_head or (self.d_model // self.n_head) % 2:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by n_head ({self.n_head}) into an even "
                             "head_dim: rotary embeddings turn dimensions in pairs")
        if self.n_head % self.n_kv_head:
            raise ValueError(f"n_head ({self.n_head}) must be divisible by n_kv_head ({self.n_kv_head})")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """(x1, x2) -> (-x2, x1) on the two halves of the last dim: with `RotaryEmbedding`'s cos and sin, a rotation."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


class RotaryEmbedding(nn.Module):
    """The cos and sin of every position's rotation angles, computed once for `max_seq_len` positions.

    Dimension pair (i, i + D/2) turns by ``position · theta^(-2i/D)``: fast for the first pairs, slow for the last,
    so near and far distances both leave a trace in ``q · k``. Kept in float32, as transformers does.
    """

    def __init__(self, head_dim: int, max_seq_len: int, theta: float) -> None:
        super().__init__()
        inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim)  # (D/2,)
        angles = torch.outer(torch.arange(max_seq_len).float(), inv_freq)  # (T_max, D/2)
        angles = torch.cat([angles, angles], dim=-1)  # (T_max, D): dimensions i and i + D/2 share an angle
        self.register_buffer("cos", angles.cos(), persistent=False)  # derived, not weights: not saved
        self.register_buffer("sin", angles.sin(), persistent=False)

    def forward(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """`x` (B, H, T, D) rotated to `positions`: (T,) shared by the batch, or (B, T) per row (padded rows)."""
        cos, sin = self.cos[positions], self.sin[positions]  # (T, D) or (B, T, D)
        if positions.dim() == 2:
            cos, sin = cos[:, None], sin[:, None]  # (B, 1, T, D): the same for every head
        return x * cos + rotate_half(x) * sin


class RMSNorm(nn.Module):
    """Root-mean-square norm (Zhang & Sennrich 2019): ``x / sqrt(mean(x²) + eps) · weight``, LayerNorm without
    subtracting the mean and without a bias. Written out in transformers' order of operations, so the float32
    numbers are its numbers."""

    def __init__(self, d_model: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d_model))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + self.eps))


class LlamaAttention(nn.Module):
    """Grouped-query causal self-attention with rotary positions; the cache line is ``cache.update``."""

    def __init__(self, config: LlamaConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.n_head, self.n_kv_head, self.head_dim = config.n_head, config.n_kv_head, config.head_dim
        kv_dim = config.n_kv_head * config.head_dim
        self.qkv = nn.Linear(config.d_model, config.d_model + 2 * kv_dim, bias=False)  # q, k, v in one matmul
        self.proj = nn.Linear(config.d_model, config.d_model, bias=False)
        self.split_sizes = (config.d_model, kv_dim, kv_dim)  # the names TinyGPT's attention has (H2O reads them)

    def forward(self, x: torch.Tensor, rope: RotaryEmbedding, positions: torch.Tensor, cache: Cache | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        B, T, C = x.shape
        H, H_kv = self.n_head, self.n_kv_head
        qkv = self.qkv(x).view(B, T, H + 2 * H_kv, self.head_dim).transpose(1, 2)  # (B, H + 2·H_kv, T, D)
        q, k, v = qkv[:, :H], qkv[:, H:H + H_kv], qkv[:, H + H_kv:]  # (B, H, T, D), (B, H_kv, T, D) twice
        if cache is None or not getattr(cache, "stores_unrotated_keys", False):
            q.copy_(rope(q, positions))  # in place, so a hook on `qkv` (the H2O cache's) reads rotated queries
            k.copy_(rope(k, positions))  # rotated at their position in the text, then cached
            if cache is not None:
                k, v = cache.update(k, v, self.layer_idx)  # the KV cache: (B, H_kv, T_past + T, D)
        else:  # StreamingLLM: the cache holds unrotated keys; every key turns to its slot, the queries to theirs
            k, v = cache.update(k, v, self.layer_idx)  # (B, H_kv, S, D): what the cache holds, the new tokens last
            slots = torch.arange(k.shape[-2], device=x.device)
            q.copy_(rope(q, slots[-T:]))
            k = rope(k, slots)  # a new tensor: the cache keeps its keys unrotated
        y = self._attend(q, k, v, mask)  # (B, H, T, D)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))

    @staticmethod
    def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """TinyGPT's fused attention (masks included), with each K/V head serving H / H_kv query heads."""
        T, S = q.shape[-2], k.shape[-2]
        if mask is not None and mask.shape[-1] != S:
            raise ValueError(f"attention_mask covers {mask.shape[-1]} tokens but the cache returned {S} keys: "
                             "padded batches need a cache that keeps every token")
        gqa = q.shape[1] != k.shape[1]  # each K/V head serves H / H_kv query heads, without copying it H / H_kv times
        if mask is None and T > 1 and T == S:  # no past: the ordinary lower triangle
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
        if mask is None and T > 1:  # new tokens after cached ones: they are the last T of the S keys
            mask = causal_mask(T, S, q.device)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)


class SwiGLU(nn.Module):
    """Llama's MLP (Shazeer 2020): ``down(silu(gate(x)) · up(x))``; gate and up in one matmul."""

    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        self.gate_up = nn.Linear(config.d_model, 2 * config.d_ff, bias=False)
        self.down = nn.Linear(config.d_ff, config.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.down(F.silu(gate) * up)


class LlamaBlock(nn.Module):
    """Pre-norm block, as TinyGPT's, with RMSNorm: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, config: LlamaConfig, layer_idx: int) -> None:
        super().__init__()
        self.norm_1 = RMSNorm(config.d_model, eps=config.rms_eps)
        self.attn = LlamaAttention(config, layer_idx)
        self.norm_2 = RMSNorm(config.d_model, eps=config.rms_eps)
        self.mlp = SwiGLU(config)

    def forward(self, x: torch.Tensor, rope: RotaryEmbedding, positions: torch.Tensor, cache: Cache | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.norm_1(x), rope, positions, cache, mask)
        return x + self.mlp(self.norm_2(x))


class Llama(nn.Module):
    """A Llama language model with TinyGPT's interface: ``model(idx)``, ``model(idx, cache)``, `generate` works."""

    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.d_model)  # token embedding (also the LM head)
        self.rope = RotaryEmbedding(config.head_dim, config.max_seq_len, config.rope_theta)
        self.blocks = nn.ModuleList(LlamaBlock(config, i) for i in range(config.n_layer))
        self.norm = RMSNorm(config.d_model, eps=config.rms_eps)
        if not self.wte.weight.is_meta:  # random weights, for tests; `from_state_dict` builds empty, then loads
            for module in self.modules():
                if isinstance(module, (nn.Linear, nn.Embedding)):
                    nn.init.normal_(module.weight, mean=0.0, std=0.02)
        # No `conv1d_layout` here, unlike TinyGPT: with PyTorch's own weight layout every matmul runs the same BLAS
        # kernel as transformers' LlamaForCausalLM, so the logits are its logits to the last bit (tests/test_smollm2)

    def forward(self, idx: torch.Tensor, cache: Cache | None = None,
                attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Token ids (B, T) -> next-token logits (B, T, vocab_size), exactly as `TinyGPT.forward`.

        With a cache, `idx` holds only the new tokens; their positions follow ``cache.get_seq_length()``.
        `attention_mask` (B, cached + T) marks real tokens 1 and padding 0, for rows of different lengths.
        """
        past = cache.get_seq_length() if cache is not None else 0
        self._check_input(idx, past, attention_mask)
        if attention_mask is None:
            positions, mask = torch.arange(past, past + idx.shape[1], device=idx.device), None
        else:  # padded rows: per-row positions, and a mask that hides the padding
            positions, mask = padding_mask(attention_mask, idx.shape[1])
        x = self._embed(idx)  # (B, T, C): no position embedding, the rotations carry the positions
        with feeding(cache, idx, past, len(self.blocks)):  # as TinyGPT: records the ids, no half-written cache
            for block in self.blocks:
                x = block(x, self.rope, positions, cache, mask)
        return F.linear(self.norm(x), self.wte.weight)  # tied LM head: (B, T, vocab_size)

    @classmethod
    def from_state_dict(cls, config: LlamaConfig, state_dict: dict[str, torch.Tensor]) -> Llama:
        """A model holding trained weights, built without drawing random ones first (that alone takes seconds for
        135M parameters): the modules are made on the "meta" device, which allocates nothing, then take the tensors."""
        with torch.device("meta"):
            model = cls(config)
        model.load_state_dict(state_dict, strict=True, assign=True)
        model.rope = RotaryEmbedding(config.head_dim, config.max_seq_len, config.rope_theta)  # not in the state dict
        return model

    # TinyGPT's input checks read only `config` and `wte`: the same clear errors, from the same code
    _check_input = TinyGPT._check_input
    _check_token_ids = TinyGPT._check_token_ids
    _embed = TinyGPT._embed

    @property
    def n_params(self) -> int:
        """Parameters, counting the tied embedding once."""
        return sum(p.numel() for p in self.parameters())
