"""Every candidate of a run, said once: its name, kind, the stage that makes it, the config member it
comes from and the model it starts from.

This is the only place that makes candidate names — ``<student>-nodistill`` (a student's data-only
control), ``<model>-L<k>`` (the probed model cut after k layers), ``prompt-<model>-<k>shot`` (a
prompting baseline row) — and the only place that resolves "a teacher name or a model reference"
(:func:`resolve_model`). Nothing parses a name back: a stage that is given a name looks its
:class:`Candidate` up here (:func:`find`) and reads the structured fields.

Functions take the run's config (:class:`rightsizer.config.RunConfig`) but this module does not import
it, so the config's own validators may use it.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict

from rightsizer.errors import UserError, did_you_mean, one_of

if TYPE_CHECKING:
    from rightsizer.config import RunConfig

KINDS = ("teacher", "student", "adapter", "slice", "quantized", "prompting", "baseline")
CONTROL_SUFFIX = "-nodistill"
SEEDED_STAGES = ("teacher", "distill", "adapters")  # the stages whose candidates may train with several seeds
MAX_SLICE_DEPTH = 512  # slice names are looked up among depths 1..this (deeper models do not exist today)


class Candidate(BaseModel):
    """One leaderboard row-to-be, before it is trained or measured."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    kind: Literal[KINDS]  # type: ignore[valid-type]
    stage: str  # the rightsizer.plan stage that makes it
    member: str | None = None  # the config entry it comes from: a teacher/student/adapter name, the probed model
    model: str | None = None  # the model reference it starts from (a teacher name resolved to its model)
    teacher: str | None = None  # the teacher whose pretrained model `model` is, when it was named by a teacher
    control_of: str | None = None  # a -nodistill control: the student it is the control of
    layers: int | None = None  # a slice: layers kept
    shots: int | None = None  # a prompting row: k
    seeds: tuple[int, ...] = ()  # one training run per seed (the first is the run the later stages build on)

    @property
    def seed(self) -> int:
        """The seed of its first run: the model that teacher logits, adapters' bases and quantized forms use."""
        return self.seeds[0]


def resolve_model(config: "RunConfig", name_or_reference: str) -> tuple[str, str | None]:
    """(model reference, teacher name or None): a teacher's name means that teacher's pretrained model;
    anything else is a model reference (preset, local directory, Hub id)."""
    for teacher in config.teachers:
        if teacher.name == name_or_reference:
            return teacher.model, teacher.name
    return name_or_reference, None


def seeds_of(config: "RunConfig", member=None) -> tuple[int, ...]:
    """The seeds a training entry runs with: its own ``seeds``, else the run's ``seeds``, else the run's ``seed``;
    ``member`` None (slices, which like the probe they come from run once, and prompting rows): the run's ``seed``."""
    if member is None:
        return (config.seed,)
    return tuple(member.seeds or config.seeds or [config.seed])


def seed_runs(made: list[Candidate]) -> list[dict]:
    """One ``{"candidate": name, "seed": seed}`` per training run of ``made`` (a pipeline loop's items; not "name":
    KFP's loop variable has an attribute of that name)."""
    return [{"candidate": candidate.name, "seed": seed} for candidate in made for seed in candidate.seeds]


def several_seeds(made: list[Candidate]) -> bool:
    """Whether any of ``made`` trains more than once (its stage then loops over :func:`seed_runs`)."""
    return any(len(candidate.seeds) > 1 for candidate in made)


def teachers(config: "RunConfig") -> list[Candidate]:
    return [Candidate(name=t.name, kind="teacher", stage="teacher", member=t.name, model=t.model,
                      seeds=seeds_of(config, t)) for t in config.teachers]


def control_name(student: str) -> str:
    return student + CONTROL_SUFFIX


def students(config: "RunConfig") -> list[Candidate]:
    """Each student, then the data-only controls (same model, alpha 0) of those that have one."""
    first = config.teachers[0].name if config.teachers else None
    rows = []
    for control in (False, True):
        for student in config.students:
            if control and not student.control:
                continue
            teacher = (student.teacher or first) if student.from_teacher_layers is not None else None
            model = student.model if student.model is not None else resolve_model(config, teacher)[0] if teacher else None
            rows.append(Candidate(name=control_name(student.name) if control else student.name, kind="student",
                                  stage="distill", member=student.name, model=model, teacher=teacher,
                                  control_of=student.name if control else None, seeds=seeds_of(config, student)))
    return rows


def adapters(config: "RunConfig") -> list[Candidate]:
    rows = []
    for adapter in config.adapters:
        model, teacher = resolve_model(config, adapter.base)
        rows.append(Candidate(name=adapter.name, kind="adapter", stage="adapters", member=adapter.name, model=model,
                              teacher=teacher, seeds=seeds_of(config, adapter)))
    return rows


def _short(reference: str) -> str:
    """The last path segment of a model reference (``org/model`` -> ``model``)."""
    return reference.rstrip("/").rsplit("/", 1)[-1]


