"""Stage: adapters. One PEFT method trained on a pretrained base, classification head included.

The base is the pretrained model a teacher starts from (``base: <teacher name>``) or any model
reference. The method comes from :mod:`rightsizer.adapters_registry`; peft's sequence-
classification task type marks the head as a module to save, so it is trained and stored with the
adapter. Outputs:

- ``adapter/``: the unmerged adapter + head (+ tokenizer); ``adapter/base/`` holds the frozen base
  unless it is a Hub id, so the adapter reloads anywhere. Reloading it must reproduce the trained
  model's logits, checked on validation rows.
- ``model/``: what evaluation measures. Where peft can merge the method (everything but prefix and
  prompt tuning) the adapter is folded into the base weights, so latency is the plain model's; the
  merged logits are checked against the unmerged ones. Otherwise a copy of ``adapter/``.
- ``summary.json``: trainable parameters and their share, peak training memory, train time,
  samples/s, the modules adapted, and both checks.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np

from rightsizer import candidates, launch
from rightsizer.adapters_registry import METHODS, AdapterMethod, AdapterSpec, linear_modules, missing_targets
from rightsizer.config import AdapterConfig, RunConfig
from rightsizer.data import load_prepared, tokenize
from rightsizer.errors import UserError
from rightsizer.inference import predict_logits
from rightsizer.models import (checkpoint_mb, count_parameters, describe, is_causal_lm, load_classifier, load_saved,
                               weights_mb)
from rightsizer.outputs import process_rank, stage_output, write_json
from rightsizer.train import fine_tune, training_texts
from rightsizer.train.finetune import planned_steps  # AdaLoRA's rank schedule needs the step count up front
from rightsizer.train.memory import PeakMemory

CHECK_ROWS = 256  # validation rows used to compare reloaded / merged predictions with the trained model
RELOAD_TOLERANCE = 1e-4  # fp32; half precision widens both in proportion to its rounding error (check_tolerance)
MERGE_TOLERANCE = 1e-3
PADDING_TOLERANCE = 1e-2  # prefix/prompt tuning: an input alone vs padded in a batch (relative to the logits' scale)


def _linear_list(model) -> str:
    names = linear_modules(model)
    return ", ".join(sorted(names)) or "none"


def check_targets(model, adapter: AdapterConfig) -> None:
    """Every named target module (and IA3 feed-forward module) must be a linear module of the model."""
    arch = type(model).__name__
    if isinstance(adapter.target_modules, list):
        missing = missing_targets(model, adapter.target_modules)
        if missing:
            raise UserError(
                f"adapter '{adapter.name}': target_modules {', '.join(repr(m) for m in missing)} not found in {arch}; "
                f"its linear modules are: {_linear_list(model)} (or use target_modules: all-linear)")
    feedforward = adapter.options.get("feedforward_modules")
    if feedforward is not None:
        feedforward = [feedforward] if isinstance(feedforward, str) else list(feedforward)
        missing = missing_targets(model, feedforward)
        if missing:
            raise UserError(f"adapter '{adapter.name}': feedforward_modules {', '.join(repr(m) for m in missing)} not "
                            f"found in {arch}; its linear modules are: {_linear_list(model)}")
        if isinstance(adapter.target_modules, list):
            outside = [m for m in feedforward if m not in adapter.target_modules]
            if outside:
                raise UserError(f"adapter '{adapter.name}': feedforward_modules must also be in target_modules; "
                                f"add {', '.join(repr(m) for m in outside)}")


def peft_config_for(model, adapter: AdapterConfig, total_steps: int, tokenizer_dir: str | None = None):
    """The checked peft config for ``adapter`` on ``model``'s architecture; user mistakes raise UserError.

    The config is tried on a weightless copy of the architecture (meta device), so a method peft
    cannot apply fails here, before anything is written or a byte of weights is copied.
    """
    import copy

    import torch
    from peft import get_peft_model
    from transformers import AutoModelForSequenceClassification

    method = METHODS[adapter.method]
    arch = type(model).__name__
    check_targets(model, adapter)
    spec = AdapterSpec(r=adapter.r, alpha=adapter.alpha if adapter.alpha is not None else 2.0 * adapter.r,
                       dropout=adapter.dropout, target_modules=adapter.target_modules, options=dict(adapter.options),
                       total_steps=total_steps, tokenizer_dir=tokenizer_dir)
    try:
        peft_config = method.build(spec)
    except (ValueError, TypeError) as exc:
        raise UserError(f"adapter '{adapter.name}' ({adapter.method}): {_first_line(exc)}") from None
    with torch.device("meta"):
        shadow = AutoModelForSequenceClassification.from_config(model.config)
    try:
        get_peft_model(shadow, copy.deepcopy(peft_config))
    except (ValueError, TypeError, NotImplementedError, KeyError) as exc:
        message = _first_line(exc)
        if "target_modules" in message:
            message += f"; {arch}'s linear modules are: {_linear_list(model)}"
        raise UserError(f"adapter '{adapter.name}': peft cannot apply {adapter.method} to {arch}: {message}") from None
    return peft_config


def pad_for_method(tokenizer, method: AdapterMethod, model_config) -> None:
    """peft hands a decoder only inputs_embeds for prompt tuning, so its head pools the last position, not the last
    real token: pad such methods on the left so that the two are the same (saved with the tokenizer, so that
    inference pads the same way)."""
    if method.embeddings_only and is_causal_lm(model_config):
        tokenizer.padding_side = tokenizer.init_kwargs["padding_side"] = "left"  # init_kwargs: what is saved


def try_on_preset(reference: str, adapter: AdapterConfig) -> None:
    """Prefix/prompt tuning on a preset base: the stage's dry run on a tiny random instance (``rightsizer
    validate``, before anything trains); UserError when the stage would refuse it."""
    model, tokenizer = load_classifier(reference, ["a", "b"], ["a b c d e f g h"] * 8, seed=0)
    pad_for_method(tokenizer, METHODS[adapter.method], model.config)
    with tempfile.TemporaryDirectory(prefix="rightsizer-tokenizer-") as tokenizer_dir:
        tokenizer.save_pretrained(tokenizer_dir)
        build_adapter(model, tokenizer, adapter, total_steps=100, tokenizer_dir=tokenizer_dir)


def build_adapter(model, tokenizer, adapter: AdapterConfig, total_steps: int, tokenizer_dir: str | None = None,
                  max_length: int = 32, peft_config=None):
    """Wrap ``model`` with ``adapter``'s method (head trained and saved with it); UserError when it cannot."""
    from peft import get_peft_model

    if peft_config is None:
        peft_config = peft_config_for(model, adapter, total_steps, tokenizer_dir)
    peft_model = get_peft_model(model, peft_config)
    if METHODS[adapter.method].prompt_learning:
        _dry_run(peft_model, tokenizer, adapter, type(model).__name__, max_length)
    return peft_model


