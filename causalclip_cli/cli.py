"""Command-line interface: parse options, call the library, map errors to exit codes.

stdout carries data only; progress, warnings and summaries go to stderr. Heavy modules (torch,
open_clip) are imported inside commands so `causalclip --help` starts instantly.
"""

from __future__ import annotations

import dataclasses
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
    add_completion=True,
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


class AttackKind(str, Enum):
    pgd = "pgd"
    fgsm = "fgsm"


class AttackTarget(str, Enum):
    real = "real"
    fake = "fake"
    both = "both"


class HeadKind(str, Enum):
    causalclip = "causalclip"
    linear = "linear"


class Engine(str, Enum):
    local = "local"
    ray = "ray"


def _complete_checkpoint(incomplete: str) -> list[tuple[str, str]]:
    """Shell completion of --checkpoint: the released checkpoint names, and .safetensors files (and folders)
    once a path is being typed. Light: no torch, no model."""
    from causalclip_cli.model.checkpoint import available_checkpoints

    out = [(name, "released checkpoint") for name in available_checkpoints() if name.startswith(incomplete)]
    if incomplete.startswith((".", "/", "~")) or os.sep in incomplete:
        folder, sep, prefix = incomplete.rpartition(os.sep)
        try:
            entries = sorted(Path(os.path.expanduser(folder + sep or ".")).iterdir())
        except OSError:
            entries = []
        for entry in entries:
            if not entry.name.startswith(prefix) or (entry.name.startswith(".") and not prefix.startswith(".")):
                continue
            if entry.is_dir():
                out.append((folder + sep + entry.name + os.sep, "folder"))
            elif entry.suffix == ".safetensors":
                out.append((folder + sep + entry.name, "checkpoint file"))
    return out


class Decode(str, Enum):
    auto = "auto"
    cpu = "cpu"
    gpu = "gpu"


DECODE_HELP = ("Image decoding: auto (JPEGs on the GPU with nvJPEG when the device is CUDA, else CPU), cpu (Pillow in "
               "worker processes), gpu (nvJPEG; needs CUDA). Other formats and JPEGs nvJPEG cannot take are always "
               "decoded on the CPU.")


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


def _check_resume(output: str | None, fmt: Fmt | None, engine: Engine) -> None:
    """--resume continues a JSON Lines file written by the local engine."""
    if output is None:
        raise UsageError("--resume needs --output FILE: the JSONL file of the scan to continue")
    if fmt is not None and fmt != Fmt.jsonl:
        raise UsageError(f"--resume works with --format jsonl only, not {fmt.value}",
                         hint="JSON Lines can be appended to record by record; JSON, CSV and table cannot")
    if engine == Engine.ray:
        raise UsageError("--resume is not available with --engine ray", hint="resume with --engine local")


def _device(spec: str) -> str:
    from causalclip_cli.settings import resolve_device

    return resolve_device(spec)


# --------------------------------------------------------------------------- info


@app.command()
@_interruptible
def info(
    checkpoint: Annotated[str | None, typer.Option("--checkpoint", "-c", autocompletion=_complete_checkpoint,
                                                   help="Checkpoint path or name.")] = None,
    backbone_weights: Annotated[str | None, typer.Option(help="Local backbone weights file.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object with stable keys.")] = False,
) -> None:
    """What the tool will use: version, device, cache, checkpoint and the backbone it resolves to, and the shipped
    learned purifier (no network)."""
    try:
        from causalclip_cli.model.inspect import gather_info

        data = gather_info(checkpoint, backbone_weights)
        # The shipped learned purifier: added here, as model/inspect may not import the robustness layer.
        from causalclip_cli.robustness.purify import shipped_purifier_info

        data["purifier"] = shipped_purifier_info(data["problems"])
    except CausalClipError as exc:
        raise _fail(exc) from None
    if as_json:
        typer.echo(json.dumps(data, indent=2, sort_keys=False))
        return
    from causalclip_cli.model.inspect import render_info

    render_info(data)


# --------------------------------------------------------------------------- scan


