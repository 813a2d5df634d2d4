"""Stage: teacher logits. Gather every trained teacher for the students and cache their logits once.

It runs between the teachers and the students (in KFP it is the one task that sees all teachers,
through ``dsl.Collected``) and writes a *teacher bundle* that every student task reads:

- ``teachers.json``: the teachers in config order (name, label names, validation scores, model dir);
- ``teacher_logits.safetensors``: ``ids`` (N,) int64 example ids of the training split and ``logits``
  (N, teachers, classes) float32, computed once with no grad, in length-sorted large batches with
  dynamic padding. Students look their rows up by id, so each may tokenize the text its own way;
- ``teachers/<name>/model/``: the teachers themselves (hard-linked where possible), only when a student
  needs them: online distillation (hidden-state matching) or ``from_teacher_layers``.
"""

from __future__ import annotations

import gc
import os
import shutil
import time
from pathlib import Path

import numpy as np

from rightsizer.config import RunConfig
from rightsizer.data import load_prepared
from rightsizer.errors import UserError
from rightsizer.inference import predict_logits
from rightsizer.models import load_saved, saved_label_names
from rightsizer.outputs import read_json, stage_output, write_json

MANIFEST = "teachers.json"
LOGITS_FILE = "teacher_logits.safetensors"


def check_labels(what: str, model_labels: list[str], data_labels: list[str]) -> None:
    if list(model_labels) != list(data_labels):
        raise UserError(
            f"{what} predicts {len(model_labels)} label(s) {model_labels} but the data has {len(data_labels)} "
            f"{list(data_labels)}; teachers and students must share one label set (train the teacher on this data)")


def read_teachers(config: RunConfig, teacher_dirs: list[str | Path], label_names: list[str]) -> list[dict]:
    """Each teacher stage output as ``{name, dir, summary}``, in config order, labels checked."""
    found: dict[str, dict] = {}
    for directory in map(Path, teacher_dirs):
        if not (directory / "model").is_dir() or not (directory / "summary.json").exists():
            raise UserError(f"'{directory}' is not a teacher stage output (needs model/ and summary.json)")
        summary = read_json(directory / "summary.json")
        name = summary.get("name") or directory.name
        if name in found:
            raise UserError(f"two teacher outputs are named '{name}'; give each teacher once")
        check_labels(f"teacher '{name}'", saved_label_names(directory / "model"), label_names)
        found[name] = {"name": name, "dir": directory, "summary": summary}
    if not found:
        raise UserError("no teachers given; distillation needs at least one trained teacher")
    order = [t.name for t in config.teachers]
    return sorted(found.values(), key=lambda t: (order.index(t["name"]) if t["name"] in order else len(order), t["name"]))


def _link_tree(source: Path, target: Path) -> None:
    """Copy a directory, hard-linking files when source and target share a file system."""
    def link_or_copy(src, dst):
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    shutil.copytree(source, target, copy_function=link_or_copy)


def teacher_pass(model_dir: Path, split, max_length: int, batch_size: int) -> tuple[np.ndarray, float]:
    """Logits of one saved teacher over ``split`` and the seconds the pass took."""
    import torch

    model, tokenizer = load_saved(model_dir)
    if torch.cuda.is_available():
        model.to("cuda")
    logits, seconds, _ = predict_logits(model, tokenizer, split, max_length, batch_size)
    del model
    gc.collect()
    return logits, seconds


def run(config: RunConfig, data_dir: str | Path, teacher_dirs: list[str | Path], output_dir: str | Path) -> dict:
    from safetensors.numpy import save_file

    dataset, card = load_prepared(data_dir)
    teachers = read_teachers(config, teacher_dirs, card["label_names"])
    students = config.students
    need_logits = not students or any(not s.online for s in students)
    need_models = any(s.online or s.from_teacher_layers is not None for s in students)
    train = dataset["train"]
    with stage_output(output_dir, "teacher-logits", config, name="teacher-logits") as out:
        entries, seconds = [], {}
        for teacher in teachers:
            entry = {"name": teacher["name"], "validation": teacher["summary"].get("validation", {}),
                     "params": teacher["summary"].get("params"), "source": teacher["summary"].get("model"),
                     "model_dir": None}
            if need_models:
                _link_tree(teacher["dir"] / "model", out.work / "teachers" / teacher["name"] / "model")
                entry["model_dir"] = f"teachers/{teacher['name']}/model"
            entries.append(entry)
        if need_logits:
            stacked = []
            for teacher in teachers:
                options = next((t for t in config.teachers if t.name == teacher["name"]), None)
                batch_size = max(options.eval_batch_size if options else 0, config.evaluation.batch_size)
                logits, seconds[teacher["name"]] = teacher_pass(teacher["dir"] / "model", train,
                                                                config.data.max_length, batch_size)
                stacked.append(logits)
            save_file({"ids": np.asarray(train["id"], dtype=np.int64), "logits": np.stack(stacked, axis=1)},
                      str(out.work / LOGITS_FILE))
        manifest = {"teachers": entries, "label_names": card["label_names"], "train_rows": len(train),
                    "logits": LOGITS_FILE if need_logits else None, "teacher_pass_s": round(sum(seconds.values()), 4),
                    "teacher_pass_s_each": {k: round(v, 4) for k, v in seconds.items()}}
        write_json(out.work / MANIFEST, manifest)
        out.summary.update({"kind": "teacher-logits", "teachers": [t["name"] for t in teachers],
                            "cached_logits": need_logits, "teacher_models": need_models, "train_rows": len(train),
                            "teacher_pass_s": manifest["teacher_pass_s"]})
    return out.summary


# ---------------------------------------------------------------------------------------------
# reading a bundle (used by the distill stage)


def read_bundle(bundle_dir: str | Path, label_names: list[str]) -> dict:
    bundle_dir = Path(bundle_dir)
    if not (bundle_dir / MANIFEST).exists():
        raise UserError(f"'{bundle_dir}' is not a teacher-logits stage output (no {MANIFEST}); "
                        "run `rightsizer stage teacher-logits` first")
    manifest = read_json(bundle_dir / MANIFEST)
    check_labels("the teachers", manifest["label_names"], label_names)
    manifest["dir"] = bundle_dir
    return manifest


def teacher_model_dir(bundle: dict, name: str) -> Path:
    entry = next((t for t in bundle["teachers"] if t["name"] == name), None)
    if entry is None:
        raise UserError(f"teacher '{name}' is not in the teacher bundle (it has: {', '.join(t['name'] for t in bundle['teachers'])})")
    if entry["model_dir"] is None:
        raise UserError(f"the teacher bundle '{bundle['dir']}' was made without teacher models; rerun the "
                        "teacher-logits stage with this config (it keeps them when a student needs them)")
    return Path(bundle["dir"]) / entry["model_dir"]


def cached_logits(bundle: dict, ids) -> np.ndarray:
    """(len(ids), teachers, classes) teacher logits for these example ids."""
    from safetensors.numpy import load_file

    if bundle.get("logits") is None:
        raise UserError(f"the teacher bundle '{bundle['dir']}' has no cached logits; rerun the teacher-logits stage "
                        "with this config")
    stored = load_file(str(Path(bundle["dir"]) / bundle["logits"]))
    row_of = {int(i): row for row, i in enumerate(stored["ids"])}
    missing = [int(i) for i in ids if int(i) not in row_of]
    if missing:
        raise UserError(f"{len(missing)} training example(s) (e.g. id {missing[0]}) have no cached teacher logits; "
                        "the teacher bundle was made from different data; rerun the teacher-logits stage on this data")
    return stored["logits"][[row_of[int(i)] for i in ids]]
