"""Running a training stage on one device, N processes in a pod, or N nodes (TrainJob)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rightsizer.errors import UserError


def deepspeed_config(value: dict[str, Any] | str | None) -> dict[str, Any] | None:
    """Resolve ``config.deepspeed`` into a DeepSpeed JSON dict for ``TrainingArguments(deepspeed=...)``.

    ``None`` means no DeepSpeed (plain PyTorch / DDP). A dict with ``zero_stage`` is the shorthand;
    a string is a path to a user JSON.
    """
    if value is None:
        return None
    if isinstance(value, str):
        path = Path(value)
        if not path.exists():
            raise UserError(f"deepspeed config '{value}' not found")
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise UserError(f"deepspeed config '{value}' is not valid JSON: {exc.msg} at line {exc.lineno}") from None
    shorthand = dict(value)
    stage = shorthand.pop("zero_stage", None)
    if stage is None:
        return shorthand
    if stage not in (0, 1, 2, 3):
        raise UserError(f"deepspeed.zero_stage must be 0, 1, 2 or 3, got {stage!r}")
    resolved = {
        "train_micro_batch_size_per_gpu": "auto", "train_batch_size": "auto", "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto", "zero_optimization": {"stage": stage}, "bf16": {"enabled": "auto"},
        "fp16": {"enabled": "auto"},
    }
    resolved["zero_optimization"].update(shorthand.pop("zero_optimization", {}))
    resolved.update(shorthand)
    return resolved
