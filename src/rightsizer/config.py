"""One config model for the whole run.

A run is described by one YAML file (see ``examples/demo.yaml``). It is parsed into
:class:`RunConfig`, a pydantic model that forbids unknown keys, checks ranges and enumerations and
cross-field rules once, at load time, so a typo fails in a second instead of an hour into training.
``--set a.b=value`` overrides are applied to the raw YAML before validation and typed by the schema.
"""

from __future__ import annotations

import copy
import json
import re
import typing
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator, model_validator

from rightsizer import candidates
from rightsizer.adapters_registry import METHODS as ADAPTER_REGISTRY
from rightsizer.adapters_registry import check_fields as check_adapter_fields
from rightsizer.errors import UserError, did_you_mean, one_of
from rightsizer.quantize import METHODS as QUANTIZE_REGISTRY
from rightsizer.plan import RESOURCE_KEYS, launching_keys, resource_chain

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$"
RUN_NAME_PATTERN = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"
PATTERN_WORDS = {
    NAME_PATTERN: "up to 63 letters, digits, '.', '_' or '-', starting with a letter or digit (e.g. lora-q)",
    RUN_NAME_PATTERN: "up to 63 lowercase letters, digits or '-', starting and ending with a letter or digit "
                      "(it names the KFP pipeline; e.g. my-run-2)",
}
ADAPTER_METHODS = tuple(ADAPTER_REGISTRY)  # lora, rslora, dora, adalora, ia3, loha, lokr, oft, prefix, prompt
QUANTIZE_METHODS = tuple(QUANTIZE_REGISTRY)  # dynamic_int8, onnx_fp32, onnx_int8, static_int8, bf16, fp16
CANDIDATE_KINDS = ("teacher", "student", "adapter", "slice")  # what quantize.of may name besides a candidate or all


