"""Tower precision: the INT8 path (per-channel weights, per-token activations), its plumbing into the
detector, the records' model id and the CLI; autocast choices per device."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from causalclip_cli.cli import app
from causalclip_cli.errors import UsageError
from causalclip_cli.model.backbones import BackboneSpec, load_backbone
from causalclip_cli.model.checkpoint import load_detector
from causalclip_cli.model.precision import autocast_dtype, int8_layer_count, quantize_int8, resolve_precision


def test_resolve_precision_per_device() -> None:
    assert resolve_precision("auto", "cpu") == "fp32"
    assert resolve_precision(None, "mps") == "fp32"
    assert resolve_precision("auto", "cuda:1") == "fp16"
    assert resolve_precision("INT8", "cpu") == "int8"
    assert resolve_precision("bf16", "cpu") == "bf16"
    with pytest.raises(UsageError, match="CPU only"):
        resolve_precision("int8", "cuda")
    with pytest.raises(UsageError, match="needs a GPU"):
        resolve_precision("fp16", "cpu")
    with pytest.raises(UsageError, match="not one of"):
        resolve_precision("int4", "cpu")
    assert autocast_dtype("fp16") == torch.float16 and autocast_dtype("int8") is None


def test_int8_linear_is_close_and_independent_of_the_batch() -> None:
    torch.manual_seed(0)
    lin = torch.nn.Linear(96, 40)
    q = quantize_int8(torch.nn.Sequential(lin))[0]
    assert int8_layer_count(torch.nn.Sequential(q)) == 1
    x = torch.randn(3, 7, 96)
    x[0, 0, 5] = 40.0  # one outlier activation in one token of one sample
    with torch.inference_mode():
        ref, out = lin(x), q(x)
        alone = q(x[1:2])
    assert out.shape == ref.shape == (3, 7, 40)
    err = (out - ref).norm() / ref.norm()
    assert err < 0.02, err
    # Per-token scales: the outlier in sample 0 does not change sample 1's result.
    assert torch.equal(alone, out[1:2])
    # Without a bias too.
    nob = quantize_int8(torch.nn.Sequential(torch.nn.Linear(96, 8, bias=False)))
    with torch.inference_mode():
        assert nob(x).shape == (3, 7, 8)


def test_quantized_tiny_tower_replaces_every_projection_and_stays_close() -> None:
    tower = load_backbone(BackboneSpec("causalclip-tiny", "none"), allow_download=False).tower
    q = quantize_int8(copy.deepcopy(tower))
    n_blocks = len(tower.transformer.resblocks)
    assert int8_layer_count(q) == 4 * n_blocks  # qkv, out_proj, c_fc, c_proj per block
    assert not any(isinstance(m, (torch.nn.Linear, torch.nn.MultiheadAttention)) for m in q.modules())
    torch.manual_seed(1)
    x = torch.randn(4, 3, 32, 32)
    with torch.inference_mode():
        cos = torch.nn.functional.cosine_similarity(tower(x), q(x))
    assert cos.min() > 0.99, cos


def test_detector_int8_is_recorded_in_model_and_feature_ids(tiny_checkpoint: Path) -> None:
    fp32 = load_detector(str(tiny_checkpoint), device="cpu", allow_download=False, precision="fp32")
    int8 = load_detector(str(tiny_checkpoint), device="cpu", allow_download=False, precision="int8")
    assert fp32.precision == "fp32" and int8.precision == "int8"
    assert int8.model_id == fp32.model_id + ":int8"
    assert int8.feature_id != fp32.feature_id
    assert int8_layer_count(int8.backbone.tower) > 0 and int8_layer_count(fp32.backbone.tower) == 0
    px = torch.rand(2, 3, 32, 32)
    assert torch.allclose(int8.probabilities(px), fp32.probabilities(px), atol=0.05)


def test_bf16_autocast_runs_on_cpu(tiny_checkpoint: Path) -> None:
    det = load_detector(str(tiny_checkpoint), device="cpu", allow_download=False, precision="bf16")
    assert det.model_id.endswith(":bf16")
    assert det.embed(torch.rand(2, 3, 32, 32)).dtype == torch.float32


def test_scan_precision_option(tmp_path: Path, tiny_checkpoint: Path) -> None:
    for i in range(3):
        Image.new("RGB", (40, 36), (60 * i, 90, 30)).save(tmp_path / f"{i}.png")
    runner = CliRunner()
    base = ["scan", str(tmp_path), "-c", str(tiny_checkpoint), "--workers", "0", "--no-progress", "-f", "jsonl"]
    res = runner.invoke(app, [*base, "--precision", "int8"])
    assert res.exit_code in (0, 1), res.output
    recs = [json.loads(line) for line in res.stdout.splitlines()]
    assert len(recs) == 3 and all(r["model"].endswith(":int8") and r["error"] is None for r in recs)
    res = runner.invoke(app, [*base, "--precision", "fp16"])
    assert res.exit_code == 2 and "needs a GPU" in res.output
