"""Time to the first result of `causalclip scan`, and where it goes.

  stages   in a fresh interpreter: import torch, import open_clip, load_detector (checkpoint, backbone
           resolution, tower build and weights), the first forward pass of one image and of a batch of 8
  scan     `causalclip scan FILES --format jsonl` as a subprocess: seconds from start to the first JSON line
           and to exit, for this checkout and, with --compare DIR, for another checkout of the project (e.g.
           an exported older commit), alternated run by run so both see the same machine load

    python benchmarks/first_result.py [--runs 3] [--images 8] [--compare /tmp/base] [--threads 2]

Results: benchmarks/results/first_result.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _util import REPO, SHARED_DATA, list_images, log, machine_info, spread, write_results  # noqa: E402

STAGES = r"""
import json, sys, time
t0 = last = time.perf_counter()
out = {}
def mark(name):
    global last
    now = time.perf_counter(); out[name] = round(now - last, 3); last = now
import torch; mark("import torch")
import open_clip; mark("import open_clip")
from causalclip_cli.model.checkpoint import load_detector
det = load_detector(None, device="cpu", allow_download=False); mark("load_detector")
det.probabilities(torch.zeros(1, 3, 224, 224)); mark("first forward, 1 image")
det.probabilities(torch.zeros(8, 3, 224, 224)); mark("next forward, 8 images")
out["total"] = round(time.perf_counter() - t0, 3)
print(json.dumps(out))
"""


def stages(tree: Path, env: dict) -> dict:
    res = subprocess.run([sys.executable, "-c", STAGES], env={**env, "PYTHONPATH": str(tree)}, capture_output=True,
                         text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def scan_once(tree: Path, files: list[str], env: dict) -> dict:
    cmd = [sys.executable, "-c", "from causalclip_cli.cli import main; main()", "scan", *files, "--format",
           "jsonl", "--no-progress"]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env={**env, "PYTHONPATH": str(tree)}, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    first = None
    lines = 0
    for line in proc.stdout:
        if line.strip():
            lines += 1
            if first is None:
                first = time.perf_counter() - t0
    proc.wait()
    return {"first_result_s": round(first or float("nan"), 2), "exit_s": round(time.perf_counter() - t0, 2),
            "records": lines, "exit_code": proc.returncode}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--compare", type=Path, default=None, help="another checkout to measure alternately")
    ap.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS for the subprocesses")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    files = spread(list_images(SHARED_DATA / "forensynths-thumbs"), args.images)
    trees = {"this": REPO}
    if args.compare:
        trees = {"compare": args.compare.resolve(), **trees}
    result: dict = {"machine": machine_info("cpu"), "images": len(files), "trees": {k: str(v) for k, v in
                                                                                     trees.items()},
                    "stages": {k: [] for k in trees}, "scan": {k: [] for k in trees}}
    for r in range(args.runs):
        for name, tree in trees.items():
            st = stages(tree, env)
            result["stages"][name].append(st)
            sc = scan_once(tree, files, env)
            result["scan"][name].append(sc)
            log(f"run {r + 1} {name}: first result {sc['first_result_s']} s, exit {sc['exit_s']} s; stages "
                + ", ".join(f"{k} {v}" for k, v in st.items()))
    write_results("first_result", result, args.out)


if __name__ == "__main__":
    main()
