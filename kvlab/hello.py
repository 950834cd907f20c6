"""The hello model: a tiny character-level GPT trained by this project (see `kvlab.train_hello`), shipped with kvlab."""

from __future__ import annotations

from pathlib import Path

import torch

from .model import GPTConfig, TinyGPT
from .tokenizer import CharTokenizer

__all__ = ["HELLO_CONFIG", "HELLO_WEIGHTS", "load_hello_model", "load_model"]

HELLO_CONFIG = dict(n_layer=4, n_head=4, d_model=64, max_seq_len=128)  # vocab_size comes from the corpus
HELLO_WEIGHTS = Path(__file__).parent / "data" / "hello_model.pt"


def load_model(path: str | Path, device: torch.device | str = "cpu") -> tuple[TinyGPT, CharTokenizer]:
    """A model saved by `kvlab.train_hello.save_model`, in eval mode, with its tokenizer."""
    checkpoint = torch.load(path, map_location=device, weights_only=True)  # tensors only: no code is unpickled
    model = TinyGPT(GPTConfig(**checkpoint["config"]))
    model.load_state_dict(checkpoint["state_dict"])
    return model.to(device).eval(), CharTokenizer(checkpoint["chars"])


def load_hello_model(device: torch.device | str = "cpu") -> tuple[TinyGPT, CharTokenizer]:
    """The shipped hello model and its tokenizer: greedy generation turns "h" into "hello"."""
    return load_model(HELLO_WEIGHTS, device)
