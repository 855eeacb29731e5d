"""Training speed: feature extraction images/s, and head-training seconds per epoch on cached features.

  (a) feature extraction through the real pipeline: causalclip_cli.training.features.extract_features with
      cache=None (every image decoded and embedded), the embed function `causalclip train` uses, on
      N images (default 64) of ../shared/data/forensynths-thumbs, at train's defaults (batch 32,
      2 decode workers). One warm-up batch goes through the tower first and is not timed; the timed
      call includes DataLoader start-up, as a real extraction does.
  (b) head training: train_head on synthetic cached-like features (default 100,000 rows, 512-dim
      float32, two Gaussian clusters, one per label), TrainConfig(epochs=3, batch_size=256), for the
      CausalCLIP head (default config) and the linear probe. train_head also scores a validation set
      after every epoch; it gets 10,000 rows, so each "epoch" here = one pass over the training rows +
      one validation pass. Reported: total train_head seconds / epochs, and each epoch's own time.

    python benchmarks/train_speed.py                          # full run
    python benchmarks/train_speed.py --tiny --n-features 5000 --images 8   # quick check

Results: benchmarks/results/train_speed.json (train_speed_tiny.json with --tiny).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _util import SHARED_DATA, apply_threads, list_images, log, machine_info, spread, write_results  # noqa: E402


def extraction(files: list[str], tiny: bool, device: str, batch_size: int, workers: int) -> dict[str, Any]:
    """(a) Images/s of extract_features(cache=None) with the embed function of `causalclip train`."""
    import torch

    from causalclip_cli.model.backbones import BackboneSpec, load_backbone
    from causalclip_cli.training.features import extract_features

    spec = BackboneSpec("causalclip-tiny", "none") if tiny else BackboneSpec()
    t0 = time.perf_counter()
    bb = load_backbone(spec, allow_download=False, device=device)
    load_s = time.perf_counter() - t0

    def embed(px: torch.Tensor) -> torch.Tensor:
        # Same as experiment.run_train's embed: fp32 tower under inference mode.
        with torch.inference_mode():
            return bb.tower(px.to(device)).float()

    size = bb.preprocess.size
    embed(torch.zeros(min(batch_size, len(files)), 3, size, size))  # warm-up, not timed
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    ext = extract_features(files, embed, bb.preprocess, None, batch_size=batch_size, workers=workers)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    secs = time.perf_counter() - t0
    return {
        "backbone": bb.info.config,
        "images": len(files),
        "embedded": ext.computed,
        "failed": len(ext.failed),
        "batch_size": batch_size,
        "workers": workers,
        "model_load_s": round(load_s, 3),
        "seconds": round(secs, 3),
        "images_per_s": round(len(files) / secs, 2),
    }


def synthetic_features(n: int, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Two Gaussian clusters (label 0 / 1) that overlap enough for training not to be trivial."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, size=n)
    centres = rng.normal(0.0, 1.0, size=(2, dim)).astype(np.float32)
    x = rng.normal(0.0, 1.0, size=(n, dim)).astype(np.float32) * 2.0 + centres[y]
    return x.astype(np.float32), y.astype(np.int64)


def head_training(kind: str, x: np.ndarray, y: np.ndarray, xv: np.ndarray, yv: np.ndarray, epochs: int,
                  batch_size: int, device: str) -> dict[str, Any]:
    """(b) train_head wall time; per-epoch times from the on_epoch callback (train pass + validation)."""
    from causalclip_cli.training.trainer import TrainConfig, train_head

    # patience > epochs: early stopping must not cut the measurement short.
    cfg = TrainConfig(epochs=epochs, batch_size=batch_size, patience=epochs + 1, device=device)
    marks: list[float] = []
    t0 = time.perf_counter()
    res = train_head(kind, {}, x, y, xv, yv, cfg, on_epoch=lambda row: marks.append(time.perf_counter()))
    total = time.perf_counter() - t0
    per_epoch = [round(b - a, 3) for a, b in zip([t0, *marks[:-1]], marks, strict=True)]
    done = len(res.history)
    return {
        "head": kind,
        "epochs": done,
        "steps_per_epoch": -(-len(x) // batch_size),
        "total_s": round(total, 3),
        "s_per_epoch": round(total / max(done, 1), 3),
        "epoch_s": per_epoch,  # the first includes setup (tensors to device, optimiser)
        "train_rows_per_s": round(len(x) * done / total, 1),
        "best_val_ap": res.best.get("ap"),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=SHARED_DATA / "forensynths-thumbs")
    ap.add_argument("--images", type=int, default=64, help="images for the extraction measurement")
    ap.add_argument("--batch-size", type=int, default=32, help="extraction batch size (train's default)")
    ap.add_argument("--workers", type=int, default=2, help="extraction decode workers (train's default)")
    ap.add_argument("--n-features", type=int, default=100_000, help="synthetic training rows")
    ap.add_argument("--n-val", type=int, default=10_000, help="synthetic validation rows (scored every epoch)")
    ap.add_argument("--dim", type=int, default=512, help="feature width (ViT-B/16: 512)")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--train-batch-size", type=int, default=256)
    ap.add_argument("--heads", nargs="+", default=["causalclip", "linear"], choices=["causalclip", "linear"])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads here and OMP_NUM_THREADS for subprocesses (default: torch's choice)")
    ap.add_argument("--tiny", action="store_true", help="tiny random tower for (a) (quick check)")
    ap.add_argument("--skip-extraction", action="store_true")
    ap.add_argument("--out", type=Path, default=None, help="results folder (default benchmarks/results)")
    args = ap.parse_args()
    apply_threads(args.threads)

    import torch

    from causalclip_cli.settings import resolve_device

    args.device = resolve_device(args.device)
    result: dict[str, Any] = {
        "benchmark": "train_speed",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine_info(args.device),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "notes": [
            "extraction: extract_features(cache=None) incl. DataLoader start-up, excl. model load; "
            "one warm-up tower batch not timed",
            f"head training: {args.n_features} synthetic train rows, {args.n_val} validation rows scored after "
            "every epoch (included in the epoch time)",
        ],
    }

    if not args.skip_extraction:
        files = spread(list_images(args.data), args.images)
        log(f"(a) feature extraction: {len(files)} images of {args.data.name} "
            f"({'tiny tower' if args.tiny else 'ViT-B/16'}, batch {args.batch_size}, {args.workers} workers) ...")
        result["extraction"] = extraction(files, args.tiny, args.device, args.batch_size, args.workers)
        log(f"    {result['extraction']['images_per_s']:.2f} images/s")

    x, y = synthetic_features(args.n_features, args.dim, seed=0)
    xv, yv = synthetic_features(args.n_val, args.dim, seed=1)
    result["training"] = []
    for kind in args.heads:
        log(f"(b) {kind} head: {args.epochs} epochs over {args.n_features:,} × {args.dim} features "
            f"(+ {args.n_val:,} validation rows per epoch), torch threads {torch.get_num_threads()} ...")
        r = head_training(kind, x, y, xv, yv, args.epochs, args.train_batch_size, args.device)
        result["training"].append(r)
        log(f"    {r['s_per_epoch']:.2f} s/epoch (epochs: {', '.join(f'{s:.2f}' for s in r['epoch_s'])} s)")

    path = write_results("train_speed_tiny" if args.tiny else "train_speed", result, args.out)
    log("")
    if "extraction" in result:
        e = result["extraction"]
        log(f"feature extraction ({e['backbone']}): {e['images_per_s']:.2f} images/s over {e['images']} images")
    log(f"{'head':<12} {'s/epoch':>9} {'rows/s':>10} {'steps/epoch':>12}")
    for r in result["training"]:
        log(f"{r['head']:<12} {r['s_per_epoch']:>9.2f} {r['train_rows_per_s']:>10,.0f} {r['steps_per_epoch']:>12}")
    log(f"(epoch = {args.n_features:,} training rows at batch {args.train_batch_size} + scoring {args.n_val:,} "
        "validation rows)")
    log(f"\nwrote {path}")


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
