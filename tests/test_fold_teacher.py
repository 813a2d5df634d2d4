"""The fold_teacher component, called as a task would call it: one fold teacher and its out-of-fold logits."""

from __future__ import annotations

import json

from kfp import dsl
from safetensors.numpy import load_file

from conftest import artifact, tiny_raw
from rightsizer.config import config_from_dict
from rightsizer.data import load_prepared
from rightsizer.stages import fold_teacher


def test_fold_teacher_component_holds_out_its_fold(tmp_path, demo_data):
    from components.fold_teacher import fold_teacher as component

    raw = tiny_raw(students=[{"name": "s", "model": "tiny-bert-2l", "folds": 2, "max_steps": 4}])
    raw["teachers"][0]["max_steps"] = 4
    model = artifact(dsl.Model, tmp_path / "fold1")
    # the pipeline's ParallelFor hands the task a dict from JSON: the fold arrives as a float
    component.python_func(config_json=config_from_dict(raw).to_json(), task={"teacher": "teacher", "fold": 1.0},
                          data=artifact(dsl.Dataset, demo_data), model=model)
    summary = json.loads((tmp_path / "fold1" / "summary.json").read_text())
    assert summary["kind"] == "fold-teacher" and summary["fold"] == 1 and summary["folds"] == 2
    assert summary["model_kept"] is False and not (tmp_path / "fold1" / "model").exists()  # no student augments
    assert model.metadata == {"name": "teacher", "kind": "fold-teacher", "fold": 1,
                              "train_time_s": summary["train_time_s"]}
    stored = load_file(str(tmp_path / "fold1" / fold_teacher.OOF_FILE))
    held, trained = set(map(int, stored["ids"])), set(map(int, stored["trained_ids"]))
    dataset, _ = load_prepared(demo_data)
    assert held and trained and not held & trained and held | trained == set(map(int, dataset["train"]["id"]))
    assert stored["logits"].shape == (len(held), 3)
