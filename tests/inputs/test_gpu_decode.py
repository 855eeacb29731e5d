"""The GPU decode path (issue 19) on the CPU: torchvision's CPU decode_jpeg stands in for nvJPEG, so batching,
routing, fallback, ordering, EXIF orientation and the torch resize recipe are all exercised here.

Tolerances (stated once, used below; normalised units, one grey level = 1/255/std ≈ 0.015):
  pixels, no draft  decode_jpeg + the two-pass torch resize against PIL with every pixel decoded: max |Δ| ≤ one
                    grey level, mean |Δ| < 0.001 (measured < 0.00001 on photo-like JPEGs 150×100 to 2048×1536).
  pixels, draft     what a scan does: the CPU path decodes JPEGs with short side ≥ 2×size at 1/2-1/8 DCT scale, the
                    GPU path box-averages the full decode by the same factor: mean |Δ| < 0.03 (measured 0.010-0.012
                    on these grainy synthetic photos; the release's photos: 0.2-0.4 grey levels).
  probabilities     tiny random tower (32 px input, so nearly every JPEG is draft-decoded on the CPU): |Δp| < 0.005
                    (measured max 0.00005 on the mixed folder).
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps
from typer.testing import CliRunner

from causalclip_cli.cli import app
from causalclip_cli.inputs import gpu_decode
from causalclip_cli.inputs.gpu_decode import (
    DecodeStats,
    GpuDecodeLoader,
    apply_orientation,
    choose_decoder,
    cpu_decode_batch,
    gpu_preprocess,
    jpeg_header,
)

PIXEL_MEAN_TOL = 0.001
DRAFT_MEAN_TOL = 0.03
PROB_TOL = 0.005

runner = CliRunner()


def _photo(w: int, h: int, seed: int) -> Image.Image:
    """Smooth structure plus grain: decodes like a photo, so resampling differences are not hidden."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, size=(max(2, h // 16), max(2, w // 16), 3), dtype=np.uint8)
    img = np.asarray(Image.fromarray(coarse).resize((w, h), Image.Resampling.BICUBIC), dtype=np.int16)
    return Image.fromarray(np.clip(img + rng.normal(0, 6, size=img.shape), 0, 255).astype(np.uint8))


