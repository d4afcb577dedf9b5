"""parconv: convolution layers on distributed memory with MPI, moving as few bytes as the lower
bound allows, with every byte counted, predicted and held against the bound.

The pure names (no MPI is loaded by ``import parconv``)::

    ConvSpec, get_layer, layer_names           the layer (parconv.spec, parconv.layers)
    make_plan, Plan                            the grid and every rank's bytes (parconv.plan)
    parallel_bounds, sequential_bound          lower bounds (parconv.bounds)

and, imported with mpi4py on first use, ``distributed_conv2d`` and ``OwnedBlocks``
(parconv.conv, parconv.mpi.distribute).  Layers of the package: docs/design.md.
"""

from .bounds import parallel_bounds, sequential_bound
from .errors import ParconvError, ParconvRuntimeError
from .layers import get_layer, layer_names
from .plan import Plan, make_plan
from .spec import ConvSpec

__version__ = "0.1.0"

__all__ = ["ConvSpec", "get_layer", "layer_names", "make_plan", "Plan", "parallel_bounds",
           "sequential_bound", "ParconvError", "ParconvRuntimeError", "distributed_conv2d",
           "OwnedBlocks", "__version__"]

_NEEDS_MPI = {"distributed_conv2d": "conv", "OwnedBlocks": "mpi.distribute"}


def __getattr__(name):
    # the MPI entry points load mpi4py, which `import parconv` must not (pure planning users)
    if name in _NEEDS_MPI:
        import importlib
        return getattr(importlib.import_module(f".{_NEEDS_MPI[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
