"""A killed local run continues with --resume: finished stage tasks are reused, the killed training task
restarts from its last checkpoint; SIGTERM leaves no hidden directory behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from rightsizer.cli import main

from conftest import tiny_raw


def wait_for(predicate, timeout: float, process: subprocess.Popen) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        assert process.poll() is None, process.communicate()
        time.sleep(0.5)
    raise AssertionError("timed out")


@pytest.mark.slow  # two local runs of the pipeline (~2 min on 2 busy cores)
def test_sigterm_then_resume_reuses_finished_tasks_and_the_checkpoint(tmp_path, capsys):
    raw = tiny_raw()
    raw["data"].update({"max_train_samples": 240, "max_eval_samples": 60})
    # 15 steps per epoch: a checkpoint every 15 steps, 45 steps in all
    raw["teachers"][0].update({"max_steps": 45, "batch_size": 16, "learning_rate": 2e-3})
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(raw))
    out = tmp_path / "out"
    process = subprocess.Popen([sys.executable, "-m", "rightsizer.cli", "run", str(config), "--output", str(out)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        wait_for(lambda: list(out.glob(".resume/teacher-*/.output.partial/checkpoints/checkpoint-*/trainer_state.json")),
                 600, process)
        process.send_signal(signal.SIGTERM)  # to rightsizer only, as a scheduler or `kill` would
        _, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 130, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: interrupted;") and "--resume" in last, err
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no hidden .partial beside the output
    assert json.loads((out / ".rightsizer-run.json").read_text())["status"] == "interrupted"

    code = main(["run", str(config), "--output", str(out), "--resume"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "↺ prepare" in printed and "✓ teacher" in printed, printed  # prepare reused, the teacher finished now
    teacher = next(json.loads(p.read_text()) for p in (out / "stages").rglob("summary.json")
                   if json.loads(p.read_text())["stage"] == "teacher")
    assert teacher["resumed_from"] and "checkpoint-" in teacher["resumed_from"]
    assert teacher["steps"] == 45
    assert not (out / ".resume").exists() and not (out / ".kfp").exists()
    board = json.loads((out / "leaderboard.json").read_text())  # 45 tiny steps may or may not beat chance
    assert "teacher" in {c["name"] for c in board["candidates"]} and "recommended" in board
