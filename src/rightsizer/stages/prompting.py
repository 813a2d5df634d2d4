"""Stage: prompting baseline. Zero-/k-shot classification with a causal LM, no training.

What a decoder knows before any fine-tuning, as a leaderboard row (``kind: prompting``). Each test
example becomes a prompt from ``evaluation.prompting.template``; k-shot prompts first show k
training examples (balanced over the labels, chosen with the run's seed, the same for every test
example) with their answers. Every label is scored by the log-likelihood the model gives its
verbalizer word's tokens right after the prompt; the highest wins. Trailing spaces of the prompt
move into the continuation and the continuation's tokens are read off the encoding of
prompt + word, as lm-evaluation-harness does, so BPE merges at the boundary do not distort scores.

One row per (model, k): :func:`rightsizer.candidates.prompting` names them (``prompt-<model>-<k>shot``).
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rightsizer import candidates
from rightsizer.config import PromptingConfig, RunConfig
from rightsizer.data import load_prepared
from rightsizer.errors import UserError, one_of
from rightsizer.models import count_parameters, load_causal_lm
from rightsizer.outputs import stage_output, write_json
from rightsizer.timing import quiet, task_threads, times_itself
from rightsizer.train import training_texts

PAIR_TEMPLATE = "{text}\n{text_pair}\nAnswer: {label}"


def resolve_verbalizer(verbalizer: dict[str, str] | None, label_names: list[str]) -> list[str]:
    """The word for each label, in label order; every label needs one and every key must be a label."""
    if verbalizer is None:
        return list(label_names)
    missing = [name for name in label_names if name not in verbalizer]
    if missing:
        raise UserError(f"evaluation.prompting.verbalizer has no word for label(s) {', '.join(missing)}; "
                        f"give a word for every label ({', '.join(label_names)})")
    extra = sorted(set(verbalizer) - set(label_names))
    if extra:
        raise UserError(f"evaluation.prompting.verbalizer names label(s) {', '.join(extra)} that the data does not "
                        f"have; its labels are: {one_of(label_names)}")
    words = [str(verbalizer[name]) for name in label_names]
    if len(set(words)) != len(words):
        raise UserError(f"evaluation.prompting.verbalizer gives two labels the same word ({words}); use distinct words")
    return words


def template_for(prompting: PromptingConfig, pair: bool) -> str:
    template = prompting.template
    has_pair = "{text_pair}" in template
    if pair and not has_pair:
        if "template" not in prompting.model_fields_set:
            return PAIR_TEMPLATE
        raise UserError("the data has text pairs but evaluation.prompting.template has no {text_pair}; add it")
    if has_pair and not pair:
        raise UserError("evaluation.prompting.template uses {text_pair} but the data has no text_pair_column")
    return template


def pick_shots(labels: list[int], k: int, num_labels: int, seed: int) -> list[int]:
    """k training-row indices, balanced over the labels (round robin), in a seeded order."""
    if k == 0:
        return []
    rng = random.Random(seed)
    pools = {label: [i for i, y in enumerate(labels) if y == label] for label in range(num_labels)}
    for pool in pools.values():
        rng.shuffle(pool)
    order = [label for label in range(num_labels) if pools[label]]
    rng.shuffle(order)
    chosen: list[int] = []
    while len(chosen) < k and any(pools[label] for label in order):
        for label in order:
            if pools[label] and len(chosen) < k:
                chosen.append(pools[label].pop())
    if len(chosen) < k:
        raise UserError(f"{k}-shot prompting needs {k} training rows; the training split has {len(chosen)}")
    rng.shuffle(chosen)
    return chosen


@dataclass
class Prompter:
    """Renders prompts and scores verbalizer words with a causal LM."""

    model: object
    tokenizer: object
    template: str
    words: list[str]
    prefix: str = ""  # the k-shot demonstrations (ending in the separator) or ""
    batch_size: int = 32

    def render(self, text: str, text_pair: str | None = None, label_word: str | None = None) -> str:
        values = {"text": text, "text_pair": text_pair or ""}
        head, _, tail = self.template.partition("{label}")
        rendered = head.format(**values)
        return rendered if label_word is None else rendered + label_word + tail.format(**values)

    def split(self, text: str, text_pair: str | None = None) -> tuple[str, list[str]]:
        """(context, one continuation per label): trailing spaces of the prompt go to the continuation."""
        prompt = self.prefix + self.render(text, text_pair)
        context = prompt.rstrip(" ")
        gap = prompt[len(context):]
        return context, [gap + word for word in self.words]

    def max_positions(self) -> int:
        config = self.model.config
        for key in ("max_position_embeddings", "n_positions", "max_sequence_length"):
            if getattr(config, key, None):
                return int(getattr(config, key))
        return 2048

    def encode(self, context: str, continuation: str) -> tuple[list[int], int]:
        """(token ids, number of continuation tokens at the end), left-truncated to the model's window."""
        whole = self.tokenizer(context + continuation)["input_ids"]
        context_ids = self.tokenizer(context)["input_ids"]
        n_continuation = max(1, len(whole) - len(context_ids))
        limit = self.max_positions()
        return (whole[-limit:] if len(whole) > limit else whole), min(n_continuation, limit - 1)

    def score(self, texts: list[str], pairs: list[str] | None = None) -> np.ndarray:
        """(N, labels) summed log-likelihoods of each label's continuation tokens."""
        import torch

        sequences = []
        for i, text in enumerate(texts):
            context, continuations = self.split(text, pairs[i] if pairs else None)
            sequences += [self.encode(context, continuation) for continuation in continuations]
        scores = np.zeros(len(sequences), dtype=np.float64)
        order = np.argsort([len(ids) for ids, _ in sequences], kind="stable")
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        device = next(self.model.parameters()).device
        self.model.eval()
        with torch.inference_mode():
            for start in range(0, len(order), self.batch_size):
                index = order[start:start + self.batch_size]
                width = max(len(sequences[i][0]) for i in index)
                ids = torch.full((len(index), width), pad, dtype=torch.long)
                mask = torch.zeros((len(index), width), dtype=torch.long)
                for row, i in enumerate(index):  # right padding: positions start at 0 for every architecture
                    tokens = sequences[i][0]
                    ids[row, :len(tokens)] = torch.tensor(tokens)
                    mask[row, :len(tokens)] = 1
                logits = self.model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
                log_probs = torch.log_softmax(logits, dim=-1).cpu()
                for row, i in enumerate(index):
                    tokens, n = sequences[i]
                    positions = torch.arange(len(tokens) - n, len(tokens))
                    targets = torch.tensor(tokens[len(tokens) - n:])
                    scores[i] = float(log_probs[row, positions - 1, targets].sum())
        return scores.reshape(len(texts), len(self.words))


