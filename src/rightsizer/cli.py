"""The ``rightsizer`` command line: run, compile, stage (and the cluster commands).

User mistakes print one line ``error: ...`` on stderr and exit 2, with nothing half-written left
in ``--output``; anything else is a bug and exits 1 with a traceback.
"""

from __future__ import annotations

import importlib
import os
import re
import shutil
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer
from rich import box
from rich.console import Console
from rich.table import Table

from rightsizer.errors import UserError

if TYPE_CHECKING:
    from rightsizer.records import Leaderboard

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  context_settings={"help_option_names": ["-h", "--help"]},
                  help="rightsizer: right-size your language model, on Kubeflow.",
                  epilog="Start here: rightsizer run examples/demo.yaml --output runs/demo")
console = Console(stderr=False, soft_wrap=True)


def _version(value: bool) -> None:
    if value:
        from rightsizer import __version__

        console.print(f"rightsizer {__version__}")
        raise typer.Exit()


@app.callback()
def _main(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="print the version and exit")) -> None:
    """rightsizer: right-size your language model, on Kubeflow."""


def example(*lines: str) -> str:
    """A command's help epilog: how it is called."""
    return "Example: " + "  |  ".join(lines)

SetOption = typer.Option(None, "--set", "-s", help="override a config key: key.path=value (repeatable)")


def _load(config_path: Path, overrides: Optional[list[str]], check: bool = True, here: bool = True):
    """Load and validate a config; ``check`` also runs every up-front check (rightsizer validate).

    ``here=False`` (compile, submit, schedule): the run happens on a cluster, so a local model path that
    is not on this machine is left for the cluster to check.
    """
    from rightsizer.config import load_config

    config = load_config(config_path, overrides or [])
    if check:
        from rightsizer.validate import validate

        validate(config, here=here)
    return config


def _input_paths(config_path: Path, config) -> list[Path]:
    """Local files a run reads: never inside the directory it may clear."""
    from rightsizer.models import describe

    paths = [config_path]
    source = config.data.source
    if ":" not in source.split("/", 1)[0]:
        paths.append(Path(source).expanduser())
    paths += [Path(m).expanduser() for m in [t.model for t in config.teachers] + [s.model for s in config.students]
              if m and describe(m) == "local" and not m.startswith("package:")]
    return paths


@app.command(epilog=example("rightsizer run examples/demo.yaml --output runs/demo",
                            "rightsizer run my.yaml -o runs/my --resume"))
