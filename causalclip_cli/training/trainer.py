"""Head training on cached features: seeded, resumable, keeps the best epoch by validation AP."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from causalclip_cli.model.heads import Head, make_head


@dataclass
class TrainConfig:
    """Optimisation settings. Paper: Adam, lr 1e-4, batch 256; epochs and patience are ours."""

    epochs: int = 50
    batch_size: int = 256
    lr: float = 1e-4
    weight_decay: float = 0.0
    patience: int = 10  # epochs without a better validation AP before stopping
    seed: int = 0
    device: str = "cpu"


@dataclass
class TrainResult:
    head: Head
    best_epoch: int
    best: dict
    history: list[dict] = field(default_factory=list)
    stopped_early: bool = False
    seconds: float = 0.0


EpochCallback = Callable[[dict], None]


def _evaluate(head: Head, x: torch.Tensor, y: np.ndarray, batch: int = 4096) -> dict:
    from causalclip_cli.training.metrics import binary_metrics

    head.eval()
    with torch.inference_mode():
        probs = torch.cat([torch.sigmoid(head(x[i:i + batch])) for i in range(0, len(x), batch)])
    m = binary_metrics(y, probs.cpu().numpy(), threshold=0.5)
    return {"acc": m["accuracy"], "ap": m["ap"], "auc": m["auc"]}


def _score(metrics: dict) -> float:
    return metrics["ap"] if metrics.get("ap") is not None else metrics["acc"]


def _resume_path(output: Path) -> Path:
    return output.with_name(output.name + ".resume")


def _save_state(path: Path, head: Head, best_state: dict, opt: torch.optim.Optimizer, state: dict) -> None:
    """Resume file: safetensors of head, best head and optimiser moments, JSON for the rest."""
    from safetensors.torch import save_file

    tensors = {f"head.{k}": v.detach().cpu().contiguous() for k, v in head.state_dict().items()}
    tensors.update({f"best.{k}": v.contiguous() for k, v in best_state.items()})
    osd = opt.state_dict()
    for pid, st in osd["state"].items():
        for name, val in st.items():
            if torch.is_tensor(val):
                tensors[f"opt.{pid}.{name}"] = val.detach().cpu().reshape(val.shape).contiguous()
    tmp = path.with_name(path.name + ".partial")
    save_file(tensors, str(tmp), metadata={"state": json.dumps(state)})
    os.replace(tmp, path)


def _load_state(path: Path, head: Head, opt: torch.optim.Optimizer) -> tuple[dict, dict]:
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), framework="pt") as fh:
        state = json.loads(fh.metadata()["state"])
    t = load_file(str(path))
    head.load_state_dict({k[5:]: v for k, v in t.items() if k.startswith("head.")})
    best = {k[5:]: v for k, v in t.items() if k.startswith("best.")}
    osd = opt.state_dict()
    for key, val in t.items():
        if key.startswith("opt."):
            _, pid, name = key.split(".", 2)
            osd["state"].setdefault(int(pid), {})[name] = val
    opt.load_state_dict(osd)
    return state, best


def train_head(
    kind: str,
    head_config: dict,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    cfg: TrainConfig | None = None,
    *,
    resume_from: Path | None = None,
    resume: bool = True,
    on_epoch: EpochCallback | None = None,
    weights: np.ndarray | None = None,
) -> TrainResult:
    """Train a head. With `resume_from` (the output path) the state is saved after every epoch to a
    `.resume` file beside it, and, when `resume` is true, an existing one is continued.

    `x_train` is [n, d], or [n, a, d] for `a` alternative views of each image (the clean one and cached
    augmented ones): every epoch draws one of them per image, so augmentation varies from epoch to epoch
    while the backbone never runs again.

    `weights` (one per training image): each epoch then draws len(x_train) images with replacement, with
    probability proportional to the weight (domains.balance_weights), instead of a permutation."""
    cfg = cfg or TrainConfig()
    t0 = time.perf_counter()
    torch.manual_seed(cfg.seed)
    dev = torch.device(cfg.device)
    head = make_head(kind, x_train.shape[-1], head_config).to(dev)
    # fused: one kernel for all parameters instead of a chain of per-tensor ops (~6x faster step on CPU for
    # these small heads; benchmarks/train_speed.py). Same update rule.
    opt = torch.optim.Adam(head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay,
                           fused=dev.type in ('cpu', 'cuda'))
    xt = torch.as_tensor(x_train, dtype=torch.float32, device=dev)
    yt = torch.as_tensor(y_train, dtype=torch.float32, device=dev)
    xv = torch.as_tensor(x_val, dtype=torch.float32, device=dev)
    yv = np.asarray(y_val)
    gen = torch.Generator(device="cpu").manual_seed(cfg.seed)
    draw = None if weights is None else torch.as_tensor(np.asarray(weights, dtype=np.float64))
    if draw is not None and (draw.shape != (len(xt),) or not torch.isfinite(draw).all() or (draw < 0).any()
                             or float(draw.sum()) <= 0):
        raise ValueError("weights must be one finite, non-negative value per training image, not all zero")
    noise = torch.Generator(device=dev).manual_seed(cfg.seed + 1)

    history: list[dict] = []
    best_state = {k: v.detach().cpu().clone() for k, v in head.state_dict().items()}
    best: dict = {"epoch": 0, "score": -1.0}
    start, bad = 1, 0
    resume_file = _resume_path(resume_from) if resume_from else None
    if resume and resume_file is not None and resume_file.is_file():
        state, best_state = _load_state(resume_file, head, opt)
        history, best, bad = state["history"], state["best"], state["bad"]
        start = state["epoch"] + 1
        gen.set_state(torch.tensor(state["gen"], dtype=torch.uint8))
        noise.set_state(torch.tensor(state["noise"], dtype=torch.uint8))
        torch.set_rng_state(torch.tensor(state["torch_rng"], dtype=torch.uint8))  # dropout draws from it

    stopped = False
    for epoch in range(start, cfg.epochs + 1):
        head.train()
        if draw is None:
            order = torch.randperm(len(xt), generator=gen).to(dev)
        else:
            order = torch.multinomial(draw, len(xt), replacement=True, generator=gen).to(dev)
        if xt.dim() == 3:
            pick = torch.randint(xt.shape[1], (len(xt),), generator=gen).to(dev)
            xe = xt[torch.arange(len(xt), device=dev), pick]
        else:
            xe = xt
        sums: dict[str, float] = {}
        steps = 0
        for i in range(0, len(order), cfg.batch_size):
            idx = order[i:i + cfg.batch_size]
            if len(idx) < 2:  # HSIC and batch statistics need at least two samples
                continue
            losses = head.losses(xe[idx], yt[idx], generator=noise)
            opt.zero_grad(set_to_none=True)
            losses["total"].backward()
            opt.step()
            for k, v in losses.items():
                if k != "logits":
                    sums[k] = sums.get(k, 0.0) + float(v.detach())
            steps += 1
        val = _evaluate(head, xv, yv)
        row = {"epoch": epoch, **{f"loss_{k}": v / max(steps, 1) for k, v in sums.items()},
               **{f"val_{k}": v for k, v in val.items()}}
        history.append(row)
        if _score(val) > best["score"]:
            best = {"epoch": epoch, "score": _score(val), **val}
            best_state = {k: v.detach().cpu().clone() for k, v in head.state_dict().items()}
            bad = 0
        else:
            bad += 1
        if resume_file is not None:
            _save_state(resume_file, head, best_state, opt,
                        {"epoch": epoch, "history": history, "best": best, "bad": bad,
                         "gen": gen.get_state().tolist(), "noise": noise.get_state().tolist(),
                         "torch_rng": torch.get_rng_state().tolist(),
                         "config": asdict(cfg)})
        if on_epoch:
            on_epoch(row)
        if bad >= cfg.patience:
            stopped = True
            break
    head.load_state_dict(best_state)
    head.eval()
    return TrainResult(head=head.cpu(), best_epoch=best["epoch"], best=best, history=history,
                       stopped_early=stopped, seconds=time.perf_counter() - t0)


def clear_resume(output: Path) -> None:
    p = _resume_path(output)
    if p.exists():
        p.unlink()


def train_probe_groups(
    groups: list[int],
    segments: list[int],
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    cfg: TrainConfig | None = None,
    *,
    on_epoch: EpochCallback | None = None,
    weights: np.ndarray | None = None,
) -> TrainResult:
    """Linear probes trained apart, one per group of consecutive input segments (`groups` counts the segments of
    each), then merged into one linear head whose logit is the mean of theirs.

    Why: one probe on every layer at once leans on whichever layers separate the training data best, and those
    are also the ones that learn a kind of photo; probes that must each work alone spread the decision over the
    feature levels (issue 18, protocols F and D). The result is an ordinary `LinearHead` over all segments, since
    per-segment normalisation makes the mean of the probes a linear function of the whole input."""
    if sum(groups) != len(segments) or min(groups, default=0) < 1:
        raise ValueError(f"probe groups {groups} do not partition the {len(segments)} feature segments")
    cfg = cfg or TrainConfig()
    t0 = time.perf_counter()
    bounds = np.cumsum([0, *segments])
    fits, first = [], 0
    for g, n in enumerate(groups):
        cols = slice(int(bounds[first]), int(bounds[first + n]))
        segs = segments[first:first + n]
        first += n
        tag = (lambda row, g=g: on_epoch({**row, "group": g})) if on_epoch else None
        fits.append(train_head("linear", {"segments": segs if len(segments) > 1 else [], "combine": "concat"},
                               x_train[..., cols], y_train, x_val[..., cols], y_val, cfg, on_epoch=tag,
                               weights=weights))
    head = make_head("linear", x_train.shape[-1], {"segments": segments if len(segments) > 1 else [],
                                                   "combine": "concat"})
    with torch.no_grad():
        head.fc.weight.copy_(torch.cat([f.head.fc.weight for f in fits], dim=1) / len(fits))
        head.fc.bias.copy_(torch.stack([f.head.fc.bias for f in fits]).mean(0))
    head.eval()
    best = {**_evaluate(head, torch.as_tensor(x_val, dtype=torch.float32), y_val),
            "epoch": [f.best_epoch for f in fits]}
    history = [{**row, "group": g} for g, f in enumerate(fits) for row in f.history]
    return TrainResult(head=head, best_epoch=max(f.best_epoch for f in fits), best=best, history=history,
                       stopped_early=all(f.stopped_early for f in fits), seconds=time.perf_counter() - t0)
