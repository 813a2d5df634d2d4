"""What a student learns from beyond the labels: out-of-fold targets, the transfer set, and their fingerprints.

- **Out-of-fold targets** (cross-fitting): the training split is cut into K stratified folds; fold teacher
  ``k`` trains on the other K-1 folds and predicts fold ``k``, so every training row gets a soft target from a
  teacher that never saw it (a teacher's targets on its own training rows are nearly one-hot: KD ≈ CE).
- **The transfer set**: unlabeled in-domain text (``data.unlabeled_source``) and augmented copies of the
  training texts (``students[].augment``), labelled by the full-data teachers; for an out-of-fold student the
  copies of training row i are labelled by the fold teacher that held row i out (the full-data teacher
  trained on row i, so its targets on near-copies of it are nearly one-hot again). ``swap`` moves and drops
  words; ``mlm`` replaces words with a masked LM's fills, or, where the model has no masked-LM head (a
  fine-tuned classifier, a sentence encoder), with nearest neighbours in the teacher's own word-embedding
  space (TinyBERT's rule for words a masked LM cannot fill).
- **Fingerprints** tie the cached targets to the exact rows they were computed for, so a bundle from another
  prepare run is refused instead of silently mis-aligned.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from rightsizer.errors import UserError

IGNORE_LABEL = -100  # transfer rows without a hard label (unlabeled text)


def fold_assignment(labels: Sequence[int], folds: int, seed: int) -> np.ndarray:
    """Fold index (0..folds-1) of each row, stratified by label where every class has ``folds`` rows."""
    from sklearn.model_selection import KFold, StratifiedKFold

    labels = np.asarray(labels)
    if len(labels) < folds:
        raise UserError(f"targets: out_of_fold needs at least {folds} training rows (folds: {folds}); "
                        f"the training split has {len(labels)}")
    counts = np.bincount(labels) if len(labels) else np.array([])
    splitter = (StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed) if counts[counts > 0].min() >= folds
                else KFold(n_splits=folds, shuffle=True, random_state=seed))
    assignment = np.empty(len(labels), dtype=np.int64)
    for fold, (_, held) in enumerate(splitter.split(np.zeros(len(labels)), labels)):
        assignment[held] = fold
    return assignment


def fingerprint(split) -> str:
    """sha256 of a split's ids, texts and labels (what cached targets were computed for)."""
    digest = hashlib.sha256()
    for column in ("id", "text", "text_pair", "label"):
        if column in split.column_names:
            digest.update(column.encode())
            digest.update(json.dumps(list(split[column])).encode())
    return digest.hexdigest()[:16]


def copies_labelled_by(student) -> str:
    """Who labels the augmented copies a cached student reads: ``out_of_fold`` (copy of row i by the fold teacher
    that held row i out) for an out-of-fold student with augmentation, else ``teacher`` (the full-data teacher)."""
    oof = student.targets == "out_of_fold" and student.augment.active and not student.online
    return "out_of_fold" if oof else "teacher"


def transfer_key(augment, unlabeled: bool, copies_by: str = "teacher") -> str:
    """Name of the transfer set a student with this ``augment`` reads (students with the same settings share it).

    ``copies_by`` (:func:`copies_labelled_by`) is part of the name when it is not the full-data teacher, so a
    bundle whose copies were labelled the other way is never read in its place."""
    spec = {"unlabeled": unlabeled, **augment.model_dump()}
    if copies_by != "teacher":
        spec["copies_labelled_by"] = copies_by
    return "transfer-" + hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:10]


# ---------------------------------------------------------------------------------------------
# augmentation


def swap_words(text: str, rng: random.Random, share: float) -> str:
    """EDA-style noise: ~``share`` of the words swapped with another word or dropped (at least one edit)."""
    words = text.split()
    if len(words) < 2:
        return text
    for _ in range(max(1, round(share * len(words)))):
        if len(words) > 3 and rng.random() < 0.3:
            del words[rng.randrange(len(words))]
        else:
            i, j = rng.sample(range(len(words)), 2)
            words[i], words[j] = words[j], words[i]
    return " ".join(words)


