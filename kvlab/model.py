"""TinyGPT: GPT-2's architecture, small enough to read in one sitting, with an optional KV cache.

Read top to bottom: `GPTConfig`, `CausalSelfAttention` (where the cache lives), `MLP`, `Block`, `TinyGPT`, then
`conv1d_layout`, a CPU speed-up that changes no number. The attention masks come from `kvlab.masks`.
The architecture is exactly GPT-2's (learned positions, pre-LayerNorm with eps 1e-5, biases in every linear layer,
GELU with the tanh approximation, LM head tied to the token embedding), so its weights map one-to-one onto
Hugging Face's ``GPT2LMHeadModel``. One addition: ``n_kv_head < n_head`` gives grouped-query attention.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .cache import Cache
from .checks import check_int, check_tensor
from .masks import causal_mask, padding_mask  # chapters 03 and 10; re-exported: `kvlab.model.causal_mask` works

__all__ = ["GPTConfig", "CausalSelfAttention", "MLP", "Block", "TinyGPT", "feeding", "conv1d_layout"]


class _SameAsNHead(int):
    """The `n_kv_head` of a config that gave none: equal to n_head, and marked as derived, so that
    ``dataclasses.replace(config, n_head=8)`` (which passes it back in) derives it again instead of keeping the old
    count and silently making a grouped-query model. Copied and saved as a plain int."""

    def __reduce__(self):
        return int, (int(self),)


@dataclass(frozen=True)
class GPTConfig:
    """The sizes that define a model. Names are used the same way everywhere in kvlab (also in `kvlab.memory`).

    Frozen: a model's layers are built from these sizes, so changing one afterwards (``config.n_head = 8``) would
    describe another model than the one built; make a new config with ``dataclasses.replace(config, n_head=8)``.
    """

    vocab_size: int = 64
    n_layer: int = 4
    n_head: int = 4
    d_model: int = 128
    max_seq_len: int = 256
    n_kv_head: int | None = None  # None: one K/V head per query head (multi-head); 1: multi-query

    def __post_init__(self) -> None:
        for name in ("vocab_size", "n_layer", "n_head", "d_model", "max_seq_len"):
            object.__setattr__(self, name, check_int(name, getattr(self, name), minimum=1))  # a plain int
        if self.n_kv_head is None or isinstance(self.n_kv_head, _SameAsNHead):  # not given: as many as n_head
            object.__setattr__(self, "n_kv_head", _SameAsNHead(self.n_head))
        else:
            object.__setattr__(self, "n_kv_head", check_int("n_kv_head", self.n_kv_head, minimum=1))
        if self.d_model % self.n_head:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by n_head ({self.n_head})")
        if self.n_head % self.n_kv_head:
            raise ValueError(f"n_head ({self.n_head}) must be divisible by n_kv_head ({self.n_kv_head})")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head


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
        conv1d_layout(self)  # faster decode steps on a CPU; values unchanged (see the function)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        """GPT-2's initialisation: N(0, 0.02) weights, zero biases."""
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear):
            nn.init.zeros_(module.bias)

    def forward(self, idx: torch.Tensor, cache: Cache | None = None,
                attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Token ids (B, T) -> next-token logits (B, T, vocab_size).

        With a cache, `idx` holds only the tokens the cache has not seen; they are placed after the cached ones.
        The same call does prefill (T > 1) and decode (T = 1). `attention_mask` (B, cached + T), 1 for real tokens
        and 0 for padding (Hugging Face's convention), lets rows of different lengths share a batch (chapter 10).

        A decode loop calls this once per token, so its checks cost O(1) (types and lengths, as nanoGPT's one
        assert): none reads every id. A bad id still gets a clear error, from the embedding lookup (`_embed`).
        """
        past = cache.get_seq_length() if cache is not None else 0
        self._check_input(idx, past, attention_mask)
        if attention_mask is None:
            positions, mask = torch.arange(past, past + idx.shape[1], device=idx.device), None
        else:  # padded rows: per-row positions, and a mask that hides the padding
            positions, mask = padding_mask(attention_mask, idx.shape[1])
        x = self._embed(idx) + self.wpe(positions)  # (B, T, C)
        with feeding(cache, idx, past, len(self.blocks)):  # records the ids; a cut-off forward leaves no half cache
            for block in self.blocks:
                x = block(x, cache, mask)
        return F.linear(self.ln_f(x), self.wte.weight)  # tied LM head: (B, T, vocab_size)

    def _embed(self, idx: torch.Tensor) -> torch.Tensor:
        """Token embeddings (B, T, C), with the lookup's own range check turned into an error that names the id.

        On a CPU the lookup raises IndexError for an id outside the vocabulary, so the ids are read only then.
        On a GPU a bad id is a device-side assert that ends the process, so there they are read first, every call.
        """
        if not idx.is_cpu:
            self._check_token_ids(idx)
        try:
            return self.wte(idx)
        except IndexError:
            self._check_token_ids(idx)  # names the bad id
            raise

    def _check_input(self, idx: torch.Tensor, past: int, attention_mask: torch.Tensor | None = None, *,
                     token_ids: bool = False) -> None:
        """Clear errors for what PyTorch would report cryptically (or not at all); O(1) unless `token_ids`."""
        check_tensor("idx", idx, dim=2, dtypes=(torch.int64, torch.int32),
                     what="a (batch, seq_len) tensor of token ids")
        if idx.numel() == 0:
            raise ValueError(f"idx must hold at least one row and one token, got shape {tuple(idx.shape)}")
        if past + idx.shape[1] > self.config.max_seq_len:
            raise ValueError(f"sequence of {past + idx.shape[1]} tokens ({past} cached + {idx.shape[1]} new) "
                             f"exceeds max_seq_len={self.config.max_seq_len}")
        if token_ids:
            self._check_token_ids(idx)
        if attention_mask is not None:  # chapter 10's padded batches
            if not isinstance(attention_mask, torch.Tensor):  # the type's name only: the mask may be long
                raise TypeError(f"attention_mask must be a torch.Tensor of 1s and 0s, "
                                f"got {type(attention_mask).__name__}")
            expected = (idx.shape[0], past + idx.shape[1])
            if tuple(attention_mask.shape) != expected:
                raise ValueError(f"attention_mask must have shape (batch, cached + new) = {expected}, "
                                 f"got {tuple(attention_mask.shape)}")
            if not bool(((attention_mask == 0) | (attention_mask == 1)).all()):
                raise ValueError("attention_mask must hold only 1 (real token) and 0 (padding)")

    def _check_token_ids(self, idx: torch.Tensor) -> None:
        """Every id in 0..vocab_size-1: one pass over `idx`, so it runs where ids enter, not on every decode step."""
        low, high = int(idx.min()), int(idx.max())
        if low < 0 or high >= self.config.vocab_size:
            raise ValueError(f"token id {low if low < 0 else high} in idx is out of range: "
                             f"ids must be in 0..{self.config.vocab_size - 1}")

    @property
    def n_params(self) -> int:
        """Parameters, counting the tied embedding once."""
        return sum(p.numel() for p in self.parameters())


@contextlib.contextmanager
def feeding(cache: Cache | None, idx: torch.Tensor, past: int, n_layer: int) -> Iterator[None]:
    """Wrap the layers' cache updates of one forward that feeds `idx` after `past` cached tokens.

    On success the cache records the ids it now holds (`Cache.record_fed`), so `generate` can check that a reused
    cache continues the prompt, whoever filled it. On any exception, Ctrl-C included, a half-written cache is
    reset (`_drop_half_written`). Every kvlab model (TinyGPT, Llama) runs its layers inside this one wrapper.
    """
    if cache is None:
        yield
        return
    try:
        yield
    except BaseException as error:  # Ctrl-C too
        _drop_half_written(cache, past, n_layer, error)
        raise
    cache.record_fed(idx, past)  # which tokens it now holds


def _drop_half_written(cache: Cache, past: int, n_layer: int, error: BaseException) -> None:
    """Reset `cache` when an exception may have left it half-written, so no later call continues from it.

    An exception between two layers' updates leaves some layers holding the new tokens and the others not (lengths
    8, 8, 7, 7), and a KeyboardInterrupt can even land inside one update (keys stored, values not). Rolling back is
    not possible for every cache (an evicting cache has already dropped tokens, a quantised one merged them into
    groups), so every cache gets the one remedy that is always right: reset, and the next call recomputes the prompt
    (time lost, never correctness). A refused update (a ValueError or TypeError raised before anything is stored,
    which every kvlab cache guarantees) leaves every layer at `past`: that cache is kept as it was.
    """
    if not isinstance(error, Exception) or any(cache.get_seq_length(i) != past for i in range(n_layer)):
        cache.reset()


# --- the weights' layout in memory: a CPU speed-up that changes no number ---

def conv1d_layout(model: nn.Module) -> nn.Module:
    """Lay out every Linear weight of `model` in memory as its transpose, the way GPT-2's Conv1D stores it.

    Why: a decode step multiplies one vector by every weight matrix, and CPU BLAS streams this (in, out) layout
    faster than PyTorch's default (out, in) for that matrix-vector product (measured: benchmarks/README.md,
    figure 2b). Each weight keeps its (out, in) shape and its values, so every result is unchanged. Weights loaded
    later with ``load_state_dict`` are copied into these tensors and keep the layout (so does the hello model).
    """
    for module in model.modules():
        if isinstance(module, nn.Linear):
            module.weight.data = module.weight.data.t().contiguous().t()  # same (out, in) tensor, (in, out) in memory
    return model
