"""The Winograd method against the slow reference, F(2x2, 3x3) at stride 1 and the polyphase
form at stride 2: odd sizes, padding (asymmetric, wider than the filter's half), blocks of tile
rows and of several images; its accuracy next to the direct method's; where the chooser takes
it."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from parconv import jit, winograd, winograd_s2
from parconv.blas import limit_threads
from parconv.blasconv import choose_method, conv2d_blas
from parconv.errors import ParconvError
from parconv.kernels import NumpyKernel, reference_conv2d
from parconv.layers import get_layer
from parconv.spec import spec_for_dtype

SHAPES = [
    dict(in_size=(7, 9), padding=(1, 1)),                        # odd output, both axes
    dict(in_size=(8, 8), padding=(1, 1)),                        # even output
    dict(in_size=(5, 11)),                                       # no padding, 3 x 9
    dict(in_size=(6, 7), padding=(2, 0), padding_end=(0, 3)),    # asymmetric
    dict(in_size=(3, 3)),                                        # one output pixel
    dict(in_size=(1, 2), padding=(2, 1), padding_end=(1, 2)),    # mostly padding
    dict(in_size=(4, 13), padding=(0, 1), padding_end=(3, 0)),   # non-square, one-sided
]


def operands(spec, seed=0, offset=0.0):
    rng = np.random.default_rng(seed)
    x = (offset + rng.standard_normal(spec.input_shape)).astype(spec.dtype_in)
    w = rng.standard_normal(spec.weight_shape).astype(spec.dtype_weight)
    return x, w


def assert_winograd_matches_reference(spec, seed=0):
    x, w = operands(spec, seed)
    y, how = conv2d_blas(spec, x, w, "winograd")
    ref = reference_conv2d(spec, x, w)
    assert how["method"] == "winograd" and y.dtype == ref.dtype and y.shape == ref.shape
    fused = winograd.applies(spec) and jit.mode() == "on"      # (the fixture's one thread)
    assert how["transforms"] == ("numba" if fused else "numpy")
    tol = 1e-4 if spec.dtype_acc == "float32" else 1e-12
    np.testing.assert_allclose(y, ref, rtol=tol, atol=tol * spec.in_channels * 9)


@pytest.fixture(params=["nchw", "channels_last", "fused"])
def layout(request, monkeypatch):
    """Both tile layouts of the numpy transforms on every shape (the threshold normally picks
    by the image width), and the numba-fused transforms (parconv.winograd_fused), at one BLAS
    thread."""
    if request.param == "fused":
        if jit._load() is None:
            pytest.skip("numba is not installed")
        monkeypatch.setenv(jit.JIT_ENV, "on")
    else:
        monkeypatch.setenv(jit.JIT_ENV, "off")
    monkeypatch.setattr(winograd, "CHANNELS_LAST_BELOW", 0 if request.param == "nchw" else 10 ** 6)
    with limit_threads(1):      # one call on one BLAS thread: "on" takes the fused transforms
        yield request.param


@pytest.fixture
def tiny_blocks(monkeypatch):
    """Blocks of one or a few tile rows: the row-block path and block edges run many times."""
    monkeypatch.setattr(winograd, "BLOCK_BYTES", 1)
    monkeypatch.setattr(winograd_s2, "BLOCK_BYTES", 1)
    monkeypatch.setattr(winograd, "MIN_TILES", 5)
    if jit._load() is not None:
        from parconv import winograd_fused
        monkeypatch.setattr(winograd_fused, "BLOCK_BYTES", 1)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shape", SHAPES)
def test_winograd_equals_reference(layout, shape, dtype):
    spec = spec_for_dtype(dtype, batch=3, in_channels=4, out_channels=5, kernel_size=(3, 3),
                          **shape)
    assert_winograd_matches_reference(spec)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shape", SHAPES)
def test_winograd_on_row_blocks(tiny_blocks, layout, shape, dtype):
    spec = spec_for_dtype(dtype, batch=2, in_channels=3, out_channels=2, kernel_size=(3, 3),
                          **shape)
    assert_winograd_matches_reference(spec, seed=1)


def test_winograd_on_blocks_of_several_images(layout, monkeypatch):
    # 5 images of 4 x (4 + 1) tiles, 40 tiles a block: blocks of 2, 2 (and 1) images
    monkeypatch.setattr(winograd, "MIN_TILES", 40)
    monkeypatch.setattr(winograd, "BLOCK_BYTES", 1)
    if layout == "fused":     # 16 tiles an image: blocks of 3 and 2 images
        from parconv import winograd_fused
        monkeypatch.setattr(winograd_fused, "BLOCK_BYTES", 1)
    spec = spec_for_dtype("float64", batch=5, in_channels=3, out_channels=4, in_size=(8, 7),
                          kernel_size=(3, 3), padding=(1, 1))
    assert [b[1] - b[0] for b in winograd.tile_blocks(5, 4, 5, 40)] == [1, 2, 2]
    assert_winograd_matches_reference(spec)


def test_tile_blocks_cover_every_tile_once():
    for N, tH, tW, tiles in [(8, 28, 29, 406), (8, 28, 29, 10 ** 6), (3, 5, 2, 3), (1, 1, 1, 1),
                             (4, 7, 3, 20)]:
        blocks = winograd.tile_blocks(N, tH, tW, tiles)
        covered = sorted((n, i) for n0, n1, i0, i1 in blocks for n in range(n0, n1)
                         for i in range(i0, i1))
        assert covered == [(n, i) for n in range(N) for i in range(tH)]
        assert max((n1 - n0) * (i1 - i0) * tW for n0, n1, i0, i1 in blocks) <= max(tiles, tW)


@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(h=st.integers(1, 10), w=st.integers(1, 10), pads=st.tuples(*[st.integers(0, 3)] * 4),
       c=st.integers(1, 5), n=st.integers(1, 3), seed=st.integers(0, 1000))
def test_random_shapes_winograd(tiny_blocks, layout, h, w, pads, c, n, seed):
    try:
        spec = spec_for_dtype("float64", batch=n, in_channels=c, out_channels=3, in_size=(h, w),
                              kernel_size=(3, 3), padding=pads[:2], padding_end=pads[2:])
    except ParconvError:
        return  # kernel wider than the padded input: not a layer
    assert_winograd_matches_reference(spec, seed)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shape", SHAPES + [dict(in_size=(28, 28), padding=(1, 1)),
                                            dict(in_size=(16, 9), padding=(0, 1))])
def test_stride_2_equals_reference(shape, dtype):
    spec = spec_for_dtype(dtype, batch=3, in_channels=4, out_channels=5, kernel_size=(3, 3),
                          stride=(2, 2), **shape)
    assert winograd_s2.applies(spec)
    assert_winograd_matches_reference(spec)


@pytest.mark.parametrize("shape", SHAPES)
def test_stride_2_on_row_blocks(tiny_blocks, shape):
    spec = spec_for_dtype("float64", batch=2, in_channels=3, out_channels=2, kernel_size=(3, 3),
                          stride=(2, 2), **shape)
    assert_winograd_matches_reference(spec, seed=1)


def test_stride_2_on_blocks_of_several_images(monkeypatch):
    # 5 images of 3 x 2 tiles, 12 tiles a block: blocks of 2, 2 and 1 images (or 1, 2, 2)
    monkeypatch.setattr(winograd, "MIN_TILES", 12)
    monkeypatch.setattr(winograd_s2, "BLOCK_BYTES", 1)
    spec = spec_for_dtype("float64", batch=5, in_channels=3, out_channels=4, in_size=(11, 7),
                          kernel_size=(3, 3), stride=(2, 2), padding=(1, 0))
    assert sorted(b[1] - b[0] for b in winograd_s2.blocks(spec, 8)) == [1, 2, 2]
    assert_winograd_matches_reference(spec)


@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(h=st.integers(1, 12), w=st.integers(1, 12), pads=st.tuples(*[st.integers(0, 3)] * 4),
       c=st.integers(1, 5), n=st.integers(1, 3), seed=st.integers(0, 1000))
def test_random_shapes_stride_2(tiny_blocks, h, w, pads, c, n, seed):
    try:
        spec = spec_for_dtype("float64", batch=n, in_channels=c, out_channels=3, in_size=(h, w),
                              kernel_size=(3, 3), stride=(2, 2), padding=pads[:2],
                              padding_end=pads[2:])
    except ParconvError:
        return  # kernel wider than the padded input: not a layer
    assert_winograd_matches_reference(spec, seed)


def float32_errors(spec, offset: float) -> dict:
    """Largest error of "taps" and "winograd" against a float64 computation of the same
    float32 operands."""
    x, w = operands(spec, seed=4, offset=offset)
    exact = conv2d_blas(spec.replace(dtype_in="float64", dtype_weight="float64",
                                     dtype_acc="float64"), x.astype(np.float64),
                        w.astype(np.float64), "taps")[0]
    return {m: np.abs(conv2d_blas(spec, x, w, m)[0] - exact).max() for m in ("taps", "winograd")}


@pytest.mark.parametrize("offset", [0.0, 100.0])
def test_stride_2_float32_error_is_near_the_direct_methods(offset):
    # the polyphase form's transforms hold only 0 and +-1 (one short sum before and after the
    # products, as F(2x2, 3x3)): its error stays within a small factor of the direct method's
    spec = spec_for_dtype("float32", batch=2, in_channels=64, out_channels=16, in_size=(24, 24),
                          kernel_size=(3, 3), stride=(2, 2), padding=(1, 1))
    errors = float32_errors(spec, offset)
    assert 0 < errors["winograd"] <= 2.5 * errors["taps"], errors


@pytest.mark.parametrize("offset", [0.0, 100.0])
def test_float32_error_is_near_the_direct_methods(layout, offset):
    # against a float64 reference: F(2x2, 3x3) adds one short sum per transform (B, A: +-1;
    # G: +-1/2), so its error stays within a small factor of the direct method's; an offset
    # input (a constant background, the worst case measured) cancels in the input transform
    spec = spec_for_dtype("float32", batch=2, in_channels=64, out_channels=16, in_size=(12, 12),
                          kernel_size=(3, 3), padding=(1, 1))
    errors = float32_errors(spec, offset)
    assert 0 < errors["winograd"] <= 2.5 * errors["taps"], errors


def test_method_is_refused_where_it_does_not_apply():
    for kwargs in (dict(stride=(2, 1)), dict(stride=(3, 3)), dict(dilation=(1, 2)),
                   dict(stride=(2, 2), dilation=(2, 2)), dict(kernel_size=(3, 5))):
        spec = spec_for_dtype("float32", batch=1, in_channels=2, out_channels=2, in_size=(9, 9),
                              **{"kernel_size": (3, 3), **kwargs})
        assert not winograd.applies(spec) and not winograd_s2.applies(spec)
        with pytest.raises(ParconvError, match="winograd"):
            conv2d_blas(spec, *operands(spec), "winograd")
    spec = spec_for_dtype("int8", batch=1, in_channels=2, out_channels=2, in_size=(6, 6),
                          kernel_size=(3, 3), stride=(2, 2))
    assert not winograd_s2.applies(spec)         # integers: stride 1 only (winograd_exact)
    x = np.ones(spec.input_shape, np.int8)
    with pytest.raises(ParconvError, match="winograd"):
        NumpyKernel(method="winograd").run(spec, x, np.ones(spec.weight_shape, np.int8))


def test_chooser_takes_winograd_for_wide_float_layers_only(float_int8_path):
    assert choose_method(get_layer("resnet50.layer1.0.conv2", batch=8, dtype="float32")) == \
        "winograd"
    assert choose_method(get_layer("resnet50.layer4.1.conv2", batch=8, dtype="float64")) == \
        "winograd"
    # int8: the exact form where its data allow it (else taps: tests/test_kernels_exact_winograd)
    assert choose_method(get_layer("resnet50.layer1.0.conv2", batch=8)) == "winograd"
    assert choose_method(get_layer("resnet50.layer3.0.conv2", batch=8, dtype="float32")) == \
        "winograd"                                                              # stride 2
    assert choose_method(get_layer("resnet50.layer3.0.conv2", batch=8)) == "im2col"   # int8
    # 7x7 outputs of stride 2: 4x4 tiles waste a third of the products saved (measured slower)
    assert choose_method(get_layer("resnet50.layer4.0.conv2", batch=8, dtype="float32")) != \
        "winograd"
    # three channels: the transforms cost more than the products saved
    spec = spec_for_dtype("float32", batch=1, in_channels=3, out_channels=8, in_size=(32, 32),
                          kernel_size=(3, 3), padding=(1, 1))
    assert choose_method(spec) != "winograd"
    assert choose_method(spec.replace(stride=(2, 2))) != "winograd"


def test_kernel_reports_winograd():
    spec = spec_for_dtype("float32", batch=2, in_channels=8, out_channels=8, in_size=(10, 10),
                          kernel_size=(3, 3), padding=(1, 1))
    x, w = operands(spec)
    y, stats = NumpyKernel(method="winograd").run(spec, x, w)
    assert stats["method"] == "winograd" and stats["compute_dtype"] == "float32"
    np.testing.assert_allclose(y, reference_conv2d(spec, x, w), rtol=1e-4, atol=1e-3)
