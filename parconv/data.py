"""Layer data without a file: counter-based random values keyed by the global index.  Pure, no MPI.

Every element of the input, weight and bias arrays has a value that depends only on ``--seed``,
the array and the element's global C-order flat index: ``value = f(hash(key(seed, array),
index))`` with the SplitMix64 finaliser as the hash (a counter-based generator in the sense of
Salmon et al.'s Philox: any element can be made without making the others).  So each rank makes
exactly its own pieces, in any order and any grid, and the data (hence the output) is the same
for every number of ranks and every grid.  numpy's own ``Philox`` bit generator cannot be
evaluated at scattered counters without one generator per contiguous run, which at batch 32 means
10^5 generators per rank; the vectorised hash evaluates every index in one numpy expression.

Values: uniform integers in [-128, 128) for integer inputs and weights, with the bias of integer
layers uniform in [-2^15, 2^15) (int32); standard normal (Box-Muller) for floats.

Data sources
------------
A *source* is any object with ``read(name, boxes) -> flat ndarray`` for ``name`` in ``"input"``,
``"weight"``, ``"bias"`` and ``boxes`` a list of global half-open boxes, flattened in box order
(see parconv.plan.blocks.flat_range_boxes).  `SeededLayer` makes the values, `ArrayLayer` cuts
them from arrays the caller holds; parconv.mpi.hdf5.FileLayer reads them from a layer file.  The
engine reads each rank's owned pieces, and the input region and filters a rank's ``--check``
needs, through one source.
"""

from __future__ import annotations

import numpy as np

from .errors import ParconvError
from .plan.blocks import read_boxes

ARRAYS = ("input", "weight", "bias")
_STREAMS = {"input": 1, "weight": 2, "bias": 3}
#: elements made per numpy expression (bounds the uint64 temporaries to a few MiB)
CHUNK = 1 << 14
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
_TWO_PI_2_53 = 2 * np.pi / 2.0 ** 53


