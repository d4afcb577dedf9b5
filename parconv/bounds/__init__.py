"""Communication lower bounds of a convolution layer (docs/theory.md sections 2-4).  Pure, no MPI.

* `workfn`: the work function F(X) and the busy processor's traffic program, as geometric programs
  with dual certificates;
* `sequential`: F(X), its closed forms, the sequential (one- and two-memory) and im2col bounds;
* `parallel`: B_MI and B_MD for P processors;
* `polyphase`: the polyphase bound of strided and dilated layers (weighted work over the phases,
  Hoelder rows; docs/theory.md 3.9), used by `sequential` and `parallel` wherever it
  is larger;
* `alternatives`: the grid algorithm with real factors, for explaining gaps (analysis only).
"""

from .parallel import ParallelBound, busy_processor_footprint, parallel_bounds
from .sequential import (SequentialBound, closed_form_work, im2col_bound, sequential_bound,
                         sequential_bound_two_memory, work_function)

__all__ = ["work_function", "closed_form_work", "sequential_bound", "sequential_bound_two_memory",
           "parallel_bounds", "im2col_bound", "busy_processor_footprint", "SequentialBound",
           "ParallelBound"]
