"""`scan --output FILE.jsonl --resume`: keep the records already in FILE, scan only the other paths, append.

The file stays a valid JSON Lines document at every moment: a truncated last line (a killed run) is cut off
before anything is appended, and new records are appended in whole lines, one write and one fsync per
scored batch. Records of another checkpoint, precision or threshold are refused: a file holds one model's
verdicts.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

from causalclip_cli.errors import UsageError
from causalclip_cli.scanning.output import FIELDS, ScanRecord

# Records written before `reason` and `familiarity` existed (2026-11-28) lack them; they read as None.
REQUIRED = set(FIELDS) - {"reason", "familiarity"}


@dataclass
class Done:
    """What an earlier run left in the output file."""

    records: list[ScanRecord] = field(default_factory=list)
    keep_bytes: int = 0  # the file's valid prefix: whole lines only
    dropped_tail: bool = False  # a partial last line was found (and will be cut off and rescanned)

    @property
    def paths(self) -> set[str]:
        return {r.path for r in self.records}


def read_done(path: str | os.PathLike[str]) -> Done:
    """The complete records of an existing JSONL output file (nothing if there is no file)."""
    name = os.fspath(path)
    try:
        with open(name, "rb") as fh:
            data = fh.read()
    except FileNotFoundError:
        return Done()
    except IsADirectoryError:
        raise UsageError(f"--output {name} is a directory") from None
    except OSError as exc:
        raise UsageError(f"--resume: cannot read {name}: {exc.strerror or exc}") from None
    done = Done()
    end = data.rfind(b"\n") + 1
    done.keep_bytes = end
    done.dropped_tail = end < len(data)
    for number, line in enumerate(data[:end].splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            if not isinstance(obj, dict) or not REQUIRED <= set(obj):
                raise ValueError("not a scan record")
            done.records.append(ScanRecord(**{k: obj.get(k) for k in FIELDS}))
        except (ValueError, TypeError):
            raise UsageError(f"--resume: {name} line {number} is not a causalclip JSONL record",
                             hint="resume only a file written by `causalclip scan --format jsonl --output`") from None
    return done


def check_same_run(done: Done, model: str, threshold: float, name: str) -> None:
    """Refuse to mix verdicts: every earlier record must come from this model (checkpoint and precision, as the
    `model` field says) at this threshold."""
    for rec in done.records:
        if rec.model != model:
            raise UsageError(f"--resume: {name} was written by model {rec.model}, this scan uses {model}",
                             hint="resume with the same --checkpoint and --precision, or write another --output")
        if rec.threshold != threshold:
            raise UsageError(f"--resume: {name} was written at threshold {rec.threshold}, this scan uses {threshold}",
                             hint="resume with the same --threshold, or write another --output")


class AppendStream:
    """A text stream that appends whole lines to FILE: `write` buffers, `commit` writes the buffered complete
    lines with one os.write and fsyncs. The writer's per-record `flush` does not touch the file."""

    def __init__(self, path: str | os.PathLike[str], keep_bytes: int) -> None:
        self.name = os.fspath(path)
        self._fd = os.open(self.name, os.O_WRONLY | os.O_CREAT | getattr(os, "O_BINARY", 0), 0o666)
        try:
            # Cut a partial last line (a killed run) before appending; durable before the first new record.
            os.ftruncate(self._fd, keep_bytes)
            os.fsync(self._fd)
            os.lseek(self._fd, keep_bytes, os.SEEK_SET)
        except BaseException:
            os.close(self._fd)
            raise
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
        """Append every complete buffered line in one write, then fsync."""
        cut = self._pending.rfind("\n") + 1
        if not cut:
            return
        data = self._pending[:cut].encode("utf-8")
        self._pending = self._pending[cut:]
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view):]
        os.fsync(self._fd)

    def close(self) -> None:
        if self._fd >= 0:
            try:
                self.commit()
            finally:
                os.close(self._fd)
                self._fd = -1

    def __enter__(self) -> AppendStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
