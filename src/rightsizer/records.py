"""Typed records of what stages write: a stage's ``summary.json``, a candidate's ``metrics.json`` row and
``leaderboard.json``.

Each record names the fields every reader may rely on; extra fields are allowed, so a stage can say
more and a new field is one line here. ``leaderboard.json`` is a contract (ARCHITECTURE.md): its rows
hold exactly the fields of :class:`LeaderboardRow` (fields may be added there, none removed or
renamed). The evaluate stage writes :class:`CandidateRow`s, carrying over what the training stage's
summary says about the candidate (:class:`TrainingFacts`); the report reads them back and writes the
:class:`Leaderboard`; the CLI prints it.

This module imports nothing from the package: every layer may use it.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict


class Record(BaseModel):
    """A JSON record: named fields typed, anything else kept as it is."""

    model_config = ConfigDict(extra="allow")

    def to_json_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


class StageSummary(Record):
    """``summary.json``: what a stage did (written by :func:`rightsizer.outputs.stage_output`)."""

    stage: str
    name: str | None = None
    kind: str | None = None
    duration_s: float | None = None
    finished_at: str | None = None
    rightsizer_version: str | None = None
    git_commit: str | None = None


class TrainingFacts(Record):
    """What a training stage's summary says about the candidate it made; its evaluation carries these
    onto the candidate's row (anything else in the summary stays there)."""

    train_time_s: float | None = None
    samples_per_s: float | None = None
    trainable_params: int | None = None
    trainable_share: float | None = None
    peak_memory_mb: float | None = None
    teachers: list[str] | None = None  # a student: the teachers it was distilled from (empty for a control)
    control_of: str | None = None  # a -nodistill control: its student
    layers: int | None = None  # a slice: layers kept
    method: str | None = None  # an adapter: its PEFT method
    base: str | None = None  # an adapter: the base as configured (a teacher name or a model reference)
    base_model: str | None = None  # an adapter: the base's model reference
    base_teacher: str | None = None  # an adapter: the teacher whose pretrained model the base is, if any
    merged: bool | None = None  # an adapter: folded into the base weights for serving
    source: str | None = None  # a quantized form: the candidate it was made from
    device: str | None = None  # a quantized form runs where it was made (cpu | cuda)
    dtype: str | None = None  # ... and as it was made (fp32, int8, bf16, fp16)
    seed: int | None = None  # the training run's seed (a quantized form: its source's)

    @classmethod
    def from_summary(cls, summary: dict) -> dict[str, Any]:
        """The facts present in a training stage's ``summary.json`` (absent ones stay absent)."""
        return {key: summary[key] for key in cls.model_fields if key in summary}


class LeaderboardRow(Record):
    """One candidate in ``leaderboard.json`` (the contract's fields; add new ones here)."""

    name: str
    kind: str
    accuracy: float | None = None
    macro_f1: float | None = None
    params: int | None = None
    trainable_params: int | None = None
    size_mb: float | None = None
    latency_ms: float | None = None
    latency_p95_ms: float | None = None
    throughput_per_s: float | None = None
    device: str | None = None  # where it was measured: cpu | cuda
    dtype: str | None = None  # the weights' dtype when measured
    source: str | None = None  # a quantized form: the candidate it was made from
    val_accuracy: float | None = None  # on the validation split, which the recommendation is chosen on
    val_macro_f1: float | None = None
    accuracy_ci: list[float] | None = None  # [lo, hi]: 95 % bootstrap interval over the test examples
    macro_f1_ci: list[float] | None = None
    latency_threads: int | None = None  # CPU threads the latency was measured with
    latency_batch_size: int | None = None  # examples per timed request
    path: str | None = None  # its model: within the run directory after a local run, else where it was evaluated
    # trained with several seeds (config `seeds`): the scores above are the mean over the seeds, `path` is the seed
    # with the best validation score (the one shipped), the intervals are over test examples for that mean
    seed: int | None = None  # the seed of the model at `path` (several seeds: the best on validation)
    seeds: list[int] | None = None  # the seeds it was trained with (one for a single run)
    accuracy_std: float | None = None  # sample standard deviation over the seeds (two or more)
    macro_f1_std: float | None = None
    val_accuracy_std: float | None = None
    val_macro_f1_std: float | None = None
    per_seed: list[dict[str, Any]] | None = None  # {seed, val_accuracy, val_macro_f1, accuracy, macro_f1, path} each

    @classmethod
    def contract(cls, row: dict) -> dict[str, Any]:
        """``row`` reduced to the leaderboard's fields, in their order (missing ones are null)."""
        return {key: row.get(key) for key in cls.model_fields}


class CandidateRow(LeaderboardRow, TrainingFacts):
    """A candidate's ``metrics.json``: the leaderboard fields, the training facts and the details the
    report draws (per-class scores, confusion matrix, latency settings)."""

    labels: list[str] | None = None
    confusion_matrix: list[list[int]] | None = None
    per_class: dict[str, dict[str, float | int]] | None = None
    val_accuracy_ci: list[float] | None = None
    val_macro_f1_ci: list[float] | None = None
    model_uri: str | None = None  # where the evaluated model lives (an object-store URI on a cluster)


class Leaderboard(Record):
    """``leaderboard.json``."""

    metric: str
    tolerance: float
    recommended: str | None  # null when no candidate beats chance ("no usable model")
    reason: str = ""
    selected_on: str = "validation"  # the split the recommendation was chosen on
    rule: str = "tolerance"  # tolerance | not_worse
    confidence: float = 0.95  # level of the paired comparisons (and of the not_worse test)
    chance: float | None = None  # what guessing scores on that split (better of majority and stratified)
    confirmed_on_test: bool | None = None  # the paired test interval against the best reaches the band
    recommended_uri: str | None = None  # where the recommended model lives (object store on a cluster)
    recommended_path: str | None = None  # a local run: its copy within the run directory ("recommended")
    candidates: list[LeaderboardRow]
