"""The scan pipeline: files → decoded batches (in workers) → probabilities → plain records."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from causalclip_cli.checkpoint import Decision, Detector
from causalclip_cli.output import ScanRecord, ScanSummary

# Measured by benchmarks/cpu_paths.py (batch sweep): on a 2-core CPU, ViT-B/16 runs fastest at 4-8 images
# per pass (~3.5 images/s vs ~3.0 at 16), and a small batch also brings the first result sooner.
CPU_BATCH_SIZE = 8
ACCELERATOR_BATCH_SIZE = 32


def default_batch_size(device: str) -> int:
    return CPU_BATCH_SIZE if device == "cpu" else ACCELERATOR_BATCH_SIZE


def default_workers(device: str) -> int:
    """Decoding processes: 2 on CPU (the forward pass is the bottleneck there); on a GPU decoding is, so up to 8
    (benchmarks/gpu_scan.py on an H100: 150 images/s with 2 workers, 320-350 with 8, 350-370 with 14)."""
    if device == "cpu":
        return 2
    return max(2, min(8, (os.cpu_count() or 2) - 1))


@dataclass
class ScanOptions:
    batch_size: int = CPU_BATCH_SIZE
    workers: int = 2
    threshold: float | None = None  # None → the checkpoint's
    # None → the checkpoint's band, unless a threshold was given (then none); () → none.
    uncertain: tuple[float, float] | tuple[()] | None = None


def resolve_decision(checkpoint: Decision, options: ScanOptions) -> Decision:
    """The threshold and band this scan applies. A calibrated band belongs with the calibrated threshold:
    `--threshold T` alone asks for a plain cut at T; `--uncertain` (or `off`, given as ()) overrides both."""
    threshold = checkpoint.threshold if options.threshold is None else options.threshold
    if options.uncertain is not None:
        band = options.uncertain or None
    else:
        band = checkpoint.uncertain if options.threshold is None else None
    return Decision(threshold, band, checkpoint.calibration)


def scan_records(
    detector: Detector,
    files: list[str],
    explicit: set[str],
    options: ScanOptions,
    summary: ScanSummary,
    on_progress: Callable[[int], None] | None = None,
) -> Iterator[ScanRecord]:
    """Yield one record per file in `files` order; non-images found by walking are counted, not yielded."""
    from causalclip_cli.data import make_loader

    decision = resolve_decision(detector.decision, options)
    threshold = decision.threshold
    model = detector.model_id
    pin = detector.device.startswith("cuda")
    loader = make_loader(files, detector.preprocess, options.batch_size, options.workers, pin_memory=pin,
                         explicit=explicit)
    start = time.perf_counter()
    first = True
    for batch in loader:
        # The first batch is scored one image first, so the first result does not wait for a whole batch
        # (on a CPU that is most of the time to first result; benchmarks/first_result.py).
        probs = _LazyProbs(detector, batch.tensor, head=1 if first else 0)
        first = first and batch.tensor is None
        row_of = {j: r for r, j in enumerate(batch.good)}
        for j, item in enumerate(batch.items):
            if item["skipped"]:
                summary.skipped += 1
                continue
            if j in row_of:
                p = probs[row_of[j]]
                rec = ScanRecord(item["path"], p, decision.label(p), threshold, model,
                                 item.get("width"), item.get("height"), None)
            else:
                rec = ScanRecord(item["path"], None, None, threshold, model, item.get("width"),
                                 item.get("height"), item.get("error") or "unreadable")
            summary.add(rec)
            yield rec
        summary.seconds = time.perf_counter() - start
        if on_progress:
            on_progress(len(batch.items))


class _LazyProbs:
    """Probabilities of a batch's rows, computed on first access: the first `head` rows, then the rest."""

    def __init__(self, detector: Detector, tensor: object, head: int = 0) -> None:
        self.detector, self.tensor, self.head = detector, tensor, head
        self.values: list[float] = []

    def __getitem__(self, row: int) -> float:
        while row >= len(self.values):
            n = len(self.values)
            end = self.head if 0 < self.head < len(self.tensor) and n == 0 else len(self.tensor)
            self.values += self.detector.probabilities(self.tensor[n:end]).tolist()
        return float(self.values[row])


def error_records(errors: Iterable[tuple[str, str]], threshold: float, model: str) -> Iterator[ScanRecord]:
    for path, reason in errors:
        yield ScanRecord(os.fsdecode(path), None, None, threshold, model, None, None, reason)


def exit_code(summary: ScanSummary, fail_on: str) -> int:
    """0 clean, 1 flagged (grep's 'found'), 3 some files unreadable and nothing flagged."""
    flagged = summary.counts.get("fake", 0)
    if fail_on == "uncertain":
        flagged += summary.counts.get("uncertain", 0)
    if fail_on != "never" and flagged:
        return 1
    if summary.errors:
        return 3
    return 0
