"""Adversarial attacks and purification: gradient path, budgets, purifiers, learned purifier, CLI plumbing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from causalclip_cli.cli import app
from causalclip_cli.errors import CheckpointError, UsageError
from causalclip_cli.robustness.adversarial import (
    AttackConfig,
    attack,
    logits_from_pixels,
    perturbation_stats,
    probabilities,
)
from causalclip_cli.robustness.purify import (
    BlurPurifier,
    JpegPurifier,
    MedianPurifier,
    PurifierNet,
    PurifierTrainConfig,
    RescalePurifier,
    load_purifier,
    normalise,
    parse_purifier,
    save_purifier,
    to_unit,
    train_purifier,
    with_purifier,
)

runner = CliRunner()


@pytest.fixture(scope="module")
def tiny(tiny_checkpoint: Path):
    from causalclip_cli.model.checkpoint import load_detector

    return load_detector(str(tiny_checkpoint), device="cpu")


@pytest.fixture(scope="module")
def pixels(tiny) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    s = tiny.preprocess.size
    # Smooth random images (coarse noise upsampled), like photos' low-frequency content.
    coarse = torch.rand(6, 3, 8, 8, generator=g)
    return torch.nn.functional.interpolate(coarse, size=(s, s), mode="bilinear", align_corners=False)


def test_gradient_is_nonzero_and_matches_finite_difference(tiny, pixels: torch.Tensor) -> None:
    x = pixels[:2].clone().requires_grad_(True)
    logit = logits_from_pixels(tiny, x).sum()
    (grad,) = torch.autograd.grad(logit, x)
    assert grad.abs().sum() > 0, "no gradient reaches the pixels (inference_mode or detached path?)"
    # Central difference along the gradient's own direction (float32: a step well above rounding noise).
    d = grad / grad.norm()
    h = 1e-2
    with torch.no_grad():
        fd = (logits_from_pixels(tiny, x + h * d).sum() - logits_from_pixels(tiny, x - h * d).sum()) / (2 * h)
    analytic = (grad * d).sum()
    assert torch.isclose(fd, analytic, rtol=3e-2), (float(fd), float(analytic))


def test_attack_path_scores_like_the_detector(tiny, pixels: torch.Tensor) -> None:
    # The differentiable path must compute the very probabilities scan/eval report (same features, head,
    # calibration), or the attack would optimise something else than the verdict.
    with torch.no_grad():
        via_attack = torch.sigmoid(logits_from_pixels(tiny, pixels))
    assert torch.allclose(via_attack, probabilities(tiny, pixels), atol=1e-5)


def test_multi_view_checkpoints_are_refused(pixels: torch.Tensor) -> None:
    from types import SimpleNamespace

    det = SimpleNamespace(preprocess=SimpleNamespace(views=3), path=Path("multi.safetensors"))
    with pytest.raises(UsageError, match="single-view"):
        attack(det, pixels[:1], torch.zeros(1), AttackConfig())


def test_head_is_deterministic_in_attack_path(tiny, pixels: torch.Tensor) -> None:
    tiny.head.train()  # even if someone left it in training mode, the attack path must not sample Gumbel noise
    a = logits_from_pixels(tiny, pixels[:2]).detach()
    b = logits_from_pixels(tiny, pixels[:2]).detach()
    assert not tiny.head.training
    assert torch.equal(a, b)


@pytest.mark.parametrize("method", ["pgd", "fgsm"])
def test_attack_moves_probability_toward_target(tiny, pixels: torch.Tensor, method: str) -> None:
    before = probabilities(tiny, pixels)
    cfg = AttackConfig(method=method, eps=8.0, steps=5)
    to_real = attack(tiny, pixels, torch.zeros(len(pixels)), cfg)
    to_fake = attack(tiny, pixels, torch.ones(len(pixels)), cfg)
    assert (probabilities(tiny, to_real) < before).all()
    assert (probabilities(tiny, to_fake) > before).all()


@pytest.mark.parametrize("method", ["pgd", "fgsm"])
def test_eps_bound_is_respected_exactly(tiny, pixels: torch.Tensor, method: str) -> None:
    eps = 4.0
    adv = attack(tiny, pixels, torch.zeros(len(pixels)), AttackConfig(method=method, eps=eps, steps=4))
    linf = (adv - pixels).abs().amax()
    assert float(linf) <= eps / 255 + 1e-6
    assert float(linf) >= eps / 255 - 1e-6  # the budget is actually used
    assert adv.min() >= 0 and adv.max() <= 1
    stats = perturbation_stats(pixels, adv)
    assert stats["linf_max"] == pytest.approx(eps, abs=1e-3)
    assert 30 < stats["psnr_mean"] < 60


def test_attack_config_validates() -> None:
    with pytest.raises(UsageError):
        AttackConfig(method="cw")
    with pytest.raises(UsageError):
        AttackConfig(eps=0)
    assert AttackConfig(method="pgd", eps=4, steps=10).alpha == pytest.approx(1.0 / 255)
    assert AttackConfig(method="fgsm", eps=4).alpha == pytest.approx(4 / 255)


def test_pixel_round_trip_uses_preprocess_stats(tiny, pixels: torch.Tensor) -> None:
    pre = tiny.preprocess
    assert torch.allclose(to_unit(normalise(pixels, pre), pre), pixels, atol=1e-6)
    assert torch.allclose(normalise(pixels, pre)[:, 0], (pixels[:, 0] - pre.mean[0]) / pre.std[0])


@pytest.mark.parametrize("spec", ["jpeg:75", "blur:1", "rescale:0.5", "median:3"])
def test_baseline_purifiers(spec: str) -> None:
    p = parse_purifier(spec)
    coarse = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    pixels = torch.nn.functional.interpolate(coarse, size=(224, 224), mode="bilinear", align_corners=False)
    noisy = (pixels + 0.03 * torch.randn(pixels.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    out = p(noisy)
    assert out.shape == noisy.shape and out.min() >= 0 and out.max() <= 1
    # Each baseline removes part of i.i.d. pixel noise from smooth images.
    assert (out - pixels).abs().mean() < (noisy - pixels).abs().mean()
    # The adaptive attacker gets a gradient through every purifier (BPDA for JPEG: the identity).
    x = noisy[:1].clone().requires_grad_(True)
    w = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    (g,) = torch.autograd.grad((p.for_attack(x) * w).sum(), x)
    assert g.abs().sum() > 0
    if isinstance(p, JpegPurifier):
        assert torch.equal(g, w)
        assert torch.allclose(p.for_attack(x).detach(), p(x.detach()), atol=1e-6)


def test_purifier_specs_are_validated() -> None:
    assert parse_purifier(None) is None and parse_purifier("none") is None
    assert isinstance(parse_purifier("blur"), BlurPurifier)
    assert isinstance(parse_purifier("rescale:0.25"), RescalePurifier)
    assert isinstance(parse_purifier("median:5"), MedianPurifier)
    for bad in ("median:4", "jpeg:0", "rescale:2", "sharpen:1", "blur:x"):
        with pytest.raises(UsageError):
            parse_purifier(bad)
    with pytest.raises(CheckpointError):
        parse_purifier("learned:/nonexistent/p.safetensors")


def test_learned_purifier_trains_and_round_trips(tiny, pixels: torch.Tensor, tmp_path: Path) -> None:
    untrained = PurifierNet()
    assert torch.equal(untrained(pixels[:1]), pixels[:1])  # zero-initialised last layer: the identity
    cfg = PurifierTrainConfig(eps_choices=(8.0,), attack_steps=2, iterations=40, batch_size=4, crop=32, width=8,
                              depth=3)
    net, summary = train_purifier(tiny, pixels, cfg)
    assert summary["l1_purified_adv_vs_clean"] < summary["l1_adv_vs_clean"]
    path = save_purifier(tmp_path / "p.safetensors", net, {"training": summary})
    assert not list(tmp_path.glob("*.partial"))
    loaded = load_purifier(path)
    assert loaded.metadata["training"]["n_images"] == len(pixels)
    assert loaded.metadata["config"] == {"width": 8, "depth": 3}
    with torch.no_grad():
        assert torch.equal(loaded(pixels), net(pixels))
    # A head checkpoint is not a purifier.
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(1)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(CheckpointError, match="purifier metadata"):
        load_purifier(tmp_path / "other.safetensors")


def test_guided_purifier_moves_adversarial_features_back(tiny, pixels: torch.Tensor) -> None:
    """Representation-guided training: the backbone's weights get no gradient, the net does, and the purified
    adversarial images land closer to the clean ones in the features the head reads."""
    tower = tiny.backbone.tower
    before = {k: v.clone() for k, v in tower.state_dict().items()}
    cfg = PurifierTrainConfig(eps_choices=(8.0,), attack_steps=2, iterations=30, width=8, depth=3,
                              feature_weight=10.0, guided_batch_size=4, lr=3e-3)
    net, summary = train_purifier(tiny, pixels, cfg)
    assert all(p.grad is None for p in tower.parameters())
    assert all(torch.equal(v, before[k]) for k, v in tower.state_dict().items())
    assert summary["feature_error_adv"] > 0
    assert summary["feature_error_purified_adv"] < summary["feature_error_adv"]
    assert 0.0 <= summary["flip_rate_after_purifier"] <= 1.0
    assert any(p.abs().sum() > 0 for p in net.body[-1].parameters())  # it learned a correction


def test_purified_detector_changes_embedding_and_model_id(tiny, pixels: torch.Tensor) -> None:
    det = with_purifier(tiny, parse_purifier("blur:2"))
    assert det.model_id.endswith("+purify:blur:2")
    x = normalise(pixels[:2], tiny.preprocess)
    assert not torch.allclose(det.embed(x), tiny.embed(x))
    expected = tiny.embed(normalise(BlurPurifier(2)(pixels[:2]), tiny.preprocess))
    assert torch.allclose(det.embed(x), expected, atol=1e-5)


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import numpy as np

    root = tmp_path_factory.mktemp("advdata")
    rng = np.random.default_rng(0)
    for label, base in (("0_real", 60), ("1_fake", 160)):
        d = root / "gen" / label
        d.mkdir(parents=True)
        for i in range(3):
            arr = np.clip(base + 10 * i + rng.normal(0, 25, (36, 40, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(arr).save(d / f"{i}.png")
    (root / "gen" / "1_fake" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 10)
    return root


def test_scan_purify_cli(tiny_dataset: Path, tiny_checkpoint: Path, tmp_path: Path) -> None:
    base = ["scan", str(tiny_dataset), "-c", str(tiny_checkpoint), "--workers", "0", "--no-progress",
            "--format", "jsonl", "--fail-on", "never"]
    plain = runner.invoke(app, base)
    res = runner.invoke(app, [*base, "--purify", "median:3"])
    assert res.exit_code == 3, res.output  # one unreadable file, nothing flagged with --fail-on never
    recs = [json.loads(line) for line in res.stdout.splitlines()]
    good = [r for r in recs if r["probability"] is not None]
    assert len(good) == 6 and any(r["error"] for r in recs)
    assert all("+purify:median:3" in r["model"] for r in recs)
    plain_probs = {r["path"]: r["probability"] for r in map(json.loads, plain.stdout.splitlines())}
    assert any(abs(r["probability"] - plain_probs[r["path"]]) > 1e-7 for r in good)
    # The learned purifier loads from a file written by train-purifier.
    out = tmp_path / "pur.safetensors"
    tr = runner.invoke(app, ["train-purifier", str(tiny_dataset), "-o", str(out), "-c", str(tiny_checkpoint),
                             "--steps", "1", "--iterations", "5", "--workers", "0", "--device", "cpu"])
    assert tr.exit_code == 0, tr.output
    assert out.is_file()
    res = runner.invoke(app, [*base, "--purify", f"learned:{out}"])
    assert res.exit_code == 3, res.output
    bad = runner.invoke(app, [*base, "--purify", "sharpen:2"])
    assert bad.exit_code == 2 and "unknown method" in bad.output


def test_eval_attack_cli(tiny_dataset: Path, tiny_checkpoint: Path) -> None:
    args = ["eval", "-d", str(tiny_dataset), "-c", str(tiny_checkpoint), "--workers", "0", "--device", "cpu",
            "--attack", "pgd", "--eps", "8", "--steps", "3", "--format", "json", "--threshold", "0.5"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    rep = json.loads(res.stdout)
    assert rep["n"] == 6 and rep["unreadable"] == 1
    assert set(rep["conditions"]) == {"fake→real", "real→fake"}
    for name, c in rep["conditions"].items():
        assert c["n_attacked"] == 3
        assert c["linf_max"] <= 8 + 1e-3
        if name == "fake→real":
            assert c["mean_prob_attacked_after"] < c["mean_prob_attacked_before"]
        else:
            assert c["mean_prob_attacked_after"] > c["mean_prob_attacked_before"]
    # Adaptive through a purifier, crafted on another checkpoint (transfer plumbing), one target.
    res = runner.invoke(app, [*args[:-2], "--purify", "jpeg:90", "--adaptive", "--target", "real",
                              "--attack-source", str(tiny_checkpoint), "--attack", "fgsm"])
    assert res.exit_code == 0, res.output
    rep = json.loads(res.stdout)
    assert list(rep["conditions"]) == ["fake→real"] and rep["purify"] == "jpeg:90"
    assert rep["attack"]["adaptive"] and rep["attack"]["source"]
    assert "clean_purified" in rep
    table = runner.invoke(app, [*args[:-4], "--purify", "blur:1", "--format", "table"])
    assert table.exit_code == 0 and "clean+blur:1" in table.stdout
    res = runner.invoke(app, [*args[:-4], "--adaptive"])
    assert res.exit_code == 2 and "--adaptive needs" in res.output


@pytest.mark.real
def test_pgd_flips_most_verdicts_of_released_head(shared_data: Path) -> None:
    from causalclip_cli.model.checkpoint import load_detector
    from causalclip_cli.robustness.adversarial import load_pixels

    det = load_detector("causalclip-vitb16", device="cpu")
    # Generated images from a source the released head never saw (modern-2025), plus held-out reals.
    fakes = sorted((shared_data / "modern-2025" / "flux.1-dev" / "1_fake").glob("*.jpg"))[:2]
    reals = sorted((shared_data / "modern-2025" / "flux.1-dev" / "0_real").glob("*.jpg"))[:1]
    px, ok, _ = load_pixels([str(p) for p in fakes + reals], det)
    assert len(ok) == 3
    thr = det.decision.threshold
    before = probabilities(det, px) >= thr
    # Each image is pushed to the verdict opposite of the one it gets now.
    adv = attack(det, px, (~before).long(), AttackConfig(eps=4.0, steps=3, batch_size=3))
    after = probabilities(det, adv) >= thr
    flipped = (after != before).float().mean()
    assert float((adv - px).abs().amax()) <= 4 / 255 + 1e-6
    assert flipped >= 2 / 3, f"PGD at 4/255 flipped only {float(flipped):.2f} of verdicts"
