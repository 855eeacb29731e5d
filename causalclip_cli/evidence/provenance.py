"""Provenance evidence read from an image's metadata, in the same pass that decodes it.

What a file *says* about its origin — C2PA Content Credentials (through the Content Authenticity
Initiative's `c2pa-python`), IPTC/XMP `digitalSourceType`, EXIF camera fields, the text chunks that
Stable Diffusion tools write into PNGs, JPEG comments — summarised as a plain dict with stable keys:

    says      "ai-generated" | "ai-edited" | "camera" | "unknown"
    evidence  short human strings, strongest first ("C2PA (valid, OpenAI): trainedAlgorithmicMedia")
    c2pa      None, or {state, trusted, signer, issuer, claim_generator, digital_source_types, actions,
              agents, camera, failures, warnings}; state is "valid" (signature and content hashes verify),
              "untrusted" (they verify, the signing certificate is expired or otherwise unacceptable) or
              "invalid" (tampered, revoked or unreadable) or "remote" (the file only points to a manifest
              elsewhere, `remote_url`, which is never fetched); trusted is None (no trust list is loaded)
    digital_source_type   the IPTC term found in XMP outside C2PA, or None
    exif      None, or {make, model, software, datetime}
    generator None, or {tool, model, source}: an image-generation tool named in the file's text metadata
    comment   the JPEG comment (truncated), or None
    errors    metadata that could not be read (never fatal)

This is evidence beside the model's score, never an input to it: metadata is easy to strip and to
forge, and its absence says nothing. A C2PA manifest that fails its integrity checks (signature or
content hash mismatch) is reported with state "invalid" and never counts as camera or AI evidence;
a file whose manifest is invalid is not called "camera" on the strength of its EXIF either.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any, BinaryIO

from PIL import Image

__all__ = ["PROVENANCE_KEYS", "SAYS", "empty_provenance", "read_c2pa", "read_provenance", "short_evidence"]

SAYS = ("ai-generated", "ai-edited", "camera", "unknown")
PROVENANCE_KEYS = ("says", "evidence", "c2pa", "digital_source_type", "exif", "generator", "comment", "errors")

# IPTC digital source types (https://cv.iptc.org/newscodes/digitalsourcetype/), by what they claim.
_AI_GENERATED_TYPES = {"trainedAlgorithmicMedia", "algorithmicMedia"}
_AI_EDITED_TYPES = {"compositeWithTrainedAlgorithmicMedia", "compositeSynthetic", "algorithmicallyEnhanced"}
_CAPTURE_TYPES = {"digitalCapture", "computationalCapture", "negativeFilm", "positiveFilm", "print",
                  "compositeCapture", "screenCapture"}

_MAX_TEXT = 120
_RANK = {"ai-generated": 3, "ai-edited": 2, "camera": 1, "unknown": 0}


def empty_provenance() -> dict[str, Any]:
    """The record of a file with no provenance metadata at all."""
    return {"says": "unknown", "evidence": [], "c2pa": None, "digital_source_type": None, "exif": None,
            "generator": None, "comment": None, "errors": []}


def _clip(text: str, n: int = _MAX_TEXT) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[: n - 1] + "…"


def _term(value: object) -> str | None:
    """'http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia' → 'trainedAlgorithmicMedia'."""
    if not isinstance(value, str) or not value.strip():
        return None
    t = value.strip().rstrip("/").rsplit("/", 1)[-1]
    return t.removeprefix("c2pa.") or None


def _says_for_term(term: str | None) -> str:
    if term in _AI_GENERATED_TYPES:
        return "ai-generated"
    if term in _AI_EDITED_TYPES:
        return "ai-edited"
    if term in _CAPTURE_TYPES:
        return "camera"
    return "unknown"


# --------------------------------------------------------------------------- C2PA

_c2pa_context: Any = None
_c2pa_mimes: frozenset[str] | None = None
_c2pa_pid: int | None = None
_MIME = {"jpeg": "image/jpeg", "png": "image/png", "webp": "image/webp", "tiff": "image/tiff",
         "heic": "image/heic", "heif": "image/heif", "avif": "image/avif", "gif": "image/gif",
         "jxl": "image/jxl"}
# Verification stays offline: no OCSP requests, no fetching of remote manifests. c2pa-rs loads no trust
# list unless given one, so "signingCredential.untrusted" means "not checked against a trust list".
C2PA_SETTINGS = {"verify": {"ocsp_fetch": False, "remote_manifest_fetch": False}}


def _c2pa() -> tuple[Any, Any, frozenset[str]] | None:
    """(module, offline Context, supported MIME types), created once per process; None if not installed."""
    global _c2pa_context, _c2pa_mimes, _c2pa_pid
    try:
        import c2pa
    except ImportError:
        return None
    # One context per process: a context inherited through fork (DataLoader workers) does not work.
    if _c2pa_context is None or _c2pa_pid != os.getpid():
        _c2pa_context = c2pa.Context(c2pa.Settings.from_dict(C2PA_SETTINGS))
        _c2pa_mimes = frozenset(c2pa.Reader.get_supported_mime_types())
        _c2pa_pid = os.getpid()
    return c2pa, _c2pa_context, _c2pa_mimes or frozenset()


def _png_has_c2pa(fp: BinaryIO) -> bool:
    """Walk the PNG chunk headers (seeking over the data) looking for C2PA's caBX chunk."""
    fp.seek(8)
    while True:
        head = fp.read(8)
        if len(head) < 8:
            return False
        length, kind = int.from_bytes(head[:4], "big"), head[4:]
        if kind == b"caBX":
            return True
        if kind == b"IEND":
            return False
        fp.seek(length + 4, 1)


