"""Start-up cuts: towers built on the meta device and filled by assignment, the remembered sha256 of the
offline export, and the first scan batch scored one image first."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from causalclip_cli.errors import BackboneError
from causalclip_cli.model import offline
from causalclip_cli.model.backbones import BackboneSpec, _build_tower, load_backbone
from causalclip_cli.model.checkpoint import load_detector
from causalclip_cli.scanning.output import ScanSummary
from causalclip_cli.scanning.scan import ScanOptions, scan_records

TINY = "causalclip-tiny"


def test_tower_from_a_weights_file_matches_an_ordinary_build(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    torch.manual_seed(3)
    ref = _build_tower(TINY).eval()
    sd = {k: v.contiguous() for k, v in ref.state_dict().items()}
    path = tmp_path / "w.safetensors"
    save_file({k: v.half() if k.endswith("proj") else v for k, v in sd.items()}, str(path))
    bb = load_backbone(BackboneSpec(TINY, "none", weights=str(path)), allow_download=False)
    assert not any(t.is_meta for t in (*bb.tower.parameters(), *bb.tower.buffers()))
    assert all(t.dtype == torch.float32 for t in bb.tower.parameters())  # fp16 tensors in the file are cast
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        assert torch.allclose(bb.tower(x), ref(x), atol=1e-2)
    # A tensor of the wrong shape is a clear error, not a traceback.
    first = next(iter(sd))
    bad = tmp_path / "bad.safetensors"
    save_file({**sd, first: torch.zeros(1)}, str(bad))
    with pytest.raises(BackboneError, match="another shape"):
        load_backbone(BackboneSpec(TINY, "none", weights=str(bad)), allow_download=False)


def test_sha256_memo_is_reused_and_refreshed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "model.onnx"
    f.write_bytes(b"abc")
    first = offline.sha256_memo(f, tmp_path / "cache")
    assert first == offline.sha256_file(f)

    def boom(*_a, **_k):
        raise AssertionError("hashed again")

    monkeypatch.setattr(offline, "sha256_file", boom)
    assert offline.sha256_memo(f, tmp_path / "cache") == first
    monkeypatch.undo()
    f.write_bytes(b"abcd")  # another size: the memo no longer applies
    assert offline.sha256_memo(f, tmp_path / "cache") == offline.sha256_file(f) != first


def test_first_batch_is_scored_one_image_first(tmp_path: Path, tiny_checkpoint: Path) -> None:
    for i in range(5):
        Image.new("RGB", (36, 36), (50 * i, 20, 90)).save(tmp_path / f"{i}.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 10)
    det = load_detector(str(tiny_checkpoint), device="cpu", allow_download=False)
    calls: list[int] = []
    real = det.assess  # what scan_records scores with (probabilities and familiarity)

    def counting(px: torch.Tensor):  # noqa: ANN202
        calls.append(len(px))
        return real(px)

    det.assess = counting  # type: ignore[method-assign]
    files = sorted(str(p) for p in tmp_path.iterdir())
    recs = list(scan_records(det, files, set(files), ScanOptions(batch_size=4, workers=0), ScanSummary()))
    assert [r.path for r in recs] == files
    assert calls == [1, 3, 1]  # batch 1 (four images): one, then three; batch 2 (one image + broken): one
    whole = real(torch.stack([torch.as_tensor(det.preprocess.to_array(Image.open(f).convert("RGB")))
                              for f in files if "broken" not in f]))[0]
    got = [r.probability for r in recs if r.error is None]
    assert torch.allclose(torch.tensor(got), whole, atol=1e-5)
    assert [r.error is not None for r in recs] == ["broken" in f for f in files]


def test_default_workers_per_device(monkeypatch: pytest.MonkeyPatch) -> None:
    from causalclip_cli.scanning import scan

    assert scan.default_workers("cpu") == 2
    monkeypatch.setattr(scan.os, "cpu_count", lambda: 16)
    assert scan.default_workers("cuda") == 8
    monkeypatch.setattr(scan.os, "cpu_count", lambda: 2)
    assert scan.default_workers("cuda:0") == 2
