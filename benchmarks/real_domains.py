"""Real photographs are not fakes (issue 18): false positives per kind of real photo, under recipes that differ
in how training weighs the kinds of images and how the decision is calibrated.

Every recipe runs the release procedure in-process on cached features (resize recipe, final + blocks 4, 6, 8,
10, 12), with the release manifest's splits (benchmarks/results/release-manifest.csv: train / val / test,
a `domain` column naming the kind of each real image):
  1. train the head on `train` (early stopping on `val` AP), sampling weights by `balance`, optionally a
     second fit with the hardest `hard` share of training reals up-weighted x3;
  2. Platt scaling on `val`, threshold at 0.5% false positives on the `val` reals — pooled, or for every real
     domain with at least 15 `val` reals (`per_domain`) — and the abstain band from the 5% point;
  3. optionally a familiarity reference (kNN distance to the training features, conformal p-value calibrated
     on `val`): a `fake` with p < 0.01 becomes `uncertain`.

Protocols (the `test` split is never read by F or D; `--test` reports it for the chosen recipe only):
  F  leave one real domain out: for each kind of real photo, its reals leave train and val; the fold's
     decision is applied to that domain's non-test reals. Fake / uncertain shares per held-out domain, mean,
     worst, and the share of the fold's val fakes labelled fake (a check that the rule still detects).
  D  old → new: train on the 2017–2022 sources only (same splits), calibrate on their val; AP per unseen
     generator, now including the three people-2026 generators (DALL·E 3, SDXL, Stable Cascade; against
     the people-2026 reals of the same splits), and fake / uncertain shares.
  V  the release itself (all domains), per-domain shares on `val` (in-sample for the threshold).

    python benchmarks/real_domains.py --recipes base sqrt-domain ... [--protocols F D V] [--test] --out FILE
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
MID = (0, 4, 6, 8, 10, 12)
TRAIN = TrainConfig(epochs=40, batch_size=256, lr=1e-3, patience=8)  # as make_release.py
TARGET_FPR, BAND = 0.005, (0.05, 0.005)
MIN_DOMAIN = 15
OLD_PREFIXES = ("forensynths_", "multigen_", "web-sd", "cifake_")


@dataclass(frozen=True)
class Recipe:
    name: str
    method: str = "causalclip"
    balance: str = "none"
    hard: float = 0.0
    per_domain: bool = False
    familiarity: bool = False
    alpha: float = 0.01


RECIPES = {r.name: r for r in [
    Recipe("base"),  # the previous release's recipe on the new data
    Recipe("base-domain", per_domain=True),
    Recipe("base-domain-fam", per_domain=True, familiarity=True),
    Recipe("sqrt-domain", balance="sqrt", per_domain=True),
    Recipe("sqrt-domain-fam", balance="sqrt", per_domain=True, familiarity=True),
    Recipe("bal-domain", balance="domain", per_domain=True),
    Recipe("bal-domain-fam", balance="domain", per_domain=True, familiarity=True),
    Recipe("sqrt-hard-domain-fam", balance="sqrt", hard=0.1, per_domain=True, familiarity=True),
    Recipe("bal-hard-domain-fam", balance="domain", hard=0.1, per_domain=True, familiarity=True),
    Recipe("linear-sqrt-domain-fam", method="linear", balance="sqrt", per_domain=True, familiarity=True),
]}


@dataclass
class Data:
    x: np.ndarray  # [n, 4352] the head's input
    y: np.ndarray
    split: np.ndarray
    kind: np.ndarray  # domain of reals, generator of fakes
    generator: np.ndarray
    paths: list[str]


def load() -> Data:
    from sources import embed_variant

    from causalclip_cli.inputs.datasets import Sample
    from causalclip_cli.model.taps import select_layers

    rows = list(csv.DictReader(MANIFEST.open()))
    samples = [Sample(str((MANIFEST.parent / r["path"]).resolve()), int(r["label"]), r["generator"], r["split"],
                      r["domain"]) for r in rows]
    x, y, paths = embed_variant(samples, "resize", 1, ALL, label="release manifest")
    if len(paths) != len(samples):
        raise SystemExit(f"{len(samples) - len(paths)} manifest images could not be read")
    from sources import _backbone

    from causalclip_cli.model.taps import tower_shape

    x = select_layers(x, ALL, MID, tower_shape(_backbone().tower))
    kinds = np.array([s.kind for s in samples], dtype=object)
    gens = np.array([s.generator for s in samples], dtype=object)
    return Data(x.astype(np.float32), np.asarray(y), np.array([s.split for s in samples]), kinds, gens, paths)


def _segments() -> list[int]:
    return [512 if k == 0 else 768 for k in MID]


class Fitted:
    """A head + its calibrated decision, as the release procedure makes them."""

    def __init__(self, d: Data, train: np.ndarray, val: np.ndarray, r: Recipe, seed: int) -> None:
        import torch

        from causalclip_cli.model.checkpoint import Decision
        from causalclip_cli.model.familiarity import Familiarity
        from causalclip_cli.model.heads import CausalConfig
        from causalclip_cli.training.domains import balance_weights, choose_threshold
        from causalclip_cli.training.experiment import _hard_reals, fit_platt
        from causalclip_cli.training.trainer import train_head

        hc = {**(asdict(CausalConfig()) if r.method == "causalclip" else {}), "segments": _segments(),
              "combine": "concat"}
        cfg = TrainConfig(**{**asdict(TRAIN), "seed": seed})
        xt, yt, xv, yv = d.x[train], d.y[train], d.x[val], d.y[val]
        w = balance_weights(yt, d.kind[train], r.balance)
        res = train_head(r.method, hc, xt, yt, xv, yv, cfg, weights=w)
        if r.hard:
            hard = _hard_reals(res.head, xt, yt, r.hard)
            w = np.ones(len(yt)) if w is None else w.copy()
            w[hard] *= 3.0
            res = train_head(r.method, hc, xt, yt, xv, yv, cfg, weights=w)
        self.head = res.head.eval()
        with torch.inference_mode():
            self.a, self.b = fit_platt(self.head(torch.as_tensor(xv)).numpy(), yv)
        pv = self.probs(xv)
        thr, band, rule = choose_threshold(pv[yv == 0], d.kind[val][yv == 0], TARGET_FPR, BAND,
                                           per_domain=r.per_domain, min_images=MIN_DOMAIN)
        self.fam = Familiarity.fit(xt).calibrate(xv) if r.familiarity else None
        self.decision = Decision(thr, band, rule, r.alpha if r.familiarity else None)
        self.epochs = res.best_epoch

    def probs(self, x: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            return torch.sigmoid(self.a * self.head(torch.as_tensor(x)) + self.b).numpy()

    def labels(self, x: np.ndarray, familiarity: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(probabilities, labels, reasons)."""
        p = self.probs(x)
        q = self.fam.p_values(x) if (self.fam is not None and familiarity) else [None] * len(p)
        out = [self.decision.verdict(float(a), None if b is None else float(b)) for a, b in zip(p, q, strict=True)]
        return p, np.array([o[0] for o in out]), np.array([o[1] or "" for o in out])


