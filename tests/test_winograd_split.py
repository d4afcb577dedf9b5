"""Stride-1 Winograd split by channels over threads (parconv.winograd_split): the one-call
results within float rounding, every output channel written, and an error in one thread
raised without leaving another waiting."""

import threading

import numpy as np
import pytest

from parconv import winograd, winograd_split
from parconv.blas import limit_threads
from parconv.kernels import reference_conv2d
from parconv.spec import spec_for_dtype

from test_kernels import random_operands


def _spec(dtype="float64", batch=3, channels=(128, 160), size=(7, 5), padding=(1, 1),
          padding_end=None):
    return spec_for_dtype(dtype, batch=batch, in_channels=channels[0], out_channels=channels[1],
                          in_size=size, kernel_size=(3, 3), padding=padding,
                          padding_end=padding_end if padding_end is not None else padding)


@pytest.mark.parametrize("count, parts", [(512, 2), (160, 3), (130, 2), (7, 3), (64, 4)])
def test_cuts_cover_the_range_in_order(count, parts):
    ranges = winograd_split.cuts(count, parts)
    assert len(ranges) == parts and ranges[0][0] == 0 and ranges[-1][1] == count
    assert all(a1 == b0 for (_, a1), (b0, _) in zip(ranges, ranges[1:]))
    lengths = [b - a for a, b in ranges]
    assert max(lengths) - min(lengths) <= (16 if count >= 16 * parts else 1)


@pytest.mark.parametrize("workers", [2, 3])
@pytest.mark.parametrize("kw", [{}, {"size": (6, 9), "padding": (0, 2), "padding_end": (2, 0)},
                                {"batch": 1, "size": (14, 14)}])
def test_the_split_gives_the_reference_result(workers, kw):
    spec = _spec(channels=(64 * workers, 64 * workers + 32), **kw)
    x, w = random_operands(spec)
    y = np.full(spec.output_shape, np.nan)
    with limit_threads(workers):
        assert winograd_split.conv_winograd(spec, x, w, np.float64, y, workers) == workers
    np.testing.assert_allclose(y, reference_conv2d(spec, x, w), rtol=1e-10, atol=1e-10)


def test_several_blocks_wait_before_overwriting_the_coefficients(monkeypatch):
    monkeypatch.setattr(winograd, "BLOCK_BYTES", 1 << 16)       # many blocks of 64 tiles
    spec = _spec("float32", batch=9, size=(14, 14))
    assert len(winograd.block_buffers(spec, np.dtype("float32"), (8 * 128, 16 * 128,
                                                                  16 * 160, 8 * 160),
                                      winograd.BLOCK_BYTES)[0]) > 2
    x, w = random_operands(spec)
    y = np.empty(spec.output_shape, np.float32)
    with limit_threads(2):
        winograd_split.conv_winograd(spec, x, w, np.float32, y, 2)
    wide = _spec("float64", batch=9, size=(14, 14))
    ref = reference_conv2d(wide, x.astype(np.float64), w.astype(np.float64))
    assert np.abs(y - ref).max() <= 2e-5 * np.abs(ref).max()


def test_applies_to_small_channels_last_maps_with_enough_channels():
    assert winograd_split.applies(_spec(channels=(512, 512)), 2)
    assert not winograd_split.applies(_spec(channels=(512, 512)), 1)
    assert not winograd_split.applies(_spec(channels=(64, 512)), 2)          # C / 2 < 64
    assert not winograd_split.applies(_spec(channels=(512, 512), size=(56, 56)), 2)  # NCHW
    assert not winograd_split.applies(_spec("int8", channels=(512, 512)), 2)


def test_an_error_in_one_thread_is_raised_and_no_thread_waits(monkeypatch):
    spec = _spec()
    x, w = random_operands(spec)
    real = winograd.output_channels_last

    def failing(spec, u, block, buffers, y, k0, k1):
        if k0 > 0:
            raise MemoryError("thread 1 failed")
        return real(spec, u, block, buffers, y, k0, k1)

    monkeypatch.setattr(winograd, "output_channels_last", failing)
    with limit_threads(2), pytest.raises(MemoryError, match="thread 1 failed"):
        winograd_split.conv_winograd(spec, x, w, np.float64, np.empty(spec.output_shape), 2)

    def failing_early(parts, block, buffers, c0, c1):
        raise ValueError("before the barrier")

    monkeypatch.setattr(winograd, "input_channels_last", failing_early)
    with limit_threads(2), pytest.raises(ValueError, match="before the barrier"):
        winograd_split.conv_winograd(spec, x, w, np.float64, np.empty(spec.output_shape), 2)
    assert threading.active_count() < 20


def test_the_kernel_splits_small_maps_by_channels_at_two_threads():
    from parconv.blasconv import conv2d_blas, split_workers
    spec = _spec("float32", batch=2, channels=(128, 128), size=(7, 7))
    x, w = random_operands(spec)
    with limit_threads(2):
        assert split_workers(spec, "winograd", 2) == 2
        y, how = conv2d_blas(spec, x, w, "winograd")
        one, _ = conv2d_blas(spec, x, w, "winograd", workers=1)
    assert (how["split"], how["workers"], how["transforms"]) == ("channels", 2, "numpy")
    assert np.abs(y - one).max() <= 1e-5 * np.abs(one).max()
    with limit_threads(1):
        assert conv2d_blas(spec, x, w, "winograd")[1]["split"] is None
