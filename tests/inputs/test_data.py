"""Discovery, content sniffing, safe decoding and batching (causalclip_cli.inputs.data)."""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from causalclip_cli.errors import ImageError, UsageError
from causalclip_cli.inputs import data
from causalclip_cli.inputs.data import (
    NOT_AN_IMAGE,
    Decoded,
    NotAnImage,
    ScanBatch,
    ScanDataset,
    collate_scan,
    decode_image,
    discover,
    display_path,
    make_loader,
    read_path_list,
    sniff,
)
from causalclip_cli.model.preprocess import Preprocess

SHARED_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def _permissions_enforced(tmp: Path) -> bool:
    """False for root (unless its DAC capabilities were dropped): chmod 000 would not stop it."""
    probe = tmp / "perm_probe"
    probe.write_bytes(b"x")
    probe.chmod(0)
    try:
        with open(probe, "rb"):
            return False
    except PermissionError:
        return True
    finally:
        probe.chmod(0o644)


PRE = Preprocess(size=32, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))


def gradient(w: int = 40, h: int = 30) -> Image.Image:
    """A non-uniform RGB image, so orientation and channel mistakes show up."""
    x = np.linspace(0, 255, w, dtype=np.float32)[None, :].repeat(h, 0)
    y = np.linspace(0, 255, h, dtype=np.float32)[:, None].repeat(w, 1)
    arr = np.stack([x, y, np.full_like(x, 128)], axis=-1).astype(np.uint8)
    return Image.fromarray(arr)


def save(img: Image.Image, path: Path, fmt: str, **kw) -> Path:
    img.save(path, fmt, **kw)
    return path


def png_16bit_rgb(w: int, h: int, value: tuple[int, int, int]) -> bytes:
    """A 16-bit-per-channel RGB PNG written by hand (Pillow cannot write one)."""

    def chunk(tag: bytes, payload: bytes) -> bytes:
        crc = zlib.crc32(tag + payload) & 0xFFFFFFFF
        return struct.pack(">I", len(payload)) + tag + payload + struct.pack(">I", crc)

    row = b"\x00" + struct.pack(">3H", *value) * w
    ihdr = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    body = chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(row * h)) + chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + body


def reason(path: Path | str, **kw) -> str:
    with pytest.raises(ImageError) as ei:
        decode_image(path, **kw)
    return str(ei.value)


# ---------------------------------------------------------------------------------------------------
# Formats
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "ext", "name", "lossless"),
    [
        ("JPEG", "jpg", "jpeg", False),
        ("PNG", "png", "png", True),
        ("WEBP", "webp", "webp", False),
        ("BMP", "bmp", "bmp", True),
        ("TIFF", "tif", "tiff", True),
        ("GIF", "gif", "gif", False),
        ("PPM", "ppm", "ppm", True),
        ("ICO", "ico", "ico", True),
        ("JPEG2000", "jp2", "jpeg2000", False),
    ],
)
def test_decode_formats(tmp_path, fmt, ext, name, lossless):
    src = gradient(40, 30)
    kw = {"sizes": [(40, 30)]} if fmt == "ICO" else {}
    path = save(src, tmp_path / f"img.{ext}", fmt, **kw)
    assert sniff(path) == name
    dec = decode_image(path)
    assert isinstance(dec, Decoded)
    assert dec.image.mode == "RGB"
    assert (dec.width, dec.height) == (40, 30) == dec.image.size
    assert dec.format == name
    diff = np.abs(np.asarray(dec.image, dtype=np.int16) - np.asarray(src, dtype=np.int16))
    assert diff.max() == 0 if lossless else diff.mean() < 12


def test_content_decides_not_extension(tmp_path):
    path = save(gradient(), tmp_path / "photo.txt", "PNG")
    assert decode_image(path).format == "png"
    fake = tmp_path / "fake.jpg"
    fake.write_text("hello, I am text\n")
    assert sniff(fake) is None
    with pytest.raises(NotAnImage) as ei:
        decode_image(fake)
    assert str(ei.value) == NOT_AN_IMAGE


@pytest.mark.parametrize(
    "head",
    [
        b"BMW is a car brand, not a bitmap",
        b"Python script",
        b"P1ease",
        b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00",  # an MP4 video
    ],
)
def test_sniff_rejects_lookalikes(tmp_path, head):
    path = tmp_path / "x.bin"
    path.write_bytes(head + b"\0" * 64)
    assert sniff(path) is None
    with pytest.raises(NotAnImage):
        decode_image(path)


