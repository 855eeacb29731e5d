"""Real photographs are not fakes (issue 18): false positives per kind of real photo, under recipes that differ
in how training weighs the kinds of images and how the decision is calibrated.

Every training recipe runs the release procedure in-process on cached features (resize recipe, final + blocks 4, 6, 8,
10, 12), with the release manifest's splits (benchmarks/results/release-manifest.csv: train / val / test,
a `domain` column naming the kind of each real image):
  1. train the head on `train` (early stopping on `val` AP), sampling weights by `balance`, optionally a
     second fit with the hardest `hard` share of training reals up-weighted x3;
  2. Platt scaling on `val`, threshold at 0.5% false positives on the `val` reals — pooled, or for every real
     domain with at least 15 `val` reals (rules `domain*`) — and the abstain band from the 5% point;
  3. with the rules `*+fam`, a familiarity reference (kNN distance to the training features, conformal p-value
     calibrated on `val`): a `fake` with p < ALPHA (0.002, as released; 0.01 in runs before the second round of
     2026-11-28) becomes `uncertain`.
Each fit is scored under all four decision rules (pooled, domain, pooled+fam, domain+fam).

Protocols (the `test` split is never read by F or D; `--test` reports it for the chosen recipe only):
  F  leave one real domain out: for each kind of real photo, its reals leave train and val; the fold's
     decision is applied to that domain's non-test reals. Fake / uncertain shares per held-out domain, mean,
     worst, and the share of the fold's val fakes labelled fake (a check that the rule still detects).
  FC leave one real domain out with its collection: as F, and the fakes gathered with those reals (the same
     collection: forensynths, multigen, modern, faces, people, cifake, web-sd) leave train and val too. F leaves
     those fakes in training with no reals of their content and format, so it measures the worst case of a kind
     of photo whose look-alike fakes were trained on; FC measures a kind of photo nobody trained on at all.
  D  old → new: train on the 2017–2022 sources only (same splits), calibrate on their val; AP per unseen
     generator, now including the three people-2026 generators (DALL·E 3, SDXL, Stable Cascade; against
     the people-2026 reals of the same splits), and fake / uncertain shares.
  E  leave one newer generator out (modern-2025, StyleGAN3, people-2026): train and calibrate on all the rest, every
     real included; AP and fake / uncertain shares of its images against the test-split reals of its collection.
  V  the release itself (all domains), per-domain shares on `val` (in-sample for the threshold).

    python benchmarks/real_domains.py --recipes base sqrt ... [--protocols F D V] [--test] --out FILE
    python benchmarks/real_domains.py --tables FILE ...        # markdown tables of finished runs (F)
    python benchmarks/real_domains.py --tables-fc FILE ...     # the same for FC
    python benchmarks/real_domains.py --seed-summary [--view half-q75] FILE ...  # mean ± sd over seeds
    python benchmarks/real_domains.py --taps release --aug-views 1 --journeys half-q75 --recipes split-aug \
        causal-aug ... --protocols F FC D E --out FILE     # issue 27: augmented training, laundered scoring

Recipes also vary the linear probe's inputs (`layers`), weight decay, erasure of the directions that separate the
kinds of training reals, and `groups`: probes trained apart on groups of layers, averaged (`ens-*`, released as
`train --probe-groups`), and `drop`: kinds left out of training and calibration (released as `train --exclude`).
Kinds in NOT_PHOTOS (CIFAR-10's thumbnails, the GTA V frames) are scored but left out of the means over photographs.
With `--patch-means`, layers -1 … -12 are the means of the patch tokens after blocks 1–12 (the package's numbering,
written `--layers pK`; `nogta-patch-split` is the fourth-round default).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from causalclip_cli.training.trainer import TrainConfig  # noqa: E402

HERE = Path(__file__).resolve().parent
MANIFEST = HERE / "results" / "release-manifest.csv"
ALL = tuple(range(13))
PATCH = tuple(-b for b in range(1, 13))  # -k: the mean of the patch tokens after block k (taps.py)
MID = (0, 4, 6, 8, 10, 12)
RELEASE_TAPS = (0, 4, 6, 8, 10, 12, -4, -6, -8, -10, -12)  # the fourth-round default's inputs
TRAIN = TrainConfig(epochs=40, batch_size=256, lr=1e-3, patience=8)  # as make_release.py
TARGET_FPR, BAND = 0.005, (0.05, 0.005)
MIN_DOMAIN = 15
OLD_PREFIXES = ("forensynths_", "multigen_", "web-sd", "cifake_")


@dataclass(frozen=True)
class Recipe:
    """How the head is trained; every decision rule (RULES) is then applied to the same fit."""

    name: str
    method: str = "causalclip"
    balance: str = "none"
    hard: float = 0.0
    head: tuple = ()  # CausalCLIP hyper-parameters overriding the package defaults, as (name, value) pairs
    layers: tuple = MID  # which cached taps the head reads (0 final embedding, k block k, -k its patch mean)
    wd: float = 0.0  # Adam weight decay
    erase: int = 0  # directions that separate the kinds of training reals, projected out before the head
    groups: tuple = ()  # linear probes trained apart on these groups of `layers` (in order), logits averaged
    drop: tuple = ()  # kinds (real domains or generators) left out of training and calibration; still scored
    extra: bool = False  # also train on the web-sd reals the manifest's cap left out (needs --extra-reals)
    standardize: bool = False  # z-score each normalised input dimension with the training rows' mean and sd
    hard_per_kind: bool = False  # `hard` is a share of each kind of training real, not of all of them
    augment: bool = False  # train on the clean view and the cached augmented views (--aug-views), one per epoch


# The fifth round's CausalCLIP head over RELEASE_TAPS (8,192 inputs), and its ablation: each component off.
CAUSAL = (("mask_hidden", 64), ("cls_hidden", 64), ("adv_hidden", 64))
ABLATION = {"": (), "-nomask": (("use_mask", False),), "-nohsic": (("lambda2", 0.0),),
            "-noadv": (("alpha", 0.0),), "-nodrops": (("beta", 0.0),)}
SMALL = (("mask_hidden", 32), ("cls_hidden", 32), ("adv_hidden", 32), ("dropout", 0.3))
LINEAR_CLASSIFIER = (("cls_hidden", 0), ("adv_hidden", 0))  # CausalCLIP's mask and losses, a linear classifier
RECIPES = {r.name: r for r in [
    Recipe("base"),  # the previous release's training on the new data
    Recipe("sqrt", balance="sqrt"),
    Recipe("domain", balance="domain"),
    Recipe("sqrt-hard", balance="sqrt", hard=0.1),
    Recipe("domain-hard", balance="domain", hard=0.1),
    Recipe("small-sqrt", balance="sqrt", head=SMALL),
    Recipe("lincls-sqrt", balance="sqrt", head=LINEAR_CLASSIFIER),
    Recipe("linear-base", method="linear"),
    Recipe("linear-sqrt", method="linear", balance="sqrt"),
    # Sweep of the linear probe's inputs and regularisation (issue 18, this round)
    Recipe("linear-final", method="linear", balance="sqrt", layers=(0,)),
    Recipe("linear-blocks", method="linear", balance="sqrt", layers=(4, 6, 8, 10, 12)),
    Recipe("linear-early", method="linear", balance="sqrt", layers=(4, 6, 8)),
    Recipe("linear-late", method="linear", balance="sqrt", layers=(0, 10, 12)),
    Recipe("linear-wd3", method="linear", balance="sqrt", wd=1e-3),
    Recipe("linear-wd2", method="linear", balance="sqrt", wd=1e-2),
    Recipe("linear-erase4", method="linear", balance="sqrt", erase=4),
    Recipe("linear-erase8", method="linear", balance="sqrt", erase=8),
    Recipe("linear-erase11", method="linear", balance="sqrt", erase=11),
    Recipe("ens-final-blocks", method="linear", balance="sqrt", groups=((0,), (4, 6, 8, 10, 12))),
    Recipe("ens-three", method="linear", balance="sqrt", groups=((0,), (4, 6, 8), (10, 12))),
    Recipe("ens-each", method="linear", balance="sqrt", groups=((0,), (4,), (6,), (8,), (10,), (12,))),
    Recipe("ens-three-hard", method="linear", balance="sqrt", hard=0.1, groups=((0,), (4, 6, 8), (10, 12))),
    Recipe("ens-three-domain", method="linear", balance="domain", groups=((0,), (4, 6, 8), (10, 12))),
    Recipe("ens-three-domain-hard", method="linear", balance="domain", hard=0.1, groups=((0,), (4, 6, 8), (10, 12))),
    # Third round: the GTA V frames (kind `game-renders`) are not photographs; train without them, or without
    # them and the two generators made to imitate them (CRN, IMLE).
    Recipe("ens-three-domain-norender", method="linear", balance="domain", groups=((0,), (4, 6, 8), (10, 12)),
           drop=("game-renders",)),
    Recipe("ens-three-domain-nogta", method="linear", balance="domain", groups=((0,), (4, 6, 8), (10, 12)),
           drop=("game-renders", "forensynths_crn", "forensynths_imle")),
    # Reals balanced by kind, fakes by the square root of their source's size or not at all (`balance` "R/F")
    Recipe("nogta-domain-sqrt", method="linear", balance="domain/sqrt", groups=((0,), (4, 6, 8), (10, 12)),
           drop=("game-renders", "forensynths_crn", "forensynths_imle")),
    Recipe("nogta-domain-none", method="linear", balance="domain/none", groups=((0,), (4, 6, 8), (10, 12)),
           drop=("game-renders", "forensynths_crn", "forensynths_imle")),
    Recipe("sqrt-nogta", balance="sqrt", drop=("game-renders", "forensynths_crn", "forensynths_imle")),  # CausalCLIP
    Recipe("nogta-coco", method="linear", balance="domain", groups=((0,), (4, 6, 8), (10, 12)), extra=True,
           drop=("game-renders", "forensynths_crn", "forensynths_imle")),
    Recipe("nogta-hard", method="linear", balance="domain", hard=0.1, groups=((0,), (4, 6, 8), (10, 12)),
           drop=("game-renders", "forensynths_crn", "forensynths_imle")),
    Recipe("nogta-hard05", method="linear", balance="domain", hard=0.05, groups=((0,), (4, 6, 8), (10, 12)),
           drop=("game-renders", "forensynths_crn", "forensynths_imle")),
    # Fourth round (2026-11-28): the probes' inputs. Each normalised dimension z-scored on the training rows (a
    # preconditioner: the probe stays linear in the features), and the early blocks the release never reads.
    Recipe("nogta-z", method="linear", balance="domain", groups=((0,), (4, 6, 8), (10, 12)), standardize=True,
           drop=("game-renders", "forensynths_crn", "forensynths_imle")),
    Recipe("nogta-early", method="linear", balance="domain", groups=((0,), (1, 2, 3), (4, 6, 8), (10, 12)),
           layers=(0, 1, 2, 3, 4, 6, 8, 10, 12), drop=("game-renders", "forensynths_crn", "forensynths_imle")),
    Recipe("nogta-every", method="linear", balance="domain", groups=((0,), (1, 2, 3, 4), (5, 6, 7, 8), (9, 10, 11, 12)),
           layers=ALL, drop=("game-renders", "forensynths_crn", "forensynths_imle")),
    # Patch-token means (needs --patch-means): a probe on how the image's texture looks to the tower everywhere.
    Recipe("nogta-patch", method="linear", balance="domain",
           groups=((0,), (4, 6, 8), (10, 12), (-4, -6, -8, -10, -12)),
           layers=(0, 4, 6, 8, 10, 12, -4, -6, -8, -10, -12),
           drop=("game-renders", "forensynths_crn", "forensynths_imle")),
    Recipe("nogta-patch-split", method="linear", balance="domain",
           groups=((0,), (4, 6, 8), (10, 12), (-4, -6, -8), (-10, -12)),
           layers=(0, 4, 6, 8, 10, 12, -4, -6, -8, -10, -12),
           drop=("game-renders", "forensynths_crn", "forensynths_imle")),
    Recipe("patch-only", method="linear", balance="domain", groups=((-4, -6, -8), (-10, -12)),
           layers=(-4, -6, -8, -10, -12), drop=("game-renders", "forensynths_crn", "forensynths_imle")),
    Recipe("nogta-hardk", method="linear", balance="domain", hard=0.1, hard_per_kind=True,
           groups=((0,), (4, 6, 8), (10, 12)), drop=("game-renders", "forensynths_crn", "forensynths_imle")),
    Recipe("nogta-hardk05", method="linear", balance="domain", hard=0.05, hard_per_kind=True,
           groups=((0,), (4, 6, 8), (10, 12)), drop=("game-renders", "forensynths_crn", "forensynths_imle")),
    # Fifth round (issue 27, 2026-12-02): augmented training views, and CausalCLIP over the same inputs, with
    # each of its components switched off in turn (the ablation). All on RELEASE_TAPS (--taps release).
    Recipe("split-aug", method="linear", balance="domain", augment=True,
           groups=((0,), (4, 6, 8), (10, 12), (-4, -6, -8), (-10, -12)),
           layers=RELEASE_TAPS, drop=("game-renders", "forensynths_crn", "forensynths_imle")),
    *[Recipe(f"causal-aug{suffix}", balance="domain", augment=True, layers=RELEASE_TAPS, head=CAUSAL + off,
             drop=("game-renders", "forensynths_crn", "forensynths_imle")) for suffix, off in ABLATION.items()],
    Recipe("nogta-every-z", method="linear", balance="domain",
           groups=((0,), (1, 2, 3, 4), (5, 6, 7, 8), (9, 10, 11, 12)), layers=ALL, standardize=True,
           drop=("game-renders", "forensynths_crn", "forensynths_imle")),
]}
# Kinds of real image that are scored and reported but left out of every real-*photograph* mean: CIFAR-10's 32-px
# thumbnails, and the GTA V frames that CNNDetection pairs with CRN and IMLE (computer renders).
NOT_PHOTOS = ("cifar10", "game-renders")
# (threshold and band by the worst real domain?, familiarity abstention?)
RULES = {"pooled": (False, False), "domain": (True, False), "pooled+fam": (False, True), "domain+fam": (True, True)}
# --real-alphas adds rules `domain+fam+realA`: a `fake` on an image unlike every training *real* (a familiarity
# reference of the training reals alone, p < A on the val reals) also becomes `uncertain` (exploratory).
REAL_ALPHA: dict[str, float] = {}
ALPHA = 0.002  # as released (make_release.py); runs before 2026-11-28 (second round) used 0.01


@dataclass
class Data:
    x: np.ndarray  # [n, 9728] all 13 cached taps (final embedding, blocks 1–12), then any patch means (PATCH)
    y: np.ndarray
    split: np.ndarray
    kind: np.ndarray  # domain of reals, generator of fakes
    generator: np.ndarray
    paths: list[str]
    extra: np.ndarray | None = None  # training-only rows outside the manifest (--extra-reals); never evaluated
    order: tuple = ALL + PATCH  # the taps of x's columns, in order (--taps release: RELEASE_TAPS only)
    aug: np.ndarray | None = None  # [n, views, d] augmented views of the training rows (clean copies elsewhere)
    views: dict | None = None  # what the protocols score: {"clean": x, journey: x laundered}, same rows and columns

    def scored(self) -> dict:
        return self.views or {"clean": self.x}


def _extra(d: Data) -> np.ndarray:
    return d.extra if d.extra is not None else np.zeros(len(d.y), dtype=bool)


def extra_reals() -> list:
    """The web-sd reals (COCO and ImageNet photographs, kind coco-imagenet) that the manifest's per-class cap
    left out: candidates for more training reals of the kind that sets the threshold."""
    from make_release import DATA
    from sources import _samples

    from causalclip_cli.inputs.datasets import discover_dataset

    rows = list(csv.DictReader(MANIFEST.open()))
    used = {str((MANIFEST.parent / r["path"]).resolve()) for r in rows}
    capped = {str(Path(s.path).resolve()) for name, _f, ss in _samples(DATA) if name == "web-sd" for s in ss}
    return [s for s in discover_dataset(DATA / "web-sd").samples
            if s.label == 0 and str(Path(s.path).resolve()) not in used | capped]


def manifest_samples() -> list:
    """The release manifest's rows as labelled samples (path, label, generator, split, kind)."""
    from causalclip_cli.inputs.datasets import Sample

    rows = list(csv.DictReader(MANIFEST.open()))
    return [Sample(str((MANIFEST.parent / r["path"]).resolve()), int(r["label"]), r["generator"], r["split"],
                   r["domain"]) for r in rows]