def run(
    config_path: Path = typer.Argument(..., metavar="CONFIG", help="YAML config"),
    output: Path = typer.Option(Path("runs/latest"), "--output", "-o", help="run directory for the report and models"),
    overrides: Optional[list[str]] = SetOption,
    overwrite: bool = typer.Option(False, "--overwrite", help="replace a previous run in --output (never other files)"),
    resume: bool = typer.Option(False, "--resume", help="continue a killed run in --output: finished stage tasks "
                                "are reused, a killed training stage restarts from its last checkpoint"),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="also show KFP's and the stages' own output"),
) -> None:
    """Run the whole pipeline locally (kfp.local SubprocessRunner, no cluster)."""
    import signal

    from rightsizer import rundir
    from rightsizer.pipeline import collect_outputs, run_local
    from rightsizer.progress import ConsoleStream

    config = _load(config_path, overrides)
    output = Path(os.path.abspath(output.expanduser()))
    run_dir = rundir.claim(output, config.to_json(), overwrite=overwrite, resume=resume,
                           inputs=_input_paths(config_path, config))
    started = time.time()
    verb = "resuming" if run_dir.resuming else "running"
    console.print(f"[bold]rightsizer[/] {verb} [cyan]{config.name}[/] on {config.data.source} -> {output}", highlight=False)
    console.print(f"log: {run_dir.log}", highlight=False)
    stream = ConsoleStream(run_dir.log, verbose=verbose)

    # Ctrl-C or SIGTERM stop the running tasks at once (kfp.local would wait for them) and keep the finished ones
    previous = {sig: signal.signal(sig, stream.interrupt) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        kfp_run = run_local(config, run_dir.pipeline_root, stream=stream, resume_dir=run_dir.resume_dir)
        stream.close()
        collect_outputs(kfp_run, output)
    except UserError:
        stream.close()
        run_dir.discard()
        raise
    except KeyboardInterrupt:
        stream.close()
        kept = run_dir.finished_records()
        if not kept:
            run_dir.discard()
            raise Interrupted("interrupted") from None
        run_dir.mark("interrupted")
        raise Interrupted(f"interrupted; {kept} finished stage task(s) are kept in '{output}': continue with "
                          f"rightsizer run {config_path} --output {output} --resume") from None
    except Exception as exc:
        stream.close()
        run_dir.mark("failed")
        plain = re.sub(r"\x1b\[[0-9;]*m", "", " ".join(str(exc).split()))  # KFP colours its messages
        raise Bug(f"the run failed (a bug, not your input): {plain[:300]}; details in "
                  f"{run_dir.log}; after a fix, continue with --resume") from exc
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    run_dir.finish()
    _print_run(output, time.time() - started)


class Interrupted(UserError):
    exit_code = 130


class Bug(Exception):
    """A failure that is not the user's: one line and exit 1 (the traceback is in the run's log)."""


WIDE_TABLE = 110  # from this many columns the table also shows each candidate's kind and size on disk
METRIC_WORDS = {"macro_f1": ("F1", "macro-F1"), "accuracy": ("acc", "accuracy")}  # (in a header, in the title)


def _middle(text: str, width: int) -> str:
    """``text`` cut to ``width`` characters in the middle: names differ at their ends (-int8, -nodistill)."""
    if len(text) <= width:
        return text
    head = (width - 1) // 2
    return text[:head] + "…" + text[len(text) - (width - 1 - head):]


def _millions(count: int | None) -> str:
    if count is None:
        return "–"
    return f"{count / 1e6:.1f}M" if count >= 1e6 else f"{count / 1e3:.0f}k" if count >= 1e4 else f"{count:,}"


def leaderboard_table(board: Leaderboard, width: int) -> Table:
    """The leaderboard for the terminal, each candidate on one line at ``width`` columns (80 and up): long
    names are cut in the middle, the test interval is written short, and kind and size show only when wide."""
    from rich.cells import cell_len

    metric = board.metric
    short_word, word = METRIC_WORDS.get(metric, (metric, metric))

    def number(value, spec: str) -> str:
        return "–" if value is None else format(value, spec)

    def bare(value: float) -> str:  # 0.881 -> .881: scores lie in [0, 1]
        return format(value, ".3f").removeprefix("0")

    def score(row, key: str) -> str:
        """Several seeds: the mean ± the standard deviation over them, '0.812 ± 0.006 (3 seeds)' (narrow: 0.812±.006)."""
        from rightsizer.stages.report.render import with_spread

        if width >= WIDE_TABLE or len(row.seeds or []) < 2 or getattr(row, f"{key}_std") is None:
            return with_spread(row, key, 3)
        return f"{getattr(row, key):.3f}±{bare(getattr(row, f'{key}_std'))}"

    columns: dict[str, list[str]] = {"kind": [], f"val {short_word}": [], f"test {short_word} (95% CI)": [],
                                     "latency": [], "params": [], "size": []}
    for row in board.candidates:
        interval = getattr(row, f"{metric}_ci")
        columns["kind"].append(row.kind)
        columns[f"val {short_word}"].append(score(row, f"val_{metric}"))
        columns[f"test {short_word} (95% CI)"].append(
            score(row, metric) + (f" ({bare(interval[0])}–{bare(interval[1])})" if interval else ""))
        columns["latency"].append(number(row.latency_ms, ".2f"))
        columns["params"].append(_millions(row.params))
        columns["size"].append(number(row.size_mb, ".1f"))
    units = "latency in ms per example"
    if width < WIDE_TABLE and any(len(row.seeds or []) > 1 for row in board.candidates):
        units += ", ± sd over seeds"
    if width >= WIDE_TABLE:
        units += ", size in MB"
    else:
        del columns["kind"], columns["size"]
    marks = {row.name: " ⭐" if row.name == board.recommended else "" for row in board.candidates}
    # each column: its widest cell or header, a space of padding each side and one between columns
    used = sum(max(map(cell_len, [header, *cells])) + 3 for header, cells in columns.items())
    room = width - used - 2  # for a name and its star
    table = Table(title=f"leaderboard ({word}; {units})", title_justify="left", box=box.SIMPLE_HEAD, show_edge=False)
    table.add_column("candidate", no_wrap=True)
    for header in columns:
        table.add_column(header, justify="left" if header == "kind" else "right", no_wrap=True)
    for index, row in enumerate(board.candidates):
        style = "bold green" if row.name == board.recommended else "dim" if row.kind == "baseline" else None
        name = _middle(row.name, max(12, room - cell_len(marks[row.name]))) + marks[row.name]
        table.add_row(name, *(cells[index] for cells in columns.values()), style=style)
    return table


def _print_run(output: Path, elapsed: float) -> None:
    from rightsizer.outputs import read_json
    from rightsizer.records import Leaderboard, StageSummary

    board = Leaderboard.model_validate(read_json(output / "leaderboard.json"))
    console.print(leaderboard_table(board, console.width))
    console.print(f"total {elapsed:.0f} s")
    details = read_json(output / "report.json") if (output / "report.json").exists() else {}
    if board.recommended:
        console.print(f"[bold green]recommended:[/] {board.recommended} — {board.reason}.", highlight=False)
    else:
        console.print(f"[bold yellow]no recommendation:[/] {board.reason}.", highlight=False)
    if board.recommended_path:
        chosen = next((row for row in board.candidates if row.name == board.recommended), None)
        loads = "rightsizer.quantize.load_quantized" if chosen is not None and chosen.kind == "quantized" else "from_pretrained"
        console.print(f"model: {output / board.recommended_path} ({loads}; model card README.md)", highlight=False)
    for line in ((details.get("confirmation") or {}).get("statement"), details.get("cost_statement"),
                 (details.get("speed") or {}).get("statement")):
        if line:
            console.print(line)
    for flag in details.get("flags", []):
        console.print(f"[yellow]flag:[/] {flag['message']}")
    report = output / "report.html"
    console.print(f"report: {report if report.exists() else output / 'report.md'}")


@app.command("validate", epilog=example("rightsizer validate examples/demo.yaml",
                                         "rightsizer validate my.yaml --set teachers.0.model=./my-bert"))
def validate_command(
    config_path: Path = typer.Argument(..., metavar="CONFIG", help="YAML config"),
    overrides: Optional[list[str]] = SetOption,
    data: bool = typer.Option(True, "--data/--no-data", help="also read the data (local and built-in sources)"),
) -> None:
    """Every check that can be made before training, in seconds: config, models (no weights), data."""
    from rightsizer.validate import validate

    config = _load(config_path, overrides, check=False)
    report = validate(config, data=data)
    console.print(f"[green]ok[/] {config_path}: {', '.join(report.checked)} ({report.seconds:.1f} s, nothing trained)",
                  highlight=False)
    for note in report.notes:
        console.print(f"note: {note}", highlight=False)


@app.command(epilog=example('rightsizer predict runs/demo --text "great phone, poor battery"',
                            "rightsizer predict runs/demo --candidate student-2l --file new.csv -o predictions.jsonl"))
def predict(
    target: Path = typer.Argument(..., metavar="RUN_DIR|MODEL_DIR", help="a run directory, or a saved model directory"),
    texts: Optional[list[str]] = typer.Option(None, "--text", "-t", help="a text to classify (repeatable)"),
    pairs: Optional[list[str]] = typer.Option(None, "--pair", help="pair tasks: the second text of each --text"),
    file: Optional[Path] = typer.Option(None, "--file", "-f", help="texts: .txt (one a line) or csv/tsv/jsonl/json/parquet"),
    text_column: Optional[str] = typer.Option(None, "--text-column", help="the file's text column (default: the run's)"),
    candidate: Optional[str] = typer.Option(None, "--candidate", "-c", help="a leaderboard row (default: the recommended one)"),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="write predictions to .jsonl or .csv instead"),
) -> None:
    """Classify new texts with the recommended (or a named) candidate of a run."""
    from rightsizer import predict as predicting

    model_dir, name, settings = predicting.resolve(target, candidate)
    inputs = predicting.read_inputs(texts, pairs, file, text_column or settings.get("text_column"),
                                    settings.get("text_pair_column"))
    rows = predicting.predict(model_dir, inputs, settings.get("max_length"))
    if output is not None:
        predicting.write(rows, output)
        console.print(f"wrote {len(rows)} prediction(s) by {name} to {output}", highlight=False)
        return
    console.print(f"[dim]model: {name} ({model_dir})[/]", highlight=False)
    for row in rows:
        shown = row["text"] if len(row["text"]) <= 60 else row["text"][:57] + "..."
        print(f"{row['label']}\t{row['probability']:.3f}\t{shown}")  # tab-separated: label, probability, text


