"""GPU decoding for `scan`/`eval` (issue 19): JPEG bytes read in threads, decoded in batches by nvJPEG, resized on
the GPU, overlapped with the model.

Why: on an H100 the model scores ~5,300 images/s but PIL decoding in 14 processes feeds it ~570;
`torchvision.io.decode_jpeg(device="cuda")` on batches of file buffers reaches ~1,900 with the resize on the GPU.

What goes where, per file (`route` decides from the bytes, before any pixel is decoded):
  GPU   baseline/extended 8-bit Huffman JPEGs with 1 or 3 components that end in an EOI marker and are at most
        GPU_MAX_PIXELS: `decode_batch` calls of at most GPU_CALL_PIXELS per batch, then the CPU path's draft
        scale as a box average, EXIF orientation, short side → `size` (bicubic, antialiased, two 8-bit passes
        like PIL), centre crop and normalisation with the checkpoint's mean/std.
  CPU   everything else, and any JPEG the GPU decoder refuses: exactly today's path (data.ScanDataset: PIL, draft
        mode, EXIF transpose, bomb guards), in worker processes, so errors and records are the CPU path's own.
Provenance is read from the bytes already in memory with provenance.read_provenance, as the CPU path does.

Known differences from the CPU path (measured by benchmarks/gpu_decode_fidelity.py, bounded in
tests/inputs/test_gpu_decode.py): the IDCT and chroma upsampling of nvJPEG and libjpeg-turbo may differ by a grey level
or so (not measured yet; on the CPU stand-in, no-draft crops match the PIL path to 0.01 grey levels mean);
the CPU path decodes JPEGs whose short side is ≥ 2×size at a reduced DCT scale (Pillow's draft mode, 1/2 to
1/8), nvJPEG cannot, so the GPU path decodes every pixel and box-averages by the same factor (0.2-0.4 grey levels
mean |Δ| on the release's photos, a few levels at most); JPEGs over GPU_MAX_PIXELS (the CPU path's huge-image
draft and bomb guards apply to them) and progressive ones (PROGRESSIVE_ON_GPU) stay on the CPU.
"""

from __future__ import annotations

import functools
import io
import queue
import threading
import warnings
from collections.abc import Callable, Collection, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from causalclip_cli.errors import ImageError, UsageError
from causalclip_cli.inputs.data import (
    NOT_AN_IMAGE,
    ScanBatch,
    ScanDataset,
    _draft_scale,
    _open_regular,
    _sniff_bytes,
    collate_scan,
    make_loader,
)
from causalclip_cli.model.preprocess import Preprocess

__all__ = [
    "DECODES",
    "DecodeBatch",
    "DecodeStats",
    "GpuDecodeLoader",
    "apply_orientation",
    "check_decode",
    "choose_decoder",
    "cpu_decode_batch",
    "draft_scale",
    "gpu_preprocess",
    "jpeg_header",
    "make_scan_loader",
    "nvjpeg_decode_batch",
    "recipe_unsupported",
]

# torchvision 0.29 marks its image codecs deprecated in favour of TorchCodec, which is not a dependency here; the
# call is still the one measured (1,910 images/s on an H100), so the notice is silenced, not acted on yet.
warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities of TorchVision",
                        category=DeprecationWarning)

DECODES = ("auto", "cpu", "gpu")
DecodeBatch = Callable[[list[torch.Tensor]], list[torch.Tensor]]

# A batch of 128 decoded 12-MP photos is ~4.6 GB of uint8 on the GPU; above this an image goes to the CPU path,
# whose draft mode decodes it at reduced scale (and whose bomb guards give the usual error records).
GPU_MAX_PIXELS = 40_000_000
# Decoded pixels held at once per decode call: a batch is split into calls of at most this many pixels, so 128
# large photos do not need 128 full-size RGB buffers at the same time (600 MP = 1.8 GB of uint8).
GPU_CALL_PIXELS = 600_000_000
# nvJPEG's hardware (A100/H100) engine takes baseline JPEGs only; the CUDA fallback for progressive ones is not
# measured yet, so they keep the CPU path (flip after a GPU run shows it is faster and equal).
PROGRESSIVE_ON_GPU = False
_SOF_BASELINE = {0xC0, 0xC1}
_SOF_PROGRESSIVE = 0xC2
_SOF_OTHER = {0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}  # lossless, hierarchical, arithmetic


