"""Shared fixtures: a hermetic cache dir, the shared data folder, and a tiny deterministic detector."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session", autouse=True)
def _hermetic_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every test run gets its own cache dir; nothing touches the user's cache or the network."""
    root = tmp_path_factory.mktemp("cache")
    os.environ["CAUSALCLIP_CACHE_DIR"] = str(root)
    os.environ["HF_HUB_OFFLINE"] = "1"
    return root


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CausalCLIP head over the tiny random-init tower, saved in the real checkpoint format."""
    import torch

    from causalclip_cli.model.backbones import BackboneSpec, locate
    from causalclip_cli.model.checkpoint import Decision, build_metadata, save_checkpoint
    from causalclip_cli.model.heads import make_head

    torch.manual_seed(0)
    info = locate(BackboneSpec("causalclip-tiny", "none"))
    head = make_head("causalclip", info.embed_dim, {"mask_hidden": 16, "cls_hidden": 16, "adv_hidden": 16})
    meta = build_metadata(head, info.to_dict(), Decision(0.5), {"summary": {"note": "test fixture"}})
    path = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    save_checkpoint(path, head, meta)
    return path


@pytest.fixture
def local_hub_tag(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Register open_clip pretrained tag `tag` for `model` with weights in a local Hugging Face cache:
    open_clip's download path, pointed at local files. Returns a function (model, tag, weights) → None."""
    import huggingface_hub.constants as hfc
    import open_clip.pretrained as ocp

    hub = tmp_path / "hub"
    monkeypatch.setattr(hfc, "HF_HUB_CACHE", str(hub))

    def register(model: str, tag: str, weights: Path) -> None:
        repo_dir = hub / f"models--local--{model}-{tag}"
        snap = repo_dir / "snapshots" / ("0" * 40)
        snap.mkdir(parents=True)
        (snap / "open_clip_model.safetensors").write_bytes(weights.read_bytes())
        (repo_dir / "refs").mkdir()
        (repo_dir / "refs" / "main").write_text("0" * 40)
        monkeypatch.setitem(ocp._PRETRAINED, model, {tag: {"hf_hub": f"local/{model}-{tag}/"}})

    return register


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    """A folder of small images, one bad file, one non-image, a nested folder."""
    from PIL import Image

    d = tmp_path / "photos"
    (d / "nested").mkdir(parents=True)
    for i in range(5):
        Image.new("RGB", (48 + i, 40), (40 * i, 80, 120)).save(d / f"img {i}.jpg")
    Image.new("RGBA", (40, 40), (0, 200, 0, 128)).save(d / "nested" / "alpha.png")
    (d / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"\x00" * 20)
    (d / "readme.txt").write_text("not an image")
    return d


def make_patch_checkpoint(path: Path, kind: str = "linear", region: float | None = None) -> Path:
    """A head over the tiny tower that reads patch-token taps (final, block 1, p1, p2): evidence maps work."""
    import torch

    from causalclip_cli.model.backbones import BackboneSpec, locate
    from causalclip_cli.model.checkpoint import Decision, build_metadata, save_checkpoint
    from causalclip_cli.model.heads import make_head

    torch.manual_seed(1)
    info = locate(BackboneSpec("causalclip-tiny", "none"))
    layers = [0, 1, -1, -2]
    segments = [info.embed_dim, 64, 64, 64]
    config = {"segments": segments}
    if kind == "causalclip":
        config |= {"mask_hidden": 16, "cls_hidden": 16, "adv_hidden": 16}
    head = make_head(kind, sum(segments), config)
    decision = Decision(0.5, region=None if region is None else {"threshold": region, "statistic": "window_max"})
    meta = build_metadata(head, info.to_dict(), decision, {"summary": {"note": "test fixture"}},
                          features={"layers": layers, "aggregate": "mean"})
    save_checkpoint(path, head, meta)
    return path


@pytest.fixture(scope="session")
def tiny_patch_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_patch_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny-patch.safetensors")
