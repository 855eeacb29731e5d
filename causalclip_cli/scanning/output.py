"""Result writers for `causalclip scan`: table, JSON Lines, JSON and CSV, plus the scan summary.

Everything here consumes plain records (no tensors, no torch) so the writers can be tested and reused
without a model. Writers stream: results arrive batch by batch during a long scan and each format emits
them as they come, while `close()` finishes the document so that even an interrupted scan leaves
well-formed output.
"""

from __future__ import annotations

import bisect
import contextlib
import csv
import json
import math
import os
import secrets
import stat
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TextIO

from rich.console import Console
from rich.text import Text

from causalclip_cli.errors import UsageError

FORMATS = ("table", "jsonl", "json", "csv")
LABELS = ("real", "fake", "uncertain")
FIELDS = ("path", "probability", "label", "reason", "familiarity", "threshold", "model", "width", "height", "error",
          "provenance")
# CSV has no nesting: the provenance object becomes these columns (see provenance_columns).
PROVENANCE_CSV = ("provenance_says", "provenance_evidence", "c2pa_state", "c2pa_signer", "c2pa_claim_generator",
                  "c2pa_digital_source_type", "exif_camera", "exif_datetime", "generator_tool", "generator_model")
CSV_FIELDS = (*FIELDS[:-1], *PROVENANCE_CSV)
# `scan --explain` adds the strongest region of the evidence map (the whole grid does not fit a cell).
EVIDENCE_CSV = ("evidence_peak", "evidence_x0", "evidence_y0", "evidence_x1", "evidence_y1")
PROBABILITY_DECIMALS = 6


@dataclass
class ScanRecord:
    """One scanned file. `probability`/`label` are None (and `error` is set) when it could not be read."""

    path: str
    probability: float | None
    label: str | None
    threshold: float
    model: str
    width: int | None = None
    height: int | None = None
    error: str | None = None
    # What the file's metadata says about its origin (provenance.read_provenance); never used by the model.
    provenance: dict | None = None
    # Why the label is `uncertain`: "band" (score in the abstain band) or "unfamiliar" (a `fake` score on an
    # image unlike the head's training data); None otherwise.
    reason: str | None = None
    # Conformal p-value of the image's distance to the head's training features (familiarity.py): small means
    # unlike anything the head was trained on. None when the checkpoint carries no reference.
    familiarity: float | None = None
    # `scan --explain`: {"rows", "cols", "scores" (row-major from the top left), "box" [x0, y0, x1, y1] in the
    # image's pixels, "peak"} (evidence/maps.py); None without --explain, and then absent from `to_dict()`.
    evidence_map: dict | None = None

    @classmethod
    def failed(cls, path: str, error: str, *, threshold: float, model: str) -> ScanRecord:
        """An error record for a file that could not be decoded."""
        return cls(path, None, None, threshold, model, None, None, error)

    def to_dict(self) -> dict:
        """Fields in the stable output order (`FIELDS`), values unchanged; `evidence_map` last, when there is one."""
        d = {name: getattr(self, name) for name in FIELDS}
        if self.evidence_map is not None:
            d["evidence_map"] = self.evidence_map
        return d


def _machine_dict(record: ScanRecord) -> dict:
    """`to_dict()` as written by the machine formats: probability rounded, never NaN/inf."""
    d = record.to_dict()
    p = d["probability"]
    if p is not None:
        p = float(p)
        # NaN/inf would make the JSON document invalid; null is what a consumer can handle.
        d["probability"] = round(p, PROBABILITY_DECIMALS) if math.isfinite(p) else None
    if d["familiarity"] is not None:
        d["familiarity"] = round(float(d["familiarity"]), PROBABILITY_DECIMALS)
    return d


