"""Command-line interface: parse options, call the library, map errors to exit codes.

stdout carries data only; progress, warnings and summaries go to stderr. Heavy modules (torch,
open_clip) are imported inside commands so `causalclip --help` starts instantly.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import warnings
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from causalclip_cli import __version__
from causalclip_cli.errors import CausalClipError, UsageError

EXIT_CODES_HELP = (
    "Exit codes: 0 nothing flagged; 1 at least one file flagged fake (like grep's 'found'); "
    "2 usage or fatal error; 3 some files could not be read (and nothing was flagged); "
    "130 interrupted; 141 output pipe closed early."
)

PRECISION_HELP = ("Tower precision: auto (fp16 autocast on CUDA, fp32 elsewhere), fp32, int8 (CPU; per-channel "
                  "weights, per-token activations), fp16 or bf16 (autocast).")

app = typer.Typer(
    name="causalclip",
    help="Forensic scanner for AI-generated images: a CausalCLIP head over a frozen CLIP image encoder.\n\n"
    + EXIT_CODES_HELP,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


class Fmt(str, Enum):
    table = "table"
    jsonl = "jsonl"
    json = "json"
    csv = "csv"


class EvalFmt(str, Enum):
    table = "table"
    json = "json"
    csv = "csv"


class FailOn(str, Enum):
    fake = "fake"
    uncertain = "uncertain"
    never = "never"


class HeadKind(str, Enum):
    causalclip = "causalclip"
    linear = "linear"


def _stderr():  # noqa: ANN202 - rich Console, imported lazily
    from rich.console import Console

    return Console(stderr=True, highlight=False)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001
    sys.stderr.write(f"warning: {message}\n")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"causalclip {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    warnings.showwarning = _show_warning


def _interruptible(fn):  # noqa: ANN001, ANN202
    """Ctrl-C anywhere in a command: a one-line note and exit 130, not a traceback or click's exit 1."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        try:
            return fn(*args, **kwargs)
        except KeyboardInterrupt:
            sys.stderr.write("interrupted\n")
            raise typer.Exit(130) from None

    return wrapper


def _fail(exc: CausalClipError) -> typer.Exit:
    sys.stderr.write(f"error: {exc}\n")
    return typer.Exit(exc.exit_code)


def _parse_band(text: str | None) -> tuple[float, float] | tuple[()] | None:
    """None: not given; (): switched off ("off"); (low, high) otherwise."""
    if not text:
        return None
    if text.strip().lower() in ("off", "none"):
        return ()
    try:
        low, high = (float(x) for x in text.split(":"))
    except ValueError as exc:
        raise UsageError(f"--uncertain {text!r}: expected LOW:HIGH, e.g. 0.4:0.6") from exc
    if not 0.0 <= low < high <= 1.0:
        raise UsageError(f"--uncertain {text!r}: need 0 <= LOW < HIGH <= 1")
    return (low, high)


def _device(spec: str) -> str:
    from causalclip_cli.settings import resolve_device

    return resolve_device(spec)


# --------------------------------------------------------------------------- info


@app.command()
@_interruptible
def info(
    checkpoint: Annotated[str | None, typer.Option("--checkpoint", "-c", help="Checkpoint path or name.")] = None,
    backbone_weights: Annotated[str | None, typer.Option(help="Local backbone weights file.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object with stable keys.")] = False,
) -> None:
    """What the tool will use: version, device, cache, checkpoint and the backbone it resolves to (no network)."""
    try:
        from causalclip_cli.inspect import gather_info

        data = gather_info(checkpoint, backbone_weights)
    except CausalClipError as exc:
        raise _fail(exc) from None
    if as_json:
        typer.echo(json.dumps(data, indent=2, sort_keys=False))
        return
    from causalclip_cli.inspect import render_info

    render_info(data)


# --------------------------------------------------------------------------- scan


