"""The released heads on the release's held-out test split (never trained or calibrated on).

The test split (benchmarks/results/release-manifest.csv, `split == test`) holds 30% of modern-2025 and
faces-2025 (camera photographs, 2024–2026 generators, StyleGAN3 faces) and 30% of people-2026 and
photos-2026 (stock, studio and news portraits, camera, indoor and phone photos; generated people split by
prompt). For each head, at the checkpoint's own decision rule (threshold, abstain band, familiarity
abstention): per kind of real photo the share labelled `fake` and `uncertain`; per generator the share
labelled `fake`; AP per source and its mean. Earlier releases are scored on the same images for comparison.

    python benchmarks/release_eval.py [--heads NAME ...]
    python benchmarks/release_eval.py --heads linear-vitb16 causalclip-vitb16 \
        --journeys clean s512-q92 half-q75 l1080-q85
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
MANIFEST = HERE / "results" / "release-manifest.csv"
PREVIOUS = HERE / "results" / "previous-release"
RELEASE_1126 = HERE / "results" / "release-2026-11-26"
RELEASE_1128A = HERE / "results" / "release-2026-11-28a"  # the first 2026-11-28 default: one probe on all layers
RELEASE_1128B = HERE / "results" / "release-2026-11-28b"  # the second: three probes, trained with the GTA V frames
RELEASE_1128C = HERE / "results" / "release-2026-11-28c"  # the third: three probes, without the GTA V frames
HEADS = {
    "causalclip-vitb16": "causalclip-vitb16",
    "linear-vitb16": "linear-vitb16",
    "causalclip-vitb16-crops": "causalclip-vitb16-crops",
    "linear-vitb16 (2026-11-28c)": str(RELEASE_1128C / "linear-vitb16.safetensors"),
    "linear-vitb16 (2026-11-28b)": str(RELEASE_1128B / "linear-vitb16.safetensors"),
    "linear-vitb16 (2026-11-28a)": str(RELEASE_1128A / "linear-vitb16.safetensors"),
    "causalclip-vitb16 (2026-11-26)": str(RELEASE_1126 / "causalclip-vitb16.safetensors"),
    "linear-vitb16 (2026-11-26)": str(RELEASE_1126 / "linear-vitb16.safetensors"),
    "causalclip-vitb16 (2026-11-25)": str(PREVIOUS / "causalclip-vitb16.safetensors"),
}
DEFAULT_HEADS = ["causalclip-vitb16", "linear-vitb16", "linear-vitb16 (2026-11-28c)", "linear-vitb16 (2026-11-28b)",
                 "linear-vitb16 (2026-11-28a)", "causalclip-vitb16 (2026-11-26)", "linear-vitb16 (2026-11-26)",
                 "causalclip-vitb16 (2026-11-25)"]


def test_samples() -> list:
    from causalclip_cli.inputs.datasets import Sample

    out = []
    with MANIFEST.open() as fh:
        for r in csv.DictReader(fh):
            if r["split"] == "test":
                path = str((MANIFEST.parent / r["path"]).resolve())
                out.append(Sample(path, int(r["label"]), r["generator"], "test", r.get("domain", "")))
    return out


def _share(labels: np.ndarray, value: str) -> float | None:
    return float(np.mean(labels == value)) if len(labels) else None


def score(checkpoint: str, samples: list, journey: str | None = None) -> dict:
    from causalclip_cli.inputs.transforms import launder
    from causalclip_cli.model.checkpoint import load_detector
    from causalclip_cli.training.experiment import EvalRequest, _detector_features, _probs
    from causalclip_cli.training.metrics import binary_metrics

    det = load_detector(checkpoint, device="cpu", allow_download=False)
    fs = _detector_features(det, samples, EvalRequest(data=None, workers=1, batch_size=16),
                            transform=None if journey is None else launder(journey))
    p = _probs(det, fs.x)
    q = det.familiar(fs.x)
    dec = det.decision
    verdicts = [dec.verdict(float(v), None if q is None else float(q[i])) for i, v in enumerate(p)]
    labels = np.array([v[0] for v in verdicts])
    reasons = np.array([v[1] or "" for v in verdicts])
    kinds, gens, y = np.array(fs.kinds, dtype=object), np.array(fs.groups, dtype=object), fs.y
    reals, fakes = y == 0, y == 1
    out = {"model": det.model_id, "threshold": dec.threshold, "uncertain": dec.uncertain,
           "unfamiliar_below": dec.unfamiliar_below, "reals": {}, "generators": {}, "ap": {}}
    for k in sorted(set(kinds[reals].tolist())):
        m = reals & (kinds == k)
        out["reals"][k] = {"n": int(m.sum()), "fake": _share(labels[m], "fake"),
                           "uncertain": _share(labels[m], "uncertain"), "unfamiliar": _share(reasons[m], "unfamiliar")}
    for g in sorted(set(gens[fakes].tolist())):
        m = fakes & (gens == g)
        out["generators"][g] = {"n": int(m.sum()), "fake": _share(labels[m], "fake"),
                                "uncertain": _share(labels[m], "uncertain")}
        src = gens == g
        if reals[src].any():
            out["ap"][g] = binary_metrics(y[src], p[src], dec.threshold)["ap"]
    people = np.array([g.startswith("people_") for g in gens])
    out["ap"]["people-2026 (all reals vs all generated)"] = binary_metrics(y[people], p[people], 0.5)["ap"]
    out["mean_ap"] = float(np.mean(list(out["ap"].values())))
    out["all"] = {"reals": int(reals.sum()), "reals_fake": _share(labels[reals], "fake"),
                  "reals_uncertain": _share(labels[reals], "uncertain"),
                  "fakes": int(fakes.sum()), "fakes_fake": _share(labels[fakes], "fake"),
                  "fakes_uncertain": _share(labels[fakes], "uncertain")}
    worst = max(out["reals"], key=lambda k: out["reals"][k]["fake"])
    out["all"]["worst_real_domain"] = worst
    out["all"]["worst_real_domain_fake"] = out["reals"][worst]["fake"]
    return out


def tables(doc: dict) -> str:
    lines = ["| head | reals labelled fake | worst kind of real photo | reals uncertain | generated labelled fake "
             "| generated uncertain | mean AP over sources |", "|---|---|---|---|---|---|---|"]
    for name, d in doc.items():
        a = d["all"]
        lines.append(f"| {name} | {a['reals_fake']:.1%} of {a['reals']} | {a['worst_real_domain']} "
                     f"{a['worst_real_domain_fake']:.1%} | {a['reals_uncertain']:.1%} | {a['fakes_fake']:.1%} of "
                     f"{a['fakes']} | {a['fakes_uncertain']:.1%} | {d['mean_ap']:.3f} |")
    names = list(doc)
    kinds = sorted({k for d in doc.values() for k in d["reals"]})
    lines += ["", "Reals, per kind: labelled `fake` / `uncertain` (unfamiliar share in brackets, where the head "
              "has a familiarity reference)", "",
              "| kind of real photo | n | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    for k in kinds:
        cells = []
        for name in names:
            r = doc[name]["reals"].get(k)
            fam = f" ({r['unfamiliar']:.0%})" if r and doc[name]["unfamiliar_below"] is not None else ""
            cells.append(f"{r['fake']:.1%} / {r['uncertain']:.1%}{fam}" if r else "–")
        n = next(doc[name]["reals"][k]["n"] for name in names if k in doc[name]["reals"])
        lines.append(f"| {k} | {n} | " + " | ".join(cells) + " |")
    gens = sorted({g for d in doc.values() for g in d["generators"]})
    lines += ["", "Generated images, per generator: labelled `fake` (AP against the reals of its collection)", "",
              "| generator | n | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    for g in gens:
        cells = []
        for name in names:
            r = doc[name]["generators"].get(g)
            ap = doc[name]["ap"].get(g)
            cells.append((f"{r['fake']:.1%}" + (f" ({ap:.3f})" if ap is not None else "")) if r else "–")
        n = next(doc[name]["generators"][g]["n"] for name in names if g in doc[name]["generators"])
        lines.append(f"| {g} | {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--heads", nargs="+", default=DEFAULT_HEADS, choices=list(HEADS))
    ap.add_argument("--journeys", nargs="+", default=None, metavar="JOURNEY",
                    help="laundered protocol: every test image, both classes alike, through each journey of "
                         "causalclip_cli.inputs.transforms.JOURNEYS (clean too with 'clean'); writes "
                         "release_eval-laundered.json/.md")
    args = ap.parse_args()
    samples = test_samples()
    if args.journeys:
        doc = {f"{name} [{j}]": score(HEADS[name], samples, None if j == "clean" else j)
               for name in args.heads for j in args.journeys}
        stem = "release_eval-laundered"
    else:
        doc = {name: score(HEADS[name], samples) for name in args.heads}
        stem = "release_eval"
    (HERE / "results" / f"{stem}.json").write_text(json.dumps(doc, indent=1))
    md = tables(doc)
    (HERE / "results" / f"{stem}.md").write_text(md)
    print(md, file=sys.stderr)


if __name__ == "__main__":
    main()
