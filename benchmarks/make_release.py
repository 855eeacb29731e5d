"""Train the released heads in weights/ with the project's own CLI, on the capped shared/data sources.

Writes a manifest (train/val split per source, seeded), then runs `causalclip train` for both heads and
`causalclip calibrate` on the held-out real images. Features come from the cache filled by sources.py.

    python benchmarks/make_release.py
"""

from __future__ import annotations

import csv
import random
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from sources import DATA, _samples  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
MANIFEST = REPO / "benchmarks" / "results" / "release-manifest.csv"
VAL_FRACTION = 0.15
TARGET_FPR = 0.05
BAND_FPR = "0.15:0.01"  # abstain between the 15%- and 1%-FPR thresholds on held-out reals
# Chosen by protocol C of benchmarks/quality.py (see benchmarks/README.md).
TRAIN_ARGS = ["--epochs", "40", "--lr", "1e-3", "--batch-size", "256", "--patience", "8", "--seed", "0"]


def write_manifest() -> None:
    rows = []
    for name, _family, samples in _samples(DATA):
        for label in (0, 1):
            group = [s for s in samples if s.label == label]
            rng = random.Random(f"release:{name}:{label}")
            val = set(rng.sample(range(len(group)), max(1, round(len(group) * VAL_FRACTION))))
            for i, s in enumerate(group):
                rel = Path(s.path).relative_to(DATA)
                rows.append([f"../../../shared/data/{rel.as_posix()}", label, name.replace("/", "_"),
                             "val" if i in val else "train"])
    MANIFEST.parent.mkdir(parents=True, exist_ok=True)
    with MANIFEST.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label", "generator", "split"])
        w.writerows(rows)
    print(f"{MANIFEST}: {len(rows)} images", file=sys.stderr)


def sh(*args: str) -> None:
    print("+ causalclip " + " ".join(args), file=sys.stderr)
    subprocess.run([sys.executable, "-m", "causalclip_cli", *args], check=True, cwd=REPO)


def main() -> None:
    write_manifest()
    for head, name in (("causalclip", "causalclip-vitb16"), ("linear", "linear-vitb16")):
        # Paths relative to the repository, so the checkpoints' metadata names no local directories.
        manifest = MANIFEST.relative_to(REPO).as_posix()
        raw = f"benchmarks/results/{name}-uncalibrated.safetensors"
        sh("train", "--data", manifest, "--head", head, "--output", raw, *TRAIN_ARGS)
        sh("calibrate", "--data", manifest, "--checkpoint", raw, "--split", "val",
           "--target-fpr", str(TARGET_FPR), "--band-fpr", BAND_FPR, "--output", f"weights/{name}.safetensors")
        (REPO / raw).unlink()


if __name__ == "__main__":
    main()
