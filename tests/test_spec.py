"""ConvSpec and the catalogue: shapes against torch's formula worked by hand, G_eff and the touched
rows against brute force, rho, validation messages, and the catalogue counts."""

import itertools
import json

import pytest
from hypothesis import given, settings, strategies as st

from parconv.errors import ParconvError
from parconv.layers import get_layer, layer_names
from parconv.spec import ConvSpec, spec_for_dtype


@pytest.mark.parametrize("in_size, kernel, stride, padding, dilation, expected", [
    # floor((H_in + 2 p - d (k - 1) - 1) / s) + 1, worked by hand
    (224, 7, 2, 3, 1, 112),   # (224 + 6 - 6 - 1) / 2 = 111.5 -> 111, + 1
    (7, 3, 2, 1, 1, 4),       # (7 + 2 - 2 - 1) / 2 = 3, + 1
    (5, 3, 1, 0, 2, 1),       # (5 - 4 - 1) / 1 = 0, + 1
    (10, 3, 3, 2, 2, 4),      # (10 + 4 - 4 - 1) / 3 = 3, + 1
    (56, 1, 2, 0, 1, 28),     # (56 - 1) / 2 = 27.5 -> 27, + 1
    (13, 3, 1, 1, 1, 13),
    (227, 11, 4, 0, 1, 55),   # the original AlexNet: (227 - 10 - 1) / 4 = 54, + 1
])
def test_out_size_matches_torch_formula(in_size, kernel, stride, padding, dilation, expected):
    spec = ConvSpec(batch=1, in_channels=1, out_channels=1, in_size=(in_size, 9),
                    kernel_size=(kernel, 1), stride=(stride, 1), padding=(padding, 0),
                    dilation=(dilation, 1))
    assert spec.out_size == (expected, 9)


def test_asymmetric_padding_end_changes_out_size():
    spec = ConvSpec(batch=1, in_channels=1, out_channels=1, in_size=6, kernel_size=3,
                    padding=(1, 0), padding_end=(0, 2))
    assert spec.out_size == (5, 6)  # rows 6 + 1 + 0 - 2, cols 6 + 0 + 2 - 2


@st.composite
def small_specs(draw):
    kernel = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    padding = (draw(st.integers(0, 2)), draw(st.integers(0, 2)))
    size = tuple(draw(st.integers(max(1, d * (k - 1) + 1 - 2 * p), 6))
                 for k, d, p in zip(kernel, dilation, padding))
    return ConvSpec(batch=draw(st.integers(1, 2)), in_channels=draw(st.integers(1, 3)),
                    out_channels=draw(st.integers(1, 3)), in_size=size, kernel_size=kernel,
                    stride=(draw(st.integers(1, 3)), draw(st.integers(1, 3))), padding=padding,
                    dilation=dilation)


@settings(max_examples=50, deadline=None)
@given(spec=small_specs())
def test_G_eff_and_touched_input_by_brute_force(spec):
    (H, W), (R, S) = spec.out_size, spec.kernel_size
    (sh, sw), (dh, dw), (ph, pw) = spec.stride, spec.dilation, spec.padding
    H_in, W_in = spec.in_size
    effective, pixels = 0, set()
    for h, w, r, s in itertools.product(range(H), range(W), range(R), range(S)):
        x, y = sh * h + dh * r - ph, sw * w + dw * s - pw
        if 0 <= x < H_in and 0 <= y < W_in:
            effective += 1
            pixels.add((x, y))
    # per axis, a row is touched when some (h, r) reads it, whatever the columns do
    rows = {x for h, r in itertools.product(range(H), range(R))
            if 0 <= (x := sh * h + dh * r - ph) < H_in}
    cols = {y for w, s in itertools.product(range(W), range(S))
            if 0 <= (y := sw * w + dw * s - pw) < W_in}
    NKC = spec.batch * spec.out_channels * spec.in_channels
    assert spec.G_eff == NKC * effective
    assert spec.G == NKC * H * W * R * S
    assert spec.size_input_touched == spec.batch * spec.in_channels * len(pixels)
    assert set(spec.touched_rows.nonzero()[0]) == rows
    assert set(spec.touched_cols.nonzero()[0]) == cols