def nvjpeg_decode_batch(device: str = "cuda") -> DecodeBatch:
    """The production decoder: one batched nvJPEG call (RGB, 8 bit) on `device`."""
    from torchvision.io import ImageReadMode, decode_jpeg

    def decode(datas: list[torch.Tensor]) -> list[torch.Tensor]:
        return list(decode_jpeg(datas, mode=ImageReadMode.RGB, device=device))

    return decode


def cpu_decode_batch(datas: list[torch.Tensor]) -> list[torch.Tensor]:
    """The same call on the CPU (libjpeg-turbo): stands in for nvJPEG in tests and `--device cpu` benchmarks."""
    from torchvision.io import ImageReadMode, decode_jpeg

    return list(decode_jpeg(datas, mode=ImageReadMode.RGB, device="cpu"))


@dataclass
class DecodeStats:
    """Which decoder handled how many files; `reasons` says why files took the CPU path."""

    decoder: str = "cpu"
    gpu: int = 0
    cpu: int = 0
    reasons: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"decoder": self.decoder, "gpu": self.gpu, "cpu": self.cpu, "reasons": dict(self.reasons)}

    def line(self) -> str:
        if self.decoder != "gpu":
            return "decode: cpu"
        why = ", ".join(f"{k} {v}" for k, v in sorted(self.reasons.items(), key=lambda kv: -kv[1]))
        return f"decode: gpu {self.gpu:,} JPEGs, cpu {self.cpu:,} files" + (f" ({why})" if why else "")


def recipe_unsupported(pre: Preprocess) -> str | None:
    """Why the GPU path cannot reproduce this recipe (None: it can)."""
    if pre.mode != "resize" or pre.views != 1:
        return f"recipe {pre.mode} with {pre.views} crop(s)"
    if pre.crop != "center" or pre.interpolation != "bicubic":
        return f"recipe {pre.interpolation}/{pre.crop}"
    return None


def check_decode(decode: str, device: str, *, stand_in: bool = False) -> None:
    """UsageError for an unknown --decode value, or for `gpu` on a device that is not CUDA."""
    if decode not in DECODES:
        raise UsageError(f"--decode must be one of {', '.join(DECODES)}, not {decode!r}")
    if decode == "gpu" and not (str(device).startswith("cuda") or stand_in):
        raise UsageError(f"--decode gpu needs a CUDA device (nvJPEG), but the device is {device}",
                         hint="use --decode auto or cpu, or --device cuda on a machine with an NVIDIA GPU")


def choose_decoder(decode: str, device: str, pre: Preprocess, *, stand_in: bool = False,
                   pixel_transform: object = None) -> tuple[str, str | None]:
    """('gpu' or 'cpu', a note for stderr or None). `stand_in`: a decode_batch was supplied (tests, benchmarks'
    --device cpu), so no CUDA device is needed. Raises UsageError for `gpu` without CUDA."""
    check_decode(decode, device, stand_in=stand_in)
    cuda = str(device).startswith("cuda")
    if decode == "cpu" or not (cuda or (stand_in and decode == "gpu")):
        return "cpu", None
    why = recipe_unsupported(pre)
    if why is None and pixel_transform is not None:
        why = "a PIL pixel transform (JPEG alignment, perturbation or purifier input) is applied"
    if why is not None:
        return "cpu", f"decoding on the CPU for this run: the GPU path does not support {why}"
    return "gpu", None


