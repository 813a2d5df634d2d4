"""Build the KFP pipeline for a config, compile it, and run it locally.

The graph: prepare -> teachers (one task per teacher, in parallel) -> evaluate each -> report.
Later stages (students, adapters, probe + slices) add their own loops; a section that is empty in
the config is left out of the graph. Every task gets its resources from ``config.resources``; the
local runner ignores them, the compiled YAML carries them to the cluster.
"""


import functools
import os
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from rightsizer import candidates
from rightsizer.component_runtime import ERROR_FILE_ENV
from rightsizer.config import RunConfig
from rightsizer.errors import UserError
from rightsizer.plan import stage as stage_named
from rightsizer.pods import GPU_DISK, GPU_RETRIES, GPU_RETRY_BACKOFF, SCRATCH, image_for


@dataclass
class Components:
    prepare: object
    teacher: object
    probe: object
    slice: object
    evaluate: object
    report: object
    adapter: object
    prompting: object
    teacher_logits: object
    distill: object
    quantize: object
    evaluate_quantized: object  # the evaluate component on the quantize stage's resources and image
    fold_teacher: object
    teacher_seeded: object  # one seed's run of a candidate trained with several seeds (config `seeds`)
    distill_seeded: object
    adapter_seeded: object


# the stage (rightsizer.plan.STAGES) each component's tasks run, which decides their image (CUDA with GPUs)
COMPONENT_STAGES = {"prepare": "prepare", "teacher": "teacher", "teacher_logits": "teacher-logits",
                    "fold_teacher": "fold-teacher",
                    "distill": "distill", "adapter": "adapters", "probe": "probe", "slice": "slice",
                    "evaluate": "evaluate", "prompting": "prompting", "report": "report", "quantize": "quantize",
                    "evaluate_quantized": "quantize", "teacher_seeded": "teacher", "distill_seeded": "distill",
                    "adapter_seeded": "adapters"}


def load_components(config: RunConfig, local: bool = False) -> "Components":
    """The project's components, re-wrapped with each stage's image (:func:`image_for`; a local run uses no
    image, so it neither needs nor checks the CUDA one)."""
    from kfp import dsl

    from rightsizer_components import adapters, evaluate, prepare, probe, prompting, report, teacher
    from rightsizer_components import distill, fold_teacher, quantize, teacher_logits
    from rightsizer_components import slice as slice_component

    def wrap(field, component):
        stage = stage_named(COMPONENT_STAGES[field])
        image = image_for(config, stage.resources, 0 if local else task_gpus(config, stage.name))
        return dsl.component(component.python_func, base_image=image, install_kfp_package=False)

    return Components(prepare=wrap("prepare", prepare.prepare), teacher=wrap("teacher", teacher.teacher),
                      probe=wrap("probe", probe.probe), slice=wrap("slice", slice_component.slice_model),
                      evaluate=wrap("evaluate", evaluate.evaluate), report=wrap("report", report.report),
                      adapter=wrap("adapter", adapters.adapter), prompting=wrap("prompting", prompting.prompting),
                      teacher_logits=wrap("teacher_logits", teacher_logits.teacher_logits),
                      distill=wrap("distill", distill.distill), quantize=wrap("quantize", quantize.quantize),
                      evaluate_quantized=wrap("evaluate_quantized", evaluate.evaluate),
                      fold_teacher=wrap("fold_teacher", fold_teacher.fold_teacher),
                      teacher_seeded=wrap("teacher_seeded", teacher.teacher_seeded),
                      distill_seeded=wrap("distill_seeded", distill.distill_seeded),
                      adapter_seeded=wrap("adapter_seeded", adapters.adapter_seeded))


def task_gpus(config: RunConfig, stage_name: str) -> int:
    """GPUs the stage's own pod requests (0 for a TrainJob launcher: its nodes get them)."""
    stage = stage_named(stage_name)
    spec = config.resources.for_stage(stage.resources)
    if stage.launches and (spec.workers or 1) > 1:
        return 0
    if stage.launches:
        from rightsizer.launch.placement import planned_gpus

        return planned_gpus(config, stage.resources)
    return spec.gpus if isinstance(spec.gpus, int) else 1  # one process on one device: `gpus: auto` means one


def add_toleration(task, toleration: dict):
    """A Kubernetes-spelled toleration (``tolerationSeconds``) onto a task."""
    from kfp import kubernetes

    names = {"key": "key", "operator": "operator", "value": "value", "effect": "effect",
             "tolerationSeconds": "toleration_seconds"}
    return kubernetes.add_toleration(task, **{names[k]: v for k, v in toleration.items()})


