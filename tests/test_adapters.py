"""Adapters: the method registry, config checks, every method trained on a tiny encoder and
reloaded with identical predictions (head included), merged == unmerged, trainable share, the
user errors, and the local pipeline with two adapters on the leaderboard."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from rightsizer.adapters_registry import METHODS, AdapterMethod, check_fields, register_method
from rightsizer.cli import main
from rightsizer.config import ADAPTER_METHODS, config_from_dict
from rightsizer.errors import UserError

from conftest import tiny_raw

FAST = {"max_steps": 3, "batch_size": 16, "eval_batch_size": 64, "logging_steps": 1, "learning_rate": 5e-3}


def adapter_raw(*adapters: dict, **sections) -> dict:
    raw = tiny_raw(adapters=[{**FAST, **a} for a in adapters], **sections)
    raw["data"].update({"max_train_samples": 96, "max_eval_samples": 30})
    return raw


@pytest.fixture(scope="module")
def small_data(tmp_path_factory) -> Path:
    """96 train / 30 validation / 30 test rows of builtin:demo."""
    from rightsizer.stages import prepare

    out = tmp_path_factory.mktemp("adapters") / "data"
    prepare.run(config_from_dict(adapter_raw({"name": "lora", "method": "lora"})), out)
    return out


# -- registry and config ---------------------------------------------------------------------


def test_registry_covers_every_config_method_and_refuses_duplicates():
    assert set(ADAPTER_METHODS) == set(METHODS) == {
        "lora", "rslora", "dora", "adalora", "ia3", "loha", "lokr", "oft", "prefix", "prompt"}
    with pytest.raises(ValueError, match="already registered"):
        register_method(AdapterMethod("lora", "again", METHODS["lora"].build, frozenset(), frozenset()))
    with pytest.raises(ValueError, match="shadow common fields"):
        register_method(AdapterMethod("new", "x", METHODS["lora"].build, frozenset(), frozenset({"r"})))
    assert check_fields("lora", {"bias": "none"}, ["r", "alpha"]) is None
    assert "does not use 'r'" in check_fields("ia3", {}, ["r"])


@pytest.mark.parametrize("adapter, message", [
    ({"method": "lorra"}, r"must be one of 'lora', 'rslora', .*'prompt', got 'lorra' \(did you mean 'lora'\?\)"),
    ({"method": "lora", "r": 0}, r"adapters\.0\.r.*greater than or equal to 1"),
    ({"method": "lora", "options": {"use_dora": True}}, r"does not accept option\(s\) 'use_dora'; its options: alpha_pattern"),
    ({"method": "ia3", "r": 4}, r"method 'ia3' does not use 'r'; it uses: target_modules"),
    ({"method": "prefix", "target_modules": ["query"]}, r"method 'prefix' does not use 'target_modules'"),
    ({"method": "lora", "target_modules": []}, r"give module names"),
    ({"method": "lora", "base": "teacher"}, None),
])
def test_adapter_config_checks(adapter, message):
    raw = adapter_raw({"name": "a", **adapter})
    if message is None:
        assert config_from_dict(raw).adapters[0].method == adapter["method"]
        return
    with pytest.raises(UserError, match=message):
        config_from_dict(raw)


def test_default_base_must_name_a_teacher():
    raw = adapter_raw({"name": "a", "method": "lora"})
    raw["teachers"][0]["name"] = "bert"
    with pytest.raises(UserError, match="base 'teacher' names no configured teacher"):
        config_from_dict(raw)
    raw["adapters"][0]["base"] = "bert"
    assert config_from_dict(raw).adapters[0].base == "bert"


def test_config_survives_json_round_trip_with_method_specific_fields():
    from rightsizer.config import config_from_json

    config = config_from_dict(adapter_raw({"name": "i", "method": "ia3"}, {"name": "p", "method": "prefix", "r": 4}))
    again = config_from_json(config.to_json())
    assert [a.method for a in again.adapters] == ["ia3", "prefix"] and again.adapters[1].r == 4


# -- every method on a tiny encoder --------------------------------------------------------


def _safetensors_numel(path: Path) -> tuple[int, list[str]]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        keys = list(handle.keys())
        return sum(handle.get_tensor(k).numel() for k in keys), keys


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_trains_reloads_and_merges(method, small_data, tmp_path):
    from rightsizer.inference import predict_logits
    from rightsizer.data import load_prepared
    from rightsizer.models import load_saved
    from rightsizer.outputs import read_json
    from rightsizer.stages import adapters, evaluate

    spec = {"name": f"ad-{method}", "method": method}
    if method == "oft":
        spec["r"] = 4  # blocks per layer: hidden 128 / 4
    config = config_from_dict(adapter_raw(spec))
    out = tmp_path / "adapter"
    summary = adapters.run(config, small_data, out)

    assert summary["kind"] == "adapter" and summary["method"] == method and summary["steps"] == 3
    for key in ("trainable_params", "trainable_share", "peak_memory_mb", "train_time_s", "samples_per_s"):
        assert summary[key] is not None and summary[key] > 0, key
    assert 0 < summary["trainable_share"] < 0.1
    assert summary["trainable_share"] == pytest.approx(summary["trainable_params"] / summary["params"], rel=1e-4)
    # the head is stored with the adapter, and the stored tensors are exactly the trainable ones
    stored, keys = _safetensors_numel(out / "adapter" / "adapter_model.safetensors")
    assert any("classifier" in k for k in keys), keys
    if method != "adalora":  # AdaLoRA stores its ranks after budget re-allocation
        assert stored == summary["trainable_params"]
    # reloaded (unmerged) predictions equal the trained model's, checked in the stage and again here
    assert summary["reload_check"]["max_abs_diff"] <= 1e-4 and summary["reload_check"]["rows"] == 30
    dataset, card = load_prepared(small_data)
    model, tokenizer = load_saved(out / "adapter")
    unmerged, _, _ = predict_logits(model, tokenizer, dataset["validation"], 64)
    final, _ = load_saved(out / "model")
    served, _, _ = predict_logits(final, tokenizer, dataset["validation"], 64)
    if METHODS[method].mergeable:
        assert summary["merged"] and summary["merge_check"]["agreement"] == 1.0
        assert not (out / "model" / "adapter_config.json").exists()  # a plain model: plain latency
        assert np.abs(served - unmerged).max() < 1e-3
    else:
        assert not summary["merged"] and summary["merge_check"] is None
        assert np.abs(served - unmerged).max() < 1e-5
    if method not in ("lora", "prefix"):
        return
    # evaluation (of a merged and of an unmerged model) picks up the adapter's own figures for the leaderboard
    metrics = evaluate.run(config, small_data, out, tmp_path / "eval", kind="adapter")
    assert metrics["kind"] == "adapter" and metrics["trainable_params"] == summary["trainable_params"]
    assert metrics["peak_memory_mb"] == summary["peak_memory_mb"] and metrics["method"] == method
    assert read_json(out / "summary.json")["name"] == f"ad-{method}"


def test_all_linear_targets_and_planned_steps(small_data, tmp_path):
    """'all-linear' adapts every linear layer but the head; AdaLoRA's schedule gets fine_tune's step count."""
    from rightsizer.stages import adapters

    config = config_from_dict(adapter_raw({"name": "lora-all", "method": "lora", "target_modules": "all-linear",
                                           "max_steps": 2, "r": 4}))
    summary = adapters.run(config, small_data, tmp_path / "lora")
    assert {"query", "key", "value", "dense"} == {m.rsplit(".", 1)[-1] for m in summary["target_modules"]}
    assert not any("classifier" in m for m in summary["target_modules"])
    assert summary["steps"] == 2 and adapters.planned_steps(96, config.adapters[0]) == 2
    config.adapters[0].max_steps = None
    config.adapters[0].epochs = 2
    assert adapters.planned_steps(96, config.adapters[0]) == 12  # ceil(96 / 16) * 2


def test_adalora_rank_budget_shrinks_on_a_real_schedule(small_data, tmp_path):
    """AdaLoRA's schedule comes from the planned steps: it warms up, shrinks to r, and its final allocation runs."""
    from rightsizer.stages import adapters

    config = config_from_dict(adapter_raw({"name": "ada", "method": "adalora", "r": 2, "options": {"init_r": 6},
                                           "max_steps": 6}))
    summary = adapters.run(config, small_data, tmp_path / "ada")
    budget = summary["rank_budget"]
    assert (budget["tinit"], budget["tfinal"], budget["total_step"]) == (0, 1, 6)
    assert budget["initial"] == 3 * budget["target"] > 0
    assert budget["final"] == budget["target"]  # peft's final allocation (step total - tfinal) ran
    saved = json.loads((tmp_path / "ada" / "adapter" / "adapter_config.json").read_text())
    kept = [sum(pattern) for pattern in saved["rank_pattern"].values()]
    assert sum(kept) == budget["target"] and max(kept) <= 6 and summary["reload_check"]["agreement"] == 1.0


