"""Run pytest under MPI with one report: rank 0 prints and writes JUnit XML, the others are quiet.

Usage (from scripts/run_tests.py): mpirun -n N python -m mpi4py scripts/mpi_pytest.py XML [pytest args]
Running under ``python -m mpi4py`` makes an unhandled exception abort the whole job, not hang it.
"""

import os
import sys

import pytest
from mpi4py import MPI

xml, args = sys.argv[1], sys.argv[2:]
if MPI.COMM_WORLD.Get_rank() == 0:
    args += ["--junitxml", xml]
else:   # the verdicts are collective: rank 0's report speaks for every rank
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
sys.exit(pytest.main(["--with-mpi", *args]))
