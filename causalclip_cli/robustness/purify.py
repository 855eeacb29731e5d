"""Input purification: transforms of the preprocessed pixel tensor that try to wash out adversarial noise.

Every purifier maps a batch of [0, 1] RGB pixels at the tower's input size (N, 3, S, S), after
resize/crop and before mean/std normalisation, to a batch of the same shape. Baselines: JPEG
re-encoding, Gaussian blur, downscale-upscale, median filter. The learned purifier is a small residual
denoising CNN in the spirit of CoDefend (Zhu, Liu, Hua et al., arXiv 2510.11096), trained by
`causalclip train-purifier` on pairs of (adversarial, clean) images and stored as safetensors with a
JSON metadata document, like the heads; `PurifierUNet` is the larger kind, trained on a GPU by
`purifier_train` (issue 21). `--purify learned` resolves the shipped purifier by name, as checkpoints are
resolved.

For adaptive attacks each purifier also has `for_attack`: differentiable purifiers are used directly;
non-differentiable ones (JPEG) pass the gradient straight through (BPDA: forward = purifier, backward =
identity).
"""

from __future__ import annotations

import datetime as _dt
import io
import math
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from causalclip_cli import __version__
from causalclip_cli.errors import CausalClipError, CheckpointError, UsageError
from causalclip_cli.model.checkpoint import Detector
from causalclip_cli.robustness.primitives import Purifier, normalise, to_unit  # noqa: F401 - re-exported

PURIFIER_KEY = "causalclip-purifier"
PURIFIER_FORMAT = 1
METHODS = ("jpeg[:Q]", "blur[:SIGMA]", "rescale[:FACTOR]", "median[:K]", "learned[:NAME|PATH]")
DEFAULT_PURIFIER = "purifier-vitb16"  # what `--purify learned` means


# --------------------------------------------------------------------------- purifiers


class JpegPurifier(Purifier):
    differentiable = False

    def __init__(self, quality: int = 75) -> None:
        if not 1 <= quality <= 100:
            raise UsageError(f"--purify jpeg:{quality}: quality must be 1..100")
        self.quality = int(quality)
        self.name = f"jpeg:{self.quality}"

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        arr = (x.detach().clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy() * 255.0).round().astype(np.uint8)
        out = []
        for a in arr:
            buf = io.BytesIO()
            Image.fromarray(a).save(buf, format="JPEG", quality=self.quality)
            buf.seek(0)
            out.append(np.asarray(Image.open(buf).convert("RGB"), dtype=np.float32) / 255.0)
        return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).to(x.device, x.dtype)


class BlurPurifier(Purifier):
    def __init__(self, sigma: float = 1.0) -> None:
        if not 0 < sigma <= 10:
            raise UsageError(f"--purify blur:{sigma}: sigma must be in (0, 10]")
        self.sigma = float(sigma)
        self.name = f"blur:{self.sigma:g}"

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        radius = max(1, math.ceil(3.0 * self.sigma))
        t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
        k = torch.exp(-(t * t) / (2.0 * self.sigma ** 2))
        k = k / k.sum()
        c = x.shape[1]
        # Separable Gaussian: a row pass then a column pass, each channel on its own (groups=c).
        y = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="reflect"), k.view(1, 1, 1, -1).repeat(c, 1, 1, 1),
                     groups=c)
        return F.conv2d(F.pad(y, (0, 0, radius, radius), mode="reflect"), k.view(1, 1, -1, 1).repeat(c, 1, 1, 1),
                        groups=c)


class RescalePurifier(Purifier):
    def __init__(self, factor: float = 0.5) -> None:
        if not 0 < factor < 1:
            raise UsageError(f"--purify rescale:{factor}: factor must be in (0, 1)")
        self.factor = float(factor)
        self.name = f"rescale:{self.factor:g}"

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        small = (max(1, round(h * self.factor)), max(1, round(w * self.factor)))
        down = F.interpolate(x, size=small, mode="bilinear", align_corners=False, antialias=True)
        return F.interpolate(down, size=(h, w), mode="bilinear", align_corners=False)


