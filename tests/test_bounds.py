"""Lower bounds (theory.md sections 2-4): the counting inequalities on real iteration sets, the
work function against its closed forms and real sets, the sequential bound against explicit
schedules, and the parallel bounds' closed form, caps, monotonicity and binding switch."""

import itertools
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings, strategies as st

from parconv.bounds import (busy_processor_footprint, closed_form_work, im2col_bound,
                            parallel_bounds, sequential_bound, sequential_bound_two_memory,
                            work_function)
from parconv.bounds.sequential import (best_segment, segment_lengths, segment_term, segments,
                                       sequential_bound_value)
from parconv.bounds.traffic import polish_traffic_dual, solve_traffic, traffic_program
from parconv.bounds.workfn import (feasible_log_work, feasible_log_works, layer_program,
                                   output_bytes, polish_work_dual, solve_work, used_filter_size,
                                   witness_program)
from parconv.bounds.border import reuse_constant
from parconv.errors import ParconvError
from parconv.layers import get_layer
from parconv.spec import ConvSpec

SETTINGS = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
LOOPS = "NKCHWRS"


# ---- helpers ----------------------------------------------------------------------------------
@st.composite
def tiny_specs(draw, max_size=6):
    """Random small layers (strides 1-3, dilations 1-2, paddings 0-2, kernels 1-3, sizes 1-6,
    channels 1-3, batch 1-2), some with int8 output of an int32 accumulator (p_out < p_acc)."""
    kernel = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    padding = (draw(st.integers(0, 2)), draw(st.integers(0, 2)))
    size = tuple(draw(st.integers(max(1, d * (k - 1) + 1 - 2 * p), max_size))
                 for k, d, p in zip(kernel, dilation, padding))
    dtype_in, dtype_out = draw(st.sampled_from([("int8", "int32"), ("int8", "int8"),
                                                ("float32", "float32")]))
    spec = ConvSpec(batch=draw(st.integers(1, 2)), in_channels=draw(st.integers(1, 3)),
                    out_channels=draw(st.integers(1, 3)), in_size=size, kernel_size=kernel,
                    stride=(draw(st.integers(1, 3)), draw(st.integers(1, 3))), padding=padding,
                    dilation=dilation, dtype_in=dtype_in, dtype_out=dtype_out)
    assume(spec.G_eff > 0)
    return spec


def effective_iterations(spec):
    """(iterations (n, k, c, h, w, r, s), input rows, input cols) of every effective iteration."""
    (H, W), (R, S) = spec.out_size, spec.kernel_size
    dims = (spec.batch, spec.out_channels, spec.in_channels, H, W, R, S)
    it = np.stack([g.ravel() for g in np.meshgrid(*map(np.arange, dims), indexing="ij")], axis=1)
    n, k, c, h, w, r, s = it.T
    x = spec.stride[0] * h + spec.dilation[0] * r - spec.padding[0]
    y = spec.stride[1] * w + spec.dilation[1] * s - spec.padding[1]
    keep = (x >= 0) & (x < spec.in_size[0]) & (y >= 0) & (y < spec.in_size[1])
    return it[keep], x[keep], y[keep]


def distinct(*columns) -> int:
    return len(np.unique(np.stack(columns, axis=1), axis=0)) if len(columns[0]) else 0


def footprint_counts(it, x, y):
    """|I_V|, |F_V|, |O_V|, |A_V| (im2col entries) of the iteration set."""
    n, k, c, h, w, r, s = it.T
    return (distinct(n, c, x, y), distinct(k, c, r, s), distinct(n, k, h, w),
            distinct(n, h, w, c, r, s))


def subset(spec, rng, mode):
    """A random set V of effective iterations: a box of loop ranges, a random subset, or both."""
    it, x, y = effective_iterations(spec)
    keep = np.ones(len(it), dtype=bool)
    if mode in ("box", "both"):
        dims = it.max(axis=0) + 1
        for axis, d in enumerate(dims):
            lo = rng.integers(0, d)
            hi = rng.integers(lo + 1, d + 1)
            keep &= (it[:, axis] >= lo) & (it[:, axis] < hi)
    if mode in ("random", "both"):
        keep &= rng.random(len(it)) < rng.uniform(0.05, 1.0)
    return it[keep], x[keep], y[keep]


