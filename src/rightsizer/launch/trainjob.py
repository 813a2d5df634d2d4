"""Run a training stage on several nodes as a Kubeflow Trainer ``TrainJob``.

With ``resources.<stage>.workers > 1`` the stage's pipeline task becomes a launcher:

1. **stage** — the config and the stage's inputs go to the object store under
   ``s3://<bucket>/<prefix>/<run>/trainjobs/<job>/`` (``rightsizer.storage``);
2. **create** — a TrainJob on the ``rightsizer-torch-distributed`` runtime (``k8s/cluster``) with
   ``numNodes`` = workers, the project image, ``resourcesPerNode`` from the config (GPUs, CPU, memory),
   the object-store settings as env and its credentials as env *from the Secret* (never values), and
   ``/dev/shm`` in memory. Every node runs ``python -m rightsizer.launch.node stage NAME ...``, which runs
   ``torchrun ... -m rightsizer.cli stage NAME`` there (:mod:`rightsizer.launch.node`);
3. **watch** — status and per-node pod phases are printed as they change, until Complete, Failed or the
   timeout (``resources.<stage>.timeout_s``, default 24 h);
4. **collect** — on success node 0's upload is downloaded into the task's output artifact; on failure the
   stage fails naming the node, with its log tail (a user error in a node comes back as that error);
5. **delete** — the TrainJob is deleted whatever happened: done, failed, timed out or cancelled.

The Kubernetes calls go through the Kubeflow SDK's ``TrainerClient`` (package ``kubeflow``), which reads
the kubeconfig or the pod's service account, finds the runtime, and turns pods into steps; the TrainJob
itself is written here (:func:`manifest`) and created through the client's custom-objects API, because the
SDK passes only plain values in ``spec.trainer.env`` and Trainer >= 2.2 refuses env in runtime patches.
``rightsizer compile --trainjobs DIR`` writes the same objects (:func:`write_trainjobs`).
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rightsizer import candidates
from rightsizer.config import ResourceSpec
from rightsizer.errors import UserError
from rightsizer.launch.local import TAIL_LINES, LaunchError, sigterm_raises

DEFAULT_RUNTIME = ResourceSpec.model_fields["trainjob_runtime"].default
DEFAULT_TIMEOUT_S = ResourceSpec.model_fields["timeout_s"].default
POLL_ENV = "RIGHTSIZER_TRAINJOB_POLL_S"
DEFAULT_POLL_S = 10.0
NODE_CONTAINER = "node"  # the runtime's replicated job and container name (Kubeflow Trainer convention)
NODE_COMMAND = ["python", "-m", "rightsizer.launch.node"]
SHM_VOLUME = {"name": "dshm", "emptyDir": {"medium": "Memory"}}
SHM_MOUNT = {"name": "dshm", "mountPath": "/dev/shm"}
PATCH_MANAGER = "rightsizer.io/launcher"
GROUP, VERSION, PLURAL = "trainer.kubeflow.org", "v1alpha1", "trainjobs"
DEADLINE_MARGIN_S = 300  # activeDeadlineSeconds = timeout + this: the cluster stops a job whose launcher died
SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")


@dataclass
class TrainJobRequest:
    """Everything the TrainJob says, before it is written out as the object (:func:`manifest`)."""

    name: str
    runtime: str
    image: str
    num_nodes: int
    processes_per_node: int
    resources_per_node: dict[str, Any]
    args: list[str]
    env: list[dict[str, Any]]  # Kubernetes EnvVar objects: plain values and valueFrom references
    labels: dict[str, str]
    node_selector: dict[str, str] | None = None
    tolerations: list[dict[str, Any]] | None = None
    timeout_s: int = DEFAULT_TIMEOUT_S
    command: list[str] = field(default_factory=lambda: list(NODE_COMMAND))


def job_name(config_name: str, stage: str, member: str | None) -> str:
    """A DNS-1035 name, unique per launch, short enough for the JobSet's pod names (<= 40 characters)."""
    base = "-".join(p for p in ("rs", stage, member or "", config_name) if p).lower()
    base = re.sub(r"[^a-z0-9-]+", "-", base).strip("-")[:31].rstrip("-")
    return f"{base}-{uuid.uuid4().hex[:8]}"


