"""Code for the exercises where the learner writes a cache: a skeleton to fill in, and a cache with a bug to find.

A chapter shows these with `kvlab.notebook.show_source` (or imports them), the learner writes or fixes the code in a
cell of their own, and `kvlab.notebook.check_cache` runs it through the contract every kvlab cache passes. The worked
answers live in the solutions notebooks (solutions/03_building_the_cache.ipynb), not here, so importing kvlab does not
hand out the answer.

Design note. Both classes are written from scratch on `kvlab.Cache` (not on `DynamicCache`), so everything the model
relies on is in view: the four methods and `nbytes`. The bug in `BrokenCache` is a copy-paste slip on the decode path
only: the prompt's keys and values are stored correctly, so the first token generated is right and the text goes
wrong afterwards, which is what makes such bugs survive a quick look.
"""

from __future__ import annotations

import torch

from .cache import Cache

__all__ = ["SlidingWindowSkeleton", "BrokenCache"]


class SlidingWindowSkeleton(Cache):
    """Exercise: a cache that holds only the last `window` tokens of each layer. Fill in the four TODOs.

    A sliding window forgets (evicts) the oldest tokens once it holds `window`, so its memory stops growing; what
    that costs in quality is chapter 9's subject.

    Two rules the model relies on (check_cache tests both):
    - `update` returns the tokens held *and* the new ones, the new ones last; only then does it evict down to
      `window`, so a decode step attends to window + 1 tokens;
    - `get_seq_length` counts every token fed, evicted ones included: the model uses it as the next token's position.
    Check it with ``kvlab.notebook.check_cache(YourClass, window=8)``.
    """

    def __init__(self, window: int) -> None:
        self.window = window
        self.keys: list[torch.Tensor] = []  # per layer: (B, H_kv, T_held, D)
        self.values: list[torch.Tensor] = []
        self.seen: list[int] = []  # per layer: tokens fed so far

    def update(self, key: torch.Tensor, value: torch.Tensor, layer_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        # TODO 1: a layer's first call appends key, value and key.shape[2] to self.keys, self.values and
        #         self.seen; later calls concatenate along dim 2 (the token axis) and add key.shape[2] to
        #         self.seen[layer_idx].
        # TODO 2: remember what to return (everything held, new tokens included), then keep only the last
        #         self.window tokens in self.keys[layer_idx] and self.values[layer_idx], in every call (a prompt
        #         can be longer than the window).
        raise NotImplementedError("update: fill in TODO 1 and TODO 2")

    def get_seq_length(self, layer_idx: int = 0) -> int:
        # TODO 3: tokens fed to this layer so far (0 before its first call).
        raise NotImplementedError("get_seq_length: fill in TODO 3")

    def reorder_cache(self, beam_idx: torch.Tensor) -> None:
        """Beam search (chapter 3, section 5): each beam's K/V must follow its beam. Written for you."""
        self.reorder_rows(beam_idx)
        super().reorder_cache(beam_idx)  # kvlab.Cache moves its record of the fed tokens along

    def reorder_rows(self, beam_idx: torch.Tensor) -> None:
        # TODO 4: row i of every layer's keys and values becomes row beam_idx[i]: tensor.index_select(0, beam_idx).
        raise NotImplementedError("reorder_rows: fill in TODO 4")

    def reset(self) -> None:
        self.keys, self.values, self.seen = [], [], []

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.keys + self.values)


class BrokenCache(Cache):
    """Exercise: this cache has one bug. Generation with it runs, but the text is not the one without a cache.

    Find it (kvlab.notebook.check_cache(BrokenCache) says which check fails), fix it in a copy, and check the copy.
    """

    def __init__(self) -> None:
        self.keys: list[torch.Tensor] = []  # one (B, H_kv, T, D) tensor per layer
        self.values: list[torch.Tensor] = []

    def update(self, key: torch.Tensor, value: torch.Tensor, layer_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        if layer_idx == len(self.keys):  # this layer's first tokens
            self.keys.append(key)
            self.values.append(value)
        else:
            self.keys[layer_idx] = torch.cat([self.keys[layer_idx], key], dim=2)
            self.values[layer_idx] = torch.cat([self.values[layer_idx], key], dim=2)
        return self.keys[layer_idx], self.values[layer_idx]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.keys[layer_idx].shape[2] if layer_idx < len(self.keys) else 0

    def reorder_cache(self, beam_idx: torch.Tensor) -> None:
        self.keys = [k.index_select(0, beam_idx) for k in self.keys]
        self.values = [v.index_select(0, beam_idx) for v in self.values]
        super().reorder_cache(beam_idx)  # moves kvlab's record of the fed tokens along (generate checks it)

    def reset(self) -> None:
        self.keys, self.values = [], []

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.keys + self.values)
