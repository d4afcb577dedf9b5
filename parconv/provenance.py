"""Where a run's code came from: the git revision of the parconv checkout.  Pure, no MPI."""

from __future__ import annotations

import os
import subprocess

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


def git_revision(folder: str = _PACKAGE_DIR) -> str | None:
    """The commit checked out in the git repository holding `folder` (``git rev-parse HEAD``).

    Parameters
    ----------
    folder : str
        Any folder inside the checkout; default the parconv package's own folder, so the
        revision is that of the code that runs, not of the caller's working directory.

    Returns
    -------
    str or None
        40 hex digits; ``None`` when the folder is not in a git checkout (e.g. an installed
        copy) or git is not installed.  Uncommitted edits are not reflected.
    """
    try:
        head = subprocess.run(["git", "-C", folder, "rev-parse", "HEAD"], capture_output=True,
                              text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    revision = head.stdout.strip()
    return revision if head.returncode == 0 and revision else None
