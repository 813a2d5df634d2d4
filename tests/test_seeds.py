"""Several seeds (config `seeds`): validation, one training task per seed, one leaderboard row per candidate
with the mean over its seeds (which the decision uses), and a local run end to end."""

from __future__ import annotations

import json
import statistics

import numpy as np
import pytest
import yaml

from rightsizer import candidates
from rightsizer.cli import main
from rightsizer.config import ReportConfig
from rightsizer.errors import UserError
from rightsizer.stages import report
from rightsizer.stages.evaluate import split_scores
from rightsizer.stages.report.confidence import Evidence, decide
from rightsizer.stages.report.render import table_cells, with_spread
from rightsizer.stages.report.seeds import combine_seeds

from conftest import tiny_raw
from test_decision import Splits, answers, labelled

LABELS = ["negative", "neutral", "positive"]


# ---------------------------------------------------------------------------------------------
# config


@pytest.mark.parametrize("seeds", [[], [1, 1], [-1]])
def test_bad_seeds_are_one_line_errors(tiny_config, seeds):
    with pytest.raises(UserError, match=r"'seeds': seeds must be a non-empty list of distinct integers >= 0") as error:
        tiny_config(seeds=seeds)
    assert "\n" not in str(error.value)
    teachers = [{**tiny_raw()["teachers"][0], "seeds": seeds}]
    with pytest.raises(UserError, match=r"'teachers.0.seeds': seeds must be a non-empty list"):
        tiny_config(teachers=teachers)


def test_seeds_per_candidate_override_the_run_and_default_to_the_seed(tiny_config):
    plain = tiny_config()
    assert plain.seeds is None and [c.seeds for c in candidates.trained(plain)] == [(7,)]
    student = {"name": "s", "model": "tiny-bert-2l", "seeds": [5], "targets": "in_sample"}
    adapter = {"name": "lora", "method": "lora", "base": "teacher"}
    config = tiny_config(seeds=[0, 1, 2], students=[student], adapters=[adapter])
    seeds = {c.name: c.seeds for c in candidates.trained(config)}
    assert seeds == {"teacher": (0, 1, 2), "s": (5,), "s-nodistill": (5,), "lora": (0, 1, 2)}
    assert candidates.find(config, "teacher", None).seed == 0  # the run later stages build on
    assert candidates.seed_runs(candidates.students(config)) == [{"candidate": "s", "seed": 5},
                                                                 {"candidate": "s-nodistill", "seed": 5}]
    assert not candidates.several_seeds(candidates.students(config))
    assert candidates.several_seeds(candidates.teachers(config))
    # `--set seeds=[...]` works like the YAML key
    assert tiny_config(["seeds=[3, 4]"]).seeds == [3, 4]


# ---------------------------------------------------------------------------------------------
# compiled pipeline


def _loops(tmp_path, name: str, **sections) -> tuple[dict, set[str]]:
    """{loop items (raw JSON) -> the tasks in that loop}, and the names of every component, of the compiled config."""
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(tiny_raw(**sections)))
    assert main(["compile", str(path), "-o", str(tmp_path / f"{name}-pipeline.yaml")]) == 0
    spec = next(yaml.safe_load_all((tmp_path / f"{name}-pipeline.yaml").read_text()))
    loops = {}
    for task in [*spec["root"]["dag"]["tasks"].values()]:
        items = task.get("parameterIterator", {}).get("items", {}).get("raw")
        if items:
            body = spec["components"][task["componentRef"]["name"]]["dag"]["tasks"]
            loops[items] = sorted(body)
    return loops, set(spec["components"])


def test_compiled_pipeline_has_one_training_task_per_seed(tmp_path):
    student = {"name": "s", "model": "tiny-bert-2l", "targets": "in_sample", "control": False, "seeds": [9]}
    plain, plain_components = _loops(tmp_path, "plain", students=[student])
    assert plain == {'["teacher"]': ["evaluate", "teacher"], '["s"]': ["distill", "evaluate-2"]}
    assert not any("seeded" in name for name in plain_components)
    seeded, components = _loops(tmp_path, "seeded", students=[student], seeds=[0, 1])
    runs = {items: tasks for items, tasks in seeded.items()}
    teacher_runs = [{"candidate": "teacher", "seed": 0}, {"candidate": "teacher", "seed": 1}]
    assert runs[json.dumps(teacher_runs)] == ["evaluate", "teacher-seeded"]  # a ParallelFor: one task per seed
    assert runs['["s"]'] == ["distill", "evaluate-2"]  # one seed of its own: the plain loop, run with seed 9
    assert "comp-teacher-seeded" in components and "comp-teacher" not in components


