"""Embed the dev data under every preprocessing variant the quality protocols compare (issue 10).

One forward pass per view returns the final projection and the class token of all 12 blocks
(layers 0..12, 9,728 floats), so the layer choice is made later by slicing cached features. Variants:

  resize   today's recipe (short side → 224, centre crop), 1 view
  native   no downscale; centre crop (256-px thumbnails) or centre + 4 corners (modern-2025, ≤ 768 px)
  tiny     content-only control: downscaled to 24 px and back before the resize recipe, which keeps the
           scene and loses every pixel-level trace (run on modern-2025 and faces-2025)
  release  the resize recipe for every source (older, modern, faces, people-2026, photos-2026): what the
           released heads train and calibrate on (issue 18: the feature cache of a fresh machine)
  issue27  the release manifest (results/release-manifest.csv) with the fourth-round default's taps (final embedding,
           blocks 4-12, patch means of blocks 4-12) for the laundered protocols: clean for every image, augmented
           views (`--aug-views`, training split only) and laundered journeys (`--journeys`, the splits the
           protocols hold out: train and val; the test split's were embedded by release_eval.py)
  old-aug2 the second augmented view (transforms.degrade(2)) of the 21 older sources under the resize
           recipe, so `--augment-views 2` needs no extraction there (the first views came from the GPU run)

    python benchmarks/extract_views.py [--only modern faces old tiny old-aug2 people release]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from sources import DATA, all_groups  # noqa: E402

ALL_LAYERS = tuple(range(13))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="+", default=["modern", "faces", "old", "tiny"])
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--aug-views", nargs="*", type=int, default=[1], help="issue27: augmented views (training split)")
    ap.add_argument("--journeys", nargs="*", default=["half-q75"], help="issue27: laundered journeys (train + val)")
    args = ap.parse_args()
    if args.only == ["issue27"]:
        issue27(args.aug_views, args.journeys, args.batch_size, args.workers)
        return
    from sources import embed_variant

    t0 = time.time()
    plan = []
    groups = all_groups(DATA)
    for what in args.only:
        if what == "modern":
            plan += [(g, "resize", 1, None) for g in groups["modern"]]
            plan += [(g, "native", 5, None) for g in groups["modern"]]
        elif what == "faces":
            plan += [(g, v, 1, None) for g in groups["faces"] for v in ("resize", "native")]
        elif what == "old":
            plan += [(g, "native", 1, None) for g in groups["old"]]
        elif what == "tiny":
            plan += [(g, "tiny", 1, None) for g in groups["modern"] + groups["faces"]]
        elif what == "people":
            plan += [(g, "resize", 1, None) for g in groups["people"]]
        elif what == "release":
            plan += [(g, "resize", 1, None) for key in ("people", "modern", "faces", "old") for g in groups[key]]
        elif what == "old-aug2":
            plan += [(g, "resize", 1, "degrade2") for g in groups["old"]]
    for (name, _family, samples), variant, views, transform in plan:
        t = time.time()
        x, _, _ = embed_variant(samples, variant, views, ALL_LAYERS, transform=transform, batch_size=args.batch_size,
                                workers=args.workers, label=f"{name} {variant}x{views} {transform or ''}")
        print(f"{name:32s} {variant}x{views}: {len(x)} images {x.shape} in {time.time() - t:.0f} s "
              f"(total {time.time() - t0:.0f} s)", file=sys.stderr, flush=True)


def issue27(aug_views: list[int], journeys: list[str], batch_size: int, workers: int) -> None:
    """Clean features of every manifest image, then the augmented views, then the journeys, each timed."""
    from real_domains import RELEASE_TAPS, manifest_samples
    from sources import embed_variant

    samples = manifest_samples()
    train = [s for s in samples if s.split == "train"]
    held = [s for s in samples if s.split != "test"]
    plan = [("clean", samples, None)] + [(f"degrade{k}", train, f"degrade{k}") for k in aug_views]
    plan += [(f"launder-{j}", held, f"launder-{j}") for j in journeys]
    for name, ss, tf in plan:
        t = time.time()
        x, _, _ = embed_variant(ss, "resize", 1, RELEASE_TAPS, transform=tf, batch_size=batch_size, workers=workers,
                                label=f"manifest {name}")
        print(f"manifest {name}: {len(x)} of {len(ss)} images in {time.time() - t:.0f} s "
              f"({len(ss) / max(time.time() - t, 1e-9):.2f} images/s incl. cache hits)", file=sys.stderr, flush=True)

if __name__ == "__main__":
    main()