def node_env(config) -> list[dict[str, Any]]:
    """The node container's env, all of it in ``spec.trainer.env`` (Trainer >= 2.2 refuses env in a runtime patch).

    Plain values for what the config sets; the rightsizer-storage ConfigMap's keys for the object-store
    settings it leaves out; the credentials (and the Hugging Face token) as ``secretKeyRef``, never values.
    References are optional: a missing Secret fails the node's first S3 call with a one-line error naming
    it, instead of a pod stuck in CreateContainerConfigError until the timeout."""
    from rightsizer.storage import (
        CONFIG_MAP_KEYS_TO_ENV,
        HF_TOKEN_ENV,
        HF_TOKEN_KEY,
        SECRET_KEYS_TO_ENV,
        STORAGE_CONFIG_MAP,
        settings_env,
    )

    plain = {**settings_env(config.storage), "RIGHTSIZER_QUIET": "1", "TOKENIZERS_PARALLELISM": "false"}
    env: list[dict[str, Any]] = [{"name": k, "value": v} for k, v in plain.items()]
    env += [{"name": name, "valueFrom": {"configMapKeyRef": {"name": STORAGE_CONFIG_MAP, "key": key, "optional": True}}}
            for key, name in CONFIG_MAP_KEYS_TO_ENV.items() if name not in plain]
    env += [{"name": name, "valueFrom": {"secretKeyRef": {"name": config.storage.secret_name, "key": key,
                                                          "optional": True}}}
            for key, name in SECRET_KEYS_TO_ENV.items()]
    if config.hf_token_secret:
        env.append({"name": HF_TOKEN_ENV, "valueFrom": {"secretKeyRef": {"name": config.hf_token_secret,
                                                                         "key": HF_TOKEN_KEY, "optional": True}}})
    return env


def build_request(stage: str, config, stage_key: str, *, member: str | None, name: str, config_uri: str,
                  input_uris: list[str], output_uri: str, gpus: int, processes: int,
                  seed: int | None = None) -> TrainJobRequest:
    """The TrainJob for one stage member, from ``config.resources.<stage_key>`` and ``config.storage``."""
    from rightsizer.pods import GPU_DISK, image_for

    spec = config.resources.for_stage(stage_key)
    args = ["stage", stage, "--config", config_uri]
    for uri in input_uris:
        args += ["--in", uri]
    args += ["--out", output_uri]
    if member:
        args += ["--name", member]
    if seed is not None:
        args += ["--seed", str(seed)]
    args += ["--nproc-per-node", str(processes)]
    resources: dict[str, Any] = {}
    if spec.cpu:
        resources["cpu"] = spec.cpu
    if spec.memory:
        resources["memory"] = spec.memory
    if gpus:
        resources[spec.gpu_type or "nvidia.com/gpu"] = str(gpus)  # a quantity: a string, not 4.0
    disk = spec.disk or (GPU_DISK if gpus else None)  # ephemeral-storage: downloads, checkpoints
    if disk:
        resources["ephemeral-storage"] = disk
    labels = {"app.kubernetes.io/part-of": "rightsizer", "app.kubernetes.io/component": "trainjob",
              "rightsizer.io/run": config.name, "rightsizer.io/stage": stage}
    return TrainJobRequest(
        name=name, runtime=spec.trainjob_runtime, image=image_for(config, stage_key, gpus),
        num_nodes=spec.workers or 1, processes_per_node=processes, resources_per_node=resources, args=args,
        env=node_env(config), labels=labels, node_selector=spec.node_selector,
        tolerations=spec.tolerations, timeout_s=spec.timeout_s)