def load_release_taps(aug_views: int = 0, journeys: tuple[str, ...] = ()) -> Data:
    """The manifest with RELEASE_TAPS only (one cache entry per view: extract_views.py --only issue27), its
    augmented training views and its laundered journeys (every split: release_eval.py embedded the test split's)."""
    from sources import embed_variant

    samples = manifest_samples()

    def embed(ss: list, transform: str | None, label: str) -> np.ndarray:
        x, _y, paths = embed_variant(ss, "resize", 1, RELEASE_TAPS, transform=transform, label=label)
        if paths != [s.path for s in ss]:
            raise SystemExit(f"{label}: {len(ss) - len(paths)} manifest images could not be read")
        return x.astype(np.float32)

    x = embed(samples, None, "release manifest")
    train = np.array([s.split == "train" for s in samples])
    aug = None
    if aug_views:
        aug = np.repeat(x[:, None], aug_views, axis=1)
        tr = [s for s in samples if s.split == "train"]
        for k in range(1, aug_views + 1):
            aug[train, k - 1] = embed(tr, f"degrade{k}", f"augmented view {k}")
    views = {"clean": x, **{j: embed(samples, f"launder-{j}", f"journey {j}") for j in journeys}}
    return Data(x, np.array([s.label for s in samples]), np.array([s.split for s in samples]),
                np.array([s.kind for s in samples], dtype=object),
                np.array([s.generator for s in samples], dtype=object), [s.path for s in samples],
                order=RELEASE_TAPS, aug=aug, views=views)


