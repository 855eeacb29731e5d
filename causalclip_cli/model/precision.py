"""Numeric precision of the frozen image tower: fp32, fp16/bf16 autocast, or INT8 on CPU.

`--precision` picks one; `auto` is fp16 autocast on CUDA and fp32 elsewhere. The INT8 path is our own
W8A8 scheme, chosen for fidelity (benchmarks/cpu_paths.py measures it against fp32):

* weights: int8, symmetric, one scale per output channel (quantised once, at load time);
* activations: int8, symmetric, one scale per token row, computed on the fly from that row alone.

Per-token scales matter for CLIP: its residual stream has a few huge outlier activations in a few
tokens, and the per-tensor activation scale that PyTorch's `quantize_dynamic` and onnxruntime's dynamic
quantisation use lets one such token flatten every other token of the batch to a handful of levels (the
features then also depend on which images share the batch). Here each image's result is independent of
its batch. The int8 × int8 → int32 product is `torch._int_mm`; the rest (attention softmax, layer norms,
GELU, the patch embedding and the final projection) stays fp32.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

from causalclip_cli.errors import UsageError

if TYPE_CHECKING:
    import torch

PRECISIONS = ("auto", "fp32", "int8", "fp16", "bf16")


def resolve_precision(spec: str | None, device: str) -> str:
    """'auto' → fp16 on CUDA, fp32 elsewhere; explicit choices are checked against the device."""
    spec = (spec or "auto").lower()
    if spec not in PRECISIONS:
        raise UsageError(f"--precision {spec!r} is not one of {', '.join(PRECISIONS)}")
    kind = device.split(":", 1)[0]
    if spec == "auto":
        return "fp16" if kind == "cuda" else "fp32"
    if spec == "int8" and kind != "cpu":
        raise UsageError(f"--precision int8 runs on CPU only (device is {device})",
                         hint="use --precision fp16 or bf16 on a GPU")
    if spec == "fp16" and kind == "cpu":
        raise UsageError("--precision fp16 needs a GPU", hint="on CPU use fp32 or int8")
    return spec


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype a precision runs under, or None for plain fp32 / int8."""
    import torch

    return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision)


@functools.lru_cache(maxsize=1)
def _int8_modules():  # noqa: ANN202 - classes built lazily so importing this module needs no torch
    import torch
    import torch.nn.functional as F
    from torch import nn

    class Int8Linear(nn.Module):
        """y = x Wᵀ + b with int8 weights (per output channel) and int8 activations (per token row)."""

        def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
            super().__init__()
            w = weight.detach().float()
            scale = w.abs().amax(dim=1).clamp_min(1e-12) / 127.0
            q = torch.round(w / scale[:, None]).clamp_(-127, 127).to(torch.int8)
            self.out_features, self.in_features = w.shape
            self.register_buffer("weight_t", q.t().contiguous())  # [in, out], the layout _int_mm reads fastest
            self.register_buffer("weight_scale", scale)
            self.register_buffer("bias", None if bias is None else bias.detach().float().clone())

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            shape = x.shape
            x2 = x.reshape(-1, shape[-1]).float()
            # Per-row absolute max, then symmetric int8. amax/amin are vectorised reductions; on this project's
            # CPU they are ~10x faster than vector_norm(ord=inf) and 2x faster than abs().amax() (no temporary).
            s = torch.maximum(x2.amax(dim=1, keepdim=True), x2.amin(dim=1, keepdim=True).neg_())
            s = s.clamp_min_(1e-12).div_(127.0)
            xq = torch.mul(x2, s.reciprocal()).round_().to(torch.int8)
            y = torch._int_mm(xq, self.weight_t).to(torch.float32).mul_(s)
            y = torch.addcmul(self.bias, y, self.weight_scale) if self.bias is not None else y.mul_(
                self.weight_scale)
            return y.reshape(*shape[:-1], self.out_features)

    class Int8Attention(nn.Module):
        """Drop-in for nn.MultiheadAttention (self-attention, as open_clip's ViT calls it) with Int8Linear
        projections; the attention itself runs in fp32 (scaled_dot_product_attention)."""

        def __init__(self, mha: nn.MultiheadAttention) -> None:
            super().__init__()
            if mha.in_proj_weight is None:
                raise ValueError("attention with separate q/k/v weights is not supported")
            self.num_heads = mha.num_heads
            self.batch_first = mha.batch_first
            self.qkv = Int8Linear(mha.in_proj_weight, mha.in_proj_bias)
            self.out_proj = Int8Linear(mha.out_proj.weight, mha.out_proj.bias)

        def forward(self, query: torch.Tensor, key: torch.Tensor | None = None, value: torch.Tensor | None = None,
                    need_weights: bool = False, attn_mask: torch.Tensor | None = None,
                    **_: object) -> tuple[torch.Tensor, None]:
            x = query if self.batch_first else query.transpose(0, 1)
            b, n, c = x.shape
            h = self.num_heads
            qkv = self.qkv(x).reshape(b, n, 3, h, c // h).permute(2, 0, 3, 1, 4)
            if attn_mask is not None and attn_mask.dtype != torch.bool:
                attn_mask = attn_mask.to(qkv.dtype)
            out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], attn_mask=attn_mask)
            out = self.out_proj(out.transpose(1, 2).reshape(b, n, c))
            return (out if self.batch_first else out.transpose(0, 1)), None

    return Int8Linear, Int8Attention


def quantize_int8(module: torch.nn.Module) -> torch.nn.Module:
    """Replace, in place, every nn.MultiheadAttention and nn.Linear inside `module` by its INT8 version;
    returns the module. Meant for a frozen, eval-mode tower on CPU."""
    from torch import nn

    int8_linear, int8_attention = _int8_modules()

    def swap(parent: nn.Module) -> None:
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.MultiheadAttention):
                setattr(parent, name, int8_attention(child))
            elif isinstance(child, nn.Linear):
                setattr(parent, name, int8_linear(child.weight, child.bias))
            else:
                swap(child)

    swap(module)
    return module.eval()


def int8_layer_count(module: torch.nn.Module) -> int:
    """How many INT8 linear layers a module holds (for tests and `info`)."""
    int8_linear, _ = _int8_modules()
    return sum(isinstance(m, int8_linear) for m in module.modules())