def _dry_run(peft_model, tokenizer, adapter: AdapterConfig, arch: str, max_length: int) -> None:
    """Prefix/prompt tuning need support deep in the architecture (cache, embeddings): try one padded batch, and
    refuse a model that predicts differently for an input alone and padded in a batch (e.g. GPT-2's absolute
    positions under the left padding prompt tuning needs on a decoder)."""
    import torch

    device = next(peft_model.parameters()).device

    def logits(texts: list[str]):
        batch = tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        return peft_model(**{k: v.to(device) for k, v in batch.items()}).logits[0].float()

    was_training = peft_model.training
    peft_model.eval()  # no dropout while comparing
    try:
        with torch.no_grad():
            batched, alone = logits(["a b c", "a b c d e f g"]), logits(["a b c"])
    except (TypeError, ValueError, AttributeError, RuntimeError, NotImplementedError, IndexError) as exc:
        raise UserError(f"adapter '{adapter.name}': peft cannot apply {adapter.method} tuning to {arch} "
                        f"({type(exc).__name__}: {_first_line(exc)}); use a layer method such as lora") from None
    finally:
        peft_model.train(was_training)
    difference = float((batched - alone).abs().max())
    # rotary positions leave a trace (the pads sit between the soft prompt and the text): 1e-3 at init on Llama
    if difference > PADDING_TOLERANCE * max(1.0, float(alone.abs().max())):
        raise UserError(f"adapter '{adapter.name}': {adapter.method} tuning on {arch} predicts differently for an input "
                        f"alone and in a {tokenizer.padding_side}-padded batch (logits differ by {difference:.3g}); "
                        "use a layer method such as lora")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def rank_allocation_callback(peft_model):
    """AdaLoRA re-allocates its rank budget after every optimizer step (peft leaves that to the loop)."""
    from transformers import TrainerCallback

    class RankAllocation(TrainerCallback):
        def on_optimizer_step(self, args, state, control, **kwargs):
            peft_model.base_model.update_and_allocate(state.global_step)

    return RankAllocation()