def apply_resources(task, config: RunConfig, stage_name: str, local: bool = False):
    """CPU/memory requests+limits, accelerator type/count, node selector, tolerations, /dev/shm, object-store
    settings from the rightsizer-storage ConfigMap and credentials from the k8s Secret (never a parameter), the
    Hugging Face token Secret, caching per stage; GPU tasks: retries and scratch space — all from the stage's
    row in :data:`rightsizer.plan.STAGES` and its ``config.resources`` key. A ``local`` run (kfp.local applies
    the environment but mounts nothing) gets no scratch mount and no TMPDIR/HF_HOME pointing into it."""
    from kfp import kubernetes

    from rightsizer import storage

    stage = stage_named(stage_name)
    spec = config.resources.for_stage(stage.resources)
    # optional: a pipeline that never touches s3:// still starts where the Secret is absent; one that
    # does fails with a one-line "no object-store credentials" naming the Secret
    kubernetes.use_secret_as_env(task, secret_name=config.storage.secret_name,
                                 secret_key_to_env=storage.SECRET_KEYS_TO_ENV, optional=True)
    settings = storage.settings_env(config.storage)
    for key, value in settings.items():
        task.set_env_variable(key, value)
    # what the config leaves out comes from the overlay's ConfigMap (KFP's own store next to KFP)
    from_map = {key: env for key, env in storage.CONFIG_MAP_KEYS_TO_ENV.items() if env not in settings}
    if from_map:
        kubernetes.use_config_map_as_env(task, config_map_name=storage.STORAGE_CONFIG_MAP,
                                         config_map_key_to_env=from_map, optional=True)
    if config.hf_token_secret:
        kubernetes.use_secret_as_env(task, secret_name=config.hf_token_secret,
                                     secret_key_to_env={storage.HF_TOKEN_KEY: storage.HF_TOKEN_ENV}, optional=True)
    # training tasks have side effects (checkpoints, TrainJobs, uploads): uncached unless asked for
    task.set_caching_options(spec.cache if spec.cache is not None else stage.cache)
    if stage.launches and (spec.workers or 1) > 1:
        # the task is a TrainJob launcher (rightsizer.launch.trainjob): the resources, node selector and
        # tolerations go to the TrainJob's nodes; this pod only stages data, waits and collects; never cached.
        # Only a stage that calls launch.dispatch may become one: any other runs its work in this pod.
        task.set_caching_options(False)
        return task.set_cpu_request("1").set_memory_request("2Gi").set_memory_limit("2Gi")
    if spec.cpu:
        task.set_cpu_request(spec.cpu).set_cpu_limit(spec.cpu)
    if spec.memory:
        task.set_memory_request(spec.memory).set_memory_limit(spec.memory)
    gpus = task_gpus(config, stage.name)
    if gpus and gpus > 0:
        task.set_accelerator_type(spec.gpu_type or "nvidia.com/gpu").set_accelerator_limit(gpus)
    retries = spec.retries if spec.retries is not None else (GPU_RETRIES if gpus and not local else 0)
    if retries:
        # GPU pods die of preemption, lost nodes and GPU faults; the stage restarts from its checkpoint
        task.set_retry(num_retries=retries, backoff_duration=GPU_RETRY_BACKOFF, backoff_factor=2.0)
    if stage.shm:
        kubernetes.empty_dir_mount(task, volume_name="dshm", mount_path="/dev/shm", medium="Memory")
    disk = spec.disk or (GPU_DISK if gpus else None)
    if disk and not local:
        # KFP's IR has no ephemeral-storage request: a size-limited emptyDir for caches and checkpoints
        kubernetes.empty_dir_mount(task, volume_name="scratch", mount_path=SCRATCH, size_limit=disk)
        task.set_env_variable("HF_HOME", f"{SCRATCH}/huggingface")
        task.set_env_variable("TMPDIR", SCRATCH)
    for key, value in (spec.node_selector or {}).items():
        kubernetes.add_node_selector(task, label_key=key, label_value=value)
    for toleration in spec.tolerations or []:
        add_toleration(task, toleration)
    return task


