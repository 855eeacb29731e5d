"""A self-contained HTML report of scan results: one file, no network, usable for 100,000 results.

The page is rendered by Jinja2 from `templates/report.html.j2`. The results travel as one JSON blob
(columns, not objects, to keep 100k rows small) that inline JavaScript sorts, filters, searches and pages
through, 100 rows at a time, so opening time does not grow with the number of DOM rows. Thumbnails are
embedded (base64 JPEG) only for the `thumbnails` most suspicious files, so the size stays bounded.
The summary (counts, histogram, per-folder table, errors) is computed here and rendered as static HTML.
"""

from __future__ import annotations

import base64
import csv
import dataclasses
import io
import json
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from causalclip_cli.errors import UsageError

__all__ = ["ReportOptions", "ReportStats", "build_report", "load_results", "write_report"]

LABEL_ORDER = ("fake", "uncertain", "real", "error")
SAYS_ORDER = ("ai-generated", "ai-edited", "camera", "unknown")
BINS = 10


@dataclass
class ReportOptions:
    title: str = "causalclip scan report"
    thumbnails: int = 200  # most suspicious files that get an embedded thumbnail (0: none)
    thumb_size: int = 128  # longer side of a thumbnail, pixels
    page_size: int = 100  # rows per page in the browser
    max_folders: int = 500  # rows of the per-folder table (largest folders first)
    max_errors: int = 1000  # rows of the error list (all errors stay filterable in the main list)
    source: str = ""  # where the results came from, shown in the header


@dataclass
class ReportStats:
    records: int = 0
    thumbnails: int = 0
    bytes: int = 0
    skipped_lines: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- reading results


def _from_csv_row(row: dict[str, str]) -> dict[str, Any]:
    def num(v: str | None) -> float | None:
        try:
            return float(v) if v not in (None, "") else None
        except ValueError:
            return None

    rec: dict[str, Any] = {k: (v if v != "" else None) for k, v in row.items()}
    rec["probability"] = num(row.get("probability"))
    for k in ("width", "height"):
        n = num(row.get(k))
        rec[k] = int(n) if n is not None else None
    if row.get("provenance_says"):
        rec["provenance"] = {"says": row["provenance_says"],
                             "evidence": [e for e in (row.get("provenance_evidence") or "").split(" | ") if e]}
    return rec


def load_results(path: str | os.PathLike, stats: ReportStats | None = None) -> list[dict[str, Any]]:
    """Records from a scan's JSONL, JSON (`{"results": [...]}`) or CSV output. Unparseable JSONL lines are
    skipped and listed in `stats.skipped_lines`; a file that is none of these raises UsageError."""
    stats = stats if stats is not None else ReportStats()
    try:
        with open(path, encoding="utf-8", errors="surrogateescape", newline="") as fh:
            text = fh.read()
    except OSError as exc:
        raise UsageError(f"cannot read results file {os.fspath(path)!r}: {exc.strerror or exc}") from None
    stripped = text.lstrip()
    if stripped.startswith("{") and '"results"' in stripped[:200]:
        try:
            doc = json.loads(text)
            if isinstance(doc, dict) and isinstance(doc.get("results"), list):
                return [r for r in doc["results"] if isinstance(r, dict) and "path" in r]
        except ValueError:
            pass  # maybe JSONL whose first record has a "results" key; fall through
    if stripped.startswith("path,"):
        return [_from_csv_row(r) for r in csv.DictReader(io.StringIO(stripped))]
    records: list[dict[str, Any]] = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            stats.skipped_lines.append(f"line {n}: not JSON")
            continue
        if not isinstance(rec, dict) or "path" not in rec:
            stats.skipped_lines.append(f"line {n}: not a scan record")
            continue
        records.append(rec)
    if not records and stats.skipped_lines:
        raise UsageError(f"{os.fspath(path)!r} holds no scan records (JSONL, JSON or CSV from causalclip scan)")
    return records


# --------------------------------------------------------------------------- summarising


