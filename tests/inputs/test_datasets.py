"""Dataset discovery on small trees built from the real images in ../shared/data, and on those trees."""

from __future__ import annotations

import csv
import os
import shutil
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from causalclip_cli.errors import CausalClipError, DataError
from causalclip_cli.inputs.datasets import (
    Dataset,
    Sample,
    discover_dataset,
    ensure_split,
    make_splits,
    write_manifest,
)

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"
pytestmark = pytest.mark.skipif(not SHARED.is_dir(), reason=f"real data not found at {SHARED}")


def _pool(*parts: str) -> list[Path]:
    return sorted((SHARED.joinpath(*parts)).iterdir())


@pytest.fixture(scope="module")
def reals() -> list[Path]:
    return _pool("forensynths-thumbs", "biggan", "0_real") + _pool("forensynths-thumbs", "crn", "0_real")


@pytest.fixture(scope="module")
def fakes() -> list[Path]:
    return _pool("forensynths-thumbs", "biggan", "1_fake") + _pool("forensynths-thumbs", "crn", "1_fake")


def _place(src: Path, dst: Path) -> Path:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:  # other file system, or links not allowed
        shutil.copyfile(src, dst)
    return dst


def _fill(folder: Path, sources: list[Path], n: int, suffix: str = ".jpg", start: int = 0) -> list[Path]:
    """n images in folder; `.png` ones are really re-encoded, so the tree is what it claims to be."""
    out = []
    for src in sources[start : start + n]:
        dst = folder / f"{src.stem}{suffix}"
        if suffix == ".png":
            dst.parent.mkdir(parents=True, exist_ok=True)
            with Image.open(src) as im:
                im.resize((32, 32)).save(dst)
        else:
            _place(src, dst)
        out.append(dst)
    return out


def _labels_by_folder(ds: Dataset) -> Counter:
    return Counter((Path(s.path).parent.name, s.label) for s in ds.samples)


# --------------------------------------------------------------------------- GenImage


def _genimage(root: Path, reals: list[Path], fakes: list[Path], fake_suffix: str = ".jpg") -> Path:
    for k, (gen, sub) in enumerate(
        [("stable_diffusion_v_1_4", "imagenet_ai_0419_sdv4"), ("Midjourney", "imagenet_midjourney")]
    ):
        base = root / gen / sub
        _fill(base / "train" / "nature", reals, 6, start=k * 10)
        _fill(base / "train" / "ai", fakes, 6, fake_suffix, start=k * 10)
        _fill(base / "val" / "nature", reals, 2, start=k * 10 + 6)
        _fill(base / "val" / "ai", fakes, 2, fake_suffix, start=k * 10 + 6)
    return root


def test_genimage_layout(tmp_path, reals, fakes):
    ds = discover_dataset(_genimage(tmp_path / "GenImage", reals, fakes))
    assert ds.layout == "genimage"
    assert ds.generators() == ["Midjourney", "stable_diffusion_v_1_4"]
    assert ds.splits() == ["train", "val"]
    assert len(ds.split("train")) == 24 and len(ds.split("val")) == 8
    assert _labels_by_folder(ds) == {("nature", 0): 16, ("ai", 1): 16}
    assert all(os.path.isabs(s.path) for s in ds.samples)
    assert [s.path for s in ds.samples] == sorted(s.path for s in ds.samples)
    assert not ds.warnings
    summary = ds.summary()
    assert summary["splits"]["val"]["generators"]["Midjourney"] == {"n_real": 2, "n_fake": 2}
    assert summary["n"] == 32 and summary["imbalance"] == 1.0


def test_genimage_subsets_and_unknown_subset(tmp_path, reals, fakes):
    root = _genimage(tmp_path / "GenImage", reals, fakes)
    ds = discover_dataset(root, subsets=["stable_diffusion_v_1_4"])
    assert ds.generators() == ["stable_diffusion_v_1_4"] and len(ds) == 16
    assert discover_dataset(root, subsets=["midjourney"]).generators() == ["Midjourney"]  # case-insensitive
    with pytest.raises(DataError) as err:
        discover_dataset(root, subsets=["stable_diffusion_v_1_4", "wukong"])
    text = str(err.value)
    assert "wukong" in text and "Midjourney" in text and "stable_diffusion_v_1_4" in text


