"""The CPU kernel's threaded split (parconv.blas_split): pieces of the block on threads of
single-threaded BLAS give the one-call results (int8 bit for bit), and the thread count the
caller set is honoured and reported."""

import threading

import numpy as np
import pytest

from parconv.blas import current_threads, limit_threads
from parconv.blas_split import piece_spec, pieces
from parconv.blasconv import conv2d_blas, split_workers, winograd_form
from parconv.errors import ParconvError
from parconv.kernels import NumpyKernel, reference_conv2d
from parconv.spec import spec_for_dtype

from test_kernels import AWKWARD, random_operands


@pytest.mark.parametrize("batch, height, count, align", [
    (8, 56, 2, 1), (3, 7, 2, 1), (1, 5, 4, 1), (1, 2, 5, 1), (2, 1, 7, 1), (5, 9, 3, 2),
    (1, 7, 3, 2), (4, 3, 4, 2), (7, 1, 2, 1)])
def test_pieces_cover_every_output_row_once_in_balanced_parts(batch, height, count, align):
    parts = pieces(batch, height, count, align)
    rows = [(n, h) for part in parts for n0, n1, h0, h1 in part
            for n in range(n0, n1) for h in range(h0, h1)]
    assert rows == [(n, h) for n in range(batch) for h in range(height)]   # in order, once
    assert 1 <= len(parts) <= min(count, batch * height)
    for part in parts:
        assert part, "no empty part"
        for n0, n1, h0, h1 in part:
            assert n1 > n0 and h1 > h0 and ((h0, h1) == (0, height) or n1 == n0 + 1)
            assert (h0 % align == 0 or h0 == height) and (h1 % align == 0 or h1 == height)
    sizes = [sum((n1 - n0) * (h1 - h0) for n0, n1, h0, h1 in part) for part in parts]
    if align == 1:
        assert max(sizes) - min(sizes) <= 1 or len(parts) < count


def test_piece_spec_is_the_block_of_its_rows():
    # rows 3:5 of a padded, strided, dilated block read input rows it alone needs
    spec = spec_for_dtype("float64", batch=2, in_channels=2, out_channels=3, in_size=(11, 6),
                          kernel_size=(3, 3), stride=(2, 1), dilation=(2, 1), padding=(3, 1),
                          padding_end=(0, 2))
    x, w = random_operands(spec)
    y = reference_conv2d(spec, x, w)
    for h0, h1 in [(0, 1), (0, 2), (3, 5), (4, spec.out_size[0]), (0, spec.out_size[0])]:
        sub, rows = piece_spec(spec, 1, 2, h0, h1)
        assert sub.out_size == (h1 - h0, spec.out_size[1]) and sub.batch == 1
        part = reference_conv2d(sub, x[1:2, :, rows[0]:rows[1]], w)
        np.testing.assert_allclose(part, y[1:2, :, h0:h1], rtol=1e-12, atol=1e-12)
    # output rows that read padding only: no input rows at all
    tall = spec.replace(padding=(6, 1), padding_end=(6, 2))
    assert piece_spec(tall, 0, 1, 0, 1)[1] is None


def _methods(spec):
    out = ["taps", "im2col"]
    if spec.kernel_size == (1, 1) and not any(spec.padding) and not any(spec.padding_end):
        out.append("gemm")
    if winograd_form(spec) is not None:
        out.append("winograd")
    return out


SHAPES = AWKWARD + [dict(in_size=(9, 7), kernel_size=(1, 1)),
                    dict(in_size=(10, 9), kernel_size=(3, 3), stride=(2, 2), padding=(1, 1)),
                    dict(in_size=(2, 40), kernel_size=(1, 1), padding=(3, 0))]  # rows of padding


@pytest.mark.parametrize("dtype", ["int8", "float32", "float64"])
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("shape", SHAPES)
def test_split_equals_one_call(shape, batch, dtype):
    # odd batches, odd row counts, more workers than rows (workers 7 on 1 image of 1-5 rows)
    spec = spec_for_dtype(dtype, batch=batch, in_channels=3, out_channels=5, **shape)
    x, w = random_operands(spec, seed=batch)
    ref = reference_conv2d(spec, x, w)
    for method in _methods(spec):
        one, how = conv2d_blas(spec, x, w, method, workers=1)
        assert how["workers"] == 1
        for workers in (2, 3, 7):
            y, how = conv2d_blas(spec, x, w, method, workers=workers)
            assert how["method"] == method and 1 <= how["workers"] <= workers
            assert y.dtype == one.dtype and y.shape == one.shape
            if dtype == "int8":
                np.testing.assert_array_equal(y, one, err_msg=f"{method} {workers}")
            else:
                tol = 1e-5 if dtype == "float32" else 1e-13
                np.testing.assert_allclose(y, one, rtol=tol, atol=tol * 10,
                                           err_msg=f"{method} {workers}")
                np.testing.assert_allclose(y, ref, rtol=10 * tol, atol=tol * 30)


