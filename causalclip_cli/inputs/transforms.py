"""Pixel transforms applied after decoding: JPEG alignment, robustness perturbations, augmentation.

Each transform has a stable `name` that becomes part of the feature-cache key, since it changes pixels.
"""

from __future__ import annotations

import io
import random
from collections.abc import Callable
from dataclasses import dataclass

from PIL import Image, ImageFilter

from causalclip_cli.errors import UsageError


@dataclass(frozen=True)
class PixelTransform:
    name: str
    fn: Callable[[Image.Image], Image.Image]
    # Needs the file's own pixels: decoders must not shrink a large JPEG first (DCT scaling), or a journey that
    # halves the image would halve an already halved one.
    full_resolution: bool = False

    def __call__(self, img: Image.Image) -> Image.Image:
        return self.fn(img)


def _jpeg(img: Image.Image, quality: int) -> Image.Image:
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format="JPEG", quality=int(quality))
    buf.seek(0)
    out = Image.open(buf)
    out.load()
    return out.convert("RGB")


def jpeg(quality: int) -> PixelTransform:
    if not 1 <= quality <= 100:
        raise UsageError(f"JPEG quality must be 1..100, not {quality}")
    return PixelTransform(f"jpeg{quality}", lambda im: _jpeg(im, quality))


def blur(sigma: float) -> PixelTransform:
    return PixelTransform(f"blur{sigma:g}", lambda im: im.filter(ImageFilter.GaussianBlur(sigma)))


def resize(factor: float) -> PixelTransform:
    if not 0 < factor <= 4:
        raise UsageError(f"resize factor must be in (0, 4], not {factor}")

    def fn(im: Image.Image) -> Image.Image:
        w, h = im.size
        return im.resize((max(1, round(w * factor)), max(1, round(h * factor))), Image.Resampling.BILINEAR)

    return PixelTransform(f"resize{factor:g}", fn)


_PERTURBATIONS = {"jpeg": lambda v: jpeg(int(v)), "blur": lambda v: blur(float(v)),
                  "resize": lambda v: resize(float(v)), "launder": lambda v: launder(v)}


def parse_perturbations(text: str | None) -> list[PixelTransform]:
    """'jpeg:75,blur:1.0,resize:0.5' → transforms, each evaluated separately."""
    if not text:
        return []
    out = []
    for part in text.split(","):
        name, _, value = part.strip().partition(":")
        if name not in _PERTURBATIONS or not value:
            raise UsageError(f"--perturb {part!r}: expected one of jpeg:Q, blur:SIGMA, resize:FACTOR, "
                             f"launder:{'|'.join(JOURNEYS)}")
        try:
            out.append(_PERTURBATIONS[name](value))
        except ValueError as exc:
            raise UsageError(f"--perturb {part!r}: {exc}") from exc
    return out


def random_augment(kinds: str, seed: int, p: float = 0.5) -> PixelTransform:
    """Wang et al. (2020)-style training augmentation: random Gaussian blur and/or JPEG re-encoding."""
    wanted = {k.strip() for k in kinds.split(",") if k.strip()}
    unknown = wanted - {"blur", "jpeg"}
    if unknown:
        raise UsageError(f"--augment: unknown kinds {sorted(unknown)}; use blur and/or jpeg")
    rng = random.Random(seed)

    def fn(im: Image.Image) -> Image.Image:
        if "blur" in wanted and rng.random() < p:
            im = im.filter(ImageFilter.GaussianBlur(rng.uniform(0.0, 3.0)))
        if "jpeg" in wanted and rng.random() < p:
            im = _jpeg(im, rng.randint(30, 100))
        return im

    return PixelTransform(f"augment-{'+'.join(sorted(wanted))}-{seed}", fn)


def compose(*ts: PixelTransform | None) -> PixelTransform | None:
    ts = tuple(t for t in ts if t is not None)
    if not ts:
        return None
    if len(ts) == 1:
        return ts[0]

    def fn(im: Image.Image) -> Image.Image:
        for t in ts:
            im = t(im)
        return im

    return PixelTransform("+".join(t.name for t in ts), fn, full_resolution=any(t.full_resolution for t in ts))


def _content_seed(im: Image.Image, salt: str) -> int:
    """A seed from the pixels themselves, so an augmented view is the same on every machine and run."""
    import hashlib

    thumb = im.convert("RGB").resize((16, 16), Image.Resampling.BILINEAR).tobytes()
    return int.from_bytes(hashlib.sha256(salt.encode() + thumb + repr(im.size).encode()).digest()[:8], "big")


def degrade(view: int) -> PixelTransform:
    """Augmented view `view` (1, 2, …) of an image: what images go through on their way to an analyst —
    a crop (p .3, 80–100% of each side), a downscale (p .5, 0.5–1.0), mild blur (p .3, σ 0.2–1.0) and JPEG
    re-encoding (p .7, quality 60–95), drawn from a seed of the image content and the view number."""
    if view < 1:
        raise UsageError(f"augmented view numbers start at 1, not {view}")

    def fn(im: Image.Image) -> Image.Image:
        rng = random.Random(_content_seed(im, f"degrade-{view}"))
        im = im.convert("RGB")
        w, h = im.size
        if rng.random() < 0.3:
            cw, ch = max(1, round(w * rng.uniform(0.8, 1.0))), max(1, round(h * rng.uniform(0.8, 1.0)))
            x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
            im = im.crop((x, y, x + cw, y + ch))
        if rng.random() < 0.5:
            f = rng.uniform(0.5, 1.0)
            w, h = im.size
            im = im.resize((max(1, round(w * f)), max(1, round(h * f))), Image.Resampling.BICUBIC)
        if rng.random() < 0.3:
            im = im.filter(ImageFilter.GaussianBlur(rng.uniform(0.2, 1.0)))
        if rng.random() < 0.7:
            im = _jpeg(im, rng.randint(60, 95))
        return im

    return PixelTransform(f"degrade{view}", fn)


def _fit(im: Image.Image, side: int, which: str) -> Image.Image:
    w, h = im.size
    ref = min(w, h) if which == "short" else max(w, h)
    f = side / ref
    return im.resize((max(1, round(w * f)), max(1, round(h * f))), Image.Resampling.LANCZOS)


# What images go through on the web before an analyst sees them: a resize and a re-encode, both classes alike.
JOURNEYS: dict[str, tuple[str, Callable[[Image.Image], Image.Image]]] = {
    "s512-q92": ("short side to 512 px, JPEG 92", lambda im: _jpeg(_fit(im.convert("RGB"), 512, "short"), 92)),
    "half-q75": ("half size, JPEG 75", lambda im: _jpeg(resize(0.5)(im.convert("RGB")), 75)),
    "l1080-q85": ("long side to 1080 px, JPEG 85", lambda im: _jpeg(_fit(im.convert("RGB"), 1080, "long"), 85)),
}


def launder(journey: str) -> PixelTransform:
    """One of `JOURNEYS` (resized with Lanczos, half size bilinear, then re-encoded): the laundered protocols."""
    try:
        _, fn = JOURNEYS[journey]
    except KeyError:
        raise UsageError(f"unknown journey {journey!r}", hint=f"choose one of {', '.join(JOURNEYS)}") from None
    return PixelTransform(f"launder-{journey}", fn, full_resolution=True)
