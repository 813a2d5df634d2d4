"""Memory-aware placement: how much GPU memory training needs, and a ZeRO stage / accumulation / GPU count that fits.

The memory estimate itself (model states, activations, overhead, each term written out) lives in
:mod:`rightsizer.train.memory`; this module decides where a stage trains from it.

The choice: the fewest GPUs that fit; among those, avoid ZeRO-3 (it adds 50 % communication) and gradient
accumulation (smaller micro-batches use the GPU less well), then the lowest ZeRO stage. The product of
micro-batch and accumulation always equals the configured per-device batch, so the optimisation is the
same whatever is chosen.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rightsizer import candidates
from rightsizer.config import PLANNING_GPU_MEMORY_GB, ResourceSpec
from rightsizer.errors import UserError
from rightsizer.train.memory import GIB, MemoryEstimate, ModelShape, estimate_memory, shape_of_reference

USABLE_FRACTION = 0.9
DEFAULT_MAX_GPUS = ResourceSpec.model_fields["max_gpus"].default


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
                                  gpu_memory_gb=spec.gpu_memory_gb or PLANNING_GPU_MEMORY_GB,
                                  max_gpus=spec.max_gpus, nodes=spec.workers)
        counts.append(choice.gpus)
    return max(counts)
