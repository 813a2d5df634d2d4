"""Prompting baselines: log-likelihood scoring equals a hand computation, balanced seeded shots,
verbalizer/template checks, encoder-only refusal, and the stage's metrics row."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from rightsizer import candidates
from rightsizer.cli import main
from rightsizer.config import config_from_dict
from rightsizer.errors import UserError
from rightsizer.stages.prompting import Prompter, pick_shots, resolve_verbalizer

from conftest import tiny_raw


def prompting_raw(prompting: dict, teacher_model: str = "tiny-llama-2l") -> dict:
    raw = tiny_raw(evaluation={"latency_samples": 4, "warmup_batches": 1, "prompting": prompting})
    raw["data"].update({"max_train_samples": 90, "max_eval_samples": 30})
    raw["teachers"][0]["model"] = teacher_model
    return raw


@pytest.fixture(scope="module")
def small_data(tmp_path_factory) -> Path:
    from rightsizer.stages import prepare

    out = tmp_path_factory.mktemp("prompting") / "data"
    prepare.run(config_from_dict(prompting_raw({"shots": 0})), out)
    return out


@pytest.fixture(scope="module")
def tiny_lm():
    from rightsizer.builtin_data import demo_rows
    from rightsizer.models import load_causal_lm

    return load_causal_lm("tiny-llama-2l", [row["text"] for row in demo_rows(300)], seed=5)


def hand_score(model, tokenizer, context: str, continuation: str) -> float:
    """Sum of log p(token | everything before it) over the continuation's tokens, one sequence at a time."""
    whole = tokenizer(context + continuation)["input_ids"]
    n = len(whole) - len(tokenizer(context)["input_ids"])
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([whole])).logits[0].double()
    total = 0.0
    for position in range(len(whole) - n, len(whole)):
        log_probs = logits[position - 1] - torch.logsumexp(logits[position - 1], dim=-1)
        total += float(log_probs[whole[position]])
    return total


def test_scores_equal_a_hand_computation(tiny_lm):
    model, tokenizer = tiny_lm
    words = ["bad", "so-so", "excellent"]
    prompter = Prompter(model, tokenizer, "Review: {text}\nSentiment: {label}", words, batch_size=4,
                        prefix="Review: fine\nSentiment: so-so\n\n")
    texts = ["the screen is great", "the battery is very disappointing and the price is awful", "ok"]
    scores = prompter.score(texts)  # 9 sequences of different lengths, padded in batches of 4
    assert scores.shape == (3, 3)
    for i, text in enumerate(texts):
        context, continuations = prompter.split(text)
        assert context.endswith("Sentiment:") and continuations[0] == " bad"
        for j, continuation in enumerate(continuations):
            assert scores[i, j] == pytest.approx(hand_score(model, tokenizer, context, continuation), abs=1e-4)
    assert (scores < 0).all()
    # multi-token words sum several log-probabilities
    assert len(tokenizer(" so-so", add_special_tokens=False)["input_ids"]) > 1


def test_shots_are_balanced_seeded_and_distinct():
    labels = [0] * 50 + [1] * 30 + [2] * 5
    picked = pick_shots(labels, 7, 3, seed=1)
    assert len(set(picked)) == 7 and picked == pick_shots(labels, 7, 3, seed=1)
    counts = np.bincount([labels[i] for i in picked], minlength=3)
    assert counts.max() - counts.min() <= 1
    assert pick_shots(labels, 7, 3, seed=2) != picked
    assert pick_shots(labels, 0, 3, seed=1) == []
    with pytest.raises(UserError, match="needs 90 training rows"):
        pick_shots(labels, 90, 3, seed=1)


def test_verbalizer_must_cover_every_label():
    assert resolve_verbalizer(None, ["neg", "pos"]) == ["neg", "pos"]
    assert resolve_verbalizer({"pos": "good", "neg": "bad"}, ["neg", "pos"]) == ["bad", "good"]
    with pytest.raises(UserError, match="verbalizer has no word for label\\(s\\) pos"):
        resolve_verbalizer({"neg": "bad"}, ["neg", "pos"])
    with pytest.raises(UserError, match="names label\\(s\\) meh that the data does not have"):
        resolve_verbalizer({"neg": "bad", "pos": "good", "meh": "so"}, ["neg", "pos"])
    with pytest.raises(UserError, match="same word"):
        resolve_verbalizer({"neg": "x", "pos": "x"}, ["neg", "pos"])


@pytest.mark.parametrize("prompting, message", [
    ({"template": "{text} means {label}", "shots": [0, 0]}, "shots must be distinct"),
    ({"template": "Answer: {label} for {text}"}, r"\{label\} must appear once, after the other placeholders"),
    ({"template": "{review} -> {label}"}, r"unknown placeholder\(s\) \{review\}"),
    ({"template": "{text}"}, r"needs \{text\} and \{label\}"),
    ({"verbalizer": {"positive": " "}}, "must not be empty"),
])
def test_prompting_config_checks(prompting, message):
    with pytest.raises(UserError, match=message):
        config_from_dict(prompting_raw(prompting))


def runs(config):
    """(row name, model reference, shots) of every prompting row."""
    return [(row.name, row.model, row.shots) for row in candidates.prompting(config)]


