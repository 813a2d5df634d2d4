"""PEFT methods by name: method -> peft config builder + the options it accepts.

The config names a method (``lora``, ``ia3``, ...) and gives the common knobs ``r``, ``alpha``,
``dropout``, ``target_modules`` plus method-specific ``options`` that are passed through to peft.
Each :class:`AdapterMethod` says which common knobs it reads and which options it accepts, so a
config that sets something the method would silently ignore fails at load time (no peft import
needed). Adding a method is one :func:`register_method` call; a duplicate name is refused.

This module imports nothing heavy at the top: ``rightsizer.config`` uses it to validate, and the
builders import peft only when the adapter stage calls them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

COMMON_FIELDS = ("r", "alpha", "dropout", "target_modules")
TASK_TYPE = "SEQ_CLS"  # PeftModelForSequenceClassification: the classification head is trained and saved


@dataclass
class AdapterSpec:
    """The values a builder turns into a peft config (config defaults already applied)."""

    r: int
    alpha: float
    dropout: float
    target_modules: list[str] | str | None
    options: dict[str, Any]
    total_steps: int = 1
    tokenizer_dir: str | None = None  # saved tokenizer, for prompt tuning initialised from text


@dataclass(frozen=True)
class AdapterMethod:
    name: str
    description: str
    build: Callable[[AdapterSpec], Any]
    uses: frozenset[str]  # which of COMMON_FIELDS the method reads
    options: frozenset[str]  # method-specific keys passed through to peft
    mergeable: bool = True  # peft can fold the adapter into the base weights (merge_and_unload)
    prompt_learning: bool = False  # virtual tokens / past key values instead of wrapped layers
    needs_rank_allocation: bool = False  # AdaLoRA: call update_and_allocate after every optimizer step
    # peft feeds the model embeddings only (no input_ids), so a decoder's classification head cannot find the last
    # real token and pools the last position: such methods pad on the left on decoders
    embeddings_only: bool = False
    help: dict[str, str] = field(default_factory=dict)


METHODS: dict[str, AdapterMethod] = {}


def register_method(method: AdapterMethod) -> AdapterMethod:
    if method.name in METHODS:
        raise ValueError(f"adapter method '{method.name}' is already registered")
    unknown = set(method.uses) - set(COMMON_FIELDS)
    if unknown:
        raise ValueError(f"adapter method '{method.name}': uses unknown common fields {sorted(unknown)}")
    overlap = set(method.options) & set(COMMON_FIELDS)
    if overlap:
        raise ValueError(f"adapter method '{method.name}': options {sorted(overlap)} shadow common fields")
    METHODS[method.name] = method
    return method


# ---------------------------------------------------------------------------------------------
# builders (peft imported lazily)


def _targets(spec: AdapterSpec):
    """peft's form: None (its per-architecture default), 'all-linear', or a list of names."""
    return spec.target_modules


def _lora(*, use_rslora: bool = False, use_dora: bool = False) -> Callable[[AdapterSpec], Any]:
    def build(spec: AdapterSpec):
        from peft import LoraConfig

        return LoraConfig(task_type=TASK_TYPE, r=spec.r, lora_alpha=spec.alpha, lora_dropout=spec.dropout,
                          target_modules=_targets(spec), use_rslora=use_rslora, use_dora=use_dora, **spec.options)

    return build


