"""Helpers the tests share, imported as `from tests.helpers import ...` (fixtures live in tests/conftest.py)."""

import json
import re
from pathlib import Path

import torch

import kvlab

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def random_model(seed: int = 0, **sizes) -> kvlab.TinyGPT:
    """A randomly initialised TinyGPT in eval mode; `sizes` override a small default config."""
    torch.manual_seed(seed)
    config = kvlab.GPTConfig(**{**dict(vocab_size=37, n_layer=2, n_head=4, d_model=32, max_seq_len=64), **sizes})
    return kvlab.TinyGPT(config).eval()


def notebook_cells(notebook: Path) -> list[dict]:
    """The cells of a committed notebook, read as plain JSON."""
    return json.loads(notebook.read_text(encoding="utf-8"))["cells"]


def printed_text(cell: dict) -> str:
    """Everything a code cell's committed outputs show as text."""
    parts = []
    for out in cell.get("outputs", []):
        text = out.get("text", out.get("data", {}).get("text/plain", ""))
        parts.append("".join(text) if isinstance(text, list) else text)
    return "".join(parts)


def _plain_prose(cell) -> str:
    """A markdown cell's text with whitespace and blockquote markers (the "> " of a box) normalised."""
    return " ".join(re.sub(r"(?m)^> ?", "", "".join(cell["source"])).split())


def assert_printed_above(notebook: Path, prose: str, printed) -> None:
    """A number in a chapter's prose must be printed by a code cell above it (`printed`: a string or a regex)."""
    cells = notebook_cells(notebook)
    where = [i for i, c in enumerate(cells) if c["cell_type"] == "markdown" and prose in _plain_prose(c)]
    assert where, f"claim {prose!r} is no longer in the chapter's prose"
    above = "".join(printed_text(c) for c in cells[:where[0]] if c["cell_type"] == "code")
    found = printed.search(above) if hasattr(printed, "search") else printed in above
    assert found, f"no code cell above the claim {prose!r} prints {printed!r}"


def run_exercise(notebook: Path, blank: str, answer: str, namespace: dict, capsys) -> str:
    """Run a chapter's exercise cell with the learner's answer filled in; return what the cell printed.

    `blank` is the cell's first line as committed (``my_count = None``); `answer` replaces it (``my_count = 784``).
    `namespace` holds what the chapter's earlier cells defined, so the cell's own check runs as a learner's would.
    """
    cells = [c for c in notebook_cells(notebook) if c["cell_type"] == "code" and "".join(c["source"]).startswith(blank)]
    assert len(cells) == 1, f"{notebook.name}: {len(cells)} exercise cells start with {blank!r}"
    capsys.readouterr()
    exec("".join(cells[0]["source"]).replace(blank, answer, 1), namespace)  # noqa: S102 - the chapter's own code
    return capsys.readouterr().out


# --- chapter 04: the notebook's cost experiment, and its FLOPs by hand ---

CHAPTER_CONFIG = dict(vocab_size=64, n_layer=2, n_head=2, d_model=16, max_seq_len=1024)  # chapter 04's model
T_MAX, FIT_FROM = 512, 128  # its generation length, and where its slope fits start


def chapter_config() -> kvlab.GPTConfig:
    return kvlab.GPTConfig(**CHAPTER_CONFIG)


def by_hand(c) -> tuple[int, int]:
    """D and A from the matmul shapes, written out independently of kvlab.flops.

    Per layer and fed token: qkv 2·d·(d + 2·kv_dim), output projection 2·d², MLP 2·(d·4d + 4d·d) = 16·d²;
    once: LM head 2·d·vocab. Per key: q·kᵀ 2·d and weights·v 2·d, in every layer.
    """
    d, kv_dim = c.d_model, c.n_kv_head * (c.d_model // c.n_head)
    dense = c.n_layer * (2 * d * (d + 2 * kv_dim) + 2 * d * d + 16 * d * d) + 2 * d * c.vocab_size
    return dense, c.n_layer * 4 * d


# --- chapter 09: keys that show which positions a cache holds ---

def position_keys(start: int, n: int, B: int = 2, H: int = 3, D: int = 4) -> torch.Tensor:
    """(B, H, n, D) keys whose every number is the token's position: what a cache holds can be read off."""
    return torch.arange(start, start + n, dtype=torch.float32).view(1, 1, n, 1).expand(B, H, n, D).clone()


def feed(cache, T: int, chunk: int = 1, n_layer: int = 1, **shape):
    """Feed positions 0..T-1 to every layer in chunks; return what the last update of layer 0 returned."""
    returned = None
    for start in range(0, T, chunk):
        n = min(chunk, T - start)
        for layer in range(n_layer):
            k = position_keys(start, n, **shape)
            out = cache.update(k, -k, layer)
            if layer == 0:
                returned = out
    return returned


# --- the README and chapter 00: minutes per chapter ---

READING_WORDS_PER_MINUTE = 150  # prose with formulas and code beside it reads slower than a novel


def chapter_minutes(notebook: Path) -> int:
    """The README's 'minutes' for a chapter: its prose at READING_WORDS_PER_MINUTE, rounded to 5, at least 5 (the
    cells run in under a minute each, so reading dominates)."""
    cells = json.loads(notebook.read_text(encoding="utf-8"))["cells"]
    words = sum(len("".join(c["source"]).split()) for c in cells if c["cell_type"] == "markdown")
    return max(5, 5 * round(words / READING_WORDS_PER_MINUTE / 5))
