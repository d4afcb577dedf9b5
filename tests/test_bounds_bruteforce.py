"""The polyphase bound by brute force (docs/theory.md 3.9): its phases partition the layer, every
Hoelder row and the weighted work function hold on real iteration sets, no assignment of the
iterations of a small layer to P processors (random, by phase, by block, or improved by local
search, with the most favourable balanced ownership) moves less than B_MI, and no tiled schedule
moves less than the sequential bound."""

import math

import numpy as np
from hypothesis import assume, given, settings, strategies as st

from parconv.bounds import parallel_bounds, sequential_bound
from parconv.bounds.polyphase import (WEIGHT_EXPONENTS, phases, polyphase_program,
                                      polyphase_work)
from parconv.layers import get_layer
from parconv.spec import ConvSpec
from test_bounds import (LOOPS, SETTINGS, byte_sizes, distinct, effective_iterations,
                         schedule_traffic, subset, tiny_specs)


@st.composite
def strided_specs(draw, max_size=7):
    """Tiny layers with a stride or dilation above 1 on some axis (more than one phase)."""
    spec = draw(tiny_specs(max_size=max_size))
    assume(len(phases(spec)) > 1)
    return spec


def phase_labels(spec, it):
    """The phase of every iteration, from its tap classes (d r - p) mod s on both axes (the same
    label for the same phase in any subset)."""
    n, k, c, h, w, r, s = it.T
    keys = [(spec.dilation[a] * t - spec.padding[a]) % spec.stride[a] for a, t in ((0, r), (1, s))]
    return keys[0] * spec.stride[1] + keys[1]


def weighted_work(spec, it, e):
    """T_y(V) = sum_phi y_phi |V_phi| with y_phi = rho_phi^-e normalised to max 1, rho_phi
    recomputed from the iterations of the whole layer (taps of the phase reading one pixel)."""
    full, x, y = effective_iterations(spec)
    lab_full = phase_labels(spec, full)
    rho = {}
    for p in np.unique(lab_full):
        sel = lab_full == p
        rows = np.unique(np.stack([x[sel], full[sel][:, 5]], 1), axis=0)
        cols = np.unique(np.stack([y[sel], full[sel][:, 6]], 1), axis=0)
        rho[p] = np.bincount(rows[:, 0]).max() * np.bincount(cols[:, 0]).max()
    top = max(r ** -e for r in rho.values())
    lab = phase_labels(spec, it)
    return sum((rho[p] ** -e / top) * np.count_nonzero(lab == p) for p in rho)


@SETTINGS
@given(spec=tiny_specs())
def test_phases_partition_the_layer(spec):
    it, x, y = effective_iterations(spec)
    ph = phases(spec)
    assert sum(p.G for p in ph) == spec.G_eff == len(it)
    assert sum(p.size_in for p in ph) == spec.size_input_touched
    assert sum(p.size_filter for p in ph) == distinct(*it[:, [1, 2, 5, 6]].T)
    lab = phase_labels(spec, it)
    assert sorted(np.bincount(lab)[np.bincount(lab) > 0]) == sorted(p.G for p in ph)
    # phases read disjoint inputs: each input element is read by one phase only
    pixels = np.unique(np.stack([it[:, 0], it[:, 2], x, y, lab], axis=1), axis=0)
    assert len(pixels) == distinct(it[:, 0], it[:, 2], x, y)
    assert max(p.rho for p in ph) <= spec.rho


@settings(SETTINGS, max_examples=80)
@given(spec=strided_specs(), seed=st.integers(0, 2**32 - 1),
       mode=st.sampled_from(["box", "random", "both", "phase"]))
def test_hoelder_rows_and_weighted_work_function_hold_on_random_sets(spec, seed, mode):
    rng = np.random.default_rng(seed)
    it, x, y = subset(spec, rng, "random" if mode == "phase" else mode)
    if mode == "phase":  # one phase only: the sets the old (H1) cannot tell apart
        lab = phase_labels(spec, it)
        if len(lab):
            keep = lab == rng.choice(np.unique(lab))
            it, x, y = it[keep], x[keep], y[keep]
    assume(len(it) > 0)
    n, k, c, h, w, r, s = it.T
    counts = np.array([distinct(n, c, x, y), distinct(k, c, r, s), distinct(n, k, h, w)], float)
    X = float(byte_sizes(spec) @ counts)
    for e in WEIGHT_EXPONENTS:
        prog, total = polyphase_program(spec, e)
        t = weighted_work(spec, it, e)
        assert t <= math.exp(total) * (1 + 1e-12)
        rhs = np.exp(prog.rows @ np.log(counts) + prog.offsets)
        assert np.all(t <= rhs * (1 + 1e-9)), prog.families[int(np.argmin(rhs - t))]
        assert polyphase_work(spec, e, X)[0] >= t * (1 - 1e-12)


