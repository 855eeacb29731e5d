"""Detection heads over frozen CLIP embeddings: CausalCLIP and a linear probe, plus their losses.

CausalCLIP (Liu, Qin, He, AAAI 2026): a Gumbel-sigmoid feature mask splits the embedding E into a
causal part Zc = M ⊙ E and a non-causal part Znc = (1 − M) ⊙ E. A classifier reads Zc; an adversary
tries to read the label from Znc through gradient reversal, so the mask learns to leave nothing useful
there; HSIC keeps Zc and Znc independent; counterfactual drops of causal features must not change the
classifier's answer (KL invariance).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

HEAD_KINDS = ("causalclip", "linear")


@dataclass
class CausalConfig:
    """Hyper-parameters the paper leaves unpublished; every value is recorded in the checkpoint."""

    mask_hidden: int = 256
    cls_hidden: int = 256
    adv_hidden: int = 256
    tau: float = 0.5  # Gumbel-sigmoid temperature
    alpha: float = 0.1  # weight of the adversary's loss reversed into the mask
    beta: float = 1.0  # counterfactual invariance weight
    lambda1: float = 0.1  # mask sparsity, mean |M| (0.1 chosen by benchmarks/tune.py, protocol C)
    lambda2: float = 1.0  # HSIC(Zc, Znc)
    drop_p: float = 0.2  # Bernoulli rate of counterfactual drops
    dropout: float = 0.1
    # False only in the ablation (benchmarks/real_domains.py): M = 1, every feature counts as causal, so the
    # HSIC and adversary terms see a zero non-causal part and the drops act on the whole input.
    use_mask: bool = True
    # Feature layout (taps.FeatureSpec): sizes of the concatenated layer features, () = one segment, and how
    # they are combined before the mask: "concat" (each normalised alone) or "weighted" (a learned weight each).
    segments: tuple[int, ...] = ()
    combine: str = "concat"

    @classmethod
    def from_dict(cls, d: dict) -> CausalConfig:
        names = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in names}
        if "segments" in kw:
            kw["segments"] = tuple(int(v) for v in kw["segments"])
        return cls(**kw)


@dataclass
class LinearConfig:
    """The UniversalFakeDetect-style baseline: one linear layer on the normalised embedding."""

    segments: tuple[int, ...] = ()
    combine: str = "concat"

    @classmethod
    def from_dict(cls, d: dict) -> LinearConfig:
        return cls(segments=tuple(int(v) for v in d.get("segments", ())), combine=d.get("combine", "concat"))


COMBINES = ("concat", "weighted")


def _unit(p: torch.Tensor, fixed_norm: bool) -> torch.Tensor:
    if not fixed_norm:
        return F.normalize(p, dim=-1) * (p.shape[-1] ** 0.5)
    # The same value, with the norm a constant for autograd: the head is then linear in each segment.
    return p * ((p.shape[-1] ** 0.5) / p.norm(dim=-1, keepdim=True).clamp_min(1e-12)).detach()


def normalize_features(e: torch.Tensor, segments: tuple[int, ...] = (), fixed_norm: bool = False) -> torch.Tensor:
    # CLIP embedding norms vary with content (and from block to block); the direction carries the signal.
    # Scaling by sqrt(d) keeps per-dimension values near unit size whatever the width.
    e = e.float()
    if len(segments) <= 1:
        return _unit(e, fixed_norm)
    parts = torch.split(e, list(segments), dim=-1)
    return torch.cat([_unit(p, fixed_norm) for p in parts], dim=-1)


class SegmentInput(nn.Module):
    """Per-layer normalisation, optionally with learned per-layer weights (softplus, 1 at start)."""

    def __init__(self, embed_dim: int, segments: tuple[int, ...], combine: str) -> None:
        super().__init__()
        if combine not in COMBINES:
            raise ValueError(f"combine must be one of {COMBINES}, not {combine!r}")
        if segments and sum(segments) != embed_dim:
            raise ValueError(f"segments {list(segments)} do not add up to the feature size {embed_dim}")
        self.segments = tuple(segments)
        self.weighted = combine == "weighted" and len(self.segments) > 1
        if self.weighted:
            # softplus(0.5413) = 1.0: training starts from the plain concatenation.
            self.layer_logits = nn.Parameter(torch.full((len(self.segments),), 0.5413))

    def layer_weights(self) -> torch.Tensor | None:
        return F.softplus(self.layer_logits) if self.weighted else None

    # Evidence maps set this: each image's segment norms count as constants for gradients (values unchanged).
    fixed_norm = False

    def forward(self, e: torch.Tensor) -> torch.Tensor:
        z = normalize_features(e, self.segments, self.fixed_norm)
        if self.weighted:
            w = torch.repeat_interleave(self.layer_weights(), torch.tensor(self.segments, device=z.device))
            z = z * w
        return z


class _GradReverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float) -> torch.Tensor:  # noqa: ANN001
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # noqa: ANN001
        return -ctx.scale * grad, None


def grad_reverse(x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """Identity forward; multiplies the gradient by −scale on the way back."""
    return _GradReverse.apply(x, scale)


def gumbel_sigmoid(logits: torch.Tensor, tau: float, training: bool, generator: torch.Generator | None = None
                   ) -> torch.Tensor:
    """Binary-concrete relaxation: sigmoid((logits + g) / τ), g = Gumbel − Gumbel; no noise at inference."""
    if not training:
        return torch.sigmoid(logits / tau)
    u = torch.rand(logits.shape, generator=generator, device=logits.device, dtype=logits.dtype)
    eps = torch.finfo(logits.dtype).tiny
    # The difference of two Gumbel(0,1) samples is Logistic(0,1): log u − log(1 − u).
    g = torch.log(u.clamp_min(eps)) - torch.log1p(-u.clamp_max(1 - 1e-7))
    return torch.sigmoid((logits + g) / tau)


def _sq_dists(x: torch.Tensor) -> torch.Tensor:
    sq = (x * x).sum(1, keepdim=True)
    return (sq + sq.T - 2.0 * (x @ x.T)).clamp_min(0.0)


def _gaussian_kernel(x: torch.Tensor) -> torch.Tensor:
    d2 = _sq_dists(x)
    n = x.shape[0]
    # The off-diagonal entries, without a boolean mask: drop the first element and view the rest as
    # (n − 1) rows of n + 1, whose last column is the diagonal.
    off = d2.flatten()[1:].view(n - 1, n + 1)[:, :-1] if n > 1 else d2.new_empty(0)
    # Median heuristic for the bandwidth; detached so the bandwidth is not a path for the gradient.
    sigma2 = off.detach().median() if off.numel() else torch.tensor(1.0, device=x.device)
    sigma2 = sigma2.clamp_min(1e-6)
    return torch.exp(-d2 / (2.0 * sigma2))


def hsic(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Biased HSIC estimate with Gaussian kernels: tr(K H L H) / (n − 1)²; ≈ 0 for independent inputs."""
    n = x.shape[0]
    if n < 2:
        return x.new_zeros(())
    # float32 throughout: kernel values lie in [0, 1] and the centred sum over a batch of a few hundred
    # loses nothing that matters, while float64 matmuls cost ~40% of a training step on CPU (train_speed.py).
    x = x.reshape(n, -1).float()
    y = y.reshape(n, -1).float()
    k = _gaussian_kernel(x)
    l_ = _gaussian_kernel(y)
    # Centre by subtracting row/column means instead of forming H explicitly (same result, O(n²)).
    kc = k - k.mean(0, keepdim=True) - k.mean(1, keepdim=True) + k.mean()
    lc = l_ - l_.mean(0, keepdim=True) - l_.mean(1, keepdim=True) + l_.mean()
    return (kc * lc).sum() / float((n - 1) ** 2)


