"""Submit a run to, or schedule a recurring run on, a Kubeflow Pipelines API server.

Both go through the KFP SDK ``kfp.Client`` (v2beta1 REST API). ``submit`` compiles the config's
pipeline and creates one run in an experiment; ``schedule`` uploads the pipeline (or a new version
of it when a pipeline of that name exists) and creates a recurring run on a six-field cron.

Auth: a bearer token from ``$KFP_TOKEN``, or the token of a kubeconfig context (``--kube-context``);
nothing is read from the config file. Errors a user can fix (no host, unreachable host, refused
token, bad cron) become one-line :class:`UserError` messages.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import re
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from rightsizer.config import RunConfig
from rightsizer.errors import UserError

TOKEN_ENV = "KFP_TOKEN"
HOST_ENV = "KF_PIPELINES_ENDPOINT"  # the KFP SDK's own variable
CRON_EXAMPLE = "0 0 3 * * *"
HOST_EXAMPLE = "http://localhost:8080 (after: kubectl port-forward -n kubeflow svc/ml-pipeline-ui 8080:80)"
T = TypeVar("T")

# ---------------------------------------------------------------------------------------------
# cron: KFP (robfig/cron) wants six fields, seconds first

_CRON_FIELDS = (  # name, low, high, names allowed
    ("second", 0, 59, None),
    ("minute", 0, 59, None),
    ("hour", 0, 23, None),
    ("day of month", 1, 31, None),
    ("month", 1, 12, ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")),
    ("day of week", 0, 6, ("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT")),
)
_CRON_DESCRIPTORS = ("@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly")


def _cron_value(text: str, low: int, high: int, names: tuple[str, ...] | None) -> int:
    if names and text.upper() in names:
        return names.index(text.upper()) + low
    if not text.isdigit():
        raise ValueError(f"'{text}' is not a number")
    value = int(text)
    if not low <= value <= high:
        raise ValueError(f"{value} is outside {low}-{high}")
    return value


def _check_cron_field(field: str, name: str, low: int, high: int, names: tuple[str, ...] | None) -> None:
    for part in field.split(","):
        base, _, step = part.partition("/")
        if step and (not step.isdigit() or int(step) == 0):
            raise ValueError(f"step '/{step}' must be a positive number")
        if base in ("*", "?"):
            if base == "?" and name not in ("day of month", "day of week"):
                raise ValueError("'?' is only allowed for day of month or day of week")
            continue
        start, dash, end = base.partition("-")
        first = _cron_value(start, low, high, names)
        if dash and _cron_value(end, low, high, names) < first:
            raise ValueError(f"range '{base}' runs backwards")


def validate_cron(expression: str) -> str:
    """Check a KFP cron expression locally; return it normalised (single spaces)."""
    text = " ".join(str(expression or "").split())
    example = f"e.g. --cron \"{CRON_EXAMPLE}\" runs daily at 03:00:00"
    if not text:
        raise UserError(f"--cron is empty; KFP cron has six fields, seconds first: {example}")
    if text.startswith("@"):
        if text in _CRON_DESCRIPTORS or re.fullmatch(r"@every (\d+(\.\d+)?(ns|us|µs|ms|s|m|h))+", text):
            return text
        raise UserError(f"--cron '{text}': unknown descriptor; use one of {', '.join(_CRON_DESCRIPTORS)}, "
                        f"'@every 6h', or six fields ({example})")
    fields = text.split(" ")
    if len(fields) == 5:
        raise UserError(f"--cron '{text}' has 5 fields, but KFP cron has six with seconds first; "
                        f"did you mean \"0 {text}\"? ({example})")
    if len(fields) != 6:
        raise UserError(f"--cron '{text}' has {len(fields)} fields; KFP cron has six "
                        f"(second minute hour day-of-month month day-of-week), {example}")
    for field, (name, low, high, names) in zip(fields, _CRON_FIELDS):
        try:
            _check_cron_field(field, name, low, high, names)
        except ValueError as exc:
            raise UserError(f"--cron '{text}': {name} field '{field}': {exc} ({example})") from None
    return text


# ---------------------------------------------------------------------------------------------
# connecting


def _check_host(host: str | None) -> str:
    host = (host or os.environ.get(HOST_ENV) or "").strip().rstrip("/")
    if not host:
        raise UserError(f"no KFP host: pass --host URL (or set ${HOST_ENV}), e.g. --host {HOST_EXAMPLE}")
    if not re.match(r"^https?://[^/\s]+", host):
        raise UserError(f"--host '{host}' must be an http:// or https:// URL, e.g. {HOST_EXAMPLE}")
    return host


def _kubeconfig_token(context: str) -> str:
    from kubernetes import client as k8s_client
    from kubernetes import config as k8s_config

    configuration = k8s_client.Configuration()
    try:
        k8s_config.load_kube_config(context=context, client_configuration=configuration)
    except Exception as exc:  # noqa: BLE001 - kubeconfig problems are the user's to fix
        raise UserError(f"cannot read kubeconfig context '{context}': {str(exc).splitlines()[0][:200]}") from None
    header = configuration.api_key.get("authorization") or configuration.api_key.get("BearerToken") or ""
    token = header.removeprefix("Bearer ").strip()
    if not token:
        raise UserError(f"kubeconfig context '{context}' has no bearer token (client certificates cannot "
                        f"authenticate to KFP); set ${TOKEN_ENV} instead")
    return token


def _probe(host: str, token: str | None, timeout_s: float) -> None:
    """Fail fast with one line when the API server cannot be reached (the SDK would retry for 25 s)."""
    request = urllib.request.Request(f"{host}/apis/v2beta1/healthz")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout_s):  # noqa: S310 - http(s) checked above
            return
    except urllib.error.HTTPError as exc:
        if exc.code in (401, 403):
            raise UserError(f"KFP at {host} refused the request ({exc.code} {exc.reason}); set ${TOKEN_ENV} or "
                            "--kube-context to a token that may use the pipelines API") from None
        return  # some gateways hide healthz; the real calls below will tell
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise UserError(f"cannot reach KFP at {host}: {reason}; check --host ({HOST_EXAMPLE})") from None


def connect(host: str | None, namespace: str | None = None, kube_context: str | None = None,
            timeout_s: float = 10.0):
    """A ``kfp.Client`` for ``host`` with the token from ``$KFP_TOKEN`` or the kubeconfig context."""
    import warnings

    import kfp

    host = _check_host(host)
    token = os.environ.get(TOKEN_ENV) or (_kubeconfig_token(kube_context) if kube_context else None)
    _probe(host, token, timeout_s)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return _call(host, "connect", lambda: kfp.Client(host=host, namespace=namespace or "kubeflow",
                                                          existing_token=token))


def _call(host: str, action: str, fn: Callable[[], T]) -> T:
    """Run one SDK call; turn API and network errors into one-line UserErrors."""
    import kfp_server_api
    import urllib3

    try:
        return fn()
    except kfp_server_api.ApiException as exc:
        detail = ""
        try:
            body = json.loads(exc.body or "{}")
            detail = body.get("message") or body.get("error") or ""
        except (ValueError, AttributeError):
            detail = (exc.body or "").strip()
        detail = f": {str(detail).splitlines()[0][:200]}" if detail else ""
        hint = f"; set ${TOKEN_ENV} or --kube-context" if exc.status in (401, 403) else ""
        raise UserError(f"KFP at {host} answered {exc.status} {exc.reason} to {action}{detail}{hint}") from None
    except urllib3.exceptions.HTTPError as exc:
        raise UserError(f"cannot reach KFP at {host} ({action}): {str(exc).splitlines()[0][:200]}") from None
    except (TimeoutError, ValueError) as exc:
        raise UserError(f"KFP {action} failed: {str(exc).splitlines()[0][:200]}") from None


# ---------------------------------------------------------------------------------------------
# submit and schedule


@dataclass
class Submitted:
    run_id: str
    experiment_id: str
    url: str


@dataclass
class Scheduled:
    recurring_run_id: str
    pipeline_id: str
    pipeline_version_id: str
    experiment_id: str
    cron: str
    url: str


def _compiled(config: RunConfig, directory: str) -> Path:
    from rightsizer.pipeline import compile_pipeline

    return compile_pipeline(config, Path(directory) / "pipeline.yaml")


def submit(config: RunConfig, host: str | None, experiment: str | None = None, namespace: str | None = None,
           run_name: str | None = None, kube_context: str | None = None, service_account: str | None = None) -> Submitted:
    """Compile ``config``'s pipeline and create one run of it in ``experiment`` (default: the config's name)."""
    host = _check_host(host)
    with tempfile.TemporaryDirectory(prefix="rightsizer-submit-") as tmp:
        package = _compiled(config, tmp)
        client = connect(host, namespace, kube_context)
        stamp = datetime.datetime.now().strftime("%Y-%m-%d %H-%M-%S")
        result = _call(host, "create the run", lambda: client.create_run_from_pipeline_package(
            str(package), arguments={}, run_name=run_name or f"{config.name} {stamp}",
            experiment_name=experiment or config.name, namespace=namespace, service_account=service_account))
    run = result.run_info
    return Submitted(run_id=run.run_id, experiment_id=run.experiment_id or "", url=f"{host}/#/runs/details/{run.run_id}")


def find_pipeline_id(client, name: str, namespace: str | None) -> str | None:
    """The pipeline called ``name`` in ``namespace`` (multi-user KFP) or among the shared ones.

    ``kfp.Client.get_pipeline_id`` lists shared pipelines only, so on multi-user KFP it never finds the
    one uploaded into the profile namespace and the next upload fails with "already exists"."""
    from kfp.client.client import _FILTER_OPERATIONS

    flt = json.dumps({"predicates": [{"operation": _FILTER_OPERATIONS["EQUALS"], "key": "display_name",
                                      "stringValue": name}]})
    found = client.list_pipelines(filter=flt, namespace=namespace, page_size=2).pipelines or []
    if len(found) > 1:
        raise UserError(f"KFP has several pipelines named '{name}'{f' in {namespace}' if namespace else ''}; "
                        "delete the extra ones or rename the config")
    return found[0].pipeline_id if found else None


def schedule(config: RunConfig, host: str | None, cron: str, max_concurrency: int = 1, experiment: str | None = None,
             namespace: str | None = None, name: str | None = None, catchup: bool = False,
             kube_context: str | None = None, service_account: str | None = None) -> Scheduled:
    """Upload the pipeline (or a new version of it) and create a recurring run on ``cron``."""
    cron = validate_cron(cron)
    if max_concurrency < 1:
        raise UserError(f"--max-concurrency must be at least 1, got {max_concurrency}")
    host = _check_host(host)
    with tempfile.TemporaryDirectory(prefix="rightsizer-schedule-") as tmp:
        package = _compiled(config, tmp)
        digest = hashlib.sha256(package.read_bytes()).hexdigest()[:8]
        client = connect(host, namespace, kube_context)
        pipeline_id = _call(host, "look up the pipeline", lambda: find_pipeline_id(client, config.name, namespace))
        if pipeline_id is None:
            pipeline = _call(host, "upload the pipeline", lambda: client.upload_pipeline(
                str(package), pipeline_name=config.name, description=f"rightsizer: {config.data.source}",
                namespace=namespace))
            pipeline_id = pipeline.pipeline_id
            versions = _call(host, "list pipeline versions", lambda: client.list_pipeline_versions(
                pipeline_id, page_size=1, sort_by="created_at desc"))
            if not versions.pipeline_versions:
                raise UserError(f"KFP at {host} created pipeline {pipeline_id} without a version; upload it again")
            version_id = versions.pipeline_versions[0].pipeline_version_id
        else:
            version_name = f"{config.name}-{datetime.datetime.now().strftime('%Y%m%d-%H%M%S')}-{digest}"
            version = _call(host, "upload a new pipeline version", lambda: client.upload_pipeline_version(
                str(package), version_name, pipeline_id=pipeline_id))
            version_id = version.pipeline_version_id
        found = _call(host, "create the experiment", lambda: client.create_experiment(
            experiment or config.name, namespace=namespace))
        job = _call(host, "create the recurring run", lambda: client.create_recurring_run(
            experiment_id=found.experiment_id, job_name=name or f"{config.name}-schedule", cron_expression=cron,
            max_concurrency=max_concurrency, no_catchup=not catchup, params={},
            pipeline_id=pipeline_id, version_id=version_id, enabled=True, service_account=service_account))
    return Scheduled(recurring_run_id=job.recurring_run_id, pipeline_id=pipeline_id, pipeline_version_id=version_id,
                     experiment_id=found.experiment_id, cron=cron,
                     url=f"{host}/#/recurringruns/details/{job.recurring_run_id}")