def byte_sizes(spec):
    return np.array([spec.p_in, spec.p_weight, output_bytes(spec)], dtype=float)


# ---- section 2: the inequalities on real sets --------------------------------------------------
@SETTINGS
@given(spec=tiny_specs(), seed=st.integers(0, 2**32 - 1),
       mode=st.sampled_from(["box", "random", "both"]))
def test_counting_inequalities_hold_on_random_sets(spec, seed, mode):
    it_all, _, _ = effective_iterations(spec)
    assert len(it_all) == spec.G_eff
    assert distinct(*it_all[:, [1, 2, 5, 6]].T) == used_filter_size(spec)
    it, x, y = subset(spec, np.random.default_rng(seed), mode)
    v = len(it)
    assume(v > 0)
    i, f, o, a = footprint_counts(it, x, y)
    (H, W), (R, S) = spec.out_size, spec.kernel_size
    N, K, C, rho = spec.batch, spec.out_channels, spec.in_channels, spec.rho
    assert v <= f * o and v <= i * o and v <= i * f                  # (P)
    assert v ** 3 <= (i * f * o) ** 2                                 # (H2)
    assert v ** 2 <= a * f * o and a <= rho * i                       # Loomis-Whitney, rho
    assert v ** 2 <= rho * i * f * o                                  # (H1) with rho
    assert v ** 2 <= reuse_constant(spec) * i * f * o * (1 + 1e-12)   # (H1) with kappa
    assert v <= C * R * S * o and v <= N * H * W * f and v <= K * rho * i   # (L)
    # the work function is never below a real set's size at that set's byte footprint
    X = float(byte_sizes(spec) @ [i, f, o])
    assert work_function(spec, X) >= v
    # nor is B_MI above what this set would cost the busy processor
    for P in (2, 3, 5):
        if v >= -(-spec.G_eff // P):
            bound = parallel_bounds(spec, P)
            x_need = np.maximum([i, f, o], bound.owned)
            assert bound.B_MI <= byte_sizes(spec) @ (x_need - np.array(bound.owned)) + 1e-9


@SETTINGS
@given(spec=tiny_specs())
def test_rho_bounds_im2col_entries_per_pixel_and_is_attained(spec):
    it, x, y = effective_iterations(spec)
    n, k, c, h, w, r, s = it.T
    entries = np.unique(np.stack([n, c, h, w, r, s, x, y], axis=1), axis=0)
    _, per_pixel = np.unique(entries[:, [0, 1, 6, 7]], axis=0, return_counts=True)
    assert per_pixel.max() <= spec.rho
    for axis in (0, 1):  # on a long enough axis some row is read by exactly rho_h taps
        kernel, stride, dil = spec.kernel_size[axis], spec.stride[axis], spec.dilation[axis]
        n_in = 4 * stride * dil * kernel + 8
        n_out = (n_in - dil * (kernel - 1) - 1) // stride + 1
        rows = (stride * np.arange(n_out)[:, None] + dil * np.arange(kernel)[None, :]).ravel()
        assert np.bincount(rows).max() == spec.rho_hw[axis]


# ---- the work function ------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["resnet50.conv1", "resnet50.layer1.0.conv2",
                                  "resnet50.layer4.0.downsample.0", "vgg16.conv5_1",
                                  "alexnet.conv1"])
def test_work_function_below_closed_forms_and_monotone(name):
    spec = get_layer(name, batch=2)
    budgets = np.geomspace(8, 1e9, 40)
    values = [work_function(spec, float(X)) for X in budgets]
    for X, value in zip(budgets, values):
        forms = closed_form_work(spec, float(X))
        assert value <= min(forms.values()) * (1 + 1e-9)
        assert value <= spec.G_eff * (1 + 1e-12)
    assert all(b >= a * (1 - 1e-12) for a, b in zip(values, values[1:]))
    assert values[-1] == spec.G_eff  # everything fits in a GB


