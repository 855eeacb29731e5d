"""The released heads on the release's held-out test split (never trained or calibrated on).

The test split (benchmarks/results/release-manifest.csv, `split == test`) holds 30% of modern-2025 and
faces-2025: camera photographs, 2024–2026 generators and StyleGAN3 faces. For each head: AP per source,
and at the checkpoint's own decision rule, the share of camera photos labelled `fake` (false positives),
`uncertain`, and of generated images labelled `fake`. The previous release (2026-11-25) is scored on the
same images for comparison.

    python benchmarks/release_eval.py
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
MANIFEST = HERE / "results" / "release-manifest.csv"
PREVIOUS = HERE / "results" / "previous-release"
HEADS = {
    "causalclip-vitb16": "causalclip-vitb16",
    "linear-vitb16": "linear-vitb16",
    "causalclip-vitb16-crops": "causalclip-vitb16-crops",
    "previous causalclip-vitb16 (2026-11-25)": str(PREVIOUS / "causalclip-vitb16.safetensors"),
    "previous linear-vitb16 (2026-11-25)": str(PREVIOUS / "linear-vitb16.safetensors"),
}


def test_samples() -> list:
    from causalclip_cli.inputs.datasets import Sample

    out = []
    with MANIFEST.open() as fh:
        for r in csv.DictReader(fh):
            if r["split"] == "test":
                path = str((MANIFEST.parent / r["path"]).resolve())
                out.append(Sample(path, int(r["label"]), r["generator"], "test"))
    return out


def score(checkpoint: str, samples: list) -> dict:
    from causalclip_cli.model.checkpoint import load_detector
    from causalclip_cli.training.experiment import EvalRequest, _detector_features, _probs
    from causalclip_cli.training.metrics import binary_metrics

    det = load_detector(checkpoint, device="cpu", allow_download=False)
    fs = _detector_features(det, samples, EvalRequest(data=None, workers=1, batch_size=16))
    p = _probs(det, fs.x)
    dec = det.decision
    labels = np.array([dec.label(float(v)) for v in p])
    rows = {}
    groups = sorted(set(fs.groups))
    camera = np.array([g.startswith("modern") for g in fs.groups]) & (fs.y == 0)
    for g in [*groups, "all modern", "all"]:
        m = (np.array(fs.groups) == g) if g in groups else (
            np.array([x.startswith("modern") for x in fs.groups]) if g == "all modern" else np.ones(len(p), bool))
        r = binary_metrics(fs.y[m], p[m], dec.threshold)
        rows[g] = {"n_real": r["n_real"], "n_fake": r["n_fake"], "ap": r["ap"], "auc": r["auc"],
                   "real_labelled_fake": float(np.mean(labels[m & (fs.y == 0)] == "fake")) if r["n_real"] else None,
                   "real_labelled_uncertain": float(np.mean(labels[m & (fs.y == 0)] == "uncertain"))
                   if r["n_real"] else None,
                   "fake_labelled_fake": float(np.mean(labels[m & (fs.y == 1)] == "fake")) if r["n_fake"] else None}
    return {"model": det.model_id, "threshold": dec.threshold, "uncertain": dec.uncertain,
            "camera_photos": int(camera.sum()),
            "camera_labelled_fake": int(np.sum(labels[camera] == "fake")), "groups": rows}


def main() -> None:
    samples = test_samples()
    doc = {name: score(ck, samples) for name, ck in HEADS.items() if Path(ck).is_file() or "/" not in ck}
    (HERE / "results" / "release_eval.json").write_text(json.dumps(doc, indent=1))
    lines = ["| head | camera photos labelled fake | modern AP | faces AP | all-test AP | generated labelled fake |",
             "|---|---|---|---|---|---|"]
    for name, d in doc.items():
        g = d["groups"]
        lines.append(f"| {name} | {d['camera_labelled_fake']}/{d['camera_photos']} "
                     f"({d['camera_labelled_fake'] / max(d['camera_photos'], 1):.1%}) | "
                     f"{g['all modern']['ap']:.3f} | "
                     f"{g['faces_stylegan3']['ap']:.3f} | {g['all']['ap']:.3f} | "
                     f"{g['all']['fake_labelled_fake']:.1%} |")
    md = "\n".join(lines) + "\n"
    (HERE / "results" / "release_eval.md").write_text(md)
    print(md, file=sys.stderr)


if __name__ == "__main__":
    main()
