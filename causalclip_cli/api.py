"""The Python API: the same detector, records and provenance as the `causalclip` command, for programs.

Re-exported by `causalclip_cli/__init__.py` (lazily, so `import causalclip_cli` stays cheap). Records are the
very `ScanRecord` objects `causalclip scan` writes as JSON lines (`record.to_dict()`; the JSON formats round
`probability` to 6 decimals).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Union

from causalclip_cli.errors import UsageError

if TYPE_CHECKING:
    from PIL import Image

    from causalclip_cli.model.checkpoint import Detector
    from causalclip_cli.scanning.output import ScanRecord, ScanSummary

PathLike = Union[str, "os.PathLike[str]"]
ImageInput = Union[str, "os.PathLike[str]", "Image.Image"]


class Scanner:
    """A loaded detector and the scan settings it applies; made by `load_detector`.

    `score` rates a list of files or in-memory PIL images (one record each, in input order); `scan` walks
    files and folders the way `causalclip scan` does and yields its records lazily.
    """

    def __init__(self, detector: Detector, *, threshold: float | None = None, batch_size: int | None = None,
                 workers: int = 0, provenance: bool = True) -> None:
        from causalclip_cli.scanning.scan import ScanOptions, default_batch_size, resolve_decision

        self._detector = detector
        self._options = ScanOptions(batch_size=batch_size or default_batch_size(detector.device), workers=workers,
                                    threshold=threshold, provenance=provenance, precision=detector.precision)
        self._decision = resolve_decision(detector.decision, self._options)
        self.last_summary: ScanSummary | None = None

    @property
    def model(self) -> str:
        """The `model` field of every record: checkpoint name, version and precision."""
        return self._detector.model_id

    @property
    def threshold(self) -> float:
        """The fake threshold the records are labelled with (the checkpoint's unless one was given)."""
        return self._decision.threshold

    @property
    def device(self) -> str:
        return self._detector.device

    def __repr__(self) -> str:
        return f"Scanner(model={self.model!r}, threshold={self.threshold}, device={self.device!r})"

    def scan(self, paths: Iterable[PathLike], *, recursive: bool = True, explain: bool = False
             ) -> Iterator[ScanRecord]:
        """Records for files and folders, exactly as `causalclip scan PATHS --format jsonl` writes them.

        Folders are walked (recursively unless `recursive=False`); non-images met in a folder are skipped,
        unreadable or missing paths yield error records (`error` set, `probability` None). Records come in
        path order as they are scored; `last_summary` holds the running totals. `explain=True` adds each
        record's `evidence_map`, as `scan --explain` does.
        """
        import dataclasses

        from causalclip_cli.inputs.data import discover
        from causalclip_cli.scanning.output import ScanSummary
        from causalclip_cli.scanning.scan import in_path_order, scan_records

        options = self._options
        if explain:
            options = dataclasses.replace(options, explain=self._explain_options())
        found = discover(list(paths), recursive=recursive)
        summary = ScanSummary()
        self.last_summary = summary
        records = scan_records(self._detector, found.files, found.explicit, options, summary)
        yield from in_path_order(found.errors, records, self.threshold, self.model, summary)

    def explain(self, images: Sequence[ImageInput] | ImageInput) -> list[ScanRecord]:
        """`score(images, explain=True)`: each record carries its `evidence_map` (rows, cols, scores, box,
        peak), as `scan --explain` writes it."""
        return self.score(images, explain=True)

    def _explain_options(self) -> Any:  # noqa: ANN401 - scanning.explain.ExplainOptions
        from causalclip_cli.evidence.maps import check_maps
        from causalclip_cli.scanning.explain import ExplainOptions

        check_maps(self._detector)
        return ExplainOptions()

    def score(self, images: Sequence[ImageInput] | ImageInput, *, explain: bool = False) -> list[ScanRecord]:
        """One record per input, in input order: file paths (decoded as `scan` decodes them, provenance
        included) and/or PIL images (scored as given; `path` is the image's `filename` or `<image N>`).

        Folders are not expanded here (use `scan`); an unreadable file gives a record with `error` set.
        `explain=True` adds each scored record's `evidence_map` (see `explain`).
        """
        import torch
        from PIL import Image

        from causalclip_cli.inputs.data import ScanDataset, _to_rgb, collate_scan
        from causalclip_cli.scanning.scan import batch_records

        if isinstance(images, (str, os.PathLike, Image.Image)):
            images = [images]
        items = list(images)
        det = self._detector
        options = self._explain_options() if explain else None
        files = [os.fsdecode(os.fspath(x)) if not isinstance(x, Image.Image) else "" for x in items]
        dataset = ScanDataset(files, det.preprocess, explicit=set(files), provenance=self._options.provenance)
        out: list[ScanRecord] = []
        size = self._options.batch_size
        for start in range(0, len(items), size):
            batch = []
            for i in range(start, min(start + size, len(items))):
                x = items[i]
                batch.append(_pil_item(i, x, det.preprocess, torch) if isinstance(x, Image.Image) else dataset[i])
            b = collate_scan(batch)
            probs = det.probabilities(b.tensor).tolist() if b.tensor is not None and b.good else []
            records = batch_records(b.items, b.good, probs, self._decision, self.model)
            if explain:
                from causalclip_cli.scanning.explain import explain_record

                for i, rec in zip(range(start, start + len(batch)), records, strict=True):
                    if rec is not None:
                        image = items[i] if isinstance(items[i], Image.Image) else None
                        explain_record(det, rec, options, None if image is None else _to_rgb(image))
            out.extend(r for r in records if r is not None)
        return out


def _pil_item(index: int, image: Image.Image, preprocess: Any, torch: Any) -> dict[str, Any]:  # noqa: ANN401
    """A `ScanDataset` item for an in-memory image (RGB-converted like a decoded file; no provenance)."""
    from causalclip_cli.errors import ImageError
    from causalclip_cli.inputs.data import _to_rgb

    name = getattr(image, "filename", "") or f"<image {index}>"
    item: dict[str, Any] = {"index": index, "path": name, "tensor": None, "width": image.width,
                            "height": image.height, "format": image.format, "error": None, "skipped": False,
                            "provenance": None}
    try:
        item["tensor"] = torch.from_numpy(preprocess.to_views(_to_rgb(image)))
    except ImageError as exc:
        item["error"] = str(exc)
    return item


def load_detector(name_or_path: str | os.PathLike[str] | None = None, device: str = "auto",
                  precision: str = "auto", *, threshold: float | None = None, batch_size: int | None = None,
                  workers: int = 0, provenance: bool = True, backbone_weights: str | None = None) -> Scanner:
    """Load a checkpoint (a released name such as ``"causalclip-vitb16"``, a path, or None for the default)
    and return a `Scanner` with `score(...)` and `scan(...)`.

    `device`: auto, cpu, cuda, cuda:N or mps. `precision`: auto, fp32, int8, fp16 or bf16 (as `--precision`).
    `threshold`: override the checkpoint's fake threshold (a plain cut, no uncertain band, as `--threshold`).
    `workers`: decoding processes for `scan` (0 decodes in this process). Raises `causalclip_cli.errors.
    CausalClipError` subclasses (unknown checkpoint, incompatible backbone, bad device or precision).
    """
    from causalclip_cli.model.checkpoint import load_detector as _load
    from causalclip_cli.settings import resolve_device

    if threshold is not None and not 0.0 <= threshold <= 1.0:
        raise UsageError(f"threshold {threshold} is outside [0, 1]")
    dev = resolve_device(device)
    name = os.fspath(name_or_path) if name_or_path is not None else None
    detector = _load(name, device=dev, backbone_weights=backbone_weights, allow_download=True, precision=precision)
    return Scanner(detector, threshold=threshold, batch_size=batch_size, workers=workers, provenance=provenance)


def read_provenance(path: PathLike) -> dict[str, Any]:
    """What an image file's metadata says about its origin: the `provenance` object of a scan record
    (`says`, `evidence`, `c2pa`, `exif`, `generator`, ...). Never looks at pixels with the model.

    Raises `causalclip_cli.errors.ImageError` when the file is missing, not an image or cannot be decoded.
    """
    from causalclip_cli.inputs.data import decode_image

    # min_size=1: large JPEGs decode at 1/8 scale; the metadata is read in the same pass either way.
    decoded = decode_image(path, min_size=1, provenance=True)
    return decoded.provenance or {}
