"""`rightsizer run` (KFP local runner, one subprocess per task, artifact copies) vs calling the stage
functions directly in one process on the same config. Prints both times and
`ratio: pipeline_time / direct_time` (an overhead; goal <= 1.10 on the demo).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RIGHTSIZER_QUIET", "1")
REPO = Path(__file__).resolve().parents[1]


def same_threads() -> dict:
    """Both ways get the intra-op threads a local run gives each task, so only orchestration differs."""
    from rightsizer.pipeline import local_threads

    threads = os.environ.get("OMP_NUM_THREADS", str(local_threads()))
    return {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}


def direct(config_path: Path, overrides: list[str], work: Path) -> float:
    """The same stages, called as plain functions, in a fresh process (imports counted once)."""
    code = f"""
import time, sys
started = time.perf_counter()
from rightsizer.config import load_config
from rightsizer.stages import prepare, teacher, evaluate, report
config = load_config({str(config_path)!r}, {overrides!r})
work = {str(work)!r}
prepare.run(config, work + '/data')
metrics = []
for t in config.teachers:
    teacher.run(config, work + '/data', work + '/' + t.name, name=t.name)
    evaluate.run(config, work + '/data', work + '/' + t.name, work + '/eval-' + t.name, name=t.name, kind='teacher')
    metrics.append(work + '/eval-' + t.name)
report.run(config, work + '/data', metrics, work + '/report')
"""
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, env=same_threads())
    return time.perf_counter() - started


def pipeline(config_path: Path, overrides: list[str], work: Path) -> float:
    command = [sys.executable, "-m", "rightsizer.cli", "run", str(config_path), "--output", str(work / "run")]
    for override in overrides:
        command += ["--set", override]
    started = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, env=same_threads())
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(REPO / "examples" / "demo.yaml"))
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        help="override, e.g. teachers.0.epochs=1 (applied to both)")
    parser.add_argument("--teachers-only", action="store_true", default=True,
                        help="compare the teacher path only (students/adapters/probe emptied)")
    args = parser.parse_args()
    overrides = list(args.overrides)
    if args.teachers_only:
        overrides += ["students=[]", "adapters=[]", "probe=null", "evaluation.prompting=null"]
    work = Path(tempfile.mkdtemp(prefix="bench-overhead-"))
    try:
        direct_time = direct(Path(args.config), overrides, work / "direct")
        pipeline_time = pipeline(Path(args.config), overrides, work / "pipeline")
        print(f"config: {args.config} {' '.join(overrides)}")
        print(f"direct stage calls (one process): {direct_time:7.1f} s")
        print(f"rightsizer run (kfp.local):       {pipeline_time:7.1f} s")
        print(f"overhead: {100 * (pipeline_time / direct_time - 1):+.1f} %")
        print(f"ratio: {pipeline_time / direct_time:.3f}")
        print("ideal: 1.0")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