def demonstrations(prompter: Prompter, train, indices: list[int], words: list[str], separator: str) -> str:
    pair = "text_pair" in train.column_names
    parts = [prompter.render(train[i]["text"], train[i]["text_pair"] if pair else None, words[train[i]["label"]])
             for i in indices]
    return "".join(part + separator for part in parts)


def _latency(prompter: Prompter, texts: list[str], pairs: list[str] | None, samples: int, warmup: int, seed: int) -> dict:
    rng = random.Random(seed)
    picks = [rng.randrange(len(texts)) for _ in range(warmup + samples)]
    timings = []
    for number, i in enumerate(picks):
        started = time.perf_counter()
        prompter.score([texts[i]], [pairs[i]] if pairs else None)
        if number >= warmup:
            timings.append((time.perf_counter() - started) * 1000)
    return {"latency_ms": round(float(np.percentile(timings, 50)), 4),
            "latency_p95_ms": round(float(np.percentile(timings, 95)), 4), "latency_batch_size": 1,
            "latency_requests": samples}


@times_itself
def run(config: RunConfig, data_dir: str | Path, output_dir: str | Path, name: str | None = None) -> dict:
    import torch

    from rightsizer.inference import inference_placement
    from rightsizer.stages.evaluate import placement_fields, split_scores, write_predictions

    if config.evaluation.prompting is None:
        raise UserError("prompting is not configured; set evaluation.prompting (shots, template, verbalizer)")
    candidate = candidates.find(config, "prompting", name)
    row_name, reference, shots = candidate.name, candidate.model, candidate.shots
    prompting = config.evaluation.prompting
    dataset, card = load_prepared(data_dir)
    label_names = card["label_names"]
    words = resolve_verbalizer(prompting.verbalizer, label_names)
    pair = "text_pair" in dataset["test"].column_names
    template = template_for(prompting, pair)
    device, precision = inference_placement(config.evaluation.dtype)
    with stage_output(output_dir, "prompting", config, name=row_name) as out:
        model, tokenizer = load_causal_lm(reference, training_texts(dataset), config.seed, device, precision)
        prompter = Prompter(model, tokenizer, template, words, batch_size=config.evaluation.batch_size)
        train = dataset["train"]
        shot_rows = pick_shots(list(train["label"]), shots, len(label_names), config.seed)
        prompter.prefix = demonstrations(prompter, train, shot_rows, words, prompting.separator)
        test = dataset["test"]
        texts = list(test["text"])
        pairs = list(test["text_pair"]) if pair else None
        ev = config.evaluation
        threads = task_threads(config)
        torch.set_num_threads(threads)
        with quiet():  # on a shared machine, time nothing while another stage trains
            validation = dataset["validation"]
            predictions = {"validation": prompter.score(
                list(validation["text"]), list(validation["text_pair"]) if pair else None).argmax(-1)}
            started = time.perf_counter()
            scores = prompter.score(texts, pairs)
            seconds = time.perf_counter() - started
            predictions["test"] = scores.argmax(-1)
            metrics = split_scores(predictions, dataset, label_names, config.seed)
            metrics.update(_latency(prompter, texts, pairs, ev.latency_samples, ev.warmup_batches, config.seed))
        params, _ = count_parameters(model)
        bytes_per_param = next(model.parameters()).element_size()
        metrics.update({
            "name": row_name, "kind": "prompting", "model": reference, "shots": shots, "params": params,
            "trainable_params": 0, "size_mb": round(params * bytes_per_param / 1e6, 3),
            "throughput_per_s": round(len(texts) / seconds, 2) if seconds > 0 else 0.0,
            "train_time_s": None, "latency_threads": threads, **placement_fields(device, precision), "template": template,
            "verbalizer": dict(zip(label_names, words)), "shot_ids": [train[i]["id"] for i in shot_rows],
        })
        write_json(out.work / "metrics.json", metrics)
        write_predictions(out.work, predictions)
        np.save(out.work / "scores.npy", scores)
        out.summary.update({"kind": "prompting", "model": reference, "shots": shots, "params": params,
                            "accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"],
                            "latency_ms": metrics["latency_ms"]})
    return metrics
