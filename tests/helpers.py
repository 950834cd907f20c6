"""Helpers the tests share, imported as `from tests.helpers import ...` (fixtures live in tests/conftest.py)."""

import json
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


def assert_printed_above(notebook: Path, prose: str, printed) -> None:
    """A number in a chapter's prose must be printed by a code cell above it (`printed`: a string or a regex)."""
    cells = notebook_cells(notebook)
    where = [i for i, c in enumerate(cells)
             if c["cell_type"] == "markdown" and prose in " ".join("".join(c["source"]).split())]
    assert where, f"claim {prose!r} is no longer in the chapter's prose"
    above = "".join(printed_text(c) for c in cells[:where[0]] if c["cell_type"] == "code")
    found = printed.search(above) if hasattr(printed, "search") else printed in above
    assert found, f"no code cell above the claim {prose!r} prints {printed!r}"