def test_gif_first_frame(tmp_path):
    frames = [Image.new("RGB", (20, 10), c) for c in [(255, 0, 0), (0, 0, 255)]]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=50)
    px = decode_image(path).image.getpixel((5, 5))
    assert px[0] > 200 and px[2] < 50


def _heif_encoder() -> bool:
    try:
        import pillow_heif
    except ImportError:
        return False
    return bool(pillow_heif.libheif_info().get("HEIF"))


@pytest.mark.skipif(not _heif_encoder(), reason="pillow_heif has no HEVC encoder here to write a HEIC file")
def test_decode_heic(tmp_path):
    data._ensure_heif()
    path = save(Image.new("RGB", (64, 48), (200, 30, 30)), tmp_path / "photo.heic", "HEIF", quality=90)
    assert sniff(path) == "heic"
    dec = decode_image(path)
    assert (dec.width, dec.height, dec.format) == (64, 48, "heic")
    r, g, b = dec.image.getpixel((10, 10))
    assert r > 170 and g < 70 and b < 70


def test_decode_avif_or_clear_error(tmp_path):
    data._ensure_heif()
    path = tmp_path / "photo.avif"
    try:
        save(Image.new("RGB", (64, 48), (30, 200, 30)), path, "AVIF")
    except (KeyError, OSError, ValueError):
        pytest.skip("no AVIF encoder in this Pillow / pillow_heif build (libheif has no AV1 codec)")
    assert sniff(path) == "avif"
    assert decode_image(path).format == "avif"


def test_avif_without_decoder_is_an_image_error_not_a_skip(tmp_path):
    path = tmp_path / "broken.avif"
    path.write_bytes(b"\x00\x00\x00\x1cftypavif\x00\x00\x00\x00avifmif1miaf" + b"\x00" * 200)
    assert sniff(path) == "avif"
    with pytest.raises(ImageError) as ei:
        decode_image(path)
    assert not isinstance(ei.value, NotAnImage)
    assert "avif" in str(ei.value)


# ---------------------------------------------------------------------------------------------------
# Modes and orientation
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("orientation", [6, 8, 5, 7])
def test_exif_rotation_swaps_size(tmp_path, orientation):
    src = gradient(40, 20)
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = save(src, tmp_path / "rot.jpg", "JPEG", exif=exif, quality=95)
    dec = decode_image(path)
    assert (dec.width, dec.height) == (20, 40) == dec.image.size


def test_exif_rotation_content(tmp_path):
    src = Image.new("RGB", (40, 20), (0, 0, 0))
    src.paste((255, 255, 255), (0, 0, 10, 20))  # white band on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # display = rotate 90° clockwise: the left band ends up on top
    dec = decode_image(save(src, tmp_path / "rot.jpg", "JPEG", exif=exif, quality=95))
    assert dec.image.getpixel((10, 2))[0] > 200
    assert dec.image.getpixel((10, 37))[0] < 50


def test_16bit_greyscale_png_scales_not_clips(tmp_path):
    arr = np.full((10, 12), 32896, dtype=np.uint16)  # 32896 / 257 = 128
    arr[0, 0] = 65535
    arr[0, 1] = 0
    path = save(Image.fromarray(arr), tmp_path / "g16.png", "PNG")
    assert Image.open(path).mode == "I;16"
    out = np.asarray(decode_image(path).image)
    assert tuple(out[5, 5]) == (128, 128, 128)
    assert tuple(out[0, 0]) == (255, 255, 255) and tuple(out[0, 1]) == (0, 0, 0)


def test_16bit_pgm_mode_i(tmp_path):
    arr = np.full((8, 8), 16448, dtype=np.uint16)  # / 257 = 64
    path = save(Image.fromarray(arr), tmp_path / "g16.pgm", "PPM")
    assert Image.open(path).mode == "I"
    assert decode_image(path).image.getpixel((3, 3)) == (64, 64, 64)


def test_16bit_tiff_and_float_tiff(tmp_path):
    arr = np.full((8, 8), 51400, dtype=np.uint16)  # / 257 = 200
    path = save(Image.fromarray(arr), tmp_path / "g16.tif", "TIFF")
    assert decode_image(path).image.getpixel((0, 0)) == (200, 200, 200)
    f = np.full((8, 8), 0.5, dtype=np.float32)
    path = save(Image.fromarray(f), tmp_path / "f32.tif", "TIFF")
    assert Image.open(path).mode == "F"
    assert decode_image(path).image.getpixel((0, 0)) == (128, 128, 128)


