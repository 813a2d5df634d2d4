"""Layer probe and sliced fine-tunes: one-pass features equal truncated models, slices reload with
k layers and the first k layers' weights, probes beat chance on the demo, ``auto`` picks the best
layer and half of it, bad input is one user error, and the pipeline puts slices on the leaderboard."""

from __future__ import annotations

import copy
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from rightsizer.errors import UserError
from rightsizer.slicing import FAMILIES, depth, family_of, layer_stack, slice_model
from rightsizer.stages import probe as probe_stage

VOCAB = 97
PAD = 0


def tiny_backbone(model_type: str, layers: int = 3):
    """A random sequence classifier of each supported family (hidden 32), built from its config."""
    from transformers import (AutoModelForSequenceClassification, BertConfig, DistilBertConfig, GPT2Config,
                              LlamaConfig, OPTConfig, RobertaConfig)

    common = {"vocab_size": VOCAB, "pad_token_id": PAD, "num_labels": 3}
    configs = {
        "bert": lambda: BertConfig(hidden_size=32, num_hidden_layers=layers, num_attention_heads=4, intermediate_size=64,
                                   **common),
        "roberta": lambda: RobertaConfig(hidden_size=32, num_hidden_layers=layers, num_attention_heads=4,
                                         intermediate_size=64, max_position_embeddings=80, **common),
        "distilbert": lambda: DistilBertConfig(dim=32, n_layers=layers, n_heads=4, hidden_dim=64, **common),
        "llama": lambda: LlamaConfig(hidden_size=32, num_hidden_layers=layers, num_attention_heads=4,
                                     num_key_value_heads=2, intermediate_size=64, **common),
        "gpt2": lambda: GPT2Config(n_embd=32, n_layer=layers, n_head=4, n_inner=64, **common),
        "opt": lambda: OPTConfig(hidden_size=32, word_embed_proj_dim=16, num_hidden_layers=layers, num_attention_heads=4,
                                 ffn_dim=64, **common),  # project_in/out: layer features go through project_out
    }
    torch.manual_seed(0)
    return AutoModelForSequenceClassification.from_config(configs[model_type]()).eval()


def random_batches(rows: int = 10, batch_size: int = 4, seed: int = 0):
    """Right-padded batches of random ids with varied lengths, in shuffled row order."""
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(3, 12, (rows,), generator=generator)
    order = np.random.default_rng(seed).permutation(rows)
    batches = []
    for start in range(0, rows, batch_size):
        index = order[start:start + batch_size]
        width = int(lengths[index].max())
        ids = torch.full((len(index), width), PAD)
        mask = torch.zeros((len(index), width), dtype=torch.long)
        for row, i in enumerate(index):
            ids[row, :lengths[i]] = torch.randint(1, VOCAB, (int(lengths[i]),), generator=generator)
            mask[row, :lengths[i]] = 1
        batches.append((index, {"input_ids": ids, "attention_mask": mask}))
    return batches


MODEL_TYPES = [t for family in FAMILIES for t in family.model_types[:1]]


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_one_pass_features_equal_truncated_models(model_type):
    model = tiny_backbone(model_type)
    batches = random_batches()
    pooling = "last" if family_of(model).decoder else "cls"
    for pool_with in (pooling, "mean"):
        features = probe_stage.layer_features(model, batches, [1, 2, 3], pool_with, rows=10)
        for k in (1, 2, 3):
            truncated = slice_model(copy.deepcopy(model), k).eval()
            expected = np.zeros_like(features[k])
            with torch.inference_mode():
                for index, batch in batches:
                    backbone = truncated.base_model
                    hidden = backbone(**probe_stage.backbone_inputs(backbone, batch, "cpu")).last_hidden_state
                    expected[index] = probe_stage.pool(hidden, batch["attention_mask"], pool_with).numpy()
            np.testing.assert_allclose(features[k], expected, rtol=1e-4, atol=1e-5, err_msg=f"{model_type} layer {k}")
    assert not np.allclose(features[1], features[3])  # the layers differ: the test would catch a wrong layer


def test_one_pass_stops_after_the_deepest_requested_layer():
    model = tiny_backbone("bert", layers=4)
    calls = []
    handles = [layer.register_forward_hook(lambda *args, i=i: calls.append(i)) for i, layer in enumerate(layer_stack(model))]
    probe_stage.layer_features(model, random_batches(rows=4, batch_size=4), [2], "cls", rows=4)
    for handle in handles:
        handle.remove()
    assert calls == [0, 1]


