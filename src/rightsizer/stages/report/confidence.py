"""How far to trust the decision: chance, the guard, paired comparisons with the best, confirmation on test.

The report chooses on the validation split and confirms on test. Each evaluation saved every
example's predicted label on both splits (``predictions.json``), so a candidate is compared with
the best on *the same examples* (a paired bootstrap, :func:`rightsizer.stats.paired_difference`):
"student-2l: −0.8 pt [−2.1, +0.4] vs teacher" tells a reader whether "within tolerance" is real.

The guard: a candidate whose validation interval does not clear chance (the better of the majority
class and a stratified random guess, :func:`rightsizer.stats.chance_level`) learned nothing usable
and is never recommended; when no candidate clears it the answer is "no usable model".
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from rightsizer import stats
from rightsizer.stages.report.decision import METRIC_NAMES, best_candidate, recommendation, trained

SPLITS = ("validation", "test")
EPSILON = 1e-9


@dataclass
class Evidence:
    """What the paired comparisons need: the true labels, each candidate's predicted labels, chance."""

    labels: dict[str, np.ndarray]
    num_labels: int
    chance: dict[str, dict]  # split -> stats.chance_level(...)
    runs: dict[str, list[dict[str, np.ndarray]]] = field(default_factory=dict)  # name -> split -> labels, one per seed
    seed: int = 0
    _scores: dict = field(default_factory=dict, repr=False)  # (name, split, metric) -> (point, per-resample scores)

    @classmethod
    def from_dataset(cls, dataset, num_labels: int, seed: int = 0) -> "Evidence":
        labels = {split: np.asarray(dataset[split]["label"]) for split in SPLITS}
        train = np.asarray(dataset["train"]["label"])
        return cls(labels, num_labels, {split: stats.chance_level(train, labels[split], num_labels) for split in SPLITS},
                   seed=seed)

    def add(self, name: str, predictions: dict[str, np.ndarray] | None) -> None:
        """Record a candidate's predictions when they cover the splits' examples (else it is left out); a
        candidate trained with several seeds is added once per seed, under its one name."""
        if predictions and all(len(predictions.get(split, ())) == len(self.labels[split]) for split in SPLITS):
            self.runs.setdefault(name, []).append(predictions)

    @property
    def predictions(self) -> dict[str, dict[str, np.ndarray]]:
        """name -> split -> predicted labels of each candidate's first run."""
        return {name: runs[0] for name, runs in self.runs.items()}

    def scores(self, name: str, split: str, metric: str) -> tuple[float, np.ndarray]:
        """``name``'s ``metric`` on ``split`` and on each bootstrap resample of it (the same resamples for
        every candidate, so differences are paired); computed once per candidate and split. A candidate with
        several seeds scores the mean over its seeds, on the whole split and on each resample."""
        key = (name, split, metric)
        if key not in self._scores:
            labels = self.labels[split]
            indices = stats.resample_indices(len(labels), stats.RESAMPLES, self.seed)
            every = np.arange(len(labels))[None, :]
            points, resampled = [], []
            for run in self.runs[name]:
                points.append(stats.scores_from_confusions(
                    stats.confusions(labels, run[split], self.num_labels, every), metric)[0])
                resampled.append(stats.scores_from_confusions(
                    stats.confusions(labels, run[split], self.num_labels, indices), metric))
            self._scores[key] = (float(np.mean(points)), np.mean(resampled, axis=0))
        return self._scores[key]

    def interval(self, name: str, split: str, metric: str, confidence: float = 0.95) -> list[float] | None:
        """The bootstrap interval of ``name``'s ``metric`` on ``split`` (over its seeds' mean); None without
        predictions."""
        if name not in self.runs:
            return None
        return stats.interval(self.scores(name, split, metric)[1], confidence)

    def difference(self, name: str, reference: str, split: str, metric: str, confidence: float = 0.95) -> dict | None:
        """``metric(name) - metric(reference)`` on ``split`` with its paired bootstrap interval (as
        :func:`rightsizer.stats.paired_difference`); None without predictions."""
        if name not in self.runs or reference not in self.runs:
            return None
        (point, resampled), (reference_point, reference_resampled) = (
            self.scores(name, split, metric), self.scores(reference, split, metric))
        differences = resampled - reference_resampled
        return {"difference": round(point - reference_point, 6), "interval": stats.interval(differences, confidence),
                "worse_share": round(float((differences < 0).mean()), 4)}


