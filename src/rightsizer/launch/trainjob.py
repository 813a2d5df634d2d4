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
the kubeconfig or the pod's service account, checks that the runtime exists, and turns pods into steps.
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

from rightsizer.errors import UserError
from rightsizer.launch.local import TAIL_LINES, LaunchError, sigterm_raises

DEFAULT_RUNTIME = "rightsizer-torch-distributed"
DEFAULT_TIMEOUT_S = 86_400
POLL_ENV = "RIGHTSIZER_TRAINJOB_POLL_S"
DEFAULT_POLL_S = 10.0
NODE_CONTAINER = "node"  # the runtime's replicated job and container name (Kubeflow Trainer convention)
NODE_COMMAND = ["python", "-m", "rightsizer.launch.node"]
SHM_VOLUME = {"name": "dshm", "emptyDir": {"medium": "Memory"}}
SHM_MOUNT = {"name": "dshm", "mountPath": "/dev/shm"}
PATCH_MANAGER = "rightsizer.io/launcher"
DEADLINE_MARGIN_S = 300  # activeDeadlineSeconds = timeout + this: the cluster stops a job whose launcher died
SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")


@dataclass
class TrainJobRequest:
    """Everything the TrainJob says, before it is turned into the SDK's objects."""

    name: str
    runtime: str
    image: str
    num_nodes: int
    processes_per_node: int
    resources_per_node: dict[str, Any]
    args: list[str]
    env: dict[str, str]
    secret_env: list[dict[str, Any]]
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


def build_request(stage: str, config, stage_key: str, *, member: str | None, name: str, config_uri: str,
                  input_uris: list[str], output_uri: str, gpus: int, processes: int) -> TrainJobRequest:
    """The TrainJob for one stage member, from ``config.resources.<stage_key>`` and ``config.storage``."""
    from rightsizer.pipeline import image_for
    from rightsizer.storage import SECRET_KEYS_TO_ENV, settings_env

    spec = config.resources.for_stage(stage_key)
    args = ["stage", stage, "--config", config_uri]
    for uri in input_uris:
        args += ["--in", uri]
    args += ["--out", output_uri]
    if member:
        args += ["--name", member]
    args += ["--nproc-per-node", str(processes)]
    resources: dict[str, Any] = {}
    if spec.cpu:
        resources["cpu"] = spec.cpu
    if spec.memory:
        resources["memory"] = spec.memory
    if gpus:
        resources[spec.gpu_type or "nvidia.com/gpu"] = str(gpus)  # a quantity: a string, not 4.0
    secret_env = [{"name": env, "valueFrom": {"secretKeyRef": {"name": config.storage.secret_name, "key": key}}}
                  for key, env in SECRET_KEYS_TO_ENV.items()]
    env = {**settings_env(config.storage), "RIGHTSIZER_QUIET": "1", "TOKENIZERS_PARALLELISM": "false"}
    labels = {"app.kubernetes.io/part-of": "rightsizer", "app.kubernetes.io/component": "trainjob",
              "rightsizer.io/run": config.name, "rightsizer.io/stage": stage}
    return TrainJobRequest(
        name=name, runtime=spec.trainjob_runtime or DEFAULT_RUNTIME, image=image_for(config),
        num_nodes=spec.workers or 1, processes_per_node=processes, resources_per_node=resources, args=args,
        env=env, secret_env=secret_env, labels=labels, node_selector=spec.node_selector,
        tolerations=spec.tolerations, timeout_s=spec.timeout_s or DEFAULT_TIMEOUT_S)


def sdk_arguments(request: TrainJobRequest) -> tuple[Any, list[Any]]:
    """``(CustomTrainerContainer, options)`` for ``TrainerClient.train``."""
    from kubeflow.trainer import CustomTrainerContainer
    from kubeflow.trainer.options import (
        ActiveDeadlineSeconds,
        ContainerPatch,
        JobSetSpecPatch,
        JobSetTemplatePatch,
        JobSpecPatch,
        JobTemplatePatch,
        Labels,
        Name,
        PodSpecPatch,
        PodTemplatePatch,
        ReplicatedJobPatch,
        RuntimePatch,
        TrainerArgs,
        TrainerCommand,
        TrainingRuntimeSpecPatch,
    )

    trainer = CustomTrainerContainer(image=request.image, num_nodes=request.num_nodes,
                                     resources_per_node=dict(request.resources_per_node), env=dict(request.env))
    pod = PodSpecPatch(
        volumes=[dict(SHM_VOLUME)],
        containers=[ContainerPatch(name=NODE_CONTAINER, env=[dict(e) for e in request.secret_env],
                                   volume_mounts=[dict(SHM_MOUNT)])],
        node_selector=request.node_selector or None, tolerations=request.tolerations or None)
    patch = RuntimePatch(training_runtime_spec=TrainingRuntimeSpecPatch(template=JobSetTemplatePatch(
        spec=JobSetSpecPatch(replicated_jobs=[ReplicatedJobPatch(name=NODE_CONTAINER, template=JobTemplatePatch(
            spec=JobSpecPatch(template=PodTemplatePatch(spec=pod))))]))))
    patch.manager = PATCH_MANAGER
    options = [Name(request.name), Labels(dict(request.labels)), TrainerCommand(list(request.command)),
               TrainerArgs(list(request.args)), patch, ActiveDeadlineSeconds(int(request.timeout_s) + DEADLINE_MARGIN_S)]
    return trainer, options


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
    trainer, options = sdk_arguments(request)
    namespace = client.backend.namespace
    try:
        return client.train(runtime=request.runtime, trainer=trainer, options=options)
    except RuntimeError as exc:
        message = str(exc)
        if "Failed to get Runtime" in message:
            raise UserError(f"Kubeflow Trainer runtime '{request.runtime}' not found on the cluster (no TrainingRuntime "
                            f"in namespace '{namespace}', no ClusterTrainingRuntime); apply it with "
                            "kubectl apply -k k8s/cluster, or set resources.<stage>.trainjob_runtime") from None
        raise UserError(f"cannot create TrainJob {namespace}/{request.name}: {_first_line(exc)} (does this pod's "
                        "service account have the rightsizer-trainjobs Role from k8s/base?)") from None


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
                 name: str | None, timeout_s: float | None = None, poll_s: float | None = None) -> dict:
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
                            input_uris=input_uris, output_uri=output_uri, gpus=gpus, processes=processes)
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
