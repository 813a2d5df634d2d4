"""Distillation: the loss by hand, cached = online teacher logits, students built from teacher layers,
a student with its own tokenizer, hidden-state matching, multi-teacher weighting, bad input, and the
local pipeline with a student and its data-only control."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
import yaml

from rightsizer.config import config_from_dict
from rightsizer.data import load_prepared, tokenize
from rightsizer.errors import UserError
from rightsizer.models import load_saved, train_tokenizer
from rightsizer.stages import distill, teacher_logits
from rightsizer.train.distill import (
    combine_teachers,
    distillation_loss,
    run_teachers,
    student_from_teacher_layers,
    teacher_weights,
    uniform_layer_map,
)

from conftest import no_dropout, single_thread, tiny_raw
from test_teacher import KillAt

STUDENT = {"max_steps": 60, "learning_rate": 3e-3, "batch_size": 16, "logging_steps": 10}


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: one intra-op thread for tiny models


FIXED = {"targets": "in_sample", "temperature": 2.0, "alpha": 0.5}  # the pinned runs: no fold teachers, no sweep


def student_config(*students, overrides=None, **sections):
    return config_from_dict(tiny_raw(students=[{**FIXED, **s} for s in students], **sections), overrides)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, demo_data, trained_teacher):
    """Teacher bundle with cached logits and the teacher model (a from_teacher_layers student needs it)."""
    out = tmp_path_factory.mktemp("bundle") / "bundle"
    teacher_logits.run(student_config({"name": "s", "from_teacher_layers": [1]}), demo_data, [trained_teacher], out)
    return out


# ---------------------------------------------------------------------------------------------
# the loss


def _softmax(x, t=1.0):
    e = np.exp((x - x.max(-1, keepdims=True)) / t)
    return e / e.sum(-1, keepdims=True)


def test_loss_against_hand_computation_and_its_limits():
    student = np.array([[1.0, -0.5, 0.2], [0.1, 0.3, -1.2]])
    teacher = np.array([[2.0, 0.0, -1.0], [-0.5, 1.5, 0.0]])
    labels = np.array([0, 1])
    temperature, alpha = 3.0, 0.3
    p_t, p_s = _softmax(teacher, temperature), _softmax(student, temperature)
    kl = float(np.mean(np.sum(p_t * (np.log(p_t) - np.log(p_s)), axis=-1)))
    ce = float(np.mean(-np.log(_softmax(student)[np.arange(2), labels])))
    args = (torch.tensor(student), torch.tensor(teacher), torch.tensor(labels), temperature)
    parts = distillation_loss(*args, alpha)
    assert float(parts.kd) == pytest.approx(temperature**2 * kl, rel=1e-5)  # T^2 scaling
    assert float(parts.ce) == pytest.approx(ce, rel=1e-5)
    assert float(parts.loss) == pytest.approx(alpha * temperature**2 * kl + (1 - alpha) * ce, rel=1e-5)
    assert float(distillation_loss(*args, 0.0).loss) == pytest.approx(ce, rel=1e-5)  # data only
    assert float(distillation_loss(*args, 1.0).loss) == pytest.approx(temperature**2 * kl, rel=1e-5)  # teachers only
    # a student that equals its teacher has nothing left to learn from it
    same = distillation_loss(torch.tensor(teacher), torch.tensor(teacher), torch.tensor(labels), temperature, 1.0)
    assert float(same.loss) == pytest.approx(0.0, abs=1e-6)
    # the T^2 factor keeps soft-target gradients at a similar size as T grows
    grads = []
    for t in (2.0, 8.0):
        logits = torch.tensor(student, requires_grad=True)
        distillation_loss(logits, torch.tensor(teacher), torch.tensor(labels), t, 1.0).loss.backward()
        grads.append(float(logits.grad.norm()))
    assert 0.2 < grads[1] / grads[0] < 5


def test_multi_teacher_weighting():
    logits = torch.tensor([[[4.0, 0.0, 0.0], [0.0, 4.0, 0.0]]])  # one example, two teachers that disagree
    mean = combine_teachers(logits, 1.0)
    np.testing.assert_allclose(mean[0, 0], mean[0, 1], rtol=1e-6)
    assert float(mean.sum()) == pytest.approx(1.0)
    weights = teacher_weights([0.9, 0.3], "val_score")
    np.testing.assert_allclose(weights.numpy(), [0.75, 0.25], rtol=1e-6)
    weighted = combine_teachers(logits, 1.0, weights)
    assert float(weighted[0, 0]) > float(weighted[0, 1])
    expected = 0.75 * torch.softmax(logits[0, 0], -1) + 0.25 * torch.softmax(logits[0, 1], -1)
    torch.testing.assert_close(weighted[0], expected)
    np.testing.assert_allclose(teacher_weights([0.9, 0.3], "mean").numpy(), [0.5, 0.5])
    with pytest.raises(UserError, match="val_score"):
        teacher_weights([0.0, 0.0], "val_score")
    assert uniform_layer_map(2, 4) == {0: 1, 1: 3} and uniform_layer_map(3, 3) == {0: 0, 1: 1, 2: 2}


# ---------------------------------------------------------------------------------------------
# cached logits and student construction


def test_cached_logits_equal_online_logits(bundle, demo_data, trained_teacher):
    from transformers import DataCollatorWithPadding

    dataset, _ = load_prepared(demo_data)
    manifest = teacher_logits.read_bundle(bundle, dataset["train"].features["label"].names)
    model, tokenizer = load_saved(trained_teacher / "model")
    batch_rows = dataset["train"].select(range(0, 600, 37))  # mixed lengths -> padding differs from the cache pass
    encoded = tokenize(batch_rows, tokenizer, 64, pair=False).remove_columns(["id", "label", "length"])
    batch = DataCollatorWithPadding(tokenizer)([encoded[i] for i in range(len(encoded))])
    online, _ = run_teachers([model], [dict(batch)])
    cached = teacher_logits.cached_logits(manifest, batch_rows["id"])
    assert cached.shape == (len(batch_rows), 1, 3)
    np.testing.assert_allclose(online.numpy(), cached, atol=1e-4)
    assert manifest["teachers"][0]["model_dir"] and manifest["teacher_pass_s"] > 0


def test_student_from_teacher_layers_copies_weights_exactly(tmp_path, trained_teacher):
    from transformers import AlbertConfig, AutoModelForSequenceClassification

    teacher, _ = load_saved(trained_teacher / "model")
    student, tokenizer = student_from_teacher_layers(trained_teacher / "model", [1])
    assert student.config.num_hidden_layers == 1
    ours, theirs = student.state_dict(), teacher.state_dict()
    for key, value in ours.items():
        source = key.replace("encoder.layer.0.", "encoder.layer.1.")
        torch.testing.assert_close(value, theirs[source], rtol=0, atol=0, msg=key)
    assert any("encoder.layer.0." in k for k in ours) and not any("encoder.layer.1." in k for k in ours)
    student.save_pretrained(tmp_path / "student")
    reloaded, info = AutoModelForSequenceClassification.from_pretrained(tmp_path / "student", output_loading_info=True)
    assert reloaded.config.num_hidden_layers == 1 and not info["missing_keys"] and not info["unexpected_keys"]
    for key, value in reloaded.state_dict().items():
        torch.testing.assert_close(value, ours[key], rtol=0, atol=0, msg=key)
    with pytest.raises(UserError, match="out of range"):
        student_from_teacher_layers(trained_teacher / "model", [0, 2])
    AlbertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                 intermediate_size=32, embedding_size=16).save_pretrained(tmp_path / "albert")
    with pytest.raises(UserError, match="not supported for from_teacher_layers"):
        student_from_teacher_layers(tmp_path / "albert", [0])


def test_a_student_from_the_pretrained_teachers_layers(demo_data, trained_teacher, bundle):
    """``layers_from: pretrained`` copies the layers of the model the teacher starts from (DistilBERT-style), with a
    head for this task's labels, not the trained teacher's."""
    from rightsizer.data import load_prepared
    from rightsizer.models import load_classifier
    from rightsizer.stages.distill import build_student
    from rightsizer.stages.teacher_logits import read_bundle
    from rightsizer.train import training_texts

    config = student_config({"name": "s", "from_teacher_layers": [1], "layers_from": "pretrained"})
    dataset, card = load_prepared(demo_data)
    student, _, described = build_student(config, config.students[0], read_bundle(bundle, card["label_names"]), dataset,
                                          card["label_names"])
    base, _ = load_classifier(config.teachers[0].model, card["label_names"], training_texts(dataset), config.seed)
    trained, _ = load_saved(trained_teacher / "model")
    key = "bert.encoder.layer.{}.attention.self.query.weight"
    ours = student.state_dict()[key.format(0)]
    torch.testing.assert_close(ours, base.state_dict()[key.format(1)], rtol=0, atol=0)
    assert not torch.allclose(ours, trained.state_dict()[key.format(1)])
    assert student.config.num_hidden_layers == 1 and student.config.id2label == trained.config.id2label
    assert "(pretrained) layers [1]" in described


# ---------------------------------------------------------------------------------------------
# training students


def _bpe_student(directory, dataset):
    """A tiny BERT whose tokenizer is byte-level BPE: nothing like the teachers' WordPiece."""
    from transformers import AutoModelForSequenceClassification, BertConfig

    tokenizer = train_tokenizer("bpe", dataset["train"]["text"], 2000)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=128, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    AutoModelForSequenceClassification.from_config(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return tokenizer


def test_student_with_its_own_tokenizer_learns_from_cached_logits(tmp_path, demo_data, trained_teacher, bundle):
    dataset, _ = load_prepared(demo_data)
    bpe = _bpe_student(tmp_path / "bpe", dataset)
    _, teacher_tokenizer = load_saved(trained_teacher / "model")
    assert bpe.get_vocab() != teacher_tokenizer.get_vocab()
    config = student_config({"name": "bpe-student", "model": str(tmp_path / "bpe"), **STUDENT})
    summary = distill.run(config, demo_data, bundle, tmp_path / "student", name="bpe-student")
    metrics = json.loads((tmp_path / "student" / "metrics.json").read_text())
    assert summary["kind"] == "student" and summary["teachers"] == ["teacher"]
    assert summary["teacher_logits"] == "cached" and summary["temperature"] == 2.0 and summary["alpha"] == 0.5
    assert summary["train_time_s"] > 0 and summary["samples_per_s"] > 0
    assert metrics["losses"][-1] < metrics["losses"][0] and metrics["kd_loss"][-1] < metrics["kd_loss"][0]
    # chance is 1/3; this 60-step BPE student lands at 0.50-0.60 depending on CPU float noise and test order
    assert summary["validation"]["accuracy"] > 0.45
    assert list((tmp_path / "student" / "tb").glob("events.out.tfevents.*"))
    model, tokenizer = load_saved(tmp_path / "student" / "model")
    assert tokenizer.get_vocab() == bpe.get_vocab()
    # the data-only control: same student, alpha = 0, no teachers
    control = distill.run(config, demo_data, bundle, tmp_path / "control", name="bpe-student-nodistill")
    assert control["control_of"] == "bpe-student" and control["alpha"] == 0.0 and control["teachers"] == []
    assert control["name"] == "bpe-student-nodistill"
    assert not json.loads((tmp_path / "control" / "metrics.json").read_text())["kd_loss"]
    # online, the teacher reads its own tokenization of each batch; hidden states are matched mean-pooled
    online = student_config({"name": "bpe-student", "model": str(tmp_path / "bpe"), "hidden_weight": 1.0,
                             "max_steps": 4, "logging_steps": 2, "learning_rate": 3e-3})
    assert online.students[0].targets == "in_sample"  # online teachers see each batch: no out-of-fold default
    summary = distill.run(online, demo_data, bundle, tmp_path / "online")
    assert summary["teacher_logits"] == "online" and summary["teacher_tokens"] == {"teacher": "own"}
    assert summary["hidden_matching"] == {"teacher": "pooled"}
    assert len(json.loads((tmp_path / "online" / "metrics.json").read_text())["hidden_loss"]) == 2


@pytest.fixture(scope="module")
def pinned_bundle(tmp_path_factory, demo_data):
    """A bundle from a teacher trained only 4 steps: its logits are the seeded initialisation's up to float noise.

    The session's 120-step teacher amplifies float noise (another thread count or CPU gives it other weights, and
    the pinned student losses moved 6 % with them); 4 steps leave nothing to amplify."""
    from rightsizer.stages import teacher

    with single_thread():
        out = tmp_path_factory.mktemp("pinned-teacher") / "teacher"
        teacher.run(config_from_dict(tiny_raw(), ["teachers.0.max_steps=4"]), demo_data, out)
        bundle = tmp_path_factory.mktemp("pinned-bundle") / "bundle"
        teacher_logits.run(student_config({"name": "s", "from_teacher_layers": [1]}), demo_data, [out], bundle)
    return bundle


# the pinned student: built from the teacher's layer 0, so it shares the teacher's tokenizer: nothing random but the seed
PINNED_STUDENT = {"name": "s", "from_teacher_layers": [0], "max_steps": 8, "logging_steps": 1, "batch_size": 16,
                  "learning_rate": 1e-3}
# its 8 per-step losses and their distillation (KD) term with a checkpoint at step 4, as committed (on the
# 4-step teacher of pinned_bundle, the same on 1 and 2 threads): a change to the schedule, the accumulation, the loss, the
# temperature, the teacher logits or the student's initialisation moves them. The checkpoint's evaluation draws a seed
# from torch's random stream (every DataLoader iterator does), so a run without it has other dropout masks after it.
PINNED_STUDENT_LOSSES = [0.5361629724502563, 0.5532832741737366, 0.5435960292816162, 0.5255638360977173,
                         0.6072708964347839, 0.5899156928062439, 0.5501049160957336, 0.6322565674781799]
PINNED_STUDENT_KD = [0.001136, 0.020925, 0.013343, 0.005707, 0.002595, 0.006292, 0.010351, 0.01452]  # logged at 6 digits


def _metrics(directory):
    return json.loads((directory / "metrics.json").read_text())


def test_pinned_losses_and_gradient_accumulation(tmp_path, demo_data, pinned_bundle):
    """The losses equal the committed ones; batch 16 == batch 8 x 2 accumulation, step by step."""
    distill.run(student_config(PINNED_STUDENT), demo_data, pinned_bundle, tmp_path / "a", checkpoint_steps=4)
    run = _metrics(tmp_path / "a")
    # CPU kernels are not bit-reproducible between runs: equal up to float noise
    np.testing.assert_allclose(run["losses"], PINNED_STUDENT_LOSSES, rtol=2e-3)
    np.testing.assert_allclose(run["kd_loss"], PINNED_STUDENT_KD, rtol=2e-3, atol=2e-6)
    # loss = alpha * kd + (1 - alpha) * ce, step by step
    np.testing.assert_allclose(run["losses"], 0.5 * np.add(run["kd_loss"], run["ce_loss"]), rtol=1e-4)
    # the same 16 rows per optimizer step either way (the length-grouped sampler groups batch x accumulation
    # rows); without dropout, whose masks are drawn per micro-batch, the losses are equal up to float noise
    runs = {}
    for label, extra in (("b16", {}), ("b8x2", {"batch_size": 8, "gradient_accumulation_steps": 2})):
        distill.run(student_config({**PINNED_STUDENT, **extra}), demo_data, pinned_bundle, tmp_path / label,
                    callbacks=[no_dropout()])
        runs[label] = _metrics(tmp_path / label)
    assert len(runs["b16"]["losses"]) == 8
    np.testing.assert_allclose(runs["b8x2"]["losses"], runs["b16"]["losses"], rtol=1e-4)
    np.testing.assert_allclose(runs["b8x2"]["kd_loss"], runs["b16"]["kd_loss"], rtol=1e-4)


def test_killed_distillation_resumes_to_the_same_result(tmp_path, demo_data, pinned_bundle):
    """Killed after step 6, resumed from checkpoint-4: the committed per-step losses, before and after the kill."""
    config = student_config(PINNED_STUDENT)
    distill.run(config, demo_data, pinned_bundle, tmp_path / "whole", checkpoint_steps=4)
    with pytest.raises(KeyboardInterrupt):
        distill.run(config, demo_data, pinned_bundle, tmp_path / "resumed", checkpoint_steps=4, callbacks=[KillAt(6)])
    assert not (tmp_path / "resumed").exists()
    resumed = distill.run(config, demo_data, pinned_bundle, tmp_path / "resumed", checkpoint_steps=4)
    assert resumed["resumed_from"].endswith("checkpoint-4")
    whole, again = _metrics(tmp_path / "whole"), _metrics(tmp_path / "resumed")
    for run in (whole, again):
        np.testing.assert_allclose(run["losses"], PINNED_STUDENT_LOSSES, rtol=2e-3)
        np.testing.assert_allclose(run["kd_loss"], PINNED_STUDENT_KD, rtol=2e-3, atol=2e-6)


def test_hidden_state_matching_with_projection(tmp_path, demo_data, trained_teacher, bundle):
    from safetensors import safe_open
    from transformers import AutoModelForSequenceClassification, BertConfig

    _, tokenizer = load_saved(trained_teacher / "model")
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=128, pad_token_id=tokenizer.pad_token_id)  # teacher: hidden 128, 2 layers
    AutoModelForSequenceClassification.from_config(config).save_pretrained(tmp_path / "narrow")
    tokenizer.save_pretrained(tmp_path / "narrow")
    student = {"name": "narrow", "model": str(tmp_path / "narrow"), "hidden_weight": 1.0, "max_steps": 8,
               "logging_steps": 2, "learning_rate": 3e-3}
    summary = distill.run(student_config(student), demo_data, bundle, tmp_path / "out")
    assert summary["teacher_logits"] == "online" and summary["layer_maps"] == {"teacher": {"0": 1}}
    assert summary["teacher_tokens"] == {"teacher": "student's"} and summary["hidden_matching"] == {"teacher": "tokens"}
    hidden = json.loads((tmp_path / "out" / "metrics.json").read_text())["hidden_loss"]
    assert len(hidden) == 4 and hidden[-1] < hidden[0]
    with safe_open(str(tmp_path / "out" / "model" / "model.safetensors"), "pt") as saved:
        assert not [k for k in saved.keys() if "distill_projections" in k]  # projection dropped at save
    reloaded, info = AutoModelForSequenceClassification.from_pretrained(tmp_path / "out" / "model", output_loading_info=True)
    assert not info["unexpected_keys"] and not info["missing_keys"] and reloaded.config.hidden_size == 64
    # a layer_map naming a layer the teacher lacks: one clear error, nothing left behind
    bad = student_config({**student, "layer_map": {0: 5}})
    with pytest.raises(UserError, match="teacher layer 5 but teacher 'teacher' has 2 layers"):
        distill.run(bad, demo_data, bundle, tmp_path / "bad")
    assert not (tmp_path / "bad").exists() and not (tmp_path / ".bad.partial").exists()


