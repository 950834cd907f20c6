"""Train the hello model from scratch: ``python -m kvlab.train_hello`` (about half a minute on 2 CPU cores).

The weights go to a new ``hello_model.pt`` in the current folder (``--out`` names another file; an existing one is
kept unless ``--force``), which `kvlab.hello.load_model` loads. Only ``--replace-shipped`` replaces the weights
shipped in the package.

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

from .checks import check_int, check_number, check_one_of, check_type
from .corpus import make_corpus
from .hello import HELLO_CONFIG, HELLO_KV_HEAD_WEIGHTS, HELLO_WEIGHTS
from .model import GPTConfig, TinyGPT
from .tokenizer import CharTokenizer

__all__ = ["train_hello_model", "save_model", "main",
           "mean_pool_kv_heads", "train_kv_head_models", "save_kv_head_models"]  # chapter 08


def _line_start_windows(data: torch.Tensor, newline_id: int, block: int) -> torch.Tensor:
    """Offsets where a line begins and a full window fits: a prompt of the model always starts a sentence."""
    starts = torch.cat([torch.tensor([0]), (data == newline_id).nonzero().flatten() + 1])
    return starts[starts + block + 1 <= len(data)]


def train_hello_model(steps: int = 600, batch_size: int = 16, lr: float = 3e-3, seed: int = 0,
                      config: GPTConfig | None = None, log_every: int = 100) -> tuple[TinyGPT, CharTokenizer]:
    """Next-token training on the project's corpus with AdamW; returns the model in eval mode and its tokenizer."""
    check_int("steps", steps, 1)  # zero steps would return an untrained model without a word
    check_int("batch_size", batch_size, 1)
    check_number("lr", lr, 0, inclusive=False)
    check_int("log_every", log_every, 0)
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


MAX_STEPS = 1_000_000  # the shipped model takes 600; a typo of a few more digits would train for days


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kv-heads", action="store_true",
                        help="train the n_kv_head = 2 and 1 models of chapter 08 instead of the hello model")
    parser.add_argument("--out", type=Path, help="where to write the weights (default: hello_model.pt, or "
                                                 "hello_kv_heads.pt with --kv-heads, in the current folder)")
    parser.add_argument("--force", action="store_true", help="replace an existing --out file")
    parser.add_argument("--replace-shipped", action="store_true",
                        help="maintainers: replace the weights shipped in the package (kvlab/data/)")
    parser.add_argument("--steps", type=int, default=600, help=f"training steps, 1 to {MAX_STEPS:,} (default 600)")
    args = parser.parse_args(argv)
    try:
        check_int("--steps", args.steps, 1, MAX_STEPS)
        args.out = _output_path(args)
    except ValueError as error:
        parser.error(str(error))  # one usage line and exit status 2, before any training
    return args


def _output_path(args: argparse.Namespace) -> Path:
    """The file to write, checked before training: a new file in the current folder by default, so that a short
    experiment never replaces the shipped model (inside site-packages for a normal install); the shipped file only
    with --replace-shipped."""
    from .bench.paths import check_writable

    shipped = HELLO_KV_HEAD_WEIGHTS if args.kv_heads else HELLO_WEIGHTS
    if args.replace_shipped:
        if args.out is not None:
            raise ValueError("--replace-shipped writes the shipped weights; drop --out")
        return check_writable(Path(shipped), "--replace-shipped", overwrite=True)
    out = Path.cwd() / Path(shipped).name if args.out is None else args.out
    return check_writable(out, "--out", overwrite=args.force)


