"""The set-up promises of the README: pyproject, environment.yml and the floors file (tools/floors.txt) agree, CI
runs the README's test command, and `import kvlab` stays light."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
CONDA_NAMES = {"torch": "pytorch"}  # conda-forge's name for a package, where it differs from PyPI's


def _requirement_name(requirement: str) -> str:
    return re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0].strip().lower()


def _pyproject():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _environment_dependencies() -> tuple[list[str], list[str]]:
    """The conda and pip entries of environment.yml (a flat list: no YAML library needed)."""
    conda, pip, in_pip = [], [], False
    for line in (ROOT / "environment.yml").read_text().splitlines():
        entry = re.match(r"^(\s*)- (.+?)\s*(#.*)?$", line)
        if not entry:
            continue
        if entry.group(2) == "pip:":
            in_pip = True
        elif in_pip and len(entry.group(1)) > 2:
            pip.append(entry.group(2))
        else:
            in_pip = False
            conda.append(entry.group(2))
    return conda, pip


def test_every_pyproject_dependency_is_in_environment_yml():
    project = _pyproject()["project"]
    required = project["dependencies"] + [r for extra in project["optional-dependencies"].values() for r in extra]
    conda, pip = _environment_dependencies()
    conda_names = {_requirement_name(entry) for entry in conda + pip}  # pip: what conda-forge does not carry
    missing = [r for r in required if CONDA_NAMES.get(_requirement_name(r), _requirement_name(r)) not in conda_names]
    assert not missing, f"environment.yml lacks {missing}"


def _pyproject_requirements() -> list[Requirement]:
    """Every requirement of pyproject.toml: the dependencies and every extra's."""
    project = _pyproject()["project"]
    extras = [r for extra in project["optional-dependencies"].values() for r in extra]
    return [Requirement(r) for r in project["dependencies"] + extras]


def _floors() -> dict[str, str]:
    """tools/floors.txt as {name: pinned version}: the constraints the floor-version run installs."""
    lines = (ROOT / "tools" / "floors.txt").read_text().splitlines()
    pins = [line.split("==") for line in lines if line.strip() and not line.startswith("#")]
    return {name.strip().lower(): pin.strip() for name, pin in pins}


def _lower_bound(requirement: Requirement) -> Version | None:
    bounds = [Version(s.version) for s in requirement.specifier if s.operator == ">="]
    return max(bounds, default=None)


def test_environment_yml_declares_the_same_versions_as_pyproject():
    conda, pip = _environment_dependencies()
    conda_versions = {_requirement_name(entry): SpecifierSet(entry[len(_requirement_name(entry)):])
                      for entry in conda + [p for p in pip if not p.startswith("-")]}
    differing = []
    for requirement in _pyproject_requirements():
        conda_name = CONDA_NAMES.get(requirement.name, requirement.name)
        if conda_name in conda_versions and conda_versions[conda_name] != requirement.specifier:
            differing.append(f"{requirement} (environment.yml: {conda_name}{conda_versions[conda_name]})")
    assert not differing, f"pyproject.toml and environment.yml disagree: {differing}"


def test_every_dependency_declares_a_floor():
    unbounded = [str(r) for r in _pyproject_requirements() if _lower_bound(r) is None]
    assert not unbounded, f"no lower bound (>=) for {unbounded}: the floor-version run cannot test them"


def test_floors_file_pins_exactly_the_declared_floors():
    """The floor-version run (tools/floor_versions.sh) installs tools/floors.txt; if it drifted from pyproject, the
    run would test versions nobody declared."""
    floors = _floors()
    declared = {r.name.lower(): _lower_bound(r) for r in _pyproject_requirements()}
    differing = [f"{name}: pyproject >={bound}, floors.txt {floors.get(name)}" for name, bound in declared.items()
                 if name not in floors or Version(floors[name]) != bound]
    assert not differing, f"tools/floors.txt and pyproject.toml disagree: {differing}"
    assert set(floors) == set(declared), f"floors.txt names packages pyproject does not: {set(floors) - set(declared)}"


def test_the_floor_run_installs_the_floors_and_the_readme_names_it():
    script = (ROOT / "tools" / "floor_versions.sh").read_text()
    assert 'pip install --quiet -e ".[test]" -c tools/floors.txt' in script
    assert "tools/floor_versions.sh" in (ROOT / "README.md").read_text()


def test_environment_yml_installs_kvlab_itself_with_pip():
    _, pip = _environment_dependencies()
    assert "-e ." in pip


def test_pyproject_declares_an_unpinned_torch_and_the_console_script():
    """A floor, no pin and no ceiling: CI pins its build in .ci/run, a learner keeps the torch they have."""
    project = _pyproject()["project"]
    (torch,) = [Requirement(r) for r in project["dependencies"] if Requirement(r).name == "torch"]
    assert [s.operator for s in torch.specifier] == [">="]
    assert project["scripts"]["kvlab"] == "kvlab.cli:main"


