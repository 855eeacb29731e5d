"""White-box L∞ attacks (PGD, FGSM) on a whole detector and their measurement.

The attack works in [0, 1] pixel space at the tower's input size (after resize/crop), then applies the
checkpoint's own mean/std normalisation, the frozen backbone and the head, all with gradients on and
the head in eval mode (no Gumbel noise). Budgets (`eps`, step size) are in 1/255 units. The attacker
pushes each image toward a target verdict: generated images toward `real` (target 0) and real images
toward `fake` (target 1). With a purifier, an adaptive attack runs through it (`Purifier.for_attack`:
directly when differentiable, straight-through/BPDA otherwise); a non-adaptive one ignores it.
"""

from __future__ import annotations

import math
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TextIO

import numpy as np
import torch

from causalclip_cli.errors import UsageError
from causalclip_cli.model.checkpoint import Detector
from causalclip_cli.robustness.primitives import (  # noqa: F401 - attack API re-exported from here
    ATTACKS,
    TARGETS,
    AttackConfig,
    Purifier,
    attack,
    check_attackable,
    features_from_pixels,
    logits_from_pixels,
    normalise,
    probabilities,
    to_unit,
)


def perturbation_stats(clean: torch.Tensor, adv: torch.Tensor) -> dict:
    """Mean and max L∞ (in 1/255 units) and mean PSNR (dB) of the perturbation, per image then averaged."""
    if clean.shape[0] == 0:
        return {"linf_mean": None, "linf_max": None, "psnr_mean": None}
    d = (adv - clean).flatten(1)
    linf = d.abs().amax(1) * 255.0
    mse = (d * d).mean(1).clamp_min(1e-12)
    psnr = 10.0 * torch.log10(1.0 / mse)
    return {"linf_mean": float(linf.mean()), "linf_max": float(linf.max()), "psnr_mean": float(psnr.mean())}


def _metrics(y: np.ndarray, p: np.ndarray, thr: float) -> dict:
    from causalclip_cli.training.metrics import binary_metrics

    return binary_metrics(y, p, thr)


def condition_report(y: np.ndarray, p_before: np.ndarray, p_after: np.ndarray, attacked: np.ndarray,
                     target: int | None, thr: float, clean: torch.Tensor, adv: torch.Tensor) -> dict:
    """One attack condition: which images were attacked, what their verdicts did, what the set's AP did.

    success_rate: of the attacked images the detector got right before, the fraction now at the target
    verdict (verdicts flipped). target_rate: fraction of all attacked images at the target verdict."""
    y = np.asarray(y)
    before_lab = (p_before >= thr).astype(int)
    after_lab = (p_after >= thr).astype(int)
    att = np.asarray(attacked, dtype=bool)
    want = (1 - y) if target is None else np.full_like(y, target)
    correct = att & (before_lab == y)
    n_correct = int(correct.sum())
    rep = {
        "n_attacked": int(att.sum()),
        "n_correct_before": n_correct,
        "success_rate": float((after_lab[correct] == want[correct]).mean()) if n_correct else None,
        "target_rate": float((after_lab[att] == want[att]).mean()) if att.any() else None,
        "mean_prob_attacked_before": float(p_before[att].mean()) if att.any() else None,
        "mean_prob_attacked_after": float(p_after[att].mean()) if att.any() else None,
        "before": _metrics(y, p_before, thr),
        "after": _metrics(y, p_after, thr),
    }
    idx = torch.as_tensor(np.flatnonzero(att))
    rep.update(perturbation_stats(clean[idx], adv[idx]))
    return rep


# --------------------------------------------------------------------------- the `eval --attack/--purify` path


