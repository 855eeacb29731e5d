"""`scan --explain`: evidence maps that add up to the head's logit, follow the image's orientation, land on the
generated half of a real/generated pair, and reach every output format, the PNG pictures and the Python API."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from causalclip_cli.cli import app
from tests.conftest import make_patch_checkpoint

runner = CliRunner()


def _noise(w: int, h: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


@pytest.mark.parametrize("kind", ["linear", "causalclip"])
def test_cell_logits_average_to_the_window_logit(tmp_path: Path, kind: str) -> None:
    from causalclip_cli.evidence.maps import cell_logits
    from causalclip_cli.model.checkpoint import load_detector

    det = load_detector(str(make_patch_checkpoint(tmp_path / f"{kind}.safetensors", kind)))
    pixels = torch.from_numpy(np.stack([det.preprocess.to_array(_noise(40, 32, s)) for s in range(3)]))
    logits, cells = cell_logits(det, pixels)
    assert cells.shape == (3, 4, 4)  # the tiny tower: 32-px input, 8-px patches
    assert torch.allclose(logits, det.logits(det.embed(pixels)), atol=1e-5)
    assert torch.allclose(cells.mean(dim=(1, 2)), logits, atol=1e-5)
    assert cells.std() > 0  # the cells differ: the decomposition is not a constant


def test_a_linear_heads_cell_is_the_logit_of_a_window_made_of_that_patch(tmp_path: Path) -> None:
    """Exact for a linear head: cell i is the logit when every patch-mean tap is patch i's token (each tap's
    norm that of the window's mean)."""
    from causalclip_cli.evidence.maps import _segments, cell_logits
    from causalclip_cli.model.checkpoint import load_detector

    det = load_detector(str(make_patch_checkpoint(tmp_path / "lin.safetensors", "linear")))
    pixels = torch.from_numpy(det.preprocess.to_array(_noise(32, 32, 7)))[None]
    _, cells = cell_logits(det, pixels)
    feats, patches = det.embed_with_patches(pixels)
    head = det.head
    for i in (0, 5, 15):
        x = feats.clone()
        scale = []
        for k, start, end in _segments(det):
            if k < 0:
                m = feats[0, start:end]
                t = patches[k][0, i]
                x[0, start:end] = t
                scale.append((start, end, m.norm() / t.norm()))
        # The head normalises each segment by its own norm; undo that for the patch segments.
        with torch.no_grad():
            z = head.inputs(x)
        for start, end, s in scale:
            z[0, start:end] = z[0, start:end] / s
        with torch.no_grad():
            expect = head.fc(z).squeeze(-1)
        assert float(cells.reshape(-1)[i]) == pytest.approx(float(expect[0]), abs=1e-4)


def test_map_shape_and_box_follow_exif_rotation(tmp_path: Path, tiny_patch_checkpoint: Path) -> None:
    """A 96x48 file stored with EXIF orientation 6 (rotate 90°) is a 48x96 image: a map of more rows than
    columns, its box inside 48x96."""
    img = _noise(96, 48, 3)
    exif = Image.Exif()
    exif[0x0112] = 6
    img.save(tmp_path / "rotated.jpg", exif=exif.tobytes(), quality=95)
    img.save(tmp_path / "upright.jpg", quality=95)
    res = runner.invoke(app, ["scan", str(tmp_path), "-c", str(tiny_patch_checkpoint), "--explain", "-f", "jsonl",
                              "--no-progress", "--workers", "0"])
    assert res.exit_code in (0, 1), res.output
    recs = {Path(r["path"]).name: r for r in map(json.loads, res.stdout.splitlines())}
    rot, up = recs["rotated.jpg"], recs["upright.jpg"]
    assert (rot["width"], rot["height"]) == (48, 96) and (up["width"], up["height"]) == (96, 48)
    m, u = rot["evidence_map"], up["evidence_map"]
    assert (m["rows"], m["cols"]) == (u["cols"], u["rows"]) and m["rows"] > m["cols"]
    assert len(m["scores"]) == m["rows"] * m["cols"] and all(0.0 <= s <= 1.0 for s in m["scores"])
    x0, y0, x1, y1 = m["box"]
    assert 0 <= x0 < x1 <= 48 and 0 <= y0 < y1 <= 96