def _might_have_c2pa(fp: BinaryIO, fmt: str, img: Image.Image | None) -> bool:
    """Cheap pre-check so a plain camera JPEG never pays for a C2PA parse."""
    if fmt == "jpeg":
        applist = getattr(img, "applist", None)
        if applist is not None:  # Pillow has already parsed the markers: C2PA lives in APP11 (JUMBF)
            return any(marker == "APP11" for marker, _ in applist)
        return True
    if fmt == "png":
        try:
            return _png_has_c2pa(fp)
        except (OSError, ValueError):
            return True
    return True


_REMOTE_URL = re.compile(r"https?://\S+")

# Failure codes that do not touch the integrity of the claim or the content.
_SIGNER_NOT_LISTED = "signingCredential.untrusted"


def _classify_failures(results: dict) -> tuple[str, list[str], list[str], bool]:
    """(state, failures, warnings, on_trust_list) from c2pa's validation_results of the active manifest.

    state: "valid" (signature and content hashes verify), "untrusted" (they verify but the signing
    certificate is expired or otherwise not acceptable), "invalid" (tampered or unverifiable).
    """
    active = (results or {}).get("activeManifest") or {}
    failures = [f for f in active.get("failure") or [] if isinstance(f, dict)]
    matched = {(s.get("code", "").rsplit(".", 1)[0], s.get("url")) for s in active.get("success") or []
               if str(s.get("code", "")).endswith(".match")}
    state = "valid"
    bad: list[str] = []
    warn: list[str] = []
    listed = True
    for f in failures:
        code = str(f.get("code", ""))
        if code == _SIGNER_NOT_LISTED:
            listed = False
        elif code.startswith("signingCredential.") and code != "signingCredential.revoked":
            bad.append(code)
            if state == "valid":
                state = "untrusted"
        elif code.endswith(".mismatch") and (code.rsplit(".", 1)[0], f.get("url")) in matched:
            # The same hash assertion also verified: a structural note (e.g. where the exclusion range
            # sits in older Truepic files), not a content change.
            warn.append(code)
        elif code.startswith("assertion.action.") and code.endswith(".malformed"):
            warn.append(code)  # conformance of the action list, not integrity
        else:
            bad.append(code)
            state = "invalid"
    return state, sorted(set(bad)), sorted(set(warn)), listed


def _actions(manifest: dict) -> list[dict]:
    out: list[dict] = []
    for a in manifest.get("assertions") or []:
        if str(a.get("label", "")).startswith("c2pa.actions"):
            out += [x for x in (a.get("data") or {}).get("actions") or [] if isinstance(x, dict)]
    return out


def _agent(action: dict) -> str | None:
    agent = action.get("softwareAgent")
    if isinstance(agent, dict):
        agent = agent.get("name")
    return _clip(agent, 60) if isinstance(agent, str) and agent.strip() else None


def _claim_generator(manifest: dict) -> str | None:
    info = manifest.get("claim_generator_info")
    if isinstance(info, list) and info and isinstance(info[0], dict) and info[0].get("name"):
        version = info[0].get("version")
        return _clip(f"{info[0]['name']} {version}" if version else info[0]["name"], 80)
    gen = manifest.get("claim_generator")
    return _clip(gen.split(" ")[0], 80) if isinstance(gen, str) and gen else None


