"""The region rule of `scan --explain` on whole images: what it adds on the held-out test split, clean and laundered.

For every image of the release manifest's split (default `test`), as it is and after each laundering journey
(`causalclip_cli.inputs.transforms.JOURNEYS`), the default's whole-image probability and label (its calibrated
rule) and the strongest window of its evidence map. Reports, per journey: real photos and generated images
labelled `fake` by the plain rule and with the region rule (window ≥ the checkpoint's `decision.region`), per
kind of real photo and per generator.

    python benchmarks/window_rule.py --journeys clean half-q75 --out results/window_rule-test.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._util import log, machine_info  # noqa: E402
from benchmarks.composites import manifest_rows  # noqa: E402


def score(rows: list[dict], journey: str, checkpoint: str | None) -> list[dict]:
    import torch

    from causalclip_cli.evidence.maps import explain_image
    from causalclip_cli.inputs.data import decode_image
    from causalclip_cli.inputs.transforms import launder
    from causalclip_cli.model.checkpoint import load_detector

    det = load_detector(checkpoint, device="cpu", precision="fp32")
    transform = None if journey == "clean" else launder(journey)
    out = []
    start = time.perf_counter()
    for n, r in enumerate(rows, 1):
        image = decode_image(r["file"]).image
        if transform is not None:
            image = transform(image)
        p, fam = det.assess(torch.from_numpy(det.preprocess.to_views(image)))
        label, reason = det.decision.verdict(float(p[0]), None if fam is None else float(fam[0]))
        m = explain_image(det, image)
        out.append({"path": r["path"], "label": int(r["label"]), "kind": r["domain"], "generator": r["generator"],
                    "probability": float(p[0]), "verdict": label, "reason": reason, "window_max": m.window_max})
        if n % 100 == 0:
            log(f"{journey}: {n}/{len(rows)}, {time.perf_counter() - start:.0f} s")
    return out


def summarise(items: list[dict], threshold: float) -> dict:
    def flagged(i: dict, region: bool) -> bool:
        return i["verdict"] == "fake" or (region and i["reason"] != "unfamiliar" and i["window_max"] >= threshold)

    def share(group: list[dict], region: bool) -> float:
        return round(float(np.mean([flagged(i, region) for i in group])), 4) if group else 0.0

    reals = [i for i in items if i["label"] == 0]
    fakes = [i for i in items if i["label"] == 1]
    out = {"reals": len(reals), "fakes": len(fakes),
           "reals_fake_plain": share(reals, False), "reals_fake_region": share(reals, True),
           "fakes_fake_plain": share(fakes, False), "fakes_fake_region": share(fakes, True),
           "fakes_uncertain_plain": round(float(np.mean([i["verdict"] == "uncertain" for i in fakes])), 4),
           "per_kind": {}, "per_generator": {}}
    for kind in sorted({i["kind"] for i in reals}):
        g = [i for i in reals if i["kind"] == kind]
        out["per_kind"][kind] = {"n": len(g), "plain": share(g, False), "region": share(g, True)}
    for gen in sorted({i["generator"] for i in fakes}):
        g = [i for i in fakes if i["generator"] == gen]
        out["per_generator"][gen] = {"n": len(g), "plain": share(g, False), "region": share(g, True)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--split", default="test", choices=("val", "test"))
    ap.add_argument("--journeys", nargs="+", default=["clean", "half-q75"])
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()

    import torch

    from causalclip_cli.model.checkpoint import load_detector

    torch.set_num_threads(2)
    region = load_detector(args.checkpoint, device="cpu").decision.region
    if not region:
        raise SystemExit("the checkpoint has no region rule (decision.region)")
    rows = manifest_rows(args.split)
    result = {"command": " ".join(sys.argv), "split": args.split, "region": region, "machine": machine_info(),
              "journeys": {}}
    for journey in args.journeys:
        items = score(rows, journey, args.checkpoint)
        result["journeys"][journey] = {"summary": summarise(items, float(region["threshold"])), "items": items}
        log(json.dumps({journey: {k: v for k, v in result["journeys"][journey]["summary"].items()
                                  if not k.startswith("per_")}}))
    path = args.out if args.out.is_absolute() else Path(__file__).resolve().parent / args.out
    path.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