def test_size_of_an_unmerged_adapter_on_a_hub_base_includes_the_base(small_data, tmp_path, monkeypatch):
    """Prompt tuning cannot merge: serving it ships the base too, so size_mb counts the base's weights."""
    from transformers import AutoModelForSequenceClassification

    from rightsizer.models import PRESETS, size_on_disk_mb, train_tokenizer
    from rightsizer.stages import adapters, evaluate

    tokenizer = train_tokenizer("wordpiece", ["a small vocabulary for a tiny model"] * 10, 200)
    base = tmp_path / "hub-base"
    AutoModelForSequenceClassification.from_config(
        PRESETS["tiny-bert-2l"].build_config(len(tokenizer), tokenizer)).save_pretrained(str(base))
    tokenizer.save_pretrained(str(base))
    base_mb = size_on_disk_mb(base)
    # the stage treats the base as a Hub id (not copied beside the adapter); loading still finds it on disk
    monkeypatch.setattr(adapters, "describe", lambda reference: "hub")
    config = config_from_dict(adapter_raw({"name": "soft", "method": "prompt", "base": str(base), "r": 4}))
    summary = adapters.run(config, small_data, tmp_path / "soft")
    assert not (tmp_path / "soft" / "model" / "base").exists() and summary["base_size_mb"] == base_mb
    adapter_mb = size_on_disk_mb(tmp_path / "soft" / "model")
    assert adapter_mb < base_mb / 20  # the adapter alone: what size_mb used to say
    metrics = evaluate.run(config, small_data, tmp_path / "soft", tmp_path / "eval", kind="adapter")
    assert metrics["size_mb"] == pytest.approx(adapter_mb + base_mb, abs=1e-3)