def _exif_assertion(manifest: dict) -> tuple[str | None, str | None]:
    make = model = None
    for a in manifest.get("assertions") or []:
        if a.get("label") == "stds.exif" and isinstance(a.get("data"), dict):
            for k, v in a["data"].items():
                key = k.split(":")[-1]
                if key == "Make" and isinstance(v, str):
                    make = v
                elif key == "Model" and isinstance(v, str):
                    model = v
    return make, model


def _manifest_chain(store: dict) -> list[tuple[dict, bool]]:
    """The active manifest, then the manifests of its ingredients (recursively), with a flag 'is active'."""
    manifests = store.get("manifests") or {}
    active = store.get("active_manifest")
    out: list[tuple[dict, bool]] = []
    seen: set[str] = set()
    todo = [active] if active else []
    while todo:
        label = todo.pop(0)
        if label in seen or label not in manifests:
            continue
        seen.add(label)
        m = manifests[label]
        out.append((m, label == active))
        for ing in m.get("ingredients") or []:
            ing_failures = ((ing.get("validation_results") or {}).get("activeManifest") or {}).get("failure") or []
            # An ingredient whose own manifest fails integrity checks contributes nothing.
            if any(not str(f.get("code", "")).startswith("signingCredential.") for f in ing_failures):
                continue
            if ing.get("active_manifest"):
                todo.append(ing["active_manifest"])
    return out


def summarise_c2pa(store: dict) -> dict[str, Any]:
    """The c2pa part of a provenance record from a manifest store as c2pa's Reader.json() gives it."""
    state, failures, warnings_, _ = _classify_failures(store.get("validation_results") or {})
    # Only c2pa's own "Trusted" verdict (which needs a configured trust list) says the signer is recognised.
    trusted = True if str(store.get("validation_state", "")).lower() == "trusted" and state != "invalid" else None
    chain = _manifest_chain(store)
    active = chain[0][0] if chain else {}
    sig = active.get("signature_info") or {}
    types: list[str] = []
    actions: list[str] = []
    agents: list[str] = []
    own_capture = False
    ingredient_ai = False
    for manifest, is_active in chain:
        for act in _actions(manifest):
            name = str(act.get("action", "")).removeprefix("c2pa.")
            if is_active and name and name not in actions:
                actions.append(name)
            term = _term(act.get("digitalSourceType"))
            if term and term not in types:
                types.append(term)
            if term and _says_for_term(term).startswith("ai"):
                agent = _agent(act)
                if agent and agent not in agents:
                    agents.append(agent)
                if not is_active:
                    ingredient_ai = True
            if is_active and _says_for_term(term) == "camera":
                own_capture = True
    make, model = _exif_assertion(active)
    says = "unknown"
    for t in types:
        s = _says_for_term(t)
        if _RANK[s] > _RANK[says]:
            says = s
    # A capture that pastes in a generated ingredient is an edited photo, not a generated image.
    if says == "ai-generated" and own_capture and ingredient_ai and not any(
            _says_for_term(_term(a.get("digitalSourceType"))) == "ai-generated" for a in _actions(active)):
        says = "ai-edited"
    if says == "unknown" and (make or model):
        says = "camera"
    if state == "invalid":
        says = "unknown"
    return {
        "state": state,
        "trusted": trusted,
        "signer": sig.get("issuer") or sig.get("common_name"),
        "issuer": sig.get("common_name"),
        "claim_generator": _claim_generator(active),
        "digital_source_types": types,
        "actions": actions,
        "agents": agents,
        "camera": _camera_name({"make": make, "model": model}),
        "failures": failures,
        "warnings": warnings_,
        "says": says,
    }


