"""Issue 10 levers, end to end on the tiny backbone: full-resolution crop views, intermediate-layer
features, cached augmented views, crop aggregation, probability scaling — and one real-feature check."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from causalclip_cli.cli import app
from causalclip_cli.model.checkpoint import load_detector, read_metadata
from causalclip_cli.model.preprocess import Preprocess
from causalclip_cli.model.taps import FeatureSpec, forward_layers, parse_layers, select_layers, tower_shape
from causalclip_cli.training.trainer import TrainConfig, train_head

runner = CliRunner()
TINY = ["--backbone", "causalclip-tiny", "--pretrained", "none"]
PRE = Preprocess(32, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


def _gradient(w: int, h: int) -> Image.Image:
    x = np.linspace(0, 255, w, dtype=np.float32)[None, :, None]
    y = np.linspace(0, 255, h, dtype=np.float32)[:, None, None]
    arr = np.concatenate([np.broadcast_to(x, (h, w, 1)), np.broadcast_to(y, (h, w, 1)),
                          np.full((h, w, 1), 128, np.float32)], axis=2)
    return Image.fromarray(arr.astype(np.uint8))


def test_native_views_are_full_resolution_crops() -> None:
    img = _gradient(120, 80)
    native = PRE.with_views("native", 5)
    views = native.view_images(img)
    assert len(views) == 5 and all(v.size == (32, 32) for v in views)
    # Centre first, then the four corners, cut from the image as decoded (no downscale).
    assert np.array_equal(np.asarray(views[0]), np.asarray(img.crop((44, 24, 76, 56))))
    assert np.array_equal(np.asarray(views[1]), np.asarray(img.crop((0, 0, 32, 32))))
    assert np.array_equal(np.asarray(views[4]), np.asarray(img.crop((88, 48, 120, 80))))
    assert native.to_views(img).shape == (5, 3, 32, 32)
    assert len(PRE.with_views("native", 9).view_images(img)) == 9
    # The resize recipe shrinks the whole image instead; a small image is upscaled by both recipes alike.
    assert not np.array_equal(np.asarray(PRE.view_images(img)[0]), np.asarray(views[0]))
    small = _gradient(20, 16)
    assert np.array_equal(PRE.to_array(small), PRE.with_views("native", 1).to_array(small))
    assert native.decode_min_size is None and PRE.decode_min_size == 32


def test_recipe_cache_keys() -> None:
    # The historical recipe keeps its digest (and its cached features); every lever changes it.
    import hashlib

    legacy = {"size": 32, "mean": [0.5] * 3, "std": [0.5] * 3, "interpolation": "bicubic", "crop": "center"}
    old_key = hashlib.sha256(json.dumps(legacy, sort_keys=True).encode()).hexdigest()[:16]
    assert PRE.key() == old_key
    keys = {PRE.key(), PRE.with_views("native", 1).key(), PRE.with_views("native", 5).key(),
            PRE.with_views("resize", 5).key()}
    assert len(keys) == 4
    assert FeatureSpec().key() == "" and FeatureSpec((0, 3, 4)).key() == "L0_3_4"
    with pytest.raises(ValueError):
        PRE.with_views("native", 4)


def test_layer_syntax() -> None:
    assert parse_layers("final", 12) == (0,)
    assert parse_layers("all", 3) == (0, 1, 2, 3)
    assert parse_layers("blocks", 2) == (1, 2)
    assert parse_layers("4:6,final", 12) == (4, 5, 6, 0)
    assert parse_layers("final,4,p4,p10:12", 12) == (0, 4, -4, -10, -11, -12)  # pK: block K's patch-token mean
    assert FeatureSpec((0, 4, -4)).key() == "L0_4_p4"
    for bad in ("13", "0:13", "", "p0", "p13", "p", "px", "p0:2"):
        with pytest.raises(ValueError):
            parse_layers(bad, 12)


def test_forward_layers_one_pass_matches_the_tower() -> None:
    from causalclip_cli.model.backbones import BackboneSpec, load_backbone

    tower = load_backbone(BackboneSpec("causalclip-tiny", "none")).tower
    shape = tower_shape(tower)
    assert (shape.embed_dim, shape.width, shape.depth) == (32, 64, 2)
    x = torch.randn(3, 3, 32, 32)
    with torch.inference_mode():
        full = forward_layers(tower, x, (0, 1, 2)).numpy()
        final = tower(x).numpy()
        second = forward_layers(tower, x, (2,)).numpy()
    assert full.shape == (3, 32 + 64 + 64)
    np.testing.assert_allclose(full[:, :32], final, atol=1e-5)
    np.testing.assert_allclose(select_layers(full, (0, 1, 2), (2,), shape), second, atol=1e-5)
    assert not np.allclose(full[:, 32:96], full[:, 96:])  # blocks differ


def test_patch_taps_are_the_mean_of_a_blocks_patch_tokens() -> None:
    from causalclip_cli.model.backbones import BackboneSpec, load_backbone

    tower = load_backbone(BackboneSpec("causalclip-tiny", "none")).tower
    x = torch.randn(2, 3, 32, 32)
    seen = []
    hook = tower.transformer.resblocks[0].register_forward_hook(lambda _m, _i, out: seen.append(out))
    with torch.inference_mode():
        both = forward_layers(tower, x, (1, -1, 0)).numpy()
    hook.remove()
    tokens = seen[0] if tower.transformer.batch_first else seen[0].transpose(0, 1)
    assert both.shape == (2, 64 + 64 + 32)
    np.testing.assert_allclose(both[:, :64], tokens[:, 0].numpy(), atol=1e-6)  # the class token
    np.testing.assert_allclose(both[:, 64:128], tokens[:, 1:].mean(1).numpy(), atol=1e-6)  # the patch mean
    with torch.inference_mode():
        np.testing.assert_allclose(both[:, 128:], tower(x).numpy(), atol=1e-5)


def test_training_draws_one_augmented_view_per_epoch() -> None:
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 40)
    clean = rng.normal(size=(80, 16)).astype(np.float32) + y[:, None] * 0.8
    views = np.stack([clean, clean + rng.normal(scale=0.3, size=clean.shape).astype(np.float32)], axis=1)
    cfg = TrainConfig(epochs=3, batch_size=16, lr=1e-2, seed=0)
    a = train_head("linear", {}, views, y, clean, y, cfg)
    b = train_head("linear", {}, views, y, clean, y, cfg)
    c = train_head("linear", {}, clean, y, clean, y, cfg)
    wa, wb, wc = (r.head.fc.weight.detach() for r in (a, b, c))
    assert torch.equal(wa, wb)  # deterministic
    assert not torch.equal(wa, wc)  # the augmented views were used


def test_weighted_layers_learn_per_layer_weights() -> None:
    from causalclip_cli.model.heads import make_head

    head = make_head("causalclip", 96, {"segments": [32, 64], "combine": "weighted", "mask_hidden": 8,
                                        "cls_hidden": 8, "adv_hidden": 8})
    w = head.inputs.layer_weights()
    assert w is not None and torch.allclose(w, torch.ones(2), atol=1e-3)
    with pytest.raises(ValueError):
        make_head("linear", 96, {"segments": [32, 32]})


@pytest.fixture(scope="module")
def sized_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Larger-than-input images of two classes that differ in fine texture (noise) only."""
    root = tmp_path_factory.mktemp("evidence") / "data"
    rng = np.random.default_rng(1)
    for label, cls in ((0, "0_real"), (1, "1_fake")):
        d = root / "gen" / cls
        d.mkdir(parents=True)
        for i in range(22):
            base = np.asarray(_gradient(96, 72), dtype=np.float32)
            noise = rng.normal(scale=30.0 if label else 2.0, size=base.shape)
            Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8)).save(d / f"{i}.png")
    return root