def rank_budget(peft_model) -> dict | None:
    """AdaLoRA: the total rank it started with, the one it ended with, and its schedule (None for other methods)."""
    config = peft_model.peft_config["default"]
    if not hasattr(config, "tinit"):
        return None
    final = sum(sum(bool(kept) for kept in pattern) for pattern in (config.rank_pattern or {}).values())
    modules = sum(1 for name, _ in peft_model.named_parameters() if ".lora_E." in name)
    return {"initial": config.init_r * modules, "target": config.target_r * modules, "final": final or None,
            "tinit": config.tinit, "tfinal": config.tfinal, "total_step": config.total_step}


def _logits(model, tokenizer, rows, config: RunConfig, batch_size: int) -> np.ndarray:
    logits, _, _ = predict_logits(model, tokenizer, rows, config.data.max_length, batch_size)
    return logits


def check_tolerance(fp32_tolerance: float, dtype, reference: np.ndarray) -> float:
    """The largest logit difference accepted in ``dtype``: the fp32 one, or a few roundings at the logits' scale."""
    import torch

    scale = max(1.0, float(np.abs(reference).max())) if reference.size else 1.0
    return max(fp32_tolerance, 8 * torch.finfo(dtype).eps * scale)


def _compare(reference: np.ndarray, other: np.ndarray, tolerance: float) -> dict:
    """Logit difference and argmax agreement; ``ok`` unless a difference exceeds ``tolerance`` or a prediction
    flips where the reference's top two logits are further apart than twice the tolerance."""
    if not len(reference):
        return {"rows": 0, "max_abs_diff": 0.0, "agreement": 1.0, "tolerance": tolerance, "ok": True}
    top_two = np.sort(reference, axis=-1)[:, -2:] if reference.shape[-1] > 1 else np.zeros((len(reference), 2))
    decided = (top_two[:, 1] - top_two[:, 0]) > 2 * tolerance
    agree = reference.argmax(-1) == other.argmax(-1)
    max_abs_diff = float(np.abs(reference - other).max())
    return {"rows": int(len(reference)), "max_abs_diff": max_abs_diff, "agreement": float(agree.mean()),
            "tolerance": tolerance, "ok": bool(max_abs_diff <= tolerance and agree[decided].all())}


def _save_and_check(trained, tokenizer, rows, config: RunConfig, adapter: AdapterConfig, method: AdapterMethod,
                    adapter_dir: Path, model_dir: Path, base_name: str) -> tuple[dict, dict | None]:
    """Save the adapter, reload it, merge it; each must predict like the trained model.

    Every comparison runs on the trained model's device and in its dtype (fp32 master weights, or what DeepSpeed
    left them in), with the tolerance widened for half precision.
    """
    reference_logits = _logits(trained, tokenizer, rows, config, adapter.eval_batch_size)
    weights = next(trained.parameters())
    trained.peft_config["default"].base_model_name_or_path = base_name
    trained.save_pretrained(str(adapter_dir), save_embedding_layers=False)
    trained.config.save_pretrained(str(adapter_dir))  # the labels, for a Hub base whose own head has others
    tokenizer.save_pretrained(str(adapter_dir))
    reloaded, _ = load_saved(adapter_dir)
    reloaded.to(device=weights.device, dtype=weights.dtype)
    reload_check = _compare(reference_logits, _logits(reloaded, tokenizer, rows, config, adapter.eval_batch_size),
                            check_tolerance(RELOAD_TOLERANCE, weights.dtype, reference_logits))
    del reloaded
    if not reload_check["ok"]:
        raise RuntimeError(f"adapter '{adapter.name}': the reloaded adapter predicts differently from the trained "
                           f"model ({reload_check}); was the head saved?")
    if not method.mergeable:
        shutil.copytree(adapter_dir, model_dir)
        return reload_check, None
    merged = trained.merge_and_unload()
    merged.save_pretrained(str(model_dir))
    tokenizer.save_pretrained(str(model_dir))
    merge_check = _compare(reference_logits, _logits(merged, tokenizer, rows, config, adapter.eval_batch_size),
                           check_tolerance(MERGE_TOLERANCE, weights.dtype, reference_logits))
    if not merge_check["ok"]:
        raise RuntimeError(f"adapter '{adapter.name}': merged and unmerged predictions differ ({merge_check})")
    return reload_check, merge_check


