"""Provenance cost: what reading metadata evidence adds to the decode workers' time per image.

On the same files, in one process, timed in alternating rounds (so drift on a shared machine hits
both sides alike), the median of `--rounds` rounds:
  (a) decode only: data.decode_image(path, min_size=224), what the scan's workers did before;
  (b) decode + provenance: decode_image(..., provenance=True) (C2PA, XMP, EXIF, PNG text, comments);
  (c) the full worker item: ScanDataset.__getitem__ (decode + resize/normalise to a tensor), without and
      with provenance: the per-image cost a scan pays outside the model forward;
  (d) provenance alone: provenance.read_provenance on images already opened and loaded, i.e. exactly the
      work (b) adds, measured without the decode's run-to-run noise around it.
File sets: the camera JPEGs of ../shared/data/modern-2025/*/0_real (180 files, metadata stripped, so
provenance finds nothing: the common case), a copy of them with a large EXIF block added (make, model,
software, date, a 4 kB maker note), and the six C2PA files of ../shared/data/provenance (every one
parsed and validated by c2pa-python).
The overhead of (b) over (a) and of (c) with provenance over (c) without is printed per set; the scan's
model forward (ViT-B/16 on CPU, about 3 images/s = 300 ms per image, benchmarks/results/scan_speed.json)
dwarfs both.

    OMP_NUM_THREADS=1 python benchmarks/provenance_cost.py            # about a minute
    python benchmarks/provenance_cost.py --rounds 3 --limit 40       # quick

Results: benchmarks/results/provenance_cost.json
"""

from __future__ import annotations

import argparse
import glob
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _util import SHARED_DATA, log, machine_info, write_results  # noqa: E402


def _time(fn, files: list[str]) -> float:
    start = time.perf_counter()
    for f in files:
        fn(f)
    return time.perf_counter() - start


def _with_exif(files: list[str], dest: Path) -> list[str]:
    from PIL import Image

    out = []
    for i, f in enumerate(files):
        exif = Image.Exif()
        exif[271], exif[272], exif[305], exif[306] = "Canon", "Canon EOS 70D", "Firmware 1.1.2", "2021:06:01 10:11:12"
        exif.get_ifd(0x8769)[36867] = "2021:06:01 10:11:12"
        exif.get_ifd(0x8769)[37500] = bytes(range(256)) * 16  # a 4 kB maker note
        p = dest / f"exif_{i:04d}.jpg"
        with Image.open(f) as im:
            im.save(p, quality=90, exif=exif)
        out.append(str(p))
    return out


def _provenance_alone(files: list[str], rounds: int) -> float:
    """Median ms per image of read_provenance on files opened and loaded beforehand (as the decoder has them)."""
    from PIL import Image

    from causalclip_cli.evidence.provenance import read_provenance
    from causalclip_cli.inputs.data import _sniff_bytes

    opened = []
    for f in files:
        fp = open(f, "rb")  # noqa: SIM115 - closed below
        fmt = _sniff_bytes(fp.read(64))
        fp.seek(0)
        img = Image.open(fp)
        img.load()
        opened.append((img, fp, fmt))
    try:
        runs = []
        for _ in range(rounds):
            start = time.perf_counter()
            for img, fp, fmt in opened:
                read_provenance(img, fp, fmt)
            runs.append(time.perf_counter() - start)
        return 1000 * statistics.median(runs) / len(files)
    finally:
        for img, fp, _ in opened:
            img.close()
            fp.close()


def measure(name: str, files: list[str], rounds: int) -> dict:
    from causalclip_cli.inputs.data import ScanDataset, decode_image
    from causalclip_cli.model.preprocess import Preprocess

    pre = Preprocess(size=224, mean=(0.48145466, 0.4578275, 0.40821073), std=(0.26862954, 0.26130258, 0.27577711))
    plain_ds = ScanDataset(files, pre)
    prov_ds = ScanDataset(files, pre, provenance=True)
    idx = {f: i for i, f in enumerate(files)}
    sides = {
        "decode": lambda f: decode_image(f, min_size=224),
        "decode+provenance": lambda f: decode_image(f, min_size=224, provenance=True),
        "item": lambda f: plain_ds[idx[f]],
        "item+provenance": lambda f: prov_ds[idx[f]],
    }
    for fn in sides.values():  # warm-up: page cache, lazy imports, the c2pa context
        _time(fn, files[:5])
    alone = _provenance_alone(files, rounds)
    times: dict[str, list[float]] = {k: [] for k in sides}
    for r in range(rounds):
        order = list(sides) if r % 2 == 0 else list(reversed(sides))
        for k in order:
            times[k].append(_time(sides[k], files))
    med = {k: statistics.median(v) for k, v in times.items()}
    per = {k: 1000 * v / len(files) for k, v in med.items()}
    says: dict[str, int] = {}
    for f in files:
        s = decode_image(f, min_size=224, provenance=True).provenance["says"]
        says[s] = says.get(s, 0) + 1
    res = {
        "files": len(files),
        "rounds": rounds,
        "ms_per_image_median": {k: round(v, 3) for k, v in per.items()},
        "provenance_alone_ms_per_image": round(alone, 4),
        "provenance_alone_pct_of_decode": round(100 * alone / per["decode"], 2),
        "decode_overhead_pct": round(100 * (med["decode+provenance"] / med["decode"] - 1), 1),
        "item_overhead_pct": round(100 * (med["item+provenance"] / med["item"] - 1), 1),
        "round_seconds": {k: [round(x, 3) for x in v] for k, v in times.items()},
        "provenance_says": says,
    }
    log(f"{name}: {len(files)} files; ms/image decode {per['decode']:.2f} → +provenance "
        f"{per['decode+provenance']:.2f} ({res['decode_overhead_pct']:+.1f}%); worker item {per['item']:.2f} → "
        f"{per['item+provenance']:.2f} ({res['item_overhead_pct']:+.1f}%); provenance alone {alone:.3f} ms "
        f"= {res['provenance_alone_pct_of_decode']:.2f}% of a decode; says {says}")
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--limit", type=int, default=None, help="at most this many camera JPEGs")
    args = ap.parse_args()
    camera = sorted(glob.glob(str(SHARED_DATA / "modern-2025" / "*" / "0_real" / "*.jpg")))[: args.limit]
    c2pa_files = sorted(glob.glob(str(SHARED_DATA / "provenance" / "*")))
    if not camera:
        sys.exit(f"no camera JPEGs under {SHARED_DATA / 'modern-2025'}")
    out = {"machine": machine_info("cpu"), "command": " ".join(["python", *sys.argv]),
           "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "sets": {}}
    with tempfile.TemporaryDirectory() as tmp:
        sets = {"camera-jpeg (modern-2025 0_real)": camera,
                "camera-jpeg with EXIF block": _with_exif(camera, Path(tmp)),
                "c2pa files (provenance/)": c2pa_files * 5}
        for name, files in sets.items():
            out["sets"][name] = measure(name, files, args.rounds)
    path = write_results("provenance_cost", out)
    log(f"wrote {path}")


if __name__ == "__main__":
    main()