@app.command(epilog=EXIT_CODES_HELP)
@_interruptible
def scan(
    paths: Annotated[list[str], typer.Argument(help="Files and folders; '-' reads paths from stdin.")],
    checkpoint: Annotated[str | None, typer.Option("--checkpoint", "-c", autocompletion=_complete_checkpoint,
                                                   help="Checkpoint path or released name.")] = None,
    threshold: Annotated[float | None, typer.Option(min=0.0, max=1.0,
                                                    help="Fake threshold (default: the checkpoint's).")] = None,
    uncertain: Annotated[str | None, typer.Option(
        help="Abstain band LOW:HIGH, labelled 'uncertain' (default: the checkpoint's, unless --threshold is "
             "given; 'off' for none).")] = None,
    fmt: Annotated[Fmt | None, typer.Option("--format", "-f",
                                            help="Default: table on a terminal, jsonl otherwise.")] = None,
    output: Annotated[str | None, typer.Option(
        "--output", "-o", help="Write results to FILE (renamed into place at the end; JSONL can be resumed after a "
                               "kill).")] = None,
    resume: Annotated[bool, typer.Option(
        "--resume", help="Continue an interrupted scan: keep the records already in --output (JSONL) and in a "
                         "killed run's journal beside it, scan only the other files.")] = False,
    recursive: Annotated[bool, typer.Option("--recursive/--no-recursive", help="Descend into folders.")] = True,
    null: Annotated[bool, typer.Option("-0", "--null", help="Paths on stdin are NUL-separated.")] = False,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps.")] = "auto",
    batch_size: Annotated[int | None, typer.Option(
        min=1, help="Images per forward pass (default: 8 on CPU, 32 on CUDA/MPS).")] = None,
    workers: Annotated[int | None, typer.Option(
        min=0, help="Decoding processes (0: decode in-process; default: 2 on CPU, up to 8 on CUDA/MPS).")] = None,
    fail_on: Annotated[str, typer.Option(
        help="What makes the exit code 1: fake, uncertain (fake or uncertain), provenance-ai (metadata says "
             "ai-generated or ai-edited), never; combine with commas, e.g. fake,provenance-ai.")] = "fake",
    backbone_weights: Annotated[str | None, typer.Option(help="Local backbone weights file.")] = None,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Progress bar on stderr.")] = True,
    provenance: Annotated[bool, typer.Option(
        "--provenance/--no-provenance",
        help="Read C2PA, XMP, EXIF and generator metadata while decoding (the 'provenance' field).")] = True,
    html: Annotated[Path | None, typer.Option(
        "--html", help="Also write a self-contained HTML report to FILE.")] = None,
    engine: Annotated[Engine, typer.Option(help="local, or ray: Ray Data on this machine or a cluster "
                                                "(needs the causalclip[ray] extra).")] = Engine.local,
    address: Annotated[str | None, typer.Option(help="--engine ray: cluster address, e.g. auto "
                                                     "(default: start Ray on this machine).")] = None,
    actors: Annotated[int | None, typer.Option(min=1, help="--engine ray: detector actors (default: one per "
                                                           "GPU, else 1).")] = None,
    purify: Annotated[str | None, typer.Option(
        help="Purify inputs first: jpeg[:Q], blur[:SIGMA], rescale[:FACTOR], median[:K], learned (the shipped "
             "purifier; see `causalclip info`) or learned:NAME|PATH.")] = None,
    precision: Annotated[str, typer.Option(help=PRECISION_HELP)] = "auto",
    crops: Annotated[int | None, typer.Option(
        help="Crops scored per image: 1, 5 or 9 (default: the checkpoint's). More crops of a full-resolution "
             "(--recipe native) head look at more of a large image, at N forward passes per image.")] = None,
    abstain_unfamiliar: Annotated[bool, typer.Option(
        "--abstain-unfamiliar/--no-abstain-unfamiliar",
        help="Label 'uncertain' (reason: unfamiliar) rather than 'fake' an image unlike anything the head was "
             "trained on (checkpoints with a familiarity reference).")] = True,
    decode: Annotated[Decode, typer.Option(help=DECODE_HELP)] = Decode.auto,
    explain: Annotated[bool, typer.Option(
        "--explain", help="Add an evidence map to every record: a grid of fake probabilities over the image and "
                          "the box of its strongest region (2-3x slower on CPU).")] = False,
    maps: Annotated[Path | None, typer.Option(
        "--maps", help="Also write one PNG per image into DIR: the image under its evidence map, the box drawn "
                       "(implies --explain).")] = None,
) -> None:
    """Score images: a fake probability and a label per file, a summary on stderr.

    With --engine ray, PATHS may also be URIs that pyarrow reads (s3://, gs://, file://) and --output may be
    a folder of Parquet shards (a path ending in '/', an existing folder, or a URI)."""
    from causalclip_cli.scanning.output import ScanSummary, default_format, make_writer, render_summary

    try:
        band = _parse_band(uncertain)
        from causalclip_cli.scanning.scan import parse_fail_on

        parse_fail_on(fail_on)
        if resume:
            _check_resume(output, fmt, engine)
        from causalclip_cli.inputs.data import discover, read_path_list

        inputs = [p for p in paths if p != "-"]
        if "-" in paths:
            inputs += read_path_list(sys.stdin.buffer, null_separated=null)
        if not inputs:
            raise UsageError("no input paths given")
        explain = explain or maps is not None
        if engine == Engine.ray:
            if explain:
                raise UsageError("--explain and --maps are not available with --engine ray",
                                 hint="use --engine local")
            if purify or crops:
                raise UsageError("--purify and --crops are not available with --engine ray")
            if html is not None:
                raise UsageError("--html is not available with --engine ray",
                                 hint="write --output results.jsonl, then run `causalclip report results.jsonl`")
            if decode == Decode.gpu:
                raise UsageError("--decode gpu is not available with --engine ray (its decode tasks run on CPUs)",
                                 hint="use --engine local for GPU decoding")
            raise typer.Exit(_scan_ray(inputs, output, fmt, checkpoint, threshold, band, device, batch_size,
                                       fail_on, backbone_weights, recursive, address, actors, provenance,
                                       precision, abstain_unfamiliar))
        found = discover(inputs, recursive=recursive)
        from causalclip_cli.model.checkpoint import load_detector

        dev = _device(device)
        from causalclip_cli.inputs.gpu_decode import check_decode

        check_decode(decode.value, dev)  # before the model loads: a usage error should not wait for it
        detector = load_detector(checkpoint, device=dev, backbone_weights=backbone_weights, allow_download=True,
                                 precision=precision)
        if crops is not None:
            from causalclip_cli.model.preprocess import VIEW_COUNTS

            if crops not in VIEW_COUNTS:
                raise UsageError(f"--crops must be one of {', '.join(map(str, VIEW_COUNTS))}, not {crops}")
            detector.metadata["preprocess"] = {**detector.preprocess.to_dict(), "views": crops}
        if purify:
            if explain:
                raise UsageError("--explain and --maps cannot be combined with --purify",
                                 hint="the map explains the image as it is; scan the purified copy separately")
            from causalclip_cli.robustness.purify import parse_purifier, with_purifier

            detector = with_purifier(detector, parse_purifier(purify, dev))
        explain_options = None
        if explain:
            from causalclip_cli.evidence.maps import check_maps
            from causalclip_cli.scanning.explain import ExplainOptions

            check_maps(detector)
            explain_options = ExplainOptions(maps_dir=None if maps is None else str(maps))
            if maps is not None and maps.exists() and not maps.is_dir():
                raise UsageError(f"--maps {maps} exists and is not a folder")
        done = None
        stale: list[str] = []  # killed runs' temporary files beside --output, removed once this run commits
        if resume:
            from causalclip_cli.scanning.resume import check_same_run, read_done

            done = read_done(output)
            check_same_run(done, detector.model_id, detector.decision.threshold if threshold is None else threshold,
                           output, explain)
            stale = done.leftovers
        elif output is not None:
            from causalclip_cli.scanning.resume import count_leftover_records

            # Killed runs' temporary files stay until this run's output is committed, then go.
            stale, unfinished = count_leftover_records(output)
            if unfinished:
                sys.stderr.write(f"note: an interrupted scan to {output} left {unfinished:,} record(s) in "
                                 f"{os.path.basename(stale[-1])}; add --resume to keep them (this run starts "
                                 "over and removes it when it finishes)\n")
    except CausalClipError as exc:
        raise _fail(exc) from None

    from causalclip_cli.scanning.scan import (
        ScanOptions,
        default_batch_size,
        default_workers,
        exit_code,
        in_path_order,
        scan_records,
    )

    workers = default_workers(dev) if workers is None else workers
    from causalclip_cli.inputs.gpu_decode import DecodeStats

    decode_stats = DecodeStats()
    opts = ScanOptions(batch_size=batch_size or default_batch_size(dev), workers=workers, threshold=threshold,
                       uncertain=band, provenance=provenance, abstain_unfamiliar=abstain_unfamiliar,
                       decode=decode.value, decode_stats=decode_stats, explain=explain_options)
    kept: list[dict] | None = [] if html is not None else None
    summary = ScanSummary()
    err = _stderr()
    if not found.files and not found.errors:
        err.print("warning: no files found under the given paths")
    if done is not None:
        # --resume: the earlier records count in the summary (and the report); their paths are not scanned again.
        for rec in done.records:
            summary.add(rec)
        summary.resumed = len(done.records)
        if kept is not None:
            kept.extend(rec.to_dict() for rec in done.records)
        seen = done.paths
        found = dataclasses.replace(found, files=[f for f in found.files if f not in seen],
                                    errors=[e for e in found.errors if e[0] not in seen])
        tail = "; a truncated last line is dropped and its file scanned again" if done.dropped_tail else ""
        adopted = (f" ({done.from_leftovers:,} from an interrupted run's temporary file)" if done.from_leftovers
                   else "")
        sys.stderr.write(f"resuming {output}: {len(done.records):,} record(s) kept{adopted}, {len(found.files):,} "
                         f"file(s) to scan{tail}\n")
    total = len(found.files)
    thr = detector.decision.threshold if threshold is None else threshold

    def run(stream) -> None:  # noqa: ANN001
        writer = make_writer((fmt.value if fmt else default_format(stream)), stream, explain=explain)
        commit = getattr(stream, "commit", None)  # a JSONL journal: whole lines reach the disk batch by batch

        def emit(records) -> None:  # noqa: ANN001
            # Discovery's error records (broken symlinks, ...) come in the same path order as the rest.
            for rec in in_path_order(found.errors, records, thr, detector.model_id, summary):
                writer.write(rec)
                if kept is not None:
                    kept.append(rec.to_dict())

        try:
            show = progress and sys.stderr.isatty()
            if show:
                from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

                with Progress("scanning", BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                              console=err, transient=True) as bar:
                    task = bar.add_task("scan", total=total)

                    def advance(n: int) -> None:
                        bar.advance(task, n)
                        if commit is not None:
                            commit()

                    emit(scan_records(detector, found.files, found.explicit, opts, summary, advance))
            else:
                emit(scan_records(detector, found.files, found.explicit, opts, summary,
                                  (lambda n: commit()) if commit is not None else None))
        except KeyboardInterrupt:
            summary.interrupted = True
        finally:
            writer.close()

    try:
        if output is not None:
            from causalclip_cli.scanning.output import atomic_output

            if fmt is None or fmt == Fmt.jsonl:
                from causalclip_cli.scanning.resume import LineJournal

                # A journal of whole records: a killed run leaves it for --resume to adopt.
                with atomic_output(output, keep_on_error=True, replaces=stale) as fh:
                    journal = LineJournal(fh)
                    if done is not None and done.lines:
                        journal.write(done.data.decode("utf-8"))
                        journal.commit()
                    run(journal)
                    journal.commit()
            else:
                with atomic_output(output, replaces=stale) as fh:
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
    if decode_stats.decoder == "gpu":
        err.print(decode_stats.line())
    if html is not None and kept is not None:
        from causalclip_cli.scanning.report import ReportOptions, write_report

        try:
            stats = write_report(kept, html, ReportOptions(source="causalclip scan"))
            err.print(f"wrote {html} ({stats.records:,} results, {stats.bytes / 1e6:.1f} MB)")
        except OSError as exc:
            err.print(f"error: cannot write the HTML report {html}: {exc}")
            raise typer.Exit(2) from None
    if summary.interrupted:
        raise typer.Exit(130)
    raise typer.Exit(exit_code(summary, fail_on))


