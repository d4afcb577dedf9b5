"""The command line of ``python -m parconv.run``: its flags, their help, and the ConvSpec they
build together with an input file's metadata.  Pure: no MPI (`parconv.run` runs the layer).
"""

from __future__ import annotations

import argparse
import os
import sys

from .cli import add_layer_arguments, parse_pair, spec_from_args
from .errors import ParconvError
from .spec import INPUT_DTYPES

DEFAULT_LAYER = "resnet50.layer3.0.conv2"
DEFAULT_BATCH = 8
DEFAULT_NODE = "gemmini"
SHAPE_FLAGS = ("in_channels", "out_channels", "size")
PROG = "python -m parconv.run"


class EarlyExit(Exception):
    """--help or --list-layers: leave with this status, nothing else to do."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of exiting (so every rank ends the same way) and prints
    help on rank 0 only."""

    def __init__(self, *args, rank: int = 0, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.rank = rank

    def error(self, message: str):
        raise ParconvError(f"{message} (see {PROG} --help)")

    def print_help(self, file=None) -> None:
        if self.rank == 0:
            super().print_help(file)

    def exit(self, status: int = 0, message: str | None = None):
        if message and self.rank == 0:
            sys.stderr.write(message)
        raise EarlyExit(status)


def _set_help(parser: argparse.ArgumentParser, dest: str, text: str) -> None:
    for action in parser._actions:  # argparse has no public way to edit a shared flag's help
        if action.dest == dest:
            action.help = text


def build_parser(rank: int = 0) -> argparse.ArgumentParser:
    """The command line of ``python -m parconv.run`` (layer flags shared with parconv.plan)."""
    parser = _Parser(
        prog=PROG, rank=rank,
        description="Run one convolution layer on all MPI ranks: choose the processor grid from "
                    "the communication lower bound, distribute the data, exchange (counting "
                    "every byte), run each rank's block through the node kernel, reduce, and "
                    "report bytes against the prediction and the bound.",
        epilog=f"Example: mpirun -n 8 {PROG} --layer resnet50.layer2.0.conv2 --batch 4 "
               f"--node numpy --check.  Exit status: 0 ok, 2 bad input, 1 failure while running.")
    add_layer_arguments(parser)
    parser.set_defaults(dtype=None, batch=None)
    _set_help(parser, "layer", f"a catalogue layer (see --list-layers); default {DEFAULT_LAYER} "
              f"unless --input or --in-channels/--out-channels/--size describe another layer; "
              f"shape flags given as well override its fields")
    _set_help(parser, "batch", f"batch size N (default {DEFAULT_BATCH}, or the input file's)")
    for dest, what, fallback in (
            ("in_channels", "input channels C", ""), ("out_channels", "output channels K", ""),
            ("size", "input height and width in pixels, H or HxW", ""),
            ("kernel_size", "filter height and width, R or RxS", ", else 3"),
            ("stride", "stride, S or SxS", ", else 1"), ("padding", "zero padding, P or PxP",
                                                           ", else 0"),
            ("dilation", "dilation, D or DxD", ", else 1")):
        _set_help(parser, dest, f"{what} (default: the layer's{fallback})")
    _set_help(parser, "dtype", "element type of inputs and weights; int8 and int16 accumulate "
              "and output int32, int32 int64, float16 float32 (default int8, or the input "
              "file's type)")
    _set_help(parser, "bias", "add a random bias per output channel (int32 for int8); with "
              "--input the bias is used whenever the file has one")
    node = parser.add_argument_group("node and distribution")
    node.add_argument("--node", choices=("gemmini", "numpy"), default=DEFAULT_NODE,
                      help=f"node kernel: the Gemmini accelerator model or the numpy CPU kernel "
                           f"(default {DEFAULT_NODE}); the numpy kernel's float products run "
                           f"on MKL where it is installed, and its int8 ones (and the Gemmini "
                           f"model's int8 tiles) on MKL's int8 GEMM where the CPU has VNNI or "
                           f"AMX ($PARCONV_BLAS=auto|mkl|numpy, auto: on Intel CPUs)")
    node.add_argument("--grid", default="auto", metavar="auto|NxKxCxHxW",
                      help="processor grid; auto = chosen from the bound; a forced grid must "
                           "multiply to the number of ranks (default auto)")
    node.add_argument("--ownership", default="auto", metavar="auto|aligned|centred|H,W",
                      help="how the input rows and columns are owned: aligned with the output "
                           "blocks, or centred (cut in the middle of the rows two neighbours "
                           "both read); auto keeps whichever moves fewer bytes; 'aligned,centred' "
                           "gives H then W (default auto)")
    node.add_argument("--memory", metavar="BYTES", default="1GiB",
                      help="memory per rank for the planner and the memory-dependent bound; "
                           "plain bytes or with a unit: KB/MB/GB (10^3..) or KiB/MiB/GiB (2^10..) "
                           "(default 1GiB)")
    data = parser.add_argument_group("data and output")
    data.add_argument("--input", metavar="FILE.h5", help="read 'input' (N,C,H,W), 'weight' "
                      "(K,C,R,S) and optional 'bias' (K,) from HDF5; its stride/padding/"
                      "dilation attributes are used unless given as flags (default: random data)")
    data.add_argument("--output", metavar="FILE.h5",
                      help="write 'output' (N,K,H,W) to HDF5, atomically (default: not written)")
    data.add_argument("--report", metavar="FILE.json", help="write the JSON run report "
                      "(default: not written)")
    data.add_argument("--check", action="store_true",
                      help="every rank recomputes its own output piece with the serial kernel "
                           "from the data (seeded or the input file) and the ranks agree on the "
                           "largest error; nothing is gathered; mismatch = exit 1")
    data.add_argument("--gather", action="store_true",
                      help="also assemble the whole output on rank 0 (counted phase 'gather'; "
                           "default: the output stays distributed)")
    data.add_argument("--repeat", type=int, default=1, metavar="N",
                      help="run the layer N times on the same planned exchanges and report the "
                           "median time per phase (default 1)")
    data.add_argument("--no-overlap", action="store_true",
                      help="run every exchange to completion before the kernel (default: halos "
                           "travel while the kernel computes the interior of the block)")
    data.add_argument("--seed", type=int, default=0,
                      help="seed of the random data, >= 0 (default 0)")
    data.add_argument("--quiet", action="store_true",
                      help="print nothing but errors (no progress lines, no summary)")
    return parser


# ---- the layer ----------------------------------------------------------------------------------

def _file_fields(meta, args) -> dict:
    """Layer fields fixed by an input file; explicit flags that contradict them are errors."""
    (n, c, h, w), (k, _, r, s) = meta.input_shape, meta.weight_shape
    fields = {"batch": n, "in_channels": c, "out_channels": k, "in_size": (h, w),
              "kernel_size": (r, s)}
    given = {"batch": args.batch, "in_channels": args.in_channels,
             "out_channels": args.out_channels,
             "in_size": args.size and parse_pair(args.size, "size"),
             "kernel_size": args.kernel_size and parse_pair(args.kernel_size, "kernel-size")}
    for key, value in given.items():
        if value is not None and value != fields[key]:
            raise ParconvError(f"--{key.replace('_', '-').replace('in-size', 'size')} "
                               f"{value} disagrees with input file {meta.path} "
                               f"({key} = {fields[key]})")
    fields.update({name: meta.attributes[name] for name in ("stride", "padding", "dilation")
                   if name in meta.attributes})
    if not args.layer:
        fields["name"] = meta.name or os.path.splitext(os.path.basename(meta.path))[0]
    return fields


def _file_dtype(meta, args) -> str:
    if meta.input_dtype not in INPUT_DTYPES:
        raise ParconvError(f"input file {meta.path}: dataset 'input' has type "
                           f"{meta.input_dtype}; it must be one of {', '.join(INPUT_DTYPES)}")
    if args.dtype is not None and args.dtype != meta.input_dtype:
        raise ParconvError(f"--dtype {args.dtype} disagrees with input file {meta.path} "
                           f"('input' is {meta.input_dtype})")
    return meta.input_dtype


def build_spec(args, meta=None):
    """The ConvSpec from the flags and, if given, the input file's metadata.  Pure.

    Precedence: explicit flags > file attributes and shapes (shape flags must agree with the
    file) > the catalogue layer (``--layer``, or the default layer when nothing else describes
    one) > defaults.
    """
    args = argparse.Namespace(**vars(args))
    overrides = None
    if meta is not None:
        args.dtype = _file_dtype(meta, args)
        overrides = _file_fields(meta, args)
        if args.bias and meta.bias_shape is None:
            raise ParconvError(f"--bias given but input file {meta.path} has no dataset 'bias'")
        args.bias = args.bias or meta.bias_shape is not None
    elif not args.layer and all(getattr(args, f) is None for f in SHAPE_FLAGS):
        args.layer = DEFAULT_LAYER
    args.dtype = args.dtype or "int8"
    return spec_from_args(args, default_batch=DEFAULT_BATCH, overrides=overrides)
