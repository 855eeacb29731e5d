"""Labelled dataset discovery: folder trees and CSV manifests become `Sample` records.

No image is decoded here (files are recognised by extension), so discovery over a large tree costs one
directory walk. Label convention everywhere: 0 = real, 1 = fake.

Layouts recognised (`discover_dataset(layout=...)` forces one, "auto" detects it):

- ``genimage``     ``<generator>/<subdir>/{train,val}/{ai,nature}`` (GenImage; root may be one generator)
- ``forensynths``  ``[split/]<generator>[/<class>]/{0_real,1_fake}`` (ForenSynths/CNNDetection, AIGCDetect)
- ``cifake``       ``{train,test}/{REAL,FAKE}`` (CIFAKE; folder names are case-insensitive)
- ``realfake``     plain ``real/`` and ``fake/`` folders
- ``manifest``     a CSV with a header ``path,label[,generator][,split]``

Samples whose tree or manifest names no split get ``default_split`` ("train" unless told otherwise);
`ensure_split` / `make_splits` then carve a validation set out of it by a seeded, stratified hold-out.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import os
import tempfile
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from causalclip_cli.errors import DataError, UsageError

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif", ".heic", ".heif", ".avif"}
)
SPLITS = ("train", "val", "test")
SPLIT_ALIASES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
LAYOUTS = ("genimage", "forensynths", "cifake", "realfake", "manifest")

# Class-folder names per layout (compared lower-cased) → label.
_FORENSYNTHS_CLASSES = {"0_real": 0, "1_fake": 1}
_GENIMAGE_CLASSES = {"nature": 0, "ai": 1}
_REALFAKE_CLASSES = {"real": 0, "fake": 1}
_MANIFEST_LABELS = {"0": 0, "1": 1, "real": 0, "fake": 1, "nature": 0, "ai": 1}
_MANIFEST_COLUMNS = ("path", "label", "generator", "split", "domain")
# Folders that archive tools and OSes leave behind; never data.
_SKIP_DIRS = frozenset({"__macosx", "__pycache__", "@eadir"})
_FORMAT_NAMES = {
    ".jpg": "JPEG",
    ".jpeg": "JPEG",
    ".tif": "TIFF",
    ".tiff": "TIFF",
    ".heic": "HEIF",
    ".heif": "HEIF",
}

_LAYOUT_HELP = (
    "layouts looked for: genimage (<generator>/<subdir>/{train,val}/{ai,nature}), "
    "forensynths ([split/]<generator>[/<class>]/{0_real,1_fake}), cifake ({train,test}/{REAL,FAKE}), "
    "realfake (real/ and fake/), or a CSV manifest with a header path,label[,generator][,split]"
)


@dataclass(frozen=True)
class Sample:
    """One labelled image."""

    path: str  # absolute path
    label: int  # 0 real, 1 fake
    generator: str  # e.g. "biggan", "stable_diffusion_v_1_4", "cifake"
    split: str  # "train" | "val" | "test"
    # The kind of image (e.g. "studio-portraits", "camera-2025"): the unit of balanced training and of
    # per-domain calibration. A manifest's `domain` column sets it; otherwise it is the generator.
    domain: str = ""

    @property
    def kind(self) -> str:
        return self.domain or self.generator


@dataclass(frozen=True)
class DatasetChecks:
    """Thresholds behind `Dataset.warnings`."""

    # A split is reported as imbalanced when either class makes up less than this fraction of it.
    min_class_fraction: float = 0.4
    # A generator's classes "mostly" share a file format when this fraction of their files has it.
    format_dominance: float = 0.8
    # How many example paths a warning or error lists.
    max_examples: int = 5


DEFAULT_CHECKS = DatasetChecks()


@dataclass
class Dataset:
    """Samples found under `root` (sorted by path) and what discovery has to say about them.

    `notes` are remarks from discovery itself (ignored files, duplicates); `warnings` adds the checks on
    the samples (class imbalance per split, file-format shortcuts) and is recomputed whenever a new
    Dataset is built, e.g. by `ensure_split`.
    """

    root: str
    layout: str
    samples: list[Sample]
    notes: list[str] = field(default_factory=list)
    checks: DatasetChecks = field(default=DEFAULT_CHECKS, repr=False)
    warnings: list[str] = field(init=False)

    def __post_init__(self) -> None:
        self.samples = sorted(self.samples, key=lambda s: s.path)
        self.warnings = list(self.notes) + _check_samples(self.samples, self.checks)

    def __len__(self) -> int:
        return len(self.samples)

    def split(self, name: str) -> list[Sample]:
        """Samples of one split ("valid"/"validation" are read as "val")."""
        key = _normalise_split(name)
        return [s for s in self.samples if s.split == key]

    def splits(self) -> list[str]:
        """Split names present, in train, val, test order."""
        present = {s.split for s in self.samples}
        return [name for name in SPLITS if name in present]

    def generators(self) -> list[str]:
        """Generator names present, sorted."""
        return sorted({s.generator for s in self.samples})

    def summary(self) -> dict:
        """Counts per split × generator × label, with the majority/minority class ratio per split.

        `imbalance` is None where a class is absent (the ratio would be infinite).
        """
        out: dict = {
            "layout": self.layout,
            "root": self.root,
            **_label_counts(self.samples),
            "generators": self.generators(),
            "splits": {},
        }
        # One pass over the samples: GenImage-sized datasets hold millions of them.
        cells = Counter((s.split, s.generator, s.label) for s in self.samples)
        for name in self.splits():
            part = self.split(name)
            gens = {
                gen: {"n_real": cells[(name, gen, 0)], "n_fake": cells[(name, gen, 1)]}
                for gen in sorted({g for (sp, g, _) in cells if sp == name})
            }
            out["splits"][name] = {**_label_counts(part), "generators": gens}
        return out


def discover_dataset(
    root: str | os.PathLike[str] | None,
    layout: str = "auto",
    subsets: Sequence[str] | None = None,
    manifest: str | os.PathLike[str] | None = None,
    default_split: str = "train",
    checks: DatasetChecks = DEFAULT_CHECKS,
    exclude: Sequence[str] | None = None,
) -> Dataset:
    """Find the labelled images under `root` (a folder, or a .csv manifest) or listed in `manifest`.

    `layout` is "auto" or one of LAYOUTS; `subsets` keeps only those generators and `exclude` drops the
    named generators or kinds (`leave_out`); unknown names are an error that lists the available ones.
    Samples whose tree/manifest names no split get `default_split`. Raises DataError when nothing usable
    is found.
    """
    if layout != "auto" and layout not in LAYOUTS:
        raise UsageError(
            f"unknown dataset layout {layout!r}", hint=f"choose auto or one of: {', '.join(LAYOUTS)}"
        )
    default_split = _normalise_split(default_split)
    if manifest is None and root is not None and str(root).lower().endswith(".csv"):
        manifest = root
    if manifest is not None:
        if layout not in ("auto", "manifest"):
            raise DataError(
                f"a manifest was given, but layout {layout!r} was asked for; use layout 'manifest'"
            )
        csv_path = os.path.abspath(os.path.expanduser(os.fspath(manifest)))
        samples, notes = _read_manifest(csv_path, default_split, checks)
        found_layout, ds_root = "manifest", csv_path
    else:
        if root is None:
            raise DataError("no dataset given: pass a folder or a CSV manifest")
        if layout == "manifest":
            raise DataError(f"layout 'manifest' needs a .csv file, not {os.fspath(root)!r}")
        ds_root = os.path.abspath(os.path.expanduser(os.fspath(root)))
        found_layout, samples, notes = _discover_tree(ds_root, layout, default_split, checks)
    if subsets:
        samples = _select_generators(samples, subsets)
    if exclude:
        samples = leave_out(samples, exclude)
    return Dataset(root=ds_root, layout=found_layout, samples=samples, notes=notes, checks=checks)


def ensure_split(
    dataset: Dataset, name: str = "val", from_split: str = "train", fraction: float = 0.1, seed: int = 0
) -> Dataset:
    """Return `dataset` with a `name` split, moving `fraction` of `from_split` into it if it has none.

    The hold-out is stratified by (generator, label) and deterministic: within each stratum the files are
    ranked by a hash of (seed, path relative to the dataset root), so the same seed gives the same split
    wherever the tree is mounted, and adding files leaves most earlier assignments alone. Every stratum of
    at least two samples gives at least one and keeps at least one. If `name` already has samples the
    dataset is returned unchanged. Raises DataError when `from_split` is empty.
    """
    name, from_split = _normalise_split(name), _normalise_split(from_split)
    if name == from_split:
        raise UsageError(f"cannot hold out split {name!r} from itself")
    if not 0.0 < fraction < 1.0:
        raise UsageError(f"hold-out fraction must be between 0 and 1 (exclusive), not {fraction}")
    if dataset.split(name):
        return dataset
    source = dataset.split(from_split)
    if not source:
        present = ", ".join(f"{s} ({len(dataset.split(s))})" for s in dataset.splits()) or "none"
        raise DataError(
            f"no {from_split!r} samples to hold out a {name!r} split from; splits present: {present}",
            hint="pass a dataset with a train split, or choose the split to hold out from",
        )
    base = dataset.root if os.path.isdir(dataset.root) else os.path.dirname(dataset.root)
    strata: dict[tuple[str, int], list[Sample]] = {}
    for s in source:
        strata.setdefault((s.generator, s.label), []).append(s)
    moved: set[str] = set()
    for members in strata.values():
        n = len(members)
        k = int(fraction * n + 0.5)
        if n >= 2:
            k = min(max(k, 1), n - 1)
        else:
            k = 0
        ranked = sorted(members, key=lambda s: _holdout_key(seed, s.path, base))
        moved.update(s.path for s in ranked[:k])
    samples = [
        replace(s, split=name) if s.split == from_split and s.path in moved else s for s in dataset.samples
    ]
    return Dataset(
        root=dataset.root,
        layout=dataset.layout,
        samples=samples,
        notes=list(dataset.notes),
        checks=dataset.checks,
    )


def make_splits(dataset: Dataset, val_fraction: float = 0.1, seed: int = 0) -> Dataset:
    """Make sure there is a "val" split: hold one out of "train" (see `ensure_split`) when there is none."""
    return ensure_split(dataset, "val", "train", val_fraction, seed)


def write_manifest(
    samples: Iterable[Sample] | Dataset, path: str | os.PathLike[str], relative: bool = False
) -> None:
    """Write samples as a CSV manifest (path,label,generator,split) atomically (temp file + rename).

    With `relative=True` paths are written relative to the CSV's folder, which `discover_dataset`
    resolves them against, so the tree and its manifest can move together.
    """
    rows = samples.samples if isinstance(samples, Dataset) else list(samples)
    out = os.path.abspath(os.path.expanduser(os.fspath(path)))
    folder = os.path.dirname(out)
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".manifest-", suffix=".csv.tmp", dir=folder)
    try:
        with os.fdopen(fd, "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(_MANIFEST_COLUMNS)
            for s in rows:
                p = os.path.relpath(s.path, folder) if relative else s.path
                writer.writerow([p, s.label, s.generator, s.split, s.domain])
            fh.flush()
            os.fsync(fh.fileno())
        # mkstemp creates the file private (0600); a manifest is an ordinary shareable file.
        with contextlib.suppress(OSError):
            os.chmod(tmp, 0o644)
        os.replace(tmp, out)
    except BaseException:
        # Leave no half-written temp file behind, whatever interrupted us.
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


# --------------------------------------------------------------------------- tree discovery


def _discover_tree(
    root: str, layout: str, default_split: str, checks: DatasetChecks
) -> tuple[str, list[Sample], list[str]]:
    if not os.path.exists(root):
        raise DataError(f"dataset folder not found: {root}")
    if not os.path.isdir(root):
        raise DataError(f"dataset path is neither a folder nor a .csv manifest: {root}")
    root_name = os.path.basename(root.rstrip(os.sep)) or "dataset"
    files, notes = _walk_images(root)

    by_layout: dict[str, list[Sample]] = {}
    unlabelled: list[str] = []
    for parts, fname in files:
        parsed = _parse_path(parts, root_name)
        full = os.path.join(root, *parts, fname)
        if parsed is None:
            unlabelled.append(os.path.join(*parts, fname))
            continue
        found, label, generator, split = parsed
        by_layout.setdefault(found, []).append(Sample(full, label, generator, split or default_split))

    if not by_layout:
        raise DataError(
            f"no labelled images found under {root}", hint=f"{_LAYOUT_HELP}; {_top_folders(root)}"
        )
    if layout == "auto":
        if len(by_layout) > 1:
            detail = "; ".join(
                f"{name}: {len(s)} images under {', '.join(_top_dirs_of(s, root, checks.max_examples))}"
                for name, s in sorted(by_layout.items())
            )
            raise DataError(
                f"{root} mixes several dataset layouts ({detail})",
                hint="point at one of those folders, or force a layout (the others are then ignored)",
            )
        chosen = next(iter(by_layout))
    else:
        chosen = layout
        if chosen not in by_layout:
            found = ", ".join(f"{name} ({len(s)} images)" for name, s in sorted(by_layout.items()))
            raise DataError(
                f"no images in the {chosen!r} layout under {root}; found: {found}", hint=_LAYOUT_HELP
            )
        for name, other in sorted(by_layout.items()):
            if name != chosen:
                notes.append(
                    f"ignored {len(other)} images in the {name!r} layout (layout {chosen!r} was forced)"
                )
    if unlabelled:
        examples = ", ".join(sorted(unlabelled)[: checks.max_examples])
        notes.append(
            f"ignored {len(unlabelled)} images outside any class folder of the {chosen!r} layout "
            f"(e.g. {examples})"
        )
    return chosen, by_layout[chosen], notes


def _walk_images(root: str) -> tuple[list[tuple[tuple[str, ...], str]], list[str]]:
    """(folder parts relative to root, file name) of every non-hidden image file, plus walk problems."""
    notes: list[str] = []
    files: list[tuple[tuple[str, ...], str]] = []
    seen_dirs: set[str] = set()

    def on_error(err: OSError) -> None:
        notes.append(f"could not read {err.filename}: {err.strerror}")

    # followlinks: datasets are often assembled from symlinked folders; realpaths guard against cycles.
    for dirpath, dirnames, filenames in os.walk(root, onerror=on_error, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen_dirs:
            dirnames[:] = []
            continue
        seen_dirs.add(real)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d.lower() not in _SKIP_DIRS)
        rel = os.path.relpath(dirpath, root)
        parts = () if rel == os.curdir else tuple(Path(rel).parts)
        for fname in filenames:
            if not fname.startswith(".") and os.path.splitext(fname)[1].lower() in IMAGE_EXTENSIONS:
                files.append((parts, fname))
    return files, notes


def _parse_path(parts: tuple[str, ...], root_name: str) -> tuple[str, int, str, str | None] | None:
    """(layout, label, generator, split or None) from an image's folder parts, or None if unlabelled.

    The deepest folder that names a class decides, so images may sit in sub-folders of a class folder.
    """
    for i in range(len(parts) - 1, -1, -1):
        name = parts[i].lower()
        split_above = _split_or_none(parts[i - 1]) if i > 0 else None
        if name in _FORENSYNTHS_CLASSES:
            prefix = parts[:i]
            split = next((_split_or_none(p) for p in prefix if _split_or_none(p)), None)
            # split/gen/cls/0_real and gen/cls/0_real: the generator is the first non-split component,
            # so ProGAN's object classes (progan/airplane/0_real) do not become generators.
            rest = [p for p in prefix if _split_or_none(p) is None]
            return "forensynths", _FORENSYNTHS_CLASSES[name], rest[0] if rest else root_name, split
        if name in _GENIMAGE_CLASSES and split_above:
            prefix = parts[: i - 1]
            if len(prefix) >= 2:
                generator = prefix[-2]  # <generator>/<subdir>/<split>/<class>
            elif len(prefix) == 1 and not prefix[0].lower().startswith("imagenet"):
                generator = prefix[0]  # subdir level left out: <generator>/<split>/<class>
            else:
                generator = root_name  # root is one generator folder (or its imagenet_* subdir)
            return "genimage", _GENIMAGE_CLASSES[name], generator, split_above
        if name in _REALFAKE_CLASSES:
            if split_above:
                prefix = parts[: i - 1]
                return "cifake", _REALFAKE_CLASSES[name], prefix[-1] if prefix else root_name, split_above
            prefix = parts[:i]
            return "realfake", _REALFAKE_CLASSES[name], prefix[-1] if prefix else root_name, None
    return None


def _split_or_none(name: str) -> str | None:
    return SPLIT_ALIASES.get(name.lower())


def _normalise_split(name: str) -> str:
    split = _split_or_none(name.strip())
    if split is None:
        raise DataError(f"unknown split {name!r}", hint=f"use one of: {', '.join(SPLIT_ALIASES)}")
    return split


def _top_folders(root: str) -> str:
    try:
        entries = sorted(
            e.name + ("/" if e.is_dir() else "") for e in os.scandir(root) if not e.name.startswith(".")
        )
    except OSError as err:
        return f"could not list {root}: {err.strerror}"
    if not entries:
        return f"{root} is empty"
    shown = ", ".join(entries[:12]) + (f", … ({len(entries)} entries)" if len(entries) > 12 else "")
    return f"top-level entries: {shown}"


def _top_dirs_of(samples: list[Sample], root: str, limit: int) -> list[str]:
    tops = sorted({os.path.relpath(s.path, root).split(os.sep)[0] for s in samples})
    return tops[:limit] + ([f"… ({len(tops)} folders)"] if len(tops) > limit else [])


def _select_generators(samples: list[Sample], subsets: Sequence[str]) -> list[Sample]:
    available = sorted({s.generator for s in samples})
    by_lower = {g.lower(): g for g in available}
    unknown = [name for name in subsets if name.lower() not in by_lower]
    if unknown:
        raise DataError(
            f"unknown generator subset(s): {', '.join(unknown)}", hint=f"available: {', '.join(available)}"
        )
    wanted = {by_lower[name.lower()] for name in subsets}
    return [s for s in samples if s.generator in wanted]


def leave_out(samples: list[Sample], names: Sequence[str]) -> list[Sample]:
    """`samples` without those whose generator or kind (a manifest's `domain`) is one of `names`
    (case-insensitive). A name matching nothing is an error listing what there is, so a typo never
    silently trains on what it meant to leave out."""
    wanted = {n.lower() for n in names}
    known = {s.generator.lower() for s in samples} | {s.kind.lower() for s in samples}
    unknown = sorted(n for n in names if n.lower() not in known)
    if unknown:
        kinds = sorted({s.kind for s in samples} - {s.generator for s in samples})
        raise DataError(
            f"nothing to leave out named {', '.join(unknown)}",
            hint=f"generators: {', '.join(sorted({s.generator for s in samples}))}"
            + (f"; kinds: {', '.join(kinds)}" if kinds else ""),
        )
    kept = [s for s in samples if s.generator.lower() not in wanted and s.kind.lower() not in wanted]
    if not kept:
        raise DataError(f"leaving out {', '.join(names)} leaves no images")
    return kept


# --------------------------------------------------------------------------- manifests


def _read_manifest(
    csv_path: str, default_split: str, checks: DatasetChecks
) -> tuple[list[Sample], list[str]]:
    if not os.path.isfile(csv_path):
        raise DataError(f"manifest not found: {csv_path}")
    folder = os.path.dirname(csv_path)
    default_generator = os.path.basename(folder) or "dataset"
    notes: list[str] = []
    by_path: dict[str, Sample] = {}
    missing: list[str] = []
    duplicates = 0
    try:
        # utf-8-sig: spreadsheet programs often prepend a byte-order mark.
        with open(csv_path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh)
            header = next(reader, None)
            columns = [c.strip().lower() for c in header] if header else []
            if "path" not in columns or "label" not in columns:
                raise DataError(
                    f"manifest {csv_path} needs a header row naming 'path' and 'label' columns",
                    hint=f"first row was: {','.join(header) if header else '(empty file)'}; "
                    "expected e.g. path,label,generator,split",
                )
            idx = {c: columns.index(c) for c in _MANIFEST_COLUMNS if c in columns}
            for lineno, row in enumerate(reader, start=2):
                if not row or all(not cell.strip() for cell in row):
                    continue
                cells = {c: (row[i].strip() if i < len(row) else "") for c, i in idx.items()}
                if not cells["path"]:
                    raise DataError(f"manifest {csv_path}, line {lineno}: empty path")
                label = _MANIFEST_LABELS.get(cells["label"].lower())
                if label is None:
                    raise DataError(
                        f"manifest {csv_path}, line {lineno}: label {cells['label']!r} is not understood",
                        hint="labels: 0/1, real/fake, nature/ai (case-insensitive)",
                    )
                split = default_split
                if cells.get("split"):
                    split = _split_or_none(cells["split"])
                    if split is None:
                        raise DataError(
                            f"manifest {csv_path}, line {lineno}: unknown split {cells['split']!r}",
                            hint=f"use one of: {', '.join(SPLIT_ALIASES)}",
                        )
                path = os.path.expanduser(cells["path"])
                path = os.path.abspath(path if os.path.isabs(path) else os.path.join(folder, path))
                if not os.path.isfile(path):
                    missing.append(cells["path"])
                    continue
                sample = Sample(path, label, cells.get("generator") or default_generator, split,
                                cells.get("domain") or "")
                previous = by_path.get(path)
                if previous is not None:
                    if previous.label != label:
                        raise DataError(
                            f"manifest {csv_path}, line {lineno}: "
                            f"{cells['path']} is listed as both real and fake"
                        )
                    duplicates += 1
                    continue
                by_path[path] = sample
    except UnicodeDecodeError as err:
        raise DataError(f"manifest {csv_path} is not UTF-8 text: {err}") from err
    except csv.Error as err:
        raise DataError(f"manifest {csv_path} is not valid CSV: {err}") from err
    if missing:
        shown = ", ".join(missing[: checks.max_examples])
        raise DataError(
            f"{len(missing)} file(s) listed in manifest {csv_path} do not exist, e.g.: {shown}",
            hint="relative paths are read against the manifest's own folder",
        )
    if not by_path:
        raise DataError(f"manifest {csv_path} lists no images")
    if duplicates:
        notes.append(f"manifest {csv_path} lists {duplicates} path(s) more than once; each is used once")
    return list(by_path.values()), notes


# --------------------------------------------------------------------------- checks


def _label_counts(samples: Sequence[Sample]) -> dict:
    n_fake = sum(s.label for s in samples)
    n_real = len(samples) - n_fake
    minority, majority = min(n_real, n_fake), max(n_real, n_fake)
    return {
        "n": len(samples),
        "n_real": n_real,
        "n_fake": n_fake,
        "imbalance": majority / minority if minority else None,
    }


def _check_samples(samples: Sequence[Sample], checks: DatasetChecks) -> list[str]:
    warnings: list[str] = []
    # Single passes throughout: GenImage-sized datasets hold millions of samples.
    by_split = Counter((s.split, s.label) for s in samples)
    for split in SPLITS:
        n_real, n_fake = by_split[(split, 0)], by_split[(split, 1)]
        if not n_real + n_fake:
            continue
        real_frac = n_real / (n_real + n_fake)
        if min(real_frac, 1.0 - real_frac) < checks.min_class_fraction:
            warnings.append(
                f"split {split!r} is imbalanced: {n_real} real vs {n_fake} fake "
                f"({real_frac:.0%} real); accuracy at a fixed threshold will be skewed, compare AP/AUC and "
                "per-class accuracy instead"
            )
    cells = Counter((s.generator, s.label, _extension(s.path)) for s in samples)
    formats: dict[str, dict[int, Counter]] = {}
    for (generator, label, ext), count in cells.items():
        fmt = _FORMAT_NAMES.get(ext, ext.lstrip(".").upper() or "no extension")
        formats.setdefault(generator, {0: Counter(), 1: Counter()})[label][fmt] += count
    for generator, by_label in sorted(formats.items()):
        if not by_label[0] or not by_label[1]:
            continue
        real_fmt, real_n = by_label[0].most_common(1)[0]
        fake_fmt, fake_n = by_label[1].most_common(1)[0]
        real_share, fake_share = real_n / by_label[0].total(), fake_n / by_label[1].total()
        if real_fmt != fake_fmt and min(real_share, fake_share) >= checks.format_dominance:
            warnings.append(
                f"generator {generator!r}: {real_share:.0%} of real images are {real_fmt} but "
                f"{fake_share:.0%} of fake images are {fake_fmt}; a detector can learn the file format "
                "instead of generation traces. Re-encode both classes alike with --jpeg-align QUALITY "
                "(e.g. --jpeg-align 96)"
            )
    return warnings


def _extension(path: str) -> str:
    # Cheaper than os.path.splitext, which matters at millions of paths.
    dot = path.rfind(".")
    return path[dot:].lower() if dot > path.rfind(os.sep) + 1 else ""


def _holdout_key(seed: int, path: str, base: str) -> str:
    prefix = base.rstrip(os.sep) + os.sep
    if path.startswith(prefix):
        rel = path[len(prefix) :]
    else:
        try:
            rel = os.path.relpath(path, base)
        except ValueError:  # different drive on Windows
            rel = path
    if os.sep != "/":
        rel = rel.replace(os.sep, "/")
    return hashlib.sha256(f"{seed}\0{rel}".encode()).hexdigest()
