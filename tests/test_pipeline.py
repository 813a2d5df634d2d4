"""The local pipeline (kfp.local), the compiled YAML, the CLI's exit codes and one-line errors."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
import yaml

from rightsizer.cli import main

from conftest import REPO, tiny_raw


def write_config(path: Path, **sections) -> Path:
    path.write_text(yaml.safe_dump(tiny_raw(**sections)))
    return path


def test_local_pipeline_end_to_end(tmp_path, capsys):
    config = write_config(tmp_path / "c.yaml")
    code = main(["run", str(config), "--output", str(tmp_path / "out")])
    assert code == 0
    out = tmp_path / "out"
    board = json.loads((out / "leaderboard.json").read_text())
    names = {c["name"] for c in board["candidates"]}
    assert names == {"teacher", "majority-baseline"}
    assert board["recommended"] == "teacher"
    assert (out / "report.md").exists()
    assert list((out / "stages").rglob("model/model.safetensors"))
    assert list((out / "stages").rglob("card.json"))
    printed = capsys.readouterr().out
    # quiet: one line as each stage task starts and ends (with its figure), then the leaderboard; KFP's own
    # output (executor input, the config in every task, warnings) is in run.log
    lines = printed.splitlines()
    assert len(lines) < 60, printed
    assert any(line.startswith("✓ teacher") and "validation macro-F1" in line for line in lines), printed
    assert any(line.startswith("✓ evaluate teacher") and "test macro-F1" in line for line in lines), printed
    assert "config_json" not in printed and "Executing task" not in printed
    log = (out / "run.log").read_text()
    assert "Executing task" in log or "config_json" in log
    assert not list(tmp_path.glob(".out.partial")) and not (out / ".kfp").exists() and not (out / ".resume").exists()
    # a second run into the same directory is refused with the way out; nothing is replaced
    code = main(["run", str(config), "--output", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "--overwrite" in err and (out / "leaderboard.json").exists()
    # the recommended model on new texts
    code = main(["predict", str(out), "--text", "a wonderful, delightful product", "--text", "awful, broke at once"])
    printed = capsys.readouterr().out.splitlines()
    assert code == 0
    labels = set(json.loads((out / "stages").rglob("card.json").__next__().read_text())["label_names"])
    # not stripped: kfp.local's tasks once left every later print of this process indented (test below)
    predicted = [line.split("\t") for line in printed if "\t" in line]
    assert all(line == line.strip() for line in printed), printed
    assert len(predicted) == 2 and all(row[0] in labels and 0 < float(row[1]) <= 1 for row in predicted)
    (tmp_path / "new.csv").write_text("review\ngreat stuff\nterrible stuff\nmeh\n")
    code = main(["predict", str(out), "--file", str(tmp_path / "new.csv"), "--text-column", "review",
                 "-o", str(tmp_path / "p.jsonl")])
    written = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert code == 0 and len(written) == 3
    assert all(abs(sum(row["probabilities"].values()) - 1) < 1e-3 and set(row["probabilities"]) == labels for row in written)
    # the same texts give the same answer as the saved model loaded by hand
    from rightsizer.models import load_saved
    import torch

    model_dir = next(p.parent for p in (out / "stages").rglob("model/config.json") if "teacher" in str(p))
    model, tokenizer = load_saved(model_dir)
    with torch.no_grad():
        logits = model(**tokenizer(["great stuff"], return_tensors="pt")).logits
    assert model.config.id2label[int(logits.argmax())] == written[0]["label"]
    code = main(["predict", str(out), "--candidate", "majority-baseline", "--text", "x"])
    assert code == 2 and "has no saved model" in capsys.readouterr().err


def test_run_local_leaves_print_as_it_was_after_overlapping_tasks(tmp_path, tiny_config, monkeypatch, capsys):
    """kfp.local swaps ``builtins.print`` for an indenting one while a task runs and puts back what it saw;
    two loop iterations (threads) that overlap as A in, B in, A out, B out leave A's indenting print in place."""
    import builtins

    from kfp.local import logging_utils

    from rightsizer import pipeline

    config = tiny_config()

    def overlapping_tasks():  # what two threads do, in the order that leaks, without the threads
        first, second = logging_utils.indented_print(), logging_utils.indented_print()
        first.__enter__()
        second.__enter__()
        first.__exit__(None, None, None)
        second.__exit__(None, None, None)
        assert builtins.print is not original  # kfp.local's leak, reproduced
        (tmp_path / "root" / f"{config.name}-1").mkdir(parents=True)

    original = builtins.print
    monkeypatch.setattr(builtins, "print", original)  # put back after the test, whatever happens
    monkeypatch.setattr(pipeline, "build_pipeline", lambda config, local: overlapping_tasks)
    pipeline.run_local(config, tmp_path / "root")
    assert builtins.print is original
    capsys.readouterr()
    print("positive\t0.912\tgreat")
    assert capsys.readouterr().out == "positive\t0.912\tgreat\n"


