"""Kubeflow Trainer conformance: k8s/cluster's runtime and every TrainJob the launchers create (as
`rightsizer compile --trainjobs DIR` writes them) pass Trainer v2.2.0's and v2.3.0's CRD schemas with no
unknown field, and their admission webhooks' rules (tests/trainer_rules.py says where each rule comes from).
"""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

import pytest
import yaml

import trainer_rules
from rightsizer.cli import main

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "examples" / "demo.yaml"
MULTI_NODE = ["--set", "resources.teachers.workers=2", "--set", "resources.teachers.gpus=4",
              "--set", "resources.students.workers=2", "--set", "resources.adapters.workers=3",
              "--set", "resources.probe.workers=2", "--set", "resources.students.gpus=0",
              "--set", "resources.teachers.node_selector={nvidia.com/gpu.product: NVIDIA-H100-80GB-HBM3}",
              "--set", "resources.teachers.tolerations=[{key: nvidia.com/gpu, operator: Exists, effect: NoExecute, "
                       "tolerationSeconds: 300}]",
              "--set", "hf_token_secret=hf-token"]


def _runtime() -> dict:
    if shutil.which("kubectl"):
        from rightsizer.manifests import render

        (runtime,) = [d for d in yaml.safe_load_all(render(REPO / "k8s" / "cluster"))
                      if d and d["kind"] == "ClusterTrainingRuntime"]
        return runtime
    return yaml.safe_load((REPO / "k8s" / "cluster" / "trainingruntime.yaml").read_text())


@pytest.fixture(scope="module")
def trainjobs(tmp_path_factory) -> dict[str, dict]:
    out = tmp_path_factory.mktemp("compiled")
    assert main(["compile", str(DEMO), "-o", str(out / "p.yaml"), "--trainjobs", str(out / "trainjobs"), *MULTI_NODE]) == 0
    return {p.name: yaml.safe_load(p.read_text()) for p in sorted((out / "trainjobs").iterdir())}


@pytest.mark.parametrize("version", trainer_rules.VERSIONS)
def test_cluster_runtime_passes_the_crd_and_the_webhook(version):
    runtime = _runtime()
    assert trainer_rules.schema_errors(runtime, version) == []
    assert trainer_rules.runtime_webhook_errors(runtime) == []
    # the check is real: the pre-2.2 `numProcPerNode` is an unknown field, as strict kubectl apply says
    old = copy.deepcopy(runtime)
    old["spec"]["mlPolicy"]["torch"] = {"numProcPerNode": "auto"}
    assert any("numProcPerNode" in e for e in trainer_rules.schema_errors(old, version))
    two = copy.deepcopy(runtime)
    two["spec"]["template"]["spec"]["replicatedJobs"][0]["replicas"] = 2
    assert trainer_rules.runtime_webhook_errors(two)


def test_compile_writes_one_trainjob_per_multi_node_member(trainjobs):
    assert set(trainjobs) == {"teacher-teacher.yaml", "distill-student-2l.yaml", "distill-student-2l-nodistill.yaml",
                              "adapters-lora-qv.yaml", "adapters-ia3.yaml", "slice-teacher-L2.yaml"}
    teacher = trainjobs["teacher-teacher.yaml"]
    assert teacher["metadata"]["name"] == "rs-teacher-teacher-demo-xxxxxxxx"
    trainer = teacher["spec"]["trainer"]
    assert trainer["numNodes"] == 2 and trainer["resourcesPerNode"]["limits"]["nvidia.com/gpu"] == "4"
    assert trainer["image"].endswith("-cuda")  # GPU nodes get the CUDA image
    student = trainjobs["distill-student-2l.yaml"]["spec"]["trainer"]  # CPU nodes: the CPU image, no scratch request
    assert student["image"] == "ghcr.io/rightsizer/rightsizer:0.1.0"
    assert "ephemeral-storage" not in student["resourcesPerNode"]["requests"]
    assert trainer["resourcesPerNode"]["requests"]["ephemeral-storage"] == "50Gi"
    pod = teacher["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0][
        "template"]["spec"]["template"]["spec"]
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoExecute",
                                   "tolerationSeconds": 300}]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    env = {e["name"]: e.get("valueFrom") for e in trainer["env"]}
    assert env["HF_TOKEN"]["secretKeyRef"]["name"] == "hf-token"
    assert "--in" in trainer["args"] and trainer["args"][trainer["args"].index("--nproc-per-node") + 1] == "4"


@pytest.mark.parametrize("version", trainer_rules.VERSIONS)
def test_every_compiled_trainjob_is_admitted(trainjobs, version):
    runtime = _runtime()
    for name, job in trainjobs.items():
        assert trainer_rules.admission_errors(job, runtime, version) == [], name


@pytest.mark.parametrize("version", trainer_rules.VERSIONS)
def test_the_checks_refuse_what_the_trainer_refuses(trainjobs, version):
    runtime = _runtime()
    job = trainjobs["teacher-teacher.yaml"]

    def node_patch(obj):
        return obj["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0][
            "template"]["spec"]["template"]["spec"]["containers"][0]

    with_env = copy.deepcopy(job)  # what the launcher used to send: env on container `node` in a runtime patch
    node_patch(with_env)["env"] = [{"name": "AWS_ACCESS_KEY_ID", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]
    assert any("must not have envs" in e for e in trainer_rules.admission_errors(with_env, runtime, version))
    unknown = copy.deepcopy(job)
    unknown["spec"]["trainer"]["numProcPerNod"] = 4
    assert any("numProcPerNod" in e for e in trainer_rules.admission_errors(unknown, runtime, version))
    reserved = copy.deepcopy(job)
    reserved["spec"]["trainer"]["env"].append({"name": "PET_NNODES", "value": "2"})
    assert any("reserved envs" in e for e in trainer_rules.admission_errors(reserved, runtime, version))
    stranger = copy.deepcopy(job)
    node_patch(stranger)["name"] = "sidecar"
    assert any("doesn't exist" in e for e in trainer_rules.admission_errors(stranger, runtime, version))
    bad_name = copy.deepcopy(job)
    bad_name["metadata"]["name"] = "7-" + bad_name["metadata"]["name"]
    assert any("RFC 1035" in e for e in trainer_rules.admission_errors(bad_name, runtime, version))


def test_no_multi_node_stage_writes_no_trainjob(tmp_path, capsys):
    assert main(["compile", str(DEMO), "-o", str(tmp_path / "p.yaml"), "--trainjobs", str(tmp_path / "tj")]) == 0
    assert "no stage has workers > 1" in capsys.readouterr().out
    assert list((tmp_path / "tj").iterdir()) == []
