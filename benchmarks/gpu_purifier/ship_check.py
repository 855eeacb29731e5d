"""Decide whether a trained purifier meets the issue-21 ship bar and record the verdict in its metadata.

    python benchmarks/gpu_purifier/ship_check.py PURIFIER.safetensors ADVERSARIAL.json [--out DIR]

The bar, on the held-out images of benchmarks/adversarial.py, for both released heads:
non-adaptive PGD at 4/255 (crafted on that head) succeeds on at most 50% of the verdicts it attacks with the
purifier in front, and the purifier costs at most 0.01 clean AP. Adaptive numbers are recorded beside the
verdict (they are what an attacker who knows the purifier gets) but are not part of the bar. The file is
rewritten atomically with `ship_bar` in its metadata (`causalclip info` shows it); DIR/ship.json holds the
same. Shipping (copying it to benchmarks/results/purifier-vitb16.safetensors) stays a person's decision.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks._util import write_results  # noqa: E402

MAX_SUCCESS = 0.5
MAX_AP_COST = 0.01
# Which attack of adversarial.json is the non-adaptive PGD 4/255 crafted on each head.
ATTACK_ON = {"causalclip": "pgd eps4 on causalclip", "linear": "pgd eps4 on linear"}


def verdict(adv: dict, purifier: str = "learned") -> dict:
    """The ship-bar verdict from an adversarial.json document (missing measurements fail the bar)."""
    heads, ok = {}, True
    for head, key in ATTACK_ON.items():
        clean = adv.get("clean", {}).get(head, {})
        ap_none, ap_pur = (clean.get(p, {}).get("ap") for p in ("none", purifier))
        ev = adv.get("attacks", {}).get(key, {}).get("eval", {})
        sr_none = (ev.get("none", {}).get(head) or {}).get("success_rate")
        sr_pur = (ev.get(purifier, {}).get(head) or {}).get("success_rate")
        cost = None if ap_none is None or ap_pur is None else ap_none - ap_pur
        adaptive = (adv.get("attacks", {}).get(f"adaptive pgd eps4 through {purifier}", {}).get("eval", {})
                    .get(purifier, {}).get(head) or {}).get("success_rate")
        passed = sr_pur is not None and cost is not None and sr_pur <= MAX_SUCCESS and cost <= MAX_AP_COST
        ok = ok and passed
        heads[head] = {"pgd4_success_without": sr_none, "pgd4_success_with": sr_pur, "clean_ap_without": ap_none,
                       "clean_ap_with": ap_pur, "clean_ap_cost": cost, "adaptive_pgd4_success": adaptive,
                       "passed": passed}
    return {"passed": ok, "bar": f"non-adaptive PGD 4/255 success <= {MAX_SUCCESS} and clean-AP cost <= "
                                  f"{MAX_AP_COST}, both heads",
            "n_images": len(adv.get("images", [])), "heads": heads,
            "checked": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("purifier", type=Path)
    ap.add_argument("adversarial", type=Path)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    from causalclip_cli.robustness.purify import load_purifier, save_purifier

    v = verdict(json.loads(args.adversarial.read_text(encoding="utf-8")))
    pur = load_purifier(args.purifier)
    if (pur.metadata.get("training") or {}).get("tiny"):
        v.update(passed=False, note="--tiny plumbing run: random heads, not a measurement")
    keep = {k: val for k, val in pur.metadata.items() if k not in ("format_version", "kind", "config", "tool")}
    save_purifier(args.purifier, pur.net, {**keep, "ship_bar": v})
    if args.out:
        write_results("ship", v, args.out)
    print(json.dumps(v, indent=2))


if __name__ == "__main__":
    main()
