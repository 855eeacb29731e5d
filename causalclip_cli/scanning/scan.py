"""The scan pipeline: files → decoded batches (in workers) → probabilities → plain records."""

from __future__ import annotations

import heapq
import os
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from causalclip_cli.model.checkpoint import Decision, Detector
from causalclip_cli.scanning.output import ScanRecord, ScanSummary

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
    provenance: bool = True  # read each file's metadata evidence while decoding it
    precision: str = "auto"  # of the tower (precision.py); the Ray engine's actors load with it
    # Withhold `fake` (→ `uncertain`, reason "unfamiliar") when the image is unlike the head's training data
    # (checkpoints with a familiarity reference only; the record keeps the p-value either way).
    abstain_unfamiliar: bool = True
    decode: str = "auto"  # auto|cpu|gpu (gpu_decode.choose_decoder): auto decodes JPEGs with nvJPEG on CUDA
    decode_batch: Callable | None = None  # stands in for nvJPEG (tests, benchmarks' --device cpu)
    decode_stats: object | None = None  # a gpu_decode.DecodeStats to fill: which decoder handled what
    explain: object | None = None  # an explain.ExplainOptions: evidence maps on every scored record


def resolve_decision(checkpoint: Decision, options: ScanOptions) -> Decision:
    """The threshold and band this scan applies. A calibrated band belongs with the calibrated threshold:
    `--threshold T` alone asks for a plain cut at T; `--uncertain` (or `off`, given as ()) overrides both."""
    threshold = checkpoint.threshold if options.threshold is None else options.threshold
    if options.uncertain is not None:
        band = options.uncertain or None
    else:
        band = checkpoint.uncertain if options.threshold is None else None
    below = checkpoint.unfamiliar_below if options.abstain_unfamiliar else None
    return Decision(threshold, band, checkpoint.calibration, below)


def scan_records(
    detector: Detector,
    files: list[str],
    explicit: set[str],
    options: ScanOptions,
    summary: ScanSummary,
    on_progress: Callable[[int], None] | None = None,
) -> Iterator[ScanRecord]:
    """Yield one record per file in `files` order; non-images found by walking are counted, not yielded."""
    from causalclip_cli.inputs.gpu_decode import choose_decoder, make_scan_loader

    decision = resolve_decision(detector.decision, options)
    model = detector.model_id
    pin = detector.device.startswith("cuda")
    decoder, note = choose_decoder(options.decode, detector.device, detector.preprocess,
                                   stand_in=options.decode_batch is not None)
    if note:
        warnings.warn(note, stacklevel=2)
    loader = make_scan_loader(files, detector.preprocess, options.batch_size, options.workers, decoder=decoder,
                              device=detector.device, decode_batch=options.decode_batch, pin_memory=pin,
                              explicit=explicit, provenance=options.provenance, stats=options.decode_stats)
    start = time.perf_counter()
    first = True
    for batch in loader:
        # The first batch is scored one image first, so the first result does not wait for a whole batch
        # (on a CPU that is most of the time to first result; benchmarks/first_result.py).
        parts = [(batch.items, batch.good, batch.tensor)]
        if first and batch.tensor is not None and len(batch.good) > 1:
            v, g0 = batch.views, batch.good[0]
            parts = [(batch.items[:g0 + 1], [g0], batch.tensor[:v]),
                     (batch.items[g0 + 1:], [j - g0 - 1 for j in batch.good[1:]], batch.tensor[v:])]
        first = first and batch.tensor is None
        for items, good, tensor in parts:
            probs, familiar = [], None
            if tensor is not None and good:
                p, f = detector.assess(tensor)
                probs, familiar = p.tolist(), (None if f is None else f.tolist())
            for rec in batch_records(items, good, probs, decision, model, familiar):
                if rec is None:
                    summary.skipped += 1
                    continue
                if options.explain is not None:
                    from causalclip_cli.scanning.explain import explain_record

                    explain_record(detector, rec, options.explain)
                summary.add(rec)
                yield rec
        summary.seconds = time.perf_counter() - start
        if on_progress:
            on_progress(len(batch.items))