def test_work_function_equals_binding_closed_form_where_no_cap_binds():
    # large 3x3 layer, float32 everywhere: x_j = X / 12 with H1 active needs rho <= x <= CRS^2/rho
    spec = ConvSpec(batch=1, in_channels=256, out_channels=256, in_size=56, kernel_size=3,
                    padding=1, dtype_in="float32")
    for X in (3e3, 3e4, 3e5):
        assert work_function(spec, X) == pytest.approx(
            closed_form_work(spec, X)["small_filter"], rel=1e-9)
    # 11x11 stride 1 (rho = 121), tiny budget x = X / 12 < rho: (H2) with (P) binds
    big = ConvSpec(batch=1, in_channels=64, out_channels=64, in_size=64, kernel_size=11,
                   dtype_in="float32")
    for X in (120.0, 600.0, 1200.0):
        assert work_function(big, X) == pytest.approx(
            closed_form_work(big, X)["large_filter"], rel=1e-9)


def test_work_function_certificate_is_tight_on_the_catalogue():
    for name in ("resnet50.conv1", "resnet50.layer3.0.conv2", "vgg16.conv1_1", "alexnet.conv2"):
        spec = get_layer(name, batch=4)
        for X in (3e2, 3e4, 3e6):
            solution = solve_work(spec, X)
            assert solution.primal_value <= solution.value <= solution.primal_value * (1 + 1e-9)
            assert float(byte_sizes(spec) @ solution.x) <= X * (1 + 1e-12)


