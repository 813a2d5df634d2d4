"""Candidates (rightsizer.candidates): every name made in one place, found again by lookup, never parsed."""

from __future__ import annotations

import pytest

from rightsizer import candidates
from rightsizer.errors import UserError


def test_every_candidate_of_a_config_with_its_kind_stage_and_model(tiny_config):
    config = tiny_config(
        teachers=[{"name": "teacher", "model": "tiny-bert-4l"}, {"name": "gpt", "model": "tiny-gpt2-2l"}],
        students=[{"name": "s", "model": "tiny-bert-2l"}, {"name": "cut", "from_teacher_layers": [0, 2], "control": False}],
        adapters=[{"name": "lora", "base": "teacher"}, {"name": "ref", "base": "tiny-bert-2l"}],
        probe={"model": "teacher", "finetune_slices": [1, 3]},
        evaluation={"prompting": {"shots": [0, 2]}})
    rows = {c.name: c for c in candidates.every(config)}
    assert list(rows) == ["teacher", "gpt", "s", "cut", "s-nodistill", "lora", "ref", "teacher-L1", "teacher-L3",
                          "prompt-gpt-0shot", "prompt-gpt-2shot"]
    assert rows["s-nodistill"].control_of == "s" and rows["s-nodistill"].member == "s"
    assert rows["cut"].model == "tiny-bert-4l" and rows["cut"].teacher == "teacher"  # from the first teacher's layers
    assert (rows["lora"].model, rows["lora"].teacher) == ("tiny-bert-4l", "teacher")
    assert (rows["ref"].model, rows["ref"].teacher) == ("tiny-bert-2l", None)
    assert (rows["teacher-L3"].kind, rows["teacher-L3"].stage, rows["teacher-L3"].layers) == ("slice", "slice", 3)
    assert (rows["prompt-gpt-2shot"].model, rows["prompt-gpt-2shot"].shots) == ("tiny-gpt2-2l", 2)
    assert {c.kind for c in rows.values()} <= set(candidates.KINDS)


def test_find_looks_names_up_and_lists_the_choices(tiny_config):
    config = tiny_config(students=[{"name": "s", "model": "tiny-bert-2l"}], probe={"model": "org/bert-x",
                                                                                   "finetune_slices": "auto"})
    assert candidates.find(config, "distill", "s-nodistill").control_of == "s"
    assert candidates.find(config, "distill", None).name == "s"
    with pytest.raises(UserError, match=r"no student named 's-nodistil'.*did you mean 's-nodistill'"):
        candidates.find(config, "distill", "s-nodistil")
    # slices: by their name at any depth, or by the depth; the probed model's last path segment names them
    assert candidates.find(config, "slice", "bert-x-L7").layers == 7
    assert candidates.find(config, "slice", "5").name == "bert-x-L5"
    with pytest.raises(UserError, match="no slice named 'teacher-L2'"):
        candidates.find(config, "slice", "teacher-L2")
    with pytest.raises(UserError, match="which slice"):
        candidates.find(config, "slice", None)
    with pytest.raises(UserError, match="no adapter is configured"):
        candidates.find(config, "adapters", None)


def test_resolve_model_takes_a_teacher_name_or_a_reference(tiny_config):
    config = tiny_config()
    assert candidates.resolve_model(config, "teacher") == ("tiny-bert-2l", "teacher")
    assert candidates.resolve_model(config, "org/model") == ("org/model", None)
