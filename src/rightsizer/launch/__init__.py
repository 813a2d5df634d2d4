"""Running a training stage on one device, N processes in a pod, or N nodes (TrainJob).

A training stage calls two functions and stays the same code at every scale:

* :func:`dispatch` first: from ``config.resources.<stage>`` it decides where the stage runs. One device:
  it returns None and the stage trains here. Several processes (``gpus > 1``, ``processes > 1`` on CPU,
  or DeepSpeed): it runs ``rightsizer stage ...`` under torchrun in this pod and returns the summary rank
  0 wrote (:mod:`rightsizer.launch.local`). Several nodes (``workers > 1``): it stages the inputs to the
  object store, runs a Kubeflow Trainer TrainJob and collects its outputs (:mod:`rightsizer.launch.trainjob`).
  Inside a launched process (``RIGHTSIZER_LAUNCHED`` is set) it always returns None, so nothing recurses.
* :func:`prepare_training` after loading the model: the DeepSpeed config, memory-aware placement
  (:mod:`rightsizer.launch.placement`) and the checks that need the hardware, as a :class:`TrainingPlan`
  whose ``summary`` goes into the stage's ``summary.json``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rightsizer import plan as plan_table
from rightsizer.errors import UserError
from rightsizer.inference import gpu_bf16
from rightsizer.outputs import local_world_size, process_rank, world_size
from rightsizer.deepspeed import check_against_training, deepspeed_config, with_zero_stage, zero_stage
from rightsizer.launch.local import LAUNCHED_ENV, LaunchError, inside_launch

__all__ = ["LAUNCHED_ENV", "LaunchError", "LaunchPlan", "TrainingPlan", "deepspeed_config", "dispatch", "plan_launch",
           "prepare_training"]


@dataclass(frozen=True)
class LaunchPlan:
    mode: str  # "in-process" | "processes" | "trainjob"
    processes: int  # per node
    nodes: int
    device: str  # "cuda" | "cpu"

    @property
    def world_size(self) -> int:
        return self.processes * self.nodes


def _cuda_devices() -> tuple[int, bool]:
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return count, bool(count and gpu_bf16())


def plan_launch(config, stage_key: str) -> LaunchPlan:
    """Where a stage with ``config.resources.<stage_key>`` runs, from this process's point of view."""
    spec = config.resources.for_stage(stage_key)
    cuda, _ = _cuda_devices()
    if inside_launch():
        world, local = world_size(), local_world_size()
        return LaunchPlan("in-process", local, max(1, world // max(1, local)), "cuda" if cuda else "cpu")
    gpus = spec.gpus
    if gpus == "auto":
        gpus = min(cuda, spec.max_gpus)
    gpus = int(gpus or 0)
    processes = spec.processes or max(1, gpus)
    workers = spec.workers or 1
    if workers > 1:  # the nodes' GPUs, not this pod's: the launcher itself has none
        from rightsizer.launch.placement import planned_gpus

        gpus = planned_gpus(config, stage_key)
        return LaunchPlan("trainjob", spec.processes or max(1, gpus), workers, "cuda" if gpus else "cpu")
    if gpus > 1 and cuda < gpus:
        raise UserError(f"resources.{stage_key}.gpus is {gpus} but this machine has {cuda} CUDA device(s); run on a "
                        "GPU node, lower gpus, or test multi-process training on CPU with gpus: 0 and processes: 2")
    device = "cuda" if gpus and cuda else "cpu"
    if processes > 1 or config.deepspeed is not None:
        return LaunchPlan("processes", processes, 1, device)
    return LaunchPlan("in-process", 1, 1, device)


def dispatch(stage: str, config, output_dir: str | Path, *, member, inputs: dict[str, Any],
             in_process_only: bool = False, seed: int | None = None) -> dict | None:
    """Run ``stage`` where its resources (``config.resources.<its key>``) say; None means "train here, in
    this process". Only stages marked ``launches`` in :data:`rightsizer.plan.STAGES` call this.

    ``member`` is the teacher/student/adapter options (with ``.name``), ``inputs`` the stage's ``--in``
    values by parameter name, ``seed`` the training run's seed (passed on as ``--seed``). ``in_process_only`` is for callers that pass Python objects (callbacks) that
    cannot cross a process boundary: then a plan that needs more processes is a programming error.
    """
    stage_key = _launching_key(stage)
    plan = plan_launch(config, stage_key)
    if plan.mode == "in-process":
        return None
    if in_process_only:
        raise ValueError(f"stage {stage}: resources ask for {plan.mode} ({plan.world_size} processes) but the call "
                         "passes in-process-only arguments")
    name = getattr(member, "name", None)
    _check_deepspeed_early(config, stage_key, member, plan)
    ordered = _ordered_inputs(stage, inputs)
    if plan.mode == "processes":
        from rightsizer.launch.local import run_processes

        return run_processes(stage, config, output_dir, ordered, name=name, processes=plan.processes,
                             device=plan.device, seed=seed)
    from rightsizer.launch.trainjob import run_trainjob

    return run_trainjob(stage, config, stage_key, output_dir, ordered, name=name, seed=seed)


def _launching_key(stage: str) -> str:
    """The resources key of ``stage``, which must be one that launches (the pipeline gives only those a
    launcher pod with ``workers > 1``)."""
    row = plan_table.stage(stage)
    if not row.launches:
        raise ValueError(f"stage {stage} is not marked launches=True in rightsizer.plan.STAGES")
    return row.resources


def _ordered_inputs(stage: str, inputs: dict[str, Any]) -> list[Path]:
    """The stage's inputs in its ``--in`` order (``rightsizer.plan.STAGES``)."""
    ordered: list[Path] = []
    for key in plan_table.stage(stage).inputs:
        value = inputs[key.lstrip("*")]
        ordered += [Path(v) for v in value] if key.startswith("*") else [Path(value)]
    return ordered


def _check_deepspeed_early(config, stage_key: str, member, plan: LaunchPlan) -> None:
    """DeepSpeed problems that need no model: not installed, or values that contradict the Trainer's."""
    resolved = deepspeed_config(config.deepspeed)
    if resolved is None:
        return
    if plan.mode == "processes":
        if not _has_deepspeed():
            raise UserError("deepspeed is configured but the deepspeed package is not installed here; use the CUDA "
                            "image or pip install 'rightsizer[deepspeed]'")
    _, bf16 = _cuda_devices()
    check_against_training(resolved, batch_size=member.batch_size, accumulation=member.gradient_accumulation_steps,
                           world_size=plan.world_size, learning_rate=member.learning_rate,
                           weight_decay=member.weight_decay,
                           bf16=None if plan.mode == "trainjob" else bf16 and plan.device == "cuda",  # nodes decide
                           where=f"{stage_key} '{getattr(member, 'name', stage_key)}'")


@dataclass
class TrainingPlan:
    """What a training process runs with: options (possibly re-batched), DeepSpeed dict, and what to report."""

    options: Any
    deepspeed: dict | None
    summary: dict[str, Any] = field(default_factory=dict)


def prepare_training(config, stage: str, options, model) -> TrainingPlan:
    """DeepSpeed config, memory-aware placement and hardware checks for the process that trains ``model``
    in ``stage`` (a launching stage of :data:`rightsizer.plan.STAGES`)."""
    import torch

    from rightsizer.launch import placement as placing
    from rightsizer.train import memory

    stage_key = _launching_key(stage)
    spec = config.resources.for_stage(stage_key)
    world, local = world_size(), local_world_size()
    nodes = max(1, world // max(1, local))
    on_gpu = torch.cuda.is_available()
    bf16 = gpu_bf16()
    resolved = deepspeed_config(config.deepspeed)
    if resolved is not None and world == 1 and not inside_launch():
        raise ValueError("DeepSpeed needs the torchrun launcher; call launch.dispatch before prepare_training")
    where = f"{stage_key} '{getattr(options, 'name', stage_key)}'"
    summary: dict[str, Any] = {"launch": {
        "mode": {"processes": "torchrun", "trainjob": "trainjob"}.get(inside_launch() or "", "in-process"),
        "world_size": world, "nodes": nodes, "device": "cuda" if on_gpu else "cpu",
        "deepspeed_zero_stage": zero_stage(resolved)}}
    placement_on = spec.placement == "auto"
    if placement_on:
        shape = memory.shape_of_model(model)
        sdpa = getattr(model.config, "_attn_implementation", None) in ("sdpa", "flash_attention_2", "flash_attention_3")
        offload = bool(((resolved or {}).get("zero_optimization") or {}).get("offload_optimizer"))
        if on_gpu:
            device_gb = torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory / memory.GIB
            chosen = placing.choose_placement(
                shape, batch_size=options.batch_size, seq_len=config.data.max_length,
                gpu_memory_gb=spec.gpu_memory_gb or round(device_gb, 2), gpus=local, nodes=nodes,
                zero_stage=zero_stage(resolved) if config.deepspeed is not None else (None if _has_deepspeed() else 0),
                bf16=bf16, sdpa=sdpa, offload_optimizer=offload)
            options = options.model_copy(update={
                "batch_size": chosen.micro_batch,
                "gradient_accumulation_steps": options.gradient_accumulation_steps * chosen.accumulation})
            if chosen.zero_stage > 0 or resolved is not None:
                resolved = with_zero_stage(resolved, chosen.zero_stage)
            summary["placement"] = {"params": shape.params, **chosen.summary()}
            summary["launch"]["deepspeed_zero_stage"] = zero_stage(resolved)
            if process_rank() == 0:
                print(f"placement: {shape.params / 1e6:.1f}M parameters need {chosen.estimate.total / memory.GIB:.1f} "
                      f"GiB per GPU ({', '.join(f'{k} {v}' for k, v in chosen.estimate.as_gb().items() if k != 'total')}"
                      f" GiB) of {chosen.gpu_memory_gb:g} GiB -> {chosen.gpus} GPU(s) x {chosen.nodes} node(s), ZeRO "
                      f"{chosen.zero_stage}, micro-batch {chosen.micro_batch} x {chosen.accumulation} accumulation",
                      flush=True)
        else:
            estimate = memory.estimate_memory(shape, micro_batch=options.batch_size, seq_len=config.data.max_length,
                                               gpus=world, bf16=False, sdpa=sdpa)
            summary["placement"] = {"params": shape.params, "device": "cpu", "estimate_gb": estimate.as_gb(),
                                    "note": "placement plans GPU memory; on CPU the estimate is reported and "
                                            "nothing is changed"}
    check_against_training(resolved, batch_size=options.batch_size, accumulation=options.gradient_accumulation_steps,
                           world_size=world, learning_rate=options.learning_rate, weight_decay=options.weight_decay,
                           bf16=bf16, where=where)
    if resolved is not None and not on_gpu:
        _cpu_deepspeed_without_compiled_ops()
    return TrainingPlan(options=options, deepspeed=resolved, summary=summary)


def _has_deepspeed() -> bool:
    """Whether DeepSpeed is installed (the CUDA image has it); without it placement stays with plain DDP."""
    import importlib.util

    return importlib.util.find_spec("deepspeed") is not None


def _cpu_deepspeed_without_compiled_ops() -> None:
    """DeepSpeed on CPU (multi-process tests): no JIT-compiled ops.

    On CPU DeepSpeed would compile its shared-memory all-reduce (minutes on a small machine, every fresh
    environment) and probe a compiler for every op. The Trainer gives DeepSpeed a plain torch AdamW and gloo
    does the communication, so none is needed; marking them unavailable keeps DeepSpeed on those paths.
    """
    import deepspeed.ops
    from deepspeed.ops.op_builder.all_ops import ALL_OPS

    deepspeed.ops.__compatible_ops__ = dict.fromkeys(ALL_OPS, False)
