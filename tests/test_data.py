"""Data prep: every source, column mapping, cleaning, stratified deterministic splits, bad data."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from rightsizer.config import DataConfig
from rightsizer.data import prepare_dataset, tokenize
from rightsizer.errors import UserError


def frame(n: int = 60, classes=("a", "b", "c"), start: int = 0) -> pd.DataFrame:
    return pd.DataFrame({"review": [f"text number {i} about {classes[i % len(classes)]}" for i in range(start, start + n)],
                         "sentiment": [classes[i % len(classes)] for i in range(start, start + n)]})


def cfg(source, **kwargs) -> DataConfig:
    return DataConfig(source=str(source), **kwargs)


def test_builtin_demo_is_deterministic_and_balanced():
    first, card = prepare_dataset(cfg("builtin:demo"), seed=1)
    second, _ = prepare_dataset(cfg("builtin:demo"), seed=1)
    assert card["label_names"] == ["negative", "neutral", "positive"]
    removed = card["leakage"]["removed"]  # short reviews repeat; duplicates of training texts leave validation/test
    assert 0 < removed["test"] < 20
    assert card["rows"] == {"train": 2800, "validation": 400 - removed["validation"], "test": 800 - removed["test"]}
    assert first["test"]["text"] == second["test"]["text"]
    for split, counts in card["class_balance"].items():
        assert max(counts.values()) - min(counts.values()) <= 0.02 * sum(counts.values()), (split, counts)
    other, _ = prepare_dataset(cfg("builtin:demo"), seed=2)
    assert other["test"]["text"] != first["test"]["text"]
    lengths = [len(t.split()) for t in first["train"]["text"]]
    assert min(lengths) < 10 < 40 < max(lengths)  # varied lengths
    assert any(" not " in t for t in first["train"]["text"])  # negation present


def test_builtin_pairs_have_two_texts():
    dataset, card = prepare_dataset(cfg("builtin:demo-pairs"), seed=1)
    assert card["pair_task"] and card["label_names"] == ["not_duplicate", "duplicate"]
    assert set(dataset["train"].column_names) == {"id", "text", "text_pair", "label"}


@pytest.mark.parametrize("suffix", [".csv", ".json", ".jsonl", ".parquet"])
def test_local_files(tmp_path, suffix):
    path = tmp_path / f"data{suffix}"
    data = frame()
    {".csv": lambda: data.to_csv(path, index=False), ".json": lambda: data.to_json(path, orient="records"),
     ".jsonl": lambda: data.to_json(path, orient="records", lines=True), ".parquet": lambda: data.to_parquet(path)}[suffix]()
    dataset, card = prepare_dataset(cfg(path, text_column="review", label_column="sentiment"), seed=0)
    assert card["label_names"] == ["a", "b", "c"]
    assert sum(card["rows"].values()) == 60
    assert dataset["train"].features["label"].names == ["a", "b", "c"]


def test_directory_with_given_splits_is_used_as_is(tmp_path):
    frame(60).to_csv(tmp_path / "train.csv", index=False)
    frame(30, start=60).to_csv(tmp_path / "validation.csv", index=False)
    frame(21, start=90).to_csv(tmp_path / "test.csv", index=False)
    _, card = prepare_dataset(cfg(tmp_path, text_column="review", label_column="sentiment"), seed=0)
    assert card["rows"] == {"train": 60, "validation": 30, "test": 21}
    assert card["splits_from_source"] == ["test", "train", "validation"]


def test_integer_labels_and_bad_rows_dropped(tmp_path):
    data = pd.DataFrame({"text": ["good", "bad", "", None, "fine", "ok"] * 10, "label": [1, 0, 1, 0, None, 2] * 10})
    path = tmp_path / "d.csv"
    data.to_csv(path, index=False)
    _, card = prepare_dataset(cfg(path, dedupe=False), seed=0)  # ten copies of each text
    assert card["label_names"] == ["0", "1", "2"]
    assert card["dropped_rows"] == {"empty_text": 20, "missing_label": 10, "unlabeled": 0}
    assert sum(card["rows"].values()) == 30


def test_hidden_test_labels_are_dropped_not_a_class(tmp_path):
    """GLUE-style test splits carry label -1 (hidden): dropped and counted, the test split made from train."""
    from rightsizer.data import Loaded

    texts = [f"sample {i} is {('bad', 'good')[i % 2]}" for i in range(80)]
    labels = [i % 2 for i in range(80)]
    hidden = pd.DataFrame({"text": [f"unseen {i}" for i in range(20)], "label": [-1] * 20})
    declared = Loaded({"train": pd.DataFrame({"text": texts, "label": labels}), "test": hidden},
                      label_names=["negative", "positive"])  # as datasets.ClassLabel declares them
    dataset, card = prepare_dataset(cfg("hf:glue:sst2"), seed=0, loaded=declared)
    assert card["label_names"] == ["negative", "positive"] and card["num_labels"] == 2
    assert card["dropped_rows"]["unlabeled"] == 20 and card["unlabeled_splits"] == ["test"]
    assert card["splits_from_source"] == ["train"] and card["rows"]["test"] == 16  # 0.2 of the 80 labelled rows
    assert not any(text.startswith("unseen") for text in dataset["test"]["text"])
    # the same from files: a test.csv whose labels are all -1 while train has none
    pd.DataFrame({"text": texts, "label": labels}).to_csv(tmp_path / "train.csv", index=False)
    hidden.to_csv(tmp_path / "test.csv", index=False)
    _, card = prepare_dataset(cfg(tmp_path), seed=0)
    assert card["label_names"] == ["0", "1"] and card["dropped_rows"]["unlabeled"] == 20
    # -1 as a real class (sentiment -1/0/1) stays a class
    pd.DataFrame({"text": texts[:60], "label": [i % 3 - 1 for i in range(60)]}).to_csv(tmp_path / "s.csv", index=False)
    _, card = prepare_dataset(cfg(tmp_path / "s.csv"), seed=0)
    assert card["label_names"] == ["-1", "0", "1"] and card["dropped_rows"]["unlabeled"] == 0
    # nothing labelled to train on: one line naming the split
    only_hidden = Loaded({"train": hidden, "test": hidden}, label_names=["negative", "positive"])
    with pytest.raises(UserError, match=r"the train split of 'hf:glue:sst2' has no labels \(label -1"):
        prepare_dataset(cfg("hf:glue:sst2"), seed=0, loaded=only_hidden)


def test_split_is_stratified_and_seeded(tmp_path):
    data = pd.DataFrame({"text": [f"t{i}" for i in range(200)], "label": ["x"] * 150 + ["y"] * 50})
    path = tmp_path / "d.csv"
    data.to_csv(path, index=False)
    dataset, card = prepare_dataset(cfg(path), seed=3)
    assert card["class_balance"]["test"] == {"x": 30, "y": 10}
    assert card["class_balance"]["validation"] == {"x": 15, "y": 5}
    again, _ = prepare_dataset(cfg(path), seed=3)
    assert dataset["validation"]["text"] == again["validation"]["text"]


def test_given_split_missing_a_class_is_refused(tmp_path):
    frame(60).to_csv(tmp_path / "train.csv", index=False)
    frame(30, classes=("a", "b"), start=60).to_csv(tmp_path / "validation.csv", index=False)
    with pytest.raises(UserError, match="the validation split has no rows of class 'c'"):
        prepare_dataset(cfg(tmp_path, text_column="review", label_column="sentiment"), seed=0)


def test_subsampling_is_stratified():
    _, card = prepare_dataset(cfg("builtin:demo", max_train_samples=300, max_eval_samples=90), seed=0)
    assert card["rows"] == {"train": 300, "validation": 90, "test": 90}
    assert all(abs(count - 100) <= 2 for count in card["class_balance"]["train"].values())


def test_tokenize_keeps_labels_and_adds_length():
    dataset, _ = prepare_dataset(cfg("builtin:demo", max_train_samples=30, max_eval_samples=9), seed=0)
    from rightsizer.models import train_tokenizer

    tokenizer = train_tokenizer("wordpiece", dataset["train"]["text"], 500)
    encoded = tokenize(dataset, tokenizer, 16, pair=False)
    assert set(encoded["train"].column_names) >= {"input_ids", "attention_mask", "label", "length", "id"}
    assert max(encoded["train"]["length"]) <= 16


@pytest.mark.parametrize("make, kwargs, message", [
    (lambda p: None, {}, "not found"),
    (lambda p: p.write_text("a,b\n1,2\n"), {"_name": "d.xlsx"}, "unsupported file type '.xlsx'"),
    (lambda p: frame().to_csv(p, index=False), {"text_column": "body", "label_column": "sentiment"},
     "column 'body' (data.text_column) not found in the data; columns: review, sentiment"),
    (lambda p: frame().to_csv(p, index=False), {"text_column": "review"}, "column 'label' (data.label_column) not found"),
    (lambda p: frame(classes=("only",)).to_csv(p, index=False), {"text_column": "review", "label_column": "sentiment"},
     "only one class"),
    (lambda p: pd.DataFrame({"text": ["", " "] * 5, "label": [1, 2] * 5}).to_csv(p, index=False), {}, "no usable rows"),
    (lambda p: pd.DataFrame({"text": [f"t{i}" for i in range(41)], "label": ["x"] * 40 + ["y"]}).to_csv(p, index=False), {},
     "stratified"),
    (lambda p: p.write_text(""), {}, "is empty"),
])
def test_bad_data(tmp_path, make, kwargs, message):
    name = kwargs.pop("_name", "d.csv")
    path = tmp_path / name
    make(path)
    with pytest.raises(UserError) as info:
        prepare_dataset(cfg(path, **kwargs), seed=0)
    assert message in str(info.value)


def test_source_schemes():
    with pytest.raises(UserError, match="unknown built-in data set 'dem'.*did you mean 'demo'"):
        prepare_dataset(cfg("builtin:dem"), seed=0)
    with pytest.raises(UserError, match="unsupported scheme"):
        prepare_dataset(cfg("ftp://host/file.csv"), seed=0)


def test_hf_offline_gives_one_line_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(UserError) as info:
        prepare_dataset(cfg("hf:surely_not_a_cached_dataset_xyz"), seed=0)
    assert "surely_not_a_cached_dataset_xyz" in str(info.value) and "\n" not in str(info.value)


def test_hf_loader_reads_a_local_dataset_script_dir(tmp_path):
    """The real datasets.load_dataset path, on a local directory of files (no hub)."""
    folder = tmp_path / "my_set"
    folder.mkdir()
    frame(60).to_csv(folder / "train.csv", index=False)
    frame(30, start=60).to_csv(folder / "test.csv", index=False)
    _, card = prepare_dataset(cfg(f"hf:{folder}", text_column="review", label_column="sentiment"), seed=0)
    assert card["rows"]["test"] == 30 and card["splits_from_source"] == ["test", "train"]


def test_prepare_stage_writes_card(tmp_path, tiny_config):
    from rightsizer.stages import prepare

    prepare.run(tiny_config(), tmp_path / "data")
    card = json.loads((tmp_path / "data" / "card.json").read_text())
    assert card["rows"]["train"] == 600
    assert (tmp_path / "data" / "summary.json").exists()
    assert not (tmp_path / ".data.partial").exists()


def test_leakage_counted_and_duplicates_of_training_texts_removed(tmp_path):
    train = frame(60)
    # validation: 4 exact copies of training texts, 3 that differ only in case/spacing/punctuation, 23 new;
    # 2 rows repeated inside validation (one exact, one normalised)
    validation = frame(30, start=100)
    validation.loc[0:3, "review"] = train["review"][0:4].to_numpy()
    validation.loc[4:6, "review"] = ["  TEXT number 4, about b!", "text  number 5 about c.", "Text Number 6 About A"]
    validation.loc[7, "review"] = validation.loc[8, "review"]
    validation.loc[9, "review"] = validation.loc[10, "review"].upper() + "?"
    # test: 5 exact copies of training texts, 2 normalised ones, 1 exact copy of a (new) validation text
    test = frame(30, start=200)
    test.loc[0:4, "review"] = train["review"][10:15].to_numpy()
    test.loc[5:6, "review"] = ["text number 20 about c ...", "TEXT NUMBER 21 ABOUT A"]
    test.loc[7, "review"] = validation.loc[20, "review"]
    for name, part in {"train": train, "validation": validation, "test": test}.items():
        part.to_csv(tmp_path / f"{name}.csv", index=False)
    options = {"text_column": "review", "label_column": "sentiment"}

    kept, card = prepare_dataset(cfg(tmp_path, dedupe=False, **options), seed=0)
    leakage = card["leakage"]
    assert leakage["removed"] == {"validation": 0, "test": 0} and card["rows"]["test"] == 30
    assert leakage["exact"]["validation_in_train"] == 4 and leakage["normalised"]["validation_in_train"] == 7
    assert leakage["exact"]["test_in_train"] == 5 and leakage["normalised"]["test_in_train"] == 7
    assert leakage["exact"]["test_in_validation"] == 1
    assert leakage["exact"]["within"] == {"train": 0, "validation": 1, "test": 0}
    assert leakage["normalised"]["within"] == {"train": 0, "validation": 2, "test": 0}

    deduped, card = prepare_dataset(cfg(tmp_path, **options), seed=0)
    assert card["leakage"]["removed"] == {"validation": 7, "test": 7}
    assert card["rows"] == {"train": 60, "validation": 23, "test": 23}
    assert card["leakage"]["normalised"]["test_in_train"] == 0 == card["leakage"]["normalised"]["validation_in_train"]
    seen = {" ".join(t.lower().replace(",", " ").replace(".", " ").replace("!", " ").split()) for t in train["review"]}
    assert not [t for t in deduped["test"]["text"] if " ".join(t.lower().replace(".", " ").split()) in seen]


def test_pair_leakage_counts_shared_questions_and_swapped_pairs():
    train = pd.DataFrame({"text": ["how do i fix a bike?", "why is the sky blue?"], "text_pair": ["how to repair a bike", "q"],
                          "label": [1, 0]})
    test = pd.DataFrame({"text": ["How to repair a bike", "why is the sky blue?", "new question"],
                         "text_pair": ["how do I fix a bike", "something else", "other question"], "label": [1, 0, 1]})
    from rightsizer.data import dedupe, leakage_report

    splits = {"train": train, "validation": test.iloc[2:], "test": test}
    report = leakage_report(splits, pair=True)
    assert report["exact"]["test_in_train"] == 0 and report["normalised"]["test_in_train"] == 1  # swapped order
    assert report["shared_members"] == {"validation": 0, "test": 2}
    kept, removed = dedupe(splits, pair=True)
    assert removed == {"validation": 0, "test": 1} and list(kept["test"]["text"]) == ["why is the sky blue?", "new question"]


def test_dedupe_that_empties_validation_is_a_user_error(tmp_path):
    frame(60).to_csv(tmp_path / "train.csv", index=False)
    frame(30).to_csv(tmp_path / "validation.csv", index=False)
    frame(30, start=60).to_csv(tmp_path / "test.csv", index=False)
    with pytest.raises(UserError, match="the validation split has no rows after removing 30 duplicate"):
        prepare_dataset(cfg(tmp_path, text_column="review", label_column="sentiment"), seed=0)


def test_builtin_unlabeled_text_is_for_the_transfer_set_only():
    """``builtin:demo-unlabeled``: more reviews from the demo's generator, text only, none repeating a labelled text;
    as the labelled source it is a one-line error."""
    from rightsizer.data import prepare_unlabeled

    data = DataConfig(source="builtin:demo", unlabeled_source="builtin:demo-unlabeled")
    dataset, _ = prepare_dataset(data, 42)
    unlabeled, counts = prepare_unlabeled(data, dataset)
    labelled = {t for split in dataset.values() for t in split["text"]}
    assert unlabeled.column_names == ["id", "text"] and counts["rows"] == len(unlabeled) > 11000
    assert not labelled & set(unlabeled["text"]) and len(set(unlabeled["text"])) == len(unlabeled)
    with pytest.raises(UserError, match="is text without labels; give it as data.unlabeled_source"):
        prepare_dataset(DataConfig(source="builtin:demo-unlabeled"), 42)
