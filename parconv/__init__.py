"""parconv: convolution layers on distributed memory with MPI, moving as few bytes as the lower
bound allows, with every byte counted, predicted and held against the bound.

Pure modules (no MPI): spec, layers, blocks, axis, grid, predict, plan, bounds, tiling, kernels,
gemmini.  MPI modules: comm, exchange, io, conv, run.
"""

__version__ = "0.1.0"