class Strict(BaseModel):
    """Base for every config section: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(Strict):
    source: str = Field(description="builtin:NAME | path (csv/json/jsonl/parquet, file or dir) | s3://bucket/key | hf:NAME[:CONFIG]")
    text_column: str = "text"
    text_pair_column: str | None = Field(None, description="second text column for pair tasks")
    label_column: str = "label"
    validation_size: float = Field(0.1, gt=0, lt=1, description="fraction of the whole set")
    test_size: float = Field(0.2, gt=0, lt=1, description="used only when the source has no test split")
    max_length: int = Field(128, ge=8, le=8192, description="tokens per example after truncation")
    max_train_samples: int | None = Field(None, ge=1, description="stratified subsample of train")
    max_eval_samples: int | None = Field(None, ge=1, description="stratified subsample of validation and test")
    dedupe: bool = Field(True, description="drop validation/test rows whose text (case, whitespace and punctuation "
                         "aside) is also in train; card.json counts them and every duplicate found")
    delimiter: str | None = Field(None, min_length=1, max_length=1, description="CSV delimiter (default: detected "
                                  "among , ; tab |)")
    encoding: str | None = Field(None, description="text file encoding (default: UTF-8), e.g. latin-1, cp1252")

    @field_validator("encoding")
    @classmethod
    def _encoding(cls, value: str | None) -> str | None:
        if value is not None:
            import codecs

            try:
                codecs.lookup(value)
            except LookupError:
                raise ValueError(f"unknown encoding {value!r}; e.g. utf-8, latin-1, cp1252, utf-16") from None
        return value
    unlabeled_source: str | None = Field(
        None, description="extra in-domain text (text column only; any source 'source' accepts) that the teachers "
        "label for distillation's transfer set")

    @model_validator(mode="after")
    def _sizes(self) -> "DataConfig":
        if self.validation_size + self.test_size >= 0.9:
            raise ValueError(
                f"validation_size + test_size = {self.validation_size + self.test_size:.2f} leaves almost "
                "nothing to train on; keep their sum below 0.9"
            )
        return self


class TrainingOptions(Strict):
    """Hyper-parameters shared by every stage that trains something."""

    epochs: float = Field(3.0, gt=0, description="passes over the training split")
    learning_rate: float = Field(5e-5, gt=0, lt=1)
    batch_size: int = Field(32, ge=1, le=4096)
    eval_batch_size: int = Field(128, ge=1, le=8192)
    gradient_accumulation_steps: int = Field(1, ge=1, le=1024)
    weight_decay: float = Field(0.01, ge=0, le=1)
    warmup_ratio: float = Field(0.1, ge=0, lt=1)
    max_steps: int | None = Field(None, ge=1, description="stop after this many optimizer steps (overrides epochs)")
    logging_steps: int = Field(10, ge=1)
    torch_compile: bool = Field(False, description="compile the model with torch.compile (pays off on GPUs for long runs)")


def check_seeds(value: list[int] | None) -> list[int] | None:
    """``seeds``: a non-empty list of distinct integers >= 0, or null (one run with the top-level ``seed``)."""
    if value is not None and (not value or len(set(value)) != len(value) or any(seed < 0 for seed in value)):
        raise ValueError(f"seeds must be a non-empty list of distinct integers >= 0 (e.g. [0, 1, 2]), got {value}")
    return value


class Seeded(Strict):
    """A training entry's own ``seeds`` (overriding the run's): one training run per seed, one leaderboard row."""

    seeds: list[int] | None = Field(None, description="train this candidate once per seed (its row reports the mean "
                                    "± spread; the decision uses the mean); default: the run's seeds")

    _seeds = field_validator("seeds")(classmethod(lambda cls, value: check_seeds(value)))


class TeacherConfig(TrainingOptions, Seeded):
    name: str = Field("teacher", pattern=NAME_PATTERN)
    model: str = Field("tiny-bert-4l", description="preset | local dir | hub id")


class AugmentConfig(Strict):
    """Augmented copies of the training texts for the transfer set (labelled by the teachers' soft targets)."""

    method: Literal["mlm", "swap", "none"] = Field(
        "none", description="mlm: replace ~mask_prob of the words with a masked LM's fills (augment.model, default "
        "the teacher's pretrained model; without a masked-LM head, the teacher's own word-embedding neighbours); "
        "swap: swap and drop words; none: no copies")
    copies: int = Field(0, ge=0, le=64, description="augmented copies per training text")
    mask_prob: float = Field(0.15, gt=0, lt=1, description="share of words replaced (mlm) or moved (swap)")
    model: str | None = Field(None, description="masked LM for method mlm (default: the first teacher's model)")

    @model_validator(mode="after")
    def _copies(self) -> "AugmentConfig":
        if self.method == "none" and self.copies:
            raise ValueError("augment.copies > 0 needs augment.method mlm or swap")
        if self.method != "none" and not self.copies:
            raise ValueError(f"augment.method {self.method} needs augment.copies >= 1")
        if self.model is not None and self.method != "mlm":
            raise ValueError("augment.model is only used by augment.method mlm")
        return self

    @property
    def active(self) -> bool:
        return self.method != "none"


TEMPERATURE_GRID = (1.0, 2.0, 4.0)  # temperature: auto sweeps these
ALPHA_GRID = (0.5, 0.9)             # alpha: auto sweeps these


class StudentConfig(TrainingOptions, Seeded):
    name: str = Field("student", pattern=NAME_PATTERN)
    model: str | None = Field(None, description="preset | local dir | hub id")
    from_teacher_layers: list[int] | None = Field(None, description="build the student from these teacher layers")
    teacher: str | None = Field(None, description="teacher whose layers from_teacher_layers copies (default: the first)")
    layers_from: Literal["trained", "pretrained"] = Field(
        "trained", description="from_teacher_layers copies the teacher as trained in this run (trained) or the "
        "model it starts from (pretrained, DistilBERT-style: what the student knows of the task then comes only "
        "from the labels and the teacher's targets)")
    temperature: Annotated[float, Field(gt=0, le=100)] | Literal["auto"] = Field(
        "auto", description=f"softmax temperature, or auto: the best of {list(TEMPERATURE_GRID)} on validation "
        "after short runs")
    alpha: Annotated[float, Field(ge=0, le=1)] | Literal["auto"] = Field(
        "auto", description=f"weight of the KD term vs hard-label CE, or auto: the best of {list(ALPHA_GRID)} on "
        "validation after short runs")
    sweep_epochs: float | None = Field(
        None, gt=0, description="length of each auto sweep run (default: a quarter of the schedule, at least 1 epoch)")
    hidden_weight: float = Field(0.0, ge=0, description="hidden-state loss weight (standardised states, learned projection)")
    targets: Literal["out_of_fold", "in_sample"] = Field(
        "out_of_fold", description="out_of_fold: each training row's soft target comes from a fold teacher that did "
        "not train on it (K extra teacher trainings); in_sample: the full teacher's targets on its own training rows "
        "(the default for online teachers)")
    folds: int = Field(5, ge=2, le=20, description="fold teachers per teacher for targets: out_of_fold")
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    layer_map: dict[int, int] | None = Field(None, description="student layer -> teacher layer")
    teacher_weighting: Literal["mean", "val_score"] = "mean"
    teacher_logits: Literal["auto", "cached", "online"] = Field(
        "auto", description="cached: teachers run once over train, logits reused every epoch; online: teachers run "
        "every step; auto: cached unless hidden_weight > 0 (hidden-state matching needs online)")
    control: bool = Field(True, description="also train the student on the data alone (alpha = 0)")
    learning_rate: float = Field(1e-4, gt=0, lt=1)

    @model_validator(mode="before")
    @classmethod
    def _default_targets(cls, data: Any) -> Any:
        """Online teachers read each batch as it comes, so their targets are in-sample unless asked otherwise."""
        if isinstance(data, dict) and "targets" not in data:
            online = data.get("teacher_logits") == "online" or (
                data.get("teacher_logits", "auto") == "auto" and float(data.get("hidden_weight") or 0) > 0)
            if online:
                data = {**data, "targets": "in_sample"}
        return data

    @model_validator(mode="after")
    def _one_model(self) -> "StudentConfig":
        if self.model is None and self.from_teacher_layers is None:
            raise ValueError("a student needs either 'model' or 'from_teacher_layers'")
        if self.model is not None and self.from_teacher_layers is not None:
            raise ValueError("give a student either 'model' or 'from_teacher_layers', not both")
        if self.from_teacher_layers is not None and (
            not self.from_teacher_layers or any(i < 0 for i in self.from_teacher_layers)
        ):
            raise ValueError("from_teacher_layers must be a non-empty list of layer indices >= 0")
        if self.layers_from != "trained" and self.from_teacher_layers is None:
            raise ValueError("layers_from only matters with from_teacher_layers; drop it or give from_teacher_layers")
        if self.layer_map is not None:
            if self.hidden_weight == 0:
                raise ValueError("layer_map only matters for hidden-state matching; set hidden_weight > 0 or drop it")
            if not self.layer_map or any(k < 0 or v < 0 for k, v in self.layer_map.items()):
                raise ValueError("layer_map must map student layer indices >= 0 to teacher layer indices >= 0")
        if self.hidden_weight > 0 and self.teacher_logits == "cached":
            raise ValueError("hidden_weight > 0 needs the teachers' hidden states every step; "
                             "set teacher_logits: online (or auto)")
        if self.online and (self.targets == "out_of_fold" or self.augment.active):
            raise ValueError("online teachers (hidden_weight > 0 or teacher_logits: online) see each batch as it comes: "
                             "set targets: in_sample and augment.method: none, or use cached logits")
        return self

    @property
    def sweeps(self) -> bool:
        """Whether temperature or alpha is chosen by a validation sweep."""
        return self.temperature == "auto" or self.alpha == "auto"

    @property
    def online(self) -> bool:
        """Whether the teachers run on every training step instead of from cached logits."""
        return self.teacher_logits == "online" or (self.teacher_logits == "auto" and self.hidden_weight > 0)


class AdapterConfig(TrainingOptions, Seeded):
    name: str = Field("adapter", pattern=NAME_PATTERN)
    method: Literal[ADAPTER_METHODS] = Field("lora", description=" | ".join(ADAPTER_METHODS))  # type: ignore[valid-type]
    base: str = Field("teacher", description="a teacher name (its pretrained model) or a model reference")
    target_modules: list[str] | Literal["all-linear"] | None = Field(None, description="modules to adapt")
    r: int = Field(8, ge=1, le=4096, description="rank (or number of virtual tokens for prefix/prompt)")
    alpha: float | None = Field(None, gt=0, description="scaling; default 2*r")
    dropout: float = Field(0.0, ge=0, lt=1)
    options: dict[str, Any] = Field(default_factory=dict, description="method-specific peft options")
    learning_rate: float = Field(5e-4, gt=0, lt=1)

    @field_validator("target_modules")
    @classmethod
    def _targets(cls, value: Any) -> Any:
        if isinstance(value, list) and (not value or any(not str(v).strip() for v in value)):
            raise ValueError("give module names (e.g. [query, value]), 'all-linear', or leave it out for peft's default")
        return value

    @model_validator(mode="after")
    def _method_fields(self) -> "AdapterConfig":
        # a common field "is set" when it differs from its default (so configs survive a to_json round trip)
        changed = [key for key in ("r", "alpha", "dropout", "target_modules")
                   if getattr(self, key) != type(self).model_fields[key].default]
        problem = check_adapter_fields(self.method, self.options, changed)
        if problem:
            raise ValueError(f"adapter '{self.name}': {problem}")
        return self


class ProbeConfig(TrainingOptions):
    model: str = Field("teacher", description="a teacher name (its pretrained model) or a model reference")
    layers: Literal["all"] | list[int] = "all"
    finetune_slices: Literal["auto"] | list[int] = Field(default_factory=list)
    pooling: Literal["auto", "cls", "mean", "last"] = "auto"
    max_probe_samples: int | None = Field(None, ge=10, description="subsample train for the linear probes")

    @field_validator("layers", "finetune_slices")
    @classmethod
    def _depths(cls, value: Any, info) -> Any:
        if isinstance(value, list):
            if info.field_name == "layers" and not value:
                raise ValueError("give at least one layer depth, or 'all'")
            if any(v < 1 for v in value):
                raise ValueError(f"layer depths count blocks from the embeddings: use 1..number of layers, got {value}")
            if len(set(value)) != len(value):
                raise ValueError(f"repeated layer depths in {value}")
        return value


class PromptingConfig(Strict):
    model: str | list[str] | None = Field(
        None, description="causal LM(s) to prompt (teacher name = its pretrained model, or a model reference); "
        "default: the teachers whose model is a decoder preset")
    shots: list[int] = Field(default_factory=lambda: [0], description="k for k-shot prompting; 0 = zero-shot")
    template: str = Field("{text}\nAnswer: {label}", description="placeholders {text}, {text_pair} and, last, {label}")
    verbalizer: dict[str, str] | None = Field(None, description="label -> word; default: the label names")
    separator: str = Field("\n\n", description="between k-shot examples")

    @field_validator("shots", mode="before")
    @classmethod
    def _int_to_list(cls, value: Any) -> Any:
        return [value] if isinstance(value, int) else value

    @field_validator("shots")
    @classmethod
    def _shots(cls, value: list[int]) -> list[int]:
        if not value or any(k < 0 for k in value) or len(set(value)) != len(value):
            raise ValueError(f"shots must be distinct numbers >= 0 (0 = zero-shot), got {value}")
        return value

    @field_validator("template")
    @classmethod
    def _template(cls, value: str) -> str:
        fields = re.findall(r"{([^{}]*)}", value)
        unknown = sorted(set(fields) - {"text", "text_pair", "label"})
        if unknown:
            raise ValueError(f"unknown placeholder(s) {', '.join('{' + f + '}' for f in unknown)} in the template; "
                             "use {text}, {text_pair} and {label}")
        if "text" not in fields or "label" not in fields:
            raise ValueError("the template needs {text} and {label} (the verbalizer word is scored where {label} is)")
        if fields[-1] != "label" or fields.count("label") != 1:
            raise ValueError("{label} must appear once, after the other placeholders: the label word is scored as "
                             "the continuation of the prompt")
        return value

    @field_validator("verbalizer")
    @classmethod
    def _verbalizer(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        if value is not None:
            empty = sorted(label for label, word in value.items() if not str(word).strip())
            if empty:
                raise ValueError(f"verbalizer words must not be empty (labels: {', '.join(empty)})")
        return value

    @property
    def models(self) -> list[str]:
        return [] if self.model is None else [self.model] if isinstance(self.model, str) else list(self.model)


class QuantizeConfig(Strict):
    """One cheaper serving form of one candidate, of every candidate of a kind, or of all of them."""

    name: str | None = Field(None, pattern=NAME_PATTERN, description="the candidate's name when `of` names one "
                             "candidate; with a kind or all, each source's candidate is <source>-<name>; default: "
                             "<source>-<the method's suffix>")
    of: str = Field(description="a candidate name | teacher | student | adapter | slice | all (kinds and all leave "
                    "out the -nodistill controls)")
    method: Literal[QUANTIZE_METHODS] = Field(description=" | ".join(QUANTIZE_METHODS))  # type: ignore[valid-type]
    calibration_samples: int = Field(128, ge=8, le=100_000, description="static_int8: training rows to calibrate on")


class EvaluationConfig(Strict):
    latency_batch_size: int = Field(1, ge=1, le=1024)
    latency_samples: int = Field(200, ge=4, description="timed requests for p50/p95 (p95 needs >= 200)")
    warmup_batches: int = Field(10, ge=0, description="untimed requests first")
    batch_size: int = Field(128, ge=1, description="batch size for accuracy and throughput")
    threads: int | None = Field(None, ge=1, description="CPU threads for inference and latency (default: the "
                                "evaluate task's cpu limit, resources.evaluate.cpu, at most the cores available)")
    dtype: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="precision of evaluation and prompting: auto = bf16 on a GPU that has it, else fp16 on a "
        "GPU, fp32 on the CPU (evaluation runs on CUDA whenever it is present)")
    prompting: PromptingConfig | None = None


class ReportConfig(Strict):
    metric: Literal["accuracy", "macro_f1"] = "macro_f1"
    tolerance: float = Field(0.01, ge=0, le=1, description="recommend the smallest candidate within this of the best "
                             "(on validation)")
    rule: Literal["tolerance", "not_worse"] = Field(
        "tolerance", description="tolerance: validation score within `tolerance` of the best; not_worse: not "
        "significantly worse than the best on validation at `confidence` (paired bootstrap)")
    confidence: float = Field(0.95, gt=0.5, lt=1, description="level of the paired comparisons with the best and of "
                              "the not_worse test (each score's own interval is 95 %)")
    size_by: Literal["latency", "params", "size_mb"] = "latency"
    speedup_target: float = Field(2.0, ge=1, description="the report says whether a candidate within tolerance is "
                                  "at least this many times faster than the best teacher")


class _ResourceChecks(Strict):
    """The checks a resources entry gets, whether it is resolved (:class:`ResourceSpec`) or one key of the
    ``resources`` section (:class:`ResourceOverrides`)."""

    @field_validator("tolerations", check_fields=False)
    @classmethod
    def _tolerations(cls, value: Any) -> Any:
        allowed = {"key", "operator", "value", "effect", "tolerationSeconds"}
        for toleration in value or []:
            unknown = sorted(set(toleration) - allowed)
            if unknown:
                raise ValueError(f"toleration {toleration}: unknown key(s) {', '.join(unknown)}; a toleration has "
                                 f"{', '.join(sorted(allowed))} (Kubernetes spelling)")
            seconds = toleration.get("tolerationSeconds")
            if seconds is not None and (not isinstance(seconds, int) or isinstance(seconds, bool)):
                raise ValueError(f"toleration {toleration}: tolerationSeconds must be a whole number of seconds")
        return value

    @field_validator("cpu", "memory", "disk", mode="before", check_fields=False)
    @classmethod
    def _quantity(cls, value: Any) -> Any:
        if value is None:
            return value
        text = str(value)
        if not re.fullmatch(r"\d+(\.\d+)?(m|k|M|G|T|Ki|Mi|Gi|Ti)?", text):
            raise ValueError(f"'{text}' is not a Kubernetes quantity (e.g. 2, 500m, 8Gi)")
        return text

    @field_validator("gpus", check_fields=False)
    @classmethod
    def _gpus(cls, value: Any) -> Any:
        if isinstance(value, int) and value < 0:
            raise ValueError("gpus must be >= 0 or 'auto'")
        return value


PLANNING_GPU_MEMORY_GB = 80.0  # gpus: auto, when the pipeline is compiled and no GPU can be asked


class ResourceSpec(_ResourceChecks):
    """What a stage's pods get: ``config.resources.for_stage(key)``, every field resolved, with its real default.
    Add a resources option here (the ``resources`` section's keys are made from these fields)."""

    cpu: str = Field("2", description="CPU request and limit, a Kubernetes quantity")
    memory: str = Field("8Gi", description="memory request and limit, a Kubernetes quantity")
    gpus: int | Literal["auto"] = Field(0, description="accelerators per pod; auto: the fewest that fit GPU memory")
    gpu_type: str = Field("nvidia.com/gpu", description="the accelerator's resource name")
    workers: int = Field(1, ge=1, description="nodes (multi-node TrainJob when > 1)")
    processes: int | None = Field(None, ge=1, description="training processes per pod (null: one per GPU, one on CPU)")
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[dict[str, Any]] = Field(default_factory=list)
    cache: bool | None = Field(None, description="KFP caching for the stage's tasks (null: the stage's own — off for "
                               "stages that train or launch, whose tasks have side effects, on for the rest)")
    placement: Literal["auto", "off"] = Field(
        "off", description="auto: choose the ZeRO stage and gradient accumulation (and, with gpus: auto, the GPU count) "
        "that fit GPU memory; the estimate and the choice go to summary.json (unset: auto when gpus is auto)")
    gpu_memory_gb: float | None = Field(None, gt=0, description="memory per GPU to plan for (null: what the GPU "
                                        f"reports; {PLANNING_GPU_MEMORY_GB:g} when the pipeline is compiled)")
    max_gpus: int = Field(8, ge=1, le=64, description="most GPUs per pod that gpus: auto may pick")
    timeout_s: int = Field(86_400, ge=60, description="workers > 1: how long the TrainJob may take before it is "
                           "deleted and the stage fails")
    trainjob_runtime: str = Field("rightsizer-torch-distributed", pattern=r"^[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?$",
                                  description="workers > 1: the Kubeflow Trainer runtime (k8s/cluster installs it)")
    retries: int | None = Field(None, ge=0, le=10, description="times a failed pod is retried, with backoff (null: "
                                "2 for tasks with GPUs — preemption, a lost node, a GPU fault — else 0)")
    disk: str | None = Field(None, description="scratch space per pod for caches and checkpoints, a quantity (null: "
                             "50Gi for tasks with GPUs, mounted at /scratch; on TrainJob nodes an ephemeral-storage request)")


def _overrides_of(model: type[BaseModel]) -> type[BaseModel]:
    """One key of the ``resources`` section: the fields of ``model``, each unset (null) unless given, so a key
    overlays only what it says; the description names the real default."""
    fields: dict[str, Any] = {}
    for name, info in model.model_fields.items():
        default = info.get_default(call_default_factory=True)
        described = f"{info.description or name} (default: {json.dumps(default)})"
        field = copy.copy(info)
        field.default, field.default_factory, field.description = None, None, described
        fields[name] = (info.annotation | None, field)
    return create_model("ResourceOverrides", __base__=_ResourceChecks, __doc__=(
        "One key of the ``resources`` section: only what it sets (see :class:`ResourceSpec` for the fields)."),
        **fields)


ResourceOverrides = _overrides_of(ResourceSpec)


class ResourcesConfig(Strict):
    """One key per resources key of :data:`rightsizer.plan.RESOURCE_KEYS`; a key overlays the one it falls
    back to (``teacher_logits`` -> ``teachers``, ``slice`` -> ``probe``, ``prompting`` -> ``evaluate``),
    which overlays ``default``."""

    default: ResourceOverrides = Field(default_factory=ResourceOverrides)
    prepare: ResourceOverrides = Field(default_factory=ResourceOverrides)
    teachers: ResourceOverrides = Field(default_factory=ResourceOverrides)
    teacher_logits: ResourceOverrides = Field(default_factory=ResourceOverrides, description="default: resources.teachers")
    students: ResourceOverrides = Field(default_factory=ResourceOverrides)
    adapters: ResourceOverrides = Field(default_factory=ResourceOverrides)
    probe: ResourceOverrides = Field(default_factory=ResourceOverrides)
    slice: ResourceOverrides = Field(default_factory=ResourceOverrides, description="default: resources.probe")
    evaluate: ResourceOverrides = Field(default_factory=ResourceOverrides)
    quantize: ResourceOverrides = Field(default_factory=ResourceOverrides, description="the quantize tasks and the tasks that "
                                   "evaluate their forms; default: resources.evaluate")
    prompting: ResourceOverrides = Field(default_factory=ResourceOverrides, description="default: resources.evaluate")
    report: ResourceOverrides = Field(default_factory=ResourceOverrides)

    @model_validator(mode="after")
    def _processes_match_gpus(self) -> "ResourcesConfig":
        for stage in launching_keys():
            spec = self.for_stage(stage)
            if isinstance(spec.gpus, int) and spec.gpus > 0 and spec.processes and spec.processes != spec.gpus:
                raise ValueError(f"resources.{stage}: processes ({spec.processes}) must equal gpus ({spec.gpus}) — one "
                                 "training process per GPU; set processes only with gpus: 0, to test on CPU")
        return self

    def for_stage(self, key: str) -> ResourceSpec:
        """The resolved spec of resources key ``key`` (``rightsizer.plan.Stage.resources``): the fields' defaults
        (:class:`ResourceSpec`), overlaid with ``default``, the key it falls back to, and its own keys."""
        merged: dict[str, Any] = {}
        for layer in ["default", *(reversed(resource_chain(key)) if key != "default" else [])]:
            merged.update({k: v for k, v in getattr(self, layer).model_dump().items() if v is not None})
        merged.setdefault("placement", "auto" if merged.get("gpus") == "auto" else "off")
        return ResourceSpec(**merged)


class StorageConfig(Strict):
    endpoint: str | None = Field(None, description="http://host:port (no TLS), https://host or bare host (TLS)")
    bucket: str | None = Field(None, pattern=r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$",
                               description="default: $RIGHTSIZER_S3_BUCKET (on a cluster the rightsizer-storage "
                               "ConfigMap's bucket: mlpipeline next to KFP), else 'rightsizer'")
    secure: bool | None = Field(None, description="TLS on/off; default: from the endpoint's scheme (bare host = TLS)")
    region: str | None = Field(None, description="S3 region (default: $AWS_REGION; MinIO ignores it)")
    prefix: str | None = Field(None, pattern=r"^/?[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*/?$",
                               description="key prefix for run artifacts (default: $RIGHTSIZER_S3_PREFIX, the "
                               "ConfigMap's prefix — private-artifacts/<namespace>/rightsizer on multi-user KFP — else 'runs')")
    secret_name: str = Field("mlpipeline-minio-artifact", pattern=r"^[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?$",
                             description="k8s Secret (keys accesskey/secretkey) mounted as AWS_ACCESS_KEY_ID/"
                             "AWS_SECRET_ACCESS_KEY in every task; the name only, never the values")
    retries: int = Field(4, ge=0, le=20, description="retries on connection errors and 5xx answers")
    backoff_s: float = Field(1.0, ge=0, le=60, description="first retry delay; doubles on each retry")

    @model_validator(mode="after")
    def _endpoint(self) -> "StorageConfig":
        if self.endpoint is not None:
            from rightsizer.storage import split_endpoint

            try:
                split_endpoint(self.endpoint, self.secure)
            except UserError as exc:
                raise ValueError(str(exc)) from None
        return self

    @model_validator(mode="before")
    @classmethod
    def _no_credentials(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for key in data:
                if key == "secret_name":  # the Secret's name, not a credential
                    continue
                if any(word in str(key).lower() for word in ("secret", "password", "access_key", "token", "credential")):
                    raise ValueError(
                        f"'{key}': credentials never go in the config; set AWS_ACCESS_KEY_ID and "
                        "AWS_SECRET_ACCESS_KEY in the environment (or mount the k8s Secret)"
                    )
        return data


class RunConfig(Strict):
    name: str = Field("rightsizer", pattern=RUN_NAME_PATTERN, description="lowercase, digits, '-'")
    seed: int = Field(42, ge=0)
    seeds: list[int] | None = Field(None, description="train every teacher, student and adapter once per seed (parallel "
                                    "tasks on a cluster); rows report mean ± spread, the decision uses the mean; "
                                    "null: one run with `seed` (which also splits the data, whatever seeds say)")
    image: str | None = Field(None, description="container image for every stage without GPUs (default: $RIGHTSIZER_IMAGE, "
                              "else the published CPU image)")
    image_cuda: str | None = Field(None, description="image for stages with GPUs, a build of images/Dockerfile.cuda "
                                   "(default: $RIGHTSIZER_IMAGE_CUDA, else the published CUDA image; required when "
                                   "image names your own build)")
    hf_token_secret: str | None = Field(None, pattern=r"^[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?$",
                                        description="k8s Secret whose key `token` becomes HF_TOKEN in every task and "
                                        "TrainJob node (gated models: Llama, Mistral, Gemma); the name only, never the token")
    data: DataConfig
    teachers: list[TeacherConfig] = Field(default_factory=lambda: [TeacherConfig()])
    students: list[StudentConfig] = Field(default_factory=list)
    adapters: list[AdapterConfig] = Field(default_factory=list)
    probe: ProbeConfig | None = None
    quantize: list[QuantizeConfig] = Field(default_factory=list, description="cheaper serving forms of candidates")
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    report: ReportConfig = Field(default_factory=ReportConfig)
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig)
    deepspeed: dict[str, Any] | str | None = Field(None, description="null | {zero_stage: 2, ...} | path to a DeepSpeed JSON")
    storage: StorageConfig = Field(default_factory=StorageConfig)

    @field_validator("students", "adapters", "quantize", mode="before")
    @classmethod
    def _none_is_empty(cls, value: Any) -> Any:
        return [] if value is None else value

    _seeds = field_validator("seeds")(classmethod(lambda cls, value: check_seeds(value)))

    @field_validator("deepspeed")
    @classmethod
    def _deepspeed(cls, value: Any) -> Any:
        """Check the shorthand now; a JSON path is read now, so the pipeline carries its content."""
        from rightsizer.deepspeed import deepspeed_config

        try:
            resolved = deepspeed_config(value)
        except UserError as exc:
            raise ValueError(str(exc)) from None
        return resolved if isinstance(value, str) else value

    @model_validator(mode="after")
    def _cross_checks(self) -> "RunConfig":
        names = [c.name for c in candidates.teachers(self) + candidates.students(self) + candidates.adapters(self)]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"candidate names must be unique; repeated: {', '.join(duplicates)}")
        if self.students and not self.teachers:
            raise ValueError("students are configured but there are no teachers to distil from; add a teacher")
        if not self.teachers and not self.adapters and not (self.probe and self.probe.finetune_slices):
            raise ValueError("nothing to train: configure at least one teacher, adapter or probe slice")
        teacher_names = {t.name for t in self.teachers}
        for student in self.students:
            if student.teacher is not None and student.teacher not in teacher_names:
                raise ValueError(
                    f"student '{student.name}': teacher '{student.teacher}' is not a configured teacher "
                    f"({one_of(teacher_names)})"
                )
        self._students_not_deeper_than_teachers()
        folds = sorted({s.folds for s in self.students if s.targets == "out_of_fold" and not s.online})
        if len(folds) > 1:
            raise ValueError(f"out_of_fold students ask for different numbers of folds ({folds}); one run trains one "
                             "set of fold teachers: give them the same 'folds'")
        if self.probe is not None:
            if self.probe.model == "teacher" and "teacher" not in teacher_names:
                raise ValueError(f"probe.model 'teacher' names no configured teacher ({one_of(teacher_names) or 'none'}); "
                                 "give a teacher name or a model reference")
            if isinstance(self.probe.finetune_slices, list):
                clash = sorted({c.name for c in candidates.slices(self)} & set(names))
                if clash:
                    raise ValueError(f"slice candidate names clash with other candidates: {', '.join(clash)}")
        return self

    def _students_not_deeper_than_teachers(self) -> None:
        """A student with more layers than a teacher is no right-sizing (and its layer map would point below the
        teacher's first layer); checked from the models' configs, skipped where a depth is unknown (hub ids)."""
        from rightsizer.models import model_depth

        try:
            depths = {t.name: model_depth(t.model) for t in self.teachers}
        except UserError:
            return  # an unresolvable model reference is reported where it is loaded
        for student in self.students:
            try:
                depth = len(student.from_teacher_layers) if student.from_teacher_layers else model_depth(student.model)
            except UserError:
                continue
            deeper = [(name, d) for name, d in depths.items() if depth is not None and d is not None and depth > d]
            if deeper:
                name, teacher_depth = deeper[0]
                raise ValueError(f"student '{student.name}' has {depth} layers but teacher '{name}' has {teacher_depth}; "
                                 "a student must not be deeper than its teachers (use fewer layers)")

    @model_validator(mode="after")
    def _adapters_and_prompting(self) -> "RunConfig":
        from rightsizer.models import PRESETS

        teacher_names = {t.name for t in self.teachers}
        for adapter in self.adapters:
            if adapter.base == "teacher" and "teacher" not in teacher_names:
                raise ValueError(f"adapter '{adapter.name}': base 'teacher' names no configured teacher "
                                 f"({one_of(teacher_names) or 'none'}); give a teacher name or a model reference")
        prompting = self.evaluation.prompting
        if prompting is not None:
            runs = candidates.prompting(self)
            if not runs:
                raise ValueError("evaluation.prompting needs a causal LM: no teacher is a decoder preset, so set "
                                 "evaluation.prompting.model (a teacher name or a model reference)")
            for reference in (row.model for row in runs):
                if reference in PRESETS and not PRESETS[reference].decoder:
                    decoders = [p.name for p in PRESETS.values() if p.decoder]
                    raise ValueError(f"prompting needs a causal LM, but '{reference}' is encoder-only; use a decoder "
                                     f"({one_of(decoders)} or a Hub causal LM)")
            names = [c.name for c in candidates.teachers(self) + candidates.students(self) + candidates.adapters(self)]
            clash = sorted({row.name for row in runs} & set(names))
            if clash:
                raise ValueError(f"prompting row names clash with other candidates: {', '.join(clash)}")
        return self

    @model_validator(mode="after")
    def _quantize(self) -> "RunConfig":
        """Every quantize entry names candidates that will exist, and makes names no other candidate has."""
        if not self.quantize:
            return self
        from rightsizer.adapters_registry import METHODS as ADAPTERS

        known = self.candidate_kinds()
        planned: list[str] = []
        for entry in self.quantize:
            label = f"quantize '{entry.name or entry.of}'"
            if entry.of != "all" and entry.of not in CANDIDATE_KINDS and entry.of not in known:
                raise ValueError(f"{label}: of '{entry.of}' names no candidate{did_you_mean(entry.of, known)}; give a "
                                 f"candidate ({one_of(known) or 'none configured'}), a kind "
                                 f"({', '.join(CANDIDATE_KINDS)}) or all")
            has_slices = self.probe is not None and bool(self.probe.finetune_slices)
            if entry.of == "slice" and not has_slices:
                raise ValueError(f"{label}: of 'slice' but no slices are fine-tuned; set probe.finetune_slices")
            if entry.of in CANDIDATE_KINDS and entry.of != "slice" and entry.of not in known.values():
                raise ValueError(f"{label}: of '{entry.of}' but no {entry.of} is configured")
            for source, kind in known.items():
                name = candidates.quantized_name(entry, source, kind, control=source in self.controls(), names=known)
                if name is None:
                    continue
                if kind == "adapter" and not ADAPTERS[self.adapter(source).method].mergeable:
                    raise ValueError(f"{label}: adapter '{source}' ({self.adapter(source).method}) cannot be merged "
                                     "into its base, so it has no plain model to quantize; quantize a mergeable "
                                     "adapter (lora, ia3, ...) or name the candidates to quantize")
                planned.append(name)
        clash = sorted({n for n in planned if planned.count(n) > 1 or n in known})
        if clash:
            raise ValueError(f"quantized candidate names clash with other candidates: {', '.join(clash)}; give each "
                             "quantize entry its own name")
        return self

    def controls(self) -> set[str]:
        """Names of the students' data-only controls (:func:`candidates.students`)."""
        return {c.name for c in candidates.students(self) if c.control_of is not None}

    def candidate_kinds(self) -> dict[str, str]:
        """Every trained candidate known before the run -> its kind (slices only where finetune_slices lists depths)."""
        return {c.name: c.kind for c in candidates.trained(self)}

    def quantize_plan(self, source: str, kind: str, control: bool = False) -> list[tuple[str, "QuantizeConfig"]]:
        """(candidate name, entry) for every quantized form of ``source``, in config order."""
        names = self.candidate_kinds()
        plan = [(candidates.quantized_name(entry, source, kind, control, names=names), entry)
                for entry in self.quantize]
        return [(name, entry) for name, entry in plan if name is not None]

    def quantized_kinds(self) -> set[str]:
        """The kinds of candidates some quantize entry applies to (the pipeline adds quantize tasks to their loops)."""
        known = self.candidate_kinds()
        kinds = set()
        for entry in self.quantize:
            if entry.of == "all":
                kinds |= set(known.values()) | ({"slice"} if self.probe is not None and self.probe.finetune_slices else set())
            elif entry.of in CANDIDATE_KINDS:
                kinds.add(entry.of)
            elif entry.of in known:
                kinds.add(known[entry.of])
        return kinds

    # -- helpers used by stages -------------------------------------------------------------
    def teacher(self, name: str) -> TeacherConfig:
        return _by_name(self.teachers, name, "teacher")

    def student(self, name: str) -> StudentConfig:
        return _by_name(self.students, name, "student")

    def adapter(self, name: str) -> AdapterConfig:
        return _by_name(self.adapters, name, "adapter")

    def resolved(self) -> dict[str, Any]:
        """The config as plain data with every default, each resources key resolved (``rightsizer config show``).
        Loading it gives the same run."""
        data = self.model_dump(mode="json")
        data["resources"] = {key: self.resources.for_stage(key).model_dump(mode="json") for key in RESOURCE_KEYS}
        return data

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), sort_keys=True)