def batch_records(items: list[dict], good: list[int], probs: list[float], decision: Decision,
                  model: str, familiarity: list[float] | None = None) -> list[ScanRecord | None]:
    """A decoded batch and the probabilities (and familiarity p-values, when the head has a reference) of its
    `good` items → one record per item, in item order (None for a non-image met while walking a folder:
    skipped, not reported). Shared by every engine."""
    by_item = dict(zip(good, probs, strict=True))
    fam = dict(zip(good, familiarity, strict=True)) if familiarity is not None else {}
    out: list[ScanRecord | None] = []
    for j, item in enumerate(items):
        if item["skipped"]:
            out.append(None)
        elif j in by_item:
            p = float(by_item[j])
            q = fam.get(j)
            label, reason = decision.verdict(p, q)
            out.append(ScanRecord(item["path"], p, label, decision.threshold, model,
                                  item.get("width"), item.get("height"), None, item.get("provenance"), reason,
                                  None if q is None else float(q)))
        else:
            out.append(ScanRecord(item["path"], None, None, decision.threshold, model, item.get("width"),
                                  item.get("height"), item.get("error") or "unreadable", item.get("provenance")))
    return out


def error_records(errors: Iterable[tuple[str, str]], threshold: float, model: str) -> Iterator[ScanRecord]:
    for path, reason in errors:
        yield ScanRecord(os.fsdecode(path), None, None, threshold, model, None, None, reason)


def in_path_order(
    errors: Iterable[tuple[str, str]], records: Iterable[ScanRecord], threshold: float, model: str,
    summary: ScanSummary,
) -> Iterator[ScanRecord]:
    """Discovery's error records merged into `records` (already in discovery's path order), lazily, so that
    every record comes in the one sorted order; the error records are added to `summary` as they pass."""
    from causalclip_cli.inputs.data import path_sort_key

    def counted() -> Iterator[ScanRecord]:
        for rec in error_records(errors, threshold, model):
            summary.add(rec)
            yield rec

    return heapq.merge(counted(), records, key=lambda r: path_sort_key(r.path))


FAIL_ON = ("fake", "uncertain", "provenance-ai", "never")
PROVENANCE_AI = ("ai-generated", "ai-edited")


def parse_fail_on(value: str) -> frozenset[str]:
    """'fake', 'uncertain', 'provenance-ai', 'never', or a comma-separated combination ('fake,provenance-ai')."""
    from causalclip_cli.errors import UsageError

    parts = frozenset(p.strip() for p in value.split(",") if p.strip())
    unknown = sorted(parts - set(FAIL_ON))
    if not parts or unknown:
        raise UsageError(f"invalid --fail-on value {value!r}",
                         hint=f"choose from {', '.join(FAIL_ON)}, or combine them with commas (fake,provenance-ai)")
    if "never" in parts and len(parts) > 1:
        raise UsageError("--fail-on never cannot be combined with other values")
    return parts


def exit_code(summary: ScanSummary, fail_on: str) -> int:
    """0 clean, 1 flagged (grep's 'found'), 3 some files unreadable and nothing flagged.

    `fail_on` is a `parse_fail_on` value: 'fake' flags label fake, 'uncertain' fake or uncertain,
    'provenance-ai' files whose metadata says ai-generated or ai-edited; combinations flag on any.
    """
    wanted = parse_fail_on(fail_on)
    flagged = 0
    if wanted & {"fake", "uncertain"}:
        flagged += summary.counts.get("fake", 0)
    if "uncertain" in wanted:
        flagged += summary.counts.get("uncertain", 0)
    if "provenance-ai" in wanted:
        flagged += sum(summary.provenance.get(s, 0) for s in PROVENANCE_AI)
    if flagged:
        return 1
    if summary.errors:
        return 3
    return 0
