"""What the student learns from: out-of-fold targets (checked by ids), the transfer set, the temperature sweep,
normalised hidden-state matching through a learned projection, bundle fingerprints, and a control that never
sees a soft target."""

from __future__ import annotations

import json
import random

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from rightsizer.config import config_from_dict
from rightsizer.data import load_prepared
from rightsizer.errors import UserError
from rightsizer.inference import predict_logits
from rightsizer.models import load_saved
from rightsizer.stages import distill, fold_teacher, prepare, teacher_logits
from rightsizer.train.distill import distillation_loss, hidden_projections, hidden_state_loss, standardise
from rightsizer.train.transfer import MaskedLMAugmenter, fold_assignment, swap_words

from conftest import tiny_raw

FAST = {"max_steps": 12, "learning_rate": 3e-3, "batch_size": 16, "logging_steps": 4}


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: one intra-op thread for tiny models


def config_with(*students, teacher_steps=None, **data):
    raw = tiny_raw(students=list(students))
    raw["data"].update(data)
    if teacher_steps:
        raw["teachers"][0]["max_steps"] = teacher_steps
    return config_from_dict(raw)


@pytest.fixture(scope="module")
def oof(tmp_path_factory, demo_data, trained_teacher):
    """Two fold teachers (15 steps each) and the bundle stitched from them."""
    root = tmp_path_factory.mktemp("oof")
    config = config_with({"name": "s", "model": "tiny-bert-2l", "folds": 2, "temperature": 2.0, "alpha": 0.5, **FAST},
                         teacher_steps=15)
    folds = [root / f"fold{k}" for k in range(2)]
    summaries = [fold_teacher.run(config, demo_data, folds[k], name="teacher", fold=k) for k in range(2)]
    teacher_logits.run(config, demo_data, [trained_teacher, *folds], root / "bundle")
    return config, folds, summaries, root / "bundle"


def test_out_of_fold_targets_come_from_fold_teachers_that_never_saw_the_row(oof, demo_data, trained_teacher):
    from safetensors.numpy import load_file

    config, folds, summaries, bundle_dir = oof
    dataset, card = load_prepared(demo_data)
    train_ids = set(map(int, dataset["train"]["id"]))
    assert all(s["kind"] == "fold-teacher" and s["train_time_s"] > 0 for s in summaries)
    bundle = teacher_logits.read_bundle(bundle_dir, card["label_names"], dataset["train"])
    assert bundle["out_of_fold"] and bundle["folds"] == 2 and bundle["fold_teachers_train_s"]["teacher"] > 0
    predicted = set()
    for directory in folds:
        stored = load_file(str(directory / fold_teacher.OOF_FILE))
        held, trained = set(map(int, stored["ids"])), set(map(int, stored["trained_ids"]))
        assert held and trained and not held & trained and held | trained == train_ids
        assert not held & predicted  # each row predicted by exactly one fold teacher
        predicted |= held
        # the bundle's target for each of these rows is this fold teacher's logits
        np.testing.assert_allclose(teacher_logits.cached_logits(bundle, stored["ids"], out_of_fold=True)[:, 0],
                                   stored["logits"], rtol=0, atol=0)
    assert predicted == train_ids
    in_sample = teacher_logits.cached_logits(bundle, dataset["train"]["id"])
    out_of_fold = teacher_logits.cached_logits(bundle, dataset["train"]["id"], out_of_fold=True)
    assert not np.allclose(in_sample, out_of_fold)
    # the folds are stratified: every class in every fold
    assignment = fold_assignment(dataset["train"]["label"], 2, config.seed)
    labels = np.asarray(dataset["train"]["label"])
    assert all(len(set(labels[assignment == k])) == 3 for k in range(2))
    # a missing fold teacher is one clear error, before anything is written
    with pytest.raises(UserError, match=r"fold\(s\) 1 missing"):
        teacher_logits.run(config, demo_data, [trained_teacher, folds[0]],
                           bundle_dir.parent / "partial")
    assert not (bundle_dir.parent / "partial").exists()


