"""`scan --explain`: evidence maps on scan records, the region rule, and `--maps DIR` pictures.

The map of a record is computed from the file decoded again as the scan decodes it (EXIF orientation applied),
so the box is in the same pixel coordinates as the record's `width` and `height`. A file that cannot be decoded
a second time keeps its verdict and gets no map.

The region rule: with `--explain`, an image that the whole-image score leaves `real` or `uncertain` is labelled
`fake` (reason `region`) when one window of its map scores at or above the checkpoint's region threshold
(`decision.region`, calibrated on real photographs). It never turns a `fake` into anything else, and it is off
for checkpoints without a region threshold.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from causalclip_cli.model.checkpoint import Detector
from causalclip_cli.scanning.output import ScanRecord

if TYPE_CHECKING:
    from PIL import Image


@dataclass
class ExplainOptions:
    maps_dir: str | None = None  # write one PNG per image here


def region_threshold(detector: Detector) -> float | None:
    """The checkpoint's region threshold on a window's probability (None: no region rule)."""
    region = detector.decision.region
    return float(region["threshold"]) if region else None


def map_file_name(path: str) -> str:
    """`<stem>-<8 hex of the path>.png`: two inputs with the same stem never share a picture."""
    stem = Path(path).stem or "image"
    digest = hashlib.sha256(os.fsencode(path)).hexdigest()[:8]
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in stem)[:80]
    return f"{safe}-{digest}.png"


def explain_record(detector: Detector, record: ScanRecord, options: ExplainOptions,
                   image: Image.Image | None = None) -> None:
    """Attach the evidence map to a scored record (in place), apply the region rule, write its picture. `image`:
    the decoded RGB image when the caller has it (an in-memory input); else the file is decoded again."""
    if record.error is not None or record.probability is None:
        return
    from causalclip_cli.errors import ImageError
    from causalclip_cli.evidence.maps import explain_image
    from causalclip_cli.inputs.data import decode_image

    if image is None:
        try:
            image = decode_image(record.path, min_size=detector.preprocess.size).image
        except (ImageError, OSError):
            return
    # A large JPEG may be decoded at a reduced scale: the box is scaled back to the record's pixels.
    emap = explain_image(detector, image)
    if record.width and record.height and (record.width, record.height) != image.size:
        sx, sy = record.width / image.width, record.height / image.height
        x0, y0, x1, y1 = emap.box
        emap.box = [round(x0 * sx), round(y0 * sy), round(x1 * sx), round(y1 * sy)]
    record.evidence_map = emap.to_dict()
    threshold = region_threshold(detector)
    # An image withheld as unfamiliar stays withheld: the head has no basis for accusing it, region or not.
    if (threshold is not None and record.label != "fake" and record.reason != "unfamiliar"
            and emap.window_max >= threshold):
        record.label, record.reason = "fake", "region"
    if options.maps_dir is not None:
        from causalclip_cli.scanning.overlay import write_overlay

        write_overlay(image, emap, Path(options.maps_dir) / map_file_name(record.path))