def provenance_columns(prov: dict | None) -> list:
    """The provenance object flattened into `PROVENANCE_CSV` order (None cells for missing values)."""
    if not prov:
        return [None] * len(PROVENANCE_CSV)
    c2pa = prov.get("c2pa") or {}
    exif = prov.get("exif") or {}
    gen = prov.get("generator") or {}
    camera = " ".join(x for x in (exif.get("make"), exif.get("model")) if x) or None
    return [prov.get("says"), " | ".join(prov.get("evidence") or []) or None, c2pa.get("state"), c2pa.get("signer"),
            c2pa.get("claim_generator"), ", ".join(c2pa.get("digital_source_types") or []) or prov.get(
                "digital_source_type"), camera, exif.get("datetime"), gen.get("tool"), gen.get("model")]


# --------------------------------------------------------------------------- text escaping


def _escape_char(ch: str) -> str:
    cp = ord(ch)
    if 0xDC80 <= cp <= 0xDCFF:
        # os.fsdecode maps each undecodable byte 0xNN to U+DCNN: show the original byte.
        return f"\\x{cp - 0xDC00:02x}"
    if cp <= 0xFF:
        return {"\n": "\\n", "\r": "\\r", "\t": "\\t"}.get(ch, f"\\x{cp:02x}")
    if cp <= 0xFFFF:
        return f"\\u{cp:04x}"
    return f"\\U{cp:08x}"


def _escape_surrogates(text: str) -> str:
    """Replace lone surrogates (undecodable file-name bytes) with backslash escapes, keep the rest."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return "".join(_escape_char(c) if 0xD800 <= ord(c) <= 0xDFFF else c for c in text)


def terminal_safe(text: str) -> str:
    """One-line, spoof-free rendering of untrusted text (file names, error messages) for a terminal.

    Control characters, line breaks, bidi overrides and other invisible characters become backslash
    escapes, so a crafted file name can neither break the one-record-per-line layout nor emit
    terminal escape sequences. Undecodable bytes are shown as \\xNN.
    """
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else _escape_char(c) for c in text)


def _fit_encoding(text: str, stream: TextIO) -> str:
    """Make `text` writable to `stream` whatever its encoding (e.g. a cp1252 console or LANG=C)."""
    encoding = getattr(stream, "encoding", None)
    if not encoding:
        return text  # in-memory stream: any str goes
    try:
        text.encode(encoding)
        return text
    except (UnicodeEncodeError, LookupError):
        return text.encode(encoding, "backslashreplace").decode(encoding, "replace")


# --------------------------------------------------------------------------- writers


class Writer(ABC):
    """Streams records to a text stream. `close()` finishes the document but leaves the stream open.

    Usable as a context manager; it closes on any exit, including KeyboardInterrupt, so an
    interrupted scan still produces a well-formed document of the results so far.
    """

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.count = 0
        self.closed = False

    def write(self, record: ScanRecord) -> None:
        """Emit one record."""
        if self.closed:
            raise ValueError("write() on a closed writer")
        self._write(record)
        self.count += 1

    def close(self) -> None:
        """Finish the document (idempotent) and flush the stream."""
        if self.closed:
            return
        self.closed = True
        self._finish()
        self.stream.flush()

    @abstractmethod
    def _write(self, record: ScanRecord) -> None: ...

    def _finish(self) -> None:  # noqa: B027 - optional hook, most formats need no trailer
        return None

    def __enter__(self) -> Writer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class JsonlWriter(Writer):
    """One JSON object per line, flushed per record so a pipe sees results during a long scan."""

    def _write(self, record: ScanRecord) -> None:
        # ensure_ascii keeps lone surrogates as \udcxx escapes: valid JSON on any stream encoding.
        self.stream.write(json.dumps(_machine_dict(record), ensure_ascii=True) + "\n")
        self.stream.flush()


class JsonWriter(Writer):
    """A single `{"results": [...]}` document, streamed item by item and closed by `close()`."""

    def _write(self, record: ScanRecord) -> None:
        item = json.dumps(_machine_dict(record), ensure_ascii=True)
        # One write() per record: an interrupt can never leave half an item behind.
        self.stream.write(('{"results": [\n  ' if self.count == 0 else ",\n  ") + item)

    def _finish(self) -> None:
        self.stream.write('{"results": []}\n' if self.count == 0 else "\n]}\n")


def evidence_columns(evidence: dict | None) -> list:
    """The evidence map's peak and box in `EVIDENCE_CSV` order (None cells without a map)."""
    if not evidence:
        return [None] * len(EVIDENCE_CSV)
    return [evidence.get("peak"), *list(evidence.get("box") or [None] * 4)]


