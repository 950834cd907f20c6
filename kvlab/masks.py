"""Attention masks, and attention written out with one: what `TinyGPT` needs beside PyTorch's fused attention.

`causal_mask` (chapter 03) lets new queries that follow cached keys see the whole past; `attention` (chapters 02
and 03) is softmax(q kᵀ / √d) v spelled out, for the legacy path and the chapters to compare with the fused
kernel; `padding_mask` (chapter 10) lets rows of different lengths share one batch. They live here, not in
`kvlab.model`, so that the model file reads top to bottom as the model; the model imports the two masks it uses.
"""

from __future__ import annotations

import math

import torch

__all__ = ["causal_mask", "attention", "padding_mask"]


# --- chapters 02 and 03: the causal mask, with and without a past ---

def causal_mask(n_queries: int, n_keys: int, device: torch.device | None = None) -> torch.Tensor:
    """(n_queries, n_keys) bool mask, True where a query may look: the queries are the *last* n_queries positions.

    Without a cache n_queries == n_keys and this is the usual lower triangle. With a cache the new tokens sit after
    n_keys - n_queries cached ones, so every query sees the whole past plus the new tokens up to itself.
    """
    past = n_keys - n_queries
    return torch.ones(n_queries, n_keys, dtype=torch.bool, device=device).tril(diagonal=past)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q kᵀ / √d) v with a causal mask, written out; the model uses PyTorch's fused version of the same."""
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])  # (B, H, T_new, T_all)
    scores = scores.masked_fill(~causal_mask(q.shape[-2], k.shape[-2], q.device), float("-inf"))
    return scores.softmax(dim=-1) @ v  # (B, H, T_new, D)


# --- chapter 10: rows of different lengths in one batch ---

def padding_mask(attention_mask: torch.Tensor, n_new: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions (B, n_new) and attention mask (B, 1, n_new, S) for rows padded to one length (chapter 10).

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