@pytest.mark.parametrize("model_type", ["bert", "llama", "gpt2", "distilbert"])
def test_sliced_model_reloads_with_k_layers_and_the_first_k_weights(model_type, tmp_path):
    from transformers import AutoModelForSequenceClassification

    original = tiny_backbone(model_type, layers=3)
    before = {name: tensor.clone() for name, tensor in original.state_dict().items()}
    sliced = slice_model(copy.deepcopy(original), 2)
    sliced.save_pretrained(tmp_path)
    reloaded, info = AutoModelForSequenceClassification.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert reloaded.config.num_hidden_layers == 2 and depth(reloaded) == 2
    state = reloaded.state_dict()
    kept = [name for name in before if name in state]
    assert len(kept) == len(state)  # every reloaded tensor is one of the original's
    assert any(".1." in name for name in kept) and not any(".2." in name for name in state)
    for name in kept:
        torch.testing.assert_close(state[name], before[name], msg=name)
    batch = random_batches(rows=4, batch_size=4)[0][1]
    with torch.inference_mode():  # the reloaded slice computes what the in-memory slice does
        torch.testing.assert_close(reloaded.eval()(**batch).logits, sliced.eval()(**batch).logits)


def test_unsupported_architecture_and_depths_are_user_errors():
    with pytest.raises(UserError, match=r"cannot probe or slice model type 't5'.*bert.*llama.*gpt2.*opt"):
        family_of(SimpleNamespace(config=SimpleNamespace(model_type="t5")))
    with pytest.raises(UserError, match=r"the model has 3 layers, so use 1\.\.3"):
        slice_model(tiny_backbone("bert"), 4)
    llama = tiny_backbone("llama")
    with pytest.raises(UserError, match="pooling 'last' needs a pad token"):
        probe_stage.resolve_pooling("auto", llama, SimpleNamespace(pad_token_id=None))
    assert probe_stage.resolve_pooling("auto", llama, SimpleNamespace(pad_token_id=0)) == "last"
    assert probe_stage.resolve_pooling("auto", tiny_backbone("bert"), SimpleNamespace(pad_token_id=0)) == "cls"


def test_auto_slices_are_the_best_layer_and_half_of_it():
    assert probe_stage.auto_slices(8) == [4, 8]
    assert probe_stage.auto_slices(5) == [2, 5]
    assert probe_stage.auto_slices(1) == [1]
    scores = [{"layer": k, "validation": {"macro_f1": f}} for k, f in ((1, 0.5), (2, 0.7), (3, 0.7), (4, 0.6))]
    assert probe_stage.best_layer(scores, "macro_f1") == 2  # ties go to the shallower layer


def test_config_rules(tiny_config):
    with pytest.raises(UserError, match="probe.layers.*use 1..number of layers"):
        tiny_config(probe={"layers": [0, 1]})
    with pytest.raises(UserError, match="repeated layer depths"):
        tiny_config(probe={"finetune_slices": [1, 1]})
    with pytest.raises(UserError, match="probe.model 'teacher' names no configured teacher"):
        tiny_config(teachers=[{"name": "big", "model": "tiny-bert-2l"}], probe={"finetune_slices": "auto"})
    with pytest.raises(UserError, match="slice candidate names clash.*teacher-L1"):
        tiny_config(teachers=[{"name": "teacher"}, {"name": "teacher-L1"}], probe={"finetune_slices": [1]})
    config = tiny_config(probe={"finetune_slices": "auto", "layers": [2, 1]})
    assert config.probe.finetune_slices == "auto"


def _probe_config(tiny_config, **probe):
    return tiny_config(teachers=[{"name": "teacher", "model": "tiny-bert-2l"}],
                       probe={"model": "teacher", "finetune_slices": "auto", **probe})


def test_probe_on_the_demo_beats_chance_and_picks_auto_slices(tiny_config, demo_data, tmp_path):
    config = _probe_config(tiny_config, pooling="mean")
    summary = probe_stage.run(config, demo_data, tmp_path / "probe")
    result = json.loads((tmp_path / "probe" / "probe.json").read_text())
    assert (tmp_path / "probe" / "probe.png").stat().st_size > 1000
    assert [row["layer"] for row in result["layers"]] == [1, 2] and result["depth"] == 2
    assert result["family"] == "bert" and result["pooling"] == "mean"
    best_test = max(row["test"]["accuracy"] for row in result["layers"])
    assert best_test > result["chance"]["uniform_accuracy"] + 0.15, result["layers"]
    best = max(result["layers"], key=lambda row: (row["validation"]["macro_f1"], -row["layer"]))["layer"]
    assert result["best_layer"] == summary["best_layer"] == best
    assert summary["slices"] == result["slices"] == probe_stage.auto_slices(best)
    assert result["slice_names"] == [f"teacher-L{k}" for k in result["slices"]]


