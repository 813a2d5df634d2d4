"""Stage: report. Every candidate's metrics -> ``leaderboard.json``, ``report.md`` and ``report.html``.

This is the product's answer to *how small a model can we get away with?* The recommendation is
the smallest candidate (by ``report.size_by``: latency, params or size on disk) whose metric is
within ``report.tolerance`` of the best, with what it costs against the best (points of quality,
x faster, x smaller) and whether anything within tolerance is ``report.speedup_target`` times
faster than the best teacher — or an honest "none qualifies". A majority-class baseline row shows
what "learned nothing" scores.

Besides the leaderboard the report draws quality against latency (``pareto.png``: marker area =
parameters, colour = kind, the Pareto front, the recommendation ringed), the confusion matrices of
the recommended and the best candidate (``confusion.png``) and, when a probe ran, its per-layer
curve with the fine-tuned slices on it (``probe.png``). It flags candidates no better than the
baseline, students that distillation did not help (against their ``-nodistill`` control) and
adapters that beat full fine-tuning of their base. ``report.html`` is self-contained: styles
inline, figures embedded as base64 PNG, no external URL.
"""

from __future__ import annotations

import base64
import html
import math
import re
import time
from pathlib import Path
from typing import Any

import numpy as np

from rightsizer import __version__
from rightsizer.config import RunConfig
from rightsizer.data import load_prepared
from rightsizer.errors import UserError
from rightsizer.outputs import read_json, stage_output, write_json

LEADERBOARD_KEYS = ("name", "kind", "accuracy", "macro_f1", "params", "trainable_params", "size_mb",
                    "latency_ms", "latency_p95_ms", "throughput_per_s")
KINDS = ("teacher", "student", "adapter", "slice", "prompting", "baseline")
SIZE_KEYS = {"latency": "latency_ms", "params": "params", "size_mb": "size_mb"}
SIZE_WORDS = {"latency": "fastest", "params": "smallest by parameter count", "size_mb": "smallest on disk"}
COMPARATIVES = {"latency": "faster", "params": "smaller by parameter count", "size_mb": "smaller on disk"}
KIND_COLOURS = {"teacher": "#1f77b4", "student": "#2ca02c", "adapter": "#ff7f0e", "slice": "#9467bd",
                "prompting": "#8c564b", "baseline": "#7f7f7f"}
METRIC_NAMES = {"macro_f1": "macro-F1", "accuracy": "accuracy"}
EPSILON = 1e-9  # float slack when comparing a score with "best - tolerance"


# ---------------------------------------------------------------------------------------------
# rows


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


def trained(rows: list[dict], metric: str) -> list[dict]:
    """The candidates that compete: everything but the baseline, with a score."""
    return [row for row in rows if row.get("kind") != "baseline" and row.get(metric) is not None]


def _size(row: dict, size_key: str) -> float:
    value = row.get(size_key)
    return float(value) if value is not None else math.inf


def trainable_percent(row: dict) -> float | None:
    """Share of the parameters that were trained, in percent."""
    if row.get("params") and row.get("trainable_params") is not None:
        return 100.0 * row["trainable_params"] / row["params"]
    share = row.get("trainable_share")
    if share is None:
        return None
    return 100.0 * share if share <= 1 else float(share)


def slice_depth(row: dict) -> int | None:
    """How many layers a slice keeps: its ``layers`` (a depth or a list of layers) or its ``-L<k>`` name."""
    layers = row.get("layers")
    if isinstance(layers, int):
        return layers
    if isinstance(layers, list) and layers:
        return len(layers)
    found = re.search(r"-L(\d+)$", row.get("name", ""))
    return int(found.group(1)) if found else None


# ---------------------------------------------------------------------------------------------
# the decision


def pareto_front(rows: list[dict], metric: str, cost: str = "latency_ms") -> list[dict]:
    """Candidates no other candidate beats on both counts (``metric`` at least as high, ``cost`` at
    most as high, one of them strictly), cheapest first. The baseline and rows missing either value
    take no part; identical points are all on the front."""
    pool = [row for row in trained(rows, metric) if row.get(cost) is not None]

    def dominates(a: dict, b: dict) -> bool:
        return a[metric] >= b[metric] and a[cost] <= b[cost] and (a[metric] > b[metric] or a[cost] < b[cost])

    front = [row for row in pool if not any(dominates(other, row) for other in pool)]
    return sorted(front, key=lambda row: (row[cost], -row[metric], row["name"]))


