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

from __future__ import annotations

from pathlib import Path

from rightsizer.config import RunConfig
from rightsizer.data import load_prepared
from rightsizer.outputs import stage_output, write_json
from rightsizer.records import Leaderboard, LeaderboardRow
from rightsizer.stages.report.decision import (
    COMPARATIVES, EPSILON, METRIC_NAMES, SIZE_KEYS, SIZE_WORDS, best_candidate, cost_statement, distillation_effects,
    find_flags, headline_metrics, pareto_front, recommend, recommendation, speed_verdict, trainable_percent, trained)
from rightsizer.stages.report.figures import KIND_COLOURS, KINDS, plot_confusions, plot_pareto, plot_probe, slice_depth
from rightsizer.stages.evaluate import read_predictions
from rightsizer.stages.report.confidence import Evidence, decide
from rightsizer.stages.report.files import (LEADERBOARD_KEYS, baseline_row, collect_metrics, headline, read_probe,
                                           row_dirs)
from rightsizer.stages.report.model_card import model_card
from rightsizer.stages.report.seeds import combine_seeds
from rightsizer.stages.report.render import render_html, render_markdown, table_cells

__all__ = ["COMPARATIVES", "EPSILON", "KINDS", "KIND_COLOURS", "LEADERBOARD_KEYS", "METRIC_NAMES", "SIZE_KEYS",
           "SIZE_WORDS", "baseline_row", "best_candidate", "build_report", "collect_metrics", "cost_statement",
           "distillation_effects", "find_flags", "headline", "headline_metrics", "pareto_front", "plot_confusions", "plot_pareto", "plot_probe",
           "read_probe", "recommend", "recommendation", "render_html", "render_markdown", "run", "slice_depth",
           "speed_verdict", "table_cells", "trainable_percent", "trained"]


def build_report(rows: list[dict], config: RunConfig, evidence: Evidence | None = None, card: dict | None = None) -> dict:
    """Everything the report says, as data (saved as report.json)."""
    settings = config.report
    metric = settings.metric
    decision = decide(rows, settings, evidence, card, config)
    chance = decision["chance"][metric] if decision["chance"] else None
    return {"name": config.name, "metric": metric, "tolerance": settings.tolerance, "size_by": settings.size_by,
            **decision, "pareto_front": [row["name"] for row in pareto_front(rows, metric)],
            "flags": find_flags(rows, metric, config, chance=chance, on=decision["selected_on"]),
            "distillation": distillation_effects(rows, metric), "leakage": (card or {}).get("leakage")}


def run(config: RunConfig, data_dir: str | Path, metrics_dirs: list[str | Path], output_dir: str | Path,
        probe_dir: str | Path | None = None) -> dict:
    dataset, card = load_prepared(data_dir)
    runs = collect_metrics(metrics_dirs)
    evidence = Evidence.from_dataset(dataset, card["num_labels"], config.seed)
    for directory, row in zip(row_dirs(metrics_dirs), runs):
        evidence.add(row["name"], read_predictions(directory))
        row.setdefault("path", row.get("model_uri"))
    metric = config.report.metric
    rows = combine_seeds(runs, metric, evidence)  # one row per candidate: the mean over its seeds
    rows.append(baseline_row(dataset, card))
    probe = read_probe(probe_dir)
    report = build_report(rows, config, evidence, card)
    chosen_on = f"val_{metric}" if report["selected_on"] == "validation" else metric
    rows.sort(key=lambda r: (-(r.get(chosen_on) or 0.0), -(r.get(metric) or 0.0), r["name"]))
    by_name = {row["name"]: row for row in rows}
    recommended = by_name.get(report["recommended"] or "")
    leaderboard = Leaderboard(
        metric=metric, tolerance=config.report.tolerance, recommended=report["recommended"], reason=report["reason"],
        selected_on=report["selected_on"], rule=report["rule"], confidence=report["confidence"],
        chance=report["chance"][metric] if report["chance"] else None,
        confirmed_on_test=(report["confirmation"] or {}).get("confirmed"),
        recommended_uri=recommended.get("model_uri") if recommended else None,
        candidates=[LeaderboardRow.contract(row) for row in rows]).to_json_dict()
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
        if recommended is not None:  # its model card; a local run copies the model beside it (pipeline.place_models)
            (out.work / "recommended").mkdir()
            (out.work / "recommended" / "README.md").write_text(model_card(recommended, report, card, config))
            write_json(out.work / "recommended" / "metrics.json", recommended)
            if leaderboard["recommended_uri"]:
                print(f"recommended model: {recommended['name']} at {leaderboard['recommended_uri']}")
        write_json(out.work / "leaderboard.json", leaderboard)
        write_json(out.work / "candidates.json", rows)
        write_json(out.work / "report.json", report)
        (out.work / "report.md").write_text(render_markdown(report, rows, card, {k: p.name for k, p in figures.items()}))
        (out.work / "report.html").write_text(render_html(report, rows, card, figures))
        out.summary.update({"recommended": report["recommended"], "best": report["best"], "candidates": len(rows),
                            "meets_speedup_target": report["speed"]["meets_target"],
                            "flags": [flag["flag"] + ":" + flag["candidate"] for flag in report["flags"]]})
    return leaderboard