def test_val_score_weighting_across_two_teachers(tmp_path, demo_data, trained_teacher):
    second = tmp_path / "teacher-b"
    shutil.copytree(trained_teacher, second)
    summary = json.loads((second / "summary.json").read_text())
    first_score = summary["validation"]["macro_f1"]
    summary["name"], summary["validation"]["macro_f1"] = "teacher-b", first_score / 2
    (second / "summary.json").write_text(json.dumps(summary))
    teachers = tiny_raw()["teachers"] + [{**tiny_raw()["teachers"][0], "name": "teacher-b"}]
    config = student_config({"name": "s", "model": "tiny-bert-2l", "teacher_weighting": "val_score", "max_steps": 2},
                            teachers=teachers)
    teacher_logits.run(config, demo_data, [second, trained_teacher], tmp_path / "bundle")
    manifest = json.loads((tmp_path / "bundle" / "teachers.json").read_text())
    assert [t["name"] for t in manifest["teachers"]] == ["teacher", "teacher-b"]  # config order
    result = distill.run(config, demo_data, tmp_path / "bundle", tmp_path / "s")
    assert result["teachers"] == ["teacher", "teacher-b"]
    np.testing.assert_allclose(result["teacher_weights"], [2 / 3, 1 / 3], rtol=1e-4)