def run(config: RunConfig, data_dir: str | Path, output_dir: str | Path, name: str | None = None,
        seed: int | None = None, **fine_tune_kwargs) -> dict:
    """``seed``: which of the adapter's seeds this run trains with (default: its first)."""
    if not config.adapters:
        raise UserError("the config has no adapters; add an 'adapters:' section")
    adapter = config.adapter(name) if name else config.adapters[0]
    method = METHODS[adapter.method]
    seed = candidates.find(config, "adapters", adapter.name).seed if seed is None else int(seed)
    # several GPUs / nodes: this call launches the ranks (each runs this function) and returns their summary
    launched = launch.dispatch("adapters", config, output_dir, member=adapter,
                               inputs={"data_dir": data_dir}, in_process_only=bool(fine_tune_kwargs), seed=seed)
    if launched is not None:
        return launched
    reference, teacher_name = candidates.resolve_model(config, adapter.base)
    dataset, card = load_prepared(data_dir)
    rank_zero = process_rank() == 0
    with stage_output(output_dir, "adapters", config, name=adapter.name) as out, \
            tempfile.TemporaryDirectory(prefix="rightsizer-tokenizer-") as tokenizer_dir:
        model, tokenizer = load_classifier(reference, card["label_names"], training_texts(dataset), seed)
        base_params, _ = count_parameters(model)
        adapter_dir, model_dir = out.work / "adapter", out.work / "model"
        total_steps = planned_steps(len(dataset["train"]), adapter)
        pad_for_method(tokenizer, method, model.config)
        tokenizer.save_pretrained(tokenizer_dir)  # prompt tuning initialised from text reads it
        peft_config = peft_config_for(model, adapter, total_steps, tokenizer_dir)  # checked before any output
        save_base = describe(reference) != "hub"
        # what serving an unmerged adapter ships besides it: the base (kept in adapter/base/ unless it is on the Hub)
        base_size_mb = checkpoint_mb(reference) if not save_base else None
        base_size_mb = base_size_mb if base_size_mb is not None else weights_mb(model)
        if save_base and rank_zero:  # presets (random init from the seed) and local dirs: keep the exact frozen base
            model.save_pretrained(str(adapter_dir / "base"))
            tokenizer.save_pretrained(str(adapter_dir / "base"))
        pair = "text_pair" in dataset["train"].column_names
        tokenized = tokenize(dataset, tokenizer, config.data.max_length, pair)
        peft_model = build_adapter(model, tokenizer, adapter, total_steps, tokenizer_dir, config.data.max_length,
                                   peft_config=peft_config)
        # empty while training: peft would look a saved base's name up on the Hub at every checkpoint
        peft_model.peft_config["default"].base_model_name_or_path = None if save_base else reference
        adapted = getattr(peft_model.peft_config["default"], "target_modules", None)
        params, trainable = count_parameters(peft_model)
        plan = launch.prepare_training(config, "adapters", adapter, peft_model)
        callbacks = [rank_allocation_callback(peft_model)] if method.needs_rank_allocation else []
        with PeakMemory() as memory:
            result = fine_tune(
                peft_model, tokenizer, dataset, plan.options, seed=seed, work_dir=out.work,
                max_length=config.data.max_length, deepspeed=plan.deepspeed,
                callbacks=callbacks, save_model=False, tokenized=tokenized, **fine_tune_kwargs)
        budget = rank_budget(peft_model)  # before merging takes the adapter's layers away
        reload_check = merge_check = None
        if rank_zero:
            trained = result.extra["trainer"].model
            trained.eval()
            rows = dataset["validation"].select(range(min(CHECK_ROWS, len(dataset["validation"]))))
            reload_check, merge_check = _save_and_check(trained, tokenizer, rows, config, adapter, method, adapter_dir,
                                                        model_dir, "base" if save_base else reference)
        write_json(out.work / "metrics.json", result.metrics())
        out.summary.update({
            "kind": "adapter", "seed": seed, "method": adapter.method, "base": adapter.base, "base_model": reference,
            "base_teacher": teacher_name, "head": getattr(model, "head_plan", None), "params": params, "base_params": base_params, "base_size_mb": base_size_mb, "trainable_params": trainable,
            "trainable_share": round(trainable / params, 9) if params else None,
            "target_modules": sorted(adapted) if isinstance(adapted, (set, list, tuple)) else adapted,
            "r": adapter.r if "r" in method.uses else None, "merged": method.mergeable,
            "reload_check": reload_check, "merge_check": merge_check, "rank_budget": budget,
            **memory.as_summary(),
            **result.summary(), **plan.summary,
        })
    return out.summary