def test_genimage_root_is_one_generator(tmp_path, reals, fakes):
    root = _genimage(tmp_path / "GenImage", reals, fakes)
    ds = discover_dataset(root / "stable_diffusion_v_1_4")
    assert ds.layout == "genimage"
    assert ds.generators() == ["stable_diffusion_v_1_4"] and len(ds) == 16


def test_genimage_format_shortcut_warning(tmp_path, reals, fakes):
    ds = discover_dataset(_genimage(tmp_path / "GenImage", reals, fakes, fake_suffix=".png"))
    shortcut = [w for w in ds.warnings if "--jpeg-align" in w]
    assert len(shortcut) == 2  # one per generator
    assert "JPEG" in shortcut[0] and "PNG" in shortcut[0]


# --------------------------------------------------------------------------- ForenSynths


def test_forensynths_with_split_folders(tmp_path, reals, fakes):
    root = tmp_path / "AIGCDetect"
    for split, gen, start in [
        ("train", "car", 0),
        ("valid", "car", 4),
        ("test", "biggan", 8),
        ("test", "crn", 12),
    ]:
        _fill(root / split / gen / "0_real", reals, 4, start=start)
        _fill(root / split / gen / "1_fake", fakes, 4, start=start)
    ds = discover_dataset(root)
    assert ds.layout == "forensynths"
    assert ds.generators() == ["biggan", "car", "crn"]
    assert ds.splits() == ["train", "val", "test"]  # "valid" normalised
    assert len(ds.split("validation")) == 8
    assert {s.generator for s in ds.split("test")} == {"biggan", "crn"}
    assert _labels_by_folder(ds) == {("0_real", 0): 16, ("1_fake", 1): 16}


def test_forensynths_object_class_level(tmp_path, reals, fakes):
    root = tmp_path / "CNNDetection"
    for cls, start in [("airplane", 0), ("bird", 5)]:
        _fill(root / "progan" / cls / "0_real", reals, 5, start=start)
        _fill(root / "progan" / cls / "1_fake", fakes, 5, start=start)
        _fill(root / "test" / "stylegan" / cls / "0_real", reals, 3, start=start + 20)
        _fill(root / "test" / "stylegan" / cls / "1_fake", fakes, 3, start=start + 20)
    _fill(root / "biggan" / "0_real", reals, 4, start=30)
    _fill(root / "biggan" / "1_fake", fakes, 4, start=30)
    ds = discover_dataset(root, default_split="test")
    assert ds.layout == "forensynths"
    assert ds.generators() == ["biggan", "progan", "stylegan"]  # object classes are not generators
    assert Counter(s.generator for s in ds.samples) == {"progan": 20, "stylegan": 12, "biggan": 8}
    assert ds.splits() == ["test"]


def test_forensynths_root_is_class_parent(tmp_path, reals, fakes):
    root = tmp_path / "my-gan"
    _fill(root / "0_real", reals, 3)
    _fill(root / "1_fake", fakes, 3)
    ds = discover_dataset(root)
    assert ds.layout == "forensynths" and ds.generators() == ["my-gan"] and ds.splits() == ["train"]


# --------------------------------------------------------------------------- CIFAKE and real/fake


def test_cifake_layout_with_awkward_names(tmp_path):
    root = tmp_path / "cifake"
    for split, real_dir, fake_dir in [("train", "REAL", "FAKE"), ("Test", "real", "Fake")]:
        for folder, label_dir in [(real_dir, "REAL"), (fake_dir, "FAKE")]:
            _fill(root / split / folder, _pool("cifake", "train", label_dir), 5)
    ds = discover_dataset(root)
    assert ds.layout == "cifake"
    assert ds.generators() == ["cifake"]
    assert ds.splits() == ["train", "test"]
    assert Counter((s.split, s.label) for s in ds.samples) == {
        ("train", 0): 5,
        ("train", 1): 5,
        ("test", 0): 5,
        ("test", 1): 5,
    }
    assert any(" (" in Path(s.path).name for s in ds.samples)  # names like "1000 (10).jpg" survive