class CsvWriter(Writer):
    """Header plus one row per record, columns in `FIELDS` order; empty cells for None. With `explain`, the
    evidence map's peak and box follow (`EVIDENCE_CSV`)."""

    def __init__(self, stream: TextIO, explain: bool = False) -> None:
        super().__init__(stream)
        self.explain = explain
        # Keep RFC 4180's "\r\n": with it csv quotes fields containing a bare "\r" as well as "\n",
        # which a "\n" terminator would leave unquoted (a file name with "\r" would split the row).
        # The stream should be opened with newline="" (atomic_output does) so nothing is translated.
        self._csv = csv.writer(stream)

    def _header(self) -> None:
        self._csv.writerow((*CSV_FIELDS, *EVIDENCE_CSV) if self.explain else CSV_FIELDS)

    def _write(self, record: ScanRecord) -> None:
        if self.count == 0:
            self._header()
        d = _machine_dict(record)
        evidence = d.pop("evidence_map", None)
        prov = d.pop("provenance")
        extra = evidence_columns(evidence) if self.explain else []
        row = [
            _fit_encoding(_escape_surrogates(v), self.stream) if isinstance(v, str) else v
            for v in [*d.values(), *provenance_columns(prov), *extra]
        ]
        self._csv.writerow(row)
        self.stream.flush()

    def _finish(self) -> None:
        if self.count == 0:
            self._header()


_LABEL_STYLE = {"fake": "bold red", "real": "green", "uncertain": "yellow", "error": "magenta"}
_SAYS_STYLE = {"ai-generated": "red", "ai-edited": "yellow", "camera": "green"}


class TableWriter(Writer):
    """Aligned human-readable lines, printed as results arrive: one header, then one line per record.

    Colour only when the stream is a terminal (rich decides; NO_COLOR/FORCE_COLOR are honoured).
    """

    HEADER = f"{'label':<9}  {'fake_p':>6}  {'size':<11}  {'metadata':<12}  path"

    def __init__(self, stream: TextIO, *, color: bool | None = None) -> None:
        super().__init__(stream)
        # markup/emoji/highlight off: file names are data, "[red]" or ":smile:" must print literally.
        # soft_wrap: never hard-wrap a long path, one record stays one line.
        self._console = Console(
            file=stream,
            force_terminal=color,
            no_color=None if color is None else not color,
            markup=False,
            emoji=False,
            highlight=False,
            soft_wrap=True,
        )

    def _write(self, record: ScanRecord) -> None:
        if self.count == 0:
            self._console.print(Text(self.HEADER, style="bold"))
        failed = record.error is not None or record.label is None
        label = "error" if failed else record.label
        p = record.probability
        prob = f"{p:.4f}" if p is not None and not failed else "-"
        size = f"{record.width}x{record.height}" if record.width and record.height else "-"
        line = Text()
        line.append(f"{label:<9}", style=_LABEL_STYLE.get(label, ""))
        line.append(f"  {prob:>6}  {size:<11}  ")
        says = record.provenance.get("says", "-") if record.provenance else "-"
        line.append(f"{says:<12}", style=_SAYS_STYLE.get(says, ""))
        line.append("  ")
        line.append(_fit_encoding(terminal_safe(record.path), self.stream))
        if record.error is not None:
            line.append(f"  ({_fit_encoding(terminal_safe(record.error), self.stream)})", style="dim")
        elif record.reason == "unfamiliar":
            line.append("  (unfamiliar: unlike the head's training images)", style="dim")
        elif record.provenance and record.provenance.get("evidence"):
            from causalclip_cli.evidence.provenance import short_evidence

            evidence = terminal_safe(short_evidence(record.provenance))
            line.append(f"  [{_fit_encoding(evidence, self.stream)}]", style="dim")
        if record.evidence_map and record.error is None:
            m = record.evidence_map
            x0, y0, x1, y1 = m["box"]
            region = " (region)" if record.reason == "region" else ""
            line.append(f"  {{map peak {m['peak']:.2f} at {x0},{y0}-{x1},{y1}{region}}}", style="dim")
        self._console.print(line)


