"""Evaluation metrics against sklearn on a known confusion, latency fields, the leaderboard schema."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rightsizer.stages import evaluate, report
from rightsizer.stages.evaluate import quality_metrics


def test_quality_metrics_on_a_known_confusion():
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 2, 2, 2])
    predictions = np.array([0, 0, 1, 2, 1, 1, 0, 2, 2, 2])
    metrics = quality_metrics(predictions, labels, ["a", "b", "c"])
    assert metrics["confusion_matrix"] == [[2, 1, 1], [1, 2, 0], [0, 0, 3]]
    assert metrics["accuracy"] == pytest.approx(0.7)
    # by hand: precision a=2/3 b=2/3 c=3/4; recall a=1/2 b=2/3 c=1
    f1 = [2 * p * r / (p + r) for p, r in ((2 / 3, 1 / 2), (2 / 3, 2 / 3), (3 / 4, 1.0))]
    assert metrics["macro_f1"] == pytest.approx(sum(f1) / 3)
    assert metrics["per_class"]["a"] == pytest.approx({"precision": 2 / 3, "recall": 0.5, "f1": f1[0], "support": 4})


def test_one_majority_baseline_for_the_report_row_and_the_probe_chance():
    from rightsizer.stages import probe
    from rightsizer.stages.evaluate import majority_baseline

    labels = {"train": np.array([0, 0, 1, 2, 0]), "validation": np.array([1, 1, 0]), "test": np.array([0, 1, 2, 0])}
    names = ["a", "b", "c"]
    baseline = majority_baseline(labels["train"], {"test": labels["test"]}, names)
    assert baseline["label"] == 0 and baseline["test"]["accuracy"] == pytest.approx(0.5)
    # F1 of a = 2 * 0.5 * 1 / 1.5; b and c are never predicted (0), and count in the macro mean
    assert baseline["test"]["macro_f1"] == pytest.approx((2 / 3) / 3)
    row = report.baseline_row({split: {"label": rows} for split, rows in labels.items()},
                              {"label_names": names, "num_labels": 3})
    chance = probe.chance_scores(labels, names)
    assert row["accuracy"] == chance["majority"]["accuracy"] and row["macro_f1"] == chance["majority"]["macro_f1"]
    assert row["majority_label"] == "a" and row["val_accuracy"] == pytest.approx(1 / 3)
    assert row["confusion_matrix"] == [[2, 0, 0], [1, 0, 0], [1, 0, 0]]
    assert chance["uniform_accuracy"] == pytest.approx(1 / 3)


def test_evaluate_stage_on_a_trained_teacher(tmp_path, demo_data, trained_teacher, tiny_config):
    import torch

    from rightsizer.data import load_prepared

    config = tiny_config(["resources.evaluate.cpu=1"])
    metrics = evaluate.run(config, demo_data, trained_teacher, tmp_path / "eval")
    saved = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert saved == json.loads(json.dumps(metrics))
    assert metrics["name"] == "teacher" and metrics["kind"] == "teacher"
    assert metrics["test_rows"] == 90 and np.sum(metrics["confusion_matrix"]) == 90
    assert 0 < metrics["latency_ms"] <= metrics["latency_p95_ms"]
    assert metrics["latency_threads"] == 1 == torch.get_num_threads() and metrics["latency_batch_size"] == 1
    assert metrics["throughput_per_s"] > 0 and metrics["params"] > 100_000 and metrics["size_mb"] > 0.1
    assert metrics["accuracy"] > 0.4  # chance is 1/3
    for key in ("accuracy", "macro_f1", "val_accuracy", "val_macro_f1"):
        low, high = metrics[f"{key}_ci"]
        assert low < metrics[key] < high and high - low < 0.4, key
    # the saved per-example predictions reproduce both splits' scores
    dataset, card = load_prepared(demo_data)
    predictions = evaluate.read_predictions(tmp_path / "eval")
    assert len(predictions["validation"]) == metrics["validation_rows"] == len(dataset["validation"])
    again = quality_metrics(predictions["test"], np.asarray(dataset["test"]["label"]), card["label_names"])
    assert again["confusion_matrix"] == metrics["confusion_matrix"]
    assert quality_metrics(predictions["validation"], np.asarray(dataset["validation"]["label"]),
                           card["label_names"])["macro_f1"] == pytest.approx(metrics["val_macro_f1"])


def test_threads_come_from_the_evaluate_tasks_cpu(tiny_config, monkeypatch):
    import os

    from rightsizer.timing import task_threads

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)))
    assert task_threads(tiny_config(["resources.evaluate.cpu=4"])) == 4
    assert task_threads(tiny_config(["resources.default.cpu=3"])) == 3  # evaluate borrows the default
    assert task_threads(tiny_config(["resources.evaluate.cpu=500m"])) == 1
    assert task_threads(tiny_config(["resources.evaluate.cpu=2.5"])) == 2
    assert task_threads(tiny_config(["resources.evaluate.cpu=32"])) == 8  # never more than the cores here
    assert task_threads(tiny_config(["resources.evaluate.cpu=4", "evaluation.threads=6"])) == 6


def test_report_leaderboard_schema_and_baseline(tmp_path, demo_data, trained_teacher, tiny_config):
    config = tiny_config()
    evaluate.run(config, demo_data, trained_teacher, tmp_path / "eval")
    board = report.run(config, demo_data, [tmp_path / "eval"], tmp_path / "report")
    on_disk = json.loads((tmp_path / "report" / "leaderboard.json").read_text())
    assert on_disk["metric"] == "macro_f1" and on_disk["tolerance"] == 0.01
    assert {"metric", "tolerance", "recommended", "candidates"} <= set(on_disk)
    kinds = {c["name"]: c["kind"] for c in on_disk["candidates"]}
    assert kinds == {"teacher": "teacher", "majority-baseline": "baseline"}
    for candidate in on_disk["candidates"]:
        assert set(report.LEADERBOARD_KEYS) <= set(candidate)
    baseline = next(c for c in on_disk["candidates"] if c["kind"] == "baseline")
    assert baseline["accuracy"] == pytest.approx(1 / 3, abs=0.02)  # the test split lost a few duplicates of train
    assert board["recommended"] == "teacher"
    assert "| teacher" in (tmp_path / "report" / "report.md").read_text()


def test_recommendation_picks_the_smallest_within_tolerance():
    rows = [
        {"name": "big", "kind": "teacher", "macro_f1": 0.90, "latency_ms": 10.0, "params": 100, "size_mb": 4.0},
        {"name": "mid", "kind": "student", "macro_f1": 0.895, "latency_ms": 4.0, "params": 50, "size_mb": 2.0},
        {"name": "small", "kind": "student", "macro_f1": 0.85, "latency_ms": 1.0, "params": 10, "size_mb": 1.0},
        {"name": "majority-baseline", "kind": "baseline", "macro_f1": 0.3, "latency_ms": 0.0, "params": 0, "size_mb": 0.0},
    ]
    assert report.recommend(rows, "macro_f1", 0.01)[0] == "mid"
    assert report.recommend(rows, "macro_f1", 0.0)[0] == "big"
    assert report.recommend(rows, "macro_f1", 0.1)[0] == "small"
    assert report.recommend(rows[-1:], "macro_f1", 0.1)[0] is None


def _fake_gpu(monkeypatch, bf16: bool) -> None:
    """torch.cuda answers as a GPU would (as tests/test_placement.py does), on a machine without one."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a, **k: "Fake GPU")


