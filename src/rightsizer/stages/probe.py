"""Stage: layer probe. Which layers of a pretrained model does the task need?

One forward pass per batch (no grad, length-sorted batches with dynamic padding) over train,
validation and test captures every probed layer's output at once with forward hooks, stopping
after the deepest one; each layer's output goes through the family's final modules (decoders'
final norm, see :mod:`rightsizer.slicing`) and is pooled (``cls`` | ``mean`` | ``last`` non-pad
token). A seeded logistic regression per layer is trained on the train features and scored on
validation and test. Probing all L layers this way costs one pass instead of the 1 + 2 + ... + L
layer passes of L truncated models (``benchmarks/probe_one_pass.py``).

Writes ``probe.json`` (per-layer validation/test accuracy and macro-F1, the best layer, the slice
depths to fine-tune), ``probe.png`` (score against depth) and TensorBoard scalars in ``tb/``.
``finetune_slices: auto`` resolves here to the best layer and half of it.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from rightsizer import candidates
from rightsizer.config import ProbeConfig, RunConfig
from rightsizer.data import load_prepared
from rightsizer.errors import UserError, did_you_mean, one_of
from rightsizer.inference import batches_by_length, encode_texts
from rightsizer.models import describe, load_classifier
from rightsizer.outputs import stage_output, write_json
from rightsizer.slicing import after_layers, check_depths, family_of, layer_stack
from rightsizer.stages.evaluate import majority_baseline
from rightsizer.stages.report.figures import plot_probe
from rightsizer.train import classification_metrics, training_texts

POOLINGS = ("cls", "mean", "last")
FLOAT16_ABOVE_BYTES = 2 * 1024**3  # keep features in float16 when float32 would need more


def probe_config(config: RunConfig) -> ProbeConfig:
    if config.probe is None:
        raise UserError("the config has no 'probe' section; add one (e.g. probe: {model: teacher})")
    return config.probe


def probe_reference(config: RunConfig) -> str:
    """The model reference to probe: a teacher's pretrained model, or ``probe.model`` itself."""
    return candidates.resolve_model(config, probe_config(config).model)[0]


def load_probed_model(config: RunConfig, dataset, label_names: list[str]):
    """The pretrained model named by ``probe.model`` (same seed as the teacher) and its tokenizer."""
    model = probe_config(config).model
    reference = probe_reference(config)
    try:
        return load_classifier(reference, label_names, training_texts(dataset), config.seed)
    except UserError as exc:
        if model in {t.name for t in config.teachers} or describe(reference) != "hub":
            raise
        teachers = [t.name for t in config.teachers]
        raise UserError(f"probe.model '{model}' is neither a configured teacher ({one_of(teachers) or 'none'})"
                        f"{did_you_mean(model, teachers)} nor a loadable model: {exc}") from None



def resolve_pooling(pooling: str, model, tokenizer) -> str:
    family = family_of(model)
    if pooling == "auto":
        pooling = "last" if family.decoder else "cls"
    if pooling == "last" and tokenizer.pad_token_id is None:
        raise UserError("pooling 'last' needs a pad token to find each example's last token, and the tokenizer has "
                        "no pad, eos or unk token; use a tokenizer with one, or set probe.pooling to mean or cls")
    return pooling