_WRITERS: dict[str, type[Writer]] = {
    "table": TableWriter,
    "jsonl": JsonlWriter,
    "json": JsonWriter,
    "csv": CsvWriter,
}


def make_writer(fmt: str, stream: TextIO, explain: bool = False) -> Writer:
    """A writer for `fmt` (one of `FORMATS`) on `stream`; `explain`: records carry evidence maps."""
    try:
        cls = _WRITERS[fmt]
    except KeyError:
        raise UsageError(f"unknown output format {fmt!r}", hint=f"choose one of: {', '.join(FORMATS)}") from None
    return cls(stream, explain=True) if explain and cls is CsvWriter else cls(stream)


def default_format(stream: TextIO) -> str:
    """The format to use when none is given: "table" for a terminal, "jsonl" for pipes and files."""
    try:
        return "table" if stream.isatty() else "jsonl"
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return "jsonl"


# --------------------------------------------------------------------------- atomic output file


def _fsync_dir(directory: str) -> None:
    # Makes the rename itself durable; not possible (nor needed) on every platform, hence best effort.
    with contextlib.suppress(OSError, AttributeError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _temporary_name(target: str) -> str:
    directory, name = os.path.split(target)
    return os.path.join(directory, f".{name}.{secrets.token_hex(4)}.tmp")


try:
    import fcntl
except ImportError:  # Windows: no flock; leftovers are then judged by age alone
    fcntl = None


def _lock(fd: int) -> bool:
    """Hold an advisory lock on an open temporary file while this process writes it: the kernel drops it when
    the process dies, however it dies, which is how a later run tells a killed run's leftovers from a live
    one's (see `leftover_temporaries`). False only when another open file holds the lock."""
    if fcntl is None:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError:
        return False


# A temporary file without a lock (no flock on the platform) counts as abandoned once it is this old.
UNLOCKED_STALE_SECONDS = 24 * 3600


def leftover_temporaries(path: str | os.PathLike[str]) -> list[str]:
    """Temporary files that earlier runs writing `path` left behind when they were killed (oldest first).

    They are the `.NAME.*.tmp` files beside `path` that no running process holds: a run that is still
    writing keeps its temporary file locked, so two scans to one output never take each other's file.
    """
    target = os.path.realpath(os.fspath(path))
    directory, name = os.path.split(target)
    prefix = f".{name}."
    try:
        names = [n for n in os.listdir(directory or ".") if n.startswith(prefix) and n.endswith(".tmp")]
    except OSError:
        return []
    found = []
    for entry in names:
        full = os.path.join(directory, entry)
        try:
            fd = os.open(full, os.O_RDONLY)
        except OSError:
            continue
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                continue
            if fcntl is None:
                if time.time() - os.fstat(fd).st_mtime < UNLOCKED_STALE_SECONDS:
                    continue
            elif not _lock(fd):
                continue  # a live run is writing it
            found.append((os.fstat(fd).st_mtime, full))
        finally:
            os.close(fd)  # closing releases the probe's own lock
    return [full for _, full in sorted(found)]


def remove_files(paths: list[str]) -> None:
    """Unlink each of `paths`, ignoring those already gone."""
    for p in paths:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(p)


@contextlib.contextmanager
def atomic_output(
    path: str | os.PathLike[str], *, commit_on_interrupt: bool = True, encoding: str = "utf-8",
    keep_on_error: bool = False, replaces: list[str] | None = None,
) -> Iterator[TextIO]:
    """Yield a text stream to a temporary file next to `path`; fsync and rename it over `path` on success.

    A failed or killed run never leaves a half-written `path` (an existing file stays untouched); the
    temporary file is named `.NAME.<hex>.tmp` and locked while this process writes it.
    On KeyboardInterrupt the temporary file is committed anyway when `commit_on_interrupt` is set
    (the caller closes its writer first, so the partial document is well-formed), then the interrupt
    propagates. Any other exception discards it, unless `keep_on_error` (a JSON Lines journal of whole
    records, which `scan --resume` can adopt). `replaces`: leftover temporary files of killed runs, removed
    once `path` is committed (never before: until then they may hold the only copy of finished work).
    The stream uses newline="" (written verbatim).
    """
    # Write through a symlink the way open(path, "w") would, instead of replacing the link.
    target = os.path.realpath(os.fspath(path))
    if os.path.isdir(target):
        raise IsADirectoryError(f"output path is a directory: {os.fspath(path)}")
    directory = os.path.dirname(target)
    try:
        mode = stat.S_IMODE(os.stat(target).st_mode)
    except OSError:
        mode = None
    while True:
        tmp = _temporary_name(target)
        try:
            # os.open with 0o666 (not mkstemp's 0o600) so the result gets the usual umask permissions.
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
            break
        except FileExistsError:
            continue
    committed = False
    try:
        _lock(fd)
        stream = os.fdopen(fd, "w", encoding=encoding, newline="")
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise

    def commit() -> None:
        nonlocal committed
        stream.flush()
        os.fsync(stream.fileno())
        if mode is not None:
            with contextlib.suppress(OSError):
                os.chmod(tmp, mode)  # overwriting keeps the old file's permissions, like open("w")
        # Renamed while still open (and locked): no other run can take it for a leftover in between.
        os.replace(tmp, target)
        committed = True
        stream.close()
        _fsync_dir(directory)
        remove_files(replaces or [])

    keep = False
    try:
        try:
            yield stream
        except KeyboardInterrupt:
            if commit_on_interrupt:
                commit()
            raise
        except Exception:
            keep = keep_on_error
            raise
        commit()
    finally:
        if not committed:
            with contextlib.suppress(OSError):
                stream.close()
            if not keep:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)


