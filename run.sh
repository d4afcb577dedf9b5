#!/usr/bin/env bash
# Usage: bash run.sh [-n P] [parconv.run options...]
# Installs the pinned requirements into .venv (first time only; see scripts/setup_env.sh), then
# runs the distributed convolution on P MPI processes (default 64):
#     mpirun -n P python -m parconv.run [options]
# With no options it runs the default layer with --check.
# BLAS threads per rank: $OMP_NUM_THREADS if set, else cores / P (at least 1).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/scripts/setup_env.sh"
ranks=64
if [ "${1:-}" = "-n" ]; then ranks="$2"; shift 2; fi
# the default run checks its result: every rank against its own serial recomputation (no gather)
if [ $# -eq 0 ]; then set -- --check; fi
case "$ranks" in ''|*[!0-9]*|0) echo "parconv: error: -n needs a positive number of processes, got '$ranks'" >&2; exit 2 ;; esac
cores="$(nproc 2>/dev/null || echo 1)"
threads="${OMP_NUM_THREADS:-$(( cores / ranks > 0 ? cores / ranks : 1 ))}"
export OMP_NUM_THREADS="$threads" OPENBLAS_NUM_THREADS="${OPENBLAS_NUM_THREADS:-$threads}" \
       MKL_NUM_THREADS="${MKL_NUM_THREADS:-$threads}"
launch=("$MPIRUN")
over=""
if [ "$ranks" -gt "$cores" ]; then
  over=", oversubscribed on $cores cores"
  # Open MPI refuses more ranks than cores unless told; MPICH's hydra needs nothing
  "$MPIRUN" --version 2>&1 | grep -qi "open mpi" && launch+=(--oversubscribe)
fi
echo "parconv: launching $ranks ranks ($threads BLAS thread(s) each$over): mpirun -n $ranks python -m parconv.run $*" >&2
exec "${launch[@]}" -n "$ranks" "$PY" -m parconv.run "$@"
