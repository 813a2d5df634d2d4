"""k8s/: every overlay renders with kustomize, the core objects validate against the Kubernetes
schema offline, everything runs non-root with limits, RBAC is least-privilege, secrets stay out of git.
"""

from __future__ import annotations

import base64
import copy
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from rightsizer.cli import main
from rightsizer.manifests import render

REPO = Path(__file__).resolve().parents[1]
K8S = REPO / "k8s"
K8S_VERSION = "1.30.0"
CRD_KINDS = {"ClusterTrainingRuntime", "TrainingRuntime", "TrainJob"}
IMAGE = "ghcr.io/rightsizer/rightsizer"

pytestmark = pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed")


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    """A copy of k8s/ with the git-ignored storage.env created from its template (test values)."""
    root = tmp_path_factory.mktemp("k8s") / "k8s"
    shutil.copytree(K8S, root, ignore=shutil.ignore_patterns("*.env"))
    env = root / "overlays" / "standalone" / "storage.env"
    env.write_text("accesskey=test-access\nsecretkey=test-secret-123\n")
    return root


@pytest.fixture(scope="module")
def rendered(tree) -> dict[str, list[dict]]:
    targets = {"cluster": tree / "cluster"} | {p.name: p for p in sorted((tree / "overlays").iterdir()) if p.is_dir()}
    assert {"kfp", "kfp-multi-user", "standalone"} <= set(targets)
    return {name: [d for d in yaml.safe_load_all(render(path)) if d] for name, path in targets.items()}


def _objects(rendered, overlay, kind=None, name=None):
    return [o for o in rendered[overlay] if (kind is None or o["kind"] == kind)
            and (name is None or o["metadata"]["name"] == name)]


def _one(rendered, overlay, kind, name):
    found = _objects(rendered, overlay, kind, name)
    assert len(found) == 1, f"{overlay}: expected one {kind}/{name}, got {len(found)}"
    return found[0]


def _pod_specs(obj: dict) -> list[dict]:
    kind = obj["kind"]
    if kind in ("Deployment", "Job", "StatefulSet", "DaemonSet"):
        return [obj["spec"]["template"]["spec"]]
    if kind in ("ClusterTrainingRuntime", "TrainingRuntime"):
        return [job["template"]["spec"]["template"]["spec"] for job in obj["spec"]["template"]["spec"]["replicatedJobs"]]
    return []


