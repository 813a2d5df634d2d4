"""Stage: evaluation. One candidate on the validation and test splits: quality, latency, size.

Quality: on test, accuracy, macro-F1 with 95 % bootstrap intervals, per-class precision/recall/F1
and the confusion matrix (sklearn); on validation, accuracy and macro-F1 (with intervals), which
the report chooses on. Every example's predicted label on both splits goes to ``predictions.json``
so the report can compare candidates on the same examples (paired bootstrap).
Runs on CUDA when present, in ``evaluation.dtype`` (auto: bf16 where the GPU has it, else fp16; fp32 on
the CPU); both are recorded. Latency: end-to-end (tokenize + forward) per request of ``latency_batch_size`` examples, timed
after warm-up with the threads the evaluate task may use (its CPU limit); p50/p95 in ms per sample
over ``latency_samples`` requests. Throughput: test examples per second in large batches.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import numpy as np

from rightsizer.config import RunConfig
from rightsizer.data import load_prepared
from rightsizer.errors import UserError
from rightsizer.inference import encode_texts, inference_placement, model_device, predict_logits
from rightsizer.models import count_parameters, load_saved, size_on_disk_mb
from rightsizer.outputs import read_json, stage_output, write_json
from rightsizer.records import CandidateRow, TrainingFacts
from rightsizer.stats import bootstrap_intervals
from rightsizer.train.finetune import classification_metrics
from rightsizer.timing import quiet, task_threads, times_itself

PREDICTIONS = "predictions.json"  # beside metrics.json: {"validation": [label index, ...], "test": [...]}


def quality_metrics(predictions: np.ndarray, labels: np.ndarray, label_names: list[str]) -> dict:
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    indices = list(range(len(label_names)))
    precision, recall, f1, support = precision_recall_fscore_support(
        labels, predictions, labels=indices, zero_division=0)
    return {
        **classification_metrics(predictions, labels, len(label_names)),
        "per_class": {
            name: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]), "support": int(support[i])}
            for i, name in enumerate(label_names)
        },
        "labels": list(label_names),
        "confusion_matrix": confusion_matrix(labels, predictions, labels=indices).tolist(),
    }


def majority_baseline(train_labels, labels: dict[str, np.ndarray], label_names: list[str]) -> dict:
    """The training split's majority class, predicted for every row of each split in ``labels``:
    ``{"label": class index, split: quality_metrics}``. The one majority baseline: the report's
    ``majority-baseline`` row and the probe's chance line are both read from it."""
    majority = int(np.bincount(np.asarray(train_labels), minlength=len(label_names)).argmax())
    return {"label": majority, **{split: quality_metrics(np.full_like(np.asarray(rows), majority), np.asarray(rows),
                                                         label_names) for split, rows in labels.items()}}


def measure_latency(model, tokenizer, split, max_length: int, batch_size: int, samples: int, warmup: int, seed: int) -> dict:
    """Per-request latency over ``samples`` random requests of ``batch_size`` examples."""
    import torch

    texts = list(split["text"])
    pairs = list(split["text_pair"]) if "text_pair" in split.column_names else None
    rng = random.Random(seed)
    requests = [[rng.randrange(len(texts)) for _ in range(batch_size)] for _ in range(warmup + samples)]
    device = model_device(model)
    timings = []
    with torch.inference_mode():
        for number, request in enumerate(requests):
            started = time.perf_counter()
            batch = encode_texts(tokenizer, [texts[i] for i in request], [pairs[i] for i in request] if pairs else None, max_length)
            batch = tokenizer.pad(batch, return_tensors="pt")
            model(**{k: v.to(device) for k, v in batch.items()})
            if device.type == "cuda":
                torch.cuda.synchronize()
            if number >= warmup:
                timings.append((time.perf_counter() - started) * 1000 / batch_size)
    return {
        "latency_ms": round(float(np.percentile(timings, 50)), 4),
        "latency_p95_ms": round(float(np.percentile(timings, 95)), 4),
        "latency_batch_size": batch_size,
        "latency_requests": samples,
    }


def split_scores(predictions: dict[str, np.ndarray], dataset, label_names: list[str], seed: int) -> dict:
    """Quality on test (with intervals) and on validation, from each split's predicted labels."""
    test_labels = np.asarray(dataset["test"]["label"])
    metrics = quality_metrics(predictions["test"], test_labels, label_names)
    intervals = bootstrap_intervals(test_labels, predictions["test"], len(label_names), seed=seed)
    metrics.update({"accuracy_ci": intervals["accuracy"], "macro_f1_ci": intervals["macro_f1"],
                    "test_rows": len(test_labels)})
    if "validation" in predictions:
        labels = np.asarray(dataset["validation"]["label"])
        validation = quality_metrics(predictions["validation"], labels, label_names)
        intervals = bootstrap_intervals(labels, predictions["validation"], len(label_names), seed=seed)
        metrics.update({"val_accuracy": validation["accuracy"], "val_macro_f1": validation["macro_f1"],
                        "val_accuracy_ci": intervals["accuracy"], "val_macro_f1_ci": intervals["macro_f1"],
                        "validation_rows": len(labels)})
    return metrics


def served_size_mb(model_dir: Path, trained: dict) -> float:
    """What must be shipped to serve the candidate: an unmerged adapter without its base beside it needs the base."""
    size = size_on_disk_mb(model_dir)
    if (model_dir / "adapter_config.json").exists() and not (model_dir / "base").is_dir():
        size += trained.get("base_size_mb") or 0.0
    return round(size, 3)


