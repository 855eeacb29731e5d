"""Train, evaluate and calibrate: datasets → cached features → heads → metrics and checkpoints."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import numpy as np

from causalclip_cli.errors import DataError, UsageError
from causalclip_cli.training.feature_store import FeatureSet


def _console():  # noqa: ANN202
    from rich.console import Console

    return Console(stderr=True, highlight=False)


def dataset_features(samples: list, embed, preprocess, backbone_id: str, *, cache_dir: Path | None,  # noqa: ANN001
                     transform=None, use_cache: bool = True, batch_size: int = 32,  # noqa: ANN001
                     workers: int = 2, label: str = "features", decoder: str = "cpu",
                     device: str = "cpu") -> FeatureSet:
    """Embeddings (through the cache) for labelled samples, with a progress bar on stderr. `decoder` 'gpu':
    JPEGs decoded by nvJPEG on `device` (gpu_decode.py), cached apart from CPU-decoded features."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    from causalclip_cli.settings import cache_dir as default_cache
    from causalclip_cli.training.features import FeatureCache, extract_features

    variant = preprocess.key() + (f"-{transform.name}" if transform is not None else "")
    if decoder == "gpu":  # pixels differ slightly from the CPU path's (gpu_decode.py): never mix the two
        variant += "-gpudecode"
    cache = FeatureCache(default_cache(cache_dir), backbone_id, variant) if use_cache else None
    paths = [s.path for s in samples]
    con = _console()
    with Progress(label, BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=con,
                  disable=not sys.stderr.isatty(), transient=True) as bar:
        task = bar.add_task(label, total=len(paths))
        ext = extract_features(paths, embed, preprocess, cache, batch_size=batch_size, workers=workers,
                               pixel_transform=transform, decoder=decoder, device=device,
                               progress=lambda done, total: bar.update(task, completed=done))
    if ext.computed:
        con.print(f"{label}: {ext.computed} embedded, {ext.cached} from cache")
    for path, reason in ext.failed[:5]:
        con.print(f"warning: skipped {path}: {reason}")
    if len(ext.failed) > 5:
        con.print(f"warning: {len(ext.failed) - 5} more unreadable files skipped")
    kept = [samples[i] for i in ext.ok]
    return FeatureSet(ext.features, np.array([s.label for s in kept], dtype=np.int64),
                      [s.generator for s in kept], [s.path for s in kept], ext.failed, [s.kind for s in kept])


def _discover(data: Path, layout: str, subsets: list[str] | None, exclude: list[str] | None = None):  # noqa: ANN202
    from causalclip_cli.inputs.datasets import discover_dataset

    manifest = data if data.suffix.lower() == ".csv" else None
    ds = discover_dataset(data, layout=layout, subsets=subsets, manifest=manifest, exclude=exclude)
    con = _console()
    con.print(f"dataset: {data} (layout: {ds.layout}, {len(ds.samples)} images, "
              f"generators: {', '.join(ds.generators())})" + (f"; left out: {', '.join(exclude)}" if exclude else ""))
    for w in ds.warnings:
        con.print(f"warning: {w}")
    return ds


# --------------------------------------------------------------------------- train


@dataclass
class TrainRequest:
    data: Path | None
    output: Path
    head: str = "causalclip"
    backbone: str = "ViT-B-16"
    pretrained: str = "openai"
    backbone_weights: str | None = None
    subsets: list[str] | None = None
    exclude: list[str] | None = None  # generators or kinds left out of training (datasets.leave_out)
    layout: str = "auto"
    epochs: int = 50
    batch_size: int = 256
    lr: float = 1e-4
    weight_decay: float = 0.0
    patience: int = 10
    seed: int = 0
    val_fraction: float = 0.1
    head_config: dict = field(default_factory=dict)
    jpeg_align: int | None = None
    augment: str | None = None
    device: str = "auto"
    workers: int = 2
    extract_batch_size: int = 32
    cache_dir: Path | None = None
    resume: bool = False
    features: str | None = None  # Parquet features from `causalclip embed`, instead of `data`
    recipe: str = "resize"  # preprocess mode: resize | native (full-resolution crops)
    crops: int = 1  # views per image scored at eval/scan time (training reads the centre view)
    layers: str = "final"  # taps.parse_layers syntax
    combine: str = "concat"  # concat | weighted (learned per-layer weights)
    aggregate: str = "mean"  # how an image's crop scores combine: mean | max (of logits)
    augment_views: int = 0  # cached augmented views per training image, one drawn per epoch
    balance: str = "none"  # domains.BALANCE: how kinds of images are weighted within each class
    hard_reals: float = 0.0  # share of training reals scored highest by a first fit, up-weighted in a second
    hard_weight: float = 3.0  # their weight multiplier
    probe_groups: str | None = None  # linear head only: "final|4,6,8|10,12", probes trained apart and averaged


