"""HTML report at scale: file size, build time and opening time in headless chromium for 1k, 10k and 100k results.

Synthetic scan records (paths in a few hundred folders, probabilities, labels, errors every 50th record,
provenance evidence on about half) are written to JSONL; `causalclip report` (report.write_report) builds the
page with the default 200 embedded thumbnails (the 200 most suspicious records point at real images of
../shared/data so the thumbnails are real); then Debian's chromium (Playwright, headless) opens it and we time:
  - open: from navigation start until the page's script has rendered the first page of rows (body[data-ready]);
  - filter: label = fake, until the count line updates; search: a path fragment, until the rows update.
Each is the median of `--repeats` fresh page loads.

    python benchmarks/report_scale.py                     # 1k, 10k, 100k (about a minute)
    python benchmarks/report_scale.py --sizes 1000        # quick
    python benchmarks/report_scale.py --screenshot docs/report.png --page report.html --says any   # screenshot

Results: benchmarks/results/report_scale.json
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import random
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _util import SHARED_DATA, log, write_results  # noqa: E402

CHROMIUM = os.environ.get("CAUSALCLIP_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--no-first-run", "--disable-dev-shm-usage"]
EVIDENCE = [
    ("ai-generated", ["C2PA (valid, OpenAI): trainedAlgorithmicMedia via GPT-4o"]),
    ("ai-generated", ["PNG: ComfyUI workflow, model flux1-dev"]),
    ("ai-edited", ["C2PA (valid, Adobe Inc.): compositeWithTrainedAlgorithmicMedia via Adobe Firefly"]),
    ("camera", ["EXIF: Canon EOS 70D, 2021:06:01 10:11:12"]),
    ("camera", ["C2PA (untrusted signer, NIKON CORPORATION): capture, NIKON Z 9", "EXIF: NIKON Z 9, 2022:10:25"]),
]


def synthetic(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    real_images = sorted(glob.glob(str(SHARED_DATA / "multigen-2022" / "*" / "*" / "*.jpg")))
    recs = []
    for i in range(n):
        path = f"/evidence/case-{i % 37:02d}/camera-{i % 293:03d}/IMG_{i:06d}.jpg"
        if i % 50 == 7:
            recs.append({"path": path, "probability": None, "label": None, "threshold": 0.925, "model": "m",
                         "width": None, "height": None, "error": "truncated image file", "provenance": None})
            continue
        p = rng.betavariate(0.5, 0.5)
        label = "fake" if p > 0.925 else "uncertain" if p > 0.6 else "real"
        says, ev = EVIDENCE[rng.randrange(len(EVIDENCE))] if rng.random() < 0.5 else ("unknown", [])
        recs.append({"path": path, "probability": p, "label": label, "threshold": 0.925, "model": "m",
                     "width": 4032, "height": 3024, "error": None,
                     "provenance": {"says": says, "evidence": ev, "c2pa": None}})
    # The most suspicious records point at real images so that their thumbnails are real.
    top = sorted((r for r in recs if r["probability"] is not None), key=lambda r: -r["probability"])[:200]
    for r, img in zip(top, real_images, strict=False):
        r["path"] = img
    return recs


def _open(browser, page_file: Path) -> tuple[float, dict]:
    from playwright.sync_api import expect

    page = browser.new_page(viewport={"width": 1280, "height": 900})
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    t0 = time.perf_counter()
    page.goto(page_file.as_uri(), timeout=120_000)
    page.wait_for_selector("body[data-ready='1']", timeout=120_000)
    opened = time.perf_counter() - t0
    n_fake = page.locator("option", has_text="fake").count()
    t0 = time.perf_counter()
    page.select_option("#f-label", label="fake")
    expect(page.locator("#count")).not_to_have_text(re.compile(r"^(\d+) of \1 "), timeout=60_000)
    filtered = time.perf_counter() - t0
    page.select_option("#f-label", label="all")
    t0 = time.perf_counter()
    page.fill("#f-search", "IMG_000123")  # first search also builds the lower-cased search index
    expect(page.locator("#rows tr.row")).to_have_count(1, timeout=60_000)
    searched = time.perf_counter() - t0 - 0.15  # minus the input debounce
    page.close()
    return opened, {"filter_s": filtered, "search_s": searched, "errors": errors, "options": n_fake}


def screenshot(page_file: Path, out: Path, says: str | None = None) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        page.goto(page_file.resolve().as_uri())
        page.wait_for_selector("body[data-ready='1']")
        if says:
            page.select_option("#f-says", value=says)
        page.screenshot(path=str(out))
        browser.close()
    log(f"wrote {out}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 10_000, 100_000])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--screenshot", type=Path, help="only take a screenshot of --page into this PNG")
    ap.add_argument("--page", type=Path, help="report page for --screenshot")
    ap.add_argument("--says", help="metadata filter for --screenshot: any, ai, or s<N>")
    args = ap.parse_args()
    if args.screenshot:
        screenshot(args.page, args.screenshot, args.says)
        return
    from playwright.sync_api import sync_playwright

    from causalclip_cli.scanning.report import ReportOptions, ReportStats, load_results, write_report

    out: dict = {"command": " ".join(["python", *sys.argv]), "chromium": CHROMIUM, "sizes": {}}
    with tempfile.TemporaryDirectory() as tmp, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        out["chromium_version"] = browser.version
        for n in args.sizes:
            results = Path(tmp) / f"results-{n}.jsonl"
            results.write_text("".join(json.dumps(r) + "\n" for r in synthetic(n)))
            page_file = Path(tmp) / f"report-{n}.html"
            stats = ReportStats()
            t0 = time.perf_counter()
            write_report(load_results(results, stats), page_file, ReportOptions(source=str(results)), stats)
            build = time.perf_counter() - t0
            runs = [_open(browser, page_file) for _ in range(args.repeats)]
            opens = [r[0] for r in runs]
            row = {
                "records": n,
                "results_jsonl_mb": round(results.stat().st_size / 1e6, 2),
                "html_mb": round(page_file.stat().st_size / 1e6, 2),
                "thumbnails": stats.thumbnails,
                "build_s": round(build, 2),
                "open_s_median": round(statistics.median(opens), 3),
                "open_s_runs": [round(x, 3) for x in opens],
                "filter_s_median": round(statistics.median(r[1]["filter_s"] for r in runs), 3),
                "search_s_median": round(statistics.median(r[1]["search_s"] for r in runs), 3),
                "console_errors": sorted({e for r in runs for e in r[1]["errors"]}),
            }
            out["sizes"][str(n)] = row
            log(f"{n:>7} records: html {row['html_mb']} MB (jsonl {row['results_jsonl_mb']} MB), build "
                f"{row['build_s']} s, open {row['open_s_median']} s, filter {row['filter_s_median']} s, "
                f"search {row['search_s_median']} s, console errors {len(row['console_errors'])}")
        browser.close()
    log(f"wrote {write_results('report_scale', out)}")


if __name__ == "__main__":
    main()