def build_pipeline(config: RunConfig, local: bool = False):
    """A KFP pipeline function for ``config`` (its graph follows the config's sections)."""
    from kfp import dsl

    parts = load_components(config, local)
    place = functools.partial(apply_resources, local=local)
    config_json = config.to_json()
    teacher_names = [c.name for c in candidates.teachers(config)]
    student_runs = [c.name for c in candidates.students(config)]
    adapter_names = [c.name for c in candidates.adapters(config)]
    # a stage where some candidate trains with several seeds loops over {"candidate", "seed"} runs instead of names
    seeded = {stage: candidates.several_seeds(candidates.of_stage(config, stage)) for stage in candidates.SEEDED_STAGES}

    def loop_items(stage: str, names: list[str]) -> list:
        return candidates.seed_runs(candidates.of_stage(config, stage)) if seeded[stage] else names

    def trainer(stage: str, item, **inputs):
        """The training task of one loop item: a candidate's name, or one seed's run of it."""
        plain, several = {"teacher": (parts.teacher, parts.teacher_seeded),
                          "distill": (parts.distill, parts.distill_seeded),
                          "adapters": (parts.adapter, parts.adapter_seeded)}[stage]
        if seeded[stage]:
            return several(config_json=config_json, task=item, **inputs)
        return plain(config_json=config_json, name=item, **inputs)

    def evaluated_name(stage: str, item):
        return "" if seeded[stage] else item  # "": the evaluation reads the name from the training summary
    prompting_rows = [c.name for c in candidates.prompting(config)]
    quantized_kinds = config.quantized_kinds()
    from rightsizer.stages.fold_teacher import fold_tasks

    fold_items = fold_tasks(config)

    @dsl.pipeline(name=config.name, description=f"rightsizer: right-size a classifier on {config.data.source}")
    # the config is baked in: every task gets it as a constant, so the graph (its loops, resources and images,
    # all decided from this config) cannot be run with another one. No run-time parameter to edit in the UI.
    def rightsize():
        prep = place(parts.prepare(config_json=config_json), config, "prepare").set_display_name("prepare")
        data = prep.outputs["data"]
        report_inputs = {}
        quantized_evaluations = {}  # kind -> the task evaluating that loop's quantized forms

        def scored(trained, stage: str, display: str, kind: str, name):
            """Place a training task, and add the task that evaluates the model it writes; where ``quantize:``
            applies to the kind, also a quantize task after the training task and one that evaluates its forms."""
            place(trained, config, stage).set_display_name(display)
            evaluated = parts.evaluate(config_json=config_json, name=name, kind=kind, data=data,
                                       candidate=trained.outputs["model"])
            if kind in quantized_kinds:
                quantized = parts.quantize(config_json=config_json, data=data, source=trained.outputs["model"])
                place(quantized, config, "quantize").set_display_name(f"quantize-{kind}")
                forms = parts.evaluate_quantized(config_json=config_json, name="", kind="quantized", data=data,
                                                 candidate=quantized.outputs["model"])
                place(forms, config, "quantize").set_display_name(f"evaluate-quantized-{kind}")
                quantized_evaluations[kind] = forms
            return place(evaluated, config, "evaluate").set_display_name(f"evaluate-{kind}")

        if teacher_names:
            with dsl.ParallelFor(loop_items("teacher", teacher_names), name="teachers") as teacher_run:
                teach = trainer("teacher", teacher_run, data=data)
                evaluated = scored(teach, "teacher", "teacher", "teacher", evaluated_name("teacher", teacher_run))
            report_inputs["teacher_metrics"] = dsl.Collected(evaluated.outputs["metrics"])
            if student_runs:
                # one task sees every teacher (Collected can't feed a task inside a loop): it caches their
                # logits on the training split; each student and each data-only control reads that bundle
                # (a teacher trained with several seeds: its first seed's model)
                folds = {}
                if fold_items:
                    # out-of-fold targets: K fold teachers per teacher, ordinary training tasks beside the teachers
                    with dsl.ParallelFor(fold_items, name="fold-teachers") as task:
                        fold = parts.fold_teacher(config_json=config_json, task=task, data=data)
                        place(fold, config, "fold-teacher").set_display_name("fold-teacher")
                    folds["folds"] = dsl.Collected(fold.outputs["model"])
                gathered = parts.teacher_logits(config_json=config_json, data=data,
                                                teachers=dsl.Collected(teach.outputs["model"]), **folds)
                place(gathered, config, "teacher-logits").set_display_name("teacher-logits")
                with dsl.ParallelFor(loop_items("distill", student_runs), name="students") as student_run:
                    distilled = trainer("distill", student_run, data=data, teachers=gathered.outputs["bundle"])
                    evaluated = scored(distilled, "distill", "distill", "student", evaluated_name("distill", student_run))
                report_inputs["student_metrics"] = dsl.Collected(evaluated.outputs["metrics"])
        if config.probe is not None:
            # runs beside the teachers; returns the slice depths (finetune_slices, 'auto' resolved from
            # its scores at run time), so the slice loop iterates over a task output
            probed = place(parts.probe(config_json=config_json, data=data), config, "probe")
            probed.set_display_name("probe")
            report_inputs["probe"] = probed.outputs["probe"]
            if config.probe.finetune_slices:
                with dsl.ParallelFor(probed.outputs["Output"], name="slices") as depth:
                    sliced = parts.slice(config_json=config_json, layers=depth, data=data)
                    evaluated = scored(sliced, "slice", "slice", "slice", "")  # name from the slice's summary
                report_inputs["slice_metrics"] = dsl.Collected(evaluated.outputs["metrics"])
        if adapter_names:
            # adapters start from pretrained bases, so they run beside the teachers, one task each
            with dsl.ParallelFor(loop_items("adapters", adapter_names), name="adapters") as adapter_run:
                adapted = trainer("adapters", adapter_run, data=data)
                evaluated = scored(adapted, "adapters", "adapter", "adapter", evaluated_name("adapters", adapter_run))
            report_inputs["adapter_metrics"] = dsl.Collected(evaluated.outputs["metrics"])
        if prompting_rows:
            # zero-/k-shot baselines: each task scores the test split itself and writes a metrics dir
            with dsl.ParallelFor(prompting_rows, name="prompting") as row_name:
                prompted = parts.prompting(config_json=config_json, name=row_name, data=data)
                place(prompted, config, "prompting").set_display_name("prompting")
            report_inputs["other_metrics"] = dsl.Collected(prompted.outputs["metrics"])
        for kind, forms in quantized_evaluations.items():
            report_inputs[f"quantized_{kind}_metrics"] = dsl.Collected(forms.outputs["metrics"])
        final = parts.report(config_json=config_json, data=data, **report_inputs)
        place(final, config, "report").set_display_name("report")

    return rightsize