def test_student_trains_on_out_of_fold_targets(oof, demo_data, tmp_path):
    config, _, _, bundle_dir = oof
    config = config.model_copy(update={"students": [config.students[0].model_copy(update={"max_steps": 60})]})
    summary = distill.run(config, demo_data, bundle_dir, tmp_path / "s", name="s")
    assert summary["targets"] == "out_of_fold" and summary["sweep"] is None
    assert summary["validation"]["accuracy"] > 0.4  # chance is 1/3


@pytest.fixture(scope="module")
def with_unlabeled(tmp_path_factory, demo_data):
    """The demo data again, plus 40 unlabeled demo texts that are in none of its splits."""
    from rightsizer.builtin_data import BUILTIN

    root = tmp_path_factory.mktemp("unlabeled")
    dataset, _ = load_prepared(demo_data)
    used = {t for split in dataset.values() for t in split["text"]}
    column = BUILTIN["demo"]["text_column"]
    spare = [r[column] for r in BUILTIN["demo"]["rows"]() if r[column] not in used][:40]
    pd.DataFrame({"text": spare + [dataset["test"]["text"][0]]}).to_csv(root / "more.csv", index=False)
    student = {"name": "s", "model": "tiny-bert-2l", "targets": "in_sample", "temperature": 2.0, "alpha": 0.5,
               "augment": {"method": "swap", "copies": 1}, **FAST}
    config = config_with(student, unlabeled_source=str(root / "more.csv"))
    summary = prepare.run(config, root / "data")
    return config, root / "data", summary


def test_transfer_set_is_labelled_by_the_teacher_and_reaches_the_student(with_unlabeled, trained_teacher, tmp_path,
                                                                        monkeypatch):
    config, data_dir, prepared = with_unlabeled
    assert prepared["unlabeled"]["rows"] == 40 and prepared["unlabeled"]["dropped_in_labelled_data"] == 1  # no test text
    teacher_logits.run(config, data_dir, [trained_teacher], tmp_path / "bundle")
    dataset, card = load_prepared(data_dir)
    bundle = teacher_logits.read_bundle(tmp_path / "bundle", card["label_names"], dataset["train"])
    from rightsizer.data import load_unlabeled

    rows, entry = teacher_logits.transfer_set(bundle, config.students[0].augment, load_unlabeled(data_dir))
    assert len(rows) == 40 + 600 and entry["unlabeled_rows"] == 40 and entry["augmented_rows"] == 600
    assert sorted(set(rows["label"][:40])) == [-100] and rows["label"][40:] == dataset["train"]["label"]
    assert rows["text"][40:] != dataset["train"]["text"]  # altered copies
    model, tokenizer = load_saved(trained_teacher / "model")
    expected, _, _ = predict_logits(model, tokenizer, rows, config.data.max_length)
    np.testing.assert_allclose(np.asarray(rows["teacher_logits"])[:, 0], expected, atol=1e-4)  # the teacher's labels

    seen = {}
    real = distill.fine_tune

    def spy(model, tokenizer, dataset, options, **kwargs):
        seen[kwargs["trainer_cls"].__name__ if kwargs.get("trainer_cls") else "Trainer"] = kwargs["tokenized"]["train"]
        return real(model, tokenizer, dataset, options, **kwargs)

    monkeypatch.setattr(distill, "fine_tune", spy)
    student = distill.run(config, data_dir, tmp_path / "bundle", tmp_path / "s", name="s")
    train = seen["DistillationTrainer"]
    assert len(train) == 600 + 640 and student["train_rows"] == 1240 and student["transfer"]["rows"] == 640
    assert "teacher_logits" in train.column_names and sum(1 for label in train["label"] if label == -100) == 40
    metrics = json.loads((tmp_path / "s" / "metrics.json").read_text())
    assert len(metrics["kd_loss"]) == 3 and min(metrics["kd_loss"]) > 0
    # the control: the same labelled rows and the augmented copies with their own labels, never a soft target
    control = distill.run(config, data_dir, tmp_path / "bundle", tmp_path / "c", name="s-nodistill")
    train = seen["Trainer"]
    assert "teacher_logits" not in train.column_names and -100 not in set(train["label"])
    assert len(train) == 1200 and control["soft_targets"] is False and control["teachers"] == []
    assert control["transfer"]["given"] == "augmented copies with their original labels"
    assert not json.loads((tmp_path / "c" / "metrics.json").read_text())["kd_loss"]


