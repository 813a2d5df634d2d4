"""The decision: chosen on validation, confirmed on test, compared pairwise with the best, guarded by chance."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from rightsizer.config import ReportConfig
from rightsizer.stages import report
from rightsizer.stages.evaluate import split_scores
from rightsizer.stages.report.confidence import Evidence, decide

LABELS = ["negative", "neutral", "positive"]


def labelled(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).permutation(np.arange(n) % 3)


def answers(labels: np.ndarray, accuracy: float, seed: int) -> np.ndarray:
    """Predictions right on a fixed share of the examples, wrong (next class) on the rest."""
    wrong = np.random.default_rng(seed).permutation(len(labels))[: int(round(len(labels) * (1 - accuracy)))]
    predictions = labels.copy()
    predictions[wrong] = (predictions[wrong] + 1) % 3
    return predictions


class Splits(dict):
    """Just enough of a DatasetDict for split_scores and Evidence: split -> {"label": [...]}."""


def made_up(skill: dict[str, tuple[float, float]], latency: dict[str, float], n: int = 600):
    """Rows and evidence for candidates with the given (validation, test) accuracies."""
    dataset = Splits({split: {"label": labelled(n, seed)} for seed, split in enumerate(("train", "validation", "test"))})
    evidence = Evidence.from_dataset(dataset, 3, seed=0)
    rows = []
    for number, (name, (val, test)) in enumerate(skill.items()):
        predictions = {"validation": answers(dataset["validation"]["label"], val, 10 + number),
                       "test": answers(dataset["test"]["label"], test, 20 + number)}
        metrics = split_scores(predictions, dataset, LABELS, seed=0)
        rows.append({**metrics, "name": name, "kind": "teacher" if name == "teacher" else "student",
                     "latency_ms": latency[name], "params": int(latency[name] * 1000), "size_mb": latency[name]})
        evidence.add(name, predictions)
    return rows, evidence


def test_chosen_on_validation_even_where_test_would_pick_another_winner():
    # on validation the teacher is best and student-a within 1 pt; on test student-b would win
    rows, evidence = made_up({"teacher": (0.90, 0.86), "student-a": (0.895, 0.85), "student-b": (0.86, 0.92)},
                             {"teacher": 10.0, "student-a": 4.0, "student-b": 2.0})
    decision = decide(rows, ReportConfig(), evidence)
    assert decision["selected_on"] == "validation" and decision["best"] == "teacher"
    assert decision["recommended"] == "student-a"  # student-b is 4 pt below on validation: out, whatever test says
    assert decision["within_tolerance"] == ["teacher", "student-a"]
    assert "best validation macro-F1" in decision["reason"]
    compared = decision["comparisons"]["student-b"]["test"]
    assert compared["difference"] > 0.05 and compared["line"].startswith("student-b: +")
    assert compared["line"].endswith("vs teacher") and " pt [" in compared["line"]
    # the test interval of student-a's difference with the teacher reaches the 1-pt band: confirmed
    confirmation = decision["confirmation"]
    assert confirmation["confirmed"] and confirmation["statement"].startswith("Confirmed on test: student-a:")
    # what choosing on test would have said instead
    on_test = report.recommendation(rows, "macro_f1", 0.01)
    assert on_test["best"] == "student-b"


def test_not_worse_rule_admits_what_the_paired_interval_cannot_tell_apart():
    rows, evidence = made_up({"teacher": (0.90, 0.90), "close": (0.885, 0.89), "worse": (0.80, 0.80)},
                             {"teacher": 10.0, "close": 5.0, "worse": 1.0})
    tolerance = decide(rows, ReportConfig(tolerance=0.01), evidence)
    assert tolerance["recommended"] == "teacher"  # 1.5 pt below is outside a 1-pt tolerance
    not_worse = decide(rows, ReportConfig(rule="not_worse", confidence=0.95), evidence)
    assert not_worse["recommended"] == "close" and "worse" not in not_worse["within_tolerance"]
    assert "not significantly worse (95% paired bootstrap) than the best validation macro-F1" in not_worse["reason"]
    interval = not_worse["comparisons"]["close"]["validation"]["interval"]
    assert interval[0] < 0 < interval[1]


def test_guard_never_recommends_a_candidate_no_better_than_chance(tiny_config):
    # 90 validation rows: 0.40 accuracy (macro-F1 ~0.4) is above 1/3 by a point estimate but not by its interval
    rows, evidence = made_up({"teacher": (0.40, 0.40), "student": (0.36, 0.37)}, {"teacher": 10.0, "student": 4.0}, n=90)
    decision = decide(rows, ReportConfig(), evidence, {"rows": {"train": 90}}, tiny_config())
    assert decision["recommended"] is None and decision["usable"] == []
    assert decision["reason"].startswith("no usable model: no candidate's validation macro_f1 interval clears chance")
    assert "stratified guessing" in decision["reason"] and "too few training rows (90)" in decision["reason"]
    assert "120 steps" in decision["reason"] and "\n" not in decision["reason"]
    # one candidate that clears chance is recommended even when a faster one does not
    rows, evidence = made_up({"teacher": (0.95, 0.95), "student": (0.35, 0.35)}, {"teacher": 10.0, "student": 1.0}, n=300)
    decision = decide(rows, ReportConfig(tolerance=0.9), evidence)
    assert decision["recommended"] == "teacher" and decision["usable"] == ["teacher"]
    flags = report.find_flags(rows, "macro_f1", chance=evidence.chance["validation"]["macro_f1"])
    assert [(f["flag"], f["candidate"]) for f in flags] == [("below_chance", "student")]


def test_random_labels_end_in_no_usable_model_and_one_line(tmp_path, tiny_config, capsys):
    import pandas as pd

    from rightsizer.builtin_data import demo_rows
    from rightsizer.cli import _print_run
    from rightsizer.stages import evaluate, prepare, teacher

    texts = [row["text"] for row in demo_rows(600)]
    shuffled = np.random.default_rng(0).integers(0, 3, len(texts))  # labels that say nothing about the text
    pd.DataFrame({"text": texts, "label": [LABELS[k] for k in shuffled]}).to_csv(tmp_path / "random.csv", index=False)
    config = tiny_config(["teachers.0.max_steps=30"], data={"source": str(tmp_path / "random.csv"), "max_length": 48})
    prepare.run(config, tmp_path / "data")
    teacher.run(config, tmp_path / "data", tmp_path / "teacher")
    evaluate.run(config, tmp_path / "data", tmp_path / "teacher", tmp_path / "eval")
    board = report.run(config, tmp_path / "data", [tmp_path / "eval"], tmp_path / "run")
    assert board["recommended"] is None and board["selected_on"] == "validation"
    assert board["reason"].startswith("no usable model: ") and "\n" not in board["reason"]
    assert not (tmp_path / "run" / "recommended").exists()
    details = json.loads((tmp_path / "run" / "report.json").read_text())
    assert [f["flag"] for f in details["flags"]] == ["below_chance"]
    _print_run(tmp_path / "run", 1.0)
    printed = [line for line in capsys.readouterr().out.splitlines() if "no usable model" in line]
    assert len(printed) == 1 and printed[0].startswith("no recommendation: no usable model")


def test_recommended_model_is_placed_loads_and_predicts_what_was_evaluated(tmp_path, demo_data, trained_teacher,
                                                                           tiny_config):
    import shutil

    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from rightsizer.data import load_prepared
    from rightsizer.inference import predict_logits
    from rightsizer.pipeline import collect_outputs
    from rightsizer.stages import evaluate

    config = tiny_config()
    run_dir = tmp_path / "kfp-run"  # what the local runner leaves: one directory per task output
    candidate = run_dir / "for-loop-1" / "teacher" / "model"
    shutil.copytree(trained_teacher, candidate)
    evaluate.run(config, demo_data, candidate, run_dir / "for-loop-1" / "evaluate" / "metrics")
    report.run(config, demo_data, [run_dir / "for-loop-1" / "evaluate" / "metrics"], run_dir / "report" / "report_dir")
    output = tmp_path / "out"
    output.mkdir()
    collect_outputs(run_dir, output)

    board = json.loads((output / "leaderboard.json").read_text())
    row = next(c for c in board["candidates"] if c["name"] == "teacher")
    assert board["recommended"] == "teacher" and board["recommended_path"] == "recommended"
    assert board["recommended_uri"] == str((output / "recommended").resolve())
    assert row["path"] == "stages/for-loop-1/teacher/model/model" and (output / row["path"] / "config.json").exists()
    card = (output / "recommended" / "README.md").read_text()
    assert card.startswith("# teacher") and "| test (confirmed on) |" in card and f"{row['macro_f1']:.4f} [" in card
    assert "tiny-bert-2l" in card and "from_pretrained" in card
    model = AutoModelForSequenceClassification.from_pretrained(output / "recommended")
    tokenizer = AutoTokenizer.from_pretrained(output / "recommended")
    dataset, _ = load_prepared(demo_data)
    with torch.no_grad():
        logits, _, _ = predict_logits(model, tokenizer, dataset["test"], config.data.max_length)
    evaluated = evaluate.read_predictions(run_dir / "for-loop-1" / "evaluate" / "metrics")
    assert logits.argmax(-1).tolist() == evaluated["test"].tolist()


def test_pareto_labels_never_overlap(tmp_path):
    from rightsizer.stages.report.figures import _figure, place_labels, text_box

    figure = _figure(7.5, 4.8)
    axes = figure.add_subplot()
    crowd = [(1.0 + 0.02 * i, 0.80 + 0.001 * i, f"candidate-number-{i}", i == 3) for i in range(9)]
    crowd += [(5.0, 0.9, "teacher", False), (5.0, 0.9005, "teacher-int8", False)]
    axes.scatter([x for x, *_ in crowd], [y for _, y, *_ in crowd])
    axes.set_xlim(0, 7)
    axes.set_ylim(0.7, 1.0)
    labels = place_labels(axes, crowd)
    renderer = figure.canvas.get_renderer()
    boxes = [text_box(label, renderer) for label in labels]
    assert len(boxes) == len(crowd)
    assert not [(a, b) for a, b in itertools.combinations(range(len(boxes)), 2) if boxes[a].overlaps(boxes[b])]
    figure.savefig(tmp_path / "crowd.png")


def test_evidence_differences_are_the_paired_bootstrap_of_stats():
    from rightsizer import stats

    rows, evidence = made_up({"teacher": (0.9, 0.88), "student": (0.87, 0.86)}, {"teacher": 10.0, "student": 4.0}, n=300)
    for split in ("validation", "test"):
        cached = evidence.difference("student", "teacher", split, "macro_f1", 0.9)
        direct = stats.paired_difference(evidence.labels[split], evidence.predictions["student"][split],
                                         evidence.predictions["teacher"][split], 3, "macro_f1", confidence=0.9, seed=0)
        assert cached["difference"] == pytest.approx(direct["difference"]) and cached["interval"] == direct["interval"]
        assert cached["worse_share"] == direct["worse_share"]
