"""Stage: teacher logits. Gather every trained teacher for the students and cache their logits once.

It runs between the teachers and the students (in KFP it is the one task that sees all teachers,
through ``dsl.Collected``) and writes a *teacher bundle* that every student task reads:

- ``teachers.json``: the teachers in config order (name, label names, validation scores, model dir);
- ``teacher_logits.safetensors``: ``ids`` (N,) int64 example ids of the training split and ``logits``
  (N, teachers, classes) float32, computed once with no grad, in length-sorted large batches with
  dynamic padding. Students look their rows up by id, so each may tokenize the text its own way;
  With out-of-fold students it also holds ``oof_logits`` (N, teachers, classes): each row's logits from the
  fold teacher that did not train on it (stitched from the fold-teacher stage outputs, checked by id);
- ``transfer-<key>/``: a transfer set per distinct student ``augment`` setting and labelling (unlabeled text and
  augmented copies of the training texts, each copy with its source row's id in ``origin_id``) with soft targets
  in a ``teacher_logits`` column. For in-sample students every row is labelled by the full-data teachers. For
  out-of-fold students each augmented copy of training row i is labelled by the fold teacher (of each teacher)
  that held row i out, the one giving row i its own target (the full-data teacher trained on row i, so its targets
  on near-copies are nearly one-hot); unlabeled text keeps the full-data teachers' targets (no teacher trained on
  it). The labelling is part of the set's key and recorded in its manifest entry (``labels``);
- ``teachers/<name>/model/``: the teachers themselves (hard-linked where possible), only when a student
  needs them: online distillation (hidden-state matching) or ``from_teacher_layers``.

The manifest carries a fingerprint of the training split (and of each transfer set): a student refuses a
bundle made from other data.
"""

from __future__ import annotations

import gc
import os
import shutil
import time
from pathlib import Path

import numpy as np

from rightsizer.config import RunConfig
from rightsizer.data import load_prepared, load_unlabeled
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
    """Each teacher stage output as ``{name, dir, summary}``, in config order, labels checked (fold teachers skipped;
    a teacher trained with several seeds is taken from its first seed's run, the others skipped)."""
    from rightsizer import candidates

    first_seeds = {c.name: c.seed for c in candidates.teachers(config)}
    found: dict[str, dict] = {}
    for directory in map(Path, teacher_dirs):
        if is_fold_output(directory):
            continue
        if not (directory / "model").is_dir() or not (directory / "summary.json").exists():
            raise UserError(f"'{directory}' is not a teacher stage output (needs model/ and summary.json)")
        summary = read_json(directory / "summary.json")
        name = summary.get("name") or directory.name
        if summary.get("seed") is not None and name in first_seeds and summary["seed"] != first_seeds[name]:
            continue  # a later seed's run: it has its own leaderboard row, the students learn from the first
        if name in found:
            raise UserError(f"two teacher outputs are named '{name}'; give each teacher once")
        check_labels(f"teacher '{name}'", saved_label_names(directory / "model"), label_names)
        found[name] = {"name": name, "dir": directory, "summary": summary}
    if not found:
        raise UserError("no teachers given; distillation needs at least one trained teacher")
    order = [t.name for t in config.teachers]
    return sorted(found.values(), key=lambda t: (order.index(t["name"]) if t["name"] in order else len(order), t["name"]))


def is_fold_output(directory: Path) -> bool:
    return (directory / "summary.json").exists() and read_json(directory / "summary.json").get("kind") == "fold-teacher"