def best_candidate(rows: list[dict], metric: str, size_by: str = "latency") -> dict | None:
    """The top scorer; among equal scores the smallest by ``size_by``, then the first name."""
    pool = trained(rows, metric)
    if not pool:
        return None
    size_key = SIZE_KEYS[size_by]
    return min(pool, key=lambda row: (-row[metric], _size(row, size_key), row["name"]))


def _ratio(numerator, denominator) -> float | None:
    if numerator is None or denominator is None or numerator <= 0 or denominator <= 0:
        return None
    return float(numerator) / float(denominator)


def _times(ratio: float | None, more: str, less: str, same: str) -> str:
    """'2.4× faster' / '1.3× slower' / 'about as fast' from a ratio where > 1 means ``more``."""
    if ratio is None:
        return f"not measured ({more})"
    if abs(ratio - 1) < 0.05:
        return same
    return f"{ratio:.1f}× {more}" if ratio > 1 else f"{1 / ratio:.1f}× {less}"


def _points(value: float) -> str:
    return f"{100 * value:.1f} pt"


def cost_statement(best: dict, chosen: dict, cost: dict, metric: str) -> str:
    """What the recommendation costs against the best, in one sentence."""
    if chosen is best:
        return "It is the best candidate, so it gives up nothing."
    return (f"Against the best ({best['name']}) it gives up {cost['quality_points_lost']:.1f} points of "
            f"{METRIC_NAMES.get(metric, metric)} and is {_times(cost['speedup'], 'faster', 'slower', 'about as fast')}, "
            f"{_times(cost['params_ratio'], 'smaller', 'larger', 'about as large')} in parameters and "
            f"{_times(cost['size_ratio'], 'smaller', 'larger', 'about as large')} on disk.")


def recommendation(rows: list[dict], metric: str, tolerance: float, size_by: str = "latency",
                   speedup_target: float = 2.0) -> dict:
    """The decision and its costs.

    ``recommended`` is the smallest candidate by ``size_by`` whose ``metric`` is within
    ``tolerance`` of the best (ties: higher score, then name). ``cost`` compares it with the best:
    points of quality lost, times faster (p50 latency), times smaller (parameters, disk).
    ``speed`` says whether any candidate within tolerance is at least ``speedup_target`` times
    faster than the best teacher, or that none qualifies.
    """
    if size_by not in SIZE_KEYS:
        raise UserError(f"report.size_by must be one of {', '.join(SIZE_KEYS)}, not '{size_by}'")
    size_key = SIZE_KEYS[size_by]
    pool = trained(rows, metric)
    best = best_candidate(rows, metric, size_by)
    if best is None:
        return {"recommended": None, "best": None, "within_tolerance": [], "cost": None,
                "reason": "no trained candidate to recommend", "cost_statement": "",
                "speed": {"meets_target": False, "target": speedup_target, "qualifying": [],
                          "statement": "None qualifies: there is no trained candidate."}}
    floor = best[metric] - tolerance - EPSILON
    within = [row for row in pool if row[metric] >= floor]
    chosen = min(within, key=lambda row: (_size(row, size_key), -row[metric], row["name"]))
    name = METRIC_NAMES.get(metric, metric)
    cost = {
        "quality_points_lost": round(100 * (best[metric] - chosen[metric]), 4),
        "speedup": _ratio(best.get("latency_ms"), chosen.get("latency_ms")),
        "params_ratio": _ratio(best.get("params"), chosen.get("params")),
        "size_ratio": _ratio(best.get("size_mb"), chosen.get("size_mb")),
    }
    if chosen is best:
        others = "no other candidate" if len(pool) > 1 else "it is the only candidate, so nothing"
        reason = (f"{chosen['name']} has the best {name} ({chosen[metric]:.4f}) and {others} within "
                  f"{_points(tolerance)} of it is {COMPARATIVES[size_by]}")
    else:
        reason = (f"{chosen['name']} is the {SIZE_WORDS[size_by]} of the {len(within)} candidates within {_points(tolerance)} "
                  f"of the best {name} ({best['name']}, {best[metric]:.4f}), with {chosen[metric]:.4f}")
    return {"recommended": chosen["name"], "best": best["name"], "within_tolerance": [row["name"] for row in within],
            "cost": cost, "reason": reason, "cost_statement": cost_statement(best, chosen, cost, metric),
            "speed": speed_verdict(pool, within, chosen, metric, tolerance, speedup_target)}