def test_explain_in_every_format_and_errors_stay_records(tmp_path: Path, tiny_patch_checkpoint: Path) -> None:
    (tmp_path / "in").mkdir()
    _noise(64, 40, 1).save(tmp_path / "in" / "a.png")
    (tmp_path / "in" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"\x00" * 20)
    base = ["scan", str(tmp_path / "in"), "-c", str(tiny_patch_checkpoint), "--explain", "--no-progress",
            "--workers", "0"]
    res = runner.invoke(app, [*base, "-f", "json"])
    assert res.exit_code in (1, 3), res.output  # the broken file: an error record, the scan goes on
    by_name = {Path(r["path"]).name: r for r in json.loads(res.stdout)["results"]}
    bad, good = by_name["broken.jpg"], by_name["a.png"]
    assert bad["error"] and "evidence_map" not in bad
    assert set(good["evidence_map"]) == {"rows", "cols", "scores", "box", "peak"}
    res = runner.invoke(app, [*base, "-f", "csv"])
    rows = {Path(r["path"]).name: r for r in csv.DictReader(io.StringIO(res.stdout))}
    assert rows["broken.jpg"]["error"] and rows["broken.jpg"]["evidence_peak"] == ""
    assert float(rows["a.png"]["evidence_peak"]) == pytest.approx(good["evidence_map"]["peak"])
    assert [int(rows["a.png"][f"evidence_{k}"]) for k in ("x0", "y0", "x1", "y1")] == good["evidence_map"]["box"]
    res = runner.invoke(app, [*base, "-f", "jsonl"])
    lines = {Path(r["path"]).name: r for r in map(json.loads, res.stdout.splitlines())}
    assert lines["a.png"]["evidence_map"] == good["evidence_map"]
    res = runner.invoke(app, [*base, "-f", "table"])
    assert "{map peak" in res.stdout
    # Without --explain nothing changes: no key, no column.
    res = runner.invoke(app, [*base[:-4], "--no-progress", "--workers", "0", "-f", "csv"])
    assert "evidence_peak" not in res.stdout


def test_maps_never_overwrite_two_inputs_with_one_stem(tmp_path: Path, tiny_patch_checkpoint: Path) -> None:
    for sub, seed in (("a", 1), ("b", 2)):
        (tmp_path / sub).mkdir()
        _noise(64, 48, seed).save(tmp_path / sub / "photo.jpg")
    out = tmp_path / "maps"
    res = runner.invoke(app, ["scan", str(tmp_path / "a"), str(tmp_path / "b"), "-c", str(tiny_patch_checkpoint),
                              "--maps", str(out), "--no-progress", "--workers", "0", "-f", "jsonl"])
    assert res.exit_code in (0, 1), res.output
    pngs = sorted(out.glob("*.png"))
    assert len(pngs) == 2 and all(p.name.startswith("photo-") for p in pngs)
    assert all(Image.open(p).size == (64, 48) for p in pngs)
    assert all("evidence_map" in json.loads(line) for line in res.stdout.splitlines())


def test_region_rule_flags_only_with_a_calibrated_threshold(tmp_path: Path) -> None:
    _noise(64, 48, 5).save(tmp_path / "x.png")
    low = make_patch_checkpoint(tmp_path / "region.safetensors", region=0.0)  # any window flags
    args = ["scan", str(tmp_path / "x.png"), "--no-progress", "--workers", "0", "-f", "jsonl", "--threshold", "1"]
    plain = json.loads(runner.invoke(app, [*args, "-c", str(low)]).stdout)
    assert plain["label"] == "real"  # without --explain the map never changes a label
    res = runner.invoke(app, [*args, "-c", str(low), "--explain"])
    flagged = json.loads(res.stdout)
    assert (flagged["label"], flagged["reason"]) == ("fake", "region")
    assert res.exit_code == 1 and "1 of the fake labelled so by one region" in res.stderr
    none = make_patch_checkpoint(tmp_path / "noregion.safetensors")
    kept = json.loads(runner.invoke(app, [*args, "-c", str(none), "--explain"]).stdout)
    assert kept["label"] == "real" and kept["reason"] is None


