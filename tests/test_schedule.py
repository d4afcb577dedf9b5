"""One rank's schedule computed alone equals the one the old all-ranks path computed.

The reference is the pre-issue-7 implementation kept verbatim in tests/_old_schedule.py (axis
layouts holding every block of the axis, dense piece lists); it knows only the aligned input
ownership, so the centred one is checked against a per-element recount of its axis layouts
(`test_centred_axis_layout_equals_a_per_element_recount`) and, per rank, by tests/test_plan.py.  Checked for every P from 1 to 64
(sampled grids and ranks) on awkward layers and catalogue layers, and at P = 4096 and 65536 on
sampled ranks including the busiest and the edge blocks of each spatial axis.
"""

import dataclasses

import numpy as np
import pytest

from _old_schedule import _layout as old_layout
from _old_schedule import old_rank_schedule
from parconv.layers import get_layer
from parconv.plan import make_plan
from parconv.plan.axis import AxisHalo, axis_layout
from parconv.plan.blocks import FlatSplit, block_range, flat_piece, needed_positions
from parconv.plan.dims import GridDims, dimension_caps, factorizations
from parconv.plan.predict import predict_grid
from parconv.plan.schedule import rank_schedule
from parconv.spec import ConvSpec
from test_plan import AWKWARD

LAYERS = [get_layer("resnet50.layer3.0.conv2", batch=4), get_layer("resnet50.conv1", batch=2),
          get_layer("resnet50.layer2.0.downsample.0", batch=2),
          ConvSpec(batch=1, in_channels=2, out_channels=2, in_size=(40, 9), kernel_size=(7, 3),
                   dilation=(3, 1), padding=(4, 1), stride=(1, 2))]   # halos over several blocks
METHODS = ("input_piece", "filter_piece", "output_piece", "_filter_index")
BOXES = ("input_piece_boxes", "filter_piece_boxes", "output_piece_boxes", "bias_piece_range")


def _same_value(a, b) -> bool:
    if isinstance(b, AxisHalo):
        return (isinstance(a, AxisHalo) and _same_value(a.peers, b.peers)
                and len(a.send) == len(b.send)
                and all(_same_value(x, y) for x, y in zip(a.send + a.recv, b.send + b.recv)))
    if isinstance(b, np.ndarray):
        return isinstance(a, np.ndarray) and a.dtype == b.dtype and np.array_equal(a, b)
    return a == b


def assert_same_schedule(new, old):
    """Every field and method of the old RankSchedule has the same value on the new one, and
    the compact forms agree with the dense ones."""
    for field in dataclasses.fields(old):
        name, a, b = field.name, getattr(new, field.name), getattr(old, field.name)
        if name in ("halo_h", "halo_w"):
            assert len(a) == len(b), name
            for peer, ((s1, r1), (s2, r2)) in enumerate(zip(a, b)):
                assert _same_value(s1, s2) and _same_value(r1, r2), (name, peer)
        else:
            assert _same_value(a, b), name
    for name in METHODS:
        assert getattr(new, name) == getattr(old, name), name
    for name in BOXES:
        assert getattr(new, name)() == getattr(old, name)(), name
    for halo, dense in ((new.halo_rows, old.halo_h), (new.halo_cols, old.halo_w)):
        real = [q for q, (s, r) in enumerate(dense) if s.size or r.size]
        assert halo.peers.tolist() == real
        assert halo.send_counts.tolist() == [dense[q][0].size for q in real]
        assert halo.recv_counts.tolist() == [dense[q][1].size for q in real]
    for split, pieces in ((new.input_split, old.input_pieces), (new.filter_split,
                                                                old.filter_pieces),
                          (new.output_split, old.output_pieces)):
        assert split.bounds.tolist() == [list(p) for p in pieces]
        assert split.sizes.tolist() == [hi - lo for lo, hi in pieces]


def _coords(dims, rank):
    return tuple(int(v) for v in np.unravel_index(rank, dims.as_tuple()))


def _check_ranks(spec, dims, ranks):
    for rank in ranks:
        coords = _coords(dims, rank)
        assert_same_schedule(rank_schedule(spec, dims, rank, coords),
                             old_rank_schedule(spec, dims, rank, coords))


