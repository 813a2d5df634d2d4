"""The report's inputs: the evaluations' metrics directories, the probe output, the majority baseline."""

from __future__ import annotations

from pathlib import Path

from pydantic import ValidationError

from rightsizer.errors import UserError
from rightsizer.outputs import read_json
from rightsizer.records import CandidateRow, LeaderboardRow
from rightsizer.stages.report.decision import headline_metrics

LEADERBOARD_KEYS = tuple(LeaderboardRow.model_fields)  # leaderboard.json's fields per candidate (the contract)


def baseline_row(dataset, card: dict) -> dict:
    """Majority class of the training split, predicted for every validation and test example."""
    from rightsizer.stages.evaluate import majority_baseline

    baseline = majority_baseline(dataset["train"]["label"], {split: dataset[split]["label"]
                                                             for split in ("validation", "test")}, card["label_names"])
    metrics, validation = baseline["test"], baseline["validation"]
    return {"name": "majority-baseline", "kind": "baseline", "accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"],
            "val_accuracy": validation["accuracy"], "val_macro_f1": validation["macro_f1"],
            "params": 0, "trainable_params": 0, "size_mb": 0.0, "latency_ms": 0.0, "latency_p95_ms": 0.0,
            "throughput_per_s": None, "majority_label": card["label_names"][baseline["label"]],
            "confusion_matrix": metrics["confusion_matrix"], "labels": metrics["labels"]}


def read_row(path: Path) -> dict:
    """One evaluation's ``metrics.json``, checked against :class:`rightsizer.records.CandidateRow`."""
    row = read_json(path)
    try:
        CandidateRow.model_validate(row)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error["loc"])
        raise UserError(f"'{path}' is not an evaluation's metrics.json: '{where}': {error['msg']}") from None
    return row


def row_dirs(metrics_dirs: list[str | Path]) -> list[Path]:
    """The directory of every candidate's metrics.json (and predictions.json); an evaluation of
    quantized forms holds one per form (``forms.json``)."""
    from rightsizer.stages.evaluate import FORMS_FILE

    found = []
    for directory in map(Path, metrics_dirs):
        if (directory / "metrics.json").exists():
            found.append(directory)
        elif (directory / FORMS_FILE).exists():  # the quantized forms of one source, evaluated by one task
            found.extend(directory / form for form in read_json(directory / FORMS_FILE))
        else:
            raise UserError(f"'{directory}' has no metrics.json; give evaluation outputs")
    return found


def collect_metrics(metrics_dirs: list[str | Path]) -> list[dict]:
    """Every candidate's metrics.json, in the order of :func:`row_dirs` (a candidate trained with several seeds
    has one per seed; names repeat only so)."""
    from rightsizer.stages.report.seeds import group_runs

    rows = [read_row(directory / "metrics.json") for directory in row_dirs(metrics_dirs)]
    group_runs(rows)
    return rows


def read_probe(probe_dir: str | Path | None) -> dict | None:
    if probe_dir is None:
        return None
    path = Path(probe_dir) / "probe.json"
    if not path.exists():
        raise UserError(f"'{probe_dir}' has no probe.json; give the probe stage's output")
    return read_json(path)


def headline(output_dir: str | Path) -> dict[str, float]:
    """:func:`headline_metrics` of a finished report directory."""
    output_dir = Path(output_dir)
    return headline_metrics(read_json(output_dir / "leaderboard.json"), read_json(output_dir / "report.json"))