def test_touched_rows_of_a_strided_1x1():
    spec = ConvSpec(batch=2, in_channels=3, out_channels=4, in_size=(7, 6), kernel_size=1,
                    stride=2)
    assert spec.out_size == (4, 3)
    assert spec.touched_rows.tolist() == [True, False, True, False, True, False, True]
    assert spec.touched_cols.tolist() == [True, False, True, False, True, False]
    assert spec.size_input_touched == 2 * 3 * 4 * 3 < spec.size_input
    assert spec.G_eff == spec.G


@pytest.mark.parametrize("kernel, stride, dilation, rho", [
    (3, 1, 1, 9), (3, 2, 1, 4), (7, 2, 1, 16), (11, 4, 1, 9), (1, 2, 1, 1),
    (3, 2, 2, 9),   # stride 2 and dilation 2: every tap lands on the same parity
    (3, 3, 2, 1),   # taps at offsets 0, 2, 4 are distinct mod 3
])
def test_rho(kernel, stride, dilation, rho):
    spec = ConvSpec(batch=1, in_channels=1, out_channels=1, in_size=32, kernel_size=kernel,
                    stride=stride, dilation=dilation)
    assert spec.rho == rho


@pytest.mark.parametrize("fields, name", [
    (dict(batch=0), "batch"), (dict(in_channels=-1), "in_channels"),
    (dict(out_channels=True), "out_channels"), (dict(in_size=0), "in_size"),
    (dict(stride=(1, 0)), "stride"), (dict(padding=-1), "padding"),
    (dict(dilation=0), "dilation"), (dict(padding=(1, 2, 3)), "padding"),
    (dict(kernel_size=9), "kernel_size"), (dict(dtype_in="int4"), "dtype_in"),
    (dict(dtype_out="bfloat16"), "dtype_out"), (dict(kernel_size=2.5), "kernel_size"),
])
def test_validation_names_the_field(fields, name):
    base = dict(batch=1, in_channels=2, out_channels=2, in_size=5, kernel_size=3)
    with pytest.raises(ParconvError, match=name):
        ConvSpec(**{**base, **fields})


def test_spec_for_dtype_and_precisions():
    spec = spec_for_dtype("int8", batch=1, in_channels=1, out_channels=1, in_size=4,
                          kernel_size=1)
    assert (spec.p_in, spec.p_weight, spec.p_acc, spec.p_out, spec.p_bias) == (1, 1, 4, 4, 4)
    spec = spec_for_dtype("float64", batch=1, in_channels=1, out_channels=1, in_size=4,
                          kernel_size=1)
    assert (spec.p_in, spec.p_acc, spec.p_out) == (8, 8, 8)
    spec = spec_for_dtype("float16", batch=1, in_channels=1, out_channels=1, in_size=4,
                          kernel_size=1)  # every input type the engine runs (INPUT_DTYPES)
    assert (spec.p_in, spec.p_acc, spec.p_out) == (2, 4, 4)
    with pytest.raises(ParconvError, match="--dtype"):
        spec_for_dtype("int64", batch=1, in_channels=1, out_channels=1, in_size=4, kernel_size=1)


def test_catalogue():
    assert len(layer_names("resnet50")) == 53
    assert len(layer_names("vgg16")) == 13
    assert len(layer_names("alexnet")) == 5
    assert sum(get_layer(name).G for name in layer_names("resnet50")) == 4_087_136_256
    conv1 = get_layer("resnet50.conv1", batch=8)
    assert (conv1.batch, conv1.out_size, conv1.rho) == (8, (112, 112), 16)
    assert get_layer("resnet50.layer2.0.downsample.0").out_size == (28, 28)
    with pytest.raises(ParconvError, match="unknown layer"):
        get_layer("resnet50.conv99")


def test_to_dict_is_json_ready_and_complete():
    spec = get_layer("alexnet.conv2", batch=2)
    data = json.loads(json.dumps(spec.to_dict()))
    assert data["out_size"] == [27, 27] and data["G"] == spec.G and data["rho"] == 25
    assert ConvSpec(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in data.items()
                       if k in ConvSpec.__dataclass_fields__}) == spec