def _mix(z: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser on a uint64 array (wrapping arithmetic), in place."""
    z ^= z >> np.uint64(30)
    z *= _M1
    z ^= z >> np.uint64(27)
    z *= _M2
    z ^= z >> np.uint64(31)
    return z


def _key(seed: int, stream: int) -> np.uint64:
    return _mix(np.array([(seed << 3) | stream], dtype=np.uint64) * _GOLDEN)[0]


def _bits(key: np.uint64, index: np.ndarray) -> np.ndarray:
    """64 random bits per global index: ``mix(key + (index + 1) * golden)``."""
    z = (index.astype(np.uint64) + np.uint64(1)) * _GOLDEN
    z += key
    return _mix(z)


def check_seed(seed) -> int:
    """``seed`` as an int, or ParconvError."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ParconvError(f"--seed must be an integer >= 0, got {seed!r}")
    return int(seed)


def array_shape(spec, name: str) -> tuple:
    return {"input": spec.input_shape, "weight": spec.weight_shape,
            "bias": (spec.out_channels,)}[name]


def array_dtype(spec, name: str) -> np.dtype:
    return np.dtype({"input": spec.dtype_in, "weight": spec.dtype_weight,
                     "bias": spec.dtype_acc}[name])


def _values(spec, name: str, seed: int, index: np.ndarray) -> np.ndarray:
    """The values at global flat ``index`` of array ``name`` (its dtype)."""
    dtype = array_dtype(spec, name)
    stream = _STREAMS[name]
    bits = _bits(_key(seed, stream), index)
    if np.issubdtype(np.dtype(spec.dtype_in), np.integer):
        if name == "bias":
            return ((bits >> np.uint64(48)).astype(np.int64) - (1 << 15)).astype(dtype)
        return (bits >> np.uint64(56)).astype(np.uint8).view(np.int8).astype(dtype, copy=False)
    other = _bits(_key(seed, stream + 4), index)
    u1 = ((bits >> np.uint64(11)).astype(np.float64) + 1.0) / 2.0 ** 53   # (0, 1]
    angle = (other >> np.uint64(11)).astype(np.float64) * _TWO_PI_2_53
    return (np.sqrt(-2.0 * np.log(u1)) * np.cos(angle)).astype(dtype)


def _sub_boxes(box, limit: int):
    """``box`` cut along its leading axes into boxes of at most ``limit`` elements (or single
    innermost rows), in C order."""
    extents = [hi - lo for lo, hi in box]
    if int(np.prod(extents)) <= limit or len(box) == 1:
        yield box
        return
    inner = int(np.prod(extents[1:]))
    (lo, hi), rest = box[0], tuple(box[1:])
    if inner <= limit:
        step = max(1, limit // max(inner, 1))
        for start in range(lo, hi, step):
            yield ((start, min(hi, start + step)),) + rest
        return
    for i in range(lo, hi):
        for sub in _sub_boxes(rest, limit):
            yield ((i, i + 1),) + sub


def _box_indices(shape, box) -> np.ndarray:
    """Global C-order flat indices of the elements of ``box``, in box-local C order."""
    strides = np.cumprod((1,) + tuple(shape[:0:-1]))[::-1]
    index = np.zeros(1, dtype=np.int64)
    for (lo, hi), stride in zip(box, strides):
        index = np.add.outer(index, np.arange(lo, hi, dtype=np.int64) * int(stride)).ravel()
    return index


def generated_values(spec, name: str, boxes, seed: int) -> np.ndarray:
    """The seeded values of array ``name`` in ``boxes`` (global half-open), flat in box order.

    Local, pure: the value of each element depends only on (seed, name, global index), so any
    partition of an array into boxes gives the same values.  Example: for a (2, 3) array, boxes
    [((0, 1), (0, 3))] and [((1, 2), (0, 3))] together give the same six values as
    [((0, 2), (0, 3))].
    """
    seed = check_seed(seed)
    if name not in _STREAMS:
        raise ParconvError(f"array must be one of {', '.join(ARRAYS)}, got {name!r}")
    shape = array_shape(spec, name)
    sizes = [int(np.prod([hi - lo for lo, hi in box])) for box in boxes]
    out = np.empty(sum(sizes), dtype=array_dtype(spec, name))
    offset = 0
    for box, size in zip(boxes, sizes):
        for sub in _sub_boxes(tuple(box), CHUNK):
            index = _box_indices(shape, sub)
            out[offset:offset + index.size] = _values(spec, name, seed, index)
            offset += index.size
    return out


def whole_box(shape) -> tuple:
    return tuple((0, int(n)) for n in shape)


def random_layer_data(spec, seed: int = 0) -> tuple:
    """The whole seeded (x, w, bias) of ``spec`` (bias None unless ``spec.bias``): the same
    values every rank's `SeededLayer` makes for its own pieces.  Local."""
    seed = check_seed(seed)
    arrays = [generated_values(spec, name, [whole_box(array_shape(spec, name))], seed)
              .reshape(array_shape(spec, name)) for name in ARRAYS]
    return arrays[0], arrays[1], (arrays[2] if spec.bias else None)


class SeededLayer:
    """The source of seeded layer data: ``read(name, boxes)`` makes the values.  Local."""

    def __init__(self, spec, seed: int = 0) -> None:
        self.spec, self.seed = spec, check_seed(seed)

    def read(self, name: str, boxes) -> np.ndarray:
        return generated_values(self.spec, name, boxes, self.seed)

    def describe(self) -> str:
        return f"seeded data (seed {self.seed})"


class ArrayLayer:
    """A source over global arrays the caller holds (x, w and bias, bias None without one)."""

    def __init__(self, spec, x, w, bias=None) -> None:
        self.spec = spec
        self.arrays = {"input": x, "weight": w, "bias": bias}
        for name in ARRAYS:
            value = self.arrays[name]
            if value is None:
                if name != "bias" or spec.bias:
                    raise ParconvError(f"ArrayLayer needs the {name} array")
                continue
            if tuple(np.shape(value)) != tuple(array_shape(spec, name)):
                raise ParconvError(f"ArrayLayer {name} must have shape "
                                   f"{tuple(array_shape(spec, name))}, got {np.shape(value)}")

    def read(self, name: str, boxes) -> np.ndarray:
        return read_boxes(self.arrays[name], boxes, array_dtype(self.spec, name))

    def describe(self) -> str:
        return "arrays in memory"


def owned_pieces(source, spec, local) -> list[np.ndarray]:
    """``[input, filter, bias]`` flat pieces a rank owns at the start (schedule ``local``), read
    from ``source``; the bias piece is empty where the rank owns none.  Local."""
    bias_range = local.bias_piece_range()
    return [source.read("input", local.input_piece_boxes()),
            source.read("weight", local.filter_piece_boxes()),
            source.read("bias", [(bias_range,)]) if bias_range is not None
            else np.zeros(0, dtype=array_dtype(spec, "bias"))]
