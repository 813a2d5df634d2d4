"""Load a labelled text data set, map its columns, reject bad data, split it, tokenize it.

Sources: ``builtin:NAME`` (generated in code), a local file or directory (CSV, JSON, JSONL,
Parquet), ``hf:NAME[:CONFIG]`` (``datasets.load_dataset``) and ``s3://`` / ``minio://`` (through
:mod:`rightsizer.storage`). Whatever the source, the result is a ``DatasetDict`` with splits
``train``/``validation``/``test`` and columns ``id``, ``text`` (``text_pair``) and ``label``
(a ``ClassLabel`` carrying the label names), plus a card describing it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from rightsizer.config import DataConfig
from rightsizer.errors import UserError, did_you_mean, one_of

SPLITS = ("train", "validation", "test")
SPLIT_ALIASES = {"train": "train", "training": "train", "validation": "validation", "valid": "validation",
                 "val": "validation", "dev": "validation", "test": "test", "testing": "test"}
READERS = {".csv": "csv", ".tsv": "tsv", ".json": "json", ".jsonl": "jsonl", ".parquet": "parquet", ".pq": "parquet"}


@dataclass
class Loaded:
    """Raw splits as data frames, before cleaning; ``label_names`` when the source declares them."""

    splits: dict[str, pd.DataFrame]
    label_names: list[str] | None = None
    defaults: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# loading


def load_source(data: DataConfig) -> Loaded:
    source = data.source.strip()
    if source.startswith("builtin:"):
        return _load_builtin(source.removeprefix("builtin:"))
    if source.startswith("hf:"):
        return _load_hf(source.removeprefix("hf:"))
    if source.startswith(("s3://", "minio://")):
        return _load_s3(source, data)
    if "://" in source:
        raise UserError(f"data.source '{source}': unsupported scheme; use a local path, builtin:NAME, hf:NAME or s3://bucket/key")
    return load_path(Path(source).expanduser(), data.delimiter, data.encoding)


def _load_builtin(name: str) -> Loaded:
    from rightsizer.builtin_data import BUILTIN

    if name not in BUILTIN:
        raise UserError(f"unknown built-in data set '{name}'{did_you_mean(name, BUILTIN)}; built-ins: {one_of(BUILTIN)}")
    spec = BUILTIN[name]
    frame = pd.DataFrame(spec["rows"]())
    return Loaded({"all": frame}, list(spec["labels"]) if spec["labels"] else None,
                  {"text_column": spec["text_column"], "text_pair_column": spec["text_pair_column"],
                   "unlabeled": spec["labels"] is None})


def _load_hf(spec: str) -> Loaded:
    import datasets

    name, _, subset = spec.partition(":")
    if not name:
        raise UserError("data.source 'hf:' needs a data set name, e.g. hf:ag_news or hf:glue:qqp")
    try:
        loaded = datasets.load_dataset(name, subset or None)
    except (ConnectionError, OSError) as exc:
        raise UserError(f"cannot load '{name}' from the Hugging Face Hub (offline or not found): {str(exc).splitlines()[0][:200]}") from None
    except ValueError as exc:
        raise UserError(f"cannot load hf:{spec}: {str(exc).splitlines()[0][:200]}") from None
    except Exception as exc:  # hub client errors have many classes; all mean the same to a user
        raise UserError(f"cannot load hf:{spec} ({type(exc).__name__}): {str(exc).splitlines()[0][:200]}") from None
    splits, label_names = {}, None
    for split_name, split in loaded.items():
        target = SPLIT_ALIASES.get(split_name)
        if target is None:
            continue
        splits[target] = split.to_pandas()
        for feature in split.features.values():
            if hasattr(feature, "names") and label_names is None:
                label_names = list(feature.names)
    if not splits:
        raise UserError(f"hf:{spec} has no train/validation/test split (it has: {one_of(loaded)})")
    return Loaded(splits, label_names)


def _load_s3(uri: str, data: DataConfig) -> Loaded:
    import tempfile

    try:
        from rightsizer import storage
    except ImportError:  # pragma: no cover - storage arrives with the platform issue
        raise UserError("s3:// sources are not yet supported in this version; download the file and give a local path") from None
    fetch = getattr(storage, "download_source", None)
    if fetch is None:
        raise UserError("s3:// sources are not yet supported in this version; download the file and give a local path")
    local = Path(tempfile.mkdtemp(prefix="rightsizer-data-"))
    return load_path(fetch(uri, local), data.delimiter, data.encoding)


DELIMITERS = ",;\t|"


def _text(path: Path, encoding: str | None) -> str:
    """The file's text; a decoding failure names the byte and suggests data.encoding."""
    try:
        return path.read_text(encoding=encoding or "utf-8-sig")
    except UnicodeDecodeError as exc:
        if encoding:
            raise UserError(f"'{path}' is not valid {encoding} (byte {exc.object[exc.start]:#04x} at position "
                            f"{exc.start}); check data.encoding") from None
        raise UserError(f"'{path}' is not UTF-8 (byte {exc.object[exc.start]:#04x} at position {exc.start}); "
                        "set data.encoding to its encoding, e.g. latin-1 or cp1252") from None