def test_16bit_rgb_png(tmp_path):
    path = tmp_path / "rgb16.png"
    path.write_bytes(png_16bit_rgb(6, 4, (40000, 1000, 65535)))
    r, g, b = decode_image(path).image.getpixel((2, 2))
    assert abs(r - 156) <= 1 and g <= 4 and b == 255


def test_cmyk_jpeg(tmp_path):
    path = save(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), tmp_path / "cmyk.jpg", "JPEG", quality=95)
    assert Image.open(path).mode == "CMYK"
    r, g, b = decode_image(path).image.getpixel((8, 8))
    assert r > 220 and g < 40 and b < 40


def test_palette_with_transparency(tmp_path):
    src = gradient(20, 20).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    src.info["transparency"] = 0
    path = save(src, tmp_path / "pt.png", "PNG", transparency=0)
    opened = Image.open(path)
    assert opened.mode == "P" and "transparency" in opened.info
    expected = np.asarray(opened.convert("RGBA").convert("RGB"))
    with _no_warnings():
        dec = decode_image(path)
    assert np.array_equal(np.asarray(dec.image), expected)
    gif = save(src, tmp_path / "pt.gif", "GIF", transparency=0)
    assert decode_image(gif).image.mode == "RGB"
    # Per-entry alpha (tRNS with several values): the case where a direct convert("RGB") warns.
    alpha = save(src, tmp_path / "pt_bytes.png", "PNG", transparency=bytes([0, 128, 255, 64]))
    assert isinstance(Image.open(alpha).info["transparency"], bytes)
    with _no_warnings():
        assert decode_image(alpha).image.mode == "RGB"


class _no_warnings:
    """Decoding must not leak Pillow warnings into the scan's output."""

    def __enter__(self) -> None:
        import warnings

        self._cm = warnings.catch_warnings(record=True)
        self.log = self._cm.__enter__()
        warnings.simplefilter("always")

    def __exit__(self, *exc) -> None:
        self._cm.__exit__(*exc)
        assert not self.log, [str(w.message) for w in self.log]


@pytest.mark.parametrize("mode", ["RGBA", "LA", "L", "1", "P"])
def test_alpha_and_grey_modes(tmp_path, mode):
    src = gradient(24, 16).convert(mode)
    path = save(src, tmp_path / f"m_{mode}.png", "PNG")
    dec = decode_image(path)
    assert dec.image.mode == "RGB" and dec.image.size == (24, 16)
    assert np.array_equal(np.asarray(dec.image), np.asarray(Image.open(path).convert("RGB")))


def test_rgba_alpha_dropped_like_pil(tmp_path):
    src = Image.new("RGBA", (8, 8), (10, 20, 30, 0))
    dec = decode_image(save(src, tmp_path / "a.png", "PNG"))
    assert dec.image.getpixel((1, 1)) == (10, 20, 30)


# ---------------------------------------------------------------------------------------------------
# Bad inputs
# ---------------------------------------------------------------------------------------------------


def test_truncated_jpeg(tmp_path):
    buf = io.BytesIO()
    Image.effect_noise((200, 150), 60).convert("RGB").save(buf, "JPEG")
    path = tmp_path / "trunc.jpg"
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    assert reason(path) == "truncated image file"
    from PIL import ImageFile

    assert not ImageFile.LOAD_TRUNCATED_IMAGES


def test_truncated_png_header(tmp_path):
    buf = io.BytesIO()
    gradient().save(buf, "PNG")
    path = tmp_path / "trunc.png"
    path.write_bytes(buf.getvalue()[:60])
    r = reason(path)
    assert "truncated" in r or "corrupt" in r


def test_zero_byte_file(tmp_path):
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    assert reason(path) == "empty file (0 bytes)"


def test_directory_and_missing(tmp_path):
    assert reason(tmp_path) == "is a directory"
    assert reason(tmp_path / "nope.jpg") == "file not found"
    assert reason("a\0b.jpg") == "invalid path (contains a NUL byte)"
    assert discover(["a\0b.jpg"]).errors == [("a\0b.jpg", "invalid path (contains a NUL byte)")]