def compile_pipeline(config: RunConfig, output: str | Path) -> Path:
    from kfp import compiler

    from rightsizer.quantize import check_devices

    output = Path(output)
    if output.suffix not in (".yaml", ".yml", ".json"):
        raise UserError(f"compile output '{output}' must end in .yaml or .json")
    check_devices(config, local=False)
    from rightsizer.rundir import fs_error

    tmp = output.with_name(f".{output.name}.tmp{output.suffix}")
    pipeline = build_pipeline(config)
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        compiler.Compiler().compile(pipeline, str(tmp))
        os.replace(tmp, output)
    except OSError as exc:
        if tmp.parent.is_dir():
            tmp.unlink(missing_ok=True)
        raise fs_error(exc, output, "the pipeline to") from None
    return output


@contextmanager
def _environment(name: str, value: str):
    previous = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = previous


@contextmanager
def _error_file():
    handle, path = tempfile.mkstemp(prefix="rightsizer-error-", suffix=".txt")
    os.close(handle)
    try:
        with _environment(ERROR_FILE_ENV, path):
            yield Path(path)
    finally:
        Path(path).unlink(missing_ok=True)


@contextmanager
def _print_kept():
    """Leave ``builtins.print`` as it was before the run.

    kfp.local indents a task's streamed output by swapping ``builtins.print`` for an indenting one while
    the task runs, and puts back the one it saw on entry. Loop iterations run in threads, so two tasks
    that overlap (A enters, B enters, A leaves, B leaves) end with B putting back A's indenting print:
    every later ``print`` of this process began with 4 spaces (``rightsizer predict``'s TSV lines after a
    run in the same process, the launcher's ``placement:`` line).
    """
    import builtins

    original = builtins.print
    try:
        yield
    finally:
        builtins.print = original


@contextmanager
def _timing_lock(pipeline_root: Path):
    """Tasks share this machine: latency is timed only while no other task trains (rightsizer.timing)."""
    from rightsizer.timing import LOCK_ENV

    lock = pipeline_root / ".timing.lock"
    try:
        with _environment(LOCK_ENV, str(lock)):
            yield
    finally:
        lock.unlink(missing_ok=True)


