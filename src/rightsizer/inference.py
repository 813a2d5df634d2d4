"""Batched inference with dynamic padding, shared by evaluation, distillation and probing.

Examples are sorted by length so each batch is padded only to its own longest member; results are
returned in the original order.
"""

from __future__ import annotations

import time

import numpy as np


PRECISIONS = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}  # config name -> torch dtype name


def gpu_bf16() -> bool:
    """Whether this process has a CUDA GPU with bf16: the one place training, launching and evaluation read it
    (training autocasts in bf16 exactly when this holds; the CPU is always fp32)."""
    import torch

    return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())


def inference_placement(requested: str = "auto") -> tuple[str, str]:
    """``(device, precision)`` for evaluation and prompting: CUDA when present, else the CPU.

    ``auto`` is bf16 on a GPU that supports it, fp16 on an older one, fp32 on the CPU; ``fp32``/``bf16``/
    ``fp16`` are taken as asked, except bf16 on a GPU without it (a one-line error: use auto or fp16).
    """
    import torch

    from rightsizer.errors import UserError

    if not torch.cuda.is_available():
        return "cpu", "fp32" if requested == "auto" else requested
    bf16 = gpu_bf16()
    if requested == "auto":
        return "cuda", "bf16" if bf16 else "fp16"
    if requested == "bf16" and not bf16:
        raise UserError(f"evaluation.dtype is bf16 but this GPU ({torch.cuda.get_device_name()}) does not support "
                        "bf16; use auto (fp16 here) or fp32")
    return "cuda", requested


def torch_dtype(precision: str):
    """The torch dtype of a precision name (fp32, bf16, fp16)."""
    import torch

    return getattr(torch, PRECISIONS[precision])


def encode_texts(tokenizer, texts: list[str], pairs: list[str] | None, max_length: int):
    if pairs is not None:
        return tokenizer(texts, pairs, truncation=True, max_length=max_length)
    return tokenizer(texts, truncation=True, max_length=max_length)


def model_device(model):
    """Where a model's inputs go: a HF model's ``device``, else its first parameter's (an ONNX Runtime
    wrapper says ``cpu``)."""
    device = getattr(model, "device", None)
    return device if device is not None else next(model.parameters()).device


def batches_by_length(lengths: list[int], batch_size: int) -> list[np.ndarray]:
    order = np.argsort(np.asarray(lengths), kind="stable")
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def predict_logits(model, tokenizer, split, max_length: int, batch_size: int = 128, output_hidden_states: bool = False,
                   hidden_fn=None):
    """Logits (N, num_labels) for a dataset split with ``text`` (and ``text_pair``) columns.

    ``hidden_fn(hidden_states, attention_mask)`` may reduce all hidden states per batch; its results
    are returned in order as a second value. Returns ``(logits, seconds, extra)``.
    """
    import torch

    texts = list(split["text"])
    pairs = list(split["text_pair"]) if "text_pair" in split.column_names else None
    encoded = encode_texts(tokenizer, texts, pairs, max_length)
    lengths = [len(ids) for ids in encoded["input_ids"]]
    device = model_device(model)
    logits = None
    extra: list = [None] * len(texts)
    model.eval()
    from rightsizer import progress

    batches = batches_by_length(lengths, batch_size)
    bar = progress.StepProgress(progress.current_label(), "inference", len(batches)) if progress.enabled() else None
    started = time.perf_counter()
    with torch.inference_mode():
        for number, index in enumerate(batches, 1):
            if bar is not None:
                bar.update(number, force=number == len(batches))
            features = [{k: encoded[k][i] for k in encoded.keys()} for i in index]
            batch = tokenizer.pad(features, return_tensors="pt")
            batch = {k: v.to(device) for k, v in batch.items()}
            output = model(**batch, output_hidden_states=output_hidden_states or hidden_fn is not None)
            batch_logits = output.logits.float().cpu().numpy()
            if logits is None:
                logits = np.zeros((len(texts), batch_logits.shape[-1]), dtype=np.float32)
            logits[index] = batch_logits
            if hidden_fn is not None:
                reduced = hidden_fn(output.hidden_states, batch["attention_mask"])
                for row, i in enumerate(index):
                    extra[i] = reduced[row]
    elapsed = time.perf_counter() - started
    if logits is None:
        logits = np.zeros((0, 0), dtype=np.float32)
    return logits, elapsed, extra