def load(with_extra: bool = False, with_patch: bool = False) -> Data:
    from sources import embed_variant

    from causalclip_cli.inputs.datasets import Sample

    samples = manifest_samples()
    x, y, paths = embed_variant(samples, "resize", 1, ALL, label="release manifest")
    if len(paths) != len(samples):
        raise SystemExit(f"{len(samples) - len(paths)} manifest images could not be read")
    n = len(samples)
    if with_extra:
        more = [Sample(s.path, 0, "web-sd", "train", "coco-imagenet") for s in extra_reals()]
        xe, _ye, pe = embed_variant(more, "resize", 1, ALL, label="extra web-sd reals")
        if len(pe) != len(more):
            raise SystemExit(f"{len(more) - len(pe)} extra reals could not be read")
        samples, x, y, paths = samples + more, np.concatenate([x, xe]), np.concatenate([y, np.zeros(len(more))]), \
            paths + pe
    if with_patch and with_extra:
        raise SystemExit("--patch-means and --extra-reals do not combine (the extra reals have no patch means)")
    if with_patch:  # after the 13 taps, so their columns stay where they were
        xp, _yp, pp = embed_variant(samples, "resize", 1, PATCH, label="patch means")
        if pp != paths:
            raise SystemExit("patch means are missing for some manifest images")
        x = np.concatenate([x, xp], axis=1)
    kinds = np.array([s.kind for s in samples], dtype=object)
    gens = np.array([s.generator for s in samples], dtype=object)
    return Data(x.astype(np.float32), np.asarray(y).astype(int), np.array([s.split for s in samples]), kinds, gens,
                paths, np.arange(len(samples)) >= n)


def _segments(layers: tuple = ALL) -> list[int]:
    return [512 if k == 0 else 768 for k in layers]