def fold_outputs(config: RunConfig, teachers: list[dict], fold_dirs: list[Path], train,
                 need_models: bool = False) -> dict[str, dict[int, Path]]:
    """Each teacher's fold-teacher outputs by fold, checked: made from this training split with this fold count,
    none missing, and (``need_models``) each with its model kept."""
    from rightsizer.stages.fold_teacher import fold_count
    from rightsizer.train.transfer import fingerprint

    folds, train_print = fold_count(config), fingerprint(train)
    by_teacher: dict[str, dict[int, Path]] = {}
    for directory in fold_dirs:
        summary = read_json(directory / "summary.json")
        if summary.get("train_fingerprint") != train_print or summary.get("folds") != folds:
            raise UserError(f"fold teacher output '{directory}' was made from other training data or another fold "
                            f"count (folds {summary.get('folds')}, this run {folds}); rerun the fold-teacher stage")
        by_teacher.setdefault(summary["teacher"], {})[int(summary["fold"])] = directory
    for teacher in teachers:
        outputs = by_teacher.get(teacher["name"], {})
        missing = sorted(set(range(folds)) - set(outputs))
        if missing:
            raise UserError(f"out-of-fold targets need {folds} fold teachers of '{teacher['name']}'; fold(s) "
                            f"{', '.join(map(str, missing))} missing (run `rightsizer stage fold-teacher --fold K`)")
        without = [str(d) for _, d in sorted(outputs.items()) if need_models and not (d / "model").is_dir()]
        if without:
            raise UserError(f"fold teacher output '{without[0]}' kept no model, and an out-of-fold student's augmented "
                            "copies are labelled by the fold teachers; rerun the fold-teacher stage with this config")
    return by_teacher


def stitch_out_of_fold(by_teacher: dict[str, dict[int, Path]], teachers: list[dict], train) -> tuple[np.ndarray, dict]:
    """(N, teachers, classes) out-of-fold logits in training-row order, and each teacher's fold training seconds.

    Every training row must be predicted exactly once per teacher, by a fold teacher whose training ids exclude it.
    """
    from safetensors.numpy import load_file

    from rightsizer.stages.fold_teacher import OOF_FILE

    row_of = {int(i): row for row, i in enumerate(train["id"])}
    stacked, seconds = [], {}
    for teacher in teachers:
        outputs = by_teacher[teacher["name"]]
        logits = np.full((len(row_of), 0), np.nan, dtype=np.float32)
        seen = np.zeros(len(row_of), dtype=bool)
        seconds[teacher["name"]] = 0.0
        for fold, directory in sorted(outputs.items()):
            stored = load_file(str(directory / OOF_FILE))
            held = [row_of[int(i)] for i in stored["ids"]]
            if set(map(int, stored["ids"])) & set(map(int, stored["trained_ids"])):
                raise UserError(f"fold teacher output '{directory}' trained on rows it predicts; rerun it")
            if logits.shape[1] == 0:
                logits = np.full((len(row_of), stored["logits"].shape[1]), np.nan, dtype=np.float32)
            if seen[held].any():
                raise UserError(f"fold teacher outputs of '{teacher['name']}' predict some rows twice; rerun them")
            logits[held], seen[held] = stored["logits"], True
            seconds[teacher["name"]] += float(read_json(directory / "summary.json").get("train_time_s", 0.0))
        if not seen.all():
            raise UserError(f"the fold teachers of '{teacher['name']}' leave {int((~seen).sum())} training rows "
                            "without a target; rerun them on this prepared data")
        stacked.append(logits)
    return np.stack(stacked, axis=1), seconds


