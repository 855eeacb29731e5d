"""Partly generated photographs: how well `scan --explain` finds a generated region, and whether it flags the image.

Builds composites from the release manifest's split (default `val` to choose settings, `test` to report):
each real scene photograph (camera-2025, camera-jpegs, indoor-noisy, phone-clothing) gets one rectangular
region cut at native scale from a generated image of the same split (modern-2025 and people-2026 generators),
covering a quarter to a half of the photo, pasted with a feathered edge (4-px Gaussian), and the whole image
re-saved as JPEG 92 so the seam is not the evidence. Its mask is kept. The same photographs are also re-saved
untouched (JPEG 92), and the split's FLUX.1 Kontext edits are scored as they are (no mask: whole-image edits).

For every image it records the scan's probability and label (the checkpoint's calibrated decision) and the
evidence map, and reports:
  - per-cell AUC against the mask (a cell is generated when at least half of it is), averaged over composites;
  - the share of composites whose `box` hits the region (at least half of the box inside the mask), and the
    pointing game (the peak cell inside the mask);
  - labels of composites, untouched photos and Kontext edits, plain and with the region rule of `--explain`;
  - deletion curves on --deletion composites (cells greyed out in map order vs random order, the head's
    logit of the whole image after each step).

    python benchmarks/composites.py --split val  --out results/composites-val.json
    python benchmarks/composites.py --split test --out results/composites-test.json

Images are written under --workdir (default ~/.cache/causalclip/composites), never into the repository.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._util import RESULTS, SHARED_DATA, log, machine_info  # noqa: E402

MANIFEST = RESULTS / "release-manifest.csv"
SCENE_REALS = ("camera-2025", "camera-jpegs", "indoor-noisy", "phone-clothing")
# Reals of every kind of photograph, for the false-positive rate of a region rule (not composited).
ALL_PHOTO_REALS = (*SCENE_REALS, "coco-imagenet", "imagenet", "lfw", "portraits-pixabay", "studio-portraits",
                   "ffhq")
DONORS = ("modern_gpt-image-2", "modern_gpt-4o", "modern_midjourney-v7", "modern_flux.1-dev", "modern_qwen-image",
          "people_dall-e3", "people_sdxl", "people_stable-cascade")
EDITS = ("modern_flux.1-kontext-edit",)
QUALITY = 92
FEATHER = 4


def manifest_rows(split: str) -> list[dict]:
    """The release manifest's rows of `split`, each with `file`: its path under ../shared/data."""
    with open(MANIFEST, newline="", encoding="utf-8") as fh:
        rows = [r for r in csv.DictReader(fh) if r["split"] == split]
    for r in rows:
        r["file"] = str(SHARED_DATA / r["path"].split("shared/data/", 1)[1])
    return rows


def _open(path: str) -> Image.Image:
    from causalclip_cli.inputs.data import decode_image

    return decode_image(path).image


def build(split: str, workdir: Path, seed: int) -> list[dict]:
    """Write the composites, their masks and the untouched photos; return one item per image to score."""
    rows = manifest_rows(split)
    reals = sorted((r for r in rows if r["label"] == "0" and r["domain"] in SCENE_REALS), key=lambda r: r["file"])
    donors = sorted((r for r in rows if r["label"] == "1" and r["generator"] in DONORS), key=lambda r: r["file"])
    rng = random.Random(seed)
    out = workdir / split
    out.mkdir(parents=True, exist_ok=True)
    items: list[dict] = []
    for i, real in enumerate(reals):
        donor = donors[rng.randrange(len(donors))]
        photo, gen = _open(real["file"]), _open(donor["file"])
        frac = rng.uniform(0.25, 0.5)
        aspect = rng.uniform(0.6, 1.6)
        # The region is cut at the generator's own scale; the photo is shrunk (never the region enlarged)
        # until the region fits inside the donor.
        rw = (frac * photo.width * photo.height * aspect) ** 0.5
        rh = rw / aspect
        shrink = min(1.0, gen.width / rw, gen.height / rh, photo.width / rw, photo.height / rh)
        if shrink < 1.0:
            photo = photo.resize((max(64, int(photo.width * shrink)), max(64, int(photo.height * shrink))),
                                 Image.Resampling.LANCZOS)
        rw = int(min((frac * photo.width * photo.height * aspect) ** 0.5, gen.width, photo.width))
        rh = int(min(rw / aspect, gen.height, photo.height))
        x = rng.randrange(0, photo.width - rw + 1)
        y = rng.randrange(0, photo.height - rh + 1)
        gx = rng.randrange(0, gen.width - rw + 1)
        gy = rng.randrange(0, gen.height - rh + 1)
        alpha = Image.new("L", photo.size, 0)
        alpha.paste(255, (x + FEATHER, y + FEATHER, x + rw - FEATHER, y + rh - FEATHER))
        alpha = alpha.filter(ImageFilter.GaussianBlur(FEATHER))
        layer = photo.copy()
        layer.paste(gen.crop((gx, gy, gx + rw, gy + rh)), (x, y))
        comp = Image.composite(layer, photo, alpha)
        name = f"{i:03d}"
        comp.save(out / f"{name}-composite.jpg", quality=QUALITY)
        mask = Image.new("L", photo.size, 0)
        mask.paste(255, (x, y, x + rw, y + rh))
        mask.save(out / f"{name}-mask.png")
        photo.save(out / f"{name}-untouched.jpg", quality=QUALITY)
        common = {"real": real["file"], "domain": real["domain"]}
        items.append({"path": str(out / f"{name}-composite.jpg"), "kind": "composite",
                      "mask": str(out / f"{name}-mask.png"), "donor": donor["file"],
                      "generator": donor["generator"], "region_share": rw * rh / (photo.width * photo.height),
                      **common})
        items.append({"path": str(out / f"{name}-untouched.jpg"), "kind": "untouched", **common})
    for r in rows:
        if r["label"] == "1" and r["generator"] in EDITS:
            items.append({"path": r["file"], "kind": "edit", "generator": r["generator"]})
        elif r["label"] == "0" and r["domain"] in ALL_PHOTO_REALS and r["domain"] not in SCENE_REALS:
            items.append({"path": r["file"], "kind": "photo", "domain": r["domain"]})
    return items