def manifest(request: TrainJobRequest, runtime_kind: str = "ClusterTrainingRuntime") -> dict[str, Any]:
    """The TrainJob object (``trainer.kubeflow.org/v1alpha1``, Trainer >= 2.2) the launcher creates.

    The runtime patch adds only what a patch may carry on container ``node`` (volume mounts: ``/dev/shm``
    in memory) and the pod's node selector and tolerations; every env var is in ``spec.trainer.env``."""
    pod: dict[str, Any] = {"volumes": [dict(SHM_VOLUME)],
                           "containers": [{"name": NODE_CONTAINER, "volumeMounts": [dict(SHM_MOUNT)]}]}
    if request.node_selector:
        pod["nodeSelector"] = dict(request.node_selector)
    if request.tolerations:
        pod["tolerations"] = [dict(t) for t in request.tolerations]
    resources = {k: str(v) for k, v in request.resources_per_node.items()}
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "TrainJob",
        "metadata": {"name": request.name, "labels": dict(request.labels)},
        "spec": {
            "runtimeRef": {"apiGroup": GROUP, "kind": runtime_kind, "name": request.runtime},
            "activeDeadlineSeconds": int(request.timeout_s) + DEADLINE_MARGIN_S,
            "trainer": {
                "image": request.image,
                "numNodes": request.num_nodes,
                "command": list(request.command),
                "args": list(request.args),
                "resourcesPerNode": {"requests": dict(resources), "limits": dict(resources)},
                "env": [dict(e) for e in request.env],
            },
            "runtimePatches": [{
                "manager": PATCH_MANAGER,
                "trainingRuntimeSpec": {"template": {"spec": {"replicatedJobs": [
                    {"name": NODE_CONTAINER, "template": {"spec": {"template": {"spec": pod}}}}]}}},
            }],
        },
    }


# ---------------------------------------------------------------------------------------------
# what `rightsizer compile --trainjobs DIR` writes: the TrainJobs the launchers will create

PLACEHOLDER_ID = "x" * 8  # the 8 random hex digits a launch appends to the job name

def _members(config, stage: str) -> list[str | None]:
    names = [c.name for c in candidates.of_stage(config, stage)]
    if stage == "slice" and not names and config.probe is not None:  # auto slices: the probe picks them
        names = [candidates.slice_placeholder(config)]
    return names


def planned_requests(config) -> list[TrainJobRequest]:
    """The TrainJob every launcher of ``config`` would create, with placeholders for run-time values: the job
    name's random suffix (``xxxxxxxx``), the staged inputs' names, and ``<bucket>``/``<prefix>`` where neither
    the config nor this environment says (on a cluster the rightsizer-storage ConfigMap does)."""
    from rightsizer.launch.placement import planned_gpus
    from rightsizer.plan import STAGES
    from rightsizer.storage import BUCKET_ENV, PREFIX_ENV, bucket_for, prefix_for

    # the launcher pod resolves these from the rightsizer-storage ConfigMap when the config leaves them out
    bucket = bucket_for(config.storage) if config.storage.bucket or os.environ.get(BUCKET_ENV) else "<bucket>"
    key_prefix = prefix_for(config.storage) if config.storage.prefix or os.environ.get(PREFIX_ENV) else "<prefix>"
    requests = []
    for stage, key, inputs_of in ((s.name, s.resources, s.input_names) for s in STAGES.values() if s.launches):
        spec = config.resources.for_stage(key)
        if (spec.workers or 1) <= 1:
            continue
        gpus = planned_gpus(config, key)
        processes = spec.processes or max(1, gpus)
        made = candidates.of_stage(config, stage)
        # a stage where a candidate trains with several seeds launches once per seed (each seed its own TrainJob)
        runs = ([(run["candidate"], run["seed"]) for run in candidates.seed_runs(made)]
                if candidates.several_seeds(made) else [(member, None) for member in _members(config, stage)])
        for member, seed in runs:
            name = job_name(config.name, stage, member)[:-len(PLACEHOLDER_ID)] + PLACEHOLDER_ID
            prefix = f"s3://{bucket}/{key_prefix}/{config.name}/trainjobs/{name}"
            inputs = [f"{prefix}/inputs/{i}-<{input_name}>" for i, input_name in enumerate(inputs_of)]
            requests.append(build_request(stage, config, key, member=member, name=name, config_uri=f"{prefix}/config.json",
                                          input_uris=inputs, output_uri=f"{prefix}/output", gpus=gpus,
                                          processes=processes, seed=seed))
    return requests


