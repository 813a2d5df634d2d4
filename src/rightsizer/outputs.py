"""Stage output directories: written to a hidden work dir, renamed into place when complete.

A crash leaves the final directory untouched (no half-written output) and keeps the work dir, so
a training stage that is run again resumes from its last checkpoint instead of starting over.
Every stage's ``summary.json`` says what made it: rightsizer version, git commit, resolved config.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rightsizer import __version__
from rightsizer.errors import UserError
from rightsizer.records import StageSummary


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def provenance(config=None) -> dict[str, Any]:
    stamp: dict[str, Any] = {"rightsizer_version": __version__, "git_commit": os.environ.get("RIGHTSIZER_GIT_COMMIT") or git_commit()}
    if config is not None:
        stamp["config"] = config.model_dump(mode="json")
    return stamp


def process_rank() -> int:
    """This process's global rank under torchrun (0 when not distributed)."""
    return int(os.environ.get("RANK", "0") or 0)


def world_size() -> int:
    """Processes in this distributed run (1 when not distributed)."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def local_world_size() -> int:
    """Processes on this node (torchrun's LOCAL_WORLD_SIZE; the world size when it is not set)."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", "") or world_size())


def same_on_every_rank(build):
    """``build()`` on rank 0, its result on every rank (plain ``build()`` outside a distributed run).

    For things that differ between processes although they should not — training a WordPiece/BPE
    tokenizer is not deterministic — so every rank (and every node) trains with the same one. Starts the
    process group the HF Trainer would start (NCCL on GPUs, gloo on CPU); the Trainer then reuses it.
    """
    if world_size() <= 1:
        return build()
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
            dist.init_process_group("nccl")
        else:
            dist.init_process_group("gloo")
    box = [build() if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _barrier() -> None:
    """Wait for every rank, when this is one process of a distributed run."""
    if world_size() > 1:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.barrier()


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically. In a multi-process run only rank 0 writes (the others return)."""
    if process_rank() != 0:
        return
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    os.replace(tmp, path)


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


@dataclass
class StageOutput:
    final: Path
    work: Path
    summary: dict[str, Any] = field(default_factory=dict)


def work_dir_for(final: Path) -> Path:
    return final.with_name(f".{final.name}.partial")


@contextmanager
def stage_output(output_dir: str | Path, stage: str, config=None, name: str | None = None):
    """Yield a :class:`StageOutput`; on success write summary.json and move the work dir into place.

    Under torchrun every rank shares the work dir (checkpoints need it) but only rank 0 finishes it: the
    ranks meet at a barrier, then rank 0 writes summary.json and renames; the others leave it alone.
    """
    final = Path(output_dir)
    if final.exists() and final.is_dir() and any(final.iterdir()) and not (final / "summary.json").exists():
        raise UserError(f"output directory '{final}' exists and is not a rightsizer stage output; choose another")
    work = work_dir_for(final)
    try:
        work.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        from rightsizer.rundir import fs_error

        raise fs_error(exc, final) from None
    out = StageOutput(final, work)
    started = time.time()
    try:
        yield out
    except UserError:
        if process_rank() == 0:
            shutil.rmtree(work, ignore_errors=True)
        raise
    _barrier()
    if process_rank() != 0:
        return
    summary = {"stage": stage, "name": name, **out.summary, "duration_s": round(time.time() - started, 2),
               "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **provenance(config)}
    StageSummary.model_validate(summary)  # the fields every reader relies on, typed
    write_json(work / "summary.json", summary)
    shutil.rmtree(work / "checkpoints", ignore_errors=True)
    if final.exists():
        shutil.rmtree(final) if final.is_dir() else final.unlink()
    final.parent.mkdir(parents=True, exist_ok=True)
    os.replace(work, final)
    out.summary = summary