def main(argv: list[str] | None = None) -> None:
    """Train the hello model (or with ``--kv-heads`` its GQA/MQA siblings of chapter 08) into a new file."""
    args = _parse_args(argv)
    start = time.perf_counter()
    if args.kv_heads:
        models = train_kv_head_models(steps=args.steps)
        save_kv_head_models(models, args.out)
        what = f"n_kv_head = {', '.join(map(str, models))}"
    else:
        model, tokenizer = train_hello_model(steps=args.steps)
        save_model(model, tokenizer, args.out)
        what = f"{model.n_params:,} parameters"
    print(f"trained {what} in {time.perf_counter() - start:.1f} s on {torch.get_num_threads()} threads; "
          f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB)")
    if not args.kv_heads and not args.replace_shipped:
        print(f"load it with kvlab.hello.load_model({str(args.out)!r})")


# --- chapter 08: fewer K/V heads (GQA and MQA) ---


def mean_pool_kv_heads(model: TinyGPT, n_kv_head: int) -> TinyGPT:
    """Convert a multi-head model to `n_kv_head` K/V heads by averaging the K and V projections of each group.

    This is how Ainslie et al. (2023, "GQA") turn a multi-head checkpoint into a grouped-query one before
    "uptraining" it: the key (and value) projection of each new K/V head is the mean of those of the
    ``n_head / n_kv_head`` heads it replaces. Without further training the model loses quality, because the heads
    of a group did not compute the same keys; the chapter measures how much.
    """
    check_type("model", model, TinyGPT, "a kvlab.TinyGPT")
    old = model.config
    if old.n_kv_head != old.n_head:
        raise ValueError(f"model must be multi-head (n_kv_head == n_head), got n_kv_head={old.n_kv_head}, "
                         f"n_head={old.n_head}")
    divisors = [h for h in range(1, old.n_head + 1) if old.n_head % h == 0]
    check_one_of("n_kv_head", check_int("n_kv_head", n_kv_head, 1), divisors)  # each K/V head serves a whole group
    config = GPTConfig(**{**asdict(old), "n_kv_head": n_kv_head})
    group, D, C = old.n_head // n_kv_head, old.head_dim, old.d_model
    state = {name: t.clone() for name, t in model.state_dict().items()}
    def pool(t: torch.Tensor) -> torch.Tensor:  # average each group of `group` heads (D rows each) into one
        return t.reshape(n_kv_head, group, D, *t.shape[1:]).mean(dim=1).reshape(n_kv_head * D, *t.shape[1:])

    for i in range(old.n_layer):
        for kind in ("weight", "bias"):
            name = f"blocks.{i}.attn.qkv.{kind}"
            q, k, v = state[name].split(C, dim=0)  # rows: (C, ...) each, heads stacked by D rows
            state[name] = torch.cat([q, pool(k), pool(v)], dim=0)
    pooled = TinyGPT(config)
    pooled.load_state_dict(state)
    return pooled.to(next(model.parameters()).device).eval()


def train_kv_head_models(n_kv_heads: tuple[int, ...] = (2, 1), steps: int = 600, seed: int = 0,
                         log_every: int = 0) -> dict[int, tuple[TinyGPT, CharTokenizer]]:
    """The hello model's recipe (corpus, sizes, steps, seed) with fewer K/V heads: only n_kv_head differs.

    Each model is trained from scratch, as the hello model was, so the comparison with it isolates n_kv_head (and
    the parameters that go with it). About half a minute per model on 2 CPU cores.
    """
    vocab_size = CharTokenizer.from_text("\n".join(make_corpus(seed=seed)) + "\n").vocab_size
    models = {}
    for n_kv_head in n_kv_heads:
        config = GPTConfig(vocab_size=vocab_size, n_kv_head=n_kv_head, **HELLO_CONFIG)
        models[n_kv_head] = train_hello_model(steps=steps, seed=seed, config=config, log_every=log_every)
    return models


def save_kv_head_models(models: dict[int, tuple[TinyGPT, CharTokenizer]], path: str | Path) -> None:
    """All models in one file, keyed by n_kv_head, each stored as `save_model` stores one."""
    torch.save({n: {"config": asdict(m.config), "chars": t.chars, "state_dict": m.state_dict()}
                for n, (m, t) in models.items()}, path)


if __name__ == "__main__":
    main()
