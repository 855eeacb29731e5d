"""The feature cache: each image's frozen-backbone embedding, computed once.

Keyed by backbone id + preprocessing (+ any pixel transform such as --jpeg-align) + the sha256 of
the file's bytes, so renaming or touching a file costs nothing and editing it invalidates its entry.
Entries live in small safetensors shards written atomically; a killed extraction keeps every shard
it finished and resumes from there.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

SHARD_SIZE = 256


def file_sha256(path: str, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def _safe_name(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)


def cache_folder(root: Path, backbone_id: str, variant: str) -> Path:
    """Where the cache of one backbone/feature id and one recipe variant lives."""
    return Path(root) / "features" / _safe_name(f"{backbone_id}-{variant}")


class FeatureCache:
    """A directory of shards: `features` [n, d] float32 + the n content keys in the metadata."""

    def __init__(self, root: Path, backbone_id: str, variant: str) -> None:
        self.dir = cache_folder(root, backbone_id, variant)
        self.dir.mkdir(parents=True, exist_ok=True)
        self._index: dict[str, tuple[Path, int]] = {}
        self._pending_keys: list[str] = []
        self._pending_rows: list[np.ndarray] = []
        self._loaded: dict[Path, np.ndarray] = {}
        for shard in sorted(self.dir.glob("shard-*.safetensors")):
            self._index_shard(shard)

    def _index_shard(self, shard: Path) -> None:
        from safetensors import safe_open

        try:
            with safe_open(str(shard), framework="np") as fh:
                keys = json.loads((fh.metadata() or {}).get("keys", "[]"))
        except Exception:  # noqa: BLE001 - an unreadable shard is ignored and recomputed
            return
        for row, key in enumerate(keys):
            self._index[key] = (shard, row)

    def __contains__(self, key: str) -> bool:
        return key in self._index or key in self._pending_keys

    def __len__(self) -> int:
        return len(self._index) + len(self._pending_keys)

    def get(self, key: str) -> np.ndarray:
        if key in self._index:
            shard, row = self._index[key]
            if shard not in self._loaded:
                from safetensors.numpy import load_file

                self._loaded[shard] = load_file(str(shard))["features"]
            return self._loaded[shard][row]
        return self._pending_rows[self._pending_keys.index(key)]

    def add(self, keys: Sequence[str], feats: np.ndarray) -> None:
        for k, row in zip(keys, feats, strict=True):
            self._pending_keys.append(k)
            self._pending_rows.append(np.asarray(row, dtype=np.float32))
        if len(self._pending_keys) >= SHARD_SIZE:
            self.flush()

    def flush(self) -> None:
        if not self._pending_keys:
            return
        from safetensors.numpy import save_file

        feats = np.stack(self._pending_rows).astype(np.float32)
        name = f"shard-{time.time_ns():020d}-{os.getpid()}.safetensors"
        fd, tmp = tempfile.mkstemp(dir=self.dir, prefix=".partial-")
        os.close(fd)
        try:
            save_file({"features": feats}, tmp, metadata={"keys": json.dumps(self._pending_keys)})
            os.replace(tmp, self.dir / name)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        self._index_shard(self.dir / name)
        self._pending_keys, self._pending_rows = [], []


@dataclass
class Extraction:
    features: np.ndarray  # [n_ok, d] in the order of `ok`
    ok: list[int]  # indices into the input list that have features
    failed: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    computed: int = 0  # how many went through the backbone this time
    cached: int = 0


ProgressFn = Callable[[int, int], None]


def extract_features(
    paths: Sequence[str],
    embed: Callable,
    preprocess: object,
    cache: FeatureCache | None,
    *,
    batch_size: int = 32,
    workers: int = 0,
    pixel_transform: Callable | None = None,
    progress: ProgressFn | None = None,
    decoder: str = "cpu",
    device: str = "cpu",
) -> Extraction:
    """Embeddings for `paths`: cached ones are read, the rest decoded, embedded and cached.

    `embed` maps a pixel batch tensor to an embedding tensor (e.g. Detector.embed or the tower).
    With a multi-view recipe (`preprocess.views` = V > 1) every image yields V rows, cached under
    `<sha256>#<view>`, and `features` is [n_ok, V, d].
    `decoder` 'gpu' decodes JPEGs with nvJPEG on `device` (gpu_decode.py; no pixel_transform then).
    """
    from causalclip_cli.inputs.gpu_decode import make_scan_loader

    views = int(getattr(preprocess, "views", 1))

    def vkeys(key: str) -> list[str]:
        return [key] if views == 1 else [f"{key}#{v}" for v in range(views)]

    keys: list[str | None] = []
    failed: list[tuple[str, str]] = []
    for p in paths:
        try:
            keys.append(file_sha256(p))
        except OSError as exc:
            keys.append(None)
            failed.append((p, exc.strerror or str(exc)))
    todo = [i for i, k in enumerate(keys)
            if k is not None and (cache is None or any(vk not in cache for vk in vkeys(k)))]
    cached = sum(1 for k in keys if k is not None) - len(todo)
    fresh: dict[int, np.ndarray] = {}
    done = cached
    total = len(paths)
    if progress:
        progress(done, total)
    if todo:
        if decoder == "gpu":
            loader = make_scan_loader([paths[i] for i in todo], preprocess, batch_size, workers, decoder="gpu",
                                      device=device)
        else:
            from causalclip_cli.inputs.data import make_loader

            loader = make_loader([paths[i] for i in todo], preprocess, batch_size, workers,
                                 pixel_transform=pixel_transform)
        try:
            for batch in loader:
                if batch.tensor is not None:
                    emb = embed(batch.tensor).detach().cpu().numpy().astype(np.float32)
                    emb = emb.reshape(len(batch.good), views, -1)
                    rows = [todo[batch.items[j]["index"]] for j in batch.good]
                    for r, e in zip(rows, emb, strict=True):
                        fresh[r] = e
                    if cache is not None:
                        cache.add([vk for r in rows for vk in vkeys(keys[r])], emb.reshape(-1, emb.shape[-1]))
                for item in batch.items:
                    if item["error"] is not None:
                        failed.append((item["path"], item["error"]))
                done += len(batch.items)
                if progress:
                    progress(done, total)
        finally:
            if cache is not None:
                cache.flush()
    ok, rows = [], []
    for i, k in enumerate(keys):
        if i in fresh:
            ok.append(i)
            rows.append(fresh[i])
        elif k is not None and cache is not None and all(vk in cache for vk in vkeys(k)):
            ok.append(i)
            rows.append(np.stack([cache.get(vk) for vk in vkeys(k)]))
    feats = np.stack(rows) if rows else np.zeros((0, views, 0), dtype=np.float32)
    if views == 1:
        feats = feats[:, 0]
    return Extraction(features=feats, ok=ok, failed=failed, computed=len(fresh), cached=cached)
