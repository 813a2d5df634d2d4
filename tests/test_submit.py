"""`rightsizer submit` / `schedule` against a loopback server speaking KFP's v2beta1 REST API.

KFP's API server cannot run here, so a small ``http.server`` in a thread answers the endpoints the
KFP SDK client calls (healthz, experiments, runs, pipelines upload/upload_version/list, versions,
recurring runs) and records every request; the tests assert the uploaded pipeline spec, the run
parameters, the cron and the auth header.
"""

from __future__ import annotations

import email.parser
import email.policy
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest
import yaml

from rightsizer import kfp_client
from rightsizer.cli import main
from rightsizer.errors import UserError

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "examples" / "demo.yaml"
API = "/apis/v2beta1"


class FakeKFP:
    """Just enough of the KFP v2beta1 API server, in memory; ``requests`` records what arrived."""

    def __init__(self, token: str | None = None):
        self.token = token
        self.requests: list[dict] = []
        self.experiments: dict[str, dict] = {}
        self.pipelines: dict[str, dict] = {}
        self.versions: dict[str, list[dict]] = {}
        self.runs: list[dict] = []
        self.recurring: list[dict] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _reply(self, status: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _handle(self, method: str) -> None:
                url = urlparse(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                record = {"method": method, "path": url.path, "query": parse_qs(url.query),
                          "auth": self.headers.get("Authorization"), "content_type": self.headers.get("Content-Type", "")}
                if record["content_type"].startswith("multipart/form-data"):
                    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
                        b"Content-Type: " + record["content_type"].encode() + b"\r\n\r\n" + raw)
                    record["files"] = {part.get_param("name", header="content-disposition"): part.get_content()
                                       for part in message.iter_parts()}
                elif raw:
                    record["json"] = json.loads(raw)
                fake.requests.append(record)
                if fake.token and record["auth"] != f"Bearer {fake.token}":
                    return self._reply(401, {"error": "Unauthorized", "message": "token missing or wrong"})
                status, body = fake.route(method, url.path, record)
                self._reply(status, body)

            def do_GET(self):
                self._handle("GET")

            def do_POST(self):
                self._handle("POST")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @staticmethod
    def _name_filter(record: dict) -> str | None:
        text = record["query"].get("filter", [None])[0]
        return json.loads(text)["predicates"][0]["stringValue"] if text else None

    def route(self, method: str, path: str, record: dict) -> tuple[int, dict]:
        if (method, path) == ("GET", f"{API}/healthz"):
            return 200, {"multi_user": False}
        if (method, path) == ("GET", f"{API}/experiments"):
            name = self._name_filter(record)
            found = [e for e in self.experiments.values() if e["display_name"] == name]
            return 200, {"experiments": found, "total_size": len(found)} if found else {}
        if (method, path) == ("POST", f"{API}/experiments"):
            experiment = {**record["json"], "experiment_id": f"exp-{len(self.experiments) + 1}"}
            self.experiments[experiment["experiment_id"]] = experiment
            return 200, experiment
        if (method, path) == ("POST", f"{API}/runs"):
            run = {**record["json"], "run_id": f"run-{len(self.runs) + 1}", "state": "PENDING"}
            self.runs.append(run)
            return 200, run
        if (method, path) == ("GET", f"{API}/pipelines"):
            # as the real server: without a namespace, shared pipelines only; with one, that namespace's
            name, namespace = self._name_filter(record), record["query"].get("namespace", [""])[0]
            found = [p for p in self.pipelines.values() if p["display_name"] == name and p["namespace"] == namespace]
            return 200, {"pipelines": found, "total_size": len(found)} if found else {}
        if (method, path) == ("POST", f"{API}/pipelines/upload"):
            pipeline_id = f"pipe-{len(self.pipelines) + 1}"
            pipeline = {"pipeline_id": pipeline_id, "display_name": record["query"]["name"][0],
                        "namespace": record["query"].get("namespace", [""])[0]}
            if any((p["display_name"], p["namespace"]) == (pipeline["display_name"], pipeline["namespace"])
                   for p in self.pipelines.values()):
                return 409, {"error": "Failed to create a pipeline: already exists"}
            self.pipelines[pipeline_id] = pipeline
            self.versions[pipeline_id] = [{"pipeline_id": pipeline_id, "pipeline_version_id": f"{pipeline_id}-v1",
                                           "display_name": pipeline["display_name"]}]
            return 200, pipeline
        if (method, path) == ("POST", f"{API}/pipelines/upload_version"):
            pipeline_id = record["query"]["pipelineid"][0]
            if pipeline_id not in self.pipelines:
                return 404, {"error": "pipeline not found"}
            version = {"pipeline_id": pipeline_id, "display_name": record["query"]["name"][0],
                       "pipeline_version_id": f"{pipeline_id}-v{len(self.versions[pipeline_id]) + 1}"}
            self.versions[pipeline_id].insert(0, version)
            return 200, version
        if method == "GET" and path.startswith(f"{API}/pipelines/") and path.endswith("/versions"):
            pipeline_id = path.split("/")[-2]
            return 200, {"pipeline_versions": self.versions.get(pipeline_id, [])}
        if (method, path) == ("POST", f"{API}/recurringruns"):
            job = {**record["json"], "recurring_run_id": f"rr-{len(self.recurring) + 1}"}
            self.recurring.append(job)
            return 200, job
        return 404, {"error": f"no route {method} {path}"}

    def calls(self) -> list[tuple[str, str]]:
        return [(r["method"], r["path"]) for r in self.requests]

    def __enter__(self) -> "FakeKFP":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)


