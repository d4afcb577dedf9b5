#!/usr/bin/env bash
# Usage: bash test.sh [--quick]
# Installs the pinned requirements into .venv (first time only), then runs the serial test suite
# and the MPI suite at 1, 2, 3, 4, 6 and 8 processes; the last line adds all runs up.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/scripts/setup_env.sh"
exec "$PY" scripts/run_tests.py --mpirun "$MPIRUN" "$@"