@app.command("compile", epilog=example("rightsizer compile examples/demo.yaml -o pipeline.yaml"))
def compile_command(
    config_path: Path = typer.Argument(..., metavar="CONFIG"),
    output: Path = typer.Option(..., "--output", "-o", help="pipeline YAML to write"),
    overrides: Optional[list[str]] = SetOption,
    trainjobs: Optional[Path] = typer.Option(None, "--trainjobs", help="also write, into this directory, the "
                                             "Kubeflow Trainer TrainJob each multi-node stage (workers > 1) will create"),
) -> None:
    """Compile the pipeline to KFP IR YAML (upload it in the KFP UI)."""
    from rightsizer.pipeline import compile_pipeline

    config = _load(config_path, overrides, here=False)
    path = compile_pipeline(config, output)
    console.print(f"wrote {path}")
    if trainjobs is not None:
        from rightsizer.launch.trainjob import write_trainjobs

        written = write_trainjobs(config, trainjobs)
        console.print(f"wrote {len(written)} TrainJob(s) to {trainjobs}" if written else
                      "no stage has workers > 1: no TrainJobs to write")


config_app = typer.Typer(no_args_is_help=True, help="Look at a config: every default filled in.",
                         epilog=example("rightsizer config show examples/demo.yaml"))
app.add_typer(config_app, name="config")


