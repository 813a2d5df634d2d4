"""DeepSpeed configs: the ``deepspeed: {zero_stage: 2}`` shorthand, user JSON files, and conflicts.

``config.deepspeed`` is one of

* ``null`` — no DeepSpeed (plain PyTorch, DDP when there are several processes);
* a shorthand mapping with ``zero_stage`` (0-3) and optionally ``offload_optimizer`` / ``offload_param``
  (``none`` | ``cpu`` | ``nvme``), ``nvme_path``, plus any DeepSpeed key, passed through as is
  (``zero_optimization: {...}`` is merged into the generated block);
* a mapping without ``zero_stage`` — a complete DeepSpeed JSON, used as given;
* a path to a DeepSpeed JSON file — read when the config is loaded, so the pipeline carries its content.

The expansion leaves batch sizes, accumulation, clipping and precision as ``"auto"`` so the HF Trainer fills
them in from the training options; bf16/fp16 are therefore on only where the Trainer turns them on (a GPU).
A user JSON that pins a value the Trainer also sets (batch size, accumulation, learning rate, precision) must
agree with it: :func:`check_against_training` says which keys conflict before any process starts.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from rightsizer.errors import UserError, one_of

SHORTHAND_KEYS = ("zero_stage", "offload_optimizer", "offload_param", "nvme_path")
OFFLOAD_DEVICES = ("none", "cpu", "nvme")

# Values the Trainer fills in when they are "auto" (HF's HfTrainerDeepSpeedConfig does the same).
_AUTO_TOP = {"train_micro_batch_size_per_gpu": "auto", "train_batch_size": "auto",
             "gradient_accumulation_steps": "auto", "gradient_clipping": "auto"}
_ZERO_2 = {"allgather_partitions": True, "allgather_bucket_size": 200_000_000, "overlap_comm": True,
           "reduce_scatter": True, "reduce_bucket_size": "auto", "contiguous_gradients": True}
_ZERO_3 = {"overlap_comm": True, "contiguous_gradients": True, "sub_group_size": 1_000_000_000,
           "reduce_bucket_size": "auto", "stage3_prefetch_bucket_size": "auto",
           "stage3_param_persistence_threshold": "auto", "stage3_max_live_parameters": 1_000_000_000,
           "stage3_max_reuse_distance": 1_000_000_000, "stage3_gather_16bit_weights_on_model_save": True}


def read_deepspeed_json(path: str | Path) -> dict[str, Any]:
    """A user DeepSpeed JSON file as a dict; a missing or malformed file is a UserError."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"deepspeed config '{path}' not found; give a DeepSpeed JSON file or the shorthand "
                        "{zero_stage: 2}")
    try:
        value = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise UserError(f"deepspeed config '{path}' is not valid JSON: {exc.msg} at line {exc.lineno}") from None
    if not isinstance(value, dict):
        raise UserError(f"deepspeed config '{path}' must be a JSON object, got {type(value).__name__}")
    return value


def deepspeed_config(value: dict[str, Any] | str | None) -> dict[str, Any] | None:
    """Resolve ``config.deepspeed`` into a DeepSpeed JSON dict for ``TrainingArguments(deepspeed=...)``."""
    if value is None:
        return None
    if isinstance(value, (str, Path)):
        return read_deepspeed_json(value)
    if not isinstance(value, dict):
        raise UserError(f"deepspeed must be null, a mapping or a path to a JSON file, got {type(value).__name__}")
    if not any(key in value for key in SHORTHAND_KEYS):
        return copy.deepcopy(value)
    shorthand = copy.deepcopy(value)
    stage = shorthand.pop("zero_stage", None)
    if stage is None:
        raise UserError(f"deepspeed: {', '.join(k for k in SHORTHAND_KEYS if k in value)} needs zero_stage (0-3)")
    if isinstance(stage, bool) or stage not in (0, 1, 2, 3):
        raise UserError(f"deepspeed.zero_stage must be 0, 1, 2 or 3, got {stage!r}")
    offload_optimizer = _device(shorthand.pop("offload_optimizer", "none"), "offload_optimizer")
    offload_param = _device(shorthand.pop("offload_param", "none"), "offload_param")
    nvme_path = shorthand.pop("nvme_path", None)
    if offload_param != "none" and stage != 3:
        raise UserError(f"deepspeed.offload_param needs zero_stage 3 (parameters are partitioned only in stage 3), "
                        f"got zero_stage {stage}")
    if offload_optimizer != "none" and stage == 0:
        raise UserError("deepspeed.offload_optimizer needs zero_stage 1, 2 or 3")
    if "nvme" in (offload_optimizer, offload_param) and not nvme_path:
        raise UserError("deepspeed: offloading to nvme needs nvme_path (a fast local disk in the pod)")

    zero: dict[str, Any] = {"stage": stage}
    if stage == 2:
        zero.update(_ZERO_2)
    elif stage == 3:
        zero.update(_ZERO_3)
    for key, device in (("offload_optimizer", offload_optimizer), ("offload_param", offload_param)):
        if device != "none":
            zero[key] = {"device": device, "pin_memory": True, **({"nvme_path": nvme_path} if device == "nvme" else {})}
    user_zero = shorthand.pop("zero_optimization", {})
    if not isinstance(user_zero, dict):
        raise UserError("deepspeed.zero_optimization must be a mapping of DeepSpeed ZeRO options")
    if "stage" in user_zero and user_zero["stage"] != stage:
        raise UserError(f"deepspeed: zero_stage {stage} and zero_optimization.stage {user_zero['stage']} disagree; "
                        "give one of them")
    zero.update(user_zero)
    resolved: dict[str, Any] = {
        **_AUTO_TOP,
        "bf16": {"enabled": "auto"},
        "fp16": {"enabled": "auto", "loss_scale": 0, "loss_scale_window": 1000, "initial_scale_power": 16,
                 "hysteresis": 2, "min_loss_scale": 1},
        "zero_optimization": zero,
        "steps_per_print": 1_000_000_000,  # the Trainer logs; keep DeepSpeed's own step prints out of the logs
        "wall_clock_breakdown": False,
    }
    resolved.update(shorthand)  # any other DeepSpeed key, as given
    return resolved


