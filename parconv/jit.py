"""When the numba-compiled Winograd transforms (`parconv.winograd_fused`) replace the numpy ones,
and where numba keeps its compiled code.  Pure, no MPI.

numba is optional: without it (or where it cannot be used) the numpy transforms of
`parconv.winograd` run, with the same products and the same additions.  With it, the fused
transforms may run stride-1 floating Winograd blocks whose products each get one BLAS thread
(a process on one BLAS thread, or the threaded split's pieces, `parconv.blas_split`;
`eligible`; ``$PARCONV_JIT``: at once, or never).  numba's first call
in a process costs about a second even with its disk cache warm (importing numba, loading the
compiled code; a cold cache compiles for 3-5 s), against some 5-8 ms saved per call of a 56x56
layer at batch 8: a one-shot run (`parconv.run`, a block per rank) would only lose.  So by
default ("auto") they are loaded once the process has spent `AFTER_SECONDS` in eligible blocks
on the numpy transforms (`record`), or when asked up front (`preload`, as the benchmark does);
``PARCONV_JIT=on`` loads them on the first eligible block.  Loading adds about 66 MB to the
process's resident memory (measured: 29 -> 95 MB), paid only by a rank that has done the 2 s of
Winograd work first.

numba's cache follows the project's cache folder (``$PARCONV_CACHE_DIR``, the rule of
`parconv.cache_folders`, as the Gemmini tilings): ``$PARCONV_CACHE_DIR/numba``, by default
``~/.cache/parconv/numba``, unless ``$NUMBA_CACHE_DIR`` names one; never the installed
package's folder.  With ``PARCONV_CACHE_DIR=off`` (and no ``$NUMBA_CACHE_DIR``) the fused
transforms are not used, since every process would compile them anew.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

from .cache_folders import cache_folder
from .spec import ConvSpec

#: "0"/"off": never the fused transforms; "1"/"on": from the first eligible block; unset or
#: "auto": once the process has spent AFTER_SECONDS in eligible blocks
JIT_ENV = "PARCONV_JIT"
#: seconds the process spends in eligible Winograd blocks on the numpy transforms before "auto"
#: loads the fused ones (loading costs about a second: then at most a third of the time spent)
AFTER_SECONDS = 2.0
#: seconds recorded (`record`) and whether the fused kernels are loaded (`preload`, or by
#: `fused_winograd`)
_state = {"spent": 0.0, "loaded": False}


def mode() -> str:
    """``$PARCONV_JIT`` as "off", "on" or "auto"."""
    value = os.environ.get(JIT_ENV, "auto").strip().lower()
    if value in ("0", "off", "no", "false"):
        return "off"
    return "on" if value in ("1", "on", "yes", "true") else "auto"


def numba_cache_dir() -> Path | None:
    """The folder of numba's compiled code (module docstring), or None when caching is off."""
    if os.environ.get("NUMBA_CACHE_DIR"):
        return Path(os.environ["NUMBA_CACHE_DIR"])
    return cache_folder("numba", inside="numba")


def eligible(spec: ConvSpec, threads: int, workers: int) -> bool:
    """Whether the fused transforms may run this block at ``threads`` BLAS threads run as
    ``workers`` pieces side by side (`parconv.blasconv.split_workers`): a stride-1 float
    Winograd block, `mode` not "off", and its products on MKL or on one BLAS thread each (the
    threaded split's pieces, or one thread; with MKL active, a block on T > 1 threads runs its
    16 products as T shares on MKL, `parconv.blas.matmul`).  At one thread the fused
    transforms ran the float32 layer 1.01-1.48x faster than the numpy ones (design.md 4.5), so
    there is no thread floor.

    Why not on several OpenBLAS threads: the fused form's products, (tiles x C) @ (C x K), ran
    slower on two OpenBLAS threads than the numpy form's (K x C) @ (C x tiles) (36 against 26 ms
    on resnet50.layer4.1.conv2's block at batch 8, load 1.7); on MKL's shares the fused form
    ran that block at 6.4-6.7 ms against 7.7 for the numpy form (2 threads, AVX-512 Xeon)."""
    from . import blas_mkl
    from .winograd import applies
    return applies(spec) and mode() != "off" and (workers == threads or blas_mkl.active())


def fused_winograd(spec: ConvSpec, threads: int, workers: int):
    """``conv_winograd`` of `parconv.winograd_fused` for this block, or None where the numpy
    transforms run: not `eligible`; in "auto" mode, before the process has spent
    `AFTER_SECONDS` in eligible blocks (`record`) unless the kernels are loaded already
    (`preload`); numba absent or unusable, no cache folder."""
    if not eligible(spec, threads, workers):
        return None
    if mode() == "auto" and not _state["loaded"] and _state["spent"] < AFTER_SECONDS:
        return None
    conv = _load()
    _state["loaded"] = conv is not None
    return conv


def record(seconds: float) -> None:
    """Add the time of an eligible block that ran the numpy transforms (`fused_winograd`)."""
    _state["spent"] += seconds


def preload() -> bool:
    """Load the fused kernels now (compiling them if the cache is cold), so that every eligible
    block takes them: for a process that will run many (a benchmark).  Whether they are
    usable."""
    _state["loaded"] = _load() is not None
    return _state["loaded"]


@functools.lru_cache(maxsize=1)
def _load():
    """``conv_winograd`` of `parconv.winograd_fused` (whose kernels compile, or load from the
    cache, on their first call; importing it sets numba's cache folder), or None without numba
    or a cache folder."""
    folder = numba_cache_dir()
    if folder is None:
        return None
    try:
        folder.mkdir(parents=True, exist_ok=True)
        from . import winograd_fused
    except (ImportError, OSError):
        return None
    return winograd_fused.conv_winograd
