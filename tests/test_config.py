"""Config: validation on load with one-line messages, --set overrides typed by the schema."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from rightsizer.config import RunConfig, config_from_dict, load_config
from rightsizer.errors import UserError


def minimal(**extra) -> dict:
    return {"data": {"source": "builtin:demo"}, **extra}


def test_defaults_fill_every_section():
    config = config_from_dict(minimal())
    assert config.teachers[0].name == "teacher" and config.teachers[0].model == "tiny-bert-4l"
    assert config.students == [] and config.adapters == [] and config.probe is None
    assert config.report.metric == "macro_f1" and config.report.tolerance == 0.01
    assert config.resources.for_stage("teachers").cpu == "2"
    assert config.storage.bucket is None  # resolved at run time: $RIGHTSIZER_S3_BUCKET (the ConfigMap), else rightsizer


def test_resources_merge_default_and_stage():
    config = config_from_dict(minimal(resources={"default": {"memory": "4Gi"}, "teachers": {"gpus": 2}}))
    spec = config.resources.for_stage("teachers")
    assert (spec.gpus, spec.memory, spec.cpu, spec.gpu_type) == (2, "4Gi", "2", "nvidia.com/gpu")
    assert config.resources.for_stage("prepare").gpus == 0



def test_every_stage_has_its_own_resources_key_falling_back_to_the_one_it_used_to_borrow():
    from rightsizer.config import ResourcesConfig
    from rightsizer.plan import RESOURCE_KEYS, STAGES

    assert list(ResourcesConfig.model_fields) == list(RESOURCE_KEYS)
    assert {stage.resources for stage in STAGES.values()} == set(RESOURCE_KEYS) - {"default"}
    config = config_from_dict(minimal(resources={"teachers": {"gpus": 2, "memory": "9Gi"}, "probe": {"cpu": "3"},
                                                 "evaluate": {"gpus": 1}, "slice": {"cpu": "5"}}))
    resources = config.resources
    assert (resources.for_stage("teacher_logits").gpus, resources.for_stage("teacher_logits").memory) == (2, "9Gi")
    assert resources.for_stage("slice").cpu == "5" and resources.for_stage("probe").cpu == "3"
    assert resources.for_stage("prompting").gpus == 1
    with pytest.raises(KeyError):
        resources.for_stage("teacher")  # a stage name is not a resources key


def test_architecture_example_config_is_valid():
    config = config_from_dict({
        "name": "demo", "seed": 42,
        "data": {"source": "builtin:demo", "text_column": "text", "text_pair_column": None, "label_column": "label",
                 "validation_size": 0.1, "test_size": 0.2, "max_length": 128, "max_train_samples": None},
        "teachers": [{"name": "teacher", "model": "tiny-bert-4l", "epochs": 3, "learning_rate": 5e-5, "batch_size": 32}],
        "students": [{"name": "student-2l", "model": "tiny-bert-2l", "temperature": 2.0, "alpha": 0.5, "hidden_weight": 0.0}],
        "adapters": [{"name": "lora-q", "method": "lora", "base": "teacher", "target_modules": ["query"], "r": 8}],
        "probe": {"model": "teacher", "layers": "all", "finetune_slices": [2]},
        "evaluation": {"latency_batch_size": 1, "prompting": None},
        "report": {"metric": "macro_f1", "tolerance": 0.01},
        "resources": {"default": {"cpu": "2", "memory": "8Gi", "gpus": 0, "gpu_type": "nvidia.com/gpu", "workers": 1,
                                  "processes": None}, "teachers": {"gpus": 1}},
        "deepspeed": None,
        "storage": {"endpoint": None, "bucket": "rightsizer"},
    })
    assert config.students[0].name == "student-2l"
    assert RunConfig.model_validate_json(config.to_json()) == config


@pytest.mark.parametrize("raw, message", [
    ({}, "'data' is required"),
    ({"data": {}}, "'data.source' is required"),
    (minimal(teachrs=[]), "unknown key 'teachrs' (did you mean 'teachers'?)"),
    ({"data": {"source": "x", "max_lenght": 5}}, "did you mean 'max_length'"),
    (minimal(teachers=[{"epochs": "many"}]), "'teachers.0.epochs'"),
    (minimal(adapters=[{"method": "lorra"}]), "did you mean 'lora'"),
    (minimal(report={"metric": "f1"}), "must be one of 'accuracy' or 'macro_f1'"),
    ({"data": {"source": "x", "validation_size": 1.5}}, "'data.validation_size'"),
    (minimal(students=[{"name": "s"}]), "needs either 'model' or 'from_teacher_layers'"),
    (minimal(teachers=[], students=[{"name": "s", "model": "tiny-bert-2l"}]), "no teachers to distil from"),
    (minimal(teachers=[{"name": "a"}, {"name": "a"}]), "repeated: a"),
    (minimal(storage={"secret_key": "x"}), "credentials never go in the config"),
    (minimal(resources={"teachers": {"memory": "lots"}}), "not a Kubernetes quantity"),
    (minimal(name="My Run"), "'name'"),
])
def test_validation_messages_name_the_key(raw, message):
    with pytest.raises(UserError) as info:
        config_from_dict(raw)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_overrides_are_typed_by_the_schema():
    config = config_from_dict(minimal(), ["teachers.0.epochs=1", "seed=3", "probe.layers=[1, 2]",
                                          "resources.teachers.gpus=2", "data.max_train_samples=null"])
    assert config.teachers[0].epochs == 1.0 and config.seed == 3
    assert config.probe.layers == [1, 2]
    assert config.resources.teachers.gpus == 2
    config = config_from_dict({}, ["data.source=builtin:demo-pairs"])
    assert config.data.source == "builtin:demo-pairs"


@pytest.mark.parametrize("override, message", [
    ("teachers.0.epoch=1", "'epoch' is not a key of teachers.0 (did you mean 'epochs'?)"),
    ("teachers.5.epochs=1", "index 5 does not exist"),
    ("teachers.x.epochs=1", "use an index"),
    ("nonsense=1", "'nonsense' is not a key"),
    ("seed", "must look like key.path=value"),
    ("seed.x=1", "single value"),
    ("teachers.0.epochs=-1", "'teachers.0.epochs'"),
])
def test_bad_overrides(override, message):
    with pytest.raises(UserError, match=None) as info:
        config_from_dict(minimal(), [override])
    assert message in str(info.value)


def test_load_config_file_errors(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data:\n  source: [unclosed\n")
    with pytest.raises(UserError, match="not valid YAML at line"):
        load_config(bad)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("just a string\n")
    with pytest.raises(UserError, match="must be a YAML mapping"):
        load_config(scalar)
    good = tmp_path / "good.yaml"
    good.write_text("data:\n  source: builtin:demo\nseed: 1\n")
    assert load_config(good, ["seed=5"]).seed == 5


def test_config_show_prints_every_default_and_loads_back_to_the_same_run(tmp_path, capsys):
    from rightsizer.cli import main
    from rightsizer.config import ResourceSpec, load_config
    from rightsizer.plan import RESOURCE_KEYS

    demo = Path(__file__).resolve().parents[1] / "examples" / "demo.yaml"
    assert main(["config", "show", str(demo), "--set", "resources.slice.memory=20Gi"]) == 0
    text = capsys.readouterr().out
    shown = yaml.safe_load(text)
    assert list(shown["resources"]) == list(RESOURCE_KEYS)
    for key, spec in shown["resources"].items():
        assert set(spec) == set(ResourceSpec.model_fields), key  # every field, resolved
    assert shown["resources"]["teacher_logits"]["gpus"] == 1  # falls back to resources.teachers
    assert shown["resources"]["slice"]["memory"] == "20Gi" and shown["resources"]["probe"]["memory"] == "8Gi"
    assert shown["resources"]["teachers"]["timeout_s"] == 86400
    assert shown["resources"]["teachers"]["trainjob_runtime"] == "rightsizer-torch-distributed"
    assert shown["teachers"][0]["weight_decay"] == 0.01 and shown["evaluation"]["latency_batch_size"] == 1
    (tmp_path / "resolved.yaml").write_text(text)
    original, again = load_config(demo, ["resources.slice.memory=20Gi"]), load_config(tmp_path / "resolved.yaml")
    assert {k: again.resources.for_stage(k) for k in RESOURCE_KEYS} == {k: original.resources.for_stage(k)
                                                                          for k in RESOURCE_KEYS}
    assert again.model_dump(exclude={"resources"}) == original.model_dump(exclude={"resources"})


def test_the_trainjob_runtime_default_is_the_one_k8s_installs():
    from rightsizer.config import ResourceSpec

    installed = (Path(__file__).resolve().parents[1] / "k8s").rglob("*.yaml")
    runtime = ResourceSpec.model_fields["trainjob_runtime"].default
    assert any(f"name: {runtime}" in path.read_text() for path in installed)
