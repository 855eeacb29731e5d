"""Choose the CausalCLIP head's loss weights by protocol C (leave-one-source-out mean AP), not a test score.

    python benchmarks/tune.py [--seed 0]

Each candidate changes the defaults of causalclip_cli.model.heads.CausalConfig; the linear probe is run once
alongside as the reference. Results: benchmarks/results/tune.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from quality import run  # noqa: E402
from sources import load_sources  # noqa: E402

from causalclip_cli.model.heads import CausalConfig  # noqa: E402

CANDIDATES = {
    "defaults": {},
    "hsic x10": {"lambda2": 10.0},
    "no invariance (beta 0)": {"beta": 0.0},
    "strong adversary (alpha 1)": {"alpha": 1.0},
    "tau 1.0": {"tau": 1.0},
    "drop 0.5": {"drop_p": 0.5},
    "sparser mask (lambda1 0.1)": {"lambda1": 0.1},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "tune.json")
    args = ap.parse_args()
    sources = load_sources()
    rows = {}
    base = asdict(CausalConfig())
    ref = run(sources, ["linear"], [args.seed], only=["C"])["C"]["linear"]["mean"]
    rows["linear probe (reference)"] = {"config": {}, "C_mean": ref}
    for name, change in CANDIDATES.items():
        res = run(sources, ["causalclip"], [args.seed], causal={**base, **change}, only=["C"])
        rows[name] = {"config": change, "C_mean": res["C"]["causalclip"]["mean"]}
        print(f"{name:28s} C mean AP {rows[name]['C_mean']['ap']:.4f}", file=sys.stderr)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"seed": args.seed, "base": base, "candidates": rows}, indent=2))
    for name, r in rows.items():
        m = r["C_mean"]
        print(f"| {name} | {m['ap']:.4f} | {m['accuracy']:.4f} | {m['auc']:.4f} |")


if __name__ == "__main__":
    main()
