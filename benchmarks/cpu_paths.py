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

INT8 study (issue 14), `--int8`: instead of the candidates above, INT8 ways of running the tower against fp32:
  int8-pertoken     `--precision int8` (causalclip_cli/precision.py): int8 weights per output channel, int8
                    activations per token row, torch._int_mm; attention projections included
  torch-dynamic     torch.ao.quantization.quantize_dynamic, per-channel int8 weights, per-tensor dynamic
                    activations (only the MLP Linears: nn.MultiheadAttention's projections are not nn.Linear)
  onnxruntime-int8  the fp32 tower exported to ONNX, onnxruntime.quantization.quantize_dynamic(per_channel=True,
                    QInt8 weights), per-tensor dynamic activations
Fidelity: a deterministic sample of held-out images (modern-2025, which no released head saw, and the
multigen-2022 images outside the training rows of benchmarks/results/release-manifest.csv), both classes;
every path's features are computed once and cached (--cache, default /tmp/causalclip-int8-features, not
committed); AP per set and |Δprobability| for BOTH released heads (weights/*.safetensors) vs fp32.
Speed: images/s at batch 1, 2, 4, 8, 16, fp32 and each INT8 path interleaved in one process, --rounds times.

    python benchmarks/cpu_paths.py --int8 [--fidelity-images 288] [--rounds 2] [--threads 2]

Results: benchmarks/results/cpu_paths_int8.json.
"""

from __future__ import annotations

import argparse
import atexit
import os
import shutil
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


def _heldout_images(n: int) -> tuple[list[str], np.ndarray, list[str]]:
    """Deterministic held-out sample: half modern-2025, half multigen-2022 outside the release manifest,
    each half balanced real/fake and spread evenly over its sorted file list."""
    import csv

    from _util import RESULTS

    manifest = RESULTS / "release-manifest.csv"
    used: set[str] = set()
    if manifest.is_file():
        with open(manifest, newline="", encoding="utf-8") as fh:
            used = {str((manifest.parent / row["path"]).resolve()) for row in csv.DictReader(fh)
                    if row.get("split") != "val"}  # its validation rows were held out of training
    paths: list[str] = []
    labels: list[int] = []
    sets: list[str] = []
    for name in ("modern-2025", "multigen-2022"):
        root = SHARED_DATA / name
        for label, cls in ((0, "0_real"), (1, "1_fake")):
            files = sorted(str(p) for p in root.glob(f"*/{cls}/*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
            files = [f for f in files if str(Path(f).resolve()) not in used]
            k = n // 4
            step = len(files) / k
            picked = [files[int(i * step)] for i in range(min(k, len(files)))]
            paths += picked
            labels += [label] * len(picked)
            sets += [name] * len(picked)
    return paths, np.array(labels), sets


def _int8_paths(tower, batch0):  # noqa: ANN001, ANN202
    """name → callable(pixels) for every INT8 candidate that builds here; failures are recorded, not raised."""
    import copy
    import warnings

    import torch

    paths: dict = {}
    errors: dict = {}
    from causalclip_cli.model.precision import quantize_int8

    paths["int8-pertoken"] = quantize_int8(copy.deepcopy(tower))
    try:
        from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.ao.quantization's deprecation notice
            qspec = {torch.nn.Linear: per_channel_dynamic_qconfig}
            paths["torch-dynamic"] = quantize_dynamic(copy.deepcopy(tower), qspec, dtype=torch.qint8)
    except Exception as exc:  # noqa: BLE001 - a candidate that fails is a result
        errors["torch-dynamic"] = f"{type(exc).__name__}: {exc}"[:300]
    try:
        import onnxruntime as ort
        from onnxruntime.quantization import QuantType, quantize_dynamic

        tmp = Path(tempfile.mkdtemp(prefix="cpu-paths-onnx-"))
        atexit.register(shutil.rmtree, tmp, ignore_errors=True)  # the session has the graph in memory
        fp32_path, int8_path = tmp / "tower.onnx", tmp / "tower.int8.onnx"
        torch.backends.mha.set_fastpath_enabled(False)
        torch.onnx.export(tower, (batch0,), str(fp32_path), input_names=["pixels"], output_names=["embedding"],
                          dynamic_axes={"pixels": {0: "n"}}, dynamo=False)
        torch.backends.mha.set_fastpath_enabled(True)
        # ConvInteger has no CPU kernel in onnxruntime: quantise the MatMuls (all the transformer's linears).
        quantize_dynamic(str(fp32_path), str(int8_path), per_channel=True, weight_type=QuantType.QInt8,
                         op_types_to_quantize=["MatMul"])
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = torch.get_num_threads()
        sess = ort.InferenceSession(str(int8_path), opts, providers=["CPUExecutionProvider"])

        def run_ort(b: torch.Tensor) -> torch.Tensor:
            return torch.as_tensor(sess.run(None, {"pixels": b.numpy()})[0])
        paths["onnxruntime-int8"] = run_ort
    except Exception as exc:  # noqa: BLE001
        errors["onnxruntime-int8"] = f"{type(exc).__name__}: {exc}"[:300]
    return paths, errors


def int8_study(args: argparse.Namespace) -> None:
    import hashlib

    import torch
    from PIL import Image
    from sklearn.metrics import average_precision_score

    from causalclip_cli.model.checkpoint import load_detector, load_head

    if args.threads:
        torch.set_num_threads(args.threads)
    det = load_detector(str(RELEASED_CHECKPOINT), device="cpu", allow_download=False, precision="fp32")
    tower, pre = det.backbone.tower.eval(), det.preprocess
    heads = {p.stem: load_head(p)[0] for p in sorted(RELEASED_CHECKPOINT.parent.glob("*.safetensors"))}
    paths, y, sets = _heldout_images(args.fidelity_images)
    log(f"held-out sample: {len(paths)} images ({', '.join(f'{s}: {sets.count(s)}' for s in sorted(set(sets)))})")
    arrays = []
    for p in paths:
        with Image.open(p) as im:
            arrays.append(pre.to_array(im.convert("RGB")))
    x = torch.as_tensor(np.stack(arrays))
    candidates, errors = _int8_paths(tower, x[:2])
    runners = {"fp32": tower, **candidates}
    for name, err in errors.items():
        log(f"{name}: could not be built ({err})")

    key = hashlib.sha256(("\n".join(paths) + det.backbone.info.id).encode()).hexdigest()[:12]
    cache = Path(args.cache) / key
    cache.mkdir(parents=True, exist_ok=True)
    feats: dict[str, np.ndarray] = {}
    for name, run in runners.items():
        f = cache / f"{name}.npy"
        if f.is_file():
            feats[name] = np.load(f)
            continue
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = [run(b).float().numpy() for b in torch.split(x, 8)]
        feats[name] = np.concatenate(out)
        np.save(f, feats[name])
        log(f"{name}: features of {len(x)} images in {time.perf_counter() - t0:.0f} s")

    fidelity: dict = {}
    for name, fe in feats.items():
        ref = feats["fp32"]
        cos = (fe * ref).sum(1) / (np.linalg.norm(fe, axis=1) * np.linalg.norm(ref, axis=1))
        row: dict = {"cosine_min": float(cos.min()), "cosine_mean": float(cos.mean()), "heads": {}}
        for hname, head in heads.items():
            with torch.inference_mode():
                pr = torch.sigmoid(head(torch.as_tensor(fe))).numpy()
                pr_ref = torch.sigmoid(head(torch.as_tensor(ref))).numpy()
            dp = np.abs(pr - pr_ref)
            thr = float(load_head(RELEASED_CHECKPOINT.parent / f"{hname}.safetensors")[1]["decision"]["threshold"])
            h: dict = {"max_dprob": float(dp.max()), "mean_dprob": float(dp.mean()),
                       "p99_dprob": float(np.quantile(dp, 0.99)),
                       "label_flips": int(((pr >= thr) != (pr_ref >= thr)).sum()), "threshold": thr, "ap": {}}
            for s in ("all", *sorted(set(sets))):
                m = np.ones(len(y), bool) if s == "all" else np.array(sets) == s
                a, a_ref = average_precision_score(y[m], pr[m]), average_precision_score(y[m], pr_ref[m])
                h["ap"][s] = {"ap": float(a), "fp32_ap": float(a_ref), "dap": float(a - a_ref)}
            h["faithful"] = all(abs(v["dap"]) <= 0.005 for v in h["ap"].values())
            row["heads"][hname] = h
        row["faithful_all_heads"] = all(h["faithful"] for h in row["heads"].values())
        fidelity[name] = row
        log(f"{name}: cosine min {row['cosine_min']:.4f}; " + "; ".join(
            f"{hn}: max dprob {h['max_dprob']:.4f}, flips {h['label_flips']}, dAP "
            + ", ".join(f"{s} {v['dap']:+.4f}" for s, v in h["ap"].items()) for hn, h in row["heads"].items()))

    speed: dict = {name: {str(bs): [] for bs in args.int8_batches} for name in runners}
    sample = x[: args.speed_images]
    for rnd in range(args.rounds):
        for bs in args.int8_batches:
            for name, run in runners.items():  # interleaved: every path measured back to back per batch size
                ips, _ = _timeit(lambda b, run=run: run(b).float().numpy(), list(torch.split(sample, bs)))
                speed[name][str(bs)].append(round(ips, 3))
            log(f"round {rnd + 1}, batch {bs}: " + ", ".join(f"{n} {speed[n][str(bs)][-1]:.2f}" for n in runners))
    ratios = {name: {bs: [round(v / r, 3) for v, r in zip(vals, speed["fp32"][bs], strict=True)]
                     for bs, vals in per.items()} for name, per in speed.items() if name != "fp32"}
    write_results("cpu_paths_int8", {"machine": machine_info("cpu"), "images": len(paths),
                                     "sets": {s: sets.count(s) for s in sorted(set(sets))},
                                     "speed_images": len(sample), "rounds": args.rounds,
                                     "fidelity": fidelity, "images_per_s": speed, "speedup_vs_fp32": ratios,
                                     "errors": errors}, args.out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--int8", action="store_true", help="run the INT8 study instead (see above)")
    ap.add_argument("--fidelity-images", type=int, default=288)
    ap.add_argument("--speed-images", type=int, default=16)
    ap.add_argument("--int8-batches", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "causalclip-int8-features"))
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--skip", nargs="*", default=[], help="any of: threads bf16-autocast compile onnxruntime-fp32 "
                                                            "batch-sweep")
    ap.add_argument("--sweep", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32], help="batch sizes to sweep")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    if args.int8:
        int8_study(args)
        return

    import torch
    from sklearn.metrics import average_precision_score

    from causalclip_cli.model.checkpoint import load_detector

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