def speed_verdict(pool: list[dict], within: list[dict], chosen: dict, metric: str, tolerance: float,
                  target: float) -> dict:
    """Is a candidate within tolerance at least ``target`` times faster than the best teacher?"""
    teachers = [row for row in pool if row.get("kind") == "teacher" and row.get("latency_ms")]
    if not teachers:
        return {"meets_target": False, "target": target, "teacher": None, "qualifying": [],
                "statement": f"No teacher was measured, so the {target:g}× speed target against the best teacher does not apply."}
    teacher = min(teachers, key=lambda row: (-row[metric], row["latency_ms"], row["name"]))
    speedups = {row["name"]: _ratio(teacher["latency_ms"], row.get("latency_ms")) for row in within}
    qualifying = sorted((n for n, s in speedups.items() if s is not None and s >= target - EPSILON),
                        key=lambda n: -speedups[n])
    verdict = {"meets_target": bool(qualifying), "target": target, "teacher": teacher["name"],
               "teacher_latency_ms": teacher["latency_ms"], "qualifying": qualifying,
               "recommended_speedup": speedups.get(chosen["name"])}
    if chosen["name"] in qualifying:
        statement = (f"{chosen['name']} is {speedups[chosen['name']]:.1f}× faster than the best teacher "
                     f"({teacher['name']}, {teacher['latency_ms']:.2f} ms) and within {_points(tolerance)} of the best: "
                     f"it meets the {target:g}× target.")
    elif qualifying:
        fastest = qualifying[0]
        statement = (f"{fastest} is {speedups[fastest]:.1f}× faster than the best teacher ({teacher['name']}) within "
                     f"{_points(tolerance)} of the best, so the {target:g}× target is met, though not by the "
                     f"recommendation, which is chosen by size.")
    else:
        measured = {n: s for n, s in speedups.items() if s is not None}
        fastest = max(measured, key=lambda n: measured[n]) if measured else None
        tail = (f"; the fastest within tolerance, {fastest}, is {measured[fastest]:.1f}× as fast" if fastest else "")
        fast = [row for row in pool if row not in within
                and (_ratio(teacher["latency_ms"], row.get("latency_ms")) or 0) >= target - EPSILON]
        if fast:  # what the speed would cost in quality
            nearest = max(fast, key=lambda row: (row[metric], row["name"]))
            tail += (f"; the best of those that are fast enough, {nearest['name']} "
                     f"({_ratio(teacher['latency_ms'], nearest['latency_ms']):.1f}×), is "
                     f"{100 * (max(row[metric] for row in within) - nearest[metric]):.1f} points below the best")
        statement = (f"None qualifies: no candidate within {_points(tolerance)} of the best {METRIC_NAMES.get(metric, metric)} "
                     f"is at least {target:g}× faster than the best teacher ({teacher['name']}, "
                     f"{teacher['latency_ms']:.2f} ms){tail}.")
    verdict["statement"] = statement
    return verdict


def recommend(candidates: list[dict], metric: str, tolerance: float, size_by: str = "latency") -> tuple[str | None, str]:
    """(name, reason): the smallest candidate within ``tolerance`` of the best ``metric``."""
    decision = recommendation(candidates, metric, tolerance, size_by)
    return decision["recommended"], decision["reason"]


# ---------------------------------------------------------------------------------------------
# flags


def distillation_effects(rows: list[dict], metric: str) -> list[dict]:
    """Each distilled student against its control (``control_of``: same student, no teacher)."""
    by_name = {row["name"]: row for row in rows}
    effects = []
    for control in rows:
        student = by_name.get(control.get("control_of") or "")
        if student is None or student is control or student.get(metric) is None or control.get(metric) is None:
            continue
        effects.append({"student": student["name"], "control": control["name"], "student_score": student[metric],
                        "control_score": control[metric], "gain_points": round(100 * (student[metric] - control[metric]), 4)})
    return sorted(effects, key=lambda effect: effect["student"])


def _full_finetune_for(adapter: dict, teachers: list[dict], metric: str, config: RunConfig | None) -> dict | None:
    """The teacher an adapter competes with: the one fine-tuned from the same base (by teacher name,
    then by model reference, from its metrics or the config), else the best teacher."""
    if not teachers:
        return None
    references = {t.name: t.model for t in config.teachers} if config is not None else {}
    configured = next((a.base for a in config.adapters if a.name == adapter["name"]), None) if config is not None else None
    hints = [hint for hint in (adapter.get("base_teacher"), adapter.get("base"), configured, adapter.get("base_model")) if hint]
    for hint in hints:
        same = [t for t in teachers if t["name"] == hint] or [t for t in teachers if references.get(t["name"]) == hint]
        if same:
            return max(same, key=lambda row: (row[metric], row["name"]))
    return max(teachers, key=lambda row: (row[metric], row["name"]))


