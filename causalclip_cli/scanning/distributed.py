"""The Ray Data engine: `scan --engine ray` and `embed --engine ray`, on a laptop or a cluster.

Pipeline: a list of files (a local folder walked like the local scan, stdin paths, or a pyarrow URI such
as s3://bucket/prefix) → CPU tasks that decode and preprocess batches with data.py's ScanDataset (the
same safe decoding as the local engine; every bad file becomes an error item) → a pool of actors holding
the detector (one per GPU when the cluster has GPUs, `--actors N` otherwise) that score batches and build
the records with scan.batch_records, the function the local engine uses → the driver, which receives
the records in input order and writes them (JSONL/JSON/CSV/table atomically, or Parquet shards).

Fault tolerance is Ray's: decode tasks are retried, and score actors restart (max_restarts=-1) and
re-run the batch they held (max_task_retries=-1). The driver checks that every input file produced
exactly one record.

Ray is imported here only, inside functions: the core install does not need it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO
from urllib.parse import quote

import numpy as np

from causalclip_cli.errors import CausalClipError, UsageError
from causalclip_cli.training.feature_store import is_uri

if TYPE_CHECKING:
    from causalclip_cli.model.preprocess import Preprocess
    from causalclip_cli.scanning.output import ScanRecord, ScanSummary
    from causalclip_cli.scanning.scan import ScanOptions

RAY_HINT = 'install the extra: pip install "causalclip[ray]"'
# Test hook: a file path; the first score/embed actor batch that manages to create it kills its process
# (os._exit), to check that Ray restarts the actor and no record is lost.
DIE_ONCE_ENV = "CAUSALCLIP_TEST_RAY_DIE_ONCE"
# Environment passed on to workers started by a local Ray (a cluster's nodes have their own).
_PASSED_ENV = ("CAUSALCLIP_CACHE_DIR", "HF_HUB_OFFLINE", "HF_HOME")


class EngineError(CausalClipError):
    """The Ray engine could not start or lost records."""


@dataclass
class RayOptions:
    address: str | None = None  # None: start Ray locally; "auto": the cluster this machine belongs to
    actors: int | None = None  # None: one per GPU when the cluster has GPUs, else 1
    num_cpus: int | None = None  # local start only; None: all of this machine's
    cpus_per_actor: float = 1.0  # CPU actors; their torch threads follow it
    decode_batch: int = 32  # files per decode task
    # CPUs a decode task reserves. Fractional: decoding is light next to the forward pass, and resources that
    # differ from the actors' keep Ray Data from fusing decoding into the detector actors (no overlap then).
    decode_cpus: float = 0.5
    progress_every: float = 10.0  # seconds between progress lines when stderr is not a terminal


# --------------------------------------------------------------------------- Ray start-up


def require_ray():  # noqa: ANN201 - the ray module
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as exc:
        raise UsageError("--engine ray needs Ray Data, which is not installed", hint=RAY_HINT) from exc
    return ray


def _package_root() -> str:
    import causalclip_cli

    return str(Path(causalclip_cli.__file__).resolve().parent.parent)


def init_ray(options: RayOptions) -> Any:  # noqa: ANN401 - the ray module
    """Connect to `options.address`, or start a local Ray whose workers import this very package."""
    ray = require_ray()
    if ray.is_initialized():
        return ray
    kwargs: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.WARNING,
                              "configure_logging": True}
    if options.address:
        kwargs["address"] = options.address
    else:
        # Workers of a local Ray must import this checkout (editable install or PYTHONPATH alike).
        env = {k: os.environ[k] for k in _PASSED_ENV if k in os.environ}
        paths = [_package_root(), *[p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]]
        env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
        kwargs["runtime_env"] = {"env_vars": env}
        kwargs["num_cpus"] = options.num_cpus or os.cpu_count() or 1
    try:
        ray.init(**kwargs)
    except Exception as exc:  # noqa: BLE001 - connection errors come in many types
        where = options.address or "a local Ray"
        raise EngineError(f"could not start or reach {where}: {exc}",
                          hint="check `ray status`; without --address Ray starts on this machine") from exc
    _quiet_ray_data()
    return ray


def _quiet_ray_data() -> None:
    import ray.data

    logging.getLogger("ray.data").setLevel(logging.ERROR)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # the driver prints its own progress on stderr
    ctx.execution_options.preserve_order = True  # records come back in input (sorted path) order
    with contextlib.suppress(AttributeError):
        ctx.print_on_execution_start = False


def _placement(ray, options: RayOptions, device: str) -> tuple[int, dict[str, Any], str]:  # noqa: ANN001
    """(actors, per-actor resources, device) from the cluster's GPUs and the options."""
    gpus = int(ray.cluster_resources().get("GPU", 0))
    if device not in ("auto", "cpu") and not device.startswith("cuda"):
        raise UsageError(f"--device {device}: the Ray engine runs on cpu or cuda (auto picks cuda when the "
                         f"cluster has GPUs)")
    if gpus and device != "cpu":
        return options.actors or gpus, {"num_gpus": 1}, "cuda"  # each actor sees its one GPU as cuda:0
    if device.startswith("cuda"):
        raise UsageError(f"--device {device}: the Ray cluster has no GPUs")
    return options.actors or 1, {"num_cpus": options.cpus_per_actor}, "cpu"