def test_launchers_pass_the_seed_on():
    from pathlib import Path

    from rightsizer.launch.local import stage_command

    command = stage_command("teacher", Path("c.json"), Path("out"), [Path("data")], "teacher", 3)
    assert command[-4:] == ["--name", "teacher", "--seed", "3"]
    assert "--seed" not in stage_command("teacher", Path("c.json"), Path("out"), [Path("data")], "teacher")


def test_planned_trainjobs_are_one_per_seed(tiny_config, tmp_path):
    from rightsizer.launch.trainjob import planned_requests, write_trainjobs

    config = tiny_config(["seeds=[0, 1]", "resources.teachers.workers=2"])
    requests = planned_requests(config)
    assert [r.args[r.args.index("--seed") + 1] for r in requests] == ["0", "1"]
    assert sorted(p.name for p in write_trainjobs(config, tmp_path / "jobs")) == ["teacher-teacher-seed0.yaml",
                                                                                 "teacher-teacher-seed1.yaml"]
    assert ["--seed" in r.args for r in planned_requests(tiny_config(["resources.teachers.workers=2"]))] == [False]


# ---------------------------------------------------------------------------------------------
# the decision on hand-made multi-seed rows


def seed_runs(skill: dict[str, list[float]], latency: dict[str, float], n: int = 600):
    """One row per (candidate, seed) with the given validation accuracies (test: the same), and the evidence."""
    dataset = Splits({split: {"label": labelled(n, seed)} for seed, split in enumerate(("train", "validation", "test"))})
    evidence = Evidence.from_dataset(dataset, 3, seed=0)
    rows = []
    for number, (name, accuracies) in enumerate(skill.items()):
        for seed, accuracy in enumerate(accuracies):
            predictions = {split: answers(dataset[split]["label"], accuracy, 100 * number + 10 * seed + k)
                           for k, split in enumerate(("validation", "test"))}
            rows.append({**split_scores(predictions, dataset, LABELS, seed=0), "name": name, "seed": seed,
                         "kind": "teacher" if name == "big" else "student", "latency_ms": latency[name],
                         "params": int(latency[name] * 1000), "size_mb": latency[name], "labels": LABELS,
                         "path": f"/runs/{name}/seed{seed}/model"})
            evidence.add(name, predictions)
    return rows, evidence


def test_decision_uses_the_mean_over_seeds_not_the_best_seed():
    # big: one lucky seed (0.90) and one poor (0.80), mean 0.85; small: 0.87 twice. The best single seed is big's,
    # which would rule small out (3 pt below); on the mean small is the best, and the recommendation
    runs, evidence = seed_runs({"big": [0.90, 0.80], "small": [0.87, 0.87]}, {"big": 10.0, "small": 2.0})
    best_single = decide([max(runs, key=lambda r: r["val_macro_f1"]), runs[2]], ReportConfig(), None)
    assert best_single["best"] == "big" and best_single["recommended"] == "big"
    rows = combine_seeds(runs, "macro_f1", evidence)
    assert [r["name"] for r in rows] == ["big", "small"]
    big = rows[0]
    for key in ("val_macro_f1", "val_accuracy", "macro_f1", "accuracy"):
        assert big[key] == pytest.approx(statistics.fmean(r[key] for r in runs[:2]), abs=1e-6)
        assert big[f"{key}_std"] == pytest.approx(statistics.stdev(r[key] for r in runs[:2]), abs=1e-6)
    assert big["seeds"] == [0, 1] and [s["seed"] for s in big["per_seed"]] == [0, 1]
    assert big["seed"] == 0 and big["path"] == "/runs/big/seed0/model"  # shipped: the best seed on validation
    assert big["per_seed"][1]["path"] == "/runs/big/seed1/model"
    low, high = big["macro_f1_ci"]
    assert low < big["macro_f1"] < high and high - low < 0.1  # the interval of the mean, around the mean
    decision = decide(rows, ReportConfig(), evidence)
    assert decision["best"] == "small" and decision["recommended"] == "small"
    # paired comparisons score the mean over seeds on the same resamples
    point, _ = evidence.scores("big", "validation", "macro_f1")
    assert point == pytest.approx(big["val_macro_f1"], abs=1e-6)
    assert decision["comparisons"]["big"]["validation"]["difference"] == pytest.approx(
        big["val_macro_f1"] - rows[1]["val_macro_f1"], abs=1e-5)
    # shown as mean ± spread (n seeds) in the report's table and the CLI's
    built = {"recommended": "small", "best": "small", "pareto_front": [], "comparisons": {}}
    cells = table_cells(rows, built)[0]
    assert f"{big['val_macro_f1']:.4f} ± {big['val_macro_f1_std']:.4f} (2 seeds)" in cells
    assert with_spread(rows[1], "macro_f1", 3).endswith("(2 seeds)")
    assert with_spread({"macro_f1": 0.5, "seeds": [7]}, "macro_f1", 3) == "0.500"


