"""NumpyKernel against the slow reference on awkward shapes; the kernel registry."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

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


@pytest.mark.parametrize("max_channels, chunk_bytes", [(1, 1 << 26), (99, 1), (99, 3000),
                                                      (99, 1 << 26)])
def test_per_tap_and_chunked_paths(monkeypatch, max_channels, chunk_bytes):
    # per tap (too many channels or too large an image), im2col one image or all at a time
    import parconv.kernels as kernels
    monkeypatch.setattr(kernels, "IM2COL_MAX_CHANNELS", max_channels)
    monkeypatch.setattr(kernels, "IM2COL_CHUNK_BYTES", chunk_bytes)
    for dtype in ("int8", "float64"):
        spec = spec_for_dtype(dtype, batch=3, in_channels=3, out_channels=4, in_size=(7, 6),
                              kernel_size=(3, 2), stride=(2, 1), dilation=(1, 2),
                              padding=(1, 0), padding_end=(0, 2))
        assert_kernel_matches_reference(spec)