@pytest.fixture(autouse=True)
def _isolated_kfp_context(tmp_path, monkeypatch):
    """The SDK reads/writes ~/.config/kfp/context.json: keep it inside the test's tmp dir."""
    import kfp

    monkeypatch.setattr(kfp.Client, "_LOCAL_KFP_CONTEXT", str(tmp_path / "kfp-context.json"))
    for name in ("KFP_TOKEN", "KF_PIPELINES_ENDPOINT", "KF_PIPELINES_DEFAULT_EXPERIMENT_NAME",
                 "KF_PIPELINES_OVERRIDE_EXPERIMENT_NAME", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name, raising=False)


def _executors(pipeline_spec: dict) -> tuple[dict, dict]:
    spec = pipeline_spec["pipeline_spec"]
    platform = pipeline_spec["platform_spec"]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    return spec["deploymentSpec"]["executors"], platform


def baked_config(pipeline_spec: dict) -> dict:
    """The config every task of a compiled pipeline gets, as a constant (the same for all tasks)."""
    tasks = dict(pipeline_spec["root"]["dag"]["tasks"])
    for component in pipeline_spec["components"].values():
        tasks.update(component.get("dag", {}).get("tasks", {}))
    constants = {task["inputs"]["parameters"]["config_json"]["runtimeValue"]["constant"] for task in tasks.values()
                 if "config_json" in task.get("inputs", {}).get("parameters", {})}
    assert len(constants) == 1
    return json.loads(constants.pop())


def test_submit_creates_experiment_and_run_with_spec_and_parameters(capsys, monkeypatch):
    monkeypatch.setenv("KFP_TOKEN", "tok-123")
    with FakeKFP(token="tok-123") as kfp_server:
        code = main(["submit", str(DEMO), "--host", kfp_server.url, "--experiment", "nightly",
                     "--set", "teachers.0.epochs=1"])
    assert code == 0, capsys.readouterr().err
    assert "submitted run run-1" in capsys.readouterr().out
    assert kfp_server.calls() == [("GET", f"{API}/healthz"), ("GET", f"{API}/healthz"),
                                  ("GET", f"{API}/experiments"), ("POST", f"{API}/experiments"), ("POST", f"{API}/runs")]
    assert all(r["auth"] == "Bearer tok-123" for r in kfp_server.requests)
    assert kfp_server.experiments["exp-1"]["display_name"] == "nightly"
    run = kfp_server.runs[0]
    assert run["experiment_id"] == "exp-1" and run["display_name"].startswith("demo ")
    assert not (run.get("runtime_config") or {}).get("parameters")  # the config is baked into the pipeline
    config = baked_config(run["pipeline_spec"]["pipeline_spec"])
    assert config["name"] == "demo" and config["teachers"][0]["epochs"] == 1.0
    executors, platform = _executors(run["pipeline_spec"])
    assert run["pipeline_spec"]["pipeline_spec"]["pipelineInfo"]["name"] == "demo"
    teacher = executors["exec-teacher"]["container"]["resources"]
    assert teacher["accelerator"]["resourceCount"] == "1" and teacher["resourceMemoryLimit"] == "8Gi"
    assert platform["exec-teacher"]["secretAsEnv"][0]["secretName"] == "mlpipeline-minio-artifact"
    assert platform["exec-teacher"]["emptyDirMounts"][0]["mountPath"] == "/dev/shm"


