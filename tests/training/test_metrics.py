"""Metrics against scikit-learn and against values worked out by hand."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from causalclip_cli.training.metrics import binary_metrics, per_group_metrics, threshold_at_fpr, tpr_at_fpr

KEYS = {
    "n",
    "n_real",
    "n_fake",
    "accuracy",
    "real_accuracy",
    "fake_accuracy",
    "ap",
    "auc",
    "tpr_at_fpr_1",
    "tpr_at_fpr_5",
    "threshold",
}


def _plain(obj: object) -> None:
    """Only builtin types all the way down (what json.dumps writes without a default hook)."""
    if isinstance(obj, dict):
        for v in obj.values():
            _plain(v)
    else:
        assert obj is None or type(obj) in (int, float), (obj, type(obj))


def test_perfect_separation():
    m = binary_metrics([0, 0, 0, 1, 1], np.array([0.1, 0.2, 0.3, 0.7, 0.9], dtype=np.float32))
    assert set(m) == KEYS
    assert m["ap"] == m["auc"] == 1.0
    assert m["tpr_at_fpr_1"] == m["tpr_at_fpr_5"] == 1.0
    assert m["accuracy"] == m["real_accuracy"] == m["fake_accuracy"] == 1.0
    assert (m["n"], m["n_real"], m["n_fake"], m["threshold"]) == (5, 3, 2, 0.5)
    _plain(m)
    json.dumps(m)


def test_accuracies_at_threshold_by_hand():
    labels = [0, 0, 0, 0, 1, 1, 1]
    probs = [0.1, 0.5, 0.7, 0.2, 0.5, 0.4, 0.9]  # prob == threshold counts as fake
    m = binary_metrics(labels, probs, threshold=0.5)
    assert m["real_accuracy"] == pytest.approx(2 / 4)
    assert m["fake_accuracy"] == pytest.approx(2 / 3)
    assert m["accuracy"] == pytest.approx(4 / 7)
    m = binary_metrics(labels, probs, threshold=0.8)
    assert m["real_accuracy"] == 1.0 and m["fake_accuracy"] == pytest.approx(1 / 3)


def test_tpr_at_fpr_by_hand():
    reals = [i / 100 for i in range(100)]  # 0.00 … 0.99: one real at 0.99, five at ≥ 0.95
    fakes = [0.999, 0.995, 0.985, 0.97, 0.9, 0.5, 0.3, 0.2, 0.1, 0.05]
    labels = [0] * 100 + [1] * 10
    m = binary_metrics(labels, reals + fakes)
    # FPR ≤ 1% allows the real at 0.99: threshold 0.985 catches three fakes.
    assert m["tpr_at_fpr_1"] == pytest.approx(0.3)
    # FPR ≤ 5% allows the reals 0.95…0.99: threshold 0.95 catches four fakes.
    assert m["tpr_at_fpr_5"] == pytest.approx(0.4)
    assert tpr_at_fpr(labels, reals + fakes, 0.0) == pytest.approx(0.2)


def test_tpr_at_fpr_keeps_collinear_roc_points():
    # Each score shared by one real and one fake: the ROC is a straight diagonal whose inner points
    # scikit-learn drops by default; the answer at FPR ≤ 0.3 is the point (0.25, 0.25).
    labels = [0, 1] * 4
    probs = [0.9, 0.9, 0.7, 0.7, 0.5, 0.5, 0.3, 0.3]
    assert tpr_at_fpr(labels, probs, 0.3) == 0.25
    assert tpr_at_fpr(labels, probs, 0.25) == 0.25
    assert tpr_at_fpr(labels, probs, 0.2) == 0.0


def test_against_sklearn_on_random_scores():
    rng = np.random.default_rng(7)
    labels = rng.integers(0, 2, 500)
    probs = np.clip(rng.normal(0.35 + 0.3 * labels, 0.2), 0, 1).round(2)  # rounding makes ties
    m = binary_metrics(labels, probs)
    assert m["ap"] == pytest.approx(average_precision_score(labels, probs))
    assert m["auc"] == pytest.approx(roc_auc_score(labels, probs))
    # TPR@FPR from first principles: best threshold among the scores that keeps FPR under the cap.
    for key, target in (("tpr_at_fpr_1", 0.01), ("tpr_at_fpr_5", 0.05)):
        best = 0.0
        for t in np.unique(probs):
            fpr = np.mean(probs[labels == 0] >= t)
            if fpr <= target:
                best = max(best, float(np.mean(probs[labels == 1] >= t)))
        assert m[key] == pytest.approx(best)
    _plain(m)


def test_one_class_gives_none_not_nan():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no UndefinedMetricWarning from scikit-learn either
        m = binary_metrics([1, 1, 1], [0.2, 0.6, 0.9])
        r = binary_metrics([0, 0], [0.2, 0.6])
    assert m["ap"] is None and m["auc"] is None and m["tpr_at_fpr_1"] is None and m["tpr_at_fpr_5"] is None
    assert m["accuracy"] == pytest.approx(2 / 3) and m["fake_accuracy"] == pytest.approx(2 / 3)
    assert m["real_accuracy"] is None
    assert r["accuracy"] == 0.5 and r["fake_accuracy"] is None
    json.dumps(m)
    with pytest.raises(ValueError):
        tpr_at_fpr([1, 1], [0.1, 0.2], 0.05)


def test_bad_inputs():
    with pytest.raises(ValueError):
        binary_metrics([0, 1], [0.5])
    with pytest.raises(ValueError):
        binary_metrics([], [])
    with pytest.raises(ValueError):
        binary_metrics([0, 2], [0.1, 0.2])
    with pytest.raises(ValueError):
        binary_metrics([0, 1], [0.1, float("nan")])


def test_per_group_metrics():
    labels = [0, 0, 1, 1, 0, 1, 1, 1]
    probs = [0.1, 0.6, 0.8, 0.9, 0.3, 0.2, 0.7, 0.4]
    groups = ["biggan", "biggan", "biggan", "biggan", "crn", "crn", "crn", "midjourney"]
    out = per_group_metrics(labels, probs, groups, threshold=0.5)
    assert list(out) == ["biggan", "crn", "midjourney", "overall", "mean"]
    assert out["overall"] == binary_metrics(labels, probs, 0.5)
    assert out["biggan"] == binary_metrics(labels[:4], probs[:4], 0.5)
    assert out["midjourney"]["auc"] is None  # fakes only
    mean = out["mean"]
    assert mean["n_groups"] == 3 and mean["n"] == 8 and mean["n_fake"] == 5
    # AUC: biggan 1.0, crn 0.5 (0.7 > 0.3 > 0.2), midjourney skipped.
    assert mean["auc"] == pytest.approx((1.0 + 0.5) / 2)
    assert mean["accuracy"] == pytest.approx((0.75 + 2 / 3 + 0.0) / 3)
    assert mean["real_accuracy"] == pytest.approx((0.5 + 1.0) / 2)
    _plain(out)
    json.dumps(out)
    with pytest.raises(ValueError):
        per_group_metrics([0, 1], [0.1, 0.9], ["mean", "a"])
    with pytest.raises(ValueError):
        per_group_metrics([0, 1], [0.1, 0.9], ["a"])


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_threshold_at_fpr_guarantee(dtype):
    rng = np.random.default_rng(0)
    for n in (1, 7, 100, 1000, 1999):
        for decimals in (None, 2):  # continuous scores and heavy ties
            r = rng.random(n)
            r = (r if decimals is None else r.round(decimals)).astype(dtype)
            for target in (0.0, 0.001, 0.01, 0.05, 0.1, 0.29, 0.5, 1.0):
                t = threshold_at_fpr(r, target)
                assert type(t) is float
                flagged = np.mean(r >= t)  # compared in the scores' own precision
                assert flagged <= target, (n, decimals, target)
                assert np.mean(r.astype(np.float64) >= t) <= target
                allowed = math.floor(target * n + 1e-9)
                # Tight: the next real score below the threshold would break the cap.
                below = r[r < dtype(t)]
                if below.size:
                    assert np.sum(r >= below.max()) > allowed


def test_threshold_at_fpr_by_hand():
    scores = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95]
    t = threshold_at_fpr(scores, 0.1)  # one of ten may pass: just above the second-highest score
    assert 0.9 < t <= 0.95
    assert threshold_at_fpr(scores, 0.0) > 0.95
    assert threshold_at_fpr([0.5, 0.5, 0.5, 0.1], 0.5) > 0.5  # ties cannot be split
    assert threshold_at_fpr(scores, 1.0) == 0.1
    with pytest.raises(ValueError):
        threshold_at_fpr([], 0.05)
    with pytest.raises(ValueError):
        threshold_at_fpr([0.5], 1.5)
