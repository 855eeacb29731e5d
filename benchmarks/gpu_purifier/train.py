"""Train the learned purifier (issue 21) against both released heads; made to run as one job on a CUDA GPU.

    python benchmarks/gpu_purifier/train.py --out DIR [--device cuda] [--time-budget 180] [--train-images N]
    python benchmarks/gpu_purifier/train.py --out DIR --tiny          # plumbing: tiny random tower, CPU

Training images: the release manifest's `train` rows (benchmarks/results/release-manifest.csv), evenly
spread; validation: its `val` rows, attacked once (PGD 4/255, 10 steps, on the CausalCLIP head) and
measured before and after training. The `test` rows and the files outside the manifest are left to
benchmarks/adversarial.py. Pairs are made on the fly (causalclip_cli.robustness.purifier_train):
JPEG/resize-mixed clean bases, half of each batch attacked (PGD 1–8/255, 2–10 steps, or FGSM) on a randomly
drawn head.

Writes DIR/<name>.safetensors (atomic; metadata: training summary), DIR/train_summary.json and prints
progress on stderr. --tiny builds two random heads over the tiny test tower (causalclip-tiny) in DIR and
trains a few steps on a few images on CPU: the same code path, minutes → seconds.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402

from benchmarks._util import REPO, SHARED_DATA, log, machine_info, spread, write_results  # noqa: E402

DEFAULT_NAME = "purifier-vitb16-unet"


def tiny_heads(out: Path) -> list[Path]:
    """A CausalCLIP and a linear head over the tiny random tower (as in tests/conftest.py)."""
    from causalclip_cli.model.backbones import BackboneSpec, locate
    from causalclip_cli.model.checkpoint import Decision, build_metadata, save_checkpoint
    from causalclip_cli.model.heads import make_head

    info = locate(BackboneSpec("causalclip-tiny", "none"))
    paths = []
    for kind, cfg in (("causalclip", {"mask_hidden": 16, "cls_hidden": 16, "adv_hidden": 16}), ("linear", {})):
        torch.manual_seed(0)
        head = make_head(kind, info.embed_dim, cfg)
        meta = build_metadata(head, info.to_dict(), Decision(0.5), {"summary": {"note": "gpu_purifier --tiny"}})
        paths.append(save_checkpoint(out / f"tiny-{kind}.safetensors", head, meta))
    return paths


def load_heads(paths: list[Path], device: str) -> list:
    """Detectors sharing one backbone (the heads differ, the tower and its features do not)."""
    from causalclip_cli.model.checkpoint import load_detector, load_head

    # fp32 (TF32 at most): on CUDA `auto` would score verdicts in fp16, unlike the attacks and the CPU tables.
    first = load_detector(str(paths[0]), device=device, precision="fp32")
    dets = [first]
    for p in paths[1:]:
        head, meta = load_head(p, device=device)
        dets.append(dataclasses.replace(first, head=head, metadata=meta, path=Path(p)))
    return dets


def manifest_split(split: str) -> list[str]:
    from benchmarks.adversarial import _manifest

    return sorted(p for p, s in _manifest().items() if s == split and Path(p).is_file())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True, help="folder for the purifier, summary and logs")
    ap.add_argument("--name", default=DEFAULT_NAME, help="purifier file name (without .safetensors)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--tiny", action="store_true", help="plumbing run: tiny random tower, CPU, a few steps")
    ap.add_argument("--train-images", type=int, default=0, help="manifest train rows used (0: all)")
    ap.add_argument("--val-images", type=int, default=96, help="manifest val rows for the before/after check")
    ap.add_argument("--iterations", type=int, default=4000)
    ap.add_argument("--time-budget", type=float, default=180.0, help="seconds of training loop at most")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--attack-batch", type=int, default=64, help="images per backbone forward/backward")
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--levels", type=int, default=2)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--feature-weight", type=float, default=1.0)
    ap.add_argument("--workers", type=int, default=8, help="decoding processes")
    ap.add_argument("--tf32", action=argparse.BooleanOptionalAction, default=True,
                    help="TF32 matmuls while training (CUDA; attacks and loss need no more precision)")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    t0 = time.perf_counter()
    if args.threads:
        torch.set_num_threads(args.threads)

    from causalclip_cli.robustness.adversarial import load_pixels
    from causalclip_cli.robustness.purifier_train import (
        PairConfig,
        UNetTrainConfig,
        fixed_adversarial_set,
        train_unet_purifier,
    )
    from causalclip_cli.robustness.purify import save_purifier
    from causalclip_cli.settings import resolve_device

    args.out.mkdir(parents=True, exist_ok=True)
    if args.tiny:
        device = "cpu" if args.device == "auto" else args.device
        heads = tiny_heads(args.out)
        args.train_images = args.train_images or 12
        args.val_images = min(args.val_images, 4)
        args.iterations = min(args.iterations, 6)
        args.batch_size, args.attack_batch, args.width = min(args.batch_size, 8), min(args.attack_batch, 8), 8
        args.workers = 0
    else:
        device = resolve_device(args.device)
        heads = [REPO / "weights" / "causalclip-vitb16.safetensors", REPO / "weights" / "linear-vitb16.safetensors"]
    if device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = args.tf32
        torch.backends.cudnn.allow_tf32 = args.tf32
    dets = load_heads(heads, device)
    log(f"heads {[d.path.name for d in dets]} on {device} ({time.perf_counter() - t0:.1f} s)")

    train_files = manifest_split("train")
    train_files = spread(train_files, args.train_images or None)
    val_files = spread(manifest_split("val"), args.val_images)
    ts = time.perf_counter()
    pixels, _, failed = load_pixels(train_files, dets[0], 64, args.workers)
    val_px, _, vfailed = load_pixels(val_files, dets[0], 64, args.workers)
    t_decode = time.perf_counter() - ts
    log(f"{pixels.shape[0]} training images, {val_px.shape[0]} validation images, "
        f"{len(failed) + len(vfailed)} unreadable ({t_decode:.1f} s to decode)")
    ts = time.perf_counter()
    val_adv, val_target = fixed_adversarial_set(dets[0], val_px, eps=4.0, steps=2 if args.tiny else 10,
                                                batch_size=args.attack_batch)
    t_val = time.perf_counter() - ts
    cfg = UNetTrainConfig(width=args.width, levels=args.levels, iterations=args.iterations,
                          time_budget_s=args.time_budget, batch_size=args.batch_size, lr=args.lr,
                          feature_weight=args.feature_weight, log_every=1 if args.tiny else 50,
                          pairs=PairConfig(attack_batch=args.attack_batch))
    net, summary = train_unet_purifier(dets, pixels, cfg, val=(val_px, val_adv, val_target), progress=log)
    rel = SHARED_DATA.resolve()

    def where(files: list[str]) -> str:
        groups = sorted({Path(f).resolve().relative_to(rel).parts[0] for f in files})
        return ", ".join(groups)

    summary.update(
        images=f"benchmarks/results/release-manifest.csv train split, {pixels.shape[0]} images ({where(train_files)})",
        validation=f"release-manifest.csv val split, {val_px.shape[0]} images, PGD 4/255 on {dets[0].path.stem}",
        device=machine_info(device), tf32=bool(args.tf32 and device.startswith("cuda")), tiny=args.tiny,
        seconds_decode=round(t_decode, 1), seconds_val_attack=round(t_val, 1))
    curve = summary.pop("loss_curve")
    path = save_purifier(args.out / f"{args.name}.safetensors", net, {"training": summary})
    summary["loss_curve"] = curve
    summary["seconds_total"] = round(time.perf_counter() - t0, 1)
    write_results("train_summary", {"purifier": str(path), **summary}, args.out)
    va, vb = summary["val_after"], summary["val_before"]
    log(f"wrote {path}: {summary['iterations_run']} iterations ({summary['stopped_by']}), "
        f"val feature error {vb['feature_error_adv']:.4f} → {va['feature_error_purified_adv']:.4f} "
        f"(clean through it {va['feature_error_purified_clean']:.5f}); flip rate {va['head0']['flip_rate']:.2f} → "
        f"{va['head0']['flip_rate_after_purifier']:.2f}; {summary['seconds_total']} s")
    print(json.dumps({"purifier": str(path), "iterations": summary["iterations_run"],
                      "val_before": vb, "val_after": va}))


if __name__ == "__main__":
    main()