@dataclass
class RobustEvalRequest:
    data: Path
    checkpoint: str | None = None
    split: str | None = None
    subsets: list[str] | None = None
    layout: str = "auto"
    threshold: float | None = None
    attack: str | None = None  # pgd | fgsm | None
    eps: float = 4.0
    steps: int = 10
    step_size: float | None = None
    random_start: bool = True
    target: str = "both"
    attack_source: str | None = None  # craft on this checkpoint, evaluate on `checkpoint` (transfer)
    purify: str | None = None
    adaptive: bool = False
    limit: int | None = None  # evaluate a deterministic sample of at most this many images
    seed: int = 0
    device: str = "auto"
    workers: int = 2
    batch_size: int = 8
    backbone_weights: str | None = None


def load_pixels(paths: list[str], detector: Detector, batch_size: int = 16, workers: int = 0
                ) -> tuple[torch.Tensor, list[int], list[tuple[str, str]]]:
    """Decode + resize/crop through the checkpoint's preprocessing → ([0, 1] pixels, ok indices, failures)."""
    from causalclip_cli.inputs.data import make_loader
    from causalclip_cli.inputs.transforms import jpeg

    # A head trained with --jpeg-align sees every image re-encoded at that quality first, as in `eval`.
    align_q = detector.metadata.get("preprocess", {}).get("jpeg_align")
    align = jpeg(int(align_q)) if align_q else None
    xs, ok, failed = [], [], []
    for batch in make_loader(paths, detector.preprocess, batch_size, workers, explicit=paths,
                             pixel_transform=align):
        if batch.tensor is not None:
            xs.append(to_unit(batch.tensor, detector.preprocess))
            ok += [batch.items[j]["index"] for j in batch.good]
        for item in batch.items:
            if item["error"] is not None:
                failed.append((item["path"], item["error"]))
    s = detector.preprocess.size
    return (torch.cat(xs) if xs else torch.zeros(0, 3, s, s)), ok, failed


