"""The project's disk-cache folders, one rule for every cache.  Pure, no MPI.

``$PARCONV_CACHE_DIR`` names the folder (the Gemmini tilings go into it, numba's compiled code
into its ``numba`` subfolder); unset, each cache has its own folder under
``~/.cache/parconv``; "", "0", "off", "none" or "false" switch the disk caches off.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["CACHE_ENV", "cache_folder"]

#: environment variable naming the cache folder (see the module docstring)
CACHE_ENV = "PARCONV_CACHE_DIR"
_OFF = ("", "0", "off", "none", "false")


def cache_folder(default: str, inside: str | None = None) -> Path | None:
    """The folder of one disk cache, or None when ``$PARCONV_CACHE_DIR`` switches caches off.

    Parameters
    ----------
    default : str
        The folder's name under ``~/.cache/parconv`` when the variable is unset.
    inside : str, optional
        The subfolder of ``$PARCONV_CACHE_DIR`` when it is set (default: the folder itself).
    """
    value = os.environ.get(CACHE_ENV)
    if value is None:
        return Path.home() / ".cache" / "parconv" / default
    if value.strip().lower() in _OFF:
        return None
    return Path(value) / inside if inside else Path(value)