# --------------------------------------------------------------------------- summary

HISTOGRAM_BINS = 10
# Bin edges as the literals a user would write, compared exactly (p * 10 can round across an edge).
_EDGES = tuple(round(i / HISTOGRAM_BINS, 10) for i in range(1, HISTOGRAM_BINS))


def _zero_counts() -> dict[str, int]:
    return dict.fromkeys(LABELS, 0)


def _zero_bins() -> list[int]:
    return [0] * HISTOGRAM_BINS


@dataclass
class ScanSummary:
    """Running totals of a scan in bounded memory (a fixed histogram, not a list of probabilities).

    `histogram[i]` counts fake probabilities in [i/10, (i+1)/10); the last bin includes 1.0.
    """

    counts: dict[str, int] = field(default_factory=_zero_counts)
    errors: int = 0
    skipped: int = 0
    seconds: float = 0.0
    histogram: list[int] = field(default_factory=_zero_bins)
    interrupted: bool = False
    # What the files' metadata says (provenance.says → count), for records that carry provenance.
    provenance: dict[str, int] = field(default_factory=dict)
    # Images withheld from `fake` because they are unlike the head's training data (reason "unfamiliar").
    unfamiliar: int = 0
    # Records kept from an earlier run (`scan --resume`): counted above, not in `seconds`.
    resumed: int = 0
    # `fake` because one window of the evidence map scored high (reason "region", `scan --explain`).
    region: int = 0

    def add(self, record: ScanRecord) -> None:
        """Account for one record (error or result)."""
        if record.provenance is not None:
            says = record.provenance.get("says", "unknown")
            self.provenance[says] = self.provenance.get(says, 0) + 1
        if record.error is not None or record.label is None:
            self.errors += 1
            return
        self.counts[record.label] = self.counts.get(record.label, 0) + 1
        self.unfamiliar += record.reason == "unfamiliar"
        self.region += record.reason == "region"
        p = record.probability
        if p is not None and math.isfinite(p):
            self.histogram[bisect.bisect_right(_EDGES, p)] += 1

    @property
    def classified(self) -> int:
        """Images that got a label."""
        return sum(self.counts.values())

    @property
    def total(self) -> int:
        """Files processed: classified images plus errors (skipped non-images excluded)."""
        return self.classified + self.errors

    @property
    def images_per_second(self) -> float:
        """Processed files per wall-clock second (0.0 before any time has elapsed); resumed records excluded."""
        return (self.total - self.resumed) / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict:
        """JSON-ready summary."""
        return {
            "counts": dict(self.counts),
            "total": self.total,
            "errors": self.errors,
            "skipped": self.skipped,
            "seconds": round(self.seconds, 3),
            "images_per_second": round(self.images_per_second, 2),
            "histogram": list(self.histogram),
            "interrupted": self.interrupted,
            "provenance": dict(self.provenance),
            "unfamiliar": self.unfamiliar,
            "resumed": self.resumed,
            "region": self.region,
        }