def _columns(layers: tuple, order: tuple = ALL + PATCH) -> np.ndarray:
    """Columns of Data.x (taps in `order`, concatenated) that hold `layers`."""
    starts = np.cumsum([0, *_segments(order)])
    return np.concatenate([np.arange(starts[order.index(k)], starts[order.index(k) + 1]) for k in layers])


def _group_average(r: Recipe, xt: np.ndarray, yt: np.ndarray, xv: np.ndarray, yv: np.ndarray, cfg: TrainConfig,
                   w: np.ndarray | None):  # noqa: ANN202
    """`train --probe-groups`: one linear probe per group of layers, trained apart, averaged into one linear head."""
    from causalclip_cli.training.trainer import train_probe_groups

    assert [k for g in r.groups for k in g] == list(r.layers), "groups must partition layers in order"
    return train_probe_groups([len(g) for g in r.groups], _segments(r.layers), xt, yt, xv, yv, cfg, weights=w)


def _weights(y: np.ndarray, kinds: np.ndarray, balance: str) -> np.ndarray | None:
    """`balance_weights`, or with "R/F" one mode for the reals and another for the fakes."""
    from causalclip_cli.training.domains import balance_weights

    if "/" not in balance:
        return balance_weights(y, kinds, balance)
    w = np.ones(len(y))
    for label, mode in zip((0, 1), balance.split("/"), strict=True):
        part = balance_weights(y, kinds, mode)
        if part is not None:
            w[y == label] = part[y == label]
    return w


def _domain_directions(z: np.ndarray, kinds: np.ndarray, k: int) -> np.ndarray:
    """The k directions along which the kinds of real photo differ most (principal axes of their means), [k, dim]."""
    means = np.stack([z[kinds == c].mean(0) for c in sorted(set(kinds.tolist()))])
    means -= means.mean(0)
    return np.linalg.svd(means, full_matrices=False)[2][:k]


def _hard_reals_per_kind(head, x: np.ndarray, y: np.ndarray, kinds: np.ndarray, share: float) -> np.ndarray:
    """The training reals a first fit scores highest, the top `share` of each kind of real: the emphasis spreads over
    every kind instead of going to the kinds whose reals score highest overall."""
    from causalclip_cli.training.experiment import _hard_reals

    out = []
    for k in sorted(set(kinds[y == 0].tolist())):
        rows = np.flatnonzero(kinds == k)
        out.append(rows[_hard_reals(head, x[rows], y[rows], share)])
    return np.concatenate(out)


class Fitted:
    """A head + its calibrated decision, as the release procedure makes them."""

    def __init__(self, d: Data, train: np.ndarray, val: np.ndarray, r: Recipe, seed: int) -> None:
        import torch

        from causalclip_cli.model.checkpoint import Decision
        from causalclip_cli.model.familiarity import Familiarity
        from causalclip_cli.model.heads import CausalConfig
        from causalclip_cli.training.domains import choose_threshold
        from causalclip_cli.training.experiment import _hard_reals, fit_platt
        from causalclip_cli.training.trainer import train_head

        if r.drop:
            train, val = (i[~np.isin(d.kind[i], r.drop)] for i in (train, val))
        if d.extra is not None and not r.extra:
            train = train[~d.extra[train]]
        causal = {**asdict(CausalConfig()), **dict(r.head)} if r.method == "causalclip" else {}
        hc = {**causal, "segments": _segments(r.layers), "combine": "concat"}
        cfg = TrainConfig(**{**asdict(TRAIN), "seed": seed, "weight_decay": r.wd})
        self.cols, self.erase, self.z = _columns(r.layers, d.order), None, None
        self.segs = tuple(_segments(r.layers))
        yt = d.y[train]
        if r.standardize and r.erase:
            raise ValueError(f"{r.name}: standardize and erase do not combine (the erased directions are unscaled)")
        if r.standardize or r.erase:
            from causalclip_cli.model.heads import normalize_features

            z = normalize_features(torch.as_tensor(d.x[train][:, self.cols]), self.segs).numpy()
            if r.standardize:
                self.z = (z.mean(0), z.std(0) + 1e-6)
            else:
                self.erase = _domain_directions(z[yt == 0], d.kind[train][yt == 0], r.erase)
        xt, xv, yv = self.inputs(d.x[train]), self.inputs(d.x[val]), d.y[val]
        fit_x = xt
        if r.augment:
            if d.aug is None or r.standardize or r.erase or r.hard:
                raise SystemExit(f"{r.name}: needs --aug-views, and does not combine with standardize/erase/hard")
            fit_x = np.concatenate([xt[:, None], d.aug[train][..., self.cols]], axis=1)
        w = _weights(yt, d.kind[train], r.balance)
        res = (train_head(r.method, hc, fit_x, yt, xv, yv, cfg, weights=w) if not r.groups
               else _group_average(r, fit_x, yt, xv, yv, cfg, w))
        if r.hard:
            hard = (_hard_reals(res.head, xt, yt, r.hard) if not r.hard_per_kind
                    else _hard_reals_per_kind(res.head, xt, yt, d.kind[train], r.hard))
            w = np.ones(len(yt)) if w is None else w.copy()
            w[hard] *= 3.0
            res = (train_head(r.method, hc, xt, yt, xv, yv, cfg, weights=w) if not r.groups
                   else _group_average(r, xt, yt, xv, yv, cfg, w))
        self.head = res.head.eval()
        with torch.inference_mode():
            self.a, self.b = fit_platt(self.head(torch.as_tensor(xv)).numpy(), yv)
        pv = self.probs(xv, ready=True)
        self.fam = Familiarity.fit(xt).calibrate(xv)
        self.fam_real = Familiarity.fit(xt[yt == 0]).calibrate(xv[yv == 0]) if REAL_ALPHA else None
        self.decisions = {}
        for name, (per_domain, fam) in RULES.items():
            thr, band, rule = choose_threshold(pv[yv == 0], d.kind[val][yv == 0], TARGET_FPR, BAND,
                                               per_domain=per_domain, min_images=MIN_DOMAIN)
            self.decisions[name] = Decision(thr, band, rule, ALPHA if fam else None)
        self.epochs = res.best_epoch

    def inputs(self, x: np.ndarray) -> np.ndarray:
        x = x[:, self.cols]
        if self.erase is None and self.z is None:
            return x
        import torch

        from causalclip_cli.model.heads import normalize_features

        z = normalize_features(torch.as_tensor(x), self.segs).numpy()
        if self.z is not None:
            # The head normalises each segment again; z-scored segments already have norms near sqrt(width).
            z = (z - self.z[0]) / self.z[1]
        if self.erase is not None:
            z = z - (z @ self.erase.T) @ self.erase
        return z.astype(np.float32)

    def probs(self, x: np.ndarray, ready: bool = False) -> np.ndarray:
        import torch

        x = x if ready else self.inputs(x)
        with torch.inference_mode():
            return torch.sigmoid(self.a * self.head(torch.as_tensor(x)) + self.b).numpy()

    def labels(self, x: np.ndarray) -> tuple[np.ndarray, dict[str, tuple[np.ndarray, np.ndarray]]]:
        """(probabilities, {rule: (labels, reasons)})."""
        x = self.inputs(x)
        p, q = self.probs(x, ready=True), self.fam.p_values(x)
        out = {}
        qr = self.fam_real.p_values(x) if self.fam_real is not None else None
        for name, dec in self.decisions.items():
            v = [dec.verdict(float(a), float(b)) for a, b in zip(p, q, strict=True)]
            lab, why = np.array([o[0] for o in v]), np.array([o[1] or "" for o in v], dtype=object)
            if name in REAL_ALPHA:
                far = (lab == "fake") & (qr < REAL_ALPHA[name])
                lab, why = np.where(far, "uncertain", lab), np.where(far, "unfamiliar", why)
            out[name] = (lab, why)
        return p, out