def write_trainjobs(config, directory: str | Path) -> list[Path]:
    """One YAML file per planned TrainJob in ``directory`` (built aside, renamed into place); [] when no stage
    has ``workers > 1``."""
    import shutil

    import yaml

    requests = planned_requests(config)
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise UserError(f"--trainjobs '{directory}' is a file; give a directory")
    staging = directory.with_name(f".{directory.name}.{os.getpid()}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    written = []
    try:
        for request in requests:
            stage = request.labels["rightsizer.io/stage"]
            member = request.args[request.args.index("--name") + 1] if "--name" in request.args else stage
            if "--seed" in request.args:  # one of a candidate's several seeds: one TrainJob each
                member += f"-seed{request.args[request.args.index('--seed') + 1]}"
            header = (f"# TrainJob for stage {stage} ({member}) of {config.name}: what its launcher task creates "
                      f"(Kubeflow Trainer >= 2.2).\n# '{PLACEHOLDER_ID}' and <...> are filled in at run time.\n")
            path = staging / f"{stage}-{re.sub(r'[^A-Za-z0-9._-]+', '_', member)}.yaml"
            path.write_text(header + yaml.safe_dump(manifest(request), sort_keys=False))
            written.append(directory / path.name)
        directory.mkdir(parents=True, exist_ok=True)
        for path in staging.iterdir():
            os.replace(path, directory / path.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return written


# ---------------------------------------------------------------------------------------------
# cluster access and the client


def _in_cluster() -> bool:
    return bool(os.environ.get("KUBERNETES_SERVICE_HOST")) and (SERVICE_ACCOUNT_DIR / "token").exists()


def _kubeconfig_paths() -> list[str]:
    return [p for p in (os.environ.get("KUBECONFIG") or "~/.kube/config").split(os.pathsep) if p]


def _kubeconfig() -> str | None:
    return next((str(Path(p).expanduser()) for p in _kubeconfig_paths() if Path(p).expanduser().is_file()), None)


def require_cluster_access(stage_key: str, workers: int) -> None:
    """A UserError unless this process can reach a cluster (in a pod, or a kubeconfig)."""
    if _in_cluster() or _kubeconfig():
        return
    raise UserError(f"resources.{stage_key}.workers is {workers}, which runs the stage as a multi-node Kubeflow "
                    f"TrainJob, but there is no cluster access here (not in a pod, no kubeconfig at "
                    f"{', '.join(_kubeconfig_paths())}); run the pipeline on the cluster (rightsizer submit) or set "
                    "workers: 1")


def trainer_client():
    """The Kubeflow SDK's TrainerClient: the pod's service account and namespace in a pod, else the
    kubeconfig named by $KUBECONFIG (read now, not when the kubernetes package was imported) and its
    current context's namespace."""
    try:
        from kubeflow.common.types import KubernetesBackendConfig
        from kubeflow.trainer import TrainerClient
        from kubernetes import config as kube_config
    except ImportError:
        raise UserError("workers > 1 needs the Kubeflow SDK: pip install 'rightsizer[kubeflow]' (the project "
                        "images include it)") from None
    try:
        if _in_cluster():
            backend = KubernetesBackendConfig()
        else:
            path = _kubeconfig()
            _, current = kube_config.list_kube_config_contexts(config_file=path)
            namespace = (current or {}).get("context", {}).get("namespace") or "default"
            backend = KubernetesBackendConfig(config_file=path, namespace=namespace)
        return TrainerClient(backend_config=backend)
    except Exception as exc:  # noqa: BLE001 - a broken kubeconfig is the user's to fix
        raise UserError(f"cannot use the cluster's API: {_first_line(exc)}") from None


def _first_line(exc: BaseException) -> str:
    cause = exc.__cause__ or exc
    text = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
    return text[:200]


def create(client, request: TrainJobRequest) -> str:
    """Create the TrainJob; a missing runtime or a refusal by the API server is a UserError."""
    namespace = client.backend.namespace
    try:
        runtime = client.get_runtime(request.runtime)
    except (RuntimeError, TimeoutError) as exc:
        if "Failed to get Runtime" in str(exc):
            raise UserError(f"Kubeflow Trainer runtime '{request.runtime}' not found on the cluster (no TrainingRuntime "
                            f"in namespace '{namespace}', no ClusterTrainingRuntime); apply it with "
                            "kubectl apply -k k8s/cluster, or set resources.<stage>.trainjob_runtime") from None
        raise UserError(f"cannot read Kubeflow Trainer runtime '{request.runtime}': {_first_line(exc)}") from None
    kind = getattr(getattr(runtime, "kind", None), "value", None) or "ClusterTrainingRuntime"
    try:
        client.backend.custom_api.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL,
                                                                  manifest(request, kind))
    except Exception as exc:  # noqa: BLE001 - an admission webhook's refusal, RBAC, a conflict: the user's to fix
        raise UserError(f"cannot create TrainJob {namespace}/{request.name}: {_api_reason(exc)} (does this pod's "
                        "service account have the rightsizer-trainjobs Role from k8s/base, and is Kubeflow Trainer "
                        ">= 2.2 installed?)") from None
    return request.name


def _api_reason(exc: BaseException) -> str:
    """The API server's own message (e.g. an admission webhook's) rather than the client's HTTP dump."""
    body = getattr(exc, "body", None)
    if body:
        try:
            return str(json.loads(body).get("message") or body).splitlines()[0][:300]
        except (ValueError, AttributeError):
            pass
    return _first_line(exc)


def watch(client, name: str, *, timeout_s: float, poll_s: float, stage_key: str) -> Any:
    """Poll the TrainJob until Complete or Failed, printing changes; UserError on timeout."""
    deadline = time.monotonic() + timeout_s
    last, errors = None, 0
    while True:
        try:
            job = client.get_job(name)
            errors = 0
        except (RuntimeError, TimeoutError) as exc:
            errors += 1
            if errors >= 5:
                raise LaunchError(f"lost track of TrainJob {name}: {_first_line(exc)}") from None
            job = None
        if job is not None:
            state = (job.status, tuple((s.name, s.status) for s in job.steps))
            if state != last:
                nodes = ", ".join(f"{s.name} {s.status or 'Pending'}" for s in job.steps) or "no pods yet"
                print(f"trainjob {name}: {job.status} ({nodes})", flush=True)
                last = state
            if job.status in ("Complete", "Failed"):
                return job
        if time.monotonic() >= deadline:
            raise UserError(f"TrainJob {name} did not finish within {timeout_s:g} s; it was deleted. Raise "
                            f"resources.{stage_key}.timeout_s, or check why it is slow (kubectl get pods -l "
                            f"jobset.sigs.k8s.io/jobset-name={name})")
        time.sleep(poll_s)


def failure(client, job) -> Exception:
    """The error for a failed TrainJob: the failed node's own ``error:`` line, or its log tail."""
    failed = [s for s in job.steps if s.status == "Failed"]
    steps = failed or [s for s in job.steps if s.name.startswith(NODE_CONTAINER)]
    if not steps:
        return LaunchError(f"TrainJob {job.name} failed before any node pod ran; see kubectl describe trainjob {job.name}")
    step = steps[0]
    try:
        lines = list(client.get_job_logs(job.name, step=step.name))
    except Exception as exc:  # noqa: BLE001 - the failure matters more than the log
        lines = [f"(no log: {_first_line(exc)})"]
    for line in lines:
        if line.startswith("error: "):
            return UserError(f"TrainJob {job.name}, {step.name}: {line.removeprefix('error: ')}")
    others = f" (failed nodes: {', '.join(s.name for s in failed)})" if len(failed) > 1 else ""
    tail = "\n".join(lines[-TAIL_LINES:])
    return LaunchError(f"TrainJob {job.name} failed on {step.name} (pod {step.pod_name}){others}; "
                       f"last lines of its log:\n{tail}")


def delete(client, name: str) -> None:
    try:
        client.delete_job(name)
        print(f"trainjob {name}: deleted", flush=True)
    except Exception as exc:  # noqa: BLE001 - already gone, or the API is down: say so, do not mask the result
        print(f"trainjob {name}: could not delete ({_first_line(exc)}); delete it with kubectl delete trainjob {name}",
              flush=True)


# ---------------------------------------------------------------------------------------------
# the whole lifecycle


def run_trainjob(stage: str, config, stage_key: str, output_dir: str | Path, inputs: list[Path], *,
                 name: str | None, timeout_s: float | None = None, poll_s: float | None = None,
                 seed: int | None = None) -> dict:
    """Stage inputs, create the TrainJob, watch it, collect its output into ``output_dir``, delete it."""
    from rightsizer import storage
    from rightsizer.launch.placement import planned_gpus
    from rightsizer.outputs import write_json

    spec = config.resources.for_stage(stage_key)
    require_cluster_access(stage_key, spec.workers or 1)
    client = trainer_client()
    gpus = planned_gpus(config, stage_key)
    processes = spec.processes or max(1, gpus)
    job = job_name(config.name, stage, name)
    prefix = storage.artifact_uri(config.storage, config.name, "trainjobs", job)
    store = storage.Store.from_env(config.storage)
    with tempfile.TemporaryDirectory(prefix="rightsizer-trainjob-") as tmp:
        config_file = Path(tmp) / "config.json"
        config_file.write_text(config.to_json())
        config_uri = storage.join_uri(prefix, "config.json")
        store.upload_file(config_file, config_uri)
    input_uris = []
    for index, path in enumerate(inputs):
        uri = storage.join_uri(prefix, "inputs", f"{index}-{Path(path).name or 'input'}")
        store.upload_dir(path, uri)
        input_uris.append(uri)
    output_uri = storage.join_uri(prefix, "output")
    request = build_request(stage, config, stage_key, member=name, name=job, config_uri=config_uri,
                            input_uris=input_uris, output_uri=output_uri, gpus=gpus, processes=processes, seed=seed)
    if timeout_s is not None:
        request.timeout_s = max(1, math.ceil(timeout_s))
    timeout = timeout_s if timeout_s is not None else request.timeout_s
    poll = poll_s if poll_s is not None else float(os.environ.get(POLL_ENV) or DEFAULT_POLL_S)
    print(f"trainjob {job}: {request.num_nodes} nodes x {processes} processes, runtime {request.runtime}, "
          f"image {request.image}, inputs staged under {prefix}", flush=True)
    created = False
    with sigterm_raises():
        try:
            create(client, request)
            created = True
            finished = watch(client, job, timeout_s=timeout, poll_s=poll, stage_key=stage_key)
            if finished.status == "Failed":
                raise failure(client, finished)
            output_dir = Path(output_dir)
            if store.stat(storage.join_uri(output_uri, "summary.json")) is None:
                raise LaunchError(f"TrainJob {job} completed but {output_uri} has no summary.json (node 0 did not "
                                  "upload its output)")
            store.download_dir(output_uri, output_dir)
        except KeyboardInterrupt:
            created = True  # cancelled, possibly while the API server was creating it: delete it anyway
            raise
        finally:
            if created:
                delete(client, job)
    summary_path = Path(output_dir) / "summary.json"
    summary = json.loads(summary_path.read_text())
    summary["trainjob"] = {"name": job, "namespace": client.backend.namespace, "runtime": request.runtime,
                           "nodes": request.num_nodes, "processes_per_node": processes, "staged_under": prefix}
    write_json(summary_path, summary)
    return summary
