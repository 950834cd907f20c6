#!/usr/bin/env python3
"""Build the course as a website and as slide decks that work offline: `python tools/build_site.py OUT_DIR`.

    python tools/build_site.py site/                    build into site/ (refused if site/ is not empty)
    python tools/build_site.py site/ --force            empty site/ first, then build
    python tools/build_site.py site/ --notebooks DIR    read the chapters from DIR instead of notebooks/

Output (the layout mirrors the repository, so a relative link between two course files stays right):
index.html (the chapter list), notebooks/NN_name.html (a page per chapter, previous/next links),
solutions/NN_name.html (back to their chapter), README.html, docs/*.html (whichever docs/*.md exist: glossary,
cheat-sheet, instructor's guide), slides/NN_name.slides.html (a reveal.js deck per chapter) and assets/.

Why nbconvert with our own templates (tools/site_templates/, extending nbconvert's `lab` and `reveal` templates)
rather than Jupyter Book 2 / MyST: it is Python only and already installed with Jupyter, so a fresh clone builds the
site with what the README's test command installs (no Node.js at build time). The builder never executes a notebook:
it renders the committed outputs, and widgets from the widget state the notebooks carry (`metadata.widgets`).
Nothing is fetched at build or view time: MathJax 3, reveal.js and the widgets HTML manager are vendored in
tools/site_assets/ (see tools/vendor_site_assets.py) and copied into the site, and every link is relative, so the
site opens from file:// and from `python -m http.server` alike.
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import posixpath
import re
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

import nbformat
from nbconvert import HTMLExporter, SlidesExporter

ROOT = Path(__file__).resolve().parents[1]
TEMPLATES = ROOT / "tools" / "site_templates"
ASSETS = ROOT / "tools" / "site_assets"
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
DOC_LABELS = {"glossary": "Glossary (English and Chinese)", "cheatsheet": "Cheat-sheet of the formulas",
              "instructor": "Instructor's guide"}


@dataclass(frozen=True)
class Page:
    """One page of the site: the file it comes from, where that file lies in the repository (links in it are
    relative to that place) and where its page lies in the site."""

    source: Path
    repo_path: str
    site_path: str
    title: str


def relative(target: str, page: str) -> str:
    """`target` (a site path) as a link from the page at site path `page`: relative, so file:// works."""
    return posixpath.relpath(target, posixpath.dirname(page) or ".")


_LINK = re.compile(r'\b(?P<attr>href|src)="(?P<url>[^"#?:]*)(?P<rest>[#?][^"]*)?"')


def rewrite_links(html: str, page: Page, site_paths: dict[str, str], out: Path | None = None) -> str:
    """Point the relative links a page got from its markdown (`../solutions/X.ipynb`, `NN_x.ipynb`, `../README.md`)
    at the site's pages. An image or file the repository holds and the site lacks is copied into the site at its
    repository path (when `out` is given); any other link is left as written."""

    def replace(match: re.Match) -> str:
        url, rest = match["url"], match["rest"] or ""
        if not url:
            return match[0]
        target = posixpath.normpath(posixpath.join(posixpath.dirname(page.repo_path), unquote(url)))
        if target in site_paths:
            return f'{match["attr"]}="{relative(site_paths[target], page.site_path)}{rest}"'
        if target in ("notebooks", "solutions"):  # a folder: its list is on the index page
            return f'{match["attr"]}="{relative("index.html", page.site_path)}#{target}"'
        if out is not None and not target.startswith("..") and (ROOT / target).is_file():
            (out / target).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(ROOT / target, out / target)
            return f'{match["attr"]}="{relative(target, page.site_path)}{rest}"'
        return match[0]

    return _LINK.sub(replace, html)


def markdown_title(text: str, fallback: str) -> str:
    """The first heading of a markdown text (`# ` first, else any level), without its markdown, or `fallback`."""
    heading = re.search(r"^# (.+)$", text, re.MULTILINE) or re.search(r"^#+ (.+)$", text, re.MULTILINE)
    return re.sub(r"[`*_]", "", heading.group(1)).strip() if heading else fallback


def notebook_title(nb: nbformat.NotebookNode, fallback: str) -> str:
    """A notebook's title: the first `# ` heading of its markdown cells."""
    text = "\n".join(cell.source for cell in nb.cells if cell.cell_type == "markdown")
    return markdown_title(text, fallback)


def readme_descriptions(readme: str) -> dict[str, str]:
    """The README's chapter table as {notebook stem: its one-line "what it shows"}."""
    row = re.compile(r"^\| \[`(\d\d_\w+)`\]\([^)]*\) \| (.+?) \| \d+ \|$", re.MULTILINE)
    return {match.group(1): match.group(2) for match in row.finditer(readme)}


