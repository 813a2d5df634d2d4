"""Memory-aware placement: how much GPU memory training needs, and a ZeRO stage / accumulation / GPU count that fits.

The estimate is deliberately simple and written out so anyone can redo it by hand (the numbers land in
``summary.json``). Per GPU, for Ψ parameters, N data-parallel GPUs, micro-batch b, sequence length s,
L layers of hidden size h:

* **model states** (AdamW). In bf16 mixed precision under DeepSpeed each parameter costs 2 bytes of bf16
  weights, 2 of bf16 gradients and 12 of fp32 optimizer state (master copy, momentum, variance) — 16 bytes
  (ZeRO paper, Rajbhandari et al. 2020). Plain PyTorch (HF ``Trainer``'s autocast) or fp32 keeps fp32
  weights (4), fp32 gradients (4) and the two Adam moments (8) — also 16 bytes. ZeRO divides by N:
  stage 1 the optimizer state, stage 2 also the gradients, stage 3 also the weights. Offloading the
  optimizer to CPU removes its share from the GPU.
* **activations** kept for the backward pass: ``34·s·b·h`` bytes per layer in 16-bit (Korthikanti et
  al. 2022, "Reducing Activation Recomputation"), plus ``5·a·s²·b`` for the attention scores when the
  attention is not fused; with SDPA (flash / memory-efficient kernels, the default here) the scores are
  never stored. fp32 activations (no bf16) cost twice as much.
* **overhead**: 1 GiB for the CUDA context and kernel workspaces; only 90 % of the card is planned for,
  the rest is left to allocator fragmentation.

The choice: the fewest GPUs that fit; among those, avoid ZeRO-3 (it adds 50 % communication) and gradient
accumulation (smaller micro-batches use the GPU less well), then the lowest ZeRO stage. The product of
micro-batch and accumulation always equals the configured per-device batch, so the optimisation is the
same whatever is chosen.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from rightsizer import candidates
from rightsizer.errors import UserError

GIB = 1024 ** 3
OVERHEAD_BYTES = 1 * GIB
USABLE_FRACTION = 0.9
ACTIVATION_FACTOR = 34  # bytes per (token x hidden unit x layer) in 16-bit, attention scores not stored
SCORES_FACTOR = 5  # bytes per (head x token x token x layer) when attention scores are materialised
DEFAULT_GPU_MEMORY_GB = 80.0
DEFAULT_MAX_GPUS = 8


@dataclass(frozen=True)
class ModelShape:
    """What the estimate needs to know about a model."""

    params: int
    embedding_params: int
    layers: int
    hidden: int
    heads: int

    @property
    def non_embedding_params(self) -> int:
        return self.params - self.embedding_params


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes per GPU, by kind, for one configuration."""

    weights: int
    gradients: int
    optimizer: int
    activations: int
    overhead: int

    @property
    def total(self) -> int:
        return self.weights + self.gradients + self.optimizer + self.activations + self.overhead

    def as_gb(self) -> dict[str, float]:
        parts = {k: round(v / GIB, 3) for k, v in asdict(self).items()}
        parts["total"] = round(self.total / GIB, 3)
        return parts


@dataclass(frozen=True)
class Placement:
    """The chosen layout and why it fits."""

    gpus: int  # per pod
    nodes: int
    zero_stage: int
    micro_batch: int
    accumulation: int  # extra accumulation on top of the configured one
    estimate: MemoryEstimate
    gpu_memory_gb: float
    bf16: bool
    sdpa: bool

    def summary(self) -> dict[str, Any]:
        return {
            "gpus_per_node": self.gpus, "nodes": self.nodes, "zero_stage": self.zero_stage,
            "micro_batch": self.micro_batch, "extra_accumulation": self.accumulation,
            "gpu_memory_gb": self.gpu_memory_gb, "planned_gb": round(self.gpu_memory_gb * USABLE_FRACTION, 2),
            "estimate_gb": self.estimate.as_gb(), "bf16": self.bf16, "sdpa": self.sdpa,
        }


def shape_of_model(model) -> ModelShape:
    """Read a ``ModelShape`` off an instantiated (or meta-device) transformers model."""
    import torch.nn as nn

    params = sum(p.numel() for p in model.parameters())
    embedding = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Embedding))
    config = model.config
    return ModelShape(params=params, embedding_params=embedding, layers=int(config.num_hidden_layers),
                      hidden=int(config.hidden_size), heads=int(config.num_attention_heads))