# --------------------------------------------------------------------------- sources


@dataclass
class Listing:
    """What to process: files in sorted order, the ones named explicitly, and inputs that failed."""

    files: list[str]
    explicit: set[str]
    errors: list[tuple[str, str]]


def list_sources(sources: list[str], recursive: bool = True) -> Listing:
    """Local paths are walked by data.discover (exactly like the local scan); URIs by pyarrow's filesystems."""
    from causalclip_cli.inputs.data import discover

    local = [s for s in sources if not is_uri(s)]
    found = discover(local, recursive=recursive) if local else None
    files, explicit = list(found.files) if found else [], set(found.explicit) if found else set()
    errors = list(found.errors) if found else []
    for uri in (s for s in sources if is_uri(s)):
        listed, named, errs = _list_uri(uri, recursive)
        files += listed
        explicit |= named
        errors += errs
    if any(is_uri(s) for s in sources):
        files = sorted(set(files), key=lambda p: p.replace("/", "\0"))
    return Listing(files, explicit, errors)


def _list_uri(uri: str, recursive: bool) -> tuple[list[str], set[str], list[tuple[str, str]]]:
    import pyarrow.fs as pafs

    prefix = uri[: uri.index("://") + 3]
    try:
        fs, path = pafs.FileSystem.from_uri(uri)
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.File:
            return [uri], {uri}, []
        if info.type != pafs.FileType.Directory:
            return [], set(), [(uri, "file not found")]
        entries = fs.get_file_info(pafs.FileSelector(path, recursive=recursive))
    except Exception as exc:  # noqa: BLE001 - credentials, network, bad bucket...
        return [], set(), [(uri, f"cannot list: {' '.join(str(exc).split())[:200]}")]
    # pyarrow lists decoded paths and parses percent-encoded URIs: records carry re-encoded, usable URIs.
    files = [prefix + quote(e.path, safe="/") for e in entries if e.type == pafs.FileType.File
             and not any(part.startswith(".") for part in e.path[len(path):].split("/"))]
    return files, set(), []


@contextlib.contextmanager
def _local_copies(paths: list[str]) -> Iterator[tuple[list[str], dict[int, str]]]:
    """Local paths as they are; URIs fetched into a temp folder. Yields (local paths, {i: fetch error})."""
    if not any(is_uri(p) for p in paths):
        yield paths, {}
        return
    import pyarrow.fs as pafs

    errors: dict[int, str] = {}
    with tempfile.TemporaryDirectory(prefix="causalclip-fetch-") as tmp:
        local = []
        for i, p in enumerate(paths):
            if not is_uri(p):
                local.append(p)
                continue
            dst = os.path.join(tmp, f"{i}{os.path.splitext(p)[1][:16]}")
            try:
                fs, path = pafs.FileSystem.from_uri(p)
                with fs.open_input_stream(path) as src, open(dst, "wb") as out:
                    while block := src.read(1 << 20):
                        out.write(block)
            except Exception as exc:  # noqa: BLE001 - one object's problem is that file's error record
                errors[i] = f"cannot read: {' '.join(str(exc).split())[:200]}"
            local.append(dst)
        yield local, errors


# --------------------------------------------------------------------------- decode tasks


def _blank_pixels(preprocess: Preprocess) -> np.ndarray:
    from PIL import Image

    return np.zeros_like(preprocess.to_views(Image.new("RGB", (preprocess.size, preprocess.size))))


