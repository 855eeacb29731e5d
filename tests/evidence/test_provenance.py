"""Provenance evidence: C2PA fixtures from ../shared/data/provenance, and XMP/EXIF/PNG-chunk cases built here."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image, PngImagePlugin

from causalclip_cli.evidence.provenance import PROVENANCE_KEYS, SAYS, read_provenance, short_evidence, summarise_c2pa
from causalclip_cli.inputs.data import ScanDataset, decode_image
from causalclip_cli.model.preprocess import Preprocess


def _prov(data: bytes, fmt: str) -> dict:
    buf = io.BytesIO(data)
    img = Image.open(buf)
    img.load()
    return read_provenance(img, buf, fmt)


def _png(**text: str) -> bytes:
    info = PngImagePlugin.PngInfo()
    for k, v in text.items():
        info.add_text(k, v)
    buf = io.BytesIO()
    Image.new("RGB", (24, 24), (10, 20, 30)).save(buf, "PNG", pnginfo=info)
    return buf.getvalue()


def _jpeg(**kw) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (24, 24), (10, 20, 30)).save(buf, "JPEG", **kw)
    return buf.getvalue()


def _xmp(term: str) -> bytes:
    return (
        '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        '<rdf:Description xmlns:Iptc4xmpExt="http://iptc.org/std/Iptc4xmpExt/2008-02-29/" '
        f'Iptc4xmpExt:DigitalSourceType="http://cv.iptc.org/newscodes/digitalsourcetype/{term}"/>'
        "</rdf:RDF></x:xmpmeta>"
    ).encode()


# --------------------------------------------------------------------------- C2PA fixtures (real files)

FIXTURES = {
    # file: (says, c2pa state, signer)
    "c2pa-capture-nikon-z9.jpg": ("camera", "untrusted", "NIKON CORPORATION"),  # certificate expired
    "c2pa-capture-pixel5.jpg": ("camera", "valid", "Truepic"),
    "c2pa-openai-gpt-4o.png": ("ai-generated", "untrusted", "OpenAI"),
    "c2pa-trained-algorithmic-media.jpg": ("ai-generated", "valid", "Adobe Inc."),
    "c2pa-adobe-test-CA.jpg": ("unknown", "valid", "C2PA Test Signing Cert"),
    "c2pa-adobe-test-bad-signature.jpg": ("unknown", "invalid", "C2PA Test Signing Cert"),
}


@pytest.fixture(scope="module")
def provenance_dir(shared_data: Path) -> Path:
    d = shared_data / "provenance"
    if not d.is_dir():
        pytest.skip(f"{d} not present")
    return d


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_c2pa_fixtures_say_the_right_thing(provenance_dir: Path, name: str) -> None:
    says, state, signer = FIXTURES[name]
    prov = decode_image(provenance_dir / name, provenance=True).provenance
    assert tuple(prov) == PROVENANCE_KEYS
    assert prov["says"] == says, prov["evidence"]
    assert prov["c2pa"]["state"] == state
    assert prov["c2pa"]["signer"] == signer
    assert prov["evidence"][0].startswith("C2PA (")
    json.dumps(prov)  # plain data only


def test_c2pa_details(provenance_dir: Path) -> None:
    gpt = decode_image(provenance_dir / "c2pa-openai-gpt-4o.png", provenance=True).provenance
    assert "trainedAlgorithmicMedia" in gpt["c2pa"]["digital_source_types"]
    assert gpt["c2pa"]["claim_generator"] == "ChatGPT"
    assert "GPT-4o" in gpt["c2pa"]["agents"]
    assert gpt["evidence"][0] == "C2PA (untrusted signer, OpenAI): trainedAlgorithmicMedia via GPT-4o"
    assert "signingCredential.expired" in gpt["c2pa"]["failures"]

    adobe = decode_image(provenance_dir / "c2pa-trained-algorithmic-media.jpg", provenance=True).provenance
    assert adobe["c2pa"]["actions"] == ["opened", "cropped", "edited"]
    assert "Adobe Firefly" in adobe["c2pa"]["agents"]

    nikon = decode_image(provenance_dir / "c2pa-capture-nikon-z9.jpg", provenance=True).provenance
    assert nikon["exif"]["model"] == "NIKON Z 9"
    assert any(e.startswith("EXIF: NIKON Z 9") for e in nikon["evidence"])


def test_tampered_manifest_is_invalid_and_never_evidence(provenance_dir: Path) -> None:
    prov = decode_image(provenance_dir / "c2pa-adobe-test-bad-signature.jpg", provenance=True).provenance
    assert prov["c2pa"]["state"] == "invalid"
    assert "claimSignature.mismatch" in prov["c2pa"]["failures"]
    assert prov["says"] == "unknown"
    assert prov["evidence"][0].startswith("C2PA (INVALID, ")


def test_invalid_manifest_discredits_exif_camera_claim() -> None:
    store = {
        "active_manifest": "m1",
        "manifests": {"m1": {"signature_info": {"issuer": "Cam Co"}, "assertions": [
            {"label": "stds.exif", "data": {"tiff:Make": "Canon", "tiff:Model": "EOS"}},
            {"label": "c2pa.actions", "data": {"actions": [
                {"action": "c2pa.created",
                 "digitalSourceType": "http://cv.iptc.org/newscodes/digitalsourcetype/digitalCapture"}]}}]}},
        "validation_results": {"activeManifest": {"success": [], "failure": [
            {"code": "assertion.dataHash.mismatch", "url": "self#jumbf=x/c2pa.hash.data"}]}},
    }
    summary = summarise_c2pa(store)
    assert summary["state"] == "invalid" and summary["says"] == "unknown"
    # The same manifest intact reads as a capture.
    store["validation_results"]["activeManifest"]["failure"] = []
    assert summarise_c2pa(store)["says"] == "camera"
    # A hash mismatch on an assertion that also verified is a structural warning, not tampering.
    store["validation_results"]["activeManifest"] = {
        "success": [{"code": "assertion.dataHash.match", "url": "u"}],
        "failure": [{"code": "assertion.dataHash.mismatch", "url": "u"}]}
    s = summarise_c2pa(store)
    assert s["state"] == "valid" and s["warnings"] == ["assertion.dataHash.mismatch"]


def test_c2pa_reading_stays_offline_and_quick(provenance_dir: Path) -> None:
    """OCSP and remote manifests are never fetched: c2pa reports the OCSP check as skipped, and reading every
    fixture in a fresh process takes seconds (a network attempt without network would hang or fail)."""
    code = (
        "import json, sys, c2pa\n"
        "from causalclip_cli.evidence.provenance import C2PA_SETTINGS\n"
        "ctx = c2pa.Context(c2pa.Settings.from_dict(C2PA_SETTINGS))\n"
        "with open(sys.argv[1], 'rb') as fp:\n"
        "    store = json.loads(c2pa.Reader('image/jpeg', fp, context=ctx).json())\n"
        "print(json.dumps(store['validation_results']['activeManifest']['informational']))\n"
    )
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code, str(provenance_dir / "c2pa-capture-nikon-z9.jpg")],
                         capture_output=True, text=True, timeout=60, check=True)
    assert "signingCredential.ocsp.skipped" in out.stdout
    for name in FIXTURES:
        t = time.perf_counter()
        decode_image(provenance_dir / name, provenance=True)
        assert time.perf_counter() - t < 5.0, name
    assert time.perf_counter() - start < 60


def test_remote_manifest_is_never_fetched() -> None:
    """A WebP whose XMP points to a remote manifest at a black-hole address: a fetch would hang; we get a quick
    'remote' state with the URL instead."""
    xmp = (b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
           b'<rdf:Description rdf:about="" xmlns:dcterms="http://purl.org/dc/terms/" '
           b'dcterms:provenance="http://10.255.255.1/manifest.c2pa"/></rdf:RDF></x:xmpmeta>')
    buf = io.BytesIO()
    Image.new("RGB", (16, 16)).save(buf, "WEBP", xmp=xmp)
    start = time.perf_counter()
    prov = _prov(buf.getvalue(), "webp")
    assert time.perf_counter() - start < 5.0
    assert prov["c2pa"]["state"] == "remote" and prov["c2pa"]["remote_url"] == "http://10.255.255.1/manifest.c2pa"
    assert prov["says"] == "unknown" and prov["errors"] == []
    assert prov["evidence"] == ["C2PA: remote manifest, not fetched (http://10.255.255.1/manifest.c2pa)"]


# --------------------------------------------------------------------------- built here: PNG chunks, XMP, EXIF


def test_a1111_parameters() -> None:
    params = ("a cat in a hat\nNegative prompt: blurry\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, "
              "Size: 512x512, Model hash: 31e35c80fc, Model: sd_xl_base_1.0, Version: v1.6.0")
    prov = _prov(_png(parameters=params), "png")
    assert prov["says"] == "ai-generated"
    assert prov["generator"] == {"tool": "AUTOMATIC1111/Forge", "model": "sd_xl_base_1.0", "source": "A1111 parameters"}
    assert prov["evidence"] == ["PNG: A1111 parameters, model sd_xl_base_1.0"]


def test_comfyui_prompt_and_workflow() -> None:
    prompt = {"4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "flux/flux1-dev.safetensors"}},
              "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "ComfyUI"}}}
    prov = _prov(_png(prompt=json.dumps(prompt), workflow=json.dumps({"nodes": []})), "png")
    assert prov["says"] == "ai-generated"
    assert prov["evidence"] == ["PNG: ComfyUI workflow, model flux1-dev"]
    # Only a UI workflow: the loader's widget value names the model.
    workflow = {"nodes": [{"type": "UNETLoader", "widgets_values": ["qwen_image_fp8.safetensors", "default"]}]}
    prov = _prov(_png(workflow=json.dumps(workflow)), "png")
    assert prov["generator"]["model"] == "qwen_image_fp8"


def test_invokeai_and_novelai() -> None:
    meta = {"model": {"name": "juggernautXL_v9", "base": "sdxl"}, "positive_prompt": "x"}
    prov = _prov(_png(invokeai_metadata=json.dumps(meta)), "png")
    assert prov["generator"]["tool"] == "InvokeAI" and prov["generator"]["model"] == "juggernautXL_v9"
    prov = _prov(_png(Software="NovelAI", Source="NovelAI Diffusion V4 4F6E2A1B", Comment="{}"), "png")
    assert prov["says"] == "ai-generated"
    assert prov["evidence"] == ["PNG: NovelAI metadata, model NovelAI Diffusion V4 4F6E2A1B"]


def test_ordinary_png_text_is_not_ai() -> None:
    prov = _prov(_png(Title="holiday", parameters="brightness=3"), "png")
    assert prov["says"] == "unknown" and prov["generator"] is None
    prov = _prov(_png(parameters=json.dumps({"brightness": 3, "prompt": "save as"})), "png")
    assert prov["generator"] is None
    sd = _prov(_png(parameters=json.dumps({"prompt": "a cat", "steps": 30, "seed": 4, "model": "x.ckpt"})), "png")
    assert sd["generator"] == {"tool": "unknown tool", "model": "x", "source": "unknown tool parameters"}
    fooocus = _prov(_png(fooocus_scheme="fooocus", parameters=json.dumps({"Base Model": "juggernautXL.safetensors"})),
                    "png")
    assert fooocus["generator"]["tool"] == "Fooocus" and fooocus["generator"]["model"] == "juggernautXL"


def test_ai_software_names_need_whole_words() -> None:
    exif = Image.Exif()
    exif[305] = "Imagenomic Portraiture 3"
    assert _prov(_jpeg(exif=exif), "jpeg")["says"] == "unknown"
    exif[305] = "Midjourney v7"
    prov = _prov(_jpeg(exif=exif), "jpeg")
    assert prov["says"] == "ai-generated" and prov["evidence"] == ["EXIF: software Midjourney v7"]


@pytest.mark.parametrize(("term", "says"), [("trainedAlgorithmicMedia", "ai-generated"),
                                            ("compositeWithTrainedAlgorithmicMedia", "ai-edited"),
                                            ("digitalCapture", "camera"), ("somethingElse", "unknown")])
def test_xmp_digital_source_type(term: str, says: str) -> None:
    prov = _prov(_jpeg(xmp=_xmp(term)), "jpeg")
    assert prov["says"] == says
    assert prov["digital_source_type"] == term
    assert prov["evidence"] == [f"XMP: digitalSourceType {term}"]
    # PNG carries XMP in an iTXt chunk.
    info = PngImagePlugin.PngInfo()
    info.add_itxt("XML:com.adobe.xmp", _xmp(term).decode())
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, "PNG", pnginfo=info)
    assert _prov(buf.getvalue(), "png")["says"] == says


def test_exif_camera_and_jpeg_comment() -> None:
    exif = Image.Exif()
    exif[271], exif[272], exif[305] = "Canon", "Canon EOS 70D", "Firmware 1.1.2"
    exif.get_ifd(0x8769)[36867] = "2021:06:01 10:11:12"
    prov = _prov(_jpeg(exif=exif, comment=b"shot on holiday"), "jpeg")
    assert prov["says"] == "camera"
    assert prov["exif"] == {"make": "Canon", "model": "Canon EOS 70D", "software": "Firmware 1.1.2",
                            "datetime": "2021:06:01 10:11:12"}
    assert prov["evidence"] == ["EXIF: Canon EOS 70D, 2021:06:01 10:11:12", "JPEG comment: 'shot on holiday'"]
    assert prov["comment"] == "shot on holiday"


def test_a1111_parameters_in_jpeg_exif_user_comment() -> None:
    exif = Image.Exif()
    text = "a dog\nSteps: 30, Sampler: DPM++ 2M, Seed: 5, Model: dreamshaper_8"
    exif.get_ifd(0x8769)[37510] = b"UNICODE\x00" + text.encode("utf-16-be")
    prov = _prov(_jpeg(exif=exif), "jpeg")
    assert prov["says"] == "ai-generated"
    assert prov["generator"]["model"] == "dreamshaper_8"


def test_no_metadata_and_junk_c2pa_segment() -> None:
    assert _prov(_jpeg(), "jpeg")["says"] == "unknown"
    assert _prov(_jpeg(), "jpeg")["evidence"] == []
    # An APP11 segment that is not a valid manifest: reported, never fatal, never evidence.
    plain = _jpeg()
    junk = b"\xff\xeb" + (2 + 40).to_bytes(2, "big") + b"JP\x02\x11" + b"\x00" * 36
    prov = _prov(plain[:2] + junk + plain[2:], "jpeg")
    assert prov["says"] == "unknown"
    assert prov["c2pa"] is None or prov["c2pa"]["state"] == "invalid"


def test_short_evidence_and_says_values() -> None:
    assert short_evidence(None) == "-"
    assert short_evidence({"evidence": ["a" * 100, "b"]}, width=30).endswith("… (+1)")
    assert set(SAYS) == {"ai-generated", "ai-edited", "camera", "unknown"}


def test_scan_dataset_reads_provenance_in_the_decode_pass(tmp_path: Path) -> None:
    p = tmp_path / "sd.png"
    p.write_bytes(_png(parameters="x\nSteps: 4, Sampler: Euler, Model: sd15"))
    pre = Preprocess(size=16, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    item = ScanDataset([str(p)], pre, provenance=True)[0]
    assert item["error"] is None and item["provenance"]["says"] == "ai-generated"
    assert ScanDataset([str(p)], pre)[0]["provenance"] is None  # off unless asked
