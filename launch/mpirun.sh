#!/usr/bin/env bash
# Run: launch/mpirun.sh -n 8 --layer resnet50.layer2.0.conv2 --batch 4 --node numpy --check
#
# Local launcher of parconv.run: `launch/mpirun.sh [-n P] [parconv.run options ...]`.
# Every option after -n P goes to `python -m parconv.run` unchanged (see --help there).
# P defaults to $PARCONV_NP or 4.
#
# Which python:  $PARCONV_PYTHON or $PYTHON, else $VIRTUAL_ENV/bin/python, else the repository's
#                .venv (made by run.sh / test.sh), else ../venv next to the repository, else
#                python3 on PATH.
# Which mpirun:  $MPIRUN, else the mpirun installed next to that python (the mpich wheel of
#                mpi4py), else mpirun / mpiexec on PATH.  On a cluster, mpi4py must be built
#                against the cluster's MPI and $MPIRUN (or PATH) must point to that MPI's launcher.
# Extra launcher flags (e.g. "--bind-to core"): $MPIRUN_FLAGS.  BLAS threads per rank:
# $OMP_NUM_THREADS (default 1).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$here")"

np="${PARCONV_NP:-4}"
if [[ $# -ge 2 && ( "$1" == "-n" || "$1" == "-np" || "$1" == "--np" ) ]]; then
    np="$2"
    shift 2
fi

if [[ -n "${PARCONV_PYTHON:-${PYTHON:-}}" ]]; then
    python="${PARCONV_PYTHON:-$PYTHON}"
elif [[ -n "${VIRTUAL_ENV:-}" && -x "$VIRTUAL_ENV/bin/python" ]]; then
    python="$VIRTUAL_ENV/bin/python"
elif [[ -x "$repo/.venv/bin/python" ]]; then
    python="$repo/.venv/bin/python"
elif [[ -x "$repo/../venv/bin/python" ]]; then
    python="$repo/../venv/bin/python"
else
    python="$(command -v python3)"
fi

if [[ -n "${MPIRUN:-}" ]]; then
    mpirun="$MPIRUN"
elif [[ -x "$(dirname "$python")/mpirun" ]]; then
    mpirun="$(dirname "$python")/mpirun"
elif command -v mpirun >/dev/null; then
    mpirun="$(command -v mpirun)"
elif command -v mpiexec >/dev/null; then
    mpirun="$(command -v mpiexec)"
else
    echo "launch/mpirun.sh: no mpirun found; set MPIRUN=/path/to/mpirun" >&2
    exit 2
fi

export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
# one BLAS thread per rank unless told otherwise: P ranks x all cores of threads oversubscribe
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
# shellcheck disable=SC2086  # MPIRUN_FLAGS is a list of words on purpose
exec "$mpirun" ${MPIRUN_FLAGS:-} -n "$np" "$python" -m parconv.run "$@"