@app.command(epilog=EXIT_CODES_HELP)
@_interruptible
def scan(
    paths: Annotated[list[str], typer.Argument(help="Files and folders; '-' reads paths from stdin.")],
    checkpoint: Annotated[str | None, typer.Option("--checkpoint", "-c",
                                                   help="Checkpoint path or released name.")] = None,
    threshold: Annotated[float | None, typer.Option(min=0.0, max=1.0,
                                                    help="Fake threshold (default: the checkpoint's).")] = None,
    uncertain: Annotated[str | None, typer.Option(
        help="Abstain band LOW:HIGH, labelled 'uncertain' (default: the checkpoint's, unless --threshold is "
             "given; 'off' for none).")] = None,
    fmt: Annotated[Fmt | None, typer.Option("--format", "-f",
                                            help="Default: table on a terminal, jsonl otherwise.")] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write results to FILE (atomic).")] = None,
    recursive: Annotated[bool, typer.Option("--recursive/--no-recursive", help="Descend into folders.")] = True,
    null: Annotated[bool, typer.Option("-0", "--null", help="Paths on stdin are NUL-separated.")] = False,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps.")] = "auto",
    batch_size: Annotated[int | None, typer.Option(
        min=1, help="Images per forward pass (default: 8 on CPU, 32 on CUDA/MPS).")] = None,
    workers: Annotated[int | None, typer.Option(
        min=0, help="Decoding processes (0: decode in-process; default: 2 on CPU, up to 8 on CUDA/MPS).")] = None,
    fail_on: Annotated[FailOn, typer.Option(help="What makes the exit code 1.")] = FailOn.fake,
    backbone_weights: Annotated[str | None, typer.Option(help="Local backbone weights file.")] = None,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Progress bar on stderr.")] = True,
    precision: Annotated[str, typer.Option(help=PRECISION_HELP)] = "auto",
) -> None:
    """Score images: a fake probability and a label per file, a summary on stderr."""
    from causalclip_cli.output import ScanSummary, default_format, make_writer, render_summary

    try:
        band = _parse_band(uncertain)
        from causalclip_cli.data import discover, read_path_list

        inputs = [p for p in paths if p != "-"]
        if "-" in paths:
            inputs += read_path_list(sys.stdin.buffer, null_separated=null)
        if not inputs:
            raise UsageError("no input paths given")
        found = discover(inputs, recursive=recursive)
        from causalclip_cli.checkpoint import load_detector

        dev = _device(device)
        detector = load_detector(checkpoint, device=dev, backbone_weights=backbone_weights, allow_download=True,
                                 precision=precision)
    except CausalClipError as exc:
        raise _fail(exc) from None

    from causalclip_cli.scan import (
        ScanOptions,
        default_batch_size,
        default_workers,
        error_records,
        exit_code,
        scan_records,
    )

    workers = default_workers(dev) if workers is None else workers
    opts = ScanOptions(batch_size=batch_size or default_batch_size(dev), workers=workers, threshold=threshold,
                       uncertain=band)
    summary = ScanSummary()
    err = _stderr()
    total = len(found.files)
    if not found.files and not found.errors:
        err.print("warning: no files found under the given paths")
    thr = detector.decision.threshold if threshold is None else threshold

    def run(stream) -> None:  # noqa: ANN001
        writer = make_writer((fmt.value if fmt else default_format(stream)), stream)
        try:
            for rec in error_records(found.errors, thr, detector.model_id):
                summary.add(rec)
                writer.write(rec)
            show = progress and sys.stderr.isatty()
            if show:
                from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

                with Progress("scanning", BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                              console=err, transient=True) as bar:
                    task = bar.add_task("scan", total=total)
                    for rec in scan_records(detector, found.files, found.explicit, opts, summary,
                                            lambda n: bar.advance(task, n)):
                        writer.write(rec)
            else:
                for rec in scan_records(detector, found.files, found.explicit, opts, summary):
                    writer.write(rec)
        except KeyboardInterrupt:
            summary.interrupted = True
        finally:
            writer.close()

    try:
        if output is not None:
            from causalclip_cli.output import atomic_output

            with atomic_output(output) as fh:
                run(fh)
        else:
            run(sys.stdout)
            sys.stdout.flush()
    except BrokenPipeError:
        # The reader closed the pipe (e.g. `| head`): stop quietly, like other Unix filters.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        raise typer.Exit(141) from None
    render_summary(summary, sys.stderr)
    if summary.interrupted:
        raise typer.Exit(130)
    raise typer.Exit(exit_code(summary, fail_on.value))