def test_out_of_fold_students_copies_are_labelled_by_the_fold_teacher_that_held_their_row_out(
        with_unlabeled, oof, demo_data, trained_teacher, tmp_path):
    """An augmented copy of training row i gets the soft target of the fold teacher that never saw row i (checked by
    ids and against that fold teacher run on the copy directly); unlabeled text keeps the full-data teacher's; an
    in-sample student in the same bundle keeps the full-data teacher's targets on everything."""
    from safetensors.numpy import load_file

    from rightsizer.data import load_unlabeled
    from rightsizer.train.transfer import transfer_key

    config, data_dir, _ = with_unlabeled
    in_sample = config.students[0]
    student = in_sample.model_copy(update={"name": "o", "targets": "out_of_fold", "folds": 2})
    config = config.model_copy(update={"students": [in_sample, student],
                                       "teachers": [config.teachers[0].model_copy(update={"max_steps": 15})]})
    # fold teachers that kept no model (made before, or for a student without augmentation) are refused up front
    with pytest.raises(UserError, match="kept no model"):
        teacher_logits.run(config.model_copy(update={"students": [student]}), demo_data,
                           [trained_teacher, *oof[1]], tmp_path / "refused")
    folds = [tmp_path / f"fold{k}" for k in range(2)]
    assert all(fold_teacher.run(config, data_dir, folds[k], name="teacher", fold=k)["model_kept"] for k in range(2))
    summary = teacher_logits.run(config, data_dir, [trained_teacher, *folds], tmp_path / "bundle")
    dataset, card = load_prepared(data_dir)
    unlabeled = load_unlabeled(data_dir)
    oof_key, teacher_key = (transfer_key(in_sample.augment, True, "out_of_fold"), transfer_key(in_sample.augment, True))
    assert summary["transfer_labels"] == {teacher_key: {"augmented": "teacher", "unlabeled": "teacher"},
                                          oof_key: {"augmented": "out_of_fold", "unlabeled": "teacher"}}
    assert summary["transfer_labelling_s"][oof_key] > 0
    bundle = teacher_logits.read_bundle(tmp_path / "bundle", card["label_names"], dataset["train"])
    rows, entry = teacher_logits.transfer_set(bundle, student.augment, unlabeled, "out_of_fold")
    assert entry["augmented_rows"] == 600 and entry["unlabeled_rows"] == 40 and bundle["fold_teacher_pass_s"] > 0
    targets, origin = np.asarray(rows["teacher_logits"])[:, 0], np.asarray(rows["origin_id"])
    model, tokenizer = load_saved(trained_teacher / "model")
    full, _, _ = predict_logits(model, tokenizer, rows, config.data.max_length)
    np.testing.assert_allclose(targets[origin < 0], full[origin < 0], atol=1e-4)  # unlabeled: the full teacher
    labelled = np.zeros(len(rows), dtype=bool)
    for directory in folds:
        stored = load_file(str(directory / fold_teacher.OOF_FILE))
        mine = np.flatnonzero(np.isin(origin, stored["ids"]))
        assert len(mine) and not set(origin[mine].tolist()) & set(stored["trained_ids"].tolist())  # never saw the source
        fold_model, fold_tokenizer = load_saved(directory / "model")
        direct, _, _ = predict_logits(fold_model, fold_tokenizer, rows.select(mine), config.data.max_length)
        np.testing.assert_allclose(targets[mine], direct, atol=1e-4)
        labelled[mine] = True
    assert labelled[origin >= 0].all() and not labelled[origin < 0].any()
    copies = origin >= 0
    assert np.abs(full[copies] - targets[copies]).max() > 0.1  # not the full-data teacher's targets
    # the in-sample student's set: the same texts, every row labelled by the full-data teacher (as before)
    same, _ = teacher_logits.transfer_set(bundle, in_sample.augment, unlabeled)
    assert same["text"] == rows["text"] and same["origin_id"] == rows["origin_id"]
    np.testing.assert_allclose(np.asarray(same["teacher_logits"])[:, 0], full, atol=1e-4)
    # a bundle whose copies were labelled the old way is not read for an out-of-fold student
    old = {**bundle, "transfer": {teacher_key: bundle["transfer"][teacher_key]}}
    with pytest.raises(UserError, match="copies labelled by the fold teachers"):
        teacher_logits.transfer_set(old, student.augment, unlabeled, "out_of_fold")