def find_flags(rows: list[dict], metric: str, config: RunConfig | None = None) -> list[dict]:
    """What a reader should not miss: candidates no better than the majority baseline, students
    distillation did not help, adapters that beat full fine-tuning."""
    name = METRIC_NAMES.get(metric, metric)
    flags = []
    baseline = next((row for row in rows if row.get("kind") == "baseline" and row.get(metric) is not None), None)
    pool = trained(rows, metric)
    if baseline is not None:
        for row in pool:
            if row[metric] <= baseline[metric] + EPSILON:
                flags.append({"flag": "below_baseline", "candidate": row["name"],
                              "message": f"{row['name']} is no better than the majority-class baseline "
                                         f"({name} {row[metric]:.4f} vs {baseline[metric]:.4f}): it learned nothing usable"})
    for effect in distillation_effects(rows, metric):
        if effect["gain_points"] <= 0:
            flags.append({"flag": "distillation_no_gain", "candidate": effect["student"],
                          "message": f"distillation did not help {effect['student']}: {name} {effect['student_score']:.4f} "
                                     f"vs {effect['control_score']:.4f} for {effect['control']} trained without a teacher"})
    teachers = [row for row in pool if row.get("kind") == "teacher"]
    for adapter in (row for row in pool if row.get("kind") == "adapter"):
        full = _full_finetune_for(adapter, teachers, metric, config)
        if full is not None and adapter[metric] > full[metric] + EPSILON:
            flags.append({"flag": "adapter_beats_full_finetune", "candidate": adapter["name"],
                          "message": f"adapter {adapter['name']} beats full fine-tuning of {full['name']} "
                                     f"({name} {adapter[metric]:.4f} vs {full[metric]:.4f}) while training "
                                     f"{_fmt_percent(trainable_percent(adapter))} of its parameters"})
    return flags


# ---------------------------------------------------------------------------------------------
# figures (matplotlib's object API on the Agg canvas: no global pyplot state, no display)


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=110, layout="constrained")


def plot_pareto(rows: list[dict], metric: str, decision: dict, tolerance: float, path: Path) -> bool:
    """Quality against p50 latency: marker area = parameters, colour = kind, the Pareto front as a
    staircase, the tolerance band under the best, the baseline as a line, the recommendation ringed."""
    pool = [row for row in trained(rows, metric) if row.get("latency_ms") is not None]
    if not pool:
        return False
    name = METRIC_NAMES.get(metric, metric)
    figure = _figure(7.5, 4.8)
    axes = figure.add_subplot()
    largest = max((row.get("params") or 0) for row in pool) or 1

    def area(row: dict) -> float:
        return 40 + 900 * math.sqrt((row.get("params") or 0) / largest)

    for kind in KINDS:
        group = [row for row in pool if row["kind"] == kind]
        if group:
            axes.scatter([row["latency_ms"] for row in group], [row[metric] for row in group],
                         s=[area(row) for row in group], c=KIND_COLOURS[kind], alpha=0.7, edgecolors="white",
                         linewidths=0.8, label=kind, zorder=3)
    others = [row for row in pool if row["kind"] not in KINDS]
    if others:
        axes.scatter([row["latency_ms"] for row in others], [row[metric] for row in others],
                     s=[area(row) for row in others], c="#17becf", alpha=0.7, label="other", zorder=3)
    front = pareto_front(pool, metric)
    if front:
        xs = [row["latency_ms"] for row in front]
        ys = [row[metric] for row in front]
        axes.step(xs + [max(row["latency_ms"] for row in pool) * 1.15], ys + ys[-1:], where="post", color="black",
                  linewidth=1.2, linestyle="--", alpha=0.7, label="Pareto front", zorder=2)
    best = next(row for row in pool if row["name"] == decision["best"]) if decision.get("best") else None
    if best is not None:
        axes.axhspan(best[metric] - tolerance, best[metric], color="#2ca02c", alpha=0.10, zorder=1,
                     label=f"within {_points(tolerance)} of best")
    scores = [row[metric] for row in pool] + ([best[metric] - tolerance] if best is not None else [])
    margin = max(max(scores) - min(scores), 0.02) * 0.12
    low, high = min(scores) - margin, max(scores) + margin
    baseline = next((row for row in rows if row.get("kind") == "baseline" and row.get(metric) is not None), None)
    if baseline is not None and baseline[metric] >= low:
        axes.axhline(baseline[metric], color=KIND_COLOURS["baseline"], linestyle=":", linewidth=1.2,
                     label="majority baseline", zorder=1)
    elif baseline is not None:  # far below every candidate: say so rather than squash the axis
        axes.plot([], [], color=KIND_COLOURS["baseline"], linestyle=":", label=f"majority baseline {baseline[metric]:.3f} (off the axis)")
    axes.set_ylim(low, high)
    chosen = next((row for row in pool if row["name"] == decision.get("recommended")), None)
    if chosen is not None:
        axes.scatter([chosen["latency_ms"]], [chosen[metric]], s=area(chosen) * 2.2 + 120, facecolors="none",
                     edgecolors="crimson", linewidths=2.2, label="recommended", zorder=4)
    points: dict[tuple[float, float], list[dict]] = {}
    for row in pool:  # one label per point: candidates that coincide share it
        points.setdefault((row["latency_ms"], row[metric]), []).append(row)
    for (latency, score), together in points.items():
        axes.annotate(", ".join(row["name"] for row in together), (latency, score), textcoords="offset points",
                      xytext=(8, 6), fontsize=8, weight="bold" if chosen in together else "normal")
    latencies = [row["latency_ms"] for row in pool if row["latency_ms"] > 0]
    if latencies and max(latencies) / min(latencies) > 20:
        axes.set_xscale("log")
    axes.set_xlabel("latency p50 (ms per example)")
    axes.set_ylabel(f"{name} (test)")
    axes.set_title(f"{name} against latency — marker area ∝ parameters")
    axes.grid(alpha=0.3)
    axes.legend(loc="best", fontsize=8, markerscale=0.5, framealpha=0.85)
    figure.savefig(path)
    return True


