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
MODERN_FAMILY = "modern"
FACES_FAMILY = "faces"
PEOPLE_FAMILY = "people"  # people-2026: real portraits/news faces and generated people (issue 18)
PHOTOS_FAMILY = "photos"  # photos-2026: real camera, indoor and phone photos, reals only
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
    from causalclip_cli.inputs.datasets import discover_dataset

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

    from causalclip_cli.model.backbones import BackboneSpec, load_backbone
    from causalclip_cli.training.experiment import dataset_features

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


# --------------------------------------------------------------------------- issue 10: views, layers, modern data


def modern_samples(data: Path = DATA) -> list[tuple[str, str, list]]:
    """modern-2025 (six 2024–2026 generators) and faces-2025 (StyleGAN3), uncapped."""
    from causalclip_cli.inputs.datasets import discover_dataset

    out = []
    md = discover_dataset(data / "modern-2025")
    for g in md.generators():
        out.append((f"modern/{g}", MODERN_FAMILY, [s for s in md.samples if s.generator == g]))
    fc = discover_dataset(data / "faces-2025")
    out.append(("faces/stylegan3", FACES_FAMILY, list(fc.samples)))
    return out


def people_samples(data: Path = DATA) -> list[tuple[str, str, list]]:
    """people-2026 (three real portrait kinds, three generators of people) and photos-2026 (three real
    kinds), uncapped, one source per folder."""
    from causalclip_cli.inputs.datasets import discover_dataset

    out = []
    for folder, family, prefix in (("people-2026", PEOPLE_FAMILY, "people"), ("photos-2026", PHOTOS_FAMILY, "photos")):
        ds = discover_dataset(data / folder)
        for g in ds.generators():
            out.append((f"{prefix}/{g}", family, [s for s in ds.samples if s.generator == g]))
    return out


_PEOPLE_PROMPT_MARKERS = ("_dall_e3_", "_sdXL_", "_SC_")


def people_prompt(path: str) -> str | None:
    """The prompt a people-2026 generated image was rendered from (its file name ends in
    `<model marker>_<prompt>_<nn>.jpg`), shared across the three generators; None for other files."""
    stem = Path(path).stem
    for marker in _PEOPLE_PROMPT_MARKERS:
        if marker in stem:
            return stem.rsplit(marker, 1)[1].rsplit("_", 1)[0]
    return None


def all_groups(data: Path = DATA) -> dict[str, list[tuple[str, str, list]]]:
    mod = modern_samples(data)
    return {"old": _samples(data), "modern": [m for m in mod if m[1] == MODERN_FAMILY],
            "faces": [m for m in mod if m[1] == FACES_FAMILY], "people": people_samples(data)}


_BACKBONE = None


def _backbone():
    global _BACKBONE
    if _BACKBONE is None:
        from causalclip_cli.model.backbones import BackboneSpec, load_backbone

        _BACKBONE = load_backbone(BackboneSpec(), allow_download=False)
    return _BACKBONE


def tiny_transform(side: int = 24):
    """Content-only control: shrink to `side` px (long side) and back; the scene stays, traces go."""
    from PIL import Image

    from causalclip_cli.inputs.transforms import PixelTransform

    def fn(im: Image.Image) -> Image.Image:
        w, h = im.size
        s = side / max(w, h)
        small = im.resize((max(1, round(w * s)), max(1, round(h * s))), Image.Resampling.BILINEAR)
        return small.resize((w, h), Image.Resampling.BILINEAR)

    return PixelTransform(f"tiny{side}", fn)


def variant_setup(variant: str, views: int, layers: tuple[int, ...], transform: str | None = None):
    """(preprocess, cache backbone id, pixel transform) of one feature variant — the cache's key parts."""
    from causalclip_cli.inputs.transforms import compose, degrade, launder
    from causalclip_cli.model.taps import FeatureSpec

    bb = _backbone()
    mode = "native" if variant == "native" else "resize"
    pre = bb.preprocess.with_views(mode, views)
    tfs = []
    if variant == "tiny":
        tfs.append(tiny_transform())
    if transform and transform.startswith("degrade"):
        tfs.append(degrade(int(transform[len("degrade"):])))
    if transform and transform.startswith("launder-"):
        tfs.append(launder(transform[len("launder-"):]))
    spec = FeatureSpec(layers=tuple(layers))
    return pre, bb.info.id + (f"-{spec.key()}" if spec.key() else ""), compose(*tfs)


def embed_variant(samples: list, variant: str, views: int, layers: tuple[int, ...], *, transform: str | None = None,
                  batch_size: int = 8, workers: int = 1, label: str = "features"):
    """Cached features [n, views, d] (views squeezed when 1 → [n, d]), labels, paths for one variant."""
    import torch

    from causalclip_cli.model.taps import forward_layers
    from causalclip_cli.training.experiment import dataset_features

    bb = _backbone()
    pre, bid, tf = variant_setup(variant, views, layers, transform)

    def embed(px: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return forward_layers(bb.tower, px, layers).float()

    fs = dataset_features(samples, embed, pre, bid, cache_dir=None, transform=tf, batch_size=batch_size,
                          workers=workers, label=label)
    return fs.x, fs.y, fs.paths