def _delimiter(text: str, given: str | None) -> str:
    """The CSV delimiter: data.delimiter, else sniffed from the first lines among , ; tab |."""
    if given:
        return given
    import csv

    try:
        return csv.Sniffer().sniff(text[:65536], delimiters=DELIMITERS).delimiter
    except csv.Error:
        return ","


def _ragged_row(text: str, sep: str) -> str:
    """Which CSV line has a different number of fields than the header."""
    import csv
    import io

    rows = csv.reader(io.StringIO(text), delimiter=sep)
    header = next(rows, [])
    for row in rows:
        if row and len(row) != len(header):
            return (f"line {rows.line_num} has {len(row)} fields but the header has {len(header)} "
                    f"({', '.join(header)})")
    return "its rows do not match its header"


def _json_lines(path: Path, text: str) -> pd.DataFrame:
    records = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as exc:
            raise UserError(f"'{path}' line {number} is not valid JSON: {str(exc).split(':')[0]}") from None
        if not isinstance(record, dict):
            raise UserError(f"'{path}' line {number} holds a JSON {_json_type(record)}; each line must be an object "
                            '{"text": ..., "label": ...}')
        records.append(record)
    return pd.DataFrame.from_records(records)


def _json_type(value: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}.get(type(value), "number")


def _json(path: Path, text: str) -> pd.DataFrame:
    try:
        document = json.loads(text)
    except ValueError as exc:
        if "Extra data" in str(exc):  # several documents: JSON lines in a .json file
            return _json_lines(path, text)
        raise UserError(f"'{path}' is not valid JSON: {exc}") from None
    if isinstance(document, list) and all(isinstance(row, dict) for row in document):
        return pd.DataFrame.from_records(document)
    if isinstance(document, dict) and document and all(isinstance(v, list) for v in document.values()):
        if len({len(v) for v in document.values()}) != 1:
            raise UserError(f"'{path}' maps columns to lists of different lengths; every column needs one value per row")
        return pd.DataFrame(document)
    shown = _json_type(document) if not isinstance(document, list) else "array that is not a list of objects"
    raise UserError(f"'{path}' holds a JSON {shown}; give a list of records "
                    '([{"text": ..., "label": ...}, ...]), an object of columns, or JSON lines')


def read_table(path: Path, delimiter: str | None = None, encoding: str | None = None) -> pd.DataFrame:
    suffix = path.suffix.lower()
    kind = READERS.get(suffix)
    if kind is None:
        raise UserError(f"'{path}': unsupported file type '{suffix or '(none)'}'; use {one_of(READERS)}")
    try:
        if kind == "parquet":
            return pd.read_parquet(path)
        text = _text(path, encoding)
        if not text.strip():
            raise UserError(f"'{path}' is empty")
        if kind == "jsonl":
            return _json_lines(path, text)
        if kind == "json":
            return _json(path, text)
        import io

        sep = "\t" if kind == "tsv" and not delimiter else _delimiter(text, delimiter)
        import warnings

        try:
            with warnings.catch_warnings():
                # a row with more fields than the header would become the index or lose fields: refuse it
                warnings.simplefilter("error", pd.errors.ParserWarning)
                return pd.read_csv(io.StringIO(text), sep=sep, keep_default_na=True, index_col=False)
        except (pd.errors.ParserWarning, pd.errors.ParserError):
            raise UserError(f"'{path}': {_ragged_row(text, sep)}; quote texts that contain {sep!r} or set "
                            "data.delimiter") from None
    except UserError:
        raise
    except pd.errors.EmptyDataError:
        raise UserError(f"'{path}' is empty") from None
    except (ValueError, pd.errors.ParserError, OSError) as exc:
        raise UserError(f"cannot read '{path}' as {kind}: {str(exc).splitlines()[0][:200]}") from None
    except Exception as exc:  # pyarrow raises its own classes for a corrupt parquet file
        raise UserError(f"cannot read '{path}' as {kind}: {str(exc).splitlines()[0][:200]}") from None


