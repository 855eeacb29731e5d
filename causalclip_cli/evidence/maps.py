"""Evidence maps: where in an image the head's evidence lies, as a grid of probabilities over the whole image.

How a cell's score is made. The image is resized as for a scan (short side to the tower's input size, here
with both sides rounded to whole patches) and covered by overlapping input-size windows. For each window the
head's logit is split over the window's patches through the patch-mean taps (`pK`), the only features that are
a sum over patches:

    cell logit  ℓ_i = logit + Σ_k J_k · (t_ik − m_k)

where m_k is the window's patch-mean tap k, t_ik the token of patch i at that tap, and J_k the gradient of the
logit with respect to m_k with each tap's normalising norm held fixed. The mean of the ℓ_i over a window's
patches is the window's logit exactly, for every head. For a linear head (`linear-vitb16`) the decomposition is
exact in a stronger sense: ℓ_i is the logit the head gives when every patch of the window looks like patch i
(the head is linear in the patch tokens once the norms are fixed). For the CausalCLIP head (an MLP) it is a
first-order expansion; benchmarks/composites.py measures it with deletion curves. A cell covered by several
windows gets the mean of their logits; its score is the checkpoint's calibrated sigmoid of that logit.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from causalclip_cli.errors import UsageError
from causalclip_cli.model.checkpoint import Detector

MAX_ASPECT = 4


@dataclass(frozen=True)
class MapSettings:
    """How an evidence map is cut: windows of the tower's input size, moved by `stride_cells` patches."""

    stride_cells: int = 7  # half a 224-px window: every cell away from the border is seen by two windows
    batch_size: int = 8
    smooth: int = 2  # radius in cells of a box filter over the cell logits (0: none; 2 chosen on composites-val)


@dataclass
class EvidenceMap:
    """A grid over the whole image, row-major from the top left; `box` in the original image's pixels."""

    rows: int
    cols: int
    scores: list[float]
    box: list[int]
    peak: float
    window_max: float = 0.0  # the highest probability the head gives one window (internal; not written out)

    def to_dict(self) -> dict:
        return {"rows": self.rows, "cols": self.cols, "scores": [round(s, 4) for s in self.scores],
                "box": list(self.box), "peak": round(self.peak, 4)}

    def grid(self) -> np.ndarray:
        return np.asarray(self.scores, dtype=np.float64).reshape(self.rows, self.cols)


@dataclass(frozen=True)
class Layout:
    """Where the windows lie in the resized image (pixels), and the grid of cells they cover."""

    width: int  # resized image
    height: int
    cell: int  # patch size in pixels
    windows: tuple[tuple[int, int], ...]  # top-left corners

    @property
    def rows(self) -> int:
        return self.height // self.cell

    @property
    def cols(self) -> int:
        return self.width // self.cell


def _offsets(length: int, size: int, step: int) -> list[int]:
    last = length - size
    out = list(range(0, last, step)) + [last]
    return sorted(set(out))