def beats_chance(row: dict, metric: str, chance: float) -> bool:
    """The guard: the lower end of the row's validation interval is above chance (a row without an
    interval is judged on its point score)."""
    interval = row.get(f"val_{metric}_ci")
    low = interval[0] if interval else row.get(f"val_{metric}")
    return low is not None and low > chance + EPSILON


def not_worse(difference: dict | None) -> bool:
    """The ``not_worse`` rule: the paired interval of (candidate - best) reaches 0, so the data do not
    show the candidate is worse."""
    return difference is not None and difference["interval"][1] >= -EPSILON


def points(value: float, signed: bool = True) -> str:
    return f"{100 * value:+.1f}".replace("-", "−") if signed else f"{100 * value:.1f}"


def comparison_line(name: str, best: str, difference: dict) -> str:
    """'student-2l: −0.8 pt [−2.1, +0.4] vs teacher'."""
    low, high = difference["interval"]
    return f"{name}: {points(difference['difference'])} pt [{points(low)}, {points(high)}] vs {best}"


def no_usable_model(chance: dict, metric: str, card: dict, config) -> str:
    """One line: nothing beats chance, and the likely cause."""
    rows = card.get("rows", {}).get("train", "?")
    epochs = sorted({float(t.epochs) for t in [*config.teachers, *config.students, *config.adapters]}) if config else []
    steps = sorted({t.max_steps for t in [*config.teachers, *config.students, *config.adapters] if t.max_steps}) if config else []
    budget = (f"{min(steps)}-{max(steps)} steps" if steps else
              f"{epochs[0]:g}{'-' + format(epochs[-1], 'g') if len(epochs) > 1 else ''} epoch(s)" if epochs else "few epochs")
    return (f"no usable model: no candidate's validation {metric} interval clears chance "
            f"({chance[metric]:.4f}, {chance['by'][metric]} guessing) — likely too few training rows ({rows}) "
            f"or too little training ({budget}); add data or epochs and run again")


def decide(rows: list[dict], settings, evidence: Evidence | None = None, card: dict | None = None, config=None) -> dict:
    """The recommendation, chosen on validation and confirmed on test.

    Rows are judged on ``val_<metric>`` (on test, said as ``selected_on: "test"``, only when no row has
    a validation score: metrics from an older evaluation). The guard leaves out every row whose
    interval does not clear chance; among the rest :func:`recommendation` picks the smallest
    candidate within ``tolerance`` of the best (``rule: tolerance``) or not significantly worse than
    it at ``confidence`` (``rule: not_worse``, paired bootstrap). Every candidate is then compared
    with the best on the same validation and test examples, and the choice is confirmed on test when
    its paired test interval reaches the band it was chosen in.
    """
    metric, confidence = settings.metric, settings.confidence
    pool = trained(rows, metric)
    selected_on = "validation" if any(row.get(f"val_{metric}") is not None for row in pool) else "test"
    key = f"val_{metric}" if selected_on == "validation" else metric
    chance = evidence.chance[selected_on] if evidence is not None else None
    scored = [row for row in pool if row.get(key) is not None]
    usable = [row for row in scored if chance is None or beats_chance(_as(row, key, metric, prefix=True), metric, chance[metric])]
    view = [_as(row, key, metric) for row in usable]
    admissible, band = None, None
    if settings.rule == "not_worse":
        band = f"not significantly worse ({confidence:.0%} paired bootstrap) than"
        admissible = lambda row, best: not_worse(  # noqa: E731
            evidence.difference(row["name"], best["name"], selected_on, metric, confidence) if evidence else None)
    decision = recommendation(view, metric, settings.tolerance, settings.size_by, settings.speedup_target,
                              admissible=admissible, band=band, on=selected_on)
    decision.update({"selected_on": selected_on, "rule": settings.rule, "confidence": confidence,
                     "chance": chance, "usable": [row["name"] for row in usable], "comparisons": {},
                     "confirmation": None})
    if decision["best"] is None:
        if scored and chance is not None:
            decision["reason"] = no_usable_model(chance, metric, card or {}, config)
        return decision
    best = decision["best"]
    for row in pool:
        if row["name"] == best:
            continue
        compared = {}
        for split in SPLITS:
            difference = evidence.difference(row["name"], best, split, metric, confidence) if evidence else None
            if difference is not None:
                compared[split] = {**difference, "line": comparison_line(row["name"], best, difference)}
        if compared:
            decision["comparisons"][row["name"]] = compared
    decision["confirmation"] = confirmation(decision, {row["name"]: row for row in pool}, metric, settings, evidence)
    return decision


