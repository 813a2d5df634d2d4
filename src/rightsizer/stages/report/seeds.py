"""A candidate trained with several seeds (config ``seeds``) as one leaderboard row.

Each seed's run is evaluated on its own (one ``metrics.json`` each, all under the candidate's name, told
apart by ``seed``). The report folds them into one row: accuracy and macro-F1 on validation and test are
the **mean over the seeds**, with the sample standard deviation beside them (``*_std``) and every seed's
own scores in ``per_seed``; the decision reads the row, so it uses the mean. The intervals (``*_ci``)
are bootstrap intervals of that mean over the split's examples (each resample scores every seed's
predictions and averages them, :meth:`Evidence.scores`); the spread over seeds is the ``*_std`` beside it.

The model the row points at (``path``, and ``recommended/`` when it is recommended) is the seed with the
best validation score — chosen on validation, like everything else — and latency, size and the
confusion matrix are that model's.
"""

from __future__ import annotations

import statistics

from rightsizer.errors import UserError
from rightsizer.stages.report.confidence import Evidence

SCORES = ("val_accuracy", "val_macro_f1", "accuracy", "macro_f1")
INTERVALS = {"accuracy_ci": ("test", "accuracy"), "macro_f1_ci": ("test", "macro_f1"),
             "val_accuracy_ci": ("validation", "accuracy"), "val_macro_f1_ci": ("validation", "macro_f1")}


def group_runs(rows: list[dict]) -> dict[str, list[dict]]:
    """The rows by candidate name, in order of first appearance; a name may repeat only with distinct seeds."""
    groups: dict[str, list[dict]] = {}
    for row in rows:
        groups.setdefault(row["name"], []).append(row)
    repeated = sorted(name for name, runs in groups.items() if len(runs) > 1
                      and len({run.get("seed") for run in runs} - {None}) != len(runs))
    if repeated:
        raise UserError(f"candidate names must be unique; repeated: {', '.join(repeated)} (rename them in the config)")
    return groups


def shipped_run(runs: list[dict], metric: str) -> dict:
    """The seed whose model is shipped: the best validation ``metric`` (test when no validation score), the
    lowest seed on ties."""
    key = f"val_{metric}" if all(run.get(f"val_{metric}") is not None for run in runs) else metric
    return max(runs, key=lambda run: (run.get(key) or 0.0, -(run.get("seed") or 0)))


def merge_runs(runs: list[dict], metric: str, evidence: Evidence | None = None) -> dict:
    """One row for a candidate's seeds (see the module docstring); a single run comes back with ``seeds`` set."""
    if len(runs) == 1:
        row = runs[0]
        return {**row, "seeds": [row["seed"]]} if row.get("seed") is not None else row
    runs = sorted(runs, key=lambda run: run["seed"])
    chosen = shipped_run(runs, metric)
    merged = {**chosen, "seeds": [run["seed"] for run in runs]}
    for key in SCORES:
        values = [run[key] for run in runs if run.get(key) is not None]
        merged[key] = round(statistics.fmean(values), 6) if len(values) == len(runs) else None
        merged[f"{key}_std"] = round(statistics.stdev(values), 6) if len(values) == len(runs) else None
    name = chosen["name"]
    covered = evidence is not None and len(evidence.runs.get(name, ())) == len(runs)
    for key, (split, score) in INTERVALS.items():
        merged[key] = evidence.interval(name, split, score) if covered else None
    merged["per_seed"] = [{"seed": run["seed"], **{key: run.get(key) for key in SCORES}, "path": run.get("path")}
                          for run in runs]
    return merged


def combine_seeds(rows: list[dict], metric: str, evidence: Evidence | None = None) -> list[dict]:
    """Every candidate's rows, each candidate's seeds folded into one row (:func:`merge_runs`), in order."""
    return [merge_runs(runs, metric, evidence) for runs in group_runs(rows).values()]