# --------------------------------------------------------------------------- train / eval / calibrate


@app.command()
@_interruptible
def train(
    data: Annotated[Path, typer.Option("--data", "-d", help="Dataset folder (layout auto-detected) or CSV.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Checkpoint to write.")] = Path(
        "causalclip-head.safetensors"),
    head: Annotated[HeadKind, typer.Option(help="causalclip or the linear-probe baseline.")] = HeadKind.causalclip,
    backbone: Annotated[str, typer.Option(help="open_clip model name.")] = "ViT-B-16",
    pretrained: Annotated[str, typer.Option(help="open_clip pretrained tag.")] = "openai",
    backbone_weights: Annotated[str | None, typer.Option(help="Local backbone weights file.")] = None,
    subset: Annotated[list[str] | None, typer.Option(help="Generators to use (repeatable).")] = None,
    layout: Annotated[str, typer.Option(help="auto, genimage, forensynths, cifake, realfake, manifest.")] = "auto",
    epochs: Annotated[int, typer.Option(min=1)] = 50,
    batch_size: Annotated[int, typer.Option(min=2)] = 256,
    lr: Annotated[float, typer.Option()] = 1e-4,
    weight_decay: Annotated[float, typer.Option()] = 0.0,
    patience: Annotated[int, typer.Option(min=1, help="Early-stopping patience (epochs).")] = 10,
    seed: Annotated[int, typer.Option()] = 0,
    val_fraction: Annotated[float, typer.Option(help="Hold-out when the data has no val split.")] = 0.1,
    tau: Annotated[float, typer.Option(help="Gumbel-sigmoid temperature τ.")] = 0.5,
    alpha: Annotated[float, typer.Option(help="Adversary weight α (reversed into the mask).")] = 0.1,
    beta: Annotated[float, typer.Option(help="Counterfactual invariance weight β.")] = 1.0,
    lambda1: Annotated[float, typer.Option(help="Mask sparsity weight λ1.")] = 0.1,
    lambda2: Annotated[float, typer.Option(help="HSIC weight λ2.")] = 1.0,
    drop_p: Annotated[float, typer.Option(help="Counterfactual drop rate p.")] = 0.2,
    hidden: Annotated[int, typer.Option(help="Hidden width of mask, classifier and adversary MLPs.")] = 256,
    dropout: Annotated[float, typer.Option()] = 0.1,
    jpeg_align: Annotated[int | None, typer.Option(help="Re-encode every image as JPEG at this quality.")] = None,
    augment: Annotated[str | None, typer.Option(help="Pixel augmentations, e.g. blur,jpeg (bypass cache).")] = None,
    device: Annotated[str, typer.Option()] = "auto",
    workers: Annotated[int, typer.Option(min=0)] = 2,
    extract_batch_size: Annotated[int, typer.Option(min=1, help="Batch size of feature extraction.")] = 32,
    cache_dir: Annotated[Path | None, typer.Option(help="Feature cache folder.")] = None,
    resume: Annotated[bool, typer.Option(help="Continue an interrupted run of the same output.")] = False,
) -> None:
    """Train a CausalCLIP (or linear-probe) head on a dataset; writes a safetensors checkpoint."""
    from causalclip_cli.experiment import TrainRequest, run_train

    req = TrainRequest(
        data=data, output=output, head=head.value, backbone=backbone, pretrained=pretrained,
        backbone_weights=backbone_weights, subsets=subset or None, layout=layout, epochs=epochs,
        batch_size=batch_size, lr=lr, weight_decay=weight_decay, patience=patience, seed=seed,
        val_fraction=val_fraction,
        head_config={"tau": tau, "alpha": alpha, "beta": beta, "lambda1": lambda1, "lambda2": lambda2,
                     "drop_p": drop_p, "mask_hidden": hidden, "cls_hidden": hidden, "adv_hidden": hidden,
                     "dropout": dropout},
        jpeg_align=jpeg_align, augment=augment, device=device, workers=workers,
        extract_batch_size=extract_batch_size, cache_dir=cache_dir, resume=resume,
    )
    try:
        result = run_train(req)
    except CausalClipError as exc:
        raise _fail(exc) from None
    typer.echo(json.dumps(result, indent=2))