def _train_weights(req: TrainRequest, y: np.ndarray, kinds: list[str], n_images: int) -> np.ndarray | None:
    """Sampling weights of the training rows (images, then any augmented copies, which weigh like images)."""
    from causalclip_cli.training.domains import balance_weights

    try:
        w = balance_weights(y[:n_images], kinds, req.balance)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if not 0.0 <= req.hard_reals < 1.0:
        raise UsageError(f"--hard-reals must be in [0, 1), not {req.hard_reals}")
    if w is not None and len(y) > n_images:
        w = np.concatenate([w, np.ones(len(y) - n_images)])
    return w


def _hard_reals(head, x: np.ndarray, y: np.ndarray, share: float) -> np.ndarray:  # noqa: ANN001
    """Row indices of the training reals a first fit scores highest: the photographs that look generated."""
    import torch

    x = x if x.ndim == 2 else x[:, 0]  # the clean view
    with torch.inference_mode():
        logits = head(torch.as_tensor(x, dtype=torch.float32)).numpy()
    reals = np.flatnonzero(y == 0)
    n = max(1, int(round(share * len(reals))))
    return reals[np.argsort(-logits[reals], kind="stable")[:n]]


def _kind_counts(fs: FeatureSet) -> dict[str, list[int]]:
    """{kind: [reals, fakes]} of a feature set."""
    out: dict[str, list[int]] = {}
    for k, label in zip(fs.kinds, fs.y.tolist(), strict=True):
        out.setdefault(k, [0, 0])[int(label)] += 1
    return dict(sorted(out.items()))


def _splits(ds, val_fraction: float, seed: int) -> tuple[list, list]:  # noqa: ANN001
    from causalclip_cli.inputs.datasets import make_splits

    ds = make_splits(ds, val_fraction=val_fraction, seed=seed)
    train, val = ds.split("train"), ds.split("val")
    if not train:
        raise DataError(f"{ds.root}: no training images found (splits: {sorted({s.split for s in ds.samples})})")
    if not val:
        raise DataError(f"{ds.root}: could not form a validation split")
    return train, val


def _probe_groups(req: TrainRequest, layers: tuple[int, ...], depth: int) -> list[int] | None:
    """--probe-groups → how many of the head's input segments each probe reads, or None."""
    if not req.probe_groups:
        return None
    from causalclip_cli.model.taps import parse_layers

    if req.head != "linear":
        raise UsageError("--probe-groups trains linear probes: it needs --head linear")
    try:
        groups = [parse_layers(part, depth) for part in req.probe_groups.split("|")]
    except ValueError as exc:
        raise UsageError(f"--probe-groups: {exc}") from None
    if tuple(k for g in groups for k in g) != layers:
        raise UsageError(f"--probe-groups {req.probe_groups!r} must split --layers {req.layers!r} into groups, "
                         "in the same order")
    return [len(g) for g in groups]


