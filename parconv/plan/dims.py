"""Processor grids P_N x P_K x P_C x P_H x P_W: parsing, validation and enumeration.  Pure."""

from __future__ import annotations

import dataclasses
from functools import lru_cache

from ..errors import ParconvError

AXES = ("N", "K", "C", "H", "W")


@dataclasses.dataclass(frozen=True)
class GridDims:
    """A processor grid over batch, output channels, input channels, output height and width."""

    N: int = 1
    K: int = 1
    C: int = 1
    H: int = 1
    W: int = 1

    def as_tuple(self) -> tuple[int, int, int, int, int]:
        return (self.N, self.K, self.C, self.H, self.W)

    def as_dict(self) -> dict[str, int]:
        return dict(zip(AXES, self.as_tuple()))

    @property
    def size(self) -> int:
        n, k, c, h, w = self.as_tuple()
        return n * k * c * h * w

    def __str__(self) -> str:
        return "x".join(str(v) for v in self.as_tuple())

    @classmethod
    def parse(cls, text) -> "GridDims":
        """From ``"2x1x2x2x2"``, a 5-tuple, a dict or a GridDims."""
        if isinstance(text, GridDims):
            return text
        if isinstance(text, dict):
            return cls(**{k: int(v) for k, v in text.items()})
        if isinstance(text, str):
            parts = text.lower().replace("*", "x").split("x")
            try:
                values = [int(p) for p in parts]
            except ValueError:
                values = []
        else:
            values = list(text)
        if len(values) != 5 or any(not isinstance(v, int) or v < 1 for v in values):
            raise ParconvError(f"--grid must be five positive integers NxKxCxHxW (or 'auto'), "
                               f"got {text!r}")
        return cls(*values)


def dimension_caps(spec) -> tuple[int, int, int, int, int]:
    """Largest useful factor per grid axis: N, K, C, H_out, W_out (the window is never split)."""
    return (spec.batch, spec.out_channels, spec.in_channels, *spec.out_size)


def validate_grid(grid: GridDims, spec, ranks: int) -> None:
    """Raise ParconvError unless ``grid`` multiplies to ``ranks`` and fits every dimension."""
    if grid.size != ranks:
        raise ParconvError(f"grid {grid} has {grid.size} processes but the job has {ranks} "
                           f"ranks; the grid factors must multiply to the number of ranks")
    for axis, factor, cap in zip(AXES, grid.as_tuple(), dimension_caps(spec)):
        if factor > cap:
            raise ParconvError(f"grid factor {axis}={factor} exceeds that dimension ({cap}); "
                               f"each factor must be <= its dimension")


@lru_cache(maxsize=256)
def factorizations(P: int, caps: tuple[int, ...]) -> tuple[tuple[int, ...], ...]:
    """All ordered factorisations of ``P`` into ``len(caps)`` factors with factor i <= caps[i]."""
    if len(caps) == 1:
        return ((P,),) if P <= caps[0] else ()
    out = []
    for f in range(1, min(P, caps[0]) + 1):
        if P % f == 0:
            out.extend((f,) + rest for rest in factorizations(P // f, caps[1:]))
    return tuple(out)