def load_path(path: Path, delimiter: str | None = None, encoding: str | None = None) -> Loaded:
    if not path.exists():
        raise UserError(f"data file '{path}' not found")
    if path.is_file():
        return Loaded({"all": read_table(path, delimiter, encoding)})
    files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in READERS)
    splits: dict[str, pd.DataFrame] = {}
    for file in files:
        split = SPLIT_ALIASES.get(file.stem.lower())
        if split is None:
            continue
        if split in splits:
            raise UserError(f"'{path}' has two files for the {split} split; keep one")
        splits[split] = read_table(file, delimiter, encoding)
    if not splits:
        if len(files) == 1:
            return Loaded({"all": read_table(files[0], delimiter, encoding)})
        found = ", ".join(p.name for p in files) or "no data files"
        raise UserError(f"directory '{path}' needs train/validation/test files (e.g. train.csv, test.csv); found: {found}")
    if "train" not in splits:
        raise UserError(f"directory '{path}' has no train file (found splits: {one_of(splits)})")
    return Loaded(splits)


# ---------------------------------------------------------------------------------------------
# cleaning and splitting


def _check_columns(frame: pd.DataFrame, wanted: dict[str, str | None], split: str) -> None:
    columns = [str(c) for c in frame.columns]
    where = "the data" if split == "all" else f"the {split} data"
    for key, column in wanted.items():
        if column is not None and column not in frame.columns:
            hint = ""
            if len(columns) == 1:
                seen = [d for d in DELIMITERS if d in columns[0]]
                if seen:
                    hint = f" (the file looks {seen[0]!r}-delimited: set data.delimiter: {seen[0]!r})"
            raise UserError(
                f"column '{column}' (data.{key}) not found in {where}{did_you_mean(column, columns)}; "
                f"columns: {', '.join(columns) or 'none'}{hint}"
            )
    for key, column in wanted.items():
        if column is None:
            continue
        nested = frame[column].map(lambda v: isinstance(v, (list, tuple, dict, set, np.ndarray)))
        if nested.any():
            value = frame[column][nested.idxmax()]
            kind = "struct (dict)" if isinstance(value, dict) else f"list ({type(value).__name__})"
            raise UserError(f"column '{column}' (data.{key}) in {where} holds {kind} values, e.g. {str(value)[:60]!r}; "
                            "text and label columns must hold single strings or numbers: flatten it first")


def _is_blank(series: pd.Series) -> pd.Series:
    return series.isna() | series.astype(str).str.strip().eq("")


