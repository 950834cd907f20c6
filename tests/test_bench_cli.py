"""Where `kvlab bench` writes: never over an existing file without a flag, every path checked before the run.

The run itself is replaced by the committed results (`stub_run`): these tests are about files, not timings. The
end-to-end run through the command line is `quick_run` in tests/test_bench.py.
"""

import os

import pytest

from kvlab import bench
from kvlab.bench import paths
from kvlab.cli import main

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]


@pytest.fixture
def stub_run(monkeypatch):
    """`run_benchmarks` returns the committed default run at once; the list records each call's plan."""
    committed = bench.load_results(ROOT / bench.COMMITTED_RESULTS)
    calls = []

    def run(plan, **_):
        calls.append(plan)
        return committed

    monkeypatch.setattr(bench, "run_benchmarks", run)
    return calls


def test_default_run_writes_new_files_in_the_current_folder_and_no_folders(tmp_path, monkeypatch, stub_run, capsys):
    monkeypatch.chdir(tmp_path)
    old = tmp_path / "benchmarks" / "results"  # as if run from a checkout: the committed results stay as they are
    old.mkdir(parents=True)
    (old / "latest.json").write_text("committed")
    assert main(["bench"]) == 0 and main(["bench"]) == 0  # twice in the same second: two fresh names
    written = sorted(p.name for p in tmp_path.iterdir() if p.is_file())
    assert len(written) == 4 and all(name.startswith("kvlab-bench-default-") for name in written)
    assert sorted(p.suffix for p in tmp_path.iterdir() if p.is_file()) == [".json", ".json", ".png", ".png"]
    assert (old / "latest.json").read_text() == "committed" and sorted(os.listdir(old)) == ["latest.json"]
    printed = capsys.readouterr().out
    assert all(str(tmp_path / name) in printed for name in written)
    assert stub_run == ["default", "default"]


def test_quick_run_names_its_plan_and_no_plot_writes_only_json(tmp_path, monkeypatch, stub_run):
    monkeypatch.chdir(tmp_path)
    assert main(["bench", "--quick", "--no-plot"]) == 0  # what .ci/run runs
    (written,) = tmp_path.iterdir()
    assert written.name.startswith("kvlab-bench-quick-") and written.suffix == ".json"
    assert bench.load_results(written).cache_speedup == bench.load_results(ROOT / bench.COMMITTED_RESULTS).cache_speedup


def test_fresh_name_skips_a_stem_whose_json_or_png_exists(tmp_path):
    (tmp_path / "run.png").write_bytes(b"")
    (tmp_path / "run-2.json").write_text("")
    assert paths.fresh_name(tmp_path, "run") == tmp_path / "run-3.json"
    assert paths.fresh_name(tmp_path, "run", (".json",)) == tmp_path / "run.json"


def test_out_refuses_an_existing_file_before_the_run_unless_force(tmp_path, stub_run, capsys):
    out = tmp_path / "mine.json"
    out.write_text("my results")
    assert main(["bench", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"--out {str(out)!r} already exists" in err and "--force" in err and err.count("\n") == 1
    assert out.read_text() == "my results" and stub_run == []  # refused before measuring
    assert main(["bench", "--out", str(out), "--force"]) == 0
    assert bench.load_results(out).plan.name == "default" and (tmp_path / "mine.png").exists()


def test_out_refuses_an_existing_plot_beside_it(tmp_path, stub_run, capsys):
    (tmp_path / "mine.png").write_bytes(b"my plot")
    assert main(["bench", "--out", str(tmp_path / "mine.json")]) == 2
    assert "mine.png' already exists" in capsys.readouterr().err and stub_run == []
    assert main(["bench", "--out", str(tmp_path / "mine.json"), "--plot", str(tmp_path / "other.png")]) == 0
    assert (tmp_path / "mine.png").read_bytes() == b"my plot"


@pytest.mark.parametrize("out, message", [
    ("/proc/x.json", "cannot write in '/proc'"),
    ("{tmp}/missing/x.json", "does not exist"),
    ("{tmp}/folder.json", "must name a file, got the folder"),
    ("{tmp}/x.csv", "--out must name a .json file"),
])
def test_out_that_cannot_be_written_is_refused_before_the_run(tmp_path, stub_run, capsys, out, message):
    (tmp_path / "folder.json").mkdir()
    assert main(["bench", "--quick", "--out", out.format(tmp=tmp_path)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and stub_run == []


def test_update_committed_replaces_the_repositorys_results_wherever_it_runs(tmp_path, monkeypatch, stub_run):
    repo = tmp_path / "repo"
    (repo / "benchmarks" / "results").mkdir(parents=True)
    (repo / "benchmarks" / "results" / "latest.json").write_text("old")
    monkeypatch.setattr(paths, "repository_root", lambda: repo)
    monkeypatch.chdir(tmp_path)
    assert main(["bench", "--update-committed"]) == 0
    assert bench.load_results(repo / "benchmarks" / "results" / "latest.json").plan.name == "default"
    assert (repo / "benchmarks" / "results" / "latest.png").read_bytes()[:4] == b"\x89PNG"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["repo"]  # nothing in the current folder


@pytest.mark.parametrize("extra", [["--quick"], ["--out", "x.json"], ["--no-plot"], ["--plot", "x.png"]])
def test_update_committed_refuses_options_that_would_write_something_else(stub_run, capsys, extra):
    assert main(["bench", "--update-committed", *extra]) == 2
    assert f"drop {extra[0]}" in capsys.readouterr().err and stub_run == []


def test_repository_root_is_found_from_the_package_not_the_current_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert paths.repository_root() == ROOT
    monkeypatch.setattr(paths, "__file__", str(tmp_path / "site-packages" / "kvlab" / "bench" / "paths.py"))
    with pytest.raises(ValueError, match=r"--update-committed needs kvlab installed from its repository"):
        paths.repository_root()


def test_a_failed_write_after_the_run_still_prints_the_table(tmp_path, monkeypatch, stub_run, capsys):
    def full_disk(results, path):
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(bench, "save_results", full_disk)
    assert main(["bench", "--out", str(tmp_path / "r.json")]) == 2
    captured = capsys.readouterr()
    assert "1  cache speed-up" in captured.out
    assert "No space left on device; the table above holds the results" in captured.err