# ---------------------------------------------------------------------------------------------
# bad input


@pytest.mark.parametrize("raw, message", [
    ({"teachers": [], "students": [{"name": "s", "model": "tiny-bert-2l"}]}, "no teachers to distil from"),
    ({"students": [{"name": "s", "model": "tiny-bert-2l", "temperature": 0}]}, "temperature"),
    ({"students": [{"name": "s", "model": "tiny-bert-2l", "alpha": 1.5}]}, "alpha"),
    ({"students": [{"name": "s", "model": "tiny-bert-2l", "alpha": -0.1}]}, "alpha"),
    ({"students": [{"name": "s", "from_teacher_layers": [-1]}]}, "layer indices >= 0"),
    ({"students": [{"name": "s", "model": "tiny-bert-2l", "layers_from": "pretrained"}]}, "layers_from only matters"),
    ({"students": [{"name": "s", "from_teacher_layers": [0], "layers_from": "fine-tuned"}]}, "layers_from"),
    ({"students": [{"name": "s", "model": "tiny-bert-2l", "layer_map": {0: 1}}]}, "set hidden_weight > 0"),
    ({"students": [{"name": "s", "model": "tiny-bert-2l", "hidden_weight": 1, "teacher_logits": "cached"}]},
     "teacher_logits: online"),
    ({"students": [{"name": "s", "model": "tiny-bert-4l"}]}, "student 's' has 4 layers but teacher 'teacher' has 2"),
    ({"students": [{"name": "s", "from_teacher_layers": [0, 1, 1]}]}, "must not be deeper than its teachers"),
    ({"students": [{"name": "s", "model": "tiny-bert-2l", "hidden_weight": 1, "targets": "out_of_fold"}]},
     "set targets: in_sample"),
    ({"students": [{"name": "s", "model": "tiny-bert-2l", "augment": {"method": "swap"}}]}, "copies >= 1"),
    ({"students": [{"name": "s", "model": "tiny-bert-2l", "temperature": "hot"}]}, "temperature"),
    ({"students": [{"name": "a", "model": "tiny-bert-2l", "folds": 3}, {"name": "b", "model": "tiny-bert-2l"}]},
     "different numbers of folds"),
])
def test_bad_config_is_one_clear_error(raw, message):
    with pytest.raises(UserError, match=message):
        config_from_dict(tiny_raw(**raw))


