"""Which CLIP features a head reads: the final projected embedding and/or intermediate class tokens.

The class token after each ViT block carries low-level evidence that the final projection, trained for
image–text matching, throws away (RINE, Koutlis & Papadopoulos, ECCV 2024). One forward pass yields all
of them, so reading more layers costs nothing at scan time; only the head grows.

The mean of the patch tokens after a block is a second kind of tap: the class token summarises the image the way
a caption would, while the patch tokens describe its texture everywhere, which is where a retouched photograph and
a render differ (issue 18: fewer real photographs called fake, more of an unseen generator's images caught).

Layer numbering: 0 is the final projected embedding (what `tower(x)` returns); k ≥ 1 is the class token
after block k (1-based, before the final LayerNorm); -k (written `pK`) is the mean of the patch tokens after
block k. Taps are concatenated in the order given.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

AGGREGATES = ("mean", "max")


@dataclass(frozen=True)
class FeatureSpec:
    """Recorded in every checkpoint as `features`; part of every feature-cache key."""

    layers: tuple[int, ...] = (0,)
    # How the views (crops) of one image become its score: mean of logits (default; robust to one odd
    # crop) or max (flags an image if any crop looks generated, e.g. an inpainted region).
    aggregate: str = "mean"

    def __post_init__(self) -> None:
        if not self.layers or len(set(self.layers)) != len(self.layers):
            raise ValueError(f"layers must be distinct tap numbers, not {self.layers}")
        if self.aggregate not in AGGREGATES:
            raise ValueError(f"aggregate must be one of {AGGREGATES}, not {self.aggregate!r}")

    @property
    def final_only(self) -> bool:
        return tuple(self.layers) == (0,)

    def key(self) -> str:
        """Cache-key part: empty for the historical final-only features (their cache stays valid)."""
        return "" if self.final_only else "L" + "_".join(tap_name(k) for k in self.layers)

    def to_dict(self) -> dict:
        return {**asdict(self), "layers": list(self.layers)}

    @classmethod
    def from_dict(cls, d: dict | None) -> FeatureSpec:
        d = d or {}
        return cls(layers=tuple(int(k) for k in d.get("layers", [0])), aggregate=d.get("aggregate", "mean"))


def tap_name(k: int) -> str:
    """How a tap is written: '4' for block 4's class token, 'p4' for its patch-token mean, '0' for the final."""
    return f"p{-k}" if k < 0 else str(k)


def parse_layers(text: str, depth: int) -> tuple[int, ...]:
    """CLI syntax → layer tuple: 'final', 'all' (final + every block), 'blocks' (every block), 'A:B'
    (blocks A..B inclusive), or a comma list where 'final' or 0 is the projection, e.g. '4:12,final'.
    A 'p' before a block number or range means the mean of that block's patch tokens: 'p4,p8', 'p4:12'."""
    out: list[int] = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        sign, body = (-1, part[1:]) if part.startswith("p") else (1, part)
        try:
            if part == "final":
                out.append(0)
            elif part == "all":
                out += [0, *range(1, depth + 1)]
            elif part == "blocks":
                out += list(range(1, depth + 1))
            else:
                a, _, b = body.partition(":")
                blocks = range(int(a), int(b or a) + 1)
                if sign < 0 and 0 in blocks:
                    raise ValueError
                out += [sign * k for k in blocks]
        except ValueError:
            raise ValueError(f"cannot read layer {part!r}: use final, all, blocks, a block number, A:B, or pK "
                             "(the patch-token mean of block K ≥ 1)") from None
    seen: list[int] = []
    for k in out:
        if abs(k) > depth:
            raise ValueError(f"layer {tap_name(k)} is outside 0..{depth} (0 = final embedding, 1..{depth} = blocks,"
                             f" p1..p{depth} = patch-token means)")
        if k not in seen:
            seen.append(k)
    if not seen:
        raise ValueError("no layers given")
    return tuple(seen)


@dataclass
class TowerShape:
    embed_dim: int  # final projection width
    width: int  # residual stream width (class-token size)
    depth: int  # number of blocks
    segments: list[int] = field(default_factory=list)

    def dims(self, layers: Sequence[int]) -> list[int]:
        return [self.embed_dim if k == 0 else self.width for k in layers]


def tower_shape(tower: torch.nn.Module) -> TowerShape:
    blocks = tower.transformer.resblocks
    width = int(tower.class_embedding.shape[-1])
    proj = getattr(tower, "proj", None)
    embed = int(proj.shape[1]) if proj is not None else width
    return TowerShape(embed_dim=embed, width=width, depth=len(blocks))


def forward_layers(tower: torch.nn.Module, pixels: torch.Tensor, layers: Sequence[int]) -> torch.Tensor:
    """One pass through an open_clip VisionTransformer → the requested features concatenated in order."""
    if tuple(layers) == (0,):
        return tower(pixels)
    return forward_taps(tower, pixels, layers)[0]


def forward_taps(tower: torch.nn.Module, pixels: torch.Tensor, layers: Sequence[int], keep_patches: bool = False
                 ) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
    """One pass → (the requested features concatenated in order, {k: patch tokens [n, P, width]} for each
    patch-mean tap -k when `keep_patches`). A patch-mean tap is the mean of those tokens over P."""
    tr = tower.transformer
    x = tower._embeds(pixels)
    if not tr.batch_first:
        x = x.transpose(0, 1)
    wanted = set(layers)
    last = len(tr.resblocks) if 0 in wanted else max(abs(k) for k in wanted)
    cls: dict[int, torch.Tensor] = {}
    patches: dict[int, torch.Tensor] = {}
    for i, block in enumerate(tr.resblocks, start=1):
        if i > last:
            break
        x = block(x)
        tokens = x if tr.batch_first else x.transpose(0, 1)
        if i in wanted:
            cls[i] = tokens[:, 0].clone()
        if -i in wanted:
            cls[-i] = tokens[:, 1:].mean(dim=1)
            if keep_patches:
                patches[-i] = tokens[:, 1:].clone()
    if 0 in wanted:
        if not tr.batch_first:
            x = x.transpose(0, 1)
        pooled, _ = tower._pool(x)
        cls[0] = pooled @ tower.proj if tower.proj is not None else pooled
    return torch.cat([cls[k] for k in layers], dim=-1), patches


def select_layers(feats: np.ndarray, have: Sequence[int], want: Sequence[int], shape: TowerShape) -> np.ndarray:
    """Columns of `want` from features extracted for `have` (a superset), in `want`'s order."""
    offsets, pos = {}, 0
    for k, d in zip(have, shape.dims(have), strict=True):
        offsets[k] = (pos, pos + d)
        pos += d
    missing = [k for k in want if k not in offsets]
    if missing:
        raise ValueError(f"layers {missing} were not extracted (have {list(have)})")
    return np.concatenate([feats[..., offsets[k][0]:offsets[k][1]] for k in want], axis=-1)
