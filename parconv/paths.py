"""Output paths: checked before any work, written through short temporary names, and the
temporary files of runs that died removed by the next run.  Pure: no MPI.

Every file parconv writes (``--output``, ``--report``, layer files) is first written to a hidden
temporary file in the folder of the file it replaces and then renamed onto it, so that a reader
sees the old file or the complete new one, never half of one.  The temporary name is short and
recognisable, ``.parconv-<host>-<pid>-<hash>.tmp`` (host: 6 hex digits of the host name's hash;
pid: the writing process; hash: 8 hex digits of the final name and the file's role), so that

* it fits NAME_MAX whenever the final name does (a 250-character name gets a temporary name of
  at most 36 characters, not a longer one);
* a later run can tell the leftovers of a dead process (killed by SIGKILL, or a node that went
  down) from those of a live one on the same host, and removes the former (`remove_stale`).

A symlink given as an output is written through: the temporary file goes to the folder of the
symlink's final target and is renamed onto that target, so the link stays a link.  Hard links
cannot be written through by a rename: the name given gets the new file, the other names keep
the old contents.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import socket
import stat

from .errors import ParconvError, ParconvRuntimeError

TEMP_PREFIX = ".parconv-"
TEMP_SUFFIX = ".tmp"
_TEMP_PATTERN = re.compile(r"^\.parconv-([0-9a-f]{6})-([0-9]+)-[0-9a-f]{8}\.tmp$")
_FALLBACK_NAME_MAX, _FALLBACK_PATH_MAX = 255, 4096

#: temporary files this process created and has not yet renamed or removed (for signal handlers)
_LIVE: set[str] = set()


def _short_hash(text: str, digits: int) -> str:
    return hashlib.sha1(text.encode("utf-8", "surrogateescape")).hexdigest()[:digits]


def host_tag() -> str:
    """6 hex digits naming this host in temporary names."""
    return _short_hash(socket.gethostname(), 6)


def is_temporary(name: str) -> bool:
    """Whether a file name (no folder) is one of parconv's temporary names."""
    return _TEMP_PATTERN.match(name) is not None


def temporary_name(target: str, role: str = "file", pid: int | None = None) -> str:
    """The temporary name through which `target` is written: same folder, short, hidden.

    `target` should be the resolved path (`resolve`), so that the rename lands on the real file.
    `role` tells apart several temporary files of one process for the same target (the output,
    a backup of the old report, ...).
    """
    folder, name = os.path.split(os.path.abspath(target))
    pid = os.getpid() if pid is None else pid
    tag = _short_hash(f"{name}/{role}", 8)
    return os.path.join(folder, f"{TEMP_PREFIX}{host_tag()}-{pid}-{tag}{TEMP_SUFFIX}")


def resolve(path: str) -> str:
    """The file a write to `path` must replace: symlinks (also dangling ones) followed."""
    return os.path.realpath(os.path.abspath(path))


def register(path: str) -> None:
    """Note a temporary file this process created (removed by `remove_registered`)."""
    _LIVE.add(path)


def unregister(path: str) -> None:
    _LIVE.discard(path)


def remove_quietly(path: str) -> None:
    """Remove `path` if it exists; forget it as a temporary file either way."""
    try:
        os.remove(path)
    except (FileNotFoundError, IsADirectoryError):
        pass
    except OSError:
        return  # keep it registered: a later attempt (or the next run) may succeed
    unregister(path)


def remove_registered() -> list[str]:
    """Remove every temporary file this process still holds (used when interrupted)."""
    removed = []
    for path in sorted(_LIVE):
        if os.path.exists(path):
            removed.append(path)
        remove_quietly(path)
    return removed


# ---- checks before any work ---------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class OutputTarget:
    """One output file: the flag and path given, the file it replaces, its temporary name."""

    flag: str
    path: str
    target: str
    temporary: str


def _limit(folder: str, name: str, fallback: int) -> int:
    try:
        value = os.pathconf(folder, name)
    except (OSError, ValueError):
        return fallback
    return fallback if value is None or value < 0 else value