class MaskedLMAugmenter:
    """Replace ~``share`` of the words of a text with a masked LM's sampled fills (top-k, never the original).

    ``model`` is an ``AutoModelForMaskedLM`` with a trained head, or None: then each chosen single-token word
    is replaced by one of its ``top_k`` nearest neighbours (cosine) in ``embeddings`` (the teacher's input
    word embeddings); words that are several word pieces stay.
    """

    def __init__(self, tokenizer, model=None, embeddings=None, top_k: int = 5, max_length: int = 128):
        import torch

        self.tokenizer, self.model, self.top_k, self.max_length = tokenizer, model, top_k, max_length
        vocab = tokenizer.get_vocab()
        special = set(tokenizer.all_special_ids)
        banned = [i for token, i in vocab.items() if i in special or token.startswith("##") or not token.isalnum()]
        self.banned = torch.tensor(sorted(set(banned)), dtype=torch.long)
        if model is None:
            if embeddings is None:
                raise ValueError("give a masked LM or word embeddings")
            normalised = torch.nn.functional.normalize(embeddings.detach().float(), dim=-1)
            self.normalised = normalised

    def _neighbour(self, token_id: int, rng: random.Random) -> int | None:
        import torch

        scores = self.normalised @ self.normalised[token_id]
        scores[token_id] = -2.0
        scores[self.banned[self.banned < len(scores)]] = -2.0
        choices = torch.topk(scores, self.top_k).indices.tolist()
        return rng.choice(choices) if choices else None

    def augment(self, texts: Sequence[str], rng: random.Random, share: float) -> list[str]:
        import torch

        out = []
        for text in texts:
            words = text.split()
            if not words:
                out.append(text)
                continue
            chosen = sorted(rng.sample(range(len(words)), max(1, round(share * len(words)))))
            if self.model is None:
                for index in chosen:
                    pieces = self.tokenizer(words[index], add_special_tokens=False)["input_ids"]
                    if len(pieces) == 1:
                        replacement = self._neighbour(pieces[0], rng)
                        if replacement is not None:
                            words[index] = self.tokenizer.convert_ids_to_tokens(replacement)
                out.append(" ".join(words))
                continue
            masked = [self.tokenizer.mask_token if i in chosen else w for i, w in enumerate(words)]
            encoded = self.tokenizer(" ".join(masked), return_tensors="pt", truncation=True, max_length=self.max_length)
            with torch.no_grad():
                logits = self.model(**encoded).logits[0].float()
            positions = (encoded["input_ids"][0] == self.tokenizer.mask_token_id).nonzero().flatten().tolist()
            logits[:, self.banned[self.banned < logits.shape[-1]]] = float("-inf")
            fills = iter(positions)
            for index in chosen:
                position = next(fills, None)
                if position is None:  # truncated away
                    break
                original = self.tokenizer(words[index], add_special_tokens=False)["input_ids"]
                scores = logits[position].clone()
                if len(original) == 1:
                    scores[original[0]] = float("-inf")
                choices = torch.topk(scores, self.top_k).indices.tolist()
                words[index] = self.tokenizer.convert_ids_to_tokens(rng.choice(choices))
            out.append(" ".join(words))
        return out


def masked_lm_augmenter(reference: str | None, teacher_dir: Path, explicit: bool, max_length: int):
    """(augmenter, description): the masked LM at ``reference`` if it has a trained MLM head, else the teacher's
    own word-embedding neighbours. ``explicit`` (``augment.model`` was set) makes a head-less model an error."""
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    from rightsizer.models import describe, load_saved, package_model_dir

    if reference is not None and describe(reference) == "local":
        path = package_model_dir(reference) if reference.startswith("package:") else Path(reference).expanduser()
        try:
            model, info = AutoModelForMaskedLM.from_pretrained(str(path), output_loading_info=True)
        except (OSError, ValueError) as exc:
            if explicit:
                raise UserError(f"augment.model '{reference}' cannot be loaded as a masked LM: {exc}") from None
        else:
            head_missing = [k for k in info["missing_keys"] if "embeddings" not in k]
            if not head_missing:
                tokenizer = AutoTokenizer.from_pretrained(str(path))
                if tokenizer.mask_token is None:
                    raise UserError(f"augment.model '{reference}' has no mask token; give a masked LM (BERT-style)")
                return MaskedLMAugmenter(tokenizer, model.eval(), max_length=max_length), f"masked LM {reference}"
            if explicit:
                raise UserError(f"augment.model '{reference}' has no trained masked-LM head "
                                f"(missing {head_missing[0]}); give a masked LM or leave augment.model unset")
    elif explicit:
        raise UserError(f"augment.model '{reference}' must be a local directory or package:NAME/DIR (no hub download)")
    teacher, tokenizer = load_saved(teacher_dir)
    embeddings = teacher.get_input_embeddings().weight
    return (MaskedLMAugmenter(tokenizer, embeddings=embeddings, max_length=max_length),
            "word-embedding neighbours of the teacher (no masked-LM head)")


def augmented_copies(train, augment, augmenter, seed: int) -> dict[str, list]:
    """``augment.copies`` altered copies of every training row: columns text[, text_pair], label, origin_id."""
    rng = random.Random(seed)
    pair = "text_pair" in train.column_names
    rows: dict[str, list] = {"text": [], "label": [], "origin_id": [], **({"text_pair": []} if pair else {})}
    texts, labels, ids = list(train["text"]), list(train["label"]), list(train["id"])
    pairs = list(train["text_pair"]) if pair else None
    for _ in range(augment.copies):
        if augment.method == "swap":
            new = [swap_words(t, rng, augment.mask_prob) for t in texts]
            new_pairs = [swap_words(t, rng, augment.mask_prob) for t in pairs] if pair else None
        else:
            new = augmenter.augment(texts, rng, augment.mask_prob)
            new_pairs = augmenter.augment(pairs, rng, augment.mask_prob) if pair else None
        rows["text"] += new
        if pair:
            rows["text_pair"] += new_pairs
        rows["label"] += labels
        rows["origin_id"] += ids
    return rows