def _shares(labels: np.ndarray, reasons: np.ndarray) -> dict:
    n = len(labels)
    return {"n": n, "fake": float(np.mean(labels == "fake")) if n else None,
            "uncertain": float(np.mean(labels == "uncertain")) if n else None,
            "unfamiliar": float(np.mean(reasons == "unfamiliar")) if n else None}


def real_domains(d: Data) -> list[str]:
    return sorted(set(d.kind[d.y == 0].tolist()))


def collection(generator: str) -> str:
    """The collection a manifest row came from (forensynths, multigen, modern, faces, people, photos, cifake, web-sd):
    its reals and the fakes gathered to match them."""
    return generator.split("_", 1)[0]


def protocol_f(d: Data, r: Recipe, seed: int, whole_collection: bool = False) -> dict:
    """F: each kind of real photo leaves train and val. With `whole_collection` (FC), the fakes of the collections
    that kind came from leave too, so no fakes of that content and format remain without their reals.
    Returns {view: result}: each fold's head, calibrated on clean val, scores every view in `d.scored()`."""
    views = d.scored()
    outs: dict = {v: {} for v in views}
    coll = np.array([collection(g) for g in d.generator])
    for dom in real_domains(d):
        held = (d.y == 0) & (d.kind == dom)
        if whole_collection:
            held |= (d.y == 1) & np.isin(coll, sorted(set(coll[held].tolist())))
        train = np.flatnonzero((d.split == "train") & ~held)
        val = np.flatnonzero((d.split == "val") & ~held)
        ev = np.flatnonzero(held & (d.y == 0) & (d.split != "test") & ~_extra(d))
        vf = np.flatnonzero((d.split == "val") & (d.y == 1) & ~held)
        t = time.time()
        f = Fitted(d, train, val, r, seed)
        for v, x in views.items():
            _, lab = f.labels(x[ev])
            _, vlab = f.labels(x[vf])
            out = outs[v]
            out[dom] = {rule: {**_shares(*lab[rule]),
                               "val_fakes_labelled_fake": float(np.mean(vlab[rule][0] == "fake")),
                               "threshold": f.decisions[rule].threshold,
                               "set_by": f.decisions[rule].calibration.get("set_by", "pooled")} for rule in RULES}
            out[dom]["seconds"] = round(time.time() - t, 1)
            out[dom]["fakes_held_out"] = int((held & (d.y == 1)).sum())
            print(f"  F {r.name} seed {seed} [{v}] without {dom}: " + ", ".join(
                f"{rule} {out[dom][rule]['fake']:.3f}/{out[dom][rule]['uncertain']:.3f}" for rule in RULES),
                file=sys.stderr, flush=True)
    for v, out in outs.items():
        out["_summary"] = _f_summary(out)
        print(f"  F {r.name} seed {seed} [{v}]: {json.dumps(out['_summary'])}", file=sys.stderr, flush=True)
    return outs


def _f_summary(out: dict) -> dict:
    summary = {}
    doms = [k for k in out if not k.startswith("_")]
    for rule in RULES:
        fakes = {k: out[k][rule]["fake"] for k in doms}
        unc = [out[k][rule]["uncertain"] for k in doms]
        summary[rule] = {"mean_fake": float(np.mean(list(fakes.values()))), "worst_fake": max(fakes.values()),
                         "worst_domain": max(fakes, key=fakes.get), "mean_uncertain": float(np.mean(unc)),
                         "worst_uncertain": float(np.max(unc)),
                         "mean_val_fakes_labelled_fake": float(np.mean([out[k][rule]["val_fakes_labelled_fake"]
                                                                        for k in doms]))}
    return summary


def _ap(y: np.ndarray, p: np.ndarray) -> float | None:
    from causalclip_cli.training.metrics import binary_metrics

    return binary_metrics(y, p, 0.5)["ap"] if 0 < y.sum() < len(y) else None


def _generator_scores(f: Fitted, d: Data, idx: np.ndarray, x: np.ndarray | None = None) -> dict:
    """AP of one generator's images against reals (`idx` holds both), and per rule the shares of its images
    labelled fake / uncertain and of the reals labelled fake / uncertain (scored on `x`, default the clean view)."""
    p, lab = f.labels((d.x if x is None else x)[idx])
    y = d.y[idx]

    def share(rule: str, label: int, verdict: str) -> float:
        return float(np.mean(lab[rule][0][y == label] == verdict))

    return {"ap": _ap(y, p), "n_real": int((y == 0).sum()), "n_fake": int(y.sum()),
            **{rule: {"fakes_labelled_fake": share(rule, 1, "fake"), "fakes_uncertain": share(rule, 1, "uncertain"),
                      "reals_labelled_fake": share(rule, 0, "fake"), "reals_uncertain": share(rule, 0, "uncertain")}
               for rule in RULES}}


def protocol_d(d: Data, r: Recipe, seed: int) -> dict:
    """Old → new: train and calibrate on 2017–2022 sources, test every newer generator against the reals of its
    own collection (modern-2025 camera photos, faces-2025 reals, people-2026 reals), all splits. {view: result}"""
    old = np.array([g.startswith(OLD_PREFIXES) for g in d.generator])
    f = Fitted(d, np.flatnonzero(old & (d.split == "train")), np.flatnonzero(old & (d.split == "val")), r, seed)
    outs: dict = {v: {} for v in d.scored()}
    collections = {"modern": lambda g: g.startswith("modern_"), "faces": lambda g: g.startswith("faces_"),
                   "people": lambda g: g.startswith("people_")}
    for coll, member in collections.items():
        in_coll = np.array([member(g) for g in d.generator])
        reals = np.flatnonzero(in_coll & (d.y == 0))
        for gen in sorted(set(d.generator[in_coll & (d.y == 1)].tolist())):
            fk = np.flatnonzero(in_coll & (d.y == 1) & (d.generator == gen))
            idx = np.concatenate([reals, fk]) if coll == "people" else np.flatnonzero(in_coll & (d.generator == gen))
            for v, x in d.scored().items():
                outs[v][gen] = _generator_scores(f, d, idx, x)
    for v, out in outs.items():
        gens = list(out)
        out["_summary"] = {"mean_ap": float(np.mean([out[g]["ap"] for g in gens])),
                           "mean_ap_people": float(np.mean([out[g]["ap"] for g in gens if g.startswith("people_")])),
                           **_gen_summary(out, gens)}
        print(f"  D {r.name} seed {seed} [{v}]: {out['_summary']}", file=sys.stderr, flush=True)
    return outs


