"""What a KFP component body calls: parse the config, run the stage, report user errors.

Components stay thin (see ``components/``); this is the one place that turns a stage's
:class:`UserError` into something the local runner can show as a one-line ``error:``: the message
is written to ``$RIGHTSIZER_ERROR_FILE`` when that is set, then the task fails.

In a local run it also tells the console when the stage starts and ends (:mod:`rightsizer.progress`)
and keeps a record of every finished stage task under ``$RIGHTSIZER_RESUME_DIR``: a resumed run
(``rightsizer run --resume``) copies a recorded task's output instead of running it again, and a
training task killed half-way resumes from the checkpoints in its record's work directory.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rightsizer import candidates, plan, progress
from rightsizer.config import config_from_json
from rightsizer.errors import UserError
from rightsizer.timing import busy

ERROR_FILE_ENV = "RIGHTSIZER_ERROR_FILE"
RESUME_ENV = "RIGHTSIZER_RESUME_DIR"


def _is_path_argument(key: str) -> bool:
    return key.endswith(("_dir", "_dirs"))


def _identity(stage: str, kwargs: dict[str, Any]) -> tuple[str, str]:
    """(console label, record key) of a task: its stage, name/kind/layers, and which inputs it read."""
    named = [str(v) for k, v in sorted(kwargs.items()) if not _is_path_argument(k) and v not in (None, "")]
    inputs, seed = [], kwargs.get("seed")  # a training task given its seed: one of a candidate's several seeds
    evaluated = None  # an evaluation without a name: what its candidate_dir's summary says it is
    for key, value in sorted(kwargs.items()):
        if key == "output_dir" or not _is_path_argument(key):
            continue
        for path in value if isinstance(value, (list, tuple)) else [value]:
            if path is None:
                continue
            summary = Path(path) / "summary.json"
            try:
                stamp = json.loads(summary.read_text())
                inputs.append(f"{stamp.get('stage')}:{stamp.get('name')}")
                if stage == "evaluate" and key == "candidate_dir" and not kwargs.get("name"):
                    quantized = stamp.get("stage") == "quantize"
                    evaluated = f"{stamp.get('name')}{' quantized' if quantized else ''}"
                    if stamp.get("stage") in candidates.SEEDED_STAGES:
                        seed = stamp.get("seed")  # one seed's run (only the pipeline's seed loops leave out the name)
            except (OSError, ValueError):
                inputs.append(key)
    row = plan.of_module(stage)
    word = row.name if row else stage  # the stage's CLI name: teacher-logits, fold-teacher
    shown = [str(kwargs["name"])] if kwargs.get("name") else named  # "evaluate lora-qv", not its kind too
    label = " ".join(dict.fromkeys([word, *shown])) if shown else word
    if evaluated is not None:  # slices, seeds' runs and quantized forms are named by their own summary
        label = f"evaluate {evaluated}"
    if seed is not None:
        label += f" seed {seed}"
    digest = hashlib.sha256(json.dumps([stage, named, sorted(inputs)]).encode()).hexdigest()[:12]
    key = re.sub(r"[^A-Za-z0-9._-]+", "-", label)[:60] + "-" + digest
    return label, key


def _copy_tree(source: Path, target: Path) -> None:
    def link_or_copy(src, dst):
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    shutil.copytree(source, target, dirs_exist_ok=True, copy_function=link_or_copy)


def _run(stage_run: Callable[..., Any], config, kwargs: dict[str, Any]) -> Any:
    if getattr(stage_run, "times_itself", False):
        return stage_run(config, **kwargs)
    with busy():  # a local run's timings wait for this stage (see rightsizer.timing)
        return stage_run(config, **kwargs)


def call(stage_run: Callable[..., Any], config_json: str, **kwargs: Any) -> Any:
    stage = stage_run.__module__.rsplit(".", 1)[-1]
    label, key = _identity(stage, kwargs)
    os.environ[progress.CURRENT_LABEL_ENV] = label
    records = os.environ.get(RESUME_ENV)
    record = Path(records) / key if records else None
    if progress.stop_requested():  # the run is stopping (an error elsewhere, Ctrl-C): start nothing new
        raise SystemExit(3)
    started = time.time()
    progress.emit("start", label=label, stage=stage)
    try:
        config = config_from_json(config_json)
        if record is not None and (record / "result.json").exists():
            _copy_tree(record / "output", Path(kwargs["output_dir"]))
            result = json.loads((record / "result.json").read_text())
            progress.emit("done", label=label, stage=stage, reused=True, headline=progress.headline(stage, result))
            return result
        if record is None:
            result = _run(stage_run, config, kwargs)
        else:  # run inside the record, so a killed task leaves its checkpoints where a resumed run looks
            target = Path(kwargs["output_dir"])
            kwargs = {**kwargs, "output_dir": record / "output"}
            result = _run(stage_run, config, kwargs)
            _copy_tree(record / "output", target)
            tmp = record / "result.json.tmp"
            tmp.write_text(json.dumps(result, default=str))
            os.replace(tmp, record / "result.json")
    except UserError as exc:
        path = os.environ.get(ERROR_FILE_ENV)
        if path:
            with open(path, "a") as handle:
                handle.write(f"{exc}\n")
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    progress.emit("done", label=label, stage=stage, seconds=round(time.time() - started, 1),
                  headline=progress.headline(stage, result))
    return result
