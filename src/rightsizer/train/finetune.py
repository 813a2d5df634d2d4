"""Fine-tune a sequence classifier with HF ``Trainer``.

What makes it fast and safe, all from the library: dynamic padding (``DataCollatorWithPadding``),
length-grouped batches, evaluation every epoch with the best checkpoint kept, checkpoints under the
stage's work dir so a killed stage resumes, TensorBoard events in ``tb/``, DeepSpeed when configured.
Every training stage (teacher, student, adapter, slice) goes through :func:`fine_tune`.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rightsizer.config import TrainingOptions
from rightsizer.inference import gpu_bf16
from rightsizer.outputs import local_world_size, process_rank, world_size


@dataclass
class FineTuneResult:
    train_metrics: dict[str, Any]
    eval_metrics: dict[str, Any]
    log_history: list[dict[str, Any]]
    train_time_s: float
    samples_per_s: float
    tokens_per_s: float
    steps: int
    resumed_from: str | None = None
    precision: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def losses(self) -> list[float]:
        return [entry["loss"] for entry in self.log_history if "loss" in entry]

    def metrics(self) -> dict[str, Any]:
        """What a training stage writes to its metrics.json."""
        return {"validation": self.eval_metrics, "train": self.train_metrics, "losses": self.losses}

    def summary(self) -> dict[str, Any]:
        """The training facts every training stage puts in its summary.json."""
        return {"train_time_s": self.train_time_s, "samples_per_s": self.samples_per_s,
                "tokens_per_s": self.tokens_per_s, "steps": self.steps, "resumed_from": self.resumed_from,
                "precision": self.precision, "validation": self.eval_metrics}


def training_texts(dataset) -> list[str]:
    """Texts a preset's tokenizer is trained on: the train split's text (and text pair)."""
    train = dataset["train"]
    texts = list(train["text"])
    if "text_pair" in train.column_names:
        texts += list(train["text_pair"])
    return texts


def classification_metrics(predictions: np.ndarray, labels: np.ndarray, num_labels: int | None = None) -> dict[str, float]:
    """Accuracy and macro-F1 (over every class of ``num_labels`` when given, so a class nobody predicts and
    that is absent from ``labels`` still counts as 0) — the one definition training, the probe and evaluation use."""
    from sklearn.metrics import accuracy_score, f1_score

    classes = list(range(num_labels)) if num_labels is not None else None
    return {
        "accuracy": float(accuracy_score(labels, predictions)),
        "macro_f1": float(f1_score(labels, predictions, labels=classes, average="macro", zero_division=0)),
    }


def steps_per_epoch(train_rows: int, options) -> int:
    """Optimizer steps in one pass over ``train_rows`` examples across every process of this run."""
    return max(1, math.ceil(train_rows / (options.batch_size * options.gradient_accumulation_steps * world_size())))


def planned_steps(train_rows: int, options) -> int:
    """Optimizer steps :func:`fine_tune` runs: ``max_steps``, else the epochs' worth."""
    return options.max_steps or max(1, math.ceil(steps_per_epoch(train_rows, options) * options.epochs))


def _compute_metrics(eval_prediction) -> dict[str, float]:
    logits = eval_prediction.predictions
    if isinstance(logits, tuple):
        logits = logits[0]
    return classification_metrics(np.argmax(logits, axis=-1), eval_prediction.label_ids, logits.shape[-1])


def fp32_master_weights(model) -> None:
    """Trainable half-precision weights go to fp32: AdamW on bf16/fp16 weights drops small updates (bf16 keeps
    8 bits of mantissa), and fp16 overflows. Frozen weights keep their dtype. DeepSpeed keeps its own fp32 copy."""
    import torch

    for parameter in model.parameters():
        if parameter.requires_grad and parameter.dtype in (torch.float16, torch.bfloat16):
            parameter.data = parameter.data.float()


def last_checkpoint(checkpoint_dir: Path) -> str | None:
    from transformers.trainer_utils import get_last_checkpoint

    if not checkpoint_dir.is_dir():
        return None
    return get_last_checkpoint(str(checkpoint_dir))


