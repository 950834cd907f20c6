"""Where `kvlab bench` writes: a new file in the current folder, a path the user names, or the committed results.

Every path is chosen and checked before the run: a default run measures for a minute and a half, and a path that
cannot be written (a missing folder, ``/proc``, an existing file) must cost the user a one-line error, not the
results. Nothing is overwritten without a flag: the default name is always a fresh one, ``--out`` refuses an
existing file unless ``--force``, and only ``--update-committed`` writes the repository's committed results.
"""

from __future__ import annotations

import datetime
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

__all__ = ["COMMITTED_RESULTS", "OutputPaths", "repository_root", "fresh_name", "check_writable", "output_paths"]

COMMITTED_RESULTS = "benchmarks/results/latest.json"  # relative to the repository; the PNG lies beside it


@dataclass(frozen=True)
class OutputPaths:
    """The JSON file a run writes, and its PNG (None: no plot)."""

    json: Path
    png: Path | None


def repository_root() -> Path:
    """The kvlab repository this package was installed from (``pip install -e .``), found from the package's own
    location, never from the current folder: a maintainer may run the command from anywhere."""
    root = Path(__file__).resolve().parents[2]
    if not (root / "pyproject.toml").is_file() or not (root / Path(COMMITTED_RESULTS).parent).is_dir():
        raise ValueError(f"--update-committed needs kvlab installed from its repository (pip install -e .); "
                         f"the package in {root} is not inside one")
    return root


def fresh_name(folder: Path, stem: str, suffixes: tuple[str, ...] = (".json", ".png")) -> Path:
    """``folder/stem.json``, or ``stem-2``, ``stem-3``...: the first stem for which no file with any of `suffixes`
    exists, so that a run never replaces the JSON or the PNG of an earlier one (two runs in the same second)."""
    for number in range(1, 10_000):
        candidate = folder / (stem if number == 1 else f"{stem}-{number}")
        if not any(candidate.with_suffix(suffix).exists() for suffix in suffixes):
            return candidate.with_suffix(suffixes[0])
    raise ValueError(f"found no free name {stem}-N.json in {str(folder)!r}: choose one with --out")


def check_writable(path: Path, option: str, *, overwrite: bool) -> Path:
    """`path` if a file can be written there now: not a folder, not an existing file unless `overwrite`, in a
    folder that exists and accepts a new file (tried with a temporary file, which also catches ``/proc`` and
    read-only mounts that permission bits do not show)."""
    if path.is_dir():
        raise ValueError(f"{option} must name a file, got the folder {str(path)!r}")
    if path.exists() and not overwrite:
        raise ValueError(f"{option} {str(path)!r} already exists: choose another name, or add --force to replace it")
    folder = path.parent
    if not folder.is_dir():
        raise ValueError(f"{option} {str(path)!r}: the folder {str(folder)!r} does not exist")
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".kvlab-bench-write-test-"):
            pass
    except OSError as error:
        raise ValueError(f"{option} {str(path)!r}: cannot write in {str(folder)!r} ({error.strerror})") from None
    if path.exists() and not os.access(path, os.W_OK):
        raise ValueError(f"{option} {str(path)!r} is read-only")
    return path


def output_paths(*, plan: str, out: str | None, plot: str | None, no_plot: bool, force: bool,
                 update_committed: bool, now: datetime.datetime | None = None) -> OutputPaths:
    """The files of one `kvlab bench` run, checked (`check_writable`) before it starts.

    By default a new ``kvlab-bench-<plan>-<date>-<time>.json`` (and ``.png``) in the current folder; `out` names the
    JSON instead (the PNG goes beside it unless `plot` names one); `update_committed` replaces the repository's
    committed default run, ``benchmarks/results/latest.json`` and ``.png``, the files the READMEs quote.
    """
    if update_committed:
        clashes = [flag for flag, given in (("--quick", plan != "default"), ("--out", out is not None),
                                            ("--plot", plot is not None), ("--no-plot", no_plot)) if given]
        if clashes:
            raise ValueError(f"--update-committed writes the default run to the committed files; "
                             f"drop {', '.join(clashes)}")
        json_path = repository_root() / COMMITTED_RESULTS
        return OutputPaths(check_writable(json_path, "--update-committed", overwrite=True),
                           check_writable(json_path.with_suffix(".png"), "--update-committed", overwrite=True))
    if out is None:
        stamp = (now or datetime.datetime.now()).strftime("%Y%m%d-%H%M%S")
        json_path = fresh_name(Path.cwd(), f"kvlab-bench-{plan}-{stamp}", (".json",) if no_plot else (".json", ".png"))
    else:
        json_path = Path(out)
        if json_path.suffix != ".json":
            raise ValueError(f"--out must name a .json file, got {out!r}")
    json_path = check_writable(json_path, "--out", overwrite=force)
    if no_plot:
        return OutputPaths(json_path, None)
    png_path = Path(plot) if plot is not None else json_path.with_suffix(".png")
    if png_path.suffix != ".png":
        raise ValueError(f"--plot must name a .png file, got {plot!r}")
    return OutputPaths(json_path, check_writable(png_path, "--plot" if plot is not None else "--out", overwrite=force))
