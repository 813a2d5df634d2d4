"""The CLI's promises that need no training: no data loss, one-line file-system errors, every up-front
check before training, strict data reading, help and discovery."""

from __future__ import annotations

import json
import io
import re
from pathlib import Path

import pandas as pd
import pytest
import yaml

from rightsizer.cli import main

from conftest import tiny_raw


def write_config(path: Path, **sections) -> Path:
    path.write_text(yaml.safe_dump(tiny_raw(**sections)))
    return path


def cli(args: list, capsys) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err.strip()


def assert_one_line_error(code: int, err: str, *fragments: str) -> None:
    assert code == 2, err
    assert err.startswith("error:") and len(err.splitlines()) == 1 and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in err, err


def fake_finished_run(directory: Path) -> None:
    """A run directory as a finished run leaves it (marker + report), without training anything."""
    from rightsizer import rundir

    run = rundir.claim(directory, json.dumps({"name": "x"}), overwrite=False, resume=False, inputs=[])
    (directory / "leaderboard.json").write_text("{}")
    (directory / "stages").mkdir()
    run.finish()


# ------------------------------------------------------------------------------------------------
# never delete what rightsizer did not write


def test_overwrite_never_deletes_data_or_foreign_files(tmp_path, capsys):
    sandbox = tmp_path / "sandbox"
    sandbox.mkdir()
    pd.DataFrame({"text": ["good", "bad"] * 10, "label": ["pos", "neg"] * 10}).to_csv(sandbox / "mydata.csv", index=False)
    (sandbox / "notes.txt").write_text("mine")
    config = write_config(tmp_path / "c.yaml", data={"source": str(sandbox / "mydata.csv")})
    code, _, err = cli(["run", config, "--output", sandbox, "--overwrite"], capsys)
    assert_one_line_error(code, err, "inside the output directory")
    # without data inside it, a foreign non-empty directory is still not ours to clear
    config = write_config(tmp_path / "c.yaml")
    code, _, err = cli(["run", config, "--output", sandbox, "--overwrite"], capsys)
    assert_one_line_error(code, err, "not written by rightsizer", "never deletes")
    assert sorted(p.name for p in sandbox.iterdir()) == ["mydata.csv", "notes.txt"]

    # a previous run is ours; a file the user added to it is not
    run = tmp_path / "run"
    fake_finished_run(run)
    code, _, err = cli(["run", config, "--output", run], capsys)
    assert_one_line_error(code, err, "already holds a rightsizer run", "--overwrite")
    (run / "my-analysis.ipynb").write_text("{}")
    code, _, err = cli(["run", config, "--output", run, "--overwrite"], capsys)
    assert_one_line_error(code, err, "did not write (my-analysis.ipynb)")
    assert (run / "my-analysis.ipynb").exists() and (run / "leaderboard.json").exists()
    code, _, err = cli(["run", config, "--output", run, "--resume"], capsys)
    assert_one_line_error(code, err, "finished run; nothing to resume")


def test_overwrite_of_a_previous_run_clears_only_its_entries(tmp_path):
    from rightsizer import rundir

    run = tmp_path / "run"
    fake_finished_run(run)
    claimed = rundir.claim(run, json.dumps({"name": "y"}), overwrite=True, resume=False, inputs=[])
    assert sorted(p.name for p in run.iterdir()) == [rundir.MARKER]
    assert rundir.read_marker(run)["status"] == "running"
    claimed.discard()  # a failed run removes what it wrote, and the directory it created... but this one existed
    assert run.is_dir() and not any(run.iterdir())


# ------------------------------------------------------------------------------------------------
# file-system errors on the output path: one line, exit 2


@pytest.mark.parametrize("where", ["proc", "file_parent"])
def test_unwritable_outputs_are_one_line_errors(tmp_path, capsys, where):
    config = write_config(tmp_path / "c.yaml")
    (tmp_path / "afile").write_text("x")
    output = Path("/proc/rightsizer-out") if where == "proc" else tmp_path / "afile" / "out"
    code, _, err = cli(["run", config, "--output", output], capsys)
    assert_one_line_error(code, err, "cannot write output", "choose a writable location")
    code, _, err = cli(["compile", config, "-o", output.parent / "pipeline.yaml" if where == "proc" else output / "p.yaml"],
                       capsys)
    assert_one_line_error(code, err, "cannot write the pipeline to")
    code, _, err = cli(["stage", "prepare", "-c", config, "--out", output], capsys)
    assert_one_line_error(code, err, "cannot write output")
    code, _, err = cli(["run", config, "--output", tmp_path / "afile"], capsys)
    assert_one_line_error(code, err, "is a file")


# ------------------------------------------------------------------------------------------------
# every up-front check, before training (validate, and run/compile call it first)

