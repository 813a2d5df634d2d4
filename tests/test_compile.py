"""`rightsizer compile`: the KFP IR YAML carries everything a cluster needs and no secret.

Per task: cpu/memory requests and limits, accelerator type/count, /dev/shm for training, object-store
credentials as env from a k8s Secret (kfp-kubernetes secretAsEnv), the endpoint as plain env, node
selectors/tolerations from the config, caching off for training; the KFP UI outputs (Metrics,
ClassificationMetrics, Markdown) are declared. Bad inputs exit 2 with one line and write nothing.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from rightsizer.cli import main

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "examples" / "demo.yaml"
FAKE_ACCESS = "AKIAFAKEACCESS0000001"
FAKE_SECRET = "fake/secret+value/that-must-never-leak"


def _compile(tmp_path, monkeypatch, *extra: str) -> tuple[dict, dict, str]:
    # credentials in the environment while compiling must not end up in the YAML
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", FAKE_ACCESS)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", FAKE_SECRET)
    out = tmp_path / "x.yaml"
    assert main(["compile", str(DEMO), "-o", str(out), *extra]) == 0
    text = out.read_text()
    spec, platform = list(yaml.safe_load_all(text))
    return spec, platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"], text


def _executor(executors: dict, stage: str) -> dict:
    return next(spec for name, spec in executors.items() if name == f"exec-{stage}" or name.startswith(f"exec-{stage}-"))


def _task(spec: dict, component: str) -> dict:
    """The DAG task (anywhere in the graph) that runs ``comp-<component>``."""
    tasks = dict(spec["root"]["dag"]["tasks"])
    for comp in spec["components"].values():
        tasks.update(comp.get("dag", {}).get("tasks", {}))
    return next(task for task in tasks.values() if task["componentRef"]["name"] == f"comp-{component}")


def test_compiled_demo_has_resources_shm_secret_env_and_caching(tmp_path, monkeypatch):
    spec, platform, text = _compile(tmp_path, monkeypatch, "--set", "storage.endpoint=http://minio-service.kubeflow:9000")
    executors = spec["deploymentSpec"]["executors"]
    for stage in ("prepare", "teacher", "evaluate", "report"):
        resources = _executor(executors, stage)["container"]["resources"]
        assert resources["resourceCpuRequest"] == resources["resourceCpuLimit"] == "2", stage
        assert resources["resourceMemoryRequest"] == resources["resourceMemoryLimit"] == "8Gi", stage
        env = {e["name"]: e["value"] for e in _executor(executors, stage)["container"]["env"]}
        scratch = {"HF_HOME": "/scratch/huggingface", "TMPDIR": "/scratch"} if stage == "teacher" else {}  # GPU task
        assert env == {"AWS_ENDPOINT_URL": "http://minio-service.kubeflow:9000", **scratch}, stage
        secret = platform[f"exec-{stage}"]["secretAsEnv"][0]
        assert secret["secretName"] == "mlpipeline-minio-artifact"
        assert {k["secretKey"]: k["envVar"] for k in secret["keyToEnv"]} == {
            "accesskey": "AWS_ACCESS_KEY_ID", "secretkey": "AWS_SECRET_ACCESS_KEY"}
    teacher = _executor(executors, "teacher")["container"]["resources"]["accelerator"]
    assert teacher["resourceType"] == "nvidia.com/gpu" and teacher["resourceCount"] == "1"  # demo: teachers gpus 1
    assert "accelerator" not in _executor(executors, "prepare")["container"]["resources"]
    shm = platform["exec-teacher"]["emptyDirMounts"][0]
    assert shm["mountPath"] == "/dev/shm" and shm["medium"] == "Memory"
    assert "emptyDirMounts" not in platform["exec-prepare"]
    # caching: training uncached (side effects), the rest cached
    assert _task(spec, "teacher").get("cachingOptions", {}).get("enableCache") is not True
    assert _task(spec, "prepare")["cachingOptions"]["enableCache"] is True
    assert _task(spec, "report")["cachingOptions"]["enableCache"] is True
    # no secret anywhere: neither the env's values nor a credential-looking key
    assert FAKE_ACCESS not in text and FAKE_SECRET not in text
    assert "secret_key" not in text and "access_key" not in text


def test_kfp_ui_outputs_are_declared(tmp_path, monkeypatch):
    spec, _, _ = _compile(tmp_path, monkeypatch)
    components = spec["components"]

    def outputs(component: str) -> dict:
        return {name: art["artifactType"]["schemaTitle"]
                for name, art in components[f"comp-{component}"]["outputDefinitions"]["artifacts"].items()}

    assert set(outputs("evaluate").values()) >= {"system.Metrics", "system.ClassificationMetrics"}
    assert {"system.Markdown", "system.HTML", "system.Metrics"} <= set(outputs("report").values())


def test_node_selector_tolerations_cache_and_secret_name_from_config(tmp_path, monkeypatch):
    _, platform, _ = _compile(
        tmp_path, monkeypatch,
        "--set", "resources.teachers.node_selector={accelerator: a100}",
        "--set", "resources.teachers.tolerations=[{key: nvidia.com/gpu, operator: Exists, effect: NoSchedule}]",
        "--set", "resources.teachers.cache=true",
        "--set", "storage.secret_name=rightsizer-s3",
    )
    teacher = platform["exec-teacher"]
    assert teacher["nodeSelector"]["labels"] == {"accelerator": "a100"}
    assert teacher["tolerations"][0] == {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    assert teacher["secretAsEnv"][0]["secretName"] == "rightsizer-s3"
    spec = yaml.safe_load_all((tmp_path / "x.yaml").read_text()).__next__()
    assert _task(spec, "teacher")["cachingOptions"]["enableCache"] is True


@pytest.mark.parametrize("args, message", [
    (["--set", "storage.endpoint=http://minio:9000/bucket"], "no path"),
    (["--set", "storage.endpoint=http://minio:9000", "--set", "storage.secure=true"], "drop one of them"),
    (["--set", "resources.teachers.cpu=lots"], "not a Kubernetes quantity"),
])
def test_bad_compile_inputs_exit_2_with_one_line_and_no_output(tmp_path, capsys, args, message):
    out = tmp_path / "x.yaml"
    assert main(["compile", str(DEMO), "-o", str(out), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0]
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_credentials_in_the_config_file_are_refused(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text(DEMO.read_text() + "storage:\n  endpoint: http://minio:9000\n  secret_key: hunter2\n")
    out = tmp_path / "x.yaml"
    assert main(["compile", str(config), "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "credentials never go in the config" in err[0] and "hunter2" not in err[0]
    assert not out.exists()


def test_compile_refuses_an_unknown_output_suffix(tmp_path, capsys):
    assert main(["compile", str(DEMO), "-o", str(tmp_path / "x.txt")]) == 2
    assert "must end in .yaml" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_only_stages_that_launch_become_launcher_pods(tmp_path, monkeypatch):
    """workers > 1 turns a task into a 1-CPU launcher only when its stage calls launch.dispatch: the
    teacher-logits task (forward passes over train) and the probe run their work in their own pod."""
    sets = ["--set", "resources.teachers.workers=2", "--set", "resources.teachers.gpus=2",
            "--set", "resources.probe.workers=2", "--set", "resources.probe.gpus=1", "--set", "resources.probe.memory=12Gi"]
    spec, platform, _ = _compile(tmp_path, monkeypatch, *sets)
    executors = spec["deploymentSpec"]["executors"]

    def resources(stage: str) -> dict:
        return _executor(executors, stage)["container"]["resources"]

    for launcher in ("teacher", "slice-model"):  # they hand the work to a TrainJob
        assert resources(launcher)["resourceCpuRequest"] == "1" and "accelerator" not in resources(launcher), launcher
    logits = resources("teacher-logits")  # falls back to resources.teachers, but runs in its pod
    assert logits["resourceCpuRequest"] == "2" and logits["resourceMemoryLimit"] == "8Gi"
    assert logits["accelerator"]["resourceCount"] == "2"
    assert "emptyDirMounts" in platform["exec-teacher-logits"]
    probe = resources("probe")
    assert probe["resourceCpuRequest"] == "2" and probe["resourceMemoryLimit"] == "12Gi"
    assert probe["accelerator"]["resourceCount"] == "1"


def test_a_stage_own_resources_key_overrides_the_one_it_falls_back_to(tmp_path, monkeypatch):
    sets = ["--set", "resources.teacher_logits.gpus=0", "--set", "resources.slice.memory=20Gi"]
    spec, _, _ = _compile(tmp_path, monkeypatch, *sets)
    executors = spec["deploymentSpec"]["executors"]
    assert "accelerator" not in _executor(executors, "teacher-logits")["container"]["resources"]
    assert _executor(executors, "teacher")["container"]["resources"]["accelerator"]["resourceCount"] == "1"
    assert _executor(executors, "slice-model")["container"]["resources"]["resourceMemoryLimit"] == "20Gi"
    assert _executor(executors, "probe")["container"]["resources"]["resourceMemoryLimit"] == "8Gi"

# ---------------------------------------------------------------------------------------------
# a real cluster's first try: images that match the hardware, KFP's store, tokens, retries


def _image(spec: dict, stage: str) -> str:
    return _executor(spec["deploymentSpec"]["executors"], stage)["container"]["image"]


def test_gpu_stages_get_the_cuda_image(tmp_path, monkeypatch):
    spec, _, _ = _compile(tmp_path, monkeypatch)  # demo: teachers/students/adapters/probe with 1 GPU each
    assert _image(spec, "teacher") == "ghcr.io/rightsizer/rightsizer:0.1.0-cuda"
    assert _image(spec, "prepare") == _image(spec, "report") == "ghcr.io/rightsizer/rightsizer:0.1.0"
    spec, _, _ = _compile(tmp_path, monkeypatch, "--set", "image=reg.example/rs:1", "--set", "image_cuda=reg.example/rs:1-gpu")
    assert _image(spec, "teacher") == "reg.example/rs:1-gpu" and _image(spec, "evaluate") == "reg.example/rs:1"


def test_own_cpu_image_without_a_cuda_image_is_refused_for_gpu_stages(tmp_path, capsys):
    out = tmp_path / "x.yaml"
    assert main(["compile", str(DEMO), "-o", str(out), "--set", "image=reg.example/rs:1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: resources.") and "image_cuda" in err[0]
    assert not out.exists()
    cpu_only = ["--set", "image=reg.example/rs:1"] + [x for s in ("teachers", "students", "adapters", "probe")
                                                       for x in ("--set", f"resources.{s}.gpus=0")]
    assert main(["compile", str(DEMO), "-o", str(out), *cpu_only]) == 0


def test_every_task_reads_the_storage_config_map_and_the_hf_token_secret(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_fakeTokenThatMustNeverLeak")
    spec, platform, text = _compile(tmp_path, monkeypatch, "--set", "hf_token_secret=hf-token")
    assert "hf_fakeTokenThatMustNeverLeak" not in text
    assert len(platform) == len(spec["deploymentSpec"]["executors"]) >= 8
    for name, executor in platform.items():
        (config_map,) = executor["configMapAsEnv"]
        assert config_map["configMapName"] == "rightsizer-storage" and config_map["optional"] is True, name
        assert {k["configMapKey"]: k["envVar"] for k in config_map["keyToEnv"]} == {
            "endpoint": "AWS_ENDPOINT_URL", "bucket": "RIGHTSIZER_S3_BUCKET", "prefix": "RIGHTSIZER_S3_PREFIX"}, name
        secrets = {s["secretName"]: {k["secretKey"]: k["envVar"] for k in s["keyToEnv"]} for s in executor["secretAsEnv"]}
        assert secrets["hf-token"] == {"token": "HF_TOKEN"}, name
    # what the config sets is plain env, and no longer also taken from the ConfigMap
    _, platform, _ = _compile(tmp_path, monkeypatch, "--set", "storage.endpoint=http://s3.internal:8333",
                              "--set", "storage.bucket=models")
    keys = {k["configMapKey"] for k in platform["exec-prepare"]["configMapAsEnv"][0]["keyToEnv"]}
    assert keys == {"prefix"}


def test_gpu_tasks_retry_and_get_scratch_space(tmp_path, monkeypatch):
    spec, platform, _ = _compile(tmp_path, monkeypatch, "--set", "resources.teachers.disk=200Gi",
                                 "--set", "resources.prepare.retries=1")
    retry = _task(spec, "teacher")["retryPolicy"]
    assert retry["maxRetryCount"] == 2 and retry["backoffDuration"] == "60s"
    assert "retryPolicy" not in _task(spec, "report")  # CPU tasks: a failure is a bug or bad data, not bad luck
    assert _task(spec, "prepare")["retryPolicy"]["maxRetryCount"] == 1
    mounts = {m["volumeName"]: m for m in platform["exec-teacher"]["emptyDirMounts"]}
    assert mounts["scratch"]["mountPath"] == "/scratch" and mounts["scratch"]["sizeLimit"] == "200Gi"
    assert mounts["dshm"]["medium"] == "Memory"
    env = {e["name"]: e["value"] for e in _executor(spec["deploymentSpec"]["executors"], "teacher")["container"]["env"]}
    assert env["HF_HOME"].startswith("/scratch/")
    assert "emptyDirMounts" not in platform["exec-report"]


def test_toleration_seconds_compile_and_unknown_toleration_keys_are_refused(tmp_path, monkeypatch, capsys):
    _, platform, _ = _compile(tmp_path, monkeypatch, "--set", "resources.teachers.tolerations=[{key: nvidia.com/gpu, "
                              "operator: Exists, effect: NoExecute, tolerationSeconds: 300}]")
    assert platform["exec-teacher"]["tolerations"][0] == {"key": "nvidia.com/gpu", "operator": "Exists",
                                                           "effect": "NoExecute", "tolerationSeconds": "300"}  # int64 as JSON
    out = tmp_path / "y.yaml"
    assert main(["compile", str(DEMO), "-o", str(out), "--set",
                 "resources.teachers.tolerations=[{key: gpu, toleration_seconds: 5}]"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown key(s) toleration_seconds" in err[0] and not out.exists()


def test_a_local_run_needs_no_cuda_image(tiny_config):
    from rightsizer.errors import UserError
    from rightsizer.pipeline import build_pipeline

    config = tiny_config(image="reg.example/rs:1", resources={"teachers": {"gpus": 1}})
    build_pipeline(config, local=True)  # kfp.local runs in this environment: no image is pulled
    with pytest.raises(UserError, match=r"resources.teachers asks for 1 GPU\(s\) but only a CPU image"):
        build_pipeline(config)


def test_a_local_run_gets_no_scratch_env_nor_gpu_retries(tmp_path, tiny_config):
    """kfp.local applies a task's env but mounts nothing: TMPDIR=/scratch made every GPU task fail locally."""
    from kfp import compiler

    from rightsizer.pipeline import build_pipeline

    config = tiny_config(resources={"teachers": {"gpus": 1}})
    for local in (True, False):
        out = tmp_path / f"local-{local}.yaml"
        compiler.Compiler().compile(build_pipeline(config, local=local), str(out))
        spec = next(yaml.safe_load_all(out.read_text()))
        env = {e["name"] for e in _executor(spec["deploymentSpec"]["executors"], "teacher")["container"].get("env", [])}
        assert ("TMPDIR" in env) is not local and ("retryPolicy" in _task(spec, "teacher")) is not local


def test_the_config_is_baked_in_not_a_run_time_parameter(tmp_path, monkeypatch):
    """The graph (loops, resources, images) is decided from the config at compile time, so the compiled
    pipeline takes no config parameter that could disagree with it: every task gets the config as a constant."""
    import json

    from rightsizer.config import load_config

    spec, _, _ = _compile(tmp_path, monkeypatch)
    assert not spec["root"].get("inputDefinitions", {}).get("parameters")
    tasks = dict(spec["root"]["dag"]["tasks"])
    for comp in spec["components"].values():
        tasks.update(comp.get("dag", {}).get("tasks", {}))
    constants = [task["inputs"]["parameters"]["config_json"]["runtimeValue"]["constant"] for task in tasks.values()
                 if "config_json" in task.get("inputs", {}).get("parameters", {})]
    assert len(constants) >= 8 and set(constants) == {load_config(DEMO).to_json()}
    assert json.loads(constants[0])["name"] == "demo"