def plot_confusions(rows: list[dict], path: Path) -> bool:
    """Row-normalised confusion matrices (counts written in the cells), one panel per row."""
    shown = [row for row in rows if row.get("confusion_matrix")]
    if not shown:
        return False
    labels = shown[0].get("labels") or [str(i) for i in range(len(shown[0]["confusion_matrix"]))]
    side = min(2.2 + 0.45 * len(labels), 9)
    figure = _figure(side * len(shown) + 0.8, side + 0.4)
    for index, row in enumerate(shown, 1):
        counts = np.asarray(row["confusion_matrix"], dtype=float)
        recall = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
        axes = figure.add_subplot(1, len(shown), index)
        image = axes.imshow(recall, cmap="Blues", vmin=0, vmax=1)
        names = row.get("labels") or labels
        axes.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
        axes.set_yticks(range(len(names)), names, fontsize=8)
        axes.set_xlabel("predicted")
        axes.set_ylabel("true")
        axes.set_title(f"{row['name']} ({row['kind']})", fontsize=10)
        if len(names) <= 12:
            for (i, j), value in np.ndenumerate(counts):
                axes.text(j, i, f"{int(value)}", ha="center", va="center", fontsize=8,
                          color="white" if recall[i, j] > 0.6 else "black")
    figure.colorbar(image, ax=figure.axes, shrink=0.8, label="share of the true class")
    figure.savefig(path)
    return True


