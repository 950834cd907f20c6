"""The hello model: a tiny character-level GPT trained by this project (see `kvlab.train_hello`), shipped with kvlab."""

from __future__ import annotations

from pathlib import Path

import torch

from .checks import _shown, check_int, check_one_of, check_type
from .model import GPTConfig, TinyGPT
from .tokenizer import CharTokenizer

__all__ = ["HELLO_CONFIG", "HELLO_WEIGHTS", "load_hello_model", "load_model",
           "HELLO_KV_HEAD_WEIGHTS", "load_kv_head_model"]  # chapter 08

HELLO_CONFIG = dict(n_layer=4, n_head=4, d_model=64, max_seq_len=128)  # vocab_size comes from the corpus
HELLO_WEIGHTS = Path(__file__).parent / "data" / "hello_model.pt"


_DEVICES = "a torch.device or a device string such as 'cpu', 'cuda', 'cuda:0' or 'mps'"


def _checked_device(device: torch.device | str) -> torch.device:
    """`device` as a torch.device that this machine has, or an error naming it and what is allowed.

    Without this check ``torch.load(map_location="gpu")`` fails deep in its storage code, and an unavailable
    device ("cuda" on a CPU-only build, "cuda:3" on a one-GPU machine) as late as the first tensor moved there.
    """
    if not isinstance(device, (str, torch.device)):
        raise TypeError(f"device must be {_DEVICES}, got {_shown(device)}")
    try:
        parsed = torch.device(device)
    except RuntimeError:
        raise ValueError(f"device must be {_DEVICES}, got {device!r}") from None
    try:
        torch.empty(0, device=parsed)  # the cheapest question torch answers for every kind of device
    except (RuntimeError, AssertionError, NotImplementedError) as error:
        reason = str(error).split(". ")[0][:100] or type(error).__name__  # torch's first sentence
        raise ValueError(f"device {str(parsed)!r} is not available on this machine ({reason}); use 'cpu'") from None
    return parsed


def load_model(path: str | Path, device: torch.device | str = "cpu") -> tuple[TinyGPT, CharTokenizer]:
    """A model saved by `kvlab.train_hello.save_model`, in eval mode, with its tokenizer."""
    check_type("path", path, (str, Path), "a file path (str or pathlib.Path)")
    device = _checked_device(device)
    # tensors only: no code is unpickled; loaded on the CPU, then moved (torch.load maps "cpu:0" to nothing)
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    model = TinyGPT(GPTConfig(**checkpoint["config"]))
    model.load_state_dict(checkpoint["state_dict"])
    return model.to(device).eval(), CharTokenizer(checkpoint["chars"])


def load_hello_model(device: torch.device | str = "cpu") -> tuple[TinyGPT, CharTokenizer]:
    """The shipped hello model and its tokenizer: greedy generation turns "h" into "hello"."""
    return load_model(HELLO_WEIGHTS, device)


# --- chapter 08: the hello recipe with fewer K/V heads ---

HELLO_KV_HEAD_WEIGHTS = Path(__file__).parent / "data" / "hello_kv_heads.pt"  # n_kv_head = 2 and 1


def load_kv_head_model(n_kv_head: int, device: torch.device | str = "cpu") -> tuple[TinyGPT, CharTokenizer]:
    """The hello recipe trained with `n_kv_head` K/V heads: 4 is the hello model, 2 grouped-query, 1 multi-query.

    All three were trained the same way (`kvlab.train_hello.train_kv_head_models`); only n_kv_head differs.
    """
    check_one_of("n_kv_head", check_int("n_kv_head", n_kv_head), (4, 2, 1))  # 4 is the hello model
    device = _checked_device(device)
    if n_kv_head == 4:
        return load_hello_model(device)
    checkpoint = torch.load(HELLO_KV_HEAD_WEIGHTS, map_location="cpu", weights_only=True)[n_kv_head]
    model = TinyGPT(GPTConfig(**checkpoint["config"]))
    model.load_state_dict(checkpoint["state_dict"])
    return model.to(device).eval(), CharTokenizer(checkpoint["chars"])