def test_realfake_layout_imbalance_and_skipped_files(tmp_path, reals, fakes):
    root = tmp_path / "photos"
    _fill(root / "real", reals, 3)
    _fill(root / "fake", fakes, 10)
    _place(reals[5], root / "real" / "UPPER.JPG")
    (root / "real" / "notes.txt").write_text("not an image")
    _place(reals[6], root / "real" / ".hidden.jpg")
    _place(reals[7], root / ".cache" / "real" / "x.jpg")
    _place(reals[8], root / "loose.jpg")
    ds = discover_dataset(root)
    assert ds.layout == "realfake" and ds.generators() == ["photos"]
    assert Counter(s.label for s in ds.samples) == {0: 4, 1: 10}
    assert any(s.path.endswith("UPPER.JPG") for s in ds.samples)
    assert any("imbalanced" in w and "'train'" in w for w in ds.warnings)
    assert any("loose.jpg" in w for w in ds.warnings)  # unlabelled image reported, not used
    assert not any("--jpeg-align" in w for w in ds.warnings)


def test_symlinked_folders_are_followed_once(tmp_path, reals, fakes):
    store = tmp_path / "store"
    _fill(store / "fakes", fakes, 4)
    root = tmp_path / "photos"
    _fill(root / "real", reals, 4)
    try:
        (root / "fake").symlink_to(store / "fakes", target_is_directory=True)
        (root / "real" / "loop").symlink_to(root, target_is_directory=True)  # a cycle must not hang
    except OSError:
        pytest.skip("symlinks not available")
    ds = discover_dataset(root)
    assert Counter(s.label for s in ds.samples) == {0: 4, 1: 4}
    assert all(s.path.startswith(str(root)) for s in ds.samples)


def test_balanced_tree_has_no_imbalance_warning(tmp_path, reals, fakes):
    root = tmp_path / "photos"
    _fill(root / "real", reals, 5)
    _fill(root / "fake", fakes, 5)
    assert discover_dataset(root).warnings == []


# --------------------------------------------------------------------------- errors and forced layouts


def test_nothing_found_explains_layouts(tmp_path, reals):
    root = tmp_path / "unsorted"
    _place(reals[0], root / "holiday" / "a.jpg")
    (root / "docs").mkdir()
    with pytest.raises(DataError) as err:
        discover_dataset(root)
    text = str(err.value)
    assert "genimage" in text and "forensynths" in text and "cifake" in text
    assert "holiday/" in text and "docs/" in text
    with pytest.raises(DataError):
        discover_dataset(tmp_path / "does-not-exist")


def test_mixed_layouts_need_a_choice(tmp_path, reals, fakes):
    root = tmp_path / "mixed"
    _fill(root / "gan" / "0_real", reals, 3)
    _fill(root / "gan" / "1_fake", fakes, 3)
    _fill(root / "cifake" / "train" / "REAL", reals, 2, start=5)
    _fill(root / "cifake" / "train" / "FAKE", fakes, 2, start=5)
    with pytest.raises(DataError) as err:
        discover_dataset(root)
    assert "cifake" in str(err.value) and "forensynths" in str(err.value)
    ds = discover_dataset(root, layout="cifake")
    assert ds.layout == "cifake" and len(ds) == 4 and ds.generators() == ["cifake"]
    assert any("ignored 6 images" in w for w in ds.warnings)
    with pytest.raises(DataError):
        discover_dataset(root, layout="genimage")
    with pytest.raises(CausalClipError):
        discover_dataset(root, layout="imagenet")


# --------------------------------------------------------------------------- manifests