# ---------------------------------------------------------------------------------------------------
# Bytes → route
# ---------------------------------------------------------------------------------------------------


@dataclass
class JpegHeader:
    width: int
    height: int
    components: int
    precision: int
    sof: int
    adobe_transform: int | None = None  # APP14: 2 = YCCK


def jpeg_header(data: bytes) -> JpegHeader | None:
    """The frame header of a JPEG, walking the markers up to SOF (None when it is not found or malformed)."""
    i, n = 2, len(data)
    adobe: int | None = None
    while i + 4 <= n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            i += 2
            continue
        length = int.from_bytes(data[i + 2:i + 4], "big")
        if length < 2:
            return None
        if marker == 0xEE and data[i + 4:i + 9] == b"Adobe" and i + 15 < n:
            adobe = data[i + 15]
        if marker in _SOF_BASELINE or marker == _SOF_PROGRESSIVE or marker in _SOF_OTHER:
            if i + 10 > n:
                return None
            prec = data[i + 4]
            h = int.from_bytes(data[i + 5:i + 7], "big")
            w = int.from_bytes(data[i + 7:i + 9], "big")
            return JpegHeader(w, h, data[i + 9], prec, marker, adobe)
        if marker == 0xDA:  # scan data before any frame header
            return None
        i += 2 + length
    return None


def _gpu_refusal(data: bytes, hdr: JpegHeader | None) -> str | None:
    """Why a JPEG's bytes go to the CPU path (None: the GPU decoder takes it)."""
    if hdr is None:
        return "no readable frame header"
    if hdr.sof == _SOF_PROGRESSIVE and not PROGRESSIVE_ON_GPU:
        return "progressive"
    if hdr.sof not in _SOF_BASELINE and hdr.sof != _SOF_PROGRESSIVE:
        return "lossless/arithmetic/hierarchical JPEG"
    if hdr.precision != 8:
        return f"{hdr.precision}-bit JPEG"
    if hdr.components not in (1, 3) or hdr.adobe_transform == 2:
        return "CMYK/YCCK"
    if hdr.width < 1 or hdr.height < 1 or hdr.width * hdr.height > GPU_MAX_PIXELS:
        return "size guard"
    # A truncated file may decode on the GPU with grey fill where PIL reports "truncated image file": the CPU
    # path decides. Files with bytes after EOI (camera trailers) take it too.
    if not data.endswith(b"\xff\xd9"):
        return "no EOI marker at the end"
    return None


def _orientation(img: Any) -> int:
    try:
        o = int(img.getexif().get(0x0112, 1))
    except Exception:  # noqa: BLE001 - a malformed EXIF block must not cost the pixels (as in data.py)
        return 1
    return o if 1 <= o <= 8 else 1


def apply_orientation(x: torch.Tensor, orientation: int) -> torch.Tensor:
    """EXIF orientation on a [..., H, W] tensor, as PIL's ImageOps.exif_transpose does it."""
    if orientation == 2:
        return x.flip(-1)
    if orientation == 3:
        return x.flip(-1, -2)
    if orientation == 4:
        return x.flip(-2)
    if orientation == 5:
        return x.transpose(-1, -2)
    if orientation == 6:
        return torch.rot90(x, -1, (-2, -1))
    if orientation == 7:
        return x.transpose(-1, -2).flip(-1, -2)
    if orientation == 8:
        return torch.rot90(x, 1, (-2, -1))
    return x


def draft_scale(width: int, height: int, pre: Preprocess) -> int:
    """The DCT scale (1, 2, 4, 8) the CPU path decodes a width×height JPEG at (Pillow's draft mode, data.py)."""
    from PIL import Image

    return _draft_scale(width, height, pre.decode_min_size, Image.MAX_IMAGE_PIXELS)


