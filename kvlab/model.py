"""TinyGPT: GPT-2's architecture, small enough to read in one sitting, with an optional KV cache.

Read top to bottom: `GPTConfig`, `CausalSelfAttention` (where the cache lives), `MLP`, `Block`, `TinyGPT`.
The architecture is exactly GPT-2's (learned positions, pre-LayerNorm with eps 1e-5, biases in every linear layer,
GELU with the tanh approximation, LM head tied to the token embedding), so its weights map one-to-one onto
Hugging Face's ``GPT2LMHeadModel``. One addition: ``n_kv_head < n_head`` gives grouped-query attention.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .cache import Cache

__all__ = ["GPTConfig", "CausalSelfAttention", "MLP", "Block", "TinyGPT", "attention", "causal_mask",
           "padding_mask"]


@dataclass
class GPTConfig:
    """The sizes that define a model. Names are used the same way everywhere in kvlab (also in `kvlab.memory`)."""

    vocab_size: int = 64
    n_layer: int = 4
    n_head: int = 4
    d_model: int = 128
    max_seq_len: int = 256
    n_kv_head: int | None = None  # None: one K/V head per query head (multi-head); 1: multi-query

    def __post_init__(self) -> None:
        if self.n_kv_head is None:
            self.n_kv_head = self.n_head
        for name in ("vocab_size", "n_layer", "n_head", "d_model", "max_seq_len", "n_kv_head"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.d_model % self.n_head:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by n_head ({self.n_head})")
        if self.n_head % self.n_kv_head:
            raise ValueError(f"n_head ({self.n_head}) must be divisible by n_kv_head ({self.n_kv_head})")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head


def causal_mask(n_queries: int, n_keys: int, device: torch.device | None = None) -> torch.Tensor:
    """(n_queries, n_keys) bool mask, True where a query may look: the queries are the *last* n_queries positions.

    Without a cache n_queries == n_keys and this is the usual lower triangle. With a cache the new tokens sit after
    n_keys - n_queries cached ones, so every query sees the whole past plus the new tokens up to itself.
    """
    past = n_keys - n_queries
    return torch.ones(n_queries, n_keys, dtype=torch.bool, device=device).tril(diagonal=past)


def padding_mask(attention_mask: torch.Tensor, n_new: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions (B, n_new) and attention mask (B, 1, n_new, S) for rows padded to one length (chapter 9).

    `attention_mask` (B, S) covers all S = cached + new tokens: 1 for a real token, 0 for padding. A token's
    position counts only the real tokens before it, and a query sees its causal past minus the padding, so each
    row computes what it would compute alone. A padding query also sees itself: with left padding it has no real
    key at all, and a softmax over nothing but -inf is NaN, which would reach the real tokens as 0 · NaN = NaN.
    """
    real = attention_mask.bool()  # (B, S)
    S = real.shape[1]
    positions = (real.long().cumsum(dim=1) - 1).clamp(min=0)[:, S - n_new:]  # (B, T): padding does not count
    itself = torch.arange(S, device=real.device) == torch.arange(S - n_new, S, device=real.device)[:, None]
    mask = (causal_mask(n_new, S, real.device) & real[:, None, :]) | itself  # (B, T, S)
    return positions, mask[:, None]  # (B, 1, T, S): the same for every head


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q kᵀ / √d) v with a causal mask, written out; the model uses PyTorch's fused version of the same."""
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])  # (B, H, T_new, T_all)
    scores = scores.masked_fill(~causal_mask(q.shape[-2], k.shape[-2], q.device), float("-inf"))
    return scores.softmax(dim=-1) @ v  # (B, H, T_new, D)


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention. The one line that makes generation fast is ``cache.update``."""

    def __init__(self, config: GPTConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.n_head, self.n_kv_head, self.head_dim = config.n_head, config.n_kv_head, config.head_dim
        kv_dim = config.n_kv_head * config.head_dim
        self.qkv = nn.Linear(config.d_model, config.d_model + 2 * kv_dim)  # q, k and v in one matmul
        self.proj = nn.Linear(config.d_model, config.d_model)
        self.split_sizes = (config.d_model, kv_dim, kv_dim)

    def forward(self, x: torch.Tensor, cache: Cache | None = None, mask: torch.Tensor | None = None) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(self.split_sizes, dim=-1)
        q = q.view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, H, T, D)
        k = k.view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)  # (B, H_kv, T, D)
        v = v.view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)  # (B, H_kv, T, D)
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx)  # the KV cache: (B, H_kv, T_past + T, D)
        if self.n_kv_head != self.n_head:  # grouped-query: each K/V head serves n_head // n_kv_head query heads
            k = k.repeat_interleave(self.n_head // self.n_kv_head, dim=1)
            v = v.repeat_interleave(self.n_head // self.n_kv_head, dim=1)
        y = self._attend(q, k, v, mask)  # (B, H, T, D)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))

    @staticmethod
    def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Fused attention; the mask is only needed when several new queries meet cached keys, or rows are padded."""
        T, S = q.shape[-2], k.shape[-2]
        if mask is not None:  # a padded batch: `padding_mask` built it, (B, 1, T, S)
            if mask.shape[-1] != S:  # e.g. an evicting cache returned fewer keys than the mask's tokens
                raise ValueError(f"attention_mask covers {mask.shape[-1]} tokens but the cache returned {S} keys: "
                                 "padded batches need a cache that keeps every token")
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        if T == 1:  # decode: the one new token may look at everything
            return F.scaled_dot_product_attention(q, k, v)
        if T == S:  # no past: the ordinary lower-triangular mask
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=causal_mask(T, S, q.device))


