"""The Ray Data engine: the same records as the local scan, no record lost when an actor dies, and
embed → Parquet features → train/eval. Ray starts once for the module, locally, with 2 CPUs."""

from __future__ import annotations

import json
import os
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from causalclip_cli.cli import app

ray = pytest.importorskip("ray", reason='Ray is not installed (pip install "causalclip[ray]")')
pytest.importorskip("pyarrow", reason='pyarrow is not installed (pip install "causalclip[ray]")')

runner = CliRunner()


@pytest.fixture(scope="module", autouse=True)
def ray_local():
    """One local Ray for the module; workers import this checkout (init_ray passes PYTHONPATH on)."""
    from causalclip_cli.scanning.distributed import RayOptions, init_ray

    if ray.is_initialized():
        ray.shutdown()
    init_ray(RayOptions(num_cpus=2))
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """30 images of varied size and mode, nested folders, and files that must become errors or skips."""
    d = tmp_path_factory.mktemp("ray") / "images"
    (d / "nested" / "deeper").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(24):
        arr = rng.integers(0, 255, (32 + i, 40 + 2 * i, 3), dtype=np.uint8)
        folder = d if i < 12 else d / "nested" if i < 20 else d / "nested" / "deeper"
        Image.fromarray(arr).save(folder / f"img {i:02d}.{'jpg' if i % 3 else 'png'}")
    Image.new("RGBA", (40, 40), (0, 200, 0, 128)).save(d / "alpha.png")
    Image.new("L", (50, 30), 128).save(d / "nested" / "grey.webp")
    Image.new("CMYK", (30, 30), (10, 20, 30, 40)).save(d / "cmyk.jpg")
    good = d / "img 01.jpg"
    (d / "truncated.jpg").write_bytes(good.read_bytes()[: len(good.read_bytes()) // 3])
    (d / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"\x00" * 20)
    (d / "empty.png").write_bytes(b"")
    (d / "notes.txt").write_text("not an image")  # skipped, not an error
    return d


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _scan(args: list[str], ckpt: Path) -> tuple[int, str]:
    res = runner.invoke(app, ["scan", *args, "-c", str(ckpt), "--no-progress"])
    return res.exit_code, res.output


def _same_records(local: list[dict], other: list[dict]) -> None:
    assert [r["path"] for r in other] == [r["path"] for r in local]
    for a, b in zip(local, other, strict=True):
        assert b["error"] == a["error"], a["path"]
        assert b["label"] == a["label"], a["path"]
        assert (b["width"], b["height"], b["model"], b["threshold"]) == (a["width"], a["height"], a["model"],
                                                                          a["threshold"])
        if a["probability"] is None:
            assert b["probability"] is None
        else:
            assert b["probability"] == pytest.approx(a["probability"], abs=1e-5)


@pytest.fixture(scope="module")
def local_run(images: Path, tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[list, str]:
    """The local engine's records at a threshold that splits them into both labels."""
    out = tmp_path_factory.mktemp("local") / "probe.jsonl"
    code, output = _scan([str(images), "--workers", "0", "-o", str(out)], tiny_checkpoint)
    probs = sorted(r["probability"] for r in _jsonl(out) if r["probability"] is not None)
    threshold = f"{(probs[len(probs) // 2 - 1] + probs[len(probs) // 2]) / 2:.8f}"
    out = out.with_name("local.jsonl")
    code, output = _scan([str(images), "--workers", "0", "--threshold", threshold, "-o", str(out)], tiny_checkpoint)
    assert code == 1, output
    records = _jsonl(out)
    assert {r["label"] for r in records} == {"real", "fake", None}
    assert len([r for r in records if r["error"]]) == 3 and "notes.txt" not in out.read_text()
    return records, threshold


def test_ray_scan_gives_the_local_records(images: Path, tiny_checkpoint: Path, local_run: tuple,
                                          tmp_path: Path) -> None:
    local, threshold = local_run
    out = tmp_path / "ray.jsonl"
    code, output = _scan([str(images), "--engine", "ray", "--threshold", threshold, "-o", str(out)],
                         tiny_checkpoint)
    assert code == 1, output  # the same exit code: something flagged
    _same_records(local, _jsonl(out))
    assert "skipped           1" in output and "errors            3" in output
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".")]  # no temp file left behind


def test_a_dying_actor_loses_no_record_and_parquet_shards(images: Path, tiny_checkpoint: Path, local_run: tuple,
                                                          tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The detector actor os._exit()s on its first batch; Ray restarts it and re-runs the batch."""
    import pyarrow.parquet as pq

    from causalclip_cli.scanning.distributed import DIE_ONCE_ENV

    local, threshold = local_run
    marker = tmp_path / "died"
    monkeypatch.setenv(DIE_ONCE_ENV, str(marker))
    dest = tmp_path / "out"
    code, output = _scan([str(images), "--engine", "ray", "--actors", "1", "--threshold", threshold,
                          "--batch-size", "4", "-o", f"{dest}/"], tiny_checkpoint)
    assert marker.exists(), "the test hook did not kill the actor"
    assert code == 1, output
    assert sorted(os.listdir(dest)) == ["_SUCCESS", "part-00000.parquet"]
    rows = pq.read_table(dest).to_pylist()
    _same_records(local, rows)  # exactly one record per file, in the same order


def test_ray_scan_runs_at_the_requested_precision(images: Path, tiny_checkpoint: Path, local_run: tuple,
                                                  tmp_path: Path) -> None:
    """The actors load the tower at --precision (they used to ignore it); every record, error records
    included, names it, and the probabilities are the local engine's at that precision."""
    _, threshold = local_run
    local, ray_out = tmp_path / "local-int8.jsonl", tmp_path / "ray-int8.jsonl"
    args = [str(images), "--threshold", threshold, "--precision", "int8"]
    code, output = _scan([*args, "--workers", "0", "-o", str(local)], tiny_checkpoint)
    assert code in (0, 1), output
    code, output = _scan([*args, "--engine", "ray", "-o", str(ray_out)], tiny_checkpoint)
    assert code in (0, 1), output
    want = _jsonl(local)
    assert all(r["model"].endswith(":int8") for r in want)
    _same_records(want, _jsonl(ray_out))
    code, output = _scan([str(images), "--engine", "ray", "--device", "cpu", "--precision", "fp16"],
                         tiny_checkpoint)
    assert code == 2 and "needs a GPU" in output


def test_ray_scan_reads_uris(images: Path, tiny_checkpoint: Path, local_run: tuple,
                                             tmp_path: Path) -> None:
    """A pyarrow URI (file:// here, s3:// on a cluster) is listed and fetched by pyarrow's filesystems."""
    local, threshold = local_run
    out = tmp_path / "uri.jsonl"
    code, output = _scan([images.as_uri(), "--engine", "ray", "--threshold", threshold, "-o", str(out)],
                         tiny_checkpoint)
    assert code == 1, output
    got = _jsonl(out)
    assert all(r["path"].startswith("file:///") for r in got)
    by_name = {unquote(r["path"][len(images.as_uri()):]): r for r in got}
    want = {r["path"][len(str(images)):]: r for r in local}
    assert sorted(by_name) == sorted(want)
    for name, r in want.items():
        assert by_name[name]["label"] == r["label"]
        assert (by_name[name]["error"] is None) == (r["error"] is None)
        if r["probability"] is not None:
            assert by_name[name]["probability"] == pytest.approx(r["probability"], abs=1e-5)


def test_embed_train_eval_through_parquet(tmp_path: Path, tiny_checkpoint: Path) -> None:
    from causalclip_cli.training.feature_store import open_features

    rng = np.random.default_rng(1)
    for cls, mean in (("real", 70), ("fake", 180)):
        (tmp_path / "data" / cls).mkdir(parents=True)
        for i in range(12):
            arr = rng.normal(mean, 25, (36, 36, 3)).clip(0, 255).astype(np.uint8)
            Image.fromarray(arr).save(tmp_path / "data" / cls / f"{i}.png")
    (tmp_path / "data" / "fake" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 8)
    tiny = ["--backbone", "causalclip-tiny", "--pretrained", "none"]
    data = str(tmp_path / "data")
    res = runner.invoke(app, ["embed", data, "--engine", "ray", "-o", str(tmp_path / "f-ray"), *tiny])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout[res.stdout.index("{"):])["embedded"] == 24
    res = runner.invoke(app, ["embed", data, "-o", str(tmp_path / "f-local"), "--workers", "0", *tiny])
    assert res.exit_code == 0, res.output
    ray_f, local_f = open_features(tmp_path / "f-ray"), open_features(tmp_path / "f-local")
    assert [s.path for s in ray_f.samples] == [s.path for s in local_f.samples]
    assert ray_f.keys == local_f.keys and len(set(ray_f.keys)) == 24
    assert np.allclose(ray_f.x, local_f.x, atol=1e-5)
    assert ray_f.meta["backbone_id"] == "causalclip-tiny:none:random" and ray_f.meta["embed_dim"] == 32

    ckpt = tmp_path / "head.safetensors"
    res = runner.invoke(app, ["train", "--features", str(tmp_path / "f-ray"), "-o", str(ckpt), "--epochs", "3",
                              "--head", "linear", *tiny])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout[res.stdout.index("{"):])
    assert summary["n_train"] + summary["n_val"] == 24 and summary["n_val"] >= 2 and ckpt.is_file()
    res = runner.invoke(app, ["eval", "--features", str(tmp_path / "f-ray"), "-c", str(ckpt), "-f", "json"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout[res.stdout.index("{"):])
    assert report["conditions"]["clean"]["overall"]["n"] == 24
    res = runner.invoke(app, ["eval", "--features", str(tmp_path / "f-ray"), "-c", str(tiny_checkpoint),
                              "--data", data])
    assert res.exit_code == 2 and "either --data or --features" in res.output
    # Features from another backbone or preprocessing are refused.
    from causalclip_cli.errors import DataError

    with pytest.raises(DataError, match="features were made by backbone"):
        ray_f.check("ViT-B-16-quickgelu:openai:0123456789abcdef", ray_f.meta["variant"])
    ray_f.check(ray_f.meta["backbone_id"], ray_f.meta["variant"])


@pytest.mark.real
def test_real_backbone_same_records(shared_data: Path, tmp_path: Path) -> None:
    """The released head on the offline ViT-B/16: both engines agree on a few real images."""
    picks = sorted((shared_data / "forensynths-thumbs" / "biggan" / "1_fake").glob("*.jpg"))[:3]
    picks += sorted((shared_data / "forensynths-thumbs" / "biggan" / "0_real").glob("*.jpg"))[:3]
    src = tmp_path / "src"
    src.mkdir()
    for p in picks:
        (src / f"{p.parent.name}-{p.name}").symlink_to(p)
    a, b = tmp_path / "local.jsonl", tmp_path / "ray.jsonl"
    res = runner.invoke(app, ["scan", str(src), "--workers", "0", "--no-progress", "-o", str(a)])
    assert res.exit_code in (0, 1), res.output
    res2 = runner.invoke(app, ["scan", str(src), "--engine", "ray", "--no-progress", "-o", str(b)])
    assert res2.exit_code == res.exit_code, res2.output
    local = _jsonl(a)
    assert len(local) == 6 and all(r["error"] is None for r in local)
    _same_records(local, _jsonl(b))


def test_parquet_shards_are_committed_whole(tmp_path: Path) -> None:
    """A folder DEST appears only at commit (replacing an older one); an aborted run leaves nothing."""
    import pyarrow.parquet as pq

    from causalclip_cli.training.feature_store import ShardWriter, feature_schema

    dest = tmp_path / "feats"
    schema = feature_schema(2, {"backbone_id": "b", "variant": "v", "embed_dim": 2})
    row = {"path": "/x.png", "key": "k", "backbone_id": "b", "variant": "v", "label": 1, "generator": "g",
           "split": "train", "feature": [0.5, 1.5]}
    w = ShardWriter(dest, schema, shard_rows=2)
    for i in range(5):
        w.write({**row, "path": f"/{i}.png"})
    assert not dest.exists()  # shards so far live under a temporary name
    w.commit()
    assert sorted(os.listdir(dest)) == ["_SUCCESS", "part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    assert pq.read_table(dest).column("path").to_pylist() == [f"/{i}.png" for i in range(5)]
    w2 = ShardWriter(dest, schema)
    w2.write(row)
    w2.abort()
    assert pq.read_table(dest).num_rows == 5 and os.listdir(tmp_path) == ["feats"]
    w3 = ShardWriter(dest, schema)
    w3.write(row)
    w3.commit()
    assert pq.read_table(dest).num_rows == 1 and os.listdir(tmp_path) == ["feats"]