class MedianPurifier(Purifier):
    """k×k median filter. torch's median passes the gradient to the selected pixel, so adaptive attacks
    differentiate through it directly (a valid sub-gradient, stronger than treating it as the identity)."""

    def __init__(self, k: int = 3) -> None:
        if k < 2 or k % 2 == 0 or k > 15:
            raise UsageError(f"--purify median:{k}: kernel size must be odd, 3..15")
        self.k = int(k)
        self.name = f"median:{self.k}"

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        r = self.k // 2
        n, c, h, w = x.shape
        patches = F.unfold(F.pad(x, (r, r, r, r), mode="reflect"), self.k)  # (n, c·k², h·w)
        patches = patches.view(n, c, self.k * self.k, h * w)
        return patches.median(dim=2).values.view(n, c, h, w)


@dataclass
class PurifierNetConfig:
    width: int = 32
    depth: int = 5  # conv layers in all

    @classmethod
    def from_dict(cls, d: dict) -> PurifierNetConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: int(v) for k, v in d.items() if k in names})


class PurifierNet(nn.Module):
    """Residual denoiser: x + f(x), f a stack of 3×3 convolutions. The last layer starts at zero, so an
    untrained net is the identity and training only ever learns a correction."""

    def __init__(self, config: PurifierNetConfig | None = None) -> None:
        super().__init__()
        self.config = config or PurifierNetConfig()
        w, d = self.config.width, self.config.depth
        if d < 2 or w < 1:
            raise ValueError("purifier net needs depth >= 2 and width >= 1")
        layers: list[nn.Module] = [nn.Conv2d(3, w, 3, padding=1), nn.ReLU()]
        for _ in range(d - 2):
            layers += [nn.Conv2d(w, w, 3, padding=1), nn.ReLU()]
        last = nn.Conv2d(w, 3, 3, padding=1)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        layers.append(last)
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x + self.body(x)).clamp(0.0, 1.0)


UNET_KIND = "residual-unet"  # the issue-21 network (trained by purifier_train.py)


@dataclass
class PurifierUNetConfig:
    width: int = 32  # channels at full resolution; ×2 per level down
    levels: int = 2  # downsamplings

    @classmethod
    def from_dict(cls, d: dict) -> PurifierUNetConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: int(v) for k, v in d.items() if k in names})


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(), nn.Conv2d(cout, cout, 3, padding=1), nn.ReLU())


