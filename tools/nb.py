#!/usr/bin/env python3
"""Authoring tool for the course notebooks (maintainers only; learners never need it).

    python tools/nb.py run notebooks/00_start_here.ipynb ...   execute in place, each in a fresh kernel
    python tools/nb.py slides notebooks/00_start_here.ipynb ...  (re)write each cell's slide type (RISE, decks)
    python tools/nb.py to-py notebooks/00_start_here.ipynb     print the notebook as a '# %%' script
    python tools/nb.py from-py chapter.py notebooks/NN_name.ipynb   build a notebook from such a script

Cells in a '# %%' script start with '# %%' (code) or '# %% [markdown]' (markdown lines prefixed with '# ').
Cell ids are derived from the cell's position, so rebuilding a notebook does not churn its JSON.
"""

from __future__ import annotations

import re
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


def _number_cells(nb) -> None:
    """Ids from each cell's position, so cells inserted or split by hand get ids like the rest."""
    for position, cell in enumerate(nb.cells):
        cell.id = f"cell-{position:03d}"


def run(notebook: Path) -> None:
    """Execute top to bottom in a fresh kernel, from the notebook's folder (as nbval and learners do)."""
    nb = nbformat.read(notebook, as_version=4)
    _number_cells(nb)
    start = time.perf_counter()
    resources = {"metadata": {"path": str(notebook.parent)}}
    # the widgets' state is stored, so GitHub, nbviewer and the course website draw each widget as it was left
    NotebookClient(nb, timeout=300, kernel_name="python3", resources=resources, store_widget_state=True).execute()
    nbformat.write(nb, notebook)
    print(f"executed {notebook} in {time.perf_counter() - start:.1f} s")


SLIDE_LINES = 28  # about what a projected slide shows at a readable size


def _shown_lines(cell) -> int:
    """Lines a cell takes on a slide: its source, its text outputs, and about 14 for a figure."""
    lines = len(cell.source.splitlines())
    for output in cell.get("outputs", []):
        data = output.get("data", {})
        if "image/png" in data:
            lines += 14
        text = output.get("text", data.get("text/plain", ""))
        lines += min(len(text.splitlines()), 20) if "image/png" not in data else 0
    return lines


def slide_types(cells) -> list[str]:
    """One slide per `##` section (the title cell, the recap and the exercises included), a sub-slide per `###`,
    per exercise, or where a section outgrows a screen, and prose that reads a result appears as a fragment."""
    types, used = [], 0
    for i, cell in enumerate(cells):
        text, shown = cell.source.lstrip(), _shown_lines(cell)
        if i == 0 or (cell.cell_type == "markdown" and text.startswith("## ")):
            kind, used = "slide", 0
        elif cell.cell_type == "markdown" and (text.startswith("### ") or re.match(r"\*\*\d+\.\*\*", text)):
            kind, used = "subslide", 0
        elif used + shown > SLIDE_LINES and used > 0:
            kind, used = "subslide", 0
        elif cell.cell_type == "markdown" and types and cells[i - 1].cell_type == "code" and types[-1] != "slide":
            kind = "fragment"
        else:
            kind = "-"
        types.append(kind)
        used += shown
    return types


HEADING = re.compile(r"^(#{2,3} |\*\*\d+\.\*\* )", re.MULTILINE)  # a section, a sub-section, an exercise


def _split_at_headings(cells) -> list:
    """Markdown cells cut so that every section, sub-section and exercise starts a cell of its own (a slide can
    only start at a cell)."""
    result = []
    for cell in cells:
        starts = [m.start() for m in HEADING.finditer(cell.source)] if cell.cell_type == "markdown" else []
        bounds = [0, *[s for s in starts if s > 0], len(cell.source)]
        if cell.cell_type != "markdown" or len(bounds) == 2:
            result.append(cell)
            continue
        for a, b in zip(bounds, bounds[1:]):
            result.append(nbformat.v4.new_markdown_cell(cell.source[a:b].strip("\n"), metadata=dict(cell.metadata)))
    return result


def slides(notebook: Path) -> None:
    """Write `metadata.slideshow.slide_type` into every cell (read by RISE and by nbconvert's reveal.js decks)."""
    nb = nbformat.read(notebook, as_version=4)
    nb.cells = _split_at_headings(nb.cells)
    _number_cells(nb)
    for cell, kind in zip(nb.cells, slide_types(nb.cells)):
        cell.metadata["slideshow"] = {"slide_type": kind}
    nbformat.write(nb, notebook)
    kinds = [c.metadata["slideshow"]["slide_type"] for c in nb.cells]
    print(f"{notebook}: {kinds.count('slide')} slides, {kinds.count('subslide')} sub-slides")


def main(argv: list[str]) -> int:
    if len(argv) >= 2 and argv[0] == "run":
        for path in argv[1:]:
            run(Path(path))
    elif len(argv) >= 2 and argv[0] == "slides":
        for path in argv[1:]:
            slides(Path(path))
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