def read_c2pa(fp: BinaryIO, fmt: str, img: Image.Image | None = None) -> tuple[dict | None, str | None]:
    """(c2pa summary or None when the file has no manifest, error text or None). Never raises."""
    if not _might_have_c2pa(fp, fmt, img):
        return None, None
    lib = _c2pa()
    mime = _MIME.get(fmt)
    if lib is None or mime is None or mime not in lib[2]:
        return None, None
    c2pa, ctx, _ = lib
    try:
        fp.seek(0)
        reader = c2pa.Reader(mime, fp, context=ctx)
        try:
            store = json.loads(reader.json())
        finally:
            reader.close()
    except Exception as exc:  # noqa: BLE001 - hostile input: one file's problem
        text = " ".join(str(exc).split())
        if "ManifestNotFound" in type(exc).__name__ or "ManifestNotFound" in text or "no JUMBF" in text:
            return None, None
        remote = _REMOTE_URL.search(text) if "remote" in text.lower() else None
        summary = {"state": "remote" if remote else "invalid", "trusted": None, "signer": None, "issuer": None,
                   "claim_generator": None, "digital_source_types": [], "actions": [], "agents": [], "camera": None,
                   "failures": [] if remote else ["manifest.unreadable"], "warnings": [], "says": "unknown"}
        if remote:  # a manifest stored elsewhere, referenced from XMP: never fetched (no network at scan time)
            summary["remote_url"] = _clip(remote.group(0), 200)
            return summary, None
        return summary, f"C2PA manifest unreadable: {_clip(text, 100)}"
    return summarise_c2pa(store), None


def _c2pa_evidence(c: dict) -> str:
    who = c.get("signer") or "unknown signer"
    if c["state"] == "remote":
        return f"C2PA: remote manifest, not fetched ({c.get('remote_url')})"
    if c["state"] == "invalid":
        why = ", ".join(c["failures"]) or "unreadable"
        return f"C2PA (INVALID, {who}): {why}"
    state = {"valid": "valid", "untrusted": "untrusted signer"}.get(c["state"], c["state"])
    if c.get("trusted"):
        state = "trusted"
    what = ", ".join(c["digital_source_types"]) or (f"capture, {c['camera']}" if c.get("camera") else None)
    what = what or (", ".join(c["actions"][:4]) if c["actions"] else "no source type")
    if c.get("agents"):
        what += " via " + ", ".join(c["agents"][:2])
    return f"C2PA ({state}, {who}): {what}"


# --------------------------------------------------------------------------- text metadata

_A1111_MODEL = re.compile(r"(?:^|,\s*)Model:\s*([^,\n]+)")
_A1111_MARKERS = re.compile(r"\bSteps:\s*\d+.*\bSampler:", re.S)
_XMP_DST = re.compile(r"digitalsourcetype/(\w+)", re.I)
_XMP_TOOL = re.compile(r"CreatorTool(?:>|=\")([^<\"]{1,80})")
_LOADER_KEYS = ("ckpt_name", "unet_name", "model_name", "base_model", "model")
_MODEL_EXT = re.compile(r"\.(safetensors|ckpt|pt|pth|gguf|sft|bin)$", re.I)
_AI_SOFTWARE = re.compile(r"\b(midjourney|dall[-·]?e|stable[ -]?diffusion|novelai|comfyui|automatic1111|invokeai|"
                          r"fooocus|gpt-4o|chatgpt|imagen|ideogram|leonardo\.ai|nightcafe)\b", re.I)
# Keys of a generation-settings JSON; two or more of them (lower-cased) make a `parameters` chunk an SD tool's.
_SD_KEYS = {"prompt", "negative_prompt", "negativeprompt", "steps", "sampler", "sampler_name", "cfg_scale",
            "cfgscale", "seed", "scheduler", "guidance_scale"}


def _model_name(value: object) -> str | None:
    if isinstance(value, dict):
        value = value.get("name") or value.get("model_name") or value.get("key")
    if not isinstance(value, str) or not value.strip():
        return None
    return _clip(_MODEL_EXT.sub("", value.replace("\\", "/").rsplit("/", 1)[-1]), 60)


def _json(text: object) -> Any:
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    if not isinstance(text, str) or not text.lstrip().startswith(("{", "[")):
        return None
    try:
        return json.loads(text)
    except ValueError:
        return None


def _comfy_models(prompt: Any, workflow: Any) -> list[str]:
    models: list[str] = []
    if isinstance(prompt, dict):
        for node in prompt.values():
            if isinstance(node, dict) and "loader" in str(node.get("class_type", "")).lower():
                inputs = node.get("inputs") or {}
                for key in _LOADER_KEYS:
                    name = _model_name(inputs.get(key))
                    if name and name not in models:
                        models.append(name)
    if not models and isinstance(workflow, dict):
        for node in workflow.get("nodes") or []:
            if isinstance(node, dict) and "loader" in str(node.get("type", "")).lower():
                values = node.get("widgets_values") or []
                name = _model_name(values[0]) if isinstance(values, list) and values else None
                if name and name not in models:
                    models.append(name)
    return models


