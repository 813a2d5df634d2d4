"""Knowledge distillation: the loss, the ``Trainer`` subclass that applies it, and student surgery.

The loss is Hinton et al.'s: ``alpha * T^2 * KL(p_teacher || p_student) + (1 - alpha) * CE(student, label)``
where ``p = softmax(logits / T)`` and ``p_teacher`` is the (mean or validation-score weighted) mixture
of every teacher's softened distribution. The ``T^2`` keeps the soft-target gradients on the same
scale as the hard-label ones when ``T`` changes. Rows without a label (unlabeled transfer text, label
-100) get only the KD term, at full weight: ``alpha`` weighs a labelled row's two targets, not the transfer
set. Optional hidden-state matching adds ``hidden_weight * MSE`` between the student's states through a
learned linear projection and the teacher's, both standardised per dimension over the batch's real tokens,
so no few large dimensions dominate and a teacher's per-dimension scale is irrelevant.

Teacher logits usually come *cached* (computed once by the teacher-logits stage and carried in the
training set as a ``teacher_logits`` column, so every epoch reuses them); with hidden-state matching
the teachers run *online*, on every training batch, under ``no_grad`` (a teacher whose tokenizer
differs from the student's reads its own tokenization of the batch, carried as ``teacher{k}_*``
columns). Everything else (optimizer, schedule, checkpoints, DeepSpeed, logging) is the stock HF
``Trainer`` via :func:`fine_tune`.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from transformers import Trainer

from rightsizer.errors import UserError, one_of

TEACHER_LOGITS = "teacher_logits"


class LossParts(NamedTuple):
    loss: torch.Tensor
    kd: torch.Tensor
    ce: torch.Tensor


def teacher_weights(scores: Sequence[float], weighting: str) -> torch.Tensor:
    """Mixture weights for the teachers: equal (``mean``) or proportional to a validation score."""
    count = len(scores)
    if count == 0:
        raise ValueError("no teachers")
    if weighting == "mean":
        return torch.full((count,), 1.0 / count)
    if weighting == "val_score":
        values = torch.tensor([max(float(s), 0.0) for s in scores], dtype=torch.float32)
        if float(values.sum()) <= 0:
            raise UserError("teacher_weighting: val_score needs at least one teacher with a validation score above 0; "
                            "use teacher_weighting: mean")
        return values / values.sum()
    raise ValueError(f"unknown teacher weighting {weighting!r}")


def combine_teachers(teacher_logits: torch.Tensor, temperature: float, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Softened teacher distribution: ``sum_k w_k softmax(logits_k / T)``; logits are (B, K, C) or (B, C)."""
    if teacher_logits.dim() == 2:
        teacher_logits = teacher_logits.unsqueeze(1)
    probs = F.softmax(teacher_logits.float() / temperature, dim=-1)
    if weights is None:
        return probs.mean(dim=1)
    weights = weights.to(probs.device, probs.dtype)
    return torch.einsum("bkc,k->bc", probs, weights)


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
                      temperature: float, alpha: float, weights: torch.Tensor | None = None) -> LossParts:
    """Mean over the batch's rows of ``alpha * T^2 * KL(teachers || student) + (1 - alpha) * CE(student, label)``
    for a labelled row and of ``T^2 * KL`` alone for a transfer row (label -100: it has only the soft target, so
    alpha, which weighs a row's two targets against each other, leaves it at full weight). With every row labelled
    this is ``alpha * kd + (1 - alpha) * ce`` of the batch means. ``kd`` and ``ce`` in the result are batch means
    (CE over the labelled rows)."""
    student_logits = student_logits.float()
    labelled = labels != -100
    target = combine_teachers(teacher_logits, temperature, weights)
    log_student = F.log_softmax(student_logits / temperature, dim=-1)
    kd_rows = F.kl_div(log_student, target, reduction="none").sum(dim=-1) * temperature**2
    ce_rows = F.cross_entropy(student_logits, labels, reduction="none")  # 0 on transfer rows (ignore_index -100)
    ce = ce_rows[labelled].mean() if bool(labelled.any()) else student_logits.sum() * 0.0
    rows = torch.where(labelled, alpha * kd_rows + (1.0 - alpha) * ce_rows, kd_rows)
    return LossParts(rows.mean(), kd_rows.mean(), ce)


