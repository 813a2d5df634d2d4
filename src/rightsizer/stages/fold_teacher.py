"""Stage: one fold teacher, for out-of-fold distillation targets.

Fold teacher ``k`` of teacher ``name`` is the same fine-tune (model, options, seed) on the training rows
outside fold ``k`` (:func:`rightsizer.train.transfer.fold_assignment`); it predicts the rows of fold ``k`` and
writes their logits, keyed by example id, with the ids it trained on. The teacher-logits stage stitches the
K fold outputs into one soft target per training row, each from a teacher that never saw that row. Fold
teachers are ordinary, independent training tasks (parallel on a cluster) and not candidates: the full-data
teacher is. Their models are kept (``model/``) only when an out-of-fold student augments its training texts:
the teacher-logits stage then labels the augmented copies of each held-out row with that row's fold teacher.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rightsizer import candidates
from rightsizer.config import RunConfig
from rightsizer.data import load_prepared
from rightsizer.errors import UserError
from rightsizer.inference import predict_logits
from rightsizer.models import load_classifier
from rightsizer.outputs import stage_output
from rightsizer.train import fine_tune, training_texts
from rightsizer.train.transfer import fingerprint, fold_assignment

OOF_FILE = "oof_logits.safetensors"


def fold_count(config: RunConfig) -> int:
    """K for this run: the ``folds`` of the students that want out-of-fold targets (they must agree)."""
    wanted = sorted({s.folds for s in config.students if s.targets == "out_of_fold" and not s.online})
    if not wanted:
        return 0
    if len(wanted) > 1:
        raise UserError(f"students ask for different numbers of folds ({wanted}); one run trains one set of fold "
                        "teachers: give every out_of_fold student the same 'folds'")
    return wanted[0]


def keeps_model(config: RunConfig) -> bool:
    """Whether fold teachers keep their models: an out-of-fold student's augmented copies are labelled by them."""
    from rightsizer.train.transfer import copies_labelled_by

    return any(copies_labelled_by(s) == "out_of_fold" for s in config.students)


def fold_tasks(config: RunConfig) -> list[dict]:
    """The pipeline's fold loop: one ``{"teacher": name, "fold": k}`` per teacher and fold (empty when no student
    wants out-of-fold targets)."""
    folds = fold_count(config)
    return [{"teacher": t.name, "fold": k} for t in config.teachers for k in range(folds)]


def run(config: RunConfig, data_dir: str | Path, output_dir: str | Path, name: str | None = None,
        fold: int = 0) -> dict:
    import datasets
    from safetensors.numpy import save_file

    teacher = config.teacher(name) if name else config.teachers[0]
    seed = candidates.find(config, "teacher", teacher.name).seed  # the full teacher's first run (teacher logits use it)
    folds = fold_count(config)
    if not folds:
        raise UserError("no student asks for out-of-fold targets (targets: out_of_fold); fold teachers are not needed")
    if not 0 <= fold < folds:
        raise UserError(f"fold {fold} is out of range: this config has {folds} folds (0-{folds - 1})")
    dataset, card = load_prepared(data_dir)
    train = dataset["train"]
    assignment = fold_assignment(train["label"], folds, config.seed)
    held_rows = np.flatnonzero(assignment == fold)
    kept_rows = np.flatnonzero(assignment != fold)
    with stage_output(output_dir, "fold-teacher", config, name=f"{teacher.name}-fold{fold}") as out:
        fold_data = datasets.DatasetDict({**dataset, "train": train.select(kept_rows)})
        model, tokenizer = load_classifier(teacher.model, card["label_names"], training_texts(fold_data), seed)
        result = fine_tune(model, tokenizer, fold_data, teacher, seed=seed, work_dir=out.work,
                           max_length=config.data.max_length, save_model=keeps_model(config))
        held = train.select(held_rows)
        logits, seconds, _ = predict_logits(model, tokenizer, held, config.data.max_length,
                                            max(teacher.eval_batch_size, config.evaluation.batch_size))
        save_file({"ids": np.asarray(held["id"], dtype=np.int64), "logits": logits.astype(np.float32),
                   "trained_ids": np.asarray(fold_data["train"]["id"], dtype=np.int64)}, str(out.work / OOF_FILE))
        out.summary.update({
            "kind": "fold-teacher", "teacher": teacher.name, "seed": seed, "fold": fold, "folds": folds,
            "train_fingerprint": fingerprint(train), "trained_rows": len(kept_rows), "held_out_rows": len(held_rows),
            "held_out_pass_s": round(seconds, 4), "model_kept": keeps_model(config), **result.summary(),
        })
    return out.summary