def test_prompting_rows_and_encoder_refusal():
    config = config_from_dict(prompting_raw({"shots": [0, 2]}))
    assert runs(config) == [("prompt-teacher-0shot", "tiny-llama-2l", 0), ("prompt-teacher-2shot", "tiny-llama-2l", 2)]
    with pytest.raises(UserError, match="no teacher is a decoder preset, so set evaluation.prompting.model"):
        config_from_dict(prompting_raw({"shots": 0}, teacher_model="tiny-bert-2l"))
    with pytest.raises(UserError, match="'tiny-bert-2l' is encoder-only; use a decoder \\(tiny-gpt2-2l"):
        config_from_dict(prompting_raw({"model": "tiny-bert-2l"}))
    explicit = config_from_dict(prompting_raw({"model": ["tiny-gpt2-2l"]}, teacher_model="tiny-bert-2l"))
    assert runs(explicit) == [("prompt-tiny-gpt2-2l-0shot", "tiny-gpt2-2l", 0)]


def test_encoder_directory_is_refused(tmp_path):
    from rightsizer.models import load_causal_lm, load_classifier

    model, tokenizer = load_classifier("tiny-bert-2l", ["a", "b"], ["some words here"] * 20)
    model.save_pretrained(str(tmp_path / "bert"))
    tokenizer.save_pretrained(str(tmp_path / "bert"))
    with pytest.raises(UserError, match=r"prompting needs a causal LM, but '.*bert' \(bert\) is encoder-only"):
        load_causal_lm(str(tmp_path / "bert"))
    from rightsizer.validate import validate  # the up-front check reads every prompting row's model, before training

    with pytest.raises(UserError, match=r"prompting needs a causal LM, but '.*bert' \(bert\) is encoder-only; use a "):
        validate(config_from_dict(prompting_raw({"model": str(tmp_path / "bert")})))


def test_stage_writes_a_prompting_row(small_data, tmp_path):
    from rightsizer.stages import prompting

    config = config_from_dict(prompting_raw({"shots": [0, 3], "template": "Review: {text}\nAnswer: {label}",
                                             "verbalizer": {"negative": "bad", "neutral": "okay",
                                                            "positive": "good"}}))
    zero = prompting.run(config, small_data, tmp_path / "zero", name="prompt-teacher-0shot")
    three = prompting.run(config, small_data, tmp_path / "three", name="prompt-teacher-3shot")
    for row, shots in ((zero, 0), (three, 3)):
        assert row["kind"] == "prompting" and row["shots"] == shots and row["test_rows"] == 30
        assert 0 <= row["accuracy"] <= 1 and row["trainable_params"] == 0 and row["latency_ms"] > 0
        assert row["verbalizer"] == {"negative": "bad", "neutral": "okay", "positive": "good"}
    assert len(three["shot_ids"]) == 3 and zero["shot_ids"] == []
    saved = json.loads((tmp_path / "three" / "metrics.json").read_text())
    assert saved["name"] == "prompt-teacher-3shot" and np.load(tmp_path / "three" / "scores.npy").shape == (30, 3)
    # the prediction is the argmax of the label scores
    scores = np.load(tmp_path / "zero" / "scores.npy")
    assert np.trace(np.asarray(zero["confusion_matrix"])) == int(round(zero["accuracy"] * 30))
    assert scores.shape == (30, 3)
    with pytest.raises(UserError, match="no prompting row named 'x'"):
        prompting.run(config, small_data, tmp_path / "x", name="x")


def test_cli_missing_verbalizer_label_is_one_line(small_data, tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(prompting_raw({"verbalizer": {"negative": "bad", "positive": "good"}})))
    code = main(["stage", "prompting", "--config", str(path), "--in", str(small_data), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "no word for label(s) neutral" in err[0]
    assert not (tmp_path / "o").exists()


def test_prompting_runs_on_cuda_in_bf16_when_a_gpu_is_present(small_data, tmp_path, monkeypatch):
    """The device query answers as a bf16 GPU would (kept on the CPU here); the row records cuda and bf16 and
    the model really is bf16, at half the fp32 size."""
    import torch

    from rightsizer.models import load_causal_lm
    from rightsizer.stages import prompting

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a, **k: "Fake GPU")
    asked = []

    def load_on_cpu(reference, texts, seed, device=None, precision="fp32"):
        asked.append((device, precision))
        model, tokenizer = load_causal_lm(reference, texts, seed, None, precision)
        assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
        return model, tokenizer

    monkeypatch.setattr(prompting, "load_causal_lm", load_on_cpu)
    config = config_from_dict(prompting_raw({"shots": [0]}))
    row = prompting.run(config, small_data, tmp_path / "bf16")
    assert asked == [("cuda", "bf16")] and (row["device"], row["dtype"]) == ("cuda", "bf16")
    params = row["params"]
    assert row["size_mb"] == pytest.approx(params * 2 / 1e6, abs=1e-3) and 0 <= row["accuracy"] <= 1


def test_prompting_component_writes_its_row_and_kfp_scores(small_data, tmp_path):
    """The KFP component as a task calls it: metrics.json of a prompted decoder teacher, scores for the KFP UI."""
    from kfp import dsl

    from components.prompting import prompting as component
    from conftest import artifact

    config = config_from_dict(prompting_raw({"shots": [0]}))
    metrics, scores = artifact(dsl.Artifact, tmp_path / "prompt"), artifact(dsl.Metrics, tmp_path / "scores")
    component.python_func(config_json=config.to_json(), name="prompt-teacher-0shot",
                          data=artifact(dsl.Dataset, small_data), metrics=metrics, scores=scores)
    row = json.loads((tmp_path / "prompt" / "metrics.json").read_text())
    assert row["name"] == "prompt-teacher-0shot" and row["kind"] == "prompting" and row["test_rows"] == 30
    assert np.trace(np.asarray(row["confusion_matrix"])) == int(round(row["accuracy"] * 30))
    assert scores.metadata == pytest.approx({"accuracy": row["accuracy"], "macro_f1": row["macro_f1"],
                                             "latency_ms": row["latency_ms"], "params": float(row["params"]),
                                             "shots": 0.0})
