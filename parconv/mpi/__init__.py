"""The only home of communicators (docs/design.md): everything here runs on MPI ranks.

* `agree`: agreement on success (`agree`, `collectively`) and patient broadcasts;
* `comm`: `CountedComm`, the byte-counted wrapper of every MPI call, and `ByteCounters`;
* `procgrid`: `ProcGrid`, the communicators of one processor grid;
* `exchange`: `LayerExchange`, the exchanges of the grid algorithm (filter, bias, input, halos,
  reduce-scatter) planned once per rank, with their buffers;
* `pipeline`: one run of a layer on a `LayerExchange`, overlapping exchanges and the kernel;
* `distribute`: owned blocks, and data distribution from and to one root;
* `hdf5`: parallel reading and writing of layer files.

Importing this package imports no mpi4py; its modules do where they need it.
"""
