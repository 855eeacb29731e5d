"""Pixel-space primitives shared by the attacks (`adversarial`) and the purifiers (`purify`).

[0, 1] pixels ↔ tower input (the checkpoint's mean/std), the `Purifier` interface, and the white-box L∞
attack itself (PGD, FGSM) with the differentiable path it follows: pixels → (purifier) → normalisation →
frozen backbone → head. `adversarial` measures attacks and `purify` trains against them; both import this
module, which imports neither of them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from causalclip_cli.errors import UsageError
from causalclip_cli.model.checkpoint import Detector
from causalclip_cli.model.preprocess import Preprocess

# --------------------------------------------------------------------------- pixels ↔ tower input


def _stats(pre: Preprocess, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mean = torch.tensor(pre.mean, dtype=like.dtype, device=like.device).view(1, 3, 1, 1)
    std = torch.tensor(pre.std, dtype=like.dtype, device=like.device).view(1, 3, 1, 1)
    return mean, std


def to_unit(normalised: torch.Tensor, pre: Preprocess) -> torch.Tensor:
    """Tower input (normalised with the recipe's mean/std) → [0, 1] pixels."""
    mean, std = _stats(pre, normalised)
    return (normalised * std + mean).clamp(0.0, 1.0)


def normalise(pixels: torch.Tensor, pre: Preprocess) -> torch.Tensor:
    """[0, 1] pixels → tower input, with the mean/std recorded in the checkpoint's preprocessing."""
    mean, std = _stats(pre, pixels)
    return (pixels - mean) / std


# --------------------------------------------------------------------------- purifiers


class Purifier:
    """Base class: `__call__` purifies (no gradient needed); `for_attack` is what an adaptive attack sees."""

    name: str = "identity"
    differentiable: bool = True

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.apply(x).clamp(0.0, 1.0)

    def for_attack(self, x: torch.Tensor) -> torch.Tensor:
        if self.differentiable:
            return self.apply(x).clamp(0.0, 1.0)
        # BPDA: the forward pass is the real purifier, the backward pass treats it as the identity.
        return x + (self(x) - x).detach()


# --------------------------------------------------------------------------- attacks


ATTACKS = ("pgd", "fgsm")
TARGETS = ("real", "fake", "both")


@dataclass
class AttackConfig:
    method: str = "pgd"
    eps: float = 4.0  # L∞ budget in 1/255 units
    steps: int = 10  # PGD iterations (FGSM: always one)
    step_size: float | None = None  # 1/255 units; None → 2.5·eps/steps for PGD, eps for FGSM
    random_start: bool = True  # PGD starts at a uniform point of the eps-ball
    seed: int = 0
    batch_size: int = 8

    def __post_init__(self) -> None:
        if self.method not in ATTACKS:
            raise UsageError(f"--attack {self.method!r}: choose one of {', '.join(ATTACKS)}")
        if not 0 < self.eps <= 255:
            raise UsageError(f"--eps {self.eps}: must be in (0, 255] (units of 1/255)")
        if self.steps < 1:
            raise UsageError(f"--steps {self.steps}: must be at least 1")
        if self.step_size is not None and self.step_size <= 0:
            raise UsageError(f"--step-size {self.step_size}: must be positive")

    @property
    def n_steps(self) -> int:
        return 1 if self.method == "fgsm" else self.steps

    @property
    def alpha(self) -> float:
        """Step size as a fraction of the pixel range."""
        if self.step_size is not None:
            return self.step_size / 255.0
        if self.method == "fgsm":
            return self.eps / 255.0
        return 2.5 * self.eps / self.steps / 255.0


def features_from_pixels(detector: Detector, pixels: torch.Tensor, purifier: Purifier | None = None) -> torch.Tensor:
    """[0, 1] pixels → the features the head reads, with autograd on (never under inference_mode, unlike
    Detector.embed). The purifier, if any, is applied as an adaptive attacker sees it (`for_attack`)."""
    # Checkpoints may read intermediate layers; checkpoints without that field use the final embedding.
    spec = getattr(detector, "features", None)
    layers = tuple(getattr(spec, "layers", (0,)))
    with torch.inference_mode(False), torch.enable_grad():
        x = purifier.for_attack(pixels) if purifier is not None else pixels
        xn = normalise(x, detector.preprocess)
        if layers == (0,):
            return detector.backbone.tower(xn).float()
        from causalclip_cli.model.taps import forward_layers

        return forward_layers(detector.backbone.tower, xn, layers).float()


def logits_from_pixels(detector: Detector, pixels: torch.Tensor, purifier: Purifier | None = None) -> torch.Tensor:
    """[0, 1] pixels → fake logits with autograd on, mapped through the checkpoint's calibration
    (a·logit + b; the identity for checkpoints without one)."""
    detector.head.eval()
    a, b = getattr(detector, "scaling", (1.0, 0.0))
    with torch.inference_mode(False), torch.enable_grad():
        return a * detector.head(features_from_pixels(detector, pixels, purifier)) + b


def check_attackable(detector: Detector) -> None:
    """Attacks work on one view of the image at the tower's input size; multi-crop checkpoints score
    several crops of the full-resolution image, which this attack does not model."""
    if getattr(detector.preprocess, "views", 1) != 1:
        raise UsageError(f"{detector.path.name}: attacks and `eval --purify` support single-view checkpoints only "
                         f"(this one scores {detector.preprocess.views} crops per image)")


def probabilities(detector: Detector, pixels: torch.Tensor, purifier: Purifier | None = None,
                  batch_size: int = 16) -> torch.Tensor:
    """Fake probabilities of [0, 1] pixel batches, through the purifier if one is given (CPU tensor)."""
    out = []
    for i in range(0, pixels.shape[0], batch_size):
        x = pixels[i:i + batch_size].to(detector.device)
        if purifier is not None:
            x = purifier(x)
        out.append(detector.probabilities(normalise(x, detector.preprocess)))
    return torch.cat(out) if out else torch.zeros(0)


def _attack_batch(detector: Detector, x: torch.Tensor, target: torch.Tensor, cfg: AttackConfig,
                  purifier: Purifier | None, gen: torch.Generator) -> torch.Tensor:
    eps = cfg.eps / 255.0
    # Minimise the logit for target 0 (real) and its negative for target 1 (fake).
    sign = torch.where(target.to(x.device) == 1, -1.0, 1.0).to(x.dtype)
    adv = x.clone()
    if cfg.method == "pgd" and cfg.random_start:
        noise = (torch.rand(x.shape, generator=gen, dtype=x.dtype) * 2 - 1).to(x.device) * eps
        adv = (x + noise).clamp(0.0, 1.0)
    for _ in range(cfg.n_steps):
        adv = adv.detach().requires_grad_(True)
        loss = (sign * logits_from_pixels(detector, adv, purifier)).sum()
        (grad,) = torch.autograd.grad(loss, adv)
        with torch.no_grad():
            adv = adv - cfg.alpha * grad.sign()
            adv = (x + (adv - x).clamp(-eps, eps)).clamp(0.0, 1.0)
    return adv.detach()


def attack(detector: Detector, pixels: torch.Tensor, target: torch.Tensor, cfg: AttackConfig,
           purifier: Purifier | None = None, progress: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """Adversarial versions of `pixels` ([0, 1], N×3×S×S) pushed toward `target` verdicts (0 real, 1 fake).

    Every output pixel stays within eps/255 of its input and inside [0, 1]. `purifier`: attack the
    purified pipeline (adaptive attack)."""
    check_attackable(detector)
    gen = torch.Generator().manual_seed(cfg.seed)
    out = []
    for i in range(0, pixels.shape[0], cfg.batch_size):
        x = pixels[i:i + cfg.batch_size].to(detector.device)
        out.append(_attack_batch(detector, x, target[i:i + cfg.batch_size], cfg, purifier, gen).cpu())
        if progress:
            progress(min(i + cfg.batch_size, pixels.shape[0]), pixels.shape[0])
    return torch.cat(out) if out else pixels.clone()