def _by_name(items: list, name: str, what: str):
    for item in items:
        if item.name == name:
            return item
    raise UserError(f"no {what} named '{name}' in the config ({one_of(i.name for i in items) or 'none configured'})")


# ---------------------------------------------------------------------------------------------
# loading, overrides and error messages


def load_config(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML config, apply ``key=value`` overrides, validate. Raises UserError."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"config file '{path}' not found")
    if path.is_dir():
        raise UserError(f"config '{path}' is a directory; give a YAML file")
    try:
        text = path.read_text()
    except OSError as exc:
        raise UserError(f"cannot read config '{path}': {exc.strerror}") from None
    try:
        raw = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except DuplicateKeyError as exc:
        raise UserError(f"config '{path}': {exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "could not parse"
        raise UserError(f"config '{path}' is not valid YAML{where}: {problem}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise UserError(f"config '{path}' must be a YAML mapping of keys to values, got {type(raw).__name__}")
    return config_from_dict(raw, overrides, origin=str(path))


class DuplicateKeyError(yaml.YAMLError):
    pass


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, except that a key given twice in one mapping is an error, not "the last one wins"."""

    def construct_mapping(self, node, deep=False):
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            line = key_node.start_mark.line + 1
            if isinstance(key, typing.Hashable) and key in seen:
                raise DuplicateKeyError(f"key '{key}' appears twice in one section (lines {seen[key]} and {line}); "
                                        "keep one")
            if isinstance(key, typing.Hashable):
                seen[key] = line
        return super().construct_mapping(node, deep=deep)


def config_from_dict(raw: dict, overrides: list[str] | None = None, origin: str = "config") -> RunConfig:
    raw = json.loads(json.dumps(raw, default=str))  # deep copy, plain types only
    for override in overrides or []:
        apply_override(raw, override)
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as exc:
        raise UserError(f"{origin}: {format_validation_error(exc)}") from None


def config_from_json(text: str) -> RunConfig:
    """Inverse of :meth:`RunConfig.to_json` (used by components and pods)."""
    return config_from_dict(json.loads(text), origin="config")


def apply_override(raw: dict, override: str) -> None:
    """Apply one ``a.b.0.c=value`` override to a raw config dict, checking the path against the schema."""
    if "=" not in override:
        raise UserError(f"--set '{override}' must look like key.path=value (e.g. teachers.0.epochs=1)")
    dotted, _, value_text = override.partition("=")
    parts = [p for p in dotted.strip().split(".")]
    if not dotted.strip() or any(not p for p in parts):
        raise UserError(f"--set '{override}': empty key path")
    try:
        value = yaml.safe_load(value_text) if value_text.strip() else ""
    except yaml.YAMLError:
        value = value_text
    node: Any = raw
    schema: Any = RunConfig
    walked: list[str] = []
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        here = ".".join(walked) or "the top level"
        model = _model_class(schema)
        if isinstance(node, list) or _is_list(schema):
            if not isinstance(node, list):
                raise UserError(f"--set {dotted}: '{here}' is not a list in this config")
            if not part.isdigit():
                raise UserError(f"--set {dotted}: '{here}' is a list; use an index like {here}.0")
            index = int(part)
            if index >= len(node):
                raise UserError(f"--set {dotted}: '{here}' has {len(node)} item(s); index {index} does not exist")
            if last:
                node[index] = value
                return
            schema = _list_item(schema)
            if node[index] is None or not isinstance(node[index], (dict, list)):
                node[index] = {}
            node = node[index]
        elif model is not None:
            fields = model.model_fields
            if part not in fields:
                raise UserError(
                    f"--set {dotted}: '{part}' is not a key of {here}{did_you_mean(part, fields)}; "
                    f"valid keys: {one_of(fields)}"
                )
            if last:
                node[part] = value
                return
            if node.get(part) is None:
                node[part] = _default_of(fields[part])
            node = node[part]
            schema = fields[part].annotation
        elif isinstance(node, dict) or _is_dict(schema):
            if last:
                node[part] = value
                return
            node = node.setdefault(part, {})
            schema = Any
        else:
            raise UserError(f"--set {dotted}: '{here}' is a single value and has no key '{part}'")
        walked.append(part)


def _unwrap(annotation: Any) -> list[Any]:
    origin = typing.get_origin(annotation)
    if origin is Union or str(origin) == "types.UnionType":
        return [a for a in typing.get_args(annotation) if a is not type(None)]
    return [annotation]


def _model_class(annotation: Any) -> type[BaseModel] | None:
    for option in _unwrap(annotation):
        if isinstance(option, type) and issubclass(option, BaseModel):
            return option
    return None


def _is_list(annotation: Any) -> bool:
    return any(typing.get_origin(o) is list for o in _unwrap(annotation))


def _is_dict(annotation: Any) -> bool:
    return any(typing.get_origin(o) is dict for o in _unwrap(annotation))


def _list_item(annotation: Any) -> Any:
    for option in _unwrap(annotation):
        if typing.get_origin(option) is list:
            return typing.get_args(option)[0]
    return Any


def _default_of(field) -> Any:
    if field.is_required():
        return {}
    default = field.get_default(call_default_factory=True)
    if isinstance(default, BaseModel):
        return default.model_dump(mode="json")
    if default is None:
        return {}
    return json.loads(json.dumps(default, default=str))


def format_validation_error(exc: ValidationError, limit: int = 3) -> str:
    """Turn pydantic's multi-line report into one line naming keys and allowed values."""
    messages = []
    for error in exc.errors()[:limit]:
        loc = [str(p) for p in error["loc"] if not str(p).startswith(("function-", "literal[", "int", "list[", "dict["))]
        key = ".".join(loc) or "config"
        kind = error["type"]
        if kind == "extra_forbidden":
            parent = _model_at(loc[:-1])
            valid = list(parent.model_fields) if parent else []
            messages.append(f"unknown key '{key}'{did_you_mean(loc[-1], valid)}" + (f"; valid keys: {one_of(valid)}" if valid else ""))
        elif kind == "missing":
            messages.append(f"'{key}' is required")
        elif kind == "literal_error":
            expected = error.get("ctx", {}).get("expected", "")
            got = error.get("input")
            hint = did_you_mean(got, re.findall(r"'([^']+)'", expected)) if isinstance(got, str) else ""
            messages.append(f"'{key}' must be one of {expected}, got {got!r}{hint}")
        elif kind == "string_pattern_mismatch":
            rule = PATTERN_WORDS.get(error.get("ctx", {}).get("pattern"), "use letters, digits, '.', '_' and '-'")
            messages.append(f"'{key}' {error.get('input')!r} is not a valid name: {rule}")
        else:
            msg = error["msg"].removeprefix("Value error, ")
            got = error.get("input")
            shown = "" if isinstance(got, (dict, list)) or kind.startswith("value_error") else f" (got {got!r})"
            messages.append(f"'{key}': {msg}{shown}" if loc else f"{msg}")
    more = len(exc.errors()) - limit
    return "; ".join(messages) + (f"; and {more} more" if more > 0 else "")


def _model_at(loc: list[str]) -> type[BaseModel] | None:
    schema: Any = RunConfig
    for part in loc:
        model = _model_class(schema)
        if part.isdigit() and _is_list(schema):
            schema = _list_item(schema)
            continue
        if model is None or part not in model.model_fields:
            return None
        schema = model.model_fields[part].annotation
    return _model_class(schema)