@config_app.command("show", epilog=example("rightsizer config show examples/demo.yaml --set seed=1"))
def config_show(
    config_path: Path = typer.Argument(..., metavar="CONFIG", help="YAML config"),
    overrides: Optional[list[str]] = SetOption,
) -> None:
    """Print the resolved config as YAML: every key with its value or default, each stage's resources resolved."""
    import yaml

    config = _load(config_path, overrides, check=False)
    sys.stdout.write(f"# {config_path}, resolved: every default filled in, resources resolved per stage\n")
    sys.stdout.write(yaml.safe_dump(config.resolved(), sort_keys=False, allow_unicode=True, width=120))


HostOption = typer.Option(None, "--host", help="KFP API URL, e.g. http://localhost:8080 (or $KF_PIPELINES_ENDPOINT)")
NamespaceOption = typer.Option(None, "--namespace", "-n", help="KFP namespace (multi-user installs)")
ExperimentOption = typer.Option(None, "--experiment", help="experiment name (default: the config's name)")
KubeContextOption = typer.Option(None, "--kube-context", help="take the bearer token from this kubeconfig context "
                                 "(default: $KFP_TOKEN, else none)")
ServiceAccountOption = typer.Option(None, "--service-account", help="k8s ServiceAccount for the run's pods")


@app.command(epilog=example("rightsizer submit my.yaml --host http://localhost:8080 --experiment sizing"))
def submit(
    config_path: Path = typer.Argument(..., metavar="CONFIG"),
    host: Optional[str] = HostOption,
    namespace: Optional[str] = NamespaceOption,
    experiment: Optional[str] = ExperimentOption,
    run_name: Optional[str] = typer.Option(None, "--run-name", help="default: '<name> <timestamp>'"),
    kube_context: Optional[str] = KubeContextOption,
    service_account: Optional[str] = ServiceAccountOption,
    overrides: Optional[list[str]] = SetOption,
) -> None:
    """Create one run of the pipeline on a Kubeflow Pipelines cluster."""
    from rightsizer import kfp_client

    config = _load(config_path, overrides, here=False)
    result = kfp_client.submit(config, host, experiment=experiment, namespace=namespace, run_name=run_name,
                               kube_context=kube_context, service_account=service_account)
    console.print(f"submitted run {result.run_id}: {result.url}")


@app.command(epilog=example('rightsizer schedule my.yaml --host http://localhost:8080 --cron "0 0 3 * * *"'))
def schedule(
    config_path: Path = typer.Argument(..., metavar="CONFIG"),
    cron: str = typer.Option(..., "--cron", help="six fields, seconds first: \"0 0 3 * * *\" = daily at 03:00"),
    host: Optional[str] = HostOption,
    max_concurrency: int = typer.Option(1, "--max-concurrency", help="runs of this schedule allowed at once"),
    catchup: bool = typer.Option(False, "--catchup", help="backfill intervals missed while paused"),
    namespace: Optional[str] = NamespaceOption,
    experiment: Optional[str] = ExperimentOption,
    name: Optional[str] = typer.Option(None, "--name", help="recurring run name (default: '<name>-schedule')"),
    kube_context: Optional[str] = KubeContextOption,
    service_account: Optional[str] = ServiceAccountOption,
    overrides: Optional[list[str]] = SetOption,
) -> None:
    """Upload the pipeline (or a new version) and create a recurring run on a KFP cluster."""
    from rightsizer import kfp_client

    kfp_client.validate_cron(cron)  # before anything else: a typo should cost nothing
    config = _load(config_path, overrides, here=False)
    result = kfp_client.schedule(config, host, cron, max_concurrency=max_concurrency, experiment=experiment,
                                 namespace=namespace, name=name, catchup=catchup, kube_context=kube_context,
                                 service_account=service_account)
    console.print(f"scheduled '{result.cron}' as recurring run {result.recurring_run_id} "
                  f"(pipeline {result.pipeline_id}, version {result.pipeline_version_id}): {result.url}")