def decode_batch(batch: dict[str, np.ndarray], preprocess: Preprocess, with_key: bool = False,
                 provenance: bool = False) -> dict[str, Any]:
    """Ray Data task: decode + preprocess a batch of files with data.ScanDataset (never raises per file).

    Columns out: index, path, ok, pixels (zeros where not ok), width/height (-1: unknown), error ('' if
    none), skipped, and with `with_key` the content sha256 (`key`, '' when unreadable).
    """
    from causalclip_cli.inputs.data import ScanDataset, collate_scan
    from causalclip_cli.training.features import file_sha256

    paths = [str(p) for p in batch["path"]]
    named = [bool(e) for e in batch["explicit"]]
    blank = _blank_pixels(preprocess)
    with _local_copies(paths) as (local, fetch_errors):
        ds = ScanDataset(local, preprocess, explicit={lp for lp, e in zip(local, named, strict=True) if e},
                         provenance=provenance)
        items = []
        for i in range(len(local)):
            if i in fetch_errors:
                items.append({"index": i, "path": local[i], "tensor": None, "width": None, "height": None,
                              "error": fetch_errors[i], "skipped": False})
            else:
                items.append(ds[i])
        keys = [""] * len(local)
        if with_key:
            for i, it in enumerate(items):
                if it.get("tensor") is not None:
                    try:
                        keys[i] = file_sha256(local[i])
                    except OSError as exc:
                        it["tensor"], it["error"] = None, f"cannot read: {exc.strerror or exc}"
    col = collate_scan(items)
    ok = np.zeros(len(items), dtype=bool)
    ok[col.good] = True
    pixels = np.repeat(blank[None], len(items), axis=0)
    if col.tensor is not None:
        # [good × views, C, H, W] → one [views, C, H, W] block per file
        pixels[col.good] = col.tensor.numpy().reshape(len(col.good), *blank.shape)
    meta = col.items
    out = {
        "index": np.asarray(batch["index"], dtype=np.int64),
        "path": np.asarray(paths, dtype=object),
        "ok": ok,
        "pixels": pixels,
        "width": np.array([-1 if m.get("width") is None else m["width"] for m in meta], dtype=np.int64),
        "height": np.array([-1 if m.get("height") is None else m["height"] for m in meta], dtype=np.int64),
        "error": np.asarray([m.get("error") or "" for m in meta], dtype=object),
        "skipped": np.array([bool(m.get("skipped")) for m in meta], dtype=bool),
        "provenance": np.asarray([json.dumps(m["provenance"]) if m.get("provenance") is not None else ""
                                  for m in meta], dtype=object),
    }
    if with_key:
        out["key"] = np.asarray(keys, dtype=object)
    return out


def _items(batch: dict[str, np.ndarray]) -> list[dict]:
    return [{"path": str(p), "width": None if w < 0 else int(w), "height": None if h < 0 else int(h),
             "error": str(e) or None, "skipped": bool(s), "provenance": json.loads(v) if v else None}
            for p, w, h, e, s, v in zip(batch["path"], batch["width"], batch["height"], batch["error"],
                                        batch["skipped"], batch["provenance"], strict=True)]


def _maybe_die_once(marker: str | None) -> None:
    if not marker:
        return
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return
    os.close(fd)
    os._exit(1)  # simulate a crashed worker: Ray must restart the actor and retry this batch


def _set_threads(threads: float | None) -> None:
    if threads:
        import torch

        torch.set_num_threads(max(1, int(threads)))


# --------------------------------------------------------------------------- scan


def _record_schema():  # noqa: ANN202 - a pyarrow schema
    import pyarrow as pa

    return pa.schema([("index", pa.int64()), ("skipped", pa.bool_()), ("path", pa.string()),
                      ("probability", pa.float64()), ("label", pa.string()), ("reason", pa.string()),
                      ("familiarity", pa.float64()), ("threshold", pa.float64()),
                      ("model", pa.string()), ("width", pa.int64()), ("height", pa.int64()),
                      ("error", pa.string()), ("provenance", pa.string())])


