"""The HTML report: reading results, the page's content, and the page in a real headless browser.

The browser test drives Debian's chromium (/usr/bin/chromium, or $CAUSALCLIP_CHROMIUM) through Playwright.
CI installs chromium, so there a missing browser fails the test. Locally, set CAUSALCLIP_SKIP_BROWSER=1 to
skip it instead.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from causalclip_cli.cli import app
from causalclip_cli.scanning.report import ReportOptions, ReportStats, build_report, load_results, write_report

runner = CliRunner()

EVIDENCE = {
    "ai-generated": ["C2PA (valid, OpenAI): trainedAlgorithmicMedia via GPT-4o"],
    "ai-edited": ["XMP: digitalSourceType compositeWithTrainedAlgorithmicMedia"],
    "camera": ["EXIF: Canon EOS 70D, 2021:06:01 10:11:12"],
    "unknown": [],
}


def _records(folder: Path, n: int, images: int | None = None, seed: int = 0) -> list[dict]:
    """n synthetic scan records over two folders; the first `images` (default: all) have image files."""
    images = n if images is None else images
    rng = random.Random(seed)
    recs = []
    for i in range(n):
        sub = folder / ("camera-roll" if i % 3 else "downloads")
        path = sub / f"img_{i:05d}.jpg"
        if i < images:
            sub.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (64, 48), (rng.randrange(256), rng.randrange(256), 128)).save(path)
        if i % 17 == 5:
            recs.append({"path": str(path), "probability": None, "label": None, "threshold": 0.5, "model": "m",
                         "width": None, "height": None, "error": "truncated image file", "provenance": None})
            continue
        p = rng.random()
        label = "fake" if p > 0.9 else "uncertain" if p > 0.6 else "real"
        says = rng.choice(list(EVIDENCE))
        prov = {"says": says, "evidence": EVIDENCE[says]}
        recs.append({"path": str(path), "probability": p, "label": label, "threshold": 0.9, "model": "m",
                     "width": 64, "height": 48, "error": None, "provenance": prov})
    return recs


def _data(page: str) -> dict:
    m = re.search(r'<script type="application/json" id="data">(.*?)</script>', page, re.S)
    assert m, "no data blob"
    return json.loads(m.group(1))


def test_load_results_jsonl_json_csv(tmp_path: Path) -> None:
    recs = _records(tmp_path, 5, images=0)
    jl = tmp_path / "r.jsonl"
    jl.write_text("\n".join(json.dumps(r) for r in recs) + "\nnot json\n")
    stats = ReportStats()
    assert load_results(jl, stats) == recs
    assert stats.skipped_lines == ["line 6: not JSON"]
    js = tmp_path / "r.json"
    js.write_text(json.dumps({"results": recs}))
    assert load_results(js) == recs
    cs = tmp_path / "r.csv"
    cs.write_text("path,probability,label,threshold,model,width,height,error,provenance_says,provenance_evidence\r\n"
                  "a.jpg,0.9,fake,0.5,m,10,12,,camera,EXIF: X | JPEG comment: 'y'\r\n")
    (row,) = load_results(cs)
    assert row["probability"] == 0.9 and row["width"] == 10
    assert row["provenance"] == {"says": "camera", "evidence": ["EXIF: X", "JPEG comment: 'y'"]}
    junk = tmp_path / "junk.txt"
    junk.write_text("hello\nworld\n")
    with pytest.raises(Exception, match="no scan records"):
        load_results(junk)


def test_page_is_self_contained_sorted_and_escaped(tmp_path: Path) -> None:
    recs = _records(tmp_path, 40)
    recs.append({"path": "evil</script><img src=x onerror=alert(1)>.jpg", "probability": 0.5, "label": "real",
                 "threshold": 0.9, "model": "m", "width": 1, "height": 1, "error": None,
                 "provenance": {"says": "unknown", "evidence": ["<b>bold</b>"]}})
    recs.append({"path": os.fsdecode(b"bad\xff.jpg"), "probability": None, "label": None, "threshold": 0.9,
                 "model": "m", "width": None, "height": None, "error": "broken symlink", "provenance": None})
    stats = ReportStats()
    page = build_report(recs, ReportOptions(thumbnails=5, source=os.fsdecode(b"res\xfe.jsonl")), stats)
    page.encode("utf-8")  # writable as UTF-8 despite undecodable bytes in names
    assert "res\\xfe.jsonl" in page
    # No network: no external scripts, styles, images or fonts.
    assert not re.search(r'(src|href)\s*=\s*["\']?(https?:)?//', page)
    assert "<link" not in page and "@import" not in page
    assert "<script src" not in page
    assert "evil</script>" not in page
    data = _data(page)
    assert data["n"] == len(recs) == stats.records
    probs = [p for p, lab in zip(data["p"], data["label"], strict=True) if data["labels"][lab] != "error"]
    assert probs == sorted(probs, reverse=True)
    assert data["labels"][data["label"][-1]] == "error"  # errors last
    assert "evil</script><img src=x onerror=alert(1)>.jpg" in data["path"]
    assert stats.thumbnails == 5 and sum(1 for t in data["thumb"] if t) == 5
    assert all(t.startswith("data:image/jpeg;base64,") for t in data["thumb"] if t)
    # Static parts: histogram, per-folder table, error list (file names escaped, undecodable bytes shown).
    assert 'id="histogram"' in page and "camera-roll" in page and "downloads" in page
    assert "bad\\xff.jpg" in page and "truncated image file" in page


def test_write_report_is_atomic_and_cli(tmp_path: Path) -> None:
    recs = _records(tmp_path, 20)
    results = tmp_path / "results.jsonl"
    results.write_text("\n".join(json.dumps(r) for r in recs) + "\n")
    out = tmp_path / "report.html"
    out.write_text("old")
    res = runner.invoke(app, ["report", str(results), "-o", str(out), "--thumbnails", "3"])
    assert res.exit_code == 0, res.output
    assert "wrote" in res.stderr and "3 thumbnails" in res.stderr
    assert _data(out.read_text())["n"] == 20
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp file left
    res = runner.invoke(app, ["report", str(tmp_path / "missing.jsonl"), "-o", str(out)])
    assert res.exit_code == 2 and "cannot read" in res.output
    # Killed while writing: the old page stays whole and no temporary file is left behind.
    import causalclip_cli.scanning.output as output

    real = output.atomic_output

    def interrupted(path, **kw):  # noqa: ANN001, ANN202
        class Boom:
            def __enter__(self):  # noqa: ANN204
                self.cm = real(path, **kw)
                stream = self.cm.__enter__()
                stream.write("<html>half")
                raise KeyboardInterrupt

            def __exit__(self, *exc):  # noqa: ANN001, ANN204
                return self.cm.__exit__(*exc)

        return Boom()

    output.atomic_output = interrupted
    try:
        with pytest.raises(KeyboardInterrupt):
            write_report(recs, out, ReportOptions(thumbnails=0))
    finally:
        output.atomic_output = real
    assert _data(out.read_text())["n"] == 20
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def _chromium() -> str | None:
    exe = os.environ.get("CAUSALCLIP_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None or not os.path.exists(exe):
        if os.environ.get("CAUSALCLIP_SKIP_BROWSER") == "1":
            pytest.skip("chromium not installed and CAUSALCLIP_SKIP_BROWSER=1")
        pytest.fail("chromium is needed for the browser test (apt-get install chromium), "
                    "or set CAUSALCLIP_SKIP_BROWSER=1 to skip it")
    return exe


BROWSER_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                "--no-first-run", "--disable-dev-shm-usage"]


def test_report_in_headless_chromium(tmp_path: Path) -> None:
    exe = _chromium()
    try:
        from playwright.sync_api import expect, sync_playwright
    except ImportError:
        if os.environ.get("CAUSALCLIP_SKIP_BROWSER") == "1":
            pytest.skip("playwright not installed and CAUSALCLIP_SKIP_BROWSER=1")
        raise
    recs = _records(tmp_path, 260)
    page_file = tmp_path / "report.html"
    write_report(recs, page_file, ReportOptions(thumbnails=12))
    n_fake = sum(r["label"] == "fake" for r in recs)
    n_camera = sum((r["provenance"] or {}).get("says") == "camera" for r in recs)
    problems: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=exe, args=BROWSER_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type in (
                "error", "warning") else None)
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            page.on("request", lambda r: problems.append(f"request: {r.url}") if not r.url.startswith(
                ("file:", "data:")) else None)
            page.goto(page_file.as_uri())
            page.wait_for_selector("body[data-ready='1']", timeout=15000)
            rows = page.locator("#rows tr.row")
            assert rows.count() == 100  # one page
            assert "of 260 shown" in page.inner_text("#count")
            first = page.locator("#rows tr.row").first.locator("td").nth(1).inner_text()
            assert first == f"{max(r['probability'] or 0 for r in recs):.4f}"

            page.select_option("#f-label", label="fake")
            assert rows.count() == n_fake > 0
            assert set(page.eval_on_selector_all("#rows tr.row", "rs => rs.map(r => r.dataset.label)")) == {"fake"}

            page.select_option("#f-label", label="all")
            page.select_option("#f-says", label="camera")
            assert page.inner_text("#count").startswith(f"{n_camera} of 260")
            assert set(page.eval_on_selector_all("#rows tr.row", "rs => rs.map(r => r.dataset.says)")) == {"camera"}

            page.select_option("#f-says", label="all")
            page.fill("#f-search", "img_00042")
            expect(rows).to_have_count(1)  # the search is debounced: expect() waits for it
            assert "img_00042.jpg" in rows.first.inner_text()
            page.fill("#f-search", "OpenAI")
            n_ai = sum((r["provenance"] or {}).get("says") == "ai-generated" for r in recs)
            expect(page.locator("#count")).to_have_text(re.compile(f"^{n_ai} of 260"))

            page.fill("#f-search", "")
            expect(page.locator("#count")).to_have_text(re.compile("^260 of 260"))
            assert page.locator("#rows img.thumb").count() == 12
            page.click("#next")
            assert "page 2 / 3" in page.inner_text("#page-info")
            page.click("#prev")
            shot = tmp_path / "report.png"
            page.screenshot(path=str(shot), full_page=False)
        finally:
            browser.close()
    assert problems == []
    assert shot.stat().st_size > 10_000
    with Image.open(shot) as im:
        assert im.size == (1280, 900)


def test_records_with_maps_get_an_overlay_beside_the_thumbnail(tmp_path: Path) -> None:
    from PIL import Image

    Image.new("RGB", (80, 40), (10, 120, 200)).save(tmp_path / "m.jpg")
    Image.new("RGB", (80, 40), (200, 120, 10)).save(tmp_path / "n.jpg")
    emap = {"rows": 2, "cols": 4, "scores": [0.9, 0.8, 0.1, 0.0, 0.7, 0.9, 0.2, 0.1], "box": [0, 0, 40, 40],
            "peak": 0.9}
    base = {"probability": 0.5, "label": "uncertain", "threshold": 0.9, "model": "m", "width": 80, "height": 40,
            "error": None, "provenance": None}
    recs = [{**base, "path": str(tmp_path / "m.jpg"), "evidence_map": emap}, {**base, "path": str(tmp_path / "n.jpg")}]
    data = _data(build_report(recs, ReportOptions(thumbnails=5)))
    by_path = dict(zip(data["path"], data["map"], strict=True))
    assert by_path[str(tmp_path / "m.jpg")].startswith("data:image/jpeg;base64,")
    assert by_path[str(tmp_path / "n.jpg")] == 0  # no map, no overlay
