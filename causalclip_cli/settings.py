"""Where things live on disk, and the device choice. One place for paths every module shares."""

from __future__ import annotations

import os
from pathlib import Path

APP_NAME = "causalclip"
CACHE_ENV = "CAUSALCLIP_CACHE_DIR"


def cache_dir(override: str | os.PathLike | None = None) -> Path:
    """The user cache dir (platformdirs), overridable by argument or $CAUSALCLIP_CACHE_DIR."""
    if override:
        return Path(override).expanduser()
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir(APP_NAME))


def package_dir() -> Path:
    return Path(__file__).resolve().parent


def weights_dir() -> Path:
    """Released checkpoints: `weights/` next to the package in a checkout (editable install), else the
    copy a regular install puts under `<prefix>/share/causalclip/weights`."""
    import sys

    checkout = package_dir().parent / "weights"
    if checkout.is_dir():
        return checkout
    installed = Path(sys.prefix) / "share" / APP_NAME / "weights"
    return installed if installed.is_dir() else checkout


def resolve_device(spec: str = "auto") -> str:
    """'auto' → cuda if available, else mps, else cpu. Explicit values are checked, not trusted."""
    import torch

    from causalclip_cli.errors import UsageError

    spec = (spec or "auto").lower()
    if spec == "auto":
        if torch.cuda.is_available():
            return "cuda"
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return "mps"
        return "cpu"
    if spec == "cpu":
        return "cpu"
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UsageError(f"--device {spec}: CUDA is not available here", hint="use --device auto or cpu")
        if ":" in spec:
            idx = spec.split(":", 1)[1]
            if not idx.isdigit() or int(idx) >= torch.cuda.device_count():
                raise UsageError(f"--device {spec}: no such CUDA device (found {torch.cuda.device_count()})")
        return spec
    if spec == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise UsageError("--device mps: MPS is not available here", hint="use --device auto or cpu")
        return "mps"
    raise UsageError(f"--device {spec!r} is not one of auto, cpu, cuda, cuda:N, mps")
