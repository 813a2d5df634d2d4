"""Stage: quantize. A trained candidate's cheaper serving forms, each a candidate of kind ``quantized``.

Runs after the candidate's training task. It reads the source's ``summary.json`` (name, kind),
finds every ``quantize:`` entry that applies to it (:meth:`RunConfig.quantize_plan`) and writes,
per entry, ``<candidate>/model/`` (the form that runs it, see :mod:`rightsizer.quantize`) and
``<candidate>/summary.json`` (``kind: quantized``, ``source``, ``method``, the source's ``params``).
The float32 ONNX export is made once and shared by the ONNX methods. Static int8 calibrates on
``calibration_samples`` training rows (seeded). The evaluate stage then scores and times every
form exactly as it does any other candidate.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from rightsizer.config import RunConfig
from rightsizer.data import load_prepared
from rightsizer.errors import UserError
from rightsizer.models import count_parameters, load_saved
from rightsizer.outputs import read_json, stage_output, write_json
from rightsizer.quantize import METHODS, quantize_model


def source_of(source_dir: Path) -> dict:
    """The trained candidate's summary (name, kind, ...): what the quantize entries are matched against."""
    path = Path(source_dir) / "summary.json"
    if not (Path(source_dir) / "model").is_dir() or not path.exists():
        raise UserError(f"'{source_dir}' is not a trained candidate (no model/ and summary.json); give a teacher, "
                        "student, adapter or slice output")
    return read_json(path)


def run(config: RunConfig, data_dir: str | Path, source_dir: str | Path, output_dir: str | Path,
        name: str | None = None) -> dict:
    """Quantize the candidate in ``source_dir`` by every entry that applies to it (``name``: only that candidate)."""
    source_dir = Path(source_dir)
    trained = source_of(source_dir)
    source, kind = trained["name"], trained.get("kind", "teacher")
    plan = config.quantize_plan(source, kind, control=bool(trained.get("control_of")))
    if name:
        wanted = [(candidate, entry) for candidate, entry in plan if candidate == name]
        if not wanted:
            raise UserError(f"no quantize entry makes '{name}' from {source} "
                            f"({', '.join(c for c, _ in plan) or 'none applies to it'})")
        plan = wanted
    dataset, _ = load_prepared(data_dir)
    with stage_output(output_dir, "quantize", config, name=source) as out:
        made = []
        if plan:
            model, tokenizer = load_saved(source_dir / "model")
            if hasattr(model, "peft_config"):
                raise UserError(f"{source} is an unmerged PEFT adapter; only a plain model can be quantized")
            params, _ = count_parameters(model)
            train = dataset["train"]
            rows = train.shuffle(seed=config.seed).select(range(min(len(train), max(e.calibration_samples for _, e in plan))))
            pairs = list(rows["text_pair"]) if "text_pair" in rows.column_names else None
            with tempfile.TemporaryDirectory(prefix="rightsizer-quantize-") as scratch:
                for candidate, entry in plan:
                    started = time.time()
                    count = min(len(rows), entry.calibration_samples)
                    info = quantize_model(model, tokenizer, entry.method, out.work / candidate / "model",
                                          list(rows["text"])[:count], pairs[:count] if pairs else None,
                                          config.data.max_length, source, Path(scratch))
                    write_json(out.work / candidate / "summary.json", {
                        "stage": "quantize", "name": candidate, "kind": "quantized", "source": source,
                        "source_kind": kind, "seed": trained.get("seed"), "method": entry.method, "device": METHODS[entry.method].device,
                        "dtype": info["dtype"], "params": params, "trainable_params": 0, "format": info["format"],
                        "duration_s": round(time.time() - started, 2), "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
                    made.append(candidate)
                    print(f"quantize: {source} -> {candidate} ({entry.method})", flush=True)
        out.summary.update({"kind": "quantize", "source": source, "source_kind": kind, "seed": trained.get("seed"),
                            "candidates": made})
    return out.summary