def prepare_dataset(data: DataConfig, seed: int, loaded: Loaded | None = None):
    """Load, clean, label-encode and split. Returns ``(DatasetDict, card)``."""
    import datasets

    loaded = loaded or load_source(data)
    if loaded.defaults.get("unlabeled"):
        raise UserError(f"data.source '{data.source}' is text without labels; give it as data.unlabeled_source "
                        "(distillation's transfer set) beside a labelled data.source")
    text_column = data.text_column
    pair_column = data.text_pair_column
    if loaded.defaults and data.source.startswith("builtin:"):
        # built-ins know their own columns unless the user mapped them explicitly
        if text_column == "text":
            text_column = loaded.defaults["text_column"]
        if pair_column is None:
            pair_column = loaded.defaults["text_pair_column"]
    wanted = {"text_column": text_column, "text_pair_column": pair_column, "label_column": data.label_column}
    if data.label_column in (text_column, pair_column):
        which = "data.text_column" if data.label_column == text_column else "data.text_pair_column"
        raise UserError(f"data.label_column and {which} are both '{data.label_column}'; the label must be a column of "
                        "its own (set data.label_column to the column holding the classes)")

    cleaned: dict[str, pd.DataFrame] = {}
    dropped = {"empty_text": 0, "missing_label": 0, "unlabeled": 0}
    unlabeled_splits: list[str] = []
    for split, frame in loaded.splits.items():
        if len(frame) == 0:
            raise UserError(f"the {split} data of '{data.source}' has no rows")
        _check_columns(frame, wanted, split)
    for split, frame in loaded.splits.items():
        out = pd.DataFrame({"text": frame[text_column]})
        if pair_column:
            out["text_pair"] = frame[pair_column]
        out["label"] = frame[data.label_column]
        empty = _is_blank(out["text"])
        if pair_column:
            empty |= _is_blank(out["text_pair"])
        missing = out["label"].isna() & ~empty
        hidden = _hidden_labels(out["label"], split, loaded, data.label_column) & ~empty & ~missing
        dropped["empty_text"] += int(empty.sum())
        dropped["missing_label"] += int(missing.sum())
        dropped["unlabeled"] += int(hidden.sum())
        out = out[~(empty | missing | hidden)].reset_index(drop=True)
        if len(out) == 0 and hidden.any():
            if split in ("train", "all"):
                raise UserError(f"the {split} split of '{data.source}' has no labels (label -1: hidden, as in a "
                                "benchmark's test split); give labelled training data")
            unlabeled_splits.append(split)  # a hidden-label test (or validation) split is made from train instead
            continue
        out["text"] = out["text"].astype(str)
        if pair_column:
            out["text_pair"] = out["text_pair"].astype(str)
        cleaned[split] = out

    total = sum(len(f) for f in cleaned.values())
    if total == 0:
        raise UserError(f"no usable rows in '{data.source}' after dropping {dropped['empty_text']} with empty text "
                        f"and {dropped['missing_label']} with no label")

    label_names = _label_names(cleaned, loaded.label_names)
    if "train" in cleaned:  # splits given as files: every label they use must be learnable from train
        known = {_label_key(v, loaded.label_names) for v in cleaned["train"]["label"]}
        for split, frame in cleaned.items():
            unseen = sorted({_label_key(v, loaded.label_names) for v in frame["label"]} - known)
            if split != "train" and unseen:
                shown = ", ".join(map(repr, unseen[:5])) + (f" and {len(unseen) - 5} more" if len(unseen) > 5 else "")
                raise UserError(f"{split} has labels {shown} not in train; a classifier cannot learn a label it never "
                                f"sees: add training rows of it or drop those rows from {split}")
    if len(label_names) < 2:
        raise UserError(f"the data has only one class ({label_names[0]!r}); a classifier needs at least two")
    index_of = {name: i for i, name in enumerate(label_names)}
    for split, frame in cleaned.items():
        frame["label"] = [index_of[_label_key(v, loaded.label_names)] for v in frame["label"]]

    splits = _split(cleaned, data, seed, label_names)
    removed = {"validation": 0, "test": 0}
    if data.dedupe:
        splits, removed = dedupe(splits, bool(pair_column))
    _check_classes(splits, label_names, removed)
    splits = _subsample(splits, data, seed, label_names)

    features = {"id": datasets.Value("int64"), "text": datasets.Value("string")}
    if pair_column:
        features["text_pair"] = datasets.Value("string")
    features["label"] = datasets.ClassLabel(names=label_names)
    dataset = datasets.DatasetDict({
        name: datasets.Dataset.from_pandas(
            frame.assign(id=np.arange(len(frame), dtype=np.int64))[list(features)],
            features=datasets.Features(features), preserve_index=False,
        )
        for name, frame in splits.items()
    })
    card = {
        "source": data.source,
        "columns": {"text": text_column, "text_pair": pair_column, "label": data.label_column},
        "pair_task": bool(pair_column),
        "label_names": label_names,
        "num_labels": len(label_names),
        "rows": {name: len(frame) for name, frame in splits.items()},
        "class_balance": {
            name: {label_names[k]: int(v) for k, v in sorted(frame["label"].value_counts().items())}
            for name, frame in splits.items()
        },
        "dropped_rows": dropped,
        "unlabeled_splits": unlabeled_splits,
        "splits_from_source": sorted(s for s in cleaned if s != "all"),
        "mean_words": round(float(splits["train"]["text"].str.split().str.len().mean()), 1),
        "leakage": {"dedupe": data.dedupe, "removed": removed, **leakage_report(splits, bool(pair_column))},
    }
    return dataset, card


