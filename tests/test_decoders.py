"""Decoder presets: pad token and last-non-pad pooling, left/right padding, a teacher and an
adapter fine-tuned on tiny-llama-2l."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from rightsizer.config import config_from_dict
from rightsizer.models import PRESETS, load_classifier, load_saved

from conftest import tiny_raw

TEXTS = ["the screen is great", "the battery is very disappointing and the price is awful for what you get",
         "it arrived on monday", "a quite reliable drone"]


@pytest.fixture(scope="module")
def demo_texts() -> list[str]:
    from rightsizer.builtin_data import demo_rows

    return [row["text"] for row in demo_rows(400)]


@pytest.fixture(scope="module")
def small_data(tmp_path_factory) -> Path:
    from rightsizer.stages import prepare

    out = tmp_path_factory.mktemp("decoders") / "data"
    raw = tiny_raw()
    raw["data"].update({"max_train_samples": 120, "max_eval_samples": 30})
    prepare.run(config_from_dict(raw), out)
    return out


def logits_with_padding(model, tokenizer, side: str) -> np.ndarray:
    tokenizer.padding_side = side
    batch = tokenizer(TEXTS, padding=True, return_tensors="pt")
    assert (batch["attention_mask"] == 0).any()  # really padded
    with torch.no_grad():
        return model(**batch).logits.float().numpy()


def single_logits(model, tokenizer) -> np.ndarray:
    with torch.no_grad():
        return np.concatenate([model(**tokenizer([t], return_tensors="pt")).logits.float().numpy() for t in TEXTS])


@pytest.mark.parametrize("name", ["tiny-llama-2l", "tiny-gpt2-2l", "tiny-opt-2l"])
def test_decoder_presets_pad_and_pool_the_last_real_token(name, demo_texts):
    preset = PRESETS[name]
    assert preset.decoder and preset.tokenizer == "bpe"
    model, tokenizer = load_classifier(name, ["a", "b", "c"], demo_texts, seed=3)
    model.eval()
    assert tokenizer.pad_token == "<pad>" and model.config.pad_token_id == tokenizer.pad_token_id is not None
    alone = single_logits(model, tokenizer)
    right = logits_with_padding(model, tokenizer, "right")
    np.testing.assert_allclose(right, alone, atol=1e-5)  # pooled at the last non-pad token
    if name != "tiny-gpt2-2l":  # GPT-2's absolute positions assume right padding (the default we use)
        np.testing.assert_allclose(logits_with_padding(model, tokenizer, "left"), alone, atol=1e-5)


def test_teacher_and_adapter_on_tiny_llama(small_data, tmp_path):
    """Sequence-classification fine-tune and a LoRA adapter on a Llama decoder; both reload and give the
    same predictions under left and right padding."""
    from rightsizer.stages import adapters, teacher

    raw = tiny_raw(adapters=[{"name": "llama-lora", "method": "lora", "base": "llama", "max_steps": 6, "batch_size": 16,
                              "learning_rate": 1e-2, "logging_steps": 1}])
    raw["data"].update({"max_train_samples": 120, "max_eval_samples": 30})
    raw["teachers"] = [{"name": "llama", "model": "tiny-llama-2l", "max_steps": 16, "batch_size": 16,
                        "learning_rate": 3e-3, "logging_steps": 2}]
    config = config_from_dict(raw)
    taught = teacher.run(config, small_data, tmp_path / "teacher")
    losses = json.loads((tmp_path / "teacher" / "metrics.json").read_text())["losses"]
    assert losses[-1] < losses[0]
    assert taught["params"] == taught["trainable_params"]
    adapted = adapters.run(config, small_data, tmp_path / "adapter")
    assert adapted["target_modules"] == ["q_proj", "v_proj"] and adapted["merge_check"]["agreement"] == 1.0
    assert adapted["base_model"] == "tiny-llama-2l" and adapted["base_teacher"] == "llama"
    for directory in (tmp_path / "teacher" / "model", tmp_path / "adapter" / "model", tmp_path / "adapter" / "adapter"):
        model, tokenizer = load_saved(directory)
        assert model.config.pad_token_id == tokenizer.pad_token_id
        alone = single_logits(model, tokenizer)
        np.testing.assert_allclose(logits_with_padding(model, tokenizer, "left"), alone, atol=1e-4)
        np.testing.assert_allclose(logits_with_padding(model, tokenizer, "right"), alone, atol=1e-4)


def test_lora_on_a_bf16_checkpoint_trains_in_fp32_reloads_and_merges(small_data, tmp_path, demo_texts):
    """A Llama saved in bf16 (as Mistral-style checkpoints are): trained on fp32 master weights, its adapter
    reloads and merges with the same predictions (transformers 5 would otherwise train the bf16 weights as is)."""
    from transformers import AutoModelForSequenceClassification

    from rightsizer.models import train_tokenizer
    from rightsizer.stages import adapters

    tokenizer = train_tokenizer("bpe", demo_texts, 1000)
    config = PRESETS["tiny-llama-2l"].build_config(len(tokenizer), tokenizer)
    torch.manual_seed(0)
    AutoModelForSequenceClassification.from_config(config).to(torch.bfloat16).save_pretrained(str(tmp_path / "bf16"))
    tokenizer.save_pretrained(str(tmp_path / "bf16"))
    assert json.loads((tmp_path / "bf16" / "config.json").read_text())["dtype"] == "bfloat16"
    raw = tiny_raw(adapters=[{"name": "lora16", "method": "lora", "base": str(tmp_path / "bf16"), "max_steps": 4,
                              "batch_size": 16, "learning_rate": 1e-2, "logging_steps": 1}])
    raw["data"].update({"max_train_samples": 120, "max_eval_samples": 30})
    summary = adapters.run(config_from_dict(raw), small_data, tmp_path / "adapter")
    assert summary["precision"]["weights"] == "float32"
    for check in (summary["reload_check"], summary["merge_check"]):
        assert check["ok"] and check["agreement"] == 1.0 and check["max_abs_diff"] <= check["tolerance"] <= 1e-3
    unmerged, tokenizer = load_saved(tmp_path / "adapter" / "adapter")
    merged, _ = load_saved(tmp_path / "adapter" / "model")
    np.testing.assert_allclose(single_logits(merged, tokenizer), single_logits(unmerged, tokenizer), atol=1e-3)


def test_checks_in_half_precision_widen_the_tolerance_but_catch_a_flipped_prediction():
    from rightsizer.stages.adapters import RELOAD_TOLERANCE, _compare, check_tolerance

    reference = np.array([[2.0, -1.0, 0.5], [0.1, 3.2, -2.0], [1.0, 1.001, 0.0]], dtype=np.float32)
    rounded = torch.tensor(reference).to(torch.bfloat16).float().numpy()
    assert not _compare(reference, rounded, check_tolerance(RELOAD_TOLERANCE, torch.float32, reference))["ok"]
    tolerance = check_tolerance(RELOAD_TOLERANCE, torch.bfloat16, reference)
    assert RELOAD_TOLERANCE < tolerance < 0.25 and _compare(reference, rounded, tolerance)["ok"]
    tie_flipped = reference.copy()
    tie_flipped[2] = [1.001, 1.0, 0.0]  # the third row's top two are within the tolerance: a flip there is noise
    assert _compare(reference, tie_flipped, tolerance)["ok"]
    flipped = rounded.copy()
    flipped[0] = [1.99, 2.0, 0.5]  # a clear decision changed
    assert not _compare(reference, flipped, tolerance)["ok"]


@pytest.mark.parametrize("base", ["tiny-opt-2l", "tiny-llama-2l"])
def test_prompt_tuning_on_a_decoder_pads_left_and_predicts_alone_as_in_a_batch(base, small_data, tmp_path):
    """peft gives the decoder only embeddings, so its head pools the last position: with right padding that is a
    pad for every shorter input. The stage pads prompt tuning on the left (saved with the tokenizer)."""
    from rightsizer.stages import adapters

    raw = tiny_raw(adapters=[{"name": "soft", "method": "prompt", "base": "dec", "r": 4, "max_steps": 6,
                              "batch_size": 16, "learning_rate": 3e-2, "logging_steps": 1}])
    raw["data"].update({"max_train_samples": 120, "max_eval_samples": 30})
    raw["teachers"] = [{"name": "dec", "model": base, "max_steps": 2}]
    adapters.run(config_from_dict(raw), small_data, tmp_path / "soft")
    model, tokenizer = load_saved(tmp_path / "soft" / "model")
    assert tokenizer.padding_side == "left"
    alone = single_logits(model, tokenizer)
    batched = logits_with_padding(model, tokenizer, "left")
    scale = np.abs(alone).max()
    # OPT takes positions from the attention mask: exact; Llama's rotary positions count the pads between the soft
    # prompt and the text, a trace (about 1 % of the logits' scale) against 40-70 % with right padding
    np.testing.assert_allclose(batched, alone, atol=1e-5 if base == "tiny-opt-2l" else 0.03 * scale)
    assert np.abs(logits_with_padding(model, tokenizer, "right") - alone).max() > 0.1 * scale  # what it fixes


def test_prompt_tuning_on_gpt2_is_refused_before_training(small_data, tmp_path):
    """GPT-2's absolute positions shift under left padding: no padding side predicts alone as in a batch."""
    from rightsizer.errors import UserError
    from rightsizer.stages import adapters
    from rightsizer.validate import validate

    raw = tiny_raw(adapters=[{"name": "soft", "method": "prompt", "base": "gpt", "r": 4, "max_steps": 2}])
    raw["data"].update({"max_train_samples": 120, "max_eval_samples": 30})
    raw["teachers"] = [{"name": "gpt", "model": "tiny-gpt2-2l", "max_steps": 2}]
    message = r"prompt tuning on GPT2ForSequenceClassification predicts differently for an input alone and in a " \
              r"left-padded batch"
    with pytest.raises(UserError, match=message):
        adapters.run(config_from_dict(raw), small_data, tmp_path / "soft")
    assert not (tmp_path / "soft").exists()
    with pytest.raises(UserError, match=message):  # and `rightsizer validate` says so before anything trains
        validate(config_from_dict(raw))
    raw["teachers"][0]["model"] = "tiny-opt-2l"
    assert "adapter 'soft'" in validate(config_from_dict(raw)).checked