def _gen_summary(out: dict, gens: list[str]) -> dict:
    return {rule: {"mean_fakes_labelled_fake": float(np.mean([out[g][rule]["fakes_labelled_fake"] for g in gens])),
                   "mean_fakes_uncertain": float(np.mean([out[g][rule]["fakes_uncertain"] for g in gens])),
                   "max_reals_labelled_fake": float(np.max([out[g][rule]["reals_labelled_fake"] for g in gens]))}
            for rule in RULES}


def protocol_e(d: Data, r: Recipe, seed: int) -> dict:
    """E with the release data: leave one newer generator out (modern-2025, StyleGAN3, people-2026), train and
    calibrate on everything else — every real included — and score its images, all splits, against the test-split
    reals of its collection (never trained on). A generator of today's era that nobody trained on. {view: result}"""
    outs: dict = {v: {} for v in d.scored()}
    newer = ("modern_", "faces_", "people_")
    for gen in sorted({g for g, y in zip(d.generator, d.y, strict=True) if y == 1 and g.startswith(newer)}):
        held = (d.y == 1) & (d.generator == gen)
        f = Fitted(d, np.flatnonzero((d.split == "train") & ~held), np.flatnonzero((d.split == "val") & ~held), r, seed)
        reals = (d.y == 0) & (d.split == "test") & np.array([collection(g) == collection(gen) for g in d.generator])
        idx = np.flatnonzero(held | reals)
        for v, x in d.scored().items():
            outs[v][gen] = res = _generator_scores(f, d, idx, x)
            print(f"  E {r.name} seed {seed} [{v}] without {gen}: AP {res['ap']:.3f}, fake "
                  f"{res['domain+fam']['fakes_labelled_fake']:.3f}", file=sys.stderr, flush=True)
    for v, out in outs.items():
        gens = list(out)
        out["_summary"] = {"mean_ap": float(np.mean([out[g]["ap"] for g in gens])), **_gen_summary(out, gens)}
        print(f"  E {r.name} seed {seed} [{v}]: {out['_summary']}", file=sys.stderr, flush=True)
    return outs


def release_view(d: Data, r: Recipe, seed: int, splits: list[str]) -> dict:
    """The release (train on all train, calibrate on val), per real domain and per generator on each split."""
    f = Fitted(d, np.flatnonzero(d.split == "train"), np.flatnonzero(d.split == "val"), r, seed)
    return {split: _view(d, f, split) for split in splits}


def _view(d: Data, f: Fitted, split: str) -> dict:
    idx = np.flatnonzero(d.split == split)
    p, labs = f.labels(d.x[idx])
    y, kind, gen = d.y[idx], d.kind[idx], d.generator[idx]
    out = {"rules": {}, "ap": {}}
    reals, fakes = y == 0, y == 1
    for rule, (lab, why) in labs.items():
        dec = f.decisions[rule]
        row = {"threshold": dec.threshold, "band": dec.uncertain, "set_by": dec.calibration.get("set_by", "pooled"),
               "reals": {}, "fakes": {}}
        for k in sorted(set(kind[reals].tolist())):
            m = reals & (kind == k)
            row["reals"][k] = _shares(lab[m], why[m])
        for g in sorted(set(gen[fakes].tolist())):
            m = fakes & (gen == g)
            row["fakes"][g] = _shares(lab[m], why[m])
        row["all"] = {"reals": _shares(lab[reals], why[reals]), "fakes": _shares(lab[fakes], why[fakes])}
        out["rules"][rule] = row
    for g in sorted(set(gen[fakes].tolist())):
        src = gen == g
        out["ap"][g] = _ap(y[src], p[src]) if (y[src] == 0).any() else None
    people_reals = reals & np.array([k in ("portraits-pixabay", "studio-portraits", "lfw") for k in kind])
    people_fakes = fakes & np.array([g.startswith("people_") for g in gen])
    both = people_reals | people_fakes
    out["ap"]["people-2026 (all reals vs all generated)"] = _ap(y[both], p[both])
    aps = [v for v in out["ap"].values() if v is not None]
    out["mean_ap"] = float(np.mean(aps))
    return out


def _pair_labels(fc: Fitted, fl: Fitted, x: np.ndarray) -> np.ndarray:
    """Two-head rule (exploratory): `fake` when the CausalCLIP head says `fake` and the linear probe does not say
    `real`; `real` when both say `real`; `uncertain` otherwise. Worst-domain rule, no familiarity."""
    _, lc = fc.labels(x)
    _, ll = fl.labels(x)
    c, lin = lc["domain"][0], ll["domain"][0]
    return np.where((c == "fake") & (lin != "real"), "fake", np.where((c == "real") & (lin == "real"), "real",
                                                                     "uncertain"))