def test_crop_layers_and_augmented_views_round_trip(sized_tree: Path, tmp_path: Path) -> None:
    ckpt = tmp_path / "crops.safetensors"
    cache = tmp_path / "cache"
    res = runner.invoke(app, ["train", "--data", str(sized_tree), "--output", str(ckpt), *TINY, "--cache-dir",
                              str(cache), "--workers", "0", "--epochs", "3", "--lr", "1e-3", "--recipe", "native",
                              "--crops", "5", "--layers", "all", "--combine", "weighted", "--aggregate", "max",
                              "--augment-views", "2", "--hidden", "8"])
    assert res.exit_code == 0, res.output
    meta = read_metadata(ckpt)
    assert meta["preprocess"]["mode"] == "native" and meta["preprocess"]["views"] == 5
    assert meta["features"] == {"layers": [0, 1, 2], "aggregate": "max"}
    assert meta["head"]["embed_dim"] == 32 + 64 + 64
    assert meta["head"]["config"]["segments"] == [32, 64, 64]
    assert meta["training"]["summary"]["augmented_views"] == 2
    shown = runner.invoke(app, ["info", "-c", str(ckpt)])
    assert shown.exit_code == 0 and "2 augmented views" in " ".join(shown.output.split())
    # The cache keyed on the choice: centre crops with layer taps, and each augmented view apart.
    dirs = sorted(p.name for p in (cache / "features").iterdir())
    assert len(dirs) == 3 and all("-L0_1_2-" in d for d in dirs)
    assert sum(d.endswith("-degrade1") for d in dirs) == 1 and sum(d.endswith("-degrade2") for d in dirs) == 1

    det = load_detector(str(ckpt), device="cpu")
    assert det.model_id.endswith(":5crops")
    files = sorted(str(p) for p in sized_tree.rglob("*.png"))[:3]
    from causalclip_cli.inputs.data import make_loader

    batch = next(iter(make_loader(files, det.preprocess, 3, 0)))
    assert batch.views == 5 and tuple(batch.tensor.shape) == (15, 3, 32, 32)
    probs = det.probabilities(batch.tensor)
    assert probs.shape == (3,)
    # max aggregation: the image's logit is its most suspicious crop's
    feats = det.embed(batch.tensor).reshape(3, 5, -1)
    with torch.inference_mode():
        per_crop = det.head(feats.reshape(15, -1)).reshape(3, 5)
    np.testing.assert_allclose(probs.numpy(), torch.sigmoid(per_crop.amax(1)).numpy(), atol=1e-6)

    scan = runner.invoke(app, ["scan", str(sized_tree), "-c", str(ckpt), "--format", "jsonl", "--workers", "0",
                               "--no-provenance"])
    recs = [json.loads(line) for line in scan.stdout.splitlines()]
    assert len(recs) == 44 and all(r["probability"] is not None for r in recs)
    assert all(r["model"].endswith(":5crops") for r in recs)
    one = runner.invoke(app, ["scan", str(sized_tree), "-c", str(ckpt), "--format", "jsonl", "--workers", "0",
                              "--no-provenance", "--crops", "1"])
    recs1 = [json.loads(line) for line in one.stdout.splitlines()]
    assert len(recs1) == 44 and not recs1[0]["model"].endswith("crops")
    assert [r["probability"] for r in recs1] != [r["probability"] for r in recs]
    bad = runner.invoke(app, ["scan", str(sized_tree), "-c", str(ckpt), "--crops", "4"])
    assert bad.exit_code == 2 and "--crops" in bad.output

    # A layer subset after `all`: sliced from the cache of every layer, nothing embedded again.
    before = {p: p.stat().st_mtime_ns for p in (cache / "features").rglob("*.safetensors")}
    sub = tmp_path / "sub.safetensors"
    res = runner.invoke(app, ["train", "--data", str(sized_tree), "--output", str(sub), *TINY, "--cache-dir",
                              str(cache), "--workers", "0", "--epochs", "1", "--recipe", "native", "--layers", "2",
                              "--hidden", "8"])
    assert res.exit_code == 0, res.output
    assert "embedded" not in res.output
    after = {p: p.stat().st_mtime_ns for p in (cache / "features").rglob("*.safetensors")}
    assert after == before
    assert read_metadata(sub)["head"]["embed_dim"] == 64