def test_one_seed_twice_is_still_a_repeated_name():
    runs, _ = seed_runs({"big": [0.9], "small": [0.8]}, {"big": 1.0, "small": 1.0})
    with pytest.raises(UserError, match="repeated: big"):
        combine_seeds([runs[0], {**runs[0]}], "macro_f1")
    assert combine_seeds(runs, "macro_f1")[0]["seeds"] == [0]  # one run: its seed, no spread
    assert "macro_f1_std" not in combine_seeds(runs, "macro_f1")[0]
    assert report.LEADERBOARD_KEYS[-7:] == ("seed", "seeds", "accuracy_std", "macro_f1_std", "val_accuracy_std",
                                            "val_macro_f1_std", "per_seed")


# ---------------------------------------------------------------------------------------------
# end to end


@pytest.mark.slow  # two teacher and two evaluate tasks: about 75 s on 2 busy cores
def test_local_run_with_two_seeds_reports_their_mean(tmp_path, capsys):
    raw = tiny_raw(seeds=[1, 2])
    raw["teachers"][0]["max_steps"] = 40
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(raw))
    assert main(["run", str(tmp_path / "c.yaml"), "--output", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    out = tmp_path / "out"
    board = json.loads((out / "leaderboard.json").read_text())
    teacher = next(row for row in board["candidates"] if row["name"] == "teacher")
    assert teacher["seeds"] == [1, 2] and [run["seed"] for run in teacher["per_seed"]] == [1, 2]
    assert teacher["seed"] in (1, 2)  # the shipped one
    for key in ("val_macro_f1", "macro_f1", "accuracy", "val_accuracy"):
        assert teacher[key] == pytest.approx(statistics.fmean(run[key] for run in teacher["per_seed"]), abs=1e-6)
    assert teacher["per_seed"][0]["val_macro_f1"] != teacher["per_seed"][1]["val_macro_f1"] or \
        teacher["per_seed"][0]["macro_f1"] != teacher["per_seed"][1]["macro_f1"]  # two different models
    shipped = max(teacher["per_seed"], key=lambda run: (run["val_macro_f1"], -run["seed"]))
    assert teacher["path"] == shipped["path"] and teacher["seed"] == shipped["seed"] and (out / shipped["path"] / "config.json").exists()
    assert all((out / run["path"]).is_dir() for run in teacher["per_seed"])
    summaries = [json.loads(p.read_text()) for p in (out / "stages").rglob("summary.json")]
    assert sorted(s["seed"] for s in summaries if s.get("stage") == "teacher") == [1, 2]
    assert " ± " in printed and "seeds)" in printed  # the terminal table (rich may wrap the cell)
    assert f"{teacher['val_macro_f1']:.4f} ± {teacher['val_macro_f1_std']:.4f} (2 seeds)" in (out / "report.md").read_text()
    if board["recommended"] == "teacher":
        assert "seed" in (out / "recommended" / "README.md").read_text()


def test_terminal_table_shows_the_spread_on_one_line_per_candidate():
    import io

    from rich.console import Console

    from rightsizer.cli import leaderboard_table
    from rightsizer.records import Leaderboard

    seeded = {"name": "student-6l-from-teacher-bert-base-uncased", "kind": "student", "macro_f1": 0.812,
              "macro_f1_std": 0.006, "val_macro_f1": 0.815, "val_macro_f1_std": 0.004, "seeds": [0, 1, 2],
              "macro_f1_ci": [0.79, 0.83], "latency_ms": 21.7, "params": 66_955_779, "size_mb": 268.0}
    single = {"name": "teacher", "kind": "teacher", "macro_f1": 0.9, "val_macro_f1": 0.9, "seeds": [0],
              "latency_ms": 48.3, "params": 109_484_547, "size_mb": 438.0}
    board = Leaderboard(metric="macro_f1", tolerance=0.01, recommended="teacher", candidates=[single, seeded])
    for width, shown in ((80, "0.815±.004"), (120, "0.815 ± 0.004 (3 seeds)")):
        console = Console(width=width, record=True, file=io.StringIO())
        console.print(leaderboard_table(board, width))
        lines = console.export_text().splitlines()
        assert all(len(line.rstrip()) <= width for line in lines), lines
        assert sum("0.812" in line for line in lines) == 1 and shown in next(l for l in lines if "0.812" in l), lines
        assert "± " not in next(line for line in lines if "0.900" in line)  # one seed: no spread


def test_students_learn_from_the_first_seed_of_each_teacher(tmp_path, demo_data, trained_teacher, tiny_config):
    import shutil

    from rightsizer.outputs import read_json, write_json
    from rightsizer.stages.teacher_logits import read_teachers

    config = tiny_config(["seeds=[8, 7]"])  # the first seed is 8, whatever the order of the outputs
    outputs = []
    for seed in (7, 8):
        directory = tmp_path / f"seed{seed}"
        shutil.copytree(trained_teacher, directory)
        write_json(directory / "summary.json", {**read_json(directory / "summary.json"), "seed": seed})
        outputs.append(directory)
    teachers = read_teachers(config, outputs, ["negative", "neutral", "positive"])
    assert [(t["name"], t["summary"]["seed"]) for t in teachers] == [("teacher", 8)]
    with pytest.raises(UserError, match="two teacher outputs are named 'teacher'"):  # without seeds: twice is wrong
        read_teachers(tiny_config(), [trained_teacher, trained_teacher], ["negative", "neutral", "positive"])


def test_console_labels_name_each_seed(tmp_path):
    from rightsizer.component_runtime import _identity
    from rightsizer.outputs import write_json

    for directory in ("t1", "t2", "q"):
        (tmp_path / directory).mkdir()
    write_json(tmp_path / "t1" / "summary.json", {"stage": "teacher", "name": "teacher", "seed": 1})
    write_json(tmp_path / "t2" / "summary.json", {"stage": "teacher", "name": "teacher", "seed": 2})
    write_json(tmp_path / "q" / "summary.json", {"stage": "quantize", "name": "teacher", "seed": 1})
    evaluate = {"name": "", "kind": "teacher", "data_dir": str(tmp_path / "data"), "output_dir": str(tmp_path / "o")}
    labels = [_identity("evaluate", {**evaluate, "candidate_dir": str(tmp_path / d)}) for d in ("t1", "t2", "q")]
    assert [label for label, _ in labels] == ["evaluate teacher seed 1", "evaluate teacher seed 2",
                                              "evaluate teacher quantized"]
    assert len({key for _, key in labels}) == 3  # each its own resume record
    assert _identity("teacher", {"name": "teacher", "seed": 2, "output_dir": "o"})[0] == "teacher seed 2"
    assert _identity("teacher", {"name": "teacher", "output_dir": "o"})[0] == "teacher"


def test_model_card_says_which_seed_is_shipped(tiny_config):
    from rightsizer.stages.report.model_card import model_card

    runs, evidence = seed_runs({"big": [0.90, 0.80]}, {"big": 10.0})
    row = combine_seeds(runs, "macro_f1", evidence)[0]
    text = model_card(row, {"name": "test", "reason": "big is the best", "metric": "macro_f1"},
                      {"rows": {}, "label_names": LABELS}, tiny_config(["seeds=[0, 1]"]))
    assert f"{row['val_macro_f1']:.4f} ± {row['val_macro_f1_std']:.4f} (2 seeds)" in text
    own = row["per_seed"][0]
    assert "Trained with seeds [0, 1]" in text and "This model is seed 0, the one with the best validation score" in text
    assert f"validation macro-F1 {own['val_macro_f1']:.4f}" in text and ", seed 0." in text
