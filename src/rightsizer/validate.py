"""Every check that can be made before training, made before training (``rightsizer validate``).

The config model already checks keys, ranges and names. This adds what needs a model's architecture
or the data: layer indices and slice depths against the model's depth, ``target_modules`` against the
module names of the architecture built on the meta device (no weights), references between sections
(an adapter's ``base``, ``probe.model``, a student's teacher, a quantized form's source), decoder-only
options, and the verbalizer against the data's labels. Models are read from their config only: a
preset is built from its config, a local directory's ``config.json`` is read, and a Hub id is looked
up in the local cache only, never downloaded (its structural checks wait for the run when it is not
cached). ``run`` calls :func:`validate` first; ``compile``, ``submit`` and ``schedule`` too, without the
data checks (their data is read on the cluster).
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from types import SimpleNamespace

from rightsizer.config import RunConfig
from rightsizer.errors import UserError, did_you_mean, one_of


@dataclass
class Report:
    checked: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0


def _preset_config(reference: str):
    from rightsizer.models import PRESETS

    preset = PRESETS[reference]
    ids = SimpleNamespace(pad_token_id=0, bos_token_id=1, eos_token_id=2)  # a preset's tokenizer is trained at run time
    return preset.build_config(preset.vocab_size, ids)


class Models:
    """Model configs (no weights) by reference, looked up once each."""

    def __init__(self, report: Report, here: bool = True):
        self.report = report
        self.here = here  # False: the run happens elsewhere (a cluster), where local paths may differ
        self.cache: dict[str, object] = {}

    def config(self, reference: str, what: str):
        """The model's config, or None when it is a Hub id that is not cached here (checked at run time)."""
        if reference in self.cache:
            return self.cache[reference]
        from rightsizer.models import HUB_ID, PRESETS, _source, _unknown, describe

        kind = describe(reference)
        if kind == "preset":
            config = _preset_config(reference)
        elif kind == "local":
            from pathlib import Path

            from transformers import AutoConfig

            if self.here:
                source = _source(reference, kind)  # checks the directory, config.json and weights
            elif (Path(reference).expanduser() / "config.json").exists():
                source = str(Path(reference).expanduser())  # the architecture is enough to compile
            else:
                self.report.notes.append(f"{reference}: not here; its layers and modules are checked where it runs")
                self.cache[reference] = None
                return None
            try:
                config = AutoConfig.from_pretrained(source, trust_remote_code=False)
            except (OSError, ValueError) as exc:
                raise UserError(f"{what}: cannot read the model config in '{source}': {str(exc).splitlines()[0][:200]}") from None
        else:
            if not HUB_ID.match(reference) or reference.startswith("tiny-"):
                raise _unknown(reference, "not a valid hub id")
            config = self._cached_hub_config(reference)
            if config is None:
                if "/" not in reference:
                    raise UserError(f"{what}: '{reference}' is not a preset{did_you_mean(reference, PRESETS)} "
                                    f"({one_of(PRESETS)}), not a local directory, and not a model in the local Hugging Face "
                                    "cache; a Hub id looks like org/name (e.g. google-bert/bert-base-uncased)")
                self.report.notes.append(f"{reference}: not in the local Hugging Face cache; its layers and modules "
                                         "are checked when the run downloads it")
        self.cache[reference] = config
        return config

    @staticmethod
    def _cached_hub_config(reference: str):
        from transformers import AutoConfig

        try:
            return AutoConfig.from_pretrained(reference, local_files_only=True, trust_remote_code=False)
        except (OSError, ValueError):
            return None

    def skeleton(self, reference: str, what: str, num_labels: int = 2):
        """The classifier architecture on the meta device: module names, no memory, no weights."""
        import copy

        import torch
        from transformers import AutoModelForSequenceClassification

        config = self.config(reference, what)
        if config is None:
            return None
        config = copy.deepcopy(config)
        config.num_labels = num_labels
        try:
            with torch.device("meta"):
                return AutoModelForSequenceClassification.from_config(config)
        except ValueError as exc:
            raise UserError(f"{what}: '{reference}' ({config.model_type}) has no sequence-classification "
                            f"architecture: {str(exc).splitlines()[0][:200]}") from None


def _reference(config: RunConfig, name: str) -> str:
    """A teacher name means that teacher's pretrained model; anything else is a model reference."""
    return {t.name: t.model for t in config.teachers}.get(name, name)


def _check_reference(config: RunConfig, value: str, what: str, models: Models) -> str:
    """``value`` names a teacher or is a model reference; a near-miss of a teacher name is named as such."""
    from rightsizer.models import describe

    teachers = [t.name for t in config.teachers]
    reference = _reference(config, value)
    if value not in teachers and describe(value) == "hub" and did_you_mean(value, teachers):
        raise UserError(f"{what} '{value}' names no teacher{did_you_mean(value, teachers)}; teachers: "
                        f"{one_of(teachers) or 'none'} (or give a preset, a local directory or a Hub id org/name)")
    models.config(reference, f"{what} '{value}'")
    return reference


def _layers(config_obj) -> int | None:
    for key in ("num_hidden_layers", "n_layer", "n_layers"):
        value = getattr(config_obj, key, None)
        if isinstance(value, int):
            return value
    return None


