"""The engine without a root: seeded data made per rank, the per-rank check, planned exchanges
reused across repeats, overlap on and off.

Run as ``mpirun -n N python -m mpi4py -m pytest --with-mpi tests/mpi`` for N in 1 .. 8.  Verdicts
are reduced over the communicator (`agree_all`).
"""

from __future__ import annotations

import numpy as np
import pytest
from _grids import sampled_grids
from mpi4py import MPI
from test_conv_mpi import LAYERS, agree_all, mismatch  # same folder (rootdir-relative import)

from parconv.conv import distributed_conv2d, shared_plan
from parconv.data import SeededLayer, owned_pieces, random_layer_data
from parconv.errors import ParconvRuntimeError
from parconv.kernels import NumpyKernel, reference_conv2d
from parconv.mpi.exchange import LayerExchange, LayerTypes
from parconv.mpi.pipeline import KernelChunks, run_layer
from parconv.mpi.procgrid import ProcGrid
from parconv.plan import PHASES, make_plan
from parconv.plan.predict import BALANCE_PHASES
from parconv.plan.dims import dimension_caps, factorizations

pytestmark = pytest.mark.mpi(min_size=1)

SEED = 11


def piece_of(reference, boxes):
    parts = [reference[tuple(slice(*r) for r in box)].ravel() for box in boxes]
    return np.concatenate(parts) if parts else reference.ravel()[:0]


def piece_problem(spec, result, reference) -> str:
    """'' when this rank's output piece equals the reference cut at its boxes."""
    if result.output_piece is None:
        return "" if not result.output_boxes else "boxes without a piece"
    expected = piece_of(reference, result.output_boxes)
    if np.issubdtype(expected.dtype, np.integer):
        return "" if np.array_equal(result.output_piece, expected) else "piece differs"
    return mismatch(spec, result.output_piece.reshape(1, -1), expected.reshape(1, -1))


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_seeded_data_gives_the_same_output_on_every_grid(name):
    """Every rank makes its own seeded pieces; on every grid of this communicator size the pieces
    equal the serial reference of the whole seeded layer (made once, serially), so the output is
    the same for every P and grid; nothing is scattered or gathered."""
    comm, spec = MPI.COMM_WORLD, LAYERS[name]
    reference = reference_conv2d(spec, *random_layer_data(spec, SEED)).astype(spec.dtype_out)
    problems = []
    for dims in [None, *sampled_grids(comm.size, spec)]:
        result = distributed_conv2d(comm, spec, seed=SEED, grid=dims)
        phases = set(result.report["bytes"]["per_phase"])
        if phases & {"scatter", "gather", "check"}:
            problems.append(f"{dims}: distribution phases {phases}")
        problem = piece_problem(spec, result, reference)
        if problem:
            problems.append(f"{dims}: {problem}")
    agree_all(comm, not problems, problems)


@pytest.mark.parametrize("ownership", ["centred", "aligned,centred"])
@pytest.mark.parametrize("name", sorted(LAYERS))
def test_centred_input_ownership_runs_as_predicted(name, ownership):
    """Plans forced to the centred input ownership (both axes, or W only) on every sampled grid:
    seeded data from the balanced layout, the output equals the serial reference, every phase's
    counted bytes and messages equal the prediction on every rank, and the busiest volume is
    at least the problem's bound."""
    comm, spec = MPI.COMM_WORLD, LAYERS[name]
    reference = reference_conv2d(spec, *random_layer_data(spec, SEED)).astype(spec.dtype_out)
    problems = []
    for dims in sampled_grids(comm.size, spec):
        plan = make_plan(spec, comm.size, grid=dims, ownership=ownership)
        result = distributed_conv2d(comm, spec, seed=SEED, plan=plan)
        per_phase = result.report["bytes"]["per_phase"]
        for phase in BALANCE_PHASES + PHASES:
            for key in ("sent", "received", "messages"):
                if per_phase[phase][key] != plan.predicted[phase][key].tolist():
                    problems.append(f"{dims}: {phase} {key} {per_phase[phase][key]} vs "
                                    f"{plan.predicted[phase][key].tolist()}")
        volume = result.report["bytes"]["bound_volume"]
        if volume != plan.predicted_bound_volume.tolist():
            problems.append(f"{dims}: bound volume differs from the prediction")
        if max(volume) < plan.bound.value * (1 - 1e-9):
            problems.append(f"{dims}: busiest volume {max(volume)} below {plan.bound.value}")
        problem = piece_problem(spec, result, reference)
        if problem:
            problems.append(f"{dims}: {problem}")
    agree_all(comm, not problems, problems)


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_check_without_gather_agrees_with_the_gathered_reference(name):
    """check=True without gather: the ranks agree on the verdict, nothing is gathered; with
    gather=True the root's whole output equals the serial reference."""
    comm, spec = MPI.COMM_WORLD, LAYERS[name]
    plain = distributed_conv2d(comm, spec, seed=SEED, check=True)
    gathered = distributed_conv2d(comm, spec, seed=SEED, gather=True)
    ok, detail = plain.report["check"]["ok"], str(plain.report["check"])
    if "gather" in plain.report["bytes"]["per_phase"] or \
            "gather" not in gathered.report["bytes"]["per_phase"]:
        ok, detail = False, f"phases {list(plain.report['bytes']['per_phase'])}"
    if comm.rank == 0:
        reference = reference_conv2d(spec, *random_layer_data(spec, SEED)).astype(spec.dtype_out)
        problem = mismatch(spec, gathered.output, reference)
        ok, detail = ok and not problem, detail + problem
    agree_all(comm, ok, detail)


class OffByOne(NumpyKernel):
    """A wrong kernel: adds one to every partial sum (on one rank)."""

    def run(self, spec, x, w):
        y, stats = super().run(spec, x, w)
        return y + np.ones(1, y.dtype), stats