def _shares(labels: np.ndarray, reasons: np.ndarray) -> dict:
    n = len(labels)
    return {"n": n, "fake": float(np.mean(labels == "fake")) if n else None,
            "uncertain": float(np.mean(labels == "uncertain")) if n else None,
            "unfamiliar": float(np.mean(reasons == "unfamiliar")) if n else None}


def real_domains(d: Data) -> list[str]:
    return sorted(set(d.kind[d.y == 0].tolist()))


def protocol_f(d: Data, r: Recipe, seed: int) -> dict:
    out = {}
    for dom in real_domains(d):
        held = (d.y == 0) & (d.kind == dom)
        train = np.flatnonzero((d.split == "train") & ~held)
        val = np.flatnonzero((d.split == "val") & ~held)
        ev = np.flatnonzero(held & (d.split != "test"))
        t = time.time()
        f = Fitted(d, train, val, r, seed)
        _, lab, why = f.labels(d.x[ev])
        _, lab0, why0 = f.labels(d.x[ev], familiarity=False)
        vf = np.flatnonzero((d.split == "val") & (d.y == 1) & ~held)
        _, vlab, _ = f.labels(d.x[vf])
        out[dom] = {**_shares(lab, why), "fake_without_familiarity": float(np.mean(lab0 == "fake")),
                    "val_fakes_labelled_fake": float(np.mean(vlab == "fake")), "threshold": f.decision.threshold,
                    "set_by": f.decision.calibration.get("set_by", "pooled"), "seconds": round(time.time() - t, 1)}
        print(f"  F {r.name} seed {seed} without {dom}: {out[dom]}", file=sys.stderr, flush=True)
    fakes = [v["fake"] for v in out.values()]
    unc = [v["uncertain"] for v in out.values()]
    out["_summary"] = {"mean_fake": float(np.mean(fakes)), "worst_fake": float(np.max(fakes)),
                       "worst_domain": max(out, key=lambda k: out[k]["fake"]),
                       "mean_uncertain": float(np.mean(unc)), "worst_uncertain": float(np.max(unc)),
                       "mean_val_fakes_labelled_fake": float(np.mean([v["val_fakes_labelled_fake"]
                                                                      for v in out.values()]))}
    return out


def _ap(y: np.ndarray, p: np.ndarray) -> float | None:
    from causalclip_cli.training.metrics import binary_metrics

    return binary_metrics(y, p, 0.5)["ap"] if 0 < y.sum() < len(y) else None