def _generator_from_text(info: dict, exif_comment: str | None) -> dict | None:
    """{tool, model, source} when the text metadata was written by an image-generation tool."""
    text = {str(k): v.decode("utf-8", "replace") if isinstance(v, bytes) else v for k, v in info.items()
            if isinstance(v, str | bytes) and k not in ("icc_profile", "exif", "xmp", "XML:com.adobe.xmp")}
    if "prompt" in text or "workflow" in text:
        prompt, workflow = _json(text.get("prompt")), _json(text.get("workflow"))
        if prompt is not None or workflow is not None:
            models = _comfy_models(prompt, workflow)
            kind = "workflow" if workflow is not None else "prompt"
            return {"tool": "ComfyUI", "model": ", ".join(models[:2]) or None, "source": f"ComfyUI {kind}"}
    if "invokeai_metadata" in text or "sd-metadata" in text or "Dream" in text or "invokeai_graph" in text:
        meta = _json(text.get("invokeai_metadata") or text.get("sd-metadata")) or {}
        model = meta.get("model") if isinstance(meta, dict) else None
        if model is None and isinstance(meta, dict):
            model = (meta.get("image") or {}).get("model") if isinstance(meta.get("image"), dict) else None
        return {"tool": "InvokeAI", "model": _model_name(model) or _model_name(meta.get("model_weights")
                                                                             if isinstance(meta, dict) else None),
                "source": "InvokeAI metadata"}
    if str(text.get("Software", "")).strip().lower().startswith("novelai"):
        return {"tool": "NovelAI", "model": _clip(text["Source"], 60) if text.get("Source") else None,
                "source": "NovelAI metadata"}
    for key in ("parameters", "fooocus_scheme", "generation_data"):
        if key not in text:
            continue
        params = text[key]
        js = _json(params)
        if isinstance(js, dict):
            sui = js.get("sui_image_params")
            if isinstance(sui, dict):
                return {"tool": "SwarmUI", "model": _model_name(sui.get("model")), "source": "SwarmUI parameters"}
            model = js.get("base_model") or js.get("Base Model") or js.get("model")
            fooocus = "base_model" in js or "Base Model" in js or key == "fooocus_scheme"
            if not fooocus and len(_SD_KEYS & {str(k).lower().replace(" ", "_") for k in js}) < 2:
                continue  # some other program's settings, not an image generator's
            tool = "Fooocus" if fooocus else "unknown tool"
            return {"tool": tool, "model": _model_name(model), "source": f"{tool} parameters"}
        if isinstance(params, str) and _A1111_MARKERS.search(params):
            m = _A1111_MODEL.search(params)
            return {"tool": "AUTOMATIC1111/Forge", "model": _model_name(m.group(1)) if m else None,
                    "source": "A1111 parameters"}
    if exif_comment and _A1111_MARKERS.search(exif_comment):
        m = _A1111_MODEL.search(exif_comment)
        return {"tool": "AUTOMATIC1111/Forge", "model": _model_name(m.group(1)) if m else None,
                "source": "A1111 parameters in EXIF UserComment"}
    return None


def _user_comment(raw: object) -> str | None:
    if isinstance(raw, str):
        return raw
    if not isinstance(raw, bytes) or len(raw) < 8:
        return None
    code, body = raw[:8], raw[8:]
    if code.startswith(b"UNICODE"):
        # A1111 writes UTF-16 big-endian; some tools little-endian. Pick the one with fewer NULs first.
        enc = "utf-16-be" if body[:1] == b"\x00" else "utf-16-le"
        return body.decode(enc, "replace").rstrip("\x00")
    return body.decode("utf-8", "replace").rstrip("\x00")


def _read_exif(img: Image.Image) -> tuple[dict | None, str | None]:
    try:
        exif = img.getexif()
    except Exception:  # noqa: BLE001 - malformed EXIF costs the EXIF only
        return None, None
    if not exif:
        return None, None

    def s(v: object) -> str | None:
        if isinstance(v, bytes):
            v = v.decode("utf-8", "replace")
        return _clip(v.strip("\x00 "), 80) if isinstance(v, str) and v.strip("\x00 ") else None

    sub: dict = {}
    try:
        sub = exif.get_ifd(0x8769) or {}
    except Exception:  # noqa: BLE001
        sub = {}
    fields = {"make": s(exif.get(271)), "model": s(exif.get(272)), "software": s(exif.get(305)),
              "datetime": s(sub.get(36867)) or s(exif.get(306))}
    comment = _user_comment(sub.get(37510))
    return (fields if any(fields.values()) else None), comment


