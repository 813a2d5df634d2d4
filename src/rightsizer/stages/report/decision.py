"""The report's decision, pure: which candidate to recommend, what it costs, what to flag.

Functions of leaderboard rows (dicts with ``name``, ``kind`` and the metrics) and the report settings;
no files, no plots, no config loading — every rule here is tested on hand-made rows.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from rightsizer import candidates
from rightsizer.config import RunConfig
from rightsizer.errors import UserError

SIZE_KEYS = {"latency": "latency_ms", "params": "params", "size_mb": "size_mb"}
SIZE_WORDS = {"latency": "fastest", "params": "smallest by parameter count", "size_mb": "smallest on disk"}
COMPARATIVES = {"latency": "faster", "params": "smaller by parameter count", "size_mb": "smaller on disk"}
METRIC_NAMES = {"macro_f1": "macro-F1", "accuracy": "accuracy"}
EPSILON = 1e-9  # float slack when comparing a score with "best - tolerance"


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
                   speedup_target: float = 2.0, admissible: Callable[[dict, dict], bool] | None = None,
                   band: str | None = None, on: str | None = None) -> dict:
    """The decision and its costs.

    ``recommended`` is the smallest candidate by ``size_by`` whose ``metric`` is within
    ``tolerance`` of the best (ties: higher score, then name). ``cost`` compares it with the best:
    points of quality lost, times faster (p50 latency), times smaller (parameters, disk).
    ``speed`` says whether any candidate within tolerance is at least ``speedup_target`` times
    faster than the best teacher, or that none qualifies.

    ``admissible(row, best)`` replaces the tolerance test (the ``not_worse`` rule), ``band`` says in
    words what it admits ("not significantly worse than"), ``on`` names the split the scores are from.
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
    within = [row for row in pool if (admissible(row, best) if admissible else row[metric] >= floor) or row is best]
    chosen = min(within, key=lambda row: (_size(row, size_key), -row[metric], row["name"]))
    name = (f"{on} " if on else "") + METRIC_NAMES.get(metric, metric)
    band = band or f"within {_points(tolerance)} of"
    cost = {
        "quality_points_lost": round(100 * (best[metric] - chosen[metric]), 4),
        "speedup": _ratio(best.get("latency_ms"), chosen.get("latency_ms")),
        "params_ratio": _ratio(best.get("params"), chosen.get("params")),
        "size_ratio": _ratio(best.get("size_mb"), chosen.get("size_mb")),
    }
    if chosen is best:
        others = "no other candidate" if len(pool) > 1 else "it is the only candidate, so nothing"
        reason = (f"{chosen['name']} has the best {name} ({chosen[metric]:.4f}) and {others} {band} it is "
                  f"{COMPARATIVES[size_by]}")
    else:
        reason = (f"{chosen['name']} is the {SIZE_WORDS[size_by]} of the {len(within)} candidates {band} "
                  f"the best {name} ({best['name']}, {best[metric]:.4f}), with {chosen[metric]:.4f}")
    return {"recommended": chosen["name"], "best": best["name"], "within_tolerance": [row["name"] for row in within],
            "cost": cost, "reason": reason, "cost_statement": cost_statement(best, chosen, cost, metric),
            "speed": speed_verdict(pool, within, chosen, metric, tolerance, speedup_target, band, on)}


def speed_verdict(pool: list[dict], within: list[dict], chosen: dict, metric: str, tolerance: float,
                  target: float, band: str | None = None, on: str | None = None) -> dict:
    """Is a candidate within tolerance at least ``target`` times faster than the best teacher?"""
    band = band or f"within {_points(tolerance)} of"
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
                     f"({teacher['name']}, {teacher['latency_ms']:.2f} ms) and {band} the best: "
                     f"it meets the {target:g}× target.")
    elif qualifying:
        fastest = qualifying[0]
        statement = (f"{fastest} is {speedups[fastest]:.1f}× faster than the best teacher ({teacher['name']}) "
                     f"{band} the best, so the {target:g}× target is met, though not by the "
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
        statement = (f"None qualifies: no candidate {band} the best {(on + ' ') if on else ''}{METRIC_NAMES.get(metric, metric)} "
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
    """The teacher an adapter competes with: the one fine-tuned from the same pretrained model (the row's
    ``base_teacher``, else the adapter's candidate in the config, else a teacher whose model is the row's
    ``base_model``), else the best teacher."""
    if not teachers:
        return None
    teacher, model = adapter.get("base_teacher"), adapter.get("base_model")
    if config is not None and any(a.name == adapter["name"] for a in config.adapters):
        configured = candidates.find(config, "adapters", adapter["name"])
        teacher, model = teacher or configured.teacher, model or configured.model
    references = {t.name: t.model for t in config.teachers} if config is not None else {}
    same = [t for t in teachers if t["name"] == teacher]
    if not same and model:
        same = [t for t in teachers if references.get(t["name"]) == model]
    return max(same or teachers, key=lambda row: (row[metric], row["name"]))


def find_flags(rows: list[dict], metric: str, config: RunConfig | None = None, chance: float | None = None,
               on: str = "validation") -> list[dict]:
    """What a reader should not miss: candidates no better than chance (``chance``: their ``on``-split
    interval does not clear it; without it, no better than the majority baseline on test), students
    distillation did not help, adapters that beat full fine-tuning."""
    name = METRIC_NAMES.get(metric, metric)
    flags = []
    baseline = next((row for row in rows if row.get("kind") == "baseline" and row.get(metric) is not None), None)
    pool = trained(rows, metric)
    if chance is not None:
        key = f"val_{metric}" if on == "validation" else metric
        for row in pool:
            interval = row.get(f"{key}_ci")
            low = interval[0] if interval else row.get(key)
            if low is not None and low <= chance + EPSILON:
                shown = f"{row[key]:.4f}" + (f" [{interval[0]:.4f}, {interval[1]:.4f}]" if interval else "")
                flags.append({"flag": "below_chance", "candidate": row["name"],
                              "message": f"{row['name']} is no better than chance ({on} {name} {shown} vs {chance:.4f} "
                                         "by guessing): it learned nothing usable and is never recommended"})
    elif baseline is not None:
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


def _fmt_percent(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value:.0f}%" if value >= 10 else f"{value:.2g}%"



def headline_metrics(leaderboard: dict, report: dict) -> dict[str, float]:
    """The few numbers a dashboard shows for a run (the KFP UI's metrics of the report task)."""
    metric = leaderboard["metric"]
    rows = leaderboard["candidates"]
    best = next((row for row in rows if row["kind"] != "baseline"), rows[0])
    numbers = {f"best_{metric}": float(best[metric])}
    if leaderboard["recommended"]:
        chosen = next(row for row in rows if row["name"] == leaderboard["recommended"])
        numbers[f"recommended_{metric}"] = float(chosen[metric])
        if chosen.get("latency_ms") is not None:
            numbers["recommended_latency_ms"] = float(chosen["latency_ms"])
    if report.get("cost"):
        numbers["recommended_points_lost"] = float(report["cost"]["quality_points_lost"])
    if report["speed"].get("recommended_speedup"):
        numbers["recommended_speedup_vs_teacher"] = float(report["speed"]["recommended_speedup"])
    return numbers
