"""Writers, atomic output and scan summary: every format parses back, weird paths survive, no half files."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import stat

import pytest

from causalclip_cli.errors import UsageError
from causalclip_cli.scanning.output import (
    CSV_FIELDS,
    FIELDS,
    FORMATS,
    ScanRecord,
    ScanSummary,
    atomic_output,
    default_format,
    histogram_bar,
    make_writer,
    render_summary,
    terminal_safe,
)

SURROGATE_PATH = os.fsdecode(b"bad\xff.jpg")
WEIRD_PATHS = [
    "plain.jpg",
    "with space/and,comma.png",
    "quote\"d 'name'.jpg",
    "new\nline.jpg",
    "tab\there\r.jpg",
    SURROGATE_PATH,
    "ünïcødé/写真.webp",
    "[red]markup[/red] :smile:.jpg",
    "\x1b[31mescape\u202espoof.jpg",
]
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def rec(path="a.jpg", p=0.9, label="fake", **kw) -> ScanRecord:
    base = dict(threshold=0.5, model="clip-vit-b16/causalclip-v1", width=640, height=480, error=None)
    base.update(kw)
    return ScanRecord(path=path, probability=p, label=label, **base)


def records() -> list[ScanRecord]:
    out = [rec(path, p=0.123456789, label="real") for path in WEIRD_PATHS]
    out.append(ScanRecord.failed("broken\n.jpg", "cannot identify image file 'broken\n.jpg'", threshold=0.5, model="m"))
    out.append(
        rec(
            os.fsdecode(b"err\xfe.png"),
            p=None,
            label=None,
            width=None,
            height=None,
            error=f"truncated: {SURROGATE_PATH}",
        )
    )
    return out


class FlushCounter(io.StringIO):
    """Records what had been written at each flush()."""

    def __init__(self) -> None:
        super().__init__()
        self.flushed: list[str] = []

    def flush(self) -> None:
        super().flush()
        self.flushed.append(self.getvalue())


@pytest.fixture
def no_color_env(monkeypatch):
    for var in ("FORCE_COLOR", "TTY_COMPATIBLE", "NO_COLOR", "COLUMNS"):
        monkeypatch.delenv(var, raising=False)


def run_writer(fmt: str, recs: list[ScanRecord]) -> str:
    stream = io.StringIO()
    with make_writer(fmt, stream) as w:
        for r in recs:
            w.write(r)
    return stream.getvalue()


def test_record_to_dict_key_order():
    d = rec().to_dict()
    assert tuple(d) == FIELDS == ("path", "probability", "label", "reason", "familiarity", "threshold", "model",
                                  "width", "height", "error", "provenance")
    assert d["probability"] == 0.9 and d["error"] is None


# ---------------------------------------------------------------- jsonl


def test_jsonl_roundtrip_and_rounding():
    recs = records()
    lines = run_writer("jsonl", recs).splitlines()
    assert len(lines) == len(recs)
    parsed = [json.loads(line) for line in lines]
    for r, d in zip(recs, parsed, strict=True):
        assert list(d) == list(FIELDS)
        assert d["path"] == r.path  # lossless, surrogates included
        assert d["error"] == r.error
    assert parsed[0]["probability"] == 0.123457
    assert parsed[-1]["probability"] is None and parsed[-1]["label"] is None


def test_jsonl_flushes_each_record():
    stream = FlushCounter()
    w = make_writer("jsonl", stream)
    for i in range(3):
        w.write(rec(f"{i}.jpg"))
        # The record must be visible to a reader by the time write() returns.
        assert stream.flushed and stream.flushed[-1].count("\n") == i + 1
    assert len(stream.flushed) == 3
    w.close()


def test_jsonl_is_ascii_and_never_nan():
    out = run_writer("jsonl", [rec(SURROGATE_PATH), rec("x.jpg", p=float("nan"))])
    out.encode("ascii")
    assert "\\udcff" in out
    assert json.loads(out.splitlines()[1])["probability"] is None


# ---------------------------------------------------------------- json


def test_json_roundtrip():
    recs = records()
    doc = json.loads(run_writer("json", recs))
    assert list(doc) == ["results"]
    assert [d["path"] for d in doc["results"]] == [r.path for r in recs]
    assert all(list(d) == list(FIELDS) for d in doc["results"])


def test_json_zero_records():
    assert json.loads(run_writer("json", [])) == {"results": []}


def test_json_streams_before_close_and_close_is_idempotent():
    stream = io.StringIO()
    w = make_writer("json", stream)
    w.write(rec("first.jpg"))
    assert "first.jpg" in stream.getvalue()
    w.close()
    w.close()
    assert len(json.loads(stream.getvalue())["results"]) == 1
    with pytest.raises(ValueError):
        w.write(rec())


# ---------------------------------------------------------------- csv


def test_csv_roundtrip():
    recs = records()
    rows = list(csv.DictReader(io.StringIO(run_writer("csv", recs), newline="")))
    assert len(rows) == len(recs)
    for r, row in zip(recs, rows, strict=True):
        assert list(row) == list(CSV_FIELDS)
        assert row["model"] == r.model
    assert rows[1]["path"] == "with space/and,comma.png"
    assert rows[2]["path"] == "quote\"d 'name'.jpg"
    assert rows[3]["path"] == "new\nline.jpg"
    assert rows[4]["path"] == "tab\there\r.jpg"
    assert rows[5]["path"] == "bad\\xff.jpg"  # the undecodable byte, shown as an escape
    assert rows[6]["path"] == "ünïcødé/写真.webp"
    assert rows[0]["probability"] == "0.123457" and rows[0]["width"] == "640"
    assert rows[-2]["probability"] == "" and rows[-2]["width"] == ""
    assert rows[-1]["error"] == "truncated: bad\\xff.jpg"


def test_csv_zero_records_is_header_only():
    out = run_writer("csv", [])
    assert out == ",".join(CSV_FIELDS) + "\r\n"
    assert list(csv.DictReader(io.StringIO(out))) == []


def test_csv_on_narrow_encoding_does_not_crash():
    raw = io.BytesIO()
    stream = io.TextIOWrapper(raw, encoding="ascii", newline="")
    with make_writer("csv", stream) as w:
        for r in records():
            w.write(r)
    stream.flush()
    text = raw.getvalue().decode("ascii")
    assert "\\u5199\\u771f" in text  # 写真, escaped rather than raising


# ---------------------------------------------------------------- table


def test_table_one_line_per_record(no_color_env):
    recs = records()
    out = run_writer("table", recs)
    lines = out.splitlines()
    assert len(lines) == 1 + len(recs)
    assert lines[0].split() == ["label", "fake_p", "size", "metadata", "path"]
    assert not ANSI.search(out)  # not a terminal: no colour codes
    assert "\x1b" not in out and "\u202e" not in out
    body = "\n".join(lines[1:])
    assert "new\\nline.jpg" in body
    assert "bad\\xff.jpg" in body
    assert "[red]markup[/red] :smile:.jpg" in body  # literal, not rich markup/emoji
    assert "\\x1b[31mescape\\u202espoof.jpg" in body
    assert lines[1].startswith("real") and "0.1235" in lines[1] and "640x480" in lines[1]
    assert lines[-2].startswith("error") and "(cannot identify image file 'broken\\n.jpg')" in lines[-2]


def test_table_long_path_not_wrapped(no_color_env):
    path = "d/" * 200 + "x.jpg"
    lines = run_writer("table", [rec(path)]).splitlines()
    assert len(lines) == 2 and lines[1].endswith(path)


def test_table_colours_on_terminal(monkeypatch, no_color_env):
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setenv("TERM", "xterm-256color")
    stream = Tty()
    with make_writer("table", stream) as w:
        w.write(rec("a.jpg", label="fake"))
    assert ANSI.search(stream.getvalue())
    assert len(stream.getvalue().splitlines()) == 2


def test_table_empty_prints_nothing(no_color_env):
    assert run_writer("table", []) == ""


def test_terminal_safe():
    assert terminal_safe("ok/é 写.jpg") == "ok/é 写.jpg"
    assert terminal_safe("a\nb\x07\x9b") == "a\\nb\\x07\\x9b"
    assert terminal_safe(SURROGATE_PATH) == "bad\\xff.jpg"
    assert terminal_safe("\ud800") == "\\ud800"


# ---------------------------------------------------------------- misc


def test_make_writer_formats_and_unknown():
    for fmt in FORMATS:
        make_writer(fmt, io.StringIO()).close()
    with pytest.raises(UsageError):
        make_writer("xml", io.StringIO())


def test_default_format():
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert default_format(Tty()) == "table"
    assert default_format(io.StringIO()) == "jsonl"
    closed = io.StringIO()
    closed.close()
    assert default_format(closed) == "jsonl"


# ---------------------------------------------------------------- atomic_output


def test_atomic_output_success_replaces(tmp_path):
    target = tmp_path / "out.json"
    target.write_text("old")
    os.chmod(target, 0o640)
    with atomic_output(target) as f, make_writer("json", f) as w:
        w.write(rec())
        assert target.read_text() == "old"  # nothing visible until commit
    assert json.loads(target.read_text())["results"][0]["path"] == "a.jpg"
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
    assert os.listdir(tmp_path) == ["out.json"]


def test_atomic_output_new_file_uses_umask(tmp_path):
    umask = os.umask(0o022)
    try:
        with atomic_output(tmp_path / "new.jsonl") as f:
            f.write("x\n")
    finally:
        os.umask(umask)
    assert stat.S_IMODE((tmp_path / "new.jsonl").stat().st_mode) == 0o644


def test_atomic_output_exception_leaves_nothing(tmp_path):
    target = tmp_path / "out.csv"
    with pytest.raises(RuntimeError), atomic_output(target) as f:
        f.write("partial")
        raise RuntimeError("boom")
    assert os.listdir(tmp_path) == []


def test_atomic_output_exception_keeps_existing_file(tmp_path):
    target = tmp_path / "out.csv"
    target.write_text("previous run")
    with pytest.raises(RuntimeError), atomic_output(target) as f:
        f.write("partial")
        raise RuntimeError("boom")
    assert target.read_text() == "previous run"
    assert os.listdir(tmp_path) == ["out.csv"]


def test_atomic_output_interrupt_commits_well_formed(tmp_path):
    target = tmp_path / "out.json"
    with pytest.raises(KeyboardInterrupt), atomic_output(target) as f, make_writer("json", f) as w:
        w.write(rec("1.jpg"))
        w.write(rec("2.jpg"))
        raise KeyboardInterrupt
    assert [d["path"] for d in json.loads(target.read_text())["results"]] == ["1.jpg", "2.jpg"]
    assert os.listdir(tmp_path) == ["out.json"]


def test_atomic_output_interrupt_without_commit(tmp_path):
    with pytest.raises(KeyboardInterrupt), atomic_output(tmp_path / "o.jsonl", commit_on_interrupt=False):
        raise KeyboardInterrupt
    assert os.listdir(tmp_path) == []


def test_atomic_output_writes_through_symlink(tmp_path):
    real = tmp_path / "real.csv"
    real.write_text("old")
    link = tmp_path / "link.csv"
    link.symlink_to(real)
    with atomic_output(link) as f:
        f.write("new")
    assert link.is_symlink() and real.read_text() == "new"


def test_atomic_output_rejects_directory_and_missing_parent(tmp_path):
    with pytest.raises(IsADirectoryError), atomic_output(tmp_path):
        pass
    with pytest.raises(FileNotFoundError), atomic_output(tmp_path / "no" / "such.json"):
        pass


def test_atomic_output_weird_paths_all_formats(tmp_path):
    for fmt in FORMATS:
        target = tmp_path / f"out.{fmt}"
        with atomic_output(target) as f, make_writer(fmt, f) as w:
            for r in records():
                w.write(r)
        assert target.stat().st_size > 0
    assert len(json.loads((tmp_path / "out.json").read_text(encoding="utf-8"))["results"]) == len(records())


# ---------------------------------------------------------------- summary


def test_summary_counts_and_histogram():
    s = ScanSummary(skipped=4, seconds=2.0)
    probs = [0.0, 0.05, 0.1, 0.3, 0.7, 0.99, 1.0, 1.0]
    for p in probs:
        s.add(rec(p=p, label="fake" if p >= 0.5 else "real"))
    s.add(rec(p=0.5, label="uncertain"))
    s.add(rec(p=None, label=None, error="bad"))
    s.add(rec(p=float("nan"), label="real"))
    assert s.counts == {"real": 5, "fake": 4, "uncertain": 1}
    assert s.errors == 1 and s.total == 11
    assert s.histogram == [2, 1, 0, 1, 0, 1, 0, 1, 0, 3]
    assert s.images_per_second == pytest.approx(5.5)
    d = s.to_dict()
    assert d["histogram"] == s.histogram and d["skipped"] == 4 and d["interrupted"] is False
    json.dumps(d)
    assert ScanSummary().images_per_second == 0.0


def test_histogram_bar():
    assert histogram_bar(0, 10) == ""
    assert histogram_bar(10, 10) == "█" * 40
    assert histogram_bar(5, 10) == "█" * 20
    assert histogram_bar(1, 1000) == "▏"  # non-empty bins stay visible
    assert histogram_bar(3, 64, width=8) == "▍"  # 3/64 of 8 cells = 3 eighths
    assert histogram_bar(10, 10, unicode=False) == "#" * 40


def test_render_summary():
    s = ScanSummary(skipped=2, seconds=4.0, interrupted=True)
    for p in (0.01, 0.02, 0.95):
        s.add(rec(p=p, label="fake" if p > 0.5 else "real"))
    out = io.StringIO()
    render_summary(s, out)
    text = out.getvalue()
    assert "3 image(s) in 4.0 s (0.8 images/s)" in text
    assert re.search(r"real\s+2\b", text) and re.search(r"skipped\s+2\b", text)
    assert "interrupted" in text
    bins = [line for line in text.splitlines() if re.match(r"\s+\d\.\d-\d\.\d ", line)]
    assert len(bins) == 10
    assert bins[0].split() == ["0.0-0.1", "█" * 40, "2"]
    assert bins[9].split() == ["0.9-1.0", "█" * 20, "1"]
    assert all(len(b) <= 2 + 7 + 1 + 40 + 1 + 6 for b in bins)


def test_render_summary_ascii_stream_and_empty():
    raw = io.BytesIO()
    stream = io.TextIOWrapper(raw, encoding="ascii")
    s = ScanSummary()
    s.add(rec(p=0.2, label="real"))
    render_summary(s, stream)
    assert "#" * 40 in raw.getvalue().decode("ascii")
    out = io.StringIO()
    render_summary(ScanSummary(), out)
    assert "0 image(s)" in out.getvalue() and "fake probability" not in out.getvalue()


def test_atomic_output_removes_replaced_leftovers_only_after_commit(tmp_path):
    target = tmp_path / "out.csv"
    left = tmp_path / ".out.csv.0badf00d.tmp"
    left.write_text("a killed run's partial document")
    with pytest.raises(RuntimeError), atomic_output(target, replaces=[str(left)]) as f:
        f.write("partial")
        raise RuntimeError("boom")
    assert left.exists()  # a failed run removes nothing
    with atomic_output(target, replaces=[str(left)]) as f:
        f.write("done")
    assert os.listdir(tmp_path) == ["out.csv"]


def test_atomic_output_keep_on_error_leaves_the_journal(tmp_path):
    target = tmp_path / "out.jsonl"
    with pytest.raises(RuntimeError), atomic_output(target, keep_on_error=True) as f:
        f.write('{"a": 1}\n')
        raise RuntimeError("boom")
    (left,) = tmp_path.iterdir()
    assert left.name.startswith(".out.jsonl.") and left.read_text() == '{"a": 1}\n'
    assert not target.exists()
