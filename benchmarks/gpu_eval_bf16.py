"""Evaluation on a GPU: the evaluate stage in bf16 (``evaluation.dtype: auto``) against fp32, examples/s.

The candidate is a BERT-base-shaped classifier with random weights (the preset of ``gpu_mfu.py``, nothing
downloaded), saved as a stage output; the test split holds synthetic examples that fill ``--max-length``
tokens. Both runs go through ``rightsizer.stages.evaluate.run``: on CUDA, batches of
``evaluation.batch_size``, once with ``evaluation.dtype: fp32`` (the naive way: full precision, as
evaluation ran before it used the GPU's precision) and once with ``auto`` (bf16 where the GPU has it,
else fp16). Prints throughput and p50 latency of each, the accuracy of both (equal up to rounding) and
``ratio: half-precision examples/s / fp32 examples/s``.

Needs a CUDA GPU; without one it says so and exits 0 (``--cpu`` runs the same path on the CPU with a
tiny model, fp32 against bf16, to check the script itself).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("RIGHTSIZER_QUIET", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_mfu import register, synthetic_data  # noqa: E402  (same preset and data as the training benchmark)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=("base", "large"), default="base")
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--rows", type=int, default=40000, help="data rows; the test split is 10 %% of them")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--cpu", action="store_true", help="check the script on the CPU (tiny model, fp32 vs bf16)")
    args = parser.parse_args()

    import torch

    if not torch.cuda.is_available() and not args.cpu:
        print("gpu_eval_bf16: no CUDA device on this machine; run it on a GPU node (or --cpu to check the script)")
        return 0
    from rightsizer.config import config_from_dict
    from rightsizer.data import load_prepared
    from rightsizer.models import load_classifier
    from rightsizer.stages import evaluate, prepare
    from rightsizer.train import training_texts

    if args.cpu:
        preset, args.max_length, args.rows, args.batch_size = "tiny-bert-4l", 64, 3000, 64
    else:
        preset = register(args.size, args.max_length)
    work = Path(tempfile.mkdtemp(prefix="bench-eval-"))
    try:
        synthetic_data(work / "data.jsonl", args.rows, words_per_row=args.max_length + 50)
        raw = {"name": "gpu-eval", "seed": 0,
               "data": {"source": str(work / "data.jsonl"), "max_length": args.max_length,
                        "validation_size": 0.01, "test_size": 0.1},
               "teachers": [{"name": "teacher", "model": preset}],
               "evaluation": {"batch_size": args.batch_size, "latency_samples": 50, "warmup_batches": 5}}
        config = config_from_dict(raw)
        prepare.run(config, work / "data")
        dataset, card = load_prepared(work / "data")
        model, tokenizer = load_classifier(preset, card["label_names"], training_texts(dataset), seed=0)
        model.save_pretrained(str(work / "candidate" / "model"))
        tokenizer.save_pretrained(str(work / "candidate" / "model"))
        del model
        results = {}
        for precision in ("fp32", "bf16" if args.cpu else "auto"):
            run_config = config_from_dict(raw, [f"evaluation.dtype={precision}"])
            results[precision] = evaluate.run(run_config, work / "data", work / "candidate", work / f"eval-{precision}")
        full, half = results.values()
        gpu = f" ({half['device_name']})" if half.get("device_name") else ""
        print(f"device: {half['device']}{gpu}, {preset} "
              f"({full['params'] / 1e6:.0f}M parameters), {full['test_rows']} test rows of up to {args.max_length} "
              f"tokens, batch {args.batch_size}")
        for row in (full, half):
            print(f"{row['dtype']}: {row['throughput_per_s']:,.1f} examples/s, latency p50 {row['latency_ms']:.2f} ms, "
                  f"accuracy {row['accuracy']:.4f}")
        print(f"ratio: {half['throughput_per_s'] / full['throughput_per_s']:.2f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