def test_check_catches_a_wrong_output_on_one_rank():
    comm, spec = MPI.COMM_WORLD, LAYERS["odd-3x3-bias"]
    plan = shared_plan(comm, spec)
    node = OffByOne() if comm.rank == plan.active - 1 else NumpyKernel()
    message = ""
    try:
        distributed_conv2d(comm, spec, seed=SEED, plan=plan, node=node, check=True)
    except ParconvRuntimeError as exc:
        message = str(exc)
        ok = exc.report["check"]["ok"] is False and exc.report["check"]["max_abs_err"] >= 1
    else:
        ok = False
    agree_all(comm, ok and "differs from the serial reference" in message, message)


@pytest.mark.parametrize("name", ["odd-3x3-bias", "dilation-2-float32", "1x1-stride-2",
                                  "owned-rows-read-by-neighbour"])
def test_planned_exchanges_are_reused_across_repeats(name):
    """One LayerExchange run three times: the same buffers (object and address), no new one,
    the same counted bytes, the same output; with and without overlap."""
    comm, spec = MPI.COMM_WORLD, LAYERS[name]
    problems = []
    for dims in list(factorizations(comm.size, dimension_caps(spec)))[:4]:
        plan = make_plan(spec, comm.size, grid=dims)
        with ProcGrid(comm, plan.dims) as grid:
            local = plan.schedule(comm.rank)
            pieces = owned_pieces(SeededLayer(spec, SEED), spec, local)
            with LayerExchange(grid, local, LayerTypes.of(spec)) as exchange:
                chunks = KernelChunks(spec, local, True, 1 << 12)   # small: many chunks
                before = {k: (id(v), v.__array_interface__["data"][0])
                          for k, v in exchange.buffers().items()}
                outputs, tables = [], []
                for overlap in (True, True, False):
                    run_layer(comm, exchange, chunks, NumpyKernel(), pieces, overlap)
                    outputs.append(exchange.output.copy())
                    tables.append(grid.counters.take())
                after = {k: (id(v), v.__array_interface__["data"][0])
                         for k, v in exchange.buffers().items()}
        if before != after:
            problems.append(f"{dims}: buffers changed")
        if any(t != tables[0] for t in tables) or any(not np.array_equal(o, outputs[0])
                                                     for o in outputs):
            problems.append(f"{dims}: repeats differ")
        for phase in PHASES:
            predicted = {k: int(v[comm.rank]) for k, v in plan.predicted[phase].items()}
            if tables[0].get(phase, dict.fromkeys(predicted, 0)) != predicted:
                problems.append(f"{dims}: {phase} counted {tables[0].get(phase)} vs {predicted}")
    agree_all(comm, not problems, problems)


def test_repeat_reports_medians_and_every_repeat():
    comm, spec = MPI.COMM_WORLD, LAYERS["7x7-float64-bias"]
    result = distributed_conv2d(comm, spec, seed=SEED, repeat=3, overlap=False)
    again = distributed_conv2d(comm, spec, seed=SEED, repeat=1)
    report = result.report
    times = report["time_s_all"]
    ok = (report["repeat"] == 3 and all(len(v) == 3 for v in times.values())
          and all(report["time_s"][p] == pytest.approx(float(np.median(times[p])))
                  for p in times)
          and set(report["overlap_s"]) <= set(times)
          and report["bytes"]["per_phase"] == again.report["bytes"]["per_phase"]
          and (result.output_piece is None or np.array_equal(result.output_piece,
                                                             again.output_piece)))
    memory = report["memory"]
    ok &= all(len(memory[k]) == comm.size for k in ("peak_rss_bytes", "baseline_rss_bytes",
                                                    "working_set_bytes"))
    ok &= all(p >= b > 0 for p, b in zip(memory["peak_rss_bytes"], memory["baseline_rss_bytes"]))
    agree_all(comm, ok, f"{report['time_s']} {report['repeat']} {memory}")


def test_command_line_gather_repeat_no_overlap(tmp_path):
    """python -m parconv.run with --check --gather --repeat 2 --no-overlap, in this job: the
    report shows two repeats, no overlap, a gather phase and a passed per-rank check; without
    --gather there is no gather phase; --ownership centred is the report's ownership."""
    from parconv import run
    comm = MPI.COMM_WORLD
    folder = comm.bcast(str(tmp_path) if comm.rank == 0 else None)
    small = ["--in-channels", "6", "--out-channels", "5", "--size", "9x8", "--kernel-size", "3",
             "--padding", "1", "--batch", "2", "--node", "numpy", "--quiet"]
    paths = [f"{folder}/gathered.json", f"{folder}/plain.json", f"{folder}/centred.json"]
    codes = [run.main([*small, "--check", "--gather", "--repeat", "2", "--no-overlap",
                       "--report", paths[0]]),
             run.main([*small, "--check", "--report", paths[1]]),
             run.main([*small, "--check", "--ownership", "centred", "--report", paths[2]])]
    ok, detail = codes == [0, 0, 0], str(codes)
    if comm.rank == 0 and ok:
        import json
        gathered, plain, centred = (json.load(open(p)) for p in paths)
        ok = (centred["ownership"] == {"H": "centred", "W": "centred"} and centred["check"]["ok"]
              and gathered["repeat"] == 2 and gathered["overlap"] is False
              and "gather" in gathered["bytes"]["per_phase"] and gathered["check"]["ok"]
              and plain["check"]["ok"] and "gather" not in plain["bytes"]["per_phase"]
              and plain["overlap"] is True)
        detail = f"{gathered.get('repeat')} {list(plain['bytes']['per_phase'])}"
    agree_all(comm, ok, detail)
