"""Kubeflow Trainer's admission rules, written down from its source, for checks without a cluster.

Two layers, as on a real cluster:

* **the CRD schema** (``tests/data/trainer/<version>-*.schema.json``: the ``openAPIV3Schema`` of
  ``manifests/base/crds/trainer.kubeflow.org_{trainjobs,clustertrainingruntimes}.yaml`` at tags
  v2.2.0 and v2.3.0 of github.com/kubeflow/trainer, descriptions and ``status`` dropped). The API server
  prunes — and ``kubectl apply --validate=strict`` refuses — fields a structural schema does not declare,
  so :func:`schema_errors` closes every object that declares no ``additionalProperties`` and no
  ``x-kubernetes-preserve-unknown-fields`` ("unknown field"), and checks the CEL rules that matter for
  new objects (``x-kubernetes-validations`` without ``oldSelf``) that are written out below.
* **the validating webhooks** (``pkg/webhooks/*.go`` and the ``Validate`` methods of
  ``pkg/runtime/framework/plugins/jobset/jobset.go`` and ``plugins/torch/torch.go``, identical in
  v2.2.0 and v2.3.0 for these rules): :func:`trainjob_webhook_errors`, :func:`runtime_webhook_errors`.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from pathlib import Path

DATA = Path(__file__).resolve().parent / "data" / "trainer"
VERSIONS = ("v2.2.0", "v2.3.0")
GROUP = "trainer.kubeflow.org"
# pkg/constants/constants.go
NODE, DATASET_INITIALIZER, MODEL_INITIALIZER = "node", "dataset-initializer", "model-initializer"
ANCESTOR_LABEL = "trainer.kubeflow.org/trainjob-ancestor-step"
ANCESTOR_CONTAINERS = {"trainer": NODE, DATASET_INITIALIZER: DATASET_INITIALIZER, MODEL_INITIALIZER: MODEL_INITIALIZER}
TORCHRUN_RESERVED_ENV = {"PET_NNODES", "PET_NPROC_PER_NODE", "PET_NODE_RANK", "PET_MASTER_ADDR", "PET_MASTER_PORT"}
_RFC1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
# k8s.io/apimachinery validation.IsDomainPrefixedPath: <DNS-1123 subdomain>/<path>
_DOMAIN_PREFIXED = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/[A-Za-z0-9/\-._~%!$&'()*+,;=:]+$")


def _closed(schema: dict, top: bool = True) -> dict:
    """The schema with every undeclared field forbidden, int-or-string accepted, ObjectMeta left open."""
    if not isinstance(schema, dict):
        return schema
    out = {k: v for k, v in schema.items() if not k.startswith("x-kubernetes-")}
    if schema.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out.setdefault("anyOf", [{"type": "integer"}, {"type": "string"}])
    if "properties" in schema:
        out["properties"] = {k: (_closed(v, False) if not (top and k == "metadata") else {"type": "object"})
                             for k, v in schema["properties"].items()}
    if "items" in schema:
        out["items"] = _closed(schema["items"], False)
    if isinstance(schema.get("additionalProperties"), dict):
        out["additionalProperties"] = _closed(schema["additionalProperties"], False)
    for key in ("anyOf", "allOf", "oneOf"):
        if key in schema:
            out[key] = [_closed(s, False) for s in schema[key]]
    if schema.get("type") == "object" and "additionalProperties" not in schema \
            and not schema.get("x-kubernetes-preserve-unknown-fields") and not schema.get("x-kubernetes-embedded-resource"):
        out["additionalProperties"] = False
    return out


@lru_cache(maxsize=None)
def _validator(version: str, plural: str):
    import jsonschema

    schema = json.loads((DATA / f"{version}-{plural}.schema.json").read_text())
    return jsonschema.Draft7Validator(_closed(schema))


def schema_errors(obj: dict, version: str) -> list[str]:
    """What the API server (Trainer ``version``'s CRD) would refuse in ``obj``: unknown fields, wrong types,
    and the CEL rules of the CRD that apply on create."""
    plural = {"TrainJob": "trainjobs", "ClusterTrainingRuntime": "clustertrainingruntimes"}[obj["kind"]]
    errors = [f"{'/'.join(str(p) for p in e.absolute_path) or '(root)'}: {e.message}"
              for e in _validator(version, plural).iter_errors(obj)]
    if obj.get("apiVersion") != f"{GROUP}/v1alpha1":
        errors.append(f"apiVersion {obj.get('apiVersion')} is not {GROUP}/v1alpha1")
    name = obj.get("metadata", {}).get("name", "")
    if obj["kind"] == "TrainJob":
        if not _RFC1035.match(name):
            errors.append("metadata.name must match RFC 1035 DNS label format")
        if len(name) > 63:
            errors.append("metadata.name must be no more than 63 characters")
        managed = obj["spec"].get("managedBy")
        if managed is not None and managed not in ("trainer.kubeflow.org/trainjob-controller", "kueue.x-k8s.io/multikueue"):
            errors.append("spec.managedBy: ManagedBy must be trainer.kubeflow.org/trainjob-controller or kueue.x-k8s.io/multikueue")
    else:
        policies = [k for k in ("torch", "mpi", "jax", "xgboost", "flux") if k in obj["spec"].get("mlPolicy", {})]
        if len(policies) > 1:
            errors.append("spec.mlPolicy: Only one of the policy can be configured")
    return errors


def _replicated_jobs(runtime: dict) -> list[dict]:
    return runtime["spec"]["template"]["spec"]["replicatedJobs"]


def runtime_webhook_errors(runtime: dict) -> list[str]:
    """pkg/webhooks/trainingruntime_webhook.go validateReplicatedJobs (ClusterTrainingRuntime create)."""
    errors = []
    for index, rjob in enumerate(_replicated_jobs(runtime)):
        ancestor = (rjob.get("template", {}).get("metadata", {}).get("labels") or {}).get(ANCESTOR_LABEL)
        if ancestor not in ANCESTOR_CONTAINERS:
            continue
        if rjob.get("replicas", 1) != 1:
            errors.append(f"spec.template.spec.replicatedJobs[{index}].replicas: always must be 1")
        containers = [c["name"] for c in rjob["template"]["spec"]["template"]["spec"].get("containers", [])]
        if ANCESTOR_CONTAINERS[ancestor] not in containers:
            errors.append(f"spec.template.spec.replicatedJobs[{index}]: must have container with name "
                          f"{ANCESTOR_CONTAINERS[ancestor]} for the {ancestor} step")
    return errors


def trainjob_webhook_errors(job: dict, runtime: dict) -> list[str]:
    """The TrainJob validating webhook for a torch runtime: the JobSet plugin's runtime-patch rules and the
    torch plugin's reserved env names (create, so no immutability checks)."""
    errors = []
    containers_of = {}
    for rjob in _replicated_jobs(runtime):
        pod = rjob["template"]["spec"]["template"]["spec"]
        containers_of[rjob["name"]] = {c["name"] for c in pod.get("initContainers", []) + pod.get("containers", [])}
    for patch in job["spec"].get("runtimePatches", []):
        manager = patch.get("manager", "")
        if not _DOMAIN_PREFIXED.match(manager):
            errors.append(f"spec.runtimePatches.manager: {manager!r} must be a domain-prefixed path (such as acme.io/foo)")
        for rjob in (((patch.get("trainingRuntimeSpec") or {}).get("template") or {}).get("spec") or {}).get("replicatedJobs", []):
            if rjob["name"] not in containers_of:
                errors.append("spec.runtimePatches: must not have replicated job that doesn't exist in the runtime job template")
                continue
            pod = (((rjob.get("template") or {}).get("spec") or {}).get("template") or {}).get("spec") or {}
            for container in pod.get("initContainers", []):
                if container["name"] not in containers_of[rjob["name"]]:
                    errors.append(f"spec.runtimePatches: must not have initContainer that doesn't exist in the runtime job {rjob['name']}")
            for container in pod.get("containers", []):
                if container["name"] not in containers_of[rjob["name"]]:
                    errors.append(f"spec.runtimePatches: must not have container that doesn't exist in the runtime job {rjob['name']}")
                elif container.get("env") and container["name"] in (DATASET_INITIALIZER, MODEL_INITIALIZER, NODE):
                    errors.append(f"spec.runtimePatches: must not have envs for the {DATASET_INITIALIZER}, "
                                  f"{MODEL_INITIALIZER}, {NODE} containers")
    if "torch" in runtime["spec"].get("mlPolicy", {}):
        reserved = sorted({e["name"] for e in (job["spec"].get("trainer") or {}).get("env", [])} & TORCHRUN_RESERVED_ENV)
        if reserved:
            errors.append(f"spec.trainer.env: must not have reserved envs, invalid envs configured: {reserved}")
    return errors


def admission_errors(job: dict, runtime: dict, version: str) -> list[str]:
    """Everything Trainer ``version`` would refuse on ``kubectl create`` of ``job`` on ``runtime``."""
    return schema_errors(job, version) + trainjob_webhook_errors(job, runtime)