def test_bad_teachers_and_layers_fail_before_training(tmp_path, demo_data, trained_teacher, bundle):
    relabelled = tmp_path / "relabelled"
    shutil.copytree(trained_teacher, relabelled)
    model_config = json.loads((relabelled / "model" / "config.json").read_text())
    model_config["id2label"] = {"0": "bad", "1": "good", "2": "ugly"}
    (relabelled / "model" / "config.json").write_text(json.dumps(model_config))
    config = student_config({"name": "s", "model": "tiny-bert-2l"})
    with pytest.raises(UserError, match="must share one label set"):
        teacher_logits.run(config, demo_data, [relabelled], tmp_path / "bundle")
    assert not (tmp_path / "bundle").exists()
    too_deep = student_config({"name": "s", "from_teacher_layers": [0, 7]})
    with pytest.raises(UserError, match="index 7 is out of range"):
        distill.run(too_deep, demo_data, bundle, tmp_path / "deep")
    assert not (tmp_path / "deep").exists()
    with pytest.raises(UserError, match="no student named 'x'"):
        distill.run(config, demo_data, bundle, tmp_path / "x", name="x")


def test_cli_stage_error_is_one_line_exit_2(tmp_path, demo_data, bundle, capsys):
    from rightsizer.cli import main

    raw = tiny_raw(students=[{"name": "s", "model": "tiny-bert-2l", "hidden_weight": 1.0, "layer_map": {3: 0}}])
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(raw))
    code = main(["stage", "distill", "--config", str(tmp_path / "c.yaml"), "--in", str(demo_data), "--in", str(bundle),
                 "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: ") and "student layer 3" in err[0]
    assert not (tmp_path / "out").exists() and not (tmp_path / ".out.partial").exists()


# ---------------------------------------------------------------------------------------------
# the pipeline


@pytest.mark.slow
def test_local_pipeline_with_a_student_and_its_control(tmp_path, monkeypatch):
    from rightsizer.cli import main

    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the tasks run as subprocesses

    raw = tiny_raw(students=[{"name": "student-2l", "model": "tiny-bert-2l", "max_steps": 8, "folds": 2}])
    raw["data"].update({"max_train_samples": 300, "max_eval_samples": 100})
    raw["teachers"][0]["max_steps"] = 5
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(raw))
    assert main(["run", str(tmp_path / "c.yaml"), "--output", str(tmp_path / "out")]) == 0
    board = json.loads((tmp_path / "out" / "leaderboard.json").read_text())
    kinds = {c["name"]: c["kind"] for c in board["candidates"]}
    assert kinds == {"teacher": "teacher", "student-2l": "student", "student-2l-nodistill": "student",
                     "majority-baseline": "baseline"}
    rows = {r["name"]: r for r in json.loads((tmp_path / "out" / "candidates.json").read_text())}
    assert rows["student-2l"]["teachers"] == ["teacher"] and rows["student-2l-nodistill"]["control_of"] == "student-2l"
    summaries = [json.loads(p.read_text()) for p in (tmp_path / "out" / "stages").rglob("summary.json")]
    assert {s["stage"] for s in summaries} >= {"teacher", "fold-teacher", "teacher-logits", "distill", "evaluate"}
    folds = sorted(s["fold"] for s in summaries if s["stage"] == "fold-teacher")
    assert folds == [0, 1]  # out-of-fold targets by default: two fold-teacher tasks
    student = next(s for s in summaries if s["stage"] == "distill" and s["name"] == "student-2l")
    assert student["targets"] == "out_of_fold" and len(student["sweep"]) == 6