class ScoreActor:
    """Ray Data actor: the detector, loaded once; a decoded batch in, one record row per file out."""

    def __init__(self, checkpoint: Any, name: str, device: str, backbone_weights: str | None,  # noqa: ANN401
                 options: ScanOptions, threads: float | None, die_once: str | None) -> None:
        import ray

        from causalclip_cli.model.checkpoint import load_detector
        from causalclip_cli.scanning.scan import resolve_decision

        _set_threads(threads)
        self._dir = tempfile.TemporaryDirectory(prefix="causalclip-ckpt-")
        path = Path(self._dir.name) / name  # same file name: the model id in records comes from it
        path.write_bytes(ray.get(checkpoint))  # the checkpoint file's bytes, from the object store
        self.detector = load_detector(str(path), device=device, backbone_weights=backbone_weights,
                                      allow_download=False, precision=options.precision)
        self.decision = resolve_decision(self.detector.decision, options)
        self.die_once = die_once

    def __call__(self, batch: dict[str, np.ndarray]) -> Any:  # noqa: ANN401 - a pyarrow Table
        import pyarrow as pa
        import torch

        from causalclip_cli.scanning.scan import batch_records

        _maybe_die_once(self.die_once)
        good = np.flatnonzero(batch["ok"]).tolist()
        probs: list[float] = []
        familiar = None
        if good:
            px = np.ascontiguousarray(batch["pixels"][good])
            pixels = torch.from_numpy(px.reshape(-1, *px.shape[-3:]))  # views of a file stay consecutive
            p, f = self.detector.assess(pixels)
            probs, familiar = p.tolist(), (None if f is None else f.tolist())
        items = _items(batch)
        records = batch_records(items, good, probs, self.decision, self.detector.model_id, familiar)
        rows = []
        for i, item, rec in zip(batch["index"], items, records, strict=True):
            base = {"index": int(i), "skipped": rec is None}
            d = rec.to_dict() if rec is not None else {"path": item["path"]}
            if d.get("provenance") is not None:
                d["provenance"] = json.dumps(d["provenance"])
            rows.append({**base, **d})
        return pa.Table.from_pylist(rows, schema=_record_schema())


def _pipeline(ray, listing: Listing, preprocess: Preprocess, actor_cls: type, actor_kwargs: dict,  # noqa: ANN001
              batch_size: int, options: RayOptions, device: str, with_key: bool,  # noqa: ANN202
              provenance: bool = False):
    actors, resources, device = _placement(ray, options, device)
    actor_kwargs = {**actor_kwargs, "device": device}
    if device == "cpu":
        actor_kwargs["threads"] = actor_kwargs.get("threads") or options.cpus_per_actor
    n = len(listing.files)
    rows = [{"index": i, "path": p, "explicit": p in listing.explicit} for i, p in enumerate(listing.files)]
    blocks = max(1, min(math.ceil(n / options.decode_batch), 20_000))
    ds = ray.data.from_items(rows, override_num_blocks=blocks)
    # Retries are Ray Data's defaults: tasks are retried, pool actors get max_restarts=-1 and
    # max_task_retries=-1 (a dead actor is restarted and its batch re-run; tests/scanning/test_distributed.py
    # checks it).
    ds = ds.map_batches(decode_batch, batch_size=options.decode_batch, batch_format="numpy",
                        num_cpus=options.decode_cpus,
                        fn_kwargs={"preprocess": preprocess, "with_key": with_key, "provenance": provenance})
    ds = ds.map_batches(actor_cls, batch_size=batch_size, batch_format="numpy",
                        compute=ray.data.ActorPoolStrategy(size=actors), fn_constructor_kwargs=actor_kwargs,
                        **resources)
    return ds, actors, device