def test_split_int8_is_bit_identical_on_a_real_layer_with_groups(float_int8_path):
    # int8 extremes over more than 1024 products: exact groups summed in int32 in every piece
    spec = spec_for_dtype("int8", batch=3, in_channels=130, out_channels=4, in_size=(9, 7),
                          kernel_size=(3, 3), padding=(1, 1))
    rng = np.random.default_rng(4)
    x = rng.choice(np.array([-128, 127, -1], dtype=np.int8), spec.input_shape)
    w = rng.choice(np.array([-128, 127], dtype=np.int8), spec.weight_shape)
    ref = reference_conv2d(spec, x, w)
    for method in ("taps", "im2col"):
        one, how = conv2d_blas(spec, x, w, method, workers=1)
        assert how["exact_group"] == 1024
        np.testing.assert_array_equal(one, ref)
        for workers in (2, 4, 5):
            np.testing.assert_array_equal(conv2d_blas(spec, x, w, method, workers)[0], one)


def test_pieces_run_on_single_threaded_blas_and_the_caller_s_count_is_reported(monkeypatch):
    import parconv.blasconv as blasconv
    seen = []
    original = blasconv.conv_taps

    def recording(*args):
        seen.append((threading.current_thread().name, current_threads()))
        original(*args)

    monkeypatch.setattr(blasconv, "conv_taps", recording)
    monkeypatch.setattr(blasconv, "SPLIT", {("taps", "int")})
    monkeypatch.setattr(blasconv, "MIN_PIECE_MACS", 1)
    monkeypatch.setattr(blasconv, "MIN_PIECE_PIXELS", 1)
    spec = spec_for_dtype("int8", batch=3, in_channels=4, out_channels=5, in_size=(6, 6),
                          kernel_size=(3, 3), padding=(1, 1))
    x, w = random_operands(spec)
    y, stats = NumpyKernel(threads=2, method="taps").run(spec, x, w)
    assert stats["blas_threads"] == 2 and stats["workers"] == 2
    assert len(seen) >= 2 and all(threads == 1 for _, threads in seen)
    assert len({name for name, _ in seen}) == 2        # two threads ran the pieces
    np.testing.assert_array_equal(y, reference_conv2d(spec, x, w))
    seen.clear()
    _, stats = NumpyKernel(threads=1, method="taps").run(spec, x, w)
    assert stats["blas_threads"] == 1 and stats["workers"] == 1 and seen[0][1] == 1


def test_split_workers_follow_the_threads_the_method_and_the_size(float_int8_path):
    big = spec_for_dtype("int8", batch=8, in_channels=64, out_channels=64, in_size=(56, 56),
                         kernel_size=(3, 3), padding=(1, 1))
    tiny = big.replace(batch=1, in_size=(4, 4))
    assert split_workers(big, "taps", 1) == 1
    assert split_workers(big, "taps", 2) == 2
    assert split_workers(tiny, "taps", 2) == 1          # too small to be worth a thread
    small_map = big.replace(in_channels=512, out_channels=512, in_size=(7, 7))
    assert small_map.G >= 2 * (1 << 24) and split_workers(small_map, "taps", 2) == 1
    assert split_workers(big, "im2col", 2) == 2         # row bands: a short product per row
    # dilated rows: im2col's blocks, whose long products scale on BLAS
    assert split_workers(big.replace(dilation=(2, 1)), "im2col", 2) == 1
    assert split_workers(big.replace(dtype_in="float32", dtype_acc="float32"), "winograd",
                         2) == 2


def test_an_error_in_a_piece_is_raised_and_the_threads_restored(monkeypatch):
    import parconv.blasconv as blasconv

    def failing(spec, *args):
        if threading.current_thread() is not threading.main_thread():
            raise ParconvError("piece failed")

    monkeypatch.setattr(blasconv, "conv_taps", failing)
    spec = spec_for_dtype("int8", batch=4, in_channels=2, out_channels=2, in_size=(5, 5),
                          kernel_size=(3, 3))
    x, w = random_operands(spec)
    with limit_threads(2):
        with pytest.raises(ParconvError, match="piece failed"):
            conv2d_blas(spec, x, w, "taps", workers=2)
        assert current_threads() == 2


@pytest.mark.parametrize("stride", [1, 2])
def test_stride_2_winograd_pieces_share_one_filter_transform(monkeypatch, stride):
    import parconv.winograd as winograd
    import parconv.winograd_s2 as winograd_s2
    form = winograd if stride == 1 else winograd_s2
    calls = []
    original = form.filter_transform

    def counting(w, dtype):
        calls.append(w.shape)
        return original(w, dtype)

    monkeypatch.setattr(form, "filter_transform", counting)
    monkeypatch.setenv("PARCONV_JIT", "off")      # the numpy transforms, whose calls are counted
    spec = spec_for_dtype("float64", batch=4, in_channels=6, out_channels=5, in_size=(12, 10),
                          kernel_size=(3, 3), stride=(stride, stride), padding=(1, 1))
    x, w = random_operands(spec)
    y, how = conv2d_blas(spec, x, w, "winograd", workers=2)
    # stride 2: made once, not once per piece; stride 1: once per piece
    assert how["workers"] == 2 and len(calls) == (1 if stride == 2 else 2)
    np.testing.assert_allclose(y, reference_conv2d(spec, x, w), rtol=1e-10, atol=1e-10)
