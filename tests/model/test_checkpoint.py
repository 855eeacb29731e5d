"""Checkpoints: safetensors + metadata, bit-exact round trips, clear errors on mismatch."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from causalclip_cli.errors import CheckpointError
from causalclip_cli.model.backbones import BackboneSpec, locate
from causalclip_cli.model.checkpoint import (
    Decision,
    build_metadata,
    check_compatible,
    load_detector,
    load_head,
    read_metadata,
    resolve_checkpoint,
    save_checkpoint,
)
from causalclip_cli.model.heads import make_head


@pytest.mark.parametrize("kind", ["causalclip", "linear"])
def test_round_trip_is_bit_exact_with_metadata(tmp_path: Path, kind: str) -> None:
    torch.manual_seed(0)
    info = locate(BackboneSpec("causalclip-tiny", "none")).to_dict()
    head = make_head(kind, 32, {"tau": 0.3, "mask_hidden": 8} if kind == "causalclip" else {})
    meta = build_metadata(head, info, Decision(0.42, (0.3, 0.6), {"method": "test"}), {"summary": {"n": 3}})
    path = save_checkpoint(tmp_path / "h.safetensors", head, meta)
    umask = os.umask(0o022)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # shareable like any file, not mkstemp's 0600
    loaded, meta2 = load_head(path)
    for (k, a), (k2, b) in zip(head.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(a, b)
    assert meta2 == json.loads(json.dumps(meta))
    assert meta2["head"]["kind"] == kind
    assert meta2["decision"]["threshold"] == 0.42 and meta2["decision"]["uncertain"] == [0.3, 0.6]
    assert meta2["labels"]["1"] == "fake"
    for key in ("format_version", "backbone", "preprocess", "training", "tool", "created"):
        assert key in meta2
    if kind == "causalclip":
        assert meta2["head"]["config"]["tau"] == 0.3
        assert loaded.config.tau == 0.3
    x = torch.randn(4, 32)
    assert torch.equal(head.eval()(x), loaded(x))


def test_file_is_plain_safetensors_not_pickle(tiny_checkpoint: Path) -> None:
    raw = tiny_checkpoint.read_bytes()
    header_len = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + header_len])
    assert "causalclip" in header["__metadata__"]
    assert b"\x80\x04" not in raw[:2]  # no pickle protocol marker at the start


def test_no_partial_file_left_when_save_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import safetensors.torch

    head = make_head("linear", 8)
    target = tmp_path / "out.safetensors"

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(safetensors.torch, "save_file", boom)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(target, head, {"format_version": 1})
    assert list(tmp_path.iterdir()) == []


def test_bad_files_give_clear_errors(tmp_path: Path) -> None:
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        read_metadata(junk)
    with pytest.raises(CheckpointError, match="released checkpoints"):
        resolve_checkpoint(str(tmp_path / "missing.safetensors"))
    from safetensors.torch import save_file

    bare = tmp_path / "bare.safetensors"
    save_file({"w": torch.zeros(2)}, str(bare))
    with pytest.raises(CheckpointError, match="without causalclip metadata"):
        read_metadata(bare)


def test_mismatched_backbone_is_an_error_naming_both(tiny_checkpoint: Path) -> None:
    meta = read_metadata(tiny_checkpoint)
    other = dict(meta["backbone"], embed_dim=512, config="ViT-B-16-quickgelu")
    with pytest.raises(CheckpointError) as err:
        check_compatible(meta, other, "tiny")
    assert "32" in str(err.value) and "512" in str(err.value)
    same_dim = dict(meta["backbone"], config="other-config")
    with pytest.raises(CheckpointError, match="other-config"):
        check_compatible(meta, same_dim, "tiny")
    with pytest.warns(UserWarning, match="other backbone weights|verdicts may shift"):
        meta2 = dict(meta, backbone=dict(meta["backbone"], sha256="a" * 64))
        check_compatible(meta2, dict(meta["backbone"], sha256="b" * 64), "tiny")


def test_load_detector_builds_everything_from_the_checkpoint(tiny_checkpoint: Path) -> None:
    det = load_detector(str(tiny_checkpoint), device="cpu", allow_download=False)
    assert det.preprocess.size == 32
    assert det.decision.threshold == 0.5
    px = torch.zeros(3, 3, 32, 32)
    p = det.probabilities(px)
    assert p.shape == (3,) and ((p >= 0) & (p <= 1)).all()
    assert "tiny" in det.model_id


def test_decision_labels() -> None:
    d = Decision(0.5, (0.4, 0.6))
    assert d.label(0.1) == "real" and d.label(0.9) == "fake" and d.label(0.5) == "uncertain"
    assert d.label(0.55, threshold=0.5, uncertain=None) == "uncertain"
    assert Decision(0.7).label(0.65) == "real"
