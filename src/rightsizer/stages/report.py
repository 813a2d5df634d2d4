"""Stage: report. Collect every candidate's metrics into ``leaderboard.json`` and ``report.md``.

The recommendation is the smallest candidate (by ``report.size_by``: latency, params or size on
disk) whose metric is within ``report.tolerance`` of the best. A majority-class baseline row shows
what "learned nothing" scores.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rightsizer.config import RunConfig
from rightsizer.data import load_prepared
from rightsizer.errors import UserError
from rightsizer.outputs import read_json, stage_output, write_json

LEADERBOARD_KEYS = ("name", "kind", "accuracy", "macro_f1", "params", "trainable_params", "size_mb",
                    "latency_ms", "latency_p95_ms", "throughput_per_s")
KINDS = ("teacher", "student", "adapter", "slice", "prompting", "baseline")
SIZE_KEYS = {"latency": "latency_ms", "params": "params", "size_mb": "size_mb"}


def baseline_row(dataset, card: dict) -> dict:
    """Majority class of the training split, predicted for every test example."""
    from rightsizer.stages.evaluate import quality_metrics

    train_counts = np.bincount(np.asarray(dataset["train"]["label"]), minlength=card["num_labels"])
    majority = int(train_counts.argmax())
    labels = np.asarray(dataset["test"]["label"])
    metrics = quality_metrics(np.full_like(labels, majority), labels, card["label_names"])
    return {"name": "majority-baseline", "kind": "baseline", "accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"],
            "params": 0, "trainable_params": 0, "size_mb": 0.0, "latency_ms": 0.0, "latency_p95_ms": 0.0,
            "throughput_per_s": None, "majority_label": card["label_names"][majority],
            "confusion_matrix": metrics["confusion_matrix"], "labels": metrics["labels"]}


def recommend(candidates: list[dict], metric: str, tolerance: float, size_by: str = "latency") -> tuple[str | None, str]:
    """(name, reason): the smallest candidate within ``tolerance`` of the best ``metric``."""
    pool = [c for c in candidates if c.get("kind") != "baseline" and c.get(metric) is not None]
    if not pool:
        return None, "no trained candidate to recommend"
    size_key = SIZE_KEYS[size_by]
    best = max(pool, key=lambda c: (c[metric], -(c.get(size_key) or 0)))
    within = [c for c in pool if c[metric] >= best[metric] - tolerance - 1e-12]
    chosen = min(within, key=lambda c: (c.get(size_key) if c.get(size_key) is not None else float("inf"), -c[metric], c["name"]))
    if chosen["name"] == best["name"]:
        reason = (f"{chosen['name']} has the best {metric} ({chosen[metric]:.4f}) and no smaller candidate is within "
                  f"{tolerance:g} of it")
    else:
        reason = (f"{chosen['name']} is the smallest by {size_by} among candidates within {tolerance:g} {metric} of the best "
                  f"({best['name']}, {best[metric]:.4f}): {chosen[metric]:.4f}")
    return chosen["name"], reason


def _fmt(value, digits: int = 4) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    if isinstance(value, int) and value >= 10_000:
        return f"{value / 1e6:.2f}M"
    return str(value)


def render_markdown(leaderboard: dict, rows: list[dict], card: dict, config: RunConfig) -> str:
    metric = leaderboard["metric"]
    lines = [f"# rightsizer report: {config.name}", "",
             f"Data: `{card['source']}` — {card['rows']['train']} train / {card['rows']['validation']} validation / "
             f"{card['rows']['test']} test rows, {card['num_labels']} classes ({', '.join(card['label_names'])}).", "",
             "| rank | candidate | kind | accuracy | macro-F1 | latency p50 (ms) | p95 (ms) | throughput (/s) | params | trainable | size (MB) | train time (s) |",
             "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for rank, row in enumerate(rows, 1):
        mark = " ⭐" if row["name"] == leaderboard["recommended"] else ""
        lines.append(
            f"| {rank} | {row['name']}{mark} | {row['kind']} | {_fmt(row['accuracy'])} | {_fmt(row['macro_f1'])} | "
            f"{_fmt(row.get('latency_ms'), 3)} | {_fmt(row.get('latency_p95_ms'), 3)} | {_fmt(row.get('throughput_per_s'), 1)} | "
            f"{_fmt(row.get('params'))} | {_fmt(row.get('trainable_params'))} | {_fmt(row.get('size_mb'), 2)} | "
            f"{_fmt(row.get('train_time_s'), 1)} |")
    lines += ["", "## Recommendation", ""]
    if leaderboard["recommended"]:
        lines.append(f"**{leaderboard['recommended']}** — {leaderboard['reason']}.")
    else:
        lines.append(f"None: {leaderboard['reason']}.")
    lines += ["", f"Metric: {metric}; tolerance: {leaderboard['tolerance']:g}; size measured by {config.report.size_by}.", ""]
    return "\n".join(lines)


def collect_metrics(metrics_dirs: list[str | Path]) -> list[dict]:
    rows = []
    for directory in metrics_dirs:
        path = Path(directory) / "metrics.json"
        if not path.exists():
            raise UserError(f"'{directory}' has no metrics.json; give evaluation outputs")
        rows.append(read_json(path))
    return rows


def run(config: RunConfig, data_dir: str | Path, metrics_dirs: list[str | Path], output_dir: str | Path) -> dict:
    dataset, card = load_prepared(data_dir)
    rows = collect_metrics(metrics_dirs)
    rows.append(baseline_row(dataset, card))
    metric = config.report.metric
    rows.sort(key=lambda r: (-(r.get(metric) or 0.0), r["name"]))
    recommended, reason = recommend(rows, metric, config.report.tolerance, config.report.size_by)
    leaderboard = {
        "metric": metric, "tolerance": config.report.tolerance, "recommended": recommended, "reason": reason,
        "candidates": [{key: row.get(key) for key in LEADERBOARD_KEYS} for row in rows],
    }
    with stage_output(output_dir, "report", config, name="report") as out:
        write_json(out.work / "leaderboard.json", leaderboard)
        write_json(out.work / "candidates.json", rows)
        (out.work / "report.md").write_text(render_markdown(leaderboard, rows, card, config))
        out.summary.update({"recommended": recommended, "candidates": len(rows)})
    return leaderboard