def test_probe_stage_user_errors(tiny_config, demo_data, tmp_path):
    from rightsizer.cli import main

    with pytest.raises(UserError, match=r"probe.layers \[3\] out of range: the model has 2 layers"):
        probe_stage.run(_probe_config(tiny_config, layers=[1, 3]), demo_data, tmp_path / "a")
    with pytest.raises(UserError, match=r"probe.finetune_slices \[5\] out of range: the model has 2 layers"):
        probe_stage.run(_probe_config(tiny_config, finetune_slices=[1, 5]), demo_data, tmp_path / "b")
    with pytest.raises(UserError, match="probe.model 'bad name!' is neither a configured teacher"):
        probe_stage.run(_probe_config(tiny_config, model="bad name!"), demo_data, tmp_path / "c")
    assert not any(tmp_path.iterdir())  # nothing half-written

    config_file = tmp_path / "config.json"
    config_file.write_text(_probe_config(tiny_config, layers=[7]).to_json())
    out = tmp_path / "cli"
    assert main(["stage", "probe", "--config", str(config_file), "--in", str(demo_data), "--out", str(out)]) == 2
    assert not out.exists()


def test_decoder_probe_and_slice(tiny_config, demo_data, tmp_path):
    from rightsizer.models import load_saved
    from rightsizer.stages import slice as slice_stage

    config = tiny_config(teachers=[{"name": "teacher", "model": "tiny-llama-2l"}],
                         probe={"model": "teacher", "finetune_slices": [1], "max_steps": 4, "batch_size": 16,
                                "learning_rate": 2e-3, "max_probe_samples": 300})
    summary = probe_stage.run(config, demo_data, tmp_path / "probe")
    assert summary["family"] == "llama" and summary["pooling"] == "last" and summary["slices"] == [1]
    assert json.loads((tmp_path / "probe" / "probe.json").read_text())["rows"]["train"] == 300

    sliced = slice_stage.run(config, demo_data, tmp_path / "slice", name="teacher-L1")
    assert sliced["name"] == "teacher-L1" and sliced["kind"] == "slice" and sliced["layers"] == 1
    assert sliced["full_layers"] == 2 and sliced["steps"] == 4
    model, _ = load_saved(tmp_path / "slice" / "model")
    assert model.config.num_hidden_layers == 1 and depth(model) == 1
    with pytest.raises(UserError, match="slice depth"):
        slice_stage.run(config, demo_data, tmp_path / "bad", name="teacher-L3")


def test_pipeline_with_probe_and_a_slice_runs_locally(tiny_config, tmp_path):
    from rightsizer.pipeline import find_report, run_local

    config = tiny_config(teachers=[], probe={"model": "tiny-bert-2l", "finetune_slices": [1], "max_steps": 6,
                                             "batch_size": 16, "learning_rate": 2e-3, "max_probe_samples": 200})
    run_dir = run_local(config, tmp_path / "kfp")
    report_dir = find_report(run_dir)
    leaderboard = json.loads((report_dir / "leaderboard.json").read_text())
    rows = {row["name"]: row for row in leaderboard["candidates"]}
    assert rows["tiny-bert-2l-L1"]["kind"] == "slice"
    assert rows["tiny-bert-2l-L1"]["params"] < 900_000  # one of two layers: smaller than the full model
    metrics = next(p for p in run_dir.rglob("metrics.json") if json.loads(p.read_text()).get("kind") == "slice")
    assert json.loads(metrics.read_text())["layers"] == 1
    assert json.loads((report_dir / "probe.json").read_text())["slices"] == [1]


def test_probe_component_returns_the_slices_it_wrote(tiny_config, demo_data, tmp_path):
    """The KFP component as a task calls it: probe.json in its artifact, its slices returned for the ParallelFor."""
    from kfp import dsl

    from components.probe import probe as component
    from conftest import artifact

    out, scores = artifact(dsl.Artifact, tmp_path / "probe"), artifact(dsl.Metrics, tmp_path / "scores")
    slices = component.python_func(config_json=_probe_config(tiny_config, pooling="mean").to_json(),
                                   data=artifact(dsl.Dataset, demo_data), probe=out, scores=scores)
    result = json.loads((tmp_path / "probe" / "probe.json").read_text())
    assert slices == result["slices"] == probe_stage.auto_slices(result["best_layer"])
    assert out.metadata == {"best_layer": result["best_layer"], "slices": slices, "family": "bert", "depth": 2}
    assert scores.metadata["best_layer"] == result["best_layer"]
    best = next(row for row in result["layers"] if row["layer"] == result["best_layer"])
    assert scores.metadata["best_validation_macro_f1"] == pytest.approx(best["validation"]["macro_f1"])
    assert max(row["test"]["accuracy"] for row in result["layers"]) > result["chance"]["uniform_accuracy"] + 0.15