def run_train(req: TrainRequest) -> dict:
    from causalclip_cli.inputs.transforms import jpeg, random_augment
    from causalclip_cli.model.backbones import BackboneSpec, load_backbone
    from causalclip_cli.model.checkpoint import Decision, build_metadata, save_checkpoint
    from causalclip_cli.settings import resolve_device
    from causalclip_cli.training.metrics import per_group_metrics
    from causalclip_cli.training.trainer import TrainConfig, clear_resume, train_head, train_probe_groups

    if req.output.suffix != ".safetensors":
        raise UsageError(f"--output {req.output}: checkpoints are .safetensors files")
    device = resolve_device(req.device)
    store = _feature_store(req.data, req.features, req.augment or req.jpeg_align)
    ds = (store.dataset(req.subsets, req.exclude) if store
          else _discover(req.data, req.layout, req.subsets, req.exclude))
    train_s, val_s = _splits(ds, req.val_fraction, req.seed)
    bb = load_backbone(BackboneSpec(req.backbone, req.pretrained, req.backbone_weights), device=device)
    from causalclip_cli.model.taps import FeatureSpec, forward_layers, parse_layers, tower_shape

    shape = tower_shape(bb.tower)
    try:
        spec = FeatureSpec(layers=parse_layers(req.layers, shape.depth), aggregate=req.aggregate)
        recipe = bb.preprocess.with_views(req.recipe, req.crops)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    groups = _probe_groups(req, spec.layers, shape.depth)
    if store and (not spec.final_only or recipe.mode != "resize"):
        raise UsageError("--features holds final-layer embeddings of the resize recipe: "
                         "--layers/--recipe need --data")
    if req.augment_views and store:
        raise UsageError("--augment-views needs --data")
    if req.augment_views and req.augment:
        raise UsageError("--augment (one extra copy) and --augment-views cannot be combined")
    from causalclip_cli.model.heads import COMBINES

    if req.combine not in COMBINES:
        raise UsageError(f"--combine must be one of {', '.join(COMBINES)}, not {req.combine!r}")
    # Training reads one view per image (the centre crop); scoring uses `recipe.views` crops.
    train_recipe = recipe.with_views(recipe.mode, 1)
    cache_id = bb.info.id + (f"-{spec.key()}" if spec.key() else "")

    def embed(px):  # noqa: ANN001, ANN202
        import torch

        with torch.inference_mode():
            return forward_layers(bb.tower, px.to(device), spec.layers).float()

    align = jpeg(req.jpeg_align) if req.jpeg_align else None
    common = dict(embed=embed, preprocess=train_recipe, backbone_id=cache_id, cache_dir=req.cache_dir,
                  transform=align, batch_size=req.extract_batch_size, workers=req.workers)

    def features(samples: list, label: str, transform=None) -> FeatureSet:  # noqa: ANN001
        return layer_dataset_features(samples, bb.tower, spec.layers, bb.info.id, train_recipe,
                                      cache_dir=req.cache_dir, device=device, transform=transform,
                                      batch_size=req.extract_batch_size, workers=req.workers, label=label)

    if store:
        store.check(bb.info.id, bb.preprocess.key())
        tr, va = store.features(train_s), store.features(val_s)
    else:
        tr = features(train_s, "train features", align)
        va = features(val_s, "val features", align)
    x_tr, y_tr = tr.x, tr.y
    if req.augment_views:
        from causalclip_cli.inputs.transforms import compose, degrade

        views = [x_tr]
        for k in range(1, req.augment_views + 1):
            av = features(train_s, f"augmented view {k}", compose(align, degrade(k)))
            if av.paths != tr.paths:  # a file readable once but not twice: keep the images both have
                raise DataError("training images changed while their augmented views were computed")
            views.append(av.x)
        x_tr = np.stack(views, axis=1)
    if req.augment:
        from causalclip_cli.inputs.transforms import compose

        aug = compose(align, random_augment(req.augment, req.seed))
        common_aug = {**common, "transform": aug}
        au = dataset_features(train_s, label="augmented copies", use_cache=False, **common_aug)
        x_tr, y_tr = np.concatenate([x_tr, au.x]), np.concatenate([y_tr, au.y])
    if len(set(y_tr.tolist())) < 2:
        raise DataError("training data has only one class; need real and fake images")

    con = _console()

    def on_epoch(row: dict) -> None:
        ap = row.get("val_ap")
        probe = f"probe {row['group'] + 1}  " if "group" in row else ""
        con.print(f"{probe}epoch {row['epoch']:3d}  loss {row.get('loss_total', 0):.4f}  val acc "
                  f"{row['val_acc']:.4f}  val AP {ap if ap is None else round(ap, 4)}")

    cfg = TrainConfig(epochs=req.epochs, batch_size=req.batch_size, lr=req.lr, weight_decay=req.weight_decay,
                      patience=req.patience, seed=req.seed, device=device)
    hc = req.head_config if req.head == "causalclip" else {}
    hc = {**hc, "segments": shape.dims(spec.layers) if not spec.final_only else [], "combine": req.combine}
    weights = _train_weights(req, y_tr, tr.kinds, len(tr.y))

    def fit(w: np.ndarray | None, resume: bool):  # noqa: ANN202
        if groups:  # several short fits: an interrupted one starts again (nothing half-written is kept)
            return train_probe_groups(groups, hc["segments"] or shape.dims(spec.layers), x_tr, y_tr, va.x, va.y,
                                      cfg, on_epoch=on_epoch, weights=w)
        return train_head(req.head, hc, x_tr, y_tr, va.x, va.y, cfg,
                          resume_from=req.output, resume=resume, on_epoch=on_epoch, weights=w)

    result = fit(weights, req.resume)
    import torch

    hard = None
    if req.hard_reals:
        hard = _hard_reals(result.head, tr.x, tr.y, req.hard_reals)
        con.print(f"second fit: {len(hard)} hardest training reals weighted x{req.hard_weight:g}")
        weights = np.ones(len(y_tr)) if weights is None else weights.copy()
        weights[hard] *= req.hard_weight
        clear_resume(req.output)
        result = fit(weights, False)

    with torch.inference_mode():
        probs = torch.sigmoid(result.head(torch.as_tensor(va.x))).numpy()
    val_metrics = per_group_metrics(va.y, probs, va.groups, 0.5)
    training = {
        "summary": {"data": str(req.features or req.data), "layout": ds.layout, "generators": ds.generators(),
                    "n_train": int(len(tr.y)), "n_val": int(len(va.y)),
                    "n_train_fake": int(tr.y.sum()), "n_val_fake": int(va.y.sum()),
                    "augmented_copies": int(len(y_tr) - len(tr.y)), "jpeg_align": req.jpeg_align,
                    "augmented_views": req.augment_views, "balance": req.balance,
                    "kinds": _kind_counts(tr), "hard_reals": 0 if hard is None else int(len(hard)),
                    "probe_groups": req.probe_groups, "excluded": req.exclude or [],
                    "best_epoch": result.best_epoch, "epochs_run": max((r["epoch"] for r in result.history), default=0),
                    "stopped_early": result.stopped_early, "seconds": round(result.seconds, 2)},
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in req.__dict__.items()},
        "val_metrics": val_metrics,
        "history": result.history,
    }
    meta = build_metadata(result.head, bb.info.to_dict(), Decision(0.5), training, preprocess=recipe.to_dict(),
                          features=spec.to_dict())
    if req.jpeg_align:
        meta["preprocess"] = {**meta["preprocess"], "jpeg_align": req.jpeg_align}
    save_checkpoint(req.output, result.head, meta)
    clear_resume(req.output)
    overall = val_metrics["overall"]

    def fmt(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.4f}"

    con.print(f"wrote {req.output} (best epoch {result.best_epoch}, val AP {fmt(overall.get('ap'))}, "
              f"val acc {fmt(overall.get('accuracy'))})")
    return {"checkpoint": str(req.output), **training["summary"], "val": val_metrics["overall"]}


