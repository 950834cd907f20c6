"""tools/build_site.py without a browser: its command line, its link rewriting, its slide and widget fallbacks, and
the vendored assets against their manifest (the browser test, tests/test_site.py, checks the pages themselves)."""

import json
import shutil
import subprocess
import sys

import nbformat
import pytest

from tests.site_helpers import ROOT, load_tool

build_site = load_tool("build_site")
vendor = load_tool("vendor_site_assets")
SCRIPT = [sys.executable, str(ROOT / "tools" / "build_site.py")]


def _run(*args):
    return subprocess.run([*SCRIPT, *map(str, args)], capture_output=True, text=True, cwd=ROOT)


def test_refuses_a_non_empty_out_dir_without_force(tmp_path):
    (tmp_path / "keep.txt").write_text("not ours")
    result = _run(tmp_path)
    assert result.returncode == 2 and "not empty: pass --force" in result.stderr
    assert (tmp_path / "keep.txt").read_text() == "not ours"


def test_force_empties_the_out_dir_and_a_missing_one_is_created(tmp_path):
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "page.html").write_text("stale")
    build_site.prepare_out_dir(tmp_path, force=True)
    assert tmp_path.is_dir() and not any(tmp_path.iterdir())
    build_site.prepare_out_dir(tmp_path / "new" / "site", force=False)
    assert (tmp_path / "new" / "site").is_dir()


@pytest.mark.parametrize("out", [ROOT, ROOT.parent])
def test_never_empties_the_repository(out):
    with pytest.raises(ValueError, match="holds the repository"):
        build_site.prepare_out_dir(out, force=True)


