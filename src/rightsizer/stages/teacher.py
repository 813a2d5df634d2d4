"""Stage: teacher training. Full fine-tune of one configured teacher (encoder or decoder).

The same function runs on one device, as every rank of a torchrun launch, or on every node of a
TrainJob: ``launch.dispatch`` decides from ``resources.teachers`` (and runs nothing twice).
"""

from __future__ import annotations

from pathlib import Path

from rightsizer import candidates
from rightsizer.config import RunConfig
from rightsizer.data import load_prepared
from rightsizer import launch
from rightsizer.models import count_parameters, load_classifier
from rightsizer.outputs import stage_output, write_json
from rightsizer.train import fine_tune, training_texts


def run(config: RunConfig, data_dir: str | Path, output_dir: str | Path, name: str | None = None,
        seed: int | None = None, **fine_tune_kwargs) -> dict:
    """``seed``: which of the teacher's seeds this run trains with (default: its first, :mod:`rightsizer.candidates`)."""
    teacher = config.teacher(name) if name else config.teachers[0]
    seed = candidates.find(config, "teacher", teacher.name).seed if seed is None else int(seed)
    launched = launch.dispatch("teacher", config, output_dir, member=teacher, inputs={"data_dir": data_dir},
                               in_process_only=bool(fine_tune_kwargs), seed=seed)
    if launched is not None:
        return launched
    dataset, card = load_prepared(data_dir)
    with stage_output(output_dir, "teacher", config, name=teacher.name) as out:
        model, tokenizer = load_classifier(teacher.model, card["label_names"], training_texts(dataset), seed)
        params, trainable = count_parameters(model)
        plan = launch.prepare_training(config, "teacher", teacher, model)
        result = fine_tune(
            model, tokenizer, dataset, plan.options, seed=seed, work_dir=out.work,
            max_length=config.data.max_length, deepspeed=plan.deepspeed, **fine_tune_kwargs,
        )
        write_json(out.work / "metrics.json", result.metrics())
        out.summary.update({
            "kind": "teacher", "model": teacher.model, "seed": seed, "params": params, "trainable_params": trainable,
            "head": getattr(model, "head_plan", None),
            **result.summary(), **plan.summary,
            "throughput": result.extra["throughput"],
        })
    return out.summary