# -- user errors -----------------------------------------------------------------------------


@pytest.mark.parametrize("adapter, message", [
    ({"method": "lora", "target_modules": ["q_proj"]},
     r"target_modules 'q_proj' not found in BertForSequenceClassification; its linear modules are: classifier, "
     r"dense, key, query, value"),
    ({"method": "ia3", "target_modules": ["key", "value"], "options": {"feedforward_modules": ["dense"]}},
     r"feedforward_modules must also be in target_modules; add 'dense'"),
    ({"method": "adalora", "r": 8, "options": {"init_r": 4}}, r"init_r \(4\) must be >= r \(8\)"),
    ({"method": "adalora", "options": {"tinit": 2, "tfinal": 1}}, r"\(adalora\): The supplied schedule values don't allow "
     r"for a budgeting phase"),
])
def test_adapter_stage_user_errors(adapter, message, small_data, tmp_path):
    from rightsizer.stages import adapters

    config = config_from_dict(adapter_raw({"name": "bad", **adapter}))
    with pytest.raises(UserError, match=message):
        adapters.run(config, small_data, tmp_path / "out")
    assert not (tmp_path / "out").exists() and not (tmp_path / ".out.partial").exists()


def test_method_peft_cannot_apply_is_a_user_error(small_data, tmp_path):
    """LoHa has no layer for GPT-2's Conv1D projections: a one-line error, not a traceback."""
    from rightsizer.stages import adapters

    raw = adapter_raw({"name": "loha", "method": "loha", "base": "gpt"})
    raw["teachers"] = [{"name": "gpt", "model": "tiny-gpt2-2l", "max_steps": 2}]
    with pytest.raises(UserError, match=r"peft cannot apply loha to GPT2ForSequenceClassification.*Conv1D"):
        adapters.run(config_from_dict(raw), small_data, tmp_path / "out")