def _is_minus_one(labels: pd.Series) -> pd.Series:
    return pd.to_numeric(labels, errors="coerce").eq(-1)


def _hidden_labels(labels: pd.Series, split: str, loaded: Loaded, label_column: str) -> pd.Series:
    """Rows whose label is hidden (-1, as in GLUE test splits): never a class of their own.

    -1 means "no label" when the source declares its label names (a ``datasets`` ClassLabel), or when a
    given split is all -1 while the training split has none; otherwise (e.g. sentiment -1/0/1) it is a class.
    """
    minus_one = _is_minus_one(labels)
    if loaded.label_names is not None or not minus_one.any():
        return minus_one
    train = loaded.splits.get("train")
    if split not in ("train", "all") and minus_one.all() and train is not None \
            and not _is_minus_one(train[label_column]).any():
        return minus_one
    return pd.Series(False, index=labels.index)


def _label_key(value: Any, declared: list[str] | None) -> str:
    if declared is not None and isinstance(value, (int, np.integer)) and 0 <= int(value) < len(declared):
        return declared[int(value)]
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value)


def _label_names(frames: dict[str, pd.DataFrame], declared: list[str] | None) -> list[str]:
    values = pd.concat([f["label"] for f in frames.values()], ignore_index=True)
    keys = {_label_key(v, declared) for v in values}
    if declared is not None and keys <= set(declared):
        return [name for name in declared if name in keys] if len(keys) < len(declared) else list(declared)
    if all(k.lstrip("-").isdigit() for k in keys):
        return [str(k) for k in sorted(int(k) for k in keys)]
    return sorted(keys)


