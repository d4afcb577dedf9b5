"""The MPI engine at any communicator size: results, counted bytes, bound, idle ranks, errors.

Run as ``mpirun -n N python -m mpi4py -m pytest --with-mpi tests/mpi`` for N in 1, 2, 3, 4, 6, 8.
Every verdict is reduced over the communicator (`agree_all`) so that all ranks pass or fail
together.  Results are compared with `parconv.kernels.reference_conv2d` (the slow loop form),
independent of the engine's own ``check`` (which uses the fast numpy kernel).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from _grids import ALL_PAIRS_UP_TO, grid_cover
from mpi4py import MPI

from parconv.conv import distributed_conv2d
from parconv.mpi.distribute import OwnedBlocks
from parconv.errors import ParconvError, ParconvRuntimeError
from parconv.kernels import reference_conv2d
from parconv.mpi.comm import ByteCounters, CountedComm
from parconv.mpi.procgrid import ProcGrid
from parconv.nodes import get_kernel
from parconv.plan import PHASES, make_plan
from parconv.plan.dims import dimension_caps, factorizations
from parconv.spec import ConvSpec

pytestmark = pytest.mark.mpi(min_size=1)

# small layers with every awkward feature; each one runs on EVERY grid of the communicator size
# (up to 4 ranks; above, every grid runs on two of them: _grids.grid_cover)
LAYERS = {
    "odd-3x3-bias": ConvSpec(batch=2, in_channels=3, out_channels=5, in_size=(9, 7),
                             kernel_size=3, padding=1, bias=True),
    "stride-2x3-nonsquare": ConvSpec(batch=1, in_channels=4, out_channels=3, in_size=(11, 10),
                                     kernel_size=(3, 5), stride=(2, 3), padding=(1, 2),
                                     bias=True),
    "dilation-2-float32": ConvSpec(batch=1, in_channels=2, out_channels=2, in_size=(13, 13),
                                   kernel_size=3, dilation=2, padding=2, dtype_in="float32"),
    "7x7-float64-bias": ConvSpec(batch=2, in_channels=3, out_channels=2, in_size=(10, 8),
                                 kernel_size=7, padding=3, dtype_in="float64", bias=True),
    "1x1-stride-2": ConvSpec(batch=3, in_channels=2, out_channels=4, in_size=(12, 9),
                             kernel_size=1, stride=2),
    "5x5-thin-blocks": ConvSpec(batch=1, in_channels=2, out_channels=2, in_size=(8, 5),
                                kernel_size=5, padding=2),
    "owned-rows-read-by-neighbour": ConvSpec(batch=1, in_channels=2, out_channels=3,
                                             in_size=(14, 9), kernel_size=2, stride=2,
                                             dilation=3),
    "stride-3-padding-only-blocks": ConvSpec(batch=1, in_channels=1, out_channels=2,
                                             in_size=(5, 6), kernel_size=3, stride=3, padding=2),
    "2-output-rows": ConvSpec(batch=2, in_channels=2, out_channels=2, in_size=(4, 3),
                              kernel_size=3, dtype_in="float32", bias=True),
}


def agree_all(comm, ok: bool, detail="") -> None:
    """Collective assertion: every rank fails (with every rank's reason) unless all passed."""
    verdicts = comm.allgather((bool(ok), str(detail)))
    bad = [f"rank {rank}: {why}" for rank, (fine, why) in enumerate(verdicts) if not fine]
    assert not bad, "; ".join(bad)


def layer_data(spec: ConvSpec, seed: int = 0):
    """Global x, w, bias, identical on every rank (same seed)."""
    rng = np.random.default_rng(seed)
    if spec.dtype_in == "int8":
        x = rng.integers(-128, 128, spec.input_shape).astype(np.int8)
        w = rng.integers(-128, 128, spec.weight_shape).astype(np.int8)
        bias = rng.integers(-2**31, 2**31, spec.out_channels).astype(np.int32)  # forces wrap
    else:
        x = rng.standard_normal(spec.input_shape).astype(spec.dtype_in)
        w = rng.standard_normal(spec.weight_shape).astype(spec.dtype_weight)
        bias = rng.standard_normal(spec.out_channels).astype(spec.dtype_acc)
    return x, w, (bias if spec.bias else None)


def mismatch(spec: ConvSpec, output, reference) -> str:
    """Empty when ``output`` equals the reference (exactly for integers; floats within
    1e-5 (float32) / 1e-12 (float64) x sqrt(C R S) x max|reference|)."""
    if output.shape != reference.shape or output.dtype != reference.dtype:
        return f"output {output.dtype} {output.shape} vs reference {reference.dtype} " \
               f"{reference.shape}"
    if np.issubdtype(output.dtype, np.integer):
        wrong = np.count_nonzero(output != reference)
        return f"{wrong} elements differ" if wrong else ""
    rtol = {"float32": 1e-5, "float64": 1e-12}[spec.dtype_out]
    terms = spec.in_channels * spec.kernel_size[0] * spec.kernel_size[1]
    tol = rtol * math.sqrt(terms) * float(np.abs(reference).max())
    err = float(np.abs(output.astype(np.float64) - reference).max())
    return f"max abs error {err} > {tol}" if err > tol else ""


def run_and_compare(comm, spec, grid, data, reference) -> str:
    """Run on ``grid`` with the output gathered on rank 0; '' or what went wrong (this rank)."""
    x, w, bias = data
    try:
        result = distributed_conv2d(comm, spec, x=x, w=w, bias=bias, grid=grid, gather=True)
    except (ParconvError, ParconvRuntimeError) as exc:
        return f"grid {grid}: {exc}"
    problems = []
    if comm.rank == 0:
        problems.append(mismatch(spec, result.output, reference))
    per_phase = result.report["bytes"]["per_phase"]
    for phase in PHASES:
        for key in ("sent", "received", "messages"):
            if per_phase[phase][key] != result.plan.predicted[phase][key].tolist():
                problems.append(f"{phase} {key} differs from the prediction")
    return "; ".join(f"grid {grid}: {p}" for p in problems if p)


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_every_grid_equals_reference(name):
    """Every ordered factorisation of the communicator size into N x K x C x H x W that fits,
    up to _grids.ALL_PAIRS_UP_TO (4) ranks; above (6, 8: oversubscribed, the same check) the
    cover _grids.grid_cover: every grid of the size on two layers that admit it."""
    comm, spec = MPI.COMM_WORLD, LAYERS[name]
    data = layer_data(spec)
    reference = reference_conv2d(spec, *data).astype(spec.dtype_out)
    grids = factorizations(comm.size, dimension_caps(spec)) if comm.size <= ALL_PAIRS_UP_TO \
        else grid_cover(comm.size, LAYERS)[name]
    problems = [run_and_compare(comm, spec, g, data, reference) for g in grids]
    agree_all(comm, not any(problems), "; ".join(p for p in problems if p))


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_auto_grid_meets_bound_and_prediction(name):
    """The bound-driven grid: correct output (engine check), measured == predicted per rank,
    and the lower bound is never above the busiest rank's measured volume."""
    comm, spec = MPI.COMM_WORLD, LAYERS[name]
    x, w, bias = layer_data(spec, seed=1)
    result = distributed_conv2d(comm, spec, x=x, w=w, bias=bias, check=True)
    report = result.report
    measured = np.array(report["bytes"]["bound_volume"])
    ok = (report["check"]["ok"]
          and np.array_equal(measured, result.plan.predicted_bound_volume)
          and measured.max() >= result.plan.bound.value * (1 - 1e-9))
    agree_all(comm, ok, f"{report['check']}, measured {measured.tolist()}, bound "
                        f"{result.plan.bound.value}")


def test_random_layers_on_random_grids():
    """Seeded random layers (same on every rank), each on the auto grid and one random grid."""
    comm, rng = MPI.COMM_WORLD, np.random.default_rng(2024)
    problems = []
    for _ in range(8):
        kernel = tuple(int(v) for v in rng.integers(1, 6, 2))
        stride = tuple(int(v) for v in rng.integers(1, 4, 2))
        dilation = tuple(int(v) for v in rng.integers(1, 3, 2))
        padding = tuple(int(v) for v in rng.integers(0, 3, 2))
        extent = [d * (k - 1) + 1 for d, k in zip(dilation, kernel)]
        in_size = tuple(int(rng.integers(max(e - 2 * p, 1), e + 9))
                        for e, p in zip(extent, padding))
        spec = ConvSpec(batch=int(rng.integers(1, 4)), in_channels=int(rng.integers(1, 5)),
                        out_channels=int(rng.integers(1, 5)), in_size=in_size,
                        kernel_size=kernel, stride=stride, padding=padding, dilation=dilation,
                        dtype_in=str(rng.choice(["int8", "float32", "float64"])),
                        bias=bool(rng.integers(0, 2)))
        data = layer_data(spec, seed=int(rng.integers(1 << 30)))
        reference = reference_conv2d(spec, *data).astype(spec.dtype_out)
        grids = factorizations(comm.size, dimension_caps(spec))
        choices = [None] + ([grids[int(rng.integers(len(grids)))]] if grids else [])
        problems += [run_and_compare(comm, spec, g, data, reference) for g in choices]
    agree_all(comm, not any(problems), "; ".join(p for p in problems if p))


def owned_blocks(plan, rank, x, w, bias) -> OwnedBlocks:
    """This rank's pieces cut from the global arrays through the plan's boxes."""
    local = plan.schedule(rank)
    if local is None:
        return OwnedBlocks(np.empty(0, x.dtype), np.empty(0, w.dtype), None)

    def cut(array, boxes):
        return np.concatenate([array[tuple(slice(*r) for r in box)].ravel() for box in boxes]
                              or [array.ravel()[:0]])
    bias_range = local.bias_piece_range()
    return OwnedBlocks(cut(x, local.input_piece_boxes()), cut(w, local.filter_piece_boxes()),
                       None if bias_range is None else bias[slice(*bias_range)])


@pytest.mark.parametrize("name", ["odd-3x3-bias", "7x7-float64-bias"])
def test_blocks_input_gives_the_scatter_result(name):
    """Data handed in as per-rank OwnedBlocks (as parconv.mpi.hdf5 reads it) gives the same pieces as
    the scattered global arrays; the engine's check gathers the pieces (phase "check")."""
    comm, spec = MPI.COMM_WORLD, LAYERS[name]
    x, w, bias = layer_data(spec, seed=3)
    plan = make_plan(spec, comm.size)
    scattered = distributed_conv2d(comm, spec, x=x, w=w, bias=bias, plan=plan)
    from_blocks = distributed_conv2d(comm, spec, plan=plan, check=True,
                                     blocks=owned_blocks(plan, comm.rank, x, w, bias))
    # the scattered run ends in the balanced final layout, the blocks run keeps its output
    # pieces: both must hold the same values wherever they own outputs
    reference = reference_conv2d(spec, x, w, bias).astype(spec.dtype_out)

    def agrees(result) -> bool:
        if not result.output_boxes:
            return result.output_piece is None or result.output_piece.size == 0
        expected = np.concatenate([reference[tuple(slice(*r) for r in box)].ravel()
                                   for box in result.output_boxes])
        return not mismatch(spec, result.output_piece.reshape(1, -1), expected.reshape(1, -1))

    local = plan.schedule(comm.rank)
    report = from_blocks.report
    agree_all(comm, agrees(scattered) and agrees(from_blocks) and report["check"]["ok"]
              and "scatter" not in report["bytes"]["per_phase"]
              and from_blocks.output_boxes == (local.output_piece_boxes() if local else []),
              report.get("check"))


def test_idle_ranks():
    """A layer whose dimensions allow at most P - 1 ranks (K = P - 1, everything else 1): the plan
    leaves one rank idle, which holds no blocks and still takes part in every agreement."""
    comm = MPI.COMM_WORLD
    spec = ConvSpec(batch=1, in_channels=1, out_channels=max(comm.size - 1, 1), in_size=(3, 4),
                    kernel_size=(3, 4), bias=True, dtype_in="float64")   # output 1 x 1
    data = layer_data(spec, seed=4)
    result = distributed_conv2d(comm, spec, x=data[0], w=data[1], bias=data[2], check=True,
                                gather=True)
    idle = comm.rank >= result.plan.active
    ok = (result.plan.active <= max(comm.size - 1, 1) and result.report["check"]["ok"]
          and (not idle or (result.output_piece is None and result.output_boxes == []))
          and (comm.rank != 0 or not mismatch(spec, result.output,
                                              reference_conv2d(spec, *data))))
    agree_all(comm, ok, f"active {result.plan.active}, check {result.report['check']}")


class FailingKernel:
    """A node kernel that raises (used on one rank only)."""

    name = "failing"

    def run(self, spec, x, w):
        raise RuntimeError("injected kernel failure")


def test_kernel_failure_ends_every_rank():
    """One rank's kernel raises: every rank gets the same ParconvRuntimeError naming it."""
    comm = MPI.COMM_WORLD
    spec = LAYERS["odd-3x3-bias"]
    x, w, bias = layer_data(spec)
    plan = make_plan(spec, comm.size, grid=(1, 1, 1, 1, 1) if comm.size == 1 else None)
    failing = plan.active - 1
    node = FailingKernel() if comm.rank == failing else get_kernel("numpy")
    message = ""
    try:
        distributed_conv2d(comm, spec, x=x, w=w, bias=bias, plan=plan, node=node)
    except ParconvRuntimeError as exc:
        message = str(exc)
    agree_all(comm, "injected kernel failure" in message
              and (comm.size == 1 or f"rank {failing}" in message), message)


def test_bad_input_raises_the_same_error_everywhere():
    """A wrong shape on the root, a wrong forced grid and an unknown kernel: ParconvError on
    every rank, nobody left waiting."""
    comm, spec = MPI.COMM_WORLD, LAYERS["odd-3x3-bias"]
    x, w, bias = layer_data(spec)
    cases = [dict(x=x[:, :2], w=w, bias=bias), dict(x=x, w=w, bias=bias, grid="1x1x1x1x9"),
             dict(x=x, w=w, bias=bias, node="no-such-kernel"), dict(x=x, w=w, bias=None),
             dict(x=x.astype(np.float64), w=w, bias=bias)]
    messages = []
    for case in cases:
        try:
            distributed_conv2d(comm, spec, **case)
            messages.append("no error")
        except ParconvError as exc:
            messages.append(str(exc))
    everyone = comm.allgather(messages)
    agree_all(comm, "no error" not in messages and all(m == messages for m in everyone), messages)


def test_counted_comm_follows_the_counting_rule():
    """Allgatherv, Alltoallv, exchange, Scatterv, Gatherv on uneven (some empty) counts: bytes
    are the payload between distinct ranks, messages the distinct destinations per phase."""
    base = MPI.COMM_WORLD.Dup()
    try:
        P, me = base.size, base.rank
        table = ByteCounters()
        comm = CountedComm(base, table, range(P))
        counts = np.arange(P) % 3                       # rank 0 (and every third) contributes 0
        got = np.empty(counts.sum(), dtype=np.float64)
        comm.Allgatherv(np.full(counts[me], me, dtype=np.float64), got, counts, "ag")
        ok = np.array_equal(got, np.repeat(np.arange(P), counts).astype(np.float64))
        send = np.array([(me + j) % 2 for j in range(P)])
        data = np.repeat(np.arange(P, dtype=np.int32) + 100 * me, send)
        recv_counts = np.array([(j + me) % 2 for j in range(P)])
        out = np.empty(recv_counts.sum(), dtype=np.int32)
        comm.Alltoallv(data, send, out, recv_counts, "a2a")
        ok &= np.array_equal(out, (me + 100 * np.arange(P, dtype=np.int32))[recv_counts > 0])
        right, left = (me + 1) % P, (me - 1) % P
        box = {left: np.empty(2, dtype=np.int16)}
        comm.exchange({right: np.array([me, me], dtype=np.int16)}, box, "ring")
        comm.exchange({right: np.array([me, me], dtype=np.int16)}, box, "ring")   # same peer
        ok &= P == 1 or np.array_equal(box[left], [left, left])
        c = table.counters()
        others = lambda mask: int(np.count_nonzero(np.delete(mask, me)))   # noqa: E731
        expected = {
            "ag": {"sent": 8 * counts[me] * (P - 1), "received": 8 * (counts.sum() - counts[me]),
                   "messages": (P - 1) * (counts[me] > 0)},
            "a2a": {"sent": 4 * (send.sum() - send[me]),
                    "received": 4 * (recv_counts.sum() - recv_counts[me]),
                    "messages": others(send > 0)},
            "ring": {"sent": 8 * (P > 1), "received": 8 * (P > 1), "messages": int(P > 1)},
        }
        ok &= all(c[p] == {k: int(v) for k, v in e.items()} for p, e in expected.items())
    finally:
        base.Free()
    agree_all(MPI.COMM_WORLD, ok, f"{c} vs {expected}")


def test_proc_grid_matches_the_plan_and_frees():
    """For every grid of the size: Cartesian coordinates = plan.coords, group sizes, idle ranks
    without communicators; free() leaves nothing behind."""
    comm, spec = MPI.COMM_WORLD, LAYERS["5x5-thin-blocks"]
    problems = []
    for dims in factorizations(comm.size, dimension_caps(spec)):
        plan = make_plan(spec, comm.size, grid=dims)
        with ProcGrid(comm, plan.dims) as grid:
            PN, PK, PC, PH, PW = dims
            sizes = (grid.filter.size, grid.k.size, grid.c.size, grid.h.size, grid.w.size)
            if sizes != (PN * PH * PW, PK, PC, PH, PW) or not grid.active:
                problems.append(f"{dims}: group sizes {sizes}")
        if grid.cart is not None or grid.filter is not None:
            problems.append(f"{dims}: not freed")
    agree_all(comm, not problems, problems)


def run_expecting_failure(comm, spec, plan, data) -> str:
    try:
        distributed_conv2d(comm, spec, x=data[0], w=data[1], bias=data[2], plan=plan)
    except ParconvRuntimeError as exc:
        assert exc.report["bytes"]["per_phase"]   # the report travels with the error
        return str(exc)
    return "no error"


def test_wrong_prediction_fails_every_rank():
    """A prediction off by one byte on the last rank fails the run on every rank, naming the
    rank, the phase, the predicted and the measured value."""
    comm, spec = MPI.COMM_WORLD, LAYERS["odd-3x3-bias"]
    data = layer_data(spec)
    plan = make_plan(spec, comm.size)
    last = plan.active - 1
    plan.predicted["halo_w"]["received"][last] += 1
    measured = plan.predicted["halo_w"]["received"][last] - 1
    message = run_expecting_failure(comm, spec, plan, data)
    agree_all(comm, f"rank {last} phase halo_w received: predicted {measured + 1}, measured "
                    f"{measured}" in message, message)


def test_volume_below_the_bound_fails_loudly():
    """A bound above the measured volume is a bug somewhere: every rank raises."""
    comm, spec = MPI.COMM_WORLD, LAYERS["odd-3x3-bias"]
    plan = make_plan(spec, comm.size)
    bound = dataclasses.replace(plan.bound, B_MI=plan.max_volume + 1.0,
                                value=plan.max_volume + 1.0)
    message = run_expecting_failure(comm, spec, dataclasses.replace(plan, bound=bound),
                                    layer_data(spec))
    agree_all(comm, "BELOW the lower bound" in message, message)
