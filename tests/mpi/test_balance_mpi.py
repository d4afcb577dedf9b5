"""The balanced start at any communicator size: every data path (seed, file, root arrays) starts
from the balanced initial layout, the "balance" phases move exactly the predicted bytes, the
output equals the reference and a run from unbalanced work pieces (user blocks), and the run is
held against the problem's bound.

Run as ``mpirun -n N python -m mpi4py -m pytest --with-mpi tests/mpi/test_balance_mpi.py``.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from _grids import sampled_grids
from mpi4py import MPI
from test_conv_mpi import LAYERS, agree_all  # same folder (rootdir-relative import)
from test_engine_mpi import piece_problem

from parconv.conv import distributed_conv2d
from parconv.data import SeededLayer, owned_pieces, random_layer_data
from parconv.kernels import reference_conv2d
from parconv.mpi.distribute import OwnedBlocks
from parconv.mpi.hdf5 import FileLayer, write_layer_file
from parconv.plan import make_plan
from parconv.plan.predict import BALANCE_PHASES
from parconv.spec import ConvSpec

pytestmark = pytest.mark.mpi(min_size=1)

SEED = 5
KEYS = ("sent", "received", "messages")
#: layers whose work pieces are uneven at small P (strides, padding-only blocks, odd sizes)
UNEVEN = {
    "7x7-stride-2": ConvSpec(batch=2, in_channels=3, out_channels=6, in_size=(20, 16),
                             kernel_size=7, stride=2, padding=3, bias=True),
    **{name: LAYERS[name] for name in ("odd-3x3-bias", "stride-2x3-nonsquare", "1x1-stride-2",
                                       "stride-3-padding-only-blocks")},
}


def balance_problems(result) -> list[str]:
    """Where the measured balance phases differ from the plan, or the run was not held against
    the problem's bound."""
    report, plan, problems = result.report, result.plan, []
    per_phase = report["bytes"]["per_phase"]
    for phase in BALANCE_PHASES:
        for key in KEYS:
            if per_phase[phase][key] != plan.predicted[phase][key].tolist():
                problems.append(f"{phase} {key}: measured {per_phase[phase][key]}, predicted "
                                f"{plan.predicted[phase][key].tolist()}")
    if not report["balanced_start"] or report["bound_checked"] != "problem":
        problems.append(f"not held to the problem's bound: {report['bound_checked']}")
    if max(report["bytes"]["bound_volume"]) < plan.bound.value * (1 - 1e-9):
        problems.append("busiest volume below the problem's bound")
    if report["bytes"]["bound_volume"] != plan.predicted_bound_volume.tolist():
        problems.append("bound volume differs from the prediction")
    return problems


def moved(result) -> int:
    per_phase = result.report["bytes"]["per_phase"]
    return sum(sum(per_phase[p]["received"]) for p in BALANCE_PHASES)


def surplus(plan) -> bool:
    """Whether some worker's piece exceeds the cap of some array (then the phase must move)."""
    return any((b.counts > b.cap).any()
               for b in (*plan.balance.values(), plan.output_balance))


