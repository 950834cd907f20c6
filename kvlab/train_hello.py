"""Train the hello model from scratch: ``python -m kvlab.train_hello`` (about half a minute on 2 CPU cores).

Deterministic: the corpus, the initial weights and the order of the training windows all come from fixed seeds, so
the same machine with the same thread count reproduces the shipped weights bit for bit (other machines may differ
in the last float bits, and still give a model that turns "h" into "hello").
"""

from __future__ import annotations

import argparse
import time
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F

from .corpus import make_corpus
from .hello import HELLO_CONFIG, HELLO_WEIGHTS
from .model import GPTConfig, TinyGPT
from .tokenizer import CharTokenizer

__all__ = ["train_hello_model", "save_model", "main"]


def _line_start_windows(data: torch.Tensor, newline_id: int, block: int) -> torch.Tensor:
    """Offsets where a line begins and a full window fits: a prompt of the model always starts a sentence."""
    starts = torch.cat([torch.tensor([0]), (data == newline_id).nonzero().flatten() + 1])
    return starts[starts + block + 1 <= len(data)]


def train_hello_model(steps: int = 600, batch_size: int = 16, lr: float = 3e-3, seed: int = 0,
                      config: GPTConfig | None = None, log_every: int = 100) -> tuple[TinyGPT, CharTokenizer]:
    """Next-token training on the project's corpus with AdamW; returns the model in eval mode and its tokenizer."""
    torch.manual_seed(seed)
    text = "\n".join(make_corpus(seed=seed)) + "\n"
    tokenizer = CharTokenizer.from_text(text)
    config = config or GPTConfig(vocab_size=tokenizer.vocab_size, **HELLO_CONFIG)
    if config.vocab_size != tokenizer.vocab_size:
        raise ValueError(f"config.vocab_size must be {tokenizer.vocab_size} (the corpus alphabet), "
                         f"got {config.vocab_size}")
    data = torch.tensor(tokenizer.encode(text), dtype=torch.long)
    block = config.max_seq_len
    starts = _line_start_windows(data, tokenizer.stoi["\n"], block)
    model = TinyGPT(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    generator = torch.Generator().manual_seed(seed)
    for step in range(steps):
        offsets = starts[torch.randint(len(starts), (batch_size,), generator=generator)]
        windows = torch.stack([data[o:o + block + 1] for o in offsets.tolist()])  # (B, block + 1)
        logits = model(windows[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, config.vocab_size), windows[:, 1:].reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        for group in optimizer.param_groups:  # linear decay to zero: a calm finish, stable greedy outputs
            group["lr"] = lr * (1 - (step + 1) / steps)
        if log_every and (step % log_every == 0 or step == steps - 1):
            print(f"step {step:4d}  loss {loss.item():.4f}")
    return model.eval(), tokenizer


def save_model(model: TinyGPT, tokenizer: CharTokenizer, path: str | Path) -> None:
    """Plain tensors and primitives only, so `torch.load(..., weights_only=True)` can read it safely."""
    torch.save({"config": asdict(model.config), "chars": tokenizer.chars, "state_dict": model.state_dict()}, path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HELLO_WEIGHTS, help="where to write the weights")
    parser.add_argument("--steps", type=int, default=600)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    model, tokenizer = train_hello_model(steps=args.steps)
    save_model(model, tokenizer, args.out)
    print(f"trained {model.n_params:,} parameters in {time.perf_counter() - start:.1f} s "
          f"on {torch.get_num_threads()} threads; wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