def test_calibrate_fits_probability_scaling(sized_tree: Path, tmp_path: Path) -> None:
    ckpt = tmp_path / "h.safetensors"
    cache = tmp_path / "cache"
    res = runner.invoke(app, ["train", "--data", str(sized_tree), "--output", str(ckpt), *TINY, "--cache-dir",
                              str(cache), "--workers", "0", "--epochs", "3", "--lr", "1e-3", "--hidden", "8"])
    assert res.exit_code == 0, res.output
    cal = tmp_path / "cal.safetensors"
    res = runner.invoke(app, ["calibrate", "--data", str(sized_tree), "-c", str(ckpt), "-o", str(cal), "--split",
                              "train", "--target-fpr", "0.1", "--band-fpr", "0.3:0.1", "--cache-dir", str(cache),
                              "--workers", "0"])
    assert res.exit_code == 0, res.output
    meta = read_metadata(cal)
    scaling = meta["scaling"]
    assert scaling["method"] == "platt" and scaling["a"] > 0
    before, after = load_detector(str(ckpt)), load_detector(str(cal))
    x = torch.randn(8, before.head.embed_dim)
    raw, scaled = before.scores(x).numpy(), after.scores(x).numpy()
    # Scaling changes probabilities but never their order; the threshold lives on the scaled scale.
    assert np.array_equal(np.argsort(raw), np.argsort(scaled)) and not np.allclose(raw, scaled)
    low, high = meta["decision"]["uncertain"]
    assert low <= meta["decision"]["threshold"] <= high
    res = runner.invoke(app, ["calibrate", "--data", str(sized_tree), "-c", str(ckpt), "-o", str(cal), "--split",
                              "train", "--scaling", "none", "--cache-dir", str(cache), "--workers", "0"])
    assert res.exit_code == 0 and read_metadata(cal)["scaling"]["method"] == "none"


