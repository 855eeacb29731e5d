"""JSON Lines output that survives a kill: `scan --output FILE.jsonl`, and `--resume` to continue it.

A JSON Lines scan writes its records to a journal, the temporary file `.FILE.<hex>.tmp` beside FILE: whole
lines, one write and one fsync per scored batch. When the scan ends the journal is renamed over FILE, so
FILE is always a finished document (or, after Ctrl-C, the records so far). A run killed outright leaves its
journal behind; `--resume` adopts it together with what FILE already holds, scans only the other paths, and
writes the union through a new journal. A run without `--resume` leaves such leftovers alone until its own
output is committed, then removes them. Records of another checkpoint, precision or threshold are refused: a
file holds one model's verdicts.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import TextIO

from causalclip_cli.errors import UsageError
from causalclip_cli.scanning.output import FIELDS, ScanRecord, leftover_temporaries

# Records written before `reason` and `familiarity` existed (2026-11-28) lack them; they read as None.
REQUIRED = set(FIELDS) - {"reason", "familiarity"}


@dataclass
class Done:
    """What earlier runs left: the records of the output file and of killed runs' journals, one per path."""

    records: list[ScanRecord] = field(default_factory=list)
    lines: list[bytes] = field(default_factory=list)  # each record's line as it was written (with its newline)
    dropped_tail: bool = False  # a partial last line was found (cut off; its file is scanned again)
    leftovers: list[str] = field(default_factory=list)  # killed runs' journals (and other formats' temp files)
    from_leftovers: int = 0  # records that only a leftover journal held

    @property
    def paths(self) -> set[str]:
        return {r.path for r in self.records}

    @property
    def data(self) -> bytes:
        """The kept records as JSON Lines, ready to start a new journal with."""
        return b"".join(self.lines)


def _read(name: str) -> bytes | None:
    try:
        with open(name, "rb") as fh:
            return fh.read()
    except FileNotFoundError:
        return None
    except IsADirectoryError:
        raise UsageError(f"--output {name} is a directory") from None
    except OSError as exc:
        raise UsageError(f"--resume: cannot read {name}: {exc.strerror or exc}") from None


def _parse(data: bytes, name: str, done: Done, *, strict: bool) -> int:
    """Add the complete records of `data` not already in `done`; the count added. A line that is not a record
    is refused when `strict` (the output file) and ends the reading otherwise (a leftover of another format)."""
    end = data.rfind(b"\n") + 1
    done.dropped_tail |= end < len(data)
    seen = done.paths
    added = 0
    for number, line in enumerate(data[:end].splitlines(keepends=True), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            if not isinstance(obj, dict) or not REQUIRED <= set(obj):
                raise ValueError("not a scan record")
            rec = ScanRecord(**{k: obj.get(k) for k in FIELDS}, evidence_map=obj.get("evidence_map"))
        except (ValueError, TypeError):
            if not strict:
                break
            raise UsageError(f"--resume: {name} line {number} is not a causalclip JSONL record",
                             hint="resume only a file written by `causalclip scan --format jsonl --output`") from None
        if rec.path in seen:
            continue
        seen.add(rec.path)
        done.records.append(rec)
        done.lines.append(line)
        added += 1
    return added


def read_done(path: str | os.PathLike[str]) -> Done:
    """The complete records an output file and its killed runs' journals hold (nothing if there are none).

    The file's own records come first, then those only a leftover journal has, oldest journal first."""
    name = os.fspath(path)
    done = Done()
    data = _read(name)
    if data is not None:
        _parse(data, name, done, strict=True)
    _adopt_leftovers(name, done)
    return done


def _adopt_leftovers(name: str, done: Done) -> None:
    for leftover in leftover_temporaries(name):
        done.leftovers.append(leftover)
        data = _read(leftover)
        if data:
            done.from_leftovers += _parse(data, leftover, done, strict=False)


def count_leftover_records(path: str | os.PathLike[str]) -> tuple[list[str], int]:
    """Killed runs' temporary files beside `path`, and how many complete scan records they hold."""
    done = Done()
    _adopt_leftovers(os.fspath(path), done)
    return done.leftovers, done.from_leftovers


def check_same_run(done: Done, model: str, threshold: float, name: str, explain: bool = False) -> None:
    """Refuse to mix verdicts: every earlier record must come from this model (checkpoint and precision, as the
    `model` field says) at this threshold, and carry an evidence map exactly when this run adds them."""
    for rec in done.records:
        if rec.error is None and (rec.evidence_map is not None) != explain:
            have = "with" if rec.evidence_map is not None else "without"
            now = "adds evidence maps" if explain else "adds none"
            raise UsageError(f"--resume: {name} was written {have} --explain, and this scan {now}",
                             hint="resume with the same --explain/--maps, or write another --output")
        if rec.model != model:
            raise UsageError(f"--resume: {name} was written by model {rec.model}, this scan uses {model}",
                             hint="resume with the same --checkpoint and --precision, or write another --output")
        if rec.threshold != threshold:
            raise UsageError(f"--resume: {name} was written at threshold {rec.threshold}, this scan uses {threshold}",
                             hint="resume with the same --threshold, or write another --output")


class LineJournal:
    """A text stream over a journal file that reaches the disk in whole lines: `write` buffers, `commit`
    writes the buffered complete lines, flushes and fsyncs. The writer's per-record `flush` does not touch
    the file, so a kill at any moment leaves whole records, at most one scored batch short."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._pending = ""
        self.encoding = "utf-8"

    def isatty(self) -> bool:
        return False

    def write(self, text: str) -> int:
        self._pending += text
        return len(text)

    def flush(self) -> None:
        """Per-record flushes of the writer: nothing reaches the file before `commit`."""

    def commit(self) -> None:
        """Write every complete buffered line, then fsync."""
        cut = self._pending.rfind("\n") + 1
        if not cut:
            return
        self._stream.write(self._pending[:cut])
        self._pending = self._pending[cut:]
        self._stream.flush()
        os.fsync(self._stream.fileno())