def test_a_file_as_out_dir_and_a_folder_without_chapters_are_clear_errors(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        build_site.prepare_out_dir(tmp_path / "file", force=True)
    result = _run(tmp_path / "site", "--notebooks", tmp_path)
    assert result.returncode == 2 and "not a folder holding NN_name.ipynb chapters" in result.stderr


def _page(repo_path, site_path):
    return build_site.Page(ROOT / repo_path, repo_path, site_path, "t")


SITE = {"notebooks/03_building_the_cache.ipynb": "notebooks/03_building_the_cache.html",
        "notebooks/04_cost.ipynb": "notebooks/04_cost.html",
        "solutions/03_building_the_cache.ipynb": "solutions/03_building_the_cache.html",
        "README.md": "README.html", "docs/glossary.md": "docs/glossary.html"}


@pytest.mark.parametrize("href, expected", [
    ("../solutions/03_building_the_cache.ipynb", "../solutions/03_building_the_cache.html"),
    ("04_cost.ipynb#3-the-plot", "04_cost.html#3-the-plot"),
    ("../README.md", "../README.html"),
    ("../docs/glossary.md", "../docs/glossary.html"),
    ("../solutions/", "../index.html#solutions"),
    ("https://example.org/04_cost.ipynb", "https://example.org/04_cost.ipynb"),
    ("#section", "#section"),
    ("../kvlab/not_rendered.py", "../kvlab/not_rendered.py"),
])
def test_markdown_links_are_rewritten_to_the_sites_pages(href, expected):
    page = _page("notebooks/03_building_the_cache.ipynb", "notebooks/03_building_the_cache.html")
    assert build_site.rewrite_links(f'<a href="{href}">x</a>', page, SITE) == f'<a href="{expected}">x</a>'


def test_links_from_a_deck_and_from_a_solution_are_relative_to_their_own_folder():
    deck = _page("notebooks/03_building_the_cache.ipynb", "slides/03_building_the_cache.slides.html")
    html = build_site.rewrite_links('<a href="04_cost.ipynb">', deck, SITE)
    assert html == '<a href="../notebooks/04_cost.html">'
    solution = _page("solutions/03_building_the_cache.ipynb", "solutions/03_building_the_cache.html")
    html = build_site.rewrite_links('<a href="../notebooks/03_building_the_cache.ipynb">', solution, SITE)
    assert html == '<a href="../notebooks/03_building_the_cache.html">'


def test_an_image_the_repository_holds_is_copied_into_the_site(tmp_path):
    readme = _page("README.md", "README.html")
    html = build_site.rewrite_links('<img src="benchmarks/results/latest.png">', readme, SITE, tmp_path)
    assert html == '<img src="benchmarks/results/latest.png">'
    assert (tmp_path / "benchmarks/results/latest.png").read_bytes() == (
        ROOT / "benchmarks/results/latest.png").read_bytes()


def test_the_readme_describes_every_chapter_for_the_index():
    described = build_site.readme_descriptions((ROOT / "README.md").read_text(encoding="utf-8"))
    assert set(described) == {nb.stem for nb in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")}
    assert all(len(line) > 20 for line in described.values())


def _notebook(*sources, metadata=None):
    cells = [nbformat.v4.new_markdown_cell(s) for s in sources]
    for cell in cells:
        cell.metadata.update(metadata or {})
    return nbformat.v4.new_notebook(cells=cells)


def test_a_notebook_without_slide_metadata_gets_a_slide_per_section():
    nb = build_site.add_default_slides(_notebook("# Title", "text", "Before.\n\n## 1 · A section", "more"))
    assert [c.metadata.get("slideshow", {}).get("slide_type") for c in nb.cells] == ["slide", None, "slide", None]


def test_slide_metadata_the_notebook_carries_is_kept():
    nb = _notebook("# Title", "## Section")
    nb.cells[1].metadata["slideshow"] = {"slide_type": "subslide"}
    build_site.add_default_slides(nb)
    assert "slideshow" not in nb.cells[0].metadata and nb.cells[1].metadata["slideshow"]["slide_type"] == "subslide"


def _widget_output(model_id):
    return nbformat.v4.new_output("display_data", data={
        build_site.WIDGET_VIEW: {"model_id": model_id, "version_major": 2, "version_minor": 0},
        "text/plain": "IntSlider(value=6)"})


def test_a_widget_view_without_saved_state_falls_back_to_its_text():
    cell = nbformat.v4.new_code_cell("w", outputs=[_widget_output("saved"), _widget_output("lost")])
    nb = nbformat.v4.new_notebook(cells=[cell], metadata={
        "widgets": {build_site.WIDGET_STATE: {"state": {"saved": {}}, "version_major": 2, "version_minor": 0}}})
    outputs = build_site.drop_stateless_widget_views(nb).cells[0].outputs
    assert build_site.WIDGET_VIEW in outputs[0].data and build_site.WIDGET_VIEW not in outputs[1].data
    assert build_site.has_widget_state(nb) and not build_site.has_widget_state(nbformat.v4.new_notebook())


def test_the_vendored_assets_match_their_manifest():
    assert vendor.check() == []
    manifest = json.loads((vendor.MANIFEST).read_text(encoding="utf-8"))
    assert manifest["total_bytes"] == sum(entry["bytes"] for entry in manifest["files"]) < 10_000_000
    packages = {entry["package"] for entry in manifest["files"]}
    assert packages == {"mathjax", "reveal.js", "@jupyter-widgets/html-manager"}


def test_the_manifest_check_finds_a_changed_a_missing_and_an_unlisted_file(tmp_path):
    assets = tmp_path / "assets"
    shutil.copytree(vendor.ASSETS, assets)
    (assets / "reveal.js" / "dist" / "reveal.css").write_text("changed")
    (assets / "mathjax" / "LICENSE").unlink()
    (assets / "extra.js").write_text("")
    assert sorted(vendor.check(assets)) == ["extra.js: not in the manifest", "mathjax/LICENSE: missing",
                                            "reveal.js/dist/reveal.css: sha256 differs from the manifest"]


def test_the_readme_gives_the_assets_size_from_the_manifest():
    total = json.loads(vendor.MANIFEST.read_text(encoding="utf-8"))["total_bytes"]
    assert f"`tools/site_assets/` ({total / 1e6:.1f} MB" in (ROOT / "README.md").read_text(encoding="utf-8")


def test_a_page_without_a_top_heading_takes_its_first_heading_as_title():
    """benchmarks/README.md starts at `##`: its index entry must not read "README" next to the course's README."""
    assert build_site.markdown_title("## Performance\n\nEvery speed claim", "README") == "Performance"
    assert build_site.markdown_title("# kvlab\n\n## Two commands", "x") == "kvlab"
    assert build_site.markdown_title("no heading", "fallback") == "fallback"