def test_distill_component_trains_a_student_from_the_bundle(tmp_path, demo_data, bundle):
    """The KFP component as a task calls it: a student from the teachers' bundle, its model and metadata."""
    from kfp import dsl

    from components.distill import distill as component
    from conftest import artifact

    config = student_config({"name": "s", "from_teacher_layers": [1], "max_steps": 4, "logging_steps": 1,
                             "learning_rate": 3e-3, "batch_size": 16})
    model = artifact(dsl.Model, tmp_path / "student")
    component.python_func(config_json=config.to_json(), name="s", data=artifact(dsl.Dataset, demo_data),
                          teachers=artifact(dsl.Artifact, bundle), model=model)
    summary = json.loads((tmp_path / "student" / "summary.json").read_text())
    metrics = json.loads((tmp_path / "student" / "metrics.json").read_text())
    assert summary["kind"] == "student" and summary["teacher_logits"] == "cached" and len(metrics["kd_loss"]) == 4
    assert model.metadata == {"name": "s", "kind": "student", "params": summary["params"],
                              "train_time_s": summary["train_time_s"], "teachers": ["teacher"], "alpha": 0.5,
                              "control_of": ""}
    student, _ = load_saved(tmp_path / "student" / "model")
    assert student.config.num_hidden_layers == 1 and sum(p.numel() for p in student.parameters()) == summary["params"]


def test_a_seed_changes_the_run_and_the_first_seed_is_the_default(tmp_path, demo_data, bundle):
    """seeds: [s1, s2]: with no seed the stage trains with s1, the pinned run's seed when s1 is the run's seed;
    --seed s2 gives another run (its losses differ) and says so in its summary."""
    steps = {**PINNED_STUDENT, "max_steps": 3}
    config = student_config({**steps, "seeds": [7, 11]})  # 7: tiny_raw's seed, which the pinned run uses
    first = distill.run(config, demo_data, bundle, tmp_path / "first", callbacks=[no_dropout()])
    other = distill.run(config, demo_data, bundle, tmp_path / "other", seed=11, callbacks=[no_dropout()])
    plain = distill.run(student_config(steps), demo_data, bundle, tmp_path / "plain", callbacks=[no_dropout()])
    assert (first["seed"], other["seed"], plain["seed"]) == (7, 11, 7)
    np.testing.assert_allclose(_metrics(tmp_path / "first")["losses"], _metrics(tmp_path / "plain")["losses"], rtol=1e-4)
    assert not np.allclose(_metrics(tmp_path / "other")["losses"], _metrics(tmp_path / "first")["losses"], rtol=1e-3)
