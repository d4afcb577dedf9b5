"""The node kernels by name: what ``--node`` and ``distributed_conv2d(node=...)`` choose from.  Pure.

Every kernel has ``run(spec, x, w) -> (y, stats)``: the local convolution of one rank's block and
a dict of its figures (see parconv.kernels and parconv.gemmini.kernel).
"""

from __future__ import annotations

from .errors import ParconvError
from .gemmini.kernel import GemminiKernel
from .kernels import NumpyKernel

KERNELS = {"numpy": NumpyKernel, "gemmini": GemminiKernel}
KERNEL_NAMES = tuple(KERNELS)


def get_kernel(name: str):
    """A new node kernel called ``name``: 'numpy' (`NumpyKernel`) or 'gemmini' (the accelerator
    model, `GemminiKernel`).  Local.

    Raises
    ------
    ParconvError
        For an unknown name (the message lists the known ones).
    """
    try:
        return KERNELS[name]()
    except KeyError:
        raise ParconvError(f"node kernel must be one of {', '.join(KERNEL_NAMES)}, "
                           f"got {name!r}") from None
