"""Every preset and example parses and compiles; the full demo graph runs locally on a tiny subset."""

from __future__ import annotations

import json

import pytest
import yaml

from rightsizer.cli import main
from rightsizer.config import load_config
from rightsizer.pipeline import compile_pipeline

from conftest import REPO

PRESETS = sorted((REPO / "pipelines" / "presets").glob("*.yaml"))
EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))
SEEDS = {"sliced-llama", "agnews-bert-adapters", "imdb-distilbert-vs-llm", "pairs-peft-sweep", "finance-multiteacher"}


def test_one_preset_per_reference_experiment():
    assert {p.stem for p in PRESETS} >= SEEDS


@pytest.mark.parametrize("path", PRESETS + EXAMPLES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_preset_parses_and_compiles(tmp_path, path):
    text = path.read_text()
    assert text.startswith("#"), "a preset starts with a comment saying what it is"
    config = load_config(path)
    out = compile_pipeline(config, tmp_path / "p.yaml")
    spec = list(yaml.safe_load_all(out.read_text()))[0]
    tasks = spec["root"]["dag"]["tasks"]
    assert "prepare" in tasks and "report" in tasks
    if path.parent.name == "presets":
        assert "--set" in text, "a preset documents its local --set overrides"


def test_presets_command_lists_them(capsys):
    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    for name in SEEDS:
        assert name in out
    assert "tiny-bert-2l" in out


def tiny_overrides() -> list[str]:
    return [
        "data.max_train_samples=240", "data.max_eval_samples=60", "data.max_length=48",
        "teachers.0.max_steps=30", "students.0.max_steps=20", "adapters.0.max_steps=10", "adapters.1.max_steps=10",
        "probe.max_steps=10", "probe.max_probe_samples=120", "evaluation.latency_samples=4",
        "evaluation.warmup_batches=1",
    ]


@pytest.mark.slow
def test_full_demo_graph_runs_locally(tmp_path, capsys):
    """The demo's whole graph: teacher, student (+control), two adapters, probe, a slice, report."""
    code = main(["run", str(REPO / "examples" / "demo.yaml"), "--output", str(tmp_path / "demo"),
                 *[arg for o in tiny_overrides() for arg in ("--set", o)]])
    assert code == 0, capsys.readouterr().err
    board = json.loads((tmp_path / "demo" / "leaderboard.json").read_text())
    kinds = {c["name"]: c["kind"] for c in board["candidates"]}
    assert kinds == {"teacher": "teacher", "student-2l": "student", "student-2l-nodistill": "student",
                     "lora-qv": "adapter", "ia3": "adapter", "teacher-L2": "slice", "majority-baseline": "baseline"}
    assert board["recommended"] in kinds
    html = (tmp_path / "demo" / "report.html").read_text()
    assert "data:image/png;base64," in html and "http://" not in html and "https://" not in html
    printed = capsys.readouterr().out
    assert "report.html" in printed and "recommended" in printed