class _Progress:
    """Progress on stderr: a bar on a terminal, otherwise a line every few seconds."""

    def __init__(self, total: int, label: str, every: float, stream: TextIO = sys.stderr) -> None:
        self.total, self.label, self.every, self.stream = total, label, every, stream
        self.done, self.start, self.last = 0, time.perf_counter(), time.perf_counter()
        self.bar = None
        if stream.isatty():
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

            self.bar = Progress(label, BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                                console=Console(file=stream), transient=True)
            self.task = self.bar.add_task(label, total=total)
            self.bar.start()

    def advance(self, n: int) -> None:
        self.done += n
        now = time.perf_counter()
        if self.bar is not None:
            self.bar.advance(self.task, n)
        elif now - self.last >= self.every:
            self.last = now
            rate = self.done / max(now - self.start, 1e-9)
            self.stream.write(f"{self.label}: {self.done}/{self.total} files ({rate:.1f}/s)\n")
            self.stream.flush()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def _checked_rows(ds, total: int, progress: _Progress) -> Iterator[dict]:  # noqa: ANN001
    """Rows in input order; raises EngineError unless every input index arrives exactly once."""
    seen = np.zeros(total, dtype=bool)
    batches = iter(ds.iter_batches(batch_format="pyarrow", batch_size=None))
    while True:
        try:
            table = next(batches)
        except StopIteration:
            break
        except Exception as exc:  # noqa: BLE001 - Ray raises its own types; one clear line, not a traceback
            lines = [ln for ln in str(exc).splitlines() if ln.strip()]
            raise EngineError(f"the Ray pipeline failed: {lines[-1] if lines else type(exc).__name__}",
                              hint="worker logs: /tmp/ray/session_latest/logs on each node") from exc
        rows = table.to_pylist()
        for row in rows:
            i = row["index"]
            if seen[i]:
                raise EngineError(f"the Ray engine returned {row.get('path')!r} twice")
            seen[i] = True
            yield row
        progress.advance(len(rows))
    if not seen.all():
        missing = int((~seen).sum())
        raise EngineError(f"the Ray engine lost {missing} of {total} files")


def scan_ray(listing: Listing, checkpoint: str | None, options: ScanOptions, ray_options: RayOptions,
             write: Callable[[ScanRecord], None], summary: ScanSummary, *, device: str = "auto",
             backbone_weights: str | None = None) -> None:
    """Score `listing` on Ray; `write` gets each record in input order, `summary` counts them.

    Discovery errors come first (like the local scan), then one record per file in listing order.
    """
    import dataclasses

    from causalclip_cli.model.checkpoint import load_detector
    from causalclip_cli.model.precision import resolve_precision
    from causalclip_cli.scanning.output import ScanRecord
    from causalclip_cli.scanning.scan import error_records, resolve_decision

    # The driver loads the detector once on CPU: it validates the checkpoint and the backbone before any
    # cluster work, and gives the preprocessing, threshold and model id of the records.
    detector = load_detector(checkpoint, device="cpu", backbone_weights=backbone_weights, allow_download=True)
    decision = resolve_decision(detector.decision, options)
    if device != "auto":  # a wrong precision for the device fails here, before any cluster work
        resolve_precision(options.precision, device)

    def write_errors(det: Any, dev: str) -> None:  # noqa: ANN401 - a Detector
        # Named like the actors' records: the model at the precision it runs on `dev`.
        model_id = dataclasses.replace(det, precision=resolve_precision(options.precision, dev)).model_id
        for rec in error_records(listing.errors, decision.threshold, model_id):
            summary.add(rec)
            write(rec)

    if not listing.files:
        write_errors(detector, "cpu")
        return
    ray = init_ray(ray_options)
    # The head travels through the object store (a checkpoint path need not exist on other nodes); the
    # driver holds the reference, so a restarted actor can still read it.
    checkpoint_ref = ray.put(detector.path.read_bytes())
    actor_kwargs = {"checkpoint": checkpoint_ref, "name": detector.path.name,
                    "backbone_weights": backbone_weights, "options": options, "threads": None,
                    "die_once": os.environ.get(DIE_ONCE_ENV)}
    preprocess = detector.preprocess
    ds, actors, dev = _pipeline(ray, listing, preprocess, ScoreActor, actor_kwargs, options.batch_size,
                                ray_options, device, with_key=False, provenance=options.provenance)
    write_errors(detector, dev)
    del detector  # the driver needs no backbone while the actors score
    sys.stderr.write(f"ray: {len(listing.files)} files, {actors} detector actor(s) on {dev}\n")
    progress = _Progress(len(listing.files), "scanning", ray_options.progress_every)
    start = time.perf_counter()
    try:
        for row in _checked_rows(ds, len(listing.files), progress):
            if row.pop("skipped"):
                summary.skipped += 1
                continue
            row.pop("index")
            if row.get("provenance"):
                row["provenance"] = json.loads(row["provenance"])
            rec = ScanRecord(**row)
            summary.add(rec)
            write(rec)
            summary.seconds = time.perf_counter() - start
    finally:
        progress.close()