def _check_one(flag: str, path: str) -> OutputTarget:
    if not path:
        raise ParconvError(f"{flag}: empty file name")
    target = resolve(path)
    shown = path if target == os.path.abspath(path) else f"{path} (-> {target})"
    folder, name = os.path.split(target)
    if os.path.isdir(target):
        raise ParconvError(f"{flag} {shown} is a directory; give a file name")
    if not os.path.isdir(folder):
        raise ParconvError(f"{flag} {shown}: folder {folder} does not exist")
    if os.path.exists(target):
        mode = os.stat(target).st_mode
        if not stat.S_ISREG(mode):
            raise ParconvError(f"{flag} {shown} exists and is not a regular file")
        if not os.access(target, os.W_OK):
            raise ParconvError(f"{flag} {shown} is read-only")
    name_max = _limit(folder, "PC_NAME_MAX", _FALLBACK_NAME_MAX)
    path_max = _limit(folder, "PC_PATH_MAX", _FALLBACK_PATH_MAX)
    temporary = temporary_name(target, flag.strip("-"))
    for what, text in (("file name", name), ("temporary file name", os.path.basename(temporary))):
        if len(os.fsencode(text)) > name_max:
            raise ParconvError(f"{flag} {shown}: {what} is {len(os.fsencode(text))} bytes, more "
                               f"than the {name_max} (NAME_MAX) its folder allows")
    for what, text in (("path", target), ("temporary path", temporary)):
        if len(os.fsencode(text)) >= path_max:
            raise ParconvError(f"{flag} {shown}: {what} is {len(os.fsencode(text))} bytes, at "
                               f"least the {path_max} (PATH_MAX) of its folder")
    try:  # the only sure test that the temporary file can be made: make it (and remove it)
        handle = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        raise ParconvError(f"{flag} {shown}: cannot create a file in folder {folder} "
                           f"({exc.strerror})") from exc
    os.close(handle)
    os.remove(temporary)
    return OutputTarget(flag, path, target, temporary)


def _same_file(a: str, b: str) -> bool:
    if resolve(a) == resolve(b):
        return True
    try:
        return os.path.samefile(a, b)  # hard links, bind mounts
    except OSError:
        return False


def check_outputs(outputs: dict, inputs: dict | None = None) -> dict:
    """Check output paths before any work; return ``{flag: OutputTarget}``.  Local.

    Parameters
    ----------
    outputs : dict
        ``{flag: path or None}`` of the files to write, e.g. ``{"--output": "out.h5"}``.
    inputs : dict, optional
        ``{flag: path or None}`` of files that are read; no output may name one of them.

    Raises
    ------
    ParconvError
        An empty name, a directory, a missing or unwritable folder, an existing file that is not
        a regular file or is read-only, a name longer than NAME_MAX or a path reaching PATH_MAX
        (the temporary name's too), or two flags naming the same file (compared after following
        symlinks, and by inode when both exist, so hard links count).
    """
    given = [(flag, path) for flag, path in outputs.items() if path is not None]
    read = [(flag, path) for flag, path in (inputs or {}).items() if path is not None]
    everything = given + read
    for i, (flag_a, path_a) in enumerate(everything):
        for flag_b, path_b in everything[i + 1:]:
            if i < len(given) and _same_file(path_a, path_b):
                raise ParconvError(f"{flag_a} {path_a} and {flag_b} {path_b} name the same file; "
                                   f"give {flag_a} a file of its own")
    return {flag: _check_one(flag, path) for flag, path in given}


def check_space(target: OutputTarget, need: int) -> None:
    """Refuse before any work an output of `need` bytes that cannot fit.  Local.

    Looks at the free space of the target's file system (``statvfs``) and at the file size limit
    of this process (``ulimit -f``).  Quotas are not visible here; a write that hits one fails
    later with a clear error all the same (parconv.mpi.outputs reserves the space first).

    Raises
    ------
    ParconvRuntimeError
        With the bytes needed and available.
    """
    import resource
    soft, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
    if soft != resource.RLIM_INFINITY and soft < need:
        raise ParconvRuntimeError(f"{target.flag} {target.path}: the file needs {need} bytes but "
                                  f"this process may write files of at most {soft} bytes "
                                  f"(ulimit -f)")
    folder = os.path.dirname(target.target)
    info = os.statvfs(folder)
    free = info.f_bavail * info.f_frsize
    old = os.path.getsize(target.target) if os.path.exists(target.target) else 0
    if free < need:
        raise ParconvRuntimeError(f"{target.flag} {target.path}: the file needs {need} bytes, "
                                  f"the file system of {folder} has {free} bytes free"
                                  + (f" (the old file's {old} bytes are freed only after the new "
                                     f"one is complete)" if old else ""))


# ---- leftovers of runs that died ---------------------------------------------------------

def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, belongs to someone else
    return True


def remove_stale(folder: str) -> list[str]:
    """Remove parconv temporary files in `folder` whose writer (on this host) has died.  Local.

    Files of other hosts (a shared file system) and of live processes are kept: they may be a
    run in progress.  Returns the paths removed.
    """
    removed = []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    here, me = host_tag(), os.getpid()
    for name in names:
        match = _TEMP_PATTERN.match(name)
        if match is None or match.group(1) != here:
            continue
        pid = int(match.group(2))
        if pid == me or _alive(pid):
            continue
        path = os.path.join(folder, name)
        try:
            os.remove(path)
        except OSError:
            continue
        removed.append(path)
    return removed