def _auc(scores: np.ndarray, labels: np.ndarray) -> float | None:
    from sklearn.metrics import roc_auc_score

    if labels.min() == labels.max():
        return None
    return float(roc_auc_score(labels, scores))


def cell_truth(mask: Image.Image, rows: int, cols: int) -> np.ndarray:
    """1 where at least half of a cell's pixels are in the region."""
    m = np.asarray(mask.resize((cols * 8, rows * 8), Image.Resampling.BOX), dtype=np.float64) / 255.0
    return (m.reshape(rows, 8, cols, 8).mean(axis=(1, 3)) >= 0.5).astype(int)


def box_hits(box: list[int], mask: Image.Image) -> bool:
    x0, y0, x1, y1 = box
    inside = np.asarray(mask, dtype=np.float64)[y0:y1, x0:x1] / 255.0
    return bool(inside.size and inside.mean() >= 0.5)


def deletion_curve(detector, image: Image.Image, order: np.ndarray, rows: int, cols: int, steps: int) -> list[float]:
    """The whole image's head logit as the cells in `order` are greyed out, `steps` equal parts at a time."""
    import torch

    arr = np.asarray(image).copy()
    h, w = arr.shape[:2]
    grey = np.full(3, 128, dtype=arr.dtype)
    out = []
    per = int(np.ceil(len(order) / steps))
    for s in range(steps + 1):
        if s:
            for idx in order[(s - 1) * per: s * per]:
                r, c = divmod(int(idx), cols)
                arr[int(r * h / rows):int((r + 1) * h / rows), int(c * w / cols):int((c + 1) * w / cols)] = grey
        views = torch.from_numpy(detector.preprocess.to_views(Image.fromarray(arr)))
        out.append(float(detector.logits(detector.embed(views))[0]))
    return out


