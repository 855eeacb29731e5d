"""Shared helpers for the speed benchmarks: machine details, results files, checkpoints, test images.

Not a benchmark itself; imported by scan_speed.py, train_speed.py and scale.py.
"""

from __future__ import annotations

import io
import json
import os
import platform
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
RESULTS = Path(__file__).resolve().parent / "results"
RELEASED_CHECKPOINT = REPO / "weights" / "causalclip-vitb16.safetensors"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


def log(msg: str = "") -> None:
    """Human output goes to stderr; stdout stays free."""
    sys.stderr.write(msg + "\n")
    sys.stderr.flush()


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info(device: str = "cpu") -> dict[str, Any]:
    """What a reader needs to compare numbers across machines."""
    import torch

    info: dict[str, Any] = {
        "cpu_model": cpu_model(),
        "nproc": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "loadavg_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "omp_num_threads_env": os.environ.get("OMP_NUM_THREADS"),
        "device": device,
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


def apply_threads(n: int | None) -> None:
    """Pin torch's intra-op threads here and, through the environment, in every subprocess we start.

    On a machine busy with other work, more threads than free cores can make each op wait on a
    descheduled thread (40x slower steps were seen with 2 threads on 2 busy cores), so this is an option.
    """
    if n is None:
        return
    import torch

    torch.set_num_threads(n)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(n)


def write_results(name: str, data: dict[str, Any], out_dir: Path | None = None) -> Path:
    """benchmarks/results/<name>.json, written to a temp file and renamed so readers never see half a file."""
    out_dir = out_dir or RESULTS
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{name}.json"
    fd, tmp = tempfile.mkstemp(dir=out_dir, prefix=f".{name}.", suffix=".partial")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=2)
            fh.write("\n")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def list_images(root: Path) -> list[str]:
    """Image files under `root`, sorted (same order on every run)."""
    return sorted(str(p) for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def spread(items: list[str], n: int | None) -> list[str]:
    """`n` items evenly spaced over the list, so a small sample still covers every sub-folder."""
    if n is None or n >= len(items):
        return list(items)
    if n <= 0:
        return []
    step = len(items) / n
    return [items[int(i * step)] for i in range(n)]


def mirror_with_symlinks(files: list[str], root: Path, dest: Path) -> Path:
    """A folder holding exactly `files` (as symlinks, relative layout kept) so `scan DIR` sees only them."""
    for f in files:
        rel = Path(f).relative_to(root)
        link = dest / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(Path(f).resolve())
    return dest


def make_checkpoint(tmp_dir: Path, tiny: bool) -> tuple[Path, str]:
    """A checkpoint to scan with: the released one when present (and not --tiny), else a throwaway one.

    The throwaway head is random: the verdicts are meaningless, the speed is what a trained head costs.
    Returns (path, description).
    """
    if not tiny and RELEASED_CHECKPOINT.is_file():
        return RELEASED_CHECKPOINT, "released"
    import torch

    from causalclip_cli.model.backbones import BackboneSpec, locate
    from causalclip_cli.model.checkpoint import Decision, build_metadata, save_checkpoint
    from causalclip_cli.model.heads import make_head

    torch.manual_seed(0)
    if tiny:
        info = locate(BackboneSpec("causalclip-tiny", "none"))
        head = make_head("causalclip", info.embed_dim, {"mask_hidden": 16, "cls_hidden": 16, "adv_hidden": 16})
        name = "tiny-bench.safetensors"
    else:
        info = locate(BackboneSpec())  # the offline ViT-B/16; locate builds nothing
        head = make_head("causalclip", info.embed_dim)  # default CausalConfig, as `train` would use
        name = "vitb16-bench.safetensors"
    meta = build_metadata(head, info.to_dict(), Decision(0.5), {"summary": {"note": "benchmark throwaway"}})
    path = tmp_dir / name
    save_checkpoint(path, head, meta)
    return path, f"throwaway random head on {info.config} ({info.source})"


def smooth_jpeg(width: int, height: int, seed: int, quality: int = 90) -> bytes:
    """JPEG bytes of smooth random content (a bicubic upscale of coarse noise), like a photo's low detail."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, size=(max(2, height // 64), max(2, width // 64), 3), dtype=np.uint8)
    img = Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()