BASE_ADAPTER = {"name": "lora", "method": "lora", "base": "teacher", "target_modules": ["query"]}
UPFRONT = [
    ({"students": [{"name": "s", "from_teacher_layers": [0, 5]}]}, "teacher 'teacher' has 2 layers (0-1); index 5"),
    ({"students": [{"name": "s", "model": "tiny-bert-2l", "hidden_weight": 1.0, "layer_map": {0: 7}}]},
     "layer_map names teacher layer 7"),
    ({"adapters": [{**BASE_ADAPTER, "target_modules": ["qurey"]}]}, "target_modules 'qurey' not found"),
    ({"adapters": [{**BASE_ADAPTER, "base": "teachr"}]}, "names no teacher (did you mean 'teacher'?)"),
    ({"adapters": [{**BASE_ADAPTER, "base": "bert-base-uncased"}]}, "a Hub id looks like org/name"),
    ({"probe": {"model": "teacher", "layers": [1, 9]}}, "probe.layers [9] out of range: the model has 2 layers"),
    ({"probe": {"model": "teacher", "finetune_slices": [3]}}, "probe.finetune_slices [3] out of range"),
    ({"teachers": [{"name": "teacher", "model": "tiny-llama-2l"}], "probe": {"model": "teacher", "pooling": "cls"}},
     "pooling 'cls' on llama (a decoder)"),
    ({"evaluation": {"prompting": {"model": "tiny-llama-2l", "verbalizer": {"negative": "bad", "positive": "good",
                                                                             "neutral": "ok", "mixed": "meh"}}}},
     "names label(s) mixed that the data does not have"),
    ({"teachers": [{"name": "teacher", "model": str(Path("/nonexistent/model"))}]}, "not found"),
]


@pytest.mark.parametrize("sections, message", UPFRONT, ids=[m[:30] for _, m in UPFRONT])
def test_validate_catches_before_training(tmp_path, capsys, sections, message):
    config = write_config(tmp_path / "c.yaml", **sections)
    code, _, err = cli(["validate", config], capsys)
    assert_one_line_error(code, err, message)


def test_run_and_compile_validate_first_and_validate_says_what_it_checked(tmp_path, capsys):
    bad = write_config(tmp_path / "bad.yaml", adapters=[{**BASE_ADAPTER, "target_modules": ["qurey"]}])
    code, _, err = cli(["run", bad, "--output", tmp_path / "out"], capsys)
    assert_one_line_error(code, err, "'qurey' not found")
    assert not (tmp_path / "out").exists()
    code, _, err = cli(["compile", bad, "-o", tmp_path / "p.yaml"], capsys)
    assert_one_line_error(code, err, "'qurey' not found")
    assert not (tmp_path / "p.yaml").exists()
    good = write_config(tmp_path / "good.yaml", adapters=[BASE_ADAPTER], probe={"model": "teacher", "finetune_slices": [1]},
                        students=[{"name": "s", "from_teacher_layers": [1]}])
    code, out, err = cli(["validate", good], capsys)
    assert code == 0, err
    assert "ok" in out and "adapter 'lora'" in out and "probe (2 layers)" in out and "data (600/90/90 rows, 3 labels" in out


# ------------------------------------------------------------------------------------------------
# strict data reading


def prepare(tmp_path, source: Path, **data):
    from rightsizer.config import DataConfig
    from rightsizer.data import prepare_dataset

    return prepare_dataset(DataConfig(source=str(source), validation_size=0.2, test_size=0.2, **data), 0)


