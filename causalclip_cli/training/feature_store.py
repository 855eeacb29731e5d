"""Backbone features as Parquet shards: written by `causalclip embed`, read by `train`/`eval --features`.

One row per embedded image, keyed like the local feature cache (features.py): the sha256 of the file's
content, the backbone id (architecture + exact weights) and the preprocessing key. Each row also carries
what training needs from the dataset: path, label, generator, split. The schema's metadata records the
backbone and preprocessing once, so a reader can refuse features made by another backbone.

Needs pyarrow (the `causalclip[ray]` extra); imported lazily so the core install works without it.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from causalclip_cli.errors import DataError, UsageError

if TYPE_CHECKING:
    import pyarrow as pa

    from causalclip_cli.inputs.datasets import Dataset, Sample

META_KEY = b"causalclip_features"
SHARD_ROWS = 50_000
PYARROW_HINT = 'install the extra: pip install "causalclip[ray]"'


@dataclass
class FeatureSet:
    x: np.ndarray
    y: np.ndarray
    groups: list[str]
    paths: list[str]
    failed: list[tuple[str, str]] = field(default_factory=list)
    kinds: list[str] = field(default_factory=list)  # Sample.kind of each row: its domain, else its generator


def require_pyarrow():  # noqa: ANN201 - the pyarrow module
    try:
        import pyarrow
    except ImportError as exc:
        raise UsageError("Parquet features need pyarrow, which is not installed", hint=PYARROW_HINT) from exc
    return pyarrow


def is_uri(path: str | os.PathLike) -> bool:
    """s3://, gs://, file://, hdfs://...: anything pyarrow's filesystems understand, not a plain path."""
    return "://" in os.fspath(path)


def feature_schema(embed_dim: int, meta: dict) -> pa.Schema:
    pa = require_pyarrow()
    return pa.schema(
        [("path", pa.string()), ("key", pa.string()), ("backbone_id", pa.string()), ("variant", pa.string()),
         ("label", pa.int8()), ("generator", pa.string()), ("split", pa.string()),
         ("feature", pa.list_(pa.float32(), embed_dim))],
        metadata={META_KEY: json.dumps(meta, sort_keys=True).encode()},
    )


class ShardWriter:
    """Rows → numbered Parquet shards in a folder, committed as a whole.

    A local folder is written under a temporary name beside DEST and renamed over it at `commit()`, so a
    killed run never leaves a half-written DEST (an existing DEST is replaced only then). A URI (s3://...)
    has no atomic folder rename: shards go straight to DEST, each one a single object PUT, and a
    `_SUCCESS` marker is written last.
    """

    def __init__(self, dest: str | os.PathLike, schema: pa.Schema, shard_rows: int = SHARD_ROWS) -> None:
        pa = require_pyarrow()
        import pyarrow.fs as pafs

        self.pa, self.schema, self.shard_rows = pa, schema, shard_rows
        self.dest = os.fspath(dest)
        self.rows: list[dict] = []
        self.shards = 0
        self.count = 0
        if is_uri(self.dest):
            self.fs, self.root = pafs.FileSystem.from_uri(self.dest)
            self.fs.create_dir(self.root, recursive=True)
            self.tmp = None
        else:
            target = Path(self.dest).resolve()
            if target.exists() and not target.is_dir():
                raise UsageError(f"--output {self.dest}: exists and is not a folder")
            target.parent.mkdir(parents=True, exist_ok=True)
            self.tmp = target.parent / f".{target.name}.{secrets.token_hex(4)}.partial"
            self.tmp.mkdir()
            self.fs, self.root, self.target = pafs.LocalFileSystem(), str(self.tmp), target

    def write(self, row: dict) -> None:
        self.rows.append(row)
        self.count += 1
        if len(self.rows) >= self.shard_rows:
            self._flush()

    def _flush(self) -> None:
        if not self.rows and self.shards:
            return
        import pyarrow.parquet as pq

        table = self.pa.Table.from_pylist(self.rows, schema=self.schema)
        with self.fs.open_output_stream(f"{self.root}/part-{self.shards:05d}.parquet") as out:
            pq.write_table(table, out)
        self.shards += 1
        self.rows = []

    def commit(self) -> None:
        self._flush()  # an empty result still gets one (empty) shard, so readers see the schema
        with self.fs.open_output_stream(f"{self.root}/_SUCCESS") as out:
            out.write(b"")
        if self.tmp is not None:
            old = None
            if self.target.exists():
                old = self.target.parent / f".{self.target.name}.{secrets.token_hex(4)}.old"
                os.replace(self.target, old)
            os.replace(self.tmp, self.target)
            self.tmp = None
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)

    def abort(self) -> None:
        if self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp = None