@pytest.mark.parametrize("name", sorted(UNEVEN))
def test_seeded_runs_balance_exactly_and_equal_unbalanced_blocks(name):
    """On the auto grid and every grid of this size: seeded data from the balanced layout gives
    the reference output and the predicted balance bytes; user blocks (the work pieces, no
    balance phase) give the same output and are held to the layout's bound."""
    comm, spec = MPI.COMM_WORLD, UNEVEN[name]
    reference = reference_conv2d(spec, *random_layer_data(spec, SEED)).astype(spec.dtype_out)
    problems, moving, ending = [], 0, 0
    for dims in [None, *sampled_grids(comm.size, spec)]:
        result = distributed_conv2d(comm, spec, seed=SEED, grid=dims)
        problems += [f"{dims}: {p}" for p in balance_problems(result)]
        problem = piece_problem(spec, result, reference)
        if problem:
            problems.append(f"{dims}: {problem}")
        if surplus(result.plan) != (moved(result) > 0):
            problems.append(f"{dims}: surplus {surplus(result.plan)}, moved {moved(result)}")
        moving += moved(result)
        ending += sum(result.report["bytes"]["per_phase"]["balance_out"]["sent"])
        local = result.plan.schedule(comm.rank)
        pieces = owned_pieces(SeededLayer(spec, SEED), spec, local) if local else [None] * 3
        blocks = OwnedBlocks(*pieces)
        plain = distributed_conv2d(comm, spec, blocks=blocks, plan=result.plan)
        report = plain.report
        if report["balanced_start"] or report["bound_checked"] != "layout" or \
                any(p in report["bytes"]["per_phase"] for p in BALANCE_PHASES):
            problems.append(f"{dims}: blocks ran a balance phase or the problem's bound")
        problem = piece_problem(spec, plain, reference)   # its output pieces, unbalanced
        if problem or (local is not None and plain.output_boxes != local.output_piece_boxes()):
            problems.append(f"{dims}: blocks: {problem or 'boxes are not the output piece'}")
        if report["bytes"]["bound_volume"] != \
                result.plan.predicted_unbalanced_bound_volume.tolist():
            problems.append(f"{dims}: unbalanced bound volume differs from the prediction")
    if comm.size > 2 and name == "7x7-stride-2" and moving == 0:
        problems.append("the balance phase never moved anything")
    if comm.size > 1 and name == "odd-3x3-bias" and ending == 0:
        problems.append("the balanced end (balance_out) never moved anything")
    agree_all(comm, not problems, problems)


@pytest.mark.parametrize("name", ["7x7-stride-2", "stride-2x3-nonsquare"])
def test_root_arrays_are_scattered_as_the_initial_layout(name):
    """Global arrays on the root: the scatter hands out the initial layout (its prediction
    holds), the balance phases follow, the gathered output is the reference."""
    comm, spec = MPI.COMM_WORLD, UNEVEN[name]
    x, w, bias = random_layer_data(spec, SEED)
    reference = reference_conv2d(spec, x, w, bias).astype(spec.dtype_out)
    given = (x, w, bias) if comm.rank == 0 else (None, None, None)
    result = distributed_conv2d(comm, spec, x=given[0], w=given[1], bias=given[2], gather=True)
    problems = balance_problems(result)
    per_phase = result.report["bytes"]["per_phase"]
    for key in KEYS:
        if per_phase["scatter"][key] != result.plan.predicted_scatter[key].tolist():
            problems.append(f"scatter {key} differs from the prediction")
    if comm.rank == 0 and not np.array_equal(result.output, reference):
        problems.append("gathered output differs from the reference")
    agree_all(comm, not problems, problems)


def test_file_input_reads_the_initial_layout(tmp_path_factory):
    """A layer file read through FileLayer: every rank reads the hyperslabs of its initial
    layout, the balance phases move the predicted bytes, the output equals the seeded run's."""
    comm, spec = MPI.COMM_WORLD, UNEVEN["7x7-stride-2"]
    path = None
    if comm.rank == 0:
        path = os.path.join(str(tmp_path_factory.mktemp("balance")), "layer.h5")
        write_layer_file(path, spec, *random_layer_data(spec, SEED))
    path = comm.bcast(path, root=0)
    result = distributed_conv2d(comm, spec, source=FileLayer(path, spec), check=True)
    seeded = distributed_conv2d(comm, spec, seed=SEED, plan=result.plan)
    problems = balance_problems(result)
    if not result.report["check"]["ok"]:
        problems.append(f"check failed: {result.report['check']}")
    if result.output_piece is not None and \
            not np.array_equal(result.output_piece, seeded.output_piece):
        problems.append("file and seeded runs differ")
    agree_all(comm, not problems, problems)


def test_plan_of_the_issue_layer_moves_bytes_and_keeps_the_bound():
    """The 7x7 stride-2 layer of issue 8 at P = 24 (planned only: too many ranks for a test
    run): the balance phase moves bytes and the predicted busiest volume is at least the
    problem's bound.  Local (each rank plans the same)."""
    spec = ConvSpec(batch=16, in_channels=3, out_channels=32, in_size=(100, 80), kernel_size=7,
                    stride=2, padding=3)
    plan = make_plan(spec, 24)
    ok = (plan.predicted_balance["received"].sum() > 0 and surplus(plan)
          and plan.max_volume >= plan.bound.value)
    agree_all(MPI.COMM_WORLD, ok, f"balance {plan.predicted_balance}, max volume "
                                  f"{plan.max_volume}, bound {plan.bound.value}")


