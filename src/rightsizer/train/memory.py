"""Peak memory of a block of work: what a training run costs, comparable across methods.

On a GPU this is ``torch.cuda.max_memory_allocated`` (reset at the start). On CPU it is the peak
resident set size of this process while the block ran: Linux keeps a high-water mark (``VmHWM``)
that ``/proc/self/clear_refs`` resets, so the figure is the block's own peak even if the process
used more earlier. Where that reset is impossible the lifetime peak (``ru_maxrss``) is reported and
``reset`` says so.

Before training, :func:`estimate_memory` says how much GPU memory training will need (placement,
:mod:`rightsizer.launch.placement`, chooses a layout from it). The estimate is deliberately simple and written out so anyone can redo it by hand (the numbers land in
``summary.json``). Per GPU, for Ψ parameters, N data-parallel GPUs, micro-batch b, sequence length s,
L layers of hidden size h:

* **model states** (AdamW). In bf16 mixed precision under DeepSpeed each parameter costs 2 bytes of bf16
  weights, 2 of bf16 gradients and 12 of fp32 optimizer state (master copy, momentum, variance) — 16 bytes
  (ZeRO paper, Rajbhandari et al. 2020). Plain PyTorch (HF ``Trainer``'s autocast) or fp32 keeps fp32
  weights (4), fp32 gradients (4) and the two Adam moments (8) — also 16 bytes. ZeRO divides by N:
  stage 1 the optimizer state, stage 2 also the gradients, stage 3 also the weights. Offloading the
  optimizer to CPU removes its share from the GPU.
* **activations** kept for the backward pass: ``34·s·b·h`` bytes per layer in 16-bit (Korthikanti et
  al. 2022, "Reducing Activation Recomputation"), plus ``5·a·s²·b`` for the attention scores when the
  attention is not fused; with SDPA (flash / memory-efficient kernels, the default here) the scores are
  never stored. fp32 activations (no bf16) cost twice as much.
* **overhead**: 1 GiB for the CUDA context and kernel workspaces; only 90 % of the card is planned for,
  the rest is left to allocator fragmentation.
"""

from __future__ import annotations

import resource
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from rightsizer.errors import UserError

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _status_kb(key: str) -> int | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def _reset_rss_peak() -> bool:
    try:
        _CLEAR_REFS.write_text("5")  # 5 = reset the peak RSS (Linux >= 4.0)
        return True
    except OSError:
        return False


def _lifetime_peak_kb() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak // 1024 if sys.platform == "darwin" else peak  # macOS reports bytes


@dataclass
class PeakMemory:
    """``with PeakMemory() as peak: ...`` then ``peak.peak_mb``, ``peak.start_mb``, ``peak.device``."""

    device: str = "cpu"
    start_mb: float = 0.0
    peak_mb: float = 0.0
    reset: bool = True

    def __enter__(self) -> "PeakMemory":
        import torch

        if torch.cuda.is_available():
            self.device = "cuda"
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.start_mb = torch.cuda.memory_allocated() / 2**20
        else:
            self.device = "cpu"
            self.reset = _reset_rss_peak()
            current = _status_kb("VmRSS")
            self.start_mb = (current or 0) / 1024
        return self

    def __exit__(self, *exc) -> None:
        import torch

        if self.device == "cuda":
            torch.cuda.synchronize()
            self.peak_mb = torch.cuda.max_memory_allocated() / 2**20
        else:
            peak = _status_kb("VmHWM") if self.reset else None
            self.peak_mb = (peak if peak is not None else _lifetime_peak_kb()) / 1024
        self.peak_mb = round(self.peak_mb, 1)
        self.start_mb = round(self.start_mb, 1)

    @property
    def extra_mb(self) -> float:
        """Peak above what was in use when the block started (the block's own working memory)."""
        return round(max(0.0, self.peak_mb - self.start_mb), 1)

    def as_summary(self) -> dict:
        return {"peak_memory_mb": self.peak_mb, "peak_memory_extra_mb": self.extra_mb, "memory_device": self.device,
                "peak_memory_reset": self.reset}


