"""Bootstrap intervals and paired differences against a plain sklearn loop; chance levels by hand."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score

from rightsizer import stats


def known_confusion():
    """200 examples, 3 classes, a fixed confusion (rows true, columns predicted)."""
    confusion = [[50, 10, 5], [8, 40, 12], [2, 13, 60]]
    labels, predictions = [], []
    for true, row in enumerate(confusion):
        for predicted, count in enumerate(row):
            labels += [true] * count
            predictions += [predicted] * count
    return np.array(labels), np.array(predictions)


def reference_scores(labels, predictions, indices, metric):
    """The slow way: sklearn on each resample."""
    score = {"accuracy": lambda y, p: accuracy_score(y, p),
             "macro_f1": lambda y, p: f1_score(y, p, labels=[0, 1, 2], average="macro", zero_division=0)}[metric]
    return np.array([score(labels[row], predictions[row]) for row in indices])


@pytest.mark.parametrize("metric", ["accuracy", "macro_f1"])
def test_bootstrap_interval_matches_sklearn_on_the_same_resamples(metric):
    labels, predictions = known_confusion()
    intervals = stats.bootstrap_intervals(labels, predictions, 3, resamples=300, seed=5)
    reference = reference_scores(labels, predictions, stats.resample_indices(len(labels), 300, seed=5), metric)
    assert intervals[metric] == pytest.approx(list(np.percentile(reference, [2.5, 97.5])), abs=1e-6)
    point = accuracy_score(labels, predictions) if metric == "accuracy" else f1_score(labels, predictions, average="macro")
    low, high = intervals[metric]
    assert low < point < high and 0.05 < high - low < 0.2  # about ±2 standard errors on 200 rows


def test_macro_f1_of_a_class_never_seen_nor_predicted_is_zero_like_sklearn():
    labels, predictions = np.array([0, 0, 1, 1]), np.array([0, 1, 1, 1])
    matrices = stats.confusions(labels, predictions, 3, np.arange(4)[None, :])
    expected = f1_score(labels, predictions, labels=[0, 1, 2], average="macro", zero_division=0)
    assert stats.scores_from_confusions(matrices, "macro_f1")[0] == pytest.approx(expected)


def test_paired_difference_matches_a_loop_and_is_tighter_than_unpaired():
    labels, better = known_confusion()
    rng = np.random.default_rng(0)
    worse = better.copy()
    flip = rng.choice(len(labels), 12, replace=False)
    worse[flip] = (worse[flip] + 1) % 3  # the same model with 12 answers changed
    result = stats.paired_difference(labels, worse, better, 3, "accuracy", resamples=400, seed=1)
    indices = stats.resample_indices(len(labels), 400, seed=1)
    loop = reference_scores(labels, worse, indices, "accuracy") - reference_scores(labels, better, indices, "accuracy")
    assert result["difference"] == pytest.approx(accuracy_score(labels, worse) - accuracy_score(labels, better))
    assert result["interval"] == pytest.approx(list(np.percentile(loop, [2.5, 97.5])), abs=1e-6)
    assert result["interval"][1] < 0 < result["worse_share"]  # pairing sees a consistent small loss
    unpaired = [stats.bootstrap_intervals(labels, p, 3, seed=1)["accuracy"] for p in (worse, better)]
    assert unpaired[0][1] > unpaired[1][0]  # ... which separate intervals cannot tell apart


def test_chance_level_is_the_better_of_majority_and_stratified_guessing():
    balanced = np.repeat([0, 1, 2], 100)
    chance = stats.chance_level(balanced, balanced, 3)
    assert chance["macro_f1"] == pytest.approx(1 / 3) and chance["by"]["macro_f1"] == "stratified"
    assert chance["majority"]["macro_f1"] == pytest.approx((2 * (1 / 3) / (4 / 3)) / 3)
    skewed = np.array([0] * 90 + [1] * 10)
    chance = stats.chance_level(skewed, skewed, 2)
    assert chance["accuracy"] == pytest.approx(0.9) and chance["by"]["accuracy"] == "majority"
    assert chance["macro_f1"] == pytest.approx(0.5)  # stratified: mean of the class shares
    # the stratified figure is what random guessing scores on average
    rng = np.random.default_rng(0)
    guesses = rng.choice(2, size=(2000, 100), p=[0.9, 0.1])
    simulated = np.mean([f1_score(skewed, g, average="macro", zero_division=0) for g in guesses[:300]])
    assert simulated == pytest.approx(0.5, abs=0.03)
