"""`scan --output FILE --resume`: a killed scan continues where it stopped and ends with the records of an
uninterrupted one; the file is valid JSON Lines at every moment; other models' files are refused."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from causalclip_cli.cli import app
from causalclip_cli.scanning.output import atomic_output, leftover_temporaries
from causalclip_cli.scanning.resume import LineJournal, read_done

runner = CliRunner()
N = 40


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """40 PNGs large enough (1400 px) that decoding makes a scan last a few seconds, one broken file."""
    d = tmp_path / "imgs"
    d.mkdir()
    y, x = np.mgrid[0:1400, 0:1400]
    for i in range(N):
        a = np.stack([(x + 7 * i) % 256, (y * 3 + i) % 256, ((x ^ y) + i) % 256], -1).astype(np.uint8)
        Image.fromarray(a).save(d / f"{i:02d}.png", compress_level=1)
    (d / "zz-broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 30)
    return d


def _args(folder: Path, ckpt: Path, out: Path, *extra: str) -> list[str]:
    return ["scan", str(folder), "-c", str(ckpt), "--batch-size", "2", "--workers", "0", "--no-progress",
            "-o", str(out), *extra]


def _lines(path: Path) -> list[dict]:
    text = path.read_text(encoding="utf-8")
    assert text == "" or text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]


def _full_scan(folder: Path, ckpt: Path, tmp_path: Path) -> list[dict]:
    ref = tmp_path / "uninterrupted.jsonl"
    res = runner.invoke(app, _args(folder, ckpt, ref))
    assert res.exit_code in (0, 1, 3), res.output
    records = _lines(ref)
    assert len(records) == N + 1 and records[-1]["error"]
    return records


def _journal(out: Path) -> Path | None:
    found = sorted(out.parent.glob(f".{out.name}.*.tmp"))
    assert len(found) <= 1, found
    return found[0] if found else None


def _kill_mid_scan(cmd: list[str], out: Path, at_least: int) -> int:
    """Start `cmd`, SIGKILL it once its journal holds `at_least` records: no handler, no cleanup, mid-scan.
    Returns the number of complete records the journal held when it died."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None:
        journal = _journal(out)
        if journal is not None and journal.read_bytes().count(b"\n") >= at_least:
            break
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the scan ended before it could be killed"
    journal = _journal(out)
    assert journal is not None, "the killed run left no journal"
    return journal.read_bytes().count(b"\n")


@pytest.mark.parametrize("first_run", [[], ["--resume"]], ids=["plain-output", "resumed-output"])
def test_killed_scan_resumes_to_the_uninterrupted_records(folder: Path, tiny_checkpoint: Path, tmp_path: Path,
                                                          first_run: list[str]) -> None:
    out = tmp_path / "out.jsonl"
    cmd = [sys.executable, "-m", "causalclip_cli", *_args(folder, tiny_checkpoint, out), *first_run]
    written = _kill_mid_scan(cmd, out, at_least=6)
    # Nothing half-written looks finished: the output file does not exist until a run ends.
    assert not out.exists()
    kept = _journal(out).read_bytes()
    assert 6 <= written < N, written

    res = runner.invoke(app, [*_args(folder, tiny_checkpoint, out), "--resume"])
    assert res.exit_code in (0, 1, 3), res.output
    assert f"{written} record(s) kept ({written} from an interrupted run's temporary file)" in res.stderr
    # Only what was not yet written is scanned again; the summary counts both.
    assert f"{N + 1 - written} file(s) to scan" in res.stderr
    assert f"{N + 1} image(s): {written} from the earlier run, {N + 1 - written} scanned" in res.stderr
    resumed = _lines(out)
    assert resumed[:written] == [json.loads(x) for x in kept.splitlines()]
    assert resumed == _full_scan(folder, tiny_checkpoint, tmp_path)
    assert _journal(out) is None  # the adopted journal is gone once the output is committed


