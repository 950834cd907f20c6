#!/usr/bin/env python3
"""Re-fetch the JavaScript, CSS and fonts the course website serves itself (maintainers only).

    python tools/vendor_site_assets.py            fetch with `npm pack`, copy into tools/site_assets/, rewrite MANIFEST
    python tools/vendor_site_assets.py --check    verify the committed files against tools/site_assets/MANIFEST.json

Why vendored: the site must work offline (a classroom on shared Wi-Fi, a handout opened from file://) and CI may not
reach npm, so `tools/build_site.py` copies these committed files and never downloads. Only the few files the site loads
are kept (about 5 MB): MathJax 3's single-file SVG build (no font files to fetch, every TeX extension included, so
nothing is loaded lazily), reveal.js 5 with its white theme and the theme's .woff fonts, and the Jupyter widgets HTML
manager's standalone `embed.js` (no require.js needed: the built-in controls are bundled) with its .woff2 icon fonts.
MANIFEST.json records package, version, source and sha256 of each file; tests/test_site_assets.py checks them.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ASSETS = Path(__file__).resolve().parent / "site_assets"
MANIFEST = ASSETS / "MANIFEST.json"

# package -> (version, {path inside the npm tarball's package/: path under site_assets/})
PACKAGES: dict[str, tuple[str, dict[str, str]]] = {
    "mathjax": ("3.2.2", {
        "es5/tex-svg-full.js": "mathjax/tex-svg-full.js",
        "LICENSE": "mathjax/LICENSE",
    }),
    "reveal.js": ("5.2.1", {
        "dist/reveal.js": "reveal.js/dist/reveal.js",
        "dist/reveal.css": "reveal.js/dist/reveal.css",
        "dist/theme/white.css": "reveal.js/dist/theme/white.css",
        **{f"dist/theme/fonts/source-sans-pro/{name}": f"reveal.js/dist/theme/fonts/source-sans-pro/{name}"
           for name in ["source-sans-pro.css", "LICENSE", "source-sans-pro-regular.woff",
                        "source-sans-pro-italic.woff", "source-sans-pro-semibold.woff",
                        "source-sans-pro-semibolditalic.woff"]},
        "plugin/notes/notes.js": "reveal.js/plugin/notes/notes.js",
        "LICENSE": "reveal.js/LICENSE",
    }),
    "@jupyter-widgets/html-manager": ("1.0.15", {
        "dist/embed.js": "html-manager/embed.js",
        "dist/embed.js.LICENSE.txt": "html-manager/embed.js.LICENSE.txt",
        # Font Awesome's .woff2 files, which embed.js's CSS names by hash; browsers take woff2 before eot/ttf/svg.
        "dist/1551f4f60c37af51121f.woff2": "html-manager/1551f4f60c37af51121f.woff2",
        "dist/7a3337626410ca2f4071.woff2": "html-manager/7a3337626410ca2f4071.woff2",
        "dist/d878b0a6a1144760244f.woff2": "html-manager/d878b0a6a1144760244f.woff2",
    }),
}


def sha256(path: Path) -> str:
    """The file's hex digest: what the manifest pins, so a silently changed asset fails a test."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _npm_pack(package: str, version: str, into: Path) -> Path:
    """Download one package's tarball with npm (the only network use; never in CI) and extract it."""
    result = subprocess.run(["npm", "pack", f"{package}@{version}", "--pack-destination", str(into), "--json"],
                            capture_output=True, text=True, check=True)
    tarball = into / json.loads(result.stdout)[0]["filename"]
    target = into / tarball.name.removesuffix(".tgz")
    with tarfile.open(tarball) as archive:
        archive.extractall(target, filter="data")
    return target / "package"


def vendor() -> list[dict]:
    """Fetch every package, copy its chosen files into site_assets/ and return the manifest's entries."""
    if shutil.which("npm") is None:
        raise SystemExit("npm is not on PATH: install Node.js to re-vendor the site's assets")
    entries = []
    with tempfile.TemporaryDirectory() as tmp:
        for package, (version, files) in PACKAGES.items():
            unpacked = _npm_pack(package, version, Path(tmp))
            for source, target in files.items():
                destination = ASSETS / target
                destination.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(unpacked / source, destination)
                entries.append({"path": target, "package": package, "version": version,
                                "source": f"npm:{package}@{version}/{source}", "sha256": sha256(destination),
                                "bytes": destination.stat().st_size})
    return entries


def check(assets: Path = ASSETS) -> list[str]:
    """Problems with the committed assets: a file missing, changed, or not in the manifest (empty when all agree)."""
    entries = json.loads((assets / "MANIFEST.json").read_text(encoding="utf-8"))["files"]
    problems = [f"{e['path']}: missing" for e in entries if not (assets / e["path"]).is_file()]
    problems += [f"{e['path']}: sha256 differs from the manifest" for e in entries
                 if (assets / e["path"]).is_file() and sha256(assets / e["path"]) != e["sha256"]]
    listed = {e["path"] for e in entries} | {"MANIFEST.json"}
    problems += [f"{p.relative_to(assets).as_posix()}: not in the manifest" for p in sorted(assets.rglob("*"))
                 if p.is_file() and p.relative_to(assets).as_posix() not in listed]
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="verify the files against the manifest; fetch nothing")
    args = parser.parse_args(argv)
    if not args.check:
        if ASSETS.exists():
            shutil.rmtree(ASSETS)
        entries = vendor()
        total = sum(e["bytes"] for e in entries)
        MANIFEST.write_text(json.dumps({"total_bytes": total, "files": entries}, indent=1) + "\n", encoding="utf-8")
        print(f"{len(entries)} files, {total / 1e6:.2f} MB in {ASSETS}")
    problems = check()
    for problem in problems:
        print(problem, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