# --------------------------------------------------------------------------- eval


@dataclass
class EvalRequest:
    data: Path | None
    checkpoint: str | None = None
    split: str | None = None
    subsets: list[str] | None = None
    layout: str = "auto"
    threshold: float | None = None
    perturb: str | None = None
    plot: Path | None = None
    device: str = "auto"
    workers: int = 2
    batch_size: int = 32
    cache_dir: Path | None = None
    backbone_weights: str | None = None
    features: str | None = None  # Parquet features from `causalclip embed`, instead of `data`
    precision: str = "auto"  # of the tower (precision.py)
    decode: str = "auto"  # auto|cpu|gpu (gpu_decode.choose_decoder); conditions with a pixel transform use the CPU


def _feature_store(data: Path | None, features: str | None, pixel_work: object):  # noqa: ANN202
    """The Parquet features to use, or None for `data`; exactly one of them must be given."""
    if (data is None) == (features is None):
        raise UsageError("give either --data or --features")
    if features is None:
        return None
    if pixel_work:
        raise UsageError("--features holds clean embeddings: --augment, --jpeg-align and --perturb need --data")
    from causalclip_cli.training.feature_store import open_features

    store = open_features(features)
    _console().print(f"features: {features} ({len(store.samples)} images, backbone {store.meta.get('backbone_id')})")
    return store


