"""How familiar an image is to a head: distance to its training features, as a conformal p-value.

A head trained on a few thousand images has no basis for a verdict on an image unlike all of them: its
score there is an extrapolation, and for this tool the costly extrapolation is a real photograph of an
unseen kind (a retouched stock portrait, a studio shot) called `fake`. So a checkpoint may carry a small
reference of its training features: the head's input features, standardised, projected on their leading
principal directions and stored with the projection. An image's *strangeness* is its mean Euclidean
distance to its k nearest reference rows. Held-out calibration images (reals and fakes the head never
trained on) give the distribution of strangeness of familiar images; an image's p-value is the share of
them at least as strange (a conformal p-value: under exchangeability with the calibration images,
P(p ≤ α) ≤ α). `Decision` turns a would-be `fake` with p below its `unfamiliar_below` into `uncertain`.

Owns no model code: plain tensors in, plain numbers out; checkpoint.py stores and loads it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

PREFIX = "familiarity."
DEFAULT_COMPONENTS = 64
DEFAULT_K = 10
DEFAULT_BANK = 6000  # rows kept; ~0.8 MB at 64 float16 components
_CHUNK = 1024


@dataclass
class Familiarity:
    mean: torch.Tensor  # [d]
    scale: torch.Tensor  # [d]
    components: torch.Tensor  # [d, r]
    bank: torch.Tensor  # [n, r] projected training features
    calibration: torch.Tensor  # [m] sorted strangeness of held-out familiar images
    k: int = DEFAULT_K

    @classmethod
    def fit(cls, train: np.ndarray | torch.Tensor, *, components: int = DEFAULT_COMPONENTS, k: int = DEFAULT_K,
            bank_size: int = DEFAULT_BANK, seed: int = 0) -> Familiarity:
        """The reference from training features [n, d] (uncalibrated: `calibrate` must follow)."""
        x = torch.as_tensor(train, dtype=torch.float32)
        if x.dim() != 2 or len(x) <= k:
            raise ValueError(f"familiarity needs more than k={k} training rows of shape [n, d], got {tuple(x.shape)}")
        mean = x.mean(0)
        # A floor keeps near-constant feature dimensions from dominating the distance.
        std = x.std(0)
        scale = std.clamp_min(1e-3 * float(std.mean()) + 1e-12)
        z = (x - mean) / scale
        r = min(components, z.shape[0] - 1, z.shape[1])
        # Principal directions of the standardised training features (torch's randomised PCA: exact enough for
        # a distance, far cheaper than a full SVD of [n, 4352]).
        _, _, v = torch.pca_lowrank(z, q=r, center=False, niter=4)
        proj = z @ v
        if len(proj) > bank_size:
            g = torch.Generator().manual_seed(seed)
            proj = proj[torch.randperm(len(proj), generator=g)[:bank_size]]
        return cls(mean, scale, v.contiguous(), proj.contiguous(), torch.empty(0), k)

    def strangeness(self, features: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Mean distance to the k nearest reference rows, per row of `features` [n, d] (or [n, views, d]:
        the views are averaged first, as one image)."""
        x = torch.as_tensor(features, dtype=torch.float32).cpu()
        if x.dim() == 3:
            x = x.mean(1)
        z = ((x - self.mean) / self.scale) @ self.components
        bank = self.bank.float()
        out = []
        for i in range(0, len(z), _CHUNK):
            d = torch.cdist(z[i:i + _CHUNK], bank)
            out.append(d.topk(min(self.k, bank.shape[0]), dim=1, largest=False).values.mean(1))
        return torch.cat(out) if out else torch.empty(0)

    def calibrate(self, held_out: np.ndarray | torch.Tensor) -> Familiarity:
        """Set the strangeness distribution of familiar images from held-out features (never training rows:
        their distances to the bank are biased low)."""
        s = self.strangeness(held_out)
        if len(s) < 20:
            raise ValueError(f"familiarity calibration needs at least 20 held-out images, got {len(s)}")
        self.calibration = torch.sort(s).values
        return self

    def p_values(self, features: np.ndarray | torch.Tensor) -> np.ndarray:
        """Conformal p-value per image: (1 + #calibration at least as strange) / (m + 1)."""
        if not len(self.calibration):
            raise ValueError("familiarity reference is not calibrated")
        s = self.strangeness(features)
        m = len(self.calibration)
        at_least = m - torch.searchsorted(self.calibration, s, right=False)
        return ((1 + at_least).double() / (m + 1)).numpy()

    def tensors(self) -> dict[str, torch.Tensor]:
        """For the checkpoint file, under `PREFIX` (the bank in float16: distances need no more)."""
        t = {"mean": self.mean, "scale": self.scale, "components": self.components,
             "bank": self.bank.to(torch.float16), "calibration": self.calibration}
        return {PREFIX + k: v.detach().cpu().contiguous() for k, v in t.items()}

    def describe(self) -> dict:
        return {"k": self.k, "components": int(self.components.shape[1]), "bank": int(self.bank.shape[0]),
                "calibration_images": int(len(self.calibration))}

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], meta: dict) -> Familiarity | None:
        """None when the file has no familiarity reference."""
        if PREFIX + "bank" not in tensors:
            return None
        g = {k[len(PREFIX):]: v for k, v in tensors.items() if k.startswith(PREFIX)}
        return cls(g["mean"].float(), g["scale"].float(), g["components"].float(), g["bank"],
                   g["calibration"].float(), int(meta.get("k", DEFAULT_K)))