def test_killed_resume_keeps_both_runs_work(folder: Path, tiny_checkpoint: Path, tmp_path: Path) -> None:
    """A resumed run killed in turn: its journal holds the first run's records too, and a third run finishes."""
    out = tmp_path / "out.jsonl"
    full = _full_scan(folder, tiny_checkpoint, tmp_path)
    lines = (tmp_path / "uninterrupted.jsonl").read_bytes().splitlines(keepends=True)
    out.write_bytes(b"".join(lines[:5]))  # an earlier run's finished file with 5 records
    cmd = [sys.executable, "-m", "causalclip_cli", *_args(folder, tiny_checkpoint, out), "--resume"]
    written = _kill_mid_scan(cmd, out, at_least=11)
    assert out.read_bytes() == b"".join(lines[:5])  # the finished file is untouched until a run ends
    res = runner.invoke(app, [*_args(folder, tiny_checkpoint, out), "--resume"])
    assert res.exit_code in (0, 1, 3), res.output
    assert f"{written} record(s) kept ({written - 5} from an interrupted run's temporary file)" in res.stderr
    assert _lines(out) == full


def test_a_plain_rerun_notes_and_then_removes_a_killed_runs_journal(folder: Path, tiny_checkpoint: Path,
                                                                    tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    cmd = [sys.executable, "-m", "causalclip_cli", *_args(folder, tiny_checkpoint, out)]
    written = _kill_mid_scan(cmd, out, at_least=4)
    res = runner.invoke(app, _args(folder, tiny_checkpoint, out))
    assert res.exit_code in (0, 1, 3), res.output
    assert f"left {written} record(s)" in res.stderr and "add --resume to keep them" in res.stderr
    assert _lines(out) == _full_scan(folder, tiny_checkpoint, tmp_path)
    assert _journal(out) is None  # never silently accumulated


def test_a_truncated_last_line_is_dropped_and_rescanned(folder: Path, tiny_checkpoint: Path, tmp_path: Path) -> None:
    full = _full_scan(folder, tiny_checkpoint, tmp_path)
    out = tmp_path / "cut.jsonl"
    data = (tmp_path / "uninterrupted.jsonl").read_bytes()
    lines = data.splitlines(keepends=True)
    out.write_bytes(b"".join(lines[:7]) + lines[7][:25])  # 7 whole records and half of the 8th
    done = read_done(out)
    assert len(done.records) == 7 and done.dropped_tail
    res = runner.invoke(app, [*_args(folder, tiny_checkpoint, out), "--resume"])
    assert res.exit_code in (0, 1, 3), res.output
    assert "truncated last line" in res.stderr
    assert _lines(out) == full
    # Resuming a finished scan scans nothing and changes nothing; the summary still counts every file.
    before = out.read_bytes()
    res = runner.invoke(app, [*_args(folder, tiny_checkpoint, out), "--resume"])
    assert res.exit_code in (0, 1, 3), res.output
    assert "0 file(s) to scan" in res.stderr and f"{N + 1} image(s): {N + 1} from the earlier run" in res.stderr
    assert out.read_bytes() == before


def test_resume_without_a_file_is_a_plain_scan(folder: Path, tiny_checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "new.jsonl"
    res = runner.invoke(app, [*_args(folder, tiny_checkpoint, out), "--resume"])
    assert res.exit_code in (0, 1, 3), res.output
    assert _lines(out) == _full_scan(folder, tiny_checkpoint, tmp_path)


@pytest.mark.parametrize("change", [["--threshold", "0.25"], ["--precision", "int8"], ["-c", "OTHER"]])
def test_resume_refuses_another_model_threshold_or_precision(folder: Path, tiny_checkpoint: Path, tmp_path: Path,
                                                             change: list[str]) -> None:
    out = tmp_path / "out.jsonl"
    first = json.dumps({"path": str(folder / "00.png"), "probability": 0.5, "label": "fake", "threshold": 0.5,
                        "model": "tiny:causalclip:causalclip-tiny", "width": 1, "height": 1, "error": None,
                        "provenance": None})
    if change[0] == "-c":
        first = first.replace("tiny:causalclip", "other-head:causalclip")
        change = []
    out.write_text(first + "\n")
    res = runner.invoke(app, [*_args(folder, tiny_checkpoint, out), "--resume", *change])
    assert res.exit_code == 2, res.output
    assert "--resume" in res.stderr and ("threshold" in res.stderr or "model" in res.stderr)
    assert out.read_text() == first + "\n"  # untouched


@pytest.mark.parametrize("extra", [[], ["-o", "x.csv", "-f", "csv"], ["-o", "x.json", "-f", "json"],
                                   ["-o", "x.jsonl", "--engine", "ray"]])
def test_resume_needs_a_local_jsonl_output(tmp_path: Path, tiny_checkpoint: Path, extra: list[str],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    Image.new("RGB", (40, 40)).save(tmp_path / "a.png")
    res = runner.invoke(app, ["scan", str(tmp_path / "a.png"), "-c", str(tiny_checkpoint), "--resume", *extra])
    assert res.exit_code == 2, res.output
    assert "--resume" in res.stderr
    assert not list(tmp_path.glob("x.*"))


def test_not_a_record_file_is_refused(tmp_path: Path, tiny_checkpoint: Path) -> None:
    out = tmp_path / "notes.jsonl"
    out.write_text("hello\n")
    Image.new("RGB", (40, 40)).save(tmp_path / "a.png")
    res = runner.invoke(app, ["scan", str(tmp_path / "a.png"), "-c", str(tiny_checkpoint), "-o", str(out),
                              "--resume"])
    assert res.exit_code == 2 and "line 1 is not a causalclip JSONL record" in res.stderr
    assert out.read_text() == "hello\n"


def test_line_journal_writes_whole_lines_per_commit(tmp_path: Path) -> None:
    path = tmp_path / "f.jsonl"
    with open(path, "w", encoding="utf-8", newline="") as fh:
        stream = LineJournal(fh)
        stream.write('{"d": 4}\n{"e"')
        stream.flush()
        assert path.read_bytes() == b""  # nothing before the batch is committed
        stream.commit()
        assert path.read_bytes() == b'{"d": 4}\n'  # whole lines only
        stream.write(': 5}\n')
        stream.commit()
    assert path.read_bytes() == b'{"d": 4}\n{"e": 5}\n'


def test_a_live_runs_temporary_file_is_not_a_leftover(tmp_path: Path) -> None:
    """A run still writing holds a lock on its temporary file: another run neither adopts nor removes it."""
    target = tmp_path / "out.jsonl"
    dead = tmp_path / ".out.jsonl.deadbeef.tmp"
    dead.write_text("")
    with atomic_output(target) as fh:
        fh.write("x\n")
        fh.flush()
        assert leftover_temporaries(target) == [str(dead)]
        # a scan to another file with a similar name is not ours
        (tmp_path / ".out.jsonl.old.other").write_text("")
    assert leftover_temporaries(target) == [str(dead)]


def test_resume_refuses_to_mix_records_with_and_without_maps(tmp_path: Path, tiny_patch_checkpoint: Path) -> None:
    Image.new("RGB", (40, 40)).save(tmp_path / "a.png")
    Image.new("RGB", (40, 40), (9, 9, 9)).save(tmp_path / "b.png")
    out = tmp_path / "out.jsonl"
    base = ["scan", str(tmp_path / "a.png"), "-c", str(tiny_patch_checkpoint), "-o", str(out), "--no-progress",
            "--workers", "0"]
    assert runner.invoke(app, base).exit_code in (0, 1)
    before = out.read_text()
    res = runner.invoke(app, [*base[:2], str(tmp_path / "b.png"), *base[2:], "--resume", "--explain"])
    assert res.exit_code == 2 and "without --explain" in res.stderr
    assert out.read_text() == before