def _adalora(spec: AdapterSpec):
    from peft import AdaLoraConfig

    options = dict(spec.options)
    init_r = options.pop("init_r", math.ceil(1.5 * spec.r))  # peft's default ratio: 12 -> 8
    if init_r < spec.r:
        from rightsizer.errors import UserError

        raise UserError(f"adalora: options.init_r ({init_r}) must be >= r ({spec.r}), the target rank")
    # the rank schedule from the planned steps: warm up at init_r for tinit steps, shrink the budget to r, and from
    # total - tfinal on train at the final ranks (peft's defaults of 0 never reach its final allocation step)
    tinit = options.pop("tinit", spec.total_steps // 10)
    tfinal = options.pop("tfinal", max(1, spec.total_steps // 5) if spec.total_steps >= 2 else 0)
    return AdaLoraConfig(task_type=TASK_TYPE, target_r=spec.r, init_r=init_r, lora_alpha=spec.alpha,
                         lora_dropout=spec.dropout, target_modules=_targets(spec), total_step=spec.total_steps,
                         tinit=tinit, tfinal=tfinal, **options)


def _ia3(spec: AdapterSpec):
    from peft import IA3Config

    return IA3Config(task_type=TASK_TYPE, target_modules=_targets(spec), **spec.options)


def _loha(spec: AdapterSpec):
    from peft import LoHaConfig

    return LoHaConfig(task_type=TASK_TYPE, r=spec.r, alpha=spec.alpha, rank_dropout=spec.dropout,
                      target_modules=_targets(spec), **spec.options)


def _lokr(spec: AdapterSpec):
    from peft import LoKrConfig

    return LoKrConfig(task_type=TASK_TYPE, r=spec.r, alpha=spec.alpha, rank_dropout=spec.dropout,
                      target_modules=_targets(spec), **spec.options)


def _oft(spec: AdapterSpec):
    from peft import OFTConfig

    options = dict(spec.options)
    # peft wants exactly one of r (blocks per layer) and oft_block_size; the block size wins when given
    r = 0 if options.get("oft_block_size") else spec.r
    options.setdefault("oft_block_size", 0)
    return OFTConfig(task_type=TASK_TYPE, r=r, module_dropout=spec.dropout, target_modules=_targets(spec), **options)


def _prefix(spec: AdapterSpec):
    from peft import PrefixTuningConfig

    return PrefixTuningConfig(task_type=TASK_TYPE, num_virtual_tokens=spec.r, **spec.options)


def _prompt(spec: AdapterSpec):
    from peft import PromptTuningConfig

    options = dict(spec.options)
    text = options.pop("init_text", None)
    if text:
        return PromptTuningConfig(task_type=TASK_TYPE, num_virtual_tokens=spec.r, prompt_tuning_init="TEXT",
                                  prompt_tuning_init_text=text, tokenizer_name_or_path=spec.tokenizer_dir, **options)
    return PromptTuningConfig(task_type=TASK_TYPE, num_virtual_tokens=spec.r, prompt_tuning_init="RANDOM", **options)


LORA_OPTIONS = frozenset({"bias", "init_lora_weights", "layers_to_transform", "layers_pattern", "rank_pattern",
                          "alpha_pattern", "exclude_modules", "fan_in_fan_out"})
LYCORIS_OPTIONS = frozenset({"module_dropout", "use_effective_conv2d", "init_weights", "rank_pattern", "alpha_pattern",
                             "layers_to_transform", "layers_pattern", "exclude_modules"})
LOW_RANK = frozenset({"r", "alpha", "dropout", "target_modules"})

register_method(AdapterMethod("lora", "LoRA: low-rank update B·A scaled by alpha/r", _lora(), LOW_RANK, LORA_OPTIONS))
register_method(AdapterMethod("rslora", "rank-stabilised LoRA: scaled by alpha/sqrt(r)", _lora(use_rslora=True),
                              LOW_RANK, LORA_OPTIONS))
register_method(AdapterMethod("dora", "DoRA: LoRA on the direction, a learned magnitude per output", _lora(use_dora=True),
                              LOW_RANK, LORA_OPTIONS))
register_method(AdapterMethod(
    "adalora", "AdaLoRA: SVD-form LoRA whose rank budget is re-allocated during training (r = target rank)",
    _adalora, LOW_RANK,
    frozenset({"init_r", "tinit", "tfinal", "deltaT", "beta1", "beta2", "orth_reg_weight", "bias", "rank_pattern",
               "layers_to_transform", "layers_pattern", "exclude_modules"}),
    needs_rank_allocation=True))
register_method(AdapterMethod("ia3", "IA3: learned rescaling of keys, values and feed-forward activations", _ia3,
                              frozenset({"target_modules"}),
                              frozenset({"feedforward_modules", "init_ia3_weights", "fan_in_fan_out", "exclude_modules",
                                         "layers_to_transform", "layers_pattern"})))
register_method(AdapterMethod("loha", "LoHa: low-rank Hadamard product update", _loha, LOW_RANK, LYCORIS_OPTIONS))
register_method(AdapterMethod("lokr", "LoKr: low-rank Kronecker product update", _lokr, LOW_RANK,
                              LYCORIS_OPTIONS | {"decompose_both", "decompose_factor", "rank_dropout_scale"}))
register_method(AdapterMethod("oft", "OFT: orthogonal block-diagonal rotation of the weights (r = blocks per layer)",
                              _oft, frozenset({"r", "dropout", "target_modules"}),
                              frozenset({"oft_block_size", "coft", "eps", "block_share", "bias", "use_cayley_neumann",
                                         "num_cayley_neumann_terms", "init_weights", "exclude_modules",
                                         "layers_to_transform", "layers_pattern"})))
register_method(AdapterMethod("prefix", "prefix tuning: trained key/value prefixes in every layer (r = virtual tokens)",
                              _prefix, frozenset({"r"}), frozenset({"prefix_projection", "encoder_hidden_size"}),
                              mergeable=False, prompt_learning=True))
register_method(AdapterMethod("prompt", "prompt tuning: trained soft-prompt embeddings (r = virtual tokens)", _prompt,
                              frozenset({"r"}), frozenset({"init_text"}), mergeable=False, prompt_learning=True,
                              embeddings_only=True))


# ---------------------------------------------------------------------------------------------
# validation


def _names(items: Iterable[str]) -> str:
    return ", ".join(sorted(items)) or "none"


def check_fields(method_name: str, options: dict[str, Any], fields_set: Iterable[str]) -> str | None:
    """A message when the config sets something ``method_name`` does not use, else None."""
    method = METHODS.get(method_name)
    if method is None:
        return f"unknown adapter method '{method_name}'; methods: {_names(METHODS)}"
    ignored = [name for name in COMMON_FIELDS if name in set(fields_set) and name not in method.uses]
    if ignored:
        return (f"method '{method_name}' does not use {', '.join(repr(n) for n in ignored)}; "
                f"it uses: {_names(method.uses)}")
    unknown = sorted(set(options) - set(method.options))
    if unknown:
        from rightsizer.errors import did_you_mean

        hint = did_you_mean(unknown[0], method.options) if len(unknown) == 1 else ""
        return (f"method '{method_name}' does not accept option(s) {', '.join(repr(k) for k in unknown)}{hint}; "
                f"its options: {_names(method.options)}")
    return None


def linear_modules(model) -> dict[str, list[str]]:
    """Leaf name -> full names of the model's linear (``nn.Linear`` / GPT-2 ``Conv1D``) modules."""
    import torch
    from transformers.pytorch_utils import Conv1D

    found: dict[str, list[str]] = {}
    for name, module in model.named_modules():
        if isinstance(module, (torch.nn.Linear, Conv1D)):
            found.setdefault(name.rsplit(".", 1)[-1], []).append(name)
    return found


def missing_targets(model, targets: Iterable[str]) -> list[str]:
    """Targets that match no linear module (peft matches a full name or a ``.suffix``)."""
    names = [name for names in linear_modules(model).values() for name in names]
    return [t for t in targets if not any(n == t or n.endswith("." + t) for n in names)]


def method_table() -> list[dict[str, Any]]:
    return [{"name": m.name, "description": m.description, "uses": sorted(m.uses), "options": sorted(m.options),
             "mergeable": m.mergeable} for m in METHODS.values()]