def bernoulli_kl(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    """Mean KL(Bern(p) ‖ Bern(q)) computed from logits, stable for saturated probabilities."""
    lp1, lp0 = F.logsigmoid(p_logits), F.logsigmoid(-p_logits)
    lq1, lq0 = F.logsigmoid(q_logits), F.logsigmoid(-q_logits)
    p = torch.sigmoid(p_logits)
    return (p * (lp1 - lq1) + (1 - p) * (lp0 - lq0)).mean()


def _mlp(d_in: int, hidden: int, d_out: int, dropout: float) -> nn.Sequential:
    if hidden <= 0:
        return nn.Sequential(nn.Linear(d_in, d_out))
    return nn.Sequential(nn.Linear(d_in, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, d_out))


class CausalHead(nn.Module):
    kind = "causalclip"

    def __init__(self, embed_dim: int, config: CausalConfig | None = None) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.config = config or CausalConfig()
        c = self.config
        self.inputs = SegmentInput(embed_dim, c.segments, c.combine)
        self.mask_net = _mlp(embed_dim, c.mask_hidden, embed_dim, 0.0)
        self.classifier = _mlp(embed_dim, c.cls_hidden, 1, c.dropout)
        self.adversary = _mlp(embed_dim, c.adv_hidden, 1, c.dropout)

    def mask(self, e: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if not self.config.use_mask:
            return torch.ones_like(e)
        return gumbel_sigmoid(self.mask_net(e), self.config.tau, self.training, generator)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Raw embeddings → fake logits (N,). Deterministic in eval mode."""
        e = self.inputs(features)
        return self.classifier(self.mask(e) * e).squeeze(-1)

    def losses(self, features: torch.Tensor, labels: torch.Tensor,
               generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """All loss terms for one batch; `total` is what the optimiser minimises."""
        c = self.config
        y = labels.float()
        e = self.inputs(features)
        m = self.mask(e, generator)
        zc, znc = m * e, (1.0 - m) * e
        logits = self.classifier(zc).squeeze(-1)
        l_cls = F.binary_cross_entropy_with_logits(logits, y)
        # The adversary minimises its loss; the reversed gradient makes the mask maximise it (−α·L_adv).
        adv_logits = self.adversary(grad_reverse(znc, c.alpha)).squeeze(-1)
        l_adv = F.binary_cross_entropy_with_logits(adv_logits, y)
        l_sparse = m.mean()  # = mean |M|: M is a sigmoid, never negative (abs and its backward cost time)
        l_hsic = hsic(zc, znc)
        drop = torch.bernoulli(torch.full_like(zc, c.drop_p), generator=generator)
        cf_logits = self.classifier(zc * (1.0 - drop)).squeeze(-1)
        l_inv = bernoulli_kl(logits, cf_logits)
        total = l_cls + l_adv + c.lambda1 * l_sparse + c.lambda2 * l_hsic + c.beta * l_inv
        return {"total": total, "cls": l_cls, "adv": l_adv, "sparsity": l_sparse, "hsic": l_hsic,
                "inv": l_inv, "mask_mean": m.detach().mean(), "logits": logits.detach()}


class LinearHead(nn.Module):
    kind = "linear"

    def __init__(self, embed_dim: int, config: LinearConfig | None = None) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.config = config or LinearConfig()
        self.inputs = SegmentInput(embed_dim, self.config.segments, self.config.combine)
        self.fc = nn.Linear(embed_dim, 1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc(self.inputs(features)).squeeze(-1)

    def losses(self, features: torch.Tensor, labels: torch.Tensor,
               generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        logits = self.forward(features)
        l_cls = F.binary_cross_entropy_with_logits(logits, labels.float())
        return {"total": l_cls, "cls": l_cls, "logits": logits.detach()}


Head = CausalHead | LinearHead


def make_head(kind: str, embed_dim: int, config: dict | None = None) -> Head:
    """Build a head by kind name from a plain config dict (as stored in checkpoints)."""
    config = config or {}
    if kind == "causalclip":
        return CausalHead(embed_dim, CausalConfig.from_dict(config))
    if kind == "linear":
        return LinearHead(embed_dim, LinearConfig.from_dict(config))
    raise ValueError(f"unknown head kind {kind!r}; choose one of {', '.join(HEAD_KINDS)}")


def head_config_dict(head: Head) -> dict:
    d = asdict(head.config)
    d["segments"] = list(d.get("segments", ()))
    return d
