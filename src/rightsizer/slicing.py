"""Where each model family keeps its layers, and how to cut a model after ``k`` of them.

One small table (:data:`FAMILIES`) says, per architecture family, where the block stack lives
(relative to ``model.base_model``) and which modules a decoder applies after its last block (final
norm, output projection). The probe and the slice stage both go through it, so "layer k" means the
same thing in both: the output of the first ``k`` blocks, passed through the family's final
modules — exactly what the classification head of the model cut after ``k`` layers sees.

Cutting keeps the embeddings, the first ``k`` blocks, the final norm and the head, and sets the
config's layer count to ``k`` so the saved slice reloads with ``from_pretrained``.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

from rightsizer.errors import UserError


@dataclass(frozen=True)
class Family:
    """Naming of one architecture family. Paths are dotted, relative to ``model.base_model``."""

    name: str
    model_types: tuple[str, ...]  # config.model_type values that use this naming
    layers: str  # the nn.ModuleList of blocks
    decoder: bool
    after_layers: tuple[str, ...] = ()  # applied to the last block's output, in order; missing/None ones skipped


FAMILIES: tuple[Family, ...] = (
    Family("bert", ("bert",), "encoder.layer", decoder=False),
    Family("roberta", ("roberta", "xlm-roberta"), "encoder.layer", decoder=False),
    Family("distilbert", ("distilbert",), "transformer.layer", decoder=False),
    Family("llama", ("llama", "mistral", "qwen2"), "layers", decoder=True, after_layers=("norm",)),
    Family("gpt2", ("gpt2",), "h", decoder=True, after_layers=("ln_f",)),
    Family("opt", ("opt",), "decoder.layers", decoder=True,
           after_layers=("decoder.final_layer_norm", "decoder.project_out")),
)
BY_MODEL_TYPE = {model_type: family for family in FAMILIES for model_type in family.model_types}


def supported() -> str:
    return "; ".join(f"{f.name} ({', '.join(f.model_types)})" for f in FAMILIES)


def family_of(model) -> Family:
    """The family of a model (or its config); unsupported architectures are a UserError."""
    config = getattr(model, "config", model)
    model_type = getattr(config, "model_type", None)
    if model_type not in BY_MODEL_TYPE:
        raise UserError(
            f"cannot probe or slice model type '{model_type}'; supported families (model types): {supported()}"
        )
    return BY_MODEL_TYPE[model_type]


def _get(module, path: str):
    try:
        return operator.attrgetter(path)(module)
    except AttributeError:
        return None


def layer_stack(model):
    """The ``nn.ModuleList`` of blocks of ``model`` (a task model or a bare backbone)."""
    family = family_of(model)
    stack = _get(model.base_model, family.layers)
    if stack is None:
        raise UserError(f"model type '{model.config.model_type}' has no '{family.layers}' layer stack; "
                        "is it a standard Hugging Face implementation?")
    return stack


def depth(model) -> int:
    return len(layer_stack(model))


def after_layers(model) -> list:
    """The modules a decoder applies after its last block (final norm, projection); [] for encoders."""
    family = family_of(model)
    return [m for m in (_get(model.base_model, path) for path in family.after_layers) if m is not None]


def check_depths(values, model_depth: int, what: str) -> list[int]:
    """``values`` (layer counts) checked against the model's depth; a UserError names the depth."""
    bad = [v for v in values if not 1 <= int(v) <= model_depth]
    if bad:
        raise UserError(f"{what} {bad} out of range: the model has {model_depth} layers, so use 1..{model_depth}")
    return sorted({int(v) for v in values})


def slice_model(model, layers: int):
    """Cut ``model`` in place after ``layers`` blocks and set its config to match; returns the model."""
    from torch import nn

    stack = layer_stack(model)
    check_depths([layers], len(stack), "slice depth")
    family = family_of(model)
    parent_path, _, attribute = family.layers.rpartition(".")
    parent = _get(model.base_model, parent_path) if parent_path else model.base_model
    setattr(parent, attribute, nn.ModuleList(list(stack)[:layers]))
    if isinstance(getattr(parent, "n_layers", None), int):  # DistilBERT's Transformer keeps its own count
        parent.n_layers = layers
    for config in {id(c): c for c in (model.config, model.base_model.config)}.values():
        config.num_hidden_layers = layers  # aliased to n_layer / n_layers where the family names it so
        if isinstance(getattr(config, "layer_types", None), list):
            config.layer_types = config.layer_types[:layers]
    return model