@pytest.mark.parametrize("name", ["resnet50.layer2.0.conv2", "alexnet.conv1"])
def test_dual_polish_reaches_the_optimum_from_a_poor_start(name):
    # the solvers rarely need the polish (their multipliers are good): check it on its own
    spec = get_layer(name, batch=2)
    prog = layer_program(spec)
    m = len(prog.offsets)
    for X in (3e3, 3e5):
        primal = math.log(solve_work(spec, X).primal_value)
        value, lam = polish_work_dual(prog, np.full(m, 1.0 / m), X)
        assert primal - 1e-12 <= value <= primal + 1e-6
        assert lam.min() >= 0 and lam.sum() == pytest.approx(1.0)
    for P in (8, 512):
        work = -(-spec.G_eff // P)
        owned = parallel_bounds(spec, P).owned
        primal = solve_traffic(spec, work, owned).primal_value
        sub, rhs, lower, upper = traffic_program(spec, work, owned)
        value = polish_traffic_dual(sub, np.ones(len(rhs)), rhs, lower, upper)
        assert primal * (1 - 1e-6) <= value <= primal * (1 + 1e-12)


# ---- section 3: sequential bound against explicit schedules ------------------------------------
def schedule_traffic(spec, tiles, order):
    """Bytes moved and fast-memory footprint of one (tiling, loop order) under the traffic model
    of docs/theory.md 6.3: consecutive reuse, spills of incomplete outputs at p_acc, final outputs
    at p_out, input windows clipped to the image."""
    (H, W), (R, S) = spec.out_size, spec.kernel_size
    extent = dict(zip(LOOPS, (spec.batch, spec.out_channels, spec.in_channels, H, W, R, S)))
    ranges = {l: [(a, min(a + tiles[l], extent[l])) for a in range(0, extent[l], tiles[l])]
              for l in LOOPS}
    reductions = len(ranges["C"]) * len(ranges["R"]) * len(ranges["S"])

    def window(o, k, axis):
        lo = spec.stride[axis] * o[0] + spec.dilation[axis] * k[0] - spec.padding[axis]
        hi = spec.stride[axis] * (o[1] - 1) + spec.dilation[axis] * (k[1] - 1) - spec.padding[axis]
        return max(0, min(hi, spec.in_size[axis] - 1) - max(lo, 0) + 1)

    def size(block, *loops):
        return math.prod(block[l][1] - block[l][0] for l in loops)

    traffic, footprint, prev_in, prev_f, current, visits = 0, 0, None, None, None, {}

    def leave(key, block):
        done = visits[key] == reductions
        return size(block, "N", "K", "H", "W") * (spec.p_out if done else spec.p_acc)

    for index in itertools.product(*(range(len(ranges[l])) for l in order)):
        block = {l: ranges[l][i] for l, i in zip(order, index)}
        pos = dict(zip(order, index))
        in_bytes = (size(block, "N", "C") * window(block["H"], block["R"], 0)
                    * window(block["W"], block["S"], 1) * spec.p_in)
        f_bytes = size(block, "K", "C", "R", "S") * spec.p_weight
        out_bytes = size(block, "N", "K", "H", "W") * spec.p_acc
        footprint = max(footprint, in_bytes + f_bytes + out_bytes)
        in_key, f_key = tuple(pos[l] for l in "NCHWRS"), tuple(pos[l] for l in "KCRS")
        o_key = tuple(pos[l] for l in "NKHW")
        traffic += (in_bytes if in_key != prev_in else 0) + (f_bytes if f_key != prev_f else 0)
        prev_in, prev_f = in_key, f_key
        if o_key != (current and current[0]):
            if current:
                traffic += leave(*current)
            if visits.get(o_key, 0):
                traffic += size(block, "N", "K", "H", "W") * spec.p_acc
            current = (o_key, block)
        visits[o_key] = visits.get(o_key, 0) + 1
    return traffic + leave(*current), footprint


@SETTINGS
@given(spec=tiny_specs(max_size=5), data=st.data())
def test_sequential_bound_never_exceeds_a_tiled_schedule(spec, data):
    (H, W), (R, S) = spec.out_size, spec.kernel_size
    extent = dict(zip(LOOPS, (spec.batch, spec.out_channels, spec.in_channels, H, W, R, S)))
    tiles = {l: data.draw(st.integers(1, extent[l]), label=l) for l in LOOPS}
    order = "".join(data.draw(st.permutations(LOOPS), label="order"))
    traffic, footprint = schedule_traffic(spec, tiles, order)
    bound = sequential_bound(spec, footprint)
    assert bound.value <= traffic
    assert bound.compulsory <= traffic
    assert sequential_bound_two_memory(spec, footprint, 1).value <= traffic


@SETTINGS
@given(spec=tiny_specs())
def test_sequential_bound_against_streaming_and_load_everything(spec):
    _, f_used, _, _ = footprint_counts(*effective_iterations(spec))
    compulsory = (spec.p_in * spec.size_input_touched + spec.p_weight * f_used
                  + spec.p_out * spec.size_output)
    # everything resident: the traffic is the compulsory traffic, and so is the bound
    everything = (spec.p_in * spec.size_input + spec.p_weight * spec.size_filter
                  + spec.p_acc * spec.size_output)
    bound = sequential_bound(spec, everything)
    assert bound.value == compulsory and bound.binding == "compulsory"
    # one input, one filter element and one partial sum at a time, output-stationary
    streaming = spec.G_eff * (spec.p_in + spec.p_weight) + spec.size_output * spec.p_out
    for M in np.geomspace(spec.p_in + spec.p_weight + spec.p_acc, 4 * everything, 12):
        assert sequential_bound(spec, float(M)).value <= streaming


@pytest.mark.parametrize("spec", [
    ConvSpec(batch=1, in_channels=32, out_channels=32, in_size=8, kernel_size=1, dtype_in="float32"),
    ConvSpec(batch=1, in_channels=16, out_channels=16, in_size=8, kernel_size=3, padding=1,
             dtype_in="float32")])
def test_no_tiled_schedule_beats_the_weighted_segments(spec):
    # every tiling of K, C and H (whole W and window) in three loop orders, at its own footprint:
    # small footprints, where the weighted segments of docs/theory.md 3.3 give the bound
    (H, W), (R, S) = spec.out_size, spec.kernel_size
    divisors = [[d for d in range(1, n + 1) if n % d == 0]
                for n in (spec.out_channels, spec.in_channels, H)]
    weighted = 0
    for (k, c, h), order in itertools.product(itertools.product(*divisors),
                                              ("NKHWCRS", "NHWKCRS", "KCRSNHW")):
        tiles = dict(N=1, K=k, C=c, H=h, W=W, R=R, S=S)
        traffic, footprint = schedule_traffic(spec, tiles, order)
        bound = sequential_bound(spec, footprint)
        assert bound.value <= traffic
        weighted += bound.segment_weighted and bound.value == bound.segment
    assert weighted >= 20


def test_narrow_outputs_are_counted_at_their_stored_size():
    # int8 outputs of an int32 accumulator: filter resident, one pixel's K outputs at a time.
    # With p_acc = 4 for outputs in F(3M) the segment term would be 150144 bytes, above this
    # schedule; p_O = min(p_acc, p_out) keeps the bound valid.
    spec = ConvSpec(batch=1, in_channels=64, out_channels=64, in_size=32, kernel_size=1,
                    dtype_in="int8", dtype_out="int8")
    tiles = dict(N=1, K=64, C=64, H=1, W=1, R=1, S=1)
    traffic, footprint = schedule_traffic(spec, tiles, "NKCHWRS")
    assert (traffic, footprint) == (135168, 4416)
    assert output_bytes(spec) == 1
    assert sequential_bound(spec, footprint).value <= traffic


def test_sequential_bound_terms_and_binding():
    spec = get_layer("vgg16.conv3_2", batch=8)
    small_M = sequential_bound(spec, 2.0**12)
    assert small_M.binding == "small-filter"
    assert small_M.value == small_M.segment >= small_M.small_filter >= small_M.large_filter
    assert small_M.value > small_M.compulsory
    assert sequential_bound(spec, 2.0**34).binding == "compulsory"
    assert set(small_M.to_dict()) == {"value", "compulsory", "segment", "small_filter",
                                      "large_filter", "binding", "M", "segment_polyphase",
                                      "segment_length", "segment_weighted", "polyphase_length",
                                      "polyphase_weighted"}
    two = sequential_bound_two_memory(spec, 2.0**11, 2.0**11)
    assert two == small_M
    tiny = sequential_bound(ConvSpec(batch=1, in_channels=64, out_channels=64, in_size=64,
                                     kernel_size=11, dtype_in="float32"), 64.0)
    assert tiny.binding == "large-filter"


@pytest.mark.parametrize("M", [2.0**12, 2.0**14])
def test_segment_rules_and_lengths_where_the_small_filter_term_binds(M):
    # docs/theory.md 3.3-3.4: segments of S transfers see data worth 2M + S, best at S = 4M,
    # sqrt(2) above the classical S = M; weighted segments (output bytes counted twice) reach
    # (8/3)^(1/2) of the leading term less p_O |O|, which wins here only at the smaller M
    spec = get_layer("vgg16.conv3_2", batch=8)
    bound = sequential_bound(spec, M)
    classical = segments(spec.G_eff, M, solve_work(spec, 3.0 * M).value)
    plain = best_segment(M, lambda S: segment_term(spec, M, S))
    weighted = best_segment(M, lambda L: segment_term(spec, M, L, True))
    assert plain[1] == 4 * M and 1.39 < plain[0] / classical <= math.sqrt(2.0)
    assert bound.segment == max(plain[0], weighted[0]) and bound.binding == "small-filter"
    assert bound.segment_weighted == (weighted[0] > plain[0]) == (M == 2.0**12)
    assert bound.segment_length == (weighted[1] if bound.segment_weighted else plain[1])
    assert bound.small_filter <= bound.segment
    outputs = output_bytes(spec) * spec.size_output
    for n in segment_lengths(M):
        assert segment_term(spec, M, n) == segments(spec.G_eff, n,
                                                    solve_work(spec, 2 * M + n).value)
        assert segment_term(spec, M, n, True) == max(0.0, segments(
            spec.G_eff, n, solve_work(spec, 3 * M + n + 1, 2).value) - outputs)
    assert segment_lengths(1.0)[0] == 1 and all(isinstance(n, int) for n in segment_lengths(M))


@pytest.mark.parametrize("name", ["resnet50.conv1", "resnet50.layer3.0.conv2",
                                  "resnet50.layer2.0.conv1", "vgg16.conv3_2", "alexnet.conv1"])
def test_bound_value_equals_the_full_bound(name):
    # memories from tiny (a segment term binds, it must be solved) to large (compulsory binds,
    # the feasible point must certify that the skipped terms are not larger)
    bindings = set()
    for batch, M in itertools.product((1, 8), (2.0**6, 2.0**10, 327680.0, 2.0**24)):
        spec = get_layer(name, batch=batch)
        full = sequential_bound(spec, M)
        assert sequential_bound_value(spec, M) == full.value
        bindings.add(full.binding)
    assert "compulsory" in bindings and len(bindings) > 1


@SETTINGS
@given(spec=tiny_specs(), M=st.sampled_from([16.0, 64.0, 256.0, 4096.0]))
def test_bound_value_equals_the_full_bound_on_tiny_layers(spec, M):
    assert sequential_bound_value(spec, M) == sequential_bound(spec, M).value
    for prog in (layer_program(spec), witness_program(spec)):
        assert math.exp(feasible_log_work(prog, 3.0 * M)) <= solve_work(spec, 3.0 * M).value


def test_feasible_log_works_are_the_scalar_values_bit_for_bit():
    from parconv.bounds.polyphase import polyphase_program
    spec = get_layer("resnet50.conv1", batch=4)
    M = 327680.0
    budgets = [2 * M + n for n in segment_lengths(M)]
    for prog in (layer_program(spec), witness_program(spec),
                 polyphase_program(spec, 0.5, witness=True)[0]):
        for steps in (8, 16):
            many = feasible_log_works(prog, budgets, steps)
            assert many.tolist() == [feasible_log_work(prog, X, steps) for X in budgets]


def test_im2col_bound_formula_and_the_direct_advantage():
    spec = get_layer("vgg16.conv2_1", batch=1, dtype="float32")  # 3x3, stride 1: rho = 9
    M = 2.0**12
    (H, W), (R, S) = spec.out_size, spec.kernel_size
    ppp, outputs = spec.p_in * spec.p_weight * spec.p_acc, spec.p_acc * spec.size_output
    plain = max(S * (math.ceil(spec.G / (((2 * M + S) / 3) ** 1.5 / math.sqrt(ppp))) - 1)
                for S in segment_lengths(M))
    weighted = max(L * (math.ceil(spec.G / (((3 * M + L + 1) / 3) ** 1.5 / math.sqrt(2 * ppp)))
                        - 1) - outputs for L in segment_lengths(M))
    assert im2col_bound(spec, M) == max(plain, weighted)
    ratio = im2col_bound(spec, M) / sequential_bound(spec, M).value
    # sqrt(RS / (sh sw)) = 3, times G / G_eff (im2col multiplies the padding), up to the "- 1";
    # weighted segments can lift im2col's term by up to (8/3)^(1/2) / 2^(1/2) = (4/3)^(1/2) more
    # than the direct one (the outputs they subtract are the same, its leading term is larger)
    assert 2.5 < ratio <= 3 * math.sqrt(4.0 / 3.0) * spec.G / spec.G_eff * (1 + 1e-3)
    huge = 2.0**40  # everything fits: the compulsory traffic of the explicit im2col matrix
    assert im2col_bound(spec, huge) == (spec.p_in * spec.batch * H * W * spec.in_channels * R * S
                                        + spec.p_weight * spec.size_filter
                                        + spec.p_out * spec.size_output)


# ---- section 4: parallel bounds ---------------------------------------------------------------
def test_memory_independent_closed_form_when_no_cap_binds():
    # equal precisions put p_j x_j = (p_I p_F p_O t^2 / kappa)^(1/3) strictly inside every cap
    spec = ConvSpec(batch=1, in_channels=64, out_channels=64, in_size=64, kernel_size=3,
                    padding=1, dtype_in="float32")
    p = byte_sizes(spec)
    for P in (64, 256):
        bound = parallel_bounds(spec, P)
        x = np.array(busy_processor_footprint(spec, P))
        sizes = [spec.size_input_touched, spec.size_filter, spec.size_output]
        assert np.all(x > np.array(bound.owned) * 1.01) and np.all(x < np.array(sizes) * 0.99)
        work = -(-spec.G_eff // P)
        closed = (3 * p.prod() ** (1 / 3) * work ** (2 / 3) * reuse_constant(spec) ** (-1 / 3)
                  - p @ bound.owned)
        assert bound.B_MI == pytest.approx(closed, rel=1e-9)


@pytest.mark.parametrize("spec", [
    get_layer("resnet50.layer1.0.conv1", batch=32),
    get_layer("resnet50.layer3.0.conv1", batch=32)])
def test_memory_independent_optimum_replicates_a_small_filter(spec):
    # 1x1 layers: x_I = |I|/P, x_O = |O|/P and (H1) give x_F = G^2 / (|I| |O|) = |F| exactly.
    # A 3x3 layer stops a little short of |F| (by (H W / (H_in W_in))^2 or (G_eff / G)^2): the busy
    # processor's own input and output border loses some taps, and the bound knows it.
    for P in (4, 16, 64):
        x = busy_processor_footprint(spec, P)
        assert x[1] == pytest.approx(spec.size_filter, rel=1e-9)
        traffic = solve_traffic(spec, -(-spec.G_eff // P), parallel_bounds(spec, P).owned)
        assert traffic.value <= traffic.primal_value <= traffic.value * (1 + 1e-9)


@pytest.mark.parametrize("name", ["resnet50.layer2.0.conv2", "resnet50.layer4.2.conv3",
                                  "vgg16.conv1_2", "alexnet.conv3"])
def test_memory_independent_bound_sign_and_decrease_in_P(name):
    spec = get_layer(name, batch=16)
    assert parallel_bounds(spec, 1).B_MI == 0.0  # one processor owns everything it needs
    values = [parallel_bounds(spec, 2**e).B_MI for e in range(1, 16)]
    assert all(v >= 0 for v in values)
    # past its peak the per-processor bound only falls (it is 0 at P = 1, so it first rises)
    tail = values[values.index(max(values)):]
    assert all(b <= a * (1 + 1e-12) for a, b in zip(tail, tail[1:]))
    assert values[-1] < max(values)


def test_binding_switches_from_memory_dependent_to_independent():
    spec = get_layer("resnet50.layer3.1.conv2", batch=32)
    M = 2.0**16
    bindings = [parallel_bounds(spec, 2**e, M=M).binding for e in range(0, 17)]
    assert bindings[0] == "memory-dependent" and bindings[-1] == "memory-independent"
    switch = bindings.index("memory-independent")
    assert all(b == "memory-independent" for b in bindings[switch:])
    one = parallel_bounds(spec, 1, M=M)
    assert one.B_MD == sequential_bound(spec, M).segment
    assert one.to_dict() == {"B_MI": 0.0, "B_MD": one.B_MD, "binding": "memory-dependent",
                             "value": one.B_MD, "P": 1, "M": M,
                             "owned": [spec.size_input_touched, spec.size_filter,
                                       spec.size_output],
                             "B_MI_plain": 0.0, "B_MD_plain": one.B_MD, "B_MI_polyphase": 0.0,
                             "B_MD_polyphase": 0.0, "B_MI_halo": 0.0,
                             "B_MI_term": "section 4"}


def test_bad_arguments_name_the_field():
    spec = get_layer("resnet50.conv1")
    with pytest.raises(ParconvError, match="M must be"):
        sequential_bound(spec, 0)
    with pytest.raises(ParconvError, match="X must be"):
        work_function(spec, -1.0)
    with pytest.raises(ParconvError, match="M_acc"):
        sequential_bound_two_memory(spec, 1024, float("nan"))
    with pytest.raises(ParconvError, match="P must be"):
        parallel_bounds(spec, 0)
    with pytest.raises(ParconvError, match="owned o_F"):
        parallel_bounds(spec, 4, owned=(spec.size_input_touched, 1, spec.size_output))
    with pytest.raises(ParconvError, match="spec must be a ConvSpec"):
        im2col_bound("resnet50.conv1", 1024)


def test_padding_only_layer_has_no_work():
    spec = ConvSpec(batch=1, in_channels=1, out_channels=1, in_size=1, kernel_size=1, stride=3,
                    padding=2)
    assert spec.G_eff == 0
    assert work_function(spec, 10.0) == 0.0
    assert parallel_bounds(spec, 4, M=16.0).value == 0.0
    assert sequential_bound(spec, 16.0).value == spec.p_out * spec.size_output