def test_schedule_uploads_pipeline_then_new_version_and_creates_recurring_run(capsys):
    with FakeKFP() as kfp_server:
        assert main(["schedule", str(DEMO), "--host", kfp_server.url, "--cron", "0 30 3 * * 1-5",
                     "--max-concurrency", "2"]) == 0, capsys.readouterr().err
        first = kfp_server.calls()
        assert main(["schedule", str(DEMO), "--host", kfp_server.url, "--cron", "@every 12h"]) == 0
    assert ("POST", f"{API}/pipelines/upload") in first and ("POST", f"{API}/pipelines/upload_version") not in first
    uploads = [r for r in kfp_server.requests if r["path"].startswith(f"{API}/pipelines/upload")]
    assert [r["path"] for r in uploads] == [f"{API}/pipelines/upload", f"{API}/pipelines/upload_version"]
    assert uploads[0]["query"]["name"] == ["demo"]
    assert uploads[1]["query"]["pipelineid"] == ["pipe-1"] and uploads[1]["query"]["name"][0].startswith("demo-")
    uploaded = list(yaml.safe_load_all(uploads[0]["files"]["uploadfile"]))
    assert uploaded[0]["pipelineInfo"]["name"] == "demo"
    assert "secretAsEnv" in uploaded[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]["exec-prepare"]
    first_job, second_job = kfp_server.recurring
    assert first_job["trigger"]["cron_schedule"]["cron"] == "0 30 3 * * 1-5"
    assert int(first_job["max_concurrency"]) == 2 and first_job["mode"] == "ENABLE" and first_job["no_catchup"] is True
    assert first_job["pipeline_version_reference"] == {"pipeline_id": "pipe-1", "pipeline_version_id": "pipe-1-v1"}
    assert not (first_job.get("runtime_config") or {}).get("parameters")
    assert baked_config(uploaded[0])["name"] == "demo"
    assert "pipeline_spec" not in first_job or not first_job["pipeline_spec"]  # runs the uploaded version
    assert second_job["pipeline_version_reference"]["pipeline_version_id"] == "pipe-1-v2"
    assert second_job["trigger"]["cron_schedule"]["cron"] == "@every 12h"
    assert first_job["experiment_id"] == second_job["experiment_id"] == "exp-1"  # experiment reused


def test_schedule_twice_in_a_profile_namespace_uploads_a_new_version(capsys):
    """Multi-user KFP: the pipeline lives in the profile namespace; the second schedule must find it there."""
    with FakeKFP() as kfp_server:
        for _ in range(2):
            assert main(["schedule", str(DEMO), "--host", kfp_server.url, "--namespace", "team-a",
                         "--cron", "0 0 3 * * *"]) == 0, capsys.readouterr().err
    lookups = [r for r in kfp_server.requests if (r["method"], r["path"]) == ("GET", f"{API}/pipelines")]
    assert [r["query"].get("namespace") for r in lookups] == [["team-a"], ["team-a"]]
    uploads = [r["path"] for r in kfp_server.requests if r["path"].startswith(f"{API}/pipelines/upload")]
    assert uploads == [f"{API}/pipelines/upload", f"{API}/pipelines/upload_version"]
    assert [p["namespace"] for p in kfp_server.pipelines.values()] == ["team-a"]


@pytest.mark.parametrize("cron, message", [
    ("0 3 * * *", 'did you mean "0 0 3 * * *"'),
    ("0 0 25 * * *", "hour field '25': 25 is outside 0-23"),
    ("0 0 3 * * * *", "has 7 fields"),
    ("0 ? 3 * * *", "'?' is only allowed"),
    ("*/0 * * * * *", "step '/0'"),
    ("@sometimes", "unknown descriptor"),
    ("", "--cron is empty"),
])
def test_bad_cron_is_refused_locally_with_an_example(cron, message):
    with pytest.raises(UserError, match="e.g. --cron \"0 0 3 \\* \\* \\*\"") as info:
        kfp_client.validate_cron(cron)
    assert message in str(info.value)


def test_valid_crons_pass():
    for cron in ("0 0 3 * * *", "0 */15 * * * *", "0 0 9 ? * MON-FRI", "30 0 0 1,15 JAN-JUN ?", "@daily", "@every 1h30m"):
        assert kfp_client.validate_cron(cron) == cron


@pytest.mark.parametrize("args, message", [
    (["submit", str(DEMO)], "no KFP host: pass --host URL"),
    (["submit", str(DEMO), "--host", "localhost:8080"], "must be an http:// or https:// URL"),
    (["schedule", str(DEMO), "--host", "http://127.0.0.1:9", "--cron", "0 0 3 * *"], "has 5 fields"),
    (["submit", str(DEMO), "--host", "http://127.0.0.1:9"], "cannot reach KFP at http://127.0.0.1:9"),
])
def test_submit_and_schedule_user_errors_are_one_line(args, message, capsys):
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err


def test_refused_token_is_one_line(capsys, monkeypatch):
    monkeypatch.setenv("KFP_TOKEN", "wrong")
    with FakeKFP(token="right") as kfp_server:
        assert main(["submit", str(DEMO), "--host", kfp_server.url]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "refused the request (401" in err[0] and "KFP_TOKEN" in err[0]
    assert not kfp_server.runs
