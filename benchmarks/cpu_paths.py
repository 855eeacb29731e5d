"""Which way of running the real ViT-B/16 tower is fastest on this CPU without changing the verdicts?

Candidates, each on the same pre-decoded, pre-resized batch of real images (../shared/data, spread
over the 21 sources), compared with the fp32 eager reference (what `causalclip scan` runs today):
  eager-threads-N   torch eager fp32 with N intra-op threads (N = 1 .. cores)
  bf16-autocast     torch.autocast("cpu", bfloat16)
  compile           torch.compile(tower) (inductor; first-call compile time reported separately)
  onnxruntime-fp32  the tower exported to ONNX in fp32 and run by onnxruntime (not the INT8 graph)
  batch sweep       the reference path at batch sizes 1, 2, 4, 8, 16, 32 (scan's CPU default comes from it)
For each: images/s, max |Δprobability| of the released head, and AP on the images vs the reference
(faithful = Δprob ≤ 0.01 and |ΔAP| ≤ 0.005, the bar set in issue 6).

    python benchmarks/cpu_paths.py [--images 64] [--batch-size 16] [--skip compile onnxruntime-fp32]

Results: benchmarks/results/cpu_paths.json.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _util import RELEASED_CHECKPOINT, SHARED_DATA, log, machine_info, write_results  # noqa: E402


def _images(n: int) -> tuple[list[str], np.ndarray]:
    from sources import _samples

    picked: list[tuple[str, int]] = []
    groups = [s for _, _, samples in _samples(SHARED_DATA) for s in samples]
    for label in (0, 1):
        g = [s for s in groups if s.label == label]
        step = max(1, len(g) // (n // 2))
        picked += [(s.path, label) for s in g[::step][: n // 2]]
    return [p for p, _ in picked], np.array([y for _, y in picked])


def _timeit(fn, batches: list, repeats: int = 1) -> tuple[float, np.ndarray]:
    fn(batches[0])  # warm-up, not timed
    t0 = time.perf_counter()
    outs = []
    for _ in range(repeats):
        outs = [fn(b) for b in batches]
    dt = time.perf_counter() - t0
    n = sum(len(b) for b in batches) * repeats
    return n / dt, np.concatenate(outs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--skip", nargs="*", default=[], help="any of: threads bf16-autocast compile onnxruntime-fp32 "
                                                            "batch-sweep")
    ap.add_argument("--sweep", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32], help="batch sizes to sweep")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    import torch
    from sklearn.metrics import average_precision_score

    from causalclip_cli.checkpoint import load_detector

    det = load_detector(str(RELEASED_CHECKPOINT), device="cpu", allow_download=False)
    tower, head, pre = det.backbone.tower.eval(), det.head.eval(), det.preprocess
    paths, y = _images(args.images)
    from PIL import Image

    arrays = []
    for p in paths:
        with Image.open(p) as im:
            arrays.append(pre.to_array(im.convert("RGB")))
    x = torch.as_tensor(np.stack(arrays))
    batches = list(torch.split(x, args.batch_size))

    def probs_of(run_tower):
        def fn(b: torch.Tensor) -> np.ndarray:
            with torch.inference_mode():
                return torch.sigmoid(head(run_tower(b).float())).numpy()
        return fn

    cores = os.cpu_count() or 1
    results: dict[str, Any] = {}
    torch.set_num_threads(cores)
    ref_speed, ref = _timeit(probs_of(tower), batches)
    ref_ap = float(average_precision_score(y, ref))
    results["eager-fp32 (reference)"] = {"images_per_s": ref_speed, "ap": ref_ap, "max_dprob": 0.0}
    log(f"reference: {ref_speed:.2f} images/s, AP {ref_ap:.4f}")

    def record(name: str, speed: float, out: np.ndarray, **extra: Any) -> None:
        dprob = float(np.abs(out - ref).max())
        a = float(average_precision_score(y, out))
        faithful = dprob <= 0.01 and abs(a - ref_ap) <= 0.005
        results[name] = {"images_per_s": speed, "speedup": speed / ref_speed, "ap": a, "max_dprob": dprob,
                         "faithful": faithful, **extra}
        log(f"{name}: {speed:.2f} images/s ({speed / ref_speed:.2f}x), max dprob {dprob:.4f}, AP {a:.4f}"
            f"{'' if faithful else '  NOT FAITHFUL'}")

    if "batch-sweep" not in args.skip:
        sweep = {}
        for bs in args.sweep:
            sweep[bs] = round(_timeit(probs_of(tower), list(torch.split(x, bs)))[0], 2)
            log(f"batch {bs}: {sweep[bs]:.2f} images/s")
        results["batch_sweep_images_per_s"] = sweep

    for n in range(1, cores):
        if "threads" in args.skip:
            break
        torch.set_num_threads(n)
        record(f"eager-threads-{n}", *_timeit(probs_of(tower), batches))
    torch.set_num_threads(cores)

    if "bf16-autocast" not in args.skip:
        def bf16(b: torch.Tensor) -> torch.Tensor:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return tower(b)
        record("bf16-autocast", *_timeit(probs_of(bf16), batches))

    if "compile" not in args.skip:
        try:
            compiled = torch.compile(tower)
            t0 = time.perf_counter()
            with torch.inference_mode():
                compiled(batches[0])
            compile_s = time.perf_counter() - t0
            record("compile", *_timeit(probs_of(compiled), batches), compile_seconds=compile_s)
        except Exception as exc:  # noqa: BLE001 — a candidate that fails is a result, not a crash
            results["compile"] = {"error": f"{type(exc).__name__}: {exc}"[:500]}
            log(f"compile: failed ({type(exc).__name__})")

    if "onnxruntime-fp32" not in args.skip:
        try:
            import onnxruntime as ort

            with tempfile.TemporaryDirectory() as tmp:
                onnx_path = Path(tmp) / "tower.onnx"
                t0 = time.perf_counter()
                # The fused inference kernel of nn.MultiheadAttention has no ONNX symbolic; trace the plain path.
                torch.backends.mha.set_fastpath_enabled(False)
                torch.onnx.export(tower, (batches[0],), str(onnx_path), input_names=["pixels"],
                                  output_names=["embedding"], dynamic_axes={"pixels": {0: "n"}}, dynamo=False)
                export_s = time.perf_counter() - t0
                torch.backends.mha.set_fastpath_enabled(True)
                opts = ort.SessionOptions()
                opts.intra_op_num_threads = cores
                sess = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])

                def run_ort(b: torch.Tensor) -> torch.Tensor:
                    return torch.as_tensor(sess.run(None, {"pixels": b.numpy()})[0])
                record("onnxruntime-fp32", *_timeit(probs_of(run_ort), batches), export_seconds=export_s)
        except Exception as exc:  # noqa: BLE001
            results["onnxruntime-fp32"] = {"error": f"{type(exc).__name__}: {exc}"[:500]}
            log(f"onnxruntime-fp32: failed ({type(exc).__name__}: {str(exc)[:200]})")

    write_results("cpu_paths", {"machine": machine_info("cpu"), "images": len(paths),
                                "batch_size": args.batch_size, "results": results}, args.out)


if __name__ == "__main__":
    main()
