"""What every node of a multi-node TrainJob runs.

    python -m rightsizer.launch.node stage NAME --config s3://.../config.json --in s3://... --out s3://... \
        [--name MEMBER] [--seed SEED] --nproc-per-node N

1. download the config and the stage's inputs once per node (its ranks share them);
2. ``torchrun --nproc-per-node N -m rightsizer.cli stage NAME ...`` on those local paths — torchrun reads
   the number of nodes, this node's rank and the rendezvous address from the ``PET_*`` variables
   Kubeflow Trainer's torch plugin sets;
3. node 0, which holds global rank 0 and so the finished stage directory, uploads it (``summary.json``
   last, which marks the output complete for the launcher).

A user error in any rank ends the node with one ``error:`` line and exit code 2, anything else with the
failing rank's log tail and exit code 1; the launcher reads the failed node's log.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

from rightsizer.errors import UserError
from rightsizer.launch.local import LAUNCHED_ENV, LaunchError, run_torchrun, stage_command, torchrun_command


def node_rank() -> int:
    """This node's index in the TrainJob (0 holds global rank 0)."""
    for key in ("PET_NODE_RANK", "JOB_COMPLETION_INDEX"):
        value = os.environ.get(key)
        if value and value.isdigit():
            return int(value)
    return 0


def run_node(stage: str, config_uri: str, input_uris: list[str], output_uri: str, *, name: str | None,
             processes: int, scratch: Path, seed: int | None = None) -> Path | None:
    """Steps 1-3 above; returns the local output directory on node 0, None on the others."""
    from rightsizer import storage
    from rightsizer.config import load_config

    config_path = storage.Store.from_env(None).download_file(config_uri, scratch / "config.json")
    config = load_config(config_path)
    inputs = [storage.fetch_input(uri, scratch / "in", config.storage) for uri in input_uris]
    output_dir = scratch / "out" / stage
    log_dir = scratch / "logs"
    args = stage_command(stage, config_path, output_dir, inputs, name, seed)
    rank = node_rank()
    print(f"node {rank}: torchrun --nproc-per-node={processes} -m rightsizer.cli {' '.join(args)}", flush=True)
    run_torchrun(torchrun_command(processes, log_dir, args, standalone=False), log_dir,
                 env={**os.environ, LAUNCHED_ENV: "trainjob"}, what=f"stage {stage} on node {rank}")
    if rank != 0:
        return None
    if not (output_dir / "summary.json").exists():
        raise LaunchError(f"node 0: every rank exited 0 but rank 0 left no {output_dir / 'summary.json'}")
    count = storage.publish_output(output_dir, output_uri, config.storage)
    print(f"node 0: uploaded {count} files to {output_uri}", flush=True)
    return output_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rightsizer.launch.node", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["stage"])
    parser.add_argument("stage")
    parser.add_argument("--config", required=True, help="s3:// URI of the run's config JSON")
    parser.add_argument("--in", dest="inputs", action="append", default=[], help="s3:// input prefixes, in order")
    parser.add_argument("--out", required=True, help="s3:// prefix for the stage output")
    parser.add_argument("--name", default=None)
    parser.add_argument("--seed", type=int, default=None, help="the training run's seed (one of the member's seeds)")
    parser.add_argument("--nproc-per-node", type=int, default=None, help="default: $PET_NPROC_PER_NODE, else 1")
    args = parser.parse_args(argv)
    per_node = os.environ.get("PET_NPROC_PER_NODE", "")
    processes = args.nproc_per_node or (int(per_node) if per_node.isdigit() else 1)
    scratch = Path(tempfile.mkdtemp(prefix="rightsizer-node-"))
    try:
        run_node(args.stage, args.config, args.inputs, args.out, name=args.name, processes=processes,
                 scratch=scratch, seed=args.seed)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2
    except LaunchError as exc:
        print(str(exc), file=sys.stderr, flush=True)
        return 1
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