def fine_tune(
    model,
    tokenizer,
    dataset,
    options: TrainingOptions,
    *,
    seed: int,
    work_dir: str | Path,
    max_length: int,
    deepspeed: dict | None = None,
    trainer_cls=None,
    trainer_kwargs: dict | None = None,
    callbacks: list | None = None,
    checkpoint_steps: int | None = None,
    save_model: bool = True,
    tokenized=None,
) -> FineTuneResult:
    """Train ``model`` on ``dataset['train']``, keep the best on ``validation``, save to ``work_dir/model``."""
    import torch
    from torch.utils.tensorboard import SummaryWriter
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments
    from transformers.integrations import TensorBoardCallback

    from rightsizer.data import tokenize

    work_dir = Path(work_dir)
    checkpoint_dir = work_dir / "checkpoints"
    pair = "text_pair" in dataset["train"].column_names
    if tokenized is None:
        tokenized = tokenize(dataset, tokenizer, max_length, pair)
    train_set, eval_set = tokenized["train"], tokenized["validation"]

    world = world_size()
    per_step = options.batch_size * options.gradient_accumulation_steps * world
    epoch_steps, total_steps = steps_per_epoch(len(train_set), options), planned_steps(len(train_set), options)
    interval = checkpoint_steps or min(epoch_steps, total_steps)
    on_gpu = torch.cuda.is_available()
    bf16 = gpu_bf16()
    if deepspeed is None:
        fp32_master_weights(model)
    rank_zero = process_rank() == 0
    # several nodes: each keeps its checkpoints on its own disk (no shared filesystem between pods)
    multi_node = world_size() > local_world_size()

    args = TrainingArguments(
        output_dir=str(checkpoint_dir),
        per_device_train_batch_size=options.batch_size,
        per_device_eval_batch_size=options.eval_batch_size,
        gradient_accumulation_steps=options.gradient_accumulation_steps,
        learning_rate=options.learning_rate,
        weight_decay=options.weight_decay,
        warmup_steps=int(options.warmup_ratio * total_steps),
        max_steps=total_steps,
        lr_scheduler_type="linear",
        eval_strategy="steps",
        save_strategy="steps",
        eval_steps=interval,
        save_steps=interval,
        save_total_limit=2,
        load_best_model_at_end=True,
        metric_for_best_model="macro_f1",
        greater_is_better=True,
        logging_steps=min(options.logging_steps, total_steps),
        report_to="none",
        seed=seed,
        data_seed=seed,
        train_sampling_strategy="group_by_length",
        length_column_name="length",
        dataloader_num_workers=2 if on_gpu else 0,
        dataloader_pin_memory=on_gpu,
        bf16=bf16,
        optim="adamw_torch_fused" if on_gpu else "adamw_torch",
        torch_compile=bool(getattr(options, "torch_compile", False)),
        deepspeed=deepspeed,
        use_cpu=not on_gpu,  # torchrun on CPU: gloo DDP (accelerate only goes multi-CPU when told it is on CPU)
        ddp_backend="gloo" if world > 1 and not on_gpu else None,
        save_on_each_node=multi_node,
        disable_tqdm=os.environ.get("RIGHTSIZER_QUIET") == "1",
        remove_unused_columns=True,
    )
    (work_dir / "tb").mkdir(parents=True, exist_ok=True)
    writer = SummaryWriter(log_dir=str(work_dir / "tb")) if rank_zero else None  # one event file, from rank 0
    from rightsizer.train.mfu import meter_callback

    # training-step throughput (evaluations and saves left out) and, on GPUs, MFU: logged and summarised
    meter = meter_callback(model, train_set["length"], samples_per_step=per_step, gpus=world if on_gpu else 0,
                           bf16=bf16, print_every=on_gpu)
    extra_callbacks = [meter]
    from rightsizer import progress

    bar = progress.trainer_callback(progress.current_label())  # the console's progress bar in a local run
    if bar is not None:
        extra_callbacks.append(bar)
    if writer is not None:
        extra_callbacks.append(TensorBoardCallback(tb_writer=writer))
    trainer_cls = trainer_cls or Trainer
    trainer = trainer_cls(
        model=model,
        args=args,
        train_dataset=train_set,
        eval_dataset=eval_set,
        processing_class=tokenizer,
        data_collator=DataCollatorWithPadding(tokenizer, pad_to_multiple_of=8 if on_gpu else None),
        compute_metrics=_compute_metrics,
        callbacks=[*extra_callbacks, *(callbacks or [])],
        **(trainer_kwargs or {}),
    )
    # Classification heads average their loss themselves and ignore `num_items_in_batch`; without this
    # the Trainer skips dividing by the accumulation steps and gradients grow with accumulation.
    trainer.model_accepts_loss_kwargs = False
    resume = last_checkpoint(checkpoint_dir)
    started = time.perf_counter()
    try:
        output = trainer.train(resume_from_checkpoint=resume)
    finally:
        if writer is not None:
            writer.flush()
    train_time = time.perf_counter() - started
    eval_metrics = trainer.evaluate()
    tokens = _tokens_seen(train_set, output.global_step, per_step)
    if save_model:
        # every rank calls save_model (ZeRO-3 gathers the weights collectively); only rank 0 writes
        trainer.save_model(str(work_dir / "model"))
        if trainer.is_world_process_zero():
            tokenizer.save_pretrained(str(work_dir / "model"))
    if writer is not None:
        writer.close()
    samples = output.global_step * per_step
    return FineTuneResult(
        train_metrics=dict(output.metrics),
        eval_metrics={k.removeprefix("eval_"): v for k, v in eval_metrics.items()},
        log_history=list(trainer.state.log_history),
        train_time_s=round(train_time, 3),
        samples_per_s=round(samples / train_time, 2) if train_time > 0 else 0.0,
        tokens_per_s=round(tokens / train_time, 1) if train_time > 0 else 0.0,
        steps=output.global_step,
        resumed_from=resume,
        precision={"weights": "+".join(sorted({str(p.dtype).removeprefix("torch.") for p in model.parameters()
                                               if p.requires_grad})),
                   "autocast": "bf16" if bf16 else None, "deepspeed": deepspeed is not None},
        extra={"trainer": trainer, "throughput": meter.rate().summary()},
    )


def _tokens_seen(train_set, steps: int, per_step: int) -> int:
    """Approximate non-padding tokens processed: mean length x samples."""
    lengths = train_set["length"]
    return int(np.mean(lengths) * steps * per_step) if len(lengths) else 0
