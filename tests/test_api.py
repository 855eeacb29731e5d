"""The Python API at the package top: light to import, and the same records as the CLI for the same files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

import causalclip_cli
from causalclip_cli.cli import app

runner = CliRunner()




def _cli_records(paths: list[str], ckpt: Path, *extra: str) -> list[dict]:
    res = runner.invoke(app, ["scan", *paths, "-c", str(ckpt), "--workers", "0", "--no-progress",
                              "--format", "jsonl", *extra])
    assert res.exit_code in (0, 1, 3), res.output
    return [json.loads(line) for line in res.stdout.splitlines() if line.strip()]


def _as_json(records: list) -> list[dict]:
    """What the JSONL writer makes of API records (probability rounded, as in the file)."""
    import io

    from causalclip_cli.scanning.output import JsonlWriter

    buf = io.StringIO()
    writer = JsonlWriter(buf)
    for r in records:
        writer.write(r)
    writer.close()
    return [json.loads(line) for line in buf.getvalue().splitlines()]


def test_import_is_light_and_public_names_are_listed() -> None:
    code = ("import sys, causalclip_cli as c; assert 'torch' not in sys.modules, 'torch imported'; "
            "assert callable(c.load_detector) and callable(c.read_provenance); "
            "assert 'torch' not in sys.modules, 'torch imported by the API names'")
    subprocess.run([sys.executable, "-c", code], check=True)
    assert set(causalclip_cli.__all__) == {"ScanRecord", "Scanner", "__version__", "load_detector",
                                           "read_provenance"}
    for name in causalclip_cli.__all__:
        assert getattr(causalclip_cli, name) is not None
    with pytest.raises(AttributeError):
        causalclip_cli.scan_records  # noqa: B018 - internals are not re-exported


def test_scan_gives_the_cli_records(photos: Path, tiny_checkpoint: Path) -> None:
    det = causalclip_cli.load_detector(tiny_checkpoint, device="cpu")
    api = list(det.scan([str(photos), str(photos / "missing.png")]))
    cli = _cli_records([str(photos), str(photos / "missing.png")], tiny_checkpoint)
    assert _as_json(api) == cli
    assert all(isinstance(r, causalclip_cli.ScanRecord) for r in api)
    assert {r["error"] is not None for r in cli} == {True, False}  # broken file and missing path included
    assert det.last_summary is not None and det.last_summary.total == len(cli)


def test_score_gives_the_cli_records_for_files_and_images(photos: Path, tiny_checkpoint: Path) -> None:
    det = causalclip_cli.load_detector(str(tiny_checkpoint), device="cpu", threshold=0.0)
    files = [str(photos / "img 2.jpg"), str(photos / "broken.jpg"), str(photos / "img 0.jpg"),
             str(photos / "readme.txt")]
    got = _as_json(det.score(files))
    want = {r["path"]: r for r in _cli_records(files, tiny_checkpoint, "--threshold", "0.0")}
    assert [r["path"] for r in got] == files  # input order, not path order; the non-image is an error
    assert got == [want[f] for f in files]

    with Image.open(photos / "img 2.jpg") as im:
        im.load()
        opened = det.score(im)  # a single image, opened from a file: same pixels, same probability
        mem = det.score([im.convert("RGB").copy()])
    assert opened[0].path == files[0]
    assert round(opened[0].probability, 6) == got[0]["probability"]
    assert mem[0].path == "<image 0>" and mem[0].provenance is None
    assert round(mem[0].probability, 6) == got[0]["probability"]
    assert (mem[0].width, mem[0].height) == (50, 40)
    assert det.threshold == 0.0 and det.model == got[0]["model"]


def test_read_provenance_matches_the_scan_field(tmp_path: Path, tiny_checkpoint: Path) -> None:
    from PIL import PngImagePlugin

    meta = PngImagePlugin.PngInfo()
    meta.add_text("parameters", "a cat\nSteps: 20, Sampler: Euler a, Model: sd_xl_base_1.0")
    path = tmp_path / "gen.png"
    Image.new("RGB", (40, 40), (9, 9, 9)).save(path, pnginfo=meta)
    prov = causalclip_cli.read_provenance(path)
    assert prov == _cli_records([str(path)], tiny_checkpoint)[0]["provenance"]
    assert prov["says"] != "unknown"
    from causalclip_cli.errors import ImageError

    with pytest.raises(ImageError):
        causalclip_cli.read_provenance(tmp_path / "missing.png")