def plot_probe(probe: dict, rows: list[dict], metric: str, path: Path) -> bool:
    """The probe's per-layer score (linear probe on frozen layers) with each fine-tuned slice and
    the fine-tuned full model drawn at their depth: how much of the model the task needs."""
    layers = [entry for entry in probe.get("layers", []) if isinstance(entry, dict) and "layer" in entry]
    if not layers:
        return False
    name = METRIC_NAMES.get(metric, metric)
    figure = _figure(7, 4)
    axes = figure.add_subplot()
    depths = [entry["layer"] for entry in layers]
    for split, style in (("validation", "o-"), ("test", "s--")):
        scores = [entry.get(split, {}).get(metric) for entry in layers]
        if all(score is not None for score in scores):
            axes.plot(depths, scores, style, label=f"linear probe ({split})", alpha=0.8)
    slices = [(slice_depth(row), row) for row in rows if row.get("kind") == "slice" and row.get(metric) is not None]
    slices = [(depth, row) for depth, row in slices if depth is not None]
    if slices:
        axes.scatter([d for d, _ in slices], [row[metric] for _, row in slices], marker="D", s=70,
                     c=KIND_COLOURS["slice"], label="fine-tuned slice (test)", zorder=3)
        for depth, row in slices:
            axes.annotate(row["name"], (depth, row[metric]), textcoords="offset points", xytext=(6, -12), fontsize=8)
    full = next((row for row in rows if row.get("name") == probe.get("model") and row.get(metric) is not None), None)
    if full is not None and probe.get("depth"):
        axes.scatter([probe["depth"]], [full[metric]], marker="*", s=160, c=KIND_COLOURS.get(full.get("kind"), "black"),
                     label=f"{full['name']}, fine-tuned (test)", zorder=3)
    chance = (probe.get("chance") or {}).get("majority", {}).get(metric)
    if chance is not None:
        axes.axhline(chance, color="grey", linestyle=":", label="majority class")
    if probe.get("best_layer") is not None:
        axes.axvline(probe["best_layer"], color="grey", alpha=0.4, linewidth=6, label=f"best probe layer ({probe['best_layer']})")
    axes.set_xlabel("layers kept (depth)")
    axes.set_ylabel(name)
    axes.set_xticks(sorted(set(depths) | {d for d, _ in slices}))
    axes.set_title(f"layer probe: {probe.get('model', '?')}")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8, loc="best")
    figure.savefig(path)
    return True


# ---------------------------------------------------------------------------------------------
# rendering


def _fmt(value, digits: int = 4) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    if isinstance(value, int) and value >= 10_000:
        return f"{value / 1e6:.2f}M"
    return str(value)


def _fmt_percent(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value:.0f}%" if value >= 10 else f"{value:.2g}%"


FIGURE_CAPTIONS = {"pareto": "Quality against latency", "confusion": "Confusion matrices", "probe": "Layer probe"}
TABLE_COLUMNS = ("rank", "candidate", "kind", "accuracy", "macro-F1", "latency p50 (ms)", "p95 (ms)", "throughput (/s)",
                 "params", "trainable", "size (MB)", "train time (s)", "Pareto")


def table_cells(rows: list[dict], report: dict) -> list[list[str]]:
    """The leaderboard as text cells, one list per row (shared by Markdown and HTML)."""
    front = set(report["pareto_front"])
    cells = []
    for rank, row in enumerate(rows, 1):
        marks = (" ⭐" if row["name"] == report["recommended"] else "") + (" (best)" if row["name"] == report["best"] else "")
        measured = row.get("kind") != "baseline"  # the baseline's zeros are not measurements
        cells.append([str(rank), row["name"] + marks, row["kind"], _fmt(row.get("accuracy")), _fmt(row.get("macro_f1")),
                      *(_fmt(row.get(key), digits) if measured else "–" for key, digits in
                        (("latency_ms", 3), ("latency_p95_ms", 3), ("throughput_per_s", 1), ("params", 4))),
                      _fmt_percent(trainable_percent(row)) if measured else "–",
                      _fmt(row.get("size_mb"), 2) if measured else "–", _fmt(row.get("train_time_s"), 1),
                      "●" if row["name"] in front else ""])
    return cells


def _data_line(card: dict, code: bool = False) -> str:
    rows = card.get("rows", {})
    source = f"`{card.get('source', '?')}`" if code else card.get("source", "?")
    return (f"Data: {source} — {rows.get('train', '?')} train / {rows.get('validation', '?')} validation / "
            f"{rows.get('test', '?')} test rows, {card.get('num_labels', '?')} classes ({', '.join(card.get('label_names', []))}).")


def _settings_line(report: dict) -> str:
    return (f"Metric: {report['metric']} on the test split; tolerance: {report['tolerance']:g} ({_points(report['tolerance'])}); "
            f"size measured by {report['size_by']}; speed target: {report['speed']['target']:g}× faster than the best teacher.")


