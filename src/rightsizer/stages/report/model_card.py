"""The recommended model's card: ``recommended/README.md`` beside its weights, tokenizer and metrics.

Says what a person picking the model up needs: the data it was trained and judged on, its quality
on validation and test with 95 % intervals (and against the best candidate, paired), latency, size,
how it was made (its config section, rightsizer version) and how to load it.
"""

from __future__ import annotations

import yaml

from rightsizer import __version__
from rightsizer.outputs import git_commit


def candidate_config(row: dict, config) -> tuple[str, dict] | None:
    """(where in the config, settings) that made the candidate of ``row``: looked up among the config's
    candidates (:mod:`rightsizer.candidates`); a slice by its layer count, a quantized form by its source."""
    from rightsizer import candidates

    dump = lambda item: item.model_dump(mode="json", exclude_defaults=True)  # noqa: E731
    if row.get("kind") == "quantized":  # the entry that made it: the source's plan, by the candidate's name
        source = row.get("source") or ""
        kind = config.candidate_kinds().get(source, "slice")  # auto slices are known at run time only
        made = [entry for name, entry in config.quantize_plan(source, kind, source in config.controls())
                if name == row["name"]]
        return ("quantize", dump(made[0])) if made else None
    if row.get("kind") == "slice" and config.probe is not None:
        return "probe (a slice of the probed model, fine-tuned)", dump(config.probe)
    made = next((c for c in candidates.every(config) if c.name == row["name"]), None)
    if made is None or made.member is None:
        return None
    sections = {"teacher": config.teachers, "student": config.students, "adapter": config.adapters}
    if made.kind == "prompting":
        return "evaluation.prompting", dump(config.evaluation.prompting)
    member = next((item for item in sections.get(made.kind, []) if item.name == made.member), None)
    if member is None:
        return None
    where = {"teacher": "teachers", "student": "students", "adapter": "adapters"}[made.kind]
    if made.control_of:
        where += " (its data-only control: alpha 0, no teacher)"
    return where, dump(member)


def _interval(row: dict, key: str) -> str:
    from rightsizer.stages.report.render import with_spread

    shown, interval = with_spread(row, key), row.get(f"{key}_ci")
    return shown + (f" [{interval[0]:.4f}, {interval[1]:.4f}]" if interval and shown != "–" else "")


def seeds_paragraph(row: dict, metric: str) -> list[str]:
    """For a candidate trained with several seeds: what the figures are and which seed this model is."""
    seeds = row.get("seeds") or []
    if len(seeds) < 2:
        return []
    own = next((run for run in row.get("per_seed") or [] if run.get("seed") == row.get("seed")), {})
    from rightsizer.stages.report.decision import METRIC_NAMES

    scores = ", ".join(f"{split} {METRIC_NAMES.get(metric, metric)} {own[key]:.4f}" for split, key in
                       (("validation", f"val_{metric}"), ("test", metric)) if own.get(key) is not None)
    return [f"Trained with seeds {seeds}: the figures above are the mean over the seeds ± their sample standard "
            "deviation, with the bootstrap interval of the mean over the examples; the recommendation used the mean. "
            f"This model is seed {row.get('seed')}, the one with the best validation score"
            + (f" ({scores} on its own)." if scores else "."), ""]


def model_card(row: dict, report: dict, card: dict, config) -> str:
    """``README.md`` for the recommended candidate ``row``."""
    name = row["name"]
    rows = card.get("rows", {})
    removed = (card.get("leakage") or {}).get("removed") or {}
    lines = [f"# {name}", "",
             f"Recommended by rightsizer for the run `{report['name']}`: {report['reason']}.", "",
             "## Data", "",
             f"`{card.get('source', '?')}` — {rows.get('train', '?')} train / {rows.get('validation', '?')} validation / "
             f"{rows.get('test', '?')} test rows; {card.get('num_labels', '?')} classes: "
             f"{', '.join(card.get('label_names', []))}."]
    if any(removed.values()):
        lines.append(f"Validation and test rows duplicating a training text were removed ({removed.get('validation', 0)} "
                     f"and {removed.get('test', 0)}).")
    lines += ["", "## Quality (95 % bootstrap intervals)", "", "| split | accuracy | macro-F1 |", "|---|---:|---:|",
              f"| validation (chosen on) | {_interval(row, 'val_accuracy')} | {_interval(row, 'val_macro_f1')} |",
              f"| test (confirmed on) | {_interval(row, 'accuracy')} | {_interval(row, 'macro_f1')} |", ""]
    lines += seeds_paragraph(row, report.get("metric", "macro_f1"))
    comparison = (report.get("comparisons") or {}).get(name, {}).get("test")
    if comparison and report.get("best") and report["best"] != name:
        lines += [f"Against the best candidate, {report['best']}, on the same test examples: {comparison['line']}.", ""]
    latency = row.get("latency_ms")
    lines += ["## Cost", "",
              f"- latency: {latency if latency is not None else '–'} ms p50, {row.get('latency_p95_ms', '–')} ms p95 per "
              f"example (batches of {row.get('latency_batch_size', '?')}, {row.get('latency_threads', '?')} CPU "
              f"thread(s), tokenization included)",
              f"- throughput: {row.get('throughput_per_s', '–')} examples/s in large batches",
              f"- parameters: {row.get('params', '–'):,}" if isinstance(row.get("params"), int) else "- parameters: –",
              f"- size on disk: {row.get('size_mb', '–')} MB", ""]
    made = candidate_config(row, config)
    origin = ""
    if row.get("teachers"):
        origin = f" distilled from {', '.join(row['teachers'])}"
    elif row.get("control_of"):
        origin = f" trained on the data alone (the control of {row['control_of']})"
    elif row.get("source"):
        origin = f" made from {row['source']}"
    lines += ["## How it was made", "", f"A {row.get('kind', 'model')} candidate{origin}"
              + (f", from the config's `{made[0]}`:" if made else ".")]
    if made:
        lines += ["", "```yaml", yaml.safe_dump(made[1], sort_keys=False).strip(), "```"]
    commit = git_commit()
    lines += ["", f"rightsizer {__version__}" + (f" (git {commit})" if commit else "") + f", seed {row['seed'] if row.get('seed') is not None else config.seed}.", "",
              "## Use", "", "```python"]
    if row.get("kind") == "quantized":  # ONNX / int8 forms load through rightsizer
        lines += ["from rightsizer.quantize import load_quantized", "", 'model, tokenizer = load_quantized("recommended")']
    else:
        lines += ["from transformers import AutoModelForSequenceClassification, AutoTokenizer", "",
                  'model = AutoModelForSequenceClassification.from_pretrained("recommended")',
                  'tokenizer = AutoTokenizer.from_pretrained("recommended")']
    lines += ["```", "", "or `rightsizer predict RUN_DIR --text \"...\"`.", ""]
    return "\n".join(lines)
