"""Scan throughput on a CUDA GPU: the model-only ceiling and `scan_records` end to end, for ViT-B/16 and the
paper's ViT-L/14, with and without autocast.

Towers are randomly initialised (`open_clip.create_model(name, pretrained=None)`): speed does not depend on
the weights, and the real weights are not needed. Each tower gets a CausalCLIP head (default config) and
runs through the project's own `Detector.probabilities` / `scan.scan_records`, so what is timed is the
code `causalclip scan --device cuda` runs.

  ceiling     random pixel batches already on the GPU → Detector.probabilities (tower + head + copy of
              the probabilities back to the host), per precision and batch size
  end to end  scan_records over N generated JPEGs of photo size (decoded, resized and batched in
              DataLoader workers, pinned memory), per precision / batch size / workers; wall time from
              the first call to the last record, DataLoader start-up included
  naive       decode → preprocess → forward one image at a time (the loop scan replaces)
  decode      (--decode-rows, issue 19) scan_records end to end with --decode cpu (Pillow in worker processes)
              and --decode gpu (nvJPEG batches, gpu_decode.py) over the same JPEGs, per batch size and worker
              count: images/s, first-result time, peak GPU memory, which decoder handled how many files

    python benchmarks/gpu_scan.py --out DIR                  # on a CUDA machine
    python benchmarks/gpu_scan.py --tiny --device cpu --images 8 --out /tmp/x   # plumbing check on CPU
    python benchmarks/gpu_scan.py --decode-rows --out DIR    # on a CUDA machine: DIR/gpu.json = --base + key
    python benchmarks/gpu_scan.py --decode-rows --tiny --device cpu --images 16 --batches 4 --workers 0 2 \
        --out /tmp/x                                         # plumbing: decode_jpeg on the CPU stands in

Results: DIR/gpu.json (benchmarks/results/gpu.json holds the recorded run). --decode-rows writes a copy of --base
(default benchmarks/results/gpu.json) with its rows under the key "decode_issue19", the measured rows untouched.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from multiprocessing import Pool
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def log(msg: str) -> None:
    sys.stderr.write(msg + "\n")
    sys.stderr.flush()


def _make_jpeg(args: tuple[str, int, int, int]) -> str:
    """A photo-sized JPEG with smooth structure plus sensor-like grain (decodes like a photo, not a flat card)."""
    import numpy as np
    from PIL import Image

    path, w, h, seed = args
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, size=(h // 32, w // 32, 3), dtype=np.uint8)
    img = np.asarray(Image.fromarray(coarse).resize((w, h), Image.Resampling.BICUBIC), dtype=np.int16)
    img = np.clip(img + rng.normal(0, 6, size=img.shape), 0, 255).astype(np.uint8)
    Image.fromarray(img).save(path, format="JPEG", quality=90)
    return path


def make_images(folder: Path, n: int, sizes: list[tuple[int, int]], procs: int) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    jobs = [(str(folder / f"{i:05d}.jpg"), *sizes[i % len(sizes)], i) for i in range(n)]
    with Pool(procs) as pool:
        return sorted(pool.map(_make_jpeg, jobs))


def build_detector(model: str, device: str, precision: str):  # noqa: ANN201
    import open_clip
    import torch

    from causalclip_cli.model.backbones import Backbone, BackboneInfo, _preprocess_for, _register_configs
    from causalclip_cli.model.checkpoint import Detector
    from causalclip_cli.model.heads import make_head

    _register_configs()
    torch.manual_seed(0)
    clip = open_clip.create_model(model, pretrained=None, device=device)
    tower = clip.visual.eval().requires_grad_(False)
    del clip
    size = tower.image_size if isinstance(tower.image_size, int) else tower.image_size[0]
    dim = tower.output_dim
    pre = _preprocess_for(model, "openai", size)
    info = BackboneInfo(model, "none", model, "random-init", None, None, dim, pre.to_dict())
    head = make_head("causalclip", dim).eval().to(device)
    det = Detector(backbone=Backbone(tower, pre, info), head=head, metadata={}, path=Path(f"random-{model}"),
                   device=device, precision=precision)
    return det


def sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def ceiling(det, batch: int, min_seconds: float, device: str) -> dict[str, Any]:  # noqa: ANN001
    import torch

    size = det.preprocess.size
    x = torch.randn(batch, 3, size, size, device=device)
    for _ in range(3):
        det.probabilities(x)
    sync(device)
    n, t0 = 0, time.perf_counter()
    while True:
        det.probabilities(x)  # .cpu() inside: synchronises
        n += 1
        dt = time.perf_counter() - t0
        if dt >= min_seconds and n >= 3:
            break
    return {"batch": batch, "iters": n, "images_per_s": round(n * batch / dt, 1)}


def end_to_end(det, files: list[str], batch: int, workers: int, decode: str = "cpu",  # noqa: ANN001
               decode_batch=None) -> dict[str, Any]:  # noqa: ANN001
    """`decode` cpu keeps the meaning of the rows measured before issue 19 (Pillow in DataLoader workers)."""
    import torch

    from causalclip_cli.inputs.gpu_decode import DecodeStats
    from causalclip_cli.scanning.output import ScanSummary
    from causalclip_cli.scanning.scan import ScanOptions, scan_records

    cuda = str(det.device).startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    stats = DecodeStats()
    opts = ScanOptions(batch_size=batch, workers=workers, decode=decode, decode_batch=decode_batch,
                       decode_stats=stats)
    summary = ScanSummary()
    t0 = time.perf_counter()
    first = None
    n = 0
    for rec in scan_records(det, files, set(), opts, summary):
        n += 1
        if first is None:
            first = time.perf_counter() - t0
        assert rec.error is None, rec.error
    wall = time.perf_counter() - t0
    row = {"batch": batch, "workers": workers, "images": n, "wall_s": round(wall, 2),
           "first_result_s": round(first or 0.0, 2), "images_per_s": round(n / wall, 1),
           "loop_images_per_s": round(n / summary.seconds, 1) if summary.seconds else None}
    if decode != "cpu":
        row["decoders"] = stats.to_dict()
    if cuda:
        row["gpu_memory_peak_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return row


def decode_rows(args, files: list[str], log_sizes: dict) -> None:  # noqa: ANN001
    """Issue 19: --decode cpu vs gpu end to end; writes OUT/gpu.json = the --base document + "decode_issue19"."""
    import torch

    from causalclip_cli.inputs.gpu_decode import cpu_decode_batch

    cuda = args.device.startswith("cuda")
    base = json.loads(args.base.read_text()) if args.base and args.base.is_file() else {}
    rows: dict[str, Any] = {
        "benchmark": "gpu_scan --decode-rows", "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "settings": {k: str(v) for k, v in vars(args).items()},
        "machine": {"torch": torch.__version__, "cpus": os.cpu_count(),
                    "device": torch.cuda.get_device_name(0) if cuda else "cpu"},
        "gpu_decoder": "torchvision.io.decode_jpeg(device='cuda') (nvJPEG)" if cuda
        else "torchvision.io.decode_jpeg(device='cpu') standing in for nvJPEG (plumbing run, not a measurement)",
        "images": log_sizes, "models": {}}
    doc = {**base, "decode_issue19": rows}

    def save() -> None:
        (args.out / "gpu.json").write_text(json.dumps(doc, indent=2) + "\n")

    stand_in = None if cuda else cpu_decode_batch
    precision = "fp16" if cuda else "fp32"
    for model in args.models:
        det = build_detector(model, args.device, precision)
        r: dict[str, Any] = {"precision": precision, "runs": []}
        rows["models"][model] = r
        end_to_end(det, files[: max(args.batches)], max(args.batches), 0)  # warm-up: kernels, cuDNN, allocator
        for decode in ("cpu", "gpu"):
            for b in args.batches:
                for w in args.workers:
                    e = {"decode": decode, **end_to_end(det, files, b, w, decode, stand_in)}
                    r["runs"].append(e)
                    mem = e.get("gpu_memory_peak_mb")
                    log(f"  {model} decode {decode} batch {b} workers {w}: {e['images_per_s']} images/s "
                        f"(first result {e['first_result_s']} s" + (f", GPU peak {mem} MB)" if mem else ")"))
                    save()
        del det
        if cuda:
            torch.cuda.empty_cache()
    save()


def naive(det, files: list[str]) -> dict[str, Any]:  # noqa: ANN001
    import numpy as np
    import torch
    from PIL import Image

    pre = det.preprocess
    t0 = time.perf_counter()
    for f in files:
        with Image.open(f) as im:
            arr = pre.to_array(im.convert("RGB"))
        det.probabilities(torch.as_tensor(np.asarray(arr))[None])
    wall = time.perf_counter() - t0
    return {"images": len(files), "images_per_s": round(len(files) / wall, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--images", type=int, default=512)
    ap.add_argument("--models", nargs="+", default=["ViT-B-16-quickgelu", "ViT-L-14-quickgelu"])
    ap.add_argument("--batches", type=int, nargs="+", default=[32, 64, 128, 256])
    ap.add_argument("--precisions", nargs="+", default=["fp16", "bf16", "fp32", "tf32"])
    ap.add_argument("--workers", type=int, nargs="+", default=[2, 8, 14])
    ap.add_argument("--min-seconds", type=float, default=1.0, help="per ceiling measurement")
    ap.add_argument("--naive-images", type=int, default=128)
    ap.add_argument("--tiny", action="store_true", help="tiny random config (plumbing check on CPU)")
    ap.add_argument("--decode-rows", action="store_true", help="issue 19: --decode cpu vs gpu rows only")
    ap.add_argument("--base", type=Path, default=Path(__file__).resolve().parent / "results" / "gpu.json",
                    help="--decode-rows: the recorded document the new key is added to (its rows are kept)")
    args = ap.parse_args()
    if args.tiny:
        args.models = ["causalclip-tiny"]
    args.out.mkdir(parents=True, exist_ok=True)
    if args.decode_rows:
        if "--batches" not in sys.argv:
            args.batches = [32, 128]
        if "--workers" not in sys.argv:
            args.workers = [8, 14]
        t0 = time.perf_counter()
        sizes = [(1280, 960), (2048, 1536)] if not args.tiny else [(320, 240), (640, 480)]
        files = make_images(Path("/tmp/gpu_scan_jpegs_issue19"), args.images, sizes, min(16, os.cpu_count() or 1))
        info = {"count": len(files), "sizes": sizes, "bytes": sum(os.path.getsize(f) for f in files),
                "generate_s": round(time.perf_counter() - t0, 1), "kind": "baseline JPEG, quality 90"}
        log(f"{len(files)} JPEGs in {info['generate_s']} s")
        decode_rows(args, files, info)
        return

    import torch

    results: dict[str, Any] = {"benchmark": "gpu_scan", "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                               "settings": {k: str(v) for k, v in vars(args).items()},
                               "machine": {"torch": torch.__version__, "cpus": os.cpu_count(),
                                           "device": torch.cuda.get_device_name(0) if args.device.startswith(
                                               "cuda") else "cpu"},
                               "models": {}}

    def save() -> None:
        (args.out / "gpu.json").write_text(json.dumps(results, indent=2) + "\n")

    t0 = time.perf_counter()
    sizes = [(1280, 960), (2048, 1536)] if not args.tiny else [(320, 240)]
    files = make_images(Path("/tmp/gpu_scan_jpegs"), args.images, sizes, min(16, os.cpu_count() or 1))
    results["images"] = {"count": len(files), "sizes": sizes, "bytes": sum(os.path.getsize(f) for f in files),
                         "generate_s": round(time.perf_counter() - t0, 1)}
    log(f"{len(files)} JPEGs in {results['images']['generate_s']} s")
    save()

    def set_precision(det, p: str) -> None:  # noqa: ANN001
        # tf32 = fp32 tensors, TensorFloat-32 matmuls (torch's default for CUDA matmuls is full fp32).
        torch.backends.cuda.matmul.allow_tf32 = p == "tf32"
        torch.backends.cudnn.allow_tf32 = p == "tf32"
        det.precision = "fp32" if p == "tf32" else p

    for model in args.models:
        t1 = time.perf_counter()
        det = build_detector(model, args.device, "fp16")
        r: dict[str, Any] = {"build_s": round(time.perf_counter() - t1, 1), "ceiling": {}, "end_to_end": []}
        results["models"][model] = r
        log(f"{model}: built in {r['build_s']} s")
        for p in args.precisions:
            if args.device == "cpu" and p in ("fp16", "tf32"):
                continue
            set_precision(det, p)
            r["ceiling"][p] = [ceiling(det, b, args.min_seconds, args.device) for b in args.batches]
            log(f"  ceiling {p}: " + ", ".join(f"b{c['batch']} {c['images_per_s']}" for c in r["ceiling"][p]))
            save()
        default_p = "fp16" if args.device.startswith("cuda") else "fp32"
        plan = [(default_p, 32, w) for w in args.workers] + [(default_p, b, max(args.workers))
                                                            for b in args.batches if b != 32]
        plan += [(p, 32, max(args.workers)) for p in args.precisions if p != default_p
                 and not (args.device == "cpu" and p in ("fp16", "tf32"))]
        for p, b, w in plan:
            set_precision(det, p)
            e = {"precision": p, **end_to_end(det, files, b, w)}
            r["end_to_end"].append(e)
            log(f"  scan {p} batch {b} workers {w}: {e['images_per_s']} images/s "
                f"(first result {e['first_result_s']} s)")
            save()
        set_precision(det, default_p)
        r["naive"] = {"precision": default_p, **naive(det, files[: args.naive_images])}
        log(f"  naive one-at-a-time: {r['naive']['images_per_s']} images/s")
        save()
        del det
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()
    results["total_s"] = round(time.perf_counter() - t0, 1)
    save()
    log(f"done in {results['total_s']} s")


if __name__ == "__main__":
    main()