def gpu_preprocess(x: torch.Tensor, pre: Preprocess, orientation: int = 1, draft: bool = True) -> torch.Tensor:
    """Decoded uint8 [3, H, W] as stored in the file → float32 [3, size, size]: the CPU path's `resize` recipe
    (draft scale, EXIF orientation, Preprocess.resize_crop, normalize) in torch, on whatever device `x` is on.

    `draft`: reduce by the CPU path's DCT scale first, as a box average (libjpeg's scaled IDCT is close to one:
    measured 0.2-0.4 grey levels mean |Δ| on the release's photos, against 0.4-3.6 without it)."""
    s = pre.size
    y = x.unsqueeze(0).float()
    k = draft_scale(x.shape[2], x.shape[1], pre) if draft else 1
    if k > 1:
        y = torch.nn.functional.avg_pool2d(y, k, k, ceil_mode=True).round_()  # ceil: libjpeg's scaled size
    y = apply_orientation(y, orientation)  # after the draft, as PIL transposes the reduced image
    _, _, h, w = y.shape
    nw, nh = pre.short_side_size(w, h)
    # Two passes, horizontal first, each rounded and clipped to 8 bit: PIL's uint8 resampling does exactly that
    # (one pass in float differs by up to 8 grey levels at sharp edges, where bicubic overshoots). antialias=True
    # is torch's port of PIL's kernel (a = -0.5, support widened when shrinking).
    if nw != w:
        y = torch.nn.functional.interpolate(y, size=(h, nw), mode="bicubic", antialias=True, align_corners=False)
        y = y.clamp_(0, 255).round_()
    if nh != h:
        y = torch.nn.functional.interpolate(y, size=(nh, nw), mode="bicubic", antialias=True, align_corners=False)
        y = y.clamp_(0, 255).round_()
    top, left = int(round((nh - s) / 2.0)), int(round((nw - s) / 2.0))
    y = y[0, :, top:top + s, left:left + s]
    mean, std = _mean_std(pre.mean, pre.std, str(y.device))
    return ((y / 255.0 - mean) / std).contiguous()


