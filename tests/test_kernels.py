"""NumpyKernel against the slow reference on awkward shapes; the kernel registry."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from parconv.errors import ParconvError
from parconv.kernels import NumpyKernel, reference_conv2d
from parconv.nodes import get_kernel
from parconv.spec import ConvSpec, spec_for_dtype


def random_operands(spec: ConvSpec, seed: int = 0):
    rng = np.random.default_rng(seed)
    if spec.dtype_in == "int8":
        x = rng.integers(-128, 128, spec.input_shape, dtype=np.int8)
        w = rng.integers(-128, 128, spec.weight_shape, dtype=np.int8)
    else:
        x = rng.standard_normal(spec.input_shape).astype(spec.dtype_in)
        w = rng.standard_normal(spec.weight_shape).astype(spec.dtype_weight)
    return x, w


def assert_kernel_matches_reference(spec: ConvSpec, seed: int = 0):
    x, w = random_operands(spec, seed)
    y, stats = NumpyKernel().run(spec, x, w)
    ref = reference_conv2d(spec, x, w)
    assert y.shape == spec.output_shape
    assert y.dtype == np.dtype(spec.dtype_acc)
    assert stats["kernel"] == "numpy" and stats["macs"] == spec.G
    if spec.dtype_in == "int8":
        np.testing.assert_array_equal(y, ref)
    else:
        tol = 1e-4 if spec.dtype_acc == "float32" else 1e-12
        np.testing.assert_allclose(y, ref, rtol=tol, atol=tol * spec.in_channels)


AWKWARD = [
    dict(in_size=(7, 9), kernel_size=(3, 3), stride=(1, 1), padding=(1, 1)),
    dict(in_size=(11, 8), kernel_size=(3, 2), stride=(2, 3), padding=(1, 0)),
    dict(in_size=(9, 9), kernel_size=(3, 3), dilation=(2, 3), padding=(2, 1)),
    dict(in_size=(8, 8), kernel_size=(1, 1), stride=(2, 2)),             # 1x1 stride 2
    dict(in_size=(13, 12), kernel_size=(7, 7), stride=(2, 2), padding=(3, 3)),
    dict(in_size=(6, 7), kernel_size=(3, 3), padding=(2, 0), padding_end=(0, 3)),  # asymmetric
    dict(in_size=(5, 6), kernel_size=(3, 3), padding=(0, 1), padding_end=(2, 0), stride=(2, 1)),
    dict(in_size=(2, 2), kernel_size=(3, 3), padding=(2, 2), padding_end=(1, 0)),  # mostly padding
]


@pytest.mark.parametrize("dtype", ["int8", "float32", "float64"])
@pytest.mark.parametrize("shape", AWKWARD)
def test_numpy_kernel_equals_reference(shape, dtype):
    spec = spec_for_dtype(dtype, batch=2, in_channels=3, out_channels=5, **shape)
    assert_kernel_matches_reference(spec)


def test_int8_extremes_are_exact():
    spec = spec_for_dtype("int8", batch=1, in_channels=64, out_channels=2, in_size=(4, 4),
                          kernel_size=(3, 3), padding=(1, 1))
    x = np.full(spec.input_shape, -128, dtype=np.int8)
    w = np.full(spec.weight_shape, -128, dtype=np.int8)
    y, _ = NumpyKernel().run(spec, x, w)
    assert y[0, 0, 1, 1] == 64 * 9 * 128 * 128
    np.testing.assert_array_equal(y, reference_conv2d(spec, x, w))


def test_int8_accumulation_never_wraps():
    # 16384 * 9 * 2**14 > 2**31: the int32 sum could wrap, so the layer is refused up front
    with pytest.raises(ParconvError, match=r"C\*R\*S = 16384\*3\*3 = 147456 > 131071"):
        spec_for_dtype("int8", batch=1, in_channels=16384, out_channels=1, in_size=(3, 3),
                       kernel_size=(3, 3))
    # at the bound the extreme sum is exact: 131071 * 2**14 = 2**31 - 2**14 fits int32
    spec = spec_for_dtype("int8", batch=1, in_channels=131071, out_channels=1, in_size=(1, 1),
                          kernel_size=(1, 1))
    x = np.full(spec.input_shape, -128, dtype=np.int8)
    w = np.full(spec.weight_shape, -128, dtype=np.int8)
    y, _ = NumpyKernel().run(spec, x, w)
    assert y.dtype == np.int32 and int(y[0, 0, 0, 0]) == 131071 * 128 * 128
    np.testing.assert_array_equal(y, reference_conv2d(spec, x, w))


@settings(max_examples=25, deadline=None)
@given(h=st.integers(1, 9), w=st.integers(1, 9), r=st.integers(1, 4), s=st.integers(1, 4),
       sh=st.integers(1, 3), sw=st.integers(1, 3), dh=st.integers(1, 3), dw=st.integers(1, 3),
       pads=st.tuples(*[st.integers(0, 3)] * 4), seed=st.integers(0, 1000))
def test_random_shapes_int8(h, w, r, s, sh, sw, dh, dw, pads, seed):
    try:
        spec = spec_for_dtype("int8", batch=2, in_channels=3, out_channels=2, in_size=(h, w),
                              kernel_size=(r, s), stride=(sh, sw), dilation=(dh, dw),
                              padding=pads[:2], padding_end=pads[2:])
    except ParconvError:
        return  # kernel wider than the padded input: not a layer
    assert_kernel_matches_reference(spec, seed)


def test_reference_adds_bias():
    spec = spec_for_dtype("int8", batch=1, in_channels=2, out_channels=3, in_size=(4, 4),
                          kernel_size=(3, 3), padding=(1, 1), bias=True)
    x, w = random_operands(spec)
    bias = np.array([5, -7, 2**31 - 1], dtype=np.int32)
    ref = reference_conv2d(spec, x, w, bias)
    y, _ = NumpyKernel().run(spec, x, w)
    expected = (y.astype(np.int64) + bias.reshape(1, 3, 1, 1)).astype(np.int32)
    np.testing.assert_array_equal(ref, expected)


def test_wrong_operand_shape_or_type_is_rejected():
    spec = spec_for_dtype("int8", batch=1, in_channels=2, out_channels=3, in_size=(4, 4),
                          kernel_size=(3, 3))
    x, w = random_operands(spec)
    with pytest.raises(ParconvError, match="shape"):
        NumpyKernel().run(spec, x[:, :1], w)
    with pytest.raises(ParconvError, match="int8"):
        NumpyKernel().run(spec, x.astype(np.float32), w)


def test_registry():
    assert isinstance(get_kernel("numpy"), NumpyKernel)
    with pytest.raises(ParconvError, match="numpy, gemmini"):
        get_kernel("cuda")


@pytest.fixture
def tiny_blocks(monkeypatch):
    """Blocks of a few rows and pieces of a few columns: every blocking loop runs many times."""
    import parconv.blas_methods as blas_methods
    monkeypatch.setattr(blas_methods, "COLUMNS_BYTES", 96)
    monkeypatch.setattr(blas_methods, "TAP_BLOCK_BYTES", 40)
    monkeypatch.setattr(blas_methods, "MIN_ROWS", 1)
    monkeypatch.setattr(blas_methods, "ROWS_MIN_WIDTH", 1)


def methods_for(spec):
    return ["taps", "im2col"] + (["gemm"] if blasconv_gemm_applies(spec) else [])


def blasconv_gemm_applies(spec):
    from parconv.blasconv import _gemm_applies
    return _gemm_applies(spec)


def assert_methods_match_reference(spec, x, w):
    from parconv.blasconv import conv2d_blas
    ref = reference_conv2d(spec, x, w)
    for method in methods_for(spec):
        y, how = conv2d_blas(spec, x, w, method)
        assert y.dtype == ref.dtype and y.shape == ref.shape and how["method"] == method
        if spec.dtype_in.startswith("int"):
            np.testing.assert_array_equal(y, ref, err_msg=method)
        else:
            tol = 1e-4 if spec.dtype_acc == "float32" else 1e-12
            np.testing.assert_allclose(y, ref, rtol=tol, atol=tol * spec.in_channels,
                                       err_msg=method)


@pytest.mark.parametrize("first", [False, True])
@pytest.mark.parametrize("dtype", ["int8", "float32", "float64"])
@pytest.mark.parametrize("shape", AWKWARD + [dict(in_size=(6, 5), kernel_size=(1, 1)),
                                             dict(in_size=(7, 6), kernel_size=(1, 1),
                                                  stride=(3, 2))])
def test_every_method_on_tiny_blocks(tiny_blocks, monkeypatch, shape, dtype, first):
    # every method, blocks of a few rows, both im2col layouts
    import parconv.blasconv as blasconv
    monkeypatch.setattr(blasconv, "channels_first", lambda spec: first)
    spec = spec_for_dtype(dtype, batch=2, in_channels=3, out_channels=5, **shape)
    assert_methods_match_reference(spec, *random_operands(spec, seed=3))


@pytest.mark.parametrize("channels, kernel, group", [(1024, 1, None), (1025, 1, 1024),
                                                     (113, 3, None), (114, 3, 1024),
                                                     (2050, 1, 1024), (300, 3, 1024)])
def test_int8_extremes_at_the_group_boundary(float_int8_path, channels, kernel, group):
    # -128 * -128 = 2**14: 1024 products reach 2**24, the last integer float32 holds with all
    # below it; one more product must start a new group, and the groups add exactly in int32
    from parconv.blas_exact import arithmetic
    spec = spec_for_dtype("int8", batch=1, in_channels=channels, out_channels=3, in_size=(4, 5),
                          kernel_size=(kernel, kernel), padding=(kernel // 2, kernel // 2))
    x = np.full(spec.input_shape, -128, dtype=np.int8)
    w = np.full(spec.weight_shape, -128, dtype=np.int8)
    w[1] = 127
    w[2, ::2] = -1
    assert arithmetic(spec, x, w).limit == group
    assert arithmetic(spec, x, w).dtype == np.float32
    assert_methods_match_reference(spec, x, w)
    y, stats = NumpyKernel().run(spec, x, w)
    assert stats["exact_group"] == group
    if kernel == 1:
        assert int(y[0, 0, 0, 0]) == channels * 2 ** 14


@pytest.mark.parametrize("dtype, channels, stride, pads, extreme", [
    ("int8", 3, (2, 2), (3, 3, 2, 3), False), ("int8", 40, (1, 2), (1, 0, 0, 2), True),
    ("int16", 5, (2, 1), (0, 2, 1, 0), True), ("float64", 4, (3, 2), (2, 1, 2, 2), False)])
def test_im2col_row_bands_match_the_blocks(float_int8_path, monkeypatch, dtype, channels, stride, pads, extreme):
    # the row bands (dilation 1 along H) against the blocks of the general form, bands of one
    # output row and of several; extremes: several exact groups (40 x 5 x 7 > 1024 products
    # of 2**14), int16 sums past 2**31 in float64 groups
    import parconv.blas_methods as blas_methods
    from parconv.blas_exact import arithmetic
    from parconv.blasconv import conv2d_blas
    spec = spec_for_dtype(dtype, batch=2, in_channels=channels, out_channels=6, in_size=(11, 13),
                          kernel_size=(5, 7), stride=stride, dilation=(1, 2), padding=pads[:2],
                          padding_end=pads[2:])
    x, w = random_operands(spec, seed=5)
    monkeypatch.setattr(blas_methods, "ROWS_MIN_WIDTH", spec.out_size[1] + 1)
    assert not blas_methods.rows_apply(spec, arithmetic(spec, x, w))       # rows too narrow
    monkeypatch.setattr(blas_methods, "ROWS_MIN_WIDTH", spec.out_size[1])
    if extreme:
        info = np.iinfo(x.dtype)
        x[...] = info.min
        w[...] = info.min
        w[1] = info.max
    assert blas_methods.rows_apply(spec, arithmetic(spec, x, w))
    ref = reference_conv2d(spec, x, w)
    bands = []
    for columns in (blas_methods.COLUMNS_BYTES, 96):
        monkeypatch.setattr(blas_methods, "ROWS_MIN_WIDTH", spec.out_size[1])
        monkeypatch.setattr(blas_methods, "COLUMNS_BYTES", columns)
        (H, W), (R, S) = spec.out_size, spec.kernel_size
        bands.append(int(blas_methods.band_rows(H, channels, S, W, R, spec.stride[0],
                                                arithmetic(spec, x, w).dtype.itemsize)))
        y, _ = conv2d_blas(spec, x, w, "im2col")
        monkeypatch.setattr(blas_methods, "rows_apply", lambda spec, arith: False)
        blocks, _ = conv2d_blas(spec, x, w, "im2col")
        monkeypatch.undo()
        monkeypatch.setenv("PARCONV_BLAS", "numpy")     # float_int8_path again after the undo
        if dtype == "float64":
            np.testing.assert_allclose(y, ref, rtol=1e-12, atol=1e-12 * channels)
            np.testing.assert_allclose(y, blocks, rtol=1e-12, atol=1e-12 * channels)
        else:
            np.testing.assert_array_equal(y, ref)
            np.testing.assert_array_equal(y, blocks)
    assert bands[0] == spec.out_size[0] and bands[1] == 1
    if extreme and dtype == "int8":
        assert arithmetic(spec, x, w).limit == 1024


def test_small_integers_need_no_groups():
    # the group length follows the data: |x| <= 3, |w| <= 2 allow 2**24 / 6 products
    from parconv.blas_exact import arithmetic
    spec = spec_for_dtype("int8", batch=1, in_channels=4000, out_channels=2, in_size=(3, 3),
                          kernel_size=(3, 3), padding=(1, 1))
    rng = np.random.default_rng(0)
    x = rng.integers(-3, 4, spec.input_shape).astype(np.int8)
    w = rng.integers(-2, 3, spec.weight_shape).astype(np.int8)
    assert arithmetic(spec, x, w).limit is None
    assert_methods_match_reference(spec, x, w)
    zeros = np.zeros_like(x)
    assert arithmetic(spec, zeros, w).limit is None
    y, _ = NumpyKernel().run(spec, zeros, w)
    assert not y.any()


def test_wider_integers_use_float64_or_int64():
    from parconv.blas_exact import arithmetic
    rng = np.random.default_rng(1)
    spec = ConvSpec(batch=1, in_channels=40, out_channels=2, in_size=(5, 6), kernel_size=(3, 3),
                    padding=(1, 0), dtype_in="int16", dtype_acc="int32")
    x = rng.integers(-2 ** 15, 2 ** 15, spec.input_shape).astype(np.int16)
    w = rng.integers(-2 ** 15, 2 ** 15, spec.weight_shape).astype(np.int16)
    assert arithmetic(spec, x, w).dtype == np.float64
    assert_methods_match_reference(spec, x, w)       # sums pass 2**31: wrap-around in int32
    spec = ConvSpec(batch=1, in_channels=3, out_channels=2, in_size=(5, 5), kernel_size=(3, 3),
                    dtype_in="int32", dtype_acc="int64")
    x = rng.integers(-2 ** 31, 2 ** 31, spec.input_shape).astype(np.int32)
    w = rng.integers(-2 ** 31, 2 ** 31, spec.weight_shape).astype(np.int32)
    assert arithmetic(spec, x, w).dtype == np.int64
    assert_methods_match_reference(spec, x, w)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(h=st.integers(1, 9), w=st.integers(1, 9), r=st.integers(1, 4), s=st.integers(1, 4),
       sh=st.integers(1, 3), sw=st.integers(1, 3), dh=st.integers(1, 3), dw=st.integers(1, 3),
       pads=st.tuples(*[st.integers(0, 3)] * 4), c=st.integers(1, 6), dtype=st.sampled_from(
           ["int8", "float64"]), seed=st.integers(0, 1000))
def test_random_shapes_every_method(tiny_blocks, h, w, r, s, sh, sw, dh, dw, pads, c, dtype,
                                    seed):
    try:
        spec = spec_for_dtype(dtype, batch=2, in_channels=c, out_channels=3, in_size=(h, w),
                              kernel_size=(r, s), stride=(sh, sw), dilation=(dh, dw),
                              padding=pads[:2], padding_end=pads[2:])
    except ParconvError:
        return  # kernel wider than the padded input: not a layer
    assert_methods_match_reference(spec, *random_operands(spec, seed))


def test_methods_are_chosen_by_shape(float_int8_path):
    from parconv.blasconv import choose_method, direct_method
    from parconv.layers import get_layer
    assert choose_method(get_layer("resnet50.layer2.0.conv1", batch=2)) == "gemm"
    assert direct_method(get_layer("resnet50.layer4.1.conv2", batch=2)) == "im2col"  # 9x9 grid
    assert choose_method(get_layer("resnet50.conv1", batch=1)) == "im2col"           # C = 3
    assert choose_method(get_layer("resnet50.layer1.0.conv2", batch=2)) == "winograd"  # exact
    assert direct_method(get_layer("resnet50.layer1.0.conv2", batch=2)) == "taps"
    spec = get_layer("resnet50.layer1.0.conv2", batch=1)
    x, w = random_operands(spec.replace(in_size=(8, 8)))
    with pytest.raises(ParconvError, match="gemm"):
        NumpyKernel(method="gemm").run(spec.replace(in_size=(8, 8)), x, w)
    with pytest.raises(ParconvError, match="method"):
        NumpyKernel(method="fft")
    with pytest.raises(ParconvError, match="threads"):
        NumpyKernel(threads=0)


def test_stats_say_blas_and_threads():
    from threadpoolctl import threadpool_limits
    spec = spec_for_dtype("float32", batch=1, in_channels=4, out_channels=3, in_size=(6, 6),
                          kernel_size=(3, 3))
    x, w = random_operands(spec)
    _, stats = NumpyKernel(threads=1).run(spec, x, w)
    assert stats["blas_threads"] == 1 and stats["blas"] and "1 threads" in stats["blas"][0]
    with threadpool_limits(limits=1, user_api="blas"):
        _, stats = NumpyKernel().run(spec, x, w)
    assert stats["blas_threads"] == 1
    assert stats["method"] in ("taps", "im2col") and stats["compute_dtype"] == "float32"
    import json
    json.dumps(stats)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64])
def test_matmul_into_accumulates_in_place(dtype):
    from parconv.blas import matmul_into
    rng = np.random.default_rng(0)
    a = rng.integers(-9, 9, (7, 5)).astype(dtype)
    b = rng.integers(-9, 9, (5, 3)).astype(dtype)
    out = np.ones((7, 3), dtype=dtype)
    matmul_into(out, a, b, accumulate=True)
    np.testing.assert_array_equal(out, 1 + a @ b)
    matmul_into(out, a[:, 1:4], b[1:4], accumulate=True)     # strided operand: scratch path
    np.testing.assert_array_equal(out, 1 + a @ b + a[:, 1:4] @ b[1:4])
    matmul_into(out, a, np.asfortranarray(b), accumulate=True)   # BLAS transposes b
    np.testing.assert_array_equal(out, 1 + 2 * (a @ b) + a[:, 1:4] @ b[1:4])
    matmul_into(out, a, b, accumulate=False)
    np.testing.assert_array_equal(out, a @ b)


def test_column_groups_cover_the_reduction_once():
    from parconv.blas_exact import column_groups
    for channels, n_taps, limit, piece in [(5, 9, None, None), (5, 9, 12, 7), (3000, 2, 1024, None),
                                           (7, 4, 7, 3), (1, 1, None, 1)]:
        groups = column_groups(channels, n_taps, limit, piece)
        entries = [e for g in groups for p in g for e in p]
        covered = sorted((t, c) for t, c0, c1 in entries for c in range(c0, c1))
        assert covered == [(t, c) for t in range(n_taps) for c in range(channels)]
        for g in groups:
            assert limit is None or sum(c1 - c0 for p in g for _, c0, c1 in p) <= limit
            for p in g:
                assert len(p) == 1 if piece is None else sum(c1 - c0 for _, c0, c1 in p) <= piece


def test_bench_writes_its_table_and_json(tmp_path, capsys, monkeypatch):
    # a small layer, one round: the figures are measured, the verdicts follow from them
    import json
    monkeypatch.delenv("PARCONV_JIT", raising=False)
    from parconv.bench import main
    path = tmp_path / "bench.json"
    assert main(["--layers", "alexnet.conv5:1", "--threads", "1", "--rounds", "1",
                 "--no-gemmini", "--gemm-size", "64", "--json", str(path)]) == 0
    out = capsys.readouterr().out
    result = json.loads(path.read_text())
    row = result["conv"][0]
    assert row["layer"] == "alexnet.conv5" and row["threads"] == 1
    assert row["parconv_float32_gflops"] > 0 and row["parconv_int8_gflops"] > 0
    assert result["machine"]["blas"] and row["sgemm_gflops"] > 0 and row["dgemm_gflops"] > 0
    for target in result["targets"]:
        assert target["met"] == (target["value"] >= 0.6 if "int8" in target["target"]
                                 or "SGEMM" in target["target"] else target["value"] >= 1.0)
    assert "alexnet.conv5" in out and "targets:" in out
    # the benchmark preloads the fused transforms (parconv.jit), taken at one thread too where
    # numba is usable; the table names the rows that took them
    assert row["transforms_float32"] in ("numba", "numpy", None)
    if row["transforms_float32"] == "numba":
        assert "by numba (parconv.jit) on: alexnet.conv5 @ 1" in out
    else:
        assert "numpy transforms everywhere" in out
    assert main(["--layers", "nope"]) == 2
    assert main(["--no-gemmini", "--only-gemmini"]) == 2
    # the Gemmini node alone: fresh node, search and executor next to the numpy kernel
    assert main(["--layers", "alexnet.conv5:1", "--rounds", "1", "--only-gemmini",
                 "--json", str(path)]) == 0
    result = json.loads(path.read_text())
    block = result["gemmini"][0]
    assert not result["conv"] and block["layer"] == "alexnet.conv5"
    assert block["node_fresh_s"] >= block["search_s"] > 0 and block["numpy_s"] > 0
    assert block["ratio_with_search"] == block["node_fresh_s"] / block["numpy_s"]
    for target in result["targets"]:
        assert target["met"] == (target["value"] <= (2.0 if "executor" in target["target"]
                                                     else 3.0))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_gemm_in_place_and_on_strided_input(dtype):
    # C-contiguous floats: one stacked product straight into the output; any other layout
    # (here Fortran order) takes the per-image path; both equal the reference
    from parconv.blasconv import conv2d_blas
    spec = spec_for_dtype(dtype, batch=3, in_channels=5, out_channels=4, in_size=(12, 13),
                          kernel_size=(1, 1))
    x, w = random_operands(spec, seed=5)
    ref = reference_conv2d(spec, x, w)
    for operand in (x, np.asfortranarray(x)):
        y, how = conv2d_blas(spec, operand, w)
        assert how["method"] == "gemm"
        np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)