def _write_csv(path: Path, rows: list[list[str]]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows(rows)
    return path


def test_manifest_layout(tmp_path, reals, fakes):
    data = tmp_path / "data"
    r = _fill(data / "r", reals, 3)
    f = _fill(data / "f", fakes, 3)
    rows = [
        ["path", "label", "generator", "split"],
        [f"r/{r[0].name}", "0", "sd", "train"],
        [f"r/{r[1].name}", "REAL", "sd", "valid"],
        [str(r[2]), "nature", "", ""],
        [f"f/{f[0].name}", "1", "sd", "train"],
        [f"f/{f[1].name}", "FAKE", "sd", "test"],
        [f"f/{f[2].name}", "ai", "", "train"],
        [],
        [f"f/{f[2].name}", "ai", "", "train"],  # duplicate: used once, noted
    ]
    csv_path = _write_csv(data / "list.csv", rows)
    ds = discover_dataset(csv_path)
    assert ds.layout == "manifest"
    assert [s.label for s in ds.samples] == [1, 1, 1, 0, 0, 0]  # sorted by path: f/… before r/…
    assert ds.generators() == ["data", "sd"]  # empty generator → the CSV's folder name
    assert Counter(s.split for s in ds.samples) == {"train": 4, "val": 1, "test": 1}
    assert any("more than once" in w for w in ds.warnings)
    same = discover_dataset(None, manifest=csv_path)
    assert same.samples == ds.samples


def test_manifest_errors(tmp_path, reals):
    data = tmp_path / "data"
    r = _fill(data / "r", reals, 1)
    no_header = _write_csv(tmp_path / "a.csv", [[str(r[0]), "0"]])
    with pytest.raises(DataError, match="header"):
        discover_dataset(no_header)
    missing = _write_csv(
        tmp_path / "b.csv", [["path", "label"], [str(r[0]), "0"]] + [[f"gone{i}.jpg", "1"] for i in range(9)]
    )
    with pytest.raises(DataError) as err:
        discover_dataset(missing)
    assert (
        "9 file(s)" in str(err.value) and "gone0.jpg" in str(err.value) and "gone8.jpg" not in str(err.value)
    )
    with pytest.raises(DataError, match="line 2"):
        discover_dataset(_write_csv(tmp_path / "c.csv", [["path", "label"], [str(r[0]), "maybe"]]))
    with pytest.raises(DataError, match="split"):
        discover_dataset(
            _write_csv(tmp_path / "d.csv", [["path", "label", "split"], [str(r[0]), "0", "dev"]])
        )
    with pytest.raises(DataError, match="both real and fake"):
        discover_dataset(
            _write_csv(tmp_path / "e.csv", [["path", "label"], [str(r[0]), "0"], [str(r[0]), "1"]])
        )
    with pytest.raises(DataError):
        discover_dataset(tmp_path / "nope.csv")


@pytest.mark.parametrize("relative", [False, True])
def test_write_manifest_round_trip(tmp_path, reals, fakes, relative):
    root = tmp_path / "gan"
    _fill(root / "test" / "biggan" / "0_real", reals, 3)
    _fill(root / "test" / "biggan" / "1_fake", fakes, 3)
    ds = discover_dataset(root)
    out = tmp_path / "export" / "manifest.csv"
    write_manifest(ds, out, relative=relative)
    assert os.listdir(out.parent) == ["manifest.csv"]  # no temp file left
    first = out.read_text(encoding="utf-8").splitlines()[1]
    assert first.startswith("../") if relative else first.startswith(str(root))
    back = discover_dataset(out)
    assert back.samples == ds.samples
    write_manifest(back.samples[:2], out)  # replaces the old file
    assert len(discover_dataset(out)) == 2


# --------------------------------------------------------------------------- hold-out splits


def _two_generator_tree(root: Path, reals: list[Path], fakes: list[Path]) -> Path:
    _fill(root / "biggan" / "0_real", reals, 20)
    _fill(root / "biggan" / "1_fake", fakes, 20)
    _fill(root / "crn" / "0_real", reals, 10, start=20)
    _fill(root / "crn" / "1_fake", fakes, 15, start=20)
    return root


def test_make_splits_is_stratified_and_deterministic(tmp_path, reals, fakes):
    ds = discover_dataset(_two_generator_tree(tmp_path / "gans", reals, fakes))
    assert ds.splits() == ["train"]
    a = make_splits(ds, val_fraction=0.2, seed=3)
    b = make_splits(ds, val_fraction=0.2, seed=3)
    c = make_splits(ds, val_fraction=0.2, seed=4)
    assert a.samples == b.samples
    assert {s.path for s in a.split("val")} != {s.path for s in c.split("val")}
    assert Counter((s.generator, s.label) for s in a.split("val")) == {
        ("biggan", 0): 4,
        ("biggan", 1): 4,
        ("crn", 0): 2,
        ("crn", 1): 3,
    }
    assert len(a.split("train")) + len(a.split("val")) == len(ds) == 65
    assert ds.splits() == ["train"]  # the input is left alone
    assert make_splits(a, val_fraction=0.5) is a  # a val split exists already
    # Hashes of root-relative paths: the same tree elsewhere gives the same hold-out.
    moved = tmp_path / "elsewhere"
    shutil.copytree(tmp_path / "gans", moved / "gans")
    again = make_splits(discover_dataset(moved / "gans"), val_fraction=0.2, seed=3)
    assert sorted(Path(s.path).name for s in again.split("val")) == sorted(
        Path(s.path).name for s in a.split("val")
    )


def test_ensure_split_small_strata_and_errors(tmp_path, reals, fakes):
    root = tmp_path / "tiny"
    _fill(root / "test" / "a" / "0_real", reals, 2)
    _fill(root / "test" / "a" / "1_fake", fakes, 1)
    ds = discover_dataset(root)
    with pytest.raises(DataError, match="'train'"):
        make_splits(ds)
    held = ensure_split(ds, "val", from_split="test", fraction=0.01, seed=0)
    # A stratum of two gives one and keeps one; a stratum of one stays where it is.
    assert Counter((s.split, s.label) for s in held.samples) == {
        ("val", 0): 1,
        ("test", 0): 1,
        ("test", 1): 1,
    }
    with pytest.raises(CausalClipError):
        ensure_split(ds, "val", "test", fraction=1.5)


def test_sample_is_frozen():
    s = Sample("/x.jpg", 0, "g", "train")
    with pytest.raises(AttributeError):
        s.label = 1  # type: ignore[misc]


# --------------------------------------------------------------------------- the real shared trees


def test_real_forensynths_thumbs():
    ds = discover_dataset(SHARED / "forensynths-thumbs")
    assert ds.layout == "forensynths"
    assert len(ds) == 400 and len(ds.generators()) == 10
    assert "stylegan" in ds.generators() and "seeingdark" in ds.generators()
    assert Counter((s.generator, s.label) for s in ds.samples) == {
        (g, label): 20 for g in ds.generators() for label in (0, 1)
    }
    assert ds.warnings == []


def test_real_cifake():
    ds = discover_dataset(SHARED / "cifake")
    assert ds.layout == "cifake" and ds.generators() == ["cifake"]
    assert len(ds.split("train")) == 3000 and len(ds.split("test")) == 1000
    assert ds.summary()["splits"]["test"]["n_real"] == 500


def test_real_multigen_and_web_sd():
    ds = discover_dataset(SHARED / "multigen-2022")
    assert ds.layout == "forensynths" and len(ds.generators()) == 9
    assert "midjourney-v3" in ds.generators()
    counts = ds.summary()["splits"]["train"]["generators"]
    assert counts["dalle-mini"] == {"n_real": 110, "n_fake": 369}
    assert any("imbalanced" in w for w in ds.warnings)  # 831 real vs 1574 fake overall
    web = discover_dataset(SHARED / "web-sd")
    assert web.generators() == ["web-sd"] and len(web) == 1200
