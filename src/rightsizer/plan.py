"""The stages of a run, each said once: the one table the pipeline, the CLI, the config and the launcher read.

A :class:`Stage` names its CLI name (``rightsizer stage NAME``), the module whose ``run`` it is, its
``resources`` key (``config.resources.<key>``, and the key that key falls back to), its ``--in``
inputs, and whether it *launches* — calls :func:`rightsizer.launch.dispatch`, so that with
``workers > 1`` its pipeline task is only a launcher pod and the work runs in a TrainJob. A stage
that does not launch always runs in its own pod with the resources it asks for.

Where things live (the package in one paragraph): ``config.py`` is the run's schema; ``plan.py``
(here) the stages; ``candidates.py`` every candidate's name, kind and model; ``records.py`` the
typed stage summary and leaderboard row; ``stages/<stage>.py`` one plain ``run`` function per stage
(``stages/report/`` split into decision, figures, render, files); ``components/<stage>.py`` the KFP
wrapper of each; ``train/`` the training loop pieces; ``launch/`` running a stage on several
processes or nodes; ``pipeline.py`` the KFP graph; ``cli.py`` the command line.

This module imports nothing from the package but :mod:`rightsizer.errors`: every layer may read it.
"""

from __future__ import annotations

from dataclasses import dataclass

from rightsizer.errors import UserError, did_you_mean, one_of


@dataclass(frozen=True)
class Stage:
    name: str  # `rightsizer stage NAME`
    module: str  # rightsizer.stages.<module> holds its run()
    resources: str  # key under config.resources
    inputs: tuple[str, ...] = ()  # run()'s --in parameters in order; a leading * takes all remaining, as a list
    launches: bool = False  # calls launch.dispatch (several processes or a TrainJob, as its resources say)
    cache: bool = True  # KFP caching by default (off for stages that train or hand work to a TrainJob)
    shm: bool = False  # mounts an in-memory /dev/shm (DataLoader workers, NCCL)
    help: str = ""

    @property
    def run_module(self) -> str:
        return f"rightsizer.stages.{self.module}"

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(key.lstrip("*") for key in self.inputs)


# Resource keys in config order, each with the key it falls back to (besides `default`): a stage that once
# borrowed another stage's resources keeps getting them unless its own key says otherwise.
RESOURCE_KEYS: dict[str, str | None] = {
    "default": None,
    "prepare": None,
    "teachers": None,
    "teacher_logits": "teachers",
    "students": None,
    "adapters": None,
    "probe": None,
    "slice": "probe",
    "evaluate": None,
    "quantize": "evaluate",  # the quantize task and the task that evaluates its forms
    "prompting": "evaluate",
    "report": None,
}

STAGES: dict[str, Stage] = {stage.name: stage for stage in (
    Stage("prepare", "prepare", "prepare", help="load, validate and split the data"),
    Stage("teacher", "teacher", "teachers", ("data_dir",), launches=True, cache=False, shm=True,
          help="fine-tune one teacher in full (--name picks it)"),
    Stage("fold-teacher", "fold_teacher", "teachers", ("data_dir",), cache=False, shm=True,
          help="one fold teacher for out-of-fold distillation targets (--name teacher --fold K)"),
    Stage("teacher-logits", "teacher_logits", "teacher_logits", ("data_dir", "*teacher_dirs"), cache=False, shm=True,
          help="gather the teachers for the students, caching their logits"),
    Stage("distill", "distill", "students", ("data_dir", "teachers_dir"), launches=True, cache=False, shm=True,
          help="distil one student, or its -nodistill control (--name)"),
    Stage("probe", "probe", "probe", ("data_dir",), cache=False, shm=True,
          help="linear probe on every layer of a pretrained model"),
    Stage("slice", "slice", "slice", ("data_dir",), launches=True, cache=False, shm=True,
          help="fine-tune the probed model cut after k layers (--name <model>-L<k>)"),
    Stage("adapters", "adapters", "adapters", ("data_dir",), launches=True, cache=False, shm=True,
          help="one PEFT adapter on its pretrained base (--name picks it)"),
    Stage("prompting", "prompting", "prompting", ("data_dir",), shm=True,
          help="zero-/k-shot prompting baseline row (--name prompt-<model>-<k>shot)"),
    Stage("quantize", "quantize", "quantize", ("data_dir", "source_dir"), shm=True,
          help="a trained candidate's quantized forms, one per quantize entry that applies (--name picks one)"),
    Stage("evaluate", "evaluate", "evaluate", ("data_dir", "candidate_dir"), shm=True,
          help="one candidate on the test split: quality, latency, size"),
    Stage("report", "report", "report", ("data_dir", "*metrics_dirs"),
          help="leaderboard, figures and the recommendation"),
)}


def stage(name: str) -> Stage:
    """The stage called ``name``; a UserError naming the stages otherwise."""
    if name not in STAGES:
        raise UserError(f"unknown stage '{name}'{did_you_mean(name, STAGES)}; stages: {one_of(STAGES)}")
    return STAGES[name]


def of_module(module: str) -> Stage | None:
    """The stage whose ``run()`` lives in ``rightsizer.stages.<module>`` (how a running component knows its stage)."""
    return next((s for s in STAGES.values() if s.module == module), None)


def resource_chain(key: str) -> list[str]:
    """``key`` and the keys it falls back to, most specific first (``default`` not included)."""
    if key not in RESOURCE_KEYS or key == "default":
        raise KeyError(f"unknown resources key {key!r}")
    chain = []
    while key is not None:
        chain.append(key)
        key = RESOURCE_KEYS[key]
    return chain


def launching_keys() -> list[str]:
    """Resource keys whose stage launches (and so may ask for several processes or nodes)."""
    return [key for key in RESOURCE_KEYS if any(s.launches and s.resources == key for s in STAGES.values())]


def cli_help() -> str:
    """One line per stage, for ``rightsizer stage --help``."""
    return "; ".join(f"{s.name}: {s.help}" for s in STAGES.values())