def _pick_split(ds, split: str | None) -> tuple[str, list]:  # noqa: ANN001
    names = sorted({s.split for s in ds.samples})
    if split:
        chosen = ds.split(split)
        if not chosen:
            raise DataError(f"no images in split {split!r} (splits found: {', '.join(names)})")
        return split, chosen
    for name in ("test", "val"):
        if ds.split(name):
            return name, ds.split(name)
    return "all", list(ds.samples)


def superset_layers(tower, layers: tuple[int, ...], base_id: str, preprocess, transform,  # noqa: ANN001
                    cache_dir: Path | None) -> tuple[int, ...]:
    """The layers to extract for a head that reads `layers`: those layers — or every layer, when a cache of
    every layer already exists for this recipe. One pass computes them all, so a layer subset is a slice of
    that cache: trying `--layers 4:12` after `--layers all` embeds nothing again."""
    from causalclip_cli.model.taps import FeatureSpec, tower_shape
    from causalclip_cli.settings import cache_dir as default_cache
    from causalclip_cli.training.features import cache_folder

    full = (0, *range(1, tower_shape(tower).depth + 1))
    if tuple(layers) == full or set(layers) - set(full):
        return tuple(layers)
    if set(layers) == set(full):
        return full
    variant = preprocess.key() + (f"-{transform.name}" if transform is not None else "")
    folder = cache_folder(default_cache(cache_dir), f"{base_id}-{FeatureSpec(full).key()}", variant)
    return full if folder.is_dir() else tuple(layers)


def layer_dataset_features(samples: list, tower, layers: tuple[int, ...], base_id: str, preprocess, *,  # noqa: ANN001
                           cache_dir: Path | None, device: str, transform=None, batch_size: int = 32,  # noqa: ANN001
                           workers: int = 2, label: str = "features", autocast=None,  # noqa: ANN001
                           decoder: str = "cpu") -> FeatureSet:
    """dataset_features for a head reading `layers` of `tower` (taps.py), through the cache of those layers or
    of all of them (superset_layers), sliced to `layers`."""
    import contextlib

    import torch

    from causalclip_cli.model.taps import FeatureSpec, forward_layers, select_layers, tower_shape

    extract = superset_layers(tower, layers, base_id, preprocess, transform, cache_dir)
    key = FeatureSpec(extract).key()

    def embed(px):  # noqa: ANN001, ANN202
        cast = autocast() if autocast is not None else contextlib.nullcontext()
        with torch.inference_mode(), cast:
            return forward_layers(tower, px.to(device), extract).float()

    fs = dataset_features(samples, embed, preprocess, base_id + (f"-{key}" if key else ""), cache_dir=cache_dir,
                          transform=transform, batch_size=batch_size, workers=workers, label=label,
                          decoder=decoder, device=device)
    if extract != tuple(layers) and fs.x.size:
        fs.x = select_layers(fs.x, extract, layers, tower_shape(tower))
    return fs