def protocol_pair(d: Data, seed: int) -> dict:
    """Protocols F and D for the two-head rule of `causalclip-vitb16` (sqrt) with `linear-vitb16` (sqrt)."""
    rc, rl = RECIPES["sqrt"], RECIPES["linear-sqrt"]
    out: dict = {"F": {}}
    for dom in real_domains(d):
        held = (d.y == 0) & (d.kind == dom)
        train = np.flatnonzero((d.split == "train") & ~held)
        val = np.flatnonzero((d.split == "val") & ~held)
        ev = np.flatnonzero(held & (d.split != "test") & ~_extra(d))
        vf = np.flatnonzero((d.split == "val") & (d.y == 1) & ~held)
        fc, fl = Fitted(d, train, val, rc, seed), Fitted(d, train, val, rl, seed)
        lab, vlab = _pair_labels(fc, fl, d.x[ev]), _pair_labels(fc, fl, d.x[vf])
        out["F"][dom] = {"n": len(ev), "fake": float(np.mean(lab == "fake")),
                         "uncertain": float(np.mean(lab == "uncertain")),
                         "val_fakes_labelled_fake": float(np.mean(vlab == "fake"))}
        print(f"  pair F without {dom}: {out['F'][dom]}", file=sys.stderr, flush=True)
    old = np.array([g.startswith(OLD_PREFIXES) for g in d.generator])
    tr, va = np.flatnonzero(old & (d.split == "train")), np.flatnonzero(old & (d.split == "val"))
    fc, fl = Fitted(d, tr, va, rc, seed), Fitted(d, tr, va, rl, seed)
    new = np.flatnonzero(~old)
    lab = _pair_labels(fc, fl, d.x[new])
    y, gen = d.y[new], d.generator[new]
    out["D"] = {g: float(np.mean(lab[(y == 1) & (gen == g)] == "fake")) for g in sorted(set(gen[y == 1].tolist()))}
    doms = list(out["F"])
    out["_summary"] = {
        "F_mean_fake_photographs": float(np.mean([out["F"][k]["fake"] for k in doms if k not in NOT_PHOTOS])),
        "F_mean_uncertain": float(np.mean([out["F"][k]["uncertain"] for k in doms])),
        "F_val_fakes_labelled_fake": float(np.mean([out["F"][k]["val_fakes_labelled_fake"] for k in doms])),
        "D_generated_labelled_fake": float(np.mean(list(out["D"].values())))}
    print(f"  pair: {json.dumps(out['_summary'])}", file=sys.stderr, flush=True)
    return out


def alpha_sweep(d: Data, r: Recipe, seed: int, alphas: tuple[float, ...] = (0.01, 0.005, 0.002, 0.001)) -> dict:
    """How often familiarity abstention fires, by its level: the protocol-D fit (2017–2022 sources only) at the
    worst-domain rule, on every newer image — reals (other kinds of photo) and fakes (unseen generators)."""
    old = np.array([g.startswith(OLD_PREFIXES) for g in d.generator])
    f = Fitted(d, np.flatnonzero(old & (d.split == "train")), np.flatnonzero(old & (d.split == "val")), r, seed)
    new = np.flatnonzero(~old)
    xn = f.inputs(d.x[new])
    p, q, y, kind = f.probs(xn, ready=True), f.fam.p_values(xn), d.y[new], d.kind[new]
    thr = f.decisions["domain"].threshold
    out = {"calibration_images": len(f.fam.calibration)}
    for a in alphas:
        fake = (p >= thr) & (q >= a)
        out[str(a)] = {"fakes_labelled_fake": float(fake[y == 1].mean()),
                       "reals_labelled_fake": float(fake[y == 0].mean()),
                       "fakes_unfamiliar": float((q[y == 1] < a).mean()),
                       "reals_unfamiliar": float((q[y == 0] < a).mean()),
                       "reals_labelled_fake_per_kind": {k: float(fake[(y == 0) & (kind == k)].mean())
                                                        for k in sorted(set(kind[y == 0].tolist()))}}
    print(f"  alpha sweep {r.name}: {json.dumps(out)}", file=sys.stderr, flush=True)
    return out


