"""Evaluation metrics for real/fake detection (label 1 = fake, probabilities are P(fake)).

Ranking metrics come from scikit-learn. Every value returned is a plain Python int/float or None (where a
metric is undefined, e.g. AUC with one class present), so results go straight into JSON.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve


@dataclass(frozen=True)
class MetricDefaults:
    """Operating points reported by `binary_metrics`."""

    threshold: float = 0.5
    # (key, target false-positive rate) pairs for the TPR@FPR columns.
    fpr_targets: tuple[tuple[str, float], ...] = (("tpr_at_fpr_1", 0.01), ("tpr_at_fpr_5", 0.05))


DEFAULTS = MetricDefaults()
# Keys of `binary_metrics` that are counts; `per_group_metrics` sums these instead of averaging.
COUNT_KEYS = ("n", "n_real", "n_fake")
_RESERVED_GROUPS = ("overall", "mean")
# Float slack when turning a target FPR into a count of allowed false positives (0.29 * 100 = 28.999…).
_FPR_EPS = 1e-9


def binary_metrics(
    labels: Sequence[int] | np.ndarray,
    probs: Sequence[float] | np.ndarray,
    threshold: float = DEFAULTS.threshold,
) -> dict:
    """Accuracy (overall and per class) at `threshold`, plus AP, ROC AUC and TPR at 1%/5% FPR.

    A sample is called fake when prob >= threshold. Ranking metrics are None when only one class is
    present; a per-class accuracy is None when that class is absent.
    """
    y, p = _validate(labels, probs)
    pred = p >= threshold
    real, fake = y == 0, y == 1
    out: dict = {
        "n": int(y.size),
        "n_real": int(real.sum()),
        "n_fake": int(fake.sum()),
        "accuracy": float(np.mean(pred == fake)),
        "real_accuracy": float(np.mean(~pred[real])) if real.any() else None,
        "fake_accuracy": float(np.mean(pred[fake])) if fake.any() else None,
    }
    both = bool(real.any() and fake.any())
    out["ap"] = float(average_precision_score(y, p)) if both else None
    out["auc"] = float(roc_auc_score(y, p)) if both else None
    roc = roc_curve(y, p, drop_intermediate=False) if both else None
    for key, target in DEFAULTS.fpr_targets:
        out[key] = _tpr_under(roc[0], roc[1], target) if roc is not None else None
    out["threshold"] = float(threshold)
    return out


def tpr_at_fpr(
    labels: Sequence[int] | np.ndarray, probs: Sequence[float] | np.ndarray, target_fpr: float
) -> float:
    """Largest TPR on the ROC curve whose FPR is <= `target_fpr` (no interpolation, so conservative).

    Needs both classes; raises ValueError otherwise.
    """
    y, p = _validate(labels, probs)
    if not (y == 0).any() or not (y == 1).any():
        raise ValueError("TPR at FPR needs both real and fake samples")
    # drop_intermediate=False: the dropped collinear points can be the best one under the FPR cap.
    fpr, tpr, _ = roc_curve(y, p, drop_intermediate=False)
    return _tpr_under(fpr, tpr, target_fpr)


def _tpr_under(fpr: np.ndarray, tpr: np.ndarray, target_fpr: float) -> float:
    # fpr[0] == 0 always (the threshold above every score), so the selection is never empty.
    return float(tpr[fpr <= target_fpr + _FPR_EPS].max())


def per_group_metrics(
    labels: Sequence[int] | np.ndarray,
    probs: Sequence[float] | np.ndarray,
    groups: Sequence[str] | np.ndarray,
    threshold: float = DEFAULTS.threshold,
) -> dict[str, dict]:
    """`binary_metrics` per group (e.g. generator), plus "overall" (pooled) and "mean" (macro average).

    In "mean" each rate is the unweighted mean over the groups where it is defined (None if it is defined
    for none), the counts are totals, and "n_groups" says how many groups were averaged.
    """
    y, p = _validate(labels, probs)
    g = np.asarray([str(x) for x in groups], dtype=object)
    if g.shape != y.shape:
        raise ValueError(f"groups has {g.size} entries but labels has {y.size}")
    names = sorted(set(g.tolist()))
    clash = [name for name in names if name in _RESERVED_GROUPS]
    if clash:
        raise ValueError(f"group names {clash} collide with the summary keys {_RESERVED_GROUPS}")
    out: dict[str, dict] = {name: binary_metrics(y[g == name], p[g == name], threshold) for name in names}
    mean: dict = {}
    for key in out[names[0]]:
        if key in COUNT_KEYS:
            mean[key] = int(sum(out[name][key] for name in names))
        elif key == "threshold":
            mean[key] = float(threshold)
        else:
            values = [out[name][key] for name in names if out[name][key] is not None]
            mean[key] = float(np.mean(values)) if values else None
    mean["n_groups"] = len(names)
    out["overall"] = binary_metrics(y, p, threshold)
    out["mean"] = mean
    return out


def threshold_at_fpr(real_probs: Sequence[float] | np.ndarray, target_fpr: float) -> float:
    """Lowest threshold that flags at most `target_fpr` of these real images (prob >= threshold).

    That is the (1 - target_fpr) upper quantile of the real scores, nudged one floating-point step up
    so ties at the quantile stay below it; the step is taken in the scores' own precision, so the
    guarantee also holds when float32 scores are compared with the threshold in float32.
    """
    if not 0.0 <= target_fpr <= 1.0:
        raise ValueError(f"target_fpr must be in [0, 1], not {target_fpr}")
    r = np.asarray(real_probs)
    if r.dtype.kind != "f":
        r = r.astype(np.float64)
    r = r.ravel()
    if r.size == 0:
        raise ValueError("threshold_at_fpr needs at least one real score")
    if not np.isfinite(r).all():
        raise ValueError("real scores contain NaN or infinity")
    allowed = math.floor(target_fpr * r.size + _FPR_EPS)
    if allowed >= r.size:
        return float(r.min())
    desc = np.sort(r)[::-1]
    # Everything strictly above the (allowed+1)-th largest score is at most `allowed` images.
    return float(np.nextafter(desc[allowed], np.array(np.inf, dtype=r.dtype)))


def _validate(
    labels: Sequence[int] | np.ndarray, probs: Sequence[float] | np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels).ravel()
    p = np.asarray(probs, dtype=np.float64).ravel()
    if y.size != p.size:
        raise ValueError(f"labels has {y.size} entries but probs has {p.size}")
    if y.size == 0:
        raise ValueError("no samples to score")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0 (real) or 1 (fake)")
    if not np.isfinite(p).all():
        raise ValueError("probabilities contain NaN or infinity")
    return y.astype(np.int64), p
