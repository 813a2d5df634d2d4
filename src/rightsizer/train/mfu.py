"""Model FLOPs utilisation (MFU): useful training FLOPs per second over what the GPUs could do.

FLOPs the honest way (nanoGPT's ``estimate_mfu``, PaLM appendix B): training a token costs
``6·N + 12·L·H·Q·T`` FLOPs — ``6·N`` for the forward and backward matmuls of the N non-embedding
parameters (embedding lookups are not matmuls), ``12·L·H·Q·T`` for attention over T positions with L
layers, H heads of size Q. Only real (non-padding) tokens count, each attending over its own
example's length, so padding and dynamic batching never inflate the figure. When some weights are
frozen (adapters), their weight gradients are not computed: ``6·N`` becomes ``4·N + 2·N_trainable``
(forward, activation gradients, weight gradients of what trains). Time is training-step time only:
evaluations and checkpoint saves in between are left out. The peak is the GPU's dense (no sparsity)
tensor-core rate for the dtype in use, from the table below, not a constant.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from rightsizer.train.memory import ModelShape, shape_of_model

# Dense peak TFLOP/s per GPU from the vendors' datasheets: (name pattern, bf16/fp16, tf32, fp32).
# More specific patterns first: the first match wins.
PEAK_TFLOPS: list[tuple[str, float | None, float | None, float]] = [
    (r"GB200|B200", 2250.0, 1100.0, 75.0),
    (r"B100", 1750.0, 875.0, 60.0),
    (r"H200 NVL|H100 NVL", 835.0, 417.5, 60.0),
    (r"H100.*PCIe", 756.5, 378.0, 51.2),
    (r"GH200|H200|H100|H800", 989.4, 494.7, 66.9),
    (r"A100|A800", 312.0, 156.0, 19.5),
    (r"L40S", 362.05, 183.0, 91.6),
    (r"L40\b", 181.05, 90.5, 90.5),
    (r"\bL4\b", 121.0, 60.0, 30.3),
    (r"\bA10\b", 125.0, 62.5, 31.2),
    (r"RTX 4090", 165.2, 82.6, 82.6),
    (r"RTX 3090", 71.0, 35.6, 35.6),
    (r"V100", 125.0, None, 15.7),  # fp16 tensor cores; no bf16
    (r"\bT4\b", 65.0, None, 8.1),  # fp16 tensor cores; no bf16
]


def peak_flops(device_name: str, dtype: str) -> float | None:
    """Dense peak FLOP/s of one GPU for ``dtype`` ('bf16', 'fp16', 'tf32', 'fp32'); None when unknown."""
    column = {"bf16": 1, "fp16": 1, "tf32": 2, "fp32": 3}[dtype]
    for pattern, *rates in PEAK_TFLOPS:
        if re.search(pattern, device_name):
            rate = rates[column - 1]
            return None if rate is None else rate * 1e12
    return None


def _matmul_flops(shape: ModelShape, trainable: int | None) -> float:
    """Per token: 2N forward + 2N activation gradients + 2 x the trained weights' gradients (all = 6N)."""
    n = shape.non_embedding_params
    return 6 * n if trainable is None else 4 * n + 2 * min(trainable, n)


def flops_per_token(shape: ModelShape, seq_len: float, trainable: int | None = None) -> float:
    """Training FLOPs for one token in a sequence of ``seq_len`` tokens: 6N + 12·L·H·Q·T.

    ``trainable``: non-embedding parameters that train, when some are frozen (default: all of them).
    """
    return _matmul_flops(shape, trainable) + 12 * shape.layers * shape.hidden * seq_len


def training_flops(shape: ModelShape, lengths, trainable: int | None = None) -> float:
    """Training FLOPs for one pass over examples of the given (non-padding) lengths."""
    lengths = np.asarray(lengths, dtype=np.float64)
    return float(_matmul_flops(shape, trainable) * lengths.sum()
                 + 12 * shape.layers * shape.hidden * (lengths ** 2).sum())


def trainable_non_embedding(model) -> int:
    """Parameters that receive gradients, embedding tables excluded."""
    import torch.nn as nn

    embedding = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    return sum(p.numel() for p in model.parameters() if p.requires_grad and id(p) not in embedding)


