"""Fair timing on a shared machine: no candidate is timed while another stage trains beside it.

On a cluster every task is its own pod, so latency and throughput are measured on a quiet node.
A local run puts every task on this one machine, and ``kfp.local`` runs two loop iterations at
once: a teacher timed while an adapter trains next to it would look slower than it is, and the
recommendation (the fastest candidate within tolerance) would follow the noise.

``run_local`` points ``$RIGHTSIZER_TIMING_LOCK`` at a lock file. Every stage then holds a shared
lock while it works (:func:`busy`, taken by ``component_runtime.call``), and a measurement takes the
exclusive one (:func:`quiet`): it waits until nothing else is training, and nothing new starts
training until it is done. With the variable unset (a cluster pod, the ``stage`` CLI, tests) both are
no-ops.
"""

from __future__ import annotations

import fcntl
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
