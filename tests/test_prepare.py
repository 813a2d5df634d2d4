"""The prepare component, called as a task would call it: a Dataset artifact holding the DatasetDict and card."""

from __future__ import annotations

import json

from kfp import dsl

from conftest import artifact, tiny_raw


def test_prepare_component_writes_the_dataset_and_its_card(tmp_path):
    from components.prepare import prepare
    from rightsizer.config import config_from_dict
    from rightsizer.data import load_prepared

    raw = tiny_raw(data={"source": "builtin:demo", "max_length": 64, "max_train_samples": 200,
                         "max_eval_samples": 30})
    data = artifact(dsl.Dataset, tmp_path / "data")
    prepare.python_func(config_json=config_from_dict(raw).to_json(), data=data)
    dataset, card = load_prepared(tmp_path / "data")
    assert {split: len(dataset[split]) for split in ("train", "validation", "test")} == {
        "train": 200, "validation": 30, "test": 30}
    assert json.loads((tmp_path / "data" / "card.json").read_text()) == card
    assert len(card["label_names"]) == 3 and set(dataset["train"]["label"]) == {0, 1, 2}
    assert data.metadata["rows"] == card["rows"] and data.metadata["labels"] == card["label_names"]