def evaluate(items: list[dict], checkpoint: str | None, settings, deletion: int, seed: int) -> None:
    import torch

    from causalclip_cli.evidence.maps import explain_image
    from causalclip_cli.model.checkpoint import load_detector

    detector = load_detector(checkpoint, device="cpu", precision="fp32")
    decision = detector.decision
    rng = np.random.default_rng(seed)
    done_deletion = 0
    start = time.perf_counter()
    for n, item in enumerate(items, 1):
        image = _open(item["path"])
        views = torch.from_numpy(detector.preprocess.to_views(image))
        p, fam = detector.assess(views)
        item["probability"] = float(p[0])
        item["familiarity"] = None if fam is None else float(fam[0])
        item["label"] = decision.verdict(item["probability"], item["familiarity"])[0]
        t = time.perf_counter()
        m = explain_image(detector, image, settings)
        item["explain_seconds"] = time.perf_counter() - t
        item.update(rows=m.rows, cols=m.cols, box=m.box, peak=m.peak, window_max=m.window_max,
                    scores=[round(v, 5) for v in m.scores],
                    top_cells=float(np.mean(np.sort(m.grid().ravel())[-max(1, m.rows * m.cols // 10):])))
        if item["kind"] == "composite":
            mask = Image.open(item["mask"]).convert("L")
            truth = cell_truth(mask, m.rows, m.cols)
            grid = m.grid()
            item["cell_auc"] = _auc(grid.ravel(), truth.ravel())
            item["box_hit"] = box_hits(m.box, mask)
            item["pointing"] = bool(truth.ravel()[int(np.argmax(grid))])
            if done_deletion < deletion:
                done_deletion += 1
                order = np.argsort(-grid.ravel(), kind="stable")
                item["deletion_map"] = deletion_curve(detector, image, order, m.rows, m.cols, 5)
                item["deletion_random"] = deletion_curve(detector, image, rng.permutation(order.size), m.rows,
                                                         m.cols, 5)
        if n % 20 == 0:
            log(f"{n}/{len(items)} images, {time.perf_counter() - start:.0f} s")


def _share(items: list[dict], test) -> float | None:  # noqa: ANN001
    return round(sum(map(test, items)) / len(items), 4) if items else None


def region_threshold(items: list[dict], stat: str, fpr: float) -> float:
    """The smallest region-statistic threshold that flags at most `fpr` of the untouched photographs."""
    reals = np.sort([i[stat] for i in items if i["kind"] in ("untouched", "photo")])
    k = int(np.floor(fpr * len(reals)))
    return float(reals[len(reals) - k - 1]) + 1e-9 if len(reals) else 1.0


def summarise(items: list[dict], threshold: float, stat: str) -> dict:
    """Per kind of image: labels from the scan, and with the region rule (stat ≥ threshold → fake)."""
    out: dict = {"region_rule": {"statistic": stat, "threshold": threshold}}
    for kind in ("composite", "untouched", "photo", "edit"):
        group = [i for i in items if i["kind"] == kind]
        if not group:
            continue
        entry = {"n": len(group)}
        for label in ("fake", "uncertain", "real"):
            entry[f"scan_{label}"] = _share(group, lambda i, lab=label: i["label"] == lab)
        entry["explain_fake"] = _share(group, lambda i: i["label"] == "fake" or i[stat] >= threshold)
        entry["explain_uncertain"] = _share(group, lambda i: i["label"] == "uncertain" and i[stat] < threshold)
        entry["explain_seconds_mean"] = round(float(np.mean([i["explain_seconds"] for i in group])), 3)
        if kind == "composite":
            aucs = [i["cell_auc"] for i in group if i.get("cell_auc") is not None]
            entry["cell_auc_mean"] = round(float(np.mean(aucs)), 4)
            entry["cell_auc_median"] = round(float(np.median(aucs)), 4)
            entry["box_hit"] = _share(group, lambda i: i["box_hit"])
            entry["pointing"] = _share(group, lambda i: i["pointing"])
            entry["region_share_mean"] = round(float(np.mean([i["region_share"] for i in group])), 3)
            curves = [i for i in group if "deletion_map" in i]
            if curves:
                entry["deletion_map_mean"] = np.mean([c["deletion_map"] for c in curves], 0).round(3).tolist()
                entry["deletion_random_mean"] = np.mean([c["deletion_random"] for c in curves], 0).round(3).tolist()
                entry["deletion_n"] = len(curves)
        out[kind] = entry
    by_domain: dict[str, list] = {}
    for i in items:
        if i["kind"] in ("untouched", "photo"):
            by_domain.setdefault(i["domain"], []).append(i)
    out["photos_by_kind_explain_fake"] = {d: _share(g, lambda i: i["label"] == "fake" or i[stat] >= threshold)
                                          for d, g in sorted(by_domain.items())}
    return out


def reanalyse(items: list[dict], smooth: int) -> None:
    """Recompute the map statistics of stored grids with another `MapSettings.smooth` (a box filter over the
    cells' logits, which is what the package applies before the sigmoid) without running the model again."""
    from causalclip_cli.evidence.maps import _box_filter, _strongest_region

    for item in items:
        grid = np.clip(np.asarray(item["scores"], dtype=np.float64).reshape(item["rows"], item["cols"]), 1e-7,
                       1 - 1e-7)
        scores = 1.0 / (1.0 + np.exp(-_box_filter(np.log(grid / (1 - grid)), smooth)))
        with Image.open(item["path"]) as im:
            width, height = im.size
        r0, c0, r1, c1 = _strongest_region(scores)
        sx, sy = width / item["cols"], height / item["rows"]
        item["box"] = [int(round(c0 * sx)), int(round(r0 * sy)), int(round(c1 * sx)), int(round(r1 * sy))]
        item["peak"] = float(scores.max())
        item["top_cells"] = float(np.mean(np.sort(scores.ravel())[-max(1, scores.size // 10):]))
        if item["kind"] == "composite":
            mask = Image.open(item["mask"]).convert("L")
            truth = cell_truth(mask, item["rows"], item["cols"])
            item["cell_auc"] = _auc(scores.ravel(), truth.ravel())
            item["box_hit"] = box_hits(item["box"], mask)
            item["pointing"] = bool(truth.ravel()[int(np.argmax(scores))])


def set_region(checkpoint: Path, threshold: float, note: str) -> None:
    """Record the region rule in a checkpoint's decision (tensors, familiarity reference and the rest of the
    metadata unchanged)."""
    from causalclip_cli.model.checkpoint import load_familiarity, load_head, save_checkpoint

    head, meta = load_head(checkpoint)
    familiarity = load_familiarity(checkpoint, meta)
    meta["decision"]["region"] = {"statistic": "window_max", "threshold": threshold, "calibration": note}
    save_checkpoint(checkpoint, head, meta, familiarity)
    log(f"{checkpoint}: region rule window_max >= {threshold}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--split", default="val", choices=("val", "test"))
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--workdir", type=Path, default=Path.home() / ".cache" / "causalclip" / "composites")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--smooth", type=int, default=None, help="MapSettings.smooth (default: the package's)")
    ap.add_argument("--statistic", default="window_max", choices=("window_max", "peak", "top_cells"))
    ap.add_argument("--threshold", type=float, default=None,
                    help="region-rule threshold (default: set on this split's photos at --fpr)")
    ap.add_argument("--fpr", type=float, default=0.01)
    ap.add_argument("--deletion", type=int, default=20, help="composites with deletion curves")
    ap.add_argument("--limit", type=int, default=None, help="score only the first N items (a quick look)")
    ap.add_argument("--reanalyse", type=Path, default=None,
                    help="a results file of this script: recompute its map statistics with --smooth, no model")
    ap.add_argument("--set-region", type=Path, default=None, metavar="CHECKPOINT",
                    help="write --threshold (with --note) into CHECKPOINT's decision as its region rule, and stop")
    ap.add_argument("--note", default="", help="with --set-region: how the threshold was chosen")
    ap.add_argument("--out", type=Path, required=False)
    args = ap.parse_args()
    if args.set_region is not None:
        if args.threshold is None:
            raise SystemExit("--set-region needs --threshold")
        set_region(args.set_region, args.threshold, args.note)
        return
    if args.out is None:
        raise SystemExit("--out is required")

    import torch

    from causalclip_cli.evidence.maps import MapSettings

    torch.set_num_threads(2)
    settings = MapSettings() if args.smooth is None else MapSettings(smooth=args.smooth)
    if args.reanalyse is not None:
        stored = json.loads(args.reanalyse.read_text())
        if stored["settings"].get("smooth", 0) != 0:
            raise SystemExit("--reanalyse needs a run with --smooth 0 (the raw cells)")
        items = stored["items"]
        reanalyse(items, settings.smooth)
    else:
        items = build(args.split, args.workdir, args.seed)[: args.limit]
        log(f"{len(items)} images ({sum(i['kind'] == 'composite' for i in items)} composites) in {args.workdir}")
        evaluate(items, args.checkpoint, settings, args.deletion, args.seed)
    threshold = args.threshold if args.threshold is not None else region_threshold(items, args.statistic, args.fpr)
    summary = summarise(items, threshold, args.statistic)
    for stat in ("window_max", "peak", "top_cells"):
        thr = region_threshold(items, stat, args.fpr)
        summary.setdefault("statistics_at_fpr", {})[stat] = {
            "threshold": thr, "composites_fake": _share([i for i in items if i["kind"] == "composite"],
                                                        lambda i, s=stat, t=thr: i["label"] == "fake" or i[s] >= t)}
    result = {"command": " ".join(sys.argv), "split": args.split, "seed": args.seed,
              "settings": vars(settings), "machine": machine_info(), "summary": summary}
    if args.reanalyse is None:
        result["items"] = items
    else:  # the grids stay in the file they came from; only the recomputed per-image statistics are kept here
        keep = ("path", "kind", "domain", "generator", "label", "probability", "window_max", "box", "peak",
                "cell_auc", "box_hit", "pointing")
        result["split"] = stored["split"]
        result["items_from"] = str(args.reanalyse)
        result["items"] = [{k: i[k] for k in keep if k in i} for i in items]
    path = args.out if args.out.is_absolute() else Path(__file__).resolve().parent / args.out
    path.write_text(json.dumps(result, indent=1) + "\n")
    log(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
