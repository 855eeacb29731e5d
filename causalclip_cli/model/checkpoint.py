"""Checkpoints: safetensors tensors plus one JSON metadata document; never pickle.

A checkpoint describes itself: head kind and hyper-parameters, the backbone and the exact weights its
head was trained on, preprocessing, decision thresholds, label convention, training summary. One
loader, `load_detector`, rebuilds backbone + head + preprocessing from it.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from causalclip_cli import __version__
from causalclip_cli.errors import CheckpointError
from causalclip_cli.settings import weights_dir

if TYPE_CHECKING:
    import numpy as np
    import torch

    from causalclip_cli.model.backbones import Backbone
    from causalclip_cli.model.familiarity import Familiarity
    from causalclip_cli.model.heads import Head
    from causalclip_cli.model.preprocess import Preprocess
    from causalclip_cli.model.taps import FeatureSpec

FORMAT_VERSION = 1
METADATA_KEY = "causalclip"
DEFAULT_CHECKPOINT = "linear-vitb16"  # chosen by protocol F (issue 18): the fewest real photos called fake
LABELS = {"0": "real", "1": "fake", "output": "probability that the image is generated (fake)"}


@dataclass
class Decision:
    """How probabilities become labels."""

    threshold: float = 0.5
    uncertain: tuple[float, float] | None = None  # abstain band [low, high)
    calibration: dict = field(default_factory=dict)  # how the threshold was chosen
    # A would-be `fake` whose familiarity p-value (familiarity.py) is below this is `uncertain` instead:
    # the head has seen nothing like the image. None: no such check.
    unfamiliar_below: float | None = None
    # `scan --explain`: {"threshold": t, "statistic": "window_max", ...}: an image whose strongest map window
    # scores ≥ t is `fake` (reason "region"); None: maps never change a label.
    region: dict | None = None

    def label(self, prob: float, threshold: float | None = None,
              uncertain: tuple[float, float] | None = None) -> str:
        t = self.threshold if threshold is None else threshold
        band = self.uncertain if uncertain is None else uncertain
        if band is not None and band[0] <= prob < band[1]:
            return "uncertain"
        return "fake" if prob >= t else "real"

    def verdict(self, prob: float, familiarity: float | None = None) -> tuple[str, str | None]:
        """(label, why it is `uncertain`: "band" for a score in the abstain band, "unfamiliar" for a `fake`
        score on an image unlike the head's training data; None for `real`/`fake`). Only `fake` is ever
        withheld for unfamiliarity: calling an unfamiliar real photograph `fake` is the costly error."""
        label = self.label(prob)
        if label == "uncertain":
            return label, "band"
        if (label == "fake" and familiarity is not None and self.unfamiliar_below is not None
                and familiarity < self.unfamiliar_below):
            return "uncertain", "unfamiliar"
        return label, None

    def to_dict(self) -> dict:
        d = {"threshold": self.threshold, "uncertain": list(self.uncertain) if self.uncertain else None,
             "calibration": self.calibration, "unfamiliar_below": self.unfamiliar_below}
        if self.region is not None:
            d["region"] = self.region
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Decision:
        band = d.get("uncertain")
        below = d.get("unfamiliar_below")
        return cls(float(d.get("threshold", 0.5)), tuple(band) if band else None, d.get("calibration", {}),
                   None if below is None else float(below), d.get("region"))


def build_metadata(head: Head, backbone_info: dict, decision: Decision | None = None,
                   training: dict | None = None, *, preprocess: dict | None = None,
                   features: dict | None = None, scaling: dict | None = None) -> dict:
    """`preprocess`: the recipe the head was trained with (default: the backbone's); `features`: a
    taps.FeatureSpec dict (default: final embedding only); `scaling`: logit → probability map."""
    from causalclip_cli.model.heads import head_config_dict

    return {
        "format_version": FORMAT_VERSION,
        "head": {"kind": head.kind, "embed_dim": head.embed_dim, "config": head_config_dict(head)},
        "backbone": backbone_info,
        "preprocess": preprocess or backbone_info.get("preprocess", {}),
        "features": features or {"layers": [0], "aggregate": "mean"},
        "scaling": scaling or {"method": "none", "a": 1.0, "b": 0.0},
        "decision": (decision or Decision()).to_dict(),
        "labels": LABELS,
        "training": training or {},
        "tool": {"name": "causalclip", "version": __version__},
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def _atomic_target(path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
    os.close(fd)
    return tmp


def _shareable(path: str) -> None:
    """mkstemp and safetensors create private (0600) files; a checkpoint is an ordinary file: honour the umask."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def save_safetensors(path: str | os.PathLike, module: torch.nn.Module, key: str, document: dict,
                     extra: dict[str, torch.Tensor] | None = None) -> Path:
    """A module's tensors (+ `extra` tensors under their own names) + one JSON document under `key`, written
    to a temp file, fsynced, then renamed: a killed run leaves no half file. Shared by heads and purifiers."""
    from safetensors.torch import save_file

    path = Path(path)
    tensors = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    tensors.update(extra or {})
    tmp = _atomic_target(path)
    try:
        save_file(tensors, tmp, metadata={key: json.dumps(document, sort_keys=True)})
        _shareable(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def save_checkpoint(path: str | os.PathLike, head: Head, metadata: dict,
                    familiarity: Familiarity | None = None) -> Path:
    """Write a head, its metadata and its familiarity reference (if any) atomically (save_safetensors)."""
    extra = None
    if familiarity is not None:
        metadata = {**metadata, "familiarity": familiarity.describe()}
        extra = familiarity.tensors()
    return save_safetensors(path, head, METADATA_KEY, metadata, extra)


def read_safetensors_document(path: str | os.PathLike, key: str, what: str, hint: str) -> dict:
    """The JSON document `save_safetensors` stored under `key`; CheckpointError (naming `what`, e.g.
    "checkpoint" or "purifier") for a missing or unreadable file or a file without that document."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            raw = (fh.metadata() or {}).get(key)
    except FileNotFoundError as exc:
        raise CheckpointError(f"{what} not found: {path}", hint=hint) from exc
    except Exception as exc:  # noqa: BLE001 - safetensors raises several types for bad headers
        raise CheckpointError(f"{path}: not a readable safetensors {what} ({exc})") from exc
    if raw is None:
        label = "causalclip" if what == "checkpoint" else f"causalclip {what}"
        raise CheckpointError(f"{path}: safetensors file without {label} metadata", hint=hint)
    return json.loads(raw)


def read_metadata(path: str | os.PathLike) -> dict:
    meta = read_safetensors_document(path, METADATA_KEY, "checkpoint",
                                     "checkpoints are written by `causalclip train`")
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format {version}, this tool reads {FORMAT_VERSION}")
    return meta


def load_head(path: str | os.PathLike, device: str = "cpu") -> tuple[Head, dict]:
    """Rebuild the head exactly from a checkpoint; returns (head in eval mode, metadata)."""
    from safetensors.torch import load_file

    from causalclip_cli.model.heads import make_head

    meta = read_metadata(path)
    h = meta["head"]
    try:
        head = make_head(h["kind"], int(h["embed_dim"]), h.get("config", {}))
    except ValueError as exc:
        raise CheckpointError(f"{path}: {exc}") from exc
    from causalclip_cli.model.familiarity import PREFIX

    state = {k: v for k, v in load_file(str(path)).items() if not k.startswith(PREFIX)}
    try:
        head.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: tensors do not match the recorded head ({exc})") from exc
    return head.eval().to(device), meta


def load_familiarity(path: str | os.PathLike, meta: dict) -> Familiarity | None:
    """The checkpoint's familiarity reference, or None when it has none."""
    from safetensors import safe_open

    from causalclip_cli.model.familiarity import PREFIX, Familiarity

    with safe_open(str(path), framework="pt") as fh:
        tensors = {k: fh.get_tensor(k) for k in fh.keys() if k.startswith(PREFIX)}
    return Familiarity.from_tensors(tensors, meta.get("familiarity") or {})


def available_checkpoints() -> list[str]:
    d = weights_dir()
    return sorted(p.stem for p in d.glob("*.safetensors")) if d.is_dir() else []


def resolve_checkpoint(name_or_path: str | None) -> Path:
    """A path, or the name of a released checkpoint in weights/; the error lists the choices."""
    target = name_or_path or DEFAULT_CHECKPOINT
    p = Path(target).expanduser()
    if p.is_file():
        return p
    for cand in (weights_dir() / target, weights_dir() / f"{target}.safetensors"):
        if cand.is_file():
            return cand
    choices = ", ".join(available_checkpoints()) or "none installed"
    raise CheckpointError(f"checkpoint {target!r} not found (released checkpoints: {choices})",
                          hint="pass --checkpoint PATH to a file written by `causalclip train`")


@dataclass
class Detector:
    """A whole classifier: frozen backbone + head + the preprocessing both were trained with."""

    backbone: Backbone
    head: Head
    metadata: dict
    path: Path
    device: str
    precision: str = "fp32"  # of the tower: fp32, int8 (CPU), fp16 or bf16 (autocast); see precision.py
    familiarity: Familiarity | None = None  # distance to the head's training features (familiarity.py)

    @property
    def preprocess(self) -> Preprocess:
        from causalclip_cli.model.preprocess import Preprocess

        recorded = self.metadata.get("preprocess")
        return Preprocess.from_dict(recorded) if recorded else self.backbone.preprocess

    @property
    def decision(self) -> Decision:
        return Decision.from_dict(self.metadata.get("decision", {}))

    @property
    def model_id(self) -> str:
        views = self.preprocess.views
        base = f"{self.path.stem}:{self.head.kind}:{self.backbone.info.config}" + (f":{views}crops" if views > 1
                                                                                  else "")
        return base if self.precision == "fp32" else f"{base}:{self.precision}"

    @property
    def features(self) -> FeatureSpec:
        from causalclip_cli.model.taps import FeatureSpec

        return FeatureSpec.from_dict(self.metadata.get("features"))

    @property
    def feature_id(self) -> str:
        """Feature-cache namespace: the backbone's id, plus the layer choice when it is not the default, plus
        `:int8` for INT8 features (autocast features are close enough to share fp32's, as they always have)."""
        key = self.features.key()
        return (self.backbone.info.id + (f"-{key}" if key else "")
                + (":int8" if self.precision == "int8" else ""))

    @property
    def scaling(self) -> tuple[float, float]:
        s = self.metadata.get("scaling") or {}
        return float(s.get("a", 1.0)), float(s.get("b", 0.0))

    def _tower_context(self) -> contextlib.AbstractContextManager:
        import torch

        from causalclip_cli.model.precision import autocast_dtype

        amp = autocast_dtype(self.precision)
        return (torch.autocast(self.device.split(":", 1)[0], dtype=amp) if amp is not None
                else contextlib.nullcontext())

    def embed(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixel rows (one per view) → the feature rows the head reads."""
        import torch

        from causalclip_cli.model.taps import forward_layers

        with torch.inference_mode(), self._tower_context():
            return forward_layers(self.backbone.tower, pixels.to(self.device, non_blocking=True),
                                  self.features.layers).float()

    def embed_with_patches(self, pixels: torch.Tensor) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        """`embed`, plus the patch tokens [n, P, width] behind each patch-mean tap -k (evidence maps)."""
        import torch

        from causalclip_cli.model.taps import forward_taps

        with torch.no_grad(), self._tower_context():
            feats, patches = forward_taps(self.backbone.tower, pixels.to(self.device, non_blocking=True),
                                          self.features.layers, keep_patches=True)
        return feats.float(), {k: v.float() for k, v in patches.items()}

    def logits(self, features: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Features [n, d] or [n, views, d] → one aggregated head logit per image (before scaling)."""
        import torch

        x = torch.as_tensor(features, dtype=torch.float32, device=self.device)
        with torch.inference_mode():
            if x.dim() == 2:
                return self.head(x)
            n, v, d = x.shape
            per_view = self.head(x.reshape(n * v, d)).reshape(n, v)
            return per_view.amax(1) if self.features.aggregate == "max" else per_view.mean(1)

    def scores(self, features: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Features → fake probabilities on CPU: sigmoid(a · logit + b), the checkpoint's calibrated map."""
        import torch

        a, b = self.scaling
        return torch.sigmoid(a * self.logits(features) + b).cpu()

    def probabilities(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixel rows, `preprocess.views` consecutive rows per image → one probability per image."""
        return self.assess(pixels)[0]

    def assess(self, pixels: torch.Tensor) -> tuple[torch.Tensor, np.ndarray | None]:
        """Pixel rows → (one probability per image, one familiarity p-value per image or None when the
        checkpoint carries no familiarity reference)."""
        feats = self.embed(pixels)
        views = self.preprocess.views
        if views > 1:
            feats = feats.reshape(-1, views, feats.shape[-1])
        return self.scores(feats), self.familiar(feats)

    def familiar(self, features: torch.Tensor | np.ndarray) -> np.ndarray | None:
        """Familiarity p-values of feature rows (None without a reference)."""
        return None if self.familiarity is None else self.familiarity.p_values(features)


def check_compatible(meta: dict, info: dict, source: str) -> None:
    """Errors when the head cannot run on this backbone; a warning when only the weights differ."""
    want = meta["backbone"]
    head_dim = int(meta["head"]["embed_dim"])
    # A head reading layer taps is checked against the built tower instead (load_detector).
    final_only = list((meta.get("features") or {}).get("layers", [0])) == [0]
    if final_only and int(info["embed_dim"]) != head_dim:
        raise CheckpointError(
            f"{source}: head expects {head_dim}-dim features from {want.get('config')}, "
            f"but backbone {info['config']} gives {info['embed_dim']}",
            hint=f"use --backbone {want.get('name')} --pretrained {want.get('pretrained')}",
        )
    if info["config"] != want.get("config"):
        raise CheckpointError(
            f"{source}: head was trained on backbone {want.get('config')} but {info['config']} was resolved",
            hint=f"use --backbone {want.get('name')} --pretrained {want.get('pretrained')}",
        )
    if want.get("sha256") and info.get("sha256") and want["sha256"] != info["sha256"]:
        warnings.warn(
            f"{source}: head was trained on backbone weights {want['sha256'][:12]} ({want.get('source')}), "
            f"now using {info['sha256'][:12]} ({info['source']}); verdicts may shift",
            stacklevel=2,
        )


def load_detector(checkpoint: str | None = None, *, device: str = "cpu", backbone_weights: str | None = None,
                  allow_download: bool = True, cache_dir: Path | None = None, precision: str = "auto") -> Detector:
    """Checkpoint name or path → ready-to-run Detector on `device` (precision: see precision.py)."""
    from causalclip_cli.model.backbones import BackboneSpec, load_backbone, locate
    from causalclip_cli.model.precision import resolve_precision

    precision = resolve_precision(precision, device)

    path = resolve_checkpoint(checkpoint)
    head, meta = load_head(path, device=device)
    b = meta["backbone"]
    spec = BackboneSpec(name=b["name"], pretrained=b["pretrained"], weights=backbone_weights)
    info = locate(spec, allow_download=allow_download, cache_dir=cache_dir)
    check_compatible(meta, info.to_dict(), str(path))
    backbone = load_backbone(spec, allow_download=allow_download, cache_dir=cache_dir, device=device, info=info,
                             int8=precision == "int8")
    layers = (meta.get("features") or {}).get("layers", [0])
    if list(layers) != [0]:
        from causalclip_cli.model.taps import tower_shape

        shape = tower_shape(backbone.tower)
        if max(abs(k) for k in layers) > shape.depth or sum(shape.dims(layers)) != int(meta["head"]["embed_dim"]):
            raise CheckpointError(f"{path}: head reads layers {layers} ({meta['head']['embed_dim']} features), "
                                  f"which backbone {info.config} ({shape.depth} blocks) cannot provide")
    return Detector(backbone=backbone, head=head, metadata=meta, path=path, device=device, precision=precision,
                    familiarity=load_familiarity(path, meta))
