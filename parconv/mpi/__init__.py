"""The only home of communicators (docs/design.md): everything here runs on MPI ranks.

* `agree`: agreement on success (`agree`, `collectively`);
* `comm`: `CountedComm`, the byte-counted wrapper of every MPI call, and `ByteCounters`;
* `procgrid`: `ProcGrid`, the communicators of one processor grid;
* `exchange`: the exchanges of the grid algorithm (filter, bias, input, halos, reduce-scatter);
* `distribute`: owned blocks, and data distribution from and to one root;
* `hdf5`: parallel reading and writing of layer files.

Importing this package imports no mpi4py; its modules do where they need it.
"""
