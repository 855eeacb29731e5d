"""Issue 21: the GPU purifier recipe run tiny on CPU (U-Net, pairs, loss, save/load), `--purify learned` by name,
`info` showing the purifier, the ship-bar check and the one-command job's --tiny plumbing."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from causalclip_cli.cli import app
from causalclip_cli.errors import CheckpointError
from causalclip_cli.robustness import purify
from causalclip_cli.robustness.purifier_train import (
    PairConfig,
    PurifierUNet,
    PurifierUNetConfig,
    UNetTrainConfig,
    fixed_adversarial_set,
    make_pairs,
    purifier_loss,
    relative_feature_error,
    train_unet_purifier,
)
from causalclip_cli.robustness.purify import PurifierNet, load_purifier, parse_purifier, resolve_purifier, save_purifier

REPO = Path(__file__).resolve().parents[2]
runner = CliRunner()


@pytest.fixture(scope="module")
def heads(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> list:
    """The tiny CausalCLIP detector and a linear head over the same tower, like the two released heads."""
    from causalclip_cli.model.checkpoint import Decision, build_metadata, load_detector, save_checkpoint
    from causalclip_cli.model.heads import make_head

    det = load_detector(str(tiny_checkpoint), device="cpu")
    torch.manual_seed(1)
    head = make_head("linear", det.head.embed_dim)
    meta = build_metadata(head, det.metadata["backbone"], Decision(0.5))
    path = save_checkpoint(tmp_path_factory.mktemp("lin") / "tiny-linear.safetensors", head, meta)
    return [det, dataclasses.replace(det, head=head.eval(), metadata=meta, path=path)]


@pytest.fixture(scope="module")
def pixels(heads) -> torch.Tensor:
    s = heads[0].preprocess.size
    coarse = torch.rand(8, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    return torch.nn.functional.interpolate(coarse, size=(s, s), mode="bilinear", align_corners=False)


@pytest.mark.parametrize("shape", [(2, 3, 32, 32), (1, 3, 30, 34), (1, 3, 5, 7)])
def test_unet_is_the_identity_at_init(shape: tuple[int, ...]) -> None:
    x = torch.rand(shape, generator=torch.Generator().manual_seed(0))
    net = PurifierUNet(PurifierUNetConfig(width=8, levels=2)).eval()
    with torch.no_grad():
        assert torch.allclose(net(x), x, atol=1e-7)


def test_pairs_are_bounded_attacks_of_clean_bases(heads, pixels: torch.Tensor) -> None:
    cfg = PairConfig(eps_choices=(8.0,), step_choices=(2,), fgsm_share=0.0, adv_share=0.5, jpeg_share=0.5,
                     resize_share=0.5, attack_batch=4)
    inp, target, spec = make_pairs(heads, pixels, cfg, torch.Generator().manual_seed(0))
    assert inp.shape == target.shape == pixels.shape
    assert spec["n_adv"] == 4 and spec["method"] == "pgd" and spec["eps"] == 8.0
    assert spec["jpeg"] + spec["resize"] == len(pixels)  # every base degraded with these shares
    assert not torch.equal(target, pixels)
    d = (inp - target).abs().flatten(1).amax(1)
    assert float(d[:4].max()) <= 8 / 255 + 1e-6 and float(d[:4].min()) > 0  # attacked, within budget
    assert torch.equal(inp[4:], target[4:])  # the clean part is left as it is: its target is itself


def test_loss_decreases_on_a_fixed_batch(heads, pixels: torch.Tensor) -> None:
    det = heads[0]
    adv, _ = fixed_adversarial_set(det, pixels, eps=8.0, steps=3, batch_size=8)
    inp, target = torch.cat([adv[:4], pixels[4:]]), pixels
    from causalclip_cli.robustness.adversarial import features_from_pixels

    feats = features_from_pixels(det, target).detach()
    torch.manual_seed(0)
    net = PurifierUNet(PurifierUNetConfig(width=8, levels=1)).train()
    cfg = UNetTrainConfig(feature_weight=1.0, batch_size=8)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    losses = []
    for _ in range(40):
        opt.zero_grad()
        loss, parts = purifier_loss(net, det, inp, target, feats, cfg)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        assert set(parts) == {"pixel_l1", "feature_error"}
    assert min(losses[-5:]) < 0.95 * losses[0], losses
    # The frozen tower got no gradient: only the purifier learns.
    assert all(p.grad is None for p in det.backbone.tower.parameters())


def test_tiny_training_run_writes_a_purifier_that_reloads(heads, pixels: torch.Tensor, tmp_path: Path) -> None:
    val_adv, val_target = fixed_adversarial_set(heads[0], pixels[:4], eps=8.0, steps=2, batch_size=4)
    cfg = UNetTrainConfig(width=8, levels=2, iterations=4, batch_size=4, lr=3e-3,
                          pairs=PairConfig(attack_batch=4, step_choices=(2,)))
    net, summary = train_unet_purifier(heads, pixels, cfg, val=(pixels[:4], val_adv, val_target))
    assert summary["iterations_run"] == 4 and summary["stopped_by"] == "iterations"
    assert summary["heads"] == ["tiny", "tiny-linear"] and summary["n_images"] == 8
    assert summary["val_before"]["feature_error_purified_adv"] == pytest.approx(summary["feature_error_adv"])
    assert summary["val_before"]["feature_error_purified_clean"] == 0.0  # identity before training
    assert {"head0", "head1"} <= set(summary["val_after"])
    assert any(p.abs().sum() > 0 for p in net.out.parameters())  # it learned a correction
    path = save_purifier(tmp_path / "p.safetensors", net, {"training": summary})
    assert [p.name for p in tmp_path.iterdir()] == ["p.safetensors"]  # atomic: no partial file left
    loaded = load_purifier(path)
    assert loaded.metadata["kind"] == "residual-unet"
    assert loaded.metadata["config"] == {"width": 8, "levels": 2}
    assert loaded.metadata["training"]["iterations_run"] == 4
    assert loaded.metadata["training"]["val_after"] == json.loads(json.dumps(summary["val_after"]))
    with torch.no_grad():
        assert torch.equal(loaded(pixels), net(pixels).clamp(0, 1))
    assert isinstance(parse_purifier(f"learned:{path}"), purify.LearnedPurifier)
    # The adaptive attacker differentiates through it.
    x = pixels[:1].clone().requires_grad_(True)
    (g,) = torch.autograd.grad(loaded.for_attack(x).sum(), x)
    assert g.abs().sum() > 0
    # A time budget of zero stops after the first step.
    _, s2 = train_unet_purifier(heads[:1], pixels, dataclasses.replace(cfg, time_budget_s=0.0))
    assert s2["iterations_run"] == 1 and s2["stopped_by"] == "time budget"


def test_feature_error_is_relative() -> None:
    b = torch.tensor([[3.0, 4.0]])
    assert float(relative_feature_error(b * 1.1, b)) == pytest.approx(0.01)


# --------------------------------------------------------------------------- `--purify learned` by name


@pytest.fixture
def shipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A purifier folder holding one shipped purifier, in place of the checkout's benchmarks/results."""
    d = tmp_path / "shipped"
    d.mkdir()
    torch.manual_seed(0)
    save_purifier(d / "purifier-vitb16.safetensors", PurifierNet(), {"training": {"n_images": 3}})
    monkeypatch.setattr(purify, "purifier_dirs", lambda: [d])
    return d