def render_markdown(report: dict, rows: list[dict], card: dict, figures: dict[str, str]) -> str:
    lines = [f"# rightsizer report: {report['name']}", "", _data_line(card, code=True), "",
             "## Recommendation", ""]
    if report["recommended"]:
        lines.append("Recommended: " + report["reason"].replace(report["recommended"], f"**{report['recommended']}**", 1) + ".")
    else:
        lines.append(f"None: {report['reason']}.")
    if report["cost_statement"]:
        lines += ["", report["cost_statement"]]
    lines += ["", report["speed"]["statement"], "", _settings_line(report), ""]
    if report["flags"]:
        lines += ["## Flags", ""] + [f"- ⚠️ {flag['message']}." for flag in report["flags"]] + [""]
    lines += ["## Leaderboard", "", "| " + " | ".join(TABLE_COLUMNS) + " |",
              "|" + "|".join("---" if c in ("candidate", "kind", "Pareto") else "---:" for c in TABLE_COLUMNS) + "|"]
    lines += ["| " + " | ".join(cells) + " |" for cells in table_cells(rows, report)]
    lines += ["", "⭐ recommended · ● on the Pareto front of quality against latency", ""]
    if report["distillation"]:
        lines += ["## Distillation against its control", "", "| student | with teacher | control | without | gain (pt) |",
                  "|---|---:|---|---:|---:|"]
        lines += [f"| {e['student']} | {e['student_score']:.4f} | {e['control']} | {e['control_score']:.4f} | {e['gain_points']:+.1f} |"
                  for e in report["distillation"]] + [""]
    for key, caption in FIGURE_CAPTIONS.items():
        if key in figures:
            lines += [f"## {caption}", "", f"![{caption}]({figures[key]})", ""]
    return "\n".join(lines)