def test_command_line_input_file_starts_balanced(tmp_path_factory):
    """python -m parconv.run --input FILE (in this job): every rank reads its initial layout's
    hyperslabs, the report's balance phases equal the plan's, the check passes and the run is
    held to the problem's bound; the seeded run of the same data gives the same output file."""
    from parconv import run
    comm, spec = MPI.COMM_WORLD, UNEVEN["7x7-stride-2"]
    folder = None
    if comm.rank == 0:
        folder = str(tmp_path_factory.mktemp("balance_cli"))
        write_layer_file(f"{folder}/layer.h5", spec, *random_layer_data(spec, SEED))
    folder = comm.bcast(folder, root=0)
    code = run.main(["--input", f"{folder}/layer.h5", "--node", "numpy", "--check", "--quiet",
                     "--report", f"{folder}/report.json"])
    ok, detail = code == 0, f"exit {code}"
    if comm.rank == 0 and ok:
        import json
        report = json.load(open(f"{folder}/report.json"))
        plan = make_plan(spec, comm.size)
        per_phase = report["bytes"]["per_phase"]
        wrong = [f"{p} {k}" for p in BALANCE_PHASES for k in KEYS
                 if per_phase[p][k] != plan.predicted[p][k].tolist()]
        ok = (not wrong and report["check"]["ok"] and report["bound_checked"] == "problem"
              and max(report["bytes"]["bound_volume"]) >= plan.bound.value * (1 - 1e-9))
        detail = f"wrong {wrong}, check {report['check']}, bound {report['bound_checked']}"
    agree_all(comm, ok, detail)


def test_balanced_end_writes_the_output_file_from_every_owner(tmp_path_factory):
    """K = P - 1 output channels of a 3 x 3 image (9 outputs each): on 4 ranks one rank is idle
    and the busy ranks' pieces (9) exceed ceil(|O| / P) (7), so "balance_out" hands the idle
    rank outputs to own.  python -m parconv.run --input/--output (in this job) writes the file
    from every owner; it equals the reference, and the report's balance_out equals the plan's."""
    from parconv import run
    comm = MPI.COMM_WORLD
    spec = ConvSpec(batch=1, in_channels=2, out_channels=max(comm.size - 1, 1), in_size=(3, 3),
                    kernel_size=3, padding=1)
    data = random_layer_data(spec, SEED)
    plan = make_plan(spec, comm.size)
    folder = str(tmp_path_factory.mktemp("balance_end")) if comm.rank == 0 else None
    folder = comm.bcast(folder, root=0)
    if comm.rank == 0:
        write_layer_file(f"{folder}/layer.h5", spec, *data)
    comm.Barrier()
    code = run.main(["--input", f"{folder}/layer.h5", "--output", f"{folder}/out.h5",
                     "--node", "numpy", "--check", "--quiet", "--report", f"{folder}/r.json"])
    ok, detail = code == 0, f"exit {code}"
    if comm.rank == 0 and ok:
        import json

        import h5py
        report = json.load(open(f"{folder}/r.json"))
        with h5py.File(f"{folder}/out.h5", "r") as handle:
            written = handle["output"][...]
        reference = reference_conv2d(spec, *data).astype(spec.dtype_out)
        moved = plan.predicted["balance_out"]
        ok = (np.array_equal(written, reference)
              and report["bytes"]["per_phase"]["balance_out"]["sent"] == moved["sent"].tolist()
              and (comm.size != 4 or (plan.active == 3 and moved["received"][3] > 0)))
        detail = f"written == reference {np.array_equal(written, reference)}, balance_out " \
                 f"{report['bytes']['per_phase']['balance_out']}, plan {moved}"
    agree_all(comm, ok, detail)