@app.command(epilog=example("rightsizer tensorboard runs/demo", "rightsizer tensorboard s3://rightsizer/runs/demo"))
def tensorboard(
    target: str = typer.Argument(..., metavar="RUN_DIR_OR_S3_URI", help="run/stage directory or s3://bucket/prefix"),
    port: int = typer.Option(6006, "--port", help="0 picks a free port"),
    host: str = typer.Option("127.0.0.1", "--host", help="interface to listen on (0.0.0.0 inside a pod)"),
    cache_dir: Optional[Path] = typer.Option(None, "--cache-dir", help="where an s3:// prefix is synced to"),
    sync_interval: float = typer.Option(60.0, "--sync-interval", help="seconds between re-syncs of an s3:// prefix (0 = once)"),
    allow_empty: bool = typer.Option(False, "--allow-empty", help="serve even before any event file exists (in-cluster)"),
) -> None:
    """Serve TensorBoard over a run's event files (local directory or S3 prefix)."""
    from rightsizer import tensorboard as board

    board.serve(target, host=host, port=port, cache_dir=cache_dir, sync_interval_s=sync_interval,
                allow_empty=allow_empty, announce=console.print)


@app.command(epilog=example("rightsizer manifests kfp | kubectl apply -f -"))
def manifests(
    overlay: str = typer.Argument(..., help="kfp | standalone (under k8s/overlays) or a kustomize directory"),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="write the YAML here instead of stdout"),
) -> None:
    """Render the k8s/ manifests of an overlay (pipe into `kubectl apply -f -`)."""
    from rightsizer.manifests import render

    text = render(overlay)
    if output is None:
        sys.stdout.write(text)
        return
    from rightsizer.rundir import fs_error

    tmp = output.with_name(f".{output.name}.tmp")
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(text)
        os.replace(tmp, output)
    except OSError as exc:
        raise fs_error(exc, output) from None
    console.print(f"wrote {output}")


def _stage_help() -> str:
    from rightsizer.plan import STAGES

    def usage(row) -> str:
        inputs = " ".join(f"--in {key[1:]}..." if key.startswith("*") else f"--in {key}" for key in row.inputs)
        return f"{row.name} {inputs}".strip() + f": {row.help}"

    lines = "\n\n".join(usage(row) for row in STAGES.values())
    return f"Run one stage by hand (the same function a pipeline task runs).\n\n{lines}"


@app.command(help=_stage_help(),
             epilog=example("rightsizer stage prepare -c my.yaml --out work/data",
                            "rightsizer stage teacher -c my.yaml --in work/data --out work/teacher"))