def test_core_objects_validate_against_the_kubernetes_schema(rendered):
    import kubernetes_validate

    checked = 0
    for overlay, objects in rendered.items():
        for obj in objects:
            if obj["kind"] in CRD_KINDS:
                continue
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
            checked += 1
    assert checked >= 20
    # the validator is real: an unknown field in a pod template fails
    broken = copy.deepcopy(_one(rendered, "kfp", "Deployment", "rightsizer-tensorboard"))
    broken["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


def test_every_pod_runs_non_root_without_privilege_and_with_limits(rendered):
    pods = 0
    for overlay, objects in rendered.items():
        for obj in objects:
            for spec in _pod_specs(obj):
                pods += 1
                where = f"{overlay}/{obj['kind']}/{obj['metadata']['name']}"
                assert spec["securityContext"]["runAsNonRoot"] is True, where
                assert spec["securityContext"]["runAsUser"] != 0, where
                assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", where
                assert spec.get("automountServiceAccountToken") is False, where  # none of them calls the API
                mounts = set()
                for container in spec["containers"] + spec.get("initContainers", []):
                    context = container["securityContext"]
                    assert context["allowPrivilegeEscalation"] is False, where
                    assert context["capabilities"]["drop"] == ["ALL"], where
                    assert context["readOnlyRootFilesystem"] is True, where
                    assert container["resources"]["requests"]["cpu"] and container["resources"]["requests"]["memory"], where
                    assert container["resources"]["limits"]["memory"], where
                    assert ":" in container["image"].rsplit("/", 1)[-1] and not container["image"].endswith(":latest"), where
                    mounts |= {m["mountPath"] for m in container.get("volumeMounts", [])}
                assert "/tmp" in mounts, f"{where}: a read-only root needs a writable /tmp"
    assert pods == 6  # tensorboard x3 overlays, minio, bucket job, training runtime


def test_rbac_is_least_privilege_for_trainjobs(rendered):
    for overlay in ("kfp", "standalone"):
        role = _one(rendered, overlay, "Role", "rightsizer-trainjobs")
        rules = {(tuple(r["apiGroups"]), tuple(r["resources"])): set(r["verbs"]) for r in role["rules"]}
        assert rules == {
            (("trainer.kubeflow.org",), ("trainjobs",)): {"create", "get", "list", "watch", "delete"},
            (("trainer.kubeflow.org",), ("trainjobs/status",)): {"get"},
            (("",), ("pods",)): {"get", "list", "watch"},
            (("",), ("pods/log",)): {"get"},
        }
        namespace = role["metadata"]["namespace"]
        binding = _one(rendered, overlay, "RoleBinding", "rightsizer-trainjobs")
        subjects = {(s["name"], s["namespace"]) for s in binding["subjects"]}
        assert ("rightsizer-runner", namespace) in subjects
        reader = _one(rendered, overlay, "ClusterRoleBinding", "rightsizer-runtime-reader")
        assert ("rightsizer-runner", namespace) in {(s["name"], s["namespace"]) for s in reader["subjects"]}
        assert _one(rendered, overlay, "ServiceAccount", "rightsizer-runner")
    kfp_binding = _one(rendered, "kfp", "RoleBinding", "rightsizer-trainjobs")
    assert ("pipeline-runner", "kubeflow") in {(s["name"], s["namespace"]) for s in kfp_binding["subjects"]}
    cluster_role = _one(rendered, "cluster", "ClusterRole", "rightsizer-runtime-reader")
    assert all(set(rule["verbs"]) <= {"get", "list", "watch"} for rule in cluster_role["rules"])
    for objects in rendered.values():
        for obj in objects:
            for rule in obj.get("rules", []) if obj["kind"] in ("Role", "ClusterRole") else []:
                assert "*" not in rule["verbs"] and "*" not in rule["resources"] and "secrets" not in rule["resources"]


def test_training_runtime_uses_the_project_image_and_torch(rendered):
    from rightsizer import __version__

    runtime = _one(rendered, "cluster", "ClusterTrainingRuntime", "rightsizer-torch-distributed")
    assert runtime["apiVersion"] == "trainer.kubeflow.org/v1alpha1"
    assert "namespace" not in runtime["metadata"]  # cluster-scoped
    assert runtime["spec"]["mlPolicy"]["torch"] == {}  # Trainer >= 2.2 has no numProcPerNode there
    (job,) = runtime["spec"]["template"]["spec"]["replicatedJobs"]
    assert job["name"] == "node"
    assert job["template"]["metadata"]["labels"]["trainer.kubeflow.org/trainjob-ancestor-step"] == "trainer"
    (container,) = job["template"]["spec"]["template"]["spec"]["containers"]
    assert container["name"] == "node" and container["image"] == f"{IMAGE}:{__version__}"
    volumes = {v["name"]: v for v in job["template"]["spec"]["template"]["spec"]["volumes"]}
    shm = next(m for m in container["volumeMounts"] if m["mountPath"] == "/dev/shm")
    assert volumes[shm["name"]]["emptyDir"]["medium"] == "Memory"


def test_storage_wiring_per_overlay(rendered, tree):
    def tensorboard_env(overlay):
        deployment = _one(rendered, overlay, "Deployment", "rightsizer-tensorboard")
        return {e["name"]: e.get("valueFrom", e.get("value")) for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}

    kfp = tensorboard_env("kfp")
    assert kfp["AWS_ACCESS_KEY_ID"]["secretKeyRef"] == {"name": "mlpipeline-minio-artifact", "key": "accesskey"}
    assert kfp["AWS_SECRET_ACCESS_KEY"]["secretKeyRef"] == {"name": "mlpipeline-minio-artifact", "key": "secretkey"}
    assert not _objects(rendered, "kfp", "Secret")  # KFP's own Secret is used, none is created
    # KFP >= 2.15 ships SeaweedFS: service `seaweedfs` in kubeflow, S3 on 8333 (no minio-service from 2.16)
    assert _one(rendered, "kfp", "ConfigMap", "rightsizer-storage")["data"] == {
        "endpoint": "http://seaweedfs.kubeflow:8333", "bucket": "mlpipeline", "prefix": "rightsizer",
        "tensorboard_logdir": "s3://mlpipeline/v2/artifacts"}

    standalone = tensorboard_env("standalone")
    assert standalone["AWS_ACCESS_KEY_ID"]["secretKeyRef"]["name"] == "rightsizer-s3"
    secret = _one(rendered, "standalone", "Secret", "rightsizer-s3")
    assert {k: base64.b64decode(v).decode() for k, v in secret["data"].items()} == {
        "accesskey": "test-access", "secretkey": "test-secret-123"}
    config = _one(rendered, "standalone", "ConfigMap", "rightsizer-storage")["data"]
    service = _one(rendered, "standalone", "Service", "rightsizer-minio")
    assert config["endpoint"] == f"http://{service['metadata']['name']}:9000"
    assert _one(rendered, "standalone", "PersistentVolumeClaim", "rightsizer-minio")
    job = _one(rendered, "standalone", "Job", "rightsizer-minio-bucket")
    assert "mc mb --ignore-existing" in job["spec"]["template"]["spec"]["containers"][0]["args"][0]
    for overlay in ("kfp", "standalone"):
        assert _one(rendered, overlay, "Service", "rightsizer-tensorboard")["spec"]["ports"][0]["targetPort"] == "http"


def test_no_secret_values_are_committed():
    templates = sorted(K8S.rglob("*.env.example"))
    assert templates
    for template in templates:
        for line in template.read_text().splitlines():
            if line.strip() and not line.startswith("#"):
                assert line.split("=", 1)[1].startswith("CHANGE-ME"), template
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    tracked = subprocess.run(["git", "ls-files", "k8s"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    assert not [f for f in tracked if f.endswith(".env")]
    for template in templates:  # the real file next to each template is ignored
        real = str(template.with_suffix("").relative_to(REPO))
        assert subprocess.run(["git", "check-ignore", "-q", real], cwd=REPO).returncode == 0, real


def test_missing_secret_env_file_says_how_to_create_it(tree, tmp_path, capsys):
    bare = tmp_path / "k8s"
    shutil.copytree(tree, bare, ignore=shutil.ignore_patterns("*.env"))
    out = tmp_path / "rendered.yaml"
    assert main(["manifests", str(bare / "overlays" / "standalone"), "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "storage.env' not found" in err[0]
    assert "cp " in err[0] and "storage.env.example" in err[0]
    assert not out.exists()
    assert main(["manifests", "no-such-overlay"]) == 2
    assert "overlays: kfp, kfp-multi-user, standalone" in capsys.readouterr().err


def test_standalone_puts_its_secret_where_the_pipeline_pods_run(rendered):
    # a pod mounts only its own namespace's Secret: the Secret, ConfigMap and RBAC go where KFP runs pipeline pods
    secret = _one(rendered, "standalone", "Secret", "rightsizer-s3")
    assert secret["metadata"]["namespace"] == "kubeflow"
    assert not _objects(rendered, "standalone", "Namespace")
    for obj in rendered["standalone"]:
        if obj["kind"] not in ("ClusterRoleBinding",):
            assert obj["metadata"]["namespace"] == "kubeflow", obj["metadata"]["name"]
    binding = _one(rendered, "standalone", "RoleBinding", "rightsizer-trainjobs")
    assert ("pipeline-runner", "kubeflow") in {(s["name"], s["namespace"]) for s in binding["subjects"]}


def _multi_user(tree, tmp_path, namespace: str) -> list[dict]:
    copy_root = tmp_path / "k8s"
    shutil.copytree(tree, copy_root)
    overlay = copy_root / "overlays" / "kfp-multi-user"
    text = (overlay / "kustomization.yaml").read_text().replace("namespace: team-a", f"namespace: {namespace}")
    (overlay / "kustomization.yaml").write_text(text)
    return [d for d in yaml.safe_load_all(render(overlay)) if d]


def test_multi_user_overlay_is_per_profile(tree, tmp_path):
    import kubernetes_validate

    objects = {ns: _multi_user(tree, tmp_path / ns, ns) for ns in ("team-a", "ml-team-b")}
    for namespace, rendered_objects in objects.items():
        by_kind = {(o["kind"], o["metadata"]["name"]): o for o in rendered_objects}
        text = yaml.safe_dump_all(rendered_objects)
        assert "NAMESPACE" not in text
        config = by_kind[("ConfigMap", "rightsizer-storage")]["data"]
        # the profile's SeaweedFS credentials reach only mlpipeline/private-artifacts/<ns>/* (and a few shared prefixes)
        assert config["bucket"] == "mlpipeline" and config["endpoint"] == "http://seaweedfs.kubeflow:8333"
        assert config["prefix"] == f"private-artifacts/{namespace}/rightsizer"
        assert config["tensorboard_logdir"] == f"s3://mlpipeline/private-artifacts/{namespace}/v2/artifacts"
        # one ClusterRoleBinding per profile: applying the next profile does not replace this one's subjects
        reader = by_kind[("ClusterRoleBinding", f"rightsizer-runtime-reader-{namespace}")]
        subjects = {(s["name"], s["namespace"]) for s in reader["subjects"]}
        assert subjects == {("rightsizer-runner", namespace), ("default-editor", namespace)}
        binding = by_kind[("RoleBinding", "rightsizer-trainjobs")]
        assert binding["metadata"]["namespace"] == namespace
        assert {(s["name"], s["namespace"]) for s in binding["subjects"]} == subjects
        assert not any(o["kind"] == "Secret" for o in rendered_objects)  # the profile controller's Secret is used
        tensorboard = by_kind[("Deployment", "rightsizer-tensorboard")]
        env = {e["name"]: e.get("valueFrom") for e in tensorboard["spec"]["template"]["spec"]["containers"][0]["env"]}
        assert env["AWS_ACCESS_KEY_ID"]["secretKeyRef"]["name"] == "mlpipeline-minio-artifact"
        for obj in rendered_objects:
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    names = [{o["metadata"]["name"] for o in objs if o["kind"] == "ClusterRoleBinding"} for objs in objects.values()]
    assert not names[0] & names[1]


def test_training_pods_opt_out_of_istio(rendered):
    runtime = _one(rendered, "cluster", "ClusterTrainingRuntime", "rightsizer-torch-distributed")
    (job,) = runtime["spec"]["template"]["spec"]["replicatedJobs"]
    assert job["template"]["spec"]["template"]["metadata"]["annotations"]["sidecar.istio.io/inject"] == "false"
