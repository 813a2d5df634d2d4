"""The slice component, called as a task would call it: the probed model cut after k layers, fine-tuned."""

from __future__ import annotations

import json

from kfp import dsl

from conftest import artifact
from rightsizer.models import load_saved
from rightsizer.slicing import depth


def test_slice_component_fine_tunes_the_cut_model(tiny_config, demo_data, tmp_path):
    from components.slice import slice_model as component

    config = tiny_config(teachers=[{"name": "teacher", "model": "tiny-bert-2l"}],
                         probe={"model": "teacher", "finetune_slices": [1], "max_steps": 4, "batch_size": 16,
                                "learning_rate": 2e-3})
    model = artifact(dsl.Model, tmp_path / "slice")
    component.python_func(config_json=config.to_json(), layers=1, data=artifact(dsl.Dataset, demo_data), model=model)
    summary = json.loads((tmp_path / "slice" / "summary.json").read_text())
    assert summary["name"] == model.metadata["name"] == "teacher-L1" and summary["steps"] == 4
    assert model.metadata["kind"] == "slice" and model.metadata["layers"] == 1
    assert model.metadata["params"] == summary["params"] > 0
    reloaded, _ = load_saved(tmp_path / "slice" / "model")
    assert reloaded.config.num_hidden_layers == 1 and depth(reloaded) == 1