def scan_command(sources: list[str], output: str | None, fmt: str | None, checkpoint: str | None,
                 options: ScanOptions, ray_options: RayOptions, *, recursive: bool = True, device: str = "auto",
                 backbone_weights: str | None = None) -> ScanSummary:
    """`causalclip scan --engine ray`: list, score, write. DEST: a file (atomic), a folder of Parquet
    shards (ends with '/', an existing folder, or a URI), or stdout when None."""
    from causalclip_cli.scanning.output import ScanSummary, atomic_output, default_format, make_writer

    listing = list_sources(sources, recursive=recursive)
    if not listing.files and not listing.errors:
        sys.stderr.write("warning: no files found under the given paths\n")
    summary = ScanSummary()
    if output is not None and _is_folder_dest(output):
        _scan_to_parquet(listing, output, checkpoint, options, ray_options, summary, device, backbone_weights)
        return summary

    def run(stream: TextIO) -> None:
        writer = make_writer(fmt or default_format(stream), stream)
        try:
            scan_ray(listing, checkpoint, options, ray_options, writer.write, summary, device=device,
                     backbone_weights=backbone_weights)
        except KeyboardInterrupt:
            summary.interrupted = True
        finally:
            writer.close()

    if output is None:
        run(sys.stdout)
        sys.stdout.flush()
    else:
        with atomic_output(output) as fh:
            run(fh)
    return summary


def _is_folder_dest(output: str) -> bool:
    return is_uri(output) or output.endswith(("/", os.sep)) or os.path.isdir(output)


def _parquet_row(rec: ScanRecord) -> dict:
    """A record as a Parquet row: the provenance object travels as its JSON text (Parquet has no free-form
    objects); `json.loads` restores it."""
    d = rec.to_dict()
    if d.get("provenance") is not None:
        d["provenance"] = json.dumps(d["provenance"])
    return d


def _scan_to_parquet(listing: Listing, dest: str, checkpoint: str | None, options: ScanOptions,
                     ray_options: RayOptions, summary: ScanSummary, device: str,
                     backbone_weights: str | None) -> None:
    import pyarrow as pa

    from causalclip_cli.scanning.output import FIELDS
    from causalclip_cli.training.feature_store import ShardWriter

    schema = pa.schema([f for f in _record_schema() if f.name in FIELDS])
    shards = ShardWriter(dest, schema)
    try:
        scan_ray(listing, checkpoint, options, ray_options, lambda rec: shards.write(_parquet_row(rec)), summary,
                 device=device, backbone_weights=backbone_weights)
    except KeyboardInterrupt:
        summary.interrupted = True
    except BaseException:
        shards.abort()
        raise
    shards.commit()


# --------------------------------------------------------------------------- embed


class EmbedActor:
    """Ray Data actor: the frozen backbone, loaded once; a decoded batch in, features out."""

    def __init__(self, spec: Any, device: str, threads: float | None, die_once: str | None) -> None:  # noqa: ANN401
        from causalclip_cli.model.backbones import load_backbone

        _set_threads(threads)
        self.backbone = load_backbone(spec, device=device, allow_download=False)
        self.device = device
        self.die_once = die_once

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        _maybe_die_once(self.die_once)
        ok = np.asarray(batch["ok"], dtype=bool)
        good = np.flatnonzero(ok)
        feats = None
        if len(good):
            with torch.inference_mode():
                px = np.ascontiguousarray(batch["pixels"][good])
                px = torch.from_numpy(px.reshape(-1, *px.shape[-3:])).to(self.device)  # one view per file here
                emb = self.backbone.tower(px).float().cpu().numpy()
            feats = np.zeros((len(ok), emb.shape[1]), dtype=np.float32)
            feats[good] = emb
        out = {"index": batch["index"], "ok": ok, "key": batch["key"], "error": batch["error"],
               "skipped": batch["skipped"]}
        if feats is None:
            feats = np.zeros((len(ok), self.backbone.info.embed_dim), dtype=np.float32)
        out["feature"] = feats
        return out


@dataclass
class EmbedResult:
    embedded: int
    failed: list[tuple[str, str]]
    shards: int
    seconds: float