def has_widget_state(nb: nbformat.NotebookNode) -> bool:
    """Whether the notebook carries saved widget state (stored by nbclient or Jupyter's "Save widget state")."""
    return bool(nb.metadata.get("widgets", {}).get(WIDGET_STATE, {}).get("state"))


def drop_stateless_widget_views(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """Remove the widget views whose model has no saved state, so the output's text form shows instead of an empty
    box (nbconvert prefers the widget view; without its state nothing could render it)."""
    state = nb.metadata.get("widgets", {}).get(WIDGET_STATE, {}).get("state", {})
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            view = output.get("data", {}).get(WIDGET_VIEW)
            if view is not None and view.get("model_id") not in state and len(output["data"]) > 1:
                del output["data"][WIDGET_VIEW]
    return nb


def add_default_slides(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """When no cell says how to present it (`metadata.slideshow`), start a slide at the title and at every `## `
    section, so a deck is never one endless slide; a notebook that carries slide metadata is left as it is."""
    if any("slideshow" in cell.metadata for cell in nb.cells):
        return nb
    for cell in nb.cells:
        if cell.cell_type == "markdown" and re.search(r"^#{1,2} ", cell.source, re.MULTILINE):
            cell.metadata["slideshow"] = {"slide_type": "slide"}
    return nb


# The widgets' labels are typeset with MathJax 2's `MathJax.Hub.Queue(["Typeset", MathJax.Hub, element])`; MathJax 3
# has no Hub, so once it is ready we give it one that queues a MathJax 3 typeset of that element.
_MATHJAX2_SHIM = """window.MathJax.startup = {ready: function () {
  MathJax.startup.defaultReady();
  MathJax.Hub = {Queue: function (job) {
    MathJax.startup.promise = MathJax.startup.promise.then(function () { return MathJax.typesetPromise([job[2]]); });
  }};
}};"""


def head_html(page: str, deck: bool = False) -> str:
    """MathJax 3 from the site (SVG output: no font files to fetch), configured like nbconvert's own; decks also
    get their few styles."""
    mathjax = relative("assets/mathjax/tex-svg-full.js", page)
    config = {"tex": {"inlineMath": [["$", "$"], ["\\(", "\\)"]], "displayMath": [["$$", "$$"], ["\\[", "\\]"]],
                      "processEscapes": True, "processEnvironments": True},
              "svg": {"fontCache": "global"}}
    html = (f"<script>window.MathJax = {json.dumps(config)};\n{_MATHJAX2_SHIM}</script>\n"
            f'<script defer src="{mathjax}"></script>\n')
    if deck:
        return html + ("<style>.reveal .slides section { height: 100%; overflow-y: auto; }\n"
                       ":root { --jp-code-font-size: 15px; }\n"
                       ".jupyter-widgets { font-family: var(--jp-ui-font-family, sans-serif); }\n"
                       ".kvlab-deck-home { position: fixed; left: 12px; bottom: 10px; z-index: 40; "
                       "font: 14px sans-serif; }</style>\n")
    return html + f'<link rel="stylesheet" href="{relative("assets/site.css", page)}">\n'


def widgets_html(nb: nbformat.NotebookNode, page: str) -> str:
    """The widgets HTML manager from the site, only where there is saved state for it to render."""
    return f'<script src="{relative("assets/html-manager/embed.js", page)}"></script>\n' if has_widget_state(nb) else ""


def nav_html(page: str, links: list[tuple[str, str, str]]) -> str:
    """A navigation bar: (css class, site path, label) per link, the class naming its role (kvlab-prev, ...)."""
    items = []
    for css, target, label in links:
        rel = {"kvlab-prev": ' rel="prev"', "kvlab-next": ' rel="next"'}.get(css, "")
        items.append(f'<a class="{css}"{rel} href="{relative(target, page)}">{label}</a>')
    return '<nav class="kvlab-nav">' + "\n".join(items) + "</nav>\n"


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


@functools.cache
def _exporter(kind: type, template: str, **options: str):
    """One exporter per template, made once: each new one compiles its templates again (a third of the build)."""
    return kind(template_name=template, extra_template_basedirs=[str(TEMPLATES)], exclude_input_prompt=True,
                exclude_output_prompt=True, **options)


def render_page(nb: nbformat.NotebookNode, page: Page, nav: str, site_paths: dict[str, str], out: Path) -> None:
    """One HTML page in JupyterLab's look (tools/site_templates/kvlab_page), written to out/page.site_path."""
    nb = drop_stateless_widget_views(copy.deepcopy(nb))
    nb.metadata["title"] = page.title
    exporter = _exporter(HTMLExporter, "kvlab_page")
    tail = widgets_html(nb, page.site_path) + f'<script src="{relative("assets/site.js", page.site_path)}"></script>'
    kvlab = {"head": head_html(page.site_path), "nav": nav, "tail": tail}
    html, _ = exporter.from_notebook_node(nb, resources={"kvlab": kvlab, "metadata": {"name": page.title}})
    _write(out / page.site_path, rewrite_links(html, page, site_paths, out))


def render_deck(nb: nbformat.NotebookNode, chapter: Page, site_paths: dict[str, str], out: Path) -> str:
    """A chapter's reveal.js deck (tools/site_templates/kvlab_deck), arrow keys to move; returns its site path."""
    deck = Page(chapter.source, chapter.repo_path, f"slides/{Path(chapter.repo_path).stem}.slides.html",
                chapter.title)
    nb = add_default_slides(drop_stateless_widget_views(copy.deepcopy(nb)))
    nb.metadata["title"] = chapter.title
    reveal = relative("assets/reveal.js", deck.site_path)
    exporter = _exporter(SlidesExporter, "kvlab_deck", reveal_url_prefix=reveal, reveal_theme="white")
    page_link = relative(chapter.site_path, deck.site_path)
    tail = (f'<a class="kvlab-deck-home" href="{page_link}">the chapter as a page</a>\n'
            f'<script src="{reveal}/dist/reveal.js"></script>\n<script src="{reveal}/plugin/notes/notes.js"></script>\n'
            "<script>Reveal.initialize({hash: true, center: false, width: 1100, height: 800, navigationMode: 'linear', "
            "plugins: [RevealNotes]});</script>\n" + widgets_html(nb, deck.site_path))
    kvlab = {"head": head_html(deck.site_path, deck=True), "tail": tail}
    html, _ = exporter.from_notebook_node(nb, resources={"kvlab": kvlab, "metadata": {"name": chapter.title}})
    _write(out / deck.site_path, rewrite_links(html, deck, site_paths, out))
    return deck.site_path


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def _markdown_notebook(text: str) -> nbformat.NotebookNode:
    """A markdown file as a one-cell notebook, so it is rendered (and its maths typeset) like the chapters."""
    return nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell(text)])