def test_explain_needs_patch_taps(tmp_path: Path, tiny_checkpoint: Path) -> None:
    _noise(40, 40, 0).save(tmp_path / "x.png")
    res = runner.invoke(app, ["scan", str(tmp_path / "x.png"), "-c", str(tiny_checkpoint), "--explain"])
    assert res.exit_code == 2 and "patch-token taps" in res.stderr


def test_python_api_explain(tmp_path: Path, tiny_patch_checkpoint: Path) -> None:
    import causalclip_cli as cc

    _noise(64, 48, 4).save(tmp_path / "x.png")
    scanner = cc.load_detector(tiny_patch_checkpoint, device="cpu")
    (plain,) = scanner.score([tmp_path / "x.png"])
    assert plain.evidence_map is None and "evidence_map" not in plain.to_dict()
    (rec,) = scanner.explain([tmp_path / "x.png"])
    assert rec.evidence_map["rows"] * rec.evidence_map["cols"] == len(rec.evidence_map["scores"])
    (pil,) = scanner.explain(_noise(64, 48, 4))
    assert pil.evidence_map["scores"] == pytest.approx(rec.evidence_map["scores"], abs=0.02)
    (scanned,) = list(scanner.scan([tmp_path], explain=True))
    assert scanned.evidence_map is not None


@pytest.mark.real
def test_the_map_puts_the_mass_on_the_generated_half(shared_data: Path) -> None:
    """Real features: six held-out GPT-image-2 photo-like images and six held-out camera photos (the first of each
    in the release manifest's test split, never trained on), paired into half-and-half images both ways round.
    The generated half gets the higher cells, and the box lies mostly on it."""
    import csv as _csv

    import causalclip_cli as cc

    manifest = Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "release-manifest.csv"
    photoreal = Path(__file__).resolve().parents[2] / "benchmarks" / "subsets" / "photoreal-modern.txt"
    keep = set(photoreal.read_text().split())
    rows = [r for r in _csv.DictReader(manifest.open()) if r["split"] == "test"
            and r["generator"] == "modern_gpt-image-2"]
    rel = [(r["label"], r["path"].split("shared/data/", 1)[1]) for r in rows]
    fakes = [p for lab, p in rel if lab == "1" and p in keep][:6]
    reals = [p for lab, p in rel if lab == "0"][:6]
    assert len(fakes) == len(reals) == 6
    scanner = cc.load_detector(device="cpu", precision="fp32")
    margins, boxes = [], []
    for f, r in zip(fakes, reals, strict=True):
        fake = Image.open(shared_data / f).convert("RGB").resize((768, 512))
        real = Image.open(shared_data / r).convert("RGB").resize((768, 512))
        for left, right, generated_left in ((fake, real, True), (real, fake, False)):
            img = Image.new("RGB", (768, 512))
            img.paste(left.crop((0, 0, 384, 512)), (0, 0))
            img.paste(right.crop((384, 0, 768, 512)), (384, 0))
            (rec,) = scanner.explain(img)
            m = rec.evidence_map
            grid = np.asarray(m["scores"]).reshape(m["rows"], m["cols"])
            half = m["cols"] // 2
            gen, cam = (grid[:, :half], grid[:, half:]) if generated_left else (grid[:, half:], grid[:, :half])
            margins.append(gen.mean() - cam.mean())
            x0, _, x1, _ = m["box"]
            boxes.append(((min(x1, 384) - x0) if generated_left else (x1 - max(x0, 384))) / (x1 - x0))
    assert np.mean(margins) > 0.15, margins
    assert sum(d > 0 for d in margins) >= 11, margins
    assert sum(b >= 0.6 for b in boxes) >= 9, boxes


def test_extreme_aspect_ratios_stay_a_few_windows() -> None:
    from causalclip_cli.evidence.maps import window_layout

    strip = window_layout(5000, 2, 224, 16)
    assert (strip.width, strip.height) == (896, 224) and len(strip.windows) == 7
    photo = window_layout(4000, 3000, 224, 16)
    assert (photo.cols, photo.rows) == (19, 14) and len(photo.windows) == 2
    assert all(x % 16 == 0 and x + 224 <= photo.width for x, _ in photo.windows)