@functools.lru_cache(maxsize=8)
def _mean_std(mean: tuple, std: tuple, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    # Once per device, not a host-to-device copy per image.
    return (torch.tensor(mean, dtype=torch.float32, device=device).view(3, 1, 1),
            torch.tensor(std, dtype=torch.float32, device=device).view(3, 1, 1))


@dataclass
class _Read:
    """One file after the reader thread: its item dict (as ScanDataset makes it), and bytes when it goes to GPU."""

    item: dict[str, Any]
    data: bytes | None = None
    cpu_reason: str | None = None  # set: decode with ScanDataset (the CPU path)
    pixels: int = 0  # from the frame header, for GPU_CALL_PIXELS


def _base_item(i: int, path: str) -> dict[str, Any]:
    return {"index": i, "path": path, "tensor": None, "width": None, "height": None, "format": None,
            "error": None, "skipped": False, "provenance": None, "decoder": None}


def _read_file(i: int, path: str, explicit: frozenset[str]) -> _Read:
    """Reader thread: the bytes, and the errors the CPU path gives before decoding (unreadable, not an image)."""
    item = _base_item(i, path)
    try:
        with _open_regular(path) as fp:
            data = fp.read()
    except ImageError as exc:
        item["error"] = str(exc)
        return _Read(item)
    except OSError as exc:  # read() failing after open (EIO, a file removed on a network share)
        return _Read(item, cpu_reason=f"read error {exc.errno}")
    except Exception as exc:  # noqa: BLE001 - the contract is "never raises", as in ScanDataset
        item["error"] = f"internal error: {type(exc).__name__}: {exc}"
        return _Read(item)
    fmt = _sniff_bytes(data[:64])
    if fmt is None:
        item["error"] = NOT_AN_IMAGE
        item["skipped"] = path not in explicit
        return _Read(item)
    if fmt != "jpeg":
        return _Read(item, cpu_reason=fmt)
    hdr = jpeg_header(data)
    why = _gpu_refusal(data, hdr)
    return _Read(item, data=None if why else data, cpu_reason=why,
                 pixels=hdr.width * hdr.height if hdr is not None else 0)


def _header_and_provenance(r: _Read, provenance: bool) -> int:
    """Producer thread: size, format and provenance of a GPU-bound JPEG from its bytes; returns the orientation.
    Runs in one thread because Pillow's warning filters and size limit are process-global."""
    from PIL import Image

    item = r.item
    fp = io.BytesIO(r.data or b"")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        img = Image.open(fp)  # header only; GPU_MAX_PIXELS < Pillow's limit, so no bomb check fires
        orientation = _orientation(img)
        w, h = img.size
        if orientation in (5, 6, 7, 8):
            w, h = h, w
        item.update(width=w, height=h, format="jpeg")
        if provenance:
            from causalclip_cli.evidence.provenance import read_provenance

            item["provenance"] = read_provenance(img, fp, "jpeg")
    return orientation


# ---------------------------------------------------------------------------------------------------
# The CPU path for single files, in worker processes
# ---------------------------------------------------------------------------------------------------

_worker_ds: ScanDataset | None = None


def _init_cpu_worker(pre: Preprocess, explicit: frozenset[str], provenance: bool) -> None:
    global _worker_ds
    torch.set_num_threads(1)  # decode workers never need intra-op threads (as DataLoader workers)
    _worker_ds = ScanDataset([], pre, explicit=explicit, provenance=provenance)


def _cpu_item(index: int, path: str) -> dict[str, Any]:
    ds = _worker_ds
    assert ds is not None
    ds.files = [path]
    item = ds[0]
    item["index"] = index
    if item["tensor"] is not None:
        item["tensor"] = item["tensor"].numpy()  # plain arrays pickle without torch's shared-memory machinery
    return item


# ---------------------------------------------------------------------------------------------------
# The loader
# ---------------------------------------------------------------------------------------------------


class GpuDecodeLoader:
    """Iterable of ScanBatch like data.make_loader's, with the same batches (files[k*B:(k+1)*B]) and item order;
    JPEGs decoded by `decode_batch`, every other file by the CPU path. A background thread prepares batch N+1
    (reads, decode, resize; on CUDA on a side stream) while the caller scores batch N."""

    def __init__(self, files: Sequence[str], preprocess: Preprocess, batch_size: int, workers: int, *,
                 device: str = "cuda", decode_batch: DecodeBatch | None = None, explicit: Collection[str] = (),
                 provenance: bool = False, stats: DecodeStats | None = None, read_threads: int | None = None,
                 prefetch: int = 2) -> None:
        if batch_size < 1:
            raise UsageError(f"batch size must be at least 1, not {batch_size}")
        if workers < 0:
            raise UsageError(f"workers must be 0 or more, not {workers}")
        why = recipe_unsupported(preprocess)
        if why is not None:
            raise UsageError(f"the GPU decode path does not support {why}")
        self.files = list(files)
        self.pre = preprocess
        self.batch_size = batch_size
        self.workers = workers
        self.device = device
        self.decode_batch = decode_batch or nvjpeg_decode_batch(device)
        self.explicit = frozenset(explicit)
        self.provenance = provenance
        self.stats = stats if stats is not None else DecodeStats()
        self.stats.decoder = "gpu"
        # Reading is I/O (and GIL-free): more threads than cores keeps network and cold disks busy.
        self.read_threads = read_threads or max(4, 2 * max(1, workers))
        self.prefetch = max(1, prefetch)
        self._inline = ScanDataset([], preprocess, explicit=self.explicit, provenance=provenance)

    def __len__(self) -> int:
        return (len(self.files) + self.batch_size - 1) // self.batch_size

    def __iter__(self) -> Iterator[ScanBatch]:
        q: queue.Queue = queue.Queue(maxsize=self.prefetch)
        stop = threading.Event()
        cuda = str(self.device).startswith("cuda")
        consumer_stream = torch.cuda.current_stream(self.device) if cuda else None
        thread = threading.Thread(target=self._produce, args=(q, stop), name="gpu-decode", daemon=True)
        thread.start()
        try:
            while True:
                kind, value = q.get()
                if kind == "done":
                    return
                if kind == "error":
                    raise value
                if consumer_stream is not None and value.tensor is not None and value.tensor.is_cuda:
                    # Made on the producer's stream: the allocator must not hand the memory back to that stream
                    # while the model's kernels on this one still read it.
                    value.tensor.record_stream(consumer_stream)
                yield value
        finally:
            stop.set()
            while thread.is_alive():  # unblock a producer waiting on a full queue
                try:
                    q.get(timeout=0.05)
                except queue.Empty:
                    pass
            thread.join()

    # -- producer side ------------------------------------------------------------------------------

    def _put(self, q: queue.Queue, stop: threading.Event, msg: tuple) -> bool:
        while not stop.is_set():
            try:
                q.put(msg, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _produce(self, q: queue.Queue, stop: threading.Event) -> None:
        cuda = str(self.device).startswith("cuda")
        stream = torch.cuda.Stream(self.device) if cuda else None
        chunks = [(k, self.files[k:k + self.batch_size]) for k in range(0, len(self.files), self.batch_size)]
        procs: ProcessPoolExecutor | None = None
        if self.workers > 0:
            import multiprocessing as mp

            # spawn, not fork: this runs in a thread next to reader threads and (on CUDA) an initialised driver,
            # and a forked child can inherit a lock some other thread held. Processes start on the first CPU file.
            procs = ProcessPoolExecutor(self.workers, mp_context=mp.get_context("spawn"),
                                        initializer=_init_cpu_worker,
                                        initargs=(self.pre, self.explicit, self.provenance))
        try:
            with ThreadPoolExecutor(self.read_threads, thread_name_prefix="gpu-decode-read") as reader:
                def submit(c: int) -> list[Future]:
                    start, paths = chunks[c]
                    return [reader.submit(_read_file, start + j, p, self.explicit) for j, p in enumerate(paths)]

                pending = submit(0) if chunks else []
                for c in range(len(chunks)):
                    if stop.is_set():
                        return
                    current = pending
                    pending = submit(c + 1) if c + 1 < len(chunks) else []  # reads run ahead one batch
                    reads = [f.result() for f in current]
                    if stream is not None:
                        with torch.cuda.stream(stream):
                            batch = self._batch(reads, procs)
                        stream.synchronize()  # only this thread waits; the model's stream keeps running
                    else:
                        batch = self._batch(reads, procs)
                    if not self._put(q, stop, ("batch", batch)):
                        return
            self._put(q, stop, ("done", None))
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, which re-raises it
            self._put(q, stop, ("error", exc))
        finally:
            if procs is not None:
                procs.shutdown(wait=True, cancel_futures=True)

    def _batch(self, reads: list[_Read], procs: ProcessPoolExecutor | None) -> ScanBatch:
        gpu = [r for r in reads if r.data is not None and r.cpu_reason is None]
        cpu = [r for r in reads if r.cpu_reason is not None]
        orientations: dict[int, int] = {}
        for r in list(gpu):
            try:
                orientations[r.item["index"]] = _header_and_provenance(r, self.provenance)
            except Exception:  # noqa: BLE001 - Pillow cannot parse the header: the CPU path gives the record
                r.cpu_reason, r.data = "header", None
                r.item.update(width=None, height=None, format=None, provenance=None)
                gpu.remove(r)
                cpu.append(r)
        # CPU files start first, so their decoding overlaps the GPU batch.
        futures = {r.item["index"]: procs.submit(_cpu_item, r.item["index"], r.item["path"]) for r in cpu} \
            if procs is not None else {}
        refused = self._decode_gpu(gpu, orientations)
        for r in refused:
            r.cpu_reason = "refused by the GPU decoder"
            r.item.update(width=None, height=None, format=None, provenance=None, tensor=None)
            futures[r.item["index"]] = procs.submit(_cpu_item, r.item["index"], r.item["path"]) \
                if procs is not None else None
            cpu.append(r)
        for r in cpu:
            i = r.item["index"]
            fut = futures.get(i)
            if fut is not None:
                item = fut.result()
            else:  # workers=0: in this thread, as make_loader decodes in-process
                self._inline.files = [r.item["path"]]
                item = self._inline[0]
                item["index"] = i
            if isinstance(item["tensor"], np.ndarray):
                item["tensor"] = torch.from_numpy(item["tensor"])
            item["decoder"] = "cpu"
            r.item = item
            reason = r.cpu_reason or "cpu"
            self.stats.reasons[reason] = self.stats.reasons.get(reason, 0) + 1
        items = [r.item for r in reads]
        for it in items:
            if it["tensor"] is not None:
                if it["decoder"] == "gpu":
                    self.stats.gpu += 1
                else:
                    self.stats.cpu += 1
                it["tensor"] = it["tensor"].to(self.device, non_blocking=True)
        return collate_scan(items)

    def _decode_gpu(self, gpu: list[_Read], orientations: dict[int, int]) -> list[_Read]:
        """Decode and preprocess `gpu` in place, in calls of at most GPU_CALL_PIXELS; returns those the decoder
        refused (for the CPU path)."""
        refused: list[_Read] = []
        call: list[_Read] = []
        pixels = 0
        for r in gpu:
            if call and pixels + r.pixels > GPU_CALL_PIXELS:
                refused += self._decode_call(call, orientations)
                call, pixels = [], 0
            call.append(r)
            pixels += r.pixels
        if call:
            refused += self._decode_call(call, orientations)
        return refused

    def _decode_call(self, gpu: list[_Read], orientations: dict[int, int]) -> list[_Read]:
        datas = [torch.frombuffer(bytearray(r.data or b""), dtype=torch.uint8) for r in gpu]
        try:
            decoded: list[torch.Tensor | None] = list(self.decode_batch(datas))
        except Exception:  # noqa: BLE001 - one bad file fails a batched call: find it, one file at a time
            decoded = []
            for d in datas:
                try:
                    decoded.append(self.decode_batch([d])[0])
                except Exception:  # noqa: BLE001
                    decoded.append(None)
        refused = []
        for r, x in zip(gpu, decoded, strict=True):
            if x is None or x.dim() != 3 or x.shape[0] != 3:
                refused.append(r)
                continue
            x = gpu_preprocess(x, self.pre, orientations.get(r.item["index"], 1))
            r.item["tensor"] = x.unsqueeze(0)  # [views=1, 3, s, s], as ScanDataset's
            r.item["decoder"] = "gpu"
            r.data = None
        return refused


def make_scan_loader(files: list[str], preprocess: Preprocess, batch_size: int, workers: int, *,
                     decoder: str = "cpu", device: str = "cpu", decode_batch: DecodeBatch | None = None,
                     pin_memory: bool = False, explicit: Collection[str] = (), provenance: bool = False,
                     stats: DecodeStats | None = None) -> Iterator[ScanBatch] | Any:
    """data.make_loader for `decoder` 'cpu', GpuDecodeLoader for 'gpu' (see choose_decoder)."""
    if decoder == "gpu":
        return GpuDecodeLoader(files, preprocess, batch_size, workers, device=device, decode_batch=decode_batch,
                               explicit=explicit, provenance=provenance, stats=stats)
    if stats is not None:
        stats.decoder = "cpu"
    return make_loader(files, preprocess, batch_size, workers, pin_memory=pin_memory, explicit=explicit,
                       provenance=provenance)

