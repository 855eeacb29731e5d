"""Pictures of evidence maps: the image with each cell tinted by its score and the strongest region boxed.

Drawn from the plain `evidence_map` object of a record (rows, cols, scores, box), so `--maps DIR` and the HTML
report draw the same thing from the same data.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

LONG_SIDE = 1024  # pictures are drawn at most this large: a map has ~16-px cells of the scanned image anyway
TINT = (230, 30, 30)
BOX = (255, 214, 0)


def render_overlay(image: Image.Image, evidence_map: dict, long_side: int = LONG_SIDE) -> Image.Image:
    """RGB picture: `image` (shrunk to `long_side`) under a red tint whose opacity is each cell's score
    (0 → clear, 1 → 60 %), with the map's box drawn in yellow."""
    rows, cols = int(evidence_map["rows"]), int(evidence_map["cols"])
    scores = np.asarray(evidence_map["scores"], dtype=np.float32).reshape(rows, cols)
    base = image.convert("RGB")
    scale = min(1.0, long_side / max(base.size))
    if scale < 1.0:
        base = base.resize((max(1, round(base.width * scale)), max(1, round(base.height * scale))),
                           Image.Resampling.LANCZOS)
    alpha = Image.fromarray(np.clip(scores * 0.6 * 255, 0, 255).astype(np.uint8), "L")
    alpha = alpha.resize(base.size, Image.Resampling.NEAREST)
    tint = Image.new("RGB", base.size, TINT)
    out = Image.composite(tint, base, alpha)
    x0, y0, x1, y1 = (float(v) for v in evidence_map["box"])
    sx, sy = base.width / image.width, base.height / image.height
    width = max(2, round(max(base.size) / 200))
    ImageDraw.Draw(out).rectangle((x0 * sx, y0 * sy, max(x0 * sx, x1 * sx - 1), max(y0 * sy, y1 * sy - 1)),
                                  outline=BOX, width=width)
    return out


def write_overlay(image: Image.Image, evidence_map: object, path: Path) -> None:
    """Write the picture as PNG through a temporary file: a killed run leaves no half-written picture."""
    as_dict = evidence_map.to_dict() if hasattr(evidence_map, "to_dict") else evidence_map
    picture = render_overlay(image, as_dict)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        picture.save(tmp, "PNG")
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
