#!/usr/bin/env bash
# Usage: source scripts/setup_env.sh   (from run.sh and test.sh)
# Creates .venv next to this repository (once) and installs the pinned requirements and parconv
# itself (editable) into it.
# Set PARCONV_PYTHON to use an existing interpreter/environment instead (e.g. on a cluster).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ -n "${PARCONV_PYTHON:-}" ]; then
  PY="$PARCONV_PYTHON"
else
  if [ ! -x "$repo/.venv/bin/python" ]; then
    echo "parconv: creating $repo/.venv" >&2
    python3 -m venv "$repo/.venv"
  fi
  PY="$repo/.venv/bin/python"
  stamp="$repo/.venv/.requirements.sha"
  want="$(cat "$repo/requirements.txt" "$repo/pyproject.toml" | sha256sum | cut -d' ' -f1)"
  if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "parconv: installing requirements.txt and parconv (editable) into .venv" >&2
    "$PY" -m pip install --disable-pip-version-check -q -r "$repo/requirements.txt"
    # editable, so that `python -m parconv.run` works from any folder (e.g. a Slurm job's)
    "$PY" -m pip install --disable-pip-version-check -q --no-deps -e "$repo"
    echo "$want" > "$stamp"
  fi
fi
# mpirun: the one installed next to the interpreter (mpich wheel), else the system's.
MPIRUN="$(dirname "$PY")/mpirun"
[ -x "$MPIRUN" ] || MPIRUN="$(command -v mpirun || command -v mpiexec || true)"
export PY MPIRUN
cd "$repo"