def tables(files: list[Path], rule: str = "domain+fam", proto: str = "F") -> str:
    """Markdown: protocol F (or FC) per held-out real domain for every recipe in `files` (fake / uncertain at
    `rule`), then summaries of it (all rules) and D."""
    recipes = {}
    for f in files:
        recipes.update(json.loads(f.read_text())["recipes"])
    runs = {k: v["seed0"] for k, v in recipes.items() if proto in v.get("seed0", {})}
    names = list(runs)
    doms = [k for k in next(iter(runs.values()))[proto] if not k.startswith("_")]
    out = [f"Protocol {proto} at rule `{rule}`: share of the held-out domain's reals labelled `fake` / `uncertain`",
           "", "| held-out real domain | n | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    for dom in doms:
        n = runs[names[0]][proto][dom][rule]["n"]
        cells = [runs[k][proto][dom][rule] for k in names]
        out.append(f"| {dom} | {n} | " + " | ".join(f"{c['fake']:.1%} / {c['uncertain']:.1%}" for c in cells) + " |")
    out += ["", f"| recipe | rule | {proto} mean fake | {proto} mean fake over photographs | {proto} worst (domain) | "
            f"{proto} mean uncertain | {proto} val fakes labelled fake | D mean AP | D AP people-2026 | "
            "D generated labelled fake |", "|---|---|---|---|---|---|---|---|---|---|"]
    for k in names:
        r = runs[k]
        for rl in RULES:
            sm = r[proto]["_summary"][rl]
            rest = [r[proto][d][rl]["fake"] for d in doms if d not in NOT_PHOTOS]
            d = r.get("D", {}).get("_summary")
            dcols = (f"{d['mean_ap']:.3f} | {d['mean_ap_people']:.3f} | {d[rl]['mean_fakes_labelled_fake']:.1%}"
                     if d else "– | – | –")
            out.append(f"| {k} | {rl} | {sm['mean_fake']:.1%} | {np.mean(rest):.1%} | {sm['worst_fake']:.1%} "
                       f"({sm['worst_domain']}) | {sm['mean_uncertain']:.1%} | "
                       f"{sm['mean_val_fakes_labelled_fake']:.1%} | {dcols} |")
    return "\n".join(out) + "\n"


def seed_summary(files: list[Path], rule: str = "domain+fam", view: str = "clean") -> str:
    """Markdown: mean ± sd over seeds of each recipe's F, FC, D and E figures at `rule`; the seeds column counts
    the seeds each protocol ran (F/FC/D/E), since checks run after a release may add seeds to one protocol.
    `view`: the clean images, or a laundered journey (`--journeys` runs)."""
    recipes: dict = {}
    for f in files:  # files may hold other protocols or seeds of the same recipe: merge them
        for name, res in json.loads(f.read_text())["recipes"].items():
            mine = recipes.setdefault(name, {})
            for k, v in res.items():
                mine[k] = {**mine.get(k, {}), **v} if k.startswith("seed") else v
    if view != "clean":  # the same tables from the laundered results
        recipes = {name: {k: ({p: v[f"{p}@{view}"] for p in ("F", "FC", "D", "E") if f"{p}@{view}" in v}
                              if k.startswith("seed") else v) for k, v in res.items()}
                   for name, res in recipes.items()}
    out = [f"Over seeds, rule `{rule}`, {view} images (mean ± sd; F/FC means over photographs: without "
           f"{', '.join(NOT_PHOTOS)})", "",
           "| recipe | seeds (F/FC/D/E) | F fake | F worst kinds | F uncertain | F val fakes fake | FC fake | "
           "FC worst | FC uncertain | D AP | D AP people | D generated fake | E generated fake | E uncertain | E AP |",
           "|---|---|" + "---|" * 13]

    def ms(v: list[float], pct: bool = True) -> str:
        if not v:
            return "–"
        m, sd = float(np.mean(v)), float(np.std(v))
        return f"{m:.1%} ± {sd:.1%}" if pct else f"{m:.3f} ± {sd:.3f}"

    for name, res in recipes.items():
        seeds = [v for k, v in res.items() if k.startswith("seed")]
        cols = []
        for proto in ("F", "FC"):
            runs = [s[proto] for s in seeds if proto in s]
            doms = [k for k in (runs[0] if runs else {}) if not k.startswith("_") and k not in NOT_PHOTOS]
            fake = [float(np.mean([r[d][rule]["fake"] for d in doms])) for r in runs]
            unc = [float(np.mean([r[d][rule]["uncertain"] for d in doms])) for r in runs]
            per = {d: float(np.mean([r[d][rule]["fake"] for r in runs])) for d in doms}
            worst = ", ".join(f"{d} {v:.1%}" for d, v in sorted(per.items(), key=lambda kv: -kv[1])[:2])
            cols += [ms(fake), worst or "–", ms(unc)]
            if proto == "F":
                cols.append(ms([r["_summary"][rule]["mean_val_fakes_labelled_fake"] for r in runs]))
        ds = [s["D"]["_summary"] for s in seeds if "D" in s]
        cols += [ms([d["mean_ap"] for d in ds], False), ms([d["mean_ap_people"] for d in ds], False),
                 ms([d[rule]["mean_fakes_labelled_fake"] for d in ds])]
        es = [s["E"]["_summary"] for s in seeds if "E" in s]
        cols += [ms([e[rule]["mean_fakes_labelled_fake"] for e in es]),
                 ms([e[rule]["mean_fakes_uncertain"] for e in es]), ms([e["mean_ap"] for e in es], False)]
        counts = "/".join(str(sum(proto in s for s in seeds)) for proto in ("F", "FC", "D", "E"))
        out.append(f"| {name} | {counts} | " + " | ".join(cols) + " |")
    for proto in ("F", "FC"):
        names = [n for n, res in recipes.items() if any(proto in v for k, v in res.items() if k.startswith("seed"))]
        if not names:
            continue
        out += ["", f"Protocol {proto} per held-out kind, mean over seeds: labelled `fake` / `uncertain`", "",
                "| held-out kind | n | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
        first = next(v[proto] for k, v in recipes[names[0]].items() if k.startswith("seed") and proto in v)
        for dom in (k for k in first if not k.startswith("_")):
            cells = []
            for n in names:
                runs = [v[proto][dom][rule] for k, v in recipes[n].items() if k.startswith("seed") and proto in v]
                fake, unc = np.mean([r["fake"] for r in runs]), np.mean([r["uncertain"] for r in runs])
                cells.append(f"{fake:.1%} / {unc:.1%}")
            out.append(f"| {dom} | {first[dom][rule]['n']} | " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def main() -> None:
    global TARGET_FPR
    if sys.argv[1:2] == ["--seed-summary"]:
        named = sys.argv[2:3] == ["--view"]
        files = sys.argv[4:] if named else sys.argv[2:]
        print(seed_summary([Path(p) for p in files], view=sys.argv[3] if named else "clean"))
        return
    if sys.argv[1:2] in (["--tables"], ["--tables-fc"]):
        print(tables([Path(p) for p in sys.argv[2:]], proto="FC" if sys.argv[1] == "--tables-fc" else "F"))
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipes", nargs="+", default=["base", "sqrt"], choices=list(RECIPES))
    ap.add_argument("--protocols", nargs="+", default=["F", "D", "V"], help="F FC D E V alpha pair")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--test", action="store_true", help="also the held-out test split (the chosen recipe only)")
    ap.add_argument("--target-fpr", type=float, default=TARGET_FPR,
                    help="per-domain (or pooled) false-positive target on the val reals")
    ap.add_argument("--real-alphas", nargs="*", type=float, default=[],
                    help="also rules that withhold `fake` from images unlike every training real (exploratory)")
    ap.add_argument("--extra-reals", action="store_true",
                    help="load the web-sd reals the manifest's cap left out, for recipes with extra=True (train only)")
    ap.add_argument("--patch-means", action="store_true",
                    help="load the patch-token means of blocks 1-12 (PATCH; ~30 min to embed the first time)")
    ap.add_argument("--taps", choices=["all", "release"], default="all",
                    help="release: only RELEASE_TAPS (the issue-27 cache; needed for --aug-views and --journeys)")
    ap.add_argument("--aug-views", type=int, default=0, help="cached augmented training views (recipes *-aug)")
    ap.add_argument("--journeys", nargs="*", default=[],
                    help="also score every protocol on these laundered views (results under `F@half-q75`, ...)")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    if (args.aug_views or args.journeys) and args.taps != "release":
        raise SystemExit("--aug-views and --journeys need --taps release")
    for a in args.real_alphas:
        RULES[f"domain+fam+real{a:g}"] = (True, True)
        REAL_ALPHA[f"domain+fam+real{a:g}"] = a
    TARGET_FPR = args.target_fpr
    d = (load_release_taps(args.aug_views, tuple(args.journeys)) if args.taps == "release"
         else load(with_extra=args.extra_reals, with_patch=args.patch_means))
    print(f"{len(d.y)} images, {int((d.y == 0).sum())} real in {len(real_domains(d))} domains", file=sys.stderr)
    doc = {"recipes": {}, "train": asdict(TRAIN), "taps": list(d.order), "aug_views": args.aug_views,
           "journeys": args.journeys, "target_fpr": TARGET_FPR, "band_fpr": BAND,
           "min_domain_reals": MIN_DOMAIN, "rules": RULES, "unfamiliar_below": ALPHA}
    for name in args.recipes:
        r = RECIPES[name]
        res: dict = {"recipe": asdict(r)}
        for seed in args.seeds:
            t = time.time()
            row = {}
            for proto, run in (("F", protocol_f), ("FC", lambda *a: protocol_f(*a, whole_collection=True)),
                               ("D", protocol_d), ("E", protocol_e)):
                if proto in args.protocols:
                    for v, res_v in run(d, r, seed).items():
                        row[proto if v == "clean" else f"{proto}@{v}"] = res_v
            if "alpha" in args.protocols:
                row["alpha"] = alpha_sweep(d, r, seed)
            if "pair" in args.protocols:
                row["pair"] = protocol_pair(d, seed)
            if "V" in args.protocols or args.test:
                row.update(release_view(d, r, seed, (["val"] if "V" in args.protocols else [])
                                        + (["test"] if args.test else [])))
            row["seconds"] = round(time.time() - t, 1)
            res[f"seed{seed}"] = row
        doc["recipes"][name] = res
        args.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.out.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc, indent=1))
        tmp.replace(args.out)


if __name__ == "__main__":
    main()
