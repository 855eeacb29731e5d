"""Image preprocessing recorded in every checkpoint: the exact recipe CLIP's tower was trained with.

The tensor recipe is open_clip's eval transform (shortest side to `size` with bicubic resampling,
centre crop, scale to [0, 1], normalise). It is implemented on PIL directly so that decode workers
need neither open_clip nor torchvision, and so the cache key can be derived from these fields.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image

_RESAMPLE = {
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "lanczos": Image.Resampling.LANCZOS,
    "nearest": Image.Resampling.NEAREST,
}
CROPS = ("center", "squash")


@dataclass(frozen=True)
class Preprocess:
    """How an RGB image becomes the tower's input tensor. Mean/std come from the backbone resolver."""

    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"
    crop: str = "center"

    def __post_init__(self) -> None:
        if self.interpolation not in _RESAMPLE:
            raise ValueError(f"interpolation must be one of {sorted(_RESAMPLE)}, not {self.interpolation!r}")
        if self.crop not in CROPS:
            raise ValueError(f"crop must be one of {CROPS}, not {self.crop!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Preprocess:
        return cls(
            size=int(d["size"]),
            mean=tuple(float(x) for x in d["mean"]),
            std=tuple(float(x) for x in d["std"]),
            interpolation=d.get("interpolation", "bicubic"),
            crop=d.get("crop", "center"),
        )

    def key(self) -> str:
        """Short stable digest of the recipe, part of every feature-cache key."""
        blob = json.dumps(self.to_dict(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def resize_crop(self, img: Image.Image) -> Image.Image:
        """Geometric part only (RGB PIL in, RGB PIL of size×size out)."""
        s = self.size
        resample = _RESAMPLE[self.interpolation]
        if self.crop == "squash":
            return img.resize((s, s), resample)
        w, h = img.size
        # Same arithmetic as torchvision's Resize(int) followed by CenterCrop(int).
        if w <= h:
            nw, nh = s, int(s * h / w)
        else:
            nw, nh = int(s * w / h), s
        if (nw, nh) != (w, h):
            img = img.resize((nw, nh), resample)
        top = int(round((nh - s) / 2.0))
        left = int(round((nw - s) / 2.0))
        return img.crop((left, top, left + s, top + s))

    def to_array(self, img: Image.Image) -> np.ndarray:
        """Full recipe: RGB PIL → float32 CHW array, normalised."""
        arr = np.asarray(self.resize_crop(img), dtype=np.float32) / 255.0
        arr = (arr - np.asarray(self.mean, dtype=np.float32)) / np.asarray(self.std, dtype=np.float32)
        return np.ascontiguousarray(arr.transpose(2, 0, 1))
