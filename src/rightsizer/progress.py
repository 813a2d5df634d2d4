"""What a local run shows on the console: one line per stage task, progress bars, one-line errors.

A task of a local run (a subprocess of ``kfp.local``) prints events as single lines
``@@rightsizer {json}`` on its stdout when ``$RIGHTSIZER_PROGRESS`` is set: ``start`` and ``done`` of a
stage (with its headline figure), ``step`` while training or evaluating. ``kfp.local`` passes every
line of every task through ``print``; :class:`ConsoleStream` stands in for ``sys.stdout`` during the
run, writes everything to ``run.log`` and turns the events into the console lines and a rich
progress bar with ETA. ``--verbose`` also echoes the log to the console.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, TextIO

PROGRESS_ENV = "RIGHTSIZER_PROGRESS"
STOP_ENV = "RIGHTSIZER_STOP_FILE"  # once this file exists, a task that has not started yet does not start


def stop_requested() -> bool:
    path = os.environ.get(STOP_ENV)
    return bool(path) and os.path.exists(path)


PREFIX = "@@rightsizer "


def enabled() -> bool:
    return bool(os.environ.get(PROGRESS_ENV))


def emit(event: str, **fields: Any) -> None:
    """Print one event line for the parent's console (no-op outside a local run)."""
    if not enabled():
        return
    sys.stdout.write(PREFIX + json.dumps({"event": event, "pid": os.getpid(), **fields}, default=str) + "\n")
    sys.stdout.flush()