class PurifierUNet(nn.Module):
    """x + r(x), r a small U-Net. Adversarial noise for a ViT-B/16 is structured at the 16-px patch scale as
    well as per pixel, which a plain 3×3 stack (receptive field 11 px) cannot see; two downsamplings give the
    residual a ~40 px view at a quarter of the cost of full-resolution layers. The output layer starts at
    zero, so an untrained net is exactly the identity."""

    def __init__(self, config: PurifierUNetConfig | None = None) -> None:
        super().__init__()
        self.config = config or PurifierUNetConfig()
        w, levels = self.config.width, self.config.levels
        if w < 1 or not 1 <= levels <= 4:
            raise ValueError("purifier U-Net needs width >= 1 and 1..4 levels")
        chans = [w * 2 ** i for i in range(levels + 1)]
        self.enc = nn.ModuleList([_block(3, chans[0])] + [_block(chans[i], chans[i + 1]) for i in range(levels)])
        self.dec = nn.ModuleList([_block(chans[i + 1] + chans[i], chans[i]) for i in reversed(range(levels))])
        self.out = nn.Conv2d(chans[0], 3, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        m = 2 ** self.config.levels
        ph, pw = (-h) % m, (-w) % m
        # Reflect-pad to a multiple of 2^levels (a tensor too small to reflect gets replicate padding).
        mode = "reflect" if h > ph and w > pw else "replicate"
        y = F.pad(x, (0, pw, 0, ph), mode=mode) if ph or pw else x
        skips = []
        for i, enc in enumerate(self.enc):
            y = enc(y if i == 0 else F.avg_pool2d(y, 2))
            skips.append(y)
        for dec, skip in zip(self.dec, reversed(skips[:-1]), strict=True):
            y = F.interpolate(y, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            y = dec(torch.cat([y, skip], 1))
        r = self.out(y)[..., :h, :w]
        return (x + r).clamp(0.0, 1.0)


class LearnedPurifier(Purifier):
    def __init__(self, net: nn.Module, metadata: dict | None = None, path: str | None = None) -> None:
        self.net = net.eval()
        self.net.requires_grad_(False)
        self.metadata = metadata or {}
        self.path = path
        self.name = f"learned:{Path(path).name}" if path else "learned"

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        p = next(self.net.parameters())
        return self.net(x.to(p.device, p.dtype)).to(x.dtype)

    def to(self, device: str) -> LearnedPurifier:
        self.net.to(device)
        return self


def parse_purifier(text: str | None, device: str = "cpu") -> Purifier | None:
    """'jpeg:75', 'blur:1', 'rescale:0.5', 'median:3', 'learned[:NAME|PATH]' (or 'none') → a Purifier."""
    if not text or text.strip().lower() in ("none", "off"):
        return None
    name, _, value = text.strip().partition(":")
    name = name.lower()
    try:
        if name == "jpeg":
            return JpegPurifier(int(value) if value else 75)
        if name == "blur":
            return BlurPurifier(float(value) if value else 1.0)
        if name == "rescale":
            return RescalePurifier(float(value) if value else 0.5)
        if name == "median":
            return MedianPurifier(int(value) if value else 3)
    except ValueError as exc:
        raise UsageError(f"--purify {text!r}: {exc}") from exc
    if name == "learned":
        return load_purifier(resolve_purifier(value or None)).to(device)
    raise UsageError(f"--purify {text!r}: unknown method; choose one of {', '.join(METHODS)}")


# --------------------------------------------------------------------------- save / load / resolve by name


def purifier_dirs() -> list[Path]:
    """Where shipped purifiers live: benchmarks/results/ of a checkout (benchmarks/adversarial.py writes them
    there), else the copy a regular install puts under <prefix>/share/causalclip/purifiers."""
    import sys

    from causalclip_cli.settings import package_dir

    return [package_dir().parent / "benchmarks" / "results", Path(sys.prefix) / "share" / "causalclip" / "purifiers"]


def available_purifiers() -> list[str]:
    names = {p.stem for d in purifier_dirs() if d.is_dir() for p in d.glob("purifier-*.safetensors")}
    return sorted(names)


def resolve_purifier(name_or_path: str | None = None) -> Path:
    """A purifier file path, or the name of a shipped one (default: DEFAULT_PURIFIER); the error lists the
    choices. Something that looks like a path is returned as is, so a missing file is reported as such."""
    target = name_or_path or DEFAULT_PURIFIER
    p = Path(target).expanduser()
    if p.is_file() or "/" in target or os.sep in target or p.suffix == ".safetensors":
        return p
    for d in purifier_dirs():
        for cand in (d / target, d / f"{target}.safetensors"):
            if cand.is_file():
                return cand
    choices = ", ".join(available_purifiers()) or "none installed"
    raise CheckpointError(f"purifier {target!r} not found (shipped purifiers: {choices})",
                          hint="pass --purify learned:PATH to a file written by `causalclip train-purifier` or "
                               "benchmarks/gpu_purifier/train.py")


def ship_status(meta: dict) -> dict:
    """Whether a purifier passed the ship bar (benchmarks/gpu_purifier/ship_check.py records it); purifiers
    made before issue 21 carry no verdict and count as not passed."""
    bar = meta.get("ship_bar")
    if not isinstance(bar, dict):
        return {"passed": False, "evaluated": False,
                "reason": "never checked against the ship bar (PGD 4/255 success <= 0.5 at clean-AP cost <= 0.01)"}
    return {"evaluated": True, **bar}


def purifier_summary(path: str | os.PathLike) -> dict:
    """What `causalclip info` shows of a purifier file: kind, training data and steps, feature error of
    adversarial images before/after it, and the ship-bar verdict. Reads the metadata only."""
    from causalclip_cli.model.checkpoint import read_safetensors_document

    meta = read_safetensors_document(path, PURIFIER_KEY, "purifier", "see `causalclip train-purifier`")
    tr = meta.get("training") or {}
    cfg = tr.get("config") or {}
    return {"path": str(path), "kind": meta.get("kind"), "config": meta.get("config"), "created": meta.get("created"),
            "images": tr.get("images"), "n_images": tr.get("n_images"),
            "heads": tr.get("heads") or ([Path(tr["checkpoint"]).stem] if tr.get("checkpoint") else None),
            "steps": tr.get("iterations_run", cfg.get("iterations")),
            "feature_weight": cfg.get("feature_weight"),
            "feature_error_before": tr.get("feature_error_adv"),
            "feature_error_after": tr.get("feature_error_purified_adv"),
            "feature_error_clean": tr.get("feature_error_purified_clean"),
            "ship_bar": ship_status(meta)}


def shipped_purifier_info(problems: list[str]) -> dict | None:
    """`causalclip info`'s purifier section: purifier_summary of the shipped learned purifier (`--purify
    learned`), or None with the reason added to `problems` when none is installed or it cannot be read."""
    try:
        return purifier_summary(resolve_purifier(None))
    except CausalClipError as exc:
        problems.append(f"--purify learned: {exc}")
        return None


def save_purifier(path: str | os.PathLike, net: nn.Module, metadata: dict) -> Path:
    """safetensors + JSON metadata, written atomically like a checkpoint (a killed run leaves nothing)."""
    from causalclip_cli.model.checkpoint import save_safetensors

    path = Path(path)
    if path.suffix != ".safetensors":
        raise UsageError(f"--output {path}: purifiers are .safetensors files")
    kind = next(k for k, (cls, _) in _net_kinds().items() if isinstance(net, cls))
    meta = {"format_version": PURIFIER_FORMAT, "kind": kind, "config": asdict(net.config),
            "tool": {"name": "causalclip", "version": __version__},
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), **metadata}
    return save_safetensors(path, net, PURIFIER_KEY, meta)


def _net_kinds() -> dict[str, tuple[type, type]]:
    """Stored `kind` → (network class, config class)."""
    return {"residual-cnn": (PurifierNet, PurifierNetConfig), UNET_KIND: (PurifierUNet, PurifierUNetConfig)}


def load_purifier(path: str | os.PathLike) -> LearnedPurifier:
    from safetensors.torch import load_file

    from causalclip_cli.model.checkpoint import read_safetensors_document

    p = Path(path).expanduser()
    hint = "write one with `causalclip train-purifier --output FILE.safetensors`"
    meta = read_safetensors_document(p, PURIFIER_KEY, "purifier", hint)
    try:
        state = load_file(str(p))
    except Exception as exc:  # noqa: BLE001 - safetensors raises several types for bad files
        raise CheckpointError(f"{path}: not a readable safetensors purifier ({exc})") from exc
    kinds = _net_kinds()
    if meta.get("format_version") != PURIFIER_FORMAT or meta.get("kind") not in kinds:
        raise CheckpointError(f"{path}: purifier format {meta.get('format_version')}/{meta.get('kind')}, "
                              f"this tool reads {PURIFIER_FORMAT}/{'|'.join(kinds)}")
    cls, cfg_cls = kinds[meta["kind"]]
    try:
        net = cls(cfg_cls.from_dict(meta.get("config", {})))
        net.load_state_dict(state, strict=True)
    except (RuntimeError, ValueError) as exc:
        raise CheckpointError(f"{path}: tensors do not match the recorded purifier ({exc})") from exc
    return LearnedPurifier(net, meta, str(p))


# --------------------------------------------------------------------------- a detector that purifies first


@dataclass
class PurifiedDetector(Detector):
    """A Detector whose every input is purified first; `scan` and `eval` use it like any other."""

    purifier: Purifier | None = field(default=None)

    @property
    def model_id(self) -> str:
        base = Detector.model_id.fget(self)
        return f"{base}+purify:{self.purifier.name}" if self.purifier is not None else base

    def embed(self, pixels: torch.Tensor) -> torch.Tensor:
        if self.purifier is not None:
            pre = self.preprocess
            x = self.purifier(to_unit(pixels.to(self.device), pre))
            pixels = normalise(x, pre)
        return super().embed(pixels)


def with_purifier(detector: Detector, purifier: Purifier | None) -> Detector:
    if purifier is None:
        return detector
    kept = {f.name: getattr(detector, f.name) for f in fields(Detector)}
    return PurifiedDetector(**kept, purifier=purifier)


# --------------------------------------------------------------------------- training the learned purifier


@dataclass
class PurifierTrainConfig:
    eps_choices: tuple[float, ...] = (2.0, 4.0, 8.0)  # attack budgets of the training pairs, 1/255 units
    attack_steps: int = 5
    width: int = 32
    depth: int = 5
    iterations: int = 300
    batch_size: int = 16
    crop: int = 64  # the net is convolutional: train on random crops, run on whole images
    lr: float = 1e-3
    seed: int = 0
    # Representation-guided training (HGD, Liao et al., CVPR 2018): also match the features the head
    # reads, through the frozen backbone. Pixel L1 alone leaves the adversarial noise the backbone
    # amplifies; this term targets exactly that, at one backbone forward/backward per image and step.
    # 0 → pixel loss only. Guided steps see whole images (crop is ignored), `guided_batch_size` at a time.
    feature_weight: float = 0.0
    guided_batch_size: int = 8


def _relative_feature_error(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image ||a − b||² / ||b||²: how far purified features are from the clean ones."""
    return (a - b).pow(2).sum(-1) / b.pow(2).sum(-1).clamp_min(1e-12)


def _features(detector: Detector, pixels: torch.Tensor, net: PurifierNet | None = None,
              batch_size: int = 16) -> torch.Tensor:
    from causalclip_cli.robustness.primitives import features_from_pixels

    out = []
    for i in range(0, pixels.shape[0], batch_size):
        x = pixels[i:i + batch_size].to(detector.device)
        with torch.no_grad():
            if net is not None:
                x = net(x)
        out.append(features_from_pixels(detector, x).detach().cpu())
    return torch.cat(out)


def train_purifier(detector: Detector, pixels: torch.Tensor, config: PurifierTrainConfig | None = None,
                   progress: Callable[[str], None] | None = None) -> tuple[PurifierNet, dict]:
    """Craft PGD examples of `pixels` ([0, 1], N×3×S×S) against `detector`, each pushed to the verdict
    opposite of the detector's own (no labels needed), then fit the net to map adversarial → clean and
    clean → clean: L1 in pixels, plus (feature_weight > 0) the relative error of the features the head
    reads. Returns the net (eval mode, CPU) and a training summary."""
    import time

    from causalclip_cli.robustness.primitives import AttackConfig, attack, features_from_pixels, probabilities

    cfg = config or PurifierTrainConfig()
    start = time.perf_counter()
    gen = torch.Generator().manual_seed(cfg.seed)
    n = pixels.shape[0]
    if n == 0:
        raise UsageError("train-purifier: no readable images")
    thr = detector.decision.threshold
    verdict = (probabilities(detector, pixels) >= thr).long()
    eps = torch.tensor(cfg.eps_choices, dtype=torch.float32)[torch.randint(len(cfg.eps_choices), (n,), generator=gen)]
    adv = torch.empty_like(pixels)
    for e in sorted(set(eps.tolist())):
        idx = (eps == e).nonzero().flatten()
        acfg = AttackConfig(method="pgd", eps=e, steps=cfg.attack_steps, seed=cfg.seed)
        adv[idx] = attack(detector, pixels[idx], 1 - verdict[idx], acfg)
        if progress:
            progress(f"crafted {len(idx)} PGD examples at eps {e:g}/255")
    flipped = float(((probabilities(detector, adv) >= thr).long() != verdict).float().mean())
    guided = cfg.feature_weight > 0
    clean_feats = _features(detector, pixels) if guided else None
    torch.manual_seed(cfg.seed)
    net = PurifierNet(PurifierNetConfig(cfg.width, cfg.depth)).train().to(detector.device)
    params = list(net.parameters())
    opt = torch.optim.Adam(params, lr=cfg.lr)
    s = pixels.shape[-1]
    crop = s if guided else min(cfg.crop, s)
    batch = cfg.guided_batch_size if guided else cfg.batch_size
    losses = []
    for it in range(cfg.iterations):
        i = torch.randint(n, (batch,), generator=gen)
        top = int(torch.randint(s - crop + 1, (1,), generator=gen))
        left = int(torch.randint(s - crop + 1, (1,), generator=gen))
        clean = pixels[i, :, top:top + crop, left:left + crop].to(detector.device)
        noisy = adv[i, :, top:top + crop, left:left + crop].to(detector.device)
        # Half the batch adversarial → clean, half clean → clean: the net must not damage clean inputs.
        half = max(1, batch // 2)
        inp = torch.cat([noisy[:half], clean[half:]])
        with torch.inference_mode(False), torch.enable_grad():
            out = net(inp)
            loss = F.l1_loss(out, clean)
            if guided:
                feats = features_from_pixels(detector, out)
                target = clean_feats[i].to(feats.device)
                loss = loss + cfg.feature_weight * _relative_feature_error(feats, target).mean()
            # Gradients for the purifier only: the frozen backbone's weights get none (and cost none).
            grads = torch.autograd.grad(loss, params)
        for prm, g in zip(params, grads, strict=True):
            prm.grad = g
        opt.step()
        losses.append(float(loss.detach()))
        if progress and (it + 1) % max(1, cfg.iterations // 5) == 0:
            progress(f"iteration {it + 1}/{cfg.iterations}: loss {np.mean(losses[-20:]):.5f}")
    net.eval().cpu()
    with torch.no_grad():
        before = float(F.l1_loss(adv, pixels))
        after = float(F.l1_loss(net(adv), pixels))
        clean_err = float(F.l1_loss(net(pixels), pixels))
    # The checkpoint's file name, not its path: the summary is stored in the purifier file.
    summary = {"n_images": n, "checkpoint": detector.path.name, "model": detector.model_id,
               "config": asdict(cfg), "attack_flip_rate": flipped,
               "l1_adv_vs_clean": before, "l1_purified_adv_vs_clean": after, "l1_purified_clean_vs_clean": clean_err,
               "final_loss": float(np.mean(losses[-20:])), "seconds": round(time.perf_counter() - start, 2)}
    if guided:
        net_dev = net.to(detector.device)
        summary["feature_error_adv"] = float(_relative_feature_error(_features(detector, adv), clean_feats).mean())
        summary["feature_error_purified_adv"] = float(
            _relative_feature_error(_features(detector, adv, net_dev), clean_feats).mean())
        summary["feature_error_purified_clean"] = float(
            _relative_feature_error(_features(detector, pixels, net_dev), clean_feats).mean())
        pur = LearnedPurifier(net_dev)
        summary["flip_rate_after_purifier"] = float(
            ((probabilities(detector, adv, pur) >= thr).long() != verdict).float().mean())
        net.cpu()
        summary["seconds"] = round(time.perf_counter() - start, 2)
    return net, summary