def test_unlabeled_rows_get_only_the_kd_term():
    student, teacher = torch.randn(4, 3), torch.randn(4, 3)
    parts = distillation_loss(student, teacher, torch.tensor([-100, -100, -100, -100]), 2.0, 0.5)
    # alpha weighs a labelled row's two targets; a transfer row has one, at full weight
    assert float(parts.ce) == 0.0 and float(parts.kd) > 0 and float(parts.loss) == pytest.approx(float(parts.kd))
    labels = torch.tensor([0, -100, 2, -100])
    mixed = distillation_loss(student, teacher, labels, 2.0, 0.3)
    only = torch.nn.functional.cross_entropy(student[[0, 2]], torch.tensor([0, 2]))
    assert float(mixed.ce) == pytest.approx(float(only))
    kd_rows = [float(distillation_loss(student[[i]], teacher[[i]], labels[[i]].clamp(min=0), 2.0, 1.0).loss)
               for i in range(4)]
    ce_rows = torch.nn.functional.cross_entropy(student, labels.clamp(min=0), reduction="none")
    expected = (0.3 * kd_rows[0] + 0.7 * float(ce_rows[0]) + kd_rows[1] + 0.3 * kd_rows[2] + 0.7 * float(ce_rows[2])
                + kd_rows[3]) / 4
    assert float(mixed.loss) == pytest.approx(expected, rel=1e-5)
    assert float(mixed.kd) == pytest.approx(sum(kd_rows) / 4, rel=1e-5)


def test_temperature_sweep_picks_the_clear_winner(tmp_path, demo_data, trained_teacher, monkeypatch):
    """A confidently wrong teacher: at T=4 the T^2-scaled KD term outweighs the labels, at T=0.05 it is
    negligible (its gradient scales with T), so only T=0.05 keeps the task a student made of the trained teacher's
    layers starts with; the sweep must see that on validation and train the student with it."""
    from safetensors.numpy import load_file, save_file

    config = config_with({"name": "s", "from_teacher_layers": [0, 1], "targets": "in_sample", "temperature": "auto",
                          "alpha": 0.5, "epochs": 2.0, "sweep_epochs": 1.0, "learning_rate": 1e-3, "batch_size": 16,
                          "logging_steps": 20})
    teacher_logits.run(config, demo_data, [trained_teacher], tmp_path / "bundle")
    path = tmp_path / "bundle" / teacher_logits.LOGITS_FILE
    stored = load_file(str(path))
    dataset, _ = load_prepared(demo_data)
    label_of = dict(zip(dataset["train"]["id"], dataset["train"]["label"]))
    wrong = np.zeros_like(stored["logits"])
    for row, i in enumerate(stored["ids"]):
        wrong[row, 0, (label_of[int(i)] + 1) % 3] = 8.0
    save_file({**stored, "logits": wrong}, str(path))
    monkeypatch.setattr(distill, "TEMPERATURE_GRID", (4.0, 0.05))
    summary = distill.run(config, demo_data, tmp_path / "bundle", tmp_path / "s")
    scores = {row["temperature"]: row["val_macro_f1"] for row in summary["sweep"]}
    assert set(scores) == {4.0, 0.05} and scores[0.05] > scores[4.0] + 0.15
    assert summary["temperature"] == 0.05 and summary["alpha"] == 0.5 and summary["temperature_setting"] == "auto"
    assert summary["sweep_time_s"] > 0 and summary["validation"]["macro_f1"] > scores[4.0]
    assert not (tmp_path / "s" / "sweep").exists()


