"""Shared fixtures: tiny configs and a prepared demo data set (built once per session)."""

from __future__ import annotations

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
    teacher.run(config_from_dict(tiny_raw()), demo_data, out)
    return out
