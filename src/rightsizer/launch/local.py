"""Run a stage as N processes in this pod with ``torch.distributed.run`` (torchrun).

The command each process runs is the ordinary ``rightsizer stage NAME ...``, with the marker
``RIGHTSIZER_LAUNCHED`` in its environment so the stage trains in place instead of launching again.
HF ``Trainer`` sees torchrun's ``RANK``/``WORLD_SIZE`` and trains with DDP (NCCL on GPUs, gloo on CPU)
or DeepSpeed ZeRO when the config asks for it. Rank 0 alone writes the stage's outputs (see
``rightsizer.outputs.stage_output``). Every rank's stdout/stderr goes to the console (prefixed by
torchrun) and to a log file; when a rank fails, the stage fails with that rank's log tail, and a
``UserError`` inside a rank comes back as the same one-line ``error:``.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from rightsizer.errors import UserError

LAUNCHED_ENV = "RIGHTSIZER_LAUNCHED"  # set in every process a launcher starts: "processes" | "trainjob"
TAIL_LINES = 25


class LaunchError(RuntimeError):
    """A launched process or node failed for a reason that is not a user error; the message has its log tail."""


def inside_launch() -> str | None:
    """'processes' / 'trainjob' inside a process a launcher started, else None."""
    return os.environ.get(LAUNCHED_ENV) or None


def stage_command(stage: str, config_path: Path, output_dir: Path, inputs: list[Path], name: str | None,
                  seed: int | None = None) -> list[str]:
    """The ``rightsizer stage`` arguments for ``stage`` (after ``-m rightsizer.cli``)."""
    command = ["stage", stage, "--config", str(config_path)]
    for path in inputs:
        command += ["--in", str(path)]
    command += ["--out", str(output_dir)]
    if name:
        command += ["--name", name]
    if seed is not None:
        command += ["--seed", str(seed)]
    return command


def torchrun_command(processes: int, log_dir: Path, stage_args: list[str], *, standalone: bool) -> list[str]:
    """``python -m torch.distributed.run ... -m rightsizer.cli <stage_args>``.

    ``standalone`` (one pod) picks a free local rendezvous port; without it torchrun takes the number of
    nodes, this node's rank and the master address from the ``PET_*`` variables Kubeflow Trainer sets.
    """
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={processes}",
               f"--log-dir={log_dir}", "--redirects=3", "--tee=3"]
    if standalone:
        command.append("--standalone")
    return command + ["-m", "rightsizer.cli", *stage_args]


def run_torchrun(command: list[str], log_dir: Path, *, env: dict[str, str], what: str) -> None:
    """Run a torchrun command to completion; map a failure to UserError / LaunchError with the log tail."""
    process = subprocess.Popen(command, env=env)
    with _terminate_on_signal(process):
        code = process.wait()
    if code != 0:
        raise failure_from_logs(log_dir, code, what)


@contextlib.contextmanager
def sigterm_raises():
    """In the main thread, SIGTERM (a cancelled pipeline task, a deleted pod) raises KeyboardInterrupt,
    so cleanup in ``except``/``finally`` runs as it does for Ctrl-C."""
    previous = None

    def on_term(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, on_term)
    try:
        yield
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def _terminate_on_signal(process: subprocess.Popen):
    """SIGTERM or Ctrl-C stop torchrun and its workers too."""
    with sigterm_raises():
        try:
            yield
        except BaseException:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)  # torchrun forwards it to every worker
                try:
                    process.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
            raise


def rank_logs(log_dir: Path) -> dict[int, str]:
    """Each local rank's stderr (stdout appended when stderr is empty), from torchrun's log directory."""
    logs: dict[int, str] = {}
    for stderr in sorted(Path(log_dir).glob("**/attempt_*/*/stderr.log")):
        try:
            rank = int(stderr.parent.name)
        except ValueError:
            continue
        text = stderr.read_text(errors="replace")
        stdout = stderr.with_name("stdout.log")
        if not text.strip() and stdout.exists():
            text = stdout.read_text(errors="replace")
        logs[rank] = text  # later attempts overwrite earlier ones
    return logs


def failure_from_logs(log_dir: Path, exit_code: int, what: str) -> Exception:
    """The error to raise for a failed torchrun: the ranks' own ``error:`` line, or the failing rank's log tail."""
    logs = rank_logs(log_dir)
    for rank, text in sorted(logs.items()):
        for line in text.splitlines():
            if line.startswith("error: "):
                return UserError(line.removeprefix("error: "))
    failed = [rank for rank, text in sorted(logs.items()) if "Traceback (most recent call last)" in text]
    shown = failed or sorted(logs)
    if not shown:
        return LaunchError(f"{what} failed (torchrun exit code {exit_code}) before any rank wrote a log")
    rank = shown[0]
    tail = "\n".join(logs[rank].rstrip().splitlines()[-TAIL_LINES:])
    which = f"rank {rank}" + (f" (ranks failed: {', '.join(map(str, failed))})" if len(failed) > 1 else "")
    return LaunchError(f"{what} failed on {which}, torchrun exit code {exit_code}; last lines of its log:\n{tail}")


def run_processes(stage: str, config, output_dir: str | Path, inputs: list[Path], *, name: str | None,
                  processes: int, device: str = "cuda", seed: int | None = None) -> dict:
    """Run ``rightsizer stage`` as ``processes`` ranks in this pod; return the summary rank 0 wrote."""
    output_dir = Path(output_dir).resolve()
    with tempfile.TemporaryDirectory(prefix="rightsizer-launch-") as tmp:
        config_path = Path(tmp) / "config.json"
        config_path.write_text(config.to_json())
        log_dir = Path(tmp) / "logs"
        args = stage_command(stage, config_path, output_dir, [Path(p).resolve() for p in inputs], name, seed)
        command = torchrun_command(processes, log_dir, args, standalone=True)
        print(f"launching {stage}{f' {name}' if name else ''} on {processes} processes: torchrun "
              f"--nproc-per-node={processes} -m rightsizer.cli {' '.join(args)}", flush=True)
        env = {**os.environ, LAUNCHED_ENV: "processes"}
        if device == "cpu":  # gpus: 0 with processes: N means CPU ranks, even where GPUs are visible
            env["CUDA_VISIBLE_DEVICES"] = ""
        run_torchrun(command, log_dir, env=env, what=f"stage {stage}{f' ({name})' if name else ''}")
    summary_path = output_dir / "summary.json"
    if not summary_path.exists():
        raise LaunchError(f"stage {stage}: all {processes} processes exited 0 but rank 0 left no {summary_path}")
    return json.loads(summary_path.read_text())