def _camera_name(exif: dict) -> str | None:
    make, model = exif.get("make"), exif.get("model")
    if make and model and model.lower().startswith(make.split()[0].lower()):
        return model  # "Canon" + "Canon EOS 70D" → "Canon EOS 70D"
    return " ".join(x for x in (make, model) if x) or None


def read_provenance(img: Image.Image | None, fp: BinaryIO | None, fmt: str, *, c2pa: bool = True) -> dict:
    """All provenance evidence of one opened image. `img` must be loaded (PNG text after IDAT is read then);
    `fp` is the open file, read again from the start for C2PA. Never raises: problems go to `errors`."""
    out = empty_provenance()
    candidates: list[str] = []
    info = dict(getattr(img, "info", {}) or {}) if img is not None else {}

    if c2pa and fp is not None:
        try:
            summary, error = read_c2pa(fp, fmt, img)
        except Exception as exc:  # noqa: BLE001 - defensive: provenance never costs the scan
            summary, error = None, f"C2PA: {type(exc).__name__}: {_clip(str(exc), 80)}"
        if error:
            out["errors"].append(error)
        if summary is not None:
            says = summary.pop("says")
            out["c2pa"] = summary
            out["evidence"].append(_c2pa_evidence(summary))
            candidates.append(says)

    xmp = info.get("xmp") or info.get("XML:com.adobe.xmp")
    if isinstance(xmp, bytes):
        xmp = xmp.decode("utf-8", "replace")
    if isinstance(xmp, str):
        m = _XMP_DST.search(xmp)
        if m:
            term = m.group(1)
            out["digital_source_type"] = term
            out["evidence"].append(f"XMP: digitalSourceType {term}")
            candidates.append(_says_for_term(term))
        tool = _XMP_TOOL.search(xmp)
        if tool and _AI_SOFTWARE.search(tool.group(1)):
            out["evidence"].append(f"XMP: CreatorTool {_clip(tool.group(1), 60)}")
            candidates.append("ai-generated")

    exif, user_comment = _read_exif(img) if img is not None else (None, None)
    gen = _generator_from_text(info, user_comment)
    if gen is not None:
        out["generator"] = gen
        where = "PNG" if fmt == "png" else fmt.upper()
        out["evidence"].append(f"{where}: {gen['source']}" + (f", model {gen['model']}" if gen["model"] else ""))
        candidates.append("ai-generated")

    if exif is not None:
        out["exif"] = exif
        camera = _camera_name(exif)
        if exif.get("software") and _AI_SOFTWARE.search(exif["software"]):
            out["evidence"].append(f"EXIF: software {exif['software']}")
            candidates.append("ai-generated")
        elif camera:
            out["evidence"].append(f"EXIF: {camera}" + (f", {exif['datetime']}" if exif.get("datetime") else ""))
            candidates.append("camera")

    comment = info.get("comment")
    if isinstance(comment, bytes):
        comment = comment.decode("utf-8", "replace")
    if isinstance(comment, str) and comment.strip("\x00 \n"):
        out["comment"] = _clip(comment.strip("\x00 \n"))
        out["evidence"].append(f"JPEG comment: {_clip(comment, 60)!r}")
        if _A1111_MARKERS.search(comment) or _AI_SOFTWARE.search(comment):
            candidates.append("ai-generated")

    says = "unknown"
    for c in candidates:
        if _RANK[c] > _RANK[says]:
            says = c
    # A tampered manifest discredits the file's other camera claims (EXIF is easier to forge still).
    if says == "camera" and out["c2pa"] is not None and out["c2pa"]["state"] == "invalid":
        says = "unknown"
    out["says"] = says
    return out


def short_evidence(prov: dict | None, width: int = 60) -> str:
    """One short line for the table: the strongest piece of evidence, and how many more there are."""
    if not prov or not prov.get("evidence"):
        return "-"
    first = prov["evidence"][0]
    more = len(prov["evidence"]) - 1
    tail = f" (+{more})" if more else ""
    if len(first) + len(tail) > width:
        first = first[: max(10, width - len(tail) - 1)] + "…"
    return first + tail

