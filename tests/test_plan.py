"""The stage table (rightsizer.plan): every stage once, and the table agrees with the code it describes."""

from __future__ import annotations

import importlib
import inspect
import re
from pathlib import Path

from rightsizer.cli import main
from rightsizer.plan import RESOURCE_KEYS, STAGES


def test_each_stage_module_takes_the_inputs_the_table_says():
    for stage in STAGES.values():
        parameters = list(inspect.signature(importlib.import_module(stage.run_module).run).parameters)
        assert parameters[0] == "config", stage.name
        assert parameters[1:1 + len(stage.inputs)] == list(stage.input_names), stage.name
        assert "output_dir" in parameters, stage.name


def test_launches_is_true_exactly_for_the_stages_that_call_dispatch():
    for stage in STAGES.values():
        source = inspect.getsource(importlib.import_module(stage.run_module))
        calls = re.findall(r'launch\.dispatch\(\s*"([a-z-]+)"', source)
        assert calls == ([stage.name] if stage.launches else []), stage.name


def test_a_running_component_finds_its_stage_and_is_labelled_with_its_name():
    from rightsizer import plan
    from rightsizer.component_runtime import _identity

    assert all(plan.of_module(stage.module) is stage for stage in STAGES.values()) and plan.of_module("nope") is None
    assert _identity("teacher_logits", {})[0] == "teacher-logits"  # the console says what `rightsizer stage` takes
    assert _identity("adapters", {"name": "lora-q"})[0] == "adapters lora-q"


def test_every_stage_is_found_in_one_hop():
    """stages/<module>.py (or a package), components/<module>.py and tests/test_<module>.py, whose test calls the
    component."""
    repo = Path(__file__).resolve().parents[1]
    for stage in STAGES.values():
        source = repo / "src" / "rightsizer" / "stages" / stage.module
        assert source.with_suffix(".py").is_file() or (source / "__init__.py").is_file(), stage.name
        assert (repo / "components" / f"{stage.module}.py").is_file(), stage.name
        test = repo / "tests" / f"test_{stage.module}.py"
        assert test.is_file() and f"from components.{stage.module} import" in test.read_text(), stage.name


def test_resource_keys_fall_back_to_known_keys():
    assert all(parent in RESOURCE_KEYS for parent in RESOURCE_KEYS.values() if parent is not None)
    assert {s.resources for s in STAGES.values()} <= set(RESOURCE_KEYS)


def test_stage_help_lists_every_stage(capsys):
    assert main(["stage", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    for stage in STAGES.values():
        assert re.search(rf"(^| ){re.escape(stage.name)}( --in \S+)*: {re.escape(stage.help)}", text), stage.name
    assert "teacher-logits --in data_dir --in teacher_dirs..." in text