def _detector_features(det, samples, req, transform=None, decoder: str = "cpu") -> FeatureSet:  # noqa: ANN001
    if getattr(det, "precision", "fp32") == "int8" or not hasattr(det.backbone.tower, "transformer"):
        return dataset_features(samples, det.embed, det.preprocess, det.feature_id, cache_dir=req.cache_dir,
                                transform=transform, batch_size=req.batch_size, workers=req.workers,
                                decoder=decoder, device=det.device)
    import torch

    from causalclip_cli.model.precision import autocast_dtype

    amp = autocast_dtype(getattr(det, "precision", "fp32"))
    cast = (lambda: torch.autocast(det.device.split(":", 1)[0], dtype=amp)) if amp is not None else None
    return layer_dataset_features(samples, det.backbone.tower, det.features.layers, det.backbone.info.id,
                                  det.preprocess, cache_dir=req.cache_dir, device=det.device, transform=transform,
                                  batch_size=req.batch_size, workers=req.workers, autocast=cast, decoder=decoder)


def _probs(det, x: np.ndarray) -> np.ndarray:  # noqa: ANN001
    return det.scores(x).numpy()


def run_eval(req: EvalRequest) -> dict:
    from causalclip_cli.inputs.gpu_decode import check_decode, choose_decoder
    from causalclip_cli.inputs.transforms import jpeg, parse_perturbations
    from causalclip_cli.model.checkpoint import load_detector
    from causalclip_cli.settings import resolve_device
    from causalclip_cli.training.metrics import per_group_metrics

    perturbations = parse_perturbations(req.perturb)
    device = resolve_device(req.device)
    check_decode(req.decode, device)
    det = load_detector(req.checkpoint, device=device, backbone_weights=req.backbone_weights,
                        precision=req.precision)
    store = _feature_store(req.data, req.features, perturbations)
    ds = store.dataset(req.subsets) if store else _discover(req.data, req.layout, req.subsets)
    split, samples = _pick_split(ds, req.split)
    thr = det.decision.threshold if req.threshold is None else req.threshold
    align_q = det.metadata.get("preprocess", {}).get("jpeg_align")
    align = jpeg(int(align_q)) if align_q else None
    from causalclip_cli.inputs.transforms import compose

    report: dict = {"checkpoint": str(det.path), "model": det.model_id, "data": str(req.features or req.data),
                    "layout": ds.layout, "split": split, "threshold": thr, "conditions": {}}
    curves = {}
    if store:
        store.check(det.backbone.info.id, det.preprocess.key() + (f"-{align.name}" if align else ""))
    for t in [None, *perturbations]:
        transform = compose(align, t)
        decoder = "cpu"
        if not store:
            decoder, note = choose_decoder(req.decode, det.device, det.preprocess, pixel_transform=transform)
            if note:
                _console().print(f"note: {note}")
        fs = store.features(samples) if store else _detector_features(det, samples, req, transform, decoder)
        probs = _probs(det, fs.x)
        name = "clean" if t is None else t.name
        report["conditions"][name] = per_group_metrics(fs.y, probs, fs.groups, thr)
        report["conditions"][name]["_unreadable"] = len(fs.failed)
        curves[name] = (fs.y, probs)
    if req.plot:
        from causalclip_cli.training.plots import write_curves

        report["plots"] = write_curves(curves, req.plot)
    return report