def _stratified(frame: pd.DataFrame, size: int, seed: int, what: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split ``size`` rows off ``frame``, stratified by label; returns (rest, taken)."""
    from sklearn.model_selection import train_test_split

    if size <= 0 or size >= len(frame):
        raise UserError(f"the {what} split would have {size} of {len(frame)} rows; adjust data.validation_size / data.test_size")
    try:
        rest, taken = train_test_split(frame, test_size=size, random_state=seed, stratify=frame["label"])
    except ValueError as exc:
        raise UserError(f"cannot make a stratified {what} split: {exc}; a class has too few rows for the split sizes") from None
    return rest.reset_index(drop=True), taken.reset_index(drop=True)


def _split(frames: dict[str, pd.DataFrame], data: DataConfig, seed: int, label_names: list[str]) -> dict[str, pd.DataFrame]:
    if "all" in frames:
        whole = frames["all"]
        n = len(whole)
        rest, test = _stratified(whole, round(n * data.test_size), seed, "test")
        train, validation = _stratified(rest, round(n * data.validation_size), seed, "validation")
        splits = {"train": train, "validation": validation, "test": test}
    else:
        splits = dict(frames)
        total = sum(len(f) for f in frames.values())
        if "test" not in splits:
            splits["train"], splits["test"] = _stratified(splits["train"], round(total * data.test_size), seed, "test")
        if "validation" not in splits:
            splits["train"], splits["validation"] = _stratified(
                splits["train"], round(total * data.validation_size), seed, "validation")
    return {name: splits[name] for name in SPLITS}


def _check_classes(splits: dict[str, pd.DataFrame], label_names: list[str], removed: dict[str, int]) -> None:
    for name in SPLITS:
        after = f" after removing {removed[name]} duplicate(s) of training texts (data.dedupe)" if removed.get(name) else ""
        if len(splits[name]) == 0:
            raise UserError(f"the {name} split has no rows{after}; give it texts that are not in the training data")
        present = set(splits[name]["label"].unique())
        missing = [label_names[k] for k in range(len(label_names)) if k not in present]
        if missing and name != "test":
            raise UserError(
                f"the {name} split has no rows of class {', '.join(map(repr, missing))}{after}; "
                "increase data.validation_size / data.test_size or add rows of that class"
            )


# ---------------------------------------------------------------------------------------------
# leakage between splits


def normalise_texts(texts: pd.Series) -> pd.Series:
    """Lower case, punctuation to spaces, runs of whitespace to one space: 'Great phone!' == 'great  phone'."""
    return texts.str.lower().str.replace(r"[^\w\s]", " ", regex=True).str.split().str.join(" ")


def example_keys(frame: pd.DataFrame, pair: bool, normalised: bool) -> pd.Series:
    """One string per row identifying its text (pair: both texts; normalised pairs ignore their order)."""
    text = normalise_texts(frame["text"]) if normalised else frame["text"]
    if not pair:
        return text
    other = normalise_texts(frame["text_pair"]) if normalised else frame["text_pair"]
    forward = text + "\x1f" + other
    return forward.where(text <= other, other + "\x1f" + text) if normalised else forward


def leakage_report(splits: dict[str, pd.DataFrame], pair: bool) -> dict:
    """Duplicated examples within each split and across splits, exact and normalised; for pair data,
    validation/test rows sharing a member text (normalised) with a training pair."""
    report: dict = {}
    for form in ("exact", "normalised"):
        keys = {name: example_keys(splits[name], pair, form == "normalised") for name in SPLITS}
        seen = {name: set(keys[name]) for name in ("train", "validation")}
        report[form] = {
            "within": {name: int(keys[name].duplicated().sum()) for name in SPLITS},
            "validation_in_train": int(keys["validation"].isin(seen["train"]).sum()),
            "test_in_train": int(keys["test"].isin(seen["train"]).sum()),
            "test_in_validation": int(keys["test"].isin(seen["validation"]).sum()),
        }
    if pair:
        train = splits["train"]
        members = set(normalise_texts(train["text"])) | set(normalise_texts(train["text_pair"]))
        report["shared_members"] = {
            name: int((normalise_texts(splits[name]["text"]).isin(members)
                       | normalise_texts(splits[name]["text_pair"]).isin(members)).sum())
            for name in ("validation", "test")
        }
    return report


def dedupe(splits: dict[str, pd.DataFrame], pair: bool) -> tuple[dict[str, pd.DataFrame], dict[str, int]]:
    """Drop validation and test rows whose normalised text (pair) is also in the training split."""
    train = set(example_keys(splits["train"], pair, normalised=True))
    out, removed = dict(splits), {}
    for name in ("validation", "test"):
        duplicate = example_keys(splits[name], pair, normalised=True).isin(train)
        removed[name] = int(duplicate.sum())
        out[name] = splits[name][~duplicate].reset_index(drop=True)
    return out, removed


def _subsample(splits: dict[str, pd.DataFrame], data: DataConfig, seed: int, label_names: list[str]):
    limits = {"train": data.max_train_samples, "validation": data.max_eval_samples, "test": data.max_eval_samples}
    out = {}
    for name, frame in splits.items():
        limit = limits[name]
        if limit is not None and limit < len(frame):
            if limit < len(label_names):
                raise UserError(f"max samples {limit} for {name} is smaller than the number of classes ({len(label_names)})")
            _, frame = _stratified(frame, limit, seed, f"{name} subsample")
        out[name] = frame.reset_index(drop=True)
    return out


UNLABELED_DIR = "unlabeled"


def prepare_unlabeled(data: DataConfig, dataset) -> tuple[Any, dict]:
    """``data.unlabeled_source`` as a text-only ``Dataset`` (``id``, ``text``[, ``text_pair``]) and its counts.

    Rows whose text is blank or repeats a training, validation or test text (case, whitespace and punctuation
    aside) are dropped: the teachers label this text for the students, so a held-out text in it would leak
    into training.
    """
    import datasets

    loaded = load_source(data.model_copy(update={"source": data.unlabeled_source}))
    text_column, pair_column = data.text_column, data.text_pair_column
    if loaded.defaults and data.unlabeled_source.strip().startswith("builtin:"):
        text_column = loaded.defaults["text_column"] if text_column == "text" else text_column
        pair_column = pair_column or loaded.defaults["text_pair_column"]
    pair = "text_pair" in dataset["train"].column_names
    frames = []
    for split, frame in loaded.splits.items():
        _check_columns(frame, {"text_column": text_column, **({"text_pair_column": pair_column} if pair else {})}, split)
        out = pd.DataFrame({"text": frame[text_column]})
        if pair:
            out["text_pair"] = frame[pair_column]
        frames.append(out)
    frame = pd.concat(frames, ignore_index=True)
    blank = _is_blank(frame["text"]) | (_is_blank(frame["text_pair"]) if pair else False)
    frame = frame[~blank].astype(str)
    key = example_keys(frame, pair, normalised=True)  # the same "same text" as the dedupe of the labelled splits
    seen = set()
    for split in dataset:
        seen.update(example_keys(dataset[split].select_columns([c for c in ("text", "text_pair")
                                                                  if c in dataset[split].column_names]).to_pandas(),
                                 pair, normalised=True))
    held = key.isin(seen)
    repeated = key.duplicated() & ~held
    frame = frame[~held & ~repeated].reset_index(drop=True)
    if len(frame) == 0:
        raise UserError(f"data.unlabeled_source '{data.unlabeled_source}' has no text beyond the labelled data's "
                        f"({int(blank.sum())} blank, {int(held.sum())} already in train/validation/test)")
    features = {"id": datasets.Value("int64"), "text": datasets.Value("string")}
    if pair:
        features["text_pair"] = datasets.Value("string")
    unlabeled = datasets.Dataset.from_pandas(frame.assign(id=np.arange(len(frame), dtype=np.int64))[list(features)],
                                             features=datasets.Features(features), preserve_index=False)
    counts = {"rows": len(frame), "dropped_blank": int(blank.sum()), "dropped_in_labelled_data": int(held.sum()),
              "dropped_repeated": int(repeated.sum())}
    return unlabeled, counts


def save_prepared(dataset, card: dict, directory: Path, unlabeled=None) -> None:
    dataset.save_to_disk(str(directory / "dataset"))
    if unlabeled is not None:
        unlabeled.save_to_disk(str(directory / UNLABELED_DIR))
    (directory / "card.json").write_text(json.dumps(card, indent=2))


def load_unlabeled(directory: str | Path):
    """The prepared unlabeled text (``data.unlabeled_source``), or None when the run has none."""
    import datasets

    path = Path(directory) / UNLABELED_DIR
    return datasets.load_from_disk(str(path)) if path.is_dir() else None


def load_prepared(directory: str | Path):
    """Load a prepared data directory written by the prepare stage: ``(DatasetDict, card)``."""
    import datasets

    directory = Path(directory)
    card_path = directory / "card.json"
    if not card_path.exists():
        raise UserError(f"'{directory}' is not a prepared data directory (no card.json); run the prepare stage first")
    return datasets.load_from_disk(str(directory / "dataset")), json.loads(card_path.read_text())


# ---------------------------------------------------------------------------------------------
# tokenization


def tokenize(dataset, tokenizer, max_length: int, pair: bool):
    """Tokenize every split (truncation, no padding: the collator pads each batch)."""

    def encode(batch):
        if pair:
            encoded = tokenizer(batch["text"], batch["text_pair"], truncation=True, max_length=max_length)
        else:
            encoded = tokenizer(batch["text"], truncation=True, max_length=max_length)
        encoded["length"] = [len(ids) for ids in encoded["input_ids"]]
        return encoded

    drop = [c for c in ("text", "text_pair") if c in dataset.column_names[next(iter(dataset))]] if hasattr(dataset, "keys") else \
        [c for c in ("text", "text_pair") if c in dataset.column_names]
    return dataset.map(encode, batched=True, remove_columns=drop, desc="tokenize", load_from_cache_file=False)
