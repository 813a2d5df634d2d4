"""Fair timing on a shared machine: no candidate is timed while another stage trains beside it.

On a cluster every task is its own pod, so latency and throughput are measured on a quiet node.
A local run puts every task on this one machine, and ``kfp.local`` runs two loop iterations at
once: a teacher timed while an adapter trains next to it would look slower than it is, and the
recommendation (the fastest candidate within tolerance) would follow the noise.

Timing also uses only the cores the task may use: :func:`task_threads` takes them from the evaluate
task's CPU limit (``resources.evaluate.cpu``, the pod's limit on a cluster), never more than this
process can run on; a pod that spread work over every core of its node would be throttled.

``run_local`` points ``$RIGHTSIZER_TIMING_LOCK`` at a lock file. Every stage then holds a shared
lock while it works (:func:`busy`, taken by ``component_runtime.call``), and a measurement takes the
exclusive one (:func:`quiet`): it waits until nothing else is training, and nothing new starts
training until it is done. With the variable unset (a cluster pod, the ``stage`` CLI, tests) both are
no-ops.
"""

from __future__ import annotations

import fcntl
import math
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

LOCK_ENV = "RIGHTSIZER_TIMING_LOCK"

F = TypeVar("F", bound=Callable)


@contextmanager
def _locked(mode: int) -> Iterator[None]:
    path = os.environ.get(LOCK_ENV)
    if not path:
        yield
        return
    with open(path, "a") as handle:  # each open() is its own lock holder, even within one process
        fcntl.flock(handle, mode)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def busy():
    """Held while a stage trains or infers: measurements wait for it."""
    return _locked(fcntl.LOCK_SH)


def quiet():
    """Held while timing: waits for every busy stage to finish, and holds new ones back."""
    return _locked(fcntl.LOCK_EX)


def times_itself(stage_run: F) -> F:
    """Mark a stage's ``run`` that takes :func:`quiet` itself, so ``call`` must not hold :func:`busy` for it."""
    stage_run.times_itself = True
    return stage_run


def available_cores() -> int:
    """Cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def cpu_quantity(value: str | None) -> float | None:
    """A Kubernetes CPU quantity in cores: '2' -> 2.0, '500m' -> 0.5."""
    if value is None:
        return None
    return float(value[:-1]) / 1000 if value.endswith("m") else float(value)


def task_threads(config) -> int:
    """Threads for inference and timing: ``evaluation.threads`` when set, else the evaluate task's CPU
    limit rounded down (at least 1), at most the cores available here."""
    if config.evaluation.threads:
        return config.evaluation.threads
    cores = cpu_quantity(config.resources.for_stage("evaluate").cpu)
    if cores is None:
        return available_cores()
    return max(1, min(available_cores(), math.floor(cores)))