def render_eval(report: dict, fmt: str, stream: TextIO) -> None:
    cols = ["n", "n_real", "n_fake", "accuracy", "real_accuracy", "fake_accuracy", "ap", "auc",
            "tpr_at_fpr_1", "tpr_at_fpr_5"]
    if fmt == "json":
        stream.write(json.dumps(report, indent=2) + "\n")
        return
    rows = []
    for cond, groups in report["conditions"].items():
        for g, m in groups.items():
            if g.startswith("_"):
                continue
            rows.append([cond, g] + [m.get(c) for c in cols])
    if fmt == "csv":
        import csv

        w = csv.writer(stream)
        w.writerow(["condition", "generator", *cols])
        w.writerows(rows)
        return
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"{report['model']} on {report['data']} [{report['split']}] @ threshold "
              f"{report['threshold']:.3f}")
    for c in ["condition", "generator", "n", "real", "fake", "acc", "real acc", "fake acc", "AP", "AUC",
              "TPR@1%", "TPR@5%"]:
        t.add_column(c, justify="left" if c in ("condition", "generator") else "right")

    def fmt_v(v: object) -> str:
        if v is None:
            return "–"
        return f"{v:.3f}" if isinstance(v, float) else str(v)

    for r in rows:
        t.add_row(*[fmt_v(v) for v in r], end_section=r[1] == "mean")
    Console(file=stream, highlight=False, width=max(120, Console(file=stream).width)).print(t)


# --------------------------------------------------------------------------- calibrate


@dataclass
class CalibrateRequest:
    data: Path
    output: Path
    checkpoint: str | None = None
    target_fpr: float = 0.01
    band_fpr: tuple[float, float] | None = None  # abstain band edges as FPRs on real images
    split: str | None = None
    layout: str = "auto"
    device: str = "auto"
    workers: int = 2
    batch_size: int = 32
    cache_dir: Path | None = None
    scaling: str = "auto"  # platt: fit sigmoid(a·logit + b) on the split's reals and fakes; none; auto: platt
    # when the split has at least 20 generated images, else none
    per_domain: bool = False  # threshold (and band) by the worst real domain, not the pooled reals
    min_domain_reals: int = 15  # domains with fewer calibration reals do not set the threshold
    familiarity_split: str | None = None  # fit a familiarity reference on this split's features (e.g. train)
    unfamiliar_alpha: float = 0.01  # a `fake` with a familiarity p-value below this becomes `uncertain`
    exclude: list[str] | None = None  # generators or kinds left out of calibration and the familiarity reference


def _fit_familiarity(det, ds, req: CalibrateRequest, held_out: list):  # noqa: ANN001, ANN202
    """A familiarity reference from `req.familiarity_split`'s features, calibrated on the held-out samples."""
    from causalclip_cli.model.familiarity import Familiarity

    if not 0.0 < req.unfamiliar_alpha < 1.0:
        raise UsageError(f"--unfamiliar-alpha must be in (0, 1), not {req.unfamiliar_alpha}")
    train = ds.split(req.familiarity_split)
    if not train:
        raise DataError(f"no images in split {req.familiarity_split!r} to build the familiarity reference from")
    overlap = {s.path for s in train} & {s.path for s in held_out}
    if overlap:
        raise UsageError("the familiarity reference and its calibration must use different splits")
    tr = _detector_features(det, train, req)
    ho = _detector_features(det, held_out, req)
    try:
        fam = Familiarity.fit(tr.x if tr.x.ndim == 2 else tr.x.mean(1)).calibrate(ho.x)
    except ValueError as exc:
        raise DataError(str(exc)) from None
    smallest = 1.0 / (len(fam.calibration) + 1)
    if req.unfamiliar_alpha <= smallest:
        raise UsageError(f"--unfamiliar-alpha {req.unfamiliar_alpha:g} is at or below the smallest p-value "
                         f"{len(fam.calibration)} calibration images can give ({smallest:.2g}): the rule would never "
                         "fire", hint=f"use a level above {smallest:.2g}, e.g. {2 * smallest:.2g}")
    return fam


def _domain_table(decision, probs: np.ndarray, kinds: list[str], p_familiar: np.ndarray | None) -> dict:  # noqa: ANN001
    """Per real domain of the calibration split: images, share labelled fake / uncertain at `decision`."""
    from causalclip_cli.training.domains import per_domain_shares

    q = [None] * len(probs) if p_familiar is None else [float(v) for v in p_familiar]
    labels = [decision.verdict(float(p), f)[0] for p, f in zip(probs, q, strict=True)]
    return per_domain_shares(labels, kinds)