def test_learned_resolves_the_shipped_purifier_by_name(shipped: Path) -> None:
    p = parse_purifier("learned")
    assert isinstance(p, purify.LearnedPurifier) and p.path == str(shipped / "purifier-vitb16.safetensors")
    assert parse_purifier("learned:purifier-vitb16").path == p.path
    assert resolve_purifier(None) == shipped / "purifier-vitb16.safetensors"
    with pytest.raises(CheckpointError, match=r"purifier 'nope' not found \(shipped purifiers: purifier-vitb16\)"):
        parse_purifier("learned:nope")
    # Something path-like is a path: a missing file is reported as one, not looked up by name.
    with pytest.raises(CheckpointError, match="purifier not found"):
        parse_purifier("learned:/nonexistent/p.safetensors")


def test_learned_without_a_shipped_purifier_lists_the_choices(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(purify, "purifier_dirs", lambda: [tmp_path / "empty"])
    with pytest.raises(CheckpointError, match=r"shipped purifiers: none installed"):
        parse_purifier("learned")


def test_the_checkout_ships_the_learned_purifier() -> None:
    path = resolve_purifier(None)
    assert path == REPO / "benchmarks" / "results" / "purifier-vitb16.safetensors"
    assert "purifier-vitb16" in purify.available_purifiers()


def test_scan_purify_learned_by_name(tiny_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import numpy as np
    from PIL import Image

    data = tmp_path / "imgs"
    data.mkdir()
    for i in range(2):
        Image.fromarray(np.full((20, 24, 3), 40 + 80 * i, np.uint8)).save(data / f"{i}.png")
    base = ["scan", str(data), "-c", str(tiny_checkpoint), "--workers", "0", "--no-progress", "--format", "jsonl",
            "--fail-on", "never", "--device", "cpu"]
    res = runner.invoke(app, [*base, "--purify", "learned"])
    assert res.exit_code == 0, res.output
    recs = [json.loads(line) for line in res.stdout.splitlines()]
    assert len(recs) == 2 and all("+purify:learned:purifier-vitb16.safetensors" in r["model"] for r in recs)
    monkeypatch.setattr(purify, "purifier_dirs", lambda: [tmp_path / "none"])
    bad = runner.invoke(app, [*base, "--purify", "learned"])
    assert bad.exit_code != 0 and "purifier 'purifier-vitb16' not found" in bad.output
    assert "shipped purifiers: none installed" in bad.output


def test_info_shows_the_purifier(tiny_checkpoint: Path, shipped: Path) -> None:
    res = runner.invoke(app, ["info", "--json", "-c", str(tiny_checkpoint)])
    assert res.exit_code == 0, res.output
    pu = json.loads(res.stdout)["purifier"]
    assert pu["path"] == str(shipped / "purifier-vitb16.safetensors") and pu["kind"] == "residual-cnn"
    assert pu["n_images"] == 3 and pu["ship_bar"]["passed"] is False and pu["ship_bar"]["evaluated"] is False
    text = runner.invoke(app, ["info", "-c", str(tiny_checkpoint)])
    assert text.exit_code == 0
    flat = " ".join(text.stdout.split())
    assert "--purify learned" in flat and "ship bar" in flat and "not passed" in flat


def test_info_shows_the_real_purifiers_numbers(tiny_checkpoint: Path) -> None:
    res = runner.invoke(app, ["info", "--json", "-c", str(tiny_checkpoint)])
    pu = json.loads(res.stdout)["purifier"]
    assert pu["steps"] == 80 and pu["heads"] == ["causalclip-vitb16"]
    assert pu["feature_error_before"] == pytest.approx(0.4211, abs=1e-4)
    assert pu["feature_error_after"] == pytest.approx(0.4204, abs=1e-4)


# --------------------------------------------------------------------------- ship bar and the GPU job


def _ship_check():
    spec = importlib.util.spec_from_file_location("ship_check", REPO / "benchmarks" / "gpu_purifier" / "ship_check.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _adv_doc(sr_learned: float, ap_learned: float) -> dict:
    def ev(sr: float) -> dict:
        return {"none": {"causalclip": {"success_rate": 1.0}, "linear": {"success_rate": 1.0}},
                "learned": {"causalclip": {"success_rate": sr}, "linear": {"success_rate": sr}}}

    return {"images": ["a", "b"],
            "clean": {h: {"none": {"ap": 0.95}, "learned": {"ap": ap_learned}} for h in ("causalclip", "linear")},
            "attacks": {k: {"eval": ev(sr_learned)} for k in ("pgd eps4 on causalclip", "pgd eps4 on linear")}}


def test_ship_bar_verdict() -> None:
    sc = _ship_check()
    assert sc.verdict(_adv_doc(0.4, 0.945))["passed"] is True
    assert sc.verdict(_adv_doc(0.6, 0.95))["passed"] is False  # attack still succeeds too often
    bad = sc.verdict(_adv_doc(0.1, 0.93))  # clean AP cost 0.02
    assert bad["passed"] is False and bad["heads"]["causalclip"]["clean_ap_cost"] == pytest.approx(0.02)
    assert sc.verdict({"images": []})["passed"] is False  # nothing measured: not passed


@pytest.mark.skipif(not (REPO.parent / "shared" / "data").is_dir(), reason="needs ../shared/data")
def test_gpu_job_tiny_plumbing(tmp_path: Path) -> None:
    """run.sh --tiny: train.py, adversarial.py and ship_check.py end to end on CPU with tiny random heads."""
    env = {**os.environ, "OUT": str(tmp_path / "out"), "PYTHON": sys.executable, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(REPO)}
    res = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_purifier" / "run.sh"), "--tiny"], env=env,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    out = tmp_path / "out"
    assert {"purifier-vitb16-unet.safetensors", "train_summary.json", "adversarial.json", "adversarial.md",
            "ship.json"} <= {p.name for p in out.iterdir()}
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["tiny"] and summary["iterations_run"] == 6 and summary["arch"]["kind"] == "residual-unet"
    adv = json.loads((out / "adversarial.json").read_text())
    assert "learned" in adv["clean"]["causalclip"] and "pgd eps4 on linear" in adv["attacks"]
    assert adv["purifier"]["kind"] == "residual-unet"
    meta = load_purifier(out / "purifier-vitb16-unet.safetensors").metadata
    assert meta["ship_bar"]["passed"] is False  # a plumbing run never passes the bar
    assert "| CausalCLIP head |" in (out / "adversarial.md").read_text()


def test_a_failed_write_leaves_the_old_purifier(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The atomic writer: a save that dies half way leaves the previous file as it was and no partial file."""
    import safetensors.torch as st

    net = PurifierUNet(PurifierUNetConfig(width=4, levels=1))
    path = save_purifier(tmp_path / "p.safetensors", net, {"training": {"n_images": 1}})
    before = path.read_bytes()

    def dies(tensors, filename, metadata=None):  # noqa: ANN202
        Path(filename).write_bytes(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(st, "save_file", dies)
    with pytest.raises(OSError, match="disk full"):
        save_purifier(path, PurifierUNet(PurifierUNetConfig(width=4, levels=1)), {"training": {"n_images": 2}})
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["p.safetensors"]
    assert load_purifier(path).metadata["training"]["n_images"] == 1