def _sampled_ranks(spec, dims, rng, extra=5):
    """Busiest rank, first and last, the edge and middle blocks of both spatial axes, and a
    few random ranks."""
    P = dims.size
    PN, PK, PC, PH, PW = dims.as_tuple()
    busiest = int(np.argmax(predict_grid(spec, dims.as_tuple()).bound_volume))
    ranks = {0, P - 1, busiest, *rng.integers(0, P, size=extra).tolist()}
    for d in {0, PH // 2, PH - 1}:
        for e in {0, PW // 2, PW - 1}:
            a, b, c = (int(rng.integers(0, f)) for f in (PN, PK, PC))
            ranks.add(int(np.ravel_multi_index((a, b, c, d, e), dims.as_tuple())))
    return sorted(ranks)


def test_axis_layout_counts_equal_the_dense_layout():
    """The vectorised per-block counts and the per-block geometry of every split of every axis
    equal those of the old (p, p) layout."""
    for spec in AWKWARD + LAYERS:
        for which in (0, 1):
            n_in, n_out, kernel, stride, pad, dil = spec.axis(which)
            for p in range(1, min(n_out, 40) + 1):
                new, old = axis_layout(spec, which, p), old_layout(n_in, n_out, kernel, stride,
                                                                   pad, dil, p)
                for name in ("out_sizes", "own_sizes", "needed_counts", "touched_own_counts",
                             "buf_sizes", "halo_received", "halo_sent", "halo_messages"):
                    assert np.array_equal(getattr(new, name), getattr(old, name)), (p, name)
                for a, b in zip(new.own_prefix_touched, old.own_prefix_touched):
                    assert np.array_equal(a, b), p
                assert np.array_equal(new.touched, old.touched)
                for d in range(p):
                    assert np.array_equal(new.needed(d), old.needed[d])
                    assert (new.span(d), new.buf(d), new.padding(d)) == \
                        (old.span(d), old.buf(d), old.padding(d))
                    lo, hi = new.span_bounds[0][d], new.span_bounds[1][d]
                    assert (int(lo), int(hi)) == old.span(d)


@pytest.mark.parametrize("spec", AWKWARD + LAYERS, ids=lambda s: s.describe()[:50])
def test_every_P_up_to_64_sampled_grids_and_ranks(spec):
    rng = np.random.default_rng(7)
    caps = dimension_caps(spec)
    for P in range(1, 65):
        grids = factorizations(P, caps)
        if not grids:
            continue
        picks = {0, len(grids) - 1, *rng.integers(0, len(grids), size=2).tolist()}
        for i in sorted(picks):
            dims = GridDims(*grids[i])
            ranks = range(P) if P <= 6 else _sampled_ranks(spec, dims, rng, extra=2)
            _check_ranks(spec, dims, ranks)


@pytest.mark.parametrize("name, P, grid", [
    ("resnet50.layer3.0.conv2", 4096, None), ("resnet50.layer3.0.conv2", 65536, None),
    ("vgg16.conv4_2", 4096, None), ("vgg16.conv4_2", 65536, None),
    ("vgg16.conv1_2", 4096, (1, 1, 1, 64, 64)), ("vgg16.conv1_2", 65536, (1, 16, 16, 128, 2)),
    ("resnet50.conv1", 65536, (1, 64, 1, 32, 32)), ("resnet50.conv1", 12544, (1, 1, 1, 112, 112)),
])
def test_large_P_sampled_ranks(name, P, grid):
    spec = get_layer(name, batch=32 if grid is None else 4)
    dims = make_plan(spec, P).dims if grid is None else GridDims(*grid)
    _check_ranks(spec, dims, _sampled_ranks(spec, dims, np.random.default_rng(P)))


def test_plan_schedule_is_rank_schedule_and_idle_is_none():
    spec = AWKWARD[1]
    for ownership in ("aligned", "auto", "centred"):
        plan = make_plan(spec, 7, ownership=ownership)
        for rank in range(7):
            local = plan.schedule(rank)
            if rank >= plan.active:
                assert local is None
                continue
            assert plan.schedule(rank) is local   # kept, not rebuilt
            assert_same_schedule(local, rank_schedule(spec, plan.dims, rank, plan.coords(rank),
                                                      plan.ownership))
            if plan.ownership == ("aligned", "aligned"):   # the old code knows only this one
                assert_same_schedule(local, old_rank_schedule(spec, plan.dims, rank,
                                                              plan.coords(rank)))


def _brute_centred_starts(n_in, n_out, kernel, stride, pad, dil, p):
    """The centred cuts from the rule itself, per block from its needed positions."""
    out = [block_range(n_out, p, d) for d in range(p)]
    need = [needed_positions(o, n_in, kernel, stride, pad, dil) for o in out]
    starts = [0]
    for d in range(1, p):
        cut = min(max(stride * out[d][0] - pad, 0), n_in)     # aligned
        if need[d - 1].size and need[d].size and need[d - 1][-1] >= need[d][0]:
            lo, hi = int(need[d][0]), int(need[d - 1][-1]) + 1
            cut = (lo + hi + 1) // 2
        starts.append(max(starts[-1], min(max(cut, 0), n_in)))
    return starts + [n_in], need


@pytest.mark.parametrize("spec", AWKWARD + LAYERS, ids=lambda s: s.describe()[:50])
def test_centred_axis_layout_equals_a_per_element_recount(spec):
    """The old code does not know centred ownership: every per-block count and every halo of
    the centred layout is recounted here element by element from who owns and who reads each
    input position."""
    for which in (0, 1):
        n_in, n_out, kernel, stride, pad, dil = spec.axis(which)
        for p in range(1, min(n_out, 40) + 1):
            lay = axis_layout(spec, which, p, "centred")
            starts, need = _brute_centred_starts(n_in, n_out, kernel, stride, pad, dil, p)
            assert lay.own_starts.tolist() == starts, p
            owner = np.repeat(np.arange(p), np.diff(starts))
            touched = np.zeros(n_in, bool)
            for rows in need:
                touched[rows] = True
            assert np.array_equal(lay.touched, touched)
            sent, received, messages = np.zeros(p, int), np.zeros(p, int), np.zeros(p, int)
            for d in range(p):
                own = set(range(starts[d], starts[d + 1]))
                mine = set(need[d].tolist())
                assert np.array_equal(lay.needed(d), need[d])
                assert lay.touched_own_counts[d] == touched[starts[d]:starts[d + 1]].sum()
                span = (int(need[d][0]), int(need[d][-1]) + 1) if need[d].size else (0, 0)
                assert lay.span(d) == span
                hull = own | set(range(*span))
                buf = (min(hull), max(hull) + 1) if hull else (starts[d], starts[d + 1])
                assert lay.buf(d) == buf and lay.buf_sizes[d] == buf[1] - buf[0], (p, d)
                received[d] = len(mine - own)
                halo = dict(zip(lay.halo_peers(d).peers.tolist(),
                                zip(lay.halo_peers(d).send, lay.halo_peers(d).recv)))
                for q in range(p):
                    theirs = set(need[q].tolist())
                    send = sorted(own & theirs) if q != d else []
                    recv = sorted(x for x in mine if owner[x] == q) if q != d else []
                    got = halo.get(q, (np.zeros(0, int), np.zeros(0, int)))
                    assert got[0].tolist() == send and got[1].tolist() == recv, (p, d, q)
                    assert (q in halo) == bool(send or recv)
                    sent[d] += len(send)
                    messages[d] += bool(send)
            assert lay.halo_received.tolist() == received.tolist(), p
            assert lay.halo_sent.tolist() == sent.tolist(), p
            assert lay.halo_messages.tolist() == messages.tolist(), p
            assert lay.own_sizes.tolist() == np.diff(starts).tolist()


def test_flat_split_is_the_list_of_flat_pieces():
    for total in (0, 1, 5, 17, 64):
        for parts in (1, 2, 3, 7, 64):
            split = FlatSplit(total, parts)
            pieces = [flat_piece(total, parts, i) for i in range(parts)]
            assert split.as_list() == pieces and len(split) == parts
            assert [split.piece(i) for i in range(parts)] == pieces
            assert split.sizes.sum() == total
