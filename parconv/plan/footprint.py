"""What one rank allocates during a run, as named terms: the footprint ``--memory`` is held against.

Pure, vectorised over the ranks of a grid (the 5-D broadcast of parconv.plan.predict).  Every
term is the bytes of arrays the engine (parconv.conv, parconv.mpi.exchange) and the node kernel
(parconv.kernels, parconv.gemmini.executor) really hold; they are alive at different times, so
the footprint is the largest, over the stages of a run, of the sum of the terms alive in that
stage (``STAGES``)::

    footprint = max over stages s of  sum(terms[t] for t in STAGES[s])

Terms (bytes per rank; E_x is an element count of this rank's blocks):

==================  ====================================================================  ====
term                what (alive from .. to)                                               node
==================  ====================================================================  ====
runtime             MPI queues and BLAS buffers touched by a run (``RUNTIME_BYTES``)
owned_pieces        the caller's owned input, filter and bias pieces (whole run)
filter_block        the all-gathered filter block (nK, nC, R, S) (filter .. end)
bias_block          the all-gathered bias block on c == 0 (bias .. end)
work_buffer         the local input buffer over the hull of own and needed rows and
                    columns (input .. end)
input_gather        all-gather temporaries: touched mask (1 B per block element), packed
                    touched piece, received touched elements, unpacked block (input)
halo_h_buffers      H halo send slabs and receive buffers (halo_h)
halo_w_buffers      W halo send slabs and receive buffers (halo_w)
kernel_window       contiguous copy of the needed span when it is not the whole buffer
                    (kernel)
kernel_workspace    the node kernel's own peak, its output included (kernel)             yes
partial_output      the partial output block in dtype_acc (kernel .. reduce)
bias_add            the second partial block while the bias is added (c == 0)
reduce_buffers      reduce-scatter receive buffer (P_C pieces), the summed piece and its
                    cast to dtype_out (reduce); with P_C = 1 only the cast (none when
                    dtype_out is dtype_acc: the partial block is the output)
balance_out_buffers the output piece, the surplus it sends, the segments it receives and
                    the final outputs it owns, dtype_out (balance_out; an upper estimate:
                    at most ceil(|O| / P) received and owned)
==================  ====================================================================  ====

``kernel_workspace`` for the numpy node is parconv.blas_workspace.workspace_bytes: the phase
images, the tap-major filters, the chosen method's block buffers (exact-group sums, im2col
columns, Winograd's transform buffers) and the returned output, with one BLAS thread per rank.
For the Gemmini node: the transposed and compute-type input copies, the compute-type filter, the
executor's output and its transposed copy (its tiles are bounded by the scratchpad and not
counted).  A kernel object of another kind is budgeted as the numpy node.

Not counted: the interpreter and libraries (the baseline a measurement subtracts), the root's
global arrays and the gather/check phases (parconv.conv's distribution, not the algorithm).
"""

from __future__ import annotations

import dataclasses
from functools import cached_property

import numpy as np

from ..blas_workspace import workspace_bytes

#: bytes the runtime touches in a run besides the arrays: MPI shared-memory queues and the BLAS
#: packing buffers.  Measured with experiments/footprint_check.py (peak RSS minus the baseline
#: minus the array terms): 1 to 10 MiB on 1 to 4 ranks here; see docs/design.md section 3,
#: "memory footprint"
RUNTIME_BYTES = 6 << 20
_HELD = ("runtime", "owned_pieces", "filter_block", "bias_block", "work_buffer")
#: the terms alive in each stage of a run, in run order
STAGES = {
    "input": _HELD + ("input_gather",),
    "halo_h": _HELD + ("halo_h_buffers",),
    "halo_w": _HELD + ("halo_w_buffers",),
    "kernel": _HELD + ("kernel_window", "kernel_workspace"),
    "bias": _HELD + ("partial_output", "bias_add"),
    "reduce": _HELD + ("partial_output", "reduce_buffers"),
    "balance_out": _HELD + ("balance_out_buffers",),
}
TERMS = tuple(dict.fromkeys(t for terms in STAGES.values() for t in terms))
#: terms that depend on the node kernel
NODE_TERMS = ("kernel_workspace",)
NODES = ("numpy", "gemmini")


@dataclasses.dataclass(frozen=True, eq=False)
class Footprint:
    """Named terms (bytes per rank) and the stages they are alive in; ``total`` is the largest
    stage sum per rank, ``stage`` the index (into ``tuple(STAGES)``) of that stage.

    ``raw`` holds each term broadcastable to the grid's shape ``dims`` (most terms vary along
    one or two grid axes only), so that the planner's search builds one full array per stage;
    ``terms`` are the flat int64 arrays over the active ranks, made on first use.
    """

    node: str
    raw: dict
    dims: tuple

    def __getstate__(self) -> dict:
        # the flat terms and stage indices are derived (O(P) each): not pickled
        return {k: v for k, v in self.__dict__.items() if k not in ("terms", "stage")}

    @cached_property
    def terms(self) -> dict:
        return {t: np.broadcast_to(np.asarray(v, dtype=np.int64), self.dims).reshape(-1)
                for t, v in self.raw.items()}

    def _stage_sum(self, stage: str) -> np.ndarray:
        return np.broadcast_to(sum(np.asarray(self.raw[t], dtype=np.int64)
                                   for t in STAGES[stage]), self.dims).reshape(-1)

    @cached_property
    def total(self) -> np.ndarray:
        out = None
        for stage in STAGES:
            value = self._stage_sum(stage)
            out = value.copy() if out is None else np.maximum(out, value, out=out)
        return out

    @cached_property
    def stage(self) -> np.ndarray:
        return np.argmax(np.stack([self._stage_sum(s) for s in STAGES]), axis=0)

    def for_rank(self, rank: int) -> dict:
        """JSON-ready ``{"node", "total", "stage", "terms": {name: bytes}}`` of one rank."""
        index = np.unravel_index(int(rank), self.dims)
        terms = {t: int(np.broadcast_to(np.asarray(v, dtype=np.int64), self.dims)[index])
                 for t, v in self.raw.items()}
        sums = [sum(terms[t] for t in STAGES[s]) for s in STAGES]
        best = int(np.argmax(sums))
        return {"node": self.node, "total": sums[best], "stage": tuple(STAGES)[best],
                "terms": terms}