def test_inference_placement_prefers_cuda_and_the_configured_precision(monkeypatch):
    import torch

    from rightsizer.errors import UserError
    from rightsizer.inference import inference_placement

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert inference_placement("auto") == ("cpu", "fp32")
    assert inference_placement("bf16") == ("cpu", "bf16")
    _fake_gpu(monkeypatch, bf16=True)
    assert inference_placement("auto") == ("cuda", "bf16")
    assert inference_placement("fp32") == ("cuda", "fp32")
    _fake_gpu(monkeypatch, bf16=False)
    assert inference_placement("auto") == ("cuda", "fp16")
    with pytest.raises(UserError, match=r"evaluation.dtype is bf16 but this GPU \(Fake GPU\) does not support bf16"):
        inference_placement("bf16")


def test_evaluation_runs_where_and_in_the_precision_chosen(tmp_path, demo_data, trained_teacher, tiny_config,
                                                          monkeypatch):
    """With a GPU present the stage asks for CUDA and bf16 and records both (leaderboard row included); the model
    is loaded for real in bf16 (kept on the CPU here) and scores like the fp32 evaluation."""
    import torch

    from rightsizer.models import load_saved

    config = tiny_config()
    fp32 = evaluate.run(config, demo_data, trained_teacher, tmp_path / "fp32")
    assert (fp32["device"], fp32["dtype"]) == ("cpu", "fp32")
    _fake_gpu(monkeypatch, bf16=True)
    asked = []

    def load_on_cpu(model_dir, device=None, precision="fp32"):
        asked.append((device, precision))
        return load_saved(model_dir, None, precision)

    monkeypatch.setattr(evaluate, "load_saved", load_on_cpu)
    metrics = evaluate.run(config, demo_data, trained_teacher, tmp_path / "gpu")
    assert asked == [("cuda", "bf16")]
    assert (metrics["device"], metrics["dtype"], metrics["device_name"]) == ("cuda", "bf16", "Fake GPU")
    assert abs(metrics["accuracy"] - fp32["accuracy"]) <= 0.03
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    board = report.run(config, demo_data, [tmp_path / "gpu"], tmp_path / "report")
    row = next(c for c in board["candidates"] if c["name"] == "teacher")
    assert (row["device"], row["dtype"]) == ("cuda", "bf16")
    model, _ = load_saved(trained_teacher / "model", None, "bf16")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


def test_evaluate_component_writes_metrics_and_kfp_scores(tmp_path, demo_data, trained_teacher, tiny_config):
    """The KFP component as a task calls it: metrics.json in its artifact, headline scores and a confusion matrix."""
    from kfp import dsl

    from components.evaluate import evaluate as component
    from conftest import artifact

    metrics, scores = artifact(dsl.Artifact, tmp_path / "eval"), artifact(dsl.Metrics, tmp_path / "scores")
    confusion = artifact(dsl.ClassificationMetrics, tmp_path / "confusion")
    component.python_func(config_json=tiny_config().to_json(), name="teacher", kind="teacher",
                          data=artifact(dsl.Dataset, demo_data), candidate=artifact(dsl.Model, trained_teacher),
                          metrics=metrics, scores=scores, confusion=confusion)
    saved = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert saved["name"] == "teacher" and saved["test_rows"] == 90
    assert saved["accuracy"] > 0.4 and 0 < saved["macro_f1"] <= 1 and saved["latency_ms"] > 0  # chance is 1/3
    for key in ("accuracy", "macro_f1", "latency_ms", "latency_p95_ms", "throughput_per_s", "params", "size_mb"):
        assert scores.metadata[key] == pytest.approx(float(saved[key])), key
    matrix = confusion.metadata["confusionMatrix"]
    assert [spec["displayName"] for spec in matrix["annotationSpecs"]] == saved["labels"]
    assert [r["row"] for r in matrix["rows"]] == saved["confusion_matrix"]