_EIGHTHS = " ▏▎▍▌▋▊▉"
BAR_WIDTH = 40


def histogram_bar(count: int, largest: int, width: int = BAR_WIDTH, unicode: bool = True) -> str:
    """A bar of at most `width` cells for `count` relative to `largest`, in 1/8-cell steps."""
    if count <= 0 or largest <= 0:
        return ""
    if not unicode:
        return "#" * max(1, round(width * count / largest))
    eighths = max(1, round(width * 8 * count / largest))  # a non-empty bin is always visible
    full, rest = divmod(eighths, 8)
    return "█" * full + (_EIGHTHS[rest] if rest else "")


def _can_encode(text: str, stream: TextIO) -> bool:
    try:
        text.encode(getattr(stream, "encoding", None) or "utf-8")
        return True
    except (UnicodeEncodeError, LookupError):
        return False


def render_summary(summary: ScanSummary, stream: TextIO) -> None:
    """Human-readable summary (plain text, meant for stderr): counts, throughput, histogram."""
    lines = [f"{summary.total:,} image(s) in {summary.seconds:.1f} s ({summary.images_per_second:.1f} images/s)"]
    if summary.resumed:
        new = summary.total - summary.resumed
        lines = [f"{summary.total:,} image(s): {summary.resumed:,} from the earlier run, {new:,} scanned in "
                 f"{summary.seconds:.1f} s ({summary.images_per_second:.1f} images/s)"]
    others = [k for k in summary.counts if k not in LABELS]
    rows = [(k, summary.counts.get(k, 0)) for k in (*LABELS, *others)]
    rows += [("errors", summary.errors), ("skipped", summary.skipped)]
    lines += [f"  {name:<10} {n:>8,}" for name, n in rows]
    if summary.unfamiliar:
        lines.append(f"  {summary.unfamiliar:,} of the uncertain would score fake but are unlike the head's training "
                     "images (reason: unfamiliar)")
    if summary.region:
        lines.append(f"  {summary.region:,} of the fake labelled so by one region of the evidence map (reason: region)")
    if summary.interrupted:
        lines.append("interrupted: results so far only")
    if summary.provenance:
        says = ", ".join(f"{k} {n:,}" for k, n in sorted(summary.provenance.items(), key=lambda kv: -kv[1]))
        lines.append(f"metadata says: {says}")
    largest = max(summary.histogram)
    if largest:
        unicode = _can_encode(_EIGHTHS + "█", stream)
        lines.append("fake probability:")
        for i, n in enumerate(summary.histogram):
            bar = histogram_bar(n, largest, unicode=unicode)
            lines.append(f"  {i / 10:.1f}-{(i + 1) / 10:.1f} {bar:<{BAR_WIDTH}} {n:,}")
    stream.write("\n".join(lines) + "\n")
    stream.flush()
