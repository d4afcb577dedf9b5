"""The files a run writes (``--output`` HDF5, ``--report`` JSON): checked before any work,
written through temporary files, put in place together at the end.

Order at the end of a run, chosen so that a run that fails leaves every existing file as it was
and a run that succeeds leaves both new files:

1. every rank writes its part of the output into the output's temporary file, which rank 0
   created with its disk space reserved; rank 0 syncs it to disk;
2. rank 0 writes the report into the report's temporary file and syncs it;
3. rank 0 renames the report's temporary file onto the report (keeping a hard link to the old
   report first), then the output's onto the output;
4. if the output's rename fails, the old report is put back (or the new one removed when there
   was none): the run fails with both old files intact.

Steps 1 and 2 are where a full disk, a quota or a crash can strike; they touch only temporary
files.  Step 3 is two renames in folders already proven writable, the output's last, so that no
failure can leave a new output next to a destroyed old one (or a new output whose report failed).
On a file system without hard links the old report cannot be put back in step 4 (the error says
so).
"""

from __future__ import annotations

import json
import os
import sys

from .. import paths
from ..errors import ParconvError, ParconvRuntimeError
from ..report import to_jsonable
from .agree import collectively
from .h5write import write_output_temporary


def _say_removed(removed: list[str]) -> None:
    for path in removed:
        sys.stderr.write(f"parconv: removed {path}, a temporary file left by an earlier run that "
                         f"ended without cleaning up\n")
    sys.stderr.flush()


def prepare_outputs(comm, outputs: dict, inputs: dict, sizes: dict | None = None) -> dict:
    """Check the output paths on rank 0 and tell every rank the verdict.  Collective over `comm`.

    Rank 0 also removes the temporary files of dead earlier runs in the output folders (saying so
    on stderr) and checks the free space and file size limit for the sizes known in advance.

    Parameters
    ----------
    outputs : dict
        ``{flag: path or None}``, e.g. ``{"--output": ..., "--report": ...}``.
    inputs : dict
        ``{flag: path or None}`` of files read; outputs must differ from them.
    sizes : dict, optional
        ``{flag: bytes}`` each output will need.

    Returns
    -------
    dict
        ``{flag: paths.OutputTarget}`` for the outputs given, the same on every rank.

    Raises
    ------
    ParconvError
        A bad path (parconv.paths.check_outputs), on every rank.
    ParconvRuntimeError
        Not enough space or a file size limit too low, on every rank.
    """
    targets, problem = None, None
    if comm.Get_rank() == 0:
        try:
            targets = paths.check_outputs(outputs, inputs)
            for folder in sorted({os.path.dirname(t.target) for t in targets.values()}):
                _say_removed(paths.remove_stale(folder))
            for flag, need in (sizes or {}).items():
                if flag in targets:
                    paths.check_space(targets[flag], need)
        except (ParconvError, ParconvRuntimeError) as exc:
            problem = (isinstance(exc, ParconvError), str(exc))
    targets, problem = comm.bcast((targets, problem), root=0)  # meta
    if problem is not None:
        raise (ParconvError if problem[0] else ParconvRuntimeError)(problem[1])
    return targets


def _write_report_file(report: dict, path: str) -> None:
    paths.register(path)
    try:
        with open(path, "x", encoding="utf-8") as handle:
            json.dump(to_jsonable(report), handle, indent=1)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as exc:
        raise ParconvRuntimeError(f"writing the report {path} failed: {exc.strerror}") from exc


def _copy_mode(target: str, temporary: str) -> None:
    """A replaced file keeps its permission bits."""
    if os.path.exists(target):
        os.chmod(temporary, os.stat(target).st_mode & 0o7777)


def _put_in_place(output, report) -> None:
    """Step 3 and 4 of the module docstring, on rank 0.  Local."""
    backup = None
    if report is not None:
        _copy_mode(report.target, report.temporary)
        if os.path.exists(report.target):
            backup = paths.temporary_name(report.target, "old report")
            try:
                os.link(report.target, backup)
                paths.register(backup)
            except OSError:
                backup = None
        report_existed = os.path.exists(report.target)
        os.replace(report.temporary, report.target)
        paths.unregister(report.temporary)
    try:
        if output is not None:
            _copy_mode(output.target, output.temporary)
            os.replace(output.temporary, output.target)
            paths.unregister(output.temporary)
    except OSError as exc:
        restored = "the old report was put back"
        if report is not None:
            if backup is not None:
                os.replace(backup, report.target)
                paths.unregister(backup)
            elif not report_existed:
                paths.remove_quietly(report.target)
            else:
                restored = f"the report {report.path} is new (no hard links to keep the old one)"
        raise ParconvRuntimeError(f"renaming the output into place failed ({exc.strerror}); "
                                  f"the old output is unchanged, {restored}") from exc
    finally:
        if backup is not None:
            paths.remove_quietly(backup)


def write_outputs(comm, targets: dict, plan, result, report: dict) -> None:
    """Write ``--output`` and ``--report`` as the module docstring says.  Collective over `comm`.

    Parameters
    ----------
    targets : dict
        From `prepare_outputs`.
    plan, result
        The plan and the engine's result (``output_piece``/``output_boxes`` on every rank).
    report : dict
        The report (rank 0's is written).

    Raises
    ------
    ParconvRuntimeError
        A failed write or rename, on every rank; no temporary file is left and the existing
        files are as they were.
    """
    output, rep = targets.get("--output"), targets.get("--report")
    rank = comm.Get_rank()
    try:
        if output is not None:
            write_output_temporary(comm, output.temporary, plan, result)
        with collectively(comm):
            if rank == 0:
                if rep is not None:
                    _write_report_file(report, rep.temporary)
                _put_in_place(output, rep)
    except BaseException:
        if rank == 0:
            for target in (output, rep):
                if target is not None:
                    paths.remove_quietly(target.temporary)
        raise

