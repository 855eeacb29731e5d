"""`causalclip info`: what the tool will use, resolved without touching the network."""

from __future__ import annotations

import os
import platform
import sys

from causalclip_cli import __version__
from causalclip_cli.errors import CausalClipError


def _device_info() -> dict:
    import torch

    from causalclip_cli.settings import resolve_device

    cuda = torch.cuda.is_available()
    mps = bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
    return {
        "auto": resolve_device("auto"),
        "cuda": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if cuda else [],
        "mps": mps,
        "cpu_threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }


def gather_info(checkpoint: str | None = None, backbone_weights: str | None = None) -> dict:
    """One JSON-ready dict with stable keys: version, device, cache, checkpoint, backbone."""
    from causalclip_cli.model.backbones import BackboneSpec, locate
    from causalclip_cli.model.checkpoint import available_checkpoints, read_metadata, resolve_checkpoint
    from causalclip_cli.settings import cache_dir

    out: dict = {
        "version": __version__,
        "python": platform.python_version(),
        "device": _device_info(),
        "cache_dir": str(cache_dir()),
        "released_checkpoints": available_checkpoints(),
        "checkpoint": None,
        "backbone": None,
        "problems": [],
    }
    meta = None
    try:
        path = resolve_checkpoint(checkpoint)
        meta = read_metadata(path)
        out["checkpoint"] = {
            "path": str(path),
            "head": meta["head"],
            "trained_on_backbone": meta["backbone"],
            "decision": meta.get("decision"),
            "preprocess": meta.get("preprocess", {}),
            "features": meta.get("features", {"layers": [0], "aggregate": "mean"}),
            "scaling": meta.get("scaling", {"method": "none"}),
            "familiarity": meta.get("familiarity"),
            "training": meta.get("training", {}).get("summary", meta.get("training", {})),
            "created": meta.get("created"),
            "tool": meta.get("tool"),
        }
    except CausalClipError as exc:
        if checkpoint:  # an explicit checkpoint that fails is an error; a missing default is reported
            raise
        out["problems"].append(str(exc))
    b = (meta or {}).get("backbone", {})
    spec = BackboneSpec(name=b.get("name", "ViT-B-16"), pretrained=b.get("pretrained", "openai"),
                        weights=backbone_weights)
    try:
        found = locate(spec, allow_download=False)
        d = found.to_dict()
        d["cached"] = found.path is None or os.path.isfile(found.path)
        out["backbone"] = d
        if meta and b.get("sha256") and b["sha256"] != found.sha256:
            out["problems"].append("the checkpoint's head was trained on other backbone weights "
                                   f"({b['sha256'][:12]}) than those resolved ({(found.sha256 or '')[:12]})")
    except CausalClipError as exc:
        out["problems"].append(str(exc))
    return out


def _purifier_text(pu: dict) -> list[tuple[str, str]]:
    """Rows for `data["purifier"]` (robustness.purify.shipped_purifier_info; the CLI's `info` adds it, since this
    module may not import the robustness layer)."""
    rows = [("purifier", f"{pu['path']} (--purify learned)")]
    cfg = ", ".join(f"{k} {v}" for k, v in (pu.get("config") or {}).items())
    rows.append(("  network", f"{pu.get('kind')} ({cfg})"))
    heads = ", ".join(pu.get("heads") or []) or "?"
    rows.append(("  training", f"{pu.get('images') or str(pu.get('n_images')) + ' images'}; {pu.get('steps')} steps "
                               f"against {heads}"))
    fb, fa = pu.get("feature_error_before"), pu.get("feature_error_after")
    if isinstance(fb, float) and isinstance(fa, float):
        clean = pu.get("feature_error_clean")
        rows.append(("  feature error", f"adversarial {fb:.3f} → {fa:.3f} through it"
                                        + (f" (clean images {clean:.4f})" if isinstance(clean, float) else "")))
    bar = pu.get("ship_bar") or {}
    if bar.get("evaluated"):
        text = ("passed" if bar.get("passed") else "not passed") + f" ({bar.get('bar', '')}"
        text += f"; {bar['n_images']} held-out images)" if bar.get("n_images") else ")"
    else:
        text = f"not passed: {bar.get('reason', 'never checked')}"
    rows.append(("  ship bar", text))
    return rows


def render_info(data: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    con = Console(file=sys.stdout, highlight=False)
    t = Table(show_header=False, box=None, pad_edge=False)
    t.add_column(style="bold")
    t.add_column()
    dev = data["device"]
    t.add_row("version", f"causalclip {data['version']} (python {data['python']}, torch {dev['torch']})")
    gpus = ", ".join(dev["cuda"]) or "none"
    t.add_row("device", f"auto → {dev['auto']} (CUDA: {gpus}; MPS: {dev['mps']}; CPU threads: {dev['cpu_threads']})")
    t.add_row("cache", data["cache_dir"])
    ck = data["checkpoint"]
    if ck:
        tb = ck["trained_on_backbone"]
        t.add_row("checkpoint", ck["path"])
        t.add_row("  head", _head_text(ck["head"]))
        t.add_row("  trained on", f"{tb.get('config')} / {tb.get('pretrained')} from {tb.get('source')} "
                  f"(sha256 {str(tb.get('sha256'))[:12]})")
        t.add_row("  reads", _reads_text(ck))
        dec = ck.get("decision") or {}
        t.add_row("  decision", _decision_text(dec, ck.get("scaling") or {}))
        if ck.get("training"):
            t.add_row("  training", _training_text(ck["training"]))
    else:
        t.add_row("checkpoint", "none")
    bb = data["backbone"]
    if bb:
        state = "ready" if bb.get("cached") else "will be prepared on first use"
        t.add_row("backbone", f"{bb['config']} / {bb['pretrained']} from {bb['source']} ({state})")
        t.add_row("  file", str(bb.get("path")))
        t.add_row("  sha256", str(bb.get("sha256")))
    if data.get("purifier"):
        for k, v in _purifier_text(data["purifier"]):
            t.add_row(k, v)
    for p in data["problems"]:
        t.add_row("[yellow]problem[/]", p)
    con.print(t)


def _reads_text(ck: dict) -> str:
    pre, feats = ck.get("preprocess") or {}, ck.get("features") or {}
    mode = pre.get("mode", "resize")
    recipe = ("full-resolution crops" if mode == "native" else f"image resized to {pre.get('size', '?')}")
    views = int(pre.get("views", 1))
    if views > 1:
        recipe += f", {views} crops per image ({feats.get('aggregate', 'mean')} of logits)"
    layers = [int(k) for k in feats.get("layers", [0])]
    names = ["final embedding" if k == 0 else f"block {k}" if k > 0 else f"block {-k} patch mean" for k in layers]
    return f"{recipe}; {', '.join(names)}"


def _decision_text(dec: dict, scaling: dict | None = None) -> str:
    thr = dec.get("threshold")
    text = f"threshold {thr:.4f}" if isinstance(thr, int | float) else "threshold ?"
    if scaling and scaling.get("method") == "platt":
        text += f" on Platt-scaled probabilities (a {scaling.get('a', 1):.3f}, b {scaling.get('b', 0):.3f})"
    band = dec.get("uncertain")
    if band:
        text += f"; abstain band [{band[0]:.4f}, {band[1]:.4f}) labelled uncertain"
    cal = dec.get("calibration") or {}
    if cal.get("target_fpr") is not None:
        text += (f"; calibrated for {cal['target_fpr']:.1%} FPR on {cal.get('n_real', '?')} real images"
                 f" ({cal.get('data', '?')}, split {cal.get('split', '?')})")
    if cal.get("set_by"):
        text += (f", every real domain with ≥ {cal.get('min_domain_reals', '?')} images at or below it "
                 f"({len(cal.get('domains_used') or [])} domains; set by {cal['set_by']})")
    fam = cal.get("familiarity")
    if dec.get("unfamiliar_below") is not None and fam:
        text += (f"; a fake verdict on an image unlike the training data (familiarity p < {dec['unfamiliar_below']:g}:"
                 f" {fam.get('k', '?')}-NN distance to {fam.get('bank', '?')} training images) is labelled uncertain")
    region = dec.get("region")
    if region:
        text += (f"; with --explain, a map window scoring ≥ {region.get('threshold', '?')} labels the image fake "
                 "(reason region)")
    return text


def _head_text(head: dict) -> str:
    """What kind of head, in the words of the method, with the settings a reader would ask for."""
    dim, c = head.get("embed_dim", "?"), head.get("config") or {}
    if head.get("kind") == "causalclip":
        parts = ["Gumbel-sigmoid mask" if c.get("use_mask", True) else "no mask (ablation)"]
        parts += [f"HSIC λ2 {c['lambda2']:g}" if c.get("lambda2") else "no HSIC",
                  f"adversary α {c['alpha']:g}" if c.get("alpha") else "no adversary",
                  f"counterfactual drops β {c['beta']:g} at p {c.get('drop_p', 0):g}" if c.get("beta")
                  else "no counterfactual drops"]
        width = f"; hidden width {c['mask_hidden']}" if "mask_hidden" in c else ""
        return f"CausalCLIP ({', '.join(parts)}{width}) on {dim}-dim features"
    if head.get("kind") == "linear":
        return f"linear probe on {dim}-dim features"
    return f"{head.get('kind')} on {dim}-dim features"


def _training_text(tr: dict) -> str:
    parts = []
    if "n_train" in tr:
        parts.append(f"{tr['n_train']:,} train / {tr.get('n_val', 0):,} val images")
    if tr.get("augmented_views"):
        parts.append(f"{tr['augmented_views']} augmented views per training image, one drawn per epoch")
    if tr.get("balance") and tr["balance"] != "none":
        parts.append(f"{len(tr.get('kinds') or {})} kinds of images balanced ({tr['balance']})")
    if tr.get("hard_reals"):
        parts.append(f"{tr['hard_reals']} hardest training reals up-weighted in a second fit")
    if tr.get("probe_groups"):
        groups = tr["probe_groups"].split("|")
        parts.append(f"the average of {len(groups)} probes trained apart on layers {' | '.join(groups)}")
    if tr.get("generators"):
        parts.append(f"{len(tr['generators'])} generators ({tr.get('layout', '?')} layout)")
    if "best_epoch" in tr:
        parts.append(f"best epoch {tr['best_epoch']} of {tr.get('epochs_run', '?')}")
    if tr.get("data"):
        parts.append(f"data {tr['data']}")
    if tr.get("excluded"):
        parts.append(f"left out: {', '.join(tr['excluded'])}")
    return "; ".join(parts) or str(tr)[:300]
