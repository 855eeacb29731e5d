"""Kinds of images as units of training and calibration: balanced sampling weights and worst-domain thresholds.

A pooled false-positive rate hides the failure that matters most here: 4,000 old thumbnails at 0% and 150
stock portraits at 30% pool to a fine-looking average. So training can weight each kind of image (a
sample's `kind`: its manifest `domain`, else its generator) equally within its class, and calibration
picks the threshold that keeps *every* kind of real image at or below the target rate, recording which
kind set it. Plain numpy; no model code.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

BALANCE = ("none", "domain", "sqrt")


def balance_weights(labels: np.ndarray, kinds: Sequence[str], mode: str) -> np.ndarray | None:
    """Per-image sampling weights, mean 1 within each class (so the classes keep their shares).

    `domain`: every kind of a class carries the same total weight; `sqrt`: a kind's total weight grows with
    the square root of its size (a tempered balance: small kinds count more, without repeating a 20-image
    kind as often as a 1,000-image one). `none` → None (uniform)."""
    if mode not in BALANCE:
        raise ValueError(f"balance must be one of {', '.join(BALANCE)}, not {mode!r}")
    if mode == "none":
        return None
    labels = np.asarray(labels)
    kinds_arr = np.asarray(list(kinds), dtype=object)
    w = np.zeros(len(labels), dtype=np.float64)
    for c in np.unique(labels):
        in_class = labels == c
        for k in np.unique(kinds_arr[in_class]):
            m = in_class & (kinds_arr == k)
            n = int(m.sum())
            w[m] = (1.0 if mode == "domain" else np.sqrt(n)) / n
        w[in_class] *= in_class.sum() / w[in_class].sum()
    return w


def per_domain_shares(labels: Sequence[str], kinds: Sequence[str]) -> dict[str, dict]:
    """Per kind: its image count and the shares labelled `fake` and `uncertain`."""
    labels_arr = np.asarray(list(labels), dtype=object)
    kinds_arr = np.asarray(list(kinds), dtype=object)
    out = {}
    for k in sorted(set(kinds_arr.tolist())):
        lab = labels_arr[kinds_arr == k]
        out[k] = {"n": int(lab.size), "fake": float(np.mean(lab == "fake")),
                  "uncertain": float(np.mean(lab == "uncertain"))}
    return out


def worst_domain_threshold(probs: np.ndarray, kinds: Sequence[str], target_fpr: float,
                           min_images: int) -> tuple[float, str, list[str]]:
    """The lowest threshold keeping every kind with at least `min_images` reals at or below `target_fpr`,
    and never below the pooled one. Returns (threshold, the kind that sets it or "pooled", the kinds used)."""
    from causalclip_cli.training.metrics import threshold_at_fpr

    probs = np.asarray(probs)
    kinds_arr = np.asarray(list(kinds), dtype=object)
    best, by = float(threshold_at_fpr(probs, target_fpr)), "pooled"
    used = []
    for k in sorted(set(kinds_arr.tolist())):
        p = probs[kinds_arr == k]
        if p.size < min_images:
            continue
        used.append(k)
        t = float(threshold_at_fpr(p, target_fpr))
        if t > best:
            best, by = t, k
    return best, by, used


def choose_threshold(probs: np.ndarray, kinds: Sequence[str], target_fpr: float,
                     band_fpr: tuple[float, float] | None = None, *, per_domain: bool = False,
                     min_images: int = 15) -> tuple[float, tuple[float, float] | None, dict]:
    """Threshold, abstain band and a description of the rule from held-out real scores: the pooled quantile,
    or (per_domain) the worst domain's. The band runs from the looser FPR point up to the threshold."""
    from causalclip_cli.training.metrics import threshold_at_fpr

    def at(fpr: float) -> tuple[float, str, list[str]]:
        if per_domain:
            return worst_domain_threshold(probs, kinds, fpr, min_images)
        return float(threshold_at_fpr(probs, fpr)), "pooled", []

    thr, set_by, used = at(target_fpr)
    rule: dict = {"method": "quantile of held-out real images", "target_fpr": target_fpr,
                  "achieved_fpr": float(np.mean(np.asarray(probs) >= thr)), "n_real": int(len(probs))}
    if per_domain:
        rule.update(method="worst real domain: every domain at or below the target rate", set_by=set_by,
                    domains_used=used, min_domain_reals=min_images)
    band = None
    if band_fpr is not None:
        # Wider FPR → lower edge; narrower FPR → upper edge: scores between them are "uncertain".
        loose, strict = sorted(band_fpr, reverse=True)
        low, high = at(loose)[0], at(strict)[0]
        band = (min(low, thr), max(high, thr))
        rule["band_fpr"] = [loose, strict]
    return thr, band, rule
