"""Data-parallel scaling on CPU: the teacher stage on 1 process vs N processes (torchrun, gloo DDP).

Weak scaling: every rank keeps the same per-rank batch and one CPU thread (OMP_NUM_THREADS=1, set here
for the 1-process run and by torchrun for the N ranks), so N ranks push N times the samples per optimizer
step and the ideal ratio is N on a machine with N idle cores. What is lost to gradient all-reduce (gloo
over loopback), rendezvous and the per-step synchronisation shows as ratio < N. Throughput is training
samples per second over training steps only (the stage's ``throughput``: evaluations and checkpoint
saves are left out). On a shared 2-core machine the figure is informative
only. Prints both throughputs, ``ratio: N-process samples/s / 1-process samples/s`` and ``ideal: N``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")  # one thread per rank, like torchrun's ranks (before torch loads)
os.environ.setdefault("RIGHTSIZER_QUIET", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from rightsizer.config import config_from_dict  # noqa: E402
from rightsizer.stages import prepare, teacher  # noqa: E402


def run(work: Path, data: Path, processes: int, args) -> dict:
    raw = {"name": "ddp-scaling", "seed": 42,
           "data": {"source": "builtin:demo", "max_length": args.max_length, "max_train_samples": args.train_samples,
                    "max_eval_samples": 60},
           "teachers": [{"name": "teacher", "model": args.model, "max_steps": args.steps, "learning_rate": 1e-3,
                         "batch_size": args.batch_size, "logging_steps": 10}],
           "resources": {"teachers": {"processes": processes} if processes > 1 else {}}}
    out = work / f"p{processes}"
    teacher.run(config_from_dict(raw), data, out)
    return json.loads((out / "summary.json").read_text())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--model", default="tiny-bert-4l")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=32, help="per process")
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--train-samples", type=int, default=2000)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-ddp-"))
    try:
        data = work / "data"
        prepare.run(config_from_dict({"seed": 42, "data": {"source": "builtin:demo", "max_length": args.max_length,
                                                           "max_train_samples": args.train_samples,
                                                           "max_eval_samples": 60}}), data)
        one = run(work, data, 1, args)
        many = run(work, data, args.processes, args)
        print(f"machine: {os.cpu_count()} cores; model {args.model}, {args.steps} steps, batch {args.batch_size} per "
              f"rank, max_length {args.max_length}, {os.environ['OMP_NUM_THREADS']} thread(s) per rank")
        for label, summary in (("1 process", one), (f"{args.processes} processes", many)):
            print(f"{label:>12}: {summary['throughput']['samples_per_s']:8.1f} samples/s  {summary['train_time_s']:6.1f} s  "
                  f"final validation loss {summary['validation']['loss']:.3f}  "
                  f"(world size {summary['launch']['world_size']})")
        print(f"ideal: {args.processes:.1f}")
        print(f"ratio: {many['throughput']['samples_per_s'] / one['throughput']['samples_per_s']:.2f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
