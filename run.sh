#!/usr/bin/env bash
# Usage: bash run.sh [-n P] [parconv.run options...]
# Installs the pinned requirements into .venv (first time only), then runs the distributed
# convolution on P MPI processes (default 64):  mpirun -n P python -m parconv.run [options]
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/scripts/setup_env.sh"
ranks=64
if [ "${1:-}" = "-n" ]; then ranks="$2"; shift 2; fi
# BLAS threads per rank: cores / ranks (at least 1) unless the user chose them.  Ranks that each
# start one BLAS thread per core oversubscribe the node (12.8x slower kernels at P = 4, 2 cores).
if [ -z "${OMP_NUM_THREADS:-}${OPENBLAS_NUM_THREADS:-}${MKL_NUM_THREADS:-}" ]; then
  cores="$(nproc 2>/dev/null || getconf _NPROCESSORS_ONLN 2>/dev/null || echo 1)"
  threads=$(( cores / ranks ))
  [ "$threads" -ge 1 ] || threads=1
  export OMP_NUM_THREADS="$threads"
fi
exec "$MPIRUN" -n "$ranks" "$PY" -m parconv.run "$@"