def read_table(source: str | os.PathLike) -> pa.Table:
    """All shards of a folder (local or URI) as one table; a single .parquet file works too."""
    require_pyarrow()
    import pyarrow.parquet as pq

    src = os.fspath(source)
    if not is_uri(src) and not os.path.exists(src):
        raise DataError(f"features not found: {src}")
    try:
        return pq.read_table(src)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for unreadable data
        raise DataError(f"{src}: not readable as Parquet features ({exc})") from exc


@dataclass
class FeatureStore:
    """Parquet features in memory: a row per image, a matrix of features and the embedding's identity."""

    source: str
    meta: dict
    samples: list[Sample]
    x: np.ndarray
    keys: list[str]

    def check(self, backbone_id: str, variant: str) -> None:
        """Refuse features from another backbone or preprocessing than the one the head uses."""
        have = (self.meta.get("backbone_id"), self.meta.get("variant"))
        bb = self.meta.get("backbone") or {}
        if have != (backbone_id, variant):
            raise DataError(
                f"{self.source}: features were made by backbone {have[0]} with preprocessing {have[1]}, "
                f"but this run uses {backbone_id} with {variant}",
                hint=f"these features come from --backbone {bb.get('name')} --pretrained {bb.get('pretrained')}; "
                "train with the same, or embed again with the checkpoint's backbone",
            )

    def dataset(self, subsets: list[str] | None = None, exclude: list[str] | None = None) -> Dataset:
        from causalclip_cli.inputs.datasets import Dataset, _select_generators, leave_out

        samples = _select_generators(self.samples, subsets) if subsets else list(self.samples)
        samples = leave_out(samples, exclude) if exclude else samples
        return Dataset(root=self.source, layout=f"features ({self.meta.get('layout', '?')})", samples=samples)

    def features(self, samples: list[Sample]) -> FeatureSet:
        row = {s.path: i for i, s in enumerate(self.samples)}
        idx = [row[s.path] for s in samples]
        return FeatureSet(self.x[idx], np.array([s.label for s in samples], dtype=np.int64),
                          [s.generator for s in samples], [s.path for s in samples], [],
                          [s.kind for s in samples])


def open_features(source: str | os.PathLike) -> FeatureStore:
    """Read Parquet features written by `causalclip embed`."""
    from causalclip_cli.inputs.datasets import Sample

    table = read_table(source)
    raw = (table.schema.metadata or {}).get(META_KEY)
    if raw is None or "feature" not in table.column_names:
        raise DataError(f"{os.fspath(source)}: Parquet without causalclip features (written by `causalclip embed`)")
    meta = json.loads(raw)
    ids = set(table.column("backbone_id").unique().to_pylist()) | set(table.column("variant").unique().to_pylist())
    if ids - {meta.get("backbone_id"), meta.get("variant")}:
        raise DataError(f"{os.fspath(source)}: shards from different backbones or preprocessing are mixed")
    cols = table.select(["path", "label", "generator", "split", "key"]).to_pydict()
    samples = [Sample(p, int(lab), g, sp) for p, lab, g, sp in
               zip(cols["path"], cols["label"], cols["generator"], cols["split"], strict=True)]
    if len({s.path for s in samples}) != len(samples):
        raise DataError(f"{os.fspath(source)}: the same path appears more than once")
    feats = table.column("feature").combine_chunks()
    dim = int(meta.get("embed_dim") or feats.type.list_size)
    x = feats.flatten().to_numpy(zero_copy_only=False).astype(np.float32).reshape(len(samples), dim)
    return FeatureStore(os.fspath(source), meta, samples, x, cols["key"])
