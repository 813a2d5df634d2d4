"""TensorBoard over a finished teacher stage's tb/: the real ``tensorboard`` on 127.0.0.1.

A tiny teacher is trained for a few steps (it logs its loss every step); TensorBoard is started on
an ephemeral port over the stage directory, and over the same events synced from an S3 prefix
(SeaweedFS), and its scalar-tags HTTP endpoint must list the training-loss tag. Bounded in time; the
server is always stopped.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from rightsizer.cli import main
from rightsizer.errors import UserError
from rightsizer.tensorboard import TensorBoardServer, resolve_logdir

LOSS_TAG = r"^train/loss$"


@pytest.fixture(scope="module")
def finished_teacher(tmp_path_factory, demo_data) -> Path:
    from rightsizer.config import config_from_dict
    from rightsizer.stages import teacher

    from conftest import tiny_raw

    raw = tiny_raw()
    raw["teachers"][0].update(max_steps=5, logging_steps=1)
    out = tmp_path_factory.mktemp("tb-teacher") / "teacher"
    teacher.run(config_from_dict(raw), demo_data, out)
    return out


def _serve_and_find_loss(logdir: Path) -> tuple[str, str]:
    server = TensorBoardServer(logdir, host="127.0.0.1", port=0, reload_interval_s=1)
    try:
        url = server.start(timeout_s=90)
        assert url.startswith("http://127.0.0.1:") and not url.endswith(":0")
        return server.wait_for_tag(LOSS_TAG, timeout_s=90)
    finally:
        server.stop()
        assert server.process.poll() is not None  # really stopped


def test_tensorboard_serves_a_finished_teacher_stage(finished_teacher):
    assert list((finished_teacher / "tb").glob("events.out.tfevents.*"))
    run, tag = _serve_and_find_loss(resolve_logdir(str(finished_teacher)))
    assert tag == "train/loss" and run in (".", "tb")


def test_tensorboard_serves_events_synced_from_s3(finished_teacher, seaweedfs, tmp_path, monkeypatch):
    """From KFP's own kind of store: SeaweedFS (tests/s3_server.py), as the TensorBoard Deployment reads it."""
    from conftest import s3_env
    from rightsizer.storage import Store

    seaweedfs.empty_bucket("runs")
    s3_env(monkeypatch, seaweedfs, retries=0)
    store = Store.from_env()
    store.upload_dir(finished_teacher, "s3://runs/demo/teacher")  # model, metrics, tb/ ...
    logdir = resolve_logdir("s3://runs/demo/teacher", cache_dir=tmp_path / "cache", store=store)
    empty = resolve_logdir("s3://runs/not-yet", cache_dir=tmp_path / "empty", store=store, allow_empty=True)
    with pytest.raises(UserError, match="no such object or prefix"):
        resolve_logdir("s3://runs/not-yet", cache_dir=tmp_path / "empty2", store=store)
    assert logdir == tmp_path / "cache"
    synced = [p.relative_to(logdir).parts[0] for p in logdir.rglob("*") if p.is_file() and not p.name.startswith(".")]
    assert synced and set(synced) == {"tb"}  # only the event files were fetched
    assert empty.is_dir() and not any(empty.rglob("events.out.tfevents.*"))
    run, tag = _serve_and_find_loss(logdir)
    assert tag == "train/loss" and run == "tb"


@pytest.mark.parametrize("make, message", [
    (lambda root: root / "missing", "not found"),
    (lambda root: (root / "empty").mkdir() or root / "empty", "no TensorBoard event files"),
    (lambda root: None, "is not an object-store URI"),
])
def test_tensorboard_bad_targets_exit_2(tmp_path, capsys, make, message):
    target = make(tmp_path)
    argument = "s4://bucket/x" if target is None else str(target)
    if target is None:
        message = "not found"  # an unknown scheme is just a path that does not exist
    assert main(["tensorboard", argument, "--port", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0]
