"""Training the learned purifier at scale (issue 21): a small residual U-Net, pairs made on the fly.

`purify.train_purifier` crafts one fixed set of PGD examples against one head and fits a plain conv stack to
it; on CPU that is all there was time for, and the shipped result stayed the identity. This module is the
GPU recipe, and it runs unchanged (tiny) on CPU in the tests:

* every step draws a batch of clean training images, mixes in JPEG re-encoded and downscaled copies of
  them (clean inputs the purifier must leave alone: camera photos are JPEG'd and resized everywhere), and
  turns part of the batch adversarial with a freshly drawn attack — PGD at 1–8/255 with 1–10 steps or FGSM
  — against a randomly chosen head (CausalCLIP or linear). Fresh attacks every step mean the net never
  sees the same perturbation twice, and both heads' gradients shape what it learns to remove;
* the net (`PurifierUNet`, two downsamplings, zero-initialised output layer: the identity at start) is fit
  with pixel L1 to the clean base image plus the relative error of the features the heads read, through
  the frozen backbone (representation guidance, Liao et al., HGD, CVPR 2018);
* training stops at `iterations` or at `time_budget_s`, whichever comes first, so a GPU job of fixed wall
  time can be planned; a held-out validation set (fixed PGD examples) measures feature error before/after.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from causalclip_cli.errors import UsageError
from causalclip_cli.model.checkpoint import Detector

# The network lives in purify.py next to the residual CNN, so that loading a purifier never needs this module
# (purify → purifier_train → purify would be an import circle); re-exported here, where it is trained.
from causalclip_cli.robustness.purify import (  # noqa: F401 - re-exported
    UNET_KIND,
    PurifierUNet,
    PurifierUNetConfig,
)

# --------------------------------------------------------------------------- pairs


@dataclass
class PairConfig:
    eps_choices: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0)  # 1/255 units
    step_choices: tuple[int, ...] = (2, 5, 10)  # PGD iterations
    fgsm_share: float = 0.2  # of the adversarial draws
    adv_share: float = 0.5  # of each batch; the rest stays clean
    jpeg_share: float = 0.25  # of the clean bases, re-encoded at quality 50..95
    resize_share: float = 0.25  # of the clean bases, downscaled by 0.5..0.9 and back
    attack_batch: int = 32  # images per attack forward/backward (GPU memory)


def degrade_clean(x: torch.Tensor, cfg: PairConfig, gen: torch.Generator) -> tuple[torch.Tensor, dict]:
    """JPEG and resize copies of some clean images: what a scanner meets every day and must pass untouched."""
    from causalclip_cli.robustness.purify import JpegPurifier, RescalePurifier

    x = x.clone()
    n = x.shape[0]
    draw = torch.rand(n, generator=gen)
    counts = {"jpeg": 0, "resize": 0}
    for i in range(n):
        if draw[i] < cfg.jpeg_share:
            q = int(torch.randint(50, 96, (1,), generator=gen))
            x[i:i + 1] = JpegPurifier(q).apply(x[i:i + 1])
            counts["jpeg"] += 1
        elif draw[i] < cfg.jpeg_share + cfg.resize_share:
            f = 0.5 + 0.4 * float(torch.rand(1, generator=gen))
            x[i:i + 1] = RescalePurifier(f).apply(x[i:i + 1]).clamp(0.0, 1.0)
            counts["resize"] += 1
    return x, counts


def make_pairs(detectors: Sequence[Detector], clean: torch.Tensor, cfg: PairConfig,
               gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """(purifier input, target) for one batch of clean [0, 1] pixels on the detectors' device.

    Targets are the (possibly JPEG'd/resized) clean bases; the first `adv_share` of the batch is attacked
    with one attack drawn for this batch, toward the verdict opposite of the chosen head's own (no labels)."""
    from causalclip_cli.robustness.primitives import AttackConfig, attack, probabilities

    base, counts = degrade_clean(clean, cfg, gen)
    n_adv = int(round(cfg.adv_share * base.shape[0]))
    spec: dict = {"n_adv": n_adv, **counts}
    inp = base.clone()
    if n_adv:
        k = int(torch.randint(len(detectors), (1,), generator=gen))
        det = detectors[k]
        fgsm = float(torch.rand(1, generator=gen)) < cfg.fgsm_share
        eps = cfg.eps_choices[int(torch.randint(len(cfg.eps_choices), (1,), generator=gen))]
        steps = 1 if fgsm else cfg.step_choices[int(torch.randint(len(cfg.step_choices), (1,), generator=gen))]
        verdict = (probabilities(det, base[:n_adv], batch_size=cfg.attack_batch) >= det.decision.threshold).long()
        acfg = AttackConfig("fgsm" if fgsm else "pgd", float(eps), steps,
                            seed=int(torch.randint(2 ** 31 - 1, (1,), generator=gen)), batch_size=cfg.attack_batch)
        inp[:n_adv] = attack(det, base[:n_adv], 1 - verdict, acfg).to(inp.device)
        spec.update(head=k, method=acfg.method, eps=float(eps), steps=steps)
    return inp, base, spec


# --------------------------------------------------------------------------- training


@dataclass
class UNetTrainConfig:
    width: int = 32
    levels: int = 2
    iterations: int = 2000
    time_budget_s: float | None = None  # stop earlier when the training loop has run this long
    batch_size: int = 32
    lr: float = 1e-3
    feature_weight: float = 1.0  # relative feature error, next to pixel L1 (both ~1e-2..1 in size)
    pixel_weight: float = 1.0
    seed: int = 0
    log_every: int = 50
    pairs: PairConfig | None = None

    def __post_init__(self) -> None:
        if self.iterations < 1 or self.batch_size < 2:
            raise UsageError("purifier training needs at least 1 iteration and batches of 2+ images")
        self.pairs = self.pairs or PairConfig()


def relative_feature_error(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image ||a − b||² / ||b||²."""
    return (a - b).pow(2).sum(-1) / b.pow(2).sum(-1).clamp_min(1e-12)


def check_same_tower(detectors: Sequence[Detector]) -> None:
    """The heads must read the same features of the same pixels: one backbone pass serves them all."""
    ref = detectors[0]
    for d in detectors[1:]:
        if (d.preprocess.to_dict() != ref.preprocess.to_dict() or list(d.features.layers) != list(ref.features.layers)
                or d.backbone.info.id != ref.backbone.info.id):
            raise UsageError(f"{d.path.name} and {ref.path.name} read different backbones, layers or preprocessing")


def purifier_loss(net: nn.Module, det: Detector, inp: torch.Tensor, target: torch.Tensor,
                  target_feats: torch.Tensor | None, cfg: UNetTrainConfig) -> tuple[torch.Tensor, dict]:
    """Pixel L1 to the clean base plus (target_feats given) the relative error of the features the head reads,
    through the frozen backbone; returns (loss with autograd, its parts as floats)."""
    from causalclip_cli.robustness.primitives import features_from_pixels

    out = net(inp)
    pix = F.l1_loss(out, target)
    loss = cfg.pixel_weight * pix
    parts = {"pixel_l1": float(pix.detach())}
    if target_feats is not None:
        fe = relative_feature_error(features_from_pixels(det, out), target_feats).mean()
        loss = loss + cfg.feature_weight * fe
        parts["feature_error"] = float(fe.detach())
    return loss, parts


def evaluate_purifier(net: nn.Module, detectors: Sequence[Detector], clean: torch.Tensor, adv: torch.Tensor,
                      target: torch.Tensor, batch_size: int = 32) -> dict:
    """Feature error (vs clean) of adversarial and clean images with and without the net, and the share of
    verdicts the attack flipped, per head, before and after the net (non-adaptive)."""
    from causalclip_cli.robustness.primitives import features_from_pixels, probabilities
    from causalclip_cli.robustness.purify import LearnedPurifier

    det = detectors[0]
    was_training = net.training
    net.eval()

    def feats(x: torch.Tensor, through: bool) -> torch.Tensor:
        out = []
        for i in range(0, x.shape[0], batch_size):
            b = x[i:i + batch_size].to(det.device)
            with torch.no_grad():
                out.append(features_from_pixels(det, net(b) if through else b).detach())
        return torch.cat(out)

    f_clean = feats(clean, False)
    res: dict = {"n_images": int(clean.shape[0]),
                 "feature_error_adv": float(relative_feature_error(feats(adv, False), f_clean).mean()),
                 "feature_error_purified_adv": float(relative_feature_error(feats(adv, True), f_clean).mean()),
                 "feature_error_purified_clean": float(relative_feature_error(feats(clean, True), f_clean).mean())}
    with torch.no_grad():
        res["l1_adv_vs_clean"] = float(F.l1_loss(adv, clean))
        res["l1_purified_adv_vs_clean"] = float(F.l1_loss(
            torch.cat([net(adv[i:i + batch_size].to(det.device)).cpu() for i in range(0, adv.shape[0], batch_size)]),
            clean))
    pur = LearnedPurifier(net)
    for k, d in enumerate(detectors):
        thr = d.decision.threshold
        verdict = (probabilities(d, clean) >= thr).long()
        aimed = verdict != target  # images the attack had to flip
        flipped = (probabilities(d, adv) >= thr).long() != verdict
        flipped_p = (probabilities(d, adv, pur) >= thr).long() != verdict
        changed_clean = (probabilities(d, clean, pur) >= thr).long() != verdict
        n = max(1, int(aimed.sum()))
        res[f"head{k}"] = {"name": d.path.stem, "flip_rate": float(flipped[aimed].sum()) / n,
                           "flip_rate_after_purifier": float(flipped_p[aimed].sum()) / n,
                           "clean_verdicts_changed": float(changed_clean.float().mean())}
    net.train(was_training)
    net.requires_grad_(True)
    return res


def train_unet_purifier(detectors: Sequence[Detector], pixels: torch.Tensor, cfg: UNetTrainConfig | None = None,
                        val: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
                        progress: Callable[[str], None] | None = None) -> tuple[PurifierUNet, dict]:
    """Fit a PurifierUNet on pairs made on the fly from `pixels` (clean [0, 1], N×3×S×S, CPU) against every
    detector in `detectors` (same tower; the first one's features guide the loss). `val`: (clean, adversarial,
    target verdicts) of held-out images, measured before and after training. Returns (net on CPU, eval mode;
    summary dict)."""
    cfg = cfg or UNetTrainConfig()
    pc = cfg.pairs
    if pixels.shape[0] < 2:
        raise UsageError("purifier training needs at least 2 readable images")
    check_same_tower(detectors)
    det = detectors[0]
    dev = det.device
    gen = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    net = PurifierUNet(PurifierUNetConfig(cfg.width, cfg.levels)).to(dev).train()
    params = list(net.parameters())
    opt = torch.optim.Adam(params, lr=cfg.lr)
    # Adam moves every weight by ~lr from the first step, which knocks a zero-initialised residual far off the
    # identity (clean feature error 0 → 0.03 after one step at 1e-3 on ViT-B/16): warm up linearly, then
    # decay to a tenth along a cosine over the planned run, by iterations or by the time budget.
    warmup = max(1, min(200, cfg.iterations // 10))

    def lr_at(step: int, elapsed: float) -> float:
        frac = step / cfg.iterations
        if cfg.time_budget_s:
            frac = max(frac, elapsed / cfg.time_budget_s)
        return cfg.lr * min(1.0, step / warmup) * (0.1 + 0.45 * (1 + math.cos(math.pi * min(frac, 1.0))))
    guided = cfg.feature_weight > 0
    summary: dict = {"arch": {"kind": UNET_KIND, **asdict(net.config)},
                     "n_parameters": sum(p.numel() for p in params), "config": asdict(cfg),
                     "heads": [d.path.stem for d in detectors], "n_images": int(pixels.shape[0])}
    if val is not None:
        summary["val_before"] = evaluate_purifier(net, detectors, *val, batch_size=pc.attack_batch)
    log: list[dict] = []
    t_start = time.perf_counter()
    t_pairs = t_fit = 0.0
    n = pixels.shape[0]
    it = 0
    stopped = "iterations"
    for it in range(1, cfg.iterations + 1):
        ts = time.perf_counter()
        idx = torch.randint(n, (cfg.batch_size,), generator=gen)
        inp, target, spec = make_pairs(detectors, pixels[idx].to(dev), pc, gen)
        target_feats = None
        if guided:
            from causalclip_cli.robustness.primitives import features_from_pixels

            with torch.no_grad():
                target_feats = torch.cat([features_from_pixels(det, target[i:i + pc.attack_batch]).detach()
                                          for i in range(0, target.shape[0], pc.attack_batch)])
        t_pairs += time.perf_counter() - ts
        ts = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        for group in opt.param_groups:
            group["lr"] = lr_at(it, time.perf_counter() - t_start)
        total: dict = {}
        # Gradient accumulation in attack_batch chunks keeps the backbone's activations within GPU memory.
        for i in range(0, cfg.batch_size, pc.attack_batch):
            sl = slice(i, i + pc.attack_batch)
            with torch.inference_mode(False), torch.enable_grad():
                tf = None if target_feats is None else target_feats[sl]
                loss, parts = purifier_loss(net, det, inp[sl], target[sl], tf, cfg)
                share = inp[sl].shape[0] / cfg.batch_size
                grads = torch.autograd.grad(loss * share, params)
            for p, g in zip(params, grads, strict=True):
                p.grad = g if p.grad is None else p.grad + g
            for k, v in parts.items():
                total[k] = total.get(k, 0.0) + v * share
        opt.step()
        t_fit += time.perf_counter() - ts
        log.append({"it": it, **total, **{k: v for k, v in spec.items() if k in ("method", "eps", "steps", "head")}})
        if progress and (it % cfg.log_every == 0 or it == 1):
            recent = log[-cfg.log_every:]
            msg = ", ".join(f"{k} {np.mean([r[k] for r in recent]):.5f}" for k in total)
            progress(f"iteration {it}: {msg} ({time.perf_counter() - t_start:.0f} s)")
        if cfg.time_budget_s is not None and time.perf_counter() - t_start >= cfg.time_budget_s:
            stopped = "time budget"
            break
    net.eval()
    summary.update(iterations_run=it, stopped_by=stopped, seconds_train=round(time.perf_counter() - t_start, 2),
                   seconds_pairs=round(t_pairs, 2), seconds_fit=round(t_fit, 2),
                   first_losses=log[:5], last_losses=log[-5:],
                   loss_curve=[{k: (round(v, 6) if isinstance(v, float) else v) for k, v in r.items()}
                               for r in log[:: max(1, len(log) // 50)]])
    if val is not None:
        summary["val_after"] = evaluate_purifier(net, detectors, *val, batch_size=pc.attack_batch)
        vb, va = summary["val_before"], summary["val_after"]
        summary["feature_error_adv"] = vb["feature_error_adv"]
        summary["feature_error_purified_adv"] = va["feature_error_purified_adv"]
        summary["feature_error_purified_clean"] = va["feature_error_purified_clean"]
    net.cpu().requires_grad_(False)
    return net, summary


def fixed_adversarial_set(detector: Detector, clean: torch.Tensor, eps: float = 4.0, steps: int = 10,
                          batch_size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """PGD at `eps` on `detector`, each image toward the verdict opposite of its own: a fixed validation set.
    Returns (adversarial pixels, target verdicts)."""
    from causalclip_cli.robustness.primitives import AttackConfig, attack, probabilities

    verdict = (probabilities(detector, clean, batch_size=batch_size) >= detector.decision.threshold).long()
    target = 1 - verdict
    adv = attack(detector, clean, target, AttackConfig("pgd", eps, steps, seed=1234, batch_size=batch_size))
    return adv, target