def collect_pages(notebooks: Path) -> tuple[list[Page], list[Page], list[Page]]:
    """The chapters (from `notebooks`), the solutions and the markdown pages (README, benchmarks, docs/*.md)."""
    def notebook_page(path: Path, folder: str) -> Page:
        nb = nbformat.read(path, as_version=4)
        return Page(path, f"{folder}/{path.name}", f"{folder}/{path.stem}.html", notebook_title(nb, path.stem))

    chapters = [notebook_page(p, "notebooks") for p in sorted(notebooks.glob("[0-9][0-9]_*.ipynb"))]
    solutions = [notebook_page(p, "solutions") for p in sorted((ROOT / "solutions").glob("[0-9][0-9]_*.ipynb"))]
    markdown = [ROOT / "README.md", ROOT / "benchmarks" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    documents = []
    for path in (p for p in markdown if p.is_file()):
        repo_path = path.relative_to(ROOT).as_posix()
        title = DOC_LABELS.get(path.stem) or markdown_title(path.read_text(encoding="utf-8"), path.stem)
        documents.append(Page(path, repo_path, repo_path.removesuffix(".md") + ".html", title))
    return chapters, solutions, documents


def index_markdown(chapters: list[Page], solutions: list[Page], documents: list[Page], decks: dict[str, str]) -> str:
    """The index page: the course's title, its chapters with a line each, the solutions and the reference pages."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    described = readme_descriptions(readme)
    intro = readme.split("\n\n")[1] if "\n\n" in readme else ""
    lines = [f"# {markdown_title(readme, 'kvlab')}", "", intro, "", '<h2 id="notebooks">Chapters</h2>', "",
             "| Chapter | What it shows | Slides |", "|---|---|---|"]
    for page in chapters:
        stem = Path(page.repo_path).stem
        lines.append(f"| [{_escape(page.title)}]({page.site_path}) | {described.get(stem, '')} | "
                     f"[deck]({decks[page.site_path]}) |")
    lines += ["", '<h2 id="solutions">Solutions</h2>', ""]
    lines += [f"- [{_escape(page.title)}]({page.site_path})" for page in solutions]
    lines += ["", "## Reference", ""]
    lines += [f"- [{_escape(page.title)}]({page.site_path})" for page in documents if page.repo_path != "README.md"]
    lines += ["- [The README](README.html): installing, running the tests, the package", ""]
    return "\n".join(lines)


def build(out: Path, notebooks: Path) -> dict[str, int]:
    """Render every page and deck into `out` (which exists and is empty); returns how many of each."""
    chapters, solutions, documents = collect_pages(notebooks)
    site_paths = {page.repo_path: page.site_path for page in chapters + solutions + documents}
    shutil.copytree(ASSETS, out / "assets", ignore=shutil.ignore_patterns("MANIFEST.json"))
    for name in ("site.css", "site.js"):
        shutil.copyfile(TEMPLATES / name, out / "assets" / name)
    home = ("kvlab-home", "index.html", "kvlab: the course")
    handy = [("kvlab-doc", page.site_path, Path(page.repo_path).stem) for page in documents
             if page.repo_path in ("docs/glossary.md", "docs/cheatsheet.md")]  # at hand on every chapter's page
    solution_of = {Path(s.repo_path).name: s for s in solutions}
    decks = {}
    for i, page in enumerate(chapters):
        nb = nbformat.read(page.source, as_version=4)
        decks[page.site_path] = render_deck(nb, page, site_paths, out)
        links = [home]
        if i > 0:
            links.append(("kvlab-prev", chapters[i - 1].site_path, f"← {_escape(chapters[i - 1].title)}"))
        links.append(("kvlab-slides", decks[page.site_path], "slides"))
        if Path(page.repo_path).name in solution_of:
            links.append(("kvlab-solutions", solution_of[Path(page.repo_path).name].site_path, "solutions"))
        links += handy
        if i + 1 < len(chapters):
            links.append(("kvlab-next", chapters[i + 1].site_path, f"{_escape(chapters[i + 1].title)} →"))
        render_page(nb, page, nav_html(page.site_path, links), site_paths, out)
    chapter_of = {Path(c.repo_path).name: c for c in chapters}
    for page in solutions:
        links = [home]
        chapter = chapter_of.get(Path(page.repo_path).name)
        if chapter:
            links.append(("kvlab-chapter", chapter.site_path, f"← back to the chapter: {_escape(chapter.title)}"))
        render_page(nbformat.read(page.source, as_version=4), page, nav_html(page.site_path, links), site_paths, out)
    for page in documents:
        nb = _markdown_notebook(page.source.read_text(encoding="utf-8"))
        render_page(nb, page, nav_html(page.site_path, [home]), site_paths, out)
    index = Page(ROOT / "README.md", "index.md", "index.html", "kvlab: the course")
    nb = _markdown_notebook(index_markdown(chapters, solutions, documents, decks))
    render_page(nb, index, "", site_paths, out)
    return {"pages": len(chapters) + len(solutions) + len(documents) + 1, "decks": len(decks)}


def prepare_out_dir(out: Path, force: bool) -> None:
    """Create OUT_DIR, or empty it with --force; never the repository or a folder holding it or a git checkout."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"OUT_DIR {out} is a file, not a folder")
    resolved = out.resolve()
    if resolved == ROOT or resolved in ROOT.parents or (resolved / ".git").exists():
        raise ValueError(f"OUT_DIR {out} holds the repository (or a git checkout): choose a folder of its own")
    if out.exists() and any(out.iterdir()):
        if not force:
            raise ValueError(f"OUT_DIR {out} is not empty: pass --force to replace its contents")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path, metavar="OUT_DIR", help="where the site goes (created if missing)")
    parser.add_argument("--force", action="store_true", help="empty a non-empty OUT_DIR first")
    parser.add_argument("--notebooks", type=Path, default=ROOT / "notebooks",
                        help="the folder to read the chapters from (default: the repository's notebooks/)")
    args = parser.parse_args(argv)
    if not args.notebooks.is_dir() or not any(args.notebooks.glob("[0-9][0-9]_*.ipynb")):
        parser.error(f"--notebooks {args.notebooks}: not a folder holding NN_name.ipynb chapters")
    try:
        prepare_out_dir(args.out_dir, args.force)
    except ValueError as error:
        parser.error(str(error))
    start = time.perf_counter()
    counts = build(args.out_dir, args.notebooks)
    print(f"built {counts['pages']} pages and {counts['decks']} decks in {time.perf_counter() - start:.1f} s: "
          f"open {args.out_dir / 'index.html'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