def build_transfer_set(config: RunConfig, augment, train, unlabeled, first_teacher_dir: Path):
    """The transfer set (``datasets.Dataset``) for one augment setting, without logits, and how it was made."""
    import datasets

    from rightsizer.train.transfer import IGNORE_LABEL, augmented_copies, masked_lm_augmenter

    pair = "text_pair" in train.column_names
    columns: dict[str, list] = {"text": [], "label": [], "origin_id": [], **({"text_pair": []} if pair else {})}
    facts: dict = {"unlabeled_rows": 0, "augmented_rows": 0, "augmenter": None}
    if unlabeled is not None:
        columns["text"] += list(unlabeled["text"])
        if pair:
            columns["text_pair"] += list(unlabeled["text_pair"])
        columns["label"] += [IGNORE_LABEL] * len(unlabeled)
        columns["origin_id"] += [-1] * len(unlabeled)
        facts["unlabeled_rows"] = len(unlabeled)
    if augment.active:
        augmenter = None
        if augment.method == "mlm":
            reference = augment.model or config.teachers[0].model
            augmenter, facts["augmenter"] = masked_lm_augmenter(reference, first_teacher_dir, augment.model is not None,
                                                                config.data.max_length)
        else:
            facts["augmenter"] = "word swaps and drops"
        copies = augmented_copies(train, augment, augmenter, config.seed)
        for key, values in copies.items():
            columns[key] += values
        facts["augmented_rows"] = len(copies["text"])
    start = max(int(i) for i in train["id"]) + 1  # transfer ids never collide with training ids
    columns["id"] = list(range(start, start + len(columns["text"])))
    features = {"id": datasets.Value("int64"), "text": datasets.Value("string"),
                **({"text_pair": datasets.Value("string")} if pair else {}),
                "label": datasets.Value("int64"), "origin_id": datasets.Value("int64")}
    return datasets.Dataset.from_dict({k: columns[k] for k in features}, features=datasets.Features(features)), facts


