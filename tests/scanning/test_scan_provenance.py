"""`scan` with provenance: record fields, CSV columns, table column, --fail-on provenance-ai, record order with
discovery errors, and large photos (reduced-scale JPEG decoding under a hard pixel cap)."""

from __future__ import annotations

import csv
import io
import json
import struct
import zlib
from pathlib import Path

import pytest
from PIL import Image, PngImagePlugin
from typer.testing import CliRunner

from causalclip_cli.cli import app
from causalclip_cli.errors import ImageError, UsageError
from causalclip_cli.inputs.data import HARD_MAX_PIXELS, ScanDataset, decode_image
from causalclip_cli.model.preprocess import Preprocess
from causalclip_cli.scanning.scan import parse_fail_on

runner = CliRunner()


@pytest.fixture
def mixed(tmp_path: Path) -> Path:
    """a_camera.jpg (EXIF), b_link.jpg (broken symlink), c_sd.png (A1111 parameters), d_plain.jpg."""
    d = tmp_path / "mixed"
    d.mkdir()
    exif = Image.Exif()
    exif[271], exif[272] = "Canon", "Canon EOS 70D"
    Image.new("RGB", (40, 32), (90, 100, 110)).save(d / "a_camera.jpg", exif=exif)
    (d / "b_link.jpg").symlink_to(d / "gone.jpg")
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", "a cat\nSteps: 20, Sampler: Euler a, Seed: 1, Model: sd_xl_base_1.0")
    Image.new("RGB", (40, 32), (10, 200, 30)).save(d / "c_sd.png", pnginfo=info)
    Image.new("RGB", (40, 32), (200, 10, 30)).save(d / "d_plain.jpg")
    return d


def _scan(args: list[str], ckpt: Path):
    return runner.invoke(app, ["scan", *args, "-c", str(ckpt), "--workers", "0", "--no-progress"])


