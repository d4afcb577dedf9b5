"""When the numba-compiled Winograd transforms (`parconv.winograd_fused`) replace the numpy ones,
and where numba keeps its compiled code.  Pure, no MPI.

numba is optional: without it (or where it cannot be used) the numpy transforms of
`parconv.winograd` run, with the same products and the same additions.  With it, the fused
transforms are taken for stride-1 floating Winograd blocks run as pieces side by side on
single-threaded BLAS (`parconv.blas_split`) when the process has at least `MIN_THREADS` BLAS
threads (``$PARCONV_JIT``: also at one thread, or never), imported and compiled on the first
such block only.  Why the thread floor: numba's first call in a process costs about a
second even with its disk cache warm (importing numba, loading the compiled code; a cold cache
compiles for 3-5 s), which a rank of a many-rank run (one BLAS thread each, one block each)
would never earn back, whereas the fused transforms pay most at 2 threads, where the numpy
passes scale worst (docs/design.md 4.5).

numba's cache follows the project's cache folder (``$PARCONV_CACHE_DIR``, as the Gemmini
tilings of `parconv.gemmini.tiling_cache`): ``$PARCONV_CACHE_DIR/numba``, by default
``~/.cache/parconv/numba``, unless ``$NUMBA_CACHE_DIR`` names one; never the installed
package's folder.  With ``PARCONV_CACHE_DIR=off`` (and no ``$NUMBA_CACHE_DIR``) the fused
transforms are not used, since every process would compile them anew.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

from .spec import ConvSpec

#: "0"/"off": never the fused transforms; "1"/"on": also below MIN_THREADS; unset or "auto":
#: from MIN_THREADS BLAS threads on
JIT_ENV = "PARCONV_JIT"
#: the fewest BLAS threads of the process for which the fused transforms are taken by default
MIN_THREADS = 2
#: the variable and the values that switch the project's disk caches off (as in
#: parconv.gemmini.tiling_cache)
CACHE_ENV = "PARCONV_CACHE_DIR"
_OFF = ("", "0", "off", "none", "false")


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
    value = os.environ.get(CACHE_ENV)
    if value is None:
        return Path.home() / ".cache" / "parconv" / "numba"
    return None if value.strip().lower() in _OFF else Path(value) / "numba"


def fused_winograd(spec: ConvSpec, threads: int, workers: int):
    """``conv_winograd`` of `parconv.winograd_fused` for this block at ``threads`` BLAS
    threads run as ``workers`` pieces side by side (`parconv.blasconv.split_workers`), or None
    where the numpy transforms run: not a stride-1 Winograd block, `mode`, the thread floor,
    products on several BLAS threads, numba absent or unusable, no cache folder.

    The fused form's products, (tiles x C) @ (C x K), ran slower on two OpenBLAS threads than
    the numpy form's (K x C) @ (C x tiles) (36 against 26 ms on resnet50.layer4.1.conv2's
    block at batch 8, load 1.7), so it takes only blocks whose products each get one BLAS
    thread: the pieces of the threaded split, or one thread."""
    from .winograd import applies
    state = mode()
    if (not applies(spec) or state == "off" or workers != threads
            or (state == "auto" and threads < MIN_THREADS)):
        return None
    return _load()


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