def shape_of_reference(reference: str, num_labels: int = 2) -> ModelShape:
    """The shape of a preset / local dir / hub model without loading weights (meta device)."""
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification

    from rightsizer.models import PRESETS, describe

    kind = describe(reference)
    if kind == "preset":
        preset = PRESETS[reference]
        ids = {"pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2}
        stub = type("StubTokenizer", (), ids)()
        config = preset.build_config(preset.vocab_size, stub)
    else:
        try:
            config = AutoConfig.from_pretrained(reference, trust_remote_code=False)
        except (OSError, ValueError) as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
            raise UserError(f"cannot read the size of model '{reference}' to place it ({first}); set resources.gpus "
                            "to a number instead of 'auto'") from None
    config.num_labels = num_labels
    with torch.device("meta"):
        model = AutoModelForSequenceClassification.from_config(config)
    return shape_of_model(model)


def estimate_memory(shape: ModelShape, *, micro_batch: int, seq_len: int, gpus: int = 1, zero_stage: int = 0,
                    bf16: bool = True, sdpa: bool = True, offload_optimizer: bool = False) -> MemoryEstimate:
    """Bytes per GPU to train ``shape`` (see the module docstring for each term)."""
    psi, n = shape.params, max(1, gpus)
    if bf16 and zero_stage > 0:
        weight_b, grad_b, optim_b = 2, 2, 12
    else:
        weight_b, grad_b, optim_b = 4, 4, 8
    weights = psi * weight_b / (n if zero_stage >= 3 else 1)
    gradients = psi * grad_b / (n if zero_stage >= 2 else 1)
    optimizer = 0 if offload_optimizer and zero_stage > 0 else psi * optim_b / (n if zero_stage >= 1 else 1)
    tokens = micro_batch * seq_len
    per_layer = ACTIVATION_FACTOR * tokens * shape.hidden
    if not sdpa:
        per_layer += SCORES_FACTOR * shape.heads * seq_len * tokens
    activations = shape.layers * per_layer * (1 if bf16 else 2)
    return MemoryEstimate(weights=int(weights), gradients=int(gradients), optimizer=int(optimizer),
                          activations=int(activations), overhead=OVERHEAD_BYTES)


def _divisors_descending(value: int) -> list[int]:
    return [d for d in range(value, 0, -1) if value % d == 0]


def choose_placement(shape: ModelShape, *, batch_size: int, seq_len: int, gpu_memory_gb: float,
                     gpus: int | None = None, max_gpus: int = DEFAULT_MAX_GPUS, nodes: int = 1,
                     zero_stage: int | None = None, bf16: bool = True, sdpa: bool = True,
                     offload_optimizer: bool = False) -> Placement:
    """The preferred layout that fits ``gpu_memory_gb`` per GPU (UserError when none does).

    ``gpus`` fixes the GPUs per node (else 1..``max_gpus`` are tried); ``zero_stage`` fixes the stage (a
    DeepSpeed config the user wrote); ``nodes`` multiplies the data-parallel degree.
    """
    budget = gpu_memory_gb * GIB * USABLE_FRACTION
    counts = [gpus] if gpus else list(range(1, max_gpus + 1))
    best = None
    for count in counts:
        world = count * nodes
        stages = [zero_stage] if zero_stage is not None else ([0] if world == 1 else [0, 1, 2, 3])
        for stage in stages:
            for micro in _divisors_descending(batch_size):
                estimate = estimate_memory(shape, micro_batch=micro, seq_len=seq_len, gpus=world, zero_stage=stage,
                                           bf16=bf16, sdpa=sdpa, offload_optimizer=offload_optimizer)
                if estimate.total > budget:
                    continue
                accumulation = batch_size // micro
                key = (count, stage == 3, accumulation, stage)
                if best is None or key < best[0]:
                    best = (key, Placement(gpus=count, nodes=nodes, zero_stage=stage, micro_batch=micro,
                                           accumulation=accumulation, estimate=estimate, gpu_memory_gb=gpu_memory_gb,
                                           bf16=bf16, sdpa=sdpa))
                break  # larger micro-batches for this (count, stage) did not fit; smaller ones only add accumulation
        if best is not None:
            break  # fewest GPUs first
    if best is None:
        most = counts[-1] * nodes
        floor = estimate_memory(shape, micro_batch=1, seq_len=seq_len, gpus=most,
                                zero_stage=3 if most > 1 else 0, bf16=bf16, sdpa=sdpa, offload_optimizer=offload_optimizer)
        raise UserError(
            f"the model ({shape.params / 1e6:.0f}M parameters) does not fit: even on {most} GPU(s) "
            f"{'with ZeRO-3 ' if most > 1 else ''}at micro-batch 1 it needs {floor.total / GIB:.1f} GiB per GPU, "
            f"more than {USABLE_FRACTION:.0%} of {gpu_memory_gb:g} GiB; use more or larger GPUs, a shorter "
            "data.max_length, or deepspeed offload_optimizer: cpu")
    return best[1]


def stage_models(config, stage_key: str) -> list[tuple[str, int]]:
    """(model reference, per-device batch) of everything a training stage trains; a student or adapter is
    estimated as its teacher / base model trained in full (an upper bound)."""
    if stage_key == "teachers":
        return [(c.model, config.teacher(c.member).batch_size) for c in candidates.teachers(config)]
    if stage_key == "students":
        return [(c.model, config.student(c.member).batch_size) for c in candidates.students(config)
                if c.control_of is None and c.model]
    if stage_key == "adapters":
        return [(c.model, config.adapter(c.member).batch_size) for c in candidates.adapters(config)]
    if stage_key == "slice" and config.probe is not None:
        return [(candidates.resolve_model(config, config.probe.model)[0], config.probe.batch_size)]
    return []


def planned_gpus(config, stage_key: str) -> int:
    """GPUs per pod for ``resources.<stage_key>``: the number given, or for ``gpus: auto`` the fewest that
    fit the largest model of the stage in ``gpu_memory_gb`` (default 80) — decided when the pipeline is built,
    since a pod's GPU count cannot change once it is scheduled."""
    spec = config.resources.for_stage(stage_key)
    if spec.gpus != "auto":
        return int(spec.gpus or 0)
    counts = [1]
    for reference, batch_size in stage_models(config, stage_key):
        choice = choose_placement(shape_of_reference(reference), batch_size=batch_size, seq_len=config.data.max_length,
                                  gpu_memory_gb=spec.gpu_memory_gb or DEFAULT_GPU_MEMORY_GB,
                                  max_gpus=spec.max_gpus or DEFAULT_MAX_GPUS, nodes=spec.workers or 1)
        counts.append(choice.gpus)
    return max(counts)
