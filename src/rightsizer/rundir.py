"""The run directory of ``rightsizer run``: whose it is, what may be deleted, how a run resumes.

rightsizer deletes only what it wrote. A directory it creates for a run holds a marker file,
``.rightsizer-run.json``, naming the entries it wrote; ``--overwrite`` replaces a directory only when
it holds that marker and nothing else beside those entries, and data or a config that lives inside the
output directory is refused up front. While a run is in progress the directory holds its work
(``.kfp/``: the local pipeline root; ``.resume/``: every finished stage task's output, the records
``--resume`` reuses) and ``run.log`` (everything KFP and the stages print); a finished run keeps only
the report, ``stages/`` and ``run.log``.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from rightsizer import __version__
from rightsizer.errors import UserError

MARKER = ".rightsizer-run.json"
WORK_ENTRIES = (".kfp", ".resume", "run.log")  # what a run in progress writes beside the marker


def fs_error(exc: OSError, path: Path | str, what: str = "output") -> UserError:
    """A one-line error for a file-system failure on a path the user chose."""
    reasons = {errno.EROFS: "the file system is read-only", errno.EACCES: "permission denied",
               errno.EPERM: "operation not permitted", errno.ENOTDIR: "a parent of it is a file, not a directory",
               errno.ENOSPC: "no space left on the device", errno.EEXIST: "a file of that name is in the way",
               errno.ENOENT: "a parent directory cannot be created there"}
    reason = reasons.get(exc.errno, exc.strerror or type(exc).__name__)
    return UserError(f"cannot write {what} '{path}': {reason}; choose a writable location")


def read_marker(directory: Path) -> dict | None:
    try:
        return json.loads((directory / MARKER).read_text())
    except (OSError, ValueError):
        return None


def _write_marker(directory: Path, marker: dict) -> None:
    tmp = directory / (MARKER + ".tmp")
    tmp.write_text(json.dumps(marker, indent=2))
    os.replace(tmp, directory / MARKER)


def _inside(path: Path, directory: Path) -> bool:
    try:
        path.resolve().relative_to(directory.resolve())
        return True
    except (ValueError, OSError):
        return False


@dataclass
class RunDir:
    """A claimed run directory. ``resuming``: earlier stage records are reused."""

    path: Path
    created: bool
    resuming: bool
    config_json: str

    @property
    def pipeline_root(self) -> Path:
        return self.path / ".kfp"

    @property
    def resume_dir(self) -> Path:
        return self.path / ".resume"

    @property
    def log(self) -> Path:
        return self.path / "run.log"

    def mark(self, status: str) -> None:
        entries = sorted(p.name for p in self.path.iterdir() if p.name not in (MARKER, MARKER + ".tmp"))
        _write_marker(self.path, {"rightsizer_version": __version__, "status": status, "entries": entries,
                                  "updated_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "config": json.loads(self.config_json)})

    def finished_records(self) -> int:
        return sum(1 for p in self.resume_dir.glob("*/result.json")) if self.resume_dir.is_dir() else 0

    def discard(self) -> None:
        """Remove everything this run wrote (only our entries: foreign ones were refused up front)."""
        for entry in list(self.path.iterdir()) if self.path.is_dir() else []:
            shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
        if self.created:
            self.path.rmdir()

    def finish(self) -> None:
        """The run is complete: drop the work, keep the results, record what is ours."""
        for name in (".kfp", ".resume"):
            shutil.rmtree(self.path / name, ignore_errors=True)
        self.mark("complete")


def claim(output: Path, config_json: str, *, overwrite: bool, resume: bool, inputs: list[Path],
          command: str = "rightsizer run CONFIG") -> RunDir:
    """Check ``output`` may hold this run, clear a previous run on --overwrite, and mark it ours.

    Everything is decided before anything is deleted: a foreign non-empty directory, a file in the way,
    inputs inside the directory, or a run there without --overwrite/--resume are refused.
    """
    if overwrite and resume:
        raise UserError("--overwrite starts over and --resume continues; give one of them")
    if output.exists() and not output.is_dir():
        raise UserError(f"output '{output}' exists and is a file; give a directory with --output")
    for path in inputs:
        if output.exists() and _inside(path, output):
            raise UserError(f"'{path}' is inside the output directory '{output}'; rightsizer never writes where its "
                            "inputs are: choose another --output")
    created = not output.exists()
    try:
        entries = sorted(p.name for p in output.iterdir()) if not created else []
    except OSError as exc:
        raise fs_error(exc, output) from None
    marker = read_marker(output) if entries else None
    resuming = False
    if entries:
        if marker is None:
            raise UserError(f"output directory '{output}' is not empty and was not written by rightsizer (no {MARKER}); "
                            "rightsizer never deletes what it did not write: choose a new or empty --output")
        ours = set(marker.get("entries", [])) | set(WORK_ENTRIES) | {MARKER, MARKER + ".tmp"}
        foreign = sorted(set(entries) - ours)
        status = marker.get("status", "unknown")
        if resume:
            if status == "complete":
                raise UserError(f"'{output}' holds a finished run; nothing to resume (--overwrite runs it again)")
            if marker.get("config") != json.loads(config_json):
                changed = _changed_keys(marker.get("config") or {}, json.loads(config_json))
                raise UserError(f"the config differs from the one the run in '{output}' started with "
                                f"({', '.join(changed[:5]) or 'changed'}); resume needs the same config, or pass --overwrite")
            resuming = True
            shutil.rmtree(output / ".kfp", ignore_errors=True)  # the killed run's pipeline root; .resume is what counts
        elif overwrite:
            if foreign:
                raise UserError(f"'{output}' holds files rightsizer did not write ({', '.join(foreign[:5])}); "
                                "move them out or choose another --output")
            for name in entries:
                entry = output / name
                shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
        else:
            way_out = "--resume to continue it, " if status != "complete" else ""
            raise UserError(f"'{output}' already holds a rightsizer run ({status}); pass --overwrite to replace it, "
                            f"{way_out}or choose another --output")
    try:
        output.mkdir(parents=True, exist_ok=True)
        run_dir = RunDir(output, created, resuming, config_json)
        run_dir.mark("running")
    except OSError as exc:
        if created and output.is_dir():
            shutil.rmtree(output, ignore_errors=True)
        raise fs_error(exc, output) from None
    return run_dir


def _changed_keys(old: dict, new: dict, prefix: str = "") -> list[str]:
    keys = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            keys += _changed_keys(a, b, f"{prefix}{key}.")
        elif a != b:
            keys.append(f"{prefix}{key}")
    return keys