def test_hidden_loss_is_invariant_to_teacher_scale_and_its_projection_is_learned():
    torch.manual_seed(0)
    student = [torch.randn(3, 5, 8) for _ in range(2)]
    teacher = [torch.randn(3, 5, 8) * torch.tensor([100.0, 1, 1, 1, 1, 1, 1, 0.1]) for _ in range(2)]
    mask = torch.ones(3, 5, dtype=torch.long)
    mask[0, 3:] = 0
    projection = hidden_projections(8, [8], seed=0)[0]
    assert isinstance(projection, torch.nn.Linear)  # learned even when the sizes agree, starting at the identity
    torch.testing.assert_close(projection.weight, torch.eye(8))
    base = hidden_state_loss(student, teacher, {0: 0}, projection, mask)
    scale = torch.rand(8) * 50 + 0.1
    scaled = [t * scale + 3.0 for t in teacher]
    torch.testing.assert_close(hidden_state_loss(student, scaled, {0: 0}, projection, mask), base, rtol=1e-4, atol=1e-5)
    pooled = hidden_state_loss(student, teacher, {0: 0}, projection, mask, mask)
    torch.testing.assert_close(hidden_state_loss(student, scaled, {0: 0}, projection, mask, mask), pooled,
                               rtol=1e-4, atol=1e-5)
    # one large dimension no longer dominates: each dimension is standardised over the real tokens
    normed = standardise(teacher[1], mask)
    real = mask.bool()
    assert torch.allclose(normed[real].std(0, unbiased=False), torch.ones(8), atol=1e-3)
    # the projection learns: a few steps on the loss move it off the identity and lower the loss
    target = [t @ torch.randn(8, 8) for t in student]
    optimizer = torch.optim.Adam(projection.parameters(), lr=0.05)
    first = None
    for _ in range(30):
        loss = hidden_state_loss(student, target, {0: 0}, projection, mask)
        first = float(loss) if first is None else first
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert float(loss) < first / 2 and not torch.allclose(projection.weight, torch.eye(8))


def test_projection_is_trained_with_the_student(tmp_path, demo_data, trained_teacher):
    from transformers import TrainerCallback

    class Capture(TrainerCallback):
        def on_train_end(self, args, state, control, model=None, **kwargs):
            self.weight = model.distill_projections[0].weight.detach().clone()

    capture = Capture()
    config = config_with({"name": "s", "from_teacher_layers": [0], "hidden_weight": 1.0, "temperature": 2.0,
                          "alpha": 0.5, "max_steps": 4, "logging_steps": 2, "learning_rate": 1e-2})
    bundle = tmp_path / "bundle"
    teacher_logits.run(config, demo_data, [trained_teacher], bundle)
    distill.run(config, demo_data, bundle, tmp_path / "s", callbacks=[capture])
    assert capture.weight.shape == (128, 128) and not torch.allclose(capture.weight, torch.eye(128))


def test_bundle_from_other_data_is_refused_exit_2(tmp_path, demo_data, trained_teacher, capsys):
    from rightsizer.cli import main

    config = config_with({"name": "s", "model": "tiny-bert-2l", "targets": "in_sample", "temperature": 2.0,
                          "alpha": 0.5, **FAST}, max_train_samples=500)
    prepare.run(config, tmp_path / "other")
    teacher_logits.run(config, tmp_path / "other", [trained_teacher], tmp_path / "bundle")
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(json.loads(config.to_json())))
    capsys.readouterr()  # what the stages above printed
    code = main(["stage", "distill", "--config", str(tmp_path / "c.yaml"), "--in", str(demo_data),
                 "--in", str(tmp_path / "bundle"), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: ") and "other training data" in err[0]
    assert not (tmp_path / "out").exists()


def test_augmenters_change_words_and_keep_the_rest(tmp_path, trained_teacher):
    from transformers import BertConfig, BertForMaskedLM

    rng = random.Random(0)
    text = "the service was quick and the food was great"
    swapped = swap_words(text, rng, 0.2)
    assert swapped != text and set(swapped.split()) <= set(text.split())
    _, tokenizer = load_saved(trained_teacher / "model")
    model, _ = load_saved(trained_teacher / "model")
    neighbours = MaskedLMAugmenter(tokenizer, embeddings=model.get_input_embeddings().weight)
    changed = neighbours.augment([text] * 5, random.Random(1), 0.3)
    assert all(len(c.split()) == len(text.split()) for c in changed) and any(c != text for c in changed)
    torch.manual_seed(0)
    masked_lm = BertForMaskedLM(BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1,
                                           num_attention_heads=2, intermediate_size=64))
    filled = MaskedLMAugmenter(tokenizer, model=masked_lm.eval()).augment([text], random.Random(2), 0.3)[0]
    words, original = filled.split(), text.split()
    assert len(words) == len(original) and 1 <= sum(a != b for a, b in zip(words, original)) <= 3