def local_threads() -> int:
    """Intra-op threads per task in a local run: kfp.local runs two loop iterations at once."""
    from rightsizer.timing import available_cores

    return max(1, available_cores() // 2)


def run_local(config: RunConfig, pipeline_root: str | Path, stream=None, resume_dir: str | Path | None = None) -> Path:
    """Run the pipeline with ``kfp.local.SubprocessRunner`` in this environment; return the run's dir.

    ``stream`` (a :class:`rightsizer.progress.ConsoleStream`) receives everything KFP and the tasks print,
    in place of stdout/stderr; ``resume_dir`` keeps a record of every finished task (``--resume``).
    """
    import contextlib

    from kfp import local

    from rightsizer.quantize import check_devices

    check_devices(config, local=True)  # before anything trains

    from rightsizer import progress
    from rightsizer.component_runtime import RESUME_ENV

    pipeline_root = Path(pipeline_root)
    pipeline_root.mkdir(parents=True, exist_ok=True)
    # kfp.local runs two loop iterations at once: each task gets half the cores, which avoids OpenMP
    # oversubscription (10x slower on a 2-core machine). A user's own OMP_NUM_THREADS wins.
    for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(variable, str(local_threads()))
    with contextlib.ExitStack() as stack:
        stack.enter_context(_print_kept())
        if stream is not None:
            stack.enter_context(contextlib.redirect_stdout(stream))
            stack.enter_context(contextlib.redirect_stderr(stream))
            stack.enter_context(_environment(progress.PROGRESS_ENV, "1"))
            stream.stop_file = pipeline_root / ".stop"
            stream.stop_file.unlink(missing_ok=True)
            stack.enter_context(_environment(progress.STOP_ENV, str(stream.stop_file)))
        if resume_dir is not None:
            stack.enter_context(_environment(RESUME_ENV, str(resume_dir)))
        errors = stack.enter_context(_error_file())
        stack.enter_context(_timing_lock(pipeline_root))
        import warnings

        stack.enter_context(warnings.catch_warnings())
        if stream is not None:
            warnings.simplefilter("default")  # to the log, once each
        local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(pipeline_root), raise_on_error=True)
        pipeline = build_pipeline(config, local=True)
        try:
            pipeline()
        except BaseException as exc:  # the local runner raises RuntimeError naming the failed task
            if stream is not None:
                stream.stop_tasks()
            if not isinstance(exc, Exception):
                raise
            message = errors.read_text().strip().splitlines() if errors.exists() else []
            message = message or (stream.errors if stream is not None else [])
            if message:
                raise UserError(message[0]) from None
            raise RuntimeError(f"pipeline failed: {exc}") from exc
    runs = sorted((p for p in pipeline_root.iterdir() if p.is_dir() and p.name.startswith(f"{config.name}-")),
                  key=lambda p: p.stat().st_mtime)
    if not runs:
        raise RuntimeError(f"the local run left nothing under {pipeline_root}")
    return runs[-1]


def find_report(run_dir: Path) -> Path:
    found = sorted(run_dir.rglob("leaderboard.json"))
    if not found:
        raise RuntimeError(f"no leaderboard.json under {run_dir}")
    return found[-1].parent


def collect_outputs(run_dir: Path, output: Path) -> None:
    """Copy the report and every stage's outputs (models, metrics, tb) into ``output``; then
    :func:`place_models`."""
    report_dir = find_report(run_dir)
    for item in report_dir.iterdir():
        target = output / item.name
        shutil.copytree(item, target) if item.is_dir() else shutil.copy2(item, target)
    stages = output / "stages"
    for summary in run_dir.rglob("summary.json"):
        stage_dir = summary.parent
        if stage_dir == report_dir:
            continue
        relative = stage_dir.relative_to(run_dir)
        shutil.copytree(stage_dir, stages / relative, dirs_exist_ok=True)
    place_models(run_dir, output)


def place_models(run_dir: Path, output: Path) -> None:
    """Point every leaderboard row's ``path`` at its model inside ``output`` (where the evaluation
    found it under ``run_dir``, now copied to ``stages/``), and copy the recommended model's files
    into ``output/recommended/`` beside the model card the report wrote there."""
    from rightsizer.outputs import read_json, write_json

    board_path = output / "leaderboard.json"
    board = read_json(board_path)
    run_dir = run_dir.resolve()

    def within(path: str | None) -> str | None:
        found = Path(path).resolve() if path else None
        return str("stages" / found.relative_to(run_dir)) if found and found.is_relative_to(run_dir) else None

    for row in board["candidates"]:
        row["path"] = within(row.get("path"))
        for run in row.get("per_seed") or []:  # several seeds: each seed's model (`path` is the shipped one's)
            run["path"] = within(run.get("path"))
    chosen = next((row for row in board["candidates"] if row["name"] == board.get("recommended")), None)
    if chosen is not None and chosen["path"] and (output / chosen["path"]).is_dir():
        shutil.copytree(output / chosen["path"], output / "recommended", dirs_exist_ok=True)
        board["recommended_path"] = "recommended"
        board["recommended_uri"] = str((output / "recommended").resolve())  # the run's own dir is gone after the run
    write_json(board_path, board)