def node_name(node) -> str:
    """The footprint model of a node: its name when it is a known kernel, else 'numpy'."""
    name = node if isinstance(node, str) else getattr(node, "name", None)
    return name if name in NODES else "numpy"


def _numpy_workspace(spec, n, c, k, out_h, out_w):
    """Peak bytes of the numpy node on blocks of these sizes (broadcast arrays): see
    parconv.blas_workspace.workspace_bytes."""
    padded = any(spec.padding) or any(spec.padding_end)
    return workspace_bytes(spec, n, c, k, out_h, out_w, padded=padded)


def _gemmini_workspace(spec, n, c, k, span_r, span_c, out_h, out_w):
    """Peak bytes of the Gemmini node (parconv.gemmini.executor.TileExecutor.run)."""
    R, S = spec.kernel_size
    cb = np.dtype(spec.dtype_acc).itemsize if np.issubdtype(np.dtype(spec.dtype_in), np.floating) \
        else 8
    e_span = n * c * span_r * span_c
    out = spec.p_acc * n * k * out_h * out_w
    return np.maximum(spec.p_in * e_span + cb * e_span,
                      cb * e_span + cb * k * c * R * S + 2 * out)


def footprint_terms(spec, g, sizes: dict, phases: dict, node="numpy") -> Footprint:
    """The footprint of every rank of the grid ``g`` (a predict._Grid).  Local, pure.

    ``sizes`` holds per-rank element counts from predict_grid (arrays broadcast over the grid):
    ``input_piece``, ``filter_piece``, ``bias_piece``, ``input_block``, ``touched_piece``,
    ``touched_block``, ``output_piece``, ``output_cap`` (ceil(|O| / P) over all P ranks: the
    most outputs a rank owns at the end), and the extents ``span_rows``, ``span_cols``,
    ``buf_rows``, ``buf_cols``; ``phases`` the predicted bytes (the halo buffers are the halo
    bytes).  ``node``: a kernel name or object (`node_name`).
    """
    R, S = spec.kernel_size
    nN, nK, nC, nH, nW, full = g.nN, g.nK, g.nC, g.nH, g.nW, g.full
    sh, sw = spec.stride
    dh, dw = spec.dilation
    span_r, span_c = sizes["span_rows"], sizes["span_cols"]
    buf_r, buf_c = sizes["buf_rows"], sizes["buf_cols"]
    nc = nN * nC
    has_span = (span_r > 0) & (span_c > 0)
    contiguous = ((span_r == buf_r) & (span_c == buf_c)) | \
        ((nc == 1) & ((span_c == buf_c) | (span_r == 1)))
    bias_here = (g.c == 0) & bool(spec.bias)
    n_out = nN * nK * nH * nW
    name = node_name(node)
    if name == "gemmini":
        work = _gemmini_workspace(spec, nN, nC, nK, span_r, span_c, nH, nW)
    else:
        work = _numpy_workspace(spec, nN, nC, nK, nH, nW)
    piece_out = sizes["output_piece"]
    cap_out = sizes["output_cap"]
    kept_out = np.minimum(piece_out, cap_out)
    PC = full.shape[2]
    terms = {
        "runtime": np.int64(RUNTIME_BYTES),
        "owned_pieces": spec.p_in * sizes["input_piece"] + spec.p_weight * sizes["filter_piece"]
        + spec.p_bias * sizes["bias_piece"],
        "filter_block": spec.p_weight * nK * nC * R * S,
        "bias_block": spec.p_bias * nK * bias_here,
        "work_buffer": spec.p_in * nc * buf_r * buf_c,
        "input_gather": sizes["input_block"] * (1 + spec.p_in)
        + spec.p_in * (sizes["touched_piece"] + sizes["touched_block"]),
        "halo_h_buffers": phases["halo_h"]["sent"] + phases["halo_h"]["received"],
        "halo_w_buffers": phases["halo_w"]["sent"] + phases["halo_w"]["received"],
        "kernel_window": spec.p_in * nc * span_r * span_c * (has_span & ~contiguous),
        "kernel_workspace": work * has_span,
        "partial_output": spec.p_acc * n_out,
        "bias_add": spec.p_acc * n_out * bias_here,
        "reduce_buffers": _reduce_bytes(spec, piece_out, PC),
        "balance_out_buffers": spec.p_out * (piece_out + (piece_out - kept_out) + cap_out
                                             + (cap_out - kept_out)),
    }
    return Footprint(name, terms, full.shape)


def _reduce_bytes(spec, piece_out, PC: int):
    """The reduce stage's buffers (`parconv.mpi.exchange`): over a C group of ``PC`` ranks the
    (PC, piece) receive buffer, the output piece and, when dtype_out is not dtype_acc, the sum
    in dtype_acc before its cast; with ``PC`` = 1 the output piece in dtype_out only where it is
    not dtype_acc (else the partial block itself is the output)."""
    cast = np.dtype(spec.dtype_out) != np.dtype(spec.dtype_acc)
    if PC == 1:
        return spec.p_out * piece_out * cast
    return spec.p_acc * piece_out * (PC + cast) + spec.p_out * piece_out
