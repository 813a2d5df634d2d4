"""Multi-node launcher: the TrainJob it builds, and its lifecycle against a loopback Kubernetes API.

``FakeKubernetes`` is an ``http.server`` on 127.0.0.1 (ephemeral port) that answers the endpoints the
Kubeflow SDK's ``TrainerClient`` calls (runtimes, trainjobs, pods, pod logs), reached through an ordinary
kubeconfig with a bearer token. Its "controller" plays Kubeflow Trainer's part: in ``run`` mode it starts
every node's container command as a local process with the TrainJob's env (the Secret's keys resolved
from ``secretKeyRef``) and the ``PET_*`` rendezvous variables of the torch plugin, so the nodes really
run torchrun together; the other modes script failures and hangs. Outputs move through SeaweedFS (KFP's object store, tests/s3_server.py).
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest
import yaml

from rightsizer import storage
from rightsizer.errors import UserError
from rightsizer.launch import LaunchError
from rightsizer.launch.trainjob import run_trainjob

import trainer_rules
from conftest import s3_env
from s3_server import ACCESS_KEY, SECRET_KEY

REPO = Path(__file__).resolve().parents[1]
NAMESPACE = "team-a"
TOKEN = "test-token"
SECRET = {"mlpipeline-minio-artifact": {"accesskey": ACCESS_KEY, "secretkey": SECRET_KEY}}  # the Secret's content
GROUP = "/apis/trainer.kubeflow.org/v1alpha1"
logging.getLogger("werkzeug").setLevel(logging.ERROR)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class FakeKubernetes:
    """Loopback Kubernetes API + a toy Trainer controller. ``mode``: run | fail | user-error | hang."""

    def __init__(self, tmp: Path, mode: str = "run", runtimes: dict | None = None, config_maps: dict | None = None):
        self.tmp, self.mode = tmp, mode
        self.config_maps = config_maps or {}
        self.runtimes = runtimes if runtimes is not None else {"rightsizer-torch-distributed": self.stock_runtime()}
        self.jobs: dict[str, dict] = {}
        self.pods: dict[str, dict] = {}
        self.logs: dict[str, Path] = {}
        self.processes: list[subprocess.Popen] = []
        self.created: list[dict] = []
        self.deleted: list[str] = []
        self.refused: list[list[str]] = []
        self.unauthorised = 0
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _send(self, code: int, body, content_type="application/json"):
                data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _route(self, method: str):
                if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                    fake.unauthorised += 1
                    return self._send(401, _status(401, "Unauthorized"))
                url = urlparse(self.path)
                body = None
                if method == "POST":
                    body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                code, payload, kind = fake.handle(method, url.path, parse_qs(url.query), body)
                self._send(code, payload, kind)

            def do_GET(self):
                self._route("GET")

            def do_POST(self):
                self._route("POST")

            def do_DELETE(self):
                self._route("DELETE")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    @staticmethod
    def stock_runtime() -> dict:
        return yaml.safe_load((REPO / "k8s" / "cluster" / "trainingruntime.yaml").read_text())

    def kubeconfig(self) -> Path:
        path = self.tmp / "kubeconfig"
        path.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "fake",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "fake", "user": {"token": TOKEN}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake", "namespace": NAMESPACE}}],
        }))
        return path

    # -- the API ------------------------------------------------------------------------------
    def handle(self, method: str, path: str, query: dict, body: dict | None):
        if method == "GET" and (m := re.fullmatch(rf"{GROUP}/clustertrainingruntimes/([^/]+)", path)):
            runtime = self.runtimes.get(m.group(1))
            return (200, runtime, "application/json") if runtime else (404, _status(404, "NotFound"), "application/json")
        if method == "GET" and re.fullmatch(rf"{GROUP}/namespaces/[^/]+/trainingruntimes/[^/]+", path):
            return 404, _status(404, "NotFound"), "application/json"
        if re.fullmatch(r"/api/v1/namespaces/[^/]+/configmaps/[^/]+", path):
            return 200, {"kind": "ConfigMap", "apiVersion": "v1", "metadata": {"name": "kubeflow-trainer-public"},
                         "data": {"kubeflow_trainer_version": "2.3.0"}}, "application/json"
        if method == "POST" and (m := re.fullmatch(rf"{GROUP}/namespaces/([^/]+)/trainjobs", path)):
            return self.create(m.group(1), body)
        if m := re.fullmatch(rf"{GROUP}/namespaces/([^/]+)/trainjobs/([^/]+)", path):
            name = m.group(2)
            with self.lock:
                job = self.jobs.get(name)
                if job is None:
                    return 404, _status(404, "NotFound"), "application/json"
                if method == "DELETE":
                    self.deleted.append(name)
                    self.jobs.pop(name)
                    self.stop_processes()
                    return 200, _status(200, "Success"), "application/json"
                return 200, job, "application/json"
        if method == "GET" and re.fullmatch(r"/api/v1/namespaces/[^/]+/pods", path):
            selector = query.get("labelSelector", [""])[0]
            job = re.search(r"jobset-name=([^,]+)", selector).group(1)
            with self.lock:
                items = [p for p in self.pods.values() if p["metadata"]["labels"]["jobset.sigs.k8s.io/jobset-name"] == job]
            return 200, {"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": items}, "application/json"
        if method == "GET" and (m := re.fullmatch(r"/api/v1/namespaces/[^/]+/pods/([^/]+)/log", path)):
            log = self.logs.get(m.group(1))
            return 200, log.read_text(errors="replace") if log and log.exists() else "", "text/plain"
        return 404, _status(404, f"no route {method} {path}"), "application/json"

    def create(self, namespace: str, body: dict):
        name = body["metadata"]["name"]
        # the API server's admission: the Trainer v2.3 CRD schema and validating webhook (tests/trainer_rules.py)
        runtime = self.runtimes.get(body["spec"]["runtimeRef"]["name"])
        refused = trainer_rules.admission_errors(body, runtime, "v2.3.0") if runtime else []
        if refused:
            self.refused.append(refused)
            return 422, _status(422, "admission webhook \"validate.trainjob.trainer.kubeflow.org\" denied the "
                                     f"request: {refused[0]}"), "application/json"
        with self.lock:
            self.created.append(json.loads(json.dumps(body)))
            job = json.loads(json.dumps(body))
            job["metadata"].update(namespace=namespace, uid=f"uid-{name}", creationTimestamp=_now())
            job["status"] = {}
            self.jobs[name] = job
        threading.Thread(target=self.controller, args=(name,), daemon=True).start()
        return 201, job, "application/json"

    # -- the controller -----------------------------------------------------------------------
    def pod(self, job: str, index: int, phase: str) -> str:
        name = f"{job}-node-0-{index}-abcde"
        with self.lock:
            self.pods[name] = {
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": name, "namespace": NAMESPACE, "creationTimestamp": _now(),
                             "labels": {"jobset.sigs.k8s.io/jobset-name": job,
                                        "jobset.sigs.k8s.io/replicatedjob-name": "node",
                                        "batch.kubernetes.io/job-completion-index": str(index)}},
                "spec": {"containers": [{"name": "node", "image": "img"}]},
                "status": {"phase": phase},
            }
        return name

    def finish(self, job: str, condition: str):
        with self.lock:
            if job in self.jobs:
                self.jobs[job]["status"] = {"conditions": [{"type": condition, "status": "True", "reason": condition,
                                                            "message": f"TrainJob {condition.lower()}",
                                                            "lastTransitionTime": _now()}]}

    def controller(self, name: str):
        job = self.jobs[name]
        nodes = job["spec"]["trainer"]["numNodes"]
        if self.mode == "hang":
            for index in range(nodes):
                self.pod(name, index, "Running")
            return
        if self.mode in ("fail", "user-error"):
            self.pod(name, 0, "Running")
            failed = self.pod(name, 1, "Failed")
            self.logs[failed] = self.tmp / f"{failed}.log"
            last = ("error: data split 'train' has one class; add examples of the others" if self.mode == "user-error"
                    else "RuntimeError: CUDA error: out of memory")
            self.logs[failed].write_text("node 1: torchrun ...\nTraceback (most recent call last):\n  File x\n" + last + "\n")
            time.sleep(0.3)
            self.finish(name, "Failed")
            return
        self.run_nodes(name, job, nodes)

    def run_nodes(self, name: str, job: dict, nodes: int):
        """Start every node's command like the Trainer's torch plugin would, then report the outcome."""
        trainer = job["spec"]["trainer"]
        # credentials and store settings only via the Secret and the ConfigMap, as on a cluster
        base = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RIGHTSIZER_S3_"))}
        env = dict(base)
        for entry in trainer.get("env", []):  # the torch plugin copies spec.trainer.env onto container `node`
            source = entry.get("valueFrom", {})
            if "value" in entry:
                env[entry["name"]] = entry["value"]
            elif ref := source.get("secretKeyRef"):
                if ref["key"] in SECRET.get(ref["name"], {}):
                    env[entry["name"]] = SECRET[ref["name"]][ref["key"]]
            elif ref := source.get("configMapKeyRef"):
                if ref["key"] in self.config_maps.get(ref["name"], {}):
                    env[entry["name"]] = self.config_maps[ref["name"]][ref["key"]]
        port = _free_port()
        command = [sys.executable if trainer["command"][0] == "python" else trainer["command"][0],
                   *trainer["command"][1:], *trainer["args"]]
        pods = []
        for index in range(nodes):
            pod = self.pod(name, index, "Running")
            log = self.tmp / f"{pod}.log"
            self.logs[pod] = log
            node_env = {**env, "PET_NNODES": str(nodes), "PET_NODE_RANK": str(index), "JOB_COMPLETION_INDEX": str(index),
                        "PET_MASTER_ADDR": "127.0.0.1", "PET_MASTER_PORT": str(port)}
            with open(log, "w") as handle:
                process = subprocess.Popen(command, env=node_env, cwd=self.tmp, stdout=handle, stderr=subprocess.STDOUT,
                                           start_new_session=True)
            self.processes.append(process)
            pods.append((pod, process))
        codes = [process.wait() for _, process in pods]
        with self.lock:
            for (pod, _), code in zip(pods, codes):
                if pod in self.pods:
                    self.pods[pod]["status"]["phase"] = "Succeeded" if code == 0 else "Failed"
        self.finish(name, "Complete" if all(code == 0 for code in codes) else "Failed")

    def stop_processes(self):
        for process in self.processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)

    def close(self):
        self.stop_processes()
        for process in self.processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
        self.server.shutdown()
        self.server.server_close()


def _status(code: int, reason: str) -> dict:
    return {"kind": "Status", "apiVersion": "v1", "status": "Failure" if code >= 400 else "Success",
            "reason": reason, "code": code, "message": reason}


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


# ---------------------------------------------------------------------------------------------
# fixtures


@pytest.fixture
def s3(seaweedfs, monkeypatch):
    """The session's SeaweedFS (KFP's own store) with bucket 'rightsizer' emptied; env pointing at it."""
    seaweedfs.empty_bucket("rightsizer")
    s3_env(monkeypatch, seaweedfs, retries=1)
    yield seaweedfs.endpoint, storage.Store.from_env()


@pytest.fixture
def cluster(tmp_path, monkeypatch):
    made = []

    def make(mode: str = "run", runtimes: dict | None = None, config_maps: dict | None = None) -> FakeKubernetes:
        fake = FakeKubernetes(tmp_path, mode, runtimes, config_maps)
        made.append(fake)
        monkeypatch.setenv("KUBECONFIG", str(fake.kubeconfig()))
        return fake

    yield make
    for fake in made:
        fake.close()


def multi_node_config(tiny_config, endpoint: str, *, workers=2, gpus=0, processes=1, cpu="2", memory="4Gi",
                      teacher_overrides=None):
    resources = {"workers": workers, "gpus": gpus, "cpu": cpu, "memory": memory}
    if processes:
        resources["processes"] = processes
    raw_overrides = [f"teachers.0.{k}={v}" for k, v in (teacher_overrides or {}).items()]
    return tiny_config(raw_overrides, image="registry.example/rightsizer:test", image_cuda="registry.example/rightsizer:test-cuda",
                       resources={"teachers": resources}, storage={"endpoint": endpoint, "bucket": "rightsizer"},
                       hf_token_secret="hf-token")


# ---------------------------------------------------------------------------------------------
# the TrainJob, field by field


def test_trainjob_for_two_nodes_of_four_gpus(s3, cluster, tiny_config, demo_data, tmp_path):
    endpoint, store = s3
    fake = cluster("hang")
    config = multi_node_config(tiny_config, endpoint, gpus=4, processes=None, cpu="16", memory="128Gi")
    with pytest.raises(UserError, match=r"did not finish within 1 s; it was deleted"):
        run_trainjob("teacher", config, "teachers", tmp_path / "out", [demo_data], name="teacher",
                     timeout_s=1, poll_s=0.1)
    assert fake.unauthorised == 0 and len(fake.created) == 1
    job = fake.created[0]
    name = job["metadata"]["name"]
    assert job["apiVersion"] == "trainer.kubeflow.org/v1alpha1" and job["kind"] == "TrainJob"
    assert re.fullmatch(r"rs-teacher-teacher-test-[0-9a-f]{8}", name) and len(name) <= 40
    assert job["metadata"]["labels"] == {"app.kubernetes.io/part-of": "rightsizer", "app.kubernetes.io/component": "trainjob",
                                         "rightsizer.io/run": "test", "rightsizer.io/stage": "teacher"}
    spec = job["spec"]
    assert spec["runtimeRef"] == {"name": "rightsizer-torch-distributed", "kind": "ClusterTrainingRuntime"} or \
        spec["runtimeRef"] == {"name": "rightsizer-torch-distributed", "kind": "ClusterTrainingRuntime",
                               "apiGroup": "trainer.kubeflow.org"}
    assert spec["activeDeadlineSeconds"] == 1 + 300  # the cluster stops it even if the launcher dies
    trainer = spec["trainer"]
    assert trainer["image"] == "registry.example/rightsizer:test-cuda"  # GPU nodes: the CUDA image
    assert trainer["numNodes"] == 2
    assert trainer["command"] == ["python", "-m", "rightsizer.launch.node"]
    prefix = f"s3://rightsizer/runs/test/trainjobs/{name}"
    assert trainer["args"] == ["stage", "teacher", "--config", f"{prefix}/config.json", "--in", f"{prefix}/inputs/0-data",
                               "--out", f"{prefix}/output", "--name", "teacher", "--nproc-per-node", "4"]
    wanted = {"cpu": "16", "memory": "128Gi", "nvidia.com/gpu": "4", "ephemeral-storage": "50Gi"}
    assert trainer["resourcesPerNode"] == {"requests": wanted, "limits": wanted}
    env = {e["name"]: e.get("value", e.get("valueFrom")) for e in trainer["env"]}
    assert env["AWS_ENDPOINT_URL"] == endpoint and env["RIGHTSIZER_QUIET"] == "1"
    assert env["RIGHTSIZER_S3_BUCKET"] == "rightsizer"
    # every env var is in spec.trainer.env (Trainer >= 2.2 refuses env in a runtime patch), secrets by reference
    secret = {"name": "mlpipeline-minio-artifact", "optional": True}
    assert env["AWS_ACCESS_KEY_ID"] == {"secretKeyRef": {**secret, "key": "accesskey"}}
    assert env["AWS_SECRET_ACCESS_KEY"] == {"secretKeyRef": {**secret, "key": "secretkey"}}
    assert env["HF_TOKEN"] == {"secretKeyRef": {"name": "hf-token", "key": "token", "optional": True}}
    assert env["RIGHTSIZER_S3_PREFIX"] == {"configMapKeyRef": {"name": "rightsizer-storage", "key": "prefix",
                                                               "optional": True}}
    (patch,) = spec["runtimePatches"]
    assert patch["manager"] == "rightsizer.io/launcher"
    (rjob,) = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
    assert rjob["name"] == "node"
    pod = rjob["template"]["spec"]["template"]["spec"]
    assert pod["volumes"] == [{"name": "dshm", "emptyDir": {"medium": "Memory"}}]
    (container,) = pod["containers"]
    assert container["name"] == "node"
    assert container == {"name": "node", "volumeMounts": [{"name": "dshm", "mountPath": "/dev/shm"}]}  # no env
    assert ACCESS_KEY not in json.dumps(job) and SECRET_KEY not in json.dumps(job)  # no credential values anywhere
    # what the Trainer v2.2 and v2.3 API servers admit: their CRD schemas and webhook rules
    for version in trainer_rules.VERSIONS:
        assert trainer_rules.admission_errors(job, fake.stock_runtime(), version) == [], version
    assert fake.refused == []
    # staged before the job was created: the config (as JSON) and the prepared data
    staged = {o.key for o in store.list(prefix)}
    assert f"runs/test/trainjobs/{name}/config.json" in staged
    assert f"runs/test/trainjobs/{name}/inputs/0-data/card.json" in staged
    # timed out -> deleted, nothing half-written in place
    assert fake.deleted == [name] and not (tmp_path / "out").exists()


def test_failed_node_is_named_with_its_log_tail_and_the_job_deleted(s3, cluster, tiny_config, demo_data, tmp_path):
    endpoint, _ = s3
    fake = cluster("fail")
    config = multi_node_config(tiny_config, endpoint)
    with pytest.raises(LaunchError) as caught:
        run_trainjob("teacher", config, "teachers", tmp_path / "out", [demo_data], name="teacher", poll_s=0.1)
    message = str(caught.value)
    name = fake.created[0]["metadata"]["name"]
    assert f"TrainJob {name} failed on node-1 (pod {name}-node-0-1-abcde)" in message
    assert message.rstrip().endswith("RuntimeError: CUDA error: out of memory")
    assert fake.deleted == [name] and not (tmp_path / "out").exists()


def test_user_error_in_a_node_comes_back_as_that_error(s3, cluster, tiny_config, demo_data, tmp_path):
    endpoint, _ = s3
    fake = cluster("user-error")
    with pytest.raises(UserError, match=r"node-1: data split 'train' has one class"):
        run_trainjob("teacher", multi_node_config(tiny_config, endpoint), "teachers", tmp_path / "out", [demo_data],
                     name="teacher", poll_s=0.1)
    assert len(fake.deleted) == 1


def test_cancelled_launcher_deletes_its_trainjob(s3, cluster, tiny_config, demo_data, tmp_path):
    """KFP cancels a run by deleting the pod: SIGTERM to the launcher, which deletes the TrainJob and exits."""
    endpoint, _ = s3
    fake = cluster("hang")
    config_path = tmp_path / "config.json"
    config_path.write_text(multi_node_config(tiny_config, endpoint).to_json())
    launcher = subprocess.Popen(
        [sys.executable, "-m", "rightsizer.cli", "stage", "teacher", "--config", str(config_path), "--in", str(demo_data),
         "--out", str(tmp_path / "out")], env={**os.environ, "RIGHTSIZER_TRAINJOB_POLL_S": "0.1"},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not fake.pods:  # created, and its nodes are running
            assert launcher.poll() is None, launcher.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.1)
        launcher.send_signal(signal.SIGTERM)
        out, err = launcher.communicate(timeout=60)
    finally:
        if launcher.poll() is None:
            launcher.kill()
    name = fake.created[0]["metadata"]["name"]
    assert launcher.returncode == 130 and err.strip().splitlines()[-1] == "error: interrupted"
    assert f"trainjob {name}: deleted" in out
    assert fake.deleted == [name] and not (tmp_path / "out").exists()


def test_missing_runtime_is_a_user_error_and_creates_nothing(s3, cluster, tiny_config, demo_data, tmp_path):
    endpoint, _ = s3
    fake = cluster("run", runtimes={})
    with pytest.raises(UserError, match=r"runtime 'rightsizer-torch-distributed' not found on the cluster.*k8s/cluster"):
        run_trainjob("teacher", multi_node_config(tiny_config, endpoint), "teachers", tmp_path / "out", [demo_data],
                     name="teacher")
    assert fake.created == [] and fake.deleted == []


def test_no_cluster_access_fails_before_anything_is_staged(s3, tiny_config, demo_data, tmp_path, monkeypatch, capsys):
    from rightsizer.cli import main

    endpoint, store = s3
    before = store.list("s3://rightsizer/")
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "nowhere" / "config"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    config_path = tmp_path / "config.json"
    config_path.write_text(multi_node_config(tiny_config, endpoint).to_json())
    code = main(["stage", "teacher", "--config", str(config_path), "--in", str(demo_data), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert err[0].startswith("error: resources.teachers.workers is 2") and "no cluster access" in err[0]
    assert store.list("s3://rightsizer/") == before and not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------
# the whole lifecycle, for real: two nodes run torchrun together, node 0 uploads, the launcher collects


@pytest.mark.slow
def test_two_node_trainjob_trains_and_its_output_is_collected(s3, cluster, tiny_config, demo_data, tmp_path):
    from rightsizer.models import load_saved

    endpoint, store = s3
    fake = cluster("run")
    config = multi_node_config(tiny_config, endpoint, teacher_overrides={"max_steps": 4, "batch_size": 8})
    summary = run_trainjob("teacher", config, "teachers", tmp_path / "out", [demo_data], name="teacher", poll_s=0.2)
    name = fake.created[0]["metadata"]["name"]
    logs = "\n".join(p.read_text(errors="replace")[-3000:] for p in fake.logs.values())
    assert summary["launch"] == {"mode": "trainjob", "world_size": 2, "nodes": 2, "device": "cpu",
                                 "deepspeed_zero_stage": None}, logs
    assert summary["trainjob"]["name"] == name and summary["trainjob"]["namespace"] == NAMESPACE
    assert summary["steps"] == 4
    written = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert written["trainjob"]["nodes"] == 2
    model, _ = load_saved(tmp_path / "out" / "model")
    assert model.num_labels == 3
    assert fake.deleted == [name]
    uploaded = {o.key.rsplit("/", 1)[-1] for o in store.list(f"s3://rightsizer/runs/test/trainjobs/{name}/output")}
    assert {"summary.json", "metrics.json", "model.safetensors"} <= uploaded


# ---------------------------------------------------------------------------------------------
# the compiled pipeline: with workers > 1 the teacher task is the launcher


def _compiled(tmp_path, overrides: list[str]):
    from rightsizer.cli import main

    out = tmp_path / "pipeline.yaml"
    assert main(["compile", str(REPO / "examples" / "demo.yaml"), "-o", str(out), *overrides]) == 0
    spec, platform = list(yaml.safe_load_all(out.read_text()))
    executors = spec["deploymentSpec"]["executors"]
    teacher = next(v for k, v in executors.items() if k == "exec-teacher" or k.startswith("exec-teacher-"))
    tasks = dict(spec["root"]["dag"]["tasks"])
    for comp in spec["components"].values():
        tasks.update(comp.get("dag", {}).get("tasks", {}))
    task = next(t for t in tasks.values() if t["componentRef"]["name"] == "comp-teacher")
    return teacher, task, platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]["exec-teacher"]


def test_workers_two_compiles_the_teacher_task_into_an_uncached_launcher(tmp_path):
    sets = ["--set", "resources.teachers.workers=2", "--set", "resources.teachers.gpus=4",
            "--set", "resources.teachers.cache=true", "--set", "resources.teachers.tolerations=[{key: gpu}]"]
    teacher, task, platform = _compiled(tmp_path, sets)
    resources = teacher["container"]["resources"]
    assert "accelerator" not in resources  # the GPUs go to the TrainJob's nodes, not to the launcher pod
    assert resources["resourceCpuRequest"] == "1" and resources["resourceMemoryLimit"] == "2Gi"
    assert task["cachingOptions"] in ({}, {"enableCache": False})  # never cached, even when asked
    assert {k["envVar"] for k in platform["secretAsEnv"][0]["keyToEnv"]} == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    assert "tolerations" not in platform  # they go to the TrainJob too


def test_gpus_auto_is_planned_when_the_pipeline_is_compiled(tmp_path):
    from transformers import BertConfig

    model = tmp_path / "bert-large"
    BertConfig(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096).save_pretrained(model)
    common = ["--set", f"teachers.0.model={model}", "--set", "data.max_length=512", "--set", "resources.teachers.gpus=auto"]
    roomy, _, _ = _compiled(tmp_path, [*common, "--set", "resources.teachers.gpu_memory_gb=80"])
    assert roomy["container"]["resources"]["accelerator"]["resourceCount"] == "1"
    small, _, _ = _compiled(tmp_path, [*common, "--set", "resources.teachers.gpu_memory_gb=4"])
    assert int(small["container"]["resources"]["accelerator"]["resourceCount"]) > 1