HTML_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1180px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.6em;margin-bottom:.2em}h2{font-size:1.2em;margin-top:1.6em;border-bottom:1px solid #ddd;padding-bottom:.2em}
.muted{color:#666;font-size:.9em}.box{background:#f3f8f3;border-left:4px solid #2ca02c;padding:.6em 1em;margin:1em 0}
.box.none{background:#fbf5ec;border-color:#e08a00}.flags li{margin:.3em 0}
table{border-collapse:collapse;font-size:.88em;width:100%}th,td{padding:.35em .6em;border-bottom:1px solid #e4e4e4;text-align:right;white-space:nowrap}
th{background:#fafafa}td.l,th.l{text-align:left}tr.rec td{background:#fff7d6;font-weight:600}tr.baseline td{color:#888}
img{max-width:100%;height:auto;border:1px solid #eee}
"""


LEFT = ' class="l"'


def _embed(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def render_html(report: dict, rows: list[dict], card: dict, figures: dict[str, Path]) -> str:
    """One self-contained page: inline style, figures as base64 data URIs, no external URL."""
    e = html.escape
    parts = ["<!doctype html>", '<html lang="en"><head><meta charset="utf-8">',
             f"<title>rightsizer report: {e(report['name'])}</title><style>{HTML_STYLE}</style></head><body>",
             f"<h1>rightsizer report: {e(report['name'])}</h1>", f'<p class="muted">{e(_data_line(card))}</p>',
             "<h2>Recommendation</h2>"]
    if report["recommended"]:
        name = e(report["recommended"])
        parts.append(f'<div class="box"><p>Recommended: {e(report["reason"]).replace(name, f"<strong>{name}</strong>", 1)}.</p>')
    else:
        parts.append(f'<div class="box none"><p>None: {e(report["reason"])}.</p>')
    if report["cost_statement"]:
        parts.append(f"<p>{e(report['cost_statement'])}</p>")
    parts.append(f"<p>{e(report['speed']['statement'])}</p></div>")
    parts.append(f'<p class="muted">{e(_settings_line(report))}</p>')
    if report["flags"]:
        parts.append('<h2>Flags</h2><ul class="flags">')
        parts += [f"<li>⚠️ {e(flag['message'])}.</li>" for flag in report["flags"]]
        parts.append("</ul>")
    parts.append("<h2>Leaderboard</h2><table><thead><tr>")
    parts += [f'<th{LEFT if c in ("candidate", "kind") else ""}>{e(c)}</th>' for c in TABLE_COLUMNS]
    parts.append("</tr></thead><tbody>")
    for row, cells in zip(rows, table_cells(rows, report)):
        css = ' class="rec"' if row["name"] == report["recommended"] else ' class="baseline"' if row.get("kind") == "baseline" else ""
        parts.append(f'<tr{css}>' + "".join(
            f'<td{LEFT if column in ("candidate", "kind") else ""}>{e(cell)}</td>'
            for column, cell in zip(TABLE_COLUMNS, cells)) + "</tr>")
    parts.append('</tbody></table><p class="muted">⭐ recommended · ● on the Pareto front of quality against latency · '
                 "latency is end to end (tokenize + forward) per example</p>")
    if report["distillation"]:
        parts.append("<h2>Distillation against its control</h2><table><thead><tr><th class=\"l\">student</th><th>with teacher</th>"
                     "<th class=\"l\">control</th><th>without</th><th>gain (pt)</th></tr></thead><tbody>")
        parts += [f'<tr><td class="l">{e(x["student"])}</td><td>{x["student_score"]:.4f}</td><td class="l">{e(x["control"])}</td>'
                  f'<td>{x["control_score"]:.4f}</td><td>{x["gain_points"]:+.1f}</td></tr>' for x in report["distillation"]]
        parts.append("</tbody></table>")
    for key, caption in FIGURE_CAPTIONS.items():
        if key in figures:
            parts.append(f'<h2>{caption}</h2><img alt="{caption}" src="{_embed(figures[key])}">')
    parts.append(f'<p class="muted">rightsizer {e(__version__)} · {e(time.strftime("%Y-%m-%d %H:%M"))}</p></body></html>')
    return "\n".join(parts)


# ---------------------------------------------------------------------------------------------
# the stage


def collect_metrics(metrics_dirs: list[str | Path]) -> list[dict]:
    rows = []
    for directory in metrics_dirs:
        path = Path(directory) / "metrics.json"
        if not path.exists():
            raise UserError(f"'{directory}' has no metrics.json; give evaluation outputs")
        rows.append(read_json(path))
    seen: dict[str, int] = {}
    for row in rows:
        seen[row["name"]] = seen.get(row["name"], 0) + 1
    repeated = sorted(name for name, count in seen.items() if count > 1)
    if repeated:
        raise UserError(f"candidate names must be unique; repeated: {', '.join(repeated)} (rename them in the config)")
    return rows


def read_probe(probe_dir: str | Path | None) -> dict | None:
    if probe_dir is None:
        return None
    path = Path(probe_dir) / "probe.json"
    if not path.exists():
        raise UserError(f"'{probe_dir}' has no probe.json; give the probe stage's output")
    return read_json(path)


def build_report(rows: list[dict], config: RunConfig) -> dict:
    """Everything the report says, as data (saved as report.json)."""
    settings = config.report
    metric = settings.metric
    decision = recommendation(rows, metric, settings.tolerance, settings.size_by, settings.speedup_target)
    return {"name": config.name, "metric": metric, "tolerance": settings.tolerance, "size_by": settings.size_by,
            **decision, "pareto_front": [row["name"] for row in pareto_front(rows, metric)],
            "flags": find_flags(rows, metric, config), "distillation": distillation_effects(rows, metric)}


def run(config: RunConfig, data_dir: str | Path, metrics_dirs: list[str | Path], output_dir: str | Path,
        probe_dir: str | Path | None = None) -> dict:
    dataset, card = load_prepared(data_dir)
    rows = collect_metrics(metrics_dirs)
    rows.append(baseline_row(dataset, card))
    probe = read_probe(probe_dir)
    metric = config.report.metric
    rows.sort(key=lambda r: (-(r.get(metric) or 0.0), r["name"]))
    report = build_report(rows, config)
    leaderboard = {
        "metric": metric, "tolerance": config.report.tolerance, "recommended": report["recommended"],
        "reason": report["reason"],
        "candidates": [{key: row.get(key) for key in LEADERBOARD_KEYS} for row in rows],
    }
    by_name = {row["name"]: row for row in rows}
    with stage_output(output_dir, "report", config, name="report") as out:
        figures: dict[str, Path] = {}
        if plot_pareto(rows, metric, report, config.report.tolerance, out.work / "pareto.png"):
            figures["pareto"] = out.work / "pareto.png"
        shown = [by_name[n] for n in dict.fromkeys([report["recommended"], report["best"]]) if n in by_name]
        if plot_confusions(shown, out.work / "confusion.png"):
            figures["confusion"] = out.work / "confusion.png"
        if probe is not None:
            write_json(out.work / "probe.json", probe)
            if plot_probe(probe, rows, metric, out.work / "probe.png"):
                figures["probe"] = out.work / "probe.png"
        write_json(out.work / "leaderboard.json", leaderboard)
        write_json(out.work / "candidates.json", rows)
        write_json(out.work / "report.json", report)
        (out.work / "report.md").write_text(render_markdown(report, rows, card, {k: p.name for k, p in figures.items()}))
        (out.work / "report.html").write_text(render_html(report, rows, card, figures))
        out.summary.update({"recommended": report["recommended"], "best": report["best"], "candidates": len(rows),
                            "meets_speedup_target": report["speed"]["meets_target"],
                            "flags": [flag["flag"] + ":" + flag["candidate"] for flag in report["flags"]]})
    return leaderboard
