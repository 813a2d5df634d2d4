"""In-pod multi-process training on CPU: torchrun with gloo DDP and DeepSpeed ZeRO-2 reach the loss of one
process with the same global batch; rank 0 alone writes; a killed run resumes; failures come back as one error."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

from rightsizer.config import config_from_dict
from rightsizer.errors import UserError
from rightsizer.launch import LaunchError, dispatch
from rightsizer.deepspeed import check_against_training, deepspeed_config
from rightsizer.launch.local import run_torchrun

# Tiny data, so that the length-grouped sampler puts the whole train split in one "megabatch" for a
# per-process batch of 4 and of 8 alike: then 2 processes x 4 see exactly the samples 1 x 8 sees, step by step.
DATA = {"source": "builtin:demo", "max_length": 64, "max_train_samples": 200, "max_eval_samples": 60}


def make_config(*, batch_size: int, processes: int | None = None, deepspeed=None, max_steps: int = 6, gpus=None):
    teacher = {"name": "teacher", "model": "tiny-bert-2l", "max_steps": max_steps, "learning_rate": 2e-3,
               "batch_size": batch_size, "logging_steps": 1}
    resources = {key: value for key, value in (("processes", processes), ("gpus", gpus)) if value is not None}
    return config_from_dict({"name": "launch", "seed": 7, "data": DATA, "teachers": [teacher],
                             "resources": {"teachers": resources}, "deepspeed": deepspeed})


@pytest.fixture(scope="module")
def small_data(tmp_path_factory) -> Path:
    from rightsizer.stages import prepare

    out = tmp_path_factory.mktemp("small") / "data"
    prepare.run(make_config(batch_size=8), out)
    return out


@pytest.fixture(scope="module")
def one_process(small_data, tmp_path_factory) -> Path:
    """The reference: one process, batch 8."""
    from rightsizer.stages import teacher

    out = tmp_path_factory.mktemp("one") / "teacher"
    teacher.run(make_config(batch_size=8), small_data, out)
    return out


def losses(stage_dir: Path) -> np.ndarray:
    return np.array(json.loads((stage_dir / "metrics.json").read_text())["losses"])


def check_stage_output(stage_dir: Path, world_size: int, zero_stage, attempts: int = 1) -> dict:
    """One finished output, written once: summary, loadable model, one TensorBoard file, no leftovers."""
    from rightsizer.models import load_saved

    summary = json.loads((stage_dir / "summary.json").read_text())
    assert summary["launch"] == {"mode": "torchrun" if world_size > 1 else "in-process", "world_size": world_size,
                                 "nodes": 1, "device": "cpu", "deepspeed_zero_stage": zero_stage}
    model, _ = load_saved(stage_dir / "model")
    assert model.num_labels == 3
    assert len(list((stage_dir / "tb").glob("events.out.tfevents.*"))) == attempts  # rank 0 alone logs
    assert not (stage_dir / "checkpoints").exists()
    assert not stage_dir.with_name(f".{stage_dir.name}.partial").exists()
    return summary


def assert_same_training(reference: Path, other: Path) -> None:
    """Same global batch, same samples per step: the same losses up to dropout masks and tokenizer ties."""
    ours, theirs = losses(reference), losses(other)
    assert len(ours) == len(theirs) == 6
    np.testing.assert_allclose(theirs, ours, atol=0.06)
    assert abs(theirs.mean() - ours.mean()) < 0.03
    eval_a = json.loads((reference / "metrics.json").read_text())["validation"]["loss"]
    eval_b = json.loads((other / "metrics.json").read_text())["validation"]["loss"]
    assert eval_b == pytest.approx(eval_a, abs=0.05)


@pytest.mark.slow
def test_two_process_ddp_matches_one_process(one_process, small_data, tmp_path):
    from rightsizer.stages import teacher

    summary = teacher.run(make_config(batch_size=4, processes=2), small_data, tmp_path / "ddp")
    assert summary["steps"] == 6 and summary["launch"]["world_size"] == 2
    assert summary["throughput"]["samples_per_s"] > 0 and summary["throughput"]["mfu"] is None  # no MFU on CPU
    check_stage_output(one_process, 1, None)
    check_stage_output(tmp_path / "ddp", 2, None)
    assert_same_training(one_process, tmp_path / "ddp")


@pytest.mark.slow
def test_two_process_deepspeed_zero2_matches_one_process(one_process, small_data, tmp_path):
    from rightsizer.stages import teacher

    teacher.run(make_config(batch_size=4, processes=2, deepspeed={"zero_stage": 2}), small_data, tmp_path / "zero2")
    check_stage_output(tmp_path / "zero2", 2, 2)
    assert_same_training(one_process, tmp_path / "zero2")


@pytest.mark.slow
def test_killed_multi_process_run_resumes_from_its_checkpoint(small_data, tmp_path):
    """SIGTERM the launcher mid-run (a cancelled task): every rank stops, nothing is in place, the work dir
    keeps its checkpoint; the same command again resumes from it and finishes."""
    from rightsizer.stages import teacher
    from rightsizer.train.finetune import last_checkpoint

    config = make_config(batch_size=4, processes=2, max_steps=75)  # 200 rows / 8 per step: a checkpoint every 25
    config_path = tmp_path / "config.json"
    config_path.write_text(config.to_json())
    out = tmp_path / "teacher"
    checkpoints = tmp_path / ".teacher.partial" / "checkpoints"
    command = [sys.executable, "-m", "rightsizer.cli", "stage", "teacher", "--config", str(config_path),
               "--in", str(small_data), "--out", str(out)]
    launcher = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        while not list(checkpoints.glob("checkpoint-*/trainer_state.json")):  # written last: the checkpoint is whole
            assert launcher.poll() is None, "the run ended before its first checkpoint"
            assert time.monotonic() < deadline, "no checkpoint within 240 s"
            time.sleep(0.05)
        started = psutil.Process(launcher.pid).children(recursive=True)  # torchrun's agent and its two ranks
        commands = [" ".join(p.cmdline()) for p in started]
        assert len([c for c in commands if "rightsizer.cli" in c and "torch.distributed.run" not in c]) == 2
        launcher.send_signal(signal.SIGTERM)
        assert launcher.wait(timeout=90) != 0, "the run finished before the kill; make it longer"
    finally:
        if launcher.poll() is None:
            launcher.kill()
    _, alive = psutil.wait_procs(started, timeout=30)
    assert not alive, f"left running: {[p.pid for p in alive]}"
    assert not out.exists()
    kept = last_checkpoint(checkpoints)
    assert kept is not None and not kept.endswith("checkpoint-75")
    summary = teacher.run(config, small_data, out)
    assert summary["resumed_from"] == kept
    assert summary["steps"] == 75
    assert len(losses(out)) == 75  # the history before the kill came back with the checkpoint
    check_stage_output(out, 2, None, attempts=2)  # one event file per attempt, from rank 0 only


def test_user_error_inside_the_ranks_is_one_error_line(tmp_path, capsys):
    from rightsizer.cli import main

    not_data = tmp_path / "not-data"
    not_data.mkdir()
    config_path = tmp_path / "config.json"
    config_path.write_text(make_config(batch_size=4, processes=2).to_json())
    code = main(["stage", "teacher", "--config", str(config_path), "--in", str(not_data), "--out", str(tmp_path / "o")])
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(err) == 1 and "not-data" in err[0]
    assert not (tmp_path / "o").exists() and not (tmp_path / ".o.partial").exists()


def test_a_crashing_rank_fails_with_its_log_tail(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text("import os\nif os.environ['RANK'] == '1':\n    raise RuntimeError('rank one broke')\n")
    log_dir = tmp_path / "logs"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", f"--log-dir={log_dir}",
               "--redirects=3", "--standalone", str(script)]
    with pytest.raises(LaunchError) as caught:
        run_torchrun(command, log_dir, env=dict(os.environ), what="stage test")
    message = str(caught.value)
    assert message.startswith("stage test failed on rank 1, torchrun exit code 1; last lines of its log:")
    assert message.rstrip().endswith("RuntimeError: rank one broke")


def test_gpus_without_cuda_is_a_user_error_and_starts_nothing(tmp_path):
    config = make_config(batch_size=4, gpus=2)
    with pytest.raises(UserError, match=r"resources.teachers.gpus is 2 but this machine has 0 CUDA device\(s\).*"
                                        r"gpus: 0 and processes: 2"):
        dispatch("teacher", config, tmp_path / "o", member=config.teachers[0],
                 inputs={"data_dir": tmp_path})
    assert not any(tmp_path.iterdir())


# ---------------------------------------------------------------------------------------------
# DeepSpeed configs


def test_zero_stage_shorthand_expands_to_a_full_config_with_auto_values():
    two = deepspeed_config({"zero_stage": 2})
    assert two["zero_optimization"]["stage"] == 2
    assert two["zero_optimization"]["overlap_comm"] and two["zero_optimization"]["reduce_bucket_size"] == "auto"
    for key in ("train_micro_batch_size_per_gpu", "train_batch_size", "gradient_accumulation_steps",
                "gradient_clipping"):
        assert two[key] == "auto"
    assert two["bf16"] == {"enabled": "auto"} and two["fp16"]["enabled"] == "auto"  # the Trainer decides: GPU only
    three = deepspeed_config({"zero_stage": 3, "offload_optimizer": "cpu", "offload_param": "cpu",
                              "zero_optimization": {"sub_group_size": 1000}, "communication_data_type": "fp32"})
    zero = three["zero_optimization"]
    assert zero["offload_optimizer"] == {"device": "cpu", "pin_memory": True}
    assert zero["offload_param"] == {"device": "cpu", "pin_memory": True}
    assert zero["stage3_gather_16bit_weights_on_model_save"] is True and zero["sub_group_size"] == 1000
    assert three["communication_data_type"] == "fp32"  # other DeepSpeed keys pass through
    full = {"zero_optimization": {"stage": 1}, "train_micro_batch_size_per_gpu": "auto"}
    assert deepspeed_config(full) == full  # a complete config is used as given


@pytest.mark.parametrize("value, message", [
    ({"zero_stage": 4}, r"zero_stage must be 0, 1, 2 or 3"),
    ({"zero_stage": 2, "offload_param": "cpu"}, r"offload_param needs zero_stage 3"),
    ({"zero_stage": 3, "offload_optimizer": "nvme"}, r"nvme needs nvme_path"),
    ({"zero_stage": 2, "offload_optimizer": "gpu"}, r"offload_optimizer must be one of cpu, none, nvme"),
    ({"offload_optimizer": "cpu"}, r"needs zero_stage"),
])
def test_bad_shorthand_is_a_load_time_error(value, message):
    with pytest.raises(UserError, match=message):
        config_from_dict({"data": {"source": "builtin:demo"}, "deepspeed": value})


def test_deepspeed_json_file_is_read_at_load_and_bad_json_is_one_error(tmp_path):
    good = tmp_path / "ds.json"
    good.write_text(json.dumps({"zero_optimization": {"stage": 2}, "train_micro_batch_size_per_gpu": "auto"}))
    config = config_from_dict({"data": {"source": "builtin:demo"}, "deepspeed": str(good)})
    assert config.deepspeed == {"zero_optimization": {"stage": 2}, "train_micro_batch_size_per_gpu": "auto"}
    bad = tmp_path / "bad.json"
    bad.write_text('{"zero_optimization": {"stage": 2},}')
    with pytest.raises(UserError, match=r"deepspeed config '.*bad.json' is not valid JSON: .* at line 1"):
        config_from_dict({"data": {"source": "builtin:demo"}, "deepspeed": str(bad)})
    with pytest.raises(UserError, match=r"not found"):
        config_from_dict({"data": {"source": "builtin:demo"}, "deepspeed": str(tmp_path / "missing.json")})


def test_deepspeed_values_that_contradict_the_trainer_fail_before_any_process(tmp_path):
    pinned = {"train_micro_batch_size_per_gpu": 16, "gradient_accumulation_steps": "auto",
              "zero_optimization": {"stage": 2}, "bf16": {"enabled": True}}
    config = make_config(batch_size=4, processes=2, deepspeed=pinned)
    with pytest.raises(UserError) as caught:
        dispatch("teacher", config, tmp_path / "o", member=config.teachers[0],
                 inputs={"data_dir": tmp_path})
    message = str(caught.value)
    assert "train_micro_batch_size_per_gpu=16 but teachers 'teacher'.batch_size is 4" in message
    assert "bf16.enabled=True but bf16 (on only on a GPU that supports it) is False" in message
    assert not any(tmp_path.iterdir())
    # "auto" and agreeing values pass
    check_against_training(deepspeed_config({"zero_stage": 2}), batch_size=4, accumulation=1, world_size=2,
                           learning_rate=1e-3, weight_decay=0.01, bf16=False, where="teachers")
    check_against_training({"train_batch_size": 8, "optimizer": {"params": {"lr": 1e-3}}}, batch_size=4,
                           accumulation=1, world_size=2, learning_rate=1e-3, weight_decay=0.01, bf16=False,
                           where="teachers")
