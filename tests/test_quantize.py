"""Quantized candidates: every CPU method agrees with its float32 source, sizes are real files, the
forms reload with one line, ONNX export works for a sliced model and a distilled student, the
pipeline places quantize tasks after their sources, and bad input fails before any training."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import tiny_raw

from rightsizer.cli import main
from rightsizer.data import load_prepared
from rightsizer.errors import UserError
from rightsizer.inference import predict_logits
from rightsizer.models import load_saved
from rightsizer.stages import evaluate, quantize, report

CPU_METHODS = ("dynamic_int8", "onnx_fp32", "onnx_int8", "static_int8")


def _agreement(model_a, tok_a, model_b, tok_b, split) -> float:
    a, _, _ = predict_logits(model_a, tok_a, split, 64, 32)
    b, _, _ = predict_logits(model_b, tok_b, split, 64, 32)
    return float((a.argmax(-1) == b.argmax(-1)).mean())


@pytest.fixture(scope="module")
def quantized_teacher(tmp_path_factory, demo_data, trained_teacher):
    """The tiny teacher in every CPU form (one stage call: the ONNX export is made once), then evaluated."""
    from rightsizer.config import config_from_dict
    config = config_from_dict(tiny_raw(quantize=[{"of": "teacher", "method": m, "calibration_samples": 32}
                                                 for m in CPU_METHODS]))
    out = tmp_path_factory.mktemp("quantize")
    summary = quantize.run(config, demo_data, trained_teacher, out / "forms")
    rows = evaluate.run(config, demo_data, out / "forms", out / "metrics")
    return config, out, summary, rows


def test_every_cpu_method_predicts_like_its_source(quantized_teacher, demo_data, trained_teacher):
    _, out, summary, rows = quantized_teacher
    names = ["teacher-int8", "teacher-onnx", "teacher-onnx-int8", "teacher-onnx-static-int8"]
    assert summary["source"] == "teacher" and summary["candidates"] == names
    test = load_prepared(demo_data)[0]["test"]
    source, source_tokenizer = load_saved(trained_teacher / "model")
    for name in names:
        model, tokenizer = load_saved(out / "forms" / name / "model")  # the one-liner: rightsizer.quantize.load_quantized
        assert _agreement(source, source_tokenizer, model, tokenizer, test) >= 0.95, name
    by_name = {row["name"]: row for row in rows["candidates"]}
    assert list(by_name) == names
    for row in by_name.values():
        assert row["kind"] == "quantized" and row["source"] == "teacher" and row["test_rows"] == 90
        assert row["params"] > 100_000 and row["trainable_params"] == 0 and row["latency_ms"] > 0
    assert by_name["teacher-int8"]["dtype"] == "int8" and by_name["teacher-onnx"]["dtype"] == "fp32"


def test_sizes_are_the_real_files(quantized_teacher, trained_teacher):
    _, out, _, rows = quantized_teacher
    files = {"teacher-int8": "model_int8.pt", "teacher-onnx": "model.onnx", "teacher-onnx-int8": "model.onnx",
             "teacher-onnx-static-int8": "model.onnx"}
    sizes = {row["name"]: row["size_mb"] for row in rows["candidates"]}
    for name, file in files.items():
        on_disk = (out / "forms" / name / "model" / file).stat().st_size / 1e6
        assert sizes[name] == pytest.approx(on_disk, abs=0.001), name
    fp32 = (trained_teacher / "model" / "model.safetensors").stat().st_size / 1e6
    assert sizes["teacher-onnx"] == pytest.approx(fp32, rel=0.15)  # the same float32 weights
    for name in ("teacher-onnx-int8", "teacher-onnx-static-int8"):
        assert sizes[name] < fp32 / 2, name  # int8 weights (embeddings included)


def test_onnx_model_runs_on_its_own_and_the_report_links_forms_to_sources(quantized_teacher, demo_data, trained_teacher,
                                                                         tmp_path):
    import onnxruntime as ort
    from transformers import AutoTokenizer

    config, out, _, _ = quantized_teacher
    model_dir = out / "forms" / "teacher-onnx-int8" / "model"
    session = ort.InferenceSession(str(model_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    batch = AutoTokenizer.from_pretrained(str(model_dir))(["a great product", "awful"], padding=True, return_tensors="np")
    (logits,) = session.run(["logits"], {i.name: batch[i.name] for i in session.get_inputs()})
    assert logits.shape == (2, 3)
    evaluate.run(config, demo_data, trained_teacher, tmp_path / "teacher-metrics")
    board = report.run(config, demo_data, [tmp_path / "teacher-metrics", out / "metrics"], tmp_path / "report")
    kinds = {row["name"]: (row["kind"], row["source"]) for row in board["candidates"]}
    assert kinds["teacher-onnx-int8"] == ("quantized", "teacher") and kinds["teacher"] == ("teacher", None)
    assert (tmp_path / "report" / "pareto.png").stat().st_size > 10_000
    assert board["recommended"] in kinds


def test_onnx_export_of_a_sliced_model_and_a_distilled_student(tmp_path, trained_teacher, demo_data):
    from rightsizer.quantize import load_quantized, quantize_model
    from rightsizer.slicing import slice_model
    from rightsizer.train.distill import student_from_teacher_layers

    dataset, _ = load_prepared(demo_data)
    test, texts = dataset["test"], list(dataset["train"]["text"][:16])
    sliced, tokenizer = load_saved(trained_teacher / "model")
    slice_model(sliced, 1)
    student, student_tokenizer = student_from_teacher_layers(trained_teacher / "model", [1])
    for label, model, tok in (("slice", sliced, tokenizer), ("student", student, student_tokenizer)):
        quantize_model(model, tok, "onnx_fp32", tmp_path / label, texts, None, 64, label, tmp_path / f"scratch-{label}")
        onnx_model, onnx_tokenizer = load_quantized(tmp_path / label)
        a, _, _ = predict_logits(model, tok, test, 64, 32)
        b, _, _ = predict_logits(onnx_model, onnx_tokenizer, test, 64, 32)
        assert np.abs(a - b).max() < 1e-3, label


def test_decoders_work_or_are_refused_per_method(tmp_path):
    from rightsizer.models import load_classifier
    from rightsizer.quantize import load_quantized, quantize_model

    texts = ["a fine day", "terrible service", "it was ok"] * 10
    llama, tokenizer = load_classifier("tiny-llama-2l", ["a", "b"], texts)
    quantize_model(llama, tokenizer, "dynamic_int8", tmp_path / "llama", texts, None, 32, "llama", tmp_path)
    model, tok = load_quantized(tmp_path / "llama")
    batch = tok(texts[:4], padding=True, return_tensors="pt")
    assert (model(**batch).logits.argmax(-1) == llama(**batch).logits.argmax(-1)).all()
    gpt2, tokenizer = load_classifier("tiny-gpt2-2l", ["a", "b"], texts)
    with pytest.raises(UserError, match="Conv1D.*onnx_int8"):
        quantize_model(gpt2, tokenizer, "dynamic_int8", tmp_path / "gpt2", texts, None, 32, "gpt2", tmp_path)


@pytest.mark.parametrize("entry, message", [
    ({"of": "teachr", "method": "onnx_int8"}, "of 'teachr' names no candidate \\(did you mean 'teacher'\\?\\)"),
    ({"of": "teacher", "method": "int4"}, "'quantize.0.method' must be one of 'dynamic_int8'"),
    ({"of": "student", "method": "onnx_int8"}, "of 'student' but no student is configured"),
    ({"of": "teacher", "method": "onnx_int8", "name": "teacher"}, "names clash with other candidates: teacher"),
])
def test_bad_quantize_entries_are_one_line_errors(tiny_config, entry, message):
    with pytest.raises(UserError, match=message):
        tiny_config(quantize=[entry])


def test_unmergeable_adapters_are_refused(tiny_config):
    adapters = [{"name": "pre", "method": "prefix", "r": 4}]
    with pytest.raises(UserError, match="adapter 'pre' \\(prefix\\) cannot be merged"):
        tiny_config(adapters=adapters, quantize=[{"of": "all", "method": "dynamic_int8"}])


def test_bad_input_exits_2_before_any_training(tmp_path, capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for entry, message in (({"of": "nobody", "method": "onnx_int8"}, "names no candidate"),
                           ({"of": "teacher", "method": "fp16"}, "needs a GPU: this machine has none")):
        config = tmp_path / "c.yaml"
        config.write_text(yaml.safe_dump(tiny_raw(quantize=[entry])))
        assert main(["run", str(config), "--output", str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error:") and message in err and len(err.splitlines()) == 1
        assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))


def test_validate_refuses_half_precision_without_a_gpu_here_or_requested(tmp_path, capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(tiny_raw(quantize=[{"of": "teacher", "method": "bf16"}])))
    assert main(["validate", str(config)]) == 2
    assert "needs a GPU: this machine has none" in capsys.readouterr().err
    assert main(["validate", str(config), "--set", "resources.quantize.gpus=1"]) == 0  # for a cluster run


def test_compiled_pipeline_places_quantize_after_its_source(tmp_path, monkeypatch, capsys):
    raw = tiny_raw(students=[{"name": "student", "model": "tiny-bert-2l", "control": False}],
                   quantize=[{"of": "student", "method": "onnx_int8"}, {"of": "teacher", "method": "fp16"}])
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(raw))
    # half precision on a cluster needs resources.quantize to ask for a GPU
    assert main(["compile", str(config), "-o", str(tmp_path / "p.yaml")]) == 2
    assert "resources.quantize requests none" in capsys.readouterr().err
    assert main(["compile", str(config), "-o", str(tmp_path / "p.yaml"), "--set", "resources.quantize.gpus=1"]) == 0
    spec, platform = list(yaml.safe_load_all((tmp_path / "p.yaml").read_text()))
    loops = {name: comp["dag"]["tasks"] for name, comp in spec["components"].items() if "dag" in comp}
    placed = {}
    for tasks in loops.values():
        for task_name, task in tasks.items():
            if task["componentRef"]["name"].startswith("comp-quantize"):
                source = task["inputs"]["artifacts"]["source"]["taskOutputArtifact"]["producerTask"]
                evaluated = next(t for t in tasks.values() if t["componentRef"]["name"].startswith("comp-evaluate")
                                 and t["inputs"]["artifacts"]["candidate"]["taskOutputArtifact"]["producerTask"] == task_name)
                placed[tasks[source]["componentRef"]["name"]] = (task.get("dependentTasks"), evaluated)
    assert set(placed) == {"comp-teacher", "comp-distill"}
    executors = spec["deploymentSpec"]["executors"]
    quantize_executor = next(v for k, v in executors.items() if k.startswith("exec-quantize"))
    assert quantize_executor["container"]["resources"]["accelerator"]["resourceCount"] == "1"
    report_inputs = next(t for t in spec["root"]["dag"]["tasks"].values() if t["componentRef"]["name"] == "comp-report")
    assert {"quantized_teacher_metrics", "quantized_student_metrics"} <= set(report_inputs["inputs"]["artifacts"])


def test_of_a_kind_or_a_candidate_called_like_one(tiny_config):
    teachers = [{"name": "teacher", "model": "tiny-bert-2l"}, {"name": "t2", "model": "tiny-bert-2l"}]
    config = tiny_config(teachers=teachers, quantize=[{"of": "teacher", "method": "onnx_int8"}])
    assert [name for name, _ in config.quantize_plan("teacher", "teacher")] == ["teacher-onnx-int8"]
    assert config.quantize_plan("t2", "teacher") == []  # the teacher called "teacher", not every teacher
    students = [{"name": "s", "model": "tiny-bert-2l"}]
    config = tiny_config(students=students, quantize=[{"of": "student", "method": "dynamic_int8", "name": "q"}])
    assert [name for name, _ in config.quantize_plan("s", "student")] == ["s-q"]
    assert config.quantize_plan("s-nodistill", "student", control=True) == []  # controls only by name


def test_the_model_card_names_the_entry_that_made_a_quantized_form(tiny_config):
    from rightsizer.stages.report.model_card import candidate_config

    config = tiny_config(quantize=[{"of": "teacher", "method": "onnx_int8"},
                                   {"of": "all", "method": "dynamic_int8", "name": "q8"}])
    row = {"name": "teacher-q8", "kind": "quantized", "source": "teacher"}
    assert candidate_config(row, config) == ("quantize", {"of": "all", "method": "dynamic_int8", "name": "q8"})
    row = {"name": "teacher-onnx-int8", "kind": "quantized", "source": "teacher"}
    assert candidate_config(row, config) == ("quantize", {"of": "teacher", "method": "onnx_int8"})


def test_quantize_component_writes_forms_that_predict_like_the_source(tmp_path, demo_data, trained_teacher):
    """The KFP component as a task calls it: a dynamic int8 form of the teacher, named in the artifact's metadata."""
    from kfp import dsl

    from components.quantize import quantize as component
    from conftest import artifact
    from rightsizer.config import config_from_dict

    config = config_from_dict(tiny_raw(quantize=[{"of": "teacher", "method": "dynamic_int8"}]))
    model = artifact(dsl.Model, tmp_path / "forms")
    component.python_func(config_json=config.to_json(), data=artifact(dsl.Dataset, demo_data),
                          source=artifact(dsl.Model, trained_teacher), model=model)
    assert model.metadata == {"source": "teacher", "candidates": ["teacher-int8"]}
    test = load_prepared(demo_data)[0]["test"]
    source, source_tokenizer = load_saved(trained_teacher / "model")
    form, tokenizer = load_saved(tmp_path / "forms" / "teacher-int8" / "model")
    assert _agreement(source, source_tokenizer, form, tokenizer, test) >= 0.95
    fp32 = (trained_teacher / "model" / "model.safetensors").stat().st_size
    assert (tmp_path / "forms" / "teacher-int8" / "model" / "model_int8.pt").stat().st_size < fp32
