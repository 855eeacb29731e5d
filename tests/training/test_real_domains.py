"""Issue 18: balanced domains in training, worst-domain calibration, abstention on unfamiliar images."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from causalclip_cli.cli import app
from causalclip_cli.model.checkpoint import Decision, load_familiarity, read_metadata
from causalclip_cli.model.familiarity import Familiarity
from causalclip_cli.scanning.output import ScanRecord
from causalclip_cli.training.domains import balance_weights, per_domain_shares, worst_domain_threshold
from causalclip_cli.training.trainer import TrainConfig, train_head

runner = CliRunner()
TINY = ["--backbone", "causalclip-tiny", "--pretrained", "none"]


# --------------------------------------------------------------------------- balance


def test_domain_balance_gives_every_kind_the_same_weight_within_its_class() -> None:
    y = np.array([0] * 100 + [0] * 10 + [1] * 30 + [1] * 30)
    kinds = ["thumbs"] * 100 + ["portraits"] * 10 + ["gan"] * 30 + ["sd"] * 30
    w = balance_weights(y, kinds, "domain")
    assert w[:100].sum() == pytest.approx(w[100:110].sum())  # 100 thumbnails weigh as much as 10 portraits
    assert w[y == 0].mean() == pytest.approx(1.0) and w[y == 1].mean() == pytest.approx(1.0)
    s = balance_weights(y, kinds, "sqrt")
    assert s[:100].sum() / s[100:110].sum() == pytest.approx(np.sqrt(10))  # tempered: in between
    assert balance_weights(y, kinds, "none") is None
    with pytest.raises(ValueError, match="balance"):
        balance_weights(y, kinds, "equal")


def test_weighted_sampling_changes_what_the_head_learns() -> None:
    """Two kinds of reals; one is rare. Uniform sampling barely sees it, domain balance does."""
    g = torch.Generator().manual_seed(0)
    common = torch.randn(400, 8, generator=g) + torch.tensor([2.0] + [0.0] * 7)
    rare = torch.randn(8, 8, generator=g) + torch.tensor([0.0, 3.0] + [0.0] * 6)
    fakes = torch.randn(408, 8, generator=g) + torch.tensor([-1.0, 2.0] + [0.0] * 6)
    x = torch.cat([common, rare, fakes]).numpy()
    y = np.array([0] * 408 + [1] * 408)
    kinds = ["common"] * 400 + ["rare"] * 8 + ["fake"] * 408
    cfg = TrainConfig(epochs=15, batch_size=64, lr=1e-2, patience=100, seed=0)
    probe = (torch.randn(200, 8, generator=g) + torch.tensor([0.0, 3.0] + [0.0] * 6)).numpy()

    def rare_fake_rate(weights: np.ndarray | None) -> float:
        res = train_head("linear", {}, x, y, x, y, cfg, weights=weights)
        with torch.inference_mode():
            return float((torch.sigmoid(res.head(torch.as_tensor(probe))) >= 0.5).float().mean())

    uniform = rare_fake_rate(None)
    balanced = rare_fake_rate(balance_weights(y, kinds, "domain"))
    assert balanced < uniform - 0.1, (uniform, balanced)


def test_train_weights_are_validated() -> None:
    x, y = np.zeros((4, 3), np.float32), np.array([0, 0, 1, 1])
    with pytest.raises(ValueError, match="weights"):
        train_head("linear", {}, x, y, x, y, TrainConfig(epochs=1), weights=np.array([1.0, -1.0, 1.0, 1.0]))


# --------------------------------------------------------------------------- worst-domain calibration


def test_worst_domain_sets_the_threshold_and_small_domains_do_not() -> None:
    rng = np.random.default_rng(0)
    probs = np.concatenate([rng.uniform(0, 0.3, 300), rng.uniform(0.2, 0.8, 40), [0.99] * 3])
    kinds = ["snapshots"] * 300 + ["stock"] * 40 + ["tiny"] * 3
    pooled, by, _ = worst_domain_threshold(probs[:340], kinds[:340], 0.05, 20)
    thr, by, used = worst_domain_threshold(probs, kinds, 0.05, 20)
    assert by == "stock" and used == ["snapshots", "stock"]  # 3 images do not set a threshold
    rates = per_domain_shares(np.where(probs >= thr, "fake", "real"), kinds)
    assert rates["stock"]["fake"] <= 0.05 and rates["snapshots"]["fake"] <= 0.05
    from causalclip_cli.training.metrics import threshold_at_fpr

    assert thr > threshold_at_fpr(probs[:340], 0.05)  # the pooled rule would let stock photos through


# --------------------------------------------------------------------------- familiarity


def _cloud(n: int, centre: float, seed: int, d: int = 32) -> np.ndarray:
    g = np.random.default_rng(seed)
    return (g.normal(size=(n, d)) + centre).astype(np.float32)


def test_familiarity_p_values_are_uniform_on_familiar_and_tiny_on_strange_images() -> None:
    fam = Familiarity.fit(_cloud(600, 0.0, 0), components=16, k=5).calibrate(_cloud(300, 0.0, 1))
    p_same = fam.p_values(_cloud(400, 0.0, 2))
    assert 0.02 < float(np.mean(p_same < 0.1)) < 0.2  # conformal: about 10% below 0.1
    p_far = fam.p_values(_cloud(50, 3.0, 3))
    assert float(p_far.max()) == pytest.approx(1 / 301)
    views = np.stack([_cloud(5, 3.0, 4), _cloud(5, 3.0, 5)], axis=1)  # [n, views, d]: one p-value per image
    assert fam.p_values(views).shape == (5,)
    with pytest.raises(ValueError, match="calibrated"):
        Familiarity.fit(_cloud(100, 0.0, 0), components=8).p_values(_cloud(3, 0.0, 1))


def test_verdict_withholds_only_fake_from_unfamiliar_images() -> None:
    d = Decision(0.9, (0.5, 0.9), {}, 0.01)
    assert d.verdict(0.95, 0.5) == ("fake", None)
    assert d.verdict(0.95, 0.001) == ("uncertain", "unfamiliar")
    assert d.verdict(0.6, 0.001) == ("uncertain", "band")
    assert d.verdict(0.1, 0.001) == ("real", None)  # unfamiliar, but not accused
    assert Decision(0.9).verdict(0.95, 0.001) == ("fake", None)  # a head without the check
    assert Decision.from_dict(d.to_dict()) == d


# --------------------------------------------------------------------------- end to end on the tiny backbone


@pytest.fixture(scope="module")
def domain_manifest(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> Path:
    """Three real domains (one of them 'portraits', small) and two generators, with train/val splits."""
    root = tmp_path_factory.mktemp("domains")
    rows = []
    pick = [("forensynths-thumbs/biggan/0_real", 0, "imagenet-like"), ("forensynths-thumbs/crn/0_real", 0, "street"),
            ("people-2026/studio-portraits/0_real", 0, "portraits"), ("forensynths-thumbs/biggan/1_fake", 1, "biggan"),
            ("forensynths-thumbs/crn/1_fake", 1, "crn")]
    for folder, label, domain in pick:
        files = sorted((shared_data / folder).iterdir())[:20]  # 10 train + 10 val each
        for i, f in enumerate(files):
            rows.append([os.path.relpath(f, root), label, folder.split("/")[1], "val" if i % 2 == 0 else "train",
                         domain])
    manifest = root / "manifest.csv"
    with manifest.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label", "generator", "split", "domain"])
        w.writerows(rows)
    return manifest


def test_balanced_train_per_domain_calibration_and_unfamiliar_records(domain_manifest: Path, tmp_path: Path,
                                                                     shared_data: Path) -> None:
    cache = tmp_path / "cache"
    raw, cal = tmp_path / "raw.safetensors", tmp_path / "cal.safetensors"
    res = runner.invoke(app, ["train", "--data", str(domain_manifest), "--output", str(raw), *TINY, "--cache-dir",
                              str(cache), "--workers", "0", "--epochs", "3", "--lr", "1e-3", "--balance", "domain",
                              "--hard-reals", "0.2", "--classifier-hidden", "0"])
    assert res.exit_code == 0, res.output
    config = read_metadata(raw)["head"]["config"]
    assert config["cls_hidden"] == 0 and config["adv_hidden"] == 0 and config["mask_hidden"] == 256
    summary = read_metadata(raw)["training"]["summary"]
    assert summary["balance"] == "domain" and summary["hard_reals"] == 6  # 20% of 30 training reals
    assert summary["kinds"]["portraits"] == [10, 0] and summary["kinds"]["biggan"] == [0, 10]

    res = runner.invoke(app, ["calibrate", "--data", str(domain_manifest), "-c", str(raw), "-o", str(cal),
                              "--cache-dir", str(cache), "--workers", "0", "--target-fpr", "0.05",
                              "--band-fpr", "0.3:0.05", "--per-domain", "--min-domain-reals", "5",
                              "--familiarity", "train", "--unfamiliar-alpha", "0.05"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["set_by"] in ("imagenet-like", "street", "portraits", "pooled")
    assert set(out["domains"]) == {"imagenet-like", "street", "portraits"}
    assert all(row["fake"] <= 0.05 for row in out["domains"].values())  # every domain at the target on val
    meta = read_metadata(cal)
    assert meta["decision"]["unfamiliar_below"] == 0.05 and meta["familiarity"]["bank"] == 30 + 20
    fam = load_familiarity(cal, meta)
    assert fam is not None and len(fam.calibration) == 50

    # A scan records the familiarity p-value; an image of a kind the head never saw gets a small one.
    far = tmp_path / "far"
    far.mkdir()
    for f in sorted((shared_data / "cifake" / "test" / "REAL").iterdir())[:3]:
        os.link(f, far / f.name)
    scanned = runner.invoke(app, ["scan", str(far), "-c", str(cal), "--format", "jsonl", "--workers", "0",
                                  "--no-progress", "--fail-on", "never"])
    assert scanned.exit_code == 0, scanned.output
    recs = [json.loads(line) for line in scanned.stdout.splitlines()]
    assert len(recs) == 3 and all(0 < r["familiarity"] <= 1 for r in recs)
    assert all((r["reason"] == "unfamiliar") == (r["label"] == "uncertain" and r["probability"] >= r["threshold"])
               for r in recs)

    # --no-abstain-unfamiliar keeps the p-value but never withholds a verdict for it.
    plain = runner.invoke(app, ["scan", str(far), "-c", str(cal), "--format", "jsonl", "--workers", "0",
                                "--no-progress", "--fail-on", "never", "--no-abstain-unfamiliar"])
    assert all(json.loads(line)["reason"] != "unfamiliar" for line in plain.stdout.splitlines())

    # Recalibrating without --familiarity keeps the reference the checkpoint already has.
    again = tmp_path / "again.safetensors"
    res = runner.invoke(app, ["calibrate", "--data", str(domain_manifest), "-c", str(cal), "-o", str(again),
                              "--cache-dir", str(cache), "--workers", "0", "--target-fpr", "0.05"])
    assert res.exit_code == 0, res.output
    assert load_familiarity(again, read_metadata(again)) is not None


def test_unfamiliar_reason_reaches_every_writer() -> None:
    import io

    from causalclip_cli.scanning.output import ScanSummary, make_writer, render_summary

    rec = ScanRecord("a.jpg", 0.97, "uncertain", 0.9, "m", 10, 10, None, None, "unfamiliar", 0.004)
    for fmt in ("jsonl", "csv", "table"):
        buf = io.StringIO()
        w = make_writer(fmt, buf)
        w.write(rec)
        w.close()
        assert "unfamiliar" in buf.getvalue()
    s = ScanSummary()
    s.add(rec)
    assert s.to_dict()["unfamiliar"] == 1
    err = io.StringIO()
    render_summary(s, err)
    assert "unfamiliar" in err.getvalue()


def test_bad_calibration_options_exit_2(domain_manifest: Path, tiny_checkpoint: Path, tmp_path: Path) -> None:
    res = runner.invoke(app, ["calibrate", "--data", str(domain_manifest), "-c", str(tiny_checkpoint), "-o",
                              str(tmp_path / "x.safetensors"), "--workers", "0", "--familiarity", "val"])
    assert res.exit_code == 2 and "different splits" in res.output
    # 50 calibration images cannot give a p-value below 1/51: a level of 0.01 would never fire.
    res = runner.invoke(app, ["calibrate", "--data", str(domain_manifest), "-c", str(tiny_checkpoint), "-o",
                              str(tmp_path / "x.safetensors"), "--workers", "0", "--familiarity", "train",
                              "--unfamiliar-alpha", "0.01", "--scaling", "none"])
    assert res.exit_code == 2 and "never fire" in res.output
    assert not (tmp_path / "x.safetensors").exists()
    res = runner.invoke(app, ["train", "--data", str(domain_manifest), "--output", str(tmp_path / "y.safetensors"),
                              *TINY, "--workers", "0", "--balance", "equal"])
    assert res.exit_code == 2 and "balance" in res.output


# --------------------------------------------------------------------------- probe groups


def test_probe_groups_average_probes_trained_apart() -> None:
    """Two segments; only the second tells the classes apart. The merged head is the mean of the two probes."""
    from causalclip_cli.model.heads import make_head
    from causalclip_cli.training.trainer import train_probe_groups

    g = torch.Generator().manual_seed(0)
    n = 300
    y = np.array([0] * n + [1] * n)
    noise = torch.randn(2 * n, 6, generator=g).numpy()
    signal = torch.randn(2 * n, 4, generator=g).numpy() + np.where(y[:, None] == 1, 1.5, -1.5)
    x = np.concatenate([noise, signal], axis=1).astype(np.float32)
    cfg = TrainConfig(epochs=6, batch_size=64, lr=1e-2, patience=100, seed=0)
    res = train_probe_groups([1, 1], [6, 4], x, y, x, y, cfg)
    assert res.head.kind == "linear" and res.head.fc.weight.shape == (1, 10)
    assert res.best["ap"] > 0.95 and len(res.best["epoch"]) == 2
    assert {row["group"] for row in res.history} == {0, 1}

    # Each part of the merged weights is half of a probe trained on its segment alone.
    alone = train_head("linear", {"segments": [4], "combine": "concat"}, x[:, 6:], y, x[:, 6:], y, cfg)
    assert torch.allclose(res.head.fc.weight[0, 6:], alone.head.fc.weight[0] / 2, atol=1e-6)
    other = train_head("linear", {"segments": [6], "combine": "concat"}, x[:, :6], y, x[:, :6], y, cfg)
    both = make_head("linear", 10, {"segments": [6, 4]})
    with torch.inference_mode():
        xt = torch.as_tensor(x)
        mean = (alone.head(xt[:, 6:]) + other.head(xt[:, :6])) / 2
        assert torch.allclose(res.head(xt), mean, atol=1e-5)
        assert not torch.allclose(both(xt), mean, atol=1e-3)  # an untrained head is not that mean
    with pytest.raises(ValueError, match="partition"):
        train_probe_groups([1, 2], [6, 4], x, y, x, y, cfg)


def test_train_with_probe_groups_and_its_errors(domain_manifest: Path, tmp_path: Path) -> None:
    cache, out = tmp_path / "cache", tmp_path / "groups.safetensors"
    common = ["train", "--data", str(domain_manifest), *TINY, "--cache-dir", str(cache), "--workers", "0",
              "--epochs", "2", "--lr", "1e-3", "--layers", "final,1,2"]
    res = runner.invoke(app, [*common, "--output", str(out), "--head", "linear", "--probe-groups", "final|1,2"])
    assert res.exit_code == 0, res.output
    meta = read_metadata(out)
    assert meta["head"]["kind"] == "linear" and meta["training"]["summary"]["probe_groups"] == "final|1,2"
    assert {row["group"] for row in meta["training"]["history"]} == {0, 1}
    bad = tmp_path / "bad.safetensors"
    for extra, why in [(["--head", "causalclip", "--probe-groups", "final|1,2"], "--head linear"),
                       (["--head", "linear", "--probe-groups", "final|2,1"], "same order"),
                       (["--head", "linear", "--probe-groups", "final|1"], "same order"),
                       (["--head", "linear", "--probe-groups", "final|x"], "probe-groups")]:
        res = runner.invoke(app, [*common, "--output", str(bad), *extra])
        assert res.exit_code == 2 and why in res.output, (extra, res.output)
    assert not bad.exists()


def test_a_probe_on_patch_token_means_trains_scans_and_says_what_it_reads(domain_manifest: Path, tmp_path: Path,
                                                                          shared_data: Path) -> None:
    cache, out = tmp_path / "cache", tmp_path / "patch.safetensors"
    res = runner.invoke(app, ["train", "--data", str(domain_manifest), *TINY, "--cache-dir", str(cache), "--workers",
                              "0", "--epochs", "2", "--lr", "1e-3", "--layers", "final,1,p1:2", "--head", "linear",
                              "--probe-groups", "final|1|p1,p2", "--output", str(out)])
    assert res.exit_code == 0, res.output
    meta = read_metadata(out)
    assert meta["features"]["layers"] == [0, 1, -1, -2] and meta["head"]["embed_dim"] == 32 + 3 * 64
    res = runner.invoke(app, ["info", "-c", str(out)], env={"COLUMNS": "300"})
    assert res.exit_code == 0 and "block 1 patch mean, block 2 patch mean" in res.output, res.output
    folder = tmp_path / "imgs"
    folder.mkdir()
    for f in sorted((shared_data / "forensynths-thumbs" / "biggan" / "1_fake").iterdir())[-3:]:
        os.link(f, folder / f.name)
    scanned = runner.invoke(app, ["scan", str(folder), "-c", str(out), "--format", "jsonl", "--workers", "0",
                                  "--no-progress", "--fail-on", "never"])
    assert scanned.exit_code == 0, scanned.output
    probs = [json.loads(line)["probability"] for line in scanned.stdout.splitlines()]
    assert len(probs) == 3 and all(0.0 < p < 1.0 for p in probs) and len(set(probs)) == 3


# --------------------------------------------------------------------------- leaving kinds out


def test_leave_out_drops_generators_or_kinds_and_refuses_unknown_names() -> None:
    from causalclip_cli.errors import DataError
    from causalclip_cli.inputs.datasets import Sample, leave_out

    samples = [Sample(f"/{g}/{i}.jpg", label, g, "train", dom) for g, label, dom in
               [("crn", 0, "game-renders"), ("crn", 1, ""), ("biggan", 0, "imagenet"), ("biggan", 1, "")]
               for i in range(3)]
    by_generator = leave_out(samples, ["CRN"])  # reals and fakes of that generator
    assert {(s.generator, s.label) for s in by_generator} == {("biggan", 0), ("biggan", 1)}
    by_kind = leave_out(samples, ["game-renders"])  # only the reals of that kind
    assert {(s.generator, s.label) for s in by_kind} == {("crn", 1), ("biggan", 0), ("biggan", 1)}
    with pytest.raises(DataError, match="gta") as err:
        leave_out(samples, ["gta"])
    assert "game-renders" in err.value.hint and "biggan" in err.value.hint
    with pytest.raises(DataError, match="no images"):
        leave_out(samples, ["crn", "biggan"])


def test_train_and_calibrate_leave_out_what_they_are_told(domain_manifest: Path, tmp_path: Path) -> None:
    cache, raw, cal = tmp_path / "cache", tmp_path / "raw.safetensors", tmp_path / "cal.safetensors"
    res = runner.invoke(app, ["train", "--data", str(domain_manifest), "--output", str(raw), *TINY, "--cache-dir",
                              str(cache), "--workers", "0", "--epochs", "2", "--head", "linear", "--balance",
                              "domain", "--exclude", "crn"])
    assert res.exit_code == 0, res.output
    summary = read_metadata(raw)["training"]["summary"]
    assert summary["excluded"] == ["crn"] and "crn" not in summary["generators"]
    assert "street" not in summary["kinds"] and "crn" not in summary["kinds"] and summary["n_train"] == 30
    res = runner.invoke(app, ["info", "-c", str(raw)], env={"COLUMNS": "300"})
    assert res.exit_code == 0 and "left out: crn" in res.output, res.output
    res = runner.invoke(app, ["calibrate", "--data", str(domain_manifest), "-c", str(raw), "-o", str(cal),
                              "--cache-dir", str(cache), "--workers", "0", "--target-fpr", "0.1", "--per-domain",
                              "--min-domain-reals", "5", "--exclude", "street", "--scaling", "none"])
    assert res.exit_code == 0, res.output
    rule = read_metadata(cal)["decision"]["calibration"]
    assert rule["excluded"] == ["street"] and set(rule["domains"]) == {"imagenet-like", "portraits"}
    res = runner.invoke(app, ["train", "--data", str(domain_manifest), "--output", str(tmp_path / "x.safetensors"),
                              *TINY, "--workers", "0", "--exclude", "gta"])
    assert res.exit_code == 2 and "nothing to leave out named gta" in res.output
    assert not (tmp_path / "x.safetensors").exists()