@app.command()
@_interruptible
def report(
    results: Annotated[Path, typer.Argument(help="Results of a scan: JSONL, JSON or CSV.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="HTML file to write (atomic).")] = Path(
        "report.html"),
    thumbnails: Annotated[int, typer.Option(
        min=0, help="Embed thumbnails for this many of the most suspicious files (read from their paths).")] = 200,
    title: Annotated[str, typer.Option(help="Page title.")] = "causalclip scan report",
) -> None:
    """Write a self-contained HTML report (no network) from a scan's results: sorted, filterable, searchable."""
    from causalclip_cli.scanning.report import ReportOptions, ReportStats, load_results, write_report

    stats = ReportStats()
    try:
        records = load_results(results, stats)
        write_report(records, output, ReportOptions(title=title, thumbnails=thumbnails, source=str(results)), stats)
    except CausalClipError as exc:
        raise _fail(exc) from None
    except OSError as exc:
        raise _fail(UsageError(f"cannot write {output}: {exc.strerror or exc}")) from None
    err = _stderr()
    for line in stats.skipped_lines[:5]:
        err.print(f"warning: skipped {line}")
    err.print(f"wrote {output} ({stats.records:,} results, {stats.thumbnails} thumbnails, {stats.bytes / 1e6:.1f} MB)")


def _scan_ray(inputs: list[str], output: str | None, fmt: Fmt | None, checkpoint: str | None,
              threshold: float | None, band: tuple | None, device: str, batch_size: int | None, fail_on: str,
              backbone_weights: str | None, recursive: bool, address: str | None, actors: int | None,
              provenance: bool = True, precision: str = "auto", abstain_unfamiliar: bool = True) -> int:
    """`scan --engine ray`: the distributed module does the work; the same summary and exit codes."""
    from causalclip_cli.scanning.distributed import RayOptions, scan_command
    from causalclip_cli.scanning.output import render_summary
    from causalclip_cli.scanning.scan import ScanOptions, default_batch_size, exit_code

    dev = device  # checked against the cluster's GPUs, not this machine's
    opts = ScanOptions(batch_size=batch_size or default_batch_size("cpu" if dev in ("auto", "cpu") else dev),
                       threshold=threshold, uncertain=band, provenance=provenance, precision=precision,
                       abstain_unfamiliar=abstain_unfamiliar)
    summary = scan_command(inputs, output, fmt.value if fmt else None,
                           checkpoint, opts, RayOptions(address=address, actors=actors), recursive=recursive,
                           device=dev, backbone_weights=backbone_weights)
    render_summary(summary, sys.stderr)
    return 130 if summary.interrupted else exit_code(summary, fail_on)


# --------------------------------------------------------------------------- train / eval / calibrate


@app.command()
@_interruptible
def train(
    data: Annotated[Path | None, typer.Option("--data", "-d", help="Dataset folder (layout auto-detected) or CSV.")
                    ] = None,
    output: Annotated[Path, typer.Option("--output", "-o", help="Checkpoint to write.")] = Path(
        "causalclip-head.safetensors"),
    head: Annotated[HeadKind, typer.Option(help="causalclip or the linear-probe baseline.")] = HeadKind.causalclip,
    backbone: Annotated[str, typer.Option(help="open_clip model name.")] = "ViT-B-16",
    pretrained: Annotated[str, typer.Option(help="open_clip pretrained tag.")] = "openai",
    backbone_weights: Annotated[str | None, typer.Option(help="Local backbone weights file.")] = None,
    subset: Annotated[list[str] | None, typer.Option(help="Generators to use (repeatable).")] = None,
    exclude: Annotated[list[str] | None, typer.Option(
        help="Generator or kind of image (a manifest's domain) to leave out (repeatable).")] = None,
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
    classifier_hidden: Annotated[int | None, typer.Option(
        min=0, help="Hidden width of the classifier and adversary only (0: linear on the masked features; "
                    "default: --hidden).")] = None,
    dropout: Annotated[float, typer.Option()] = 0.1,
    jpeg_align: Annotated[int | None, typer.Option(help="Re-encode every image as JPEG at this quality.")] = None,
    augment: Annotated[str | None, typer.Option(help="Pixel augmentations, e.g. blur,jpeg (bypass cache).")] = None,
    device: Annotated[str, typer.Option()] = "auto",
    workers: Annotated[int, typer.Option(min=0)] = 2,
    extract_batch_size: Annotated[int, typer.Option(min=1, help="Batch size of feature extraction.")] = 32,
    cache_dir: Annotated[Path | None, typer.Option(help="Feature cache folder.")] = None,
    resume: Annotated[bool, typer.Option(help="Continue an interrupted run of the same output.")] = False,
    recipe: Annotated[str, typer.Option(
        help="resize: short side to 224 (CLIP's recipe); native: no downscale, 224-px crops at full resolution.")
                      ] = "resize",
    crops: Annotated[int, typer.Option(help="Crops scored per image at eval/scan time: 1 (centre), 5 (centre + "
                                            "corners) or 9 (3x3 grid); training reads the centre crop.")] = 1,
    layers: Annotated[str, typer.Option(
        help="CLIP features the head reads: final (projection), all (every block's class token + final), blocks, "
             "A:B (blocks A..B), pK or pA:B (mean of the patch tokens after block K), or a list such as "
             "4:12,final,p8.")] = "final",
    combine: Annotated[str, typer.Option(help="How layers combine: concat, or weighted (learned per-layer "
                                              "weights).")] = "concat",
    aggregate: Annotated[str, typer.Option(help="How an image's crop scores combine: mean or max (of logits).")
                         ] = "mean",
    augment_views: Annotated[int, typer.Option(
        min=0, max=8, help="Cached augmented views per training image (JPEG 60-95, downscale, blur, crop); one "
                           "is drawn per epoch.")] = 0,
    features: Annotated[str | None, typer.Option(help="Train on Parquet features from `causalclip embed` "
                                                      "(a folder or URI) instead of --data.")] = None,
    balance: Annotated[str, typer.Option(
        help="Weigh kinds of images (a manifest's domain column, else the generator) within each class: none, "
             "domain (each kind the same total weight) or sqrt (weight grows with the square root of its size).")
                       ] = "none",
    hard_reals: Annotated[float, typer.Option(
        min=0.0, max=0.99, help="Share of training reals that a first fit scores highest, up-weighted in a second "
                                "fit (hard real negatives; 0: off).")] = 0.0,
    hard_weight: Annotated[float, typer.Option(min=1.0, help="Weight multiplier of those hard reals.")] = 3.0,
    probe_groups: Annotated[str | None, typer.Option(
        help="Linear head only: split --layers into groups with '|', e.g. 'final|4,6,8|10,12'; one probe is "
             "trained per group and the head is their average.")] = None,
) -> None:
    """Train a CausalCLIP (or linear-probe) head on a dataset; writes a safetensors checkpoint."""
    from causalclip_cli.training.experiment import TrainRequest, run_train

    req = TrainRequest(
        data=data, output=output, head=head.value, backbone=backbone, pretrained=pretrained,
        backbone_weights=backbone_weights, subsets=subset or None, exclude=exclude or None, layout=layout,
        epochs=epochs,
        batch_size=batch_size, lr=lr, weight_decay=weight_decay, patience=patience, seed=seed,
        val_fraction=val_fraction,
        head_config={"tau": tau, "alpha": alpha, "beta": beta, "lambda1": lambda1, "lambda2": lambda2,
                     "drop_p": drop_p, "mask_hidden": hidden,
                     "cls_hidden": hidden if classifier_hidden is None else classifier_hidden,
                     "adv_hidden": hidden if classifier_hidden is None else classifier_hidden,
                     "dropout": dropout},
        jpeg_align=jpeg_align, augment=augment, device=device, workers=workers,
        extract_batch_size=extract_batch_size, cache_dir=cache_dir, resume=resume, features=features,
        recipe=recipe, crops=crops, layers=layers, combine=combine, aggregate=aggregate, augment_views=augment_views,
        balance=balance, hard_reals=hard_reals, hard_weight=hard_weight, probe_groups=probe_groups,
    )
    try:
        result = run_train(req)
    except CausalClipError as exc:
        raise _fail(exc) from None
    typer.echo(json.dumps(result, indent=2))


@app.command(name="eval")
@_interruptible
def evaluate(
    data: Annotated[Path | None, typer.Option("--data", "-d", help="Dataset folder (layout auto-detected) or CSV.")
                    ] = None,
    checkpoint: Annotated[str | None, typer.Option("--checkpoint", "-c", autocompletion=_complete_checkpoint)] = None,
    split: Annotated[str | None, typer.Option(help="Split to evaluate (default: test, else val, else all).")
                     ] = None,
    subset: Annotated[list[str] | None, typer.Option(help="Generators to use (repeatable).")] = None,
    layout: Annotated[str, typer.Option()] = "auto",
    threshold: Annotated[float | None, typer.Option(min=0.0, max=1.0)] = None,
    perturb: Annotated[str | None, typer.Option(
        help="Extra conditions, e.g. jpeg:75,blur:1.0,resize:0.5; launder:s512-q92|half-q75|l1080-q85 for the "
             "resize-and-recompress journeys of web images.")] = None,
    fmt: Annotated[EvalFmt, typer.Option("--format", "-f")] = EvalFmt.table,
    plot: Annotated[Path | None, typer.Option(help="Write ROC and PR curves (PNG) to this folder.")] = None,
    device: Annotated[str, typer.Option()] = "auto",
    workers: Annotated[int, typer.Option(min=0)] = 2,
    batch_size: Annotated[int, typer.Option(min=1)] = 32,
    cache_dir: Annotated[Path | None, typer.Option()] = None,
    backbone_weights: Annotated[str | None, typer.Option()] = None,
    features: Annotated[str | None, typer.Option(help="Evaluate on Parquet features from `causalclip embed` "
                                                      "instead of --data.")] = None,
    attack: Annotated[AttackKind | None, typer.Option(help="White-box L-inf attack: pgd or fgsm.")] = None,
    eps: Annotated[float, typer.Option(help="Attack budget in 1/255 units.")] = 4.0,
    steps: Annotated[int, typer.Option(min=1, help="PGD iterations.")] = 10,
    step_size: Annotated[float | None, typer.Option(help="1/255 units (default 2.5*eps/steps; FGSM: eps).")
                         ] = None,
    random_start: Annotated[bool, typer.Option("--random-start/--no-random-start")] = True,
    target: Annotated[AttackTarget, typer.Option(
        help="real: push generated images to 'real'; fake: reals to 'fake'; both: each as a condition.")
                      ] = AttackTarget.both,
    attack_source: Annotated[str | None, typer.Option(
        help="Craft the attack on this checkpoint, evaluate on --checkpoint (transfer).")] = None,
    purify: Annotated[str | None, typer.Option(
        help="Purify inputs first: jpeg[:Q], blur[:SIGMA], rescale[:FACTOR], median[:K], learned (the shipped "
             "purifier; see `causalclip info`) or learned:NAME|PATH.")] = None,
    adaptive: Annotated[bool, typer.Option(help="Attack through the purifier (BPDA for JPEG).")] = False,
    limit: Annotated[int | None, typer.Option(min=2, help="Attack/purify eval: a deterministic, class-balanced "
                                                   "sample of at most N images.")] = None,
    precision: Annotated[str, typer.Option(help=PRECISION_HELP)] = "auto",
    decode: Annotated[Decode, typer.Option(help=DECODE_HELP + " Conditions with --perturb or a JPEG-aligned "
                                                "checkpoint decode on the CPU.")] = Decode.auto,
) -> None:
    """Per-generator accuracy, AP, AUC and TPR at 1%/5% FPR of a checkpoint on a dataset.

    With --attack and/or --purify: attack success rate, AP and accuracy before/after, and the
    perturbation's L-inf and PSNR, per attack condition."""
    if attack is not None or purify:
        from causalclip_cli.robustness.adversarial import RobustEvalRequest, render_robust, run_robust_eval

        try:
            if perturb or plot:
                raise UsageError("--perturb and --plot cannot be combined with --attack/--purify")
            if data is None:
                raise UsageError("--attack/--purify need --data (images, not Parquet features)")
            if decode == Decode.gpu:
                raise UsageError("--decode gpu is not available with --attack/--purify (they decode on the CPU)")
            rreq = RobustEvalRequest(
                data=data, checkpoint=checkpoint, split=split, subsets=subset or None, layout=layout,
                threshold=threshold, attack=attack.value if attack else None, eps=eps, steps=steps,
                step_size=step_size, random_start=random_start, target=target.value, attack_source=attack_source,
                purify=purify, adaptive=adaptive, limit=limit, device=device, workers=workers,
                batch_size=min(batch_size, 8), backbone_weights=backbone_weights)
            report = run_robust_eval(rreq)
        except CausalClipError as exc:
            raise _fail(exc) from None
        render_robust(report, fmt.value, sys.stdout)
        return
    from causalclip_cli.training.experiment import EvalRequest, render_eval, run_eval

    req = EvalRequest(data=data, checkpoint=checkpoint, split=split, subsets=subset or None, layout=layout,
                      threshold=threshold, perturb=perturb, plot=plot, device=device, workers=workers,
                      batch_size=batch_size, cache_dir=cache_dir, backbone_weights=backbone_weights,
                      features=features, precision=precision, decode=decode.value)
    try:
        report = run_eval(req)
    except CausalClipError as exc:
        raise _fail(exc) from None
    render_eval(report, fmt.value, sys.stdout)


@app.command()
@_interruptible
def embed(
    data: Annotated[Path, typer.Argument(help="Dataset folder (layout auto-detected) or CSV manifest.")],
    output: Annotated[str, typer.Option("--output", "-o", help="Folder (or URI) for the Parquet feature shards.")],
    engine: Annotated[Engine, typer.Option(help="local, or ray (Ray Data; the causalclip[ray] extra).")
                      ] = Engine.local,
    address: Annotated[str | None, typer.Option(help="--engine ray: cluster address, e.g. auto.")] = None,
    actors: Annotated[int | None, typer.Option(min=1, help="--engine ray: embedding actors (default: one per "
                                                           "GPU, else 1).")] = None,
    backbone: Annotated[str, typer.Option(help="open_clip model name.")] = "ViT-B-16",
    pretrained: Annotated[str, typer.Option(help="open_clip pretrained tag.")] = "openai",
    backbone_weights: Annotated[str | None, typer.Option(help="Local backbone weights file.")] = None,
    subset: Annotated[list[str] | None, typer.Option(help="Generators to use (repeatable).")] = None,
    layout: Annotated[str, typer.Option(help="auto, genimage, forensynths, cifake, realfake, manifest.")] = "auto",
    device: Annotated[str, typer.Option()] = "auto",
    batch_size: Annotated[int, typer.Option(min=1)] = 32,
    workers: Annotated[int, typer.Option(min=0, help="--engine local: decoding processes.")] = 2,
    cache_dir: Annotated[Path | None, typer.Option(help="--engine local: feature cache folder.")] = None,
) -> None:
    """Embed a labelled dataset with the frozen backbone into Parquet shards for `train/eval --features`."""
    try:
        from causalclip_cli.scanning.distributed import RayOptions, embed_command

        result = embed_command(str(data), output, engine=engine.value, layout=layout, subsets=subset or None,
                               backbone=backbone, pretrained=pretrained, backbone_weights=backbone_weights,
                               device=device, batch_size=batch_size, workers=workers, cache_dir=cache_dir,
                               ray_options=RayOptions(address=address, actors=actors))
    except CausalClipError as exc:
        raise _fail(exc) from None
    for path, reason in result.failed[:5] if engine == Engine.ray else []:  # the local engine warned already
        sys.stderr.write(f"warning: skipped {path}: {reason}\n")
    if len(result.failed) > 5 and engine == Engine.ray:
        sys.stderr.write(f"warning: {len(result.failed) - 5} more unreadable files skipped\n")
    typer.echo(json.dumps({"output": output, "embedded": result.embedded, "failed": len(result.failed),
                           "shards": result.shards, "seconds": round(result.seconds, 2)}, indent=2))


@app.command()
@_interruptible
def calibrate(
    data: Annotated[Path, typer.Option("--data", "-d", help="Dataset with held-out real images.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Calibrated copy of the checkpoint.")],
    checkpoint: Annotated[str | None, typer.Option("--checkpoint", "-c", autocompletion=_complete_checkpoint)] = None,
    target_fpr: Annotated[float, typer.Option(min=0.0, max=1.0, help="False-positive rate on real images.")
                          ] = 0.01,
    band_fpr: Annotated[str | None, typer.Option(help="Abstain band as two FPRs on real images, e.g. 0.15:0.01.")
                        ] = None,
    split: Annotated[str | None, typer.Option(help="Split whose real images are used (default: val).")] = None,
    exclude: Annotated[list[str] | None, typer.Option(
        help="Generator or kind of image (a manifest's domain) to leave out of calibration and the familiarity "
             "reference (repeatable).")] = None,
    layout: Annotated[str, typer.Option()] = "auto",
    device: Annotated[str, typer.Option()] = "auto",
    workers: Annotated[int, typer.Option(min=0)] = 2,
    cache_dir: Annotated[Path | None, typer.Option()] = None,
    scaling: Annotated[str, typer.Option(
        help="platt: map the head's scores to calibrated probabilities (fitted on the split's real and generated "
             "images) before choosing thresholds; none: keep the raw sigmoid; auto: platt when the split has 20 or "
             "more generated images.")] = "auto",
    per_domain: Annotated[bool, typer.Option(
        "--per-domain/--pooled",
        help="Choose the threshold (and band) so that every real domain (a manifest's domain column, else the "
             "generator) stays at or below the target rate, not just the pooled reals.")] = False,
    min_domain_reals: Annotated[int, typer.Option(
        min=1, help="--per-domain: domains with fewer real images than this do not set the threshold.")] = 15,
    familiarity: Annotated[str | None, typer.Option(
        help="Fit a familiarity reference on this split's features (e.g. train) and calibrate it on the "
             "calibration split: a 'fake' unlike all of them is labelled 'uncertain' (reason: unfamiliar).")
                           ] = None,
    unfamiliar_alpha: Annotated[float, typer.Option(
        min=0.0, max=1.0, help="Familiarity p-value below which a 'fake' becomes 'uncertain'.")] = 0.01,
) -> None:
    """Calibrate probabilities (Platt scaling) and choose the threshold on held-out real images for a target
    false-positive rate."""
    from causalclip_cli.training.experiment import CalibrateRequest, run_calibrate

    try:
        band = _parse_band(":".join(sorted((band_fpr or "").split(":")))) if band_fpr else None
        req = CalibrateRequest(data=data, output=output, checkpoint=checkpoint, target_fpr=target_fpr,
                               band_fpr=band, split=split, layout=layout, device=device, workers=workers,
                               cache_dir=cache_dir, scaling=scaling, per_domain=per_domain,
                               min_domain_reals=min_domain_reals, familiarity_split=familiarity,
                               unfamiliar_alpha=unfamiliar_alpha, exclude=exclude or None)
        result = run_calibrate(req)
    except CausalClipError as exc:
        raise _fail(exc) from None
    typer.echo(json.dumps(result, indent=2))


@app.command(name="train-purifier")
@_interruptible
def train_purifier_cmd(
    paths: Annotated[list[str], typer.Argument(help="Clean training images: files and folders (no labels needed).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Purifier file to write (.safetensors).")],
    checkpoint: Annotated[str | None, typer.Option("--checkpoint", "-c", autocompletion=_complete_checkpoint,
                                                   help="Detector the training attacks are crafted on.")] = None,
    limit: Annotated[int | None, typer.Option(min=1, help="Use at most N images (evenly spread).")] = None,
    eps: Annotated[str, typer.Option(help="Attack budgets of the training pairs, 1/255 units, comma-separated.")
                   ] = "2,4,8",
    steps: Annotated[int, typer.Option(min=1, help="PGD iterations per training example.")] = 5,
    iterations: Annotated[int, typer.Option(min=1, help="Optimiser steps of the denoiser.")] = 300,
    feature_weight: Annotated[float, typer.Option(
        min=0.0, help="Weight of the representation-guided loss (match the features the head reads, through the "
                      "frozen backbone; whole images, slower). 0: pixel L1 only.")] = 0.0,
    seed: Annotated[int, typer.Option()] = 0,
    device: Annotated[str, typer.Option()] = "auto",
    workers: Annotated[int, typer.Option(min=0)] = 2,
) -> None:
    """Train the learned purifier (a small residual denoising CNN) on PGD examples of the given images."""
    try:
        from causalclip_cli.inputs.data import discover
        from causalclip_cli.model.checkpoint import load_detector
        from causalclip_cli.robustness.adversarial import load_pixels
        from causalclip_cli.robustness.purify import PurifierTrainConfig, save_purifier, train_purifier

        try:
            eps_choices = tuple(float(e) for e in eps.split(",") if e.strip())
        except ValueError as exc:
            raise UsageError(f"--eps {eps!r}: expected numbers separated by commas") from exc
        if not eps_choices or any(not 0 < e <= 255 for e in eps_choices):
            raise UsageError(f"--eps {eps!r}: budgets must be in (0, 255]")
        if output.suffix != ".safetensors":
            raise UsageError(f"--output {output}: purifiers are .safetensors files")
        files = discover(paths).files
        if limit is not None and len(files) > limit:
            files = [files[int(i * len(files) / limit)] for i in range(limit)]
        det = load_detector(checkpoint, device=_device(device))
        pixels, _, failed = load_pixels(files, det, 16, workers)
        err = _stderr()
        for path, reason in failed[:5]:
            err.print(f"warning: skipped {path}: {reason}")
        err.print(f"train-purifier: {pixels.shape[0]} images, checkpoint {det.path.name}")
        cfg = PurifierTrainConfig(eps_choices=eps_choices, attack_steps=steps, iterations=iterations, seed=seed,
                                  feature_weight=feature_weight)
        net, summary = train_purifier(det, pixels, cfg, progress=lambda m: err.print(m))
        save_purifier(output, net, {"training": summary})
    except CausalClipError as exc:
        raise _fail(exc) from None
    typer.echo(json.dumps({"purifier": str(output), **summary}, indent=2))


def main() -> None:
    app()
