"""Tilings of Gemmini blocks, searched once: per process and on disk.  Pure, no MPI.

The tiling `parconv.gemmini.tiled.choose.choose_tiling` returns depends only on the block's
shape and types and on the Gemmini configuration (and on the code that searches).  So ranks with
equal blocks, and repeated runs, reuse it:

* in the process: a dictionary keyed by (spec without its name, config), which also holds
  tilings other ranks searched for equal blocks (`remember`, used by parconv.mpi.node_setup);
* on disk (optional): one pickle per key in ``$PARCONV_CACHE_DIR`` (default
  ``~/.cache/parconv/tilings``; ``PARCONV_CACHE_DIR=off`` disables it), named by the SHA-256 of
  the spec, the config and the *code version* (a hash of the sources the tiling depends on:
  parconv/gemmini, parconv/tiling, parconv/bounds, parconv/spec.py), so a changed search never
  reads an old answer.  Files are written to a temporary name in the same folder and renamed
  (atomic on POSIX): readers see a whole file or none, and many ranks writing the same entry at
  once each rename a complete copy.  Unreadable or foreign entries are searched again.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
import pickle
import tempfile
import time
from pathlib import Path

from ..cache_folders import cache_folder
from ..spec import ConvSpec
from .config import GemminiConfig
from .tiled.choose import TilingChoice, choose_tiling

#: tilings kept per process
MEMORY_ENTRIES = 512

_memory: dict = {}
#: keys whose tiling another rank searched (parconv.mpi.node_setup): reported as source "peer"
_from_peer: set = set()


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """SHA-256 of the sources the tiling depends on (file names and contents)."""
    root = Path(__file__).resolve().parents[1]
    files = sorted([*root.glob("gemmini/**/*.py"), *root.glob("tiling/*.py"),
                    *root.glob("bounds/*.py"), root / "spec.py"])
    digest = hashlib.sha256()
    for path in files:
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def cache_dir() -> Path | None:
    """The on-disk cache folder, or None when disabled (`parconv.cache_folders`)."""
    return cache_folder("tilings")


def _normal(spec: ConvSpec) -> ConvSpec:
    """The block without its label: equal shapes share one tiling."""
    return spec.replace(name="block")


def _key_text(spec: ConvSpec, config: GemminiConfig) -> str:
    return repr((_normal(spec), config, code_version()))


def entry_name(spec: ConvSpec, config: GemminiConfig) -> str:
    """File name of the entry: SHA-256 of the spec, the config and the code version."""
    return hashlib.sha256(_key_text(spec, config).encode()).hexdigest() + ".pickle"


def _read(path: Path, key_text: str) -> TilingChoice | None:
    try:
        with open(path, "rb") as handle:
            stored_key, choice = pickle.load(handle)
    except Exception:          # missing, truncated by hand, or from other code: search again
        return None
    if stored_key != key_text or not isinstance(choice, TilingChoice):
        return None
    return choice


def _write(folder: Path, name: str, key_text: str, choice: TilingChoice) -> bool:
    """Write atomically (temporary file + rename); False when the folder is not writable."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".pickle")
        try:
            with os.fdopen(handle, "wb") as out:
                pickle.dump((key_text, choice), out, protocol=pickle.HIGHEST_PROTOCOL)
                out.flush()
                os.fsync(out.fileno())
            os.replace(temporary, folder / name)
        finally:
            if os.path.exists(temporary):
                os.unlink(temporary)
    except OSError:
        return False
    return True


def cached_tiling(spec: ConvSpec, config: GemminiConfig, disk: bool = True
                  ) -> tuple[TilingChoice, dict]:
    """parconv's tiling of ``spec`` under ``config``, searched only on a miss.  Local.

    Returns
    -------
    choice : TilingChoice
        As `choose_tiling(spec, config)` returns it (with ``spec`` the given one).
    info : dict
        ``source`` ("memory", "peer" (searched by another rank with an equal block,
        parconv.mpi.node_setup), "disk" or "search"), ``search_s`` (seconds spent searching, 0 on a
        hit), ``lookup_s`` (seconds spent looking up and storing) and ``cache_file`` (or None).
    """
    start = time.perf_counter()
    key = (_normal(spec), config)
    folder = cache_dir() if disk else None
    name = entry_name(spec, config) if folder is not None else None
    choice, searched = _memory.get(key), 0.0
    source = "peer" if key in _from_peer else "memory"
    if choice is None and folder is not None:
        choice, source = _read(folder / name, _key_text(spec, config)), "disk"
    if choice is None:
        begin = time.perf_counter()
        choice, source = choose_tiling(key[0], config), "search"
        searched = time.perf_counter() - begin
        if folder is not None:
            _write(folder, name, _key_text(spec, config), choice)
    if key not in _memory and len(_memory) >= MEMORY_ENTRIES:
        _from_peer.discard(next(iter(_memory)))
        _memory.pop(next(iter(_memory)))
    _memory[key] = choice
    named = dataclasses.replace(choice, spec=spec,
                                model=choice.model.replace(name=spec.name))
    info = {"source": source, "search_s": searched,
            "lookup_s": time.perf_counter() - start - searched,
            "cache_file": str(folder / name) if folder is not None else None}
    return named, info


def key_text(spec: ConvSpec, config: GemminiConfig) -> str:
    """Text naming the tiling of ``spec`` under ``config`` (equal texts, equal tilings)."""
    return _key_text(spec, config)


def remember(spec: ConvSpec, config: GemminiConfig, choice: TilingChoice) -> None:
    """Keep a tiling another rank searched for an equal block (source "peer" when looked up)."""
    if not isinstance(choice, TilingChoice):
        raise TypeError(f"expected a TilingChoice, got {type(choice).__name__}")
    key = (_normal(spec), config)
    if len(_memory) >= MEMORY_ENTRIES:
        _from_peer.discard(next(iter(_memory)))
        _memory.pop(next(iter(_memory)))
    _memory[key] = dataclasses.replace(choice, spec=key[0],
                                       model=choice.model.replace(name=key[0].name))
    _from_peer.add(key)


def clear_memory() -> None:
    """Forget the tilings of this process (tests, benchmarks of a fresh search)."""
    _memory.clear()
    _from_peer.clear()