def rows(n: int = 30) -> dict:
    return {"text": [f"text number {i}" for i in range(n)], "label": ["a", "b", "c"] * (n // 3)}


def test_nested_and_list_columns_are_refused_with_column_and_type(tmp_path):
    frame = pd.DataFrame(rows())
    frame["text"] = [{"title": t, "body": t} for t in frame["text"]]
    frame.to_parquet(tmp_path / "nested.parquet")
    with pytest.raises(Exception, match=r"column 'text' \(data.text_column\).*struct \(dict\)"):
        prepare(tmp_path, tmp_path / "nested.parquet")
    lines = [json.dumps({"text": t, "label": [l]}) for t, l in zip(rows()["text"], rows()["label"])]
    (tmp_path / "lists.jsonl").write_text("\n".join(lines))
    with pytest.raises(Exception, match=r"column 'label' \(data.label_column\).*list"):
        prepare(tmp_path, tmp_path / "lists.jsonl")


def test_reading_errors_name_lines_encodings_and_delimiters(tmp_path):
    from rightsizer.errors import UserError

    good = [json.dumps({"text": t, "label": l}) for t, l in zip(rows()["text"], rows()["label"])]
    (tmp_path / "bad.jsonl").write_text("\n".join(good[:4] + ['{"text": "oops", "label": '] + good[4:]))
    with pytest.raises(UserError, match="line 5 is not valid JSON"):
        prepare(tmp_path, tmp_path / "bad.jsonl")
    (tmp_path / "scalar.json").write_text("42")
    with pytest.raises(UserError, match="holds a JSON number; give a list of records"):
        prepare(tmp_path, tmp_path / "scalar.json")
    frame = pd.DataFrame(rows())
    frame["text"] = [f"café crème {i}" for i in range(30)]
    frame.to_csv(tmp_path / "latin.csv", index=False, sep=";", encoding="latin-1")
    with pytest.raises(UserError, match="is not UTF-8 .*set data.encoding"):
        prepare(tmp_path, tmp_path / "latin.csv")
    dataset, card = prepare(tmp_path, tmp_path / "latin.csv", encoding="latin-1")  # ';' is detected
    assert card["rows"]["train"] == 18 and "café" in dataset["train"][0]["text"]
    with pytest.raises(UserError, match="looks ';'-delimited: set data.delimiter"):
        prepare(tmp_path, tmp_path / "latin.csv", encoding="latin-1", delimiter=",")
    (tmp_path / "ragged.csv").write_text("text,label\nfine,a\nGreat battery, but it broke,b\n")
    with pytest.raises(UserError, match="line 3 has 3 fields but the header has 2"):
        prepare(tmp_path, tmp_path / "ragged.csv")


def test_label_mismatch_same_columns_and_dropped_rows_are_named(tmp_path):
    from rightsizer.errors import UserError

    given = tmp_path / "given"
    given.mkdir()
    pd.DataFrame(rows()).to_csv(given / "train.csv", index=False)
    pd.DataFrame({"text": ["x", "y", "z"], "label": ["a", "d", "e"]}).to_csv(given / "test.csv", index=False)
    with pytest.raises(UserError, match="test has labels 'd', 'e' not in train"):
        prepare(tmp_path, given)
    pd.DataFrame(rows()).to_csv(tmp_path / "d.csv", index=False)
    with pytest.raises(UserError, match="data.label_column and data.text_column are both 'text'"):
        prepare(tmp_path, tmp_path / "d.csv", label_column="text")
    frame = pd.DataFrame(rows(36))
    frame.loc[[0, 1], "text"] = ""
    frame.to_csv(tmp_path / "holes.csv", index=False)
    _, card = prepare(tmp_path, tmp_path / "holes.csv")
    assert card["dropped_rows"]["empty_text"] == 2
    from rightsizer.stages.report.render import _data_line

    assert "dropped: 2 row(s) with empty text" in _data_line(card)
    from rightsizer.progress import headline

    assert "2 rows dropped" in headline("prepare", {"rows": card["rows"], "label_names": card["label_names"],
                                                    "dropped_rows": card["dropped_rows"]})


def test_config_duplicate_keys_and_names_read_as_sentences(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text("name: demo\ndata:\n  source: builtin:demo\n  label_column: a\n  label_column: b\n")
    code, _, err = cli(["validate", path], capsys)
    assert_one_line_error(code, err, "key 'label_column' appears twice in one section (lines 4 and 5)")
    write_config(path, name="My Run")
    code, _, err = cli(["validate", path], capsys)
    assert_one_line_error(code, err, "'My Run' is not a valid name: up to 63 lowercase letters")
    assert "^[" not in err


# ------------------------------------------------------------------------------------------------
# help and discovery


def test_help_version_examples_and_discovery(capsys):
    from rightsizer import __version__
    from rightsizer.cli import app
    from rightsizer.plan import STAGES

    code, out, _ = cli([], capsys)
    assert code == 0 and "Usage" in out and "validate" in out and "predict" in out
    code, out, _ = cli(["--version"], capsys)
    assert code == 0 and out.strip() == f"rightsizer {__version__}"
    import typer.main

    commands = typer.main.get_command(app).commands
    for name in commands:
        code, out, _ = cli([name, "-h"], capsys)
        assert code == 0 and "Example: rightsizer" in out, name
    code, out, _ = cli(["stage", "--help"], capsys)
    assert all(stage in " ".join(out.split()) for stage in STAGES)
    code, out, _ = cli(["presets"], capsys)
    assert code == 0 and "tiny-bert-2l" in out
    assert all(len(line) <= 120 for line in out.splitlines())


def test_compile_leaves_a_model_path_of_the_image_to_the_cluster(tmp_path, capsys):
    config = write_config(tmp_path / "c.yaml", teachers=[{"name": "teacher", "model": "/models/in-the-image"}])
    code, _, err = cli(["compile", config, "-o", tmp_path / "p.yaml"], capsys)
    assert code == 0, err
    code, _, err = cli(["validate", config], capsys)  # validate and run check what this machine will read
    assert_one_line_error(code, err, "not found")


def test_predict_prints_exact_tab_separated_lines_to_a_pipe(tmp_path):
    """What a script reading ``rightsizer predict | cut -f1`` gets: the model line, then label, probability, text."""
    import subprocess
    import sys

    from rightsizer.models import load_classifier

    model, tokenizer = load_classifier("tiny-bert-2l", ["negative", "positive"], ["good", "bad"] * 10, seed=0)
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    long_text = "a long review that goes on " * 5
    done = subprocess.run([sys.executable, "-m", "rightsizer.cli", "predict", str(tmp_path / "model"), "--text",
                           "good value", "--text", long_text], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.split("\n")
    assert lines[0] == f"model: model ({tmp_path / 'model'})" and lines[-1] == "" and len(lines) == 4, done.stdout
    assert re.fullmatch(r"(negative|positive)\t[01]\.\d{3}\tgood value", lines[1]), lines
    assert re.fullmatch(r"(negative|positive)\t[01]\.\d{3}\t" + re.escape(long_text[:57]) + r"\.\.\.", lines[2]), lines


def test_predict_on_a_model_directory_and_its_int8_form(tmp_path, capsys):
    from rightsizer.models import load_classifier
    from rightsizer.quantize import quantize_model

    texts = ["good value", "bad value", "fine I guess"] * 20
    model, tokenizer = load_classifier("tiny-bert-2l", ["negative", "neutral", "positive"], texts, seed=0)
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    quantize_model(model, tokenizer, "dynamic_int8", tmp_path / "int8", texts, None, 32, "model", tmp_path / "scratch")
    capsys.readouterr()  # setup's own output
    answers = {}
    for name in ("model", "int8"):
        code, out, err = cli(["predict", tmp_path / name, "--text", "good value", "--text", "bad value"], capsys)
        assert code == 0 and not err, err
        answers[name] = [line.split("\t") for line in out.splitlines() if "\t" in line]
    assert [row[0] for row in answers["model"]] == [row[0] for row in answers["int8"]]
    assert all(abs(float(a[1]) - float(b[1])) < 0.05 for a, b in zip(answers["model"], answers["int8"]))
    code, _, err = cli(["predict", tmp_path / "model"], capsys)
    assert_one_line_error(code, err, "give the texts with --text")


def test_leaderboard_table_keeps_each_candidate_on_one_line_at_80_and_120_columns():
    from rich.console import Console

    from rightsizer.cli import leaderboard_table
    from rightsizer.records import Leaderboard

    def row(name, kind, f1, latency, params, size_mb):
        return {"name": name, "kind": kind, "macro_f1": f1, "val_macro_f1": f1 - 0.004, "latency_ms": latency,
                "macro_f1_ci": [f1 - 0.031, f1 + 0.027], "params": params, "size_mb": size_mb}

    rows = [row("teacher-bert-base-uncased", "teacher", 0.912, 48.3, 109_484_547, 438.0),
            row("student-6l-from-teacher-bert-base-uncased", "student", 0.905, 21.7, 66_955_779, 268.0),
            row("student-6l-from-teacher-bert-base-uncased-nodistill", "student", 0.889, 21.9, 66_955_779, 268.0),
            row("student-6l-int8", "quantized", 0.902, 9.4, 66_955_779, 91.0),
            {"name": "majority-baseline", "kind": "baseline", "macro_f1": 0.171, "val_macro_f1": 0.171, "latency_ms": 0.0,
             "params": 0, "size_mb": 0.0}]
    board = Leaderboard(metric="macro_f1", tolerance=0.01, recommended="student-6l-int8", candidates=rows)
    for width in (80, 120, 200):
        console = Console(width=width, record=True, file=io.StringIO())
        console.print(leaderboard_table(board, width))
        lines = console.export_text().splitlines()
        assert all(len(line.rstrip()) <= width for line in lines), lines
        body = [line for line in lines if re.search(r"\d\.\d{3}", line)]
        assert len(body) == len(rows), lines  # one line each: nothing wrapped onto a second line
        by_figure = {figure: next(line for line in body if figure in line) for figure in ("0.912", "0.905", "0.889", "0.902")}
        assert "0.908" in by_figure["0.912"] and "(.881–.939)" in by_figure["0.912"] and "48.30" in by_figure["0.912"]
        assert "109.5M" in by_figure["0.912"] and "9.40" in by_figure["0.902"] and "⭐" in by_figure["0.902"]
        assert "student-6l-int8 ⭐" in by_figure["0.902"]
        assert "nodistill" in by_figure["0.889"] and "nodistill" not in by_figure["0.905"]  # names cut in the middle
        assert ("quantized" in by_figure["0.902"] and "438.0" in by_figure["0.912"]) == (width >= 110)
    assert "student-6l-from-teacher-bert-base-uncased-nodistill" in by_figure["0.889"]  # at 200 columns: whole