def fit_platt(logits: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """Logistic regression of the label on the head's logit: probabilities that mean what they say on data
    like the calibration split, without changing any ranking (a > 0). Weak regularisation (C=100)."""
    from sklearn.linear_model import LogisticRegression

    z = np.clip(np.asarray(logits, dtype=np.float64), -50, 50).reshape(-1, 1)
    lr = LogisticRegression(C=100.0, max_iter=1000).fit(z, np.asarray(labels))
    a, b = float(lr.coef_[0, 0]), float(lr.intercept_[0])
    if a <= 0:
        raise DataError("probability scaling failed: the head's scores do not rank this split's fakes above its "
                        "reals", hint="use --scaling none, or calibrate on data the head separates")
    return a, b


def run_calibrate(req: CalibrateRequest) -> dict:
    from causalclip_cli.model.checkpoint import Decision, load_detector, load_head, save_checkpoint
    from causalclip_cli.settings import resolve_device

    det = load_detector(req.checkpoint, device=resolve_device(req.device))
    ds = _discover(req.data, req.layout, None, req.exclude)
    split, samples = _pick_split(ds, req.split or ("val" if ds.split("val") else None))
    reals = [s for s in samples if s.label == 0]
    if len(reals) < 20:
        raise DataError(f"only {len(reals)} real images in split {split!r}; calibration needs at least 20")
    if req.scaling not in ("auto", "platt", "none"):
        raise UsageError(f"--scaling must be auto, platt or none, not {req.scaling!r}")
    head, meta = load_head(det.path)
    fakes = [s for s in samples if s.label == 1]
    scaling = req.scaling if req.scaling != "auto" else ("platt" if len(fakes) >= 20 else "none")
    if scaling == "platt":
        if len(fakes) < 20:
            raise DataError(f"only {len(fakes)} generated images in split {split!r}; --scaling platt needs at "
                            "least 20 (or use --scaling none)")
        both = _detector_features(det, reals + fakes, req)
        a, b = fit_platt(det.logits(both.x).cpu().numpy(), both.y)
        meta["scaling"] = {"method": "platt", "a": a, "b": b, "n_real": int((both.y == 0).sum()),
                           "n_fake": int(both.y.sum()), "data": str(req.data), "split": split}
        det.metadata["scaling"] = meta["scaling"]
    fs = _detector_features(det, reals, req)
    probs = _probs(det, fs.x)
    from causalclip_cli.training.domains import choose_threshold

    kinds = fs.kinds
    thr, band, calib = choose_threshold(probs, kinds, req.target_fpr, req.band_fpr, per_domain=req.per_domain,
                                        min_images=req.min_domain_reals)
    if req.band_fpr is None:
        band = Decision.from_dict(meta.get("decision", {})).uncertain
    calib.update(data=str(req.data), split=split, excluded=req.exclude or [])
    achieved, set_by = calib["achieved_fpr"], calib.get("set_by")
    familiarity = det.familiarity
    if req.familiarity_split:
        familiarity = _fit_familiarity(det, ds, req, samples)
        calib["familiarity"] = {"train_split": req.familiarity_split, "calibration_split": split,
                                "unfamiliar_below": req.unfamiliar_alpha, **familiarity.describe()}
    below = req.unfamiliar_alpha if familiarity is not None else None
    decision = Decision(thr, band, calib, below)
    p_real = familiarity.p_values(fs.x) if familiarity is not None else None
    calib["domains"] = _domain_table(decision, probs, kinds, p_real)
    meta["decision"] = decision.to_dict()
    if req.output.resolve() == det.path.resolve():
        raise UsageError("--output must differ from the checkpoint (a calibrated copy is written)")
    save_checkpoint(req.output, head, meta, familiarity)
    _console().print(f"wrote {req.output}: threshold {thr:.4f} (FPR {achieved:.4f} on {len(probs)} real images"
                     + (f"; set by {set_by}" if req.per_domain else "") + ")")
    return {"checkpoint": str(req.output), "threshold": thr, **calib}
