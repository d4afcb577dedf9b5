"""Layer flags shared by the command lines ``python -m parconv.run``, ``python -m parconv.plan``
and ``python -m parconv.gemmini`` (docs/design.md, "Command line"), and the ConvSpec they build.
Pure: no MPI.
"""

from __future__ import annotations

import argparse

from .errors import ParconvError
from .layers import CATALOGUE, get_layer, layer_names
from .spec import INPUT_DTYPES, spec_for_dtype


def parse_pair(text: str, name: str) -> tuple[int, int]:
    """``"3"`` -> (3, 3); ``"3x5"`` -> (3, 5)."""
    parts = str(text).lower().split("x")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        values = []
    if len(values) == 1:
        values *= 2
    if len(values) != 2:
        raise ParconvError(f"--{name} must be N or NxM (integers), got {text!r}")
    return values[0], values[1]


def add_layer_arguments(parser: argparse.ArgumentParser) -> None:
    """The layer flags shared by parconv.plan, parconv.run and parconv.gemmini (design.md)."""
    g = parser.add_argument_group("layer (a catalogue name, or the shape flags)")
    g.add_argument("--layer", metavar="NAME",
                   help="a catalogue layer, e.g. resnet50.layer3.0.conv2 (see --list-layers); "
                        "shape flags given as well override its fields")
    g.add_argument("--batch", type=int, metavar="N", help="batch size N (default 1 or the "
                   "command's default)")
    g.add_argument("--in-channels", type=int, metavar="C", help="input channels C")
    g.add_argument("--out-channels", type=int, metavar="K", help="output channels K")
    g.add_argument("--size", metavar="H[xW]", help="input height and width")
    g.add_argument("--kernel-size", metavar="R[xS]", help="filter height and width (default 3)")
    g.add_argument("--stride", metavar="S[xS]", help="stride (default 1)")
    g.add_argument("--padding", metavar="P[xP]", help="zero padding (default 0)")
    g.add_argument("--dilation", metavar="D[xD]", help="dilation (default 1)")
    g.add_argument("--dtype", default="int8", choices=INPUT_DTYPES,
                   help="element type of inputs and weights; int8 and int16 accumulate and "
                        "output int32, int32 int64, float16 float32 (default int8)")
    g.add_argument("--bias", action="store_true", help="the layer adds a bias per output channel")
    g.add_argument("--list-layers", action="store_true", help="list the catalogue and exit")


def spec_from_args(args, default_batch: int = 1, overrides: dict | None = None):
    """Build the ConvSpec from parsed layer flags (catalogue layer first, flags override).

    ``overrides`` supplies values read elsewhere (e.g. shapes and attributes of an HDF5 file)
    that flags given explicitly still override."""
    fields = dict(overrides or {})
    if args.layer:
        base = get_layer(args.layer, batch=args.batch or default_batch, dtype=args.dtype)
        fields = {"batch": base.batch, "in_channels": base.in_channels,
                  "out_channels": base.out_channels, "in_size": base.in_size,
                  "kernel_size": base.kernel_size, "stride": base.stride,
                  "padding": base.padding, "dilation": base.dilation, "name": base.name,
                  **fields}
    explicit = {"batch": args.batch, "in_channels": args.in_channels,
                "out_channels": args.out_channels}
    fields.update({k: v for k, v in explicit.items() if v is not None})
    for flag, key in (("size", "in_size"), ("kernel_size", "kernel_size"), ("stride", "stride"),
                      ("padding", "padding"), ("dilation", "dilation")):
        value = getattr(args, flag)
        if value is not None:
            fields[key] = parse_pair(value, flag.replace("_", "-"))
    fields.setdefault("batch", default_batch)
    fields.setdefault("kernel_size", (3, 3))
    missing = [f"--{k.replace('_', '-')}" for k in ("in_channels", "out_channels", "in_size")
               if k not in fields]
    if missing:
        raise ParconvError(f"give --layer NAME or the layer shape; missing {', '.join(missing)}"
                           .replace("--in-size", "--size"))
    fields.setdefault("name", "custom")
    return spec_for_dtype(args.dtype, bias=args.bias, **fields)


def list_layers() -> str:
    rows = [f"{'name':<34} {'C':>5} {'K':>5} {'in':>5} {'k':>3} {'s':>3} {'p':>3}"]
    rows += [f"{n:<34} {c:>5} {k:>5} {h:>5} {r:>3} {s:>3} {p:>3}"
             for n, (c, k, h, r, s, p) in CATALOGUE.items()]
    return "\n".join(rows) + f"\n{len(layer_names())} layers"