def test_bad_lever_options_are_usage_errors(sized_tree: Path, tmp_path: Path) -> None:
    for extra, word in ((["--crops", "4"], "views"), (["--layers", "9"], "layer"), (["--combine", "sum"], "combine"),
                        (["--recipe", "huge"], "mode"), (["--aggregate", "median"], "aggregate")):
        res = runner.invoke(app, ["train", "--data", str(sized_tree), "--output", str(tmp_path / "x.safetensors"),
                                  *TINY, "--workers", "0", "--epochs", "1", *extra])
        assert res.exit_code == 2, (extra, res.output)
        assert word in res.output, (extra, res.output)


@pytest.mark.real
def test_real_crop_path_ranks_held_out_modern_images(shared_data: Path, tmp_path: Path) -> None:
    """The released full-resolution head (native recipe, five crops per image) on camera photos and current
    generators it never saw (the release's test split): better than chance, with real ViT-B/16 features."""
    import csv

    manifest = Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "release-manifest.csv"
    rows = [r for r in csv.DictReader(manifest.open()) if r["split"] == "test" and r["generator"].startswith("modern")]
    reals = sorted(r["path"] for r in rows if r["label"] == "0")[:6]
    fakes = sorted(r["path"] for r in rows if r["label"] == "1")[:6]
    base = manifest.parent
    paths = [os.path.normpath(base / p) for p in reals + fakes]
    res = runner.invoke(app, ["scan", *paths, "-c", "causalclip-vitb16-crops", "--crops", "5", "--format", "jsonl",
                              "--workers", "0", "--no-provenance"])
    recs = {os.path.normpath(json.loads(line)["path"]): json.loads(line) for line in res.stdout.splitlines()}
    assert all(recs[p]["error"] is None for p in paths)
    from sklearn.metrics import roc_auc_score

    y = [0] * len(reals) + [1] * len(fakes)
    auc = roc_auc_score(y, [recs[p]["probability"] for p in paths])
    assert auc > 0.7, auc
