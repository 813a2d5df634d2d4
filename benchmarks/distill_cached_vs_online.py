"""Cached teacher logits vs online teachers: 3 teachers (tiny-bert-4l), 1 student (tiny-bert-2l),
5 student epochs on the demo data, same seed.

Cached: the teacher-logits stage runs every teacher once over the training split, then the student
trains against the stored logits. Online: the teachers run on every training batch. The ideal speed-up
is E(t + s) / (t + E s), with t the measured cost of one pass of all teachers over the training split
and s the cost of one student epoch. Prints both wall times, both students' test accuracy,
`ratio: online / cached` and `ideal: ...` (goal: ratio >= 90 % of ideal, accuracy within 0.5 pt).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RIGHTSIZER_QUIET", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def base_config(seed: int, teachers: int, teacher_epochs: float, students: list[dict], max_train: int | None):
    from rightsizer.config import config_from_dict

    return config_from_dict({
        "name": "bench-distill", "seed": seed,
        "data": {"source": "builtin:demo", "max_length": 128, "max_train_samples": max_train},
        "teachers": [{"name": f"teacher-{i}", "model": "tiny-bert-4l", "epochs": teacher_epochs,
                      "learning_rate": 1e-3, "batch_size": 32} for i in range(teachers)],
        "students": students,
    })


def test_accuracy(model_dir: Path, data_dir: Path) -> float:
    import numpy as np

    from rightsizer.data import load_prepared
    from rightsizer.inference import predict_logits
    from rightsizer.models import load_saved

    dataset, _ = load_prepared(data_dir)
    model, tokenizer = load_saved(model_dir)
    logits, _, _ = predict_logits(model, tokenizer, dataset["test"], 128, 256)
    return float((logits.argmax(-1) == np.asarray(dataset["test"]["label"])).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=float, default=5.0, help="student epochs (E)")
    parser.add_argument("--teachers", type=int, default=3)
    parser.add_argument("--teacher-epochs", type=float, default=2.0)
    parser.add_argument("--max-train", type=int, default=None, help="subsample the training split (quick runs)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's own choice)")
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)

    from rightsizer.outputs import read_json
    from rightsizer.stages import distill, prepare, teacher, teacher_logits

    student = {"model": "tiny-bert-2l", "epochs": args.epochs, "learning_rate": 1e-3, "batch_size": 32,
               "temperature": 2.0, "alpha": 0.5, "control": False}
    cached_config = base_config(args.seed, args.teachers, args.teacher_epochs,
                                [{**student, "name": "cached", "teacher_logits": "cached"}], args.max_train)
    online_config = base_config(args.seed, args.teachers, args.teacher_epochs,
                                [{**student, "name": "online", "teacher_logits": "online"}], args.max_train)
    with tempfile.TemporaryDirectory(prefix="bench-distill-") as tmp:
        work = Path(tmp)
        prepare.run(cached_config, work / "data")
        teacher_dirs = []
        for index, options in enumerate(cached_config.teachers):  # a different seed per teacher, not timed
            seeded = cached_config.model_copy(update={"seed": args.seed + index})
            teacher.run(seeded, work / "data", work / options.name, name=options.name)
            teacher_dirs.append(work / options.name)
            print(f"trained {options.name}: validation accuracy "
                  f"{read_json(work / options.name / 'summary.json')['validation']['accuracy']:.4f}")

        started = time.perf_counter()
        gathered = teacher_logits.run(cached_config, work / "data", teacher_dirs, work / "bundle-cached")
        cached = distill.run(cached_config, work / "data", work / "bundle-cached", work / "cached", name="cached")
        cached_wall = time.perf_counter() - started

        started = time.perf_counter()
        teacher_logits.run(online_config, work / "data", teacher_dirs, work / "bundle-online")
        online = distill.run(online_config, work / "data", work / "bundle-online", work / "online", name="online")
        online_wall = time.perf_counter() - started

        t = gathered["teacher_pass_s"]
        s = cached["train_time_s"] / args.epochs
        ideal = args.epochs * (t + s) / (t + args.epochs * s)
        ratio = online_wall / cached_wall
        cached_accuracy = test_accuracy(work / "cached" / "model", work / "data")
        online_accuracy = test_accuracy(work / "online" / "model", work / "data")

    print(f"teachers: {args.teachers} x tiny-bert-4l; student: tiny-bert-2l, {args.epochs:g} epochs, "
          f"{gathered['train_rows']} training rows")
    print(f"t (all teachers, one pass over train): {t:.2f} s;  s (one student epoch, cached): {s:.2f} s")
    print(f"cached: {cached_wall:.2f} s wall (teacher pass + student {cached['train_time_s']:.2f} s), "
          f"test accuracy {cached_accuracy:.4f}")
    print(f"online: {online_wall:.2f} s wall (student with teachers every step {online['train_time_s']:.2f} s), "
          f"test accuracy {online_accuracy:.4f}")
    print(f"accuracy difference: {100 * (cached_accuracy - online_accuracy):+.2f} pt")
    print(f"share of ideal: {100 * ratio / ideal:.1f} %")
    print(f"ideal: {ideal:.3f}")
    print(f"ratio: {ratio:.3f}")


if __name__ == "__main__":
    main()
