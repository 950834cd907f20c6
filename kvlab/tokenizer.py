"""A character-level tokenizer: one token per character, so every step of generation is visible."""

from __future__ import annotations

import torch

from .checks import check_type

__all__ = ["CharTokenizer"]


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
        return cls("".join(sorted(set(text))))

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> list[int]:
        unknown = sorted(set(text) - self.stoi.keys())
        if unknown:
            raise ValueError(f"characters {''.join(unknown)!r} are not in the vocabulary {self.chars!r}")
        return [self.stoi[ch] for ch in text]

    def decode(self, ids) -> str:
        """Token ids (a list or a 1-D tensor) back to text."""
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        bad = [i for i in ids if not 0 <= i < len(self.chars)]
        if bad:
            raise ValueError(f"token id {bad[0]} is out of range: ids must be in 0..{len(self.chars) - 1}")
        return "".join(self.chars[i] for i in ids)

    def encode_batch(self, text: str) -> torch.Tensor:
        """One prompt as a (1, T) tensor, the shape the model and `generate` take."""
        return torch.tensor([self.encode(text)], dtype=torch.long)

    def __repr__(self) -> str:
        return f"CharTokenizer(vocab_size={self.vocab_size}, chars={self.chars!r})"