def test_fifo_does_not_hang(tmp_path):
    if not hasattr(os, "mkfifo"):
        pytest.skip("no FIFOs on this platform")
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    assert reason(fifo) == "not a regular file"
    save(gradient(), tmp_path / "a.png", "PNG")
    assert discover([tmp_path]).files == [str(tmp_path / "a.png")]


def test_permission_denied_real(tmp_path):
    if IS_ROOT and not _permissions_enforced(tmp_path):
        pytest.skip("running as root: chmod 000 does not stop root")
    path = save(gradient(), tmp_path / "locked.png", "PNG")
    locked_dir = tmp_path / "locked_dir"
    locked_dir.mkdir()
    save(gradient(), locked_dir / "x.png", "PNG")
    path.chmod(0)
    locked_dir.chmod(0)
    try:
        assert reason(path) == "permission denied"
        disc = discover([locked_dir])
        assert disc.files == [] and disc.errors == [(str(locked_dir), "permission denied")]
    finally:
        path.chmod(0o644)
        locked_dir.chmod(0o755)


def test_permission_denied_simulated(tmp_path, monkeypatch):
    path = save(gradient(), tmp_path / "locked.png", "PNG")
    real_open = os.open

    def fake_open(p, *a, **kw):
        if os.fspath(p) == str(path):
            raise PermissionError(13, "Permission denied", p)
        return real_open(p, *a, **kw)

    monkeypatch.setattr(data.os, "open", fake_open)
    assert reason(path) == "permission denied"

    real_scandir = os.scandir
    sub = tmp_path / "sub"
    sub.mkdir()

    def fake_scandir(p):
        if os.fspath(p) == str(sub):
            raise PermissionError(13, "Permission denied", p)
        return real_scandir(p)

    monkeypatch.setattr(data.os, "scandir", fake_scandir)
    disc = discover([tmp_path])
    assert disc.files == [str(path)]
    assert disc.errors == [(str(sub), "permission denied")]