def slice_candidate(config: "RunConfig", layers: int) -> Candidate:
    """The probed model (``probe.model``) cut after ``layers`` layers, fine-tuned: ``<model>-L<k>``."""
    if config.probe is None:
        raise UserError("the config has no 'probe' section; add one (e.g. probe: {model: teacher})")
    model, teacher = resolve_model(config, config.probe.model)
    return Candidate(name=f"{_short(config.probe.model)}-L{layers}", kind="slice", stage="slice",
                     member=config.probe.model, model=model, teacher=teacher, layers=int(layers),
                     seeds=seeds_of(config))


def slices(config: "RunConfig") -> list[Candidate]:
    """The slices the config names (none when ``finetune_slices`` is ``auto``: the probe picks them at run time)."""
    if config.probe is None or not isinstance(config.probe.finetune_slices, list):
        return []
    return [slice_candidate(config, k) for k in config.probe.finetune_slices]


def slice_placeholder(config: "RunConfig") -> str:
    """How an auto slice will be named, for listings made before the probe has run: ``<model>-L<k>``."""
    return f"{_short(config.probe.model)}-L<k>" if config.probe is not None else "<model>-L<k>"


def prompting(config: "RunConfig") -> list[Candidate]:
    """One row per (causal LM, k) of ``evaluation.prompting``: ``prompt-<model>-<k>shot``."""
    from rightsizer.models import PRESETS

    settings = config.evaluation.prompting
    if settings is None:
        return []
    if settings.models:
        chosen = list(settings.models)
    else:  # the teachers whose model is a decoder preset
        chosen = [t.name for t in config.teachers if t.model in PRESETS and PRESETS[t.model].decoder]
    rows = []
    for named in chosen:
        model, teacher = resolve_model(config, named)
        label = re.sub(r"[^A-Za-z0-9._-]+", "-", _short(named)).strip("-.") or "model"
        for k in settings.shots:
            rows.append(Candidate(name=f"prompt-{label}-{k}shot"[:63], kind="prompting", stage="prompting",
                                  member=named, model=model, teacher=teacher, shots=k, seeds=seeds_of(config)))
    return rows


def quantized_name(entry, source: str, kind: str, control: bool = False, names=()) -> str | None:
    """The candidate quantize ``entry`` makes of candidate ``source`` (of kind ``kind``), or None when it does not
    apply: ``of: <candidate>`` -> ``name`` or ``<source>-<suffix>``; ``of: <kind> | all`` -> ``<source>-<name or
    suffix>`` for every candidate of that kind but the -nodistill controls. ``names``: the run's candidates; one
    called like a kind (a teacher called ``teacher``) is meant by that name, not the kind."""
    from rightsizer.quantize import METHODS

    suffix = entry.name or METHODS[entry.method].suffix
    if entry.of == source:
        return entry.name or f"{source}-{suffix}"
    if not control and (entry.of == "all" or (entry.of == kind and entry.of not in names)):
        return f"{source}-{suffix}"
    return None


def trained(config: "RunConfig") -> list[Candidate]:
    """Every candidate a training stage makes, as far as the config says (auto slices come at run time)."""
    return teachers(config) + students(config) + adapters(config) + slices(config)


def every(config: "RunConfig") -> list[Candidate]:
    """Every candidate the config names (auto slices come at run time), in pipeline order."""
    return trained(config) + prompting(config)


def of_stage(config: "RunConfig", stage: str) -> list[Candidate]:
    """The candidates ``stage`` (a :data:`rightsizer.plan.STAGES` name) makes, as far as the config says."""
    makers = {"teacher": teachers, "distill": students, "adapters": adapters, "slice": slices, "prompting": prompting}
    return makers[stage](config) if stage in makers else []


def find(config: "RunConfig", stage: str, name: str | None) -> Candidate:
    """The candidate of ``stage`` called ``name`` (default: the stage's first); a UserError listing them otherwise.

    Slices are found by name for any depth, or by the depth itself (``--name 2``).
    """
    if stage == "slice":
        return _find_slice(config, name)
    made = of_stage(config, stage)
    what = {"teacher": "teacher", "distill": "student", "adapters": "adapter", "prompting": "prompting row"}[stage]
    if not made:
        section = {"teacher": "teachers", "distill": "students", "adapters": "adapters",
                   "prompting": "evaluation.prompting"}[stage]
        raise UserError(f"no {what} is configured; add a '{section}' section to the config")
    if name is None:
        return made[0]
    for candidate in made:
        if candidate.name == name:
            return candidate
    names = [c.name for c in made]
    raise UserError(f"no {what} named '{name}' in the config{did_you_mean(name, names)} ({one_of(names)})")


def _find_slice(config: "RunConfig", name: str | int | None) -> Candidate:
    configured = slices(config)
    if name is None or not str(name).strip():
        if not configured:
            raise UserError("which slice? probe.finetune_slices is 'auto' or empty: run the probe stage first, or give "
                            f"the slice by name (--name {slice_candidate(config, 2).name})")
        return configured[0]
    text = str(name).strip()
    if text.isdigit() and int(text) >= 1:
        return slice_candidate(config, int(text))
    for depth in range(1, MAX_SLICE_DEPTH + 1):
        candidate = slice_candidate(config, depth)
        if candidate.name == text:
            return candidate
    raise UserError(f"no slice named '{text}': slices of probe.model are named like {slice_candidate(config, 2).name} "
                    "(or give the layer count)")