def test_prefix_tuning_on_an_architecture_peft_cannot_handle(small_data, tmp_path):
    """DistilBERT's config has no hidden_size/num_attention_heads names peft needs for virtual tokens."""
    from transformers import AutoModelForSequenceClassification, DistilBertConfig

    from rightsizer.models import train_tokenizer
    from rightsizer.stages import adapters

    tokenizer = train_tokenizer("wordpiece", ["a small vocabulary for a tiny model"] * 10, 200)
    config = DistilBertConfig(vocab_size=len(tokenizer), dim=32, n_layers=1, n_heads=2, hidden_dim=64,
                              pad_token_id=tokenizer.pad_token_id)
    AutoModelForSequenceClassification.from_config(config).save_pretrained(str(tmp_path / "distil"))
    tokenizer.save_pretrained(str(tmp_path / "distil"))
    for method in ("prefix", "prompt"):
        raw = adapter_raw({"name": "virtual", "method": method, "base": str(tmp_path / "distil"), "r": 4})
        with pytest.raises(UserError, match=rf"peft cannot apply {method} to DistilBertForSequenceClassification"):
            adapters.run(config_from_dict(raw), small_data, tmp_path / method)
        assert not (tmp_path / method).exists()


def test_cli_reports_bad_adapter_in_one_line(tmp_path, capsys, small_data):
    raw = adapter_raw({"name": "a", "method": "lora", "target_modules": ["nope"]})
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    code = main(["stage", "adapters", "--config", str(path), "--in", str(small_data), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: adapter 'a': target_modules 'nope' not found")
    assert not (tmp_path / "o").exists()
    raw["adapters"][0].update({"target_modules": None, "method": "lokr", "options": {"decompose": True}})
    path.write_text(yaml.safe_dump(raw))
    code = main(["run", str(path), "--output", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err == [err[0]] and "does not accept option(s) 'decompose'" in err[0]
    assert "decompose_both" in err[0] and not (tmp_path / "run").exists()


# -- the pipeline ----------------------------------------------------------------------------


@pytest.mark.slow
def test_local_pipeline_with_two_adapters(tmp_path):
    raw = adapter_raw({"name": "lora-q", "method": "lora", "target_modules": ["query"]},
                      {"name": "ia3", "method": "ia3"})
    raw["teachers"][0].update({"max_steps": 4, "batch_size": 16})
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert main(["run", str(path), "--output", str(tmp_path / "out")]) == 0
    board = json.loads((tmp_path / "out" / "leaderboard.json").read_text())
    rows = {c["name"]: c for c in board["candidates"]}
    assert {"teacher", "lora-q", "ia3", "majority-baseline"} <= set(rows)
    for name in ("lora-q", "ia3"):
        assert rows[name]["kind"] == "adapter"
        assert 0 < rows[name]["trainable_params"] < rows["teacher"]["trainable_params"]
        assert rows[name]["latency_ms"] > 0
    report = (tmp_path / "out" / "report.md").read_text()
    assert "lora-q" in report and "adapter" in report
    assert list((tmp_path / "out" / "stages").rglob("adapter/adapter_model.safetensors"))


def test_adapter_component_trains_into_its_model_artifact(small_data, tmp_path):
    """The KFP component as a task calls it: the adapter stage's output and its figures in the artifact's metadata."""
    from kfp import dsl

    from components.adapters import adapter as component
    from conftest import artifact
    from rightsizer.models import load_saved

    config = config_from_dict(adapter_raw({"name": "lora", "method": "lora"}))
    model = artifact(dsl.Model, tmp_path / "adapter")
    component.python_func(config_json=config.to_json(), name="lora", data=artifact(dsl.Dataset, small_data),
                          model=model)
    summary = json.loads((tmp_path / "adapter" / "summary.json").read_text())
    assert summary["method"] == "lora" and summary["steps"] == 3 and summary["merged"]
    assert model.metadata == {key: summary[key] for key in ("method", "trainable_params", "trainable_share",
                                                            "peak_memory_mb", "train_time_s")} | {
        "name": "lora", "kind": "adapter"}
    assert 0 < model.metadata["trainable_share"] < 0.1
    assert summary["reload_check"]["max_abs_diff"] <= 1e-4
    load_saved(tmp_path / "adapter" / "model")  # the merged model reloads


def test_adapter_trains_with_the_seed_it_is_given(small_data, tmp_path):
    """seeds on an adapter entry: the stage trains with the first unless --seed names another; runs differ."""
    from rightsizer.outputs import read_json
    from rightsizer.stages import adapters

    config = config_from_dict(adapter_raw({"name": "lora", "method": "lora", "seeds": [3, 4]}))
    first = adapters.run(config, small_data, tmp_path / "first")
    other = adapters.run(config, small_data, tmp_path / "other", seed=4)
    assert (first["seed"], other["seed"]) == (3, 4)
    losses = [read_json(tmp_path / run / "metrics.json")["losses"] for run in ("first", "other")]
    assert losses[0] != losses[1]
