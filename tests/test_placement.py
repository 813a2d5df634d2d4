"""Memory-aware placement and MFU: the estimate matches a hand calculation, the choice follows the memory."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rightsizer.errors import UserError
from rightsizer.launch import placement
from rightsizer.launch.placement import choose_placement
from rightsizer.train import memory
from rightsizer.train.memory import GIB, ModelShape, estimate_memory
from rightsizer.train.mfu import flops_per_token, meter_callback, peak_flops, training_flops

BERT_BASE = ModelShape(params=100_000_000, embedding_params=20_000_000, layers=12, hidden=768, heads=12)


def test_estimate_matches_a_hand_calculation():
    # 100M parameters, bf16 mixed precision, plain DDP (ZeRO-0) on one GPU, micro-batch 8 x 512 tokens:
    #   weights 4 B/param (fp32) = 400 MB, gradients 4 B = 400 MB, AdamW moments 8 B = 800 MB
    #   activations 12 layers x 34 B x (8 x 512 tokens) x 768 hidden = 1,283,457,024 B (SDPA: no score matrices)
    estimate = estimate_memory(BERT_BASE, micro_batch=8, seq_len=512, gpus=1, zero_stage=0, bf16=True, sdpa=True)
    assert (estimate.weights, estimate.gradients, estimate.optimizer) == (400_000_000, 400_000_000, 800_000_000)
    assert estimate.activations == 12 * 34 * 8 * 512 * 768 == 1_283_457_024
    assert estimate.overhead == GIB
    assert estimate.total == 1_600_000_000 + 1_283_457_024 + GIB
    assert estimate.as_gb()["total"] == pytest.approx((1_600_000_000 + 1_283_457_024) / GIB + 1, abs=1e-3)


def test_zero_stages_partition_what_the_paper_says():
    psi = BERT_BASE.params
    common = dict(micro_batch=8, seq_len=512, gpus=4, bf16=True)
    z1 = estimate_memory(BERT_BASE, zero_stage=1, **common)
    z2 = estimate_memory(BERT_BASE, zero_stage=2, **common)
    z3 = estimate_memory(BERT_BASE, zero_stage=3, **common)
    # bf16 weights 2 B + bf16 grads 2 B + fp32 master/m/v 12 B, divided over 4 GPUs from stage 1, 2, 3 on
    assert (z1.weights, z1.gradients, z1.optimizer) == (2 * psi, 2 * psi, 12 * psi // 4)
    assert (z2.weights, z2.gradients, z2.optimizer) == (2 * psi, 2 * psi // 4, 12 * psi // 4)
    assert (z3.weights, z3.gradients, z3.optimizer) == (2 * psi // 4, 2 * psi // 4, 12 * psi // 4)
    assert z1.total > z2.total > z3.total
    offloaded = estimate_memory(BERT_BASE, zero_stage=2, offload_optimizer=True, **common)
    assert offloaded.optimizer == 0
    # without a fused attention kernel the attention scores are kept: + 5 x heads x seq^2 x batch per layer
    eager = estimate_memory(BERT_BASE, micro_batch=8, seq_len=512, sdpa=False)
    fused = estimate_memory(BERT_BASE, micro_batch=8, seq_len=512, sdpa=True)
    assert eager.activations - fused.activations == 12 * 5 * 12 * 512 * 512 * 8
    # fp32 activations (CPU, or a GPU without bf16) cost twice as much
    assert estimate_memory(BERT_BASE, micro_batch=8, seq_len=512, bf16=False).activations == 2 * fused.activations


def test_choice_changes_as_gpu_memory_shrinks():
    kwargs = dict(batch_size=32, seq_len=512)
    roomy = choose_placement(BERT_BASE, gpu_memory_gb=80, **kwargs)
    assert (roomy.gpus, roomy.zero_stage, roomy.micro_batch, roomy.accumulation) == (1, 0, 32, 1)
    tight = choose_placement(BERT_BASE, gpu_memory_gb=8, **kwargs)
    assert tight.gpus == 1 and tight.micro_batch < 32 and tight.micro_batch * tight.accumulation == 32
    assert tight.estimate.total <= 8 * GIB * placement.USABLE_FRACTION
    # micro-batch 1 no longer fits on one 2.5 GiB card: the states are split over more GPUs with ZeRO
    small = choose_placement(BERT_BASE, gpu_memory_gb=2.5, **kwargs)
    assert small.gpus > 1 and small.zero_stage >= 1
    assert small.estimate.total <= 2.5 * GIB * placement.USABLE_FRACTION
    # a fixed GPU count and a user's ZeRO stage are respected
    fixed = choose_placement(BERT_BASE, gpu_memory_gb=8, gpus=4, zero_stage=3, **kwargs)
    assert (fixed.gpus, fixed.zero_stage) == (4, 3)
    with pytest.raises(UserError, match=r"does not fit: even on 8 GPU\(s\) with ZeRO-3 at micro-batch 1"):
        choose_placement(BERT_BASE, gpu_memory_gb=1.2, **kwargs)


def test_shape_of_a_preset_and_of_a_local_config(tmp_path):
    from transformers import AutoModelForSequenceClassification, BertConfig

    tiny = memory.shape_of_reference("tiny-bert-2l")
    assert (tiny.layers, tiny.hidden, tiny.heads) == (2, 128, 4)
    config = BertConfig(hidden_size=256, num_hidden_layers=3, num_attention_heads=4, intermediate_size=1024,
                        vocab_size=1000)
    config.save_pretrained(tmp_path)  # a config without weights is enough: the shape is read on the meta device
    shape = memory.shape_of_reference(str(tmp_path), num_labels=3)
    config.num_labels = 3
    real = AutoModelForSequenceClassification.from_config(config)
    assert shape.params == sum(p.numel() for p in real.parameters())
    assert shape.embedding_params == (1000 + 512 + 2) * 256  # words + positions + token types
    assert (shape.layers, shape.hidden, shape.heads) == (3, 256, 4)


def test_planned_gpus_for_gpus_auto(tmp_path, tiny_config):
    from transformers import BertConfig

    BertConfig(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
               intermediate_size=4096).save_pretrained(tmp_path)  # BERT-large: 335M parameters

    def gpus(memory_gb: float) -> int:
        config = tiny_config([f"teachers.0.model={tmp_path}", "teachers.0.batch_size=32", "data.max_length=512"],
                             resources={"teachers": {"gpus": "auto", "gpu_memory_gb": memory_gb}})
        return placement.planned_gpus(config, "teachers")

    assert gpus(80) == 1
    assert gpus(4) > 1
    assert placement.planned_gpus(tiny_config(resources={"teachers": {"gpus": 2}}), "teachers") == 2


def test_placement_on_cpu_reports_the_estimate_and_changes_nothing(tiny_config):
    from rightsizer.launch import prepare_training
    from rightsizer.models import load_classifier

    config = tiny_config(resources={"teachers": {"placement": "auto"}})
    model, _ = load_classifier("tiny-bert-2l", ["a", "b", "c"], ["some text", "other words here"], 0)
    plan = prepare_training(config, "teacher", config.teachers[0], model)
    assert plan.options == config.teachers[0] and plan.deepspeed is None
    report = plan.summary["placement"]
    assert report["device"] == "cpu" and report["params"] == sum(p.numel() for p in model.parameters())
    assert report["estimate_gb"]["total"] > 1.0  # includes the 1 GiB overhead
    assert plan.summary["launch"] == {"mode": "in-process", "world_size": 1, "nodes": 1, "device": "cpu",
                                      "deepspeed_zero_stage": None}
    json.dumps(plan.summary)  # goes into summary.json as is


# ---------------------------------------------------------------------------------------------
# MFU


def test_flops_per_token_is_6n_plus_attention():
    # 80M non-embedding parameters, 12 layers x 768: 6 x 80e6 + 12 x 12 x 768 x 512 at 512 tokens
    assert flops_per_token(BERT_BASE, 512) == 6 * 80_000_000 + 12 * 12 * 768 * 512
    lengths = [10, 20, 30]
    assert training_flops(BERT_BASE, lengths) == pytest.approx(sum(n * flops_per_token(BERT_BASE, n) for n in lengths))
    # frozen weights (adapters): no weight gradients for them -- 4N + 2 x trainable instead of 6N
    assert flops_per_token(BERT_BASE, 512, trainable=1_000_000) == 4 * 80_000_000 + 2 * 1_000_000 + 12 * 12 * 768 * 512


def test_peak_table_picks_the_dense_rate_of_the_right_card():
    assert peak_flops("NVIDIA H100 80GB HBM3", "bf16") == pytest.approx(989.4e12)
    assert peak_flops("NVIDIA H100 PCIe", "bf16") == pytest.approx(756.5e12)
    assert peak_flops("NVIDIA H200", "bf16") == pytest.approx(989.4e12)
    assert peak_flops("NVIDIA A100-SXM4-80GB", "bf16") == pytest.approx(312e12)
    assert peak_flops("NVIDIA A100-SXM4-80GB", "tf32") == pytest.approx(156e12)
    assert peak_flops("NVIDIA L4", "bf16") == pytest.approx(121e12)
    assert peak_flops("NVIDIA L40S", "bf16") == pytest.approx(362.05e12)
    assert peak_flops("NVIDIA A10G", "bf16") is None  # not \bA10\b: unknown rather than wrong
    assert peak_flops("Tesla V100-SXM2-16GB", "fp32") == pytest.approx(15.7e12)
    assert peak_flops("Some Future GPU", "bf16") is None


def test_meter_reports_tokens_per_second_and_mfu_from_step_time():
    from rightsizer.models import load_classifier

    model, _ = load_classifier("tiny-bert-2l", ["a", "b"], ["some text", "other words here"], 0)
    lengths = np.array([10, 30, 20, 40])
    meter = meter_callback(model, lengths, samples_per_step=8, gpus=1, bf16=False, print_every=False)
    meter.train_seconds, meter.steps = 2.0, 10
    rate = meter.rate()
    assert rate.samples_per_s == pytest.approx(10 * 8 / 2.0)
    assert rate.tokens_per_s == pytest.approx(10 * 8 * 25 / 2.0)
    shape = memory.shape_of_model(model)
    trainable = shape.non_embedding_params  # everything trains
    assert rate.flops_per_s == pytest.approx(10 * 8 * training_flops(shape, lengths, trainable) / 4 / 2.0)
    assert training_flops(shape, lengths, trainable) == pytest.approx(training_flops(shape, lengths))
    assert rate.mfu is None and rate.device == "cpu"  # no GPU, no peak: no MFU rather than a made-up one


def test_placement_on_gpus_rebatches_and_picks_zero(tiny_config, monkeypatch, capsys):
    """The GPU branch, on a machine without one: torch.cuda answers as two 8 GiB bf16 GPUs would, inside a
    2-rank launch; a BERT-large-sized model (meta device) at batch 32 x 512 tokens does not fit plainly."""
    import torch
    from transformers import AutoModelForSequenceClassification, BertConfig

    from rightsizer.launch import LAUNCHED_ENV, prepare_training

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index: type("P", (), {"total_memory": 8 * GIB})())
    for key, value in {LAUNCHED_ENV: "processes", "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2", "RANK": "0"}.items():
        monkeypatch.setenv(key, value)
    with torch.device("meta"):
        model = AutoModelForSequenceClassification.from_config(
            BertConfig(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096))
    config = tiny_config(["teachers.0.batch_size=32", "data.max_length=512"], resources={"teachers": {"placement": "auto"}})
    plan = prepare_training(config, "teacher", config.teachers[0], model)
    chosen = plan.summary["placement"]
    assert chosen["gpus_per_node"] == 2 and chosen["gpu_memory_gb"] == 8.0 and chosen["bf16"] and chosen["sdpa"]
    assert plan.options.batch_size == chosen["micro_batch"] < 32
    assert plan.options.batch_size * plan.options.gradient_accumulation_steps == 32
    assert chosen["estimate_gb"]["total"] <= 8 * placement.USABLE_FRACTION
    stage = chosen["zero_stage"]
    assert plan.summary["launch"]["deepspeed_zero_stage"] == (stage if stage > 0 else None)
    if stage > 0:
        assert plan.deepspeed["zero_optimization"]["stage"] == stage
    # Other libraries (deepspeed's first import in a fresh venv) may write to stdout first: look for our line.
    lines = [line.strip() for line in capsys.readouterr().out.splitlines()]
    assert any(line.startswith("placement: 335.1M parameters need") for line in lines), lines