def _device(value: Any, key: str) -> str:
    text = "none" if value in (None, False) else str(value).lower()
    if text not in OFFLOAD_DEVICES:
        raise UserError(f"deepspeed.{key} must be one of {one_of(OFFLOAD_DEVICES)}, got {value!r}")
    return text


def zero_stage(resolved: dict[str, Any] | None) -> int | None:
    """The ZeRO stage of a resolved DeepSpeed dict (None without DeepSpeed)."""
    if resolved is None:
        return None
    return int((resolved.get("zero_optimization") or {}).get("stage", 0))


def with_zero_stage(resolved: dict[str, Any] | None, stage: int) -> dict[str, Any]:
    """``resolved`` (or the shorthand default) with its ZeRO stage set to ``stage`` — used by placement."""
    if resolved is None:
        return deepspeed_config({"zero_stage": stage})
    if zero_stage(resolved) == stage:
        return resolved
    fresh = deepspeed_config({"zero_stage": stage})
    merged = copy.deepcopy(resolved)
    zero = {k: v for k, v in (resolved.get("zero_optimization") or {}).items() if not k.startswith("stage3_")}
    zero.update(fresh["zero_optimization"])
    merged["zero_optimization"] = zero
    return merged


def check_against_training(resolved: dict[str, Any] | None, *, batch_size: int, accumulation: int, world_size: int,
                           learning_rate: float, weight_decay: float, bf16: bool | None, where: str) -> None:
    """Raise a UserError naming every DeepSpeed value that a Trainer argument contradicts.

    Mirrors what the HF Trainer checks when it fills ``"auto"`` values, but before any process starts and
    with the config key to change. ``bf16`` says whether the Trainer will train in bf16 (a bf16-capable GPU);
    None when that is not known here (a launcher whose nodes have the GPUs): precision is then checked there.
    """
    if resolved is None:
        return
    from transformers import TrainingArguments

    defaults = TrainingArguments.__dataclass_fields__
    trainer_values = {
        "train_micro_batch_size_per_gpu": (batch_size, f"{where}.batch_size"),
        "gradient_accumulation_steps": (accumulation, f"{where}.gradient_accumulation_steps"),
        "train_batch_size": (batch_size * accumulation * world_size, "batch_size x accumulation x processes"),
        "gradient_clipping": (defaults["max_grad_norm"].default, "the Trainer's max_grad_norm"),
        "optimizer.params.lr": (learning_rate, f"{where}.learning_rate"),
        "optimizer.params.weight_decay": (weight_decay, f"{where}.weight_decay"),
        "optimizer.params.eps": (defaults["adam_epsilon"].default, "the Trainer's adam_epsilon"),
        "optimizer.params.betas": ([defaults["adam_beta1"].default, defaults["adam_beta2"].default],
                                   "the Trainer's adam betas"),
        "scheduler.params.warmup_max_lr": (learning_rate, f"{where}.learning_rate"),
        "bf16.enabled": (bf16, "bf16 (on only on a GPU that supports it)"),
        "fp16.enabled": (False, "fp16 (rightsizer trains in bf16 on GPUs that have it, else fp32)"),
    }
    if bf16 is None:
        trainer_values.pop("bf16.enabled")
    conflicts = []
    for dotted, (expected, source) in trainer_values.items():
        value = _lookup(resolved, dotted)
        if value is None or value == "auto":
            continue
        if isinstance(expected, float) and isinstance(value, (int, float)) and not isinstance(value, bool):
            same = abs(float(value) - expected) <= 1e-12 * max(1.0, abs(expected))
        else:
            same = value == expected
        if not same:
            conflicts.append(f"{dotted}={value!r} but {source} is {expected!r}")
    if conflicts:
        raise UserError("deepspeed config conflicts with the training arguments: " + "; ".join(conflicts)
                        + "; set those keys to \"auto\" or make them agree")


def _lookup(tree: dict[str, Any], dotted: str) -> Any:
    node: Any = tree
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node