def _jsonl(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_records_carry_provenance_in_one_sorted_order(mixed: Path, tiny_checkpoint: Path) -> None:
    res = _scan([str(mixed), "-f", "jsonl", "--threshold", "1.0"], tiny_checkpoint)
    assert res.exit_code == 3, res.output  # the broken symlink is unreadable, nothing flagged
    recs = _jsonl(res.stdout)
    # The broken symlink's record (made while walking the folder) sits in path order, not first.
    assert [Path(r["path"]).name for r in recs] == ["a_camera.jpg", "b_link.jpg", "c_sd.png", "d_plain.jpg"]
    a, b, c, d = recs
    assert list(a)[-1] == "provenance" and list(a)[:10] == ["path", "probability", "label", "reason", "familiarity",
                                                             "threshold", "model", "width", "height", "error"]
    assert a["provenance"]["says"] == "camera" and a["provenance"]["evidence"] == ["EXIF: Canon EOS 70D"]
    assert b["error"] == "broken symlink" and b["provenance"] is None
    assert c["provenance"]["says"] == "ai-generated"
    assert c["provenance"]["generator"]["model"] == "sd_xl_base_1.0"
    assert d["provenance"]["says"] == "unknown"
    # The model's fields are untouched by metadata: the label comes from the probability alone.
    assert c["label"] == "real" and c["probability"] <= 1.0
    assert "metadata says:" in res.stderr


def test_explicit_missing_input_sorts_with_the_rest(mixed: Path, tiny_checkpoint: Path) -> None:
    args = [str(mixed / "d_plain.jpg"), str(mixed / "b_missing.jpg"), str(mixed / "a_camera.jpg")]
    recs = _jsonl(_scan([*args, "-f", "jsonl", "--threshold", "1.0"], tiny_checkpoint).stdout)
    assert [Path(r["path"]).name for r in recs] == ["a_camera.jpg", "b_missing.jpg", "d_plain.jpg"]


def test_no_provenance_and_csv_and_table(mixed: Path, tiny_checkpoint: Path) -> None:
    recs = _jsonl(_scan([str(mixed / "c_sd.png"), "-f", "jsonl", "--no-provenance", "--threshold", "1.0"],
                        tiny_checkpoint).stdout)
    assert recs[0]["provenance"] is None
    res = _scan([str(mixed / "a_camera.jpg"), str(mixed / "c_sd.png"), "-f", "csv", "--threshold", "1.0"],
                tiny_checkpoint)
    rows = list(csv.DictReader(io.StringIO(res.stdout)))
    assert [r["provenance_says"] for r in rows] == ["camera", "ai-generated"]
    assert rows[0]["exif_camera"] == "Canon Canon EOS 70D"
    assert rows[1]["generator_tool"] == "AUTOMATIC1111/Forge" and rows[1]["generator_model"] == "sd_xl_base_1.0"
    assert "provenance" not in rows[0]
    res = _scan([str(mixed / "c_sd.png"), "-f", "table", "--threshold", "1.0"], tiny_checkpoint)
    header, line = res.stdout.splitlines()[:2]
    assert header.split() == ["label", "fake_p", "size", "metadata", "path"]
    assert "ai-generated" in line and "[PNG: A1111 parameters, model sd_xl_base_1.0]" in line


def test_fail_on_provenance_ai(mixed: Path, tiny_checkpoint: Path) -> None:
    sd, cam = str(mixed / "c_sd.png"), str(mixed / "a_camera.jpg")
    clean = ["--threshold", "1.0"]  # the model flags nothing
    assert _scan([sd, *clean], tiny_checkpoint).exit_code == 0  # default --fail-on fake
    assert _scan([sd, *clean, "--fail-on", "provenance-ai"], tiny_checkpoint).exit_code == 1
    assert _scan([cam, *clean, "--fail-on", "provenance-ai"], tiny_checkpoint).exit_code == 0
    assert _scan([sd, *clean, "--fail-on", "fake,provenance-ai"], tiny_checkpoint).exit_code == 1
    assert _scan([cam, "--threshold", "0.0", "--fail-on", "fake,provenance-ai"], tiny_checkpoint).exit_code == 1
    assert _scan([cam, "--threshold", "0.0", "--fail-on", "provenance-ai"], tiny_checkpoint).exit_code == 0
    # Without provenance there is nothing to flag on.
    assert _scan([sd, *clean, "--fail-on", "provenance-ai", "--no-provenance"], tiny_checkpoint).exit_code == 0
    for bad in ("bogus", "never,fake", ""):
        res = _scan([sd, *clean, "--fail-on", bad], tiny_checkpoint)
        assert res.exit_code == 2, (bad, res.output)
    assert parse_fail_on(" fake , uncertain ") == {"fake", "uncertain"}
    with pytest.raises(UsageError):
        parse_fail_on("camera")


# --------------------------------------------------------------------------- large photos and bombs


def test_100_megapixel_jpeg_scans_at_reduced_scale(tmp_path: Path) -> None:
    path = tmp_path / "big.jpg"
    # 12000 × 8400 = 100.8 MP, above Pillow's 89 MP guard. Smooth content keeps the file small and fast.
    small = Image.linear_gradient("L").resize((375, 263)).convert("RGB")
    small.resize((12000, 8400), Image.Resampling.NEAREST).save(path, quality=80)
    assert 12000 * 8400 > Image.MAX_IMAGE_PIXELS
    dec = decode_image(path, min_size=224)
    assert (dec.width, dec.height) == (12000, 8400)
    assert dec.image.size == (1500, 1050)  # DCT scale 1/8
    dec = decode_image(path)  # no size asked: the smallest reduction that fits under the guard
    assert dec.image.size == (6000, 4200)
    pre = Preprocess(size=32, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    item = ScanDataset([str(path)], pre)[0]
    assert item["error"] is None and item["tensor"].shape == (1, 3, 32, 32)


def _with_size(jpeg: bytes, width: int, height: int) -> bytes:
    """The JPEG with its SOF0 frame header claiming another size (a classic decompression bomb)."""
    i = jpeg.index(b"\xff\xc0")
    return jpeg[: i + 5] + struct.pack(">HH", height, width) + jpeg[i + 9:]


def _png_claiming(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def test_real_bombs_are_still_refused(tmp_path: Path) -> None:
    buf = io.BytesIO()
    Image.new("RGB", (16, 16)).save(buf, "JPEG")
    huge = tmp_path / "huge.jpg"
    huge.write_bytes(_with_size(buf.getvalue(), 60000, 60000))  # 3.6 gigapixels
    expected = f"decompression bomb: 3600000000 pixels exceeds the hard limit {HARD_MAX_PIXELS}"
    with pytest.raises(ImageError, match=expected):
        decode_image(huge, min_size=224)
    png = tmp_path / "bomb.png"
    png.write_bytes(_png_claiming(20000, 20000))  # 400 MP: PNG cannot decode at reduced scale
    with pytest.raises(ImageError, match="decompression bomb: 400000000 pixels exceeds limit"):
        decode_image(png, min_size=224)


def test_c2pa_in_decode_worker_processes_and_html(shared_data: Path, tiny_checkpoint: Path, tmp_path: Path) -> None:
    """Two decode worker processes read the C2PA fixtures (the c2pa context is made per process), and
    `scan --html` writes the report beside the normal output."""
    src = shared_data / "provenance"
    if not src.is_dir():
        pytest.skip(f"{src} not present")
    # The parent reads C2PA first, so the forked workers inherit a c2pa context (which must not be reused there).
    assert decode_image(src / "c2pa-openai-gpt-4o.png", provenance=True).provenance["says"] == "ai-generated"
    page = tmp_path / "report.html"
    res = runner.invoke(app, ["scan", str(src), "-c", str(tiny_checkpoint), "--workers", "2", "--no-progress",
                              "-f", "jsonl", "--threshold", "1.0", "--html", str(page)])
    assert res.exit_code == 0, res.output
    says = {Path(r["path"]).name: r["provenance"]["says"] for r in _jsonl(res.stdout)}
    assert says == {"c2pa-adobe-test-CA.jpg": "unknown", "c2pa-adobe-test-bad-signature.jpg": "unknown",
                    "c2pa-capture-nikon-z9.jpg": "camera", "c2pa-capture-pixel5.jpg": "camera",
                    "c2pa-openai-gpt-4o.png": "ai-generated", "c2pa-trained-algorithmic-media.jpg": "ai-generated"}
    html = page.read_text()
    assert "C2PA (INVALID, C2PA Test Signing Cert): claimSignature.mismatch" in html
    assert f"wrote {page}" in res.stderr