def stage(
    name: str = typer.Argument(..., help="the stage (listed above)"),
    config_path: Path = typer.Option(..., "--config", "-c"),
    inputs: Optional[list[str]] = typer.Option(None, "--in", help="input directories or s3:// prefixes, in the stage's order"),
    out: str = typer.Option(..., "--out", help="output directory, or an s3:// prefix to upload it to when done"),
    member: Optional[str] = typer.Option(None, "--name", help="which teacher/student/adapter (default: the first)"),
    kind: Optional[str] = typer.Option(None, "--kind", help="evaluate: candidate kind"),
    fold: Optional[int] = typer.Option(None, "--fold", help="fold-teacher: which fold (0..folds-1) it holds out"),
    seed: Optional[int] = typer.Option(None, "--seed", help="teacher, distill, adapters: which of the member's seeds "
                                       "to train with (default: its first)"),
    overrides: Optional[list[str]] = SetOption,
) -> None:
    from rightsizer.plan import stage as stage_named

    row = stage_named(name)
    module_name, wanted = row.run_module, row.inputs
    config = _load(config_path, overrides)
    inputs = list(inputs or [])
    kwargs: dict = {}
    for index, key in enumerate(wanted):
        if key.startswith("*"):
            kwargs[key[1:]] = inputs[index:]
            if not kwargs[key[1:]]:
                raise UserError(f"stage {name} needs at least one more --in ({key[1:]})")
            break
        if index >= len(inputs):
            raise UserError(f"stage {name} needs --in for: {', '.join(k.lstrip('*') for k in wanted)}")
        kwargs[key] = inputs[index]
    else:
        if len(inputs) > len(wanted):
            raise UserError(f"stage {name} takes {len(wanted)} --in value(s), got {len(inputs)}")
    from rightsizer import storage

    for path in inputs:
        if storage.is_uri(path):
            storage.parse_uri(path)
        elif not Path(path).exists():
            raise UserError(f"input '{path}' not found")
    if storage.is_uri(out):
        storage.parse_uri(out)
    import inspect
    import tempfile

    module = importlib.import_module(module_name)
    parameters = inspect.signature(module.run).parameters
    if member is not None and "name" in parameters:
        kwargs["name"] = member
    if kind is not None and "kind" in parameters:
        kwargs["kind"] = kind
    if fold is not None and "fold" in parameters:
        kwargs["fold"] = fold
    if seed is not None and "seed" in parameters:
        kwargs["seed"] = seed
    # pods outside KFP (TrainJob nodes) read inputs from and write outputs to the object store
    remote = [value for value in [*inputs, out] if storage.is_uri(value)]
    scratch = Path(tempfile.mkdtemp(prefix="rightsizer-stage-")) if remote else None
    try:
        def local_path(value: str) -> Path:
            return storage.fetch_input(value, scratch / "in", config.storage) if storage.is_uri(value) else Path(value)

        for key in (k.lstrip("*") for k in wanted):
            if key in kwargs:
                value = kwargs[key]
                kwargs[key] = [local_path(v) for v in value] if isinstance(value, list) else local_path(value)
        output_dir = scratch / "out" / name if storage.is_uri(out) else Path(out)
        summary = module.run(config, output_dir=output_dir, **kwargs)
        if storage.is_uri(out):
            storage.publish_output(output_dir, out, config.storage)
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    console.print(f"{name} done -> {out}" + (f" ({summary.get('duration_s')} s)" if isinstance(summary, dict) and summary.get("duration_s") else ""))


@app.command(epilog=example("rightsizer presets"))
def presets() -> None:
    """List model presets and pipeline presets, one line each."""
    from rightsizer.models import preset_table

    console.print("[bold]model presets[/] (model: NAME)")
    rows = preset_table()
    width = max(len(row["name"]) for row in rows)
    for row in rows:
        console.print(f"  {row['name']:<{width}}  {row['description']}", highlight=False)
    directory = Path(__file__).resolve().parents[2] / "pipelines" / "presets"
    try:
        import rightsizer_pipelines

        directory = Path(rightsizer_pipelines.__file__).parent / "presets"
    except ImportError:
        pass
    files = sorted(directory.glob("*.yaml")) if directory.is_dir() else []
    if files:
        console.print(f"[bold]pipeline presets[/] ({directory})")
        width = max(len(file.stem) for file in files)
        for file in files:
            first = next((line.lstrip("# ").strip() for line in file.read_text().splitlines() if line.startswith("#")), "")
            console.print(f"  {file.stem:<{width}}  {first}", highlight=False, overflow="ellipsis", no_wrap=True)
        console.print(f"run one: rightsizer run {directory}/NAME.yaml --output runs/NAME", highlight=False)


def main(argv: Optional[list[str]] = None) -> int:
    try:
        code = app(args=argv, standalone_mode=False)
        if code == 130:  # typer (non-standalone) turns Ctrl-C / SIGTERM into Exit(130) and returns the code
            print("error: interrupted", file=sys.stderr)
        if isinstance(code, int) and code:
            return code
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except Bug as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except SystemExit as exc:  # typer/click exit codes
        return int(exc.code or 0)
    except Exception as exc:  # click usage errors (typer may vendor its own click) are user errors too
        if type(exc).__name__ == "NoArgsIsHelpError":  # a bare `rightsizer` (or `rightsizer stage`): help was shown
            return 0
        if hasattr(exc, "format_message") and hasattr(exc, "exit_code"):
            message = " ".join(str(exc.format_message()).split())
            print(f"error: {message}", file=sys.stderr)
            return 2
        if type(exc).__name__ == "Abort":
            print("error: aborted", file=sys.stderr)
            return 130
        raise
    return 0


def entrypoint() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entrypoint()