def protocol_d(d: Data, r: Recipe, seed: int) -> dict:
    """Old → new: train and calibrate on 2017–2022 sources, test every newer generator against the reals of its
    own collection (modern-2025 camera photos, faces-2025 reals, people-2026 reals), all splits."""
    old = np.array([g.startswith(OLD_PREFIXES) for g in d.generator])
    f = Fitted(d, np.flatnonzero(old & (d.split == "train")), np.flatnonzero(old & (d.split == "val")), r, seed)
    out = {}
    collections = {"modern": lambda g: g.startswith("modern_"), "faces": lambda g: g.startswith("faces_"),
                   "people": lambda g: g.startswith("people_")}
    for coll, member in collections.items():
        in_coll = np.array([member(g) for g in d.generator])
        reals = np.flatnonzero(in_coll & (d.y == 0))
        for gen in sorted(set(d.generator[in_coll & (d.y == 1)].tolist())):
            fk = np.flatnonzero(in_coll & (d.y == 1) & (d.generator == gen))
            idx = np.concatenate([reals, fk]) if coll == "people" else np.flatnonzero(in_coll & (d.generator == gen))
            p, lab, why = f.labels(d.x[idx])
            y = d.y[idx]
            out[gen] = {"ap": _ap(y, p), "n_real": int((y == 0).sum()), "n_fake": int(y.sum()),
                        "fakes_labelled_fake": float(np.mean(lab[y == 1] == "fake")),
                        "reals_labelled_fake": float(np.mean(lab[y == 0] == "fake")),
                        "reals_uncertain": float(np.mean(lab[y == 0] == "uncertain"))}
    aps = [v["ap"] for v in out.values() if v["ap"] is not None]
    out["_summary"] = {"mean_ap": float(np.mean(aps)),
                       "mean_ap_people": float(np.mean([v["ap"] for k, v in out.items() if k.startswith("people_")])),
                       "mean_fakes_labelled_fake": float(np.mean([v["fakes_labelled_fake"] for v in out.values()
                                                                  if isinstance(v, dict) and "ap" in v]))}
    print(f"  D {r.name} seed {seed}: {out['_summary']}", file=sys.stderr, flush=True)
    return out


def release_view(d: Data, r: Recipe, seed: int, split: str) -> dict:
    """The release (train on all train, calibrate on val), per real domain and per generator on `split`."""
    f = Fitted(d, np.flatnonzero(d.split == "train"), np.flatnonzero(d.split == "val"), r, seed)
    idx = np.flatnonzero(d.split == split)
    p, lab, why = f.labels(d.x[idx])
    y, kind, gen = d.y[idx], d.kind[idx], d.generator[idx]
    out = {"threshold": f.decision.threshold, "band": f.decision.uncertain,
           "set_by": f.decision.calibration.get("set_by", "pooled"), "reals": {}, "fakes": {}, "ap": {}}
    for k in sorted(set(kind[y == 0].tolist())):
        m = (y == 0) & (kind == k)
        out["reals"][k] = _shares(lab[m], why[m])
    for g in sorted(set(gen[y == 1].tolist())):
        m = (y == 1) & (gen == g)
        out["fakes"][g] = _shares(lab[m], why[m])
        src = gen == g
        out["ap"][g] = _ap(y[src], p[src]) if (y[src] == 0).any() else None
    reals, fakes = y == 0, y == 1
    out["all"] = {"reals": _shares(lab[reals], why[reals]), "fakes": _shares(lab[fakes], why[fakes])}
    people_reals = reals & np.array([k in ("portraits-pixabay", "studio-portraits", "lfw") for k in kind])
    people_fakes = fakes & np.array([g.startswith("people_") for g in gen])
    both = people_reals | people_fakes
    out["ap"]["people-2026 (all reals vs all generated)"] = _ap(y[both], p[both])
    aps = [v for v in out["ap"].values() if v is not None]
    out["mean_ap"] = float(np.mean(aps))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipes", nargs="+", default=["base", "sqrt-domain-fam"], choices=list(RECIPES))
    ap.add_argument("--protocols", nargs="+", default=["F", "D", "V"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--test", action="store_true", help="also the held-out test split (the chosen recipe only)")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    d = load()
    print(f"{len(d.y)} images, {int((d.y == 0).sum())} real in {len(real_domains(d))} domains", file=sys.stderr)
    doc = {"recipes": {}, "train": asdict(TRAIN), "target_fpr": TARGET_FPR, "band_fpr": BAND,
           "min_domain_reals": MIN_DOMAIN}
    for name in args.recipes:
        r = RECIPES[name]
        res: dict = {"recipe": asdict(r)}
        for seed in args.seeds:
            t = time.time()
            row = {}
            if "F" in args.protocols:
                row["F"] = protocol_f(d, r, seed)
            if "D" in args.protocols:
                row["D"] = protocol_d(d, r, seed)
            if "V" in args.protocols:
                row["V"] = release_view(d, r, seed, "val")
            if args.test:
                row["test"] = release_view(d, r, seed, "test")
            row["seconds"] = round(time.time() - t, 1)
            res[f"seed{seed}"] = row
        doc["recipes"][name] = res
        args.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.out.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc, indent=1))
        tmp.replace(args.out)


if __name__ == "__main__":
    main()