@app.command(name="eval")
@_interruptible
def evaluate(
    data: Annotated[Path, typer.Option("--data", "-d", help="Dataset folder (layout auto-detected) or CSV.")],
    checkpoint: Annotated[str | None, typer.Option("--checkpoint", "-c")] = None,
    split: Annotated[str | None, typer.Option(help="Split to evaluate (default: test, else val, else all).")
                     ] = None,
    subset: Annotated[list[str] | None, typer.Option(help="Generators to use (repeatable).")] = None,
    layout: Annotated[str, typer.Option()] = "auto",
    threshold: Annotated[float | None, typer.Option(min=0.0, max=1.0)] = None,
    perturb: Annotated[str | None, typer.Option(help="e.g. jpeg:75,blur:1.0,resize:0.5")] = None,
    fmt: Annotated[EvalFmt, typer.Option("--format", "-f")] = EvalFmt.table,
    plot: Annotated[Path | None, typer.Option(help="Write ROC and PR curves (PNG) to this folder.")] = None,
    device: Annotated[str, typer.Option()] = "auto",
    workers: Annotated[int, typer.Option(min=0)] = 2,
    batch_size: Annotated[int, typer.Option(min=1)] = 32,
    cache_dir: Annotated[Path | None, typer.Option()] = None,
    backbone_weights: Annotated[str | None, typer.Option()] = None,
    precision: Annotated[str, typer.Option(help=PRECISION_HELP)] = "auto",
) -> None:
    """Per-generator accuracy, AP, AUC and TPR at 1%/5% FPR of a checkpoint on a dataset."""
    from causalclip_cli.experiment import EvalRequest, render_eval, run_eval

    req = EvalRequest(data=data, checkpoint=checkpoint, split=split, subsets=subset or None, layout=layout,
                      threshold=threshold, perturb=perturb, plot=plot, device=device, workers=workers,
                      batch_size=batch_size, cache_dir=cache_dir, backbone_weights=backbone_weights,
                      precision=precision)
    try:
        report = run_eval(req)
    except CausalClipError as exc:
        raise _fail(exc) from None
    render_eval(report, fmt.value, sys.stdout)


@app.command()
@_interruptible
def calibrate(
    data: Annotated[Path, typer.Option("--data", "-d", help="Dataset with held-out real images.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Calibrated copy of the checkpoint.")],
    checkpoint: Annotated[str | None, typer.Option("--checkpoint", "-c")] = None,
    target_fpr: Annotated[float, typer.Option(min=0.0, max=1.0, help="False-positive rate on real images.")
                          ] = 0.01,
    band_fpr: Annotated[str | None, typer.Option(help="Abstain band as two FPRs on real images, e.g. 0.15:0.01.")
                        ] = None,
    split: Annotated[str | None, typer.Option(help="Split whose real images are used (default: val).")] = None,
    layout: Annotated[str, typer.Option()] = "auto",
    device: Annotated[str, typer.Option()] = "auto",
    workers: Annotated[int, typer.Option(min=0)] = 2,
    cache_dir: Annotated[Path | None, typer.Option()] = None,
) -> None:
    """Choose the threshold on held-out real images for a target false-positive rate."""
    from causalclip_cli.experiment import CalibrateRequest, run_calibrate

    try:
        band = _parse_band(":".join(sorted((band_fpr or "").split(":")))) if band_fpr else None
        req = CalibrateRequest(data=data, output=output, checkpoint=checkpoint, target_fpr=target_fpr,
                               band_fpr=band, split=split, layout=layout, device=device, workers=workers,
                               cache_dir=cache_dir)
        result = run_calibrate(req)
    except CausalClipError as exc:
        raise _fail(exc) from None
    typer.echo(json.dumps(result, indent=2))


def main() -> None:
    app()
