"""GPU efficiency: the teacher stage fine-tuning a BERT-base/large-sized model on one GPU, tokens/s and MFU.

The model is BERT-large-shaped (``--size base`` for BERT-base) with random weights, registered as a
preset so nothing is downloaded; the data are synthetic examples long enough to fill ``--max-length``
(512) tokens, so the figure is about the GPU, not about padding. Training goes through the stage itself
(``rightsizer.stages.teacher.run``): bf16 where the GPU has it, SDPA attention, fused AdamW, dynamic
padding, DataLoader workers and pinned memory, optionally ``--compile``. Throughput and MFU come from
the stage's own meter (``rightsizer.train.mfu``): FLOPs/token = 6·N + 12·L·H·Q·T over real tokens,
training-step time only, against the GPU's dense bf16 peak from the table there.

Goal: MFU >= 45 % on an H100. Prints tokens/s, TFLOP/s, the peak, ``ratio: MFU`` and ``ideal: 1.0``.
Needs a CUDA GPU; on a machine without one it says so and exits 0 (it is never a test).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("RIGHTSIZER_QUIET", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SIZES = {"base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
         "large": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096)}


def register(size: str, max_length: int) -> str:
    from rightsizer.models import Preset, register_preset

    def build(vocab_size: int, tokenizer):
        from transformers import BertConfig

        return BertConfig(vocab_size=vocab_size, max_position_embeddings=max(512, max_length),
                          pad_token_id=tokenizer.pad_token_id, **SIZES[size])

    name = f"bench-bert-{size}"
    register_preset(Preset(name, f"BERT-{size} shape, random init (benchmark)", "wordpiece", build, vocab_size=30522))
    return name


def synthetic_data(path: Path, rows: int, words_per_row: int, seed: int = 0) -> None:
    """Long labelled texts over a 20k-word vocabulary: every example is truncated at max_length."""
    rng = random.Random(seed)
    vocabulary = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(3, 9)))
                  for _ in range(20_000)]
    with open(path, "w") as handle:
        for index in range(rows):
            label = index % 3
            words = rng.choices(vocabulary, k=words_per_row)
            handle.write(json.dumps({"text": " ".join(words), "label": ["neg", "neu", "pos"][label]}) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="large")
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--rows", type=int, default=8000)
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    args = parser.parse_args()

    import torch

    if not torch.cuda.is_available():
        print("gpu_mfu: no CUDA device on this machine; run it on a GPU node (it measures GPU efficiency only)")
        return 0
    from rightsizer.config import config_from_dict
    from rightsizer.stages import prepare, teacher

    preset = register(args.size, args.max_length)
    work = Path(tempfile.mkdtemp(prefix="bench-mfu-"))
    try:
        synthetic_data(work / "train.jsonl", args.rows, words_per_row=args.max_length + 100)
        raw = {"name": "gpu-mfu", "seed": 0,
               "data": {"source": str(work / "train.jsonl"), "max_length": args.max_length, "max_eval_samples": 256,
                        "validation_size": 0.05, "test_size": 0.05},
               "teachers": [{"name": "teacher", "model": preset, "max_steps": args.steps, "batch_size": args.batch_size,
                             "eval_batch_size": 128, "learning_rate": 1e-4, "warmup_ratio": 0.05,
                             "logging_steps": 25, "torch_compile": args.compile}],
               "resources": {"teachers": {"gpus": 1}}}
        config = config_from_dict(raw)
        prepare.run(config, work / "data")
        summary = teacher.run(config, work / "data", work / "teacher")
        throughput = summary["throughput"]
        print(f"device: {throughput['device']} ({throughput['dtype']}), model {preset} "
              f"({summary['params'] / 1e6:.0f}M parameters), seq {args.max_length}, batch {args.batch_size}, "
              f"{summary['steps']} steps{', torch.compile' if args.compile else ''}")
        print(f"tokens/s: {throughput['tokens_per_s']:,.0f}")
        print(f"model TFLOP/s: {throughput['tflops_per_s']:.1f} of a {throughput['peak_tflops_per_gpu']} TFLOP/s dense peak")
        if throughput["mfu"] is None:
            print(f"MFU: unknown (no peak for '{throughput['device']}' in rightsizer.train.mfu.PEAK_TFLOPS)")
            return 0
        print(f"MFU: {100 * throughput['mfu']:.1f} % (goal >= 45 % on an H100)")
        print("ideal: 1.0")
        print(f"ratio: {throughput['mfu']:.3f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