def check_students(config: RunConfig, models: Models, report: Report) -> None:
    from rightsizer.stages.distill import checked_layer_map
    from rightsizer.train.distill import layer_count

    for student in config.students:
        what = f"student '{student.name}'"
        teacher_name = student.teacher or config.teachers[0].name
        teacher_configs = {t.name: models.config(t.model, f"teacher '{t.name}'") for t in config.teachers}
        if student.from_teacher_layers is not None:
            source = teacher_configs[teacher_name]
            if source is not None:
                total = layer_count(source)
                wrong = [i for i in student.from_teacher_layers if not 0 <= i < total]
                if wrong:
                    raise UserError(f"{what}: from_teacher_layers {student.from_teacher_layers}: teacher '{teacher_name}' "
                                    f"has {total} layers (0-{total - 1}); index {', '.join(map(str, wrong))} is out of range")
            student_layers = len(student.from_teacher_layers)
        else:
            own = models.config(student.model, what)
            student_layers = _layers(own) if own is not None else None
        if student.hidden_weight > 0 and student_layers:
            for name, teacher_config in teacher_configs.items():
                teacher_layers = _layers(teacher_config) if teacher_config is not None else None
                if not teacher_layers:
                    continue
                checked_layer_map(student, student_layers, name, teacher_layers)
        report.checked.append(what)


def check_adapters(config: RunConfig, models: Models, report: Report) -> None:
    from rightsizer.adapters_registry import METHODS
    from rightsizer.models import describe
    from rightsizer.stages.adapters import peft_config_for, try_on_preset

    for adapter in config.adapters:
        what = f"adapter '{adapter.name}'"
        reference = _check_reference(config, adapter.base, f"{what}: base", models)
        skeleton = models.skeleton(reference, what)
        if skeleton is not None:
            peft_config_for(skeleton, adapter, total_steps=100)  # target_modules and the method, on the meta device
        if METHODS[adapter.method].prompt_learning and describe(reference) == "preset":
            try_on_preset(reference, adapter)  # a tiny model: the stage's padded-batch dry run costs a blink
        report.checked.append(what)


def check_probe(config: RunConfig, models: Models, report: Report) -> None:
    from rightsizer.slicing import check_depths, family_of

    probe = config.probe
    if probe is None:
        return
    reference = _check_reference(config, probe.model, "probe.model", models)
    model_config = models.config(reference, "probe.model")
    if model_config is None:
        return
    family = family_of(model_config)
    depth = _layers(model_config)
    if depth:
        if probe.layers != "all":
            check_depths(probe.layers, depth, "probe.layers")
        if probe.finetune_slices != "auto":
            check_depths(probe.finetune_slices, depth, "probe.finetune_slices")
    if probe.pooling == "cls" and family.decoder:
        raise UserError(f"probe.pooling 'cls' on {family.name} (a decoder) pools the first token, which sees no other "
                        "token; use last (or auto)")
    report.checked.append(f"probe ({depth} layers)")


def check_prompting(config: RunConfig, models: Models, report: Report) -> None:
    from rightsizer import candidates
    from rightsizer.models import describe, is_causal_lm

    for row in candidates.prompting(config):
        reference = row.model
        model_config = models.config(reference, f"evaluation.prompting ({row.name})")
        if model_config is not None and describe(reference) != "preset" and not is_causal_lm(model_config):
            raise UserError(f"prompting needs a causal LM, but '{reference}' ({model_config.model_type}) is "
                            "encoder-only; use a decoder preset or a Hub causal LM")
    if config.evaluation.prompting is not None:
        report.checked.append("prompting")


def check_quantize(config: RunConfig, report: Report) -> None:
    """The config model checks that every quantize entry's `of` names candidates that will exist; here: a
    half-precision method needs a GPU, asked for on a cluster (resources.quantize.gpus) or present here."""
    from rightsizer.quantize import check_devices

    check_devices(config, local=None)
    if config.quantize:
        report.checked.append(f"{len(config.quantize)} quantize entr{'y' if len(config.quantize) == 1 else 'ies'}")


def check_data(config: RunConfig, report: Report) -> None:
    """Read the data as the prepare stage will (built-in or local sources): columns, labels, splits."""
    from rightsizer.data import prepare_dataset

    source = config.data.source
    if source.startswith(("hf:", "s3:", "minio:")):
        report.notes.append(f"data {source}: read by the run (remote source)")
        return
    dataset, card = prepare_dataset(config.data, config.seed)
    rows = card["rows"]
    dropped = sum(card["dropped_rows"].values()) + sum((card.get("leakage") or {}).get("removed", {}).values())
    report.checked.append(f"data ({rows['train']:,}/{rows['validation']:,}/{rows['test']:,} rows, "
                          f"{card['num_labels']} labels" + (f", {dropped:,} rows dropped" if dropped else "") + ")")
    prompting = config.evaluation.prompting
    if prompting is not None:
        from rightsizer.stages.prompting import resolve_verbalizer, template_for

        resolve_verbalizer(prompting.verbalizer, card["label_names"])
        template_for(prompting, card["pair_task"])


def validate(config: RunConfig, data: bool = False, here: bool = True) -> Report:
    """Raise UserError on the first problem; return what was checked (and what could not be, offline).

    ``here``: the run happens on this machine (run, stage, validate); compile, submit and schedule pass
    False, and a local model path that is not here (a path in the image) is left to the cluster.
    """
    started = time.perf_counter()
    report = Report()
    models = Models(report, here)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # library deprecation notes are no concern of the config's author
        for teacher in config.teachers:
            model_config = models.config(teacher.model, f"teacher '{teacher.name}'")
            if model_config is not None:
                models.skeleton(teacher.model, f"teacher '{teacher.name}'")
            report.checked.append(f"teacher '{teacher.name}'")
        check_students(config, models, report)
        check_adapters(config, models, report)
        check_probe(config, models, report)
        check_prompting(config, models, report)
        check_quantize(config, report)
        if data:
            check_data(config, report)
    report.seconds = time.perf_counter() - started
    return report