def window_layout(width: int, height: int, size: int, cell: int, settings: MapSettings = MapSettings()) -> Layout:
    """The resized image (short side `size`, both sides whole cells) and windows covering all of it."""
    short = min(width, height)
    # A panorama or a 1-px strip would need hundreds of windows: beyond 4:1 the long side is squeezed.
    longest = MAX_ASPECT * size
    w = min(longest, max(size, int(round(width * size / short / cell)) * cell))
    h = min(longest, max(size, int(round(height * size / short / cell)) * cell))
    # Never a step longer than half a window: every cell is covered, away from the border by two windows.
    step = max(1, min(settings.stride_cells, size // cell // 2)) * cell
    windows = tuple((x, y) for y in _offsets(h, size, step) for x in _offsets(w, size, step))
    return Layout(w, h, cell, windows)


def supports_maps(detector: Detector) -> bool:
    """Maps need a head that reads at least one patch-mean tap (`pK`)."""
    return any(k < 0 for k in detector.features.layers)


def check_maps(detector: Detector) -> None:
    """A usage error naming what is missing when this checkpoint cannot show where its evidence is."""
    if not supports_maps(detector):
        raise UsageError(f"--explain needs a head that reads patch-token taps (pK); {detector.path.stem} reads "
                         f"only {', '.join(map(str, detector.features.layers))}",
                         hint="use the default checkpoint (linear-vitb16), or train with --layers ...,p4,p8")


@contextlib.contextmanager
def _fixed_norms(detector: Detector) -> Iterator[None]:
    inputs = detector.head.inputs
    was = inputs.fixed_norm
    inputs.fixed_norm = True
    try:
        yield
    finally:
        inputs.fixed_norm = was


def _segments(detector: Detector) -> list[tuple[int, int, int]]:
    """(tap, start, end) of each tap's columns in the feature row."""
    from causalclip_cli.model.taps import tower_shape

    shape = tower_shape(detector.backbone.tower)
    out, pos = [], 0
    for k, d in zip(detector.features.layers, shape.dims(detector.features.layers), strict=True):
        out.append((k, pos, pos + d))
        pos += d
    return out


def cell_logits(detector: Detector, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Windows [n, 3, S, S] → (head logits [n], cell logits [n, rows, cols] whose mean over cells is the logit)."""
    feats, patches = detector.embed_with_patches(pixels)
    head = detector.head
    was_training = head.training
    head.eval()
    try:
        with torch.enable_grad(), _fixed_norms(detector):
            x = feats.detach().to(detector.device).requires_grad_(True)
            logits = head(x)
            (grad,) = torch.autograd.grad(logits.sum(), x)
    finally:
        head.train(was_training)
    cells = logits.detach()[:, None].expand(-1, next(iter(patches.values())).shape[1]).clone()
    for k, start, end in _segments(detector):
        if k < 0:
            tokens = patches[k]
            mean = feats[:, None, start:end]
            cells += torch.einsum("npd,nd->np", tokens - mean, grad[:, start:end])
    side = int(math.isqrt(cells.shape[1]))
    return logits.detach(), cells.reshape(-1, side, side)


def _strongest_region(grid: np.ndarray) -> tuple[int, int, int, int]:
    """Cells (r0, c0, r1, c1), end exclusive: the 4-connected cells around the peak that score at least halfway
    between the image's median cell and its peak."""
    peak = np.unravel_index(int(np.argmax(grid)), grid.shape)
    level = (float(grid[peak]) + float(np.median(grid))) / 2.0
    keep = grid >= level
    seen = np.zeros_like(keep)
    stack = [peak]
    seen[peak] = True
    rows, cols = [], []
    while stack:
        r, c = stack.pop()
        rows.append(r)
        cols.append(c)
        for rr, cc in ((r - 1, c), (r + 1, c), (r, c - 1), (r, c + 1)):
            if 0 <= rr < grid.shape[0] and 0 <= cc < grid.shape[1] and keep[rr, cc] and not seen[rr, cc]:
                seen[rr, cc] = True
                stack.append((rr, cc))
    return min(rows), min(cols), max(rows) + 1, max(cols) + 1


def explain_image(detector: Detector, image: Image.Image, settings: MapSettings = MapSettings()) -> EvidenceMap:
    """The evidence map of one decoded RGB image (EXIF orientation already applied, as the scan decodes it)."""
    check_maps(detector)
    pre = detector.preprocess
    tower = detector.backbone.tower
    cell = int(tower.patch_size[0]) if hasattr(tower, "patch_size") else 16
    layout = window_layout(image.width, image.height, pre.size, cell, settings)
    resized = image.resize((layout.width, layout.height), Image.Resampling.BICUBIC)
    crops = [pre.normalize(resized.crop((x, y, x + pre.size, y + pre.size))) for x, y in layout.windows]
    window_logits = []
    total = np.zeros((layout.rows, layout.cols))
    count = np.zeros((layout.rows, layout.cols))
    per = pre.size // cell
    for start in range(0, len(crops), settings.batch_size):
        batch = torch.from_numpy(np.stack(crops[start:start + settings.batch_size]))
        logit, cells = cell_logits(detector, batch)
        window_logits += logit.cpu().tolist()
        for (x, y), grid in zip(layout.windows[start:start + len(batch)], cells.cpu().numpy(), strict=True):
            r, c = y // cell, x // cell
            total[r:r + per, c:c + per] += grid
            count[r:r + per, c:c + per] += 1
    a, b = detector.scaling
    logits = _box_filter(total / count, settings.smooth)
    scores = 1.0 / (1.0 + np.exp(-(a * logits + b)))
    r0, c0, r1, c1 = _strongest_region(scores)
    sx, sy = image.width / layout.cols, image.height / layout.rows
    box = [int(round(c0 * sx)), int(round(r0 * sy)), int(round(c1 * sx)), int(round(r1 * sy))]
    window_max = 1.0 / (1.0 + math.exp(-(a * max(window_logits) + b)))
    return EvidenceMap(layout.rows, layout.cols, [float(v) for v in scores.ravel()], box, float(scores.max()),
                       window_max)


def _box_filter(grid: np.ndarray, radius: int) -> np.ndarray:
    """Mean over the (2r+1)² cells around each cell, clipped at the border."""
    if radius <= 0:
        return grid
    padded = np.pad(grid, radius, mode="constant")
    ones = np.pad(np.ones_like(grid), radius, mode="constant")
    k = 2 * radius + 1
    out = np.zeros_like(grid)
    n = np.zeros_like(grid)
    for dy in range(k):
        for dx in range(k):
            out += padded[dy:dy + grid.shape[0], dx:dx + grid.shape[1]]
            n += ones[dy:dy + grid.shape[0], dx:dx + grid.shape[1]]
    return out / n