def label_copies_out_of_fold(by_teacher: dict[str, dict[int, Path]], teachers: list[dict], rows, max_length: int,
                             batch_size: int) -> tuple[np.ndarray, float]:
    """(len(rows), teachers, classes) logits of augmented copies (``origin_id`` >= 0), each from the fold teacher
    (of each teacher) that held the copy's source row out, and the seconds the passes took."""
    from safetensors.numpy import load_file

    from rightsizer.stages.fold_teacher import OOF_FILE

    origin = np.asarray(rows["origin_id"], dtype=np.int64)
    stacked, seconds = [], 0.0
    for teacher in teachers:
        logits, seen = None, np.zeros(len(rows), dtype=bool)
        for _, directory in sorted(by_teacher[teacher["name"]].items()):
            mine = np.flatnonzero(np.isin(origin, load_file(str(directory / OOF_FILE))["ids"]))
            if not len(mine):
                continue
            predicted, spent = teacher_pass(directory / "model", rows.select(mine), max_length, batch_size)
            if logits is None:
                logits = np.full((len(rows), predicted.shape[1]), np.nan, dtype=np.float32)
            logits[mine], seen[mine], seconds = predicted, True, seconds + spent
        if logits is None or not seen.all():
            raise UserError(f"the fold teachers of '{teacher['name']}' held out no source row of "
                            f"{int((~seen).sum())} augmented copies; rerun them on this prepared data")
        stacked.append(logits)
    return np.stack(stacked, axis=1), seconds


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
    """``teacher_dirs``: the teacher stage outputs, and the fold-teacher outputs when a student wants out-of-fold targets."""
    import datasets
    from safetensors.numpy import save_file

    from rightsizer.stages.fold_teacher import fold_count
    from rightsizer.train.transfer import copies_labelled_by, fingerprint, transfer_key

    dataset, card = load_prepared(data_dir)
    teachers = read_teachers(config, teacher_dirs, card["label_names"])
    fold_dirs = [Path(d) for d in teacher_dirs if is_fold_output(Path(d))]
    students = config.students
    cached_students = [s for s in students if not s.online]
    need_logits = not students or bool(cached_students)
    need_oof = any(s.targets == "out_of_fold" for s in cached_students)
    need_models = any(s.online or s.from_teacher_layers is not None for s in students)
    train = dataset["train"]
    unlabeled = load_unlabeled(data_dir)
    oof_copies = any(copies_labelled_by(s) == "out_of_fold" for s in cached_students)
    by_fold = fold_outputs(config, teachers, fold_dirs, train, need_models=oof_copies) if need_oof else {}
    oof, fold_seconds = stitch_out_of_fold(by_fold, teachers, train) if need_oof else (None, {})
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
        def batch_size_of(name: str) -> int:
            options = next((t for t in config.teachers if t.name == name), None)
            return max(options.eval_batch_size if options else 0, config.evaluation.batch_size)

        def all_teachers(split) -> np.ndarray:
            stacked = []
            for teacher in teachers:
                logits, spent = teacher_pass(teacher["dir"] / "model", split, config.data.max_length,
                                             batch_size_of(teacher["name"]))
                seconds[teacher["name"]] = seconds.get(teacher["name"], 0.0) + spent
                stacked.append(logits)
            return np.stack(stacked, axis=1)

        if need_logits:
            tensors = {"ids": np.asarray(train["id"], dtype=np.int64), "logits": all_teachers(train)}
            if oof is not None:
                tensors["oof_logits"] = oof
            save_file(tensors, str(out.work / LOGITS_FILE))
        def label_transfer(rows, copies_by: str) -> np.ndarray:
            """The transfer set's soft targets: all rows by the full-data teachers, or (``out_of_fold``) the
            unlabeled rows by them and each augmented copy by the fold teacher that held its source row out."""
            if copies_by == "teacher":
                return all_teachers(rows)
            origin = np.asarray(rows["origin_id"])
            logits = np.full((len(rows), len(teachers), len(card["label_names"])), np.nan, dtype=np.float32)
            copies, texts = np.flatnonzero(origin >= 0), np.flatnonzero(origin < 0)
            if len(texts):
                logits[texts] = all_teachers(rows.select(texts))
            if len(copies):
                batch_size = max(batch_size_of(t["name"]) for t in teachers)
                logits[copies], spent = label_copies_out_of_fold(by_fold, teachers, rows.select(copies),
                                                                 config.data.max_length, batch_size)
                fold_pass_s.append(spent)
            return logits

        transfer: dict = {}
        fold_pass_s: list[float] = []  # fold teachers labelling augmented copies
        started = time.perf_counter()
        for student in cached_students:
            if not student.augment.active and unlabeled is None:
                continue
            copies_by = copies_labelled_by(student)
            key = transfer_key(student.augment, unlabeled is not None, copies_by)
            if key in transfer:
                continue
            rows, facts = build_transfer_set(config, student.augment, train, unlabeled, teachers[0]["dir"] / "model")
            labelling = time.perf_counter()
            logits = label_transfer(rows, copies_by)
            feature = datasets.Array2D(shape=logits.shape[1:], dtype="float32")
            rows = rows.add_column("teacher_logits", logits.tolist(), feature=feature)
            rows.save_to_disk(str(out.work / key))
            transfer[key] = {"dir": key, "rows": len(rows), "fingerprint": fingerprint(rows), **facts,
                             "augment": student.augment.model_dump(),
                             "labels": {"augmented": copies_by, "unlabeled": "teacher"},
                             "labelling_s": round(time.perf_counter() - labelling, 3)}
        transfer_s = time.perf_counter() - started
        manifest = {"teachers": entries, "label_names": card["label_names"], "train_rows": len(train),
                    "train_fingerprint": fingerprint(train),
                    "unlabeled_fingerprint": fingerprint(unlabeled) if unlabeled is not None else None,
                    "logits": LOGITS_FILE if need_logits else None, "out_of_fold": oof is not None,
                    "folds": fold_count(config) if oof is not None else 0,
                    "fold_teachers_train_s": {k: round(v, 3) for k, v in fold_seconds.items()},
                    "transfer": transfer, "transfer_s": round(transfer_s, 3),
                    "teacher_pass_s": round(sum(seconds.values()), 4),
                    "teacher_pass_s_each": {k: round(v, 4) for k, v in seconds.items()},
                    "fold_teacher_pass_s": round(sum(fold_pass_s), 4)}
        write_json(out.work / MANIFEST, manifest)
        out.summary.update({"kind": "teacher-logits", "teachers": [t["name"] for t in teachers],
                            "cached_logits": need_logits, "teacher_models": need_models, "train_rows": len(train),
                            "teacher_pass_s": manifest["teacher_pass_s"], "out_of_fold": oof is not None,
                            "fold_teachers_train_s": round(sum(fold_seconds.values()), 3),
                            "transfer_rows": {k: v["rows"] for k, v in transfer.items()},
                            "transfer_labels": {k: v["labels"] for k, v in transfer.items()},
                            "transfer_labelling_s": {k: v["labelling_s"] for k, v in transfer.items()},
                            "transfer_s": manifest["transfer_s"]})
    return out.summary