def test_broken_symlink_and_loop(tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.symlink_to(tmp_path / "gone.jpg")
    loop = tmp_path / "loop.jpg"
    loop.symlink_to(loop)
    assert reason(broken) == "broken symlink"
    assert reason(loop) == "symlink loop"
    good = save(gradient(), tmp_path / "ok.png", "PNG")
    disc = discover([tmp_path])
    assert disc.files == [str(good)]
    assert disc.errors == [(str(broken), "broken symlink"), (str(loop), "symlink loop")]
    explicit = discover([broken, loop, tmp_path / "missing.png"])
    assert explicit.files == []
    assert sorted(explicit.errors) == sorted(
        [
            (str(broken), "broken symlink"),
            (str(loop), "symlink loop"),
            (str(tmp_path / "missing.png"), "file not found"),
        ]
    )


def test_discover_directory_symlink_cycle(tmp_path):
    root = tmp_path / "root"
    (root / "a" / "b").mkdir(parents=True)
    save(gradient(), root / "a" / "b" / "x.png", "PNG")
    save(gradient(), root / "top.png", "PNG")
    (root / "a" / "b" / "up").symlink_to(root)  # cycle back to the top
    (root / "alias").symlink_to(root / "a")  # a second name for a listed directory
    disc = discover([root])
    assert disc.files == [str(root / "a" / "b" / "x.png"), str(root / "top.png")]
    assert disc.errors == []


def test_discover_follows_directory_symlink(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    save(gradient(), outside / "o.png", "PNG")
    root = tmp_path / "root"
    root.mkdir()
    (root / "link").symlink_to(outside)
    assert discover([root]).files == [str(root / "link" / "o.png")]


def test_decompression_bomb(tmp_path, monkeypatch):
    path = save(gradient(40, 40), tmp_path / "bomb.png", "PNG")  # 1600 pixels
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # warning level: > limit
    assert reason(path) == "decompression bomb: 1600 pixels exceeds limit 1000"
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)  # error level: > 2 × limit
    assert reason(path) == "decompression bomb: 1600 pixels exceeds limit 500"


def test_huge_jpeg_uses_draft(tmp_path):
    path = save(gradient(4000, 3000), tmp_path / "big.jpg", "JPEG", quality=80)
    dec = decode_image(path, min_size=224)
    assert (dec.width, dec.height) == (4000, 3000)
    w, h = dec.image.size
    assert w < 4000 and h < 3000 and min(w, h) >= 224
    assert decode_image(path).image.size == (4000, 3000)


def test_draft_with_rotation_reports_original_rotated_size(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6
    path = save(gradient(1200, 600), tmp_path / "big.jpg", "JPEG", exif=exif)
    dec = decode_image(path, min_size=100)
    assert (dec.width, dec.height) == (600, 1200)
    w, h = dec.image.size
    assert h > w and min(w, h) >= 100 and h < 1200


def test_small_jpeg_not_drafted(tmp_path):
    path = save(gradient(300, 300), tmp_path / "s.jpg", "JPEG")
    assert decode_image(path, min_size=224).image.size == (300, 300)
    assert decode_image(path, min_size=0).image.size == (300, 300)


# ---------------------------------------------------------------------------------------------------
# Names and discovery
# ---------------------------------------------------------------------------------------------------


def test_awkward_names(tmp_path):
    names = ["with space.png", "quote'\"s.png", "new\nline.png", "(paren) [1].png"]
    for n in names:
        save(gradient(), tmp_path / n, "PNG")
    raw = os.fsencode(tmp_path) + b"/bad\xff\xfebytes.png"
    with open(raw, "wb") as f:
        gradient().save(f, "PNG")
    disc = discover([tmp_path])
    assert len(disc.files) == 5
    odd = os.fsdecode(raw)
    assert odd in disc.files
    for p in disc.files:
        assert decode_image(p).width == 40
    assert decode_image(raw).format == "png"  # bytes paths work too
    shown = display_path(odd)
    shown.encode("utf-8")  # printable whatever the terminal
    assert "\\xff\\xfe" in shown
    assert display_path(str(tmp_path / "new\nline.png")).endswith("new\\nline.png")


def test_discover_order_dedup_hidden_recursive(tmp_path):
    (tmp_path / "b" / "deep").mkdir(parents=True)
    (tmp_path / "a-b").mkdir()
    (tmp_path / ".hidden_dir").mkdir()
    for rel in ["z.png", "b/y.png", "b/deep/x.png", "a-b/w.png", ".hidden.png", ".hidden_dir/h.png"]:
        (tmp_path / rel).write_bytes(b"content is not checked here")
    t = str(tmp_path)
    disc = discover([tmp_path, tmp_path / "b", f"{t}/./z.png", f"{t}/z.png"])
    assert disc.files == [f"{t}/a-b/w.png", f"{t}/b/deep/x.png", f"{t}/b/y.png", f"{t}/z.png"]
    assert disc.errors == []
    assert disc.explicit == {f"{t}/z.png"}
    flat = discover([tmp_path], recursive=False)
    assert flat.files == [f"{t}/z.png"]
    # An explicitly named hidden file is always taken.
    assert discover([tmp_path / ".hidden.png"]).files == [f"{t}/.hidden.png"]
    # Deterministic regardless of input order.
    assert discover([tmp_path / "b", tmp_path]).files == disc.files


def test_discover_many_files_fast(tmp_path):
    import time

    for d in range(2):
        sub = tmp_path / f"d{d}"
        sub.mkdir()
        for i in range(500):
            os.close(os.open(sub / f"img ({i}).jpg", os.O_CREAT | os.O_WRONLY, 0o644))
    t0 = time.perf_counter()
    disc = discover([tmp_path])
    elapsed = time.perf_counter() - t0
    assert len(disc.files) == 1000
    assert elapsed < 1.0  # ~10 ms here; a per-file open or stat would still pass, a quadratic walk not


def test_read_path_list_modes():
    lines = b"a.jpg\r\n\nb c.png\nweird\xff.png\n"
    assert read_path_list(io.BytesIO(lines), null_separated=False) == [
        "a.jpg",
        "b c.png",
        os.fsdecode(b"weird\xff.png"),
    ]
    nul = b"x\ny.jpg\0\0with\r.png\0last"
    assert read_path_list(io.BytesIO(nul), null_separated=True) == ["x\ny.jpg", "with\r.png", "last"]
    assert read_path_list(io.BytesIO(b""), null_separated=False) == []


# ---------------------------------------------------------------------------------------------------
# Dataset and loader
# ---------------------------------------------------------------------------------------------------


def _mixed_folder(tmp_path: Path) -> list[str]:
    for i in range(7):
        save(gradient(30 + i, 20 + 2 * i), tmp_path / f"img{i}.png", "PNG")
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "empty.jpg").write_bytes(b"")
    save(Image.new("L", (50, 40), 90), tmp_path / "grey.jpg", "JPEG")
    return discover([tmp_path]).files


def test_dataset_items_never_raise(tmp_path):
    files = _mixed_folder(tmp_path)
    ds = ScanDataset(files + [str(tmp_path / "vanished.png")], PRE, explicit={str(tmp_path / "notes.txt")})
    items = [ds[i] for i in range(len(ds))]
    by_name = {Path(it["path"]).name: it for it in items}
    assert by_name["notes.txt"]["error"] == NOT_AN_IMAGE
    assert by_name["notes.txt"]["skipped"] is False  # named explicitly: an error, not a skip
    assert by_name["empty.jpg"]["error"] == "empty file (0 bytes)" and not by_name["empty.jpg"]["skipped"]
    assert by_name["vanished.png"]["error"] == "file not found"
    good = by_name["img3.png"]
    assert good["error"] is None and good["tensor"].dtype == torch.float32
    assert tuple(good["tensor"].shape) == (1, 3, 32, 32)  # one view
    assert (good["width"], good["height"], good["format"]) == (33, 26, "png")
    ds2 = ScanDataset(files, PRE)
    skipped = [it for it in (ds2[i] for i in range(len(ds2))) if it["skipped"]]
    assert [Path(it["path"]).name for it in skipped] == ["notes.txt"]


def test_collate_scan():
    t = torch.ones(3, 4, 4)
    items = [
        {"index": 2, "path": "c", "tensor": t * 2, "error": None},
        {"index": 0, "path": "a", "tensor": None, "error": "bad"},
        {"index": 1, "path": "b", "tensor": t, "error": None},
    ]
    batch = collate_scan(items)
    assert isinstance(batch, ScanBatch)
    assert [it["path"] for it in batch.items] == ["a", "b", "c"]
    assert batch.good == [1, 2]
    assert batch.tensor.shape == (2, 3, 4, 4) and batch.tensor[1, 0, 0, 0] == 2
    assert all("tensor" not in it for it in batch.items)
    empty = collate_scan([{"index": 0, "path": "a", "tensor": None, "error": "bad"}])
    assert empty.tensor is None and empty.good == []


def _flatten(loader) -> tuple[list[dict], torch.Tensor]:
    items, rows = [], []
    for batch in loader:
        items.extend(batch.items)
        if batch.tensor is not None:
            rows.append(batch.tensor)
            assert len(batch.good) == batch.tensor.shape[0]
    return items, torch.cat(rows)


def test_loader_same_results_any_worker_count(tmp_path):
    files = _mixed_folder(tmp_path)
    items0, rows0 = _flatten(make_loader(files, PRE, batch_size=3, workers=0))
    items2, rows2 = _flatten(make_loader(files, PRE, batch_size=3, workers=2))
    assert items0 == items2
    assert [it["path"] for it in items0] == files
    assert [it["index"] for it in items0] == list(range(len(files)))
    assert torch.equal(rows0, rows2)
    assert rows0.shape == (8, 3, 32, 32)


def test_loader_validates_arguments():
    with pytest.raises(UsageError):
        make_loader([], PRE, batch_size=0, workers=0)
    with pytest.raises(UsageError):
        make_loader([], PRE, batch_size=1, workers=-1)


# ---------------------------------------------------------------------------------------------------
# Real data
# ---------------------------------------------------------------------------------------------------


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"shared data not found at {SHARED_DATA}")
def test_real_shared_images_decode():
    cifake = SHARED_DATA / "cifake" / "test" / "FAKE"
    disc = discover([cifake], recursive=False)
    assert disc.errors == [] and len(disc.files) > 10
    picked = [p for p in disc.files if " (" in p][:3]
    assert picked, "cifake names contain spaces and parentheses"
    others = sorted((SHARED_DATA / "forensynths-thumbs").glob("*/1_fake/*.jpg"))[:2]
    for p in [*picked, *map(str, others)]:
        dec = decode_image(p, min_size=224)
        assert dec.format == "jpeg" and dec.image.mode == "RGB"
        assert dec.image.size == (dec.width, dec.height)
    batch = next(iter(make_loader(picked, PRE, batch_size=3, workers=0)))
    assert batch.good == [0, 1, 2] and batch.tensor.shape == (3, 3, 32, 32)