def _label(rec: dict) -> str:
    if rec.get("error") is not None or rec.get("label") is None:
        return "error"
    return str(rec["label"])


def _prob(rec: dict) -> float | None:
    p = rec.get("probability")
    return float(p) if isinstance(p, int | float) and math.isfinite(p) else None


def _says(rec: dict) -> str:
    prov = rec.get("provenance")
    return str(prov.get("says", "unknown")) if isinstance(prov, dict) else "unknown"


def _folder(path: str) -> str:
    return os.path.dirname(path) or "."


def _data_uri(img: Any, size: int) -> str:  # noqa: ANN401 - a PIL image
    img.thumbnail((size, size))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=70)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _thumbnails(path: str, size: int, evidence_map: dict | None) -> tuple[str | None, str | None]:
    """A small JPEG as a data: URI, and the same under its evidence map when the record has one; None for a
    file that cannot be read now (the report still lists it)."""
    try:
        from causalclip_cli.inputs.data import decode_image

        img = decode_image(path, min_size=size).image
        overlay = None
        if isinstance(evidence_map, dict) and evidence_map.get("scores"):
            from causalclip_cli.scanning.overlay import render_overlay

            # The box is in the scanned image's pixels; the thumbnail's decode may be smaller.
            m = dict(evidence_map)
            scale = img.width / float(evidence_map.get("width") or img.width)
            m["box"] = [v * scale for v in m["box"]]
            overlay = _data_uri(render_overlay(img, m, long_side=size * 2), size)
        return _data_uri(img, size), overlay
    except Exception:  # noqa: BLE001 - moved, deleted or unreadable since the scan
        return None, None


def _safe(text: str) -> str:
    """Text with lone surrogates (undecodable file-name bytes) shown as escapes, so it encodes as UTF-8."""
    from causalclip_cli.scanning.output import _escape_surrogates

    return _escape_surrogates(text)


def _summarise(records: list[dict], options: ReportOptions) -> dict[str, Any]:
    counts = dict.fromkeys(LABEL_ORDER, 0)
    says = dict.fromkeys(SAYS_ORDER, 0)
    hist = [0] * BINS
    folders: dict[str, dict[str, Any]] = {}
    for rec in records:
        lab = _label(rec)
        counts[lab] = counts.get(lab, 0) + 1
        s = _says(rec)
        if isinstance(rec.get("provenance"), dict):  # metadata read (not for unreadable files or --no-provenance)
            says[s] = says.get(s, 0) + 1
        p = _prob(rec)
        if p is not None and lab != "error":
            hist[min(BINS - 1, max(0, int(p * BINS)))] += 1
        f = folders.setdefault(_folder(str(rec.get("path", ""))), {"n": 0, "sum": 0.0, "scored": 0, "ai_meta": 0,
                                                                   **dict.fromkeys(LABEL_ORDER, 0)})
        f["n"] += 1
        f[lab] = f.get(lab, 0) + 1
        if s in ("ai-generated", "ai-edited"):
            f["ai_meta"] += 1
        if p is not None and lab != "error":
            f["sum"] += p
            f["scored"] += 1
    largest = max(hist) or 1
    histogram = [{"lo": i / BINS, "hi": (i + 1) / BINS, "n": n, "pct": round(100 * n / largest, 1)}
                 for i, n in enumerate(hist)]
    folder_rows = sorted(folders.items(), key=lambda kv: (-kv[1]["n"], kv[0]))
    folder_table = [{"folder": _safe(name), "mean": (f["sum"] / f["scored"]) if f["scored"] else None, **f}
                    for name, f in folder_rows[: options.max_folders]]
    errors = [{"path": _safe(str(r.get("path", ""))), "error": _safe(str(r.get("error") or "no label"))}
              for r in records if _label(r) == "error"]
    return {"counts": counts, "says": says, "histogram": histogram, "folders": folder_table,
            "folders_total": len(folders), "errors": errors[: options.max_errors], "errors_total": len(errors)}