def _fmt(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def headline(stage: str, result: Any) -> str:
    """The one figure worth a glance when a stage task ends."""
    if not isinstance(result, dict):
        return ""
    if stage == "prepare":
        rows = result.get("rows") or {}
        dropped = sum((result.get("dropped_rows") or {}).values()) + sum((result.get("duplicates_removed") or {}).values())
        text = "/".join(f"{rows.get(s, 0):,}" for s in ("train", "validation", "test")) + " rows"
        text += f", {len(result.get('label_names') or [])} labels"
        return text + (f", {dropped:,} rows dropped" if dropped else "")
    if stage in ("evaluate", "prompting") and "macro_f1" in result:
        latency = result.get("latency_ms")
        return f"test macro-F1 {_fmt(result['macro_f1'])}" + (f", {latency:.2f} ms" if latency else "")
    if stage == "report":
        return f"recommended: {result.get('recommended') or 'none'}"
    if stage == "probe" and "best_layer" in result:
        return f"best layer {result['best_layer']}, slices {result.get('slices')}"
    validation = result.get("validation") or {}
    if "macro_f1" in validation:
        return f"validation macro-F1 {_fmt(validation['macro_f1'])}"
    return ""


class ConsoleStream:
    """A stand-in for ``sys.stdout`` during a local run: log everything, show events."""

    def __init__(self, log_path: Path, verbose: bool = False, terminal: TextIO | None = None):
        from rich.console import Console

        self.log = open(log_path, "a", buffering=1)
        # bound to the real stdout now: during the run sys.stdout is this stream
        self.console = Console(file=terminal or sys.stdout, soft_wrap=True)
        self.verbose = verbose
        self.lock = threading.RLock()
        self.pending = ""
        self.running: dict[int, str] = {}  # task pid -> label
        self.errors: list[str] = []
        self.finished = 0
        self.progress = None
        self.bars: dict[int, Any] = {}
        self.stop_file: Path | None = None  # set by run_local: its existence keeps new tasks from starting

    # -- the file protocol kfp.local and logging use
    def write(self, text: str) -> int:
        with self.lock:
            self.log.write(text)
            if self.verbose:
                self.console.file.write(text)
                self.console.file.flush()
            self.pending += text.replace("\r", "\n")  # progress bars redraw with \r
            *lines, self.pending = self.pending.split("\n")
            for line in lines:
                self._line(line)
        return len(text)

    def flush(self) -> None:
        self.log.flush()

    def isatty(self) -> bool:
        return False

    @property
    def encoding(self) -> str:
        return "utf-8"

    def fileno(self) -> int:  # subprocess and faulthandler want a real descriptor
        return self.log.fileno()

    # -- events
    def _line(self, line: str) -> None:
        line = re.sub(r"\x1b\[[0-9;]*m", "", line).strip()  # kfp.local colours and indents a task's output
        if "finished with status FAILURE" in line and not self.errors:
            self._signal_running()  # a task failed (a bug): the others stop now, nothing new starts
        if PREFIX.strip() in line:
            line = line[line.index(PREFIX.strip()):]
        if line.startswith("error: "):
            if not self.errors:  # the first failure stops the run: no sense training on for minutes
                self._signal_running()
            self.errors.append(line[len("error: "):])
            return
        if not line.startswith(PREFIX):
            return
        try:
            event = json.loads(line[len(PREFIX):])
        except ValueError:
            return
        if not isinstance(event, dict):
            return
        kind, pid = event.get("event"), event.get("pid")
        label = event.get("label") or ""
        if kind == "start":
            self.running[pid] = label
            if not self.verbose:
                self._print(f"[dim]…[/] {label}")
        elif kind == "done":
            self.running.pop(pid, None)
            self.finished += 1
            self._end_bar(pid)
            mark = "↺" if event.get("reused") else "✓"
            figure = f"  {event['headline']}" if event.get("headline") else ""
            seconds = "reused" if event.get("reused") else f"{event.get('seconds', 0):.0f} s"
            self._print(f"[green]{mark}[/] {label}  {seconds}{figure}")
        elif kind == "step":
            self._step(pid, label, event)

    def _print(self, text: str) -> None:
        if self.progress is not None:
            self.progress.console.print(text, highlight=False)
        else:
            self.console.print(text, highlight=False)

    def _step(self, pid: int, label: str, event: dict) -> None:
        if self.verbose or not self.console.is_terminal:
            return  # a bar only where it can redraw in place; logs and pipes get the start/done lines
        from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeRemainingColumn

        if self.progress is None:
            self.progress = Progress(TextColumn("  {task.description}"), BarColumn(), TaskProgressColumn(),
                                     TextColumn("ETA"), TimeRemainingColumn(), console=self.console, transient=True)
            self.progress.start()
        description = f"{label} {event.get('what', '')}".strip()
        if pid not in self.bars:
            self.bars[pid] = self.progress.add_task(description, total=event.get("total"))
        self.progress.update(self.bars[pid], completed=event.get("done", 0), total=event.get("total"),
                             description=description)

    def _end_bar(self, pid: int) -> None:
        if self.progress is not None and pid in self.bars:
            self.progress.remove_task(self.bars.pop(pid))

    def _signal_running(self) -> None:
        if self.stop_file is not None:
            self.stop_file.touch()
        for pid in list(self.running):
            try:
                os.kill(pid, signal.SIGTERM)
            except (ProcessLookupError, PermissionError):
                self.running.pop(pid, None)

    def interrupt(self, signum=None, frame=None) -> None:
        """A signal handler for SIGINT/SIGTERM: stop the tasks now (kfp.local waits for running ones), then raise."""
        self._signal_running()
        raise KeyboardInterrupt

    def stop_tasks(self) -> None:
        """Stop every task still running (after another failed, or on Ctrl-C / SIGTERM)."""
        self._signal_running()
        deadline = time.time() + 10
        while self.running and time.time() < deadline:
            alive = [pid for pid in self.running if _alive(pid)]
            if not alive:
                break
            time.sleep(0.1)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
        with self.lock:
            if self.pending:
                self.log.write("\n")
        self.log.close()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except (ProcessLookupError, PermissionError):
        return False


class StepProgress:
    """Emit ``step`` events at most every ``interval`` seconds (and at the end)."""

    def __init__(self, label: str, what: str, total: int | None, interval: float = 1.0):
        self.label, self.what, self.total, self.interval = label, what, total, interval
        self.last = 0.0

    def update(self, done: int, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self.last >= self.interval:
            self.last = now
            emit("step", label=self.label, what=self.what, done=done, total=self.total)


def trainer_callback(label: str):
    """A ``transformers.TrainerCallback`` that reports training steps (None outside a local run)."""
    if not enabled():
        return None
    from transformers import TrainerCallback

    class _Progress(TrainerCallback):
        def __init__(self):
            self.progress: StepProgress | None = None

        def on_train_begin(self, args, state, control, **kwargs):
            self.progress = StepProgress(label, "training", state.max_steps)

        def on_step_end(self, args, state, control, **kwargs):
            if self.progress is not None:
                self.progress.update(state.global_step, force=state.global_step >= state.max_steps)

    return _Progress()


CURRENT_LABEL_ENV = "RIGHTSIZER_TASK_LABEL"


def current_label() -> str:
    return os.environ.get(CURRENT_LABEL_ENV, "")