# ---------------------------------------------------------------------------------------------
# the estimate, before training

GIB = 1024 ** 3
OVERHEAD_BYTES = 1 * GIB
ACTIVATION_FACTOR = 34  # bytes per (token x hidden unit x layer) in 16-bit, attention scores not stored
SCORES_FACTOR = 5  # bytes per (head x token x token x layer) when attention scores are materialised


@dataclass(frozen=True)
class ModelShape:
    """What the estimate needs to know about a model."""

    params: int
    embedding_params: int
    layers: int
    hidden: int
    heads: int

    @property
    def non_embedding_params(self) -> int:
        return self.params - self.embedding_params


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes per GPU, by kind, for one configuration."""

    weights: int
    gradients: int
    optimizer: int
    activations: int
    overhead: int

    @property
    def total(self) -> int:
        return self.weights + self.gradients + self.optimizer + self.activations + self.overhead

    def as_gb(self) -> dict[str, float]:
        parts = {k: round(v / GIB, 3) for k, v in asdict(self).items()}
        parts["total"] = round(self.total / GIB, 3)
        return parts


def shape_of_model(model) -> ModelShape:
    """Read a ``ModelShape`` off an instantiated (or meta-device) transformers model."""
    import torch.nn as nn

    params = sum(p.numel() for p in model.parameters())
    embedding = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Embedding))
    config = model.config
    return ModelShape(params=params, embedding_params=embedding, layers=int(config.num_hidden_layers),
                      hidden=int(config.hidden_size), heads=int(config.num_attention_heads))


def shape_of_reference(reference: str, num_labels: int = 2) -> ModelShape:
    """The shape of a preset / local dir / hub model without loading weights (meta device)."""
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification

    from rightsizer.models import PRESETS, describe

    kind = describe(reference)
    if kind == "preset":
        preset = PRESETS[reference]
        ids = {"pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2}
        stub = type("StubTokenizer", (), ids)()
        config = preset.build_config(preset.vocab_size, stub)
    else:
        try:
            config = AutoConfig.from_pretrained(reference, trust_remote_code=False)
        except (OSError, ValueError) as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
            raise UserError(f"cannot read the size of model '{reference}' to place it ({first}); set resources.gpus "
                            "to a number instead of 'auto'") from None
    config.num_labels = num_labels
    with torch.device("meta"):
        model = AutoModelForSequenceClassification.from_config(config)
    return shape_of_model(model)


def estimate_memory(shape: ModelShape, *, micro_batch: int, seq_len: int, gpus: int = 1, zero_stage: int = 0,
                    bf16: bool = True, sdpa: bool = True, offload_optimizer: bool = False) -> MemoryEstimate:
    """Bytes per GPU to train ``shape`` (see the module docstring for each term)."""
    psi, n = shape.params, max(1, gpus)
    if bf16 and zero_stage > 0:
        weight_b, grad_b, optim_b = 2, 2, 12
    else:
        weight_b, grad_b, optim_b = 4, 4, 8
    weights = psi * weight_b / (n if zero_stage >= 3 else 1)
    gradients = psi * grad_b / (n if zero_stage >= 2 else 1)
    optimizer = 0 if offload_optimizer and zero_stage > 0 else psi * optim_b / (n if zero_stage >= 1 else 1)
    tokens = micro_batch * seq_len
    per_layer = ACTIVATION_FACTOR * tokens * shape.hidden
    if not sdpa:
        per_layer += SCORES_FACTOR * shape.heads * seq_len * tokens
    activations = shape.layers * per_layer * (1 if bf16 else 2)
    return MemoryEstimate(weights=int(weights), gradients=int(gradients), optimizer=int(optimizer),
                          activations=int(activations), overhead=OVERHEAD_BYTES)
