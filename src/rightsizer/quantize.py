"""Quantization methods: a trained candidate in fewer bits, in the form that serves it.

Each method is one :class:`QuantizeMethod` in :data:`METHODS` (the config validates against it,
the quantize stage runs it, evaluation loads its output):

- ``dynamic_int8``: PyTorch dynamic quantization of every ``nn.Linear`` (int8 weights, activations
  quantized on the fly; CPU). Saved as ``model_int8.pt`` (the quantized state dict) + ``config.json``
  + tokenizer.
- ``onnx_fp32``: the model exported with ``torch.onnx.export`` (the dynamo exporter), run by ONNX
  Runtime. Saved as ``model.onnx`` + ``config.json`` + tokenizer.
- ``onnx_int8``: that export, then ``onnxruntime.quantization.quantize_dynamic`` (int8 weights).
- ``static_int8``: that export, then ``onnxruntime.quantization.quantize_static`` (int8 weights and
  activations, QDQ format), calibrated on a sample of the training split.
- ``bf16`` / ``fp16``: the model cast to half precision, saved as safetensors; run on a GPU.

Every output directory holds ``quantization.json`` (method, source, format). One line loads any of
them for inference: ``model, tokenizer = rightsizer.quantize.load_quantized(DIR)``; an ONNX model
also runs on its own: ``onnxruntime.InferenceSession(f"{DIR}/model.onnx")``.

Nothing heavy is imported at the top: ``rightsizer.config`` reads :data:`METHODS` to validate.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from rightsizer.errors import UserError

FORMAT_FILE = "quantization.json"
ONNX_FILE = "model.onnx"
INT8_STATE_FILE = "model_int8.pt"
OPSET = 18
STATIC_OPS = ["MatMul", "Gemm", "Gather"]  # static_int8 quantizes these ops (weights and their activations)


@dataclass(frozen=True)
class QuantizeMethod:
    name: str
    suffix: str  # default candidate name: <source>-<suffix>
    description: str
    device: str = "cpu"  # where it runs: cpu | cuda
    onnx: bool = False  # exported to ONNX, run by ONNX Runtime
    decoders: bool = True  # works for decoder classifiers (Llama, GPT-2, OPT)


METHODS: dict[str, QuantizeMethod] = {}


def register_method(method: QuantizeMethod) -> QuantizeMethod:
    if method.name in METHODS:
        raise ValueError(f"quantize method '{method.name}' is already registered")
    METHODS[method.name] = method
    return method


register_method(QuantizeMethod("dynamic_int8", "int8", "PyTorch dynamic int8 (Linear layers), CPU"))
register_method(QuantizeMethod("onnx_fp32", "onnx", "ONNX export run by ONNX Runtime, float32", onnx=True))
register_method(QuantizeMethod("onnx_int8", "onnx-int8", "ONNX Runtime dynamic int8 (weights int8)", onnx=True))
register_method(QuantizeMethod("static_int8", "onnx-static-int8",
                               "ONNX Runtime static int8 (weights and activations), calibrated on training rows",
                               onnx=True))
register_method(QuantizeMethod("bf16", "bf16", "bfloat16 inference on a GPU", device="cuda"))
register_method(QuantizeMethod("fp16", "fp16", "float16 inference on a GPU", device="cuda"))


def is_quantized(model_dir: str | Path) -> bool:
    return (Path(model_dir) / FORMAT_FILE).exists()


def gpu_methods(config) -> list[str]:
    """Names of the configured quantize entries whose method needs a GPU."""
    return [f"{entry.name or entry.of}: {entry.method}" for entry in config.quantize
            if METHODS[entry.method].device == "cuda"]


def check_devices(config, local: bool | None) -> None:
    """Half-precision methods need a GPU: refuse them up front where none will be there.

    Locally that is when ``torch.cuda`` sees no device; on a cluster when ``resources.quantize``
    requests no GPU (its quantize and evaluate tasks run there); ``local=None`` (validate, which may
    precede either): when neither has one.
    """
    wanted = gpu_methods(config)
    if not wanted:
        return
    if local is None:
        import torch

        if not config.resources.for_stage("quantize").gpus and not torch.cuda.is_available():
            raise UserError(f"quantize {wanted[0]} needs a GPU: this machine has none (torch.cuda is unavailable) and "
                            "resources.quantize requests none for a cluster run; set resources.quantize.gpus: 1 or "
                            "use a CPU method (dynamic_int8, onnx_int8, static_int8)")
        return
    if local:
        import torch

        if not torch.cuda.is_available():
            raise UserError(f"quantize {wanted[0]} needs a GPU and this machine has none (torch.cuda is unavailable); "
                            "use dynamic_int8, onnx_int8 or static_int8 on CPU")
        return
    gpus = config.resources.for_stage("quantize").gpus
    if not gpus:
        raise UserError(f"quantize {wanted[0]} needs a GPU but resources.quantize requests none; "
                        "set resources.quantize.gpus: 1 (or use a CPU method)")


# ---------------------------------------------------------------------------------------------
# making a quantized model


def _input_names(tokenizer) -> list[str]:
    return [name for name in tokenizer.model_input_names if name in ("input_ids", "token_type_ids", "attention_mask")]


def _encode(tokenizer, texts: list[str], pairs: list[str] | None, max_length: int, tensors: str) -> dict:
    args = (texts, pairs) if pairs is not None else (texts,)
    return dict(tokenizer(*args, truncation=True, max_length=max_length, padding=True, return_tensors=tensors))


def export_onnx(model, tokenizer, path: Path, texts: list[str], pairs: list[str] | None, max_length: int) -> Path:
    """``torch.onnx.export`` (the dynamo exporter) with dynamic batch and sequence axes, one self-contained file."""
    import torch

    model = model.eval().float().cpu()
    batch = _encode(tokenizer, texts[:2], pairs[:2] if pairs is not None else None, max_length, "pt")
    names = [name for name in _input_names(tokenizer) if name in batch]
    if getattr(model.config, "use_cache", None):
        model.config.use_cache = False  # a classifier needs no key/value cache in its graph
    dims = {name: {0: torch.export.Dim.DYNAMIC, 1: torch.export.Dim.DYNAMIC} for name in names}
    try:
        with torch.no_grad():
            torch.onnx.export(model, (), str(path), kwargs={name: batch[name] for name in names}, input_names=names,
                              output_names=["logits"], dynamo=True, dynamic_shapes=dims, external_data=False,
                              opset_version=OPSET, verbose=False)
    except Exception as exc:  # the exporter's errors are long; the first line says what failed
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise UserError(f"ONNX export of {type(model).__name__} failed: {first}") from None
    return path


class CalibrationReader:
    """Feeds ``quantize_static`` padded batches of training rows (an ORT ``CalibrationDataReader``)."""

    def __init__(self, tokenizer, texts: list[str], pairs: list[str] | None, max_length: int, names: list[str],
                 batch_size: int = 8):
        batches = []
        for i in range(0, len(texts), batch_size):
            encoded = _encode(tokenizer, texts[i:i + batch_size], pairs[i:i + batch_size] if pairs else None,
                              max_length, "np")
            batches.append({name: array for name, array in encoded.items() if name in names})
        self.batches = iter(batches)

    def get_next(self):
        return next(self.batches, None)


def quantize_model(model, tokenizer, method: str, model_dir: Path, texts: list[str], pairs: list[str] | None,
                   max_length: int, source: str, scratch: Path) -> dict:
    """Write ``method``'s form of ``model`` (a plain HF classifier in float32, left unchanged) into ``model_dir``.

    ``texts`` (and ``pairs``): training rows, for the export's example and static calibration. The
    float32 ONNX export is kept in ``scratch`` and reused by the other ONNX methods of the same model.
    """
    import copy

    import torch

    spec = METHODS[method]
    model_dir.mkdir(parents=True, exist_ok=True)
    model.eval()
    tokenizer.save_pretrained(str(model_dir))
    info: dict[str, Any] = {"method": method, "source": source, "device": spec.device}
    if method == "dynamic_int8":
        quantized = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
        done = sum(isinstance(m, torch.ao.nn.quantized.dynamic.Linear) for m in quantized.modules())
        if done <= 1:  # the classification head alone
            raise UserError(f"dynamic_int8 quantizes nn.Linear layers and {type(model).__name__} has almost none "
                            f"(GPT-2 uses Conv1D); use onnx_int8 or static_int8 for it")
        model.config.save_pretrained(str(model_dir))
        torch.save(quantized.state_dict(), model_dir / INT8_STATE_FILE)
        info.update(format="torch_dynamic_int8", file=INT8_STATE_FILE, dtype="int8", quantized_linear_layers=done)
    elif spec.onnx:
        model.config.save_pretrained(str(model_dir))
        scratch.mkdir(parents=True, exist_ok=True)
        exported = scratch / "fp32.onnx"
        if not exported.exists():
            export_onnx(model, tokenizer, exported, texts, pairs, max_length)
        target = model_dir / ONNX_FILE
        if method == "onnx_fp32":
            import shutil

            shutil.copyfile(exported, target)
        elif method == "onnx_int8":
            from onnxruntime.quantization import QuantType, quantize_dynamic

            # per-channel weight scales, 7-bit range (no u8s8 saturation on CPUs without VNNI): on the MiniLM
            # benchmark's validation split -0.4 -> +0.2 pt macro-F1 against float32, and no slower
            quantize_dynamic(str(exported), str(target), weight_type=QuantType.QInt8, per_channel=True,
                             reduce_range=True)
        else:
            from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
            from onnxruntime.quantization.shape_inference import quant_pre_process

            prepared = scratch / "prepared.onnx"
            if not prepared.exists():
                quant_pre_process(str(exported), str(prepared), skip_symbolic_shape=True)
            reader = CalibrationReader(tokenizer, texts, pairs, max_length, _input_names(tokenizer))
            # matrix products and embedding lookups only: quantizing every op's activations (softmax, the
            # attention mask's -inf additions, layer norms) cost a tiny BERT a quarter of its predictions;
            # per-channel 7-bit weights as for onnx_int8 (MiniLM validation: -2.4 -> -0.1 pt)
            quantize_static(str(prepared), str(target), reader, quant_format=QuantFormat.QDQ,
                            weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8, per_channel=True,
                            reduce_range=True, op_types_to_quantize=STATIC_OPS)
            info["calibration_rows"] = len(texts)
        info.update(format="onnx", file=ONNX_FILE, dtype="fp32" if method == "onnx_fp32" else "int8", opset=OPSET)
    else:  # bf16 / fp16: the same model in half precision
        dtype = torch.bfloat16 if method == "bf16" else torch.float16
        copy.deepcopy(model).to(dtype).save_pretrained(str(model_dir))
        info.update(format="safetensors", dtype=method)
    (model_dir / FORMAT_FILE).write_text(json.dumps(info, indent=2))
    return info


# ---------------------------------------------------------------------------------------------
# loading one for inference


class OnnxClassifier:
    """An ONNX Runtime session that answers like a HF classifier: ``model(**batch).logits``.

    Batches may be torch tensors or numpy arrays; inputs the graph does not take are dropped.
    """

    device = None  # set in __init__ (torch.device("cpu")): inputs stay on the CPU

    def __init__(self, path: str | Path, threads: int | None = None):
        import onnxruntime as ort
        import torch

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        self.session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.device = torch.device("cpu")
        self.config = None

    def eval(self):
        return self

    def __call__(self, **batch):
        import numpy as np
        import torch

        feeds = {}
        for name in self.input_names:
            value = batch[name]
            feeds[name] = value.cpu().numpy() if hasattr(value, "cpu") else np.asarray(value)
            feeds[name] = feeds[name].astype(np.int64)
        (logits,) = self.session.run(["logits"], feeds)
        return SimpleNamespace(logits=torch.from_numpy(logits))


def read_format(model_dir: str | Path) -> dict:
    return json.loads((Path(model_dir) / FORMAT_FILE).read_text())


def load_quantized(model_dir: str | Path, threads: int | None = None):
    """``(model, tokenizer)`` for a directory written by :func:`quantize_model`, ready for inference."""
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    model_dir = Path(model_dir)
    info = read_format(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    method = info["method"]
    if METHODS[method].onnx:
        model = OnnxClassifier(model_dir / info["file"], threads)
        model.config = AutoConfig.from_pretrained(str(model_dir))
        return model, tokenizer
    if method == "dynamic_int8":
        config = AutoConfig.from_pretrained(str(model_dir))
        model = AutoModelForSequenceClassification.from_config(config)
        model = torch.ao.quantization.quantize_dynamic(model.eval(), {torch.nn.Linear}, dtype=torch.qint8)
        model.load_state_dict(torch.load(model_dir / info["file"], weights_only=True))
        return model.eval(), tokenizer
    if not torch.cuda.is_available():
        raise UserError(f"'{model_dir}' is a {method} model and runs on a GPU; this machine has none")
    dtype = torch.bfloat16 if method == "bf16" else torch.float16
    model = AutoModelForSequenceClassification.from_pretrained(str(model_dir), dtype=dtype).to("cuda")
    return model.eval(), tokenizer

