"""The 21 generator sources of ../shared/data, embedded once through the feature cache.

Shared by benchmarks/quality.py and the training of the released heads (weights/README.md).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
GAN_FAMILY = "gan"
DIFFUSION_FAMILY = "diffusion"
# Images per class per source. ViT-B/16 embeds ~2.5 images/s on this 2-core CPU, so the larger sources
# are subsampled (seeded, per class) to keep a full extraction near 20 minutes: 3,272 of ~8,000 images.
CAP_PER_CLASS = {"cifake/train": 250, "cifake/test": 125}
DEFAULT_CAP = 150


@dataclass
class Source:
    name: str  # e.g. "forensynths/biggan", "multigen/dalle-2", "cifake/train"
    family: str
    x: np.ndarray
    y: np.ndarray
    paths: list[str]


def _cap(name: str, samples: list, seed: int = 0) -> list:
    import random

    limit = CAP_PER_CLASS.get(name, DEFAULT_CAP)
    out = []
    for label in (0, 1):
        group = sorted((s for s in samples if s.label == label), key=lambda s: s.path)
        if len(group) > limit:
            group = sorted(random.Random(f"{seed}:{name}:{label}").sample(group, limit), key=lambda s: s.path)
        out.extend(group)
    return out


def _samples(data: Path) -> list[tuple[str, str, list]]:
    """(source name, family, samples) for every source, in a fixed order, capped per class."""
    return [(name, fam, _cap(name, samples)) for name, fam, samples in _all_samples(data)]


def _all_samples(data: Path) -> list[tuple[str, str, list]]:
    from causalclip_cli.datasets import discover_dataset

    out = []
    fs = discover_dataset(data / "forensynths-thumbs")
    for g in fs.generators():
        out.append((f"forensynths/{g}", GAN_FAMILY, [s for s in fs.samples if s.generator == g]))
    mg = discover_dataset(data / "multigen-2022")
    for g in mg.generators():
        out.append((f"multigen/{g}", DIFFUSION_FAMILY, [s for s in mg.samples if s.generator == g]))
    ws = discover_dataset(data / "web-sd")
    out.append(("web-sd", DIFFUSION_FAMILY, list(ws.samples)))
    cf = discover_dataset(data / "cifake")
    for split in ("train", "test"):
        out.append((f"cifake/{split}", DIFFUSION_FAMILY, cf.split(split)))
    return out


def load_sources(data: Path = DATA, batch_size: int = 32, workers: int = 2) -> list[Source]:
    """Embed every image with the offline ViT-B/16 tower (cached: a second call reads features only)."""
    import torch

    from causalclip_cli.backbones import BackboneSpec, load_backbone
    from causalclip_cli.experiment import dataset_features

    bb = load_backbone(BackboneSpec(), allow_download=False)

    def embed(px: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return bb.tower(px).float()

    sources = []
    for name, family, samples in _samples(data):
        fs = dataset_features(samples, embed, bb.preprocess, bb.info.id, cache_dir=None, batch_size=batch_size,
                              workers=workers, label=name)
        sources.append(Source(name, family, fs.x, fs.y, fs.paths))
        print(f"{name}: {len(fs.y)} images", file=sys.stderr)
    return sources


def source_groups(sources: list[Source]) -> list[str]:
    """Leave-one-out units: cifake's two splits are one source (SD v1.4 vs CIFAR-10)."""
    return sorted({s.name.split("/")[0] if s.name.startswith("cifake") else s.name for s in sources})


if __name__ == "__main__":
    srcs = load_sources()
    print(f"{len(srcs)} sources, {sum(len(s.y) for s in srcs)} images embedded")