def test_ci_runs_the_readme_test_command():
    readme_commands = re.findall(r"```bash\n(.+?)\n```", (ROOT / "README.md").read_text())
    test_command = next(c for c in readme_commands if c.rstrip().endswith("pytest"))
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert test_command.strip() in ci_lines
    assert "python -m pip install --quiet torch==2.13.0" in ci_lines


def test_pytest_runs_the_notebooks_too():
    options = _pyproject()["tool"]["pytest"]["ini_options"]
    assert options["testpaths"] == ["tests", "notebooks", "solutions"]  # the solutions are executed too
    assert "--nbval" in options["addopts"] and "--nbval-current-env" in options["addopts"]


def test_import_kvlab_does_not_pull_in_plotting_widgets_or_transformers():
    code = ("import sys, kvlab; heavy = [m for m in ('matplotlib', 'ipywidgets', 'IPython', 'transformers') "
            "if m in sys.modules]; print(heavy)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_public_api():
    import kvlab

    for name in ["GPTConfig", "TinyGPT", "Cache", "DynamicCache", "StaticCache", "generate", "generate_with_stats",
                 "CharTokenizer", "load_hello_model"]:
        assert hasattr(kvlab, name), name
    for method in ["update", "get_seq_length", "get_max_cache_shape", "reorder_cache", "reset", "nbytes"]:
        assert hasattr(kvlab.Cache, method), method


def test_readme_gives_each_chapters_minutes_from_its_prose():
    from tests.helpers import chapter_minutes

    rows = {m.group(1): int(m.group(2)) for m in re.finditer(r"^\| \[`(\d\d_\w+)`\].*\| (\d+) \|$",
                                                              (ROOT / "README.md").read_text(encoding="utf-8"),
                                                              re.MULTILINE)}
    notebooks = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    assert set(rows) == {nb.stem for nb in notebooks}, "every chapter has one README row with its minutes"
    assert {nb.stem: chapter_minutes(nb) for nb in notebooks} == rows, "recount with chapter_minutes"


MAX_PROSE_WORDS = 2_460  # "no chapter over about 2,400 words of prose" (issue 15): 2,400 with 2.5% slack


@pytest.mark.parametrize("notebook", sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")), ids=lambda p: p.stem)
def test_no_chapter_is_longer_than_a_sitting(notebook):
    """Prose words as chapter_minutes counts them: a longer chapter is split (as 08 and 09 were) or trimmed."""
    cells = json.loads(notebook.read_text(encoding="utf-8"))["cells"]
    words = sum(len("".join(c["source"]).split()) for c in cells if c["cell_type"] == "markdown")
    assert words <= MAX_PROSE_WORDS, f"{notebook.name}: {words} words of prose"


@pytest.mark.parametrize("notebook", sorted([*(ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"),
                                             *(ROOT / "solutions").glob("[0-9][0-9]_*.ipynb")]),
                         ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_nbval_markers_are_tags_with_a_reason(notebook):
    """Learners see the course's code, not nbval's comment markers; a cell whose output is not compared says why."""
    for i, cell in enumerate(json.loads(notebook.read_text(encoding="utf-8"))["cells"]):
        if cell["cell_type"] != "code":
            continue
        source = "".join(cell["source"])
        assert "NBVAL_" not in source, f"cell {i}: use the nbval-ignore-output / raises-exception tags"
        if "nbval-ignore-output" in cell["metadata"].get("tags", []):
            assert source.startswith("# "), f"cell {i}: an ignored cell starts with a comment saying why"


def test_each_solutions_notebook_answers_a_chapter():
    """solutions/NN_name.ipynb holds the worked answers of notebooks/NN_name.ipynb, which links to it."""
    solutions = sorted((ROOT / "solutions").glob("*.ipynb"))
    assert solutions, "solutions/ holds the worked answers of the code-writing exercises"
    chapters = {nb.name for nb in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")}
    assert {nb.name for nb in solutions} <= chapters


@pytest.mark.parametrize("notebook", sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")), ids=lambda p: p.stem)
def test_every_chapter_ends_with_a_link_to_the_next(notebook):
    """A learner finishing a chapter finds the next one in its last cell; the last chapter leads back to the start."""
    chapters = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    last = "".join(json.loads(notebook.read_text(encoding="utf-8"))["cells"][-1]["source"])
    following = chapters.index(notebook) + 1
    target = chapters[following].name if following < len(chapters) else chapters[0].name
    assert f"]({target})" in last, f"{notebook.name}'s last cell does not link {target}"


def test_the_course_command_serves_the_whole_repository():
    """`jupyter lab notebooks/00_start_here.ipynb` alone serves notebooks/ only, and chapter 00's links to
    ../README.md, ../docs/ and ../solutions/ would lead nowhere in Lab."""
    readme_commands = re.findall(r"```bash\n(.+?)\n```", (ROOT / "README.md").read_text())
    course = next(c for c in readme_commands if c.rstrip().endswith("00_start_here.ipynb"))
    assert "jupyter lab --ServerApp.root_dir=. notebooks/00_start_here.ipynb" in course