def embed_command(data: str, dest: str, *, engine: str = "ray", layout: str = "auto",
                  subsets: list[str] | None = None, backbone: str = "ViT-B-16", pretrained: str = "openai",
                  backbone_weights: str | None = None, device: str = "auto", batch_size: int = 32,
                  workers: int = 2, cache_dir: Path | None = None,
                  ray_options: RayOptions | None = None) -> EmbedResult:
    """Embed a labelled dataset into Parquet feature shards (see feature_store.py)."""
    from causalclip_cli.model.backbones import BackboneSpec, load_backbone, locate
    from causalclip_cli.settings import resolve_device
    from causalclip_cli.training.experiment import _discover
    from causalclip_cli.training.feature_store import ShardWriter, feature_schema, require_pyarrow

    require_pyarrow()
    ds = _discover(Path(data), layout, subsets)
    spec = BackboneSpec(backbone, pretrained, backbone_weights)
    start = time.perf_counter()
    if engine == "local":
        dev = resolve_device(device)
        bb = load_backbone(spec, device=dev)
        info, preprocess = bb.info, bb.preprocess
        rows_iter = _embed_local(ds.samples, bb, dev, batch_size, workers, cache_dir)
    elif engine == "ray":
        info = locate(spec, allow_download=True)
        load_backbone(spec, device="cpu", info=info)  # recovers/caches the weights once, before the cluster
        from causalclip_cli.model.preprocess import Preprocess

        preprocess = Preprocess.from_dict(info.preprocess)
        rows_iter = _embed_ray(ds.samples, spec, preprocess, ray_options or RayOptions(), device, batch_size)
    else:
        raise UsageError(f"unknown engine {engine!r} (local or ray)")
    meta = {"backbone_id": info.id, "variant": preprocess.key(), "embed_dim": info.embed_dim,
            "backbone": info.to_dict(), "preprocess": preprocess.to_dict(), "data": str(data), "layout": ds.layout}
    writer = ShardWriter(dest, feature_schema(info.embed_dim, meta))
    failed: list[tuple[str, str]] = []
    try:
        for sample, key, feat, error in rows_iter:
            if feat is None:
                failed.append((sample.path, error or "unreadable"))
                continue
            writer.write({"path": sample.path, "key": key, "backbone_id": info.id, "variant": preprocess.key(),
                          "label": sample.label, "generator": sample.generator, "split": sample.split,
                          "feature": feat})
    except BaseException:
        writer.abort()
        raise
    writer.commit()
    return EmbedResult(writer.count, failed, writer.shards, time.perf_counter() - start)


def _embed_local(samples: list, bb: Any, device: str, batch_size: int, workers: int,  # noqa: ANN401
                 cache_dir: Path | None) -> Iterator[tuple]:
    """The local engine: the feature cache and extraction `train` uses, then one row per sample."""
    from causalclip_cli.training.experiment import dataset_features
    from causalclip_cli.training.features import file_sha256

    def embed(px):  # noqa: ANN001, ANN202 - as in experiment.run_train
        import torch

        with torch.inference_mode():
            return bb.tower(px.to(device)).float()

    fs = dataset_features(samples, embed, bb.preprocess, bb.info.id, cache_dir=cache_dir, batch_size=batch_size,
                          workers=workers, label="embedding")
    row = {p: i for i, p in enumerate(fs.paths)}
    reasons = dict(fs.failed)
    for s in samples:
        if s.path in row:
            yield s, file_sha256(s.path), fs.x[row[s.path]].tolist(), None
        else:
            yield s, "", None, reasons.get(s.path, "unreadable")


def _embed_ray(samples: list, spec: Any, preprocess: Preprocess, options: RayOptions, device: str,  # noqa: ANN401
               batch_size: int) -> Iterator[tuple]:
    ray = init_ray(options)
    listing = Listing([s.path for s in samples], {s.path for s in samples}, [])
    kwargs = {"spec": spec, "threads": None, "die_once": os.environ.get(DIE_ONCE_ENV)}
    ds, actors, dev = _pipeline(ray, listing, preprocess, EmbedActor, kwargs, batch_size, options, device,
                                with_key=True)
    sys.stderr.write(f"ray: {len(samples)} files, {actors} embedding actor(s) on {dev}\n")
    progress = _Progress(len(samples), "embedding", options.progress_every)
    try:
        for row in _checked_rows(ds, len(samples), progress):
            s = samples[row["index"]]
            if row["ok"]:
                yield s, row["key"], row["feature"], None
            else:
                yield s, "", None, row["error"] or "unreadable"
    finally:
        progress.close()