def placement_fields(device: str, precision: str) -> dict:
    """Where and in what precision a candidate was measured (metrics.json and its leaderboard row)."""
    import torch

    fields = {"device": device, "dtype": precision}
    if device == "cuda":
        fields["device_name"] = torch.cuda.get_device_name()
    return fields


def write_predictions(directory: Path, predictions: dict[str, np.ndarray]) -> None:
    write_json(directory / PREDICTIONS, {split: [int(v) for v in values] for split, values in predictions.items()})


def read_predictions(directory: str | Path) -> dict[str, np.ndarray] | None:
    """The per-example predicted labels an evaluation wrote, or None (an older or foreign metrics dir)."""
    path = Path(directory) / PREDICTIONS
    if not path.exists():
        return None
    return {split: np.asarray(values, dtype=np.int64) for split, values in read_json(path).items()}


def evaluate_model(model, tokenizer, dataset, label_names: list[str], config: RunConfig) -> tuple[dict, dict]:
    """``(metrics, predictions)``: quality on validation and test, throughput and latency on test."""
    ev = config.evaluation
    predictions, seconds = {}, 0.0
    for split in ("validation", "test"):
        logits, seconds, _ = predict_logits(model, tokenizer, dataset[split], config.data.max_length, ev.batch_size)
        predictions[split] = logits.argmax(-1)
    metrics = split_scores(predictions, dataset, label_names, config.seed)
    metrics["throughput_per_s"] = round(len(dataset["test"]) / seconds, 2) if seconds > 0 else 0.0
    metrics.update(measure_latency(model, tokenizer, dataset["test"], config.data.max_length, ev.latency_batch_size,
                                   ev.latency_samples, ev.warmup_batches, config.seed))
    return metrics, predictions


FORMS_FILE = "forms.json"  # in an evaluation of quantized forms: their names, one metrics dir each


def quantized_forms(candidate_dir: Path) -> list[Path] | None:
    """The candidate directories inside a quantize stage's output (None when it is not one)."""
    summary = candidate_dir / "summary.json"
    if (candidate_dir / "model").is_dir() or not summary.exists():
        return None
    made = read_json(summary)
    if made.get("stage") != "quantize":
        return None
    return [candidate_dir / name for name in made.get("candidates", [])]


@times_itself
def run(config: RunConfig, data_dir: str | Path, candidate_dir: str | Path, output_dir: str | Path,
        name: str | None = None, kind: str | None = None, candidate_uri: str | None = None) -> dict:
    """Evaluate one candidate; given a quantize stage's output, every form in it (one ``output_dir/<name>`` each),
    returning ``{"candidates": [metrics, ...]}``. ``candidate_uri`` says where ``candidate_dir`` lives for
    others (the artifact's object-store URI on a cluster; default: the directory); each row records
    its model's as ``model_uri``."""
    candidate_dir = Path(candidate_dir)
    forms = quantized_forms(candidate_dir)
    if forms is None:
        return evaluate_candidate(config, data_dir, candidate_dir, output_dir, name, kind, candidate_uri)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    rows = [evaluate_candidate(config, data_dir, form, output_dir / form.name,
                               candidate_uri=f"{candidate_uri.rstrip('/')}/{form.name}" if candidate_uri else None)
            for form in forms]
    write_json(output_dir / FORMS_FILE, [form.name for form in forms])  # last: the report reads these rows
    return {"candidates": rows}


def evaluate_candidate(config: RunConfig, data_dir: str | Path, candidate_dir: Path, output_dir: str | Path,
                       name: str | None = None, kind: str | None = None, candidate_uri: str | None = None) -> dict:
    import torch

    model_dir = candidate_dir / "model"
    if not model_dir.is_dir():
        raise UserError(f"'{candidate_dir}' has no model/ directory; give a stage output (teacher, student, adapter, "
                        "slice, quantize)")
    trained = read_json(candidate_dir / "summary.json") if (candidate_dir / "summary.json").exists() else {}
    name = name or trained.get("name") or candidate_dir.name
    kind = kind or trained.get("kind") or "teacher"
    dataset, card = load_prepared(data_dir)
    threads = task_threads(config)
    torch.set_num_threads(threads)
    device, precision = inference_placement(config.evaluation.dtype)  # before any output: a bad dtype is refused
    with stage_output(output_dir, "evaluate", config, name=name) as out:
        model, tokenizer = load_saved(model_dir, device, precision)
        with quiet():  # on a shared machine, time nothing while another stage trains
            metrics, predictions = evaluate_model(model, tokenizer, dataset, card["label_names"], config)
        params = trained["params"] if kind == "quantized" else count_parameters(model)[0]  # int8 weights are buffers
        metrics.update({
            "name": name, "kind": kind, "params": params,
            "trainable_params": trained.get("trainable_params", params),
            "size_mb": served_size_mb(model_dir, trained),
            "train_time_s": trained.get("train_time_s"),
            "samples_per_s": trained.get("samples_per_s"),
            "latency_threads": threads, **placement_fields(device, precision),
            "model_uri": f"{candidate_uri.rstrip('/')}/model" if candidate_uri else str(model_dir.resolve()),
        })
        metrics.update(TrainingFacts.from_summary(trained))  # what the training stage says about the candidate
        CandidateRow.model_validate(metrics)  # the row the report and leaderboard.json rely on
        if metrics["device"] != "cuda":
            metrics.pop("device_name", None)
        write_json(out.work / "metrics.json", metrics)
        write_predictions(out.work, predictions)
        out.summary.update({"kind": kind, "accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"],
                            "val_macro_f1": metrics["val_macro_f1"], "latency_ms": metrics["latency_ms"]})
    return metrics