def _as(row: dict, key: str, metric: str, prefix: bool = False) -> dict:
    """The row with its ``key`` score (and interval) in the place the decision reads: ``metric``, or
    ``val_<metric>`` for the guard."""
    target = f"val_{metric}" if prefix else metric
    return {**row, target: row[key], f"{target}_ci": row.get(f"{key}_ci")}


def confirmation(decision: dict, rows: dict[str, dict], metric: str, settings, evidence: Evidence | None) -> dict:
    """Does test agree with the choice made on validation? One sentence and the numbers behind it."""
    name = METRIC_NAMES.get(metric, metric)
    chosen, best = rows[decision["recommended"]], rows[decision["best"]]
    interval = chosen.get(f"{metric}_ci")
    shown = f"{chosen[metric]:.4f}" + (f" [{interval[0]:.4f}, {interval[1]:.4f}]" if interval else "")
    test_chance = evidence.chance["test"][metric] if evidence is not None else None
    clears = test_chance is None or beats_chance(_as(chosen, metric, metric, prefix=True), metric, test_chance)
    warning = "" if clears else f" Warning: on test its interval does not clear chance ({test_chance:.4f})."
    if decision["selected_on"] == "test":
        return {"confirmed": None, "statement": f"Chosen on test (no validation scores): {chosen['name']} {name} {shown}.{warning}"}
    if chosen is best:
        return {"confirmed": clears, "statement": f"On test {chosen['name']} scores {name} {shown}.{warning}"}
    compared = decision["comparisons"].get(chosen["name"], {}).get("test")
    if compared is None:
        return {"confirmed": None, "statement": f"On test {chosen['name']} scores {name} {shown} (no per-example "
                                                f"predictions to compare it with {best['name']}).{warning}"}
    floor = 0.0 if settings.rule == "not_worse" else -settings.tolerance
    confirmed = compared["interval"][1] >= floor - EPSILON and clears
    best_interval = best.get(f"{metric}_ci")
    overlap = bool(interval and best_interval and interval[0] <= best_interval[1] and best_interval[0] <= interval[1])
    band = "not significantly worse" if settings.rule == "not_worse" else f"within {points(settings.tolerance, False)} pt"
    verdict = (f"Confirmed on test: {compared['line']} on the same examples — {band} is inside the interval"
               if confirmed else
               f"Not confirmed on test: {compared['line']} on the same examples — the interval stays below "
               f"{'zero' if settings.rule == 'not_worse' else '−' + points(settings.tolerance, False) + ' pt'}")
    statement = (f"{verdict}; test {name} {shown} against {best['name']}'s "
                 f"{best[metric]:.4f}" + (f" [{best_interval[0]:.4f}, {best_interval[1]:.4f}]" if best_interval else "")
                 + (", intervals overlapping." if overlap else ", intervals apart.") + warning)
    return {"confirmed": confirmed, "overlap": overlap, "statement": statement}
