"""Layer probe: all L layers in one forward pass vs L separate forward passes of truncated models.

Naive = what a probe without hooks does: for k = 1..L cut the model after k layers and run it over
the data (1 + 2 + ... + L layer passes plus L embedding passes). Ours =
``rightsizer.stages.probe.layer_features``: one pass per batch, every layer captured by a hook.
Same model, same padded batches (tokenization is done once, outside both timings), same pooling;
the features are checked to be equal. The per-layer logistic regressions are timed separately
(they cost the same either way). Prints both times, ``ratio: naive / one_pass`` and
``ideal: (L + 1) / 2``; goal: ratio >= 0.8 x ideal.
"""

from __future__ import annotations

import argparse
import copy
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

os.environ.setdefault("RIGHTSIZER_QUIET", "1")

from rightsizer.config import config_from_dict  # noqa: E402
from rightsizer.data import load_prepared  # noqa: E402
from rightsizer.models import PRESETS, load_classifier, train_tokenizer  # noqa: E402
from rightsizer.slicing import slice_model  # noqa: E402
from rightsizer.stages import prepare  # noqa: E402
from rightsizer.stages.probe import backbone_inputs, fit_probes, layer_features, padded_batches, pool  # noqa: E402
from rightsizer.train import training_texts  # noqa: E402


def build_model(name: str, layers: int, hidden: int, dataset, label_names: list[str], seed: int):
    """A preset, or a random BERT with ``layers`` x ``hidden`` (heads of 64, FFN 4x) on a demo tokenizer."""
    if name in PRESETS:
        return load_classifier(name, label_names, training_texts(dataset), seed)
    from transformers import AutoModelForSequenceClassification, BertConfig

    tokenizer = train_tokenizer("wordpiece", training_texts(dataset))
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=hidden, num_hidden_layers=layers,
                        num_attention_heads=max(1, hidden // 64), intermediate_size=4 * hidden,
                        pad_token_id=tokenizer.pad_token_id, num_labels=len(label_names))
    torch.manual_seed(seed)
    return AutoModelForSequenceClassification.from_config(config), tokenizer


def naive_features(model, batches, depth: int, pooling: str, rows: int) -> tuple[dict[int, np.ndarray], float]:
    """Features of layer k from the model cut after k layers, for every k; returns (features, forward seconds)."""
    features, seconds = {}, 0.0
    for k in range(1, depth + 1):
        truncated = slice_model(copy.deepcopy(model), k).eval()  # building it is not timed
        backbone = truncated.base_model
        out = None
        started = time.perf_counter()
        with torch.inference_mode():
            for index, batch in batches:
                hidden = backbone(**backbone_inputs(backbone, batch, "cpu")).last_hidden_state
                pooled = pool(hidden, batch["attention_mask"], pooling).float().numpy()
                if out is None:
                    out = np.zeros((rows, pooled.shape[1]), dtype=np.float32)
                out[index] = pooled
        seconds += time.perf_counter() - started
        features[k] = out
    return features, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="bert", help="a preset name, or 'bert' for a random BERT of --layers x --hidden")
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--rows", type=int, default=1200, help="examples probed (from the demo train split)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--pooling", default="cls", choices=("cls", "mean", "last"))
    parser.add_argument("--repeats", type=int, default=3, help="best of N (the machine may be shared)")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    config = config_from_dict({"name": "bench", "seed": 0, "data": {"source": "builtin:demo",
                                                                    "max_length": args.max_length}})
    with tempfile.TemporaryDirectory() as tmp:
        prepare.run(config, Path(tmp) / "data")
        dataset, card = load_prepared(Path(tmp) / "data")
    model, tokenizer = build_model(args.model, args.layers, args.hidden, dataset, card["label_names"], 0)
    model.eval()
    split = dataset["train"].select(range(min(args.rows, len(dataset["train"]))))
    batches = list(padded_batches(tokenizer, split, args.max_length, args.batch_size))
    depth = model.config.num_hidden_layers
    all_layers = list(range(1, depth + 1))
    tokens = int(sum(batch["attention_mask"].sum() for _, batch in batches))
    print(f"model: {args.model} ({depth} layers, hidden {model.config.hidden_size}), {len(split)} rows, "
          f"{len(batches)} batches, {tokens} tokens, pooling {args.pooling}, {torch.get_num_threads()} threads")

    layer_features(model, batches[:2], all_layers, args.pooling, len(split))  # warm-up
    one_pass_times, naive_times = [], []
    for _ in range(args.repeats):
        started = time.perf_counter()
        ours = layer_features(model, batches, all_layers, args.pooling, len(split))
        one_pass_times.append(time.perf_counter() - started)
        naive, seconds = naive_features(model, batches, depth, args.pooling, len(split))
        naive_times.append(seconds)
    for k in all_layers:
        np.testing.assert_allclose(ours[k], naive[k], rtol=1e-3, atol=1e-4)
    one_pass, naive_time = min(one_pass_times), min(naive_times)

    labels = np.asarray(split["label"])
    half = len(labels) // 2
    features = {"train": {k: v[:half] for k, v in ours.items()}, "validation": {k: v[half:] for k, v in ours.items()},
                "test": {k: v[half:] for k, v in ours.items()}}
    started = time.perf_counter()
    scores = fit_probes(features, {"train": labels[:half], "validation": labels[half:], "test": labels[half:]}, seed=0)
    classifiers = time.perf_counter() - started

    print(f"features, one pass:        {one_pass:.3f} s  (runs: {', '.join(f'{t:.2f}' for t in one_pass_times)})")
    print(f"features, {depth} truncated:    {naive_time:.3f} s  (runs: {', '.join(f'{t:.2f}' for t in naive_times)})")
    print(f"per-layer classifiers:     {classifiers:.3f} s for {depth} layers (same for both; not in the ratio)")
    print("probe macro-F1 by layer (held-out half): "
          + " ".join(f"L{row['layer']}={row['validation']['macro_f1']:.3f}" for row in scores))
    print(f"ratio: {naive_time / one_pass:.2f}")
    print(f"ideal: {(depth + 1) / 2:.2f}")


if __name__ == "__main__":
    main()