def auto_slices(best_layer: int) -> list[int]:
    """``finetune_slices: auto``: the best probe layer and half of it (rounded down, at least 1)."""
    return sorted({best_layer, max(1, best_layer // 2)})


# ---------------------------------------------------------------------------------------------
# one-pass feature extraction


def padded_batches(tokenizer, split, max_length: int, batch_size: int) -> Iterator[tuple[np.ndarray, dict]]:
    """``(row indices, padded tensors)`` per batch, batches sorted by length (dynamic padding)."""
    texts = list(split["text"])
    pairs = list(split["text_pair"]) if "text_pair" in split.column_names else None
    encoded = encode_texts(tokenizer, texts, pairs, max_length)
    lengths = [len(ids) for ids in encoded["input_ids"]]
    for index in batches_by_length(lengths, batch_size):
        rows = [{key: encoded[key][i] for key in encoded.keys()} for i in index]
        yield index, tokenizer.pad(rows, return_tensors="pt")


def pool(hidden, attention_mask, pooling: str):
    """(batch, tokens, hidden) -> (batch, hidden): first token, masked mean, or last non-pad token."""
    import torch

    if pooling == "cls":
        return hidden[:, 0]
    mask = attention_mask.to(hidden.dtype).unsqueeze(-1)
    if pooling == "mean":
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
    if pooling == "last":  # works for left and right padding
        last = attention_mask.shape[1] - 1 - attention_mask.flip(1).argmax(1)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    raise ValueError(f"unknown pooling {pooling!r}; use one of {POOLINGS}")


def backbone_inputs(backbone, batch: dict, device) -> dict:
    """The batch tensors the backbone's forward accepts (DistilBERT and decoders take no token_type_ids)."""
    accepted = inspect.signature(backbone.forward).parameters
    inputs = {key: value.to(device) for key, value in batch.items() if key in accepted}
    if "use_cache" in accepted:
        inputs["use_cache"] = False
    return inputs


class _DeepestLayerDone(Exception):
    """Raised by the deepest hook: the layers after it are not needed."""


def layer_features(model, batches: Iterable[tuple[np.ndarray, dict]], layers: list[int], pooling: str,
                   rows: int) -> dict[int, np.ndarray]:
    """Pooled features of every layer in ``layers`` (1-based depths), one forward pass per batch."""
    import torch

    backbone = model.base_model
    stack = layer_stack(model)
    finals = after_layers(model)
    deepest = max(layers)
    captured: dict[int, torch.Tensor] = {}

    def hook_for(depth: int):
        def hook(module, args, output):
            captured[depth] = output[0] if isinstance(output, tuple) else output
            if depth == deepest:
                raise _DeepestLayerDone

        return hook

    handles = [stack[depth - 1].register_forward_hook(hook_for(depth)) for depth in layers]
    device = next(model.parameters()).device
    features: dict[int, np.ndarray] = {}
    model.eval()
    try:
        with torch.inference_mode():
            for index, batch in batches:
                inputs = backbone_inputs(backbone, batch, device)
                try:
                    backbone(**inputs)
                except _DeepestLayerDone:
                    pass
                for depth in layers:
                    hidden = captured.pop(depth)
                    for module in finals:
                        hidden = module(hidden)
                    pooled = pool(hidden, inputs["attention_mask"], pooling).float().cpu().numpy()
                    if depth not in features:
                        wide = rows * len(layers) * pooled.shape[1] * 4 > FLOAT16_ABOVE_BYTES
                        features[depth] = np.zeros((rows, pooled.shape[1]), dtype=np.float16 if wide else np.float32)
                    features[depth][index] = pooled
    finally:
        for handle in handles:
            handle.remove()
    return features


# ---------------------------------------------------------------------------------------------
# linear probes


def fit_probes(features: dict[str, dict[int, np.ndarray]], labels: dict[str, np.ndarray], seed: int) -> list[dict]:
    """A standardised, seeded logistic regression per layer; accuracy and macro-F1 on validation and test.

    BLAS runs single-threaded here: lbfgs makes many small matrix products, and a multi-threaded
    BLAS beside torch's idle OpenMP threads (or on a busy node) was measured 100x slower on 2 cores.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    scores = []
    with threadpool_limits(limits=1, user_api="blas"):
        for depth in sorted(features["train"]):
            classifier = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, random_state=seed))
            classifier.fit(features["train"][depth].astype(np.float32), labels["train"])
            row = {"layer": depth}
            for split in ("train", "validation", "test"):
                predictions = classifier.predict(features[split][depth].astype(np.float32))
                row[split] = classification_metrics(predictions, labels[split])
            scores.append(row)
    return scores


def best_layer(scores: list[dict], metric: str) -> int:
    """The layer with the best validation ``metric``; ties go to the shallower layer."""
    return max(scores, key=lambda row: (row["validation"][metric], -row["layer"]))["layer"]


def chance_scores(labels: dict[str, np.ndarray], label_names: list[str]) -> dict:
    """What guessing scores on test: uniform accuracy and the train-majority class (the report's baseline row)."""
    majority = majority_baseline(labels["train"], {"test": labels["test"]}, label_names)["test"]
    return {"uniform_accuracy": 1.0 / len(label_names),
            "majority": {"accuracy": majority["accuracy"], "macro_f1": majority["macro_f1"]}}


def _probe_train_split(dataset, limit: int | None, seed: int):
    train = dataset["train"]
    if limit is None or limit >= len(train):
        return train
    try:
        return train.train_test_split(train_size=limit, stratify_by_column="label", seed=seed)["train"]
    except ValueError:  # a class too rare to stratify
        return train.shuffle(seed=seed).select(range(limit))


def run(config: RunConfig, data_dir: str | Path, output_dir: str | Path) -> dict:
    import torch
    from torch.utils.tensorboard import SummaryWriter

    probe = probe_config(config)
    dataset, card = load_prepared(data_dir)
    metric = config.report.metric
    with stage_output(output_dir, "probe", config, name=probe.model) as out:
        model, tokenizer = load_probed_model(config, dataset, card["label_names"])
        family = family_of(model)
        model_depth = len(layer_stack(model))
        layers = list(range(1, model_depth + 1)) if probe.layers == "all" else check_depths(
            probe.layers, model_depth, "probe.layers")
        if probe.finetune_slices != "auto":
            check_depths(probe.finetune_slices, model_depth, "probe.finetune_slices")
        pooling = resolve_pooling(probe.pooling, model, tokenizer)
        model.to("cuda" if torch.cuda.is_available() else "cpu")

        splits = {"train": _probe_train_split(dataset, probe.max_probe_samples, config.seed),
                  "validation": dataset["validation"], "test": dataset["test"]}
        started = time.perf_counter()
        features = {
            name: layer_features(model, padded_batches(tokenizer, split, config.data.max_length, probe.eval_batch_size),
                                 layers, pooling, len(split))
            for name, split in splits.items()
        }
        feature_time = time.perf_counter() - started
        labels = {name: np.asarray(split["label"]) for name, split in splits.items()}
        started = time.perf_counter()
        scores = fit_probes(features, labels, config.seed)
        probe_time = time.perf_counter() - started

        best = best_layer(scores, metric)
        slices = auto_slices(best) if probe.finetune_slices == "auto" else sorted(set(probe.finetune_slices))
        chance = chance_scores(labels, card["label_names"])
        result = {
            "model": probe.model, "reference": probe_reference(config), "family": family.name, "depth": model_depth,
            "pooling": pooling, "metric": metric, "best_layer": best, "finetune_slices": probe.finetune_slices,
            "slices": slices, "slice_names": [candidates.slice_candidate(config, k).name for k in slices], "chance": chance,
            "rows": {name: len(split) for name, split in splits.items()},
            "feature_time_s": round(feature_time, 3), "probe_time_s": round(probe_time, 3), "layers": scores,
        }
        write_json(out.work / "probe.json", result)
        plot_probe(result, [], metric, out.work / "probe.png")  # the report draws it again with the slices on it
        writer = SummaryWriter(log_dir=str(out.work / "tb"))
        for row in scores:
            for split in ("validation", "test"):
                writer.add_scalar(f"probe/{split}_{metric}", row[split][metric], row["layer"])
        writer.close()
        out.summary.update({
            "kind": "probe", "model": probe_reference(config), "family": family.name, "depth": model_depth,
            "pooling": pooling, "probed_layers": layers, "best_layer": best, "slices": slices,
            "best_validation": scores[layers.index(best)]["validation"], "feature_time_s": result["feature_time_s"],
            "probe_time_s": result["probe_time_s"],
        })
    return out.summary
