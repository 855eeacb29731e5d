"""Quality benchmark: does the CausalCLIP head beat the linear probe on generators it never saw?

Protocols over the 21 sources of ../shared/data (features from the offline CLIP ViT-B/16 tower,
read from the feature cache; the first run embeds ~3,300 images, about 20 minutes on 2 CPU cores):
  A  one generator → many: train on cifake/train + web-sd (Stable Diffusion), test on cifake/test and
     every other source;
  B  family → family: diffusion (multigen-2022, web-sd, cifake/train) → GAN (forensynths-thumbs),
     and GAN → diffusion;
  C  leave-one-source-out over all 21 sources.
Each for the CausalCLIP head, the linear probe and a size/format control, over several seeds.

    python benchmarks/quality.py [--seeds 0 1 2] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from sources import GAN_FAMILY, Source, load_sources  # noqa: E402

from causalclip_cli.model.heads import CausalConfig  # noqa: E402
from causalclip_cli.training.metrics import binary_metrics  # noqa: E402
from causalclip_cli.training.trainer import TrainConfig, train_head  # noqa: E402

# Chosen by protocol C (mean AP over held-out sources), see benchmarks/README.md.
BENCH_TRAIN = TrainConfig(epochs=40, batch_size=256, lr=1e-3, patience=8)
BENCH_CAUSAL = asdict(CausalConfig())
METRICS = ("ap", "accuracy", "auc", "tpr_at_fpr_5")


def _holdout(y: np.ndarray, seed: int, fraction: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    val = np.zeros(len(y), dtype=bool)
    for label in (0, 1):
        idx = np.flatnonzero(y == label)
        rng.shuffle(idx)
        val[idx[: max(1, int(round(len(idx) * fraction)))]] = True
    return ~val, val


def _stack(sources: list[Source]) -> tuple[np.ndarray, np.ndarray]:
    return np.concatenate([s.x for s in sources]), np.concatenate([s.y for s in sources])


def _size_format_features(paths: list[str]) -> np.ndarray:
    from PIL import Image

    rows = []
    for p in paths:
        with Image.open(p) as im:
            w, h = im.size
            fmt = im.format or ""
        rows.append([np.log(w), np.log(h), float(fmt == "JPEG"), float(fmt == "PNG")])
    return np.asarray(rows, dtype=np.float64)


def fit_predict(method: str, train: list[Source], tests: list[Source], seed: int,
                causal: dict | None = None) -> dict[str, np.ndarray]:
    """Train one detector on `train`, return fake probabilities for each test source."""
    if method == "size-format":
        from sklearn.linear_model import LogisticRegression

        xs = np.concatenate([_size_format_features(s.paths) for s in train])
        ys = np.concatenate([s.y for s in train])
        clf = LogisticRegression(max_iter=1000).fit(xs, ys)
        return {t.name: clf.predict_proba(_size_format_features(t.paths))[:, 1] for t in tests}
    import torch

    x, y = _stack(train)
    tr, va = _holdout(y, seed)
    cfg = TrainConfig(**{**asdict(BENCH_TRAIN), "seed": seed})
    hc = (causal or BENCH_CAUSAL) if method == "causalclip" else {}
    res = train_head(method, hc, x[tr], y[tr], x[va], y[va], cfg)
    with torch.inference_mode():
        return {t.name: torch.sigmoid(res.head(torch.as_tensor(t.x))).numpy() for t in tests}


def _unit(name: str) -> str:
    return "cifake" if name.startswith("cifake") else name


def protocols(sources: list[Source]) -> dict[str, list[tuple[list[Source], list[Source]]]]:
    by = {s.name: s for s in sources}
    gan = [s for s in sources if s.family == GAN_FAMILY]
    diff = [s for s in sources if s.family != GAN_FAMILY]
    a_train = [by["cifake/train"], by["web-sd"]]
    a_tests = [s for s in sources if s.name not in ("cifake/train", "web-sd")]
    units = sorted({_unit(s.name) for s in sources})
    loso = [([s for s in sources if _unit(s.name) != u], [s for s in sources if _unit(s.name) == u]) for u in units]
    return {
        "A": [(a_train, a_tests)],
        "B:diffusion→gan": [([s for s in diff if s.name != "cifake/test"], gan)],
        "B:gan→diffusion": [(gan, [s for s in diff if s.name != "cifake/train"])],
        "C": loso,
    }


def run(sources: list[Source], methods: list[str], seeds: list[int], causal: dict | None = None,
        only: list[str] | None = None) -> dict:
    results: dict = {}
    for proto, folds in protocols(sources).items():
        if only and proto.split(":")[0] not in only:
            continue
        per_method: dict = {}
        for method in methods:
            per_seed = []
            for seed in (seeds if method != "size-format" else seeds[:1]):
                rows = {}
                for train, tests in folds:
                    probs = fit_predict(method, train, tests, seed, causal)
                    for t in tests:
                        m = binary_metrics(t.y, probs[t.name], threshold=0.5)
                        rows[t.name] = {k: m[k] for k in (*METRICS, "n", "n_real", "n_fake")}
                per_seed.append(rows)
            names = list(per_seed[0])
            table = {}
            for n in names:
                table[n] = {"n": per_seed[0][n]["n"], "n_real": per_seed[0][n]["n_real"],
                            "n_fake": per_seed[0][n]["n_fake"]}
                for k in METRICS:
                    vals = [r[n][k] for r in per_seed if r[n][k] is not None]
                    table[n][k] = float(np.mean(vals)) if vals else None
                    table[n][f"{k}_std"] = float(np.std(vals)) if vals else None
            means = {}
            for k in METRICS:
                seed_means = [np.mean([r[n][k] for n in names if r[n][k] is not None]) for r in per_seed]
                means[k] = float(np.mean(seed_means))
                means[f"{k}_std"] = float(np.std(seed_means))
            per_method[method] = {"sources": table, "mean": means}
            print(f"{proto:18s} {method:11s} mean AP {means['ap']:.4f} ± {means['ap_std']:.4f}  "
                  f"acc {means['accuracy']:.4f}", file=sys.stderr)
        results[proto] = per_method
    return results


def markdown(results: dict, methods: list[str]) -> str:
    out = []
    for proto, per_method in results.items():
        out.append(f"### Protocol {proto}\n")
        head = "| source | n (real/fake) | " + " | ".join(f"{m} AP | {m} acc | {m} AUC | {m} TPR@5%"
                                                         for m in methods) + " |"
        out.append(head)
        out.append("|" + "---|" * (2 + 4 * len(methods)))
        names = list(per_method[methods[0]]["sources"])
        for n in names:
            first = per_method[methods[0]]["sources"][n]
            cells = [n, f"{first['n']} ({first['n_real']}/{first['n_fake']})"]
            for m in methods:
                r = per_method[m]["sources"][n]
                cells += [_fmt(r["ap"], r["ap_std"]), _fmt(r["accuracy"]), _fmt(r["auc"]), _fmt(r["tpr_at_fpr_5"])]
            out.append("| " + " | ".join(cells) + " |")
        cells = ["**mean**", ""]
        for m in methods:
            r = per_method[m]["mean"]
            cells += [f"**{_fmt(r['ap'], r['ap_std'])}**", _fmt(r["accuracy"]), _fmt(r["auc"]),
                      _fmt(r["tpr_at_fpr_5"])]
        out.append("| " + " | ".join(cells) + " |\n")
    return "\n".join(out)


def _fmt(v: float | None, sd: float | None = None) -> str:
    if v is None:
        return "–"
    return f"{v:.3f}" if not sd else f"{v:.3f} ± {sd:.3f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--methods", nargs="+", default=["causalclip", "linear", "size-format"])
    ap.add_argument("--protocols", nargs="+", default=None, help="subset of A B C")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = ap.parse_args()
    t0 = time.time()
    sources = load_sources()
    results = run(sources, args.methods, args.seeds, only=args.protocols)
    args.out.mkdir(parents=True, exist_ok=True)
    doc = {"seeds": args.seeds, "train": asdict(BENCH_TRAIN), "causal": BENCH_CAUSAL,
           "sources": {s.name: {"n": int(len(s.y)), "fake": int(s.y.sum())} for s in sources},
           "results": results, "seconds": round(time.time() - t0, 1)}
    (args.out / "quality.json").write_text(json.dumps(doc, indent=2))
    md = markdown(results, args.methods)
    (args.out / "quality.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
