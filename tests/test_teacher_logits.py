"""The teacher_logits component, called as a task would call it: a bundle of cached teacher logits."""

from __future__ import annotations

import numpy as np
from kfp import dsl

from conftest import artifact, tiny_raw
from rightsizer.config import config_from_dict
from rightsizer.data import load_prepared
from rightsizer.inference import predict_logits
from rightsizer.models import load_saved
from rightsizer.stages import teacher_logits


def test_teacher_logits_component_caches_what_the_teacher_predicts(tmp_path, demo_data, trained_teacher):
    from components.teacher_logits import teacher_logits as component

    config = config_from_dict(tiny_raw(students=[{"name": "s", "model": "tiny-bert-2l", "targets": "in_sample"}]))
    bundle = artifact(dsl.Artifact, tmp_path / "bundle")
    component.python_func(config_json=config.to_json(), data=artifact(dsl.Dataset, demo_data),
                          teachers=[artifact(dsl.Model, trained_teacher)], bundle=bundle)
    dataset, card = load_prepared(demo_data)
    manifest = teacher_logits.read_bundle(tmp_path / "bundle", card["label_names"])
    assert bundle.metadata["teachers"] == [t["name"] for t in manifest["teachers"]] == ["teacher"]
    assert bundle.metadata["cached_logits"]
    assert bundle.metadata["teacher_pass_s"] > 0
    rows = dataset["train"].select(range(0, 600, 50))
    cached = teacher_logits.cached_logits(manifest, rows["id"])
    model, tokenizer = load_saved(trained_teacher / "model")
    online, _, _ = predict_logits(model, tokenizer, rows, 64)
    assert cached.shape == (len(rows), 1, 3)
    np.testing.assert_allclose(cached[:, 0], online, atol=1e-4)
