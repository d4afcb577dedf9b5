"""Launchers of parconv runs (workstation mpirun, Slurm sweeps) and the gathering of their reports.

``python -m launch.sweep --help`` writes the scripts of a sweep; ``python -m launch.collect DIR``
gathers the sweep's reports into one CSV and one JSON table.
"""