# ---------------------------------------------------------------------------------------------
# reading a bundle (used by the distill stage)


def read_bundle(bundle_dir: str | Path, label_names: list[str], train=None) -> dict:
    """The bundle's manifest; with ``train``, refused (one line) unless it was made from exactly these rows."""
    from rightsizer.train.transfer import fingerprint

    bundle_dir = Path(bundle_dir)
    if not (bundle_dir / MANIFEST).exists():
        raise UserError(f"'{bundle_dir}' is not a teacher-logits stage output (no {MANIFEST}); "
                        "run `rightsizer stage teacher-logits` first")
    manifest = read_json(bundle_dir / MANIFEST)
    check_labels("the teachers", manifest["label_names"], label_names)
    if train is not None and manifest.get("train_fingerprint") != fingerprint(train):
        raise UserError(f"the teacher bundle '{bundle_dir}' was made from other training data (fingerprint "
                        f"{manifest.get('train_fingerprint')} vs {fingerprint(train)} here); rerun the teacher-logits "
                        "stage on this prepared data")
    manifest["dir"] = bundle_dir
    return manifest


def transfer_set(bundle: dict, augment, unlabeled, copies_by: str = "teacher"):
    """(the bundle's transfer set for this augment setting, with ``teacher_logits``; its manifest entry), checked
    against the data; ``copies_by``: who must have labelled the augmented copies (``copies_labelled_by``)."""
    import datasets

    from rightsizer.train.transfer import fingerprint, transfer_key

    key = transfer_key(augment, unlabeled is not None, copies_by)
    entry = bundle.get("transfer", {}).get(key)
    if entry is None or entry.get("labels", {}).get("augmented", "teacher") != copies_by:
        raise UserError(f"the teacher bundle '{bundle['dir']}' has no transfer set for augment {augment.model_dump()} "
                        f"{'with' if unlabeled is not None else 'without'} unlabeled text and copies labelled by "
                        f"{'the fold teachers' if copies_by == 'out_of_fold' else 'the teacher'}; rerun the "
                        "teacher-logits stage with this config")
    if (fingerprint(unlabeled) if unlabeled is not None else None) != bundle.get("unlabeled_fingerprint"):
        raise UserError(f"the teacher bundle '{bundle['dir']}' labelled other unlabeled text; rerun the "
                        "teacher-logits stage on this prepared data")
    rows = datasets.load_from_disk(str(Path(bundle["dir"]) / entry["dir"]))
    if fingerprint(rows) != entry["fingerprint"]:
        raise UserError(f"transfer set '{entry['dir']}' in '{bundle['dir']}' changed since it was labelled; rerun "
                        "the teacher-logits stage")
    return rows, entry


def teacher_model_dir(bundle: dict, name: str) -> Path:
    entry = next((t for t in bundle["teachers"] if t["name"] == name), None)
    if entry is None:
        raise UserError(f"teacher '{name}' is not in the teacher bundle (it has: {', '.join(t['name'] for t in bundle['teachers'])})")
    if entry["model_dir"] is None:
        raise UserError(f"the teacher bundle '{bundle['dir']}' was made without teacher models; rerun the "
                        "teacher-logits stage with this config (it keeps them when a student needs them)")
    return Path(bundle["dir"]) / entry["model_dir"]


def cached_logits(bundle: dict, ids, out_of_fold: bool = False) -> np.ndarray:
    """(len(ids), teachers, classes) teacher logits for these example ids (the fold teachers' with ``out_of_fold``)."""
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
    if out_of_fold and "oof_logits" not in stored:
        raise UserError(f"the teacher bundle '{bundle['dir']}' has no out-of-fold targets; rerun the teacher-logits "
                        "stage with the fold-teacher outputs (or set targets: in_sample)")
    return stored["oof_logits" if out_of_fold else "logits"][[row_of[int(i)] for i in ids]]
