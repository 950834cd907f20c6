#!/usr/bin/env python3
"""Authoring tool for the course notebooks (maintainers only; learners never need it).

    python tools/nb.py run notebooks/00_start_here.ipynb ...   execute in place, each in a fresh kernel
    python tools/nb.py to-py notebooks/00_start_here.ipynb     print the notebook as a '# %%' script
    python tools/nb.py from-py chapter.py notebooks/NN_name.ipynb   build a notebook from such a script

Cells in a '# %%' script start with '# %%' (code) or '# %% [markdown]' (markdown lines prefixed with '# ').
Cell ids are derived from the cell's position, so rebuilding a notebook does not churn its JSON.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

KERNEL = {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}


def from_py(script: Path, notebook: Path) -> None:
    cells, kind, lines = [], None, []

    def flush():
        if kind is None:
            return
        text = "\n".join(lines).strip("\n")
        cell_id = f"cell-{len(cells):03d}"
        if kind == "markdown":
            text = "\n".join(line[2:] if line.startswith("# ") else line.lstrip("#") for line in text.splitlines())
            cells.append(nbformat.v4.new_markdown_cell(text, id=cell_id))
        else:
            cells.append(nbformat.v4.new_code_cell(text, id=cell_id))

    for line in script.read_text(encoding="utf-8").splitlines():
        if line.startswith("# %%"):
            flush()
            kind, lines = ("markdown" if "[markdown]" in line else "code"), []
        else:
            lines.append(line)
    flush()
    nb = nbformat.v4.new_notebook(cells=cells, metadata={"kernelspec": KERNEL, "language_info": {"name": "python"}})
    nbformat.write(nb, notebook)


def to_py(notebook: Path) -> str:
    nb = nbformat.read(notebook, as_version=4)
    parts = []
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            parts.append("# %% [markdown]\n" + "\n".join(f"# {line}".rstrip() for line in cell.source.splitlines()))
        else:
            parts.append("# %%\n" + cell.source)
    return "\n\n".join(parts) + "\n"


def run(notebook: Path) -> None:
    """Execute top to bottom in a fresh kernel, from the notebook's folder (as nbval and learners do)."""
    nb = nbformat.read(notebook, as_version=4)
    for position, cell in enumerate(nb.cells):  # cells inserted by hand get ids like the rest
        cell.id = f"cell-{position:03d}"
    start = time.perf_counter()
    resources = {"metadata": {"path": str(notebook.parent)}}
    NotebookClient(nb, timeout=300, kernel_name="python3", resources=resources).execute()
    nb.metadata.pop("widgets", None)  # widget state differs run to run; the live kernel rebuilds it
    nbformat.write(nb, notebook)
    print(f"executed {notebook} in {time.perf_counter() - start:.1f} s")


def main(argv: list[str]) -> int:
    if len(argv) >= 2 and argv[0] == "run":
        for path in argv[1:]:
            run(Path(path))
    elif len(argv) == 2 and argv[0] == "to-py":
        print(to_py(Path(argv[1])), end="")
    elif len(argv) == 3 and argv[0] == "from-py":
        from_py(Path(argv[1]), Path(argv[2]))
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
