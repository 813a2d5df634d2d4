"""Every preset and example parses and compiles; the full demo graph runs locally on a tiny subset."""

from __future__ import annotations

import json
import subprocess

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
    """The demo's whole graph: teacher, student (+control), two adapters, probe, a slice, the student in int8, report."""
    code = main(["run", str(REPO / "examples" / "demo.yaml"), "--output", str(tmp_path / "demo"),
                 *[arg for o in tiny_overrides() for arg in ("--set", o)]])
    assert code == 0, capsys.readouterr().err
    board = json.loads((tmp_path / "demo" / "leaderboard.json").read_text())
    kinds = {c["name"]: c["kind"] for c in board["candidates"]}
    assert kinds == {"teacher": "teacher", "student-2l": "student", "student-2l-nodistill": "student",
                     "lora-qv": "adapter", "ia3": "adapter", "teacher-L2": "slice",
                     "student-2l-onnx-int8": "quantized", "majority-baseline": "baseline"}
    html = (tmp_path / "demo" / "report.html").read_text()
    assert "data:image/png;base64," in html and "http://" not in html and "https://" not in html
    printed = capsys.readouterr().out
    assert "report.html" in printed
    assert_answer(board, kinds, printed)


def assert_answer(board: dict, kinds: dict, printed: str) -> None:
    """A few training steps may leave every candidate at chance: then the answer is "no usable model", said
    once (the guard); otherwise a real candidate is recommended and the run says which."""
    if board["recommended"] is None:
        assert "no usable model" in printed, printed
    else:
        assert board["recommended"] in kinds and kinds[board["recommended"]] != "baseline"
        assert "recommended" in printed


def documented_command(path) -> list[str]:
    """The local smoke-test command a preset's header documents, expanded by bash as a user's shell would."""
    lines, collecting = [], False
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        body = line.lstrip("#").strip()
        collecting = collecting or body.startswith("rightsizer run ")
        if collecting:
            lines.append(body.rstrip("\\").strip())
            if not body.endswith("\\"):
                break
    assert lines, f"{path.name} documents no 'rightsizer run' smoke test"
    expanded = subprocess.run(["bash", "-c", "printf '%s\\0' " + " ".join(lines)], check=True, capture_output=True,
                              text=True, cwd=REPO, timeout=30).stdout
    args = expanded.split("\0")[:-1]
    assert args[:3] == ["rightsizer", "run", f"pipelines/presets/{path.name}"]
    return args[2:]


def set_values(args: list[str]) -> list[str]:
    return [args[i + 1] for i, arg in enumerate(args) if arg == "--set"]


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.stem)
def test_documented_local_overrides_are_valid_and_download_nothing(path):
    args = documented_command(path)
    config = load_config(REPO / args[0], set_values(args))
    assert config.data.source.startswith("builtin:")
    teachers = {t.name for t in config.teachers}
    references = [t.model for t in config.teachers] + [s.model for s in config.students]
    references += [a.base for a in config.adapters]
    references += [config.probe.model] if config.probe is not None else []
    references += [config.evaluation.prompting.model] if config.evaluation.prompting is not None else []
    assert all(ref in teachers or ref.startswith("tiny-") for ref in references), references


def fewer_steps(config) -> list[str]:
    """Overrides that shrink a preset's tiny run to seconds per task, whatever its sections hold."""
    out = ["data.max_train_samples=240", "data.max_eval_samples=60", "data.max_length=48",
           "evaluation.latency_samples=4", "evaluation.warmup_batches=1"]
    for section in ("teachers", "students", "adapters"):
        out += [f"{section}.{i}.max_steps=12" for i in range(len(getattr(config, section)))]
    if config.probe is not None:
        out += ["probe.max_steps=8", "probe.max_probe_samples=120"]
    return out


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["imdb-distilbert-vs-llm", "finance-multiteacher"])
def test_preset_runs_locally_with_its_documented_overrides(tmp_path, capsys, preset):
    """Decoder LoRA + zero/few-shot prompting beside an encoder; three teachers distilled online into one student."""
    args = documented_command(REPO / "pipelines" / "presets" / f"{preset}.yaml")
    config = load_config(REPO / args[0], set_values(args))
    shrink = [arg for value in fewer_steps(config) for arg in ("--set", value)]
    output = tmp_path / preset
    code = main(["run", str(REPO / args[0]), *args[1:args.index("--output")], *args[args.index("--output") + 2:],
                 "--output", str(output), *shrink])
    assert code == 0, capsys.readouterr().err
    board = json.loads((output / "leaderboard.json").read_text())
    kinds = {c["name"]: c["kind"] for c in board["candidates"]}
    expected = {t.name: "teacher" for t in config.teachers} | {a.name: "adapter" for a in config.adapters}
    expected |= {s.name: "student" for s in config.students}
    expected |= {f"{s.name}-nodistill": "student" for s in config.students if s.control}
    assert expected.items() <= kinds.items()
    if config.evaluation.prompting is not None:
        assert "prompting" in kinds.values()
    assert_answer(board, kinds, capsys.readouterr().out)
    assert (output / "report.html").exists() and (output / "pareto.png").exists()