def current_dtype(bf16: bool) -> str:
    import torch

    if bf16:
        return "bf16"
    return "tf32" if torch.backends.cuda.matmul.allow_tf32 else "fp32"


@dataclass
class Throughput:
    samples_per_s: float
    tokens_per_s: float
    flops_per_s: float
    mfu: float | None
    peak_tflops: float | None
    device: str
    dtype: str
    gpus: int

    def summary(self) -> dict[str, Any]:
        return {"samples_per_s": round(self.samples_per_s, 2), "tokens_per_s": round(self.tokens_per_s, 1),
                "tflops_per_s": round(self.flops_per_s / 1e12, 2),
                "mfu": None if self.mfu is None else round(self.mfu, 4), "peak_tflops_per_gpu": self.peak_tflops,
                "device": self.device, "dtype": self.dtype, "gpus": self.gpus}


def meter_callback(model, lengths, *, samples_per_step: int, gpus: int, bf16: bool, print_every: bool = True):
    """A ``TrainerCallback`` that measures samples/s, tokens/s and (on GPUs) MFU over training steps only."""
    import torch
    from transformers import TrainerCallback

    lengths = np.asarray(lengths, dtype=np.float64)
    tokens_per_sample = float(lengths.mean()) if len(lengths) else 0.0
    try:
        shape = shape_of_model(model)
        trainable = trainable_non_embedding(model)
        flops_per_sample = training_flops(shape, lengths, trainable) / len(lengths) if len(lengths) else 0.0
    except (AttributeError, TypeError):  # a config without layers/hidden size: tokens/s only, no MFU
        flops_per_sample = 0.0
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    dtype = current_dtype(bf16) if torch.cuda.is_available() else "fp32"
    peak = peak_flops(device, dtype) if torch.cuda.is_available() else None

    class ThroughputMeter(TrainerCallback):
        """Sums step time between optimizer steps, skipping any interval that contained an eval or save."""

        def __init__(self):
            self.train_seconds = 0.0
            self.steps = 0
            self._last: float | None = None
            self._window = (0.0, 0)

        def _sync(self) -> float:
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            return time.perf_counter()

        def on_train_begin(self, args, state, control, **kwargs):
            self._last = self._sync()

        def on_step_end(self, args, state, control, **kwargs):
            now = self._sync()
            if self._last is not None:
                self.train_seconds += now - self._last
                self.steps += 1
                self._window = (self._window[0] + now - self._last, self._window[1] + 1)
            self._last = now

        def _interrupt(self, *args, **kwargs):
            self._last = None  # the next interval contains an eval/save: do not count it

        on_evaluate = on_save = _interrupt

        def on_step_begin(self, args, state, control, **kwargs):
            if self._last is None:
                self._last = self._sync()

        def on_log(self, args, state, control, logs=None, **kwargs):
            seconds, steps = self._window
            if logs is None or "loss" not in logs or steps == 0 or seconds <= 0:
                return
            rate = self.rate(seconds, steps)
            logs["tokens_per_s"] = round(rate.tokens_per_s, 1)
            if rate.mfu is not None:
                logs["mfu"] = round(rate.mfu, 4)
            if print_every and state.is_world_process_zero:
                mfu = f", MFU {rate.mfu:.1%}" if rate.mfu is not None else ""
                print(f"step {state.global_step}: {rate.tokens_per_s:,.0f} tokens/s{mfu}", flush=True)
            self._window = (0.0, 0)

        def rate(self, seconds: float | None = None, steps: int | None = None) -> Throughput:
            seconds = self.train_seconds if seconds is None else seconds
            steps = self.steps if steps is None else steps
            samples = steps * samples_per_step
            tokens_per_s = samples * tokens_per_sample / seconds if seconds > 0 else 0.0
            flops_per_s = samples * flops_per_sample / seconds if seconds > 0 else 0.0
            mfu = flops_per_s / (peak * gpus) if peak and gpus and flops_per_s else None
            return Throughput(samples_per_s=samples / seconds if seconds > 0 else 0.0, tokens_per_s=tokens_per_s, flops_per_s=flops_per_s, mfu=mfu,
                              peak_tflops=None if peak is None else peak / 1e12, device=device, dtype=dtype, gpus=gpus)

    return ThroughputMeter()
