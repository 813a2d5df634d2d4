"""Teacher training loop vs a naive seed-style loop: samples/s and accuracy after the same epochs.

Naive = what the reference notebooks do: every batch padded to max_length, fixed order, a plain
PyTorch loop (AdamW + linear schedule, same lr, batch size, epochs, model init and data).
Ours = `rightsizer.train.fine_tune` (HF Trainer, dynamic padding, length-grouped batches).
Prints both, then `ratio: naive_time / our_time`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

os.environ.setdefault("RIGHTSIZER_QUIET", "1")

from rightsizer.config import config_from_dict  # noqa: E402
from rightsizer.data import load_prepared  # noqa: E402
from rightsizer.inference import predict_logits  # noqa: E402
from rightsizer.models import load_classifier  # noqa: E402
from rightsizer.stages import prepare  # noqa: E402
from rightsizer.train import fine_tune, training_texts  # noqa: E402


def naive_train(model, tokenizer, dataset, epochs: int, batch_size: int, lr: float, max_length: int, seed: int) -> float:
    from transformers import get_linear_schedule_with_warmup

    torch.manual_seed(seed)
    train = dataset["train"]
    encoded = tokenizer(list(train["text"]), truncation=True, max_length=max_length, padding="max_length", return_tensors="pt")
    labels = torch.tensor(train["label"])
    steps = epochs * ((len(labels) + batch_size - 1) // batch_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    schedule = get_linear_schedule_with_warmup(optimizer, int(0.1 * steps), steps)
    model.train()
    started = time.perf_counter()
    for _ in range(epochs):
        for start in range(0, len(labels), batch_size):
            batch = {k: v[start:start + batch_size] for k, v in encoded.items()}
            loss = model(**batch, labels=labels[start:start + batch_size]).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad()
    return time.perf_counter() - started


def accuracy(model, tokenizer, dataset, max_length: int) -> float:
    logits, _, _ = predict_logits(model, tokenizer, dataset["test"], max_length)
    return float((logits.argmax(-1) == np.asarray(dataset["test"]["label"])).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny-bert-4l")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--train-samples", type=int, default=None)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-finetune-"))
    try:
        raw = {"seed": 42, "data": {"source": "builtin:demo", "max_length": args.max_length,
                                    "max_train_samples": args.train_samples},
               "teachers": [{"name": "teacher", "model": args.model, "epochs": args.epochs, "learning_rate": args.lr,
                             "batch_size": args.batch_size, "warmup_ratio": 0.1, "weight_decay": 0.01}]}
        config = config_from_dict(raw)
        prepare.run(config, work / "data")
        dataset, card = load_prepared(work / "data")
        texts = training_texts(dataset)

        model, tokenizer = load_classifier(args.model, card["label_names"], texts, config.seed)
        naive_time = naive_train(model, tokenizer, dataset, args.epochs, args.batch_size, args.lr, args.max_length, config.seed)
        naive_accuracy = accuracy(model, tokenizer, dataset, args.max_length)

        model, tokenizer = load_classifier(args.model, card["label_names"], texts, config.seed)
        result = fine_tune(model, tokenizer, dataset, config.teachers[0], seed=config.seed, work_dir=work / "ours",
                           max_length=args.max_length, save_model=False)
        # the naive loop does no evaluation or checkpointing: subtract our per-epoch evaluation time
        eval_time = sum(entry.get("eval_runtime", 0.0) for entry in result.log_history)
        ours_total = result.train_time_s
        ours_time = ours_total - eval_time
        ours_accuracy = accuracy(result.extra["trainer"].model, tokenizer, dataset, args.max_length)
        samples = len(dataset["train"]) * args.epochs
        print(f"data: builtin:demo, {len(dataset['train'])} train rows, max_length {args.max_length}, "
              f"{args.epochs} epochs, batch {args.batch_size}, model {args.model}")
        print(f"naive (pad to max_length, fixed order): {samples / naive_time:8.1f} samples/s  "
              f"{naive_time:7.1f} s  test accuracy {naive_accuracy:.3f}")
        print(f"ours  (dynamic padding, length groups): {samples / ours_time:8.1f} samples/s  "
              f"{ours_time:7.1f} s  test accuracy {ours_accuracy:.3f}  "
              f"(+{eval_time:.1f} s per-epoch evaluation: {ours_total:.1f} s in all)")
        print(f"accuracy difference: {100 * (ours_accuracy - naive_accuracy):+.1f} pt")
        print(f"ratio including evaluation: {naive_time / ours_total:.2f}")
        print(f"ratio: {naive_time / ours_time:.2f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
