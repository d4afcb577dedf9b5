#!/usr/bin/env bash
# Usage: bash run.sh [-n P] [parconv.run options...]
# Installs the pinned requirements into .venv (first time only), then runs the distributed
# convolution on P MPI processes (default 64):  mpirun -n P python -m parconv.run [options]
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/scripts/setup_env.sh"
ranks=64
if [ "${1:-}" = "-n" ]; then ranks="$2"; shift 2; fi
exec "$MPIRUN" -n "$ranks" "$PY" -m parconv.run "$@"