def _columns(records: list[dict], thumbs: dict[int, str], overlays: dict[int, str]) -> dict[str, Any]:
    """Column-wise data for the page: one list per field, plus string tables for repeated values."""
    labels = list(LABEL_ORDER)
    says = list(SAYS_ORDER)
    out: dict[str, list] = {"path": [], "p": [], "label": [], "says": [], "evidence": [], "error": [], "size": [],
                            "thumb": [], "map": []}
    for i, rec in enumerate(records):
        lab = _label(rec)
        if lab not in labels:
            labels.append(lab)
        s = _says(rec)
        if s not in says:
            says.append(s)
        prov = rec.get("provenance") if isinstance(rec.get("provenance"), dict) else {}
        p = _prob(rec)
        out["path"].append(str(rec.get("path", "")))
        out["p"].append(round(p, 4) if p is not None else None)
        out["label"].append(labels.index(lab))
        out["says"].append(says.index(s))
        out["evidence"].append([str(e) for e in prov.get("evidence") or []][:6] or 0)
        out["error"].append(rec.get("error") or 0)
        w, h = rec.get("width"), rec.get("height")
        out["size"].append(f"{w}x{h}" if w and h else 0)
        out["thumb"].append(thumbs.get(i, 0))
        out["map"].append(overlays.get(i, 0))
    return {"labels": labels, "says_names": says, "n": len(records), **out}


def _json_for_script(data: Any) -> str:
    # ensure_ascii escapes lone surrogates (undecodable file names); "</" could close the <script>.
    return json.dumps(data, ensure_ascii=True, separators=(",", ":")).replace("</", "<\\/")


def build_report(records: list[dict[str, Any]], options: ReportOptions | None = None,
                 stats: ReportStats | None = None) -> str:
    """The report page as a string. Records are sorted by probability (highest first, errors last)."""
    options = options or ReportOptions()
    stats = stats if stats is not None else ReportStats()
    records = sorted(records, key=lambda r: (_label(r) == "error", -(_prob(r) or 0.0), str(r.get("path", ""))))
    thumbs: dict[int, str] = {}
    overlays: dict[int, str] = {}
    if options.thumbnails > 0:
        for i, rec in enumerate(records[: options.thumbnails]):
            if _label(rec) == "error":
                break
            emap = rec.get("evidence_map")
            if isinstance(emap, dict):
                emap = {**emap, "width": rec.get("width")}
            uri, overlay = _thumbnails(str(rec.get("path", "")), options.thumb_size, emap)
            if uri:
                thumbs[i] = uri
            if overlay:
                overlays[i] = overlay
    stats.records = len(records)
    stats.thumbnails = len(thumbs)
    from jinja2 import Environment, PackageLoader, select_autoescape

    env = Environment(loader=PackageLoader("causalclip_cli.scanning", "templates"),
                      autoescape=select_autoescape(["html", "j2"]), trim_blocks=True, lstrip_blocks=True)
    template = env.get_template("report.html.j2")
    summary = _summarise(records, options)
    # File names and titles may carry undecodable bytes (lone surrogates): shown escaped, never a write error.
    options = dataclasses.replace(options, title=_safe(options.title), source=_safe(options.source))
    return template.render(options=options, summary=summary, total=len(records),
                           data_json=_json_for_script(_columns(records, thumbs, overlays)),
                           thumbnails=len(thumbs), skipped_lines=stats.skipped_lines[:20],
                           skipped_total=len(stats.skipped_lines))


def write_report(records: Iterable[dict[str, Any]], path: str | os.PathLike, options: ReportOptions | None = None,
                 stats: ReportStats | None = None) -> ReportStats:
    """Render and write the report atomically (temp file + rename): a killed run leaves no half page."""
    from causalclip_cli.scanning.output import atomic_output

    stats = stats if stats is not None else ReportStats()
    page = build_report(list(records), options, stats)
    with atomic_output(path, commit_on_interrupt=False) as fh:
        fh.write(page)
    stats.bytes = len(page.encode("utf-8", "surrogateescape"))
    return stats
