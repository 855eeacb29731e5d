"""Quality on today's generators (issue 10): protocols D and E, with the levers as options.

  D  old → new: train on the 21 sources of 2017–2022, test on each modern-2025 generator and on
     faces-2025 (its FFHQ-matched 30 reals vs all StyleGAN3 fakes reported apart), the photoreal subset
     (benchmarks/subsets/photoreal-modern.txt: photoreal fakes vs every camera photo) and a content-only
     control (the same head on 24-px-and-back images: scene kept, traces gone);
  E  leave one modern generator out: train on everything else (old + other modern + faces), test on the
     one held out. flux.1-dev and qwen-image render the same 10 prompts and the Kontext edits are
     near-duplicates (benchmarks/subsets/yetter-prompt-groups.csv), so when one yetter source is held
     out the other two leave training as well; faces are held out as a seventh unit.

Feature variants come from the cache filled by benchmarks/extract_views.py (layers 0..12 in one pass;
`layers` below slices them). Every configuration is trained with the same seeds; the released head of the
previous round (resize recipe, final embedding) is scored on the same test sets for reference.

    python benchmarks/quality_modern.py [--configs final all ...] [--methods causalclip linear] [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from quality import BENCH_CAUSAL, BENCH_TRAIN, _holdout, _size_format_features  # noqa: E402
from sources import DATA, all_groups, embed_variant  # noqa: E402

from causalclip_cli.training.metrics import binary_metrics  # noqa: E402
from causalclip_cli.training.trainer import TrainConfig, train_head  # noqa: E402

HERE = Path(__file__).resolve().parent
ALL = tuple(range(13))
YETTER = {"modern/flux.1-dev", "modern/qwen-image", "modern/flux.1-kontext-edit"}


@dataclass(frozen=True)
class Config:
    name: str
    layers: tuple[int, ...] = (0,)
    combine: str = "concat"
    aug: int = 0  # cached augmented views per training image (0, 1 or 2; old sources' native recipe has 1)
    views: int = 1  # crops at test time (modern-2025 only; 256-px sets have one native crop)
    variant: str = "native"


MID = (0, 4, 6, 8, 10, 12)
CONFIGS = {c.name: c for c in [
    Config("resize-final", (0,), variant="resize"),
    Config("resize-final-aug", (0,), aug=2, variant="resize"),
    Config("resize-all", ALL, variant="resize"),
    Config("resize-all-weighted", ALL, combine="weighted", variant="resize"),
    Config("resize-mid", MID, variant="resize"),
    Config("resize-mid-aug", MID, aug=2, variant="resize"),
    Config("resize-all-aug", ALL, aug=2, variant="resize"),
    Config("native-final", (0,)),
    Config("native-final-5crops", (0,), views=5),
    Config("native-all", ALL),
    Config("native-all-5crops", ALL, views=5),
    Config("native-all-aug", ALL, aug=2),
]}


@dataclass
class Src:
    name: str
    family: str
    y: np.ndarray
    paths: list[str]
    feats: dict  # variant key → [n, (views,) 9728]


def _rel(p: str) -> str:
    return str(Path(p).resolve().relative_to(DATA.resolve()))


def load_all() -> list[Src]:
    out = []
    groups = all_groups(DATA)
    for grp in ("old", "modern", "faces"):
        for name, family, samples in groups[grp]:
            f = {}
            x, y, paths = embed_variant(samples, "native", 1, ALL, label=name)
            f["native"] = x
            f["native-aug1"] = embed_variant(samples, "native", 1, ALL, transform="degrade1", label=name)[0]
            f["resize"] = embed_variant(samples, "resize", 1, ALL, label=name)[0]
            f["resize-aug1"] = embed_variant(samples, "resize", 1, ALL, transform="degrade1", label=name)[0]
            # The older sources' second resize view: `extract_views.py --only old-aug2` (before it existed,
            # results/qm-causal-aug.json repeated their first view).
            f["resize-aug2"] = embed_variant(samples, "resize", 1, ALL, transform="degrade2", label=name)[0]
            if grp != "old":
                f["native-aug2"] = embed_variant(samples, "native", 1, ALL, transform="degrade2", label=name)[0]
                f["tiny"] = embed_variant(samples, "tiny", 1, ALL, label=name)[0]
            if grp == "modern":
                f["native5"] = embed_variant(samples, "native", 5, ALL, label=name)[0]
            out.append(Src(name, family, y, paths, f))
            print(f"{name}: {len(y)}", file=sys.stderr)
    return out


def _cols(x: np.ndarray, layers: tuple[int, ...]) -> np.ndarray:
    offs = [(0, 512)] + [(512 + 768 * (k - 1), 512 + 768 * k) for k in range(1, 13)]
    return np.concatenate([x[..., offs[k][0]:offs[k][1]] for k in layers], axis=-1)


def _segments(layers: tuple[int, ...]) -> list[int]:
    return [512 if k == 0 else 768 for k in layers]


def train_x(s: Src, cfg: Config) -> np.ndarray:
    """[n, a, d]: the clean view and up to cfg.aug augmented views (sources with fewer repeat theirs)."""
    v = cfg.variant
    alts = [s.feats[v]] + [s.feats.get(f"{v}-aug{k}", s.feats[f"{v}-aug1"]) for k in range(1, cfg.aug + 1)]
    return _cols(np.stack(alts, axis=1), cfg.layers)


def test_x(s: Src, cfg: Config, control: bool = False) -> np.ndarray:
    if control:
        return _cols(s.feats["tiny"], cfg.layers)
    if cfg.variant == "resize":
        return _cols(s.feats["resize"], cfg.layers)
    if cfg.views == 5 and "native5" in s.feats:
        return _cols(s.feats["native5"], cfg.layers)
    return _cols(s.feats["native"], cfg.layers)


def fit(method: str, cfg: Config, train: list[Src], seed: int):
    """A trained head, returned as a scoring function features → probabilities (views aggregated)."""
    import torch

    x = np.concatenate([train_x(s, cfg) for s in train])
    y = np.concatenate([s.y for s in train])
    tr, va = _holdout(y, seed)
    hc = {**(BENCH_CAUSAL if method == "causalclip" else {}), "segments": _segments(cfg.layers),
          "combine": cfg.combine}
    tcfg = TrainConfig(**{**asdict(BENCH_TRAIN), "seed": seed})
    xt = x[tr] if cfg.aug else x[tr][:, 0]
    res = train_head(method, hc, xt, y[tr], x[va][:, 0], y[va], tcfg)
    head = res.head.eval()

    def score(xs: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            t = torch.as_tensor(xs, dtype=torch.float32)
            if t.dim() == 3:
                n, v, d = t.shape
                logit = head(t.reshape(n * v, d)).reshape(n, v).mean(1)
            else:
                logit = head(t)
            return torch.sigmoid(logit).numpy()

    return score


def _subsets() -> tuple[set[str], set[str]]:
    def read(name: str) -> set[str]:
        return {ln.strip() for ln in (HERE / "subsets" / name).read_text().splitlines() if ln.strip()}

    return read("photoreal-modern.txt"), read("ffhq-real.txt")


def _m(y: np.ndarray, p: np.ndarray) -> dict:
    m = binary_metrics(y, p, 0.5)
    return {k: m[k] for k in ("ap", "auc", "accuracy", "tpr_at_fpr_5", "n", "n_real", "n_fake")}


def evaluate(score, cfg: Config, tests: list[Src], all_modern: list[Src]) -> dict:
    """Per test source, plus the derived sets (FFHQ pair, photoreal subset, content-only control)."""
    photoreal, ffhq = _subsets()
    out = {}
    for s in tests:
        p = score(test_x(s, cfg))
        out[s.name] = _m(s.y, p)
        if "tiny" in s.feats:
            out[s.name]["control_ap"] = _m(s.y, score(test_x(s, cfg, control=True)))["ap"]
        if s.name == "faces/stylegan3":
            keep = np.array([(y == 1) or (_rel(pa) in ffhq) for y, pa in zip(s.y, s.paths, strict=True)])
            out["faces/ffhq-pair"] = _m(s.y[keep], p[keep])
        if s.family == "modern":
            keep = np.array([(y == 0) or (_rel(pa) in photoreal) for y, pa in zip(s.y, s.paths, strict=True)])
            if s.y[keep].sum() >= 3:
                out[f"{s.name}:photoreal"] = _m(s.y[keep], p[keep])
    # Photoreal fakes of the tested modern generators against every camera photo of those generators.
    mods = [s for s in tests if s.family == "modern"]
    if len(mods) > 1:
        ys, ps = [], []
        for s in mods:
            p = score(test_x(s, cfg))
            keep = np.array([(y == 0) or (_rel(pa) in photoreal) for y, pa in zip(s.y, s.paths, strict=True)])
            ys.append(s.y[keep])
            ps.append(p[keep])
        out["photoreal-pooled"] = _m(np.concatenate(ys), np.concatenate(ps))
    del all_modern
    return out


def protocol_folds(srcs: list[Src]) -> dict[str, list[tuple[list[Src], list[Src]]]]:
    old = [s for s in srcs if s.family in ("gan", "diffusion")]
    modern = [s for s in srcs if s.family == "modern"]
    faces = [s for s in srcs if s.family == "faces"]
    folds_e = []
    for held in [*modern, *faces]:
        drop = YETTER if held.name in YETTER else {held.name}
        train = old + [s for s in modern + faces if s.name not in drop]
        folds_e.append((train, [held]))
    from quality import protocols

    return {"D": [(old, modern + faces)], "E": folds_e, **protocols(old)}


def released_reference(srcs: list[Src]) -> dict:
    """The previous release (2026-11-25; resize recipe, final embedding; kept in results/previous-release/) on
    the test sets of D."""
    from safetensors import safe_open  # noqa: F401 - fail early if missing

    from causalclip_cli.model.checkpoint import load_head

    out = {}
    for name in ("causalclip-vitb16", "linear-vitb16"):
        head, _ = load_head(HERE / "results" / "previous-release" / f"{name}.safetensors")
        import torch

        def score(xs: np.ndarray, head=head) -> np.ndarray:
            with torch.inference_mode():
                return torch.sigmoid(head(torch.as_tensor(xs, dtype=torch.float32))).numpy()

        cfg = Config("released", (0,), variant="resize")
        tests = [s for s in srcs if s.family in ("modern", "faces")]
        out[name] = evaluate(score, cfg, tests, tests)
    return out


def size_format(srcs: list[Src]) -> dict:
    """A control that sees only image size and format: how much of each protocol is a dataset artefact."""
    from sklearn.linear_model import LogisticRegression

    out = {}
    for proto, folds in protocol_folds(srcs).items():
        if proto not in ("D", "E"):
            continue
        rows = {}
        for train, tests in folds:
            xs = np.concatenate([_size_format_features(s.paths) for s in train])
            ys = np.concatenate([s.y for s in train])
            clf = LogisticRegression(max_iter=1000).fit(xs, ys)
            for t in tests:
                rows[t.name] = _m(t.y, clf.predict_proba(_size_format_features(t.paths))[:, 1])
        out[proto] = rows
    return out


def _mean(rows: dict, keys: list[str], field: str = "ap") -> float:
    vals = [rows[k][field] for k in keys if k in rows and rows[k].get(field) is not None]
    return float(np.mean(vals)) if vals else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", nargs="+", default=["final", "all", "mid", "mid-aug"])
    ap.add_argument("--methods", nargs="+", default=["causalclip", "linear"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--protocols", nargs="+", default=["D", "E"], help="D E A B:diffusion→gan B:gan→diffusion C")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "quality_modern.json")
    ap.add_argument("--tables", type=Path, nargs="+", help="only print markdown tables of these result files")
    args = ap.parse_args()
    if args.tables:
        print(tables(args.tables))
        return
    t0 = time.time()
    srcs = load_all()
    doc = json.loads(args.out.read_text()) if args.out.exists() else {"runs": {}}
    doc["released"] = released_reference(srcs)
    doc["size_format"] = size_format(srcs)
    folds = protocol_folds(srcs)
    for cname in args.configs:
        cfg = CONFIGS[cname]
        for method in args.methods:
            for proto in args.protocols:
                per_seed = []
                for seed in args.seeds:
                    t1 = time.time()
                    rows = {}
                    for train, tests in folds[proto]:
                        score = fit(method, cfg, train, seed)
                        rows.update(evaluate(score, cfg, tests, tests))
                    per_seed.append(rows)
                    gens = [k for k in rows if ":" not in k and k not in ("faces/ffhq-pair", "photoreal-pooled")]
                    print(f"{proto} {cname:16s} {method:10s} seed {seed}: mean AP {_mean(rows, gens):.4f} "
                          f"photoreal {rows.get('photoreal-pooled', {}).get('ap', float('nan')):.4f} "
                          f"({time.time() - t1:.0f} s)", file=sys.stderr, flush=True)
                doc["runs"][f"{proto}|{cname}|{method}"] = {"config": asdict(cfg), "seeds": args.seeds,
                                                          "per_seed": per_seed}
                args.out.write_text(json.dumps(doc, indent=1))
    doc["seconds"] = round(time.time() - t0, 1)
    args.out.write_text(json.dumps(doc, indent=1))



# --------------------------------------------------------------------------- tables

SHORT = {"modern/flux.1-dev": "FLUX.1-dev", "modern/flux.1-kontext-edit": "Kontext edit", "modern/gpt-4o": "GPT-4o",
         "modern/gpt-image-2": "gpt-image-2", "modern/midjourney-v7": "MJ v7", "modern/qwen-image": "Qwen-Image",
         "faces/stylegan3": "StyleGAN3 faces"}


def _agg(per_seed: list[dict], key: str, field: str = "ap") -> tuple[float, float] | None:
    vals = [r[key][field] for r in per_seed if key in r and r[key].get(field) is not None]
    return (float(np.mean(vals)), float(np.std(vals))) if vals else None


def _cell(v: tuple[float, float] | None, n: int) -> str:
    if v is None:
        return "–"
    return f"{v[0]:.3f}" + (f" ± {v[1]:.3f}" if n > 1 else "")


def tables(files: list[Path]) -> str:
    """Markdown tables of every run in the result files (mean ± sd over seeds)."""
    runs, released = {}, None
    for f in files:
        d = json.loads(f.read_text())
        runs.update(d.get("runs", {}))
        released = released or d.get("released")
    gens = list(SHORT)
    out = []
    for proto in ("D", "E"):
        out.append(f"#### Protocol {proto}: AP per held-out generator (content-only control AP in brackets)\n")
        out.append("| configuration | " + " | ".join(SHORT[g] for g in gens) + " | mean | photoreal | FFHQ pair |")
        out.append("|---" * (len(gens) + 4) + "|")
        if released:
            for name, rows in released.items():
                cells = [f"{rows[g]['ap']:.3f} ({rows[g].get('control_ap', 0):.2f})" for g in gens]
                mean = np.mean([rows[g]["ap"] for g in gens])
                photo = rows.get("photoreal-pooled", {}).get("ap") if proto == "D" else None
                out.append(f"| previous release {name} (never saw modern data) | " + " | ".join(cells)
                           + f" | **{mean:.3f}** | {photo:.3f} | {rows['faces/ffhq-pair']['ap']:.3f} |"
                           if photo is not None else
                           f"| previous release {name} (never saw modern data) | " + " | ".join(cells)
                           + f" | **{mean:.3f}** | – | {rows['faces/ffhq-pair']['ap']:.3f} |")
        for key, r in sorted(runs.items()):
            p, cname, method = key.split("|")
            if p != proto:
                continue
            ps = r["per_seed"]
            n = len(ps)
            cells = []
            for g in gens:
                v, c = _agg(ps, g), _agg(ps, g, "control_ap")
                cells.append(_cell(v, n) + (f" ({c[0]:.2f})" if c else ""))
            means = [float(np.mean([row[g]["ap"] for g in gens if g in row])) for row in ps]
            mean = (float(np.mean(means)), float(np.std(means)))
            if proto == "E":  # photoreal pooled over folds: mean of the per-generator photoreal APs
                ph = [float(np.mean([row[f"{g}:photoreal"]["ap"] for g in gens[:6] if f"{g}:photoreal" in row]))
                      for row in ps]
                photo = (float(np.mean(ph)), float(np.std(ph)))
            else:
                photo = _agg(ps, "photoreal-pooled")
            out.append(f"| {cname} · {method} ({n} seed{'s' if n > 1 else ''}) | " + " | ".join(cells)
                       + f" | **{_cell(mean, n)}** | {_cell(photo, n)} | {_cell(_agg(ps, 'faces/ffhq-pair'), n)} |")
        out.append("")
    abc = [(k, r) for k, r in sorted(runs.items()) if k.split("|")[0] not in ("D", "E")]
    if abc:
        out.append("#### Protocols A–C (older sources only): mean AP over held-out sources\n")
        out.append("| protocol | configuration · method | seeds | mean AP |")
        out.append("|---|---|---|---|")
        for key, r in abc:
            p, cname, method = key.split("|")
            ps = r["per_seed"]
            means = [float(np.mean([v["ap"] for k, v in row.items() if v.get("ap") is not None])) for row in ps]
            out.append(f"| {p} | {cname} · {method} | {len(ps)} | {np.mean(means):.3f} ± {np.std(means):.3f} |")
        out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    main()