def _exif(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    exif[0x010F] = "Canon"  # provenance reads the camera: the GPU path must report the same evidence
    exif[0x0110] = "EOS 5D"
    return exif.tobytes()


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("gpudecode")
    _photo(400, 300, 1).save(d / "a_good.jpg", quality=90)
    _photo(150, 100, 2).save(d / "b_small.jpg", quality=90)
    _photo(320, 200, 3).save(d / "c_exif6.jpg", quality=90, exif=_exif(6))
    _photo(200, 160, 4).convert("CMYK").save(d / "d_cmyk.jpg", quality=90)
    _photo(300, 240, 5).save(d / "e_progressive.jpg", quality=90, progressive=True)
    good = (d / "a_good.jpg").read_bytes()
    (d / "f_truncated.jpg").write_bytes(good[: len(good) // 2])
    (d / "g_broken.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"\x00garbage" * 50)
    Image.new("RGB", (9000, 9000), (90, 140, 200)).save(d / "h_huge.jpg", quality=5)
    _photo(120, 90, 6).save(d / "i_image.png")
    _photo(120, 90, 7).save(d / "j_image.webp", quality=90)
    try:
        import pillow_heif

        pillow_heif.register_heif_opener()
        _photo(128, 96, 8).save(d / "k_image.heic", quality=90)
    except Exception:  # noqa: BLE001 - no HEIF encoder in this build: the folder just lacks a HEIC
        pass
    (d / "l_empty.jpg").write_bytes(b"")
    (d / "m_readme.txt").write_text("not an image\n")
    _photo(300, 200, 9).convert("L").save(d / "n_gray.jpg", quality=90)
    _photo(640, 480, 10).save(d / "o_large.jpg", quality=90, comment=b"made with ComfyUI")
    for k in range(5):  # more plain JPEGs, so batches of 4 mix GPU and CPU files in several ways
        _photo(260 + 20 * k, 200, 20 + k).save(d / f"p_plain{k}.jpg", quality=85)
    return d


@pytest.fixture(scope="module")
def detector(tiny_checkpoint: Path):  # noqa: ANN201
    from causalclip_cli.model.checkpoint import load_detector

    return load_detector(str(tiny_checkpoint), device="cpu")


def _records(detector, folder: Path, decode: str, batch: int, workers: int, stats: DecodeStats | None = None,
             decode_batch=cpu_decode_batch):  # noqa: ANN001
    from causalclip_cli.inputs.data import discover
    from causalclip_cli.scanning.output import ScanSummary
    from causalclip_cli.scanning.scan import ScanOptions, scan_records

    found = discover([str(folder)])
    opts = ScanOptions(batch_size=batch, workers=workers, threshold=0.5, decode=decode,
                       decode_batch=decode_batch if decode == "gpu" else None, decode_stats=stats)
    summary = ScanSummary()
    return list(scan_records(detector, found.files, found.explicit, opts, summary)), summary


# --------------------------------------------------------------------------- pieces


@pytest.mark.parametrize("orientation", range(1, 9))
def test_orientation_matches_pil_exif_transpose(orientation: int) -> None:
    img = _photo(48, 32, orientation)
    buf = io.BytesIO()
    img.save(buf, format="PNG")  # lossless, so only the geometry is compared
    img.info["exif"] = _exif(orientation)
    ref = img.copy()
    ref.getexif()[0x0112] = orientation
    want = np.asarray(ImageOps.exif_transpose(ref)).transpose(2, 0, 1)
    got = apply_orientation(torch.from_numpy(np.asarray(img).transpose(2, 0, 1).copy()), orientation)
    assert tuple(got.shape) == want.shape
    assert torch.equal(got, torch.from_numpy(np.ascontiguousarray(want)))


def test_pixels_match_the_pil_path(tmp_path: Path) -> None:
    from causalclip_cli.inputs.data import decode_image
    from causalclip_cli.model.backbones import _preprocess_for

    pre = _preprocess_for("ViT-B-16", "openai", 224)  # the real recipe: mean/std from the one place they live
    one_level = 1.0 / 255.0 / min(pre.std) * 1.01
    for w, h, draft in [(400, 300, False), (150, 100, False), (300, 447, False), (640, 480, True),
                        (1280, 960, True), (2048, 1536, True)]:
        path = tmp_path / f"{w}x{h}.jpg"
        _photo(w, h, w).save(path, quality=90)
        x = cpu_decode_batch([torch.frombuffer(bytearray(path.read_bytes()), dtype=torch.uint8)])[0]
        assert (gpu_decode.draft_scale(w, h, pre) > 1) == draft
        # Every pixel decoded (no draft on either side): only float vs 8-bit arithmetic may differ.
        full = torch.from_numpy(pre.to_views(decode_image(path, min_size=None).image))[0]
        d = (gpu_preprocess(x, pre, draft=False) - full).abs()
        assert d.mean() < PIXEL_MEAN_TOL and d.max() <= one_level, (w, h, float(d.mean()), float(d.max()))
        # What a scan does on each side: DCT-scaled decode vs full decode + box average.
        scan = torch.from_numpy(pre.to_views(decode_image(path, min_size=pre.decode_min_size).image))[0]
        ds = (gpu_preprocess(x, pre) - scan).abs().mean()
        assert ds < (DRAFT_MEAN_TOL if draft else PIXEL_MEAN_TOL), (w, h, float(ds))


def test_routes(mixed: Path) -> None:
    def why(name: str) -> str | None:
        data = (mixed / name).read_bytes()
        return gpu_decode._gpu_refusal(data, jpeg_header(data))

    assert why("a_good.jpg") is None and why("n_gray.jpg") is None and why("c_exif6.jpg") is None
    assert why("d_cmyk.jpg") == "CMYK/YCCK"
    assert why("e_progressive.jpg") == "progressive"
    assert why("f_truncated.jpg") == "no EOI marker at the end"
    assert why("g_broken.jpg") == "no readable frame header"
    assert why("h_huge.jpg") == "size guard"
    hdr = jpeg_header((mixed / "h_huge.jpg").read_bytes())
    assert hdr is not None and (hdr.width, hdr.height, hdr.components) == (9000, 9000, 3)
    assert (mixed / "h_huge.jpg").stat().st_size < 2_000_000


def test_choose_decoder() -> None:
    from causalclip_cli.errors import UsageError
    from causalclip_cli.model.preprocess import Preprocess

    pre = Preprocess(224, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    assert choose_decoder("auto", "cpu", pre) == ("cpu", None)
    assert choose_decoder("auto", "cuda", pre) == ("gpu", None)
    assert choose_decoder("cpu", "cuda", pre) == ("cpu", None)
    assert choose_decoder("gpu", "cpu", pre, stand_in=True) == ("gpu", None)
    with pytest.raises(UsageError, match="needs a CUDA device"):
        choose_decoder("gpu", "cpu", pre)
    with pytest.raises(UsageError):
        choose_decoder("nvjpeg", "cuda", pre)
    decoder, note = choose_decoder("gpu", "cuda", pre.with_views("native", 5))
    assert decoder == "cpu" and "native" in (note or "")


# --------------------------------------------------------------------------- whole scans


def _key(rec) -> tuple:  # noqa: ANN001
    return rec.path, rec.error, rec.label is None, rec.width, rec.height, json.dumps(rec.provenance, sort_keys=True)


@pytest.mark.parametrize(("batch", "workers"), [(4, 0), (3, 2), (32, 1)])
def test_scan_matches_the_cpu_path(detector, mixed: Path, batch: int, workers: int) -> None:  # noqa: ANN001
    cpu, cpu_summary = _records(detector, mixed, "cpu", batch, 0)
    stats = DecodeStats()
    gpu, gpu_summary = _records(detector, mixed, "gpu", batch, workers, stats)
    assert [_key(r) for r in gpu] == [_key(r) for r in cpu]  # same files, order, errors, sizes, provenance
    assert gpu_summary.skipped == cpu_summary.skipped == 1  # the .txt found in a folder
    for a, b in zip(cpu, gpu, strict=True):
        if a.probability is not None:
            assert abs(a.probability - b.probability) < PROB_TOL, a.path
    errors = {Path(r.path).name: r.error for r in cpu if r.error}
    assert set(errors) == {"f_truncated.jpg", "g_broken.jpg", "l_empty.jpg"}
    assert {Path(r.path).name for r in cpu if r.error is None} >= {"h_huge.jpg", "d_cmyk.jpg", "c_exif6.jpg"}
    exif6 = next(r for r in gpu if r.path.endswith("c_exif6.jpg"))
    assert (exif6.width, exif6.height) == (200, 320)  # rotated as the CPU path reports it
    plain = 1 + 1 + 1 + 1 + 1 + 5  # a, b, c, n, o and the p_plain files
    assert stats.gpu == plain
    assert stats.reasons["progressive"] == 1 and stats.reasons["CMYK/YCCK"] == 1
    assert stats.reasons["size guard"] == 1 and stats.reasons["png"] == 1
    assert "decode: gpu 10 JPEGs" in stats.line()


def test_gpu_records_carry_familiarity_and_reason(detector, mixed: Path) -> None:  # noqa: ANN001
    """The GPU path scores through the same Detector.assess and batch_records as the CPU path: every scored
    record has the familiarity p-value and the verdict's reason (issue 18), equal to the CPU path's."""
    import copy

    from causalclip_cli.inputs.data import discover
    from causalclip_cli.model.familiarity import Familiarity
    from causalclip_cli.scanning.output import ScanSummary
    from causalclip_cli.scanning.scan import ScanOptions, scan_records

    torch.manual_seed(0)
    size = detector.preprocess.size
    feats = detector.embed(torch.randn(60, 3, size, size)).float()
    det = copy.copy(detector)
    det.familiarity = Familiarity.fit(feats[:30], components=8, k=5).calibrate(feats[30:])
    # Every score is `fake` (threshold 0) and every p-value is below 1.01: each scored record is withheld.
    det.metadata = {**detector.metadata, "decision": {"threshold": 0.0, "unfamiliar_below": 1.01}}
    found = discover([str(mixed)])
    out = {}
    for decode in ("cpu", "gpu"):
        opts = ScanOptions(batch_size=4, workers=0, decode=decode,
                           decode_batch=cpu_decode_batch if decode == "gpu" else None)
        out[decode] = list(scan_records(det, found.files, found.explicit, opts, ScanSummary()))
    scored = [r for r in out["gpu"] if r.probability is not None]
    assert scored and all(r.familiarity is not None and 0 < r.familiarity <= 1 for r in scored)
    assert all((r.label, r.reason) == ("uncertain", "unfamiliar") for r in scored)
    for a, b in zip(out["cpu"], out["gpu"], strict=True):
        assert (a.path, a.label, a.reason) == (b.path, b.label, b.reason)
        assert (a.familiarity is None) == (b.familiarity is None)
        if a.familiarity is not None:
            # p-values are ranks among 30 calibration rows, and the draft-decoded pixels differ slightly (module
            # docstring): a few ranks at most (measured: one rank, on one file).
            assert abs(a.familiarity - b.familiarity) <= 4 / 31, a.path


def test_c2pa_provenance_from_the_bytes_in_memory(detector, shared_data: Path) -> None:  # noqa: ANN001
    src = shared_data / "provenance"
    if not src.is_dir():
        pytest.skip(f"{src} not present")
    stats = DecodeStats()
    gpu, _ = _records(detector, src, "gpu", 4, 0, stats)
    cpu, _ = _records(detector, src, "cpu", 4, 0)
    assert [_key(r) for r in gpu] == [_key(r) for r in cpu]  # C2PA state, signer, evidence: all equal
    assert stats.gpu >= 1 and any(r.provenance and r.provenance.get("c2pa") for r in gpu)


def test_decoder_refusal_falls_back_per_file(detector, mixed: Path) -> None:  # noqa: ANN001
    refuse = (mixed / "b_small.jpg").read_bytes()

    def picky(datas: list[torch.Tensor]) -> list[torch.Tensor]:
        if any(d.numel() == len(refuse) and bytes(d.numpy()) == refuse for d in datas):
            raise RuntimeError("nvjpegDecodeBatched: unsupported")  # a batched call fails as a whole
        return cpu_decode_batch(datas)

    stats = DecodeStats()
    gpu, _ = _records(detector, mixed, "gpu", 8, 0, stats, decode_batch=picky)
    cpu, _ = _records(detector, mixed, "cpu", 8, 0)
    assert [_key(r) for r in gpu] == [_key(r) for r in cpu]
    assert stats.reasons["refused by the GPU decoder"] == 1 and stats.gpu == 9


def test_size_guard_is_a_setting(detector, mixed: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    monkeypatch.setattr(gpu_decode, "GPU_MAX_PIXELS", 100 * 100)
    stats = DecodeStats()
    gpu, _ = _records(detector, mixed, "gpu", 8, 0, stats)
    cpu, _ = _records(detector, mixed, "cpu", 8, 0)
    assert [_key(r) for r in gpu] == [_key(r) for r in cpu]
    assert stats.gpu == 0 and stats.reasons["size guard"] == 12  # the 10 plain JPEGs, the huge and the truncated


def test_decode_calls_are_split_by_pixels(detector, mixed: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    monkeypatch.setattr(gpu_decode, "GPU_CALL_PIXELS", 250_000)  # two or three small JPEGs per call
    sizes: list[int] = []

    def counting(datas: list[torch.Tensor]) -> list[torch.Tensor]:
        sizes.append(len(datas))
        return cpu_decode_batch(datas)

    gpu, _ = _records(detector, mixed, "gpu", 32, 0, decode_batch=counting)
    cpu, _ = _records(detector, mixed, "cpu", 32, 0)
    assert [_key(r) for r in gpu] == [_key(r) for r in cpu]
    assert sum(sizes) == 10 and len(sizes) > 2 and max(sizes) <= 4


def test_eval_features_with_the_gpu_path(mixed: Path, tmp_path: Path) -> None:
    from causalclip_cli.model.backbones import _preprocess_for
    from causalclip_cli.training.features import FeatureCache, extract_features

    pre = _preprocess_for("ViT-B-16", "openai", 32)
    paths = sorted(str(p) for p in mixed.iterdir())

    def embed(px: torch.Tensor) -> torch.Tensor:
        return px.flatten(1)[:, :64]

    cpu = extract_features(paths, embed, pre, None, batch_size=4)
    gpu = extract_features(paths, embed, pre, FeatureCache(tmp_path, "x", "y"), batch_size=4, decoder="gpu",
                           device="cpu")  # decode_jpeg on the CPU stands in for nvJPEG
    assert gpu.ok == cpu.ok and sorted(gpu.failed) == sorted(cpu.failed)
    assert np.abs(gpu.features - cpu.features).mean() < DRAFT_MEAN_TOL


def test_unsupported_recipe_scans_on_the_cpu_and_says_so(detector, mixed: Path) -> None:  # noqa: ANN001
    import copy

    det = copy.copy(detector)
    det.metadata = {**detector.metadata, "preprocess": {**detector.preprocess.to_dict(), "views": 5}}
    stats = DecodeStats()
    with pytest.warns(UserWarning, match="decoding on the CPU"):
        recs, _ = _records(det, mixed, "gpu", 8, 0, stats)
    assert stats.decoder == "cpu" and len(recs) == 18 + (mixed / "k_image.heic").exists()


def test_loader_stops_cleanly_when_the_consumer_does(mixed: Path) -> None:
    from causalclip_cli.model.backbones import _preprocess_for

    files = sorted(str(p) for p in mixed.glob("p_plain*.jpg"))
    loader = GpuDecodeLoader(files, _preprocess_for("ViT-B-16", "openai", 224), 1, 0, device="cpu",
                             decode_batch=cpu_decode_batch, prefetch=1)
    it = iter(loader)
    first = next(it)
    assert first.tensor is not None and first.tensor.shape == (1, 3, 224, 224)
    it.close()  # the producer thread must not hang on its full queue


def test_producer_errors_reach_the_consumer(mixed: Path) -> None:
    from causalclip_cli.model.backbones import _preprocess_for

    def broken(datas: list[torch.Tensor]) -> list[torch.Tensor]:
        return [torch.zeros(3, 8, 8, dtype=torch.uint8)] * (len(datas) + 1)  # a decoder bug, not a bad file

    loader = GpuDecodeLoader([str(mixed / "a_good.jpg")], _preprocess_for("ViT-B-16", "openai", 224), 1, 0,
                             device="cpu", decode_batch=broken)
    with pytest.raises(ValueError):
        list(loader)


# --------------------------------------------------------------------------- CLI


def test_cli_decode_gpu_without_cuda_is_a_usage_error(mixed: Path, tiny_checkpoint: Path) -> None:
    res = runner.invoke(app, ["scan", str(mixed / "a_good.jpg"), "-c", str(tiny_checkpoint), "--device", "cpu",
                              "--decode", "gpu", "-f", "jsonl"])
    assert res.exit_code == 2
    assert "--decode gpu needs a CUDA device" in res.stderr
    res = runner.invoke(app, ["eval", "--data", str(mixed), "-c", str(tiny_checkpoint), "--device", "cpu",
                              "--decode", "gpu"])
    assert res.exit_code == 2 and "--decode gpu needs a CUDA device" in res.stderr


def test_cli_decode_cpu_and_auto_scan(mixed: Path, tiny_checkpoint: Path) -> None:
    outs = []
    for mode in ("cpu", "auto"):
        res = runner.invoke(app, ["scan", str(mixed / "a_good.jpg"), str(mixed / "i_image.png"), "-c",
                                  str(tiny_checkpoint), "--device", "cpu", "--decode", mode, "-f", "jsonl",
                                  "--workers", "0", "--no-progress"])
        assert res.exit_code in (0, 1), res.stderr
        outs.append(res.stdout)
    assert outs[0] == outs[1]