class MLP(nn.Module):
    """Position-wise feed-forward network: d_model -> 4·d_model -> d_model with GPT-2's tanh GELU."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.fc = nn.Linear(config.d_model, 4 * config.d_model)
        self.proj = nn.Linear(4 * config.d_model, config.d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(F.gelu(self.fc(x), approximate="tanh"))


class Block(nn.Module):
    """Pre-LayerNorm transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, config: GPTConfig, layer_idx: int) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.d_model, eps=1e-5)
        self.attn = CausalSelfAttention(config, layer_idx)
        self.ln_2 = nn.LayerNorm(config.d_model, eps=1e-5)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, cache: Cache | None = None, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), cache, mask)
        return x + self.mlp(self.ln_2(x))


class TinyGPT(nn.Module):
    """A GPT-2 language model. ``model(idx)`` recomputes every position; ``model(idx, cache)`` only the new ones."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.d_model)  # token embedding (also the LM head)
        self.wpe = nn.Embedding(config.max_seq_len, config.d_model)  # learned position embedding
        self.blocks = nn.ModuleList(Block(config, i) for i in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.d_model, eps=1e-5)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        """GPT-2's initialisation: N(0, 0.02) weights, zero biases.

        Each Linear weight keeps its (out, in) shape but is laid out in memory as its transpose, the way GPT-2's
        original Conv1D stores it: a decode step multiplies one vector by every matrix, and CPU BLAS streams this
        layout faster (benchmarks/README.md, figure 2b). Values, and so every result, are unchanged.
        """
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear):
            nn.init.zeros_(module.bias)
            module.weight.data = module.weight.data.t().contiguous().t()  # same (out, in) tensor, (in, out) in memory

    def forward(self, idx: torch.Tensor, cache: Cache | None = None,
                attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Token ids (B, T) -> next-token logits (B, T, vocab_size).

        With a cache, `idx` holds only the tokens the cache has not seen; they are placed after the cached ones.
        The same call does prefill (T > 1) and decode (T = 1). `attention_mask` (B, cached + T), 1 for real tokens
        and 0 for padding (Hugging Face's convention), lets rows of different lengths share a batch (chapter 9).
        """
        past = cache.get_seq_length() if cache is not None else 0
        self._check_input(idx, past, attention_mask)
        if attention_mask is None:
            positions, mask = torch.arange(past, past + idx.shape[1], device=idx.device), None
        else:  # padded rows: per-row positions, and a mask that hides the padding
            positions, mask = padding_mask(attention_mask, idx.shape[1])
        x = self.wte(idx) + self.wpe(positions)  # (B, T, C)
        for block in self.blocks:
            x = block(x, cache, mask)
        return F.linear(self.ln_f(x), self.wte.weight)  # tied LM head: (B, T, vocab_size)

    def _check_input(self, idx: torch.Tensor, past: int, attention_mask: torch.Tensor | None = None) -> None:
        """Clear errors for the mistakes an embedding lookup would report cryptically (or not at all)."""
        if not isinstance(idx, torch.Tensor):
            raise TypeError(f"idx must be a torch.Tensor of token ids, got {type(idx).__name__}")
        if idx.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"idx must hold integer token ids (torch.long), got dtype {idx.dtype}")
        if idx.dim() != 2 or idx.shape[0] == 0 or idx.shape[1] == 0:
            raise ValueError(f"idx must have shape (batch, seq_len) with batch >= 1 and seq_len >= 1, "
                             f"got {tuple(idx.shape)}")
        if past + idx.shape[1] > self.config.max_seq_len:
            raise ValueError(f"sequence of {past + idx.shape[1]} tokens ({past} cached + {idx.shape[1]} new) "
                             f"exceeds max_seq_len={self.config.max_seq_len}")
        low, high = int(idx.min()), int(idx.max())
        if low < 0 or high >= self.config.vocab_size:
            bad = low if low < 0 else high
            raise ValueError(f"token id {bad} is out of range: ids must be in 0..{self.config.vocab_size - 1}")
        if attention_mask is not None:
            if not isinstance(attention_mask, torch.Tensor):
                raise TypeError(f"attention_mask must be a torch.Tensor of 1s and 0s, "
                                f"got {type(attention_mask).__name__}")
            expected = (idx.shape[0], past + idx.shape[1])
            if tuple(attention_mask.shape) != expected:
                raise ValueError(f"attention_mask must have shape (batch, cached + new) = {expected}, "
                                 f"got {tuple(attention_mask.shape)}")
            if not bool(((attention_mask == 0) | (attention_mask == 1)).all()):
                raise ValueError("attention_mask must hold only 1 (real token) and 0 (padding)")

    @property
    def n_params(self) -> int:
        """Parameters, counting the tied embedding once."""
        return sum(p.numel() for p in self.parameters())
