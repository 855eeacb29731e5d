"""train / eval / calibrate end to end, the feature cache, determinism and resume."""

from __future__ import annotations

import csv
import json
import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from causalclip_cli.cli import app
from causalclip_cli.model.checkpoint import load_head, read_metadata
from causalclip_cli.model.preprocess import Preprocess
from causalclip_cli.training.features import FeatureCache, extract_features
from causalclip_cli.training.trainer import TrainConfig, train_head

runner = CliRunner()
TINY = ["--backbone", "causalclip-tiny", "--pretrained", "none"]
PRE = Preprocess(32, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


def _link_tree(src_root: Path, dst: Path, mapping: dict[str, tuple[str, int]], per_class: int) -> None:
    """mapping: destination folder → (source folder, label); hard-link `per_class` images each."""
    for rel, (src, _label) in mapping.items():
        out = dst / rel
        out.mkdir(parents=True, exist_ok=True)
        files = sorted((src_root / src).iterdir())[:per_class]
        for f in files:
            os.link(f, out / f.name)


@pytest.fixture(scope="module")
def forensynths_tree(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> Path:
    root = tmp_path_factory.mktemp("fs") / "thumbs"
    fs = shared_data / "forensynths-thumbs"
    for g in ("biggan", "crn", "gaugan"):
        _link_tree(fs, root, {f"{g}/0_real": (f"{g}/0_real", 0), f"{g}/1_fake": (f"{g}/1_fake", 1)}, 12)
    return root


def _train(data: Path, out: Path, cache: Path, *extra: str):
    return runner.invoke(app, ["train", "--data", str(data), "--output", str(out), *TINY, "--cache-dir", str(cache),
                               "--workers", "0", "--epochs", "4", "--lr", "1e-3", *extra])


def test_train_then_eval_then_calibrate_on_forensynths_layout(forensynths_tree: Path, tmp_path: Path) -> None:
    ckpt = tmp_path / "head.safetensors"
    res = _train(forensynths_tree, ckpt, tmp_path / "cache")
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["layout"] == "forensynths" and summary["generators"] == ["biggan", "crn", "gaugan"]
    meta = read_metadata(ckpt)
    assert meta["head"]["kind"] == "causalclip"
    assert meta["backbone"]["config"] == "causalclip-tiny"
    assert meta["training"]["summary"]["n_train"] + meta["training"]["summary"]["n_val"] == 72
    assert set(meta["training"]["val_metrics"]) >= {"overall", "mean"}
    assert not list(tmp_path.glob("*.resume")) and not list(tmp_path.glob(".*partial"))

    for fmt in ("json", "csv", "table"):
        ev = runner.invoke(app, ["eval", "--data", str(forensynths_tree), "-c", str(ckpt), "--cache-dir",
                                 str(tmp_path / "cache"), "--workers", "0", "-f", fmt])
        assert ev.exit_code == 0, ev.output
    ev = runner.invoke(app, ["eval", "--data", str(forensynths_tree), "-c", str(ckpt), "--cache-dir",
                             str(tmp_path / "cache"), "--workers", "0", "-f", "json", "--perturb", "jpeg:50,blur:1"])
    report = json.loads(ev.stdout)
    assert set(report["conditions"]) == {"clean", "jpeg50", "blur1"}
    clean = report["conditions"]["clean"]
    assert set(clean) >= {"biggan", "crn", "gaugan", "overall", "mean"}
    for key in ("accuracy", "real_accuracy", "fake_accuracy", "ap", "auc", "tpr_at_fpr_1", "tpr_at_fpr_5", "n"):
        assert key in clean["overall"]
    assert clean["overall"]["n"] == 72

    cal = tmp_path / "calibrated.safetensors"
    res = runner.invoke(app, ["calibrate", "--data", str(forensynths_tree), "-c", str(ckpt), "-o", str(cal),
                              "--target-fpr", "0.1", "--band-fpr", "0.3:0.05", "--split", "train",
                              "--cache-dir", str(tmp_path / "cache"), "--workers", "0"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["achieved_fpr"] <= 0.1
    decision = read_metadata(cal)["decision"]
    assert decision["threshold"] == pytest.approx(out["threshold"])
    low, high = decision["uncertain"]
    assert low <= decision["threshold"] <= high
    h1, _ = load_head(ckpt)
    h2, _ = load_head(cal)
    assert all(torch.equal(a, b) for a, b in zip(h1.state_dict().values(), h2.state_dict().values(), strict=True))


def test_eval_plots(forensynths_tree: Path, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    ckpt = tmp_path / "h.safetensors"
    assert _train(forensynths_tree, ckpt, tmp_path / "c", "--head", "linear").exit_code == 0
    ev = runner.invoke(app, ["eval", "--data", str(forensynths_tree), "-c", str(ckpt), "--cache-dir",
                             str(tmp_path / "c"), "--workers", "0", "-f", "json", "--plot", str(tmp_path / "plots")])
    assert ev.exit_code == 0, ev.output
    for name in ("roc.png", "pr.png"):
        assert (tmp_path / "plots" / name).read_bytes()[:4] == b"\x89PNG"


def test_genimage_and_csv_layouts_train(shared_data: Path, tmp_path: Path) -> None:
    root = tmp_path / "genimage"
    mg = shared_data / "multigen-2022"
    for split, n in (("train", 10), ("val", 4)):
        for cls, src in (("ai", "1_fake"), ("nature", "0_real")):
            out = root / "stable_diffusion_v_1_4" / "imagenet_ai_0419_sdv4" / split / cls
            out.mkdir(parents=True)
            files = sorted((mg / "stable-diffusion-beta" / src).iterdir())
            start = 0 if split == "train" else 20
            for f in files[start:start + n]:
                os.link(f, out / f.name)
    res = _train(root, tmp_path / "g.safetensors", tmp_path / "c", "--subset", "stable_diffusion_v_1_4")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["layout"] == "genimage"
    assert json.loads(res.stdout)["n_val"] == 8

    manifest = tmp_path / "list.csv"
    rows = [(str(p), "fake" if "1_fake" in str(p) else "real") for p in
            sorted((shared_data / "web-sd" / "1_fake").iterdir())[:10] + sorted((shared_data / "web-sd" / "0_real")
                                                                               .iterdir())[:10]]
    with manifest.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label"])
        w.writerows(rows)
    res = _train(manifest, tmp_path / "m.safetensors", tmp_path / "c")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["layout"] == "manifest"


def test_bad_training_requests_fail_clearly(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    res = _train(tmp_path / "empty", tmp_path / "x.safetensors", tmp_path / "c")
    assert res.exit_code == 2 and "error:" in res.output
    res = _train(tmp_path / "empty", tmp_path / "x.pt", tmp_path / "c")
    assert res.exit_code == 2 and ".safetensors" in res.output


class _CountingEmbed:
    def __init__(self, fail_after: int | None = None) -> None:
        self.seen = 0
        self.fail_after = fail_after

    def __call__(self, px: torch.Tensor) -> torch.Tensor:
        if self.fail_after is not None and self.seen >= self.fail_after:
            raise KeyboardInterrupt
        self.seen += len(px)
        return px.mean(dim=(2, 3))  # a deterministic stand-in embedding


def test_feature_cache_second_run_extracts_nothing(forensynths_tree: Path, tmp_path: Path) -> None:
    paths = sorted(str(p) for p in forensynths_tree.rglob("*.jpg"))
    first = _CountingEmbed()
    a = extract_features(paths, first, PRE, FeatureCache(tmp_path, "bb", PRE.key()), batch_size=8)
    assert first.seen == len(paths) and a.computed == len(paths)
    second = _CountingEmbed()
    b = extract_features(paths, second, PRE, FeatureCache(tmp_path, "bb", PRE.key()), batch_size=8)
    assert second.seen == 0 and b.cached == len(paths)
    assert np.array_equal(a.features, b.features)
    # a different preprocessing or backbone is a different cache
    other = _CountingEmbed()
    extract_features(paths[:3], other, PRE, FeatureCache(tmp_path, "bb2", PRE.key()), batch_size=8)
    assert other.seen == 3


def test_killed_extraction_resumes(forensynths_tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import causalclip_cli.training.features as features

    monkeypatch.setattr(features, "SHARD_SIZE", 8)
    paths = sorted(str(p) for p in forensynths_tree.rglob("*.jpg"))
    with pytest.raises(KeyboardInterrupt):
        extract_features(paths, _CountingEmbed(fail_after=24), PRE, FeatureCache(tmp_path, "bb", "v"), batch_size=8)
    assert not list((tmp_path / "features").rglob(".partial-*"))
    again = _CountingEmbed()
    res = extract_features(paths, again, PRE, FeatureCache(tmp_path, "bb", "v"), batch_size=8)
    assert again.seen == len(paths) - 24
    assert res.cached == 24 and len(res.ok) == len(paths)


def _toy(seed: int = 0) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(300, 16)).astype(np.float32)
    y = (x[:, 0] + 0.3 * rng.normal(size=300) > 0).astype(np.int64)
    return x[:240], y[:240], x[240:], y[240:]


def test_training_is_deterministic_on_cpu() -> None:
    data = _toy()
    cfg = TrainConfig(epochs=5, batch_size=32, lr=1e-3, seed=7)
    a = train_head("causalclip", {}, *data, cfg)
    b = train_head("causalclip", {}, *data, cfg)
    for x, y in zip(a.head.state_dict().values(), b.head.state_dict().values(), strict=True):
        assert torch.equal(x, y)
    assert a.history == b.history


def test_resume_continues_exactly(tmp_path: Path) -> None:
    data = _toy(1)
    out = tmp_path / "run.safetensors"
    straight = train_head("causalclip", {}, *data, TrainConfig(epochs=6, batch_size=32, lr=1e-3, patience=99))
    train_head("causalclip", {}, *data, TrainConfig(epochs=3, batch_size=32, lr=1e-3, patience=99), resume_from=out)
    assert (tmp_path / "run.safetensors.resume").is_file()
    resumed = train_head("causalclip", {}, *data, TrainConfig(epochs=6, batch_size=32, lr=1e-3, patience=99),
                         resume_from=out)
    assert [r["epoch"] for r in resumed.history] == list(range(1, 7))
    for x, y in zip(straight.head.state_dict().values(), resumed.head.state_dict().values(), strict=True):
        assert torch.allclose(x, y, atol=1e-6)


def test_early_stopping_keeps_best_epoch() -> None:
    data = _toy(2)
    res = train_head("linear", {}, *data, TrainConfig(epochs=200, batch_size=64, lr=5e-2, patience=3))
    assert res.stopped_early and len(res.history) < 200
    assert res.best["score"] == max(r["val_ap"] for r in res.history)


@pytest.mark.real
def test_real_train_and_eval_round_on_cifake(shared_data: Path, tmp_path: Path) -> None:
    """The offline ViT-B/16 tower, a small CIFAKE sample: the trained head must really separate."""
    rng = random.Random(0)
    rows = []
    for split, n in (("train", 40), ("test", 12)):
        for cls in ("REAL", "FAKE"):
            files = sorted((shared_data / "cifake" / split / cls).iterdir())
            rows += [(str(f), cls, split) for f in rng.sample(files, n)]
    manifest = tmp_path / "cifake.csv"
    with manifest.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label", "split"])
        w.writerows(rows)
    ckpt = tmp_path / "cifake.safetensors"
    res = runner.invoke(app, ["train", "--data", str(manifest), "-o", str(ckpt), "--epochs", "60", "--lr", "1e-3",
                              "--batch-size", "16", "--workers", "1", "--val-fraction", "0.25"])
    assert res.exit_code == 0, res.output
    ev = runner.invoke(app, ["eval", "--data", str(manifest), "-c", str(ckpt), "-f", "json", "--split", "test",
                             "--workers", "1"])
    assert ev.exit_code == 0, ev.output
    overall = json.loads(ev.stdout)["conditions"]["clean"]["overall"]
    assert overall["n"] == 24
    assert overall["auc"] > 0.75, overall


def test_paper_setting_commands_with_a_local_stand_in_for_vit_l14(shared_data: Path, tmp_path: Path,
                                                                   local_hub_tag) -> None:
    """README's ViT-L/14 recipe, run as written but with a tiny config registered under a pretrained tag
    whose weights sit in a local Hugging Face cache: open_clip's download path, with no network."""
    from safetensors.torch import save_file

    from causalclip_cli.model.backbones import BackboneSpec, load_backbone

    tower = load_backbone(BackboneSpec("causalclip-tiny", "none"), seed=7).tower
    weights = tmp_path / "stand-in.safetensors"
    save_file({k: v.contiguous() for k, v in tower.state_dict().items()}, str(weights))
    local_hub_tag("causalclip-tiny", "openai", weights)

    root = tmp_path / "GenImage"
    mg = shared_data / "multigen-2022"
    for gen, src in (("stable_diffusion_v_1_4", "stable-diffusion-beta"), ("Midjourney", "midjourney-v3")):
        for split, start, n in (("train", 0, 12), ("val", 40, 6)):
            for cls, folder in (("ai", "1_fake"), ("nature", "0_real")):
                out = root / gen / f"imagenet_{gen}" / split / cls
                out.mkdir(parents=True)
                for f in sorted((mg / src / folder).iterdir())[start:start + n]:
                    os.link(f, out / f.name)
    ckpt = tmp_path / "vitl14-sd14.safetensors"
    res = runner.invoke(app, ["train", "--data", str(root), "--backbone", "causalclip-tiny", "--pretrained", "openai",
                              "--subset", "stable_diffusion_v_1_4", "--device", "cpu", "--output", str(ckpt),
                              "--workers", "0", "--epochs", "3", "--cache-dir", str(tmp_path / "c")])
    assert res.exit_code == 0, res.output
    meta = read_metadata(ckpt)
    assert meta["backbone"]["pretrained"] == "openai" and meta["backbone"]["source"] == "open_clip-pretrained"
    assert meta["training"]["summary"]["generators"] == ["stable_diffusion_v_1_4"]
    ev = runner.invoke(app, ["eval", "--data", str(root), "--checkpoint", str(ckpt), "--device", "cpu", "-f", "json",
                             "--workers", "0", "--cache-dir", str(tmp_path / "c")])
    assert ev.exit_code == 0, ev.output
    clean = json.loads(ev.stdout)["conditions"]["clean"]
    assert clean["Midjourney"]["n"] == 12 and clean["stable_diffusion_v_1_4"]["n"] == 12
