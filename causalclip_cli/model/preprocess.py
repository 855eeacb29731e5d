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
# "resize": shortest side to `size` (CLIP's own recipe: fast, but a 12-MP photo shrinks ~14×, erasing the
# pixel-level traces generators leave). "native": no downscale for images whose short side is at least
# `size`; `size`×`size` crops are cut from the image as decoded (smaller images are upscaled as in resize).
MODES = ("resize", "native")
VIEW_COUNTS = (1, 5, 9)  # centre; centre + 4 corners; 3×3 grid


@dataclass(frozen=True)
class Preprocess:
    """How an RGB image becomes the tower's input tensor. Mean/std come from the backbone resolver."""

    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"
    crop: str = "center"
    mode: str = "resize"
    views: int = 1  # crops per image, each scored; the image's score aggregates them (checkpoint.Detector)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, not {self.mode!r}")
        if self.views not in VIEW_COUNTS:
            raise ValueError(f"views must be one of {VIEW_COUNTS}, not {self.views!r}")
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
            mode=d.get("mode", "resize"),
            views=int(d.get("views", 1)),
        )

    def with_views(self, mode: str, views: int) -> Preprocess:
        return Preprocess(self.size, self.mean, self.std, self.interpolation, self.crop, mode, views)

    def key(self) -> str:
        """Short stable digest of the recipe, part of every feature-cache key."""
        d = self.to_dict()
        # Recipes written before mode/views existed keep their digest (and their cached features).
        if d["mode"] == "resize":
            del d["mode"]
        if d["views"] == 1:
            del d["views"]
        blob = json.dumps(d, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    @property
    def decode_min_size(self) -> int | None:
        """Smallest side the decoder may reduce a JPEG to (DCT scaling); native mode wants every pixel."""
        return self.size if self.mode == "resize" else None

    def crop_boxes(self, w: int, h: int) -> list[tuple[int, int, int, int]]:
        """`views` boxes of size×size inside a w×h image (w, h ≥ size): centre first, then a fixed grid."""
        s = self.size
        cx, cy = int(round((w - s) / 2.0)), int(round((h - s) / 2.0))
        boxes = [(cx, cy)]
        if self.views == 5:
            boxes += [(0, 0), (w - s, 0), (0, h - s), (w - s, h - s)]
        elif self.views == 9:
            xs, ys = (0, cx, w - s), (0, cy, h - s)
            boxes += [(x, y) for y in ys for x in xs if (x, y) != (cx, cy)]
        return [(x, y, x + s, y + s) for x, y in boxes]

    def view_images(self, img: Image.Image) -> list[Image.Image]:
        """The `views` size×size RGB crops this recipe scores for one image."""
        s = self.size
        w, h = img.size
        if self.mode == "resize" or min(w, h) < s:
            if self.views == 1 or self.crop == "squash":
                return [self.resize_crop(img)] * (1 if self.views == 1 else self.views)
            # Upscale (or shrink) to short side `size`, then crop the grid from that.
            img = self._short_side(img)
            w, h = img.size
        return [img.crop(box) for box in self.crop_boxes(w, h)]

    def short_side_size(self, w: int, h: int) -> tuple[int, int]:
        """(width, height) after scaling the short side to `size` (public: the GPU decode path uses it too)."""
        s = self.size
        return (s, int(s * h / w)) if w <= h else (int(s * w / h), s)

    def _short_side(self, img: Image.Image) -> Image.Image:
        w, h = img.size
        nw, nh = self.short_side_size(w, h)
        return img if (nw, nh) == (w, h) else img.resize((nw, nh), _RESAMPLE[self.interpolation])

    def normalize(self, rgb: Image.Image) -> np.ndarray:
        """RGB PIL (size×size) → float32 CHW array, scaled to [0, 1] and normalised."""
        arr = np.asarray(rgb, dtype=np.float32) / 255.0
        arr = (arr - np.asarray(self.mean, dtype=np.float32)) / np.asarray(self.std, dtype=np.float32)
        return np.ascontiguousarray(arr.transpose(2, 0, 1))

    def to_views(self, img: Image.Image) -> np.ndarray:
        """Full recipe for every view: RGB PIL → float32 [views, 3, size, size]."""
        return np.stack([self.normalize(v) for v in self.view_images(img)])

    def resize_crop(self, img: Image.Image) -> Image.Image:
        """Geometric part only (RGB PIL in, RGB PIL of size×size out)."""
        s = self.size
        resample = _RESAMPLE[self.interpolation]
        if self.crop == "squash":
            return img.resize((s, s), resample)
        # Same arithmetic as torchvision's Resize(int) followed by CenterCrop(int).
        img = self._short_side(img)
        nw, nh = img.size
        top = int(round((nh - s) / 2.0))
        left = int(round((nw - s) / 2.0))
        return img.crop((left, top, left + s, top + s))

    def to_array(self, img: Image.Image) -> np.ndarray:
        """The first (centre) view only: RGB PIL → float32 CHW array, normalised."""
        return self.normalize(self.view_images(img)[0])
