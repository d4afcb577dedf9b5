"""Gemmini's own library, modelled (docs/gemmini.md): the tile heuristics of ``tiled_conv_auto``
and ``tiled_matmul_auto`` (`heuristics`), the cost of the library's tile loop (`calls`) and its
execution on data (`run`).  Pure, no MPI."""