def sample_balanced(samples: list, limit: int | None) -> list:
    """At most `limit` samples, half per class where possible, evenly spread over the sorted paths."""
    if limit is None or limit >= len(samples):
        return list(samples)
    by = {lab: sorted((s for s in samples if s.label == lab), key=lambda s: s.path) for lab in (0, 1)}
    n1 = min(len(by[1]), max(limit - len(by[0]), limit // 2))
    n0 = min(len(by[0]), limit - n1)

    def spread(items: list, n: int) -> list:
        return [items[int(i * len(items) / n)] for i in range(n)] if n else []

    return spread(by[0], n0) + spread(by[1], n1)


def run_robust_eval(req: RobustEvalRequest, log: TextIO | None = None) -> dict:
    from causalclip_cli.model.checkpoint import load_detector
    from causalclip_cli.robustness.purify import parse_purifier
    from causalclip_cli.settings import resolve_device
    from causalclip_cli.training.experiment import _discover, _pick_split

    log = log or sys.stderr
    if req.target not in TARGETS:
        raise UsageError(f"--target {req.target!r}: choose one of {', '.join(TARGETS)}")
    if req.adaptive and not (req.attack and req.purify):
        raise UsageError("--adaptive needs both --attack and --purify")
    if req.attack_source and not req.attack:
        raise UsageError("--attack-source needs --attack")
    cfg = (AttackConfig(req.attack, req.eps, req.steps, req.step_size, req.random_start, req.seed, req.batch_size)
           if req.attack else None)
    device = resolve_device(req.device)
    det = load_detector(req.checkpoint, device=device, backbone_weights=req.backbone_weights)
    src = det
    if req.attack_source:
        src = load_detector(req.attack_source, device=device, backbone_weights=req.backbone_weights)
        if src.preprocess.to_dict() != det.preprocess.to_dict():
            raise UsageError("--attack-source must use the same preprocessing (input size, mean/std) as --checkpoint")
    check_attackable(det)
    check_attackable(src)
    purifier = parse_purifier(req.purify, device)
    ds = _discover(req.data, req.layout, req.subsets)
    split, samples = _pick_split(ds, req.split)
    samples = sample_balanced(samples, req.limit)
    pixels, ok, failed = load_pixels([s.path for s in samples], det, req.batch_size, req.workers)
    kept = [samples[i] for i in ok]
    y = np.array([s.label for s in kept], dtype=np.int64)
    thr = det.decision.threshold if req.threshold is None else req.threshold
    log.write(f"robust eval: {len(kept)} images ({int(y.sum())} generated), threshold {thr:.3f}\n")
    p_clean = probabilities(det, pixels).numpy()
    p_before = probabilities(det, pixels, purifier).numpy() if purifier else p_clean
    report: dict = {"checkpoint": str(det.path), "model": det.model_id, "data": str(req.data), "split": split,
                    "threshold": thr, "n": int(len(y)), "unreadable": len(failed),
                    "purify": purifier.name if purifier else None,
                    "clean": _metrics(y, p_clean, thr), "conditions": {}}
    if purifier:
        report["clean_purified"] = _metrics(y, p_before, thr)
    if cfg is None:
        return report
    report["attack"] = {**asdict(cfg), "adaptive": req.adaptive,
                        "source": str(src.path) if req.attack_source else None}
    wanted = {"real": [("fake→real", 1, 0)], "fake": [("real→fake", 0, 1)],
              "both": [("fake→real", 1, 0), ("real→fake", 0, 1)]}[req.target]
    through = purifier if (purifier is not None and req.adaptive) else None
    for name, cls, target in wanted:
        att = y == cls
        if not att.any():
            log.write(f"{name}: no images of that class, skipped\n")
            continue
        idx = torch.as_tensor(np.flatnonzero(att))
        log.write(f"{name}: attacking {len(idx)} images ({cfg.method}, eps {cfg.eps:g}/255, "
                  f"{cfg.n_steps} steps{', adaptive' if through else ''})\n")
        adv_part = attack(src, pixels[idx], torch.full((len(idx),), target), cfg, through)
        adv = pixels.clone()
        adv[idx] = adv_part
        p_after = p_before.copy()
        p_after[idx.numpy()] = probabilities(det, adv_part, purifier).numpy()
        report["conditions"][name] = condition_report(y, p_before, p_after, att, target, thr, pixels, adv)
    return report


def _fmt(v: object) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.3f}"
    return str(v)


def render_robust(report: dict, fmt: str, stream: TextIO) -> None:
    import json

    if fmt == "json":
        stream.write(json.dumps(report, indent=2) + "\n")
        return
    cols = ["condition", "n_attacked", "success_rate", "ap_before", "ap_after", "acc_before", "acc_after",
            "linf_mean", "psnr_mean"]
    rows = [["clean", 0, None, report["clean"].get("ap"), None, report["clean"].get("accuracy"), None, None, None]]
    if "clean_purified" in report:
        cp = report["clean_purified"]
        rows.append([f"clean+{report['purify']}", 0, None, cp.get("ap"), None, cp.get("accuracy"), None, None,
                     None])
    for name, c in report["conditions"].items():
        rows.append([name, c["n_attacked"], c["success_rate"], c["before"].get("ap"), c["after"].get("ap"),
                     c["before"].get("accuracy"), c["after"].get("accuracy"), c["linf_mean"], c["psnr_mean"]])
    if fmt == "csv":
        import csv

        w = csv.writer(stream)
        w.writerow(cols)
        w.writerows(rows)
        return
    from rich.console import Console
    from rich.table import Table

    a = report.get("attack")
    title = f"{report['model']} on {report['data']} [{report['split']}], {report['n']} images"
    if a:
        title += (f"; {a['method']} eps {a['eps']:g}/255, {1 if a['method'] == 'fgsm' else a['steps']} steps"
                  f"{', adaptive' if a['adaptive'] else ''}{', crafted on ' + a['source'] if a['source'] else ''}")
    t = Table(title=title)
    for c in cols:
        t.add_column(c, justify="left" if c == "condition" else "right")
    for r in rows:
        t.add_row(*[_fmt(v) for v in r])
    Console(file=stream, highlight=False, width=max(120, Console(file=stream).width)).print(t)
