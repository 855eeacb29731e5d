"""Back on this machine: decode the device's int8 features and add them to the ordinary feature cache,
under the same keys `sources.embed_variant` and the CLI read.

    python benchmarks/gpu_features/unpack.py FOLDER_WITH_keys.json_scales.npy_featNN.bin MANIFEST.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from causalclip_cli.model.preprocess import Preprocess
from causalclip_cli.settings import cache_dir
from causalclip_cli.training.features import FeatureCache


def main() -> None:
    src, manifest = Path(sys.argv[1]), Path(sys.argv[2])
    meta = json.loads((src / "keys.json").read_text())
    jobs = {j["name"]: j for j in json.loads(manifest.read_text())["jobs"]}
    raw = b"".join(p.read_bytes() for p in sorted(src.glob("feat*.bin")))
    q = np.frombuffer(raw, dtype=np.int8).reshape(-1, meta["dim"])
    scales = np.load(src / "scales.npy")
    feats = q.astype(np.float32) * scales[None, :]
    row = 0
    for name in meta["order"]:
        keys, job = meta["keys"][name], jobs[name]
        variant = Preprocess.from_dict(job["preprocess"]).key() + (f"-{job['transform']}" if job["transform"] else "")
        cache = FeatureCache(cache_dir(), job["backbone_id"], variant)
        cache.add(keys, feats[row:row + len(keys)])
        cache.flush()
        row += len(keys)
        print(name, len(keys), cache.dir)
    assert row == len(feats), (row, len(feats))


if __name__ == "__main__":
    main()
