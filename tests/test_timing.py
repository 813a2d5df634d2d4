"""The local-run timing lock: a candidate is timed only while no other stage works beside it."""

import fcntl
import threading

import pytest

from rightsizer import timing
from rightsizer.component_runtime import call

WAIT_S = 10  # generous bound on how long a released lock may take to pass on


def _in_thread(context):
    """Enter ``context`` in a thread; return (entered event, release event)."""
    entered, release = threading.Event(), threading.Event()

    def hold():
        with context():
            entered.set()
            release.wait(WAIT_S)

    thread = threading.Thread(target=hold, daemon=True)
    thread.start()
    return entered, release, thread


def test_without_the_variable_both_are_no_ops(monkeypatch):
    monkeypatch.delenv(timing.LOCK_ENV, raising=False)
    with timing.busy(), timing.quiet(), timing.quiet():
        pass


def test_a_measurement_waits_for_busy_stages_and_holds_new_ones_back(tmp_path, monkeypatch):
    monkeypatch.setenv(timing.LOCK_ENV, str(tmp_path / "lock"))
    with timing.busy():
        with timing.busy():  # stages share the machine with each other
            measured, release_measure, measuring = _in_thread(timing.quiet)
            assert not measured.wait(0.3), "timed while a stage was training"
    assert measured.wait(WAIT_S)
    trained, release_train, training = _in_thread(timing.busy)
    assert not trained.wait(0.3), "a stage started training during a measurement"
    release_measure.set()
    assert trained.wait(WAIT_S)
    release_train.set()
    measuring.join(WAIT_S), training.join(WAIT_S)


def _exclusive_available(path) -> bool:
    with open(path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        fcntl.flock(handle, fcntl.LOCK_UN)
        return True


def test_call_holds_the_shared_lock_except_for_stages_that_time_themselves(tmp_path, monkeypatch, tiny_config):
    lock = tmp_path / "lock"
    monkeypatch.setenv(timing.LOCK_ENV, str(lock))
    config_json = tiny_config().to_json()

    def trains(config):
        return _exclusive_available(lock)

    @timing.times_itself
    def measures(config):
        with timing.quiet():  # would deadlock if call() held the shared lock for it
            return _exclusive_available(lock)

    assert call(trains, config_json) is False
    assert call(measures, config_json) is False  # its own exclusive hold blocks another holder
    assert _exclusive_available(lock)


@pytest.mark.parametrize("module", ["evaluate", "prompting"])
def test_measuring_stages_are_marked(module):
    import importlib

    assert importlib.import_module(f"rightsizer.stages.{module}").run.times_itself


@pytest.mark.parametrize("cores, threads", [(1, 1), (2, 1), (3, 1), (8, 4), (16, 8)])
def test_local_tasks_get_half_the_cores(monkeypatch, cores, threads):
    """kfp.local runs two loop iterations at once: each gets half the machine, never zero threads."""
    import os

    from rightsizer.pipeline import local_threads

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cores)))
    assert local_threads() == threads