def busiest_volume(spec, it, x, y, proc, P):
    """Largest volume over P processors for the assignment ``proc`` of the iterations, with the
    most favourable balanced ownership a greedy can find: each element goes to the processor
    that touches it most, at most ceil(|A_j| / P) elements per processor."""
    n, k, c, h, w, r, s = it.T
    volume = np.zeros(P)
    for key, p in (((n, c, x, y), spec.p_in), ((k, c, r, s), spec.p_weight),
                   ((n, k, h, w), byte_sizes(spec)[2])):
        elems, inv = np.unique(np.stack(key, axis=1), axis=0, return_inverse=True)
        inv = inv.ravel()
        use = np.zeros((len(elems), P))
        np.add.at(use, (inv, proc), 1)
        touched = use > 0
        cap = -(-len(elems) // P)
        load = np.zeros(P, dtype=int)
        owner = np.full(len(elems), -1)
        for idx in np.argsort(-use.max(axis=1), kind="stable"):
            for q in np.argsort(-use[idx], kind="stable"):
                if load[q] < cap:
                    owner[idx], load[q] = q, load[q] + 1
                    break
        not_owned = touched.copy()
        not_owned[np.arange(len(elems)), owner] = False
        volume += p * not_owned.sum(axis=0)
    return volume.max()


@settings(SETTINGS, max_examples=40)
@given(spec=strided_specs(max_size=6), P=st.integers(2, 4), seed=st.integers(0, 2**32 - 1))
def test_no_assignment_to_P_processors_beats_the_parallel_bound(spec, P, seed):
    it, x, y = effective_iterations(spec)
    assume(len(it) >= P)
    rng = np.random.default_rng(seed)
    bound = parallel_bounds(spec, P).B_MI
    lab = phase_labels(spec, it)
    n, k, c, h, w, r, s = it.T
    candidates = [rng.integers(0, P, len(it)), lab % P, k % P, (h * 7 + w) % P, n % P,
                  (lab + k) % P, np.minimum(h * P // max(h.max() + 1, 1), P - 1)]
    best = min(busiest_volume(spec, it, x, y, a, P) for a in candidates)
    # local search: move blocks of iterations (one output element's or one pixel's) between
    # processors while the busiest volume does not grow
    assign = min(candidates, key=lambda a: busiest_volume(spec, it, x, y, a, P)).copy()
    groups = [np.unique(np.stack(g, 1), axis=0, return_inverse=True)[1].ravel()
              for g in ((n, k, h, w), (n, c, x, y), (k, c, r, s))]
    for _ in range(30):
        g = groups[rng.integers(len(groups))]
        trial = assign.copy()
        trial[g == rng.integers(g.max() + 1)] = rng.integers(P)
        vol = busiest_volume(spec, it, x, y, trial, P)
        if vol <= best:
            assign, best = trial, vol
    assert best >= bound * (1 - 1e-9)


@settings(SETTINGS, max_examples=60)
@given(spec=strided_specs(max_size=5), data=st.data())
def test_sequential_polyphase_term_never_exceeds_a_tiled_schedule(spec, data):
    (H, W), (R, S) = spec.out_size, spec.kernel_size
    extent = dict(zip(LOOPS, (spec.batch, spec.out_channels, spec.in_channels, H, W, R, S)))
    tiles = {loop: data.draw(st.integers(1, extent[loop]), label=loop) for loop in LOOPS}
    order = "".join(data.draw(st.permutations(LOOPS), label="order"))
    traffic, footprint = schedule_traffic(spec, tiles, order)
    bound = sequential_bound(spec, footprint)
    assert bound.segment_polyphase <= bound.value <= traffic


def test_polyphase_raises_the_strided_catalogue_bounds_and_leaves_stride_one_alone():
    strided = get_layer("resnet50.layer2.0.conv2", batch=32)
    bound = parallel_bounds(strided, 8)
    assert bound.B_MI_polyphase > 1.8 * bound.B_MI_plain
    assert bound.B_MI == bound.B_MI_polyphase
    plain = get_layer("resnet50.layer1.0.conv2", batch=32)
    assert len(phases(plain)) == 1
    assert parallel_bounds(plain, 8).B_MI_polyphase == 0.0
    seq = sequential_bound(strided, 2.0**12)
    assert seq.binding == "polyphase" and seq.segment_polyphase > 1.25 * seq.segment
    # 1x1 stride 2 reads one residue class only: one phase, nothing to gain
    assert len(phases(get_layer("resnet50.layer2.0.downsample.0"))) == 1


def test_dilated_layer_phases():
    spec = ConvSpec(batch=1, in_channels=1, out_channels=1, in_size=(9, 9), kernel_size=3,
                    stride=2, dilation=2, padding=2)
    # d r mod s is 0 for every tap: one class per axis, three taps reading rows of one parity
    assert [(p.taps, p.rho) for p in phases(spec)] == [(9, 9)]
