"""A character-level tokenizer: one token per character, so every step of generation is visible."""

from __future__ import annotations

import operator
from collections.abc import Iterable

import torch

from .checks import _shown, check_tensor, check_type

__all__ = ["CharTokenizer"]

_IDS = "a list of int token ids or a 1-D integer tensor"  # what decode takes, in words


class CharTokenizer:
    """Maps each character of a fixed alphabet to an id (its index in `chars`) and back."""

    def __init__(self, chars: str) -> None:
        check_type("chars", chars, str, "a string")
        if not chars or len(set(chars)) != len(chars):
            raise ValueError(f"chars must be a non-empty string of distinct characters, got {chars!r}")
        self.chars = chars
        self.stoi = {ch: i for i, ch in enumerate(chars)}

    @classmethod
    def from_text(cls, text: str) -> "CharTokenizer":
        """The alphabet of a corpus, sorted so that the ids do not depend on the order of the text."""
        check_type("text", text, str, "a string (the corpus)")
        return cls("".join(sorted(set(text))))

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> list[int]:
        """Text to token ids; a character outside the alphabet is an error, not a silently dropped token."""
        check_type("text", text, str, "a string")
        unknown = sorted(set(text) - self.stoi.keys())
        if unknown:
            raise ValueError(f"characters {''.join(unknown)!r} are not in the vocabulary {self.chars!r}")
        return [self.stoi[ch] for ch in text]

    def decode(self, ids: Iterable[int] | torch.Tensor) -> str:
        """Token ids (a list or a 1-D tensor) back to text. A batch (B, T) is B texts: decode each row."""
        ids = self._id_list(ids)
        bad = [i for i in ids if not 0 <= i < len(self.chars)]
        if bad:
            raise ValueError(f"token id {bad[0]} is out of range: ids must be in 0..{len(self.chars) - 1}")
        return "".join(self.chars[i] for i in ids)

    @staticmethod
    def _id_list(ids: object) -> list[int]:
        """`ids` as a list of ints, or an error naming what came instead (a batch, a string, floats)."""
        if isinstance(ids, torch.Tensor):
            if ids.dim() == 2:
                raise ValueError(f"ids must be {_IDS}, got a tensor of shape {tuple(ids.shape)}; for a batch, "
                                 f"decode each row: [tokenizer.decode(row) for row in ids]")
            check_tensor("ids", ids, dim=1, what=_IDS)
            if ids.dtype.is_floating_point or ids.dtype.is_complex or ids.dtype == torch.bool:
                raise TypeError(f"ids must be {_IDS}, got dtype {ids.dtype}")
            return ids.tolist()
        if isinstance(ids, (str, bytes)) or not isinstance(ids, Iterable):
            hint = " (to turn text into ids, use encode)" if isinstance(ids, str) else ""
            raise TypeError(f"ids must be {_IDS}, got {_shown(ids)}{hint}")
        checked = []
        for position, token in enumerate(ids):  # ints, numpy ints and 0-d integer tensors (`predicted[t]`) index
            try:
                checked.append(operator.index(token))
            except (TypeError, RuntimeError):
                token_index_failed = True
            else:
                token_index_failed = isinstance(token, bool)  # True is an int to Python, not a token id
            if token_index_failed:
                row = isinstance(token, (list, tuple)) or (isinstance(token, torch.Tensor) and token.dim() > 0)
                hint = " (for a batch, decode each row)" if row else ""
                raise TypeError(f"ids[{position}] must be an int token id, got {_shown(token)}{hint}")
        return checked

    def encode_batch(self, text: str) -> torch.Tensor:
        """One prompt as a (1, T) tensor, the shape the model and `generate` take."""
        return torch.tensor([self.encode(text)], dtype=torch.long)

    def __repr__(self) -> str:
        return f"CharTokenizer(vocab_size={self.vocab_size}, chars={self.chars!r})"