def test_compiled_yaml_has_resources_and_accelerator(tmp_path):
    config = write_config(tmp_path / "c.yaml", resources={"default": {"cpu": "3", "memory": "6Gi"},
                                                          "teachers": {"gpus": 2, "gpu_type": "nvidia.com/gpu"}})
    assert main(["compile", str(config), "--output", str(tmp_path / "p.yaml")]) == 0
    documents = list(yaml.safe_load_all((tmp_path / "p.yaml").read_text()))
    executors = documents[0]["deploymentSpec"]["executors"]
    teacher = next(spec for name, spec in executors.items() if name.startswith("exec-teacher"))
    resources = teacher["container"]["resources"]
    assert resources["accelerator"] == {"resourceType": "nvidia.com/gpu", "resourceCount": "2"} or \
        resources["accelerator"].get("type") == "nvidia.com/gpu"
    assert resources["cpuRequest"] == 3 and resources["memoryLimit"] == pytest.approx(6 * 1024 ** 3 / 1e9, rel=1e-3)
    prepare = next(spec for name, spec in executors.items() if name.startswith("exec-prepare"))
    assert "accelerator" not in prepare["container"]["resources"]
    platform = documents[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert any("emptyDirMounts" in spec and spec["emptyDirMounts"][0]["mountPath"] == "/dev/shm" for spec in platform.values())
    assert teacher["container"]["image"].startswith("ghcr.io/") or teacher["container"]["image"]


def test_components_import_only_stdlib_and_kfp_at_top_level():
    import sys

    allowed = set(sys.stdlib_module_names) | {"kfp", "rightsizer_components"}
    for path in sorted((REPO / "components").glob("*.py")):
        tree = ast.parse(path.read_text())
        for node in tree.body:
            if isinstance(node, ast.Import):
                roots = [alias.name.split(".")[0] for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                roots = [(node.module or "").split(".")[0]]
            else:
                continue
            assert set(roots) <= allowed, f"{path.name} imports {roots} at top level"


def run_cli(args: list[str], capsys) -> tuple[int, str]:
    code = main(args)
    err = capsys.readouterr().err.strip()
    return code, err


@pytest.mark.parametrize("setup, args, message", [
    (lambda d: None, ["run", "{d}/missing.yaml"], "not found"),
    (lambda d: (d / "c.yaml").write_text("data: [\n"), ["run", "{d}/c.yaml"], "not valid YAML"),
    (lambda d: (d / "c.yaml").write_text("data: {source: builtin:demo}\nteacher: []\n"), ["run", "{d}/c.yaml"],
     "unknown key 'teacher' (did you mean 'teachers'?)"),
    (lambda d: (d / "c.yaml").write_text("data: {source: builtin:demo}\nseed: many\n"), ["run", "{d}/c.yaml"], "'seed'"),
    (lambda d: (d / "c.yaml").write_text("seed: 1\n"), ["run", "{d}/c.yaml"], "'data' is required"),
    (lambda d: write_config(d / "c.yaml"), ["run", "{d}/c.yaml", "--set", "teachers.0.epoch=1"], "did you mean 'epochs'"),
    (lambda d: (write_config(d / "c.yaml"), (d / "out").mkdir(), (d / "out" / "precious.txt").write_text("x")),
     ["run", "{d}/c.yaml", "--output", "{d}/out"], "not written by rightsizer"),
    (lambda d: write_config(d / "c.yaml", data={"source": "{d}/nothing.csv"}), ["run", "{d}/c.yaml", "--output", "{d}/o"],
     "nothing.csv' not found"),
    (lambda d: write_config(d / "c.yaml"), ["run", "{d}/c.yaml", "--output", "{d}/o", "--set", "teachers.0.model=tiny-bert-7l"],
     "presets: "),
    (lambda d: write_config(d / "c.yaml"), ["stage", "teech", "--config", "{d}/c.yaml", "--out", "{d}/o"], "unknown stage"),
    (lambda d: None, ["run"], "Missing"),
])
def test_user_errors_exit_2_with_one_line(tmp_path, capsys, setup, args, message):
    setup(tmp_path)
    args = [a.replace("{d}", str(tmp_path)) for a in args]
    if (tmp_path / "c.yaml").exists():
        (tmp_path / "c.yaml").write_text((tmp_path / "c.yaml").read_text().replace("{d}", str(tmp_path)))
    code, err = run_cli(args, capsys)
    assert code == 2, err
    assert err.startswith("error:") and len(err.splitlines()) == 1, err
    assert message in err
    assert "Traceback" not in err
    assert not (tmp_path / "o").exists() and not list(tmp_path.glob(".o.partial"))
    if (tmp_path / "out").exists():
        assert (tmp_path / "out" / "precious.txt").exists()


def test_stage_command_runs_prepare_by_hand(tmp_path, capsys):
    config = write_config(tmp_path / "c.yaml")
    assert main(["stage", "prepare", "--config", str(config), "--out", str(tmp_path / "data")]) == 0
    assert json.loads((tmp_path / "data" / "card.json").read_text())["rows"]["train"] == 600