def uniform_layer_map(student_layers: int, teacher_layers: int) -> dict[int, int]:
    """Student layer i -> teacher layer ceil-spaced so the last layers meet (2 of 4: {0: 1, 1: 3})."""
    if student_layers > teacher_layers:
        raise UserError(f"a {student_layers}-layer student cannot be matched to a {teacher_layers}-layer teacher; "
                        "a student must not be deeper than its teachers")
    return {i: (i + 1) * teacher_layers // student_layers - 1 for i in range(student_layers)}


def standardise(states: torch.Tensor, mask: torch.Tensor | None = None, eps: float = 1e-8) -> torch.Tensor:
    """Each dimension to mean 0, variance 1 over the real tokens (``mask`` (B, T)) or the rows ((N, D) input)."""
    if mask is None:
        mean = states.mean(dim=0, keepdim=True)
        var = states.var(dim=0, unbiased=False, keepdim=True)
    else:
        weights = mask.unsqueeze(-1).to(states.dtype)
        count = weights.sum().clamp(min=1.0)
        mean = (states * weights).sum(dim=(0, 1), keepdim=True) / count
        var = ((states - mean).pow(2) * weights).sum(dim=(0, 1), keepdim=True) / count
    return (states - mean) / torch.sqrt(var + eps)


def hidden_state_loss(student_hidden: Sequence[torch.Tensor], teacher_hidden: Sequence[torch.Tensor],
                      layer_map: dict[int, int], projection: torch.nn.Module, student_mask: torch.Tensor,
                      teacher_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over mapped layers of the MSE between standardised projected student states and standardised teacher states.

    ``*_hidden`` are the models' ``hidden_states`` tuples (embeddings first), so layer ``i`` is entry ``i + 1``.
    Same tokens (``teacher_mask`` None): token by token over real tokens. Different tokenizers: the
    sequences do not line up, so each side is mean-pooled over its own real tokens first.
    """
    losses = []
    for student_layer, teacher_layer in layer_map.items():
        projected = projection(student_hidden[student_layer + 1].float())
        target = teacher_hidden[teacher_layer + 1].float()
        if teacher_mask is None:
            mask = student_mask.unsqueeze(-1).float()
            squared = (standardise(projected, student_mask) - standardise(target, student_mask)).pow(2)
            losses.append((squared.mean(dim=-1, keepdim=True) * mask).sum() / mask.sum().clamp(min=1.0))
        else:
            losses.append(F.mse_loss(standardise(_masked_mean(projected, student_mask)),
                                     standardise(_masked_mean(target, teacher_mask))))
    return torch.stack(losses).mean()


def _masked_mean(states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    mask = mask.unsqueeze(-1).to(states.dtype)
    return (states * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)


def teacher_column(index: int, name: str) -> str:
    """Training-set column holding teacher ``index``'s own tokenization (``input_ids``, ``attention_mask``...)."""
    return f"teacher{index}_{name}"


class DistillationCollator:
    """Pads the student's tokens with the wrapped collator; stacks cached teacher logits; pads each online
    teacher's own tokens (when its tokenizer differs from the student's) with that teacher's tokenizer."""

    def __init__(self, collator, teacher_tokenizers: dict[int, Any] | None = None):
        self.collator = collator
        self.teacher_tokenizers = teacher_tokenizers or {}

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        if not features:
            return self.collator(features)
        first = features[0]
        extra: dict[str, Any] = {}
        taken = set()
        if TEACHER_LOGITS in first:
            extra[TEACHER_LOGITS] = torch.stack([torch.as_tensor(f[TEACHER_LOGITS], dtype=torch.float32) for f in features])
            taken.add(TEACHER_LOGITS)
        for index, tokenizer in self.teacher_tokenizers.items():
            columns = {teacher_column(index, n): n for n in tokenizer.model_input_names if teacher_column(index, n) in first}
            if not columns:
                continue
            padded = tokenizer.pad([{n: f[c] for c, n in columns.items()} for f in features], return_tensors="pt")
            extra.update({c: padded[n] for c, n in columns.items()})
            taken.update(columns)
        batch = self.collator([{k: v for k, v in f.items() if k not in taken} for f in features] if taken else features)
        batch.update(extra)
        return batch


def run_teachers(teachers: Sequence[torch.nn.Module], inputs: Sequence[dict[str, torch.Tensor]], hidden: bool = False):
    """Online teacher pass, each teacher on its own batch of inputs: ``(logits (B, K, C), [hidden_states])``, no grad."""
    logits, states = [], []
    with torch.no_grad():
        for teacher, batch in zip(teachers, inputs):
            accepted = inspect.signature(teacher.forward).parameters
            output = teacher(**{k: v for k, v in batch.items() if k in accepted}, output_hidden_states=hidden)
            logits.append(output.logits.float())
            states.append(output.hidden_states if hidden else None)
    return torch.stack(logits, dim=1), states


class DistillationTrainer(Trainer):
    """HF ``Trainer`` whose training loss is :func:`distillation_loss` (+ hidden-state MSE).

    Teacher logits come cached (a ``teacher_logits`` column) or from ``teachers`` run online; an online
    teacher listed in ``teacher_tokenizers`` reads its own tokenization of the text (``teacher{k}_*``
    columns), the others read the student's tokens. Evaluation keeps the plain cross-entropy, so
    validation loss and model selection mean the same for students and their data-only controls.
    """

    def __init__(self, *args, temperature: float, alpha: float, weights: torch.Tensor,
                 teachers: Sequence[torch.nn.Module] = (), teacher_tokenizers: dict[int, Any] | None = None,
                 hidden_weight: float = 0.0, layer_maps: Sequence[dict[int, int]] = (),
                 projections: torch.nn.ModuleList | None = None, **kwargs):
        if hidden_weight > 0:
            if not teachers or projections is None or len(layer_maps) != len(teachers):
                raise ValueError("hidden-state matching needs online teachers, one layer map and one projection each")
            # a submodule of the student, so the optimizer trains it and checkpoints keep it; dropped at save
            kwargs["model"].distill_projections = projections
        super().__init__(*args, **kwargs)
        self.temperature = temperature
        self.alpha = alpha
        self.weights = weights
        self.hidden_weight = hidden_weight
        self.layer_maps = list(layer_maps)
        self.teachers = list(teachers)
        self.teacher_tokenizers = dict(teacher_tokenizers or {})
        self.teacher_columns = {index: [teacher_column(index, n) for n in tokenizer.model_input_names]
                                for index, tokenizer in self.teacher_tokenizers.items()}
        for teacher in self.teachers:
            teacher.eval().requires_grad_(False)
            teacher.to(self.args.device)
            if self.args.bf16:
                teacher.to(torch.bfloat16)
        self.data_collator = DistillationCollator(self.data_collator, self.teacher_tokenizers)
        self.loss_is_scaled_for_ga = False  # per-batch means; the Trainer divides by accumulation steps
        self._parts: dict[str, list[float]] = {"kd_loss": [], "ce_loss": [], "hidden_loss": []}

    def _set_signature_columns_if_needed(self) -> None:
        super()._set_signature_columns_if_needed()
        for column in [TEACHER_LOGITS, *(c for columns in self.teacher_columns.values() for c in columns)]:
            if column not in self._signature_columns:
                self._signature_columns.append(column)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inputs = dict(inputs)
        labels = inputs.pop("labels")
        cached = inputs.pop(TEACHER_LOGITS, None)
        own_tokens = {index: {column.removeprefix(f"teacher{index}_"): inputs.pop(column)
                              for column in columns if column in inputs}
                      for index, columns in self.teacher_columns.items()}
        training = model.training
        hidden = training and self.hidden_weight > 0
        outputs = model(**inputs, output_hidden_states=hidden) if hidden else model(**inputs)
        if not training or (cached is None and not self.teachers):
            loss = F.cross_entropy(outputs.logits.float(), labels)
            return (loss, outputs) if return_outputs else loss
        teacher_states: list = []
        teacher_inputs = [own_tokens.get(index) or inputs for index in range(len(self.teachers))]
        if cached is None:
            cached, teacher_states = run_teachers(self.teachers, teacher_inputs, hidden)
        parts = distillation_loss(outputs.logits, cached, labels, self.temperature, self.alpha, self.weights)
        loss = parts.loss
        self._parts["kd_loss"].append(float(parts.kd.detach()))
        self._parts["ce_loss"].append(float(parts.ce.detach()))
        if hidden:
            projections = self.accelerator.unwrap_model(model).distill_projections
            matched = torch.stack([
                hidden_state_loss(outputs.hidden_states, states, layer_map, projection, inputs["attention_mask"],
                                  own_tokens[index]["attention_mask"] if own_tokens.get(index) else None)
                for index, (states, layer_map, projection)
                in enumerate(zip(teacher_states, self.layer_maps, projections))])
            hidden_loss = (matched * self.weights.to(loss.device)).sum()
            self._parts["hidden_loss"].append(float(hidden_loss.detach()))
            loss = loss + self.hidden_weight * hidden_loss
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        if "loss" in logs:  # training log: add the mean of each loss term since the last one
            for key, values in self._parts.items():
                if values:
                    logs[key] = round(sum(values) / len(values), 6)
                    values.clear()
        super().log(logs, *args, **kwargs)

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """Checkpoints keep the hidden-state projections (for resume); the final model does not."""
        model = self.accelerator.unwrap_model(self.model)
        projections = getattr(model, "distill_projections", None)
        if _internal_call or projections is None:
            return super().save_model(output_dir, _internal_call)
        del model.distill_projections
        try:
            super().save_model(output_dir, _internal_call)
        finally:
            model.distill_projections = projections


def hidden_projections(student_size: int, teacher_sizes: Sequence[int], seed: int) -> torch.nn.ModuleList:
    """One learned linear map per teacher from the student's hidden size, always (equal sizes do not make the
    two models' coordinates comparable); it starts at the identity where the sizes agree."""
    torch.manual_seed(seed)
    projections = torch.nn.ModuleList([torch.nn.Linear(student_size, size) for size in teacher_sizes])
    with torch.no_grad():
        for projection, size in zip(projections, teacher_sizes):
            if size == student_size:
                projection.weight.copy_(torch.eye(size))
                projection.bias.zero_()
    return projections


# ---------------------------------------------------------------------------------------------
# students built from a teacher's layers (DistilBERT-style initialisation)

# model_type -> config attribute holding the layer count; the layer stack is found by module identity
LAYER_COUNT_KEYS = {
    "bert": "num_hidden_layers", "roberta": "num_hidden_layers", "xlm-roberta": "num_hidden_layers",
    "camembert": "num_hidden_layers", "electra": "num_hidden_layers", "ernie": "num_hidden_layers",
    "modernbert": "num_hidden_layers", "distilbert": "n_layers", "gpt2": "n_layer",
    "llama": "num_hidden_layers", "mistral": "num_hidden_layers", "qwen2": "num_hidden_layers",
    "qwen3": "num_hidden_layers",
}
LAYER_STACK_NAMES = ("layer", "layers", "h")


def layer_count(config) -> int:
    if config.model_type not in LAYER_COUNT_KEYS:
        raise UserError(f"architecture '{config.model_type}' is not supported for from_teacher_layers "
                        f"(supported: {one_of(LAYER_COUNT_KEYS)}); give the student a 'model' instead")
    return int(getattr(config, LAYER_COUNT_KEYS[config.model_type]))


def layer_stack(model) -> tuple[str, torch.nn.ModuleList]:
    """(qualified name, ModuleList) of the model's transformer blocks."""
    count = layer_count(model.config)
    found = [(name, module) for name, module in model.named_modules()
             if isinstance(module, torch.nn.ModuleList) and name.rsplit(".", 1)[-1] in LAYER_STACK_NAMES
             and len(module) == count]
    if len(found) != 1:
        raise UserError(f"cannot find the layer stack of this {model.config.model_type} model; "
                        "give the student a 'model' instead of from_teacher_layers")
    return found[0]


def student_from_teacher_layers(teacher_dir: str | Path, layers: Sequence[int]):
    """A student made of the teacher's embeddings, ``layers`` (in that order) and head, weights copied exactly.

    Returns ``(model, tokenizer)``; the model's config says ``len(layers)`` layers, so it saves and
    reloads as an ordinary model with ``from_pretrained``.
    """
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    teacher_dir = Path(teacher_dir)
    check_layer_indices(AutoConfig.from_pretrained(str(teacher_dir)), layers)
    teacher = AutoModelForSequenceClassification.from_pretrained(str(teacher_dir), dtype=torch.float32)
    return student_from_layers(teacher, layers), AutoTokenizer.from_pretrained(str(teacher_dir))


def check_layer_indices(config, layers: Sequence[int]) -> None:
    total = layer_count(config)
    wrong = [i for i in layers if not 0 <= i < total]
    if wrong:
        raise UserError(f"from_teacher_layers {list(layers)}: the teacher has {total} layers (0-{total - 1}); "
                        f"index {', '.join(map(str, wrong))} is out of range")


def student_from_layers(teacher, layers: Sequence[int]):
    """A new model of ``teacher``'s class: its embeddings, ``layers`` (in that order) and head, weights copied exactly."""
    import copy

    from transformers import AutoModelForSequenceClassification

    config = teacher.config
    check_layer_indices(config, layers)
    prefix, _ = layer_stack(teacher)
    student_config = copy.deepcopy(config)
    setattr(student_config, LAYER_COUNT_KEYS[config.model_type], len(layers))
    if isinstance(getattr(student_config, "layer_types", None), list):
        student_config.layer_types = [config.layer_types[i] for i in layers]
    student = AutoModelForSequenceClassification.from_config(student_config)
    pattern = re.compile(rf"^{re.escape(prefix)}\.(\d+)\.(.*)$")
    source = teacher.state_dict()
    state = {}
    for key, value in source.items():
        if not pattern.match(key):
            state[key] = value.clone()
    for new_index, old_index in enumerate(layers):
        for key, value in source.items():
            match = pattern.match(key)
            if match and int(match.group(1)) == old_index:
                state[f"{prefix}.{new_index}.{match.group(2)}"] = value.clone()
    student.load_state_dict(state, strict=True)
    return student
