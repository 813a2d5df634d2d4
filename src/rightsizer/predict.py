"""``rightsizer predict``: a run's recommended (or a named) candidate on new texts.

A run directory is resolved through its ``leaderboard.json``: ``recommended/`` when the run has one
and no candidate is named, else the row's ``path``, else the training stage output under ``stages/``
whose summary names the candidate. A model directory (``config.json`` + weights, or a stage output
with ``model/``) is used as it is. The model is loaded with ``from_pretrained`` (adapters with their
head) and scores the texts in length-sorted batches.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

from rightsizer.errors import UserError, did_you_mean, one_of

TRAINED_STAGES = ("teacher", "distill", "adapter", "adapters", "slice", "quantize")


def _model_dir(path: Path) -> Path | None:
    for candidate in (path, path / "model"):
        if (candidate / "config.json").exists() or (candidate / "adapter_config.json").exists():
            return candidate
    return None


def _settings(run_dir: Path) -> dict:
    """The run's column names and max_length (from its report's summary.json), when known."""
    try:
        config = json.loads((run_dir / "summary.json").read_text())["config"]["data"]
    except (OSError, ValueError, KeyError, TypeError):
        return {}
    return {"text_column": config.get("text_column"), "text_pair_column": config.get("text_pair_column"),
            "max_length": config.get("max_length")}


def resolve(target: Path, candidate: str | None) -> tuple[Path, str, dict]:
    """(model directory, candidate name, run settings) for a run or model directory."""
    target = target.expanduser()
    if not target.exists():
        raise UserError(f"'{target}' not found; give a run directory (with leaderboard.json) or a model directory")
    board_path = target / "leaderboard.json"
    if not board_path.exists():
        found = _model_dir(target) if target.is_dir() else None
        if found is None:
            raise UserError(f"'{target}' is neither a run directory (no leaderboard.json) nor a model directory "
                            "(no config.json)")
        if candidate is not None:
            raise UserError("--candidate picks a row of a run's leaderboard; give the run directory, not a model directory")
        return found, target.name, {}
    try:
        board = json.loads(board_path.read_text())
    except ValueError:
        raise UserError(f"'{board_path}' is not valid JSON; is the run complete?") from None
    rows = {row["name"]: row for row in board.get("candidates", [])}
    name = candidate or board.get("recommended")
    if name is None:
        raise UserError(f"the run in '{target}' recommends no candidate (none beat chance); name one with --candidate "
                        f"({one_of(rows)})")
    if name not in rows:
        raise UserError(f"no candidate '{name}' in '{board_path}'{did_you_mean(name, rows)}; candidates: {one_of(rows)}")
    settings = _settings(target)
    if candidate is None and _model_dir(target / "recommended") is not None:
        return _model_dir(target / "recommended"), name, settings
    row = rows[name]
    if row.get("path"):
        found = _model_dir(target / row["path"])
        if found is not None:
            return found, name, settings
    for summary_path in sorted((target / "stages").rglob("summary.json")):
        try:
            summary = json.loads(summary_path.read_text())
        except ValueError:
            continue
        if summary.get("name") == name and summary.get("stage") in TRAINED_STAGES:
            found = _model_dir(summary_path.parent)
            if found is not None:
                return found, name, settings
    raise UserError(f"candidate '{name}' ({row.get('kind')}) has no saved model in '{target}' to predict with "
                    "(baselines and prompting rows have none); pick another with --candidate")


def read_inputs(texts: list[str] | None, pairs: list[str] | None, file: Path | None, text_column: str | None,
                pair_column: str | None) -> dict[str, list[str]]:
    """{"text": [...], "text_pair": [...]?} from --text/--pair or a file."""
    if bool(texts) == bool(file):
        raise UserError("give the texts with --text \"...\" (repeatable) or --file FILE, one of the two")
    if texts:
        if pairs and len(pairs) != len(texts):
            raise UserError(f"{len(texts)} --text but {len(pairs)} --pair; give one --pair per --text")
        return {"text": list(texts), **({"text_pair": list(pairs)} if pairs else {})}
    if not file.exists():
        raise UserError(f"--file '{file}' not found")
    if file.suffix.lower() in (".txt", ""):
        lines = [line.strip() for line in file.read_text(encoding="utf-8", errors="replace").splitlines()]
        return {"text": [line for line in lines if line]}
    from rightsizer.data import read_table

    frame = read_table(file)
    columns = [str(c) for c in frame.columns]
    column = text_column if text_column in columns else ("text" if "text" in columns else text_column)
    if column not in columns:
        raise UserError(f"--file '{file}' has no text column '{column or 'text'}'{did_you_mean(column or 'text', columns)}; "
                        f"columns: {', '.join(columns)} (pick one with --text-column)")
    inputs = {"text": frame[column].fillna("").astype(str).tolist()}
    if pair_column and pair_column in columns:
        inputs["text_pair"] = frame[pair_column].fillna("").astype(str).tolist()
    return inputs


def predict(model_dir: Path, inputs: dict[str, list[str]], max_length: int | None = None) -> list[dict]:
    import datasets
    import numpy as np

    from rightsizer.inference import predict_logits
    from rightsizer.models import load_saved

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # the answer, not a weight-loading bar, on the console
    hf_logging.set_verbosity_error()
    from rightsizer.quantize import FORMAT_FILE, load_quantized

    # a quantized candidate (ONNX Runtime, int8, half precision) loads its own way
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's notes on its quantized tensors are no concern here
        model, tokenizer = load_quantized(model_dir) if (model_dir / FORMAT_FILE).exists() else load_saved(model_dir)
    max_length = max_length or min(int(getattr(tokenizer, "model_max_length", 512) or 512), 512)
    logits, _, _ = predict_logits(model, tokenizer, datasets.Dataset.from_dict(inputs), max_length)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    probabilities = np.exp(shifted) / np.exp(shifted).sum(axis=-1, keepdims=True)
    id2label = {int(k): v for k, v in model.config.id2label.items()}
    labels = [id2label.get(i, str(i)) for i in range(probabilities.shape[1])]
    rows = []
    for index, text in enumerate(inputs["text"]):
        best = int(probabilities[index].argmax())
        rows.append({"text": text, **({"text_pair": inputs["text_pair"][index]} if "text_pair" in inputs else {}),
                     "label": labels[best], "probability": round(float(probabilities[index, best]), 4),
                     "probabilities": {label: round(float(p), 4) for label, p in zip(labels, probabilities[index])}})
    return rows


def write(rows: list[dict], output: Path) -> None:
    """Write predictions atomically as JSON lines or CSV (one probability column per label)."""
    from rightsizer.rundir import fs_error

    suffix = output.suffix.lower()
    if suffix not in (".jsonl", ".csv"):
        raise UserError(f"--output '{output}' must end in .jsonl or .csv")
    tmp = output.with_name(f".{output.name}.tmp")
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "w", newline="", encoding="utf-8") as handle:
            if suffix == ".jsonl":
                for row in rows:
                    handle.write(json.dumps(row, ensure_ascii=False) + "\n")
            else:
                labels = list(rows[0]["probabilities"]) if rows else []
                extra = ["text_pair"] if rows and "text_pair" in rows[0] else []
                writer = csv.writer(handle)
                writer.writerow(["text", *extra, "label", "probability", *[f"p_{label}" for label in labels]])
                for row in rows:
                    writer.writerow([row["text"], *[row[k] for k in extra], row["label"], row["probability"],
                                     *[row["probabilities"][label] for label in labels]])
        os.replace(tmp, output)
    except OSError as exc:
        if tmp.parent.is_dir():
            tmp.unlink(missing_ok=True)
        raise fs_error(exc, output) from None
