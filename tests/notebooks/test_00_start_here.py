"""What chapter 00 (start_here.ipynb) states about the course and about the cache on a GPU, checked."""

import json
import re

from kvlab import hardware, memory
from tests.helpers import NOTEBOOKS

NOTEBOOK = NOTEBOOKS / "00_start_here.ipynb"
WORDS = {10: "ten", 11: "eleven", 12: "twelve", 13: "thirteen"}


def _prose() -> str:
    cells = json.loads(NOTEBOOK.read_text())["cells"]
    return " ".join(" ".join("".join(c["source"]).split()) for c in cells if c["cell_type"] == "markdown")


def test_the_chapter_table_lists_every_chapter_that_exists():
    prose = _prose()
    chapters = sorted(p.name[:2] for p in NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
    listed = re.findall(r"\| \[(\d\d) · [^]]+\]\((\d\d_\w+\.ipynb)\) \|", prose)
    assert [number for number, _ in listed] == chapters[1:]  # every chapter after this one, in order
    assert all(target.startswith(number) and (NOTEBOOKS / target).exists() for number, target in listed)  # linked
    assert f"These {WORDS[len(chapters)]} chapters, {chapters[0]} to {chapters[-1]}, are the whole course" in prose
    assert "Chapters are added as the course grows" not in prose


def test_the_gap_does_not_simply_grow_with_the_model():
    """'At batch 1 on a GPU ... re-feeding even a hundred tokens takes about as long as feeding one': on every GPU
    preset, for a small and a 7B model, the uncached step stays memory-bound past 100 tokens."""
    prose = _prose()
    assert "the length of the sequence and the size of the model" not in prose
    assert "re-feeding even a hundred tokens takes about as long as feeding one" in prose
    for gpu in hardware.GPU_PRESETS.values():
        for key in ("gpt2-small", "llama2-7b"):
            assert hardware.free_refeed_length(memory.get_preset(key), gpu.fp16_flops, gpu.bandwidth, 2) >= 100


def test_the_chapter_table_gives_each_chapters_reading_minutes():
    from tests.helpers import chapter_minutes

    rows = dict(re.findall(r"\| \[(\d\d) · [^|]*\|[^|]*\| (\d+) \|", _prose()))
    assert rows == {nb.name[:2]: str(chapter_minutes(nb)) for nb in sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
                    if nb.name[:2] != "00"}


def test_chapter_00_links_the_readme_and_the_course_pages():
    prose = _prose()
    for target in ("../README.md", "../docs/glossary.md", "../docs/cheatsheet.md", "../docs/instructor.md",
                   "../solutions/"):
        assert f"]({target})" in prose, target
        assert (NOTEBOOKS / target).exists(), target
