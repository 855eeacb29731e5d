"""Adversarial robustness of the released heads, with and without input purification.

    python benchmarks/adversarial.py [--images 12] [--sweep-images N] [--train-images 8] [--steps 3]
        [--feature-weight W] [--threads 2] [--purifier NAME|PATH] [--device cuda] [--out DIR]

Held-out images the released heads never trained or calibrated on (the test split of modern-2025 and
faces-2025 in benchmarks/results/release-manifest.csv, and web-sd / multigen-2022 files outside it), a
deterministic class-balanced sample. Every image is attacked toward the verdict opposite of its label
(generated → real, real → fake), white-box L∞ PGD through preprocessing, backbone and head
(library: causalclip_cli.robustness.adversarial).

Stages (results are written after each, so a cut-off run keeps what it measured):
1. the learned purifier: trained on PGD examples of *training* images (release manifest) against the
   CausalCLIP head (pixel L1, plus the representation-guided loss with --feature-weight), saved to
   benchmarks/results/purifier-vitb16.safetensors;
2. clean AP/accuracy of both heads under each purifier (none, jpeg:75, blur:1, rescale:0.5, median:3,
   learned) — the clean cost of purification;
3. on every held-out image, PGD at eps 4/255 on the CausalCLIP head, non-adaptive (evaluated under every
   purifier and transferred to the linear head) and adaptive (through each purifier; BPDA for JPEG);
4. on the --sweep-images part: PGD at the other budgets, FGSM at 4, PGD at 4 crafted on the linear head
   (transfer), and adaptive PGD at the --adaptive-eps budgets through each purifier.

The backbone is shared by both heads, so each (image set, purifier) is embedded once. `--purifier` takes any
learned purifier file (residual CNN or the issue-21 U-Net) or a shipped name; `--device cuda --out DIR` is how
benchmarks/gpu_purifier/run.sh evaluates on a GPU; `--causalclip/--linear PATH` swap the heads (its --tiny
plumbing run uses random heads over the tiny test tower).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks._util import REPO, RESULTS, SHARED_DATA, apply_threads, log, machine_info, write_results  # noqa: E402

MANIFEST = RESULTS / "release-manifest.csv"
PURIFIER_OUT = RESULTS / "purifier-vitb16.safetensors"
BASELINES = ["jpeg:75", "blur:1", "rescale:0.5", "median:3"]
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def _spread(items: list, n: int) -> list:
    if n >= len(items):
        return list(items)
    return [items[int(i * len(items) / n)] for i in range(n)]


def _manifest() -> dict[str, str]:
    with open(MANIFEST, newline="", encoding="utf-8") as fh:
        return {str((MANIFEST.parent / r["path"]).resolve()): r["split"] for r in csv.DictReader(fh)}


def _images(pattern: str) -> list[str]:
    return sorted(str(p.resolve()) for p in SHARED_DATA.glob(pattern) if p.suffix.lower() in IMAGE_SUFFIXES)


# Where the held-out images come from, per class: (share of the class, pool). Pools hold only files the
# released heads never saw: the test split of modern-2025 / faces-2025 in the release manifest, and files of
# web-sd and multigen-2022 outside it. A pool that runs short hands its remainder to the next one.
def _pools() -> dict[int, list[tuple[float, list[str]]]]:
    split = _manifest()
    test = {p for p, s in split.items() if s == "test"}
    held = [p for p in _images("modern-2025/*/0_real/*")]
    return {
        0: [(0.5, [p for p in held if p in test]),
            (0.05, [p for p in _images("faces-2025/*/0_real/*") if p in test]),
            (0.45, [p for p in _images("web-sd/0_real/*") if p not in split])],
        1: [(0.4, [p for p in _images("modern-2025/*/1_fake/*") if p in test]),
            (0.15, [p for p in _images("faces-2025/*/1_fake/*") if p in test]),
            (0.2, [p for p in _images("multigen-2022/*/1_fake/*") if p not in split]),
            (0.25, [p for p in _images("web-sd/1_fake/*") if p not in split])],
    }


def held_out_sample(n: int) -> tuple[list[str], np.ndarray]:
    """n/2 generated + n/2 real images the released heads never trained or calibrated on (see _pools),
    evenly spread over each pool's sorted file list (deterministic)."""
    files, labels = [], []
    for label, pools in sorted(_pools().items(), reverse=True):
        per, chosen, carry = n // 2, [], 0
        for k, (share, pool) in enumerate(pools):
            want = per - len(chosen) if k == len(pools) - 1 else round(per * share) + carry
            take = _spread(pool, min(want, len(pool)))
            carry = want - len(take)
            chosen += take
        files += chosen
        labels += [label] * len(chosen)
    return files, np.array(labels)


def training_sample(n: int) -> list[str]:
    """n images from the release's training split (never evaluated here), for the learned purifier."""
    train = sorted(p for p, split in _manifest().items() if split == "train" and Path(p).is_file())
    return _spread(train, n)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=12, help="held-out images (half generated)")
    ap.add_argument("--train-images", type=int, default=8, help="training images for the learned purifier")
    ap.add_argument("--steps", type=int, default=3, help="PGD iterations")
    ap.add_argument("--eps", default="1,2,4,8", help="budgets of the sweep, 1/255 units (4 runs on every image)")
    ap.add_argument("--adaptive-eps", default="1,2", help="budgets (besides 4) of adaptive attacks on the sweep part")
    ap.add_argument("--adaptive-images", type=int, default=None,
                    help="adaptive attacks at eps 4 on this many (default all)")
    ap.add_argument("--purifier", help="use this learned purifier (file or shipped name) instead of training one")
    ap.add_argument("--device", default="cpu", help="cpu, cuda, … (attacks and embedding; fp32, TF32 off)")
    ap.add_argument("--out", type=Path, default=RESULTS, help="folder for adversarial.json/.md (and a trained "
                                                              "purifier)")
    ap.add_argument("--causalclip", type=Path, default=REPO / "weights" / "causalclip-vitb16.safetensors",
                    help="the head attacks are crafted on")
    ap.add_argument("--linear", type=Path, default=REPO / "weights" / "linear-vitb16.safetensors",
                    help="the second head (transfer), same backbone")
    ap.add_argument("--workers", type=int, default=0, help="decoding processes")
    ap.add_argument("--held-out-list", type=Path, default=None,
                    help="JSON [[path under the shared data, label], …] to use instead of sampling --images "
                         "(gpu_purifier/pack.py writes the CPU table's sample there)")
    ap.add_argument("--resume", action="store_true",
                    help="keep the finished attacks of results/adversarial.json when its image list is the same")
    ap.add_argument("--sweep-images", type=int, default=None,
                    help="the eps sweep, FGSM, transfer and low-budget adaptive attacks on this many (default all)")
    ap.add_argument("--purifier-iterations", type=int, default=300)
    ap.add_argument("--purifier-batch", type=int, default=8, help="images per step of guided purifier training")
    ap.add_argument("--feature-weight", type=float, default=0.0,
                    help="representation-guided purifier loss (0: pixel L1 only; see PurifierTrainConfig)")
    ap.add_argument("--note", default="", help="a line about the machine's load, printed above the tables")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--render", action="store_true", help="only rewrite results/adversarial.md from the JSON")
    args = ap.parse_args()
    if args.render:
        import json

        data = json.loads((args.out / "adversarial.json").read_text(encoding="utf-8"))
        (args.out / "adversarial.md").write_text(render_md(data), encoding="utf-8")
        return
    apply_threads(args.threads)
    out_dir: Path = args.out
    if args.device.startswith("cuda"):
        # Same arithmetic as the CPU tables: TF32 would change features by ~1e-3.
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False

    from causalclip_cli.model.checkpoint import Detector, load_detector, load_head
    from causalclip_cli.robustness.adversarial import (
        AttackConfig,
        attack,
        condition_report,
        load_pixels,
        perturbation_stats,
    )
    from causalclip_cli.robustness.purify import (
        PurifierTrainConfig,
        normalise,
        parse_purifier,
        save_purifier,
        train_purifier,
    )
    from causalclip_cli.training.metrics import binary_metrics

    t0 = time.perf_counter()
    # fp32 everywhere: on CUDA `auto` would score in fp16 while the attacks run in fp32.
    det_c = load_detector(str(args.causalclip), device=args.device, precision="fp32")
    head_l, meta_l = load_head(args.linear, device=args.device)
    det_l = dataclasses.replace(det_c, head=head_l, metadata=meta_l, path=args.linear)
    heads = {"causalclip": det_c, "linear": det_l}
    if args.held_out_list:
        import json

        chosen = json.loads(args.held_out_list.read_text(encoding="utf-8"))
        files = [str((SHARED_DATA / rel).resolve()) for rel, _ in chosen]
        y = np.array([int(lab) for _, lab in chosen])
    else:
        files, y = held_out_sample(args.images)
    pixels, ok, failed = load_pixels(files, det_c, args.batch_size, args.workers)
    y = y[ok]
    log(f"{len(y)} held-out images ({int(y.sum())} generated), {len(failed)} unreadable")
    target = torch.as_tensor(1 - y)
    results: dict = {"machine": machine_info(args.device), "command": " ".join(["python", *sys.argv]),
                     "note": args.note,
                     "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                     "images": [str(Path(f).relative_to(SHARED_DATA.resolve())) for f in np.array(files)[ok]],
                     "thresholds": {k: d.decision.threshold for k, d in heads.items()},
                     "clean": {}, "purifier_training": None, "attacks": {}, "seconds": {}}

    def save() -> None:
        results["seconds"]["total"] = round(time.perf_counter() - t0, 1)
        write_results("adversarial", results, out_dir)
        (out_dir / "adversarial.md").write_text(render_md(results), encoding="utf-8")

    def embed(x: torch.Tensor, purifier) -> torch.Tensor:  # noqa: ANN001
        out = []
        for i in range(0, len(x), args.batch_size):
            b = x[i:i + args.batch_size].to(args.device)
            if purifier is not None:
                b = purifier(b)
            out.append(det_c.embed(normalise(b, det_c.preprocess)))
        return torch.cat(out)

    def probs(det: Detector, feats: torch.Tensor) -> np.ndarray:
        with torch.inference_mode():
            return torch.sigmoid(det.head(feats)).cpu().numpy()

    # ---- stage 1: the learned purifier is needed by every later stage (or reuse one: --purifier)
    ts = time.perf_counter()
    if args.purifier:
        from causalclip_cli.robustness.purify import load_purifier, resolve_purifier

        purifier_path = resolve_purifier(args.purifier)
        meta = load_purifier(purifier_path).metadata
        results["purifier_training"] = meta.get("training")
        results["purifier"] = {"path": str(purifier_path), "kind": meta.get("kind"), "config": meta.get("config")}
    else:
        purifier_path = PURIFIER_OUT if out_dir == RESULTS else out_dir / PURIFIER_OUT.name
        train_files = training_sample(args.train_images)
        train_px, _, _ = load_pixels(train_files, det_c, args.batch_size, args.workers)
        pcfg = PurifierTrainConfig(attack_steps=args.steps, iterations=args.purifier_iterations,
                                   feature_weight=args.feature_weight, guided_batch_size=args.purifier_batch)
        net, summary = train_purifier(det_c, train_px, pcfg, progress=log)
        save_purifier(purifier_path, net, {"training": {**summary, "images": "benchmarks/results/release-manifest.csv "
                                                       f"train split, {len(train_files)} evenly spread"}})
        results["purifier_training"] = summary
        results["seconds"]["purifier_training"] = round(time.perf_counter() - ts, 1)
        log(f"purifier trained in {results['seconds']['purifier_training']} s")
    purifiers = {"none": None, **{b: parse_purifier(b) for b in BASELINES},
                 "learned": parse_purifier(f"learned:{purifier_path}", args.device)}
    if args.resume and (out_dir / "adversarial.json").exists():
        import json

        old = json.loads((out_dir / "adversarial.json").read_text(encoding="utf-8"))
        if old.get("images") == results["images"]:  # same sample: its finished attacks stand
            results["attacks"] = old.get("attacks", {})
            results["seconds"] = {**old.get("seconds", {}), **results["seconds"]}
            results["purifier_training"] = old.get("purifier_training") or results["purifier_training"]
            results["command"] = old["command"] + " ; resumed: " + results["command"]
            log(f"resuming: {len(results['attacks'])} finished attacks kept")

    # ---- stage 2: clean cost of each purifier
    ts = time.perf_counter()
    clean_probs: dict[str, dict[str, np.ndarray]] = {}
    for pname, pur in purifiers.items():
        feats = embed(pixels, pur)
        clean_probs[pname] = {}
        for hname, det in heads.items():
            p = probs(det, feats)
            clean_probs[pname][hname] = p
            results["clean"].setdefault(hname, {})[pname] = binary_metrics(y, p, det.decision.threshold)
        log(f"clean {pname}: AP " + ", ".join(f"{h} {_f(results['clean'][h][pname]['ap'])}" for h in heads))
    results["seconds"]["clean"] = round(time.perf_counter() - ts, 1)
    save()

    def subset(n: int | None) -> np.ndarray:
        """Indices of an evenly spread, class-balanced part of the held-out sample (all when n is None)."""
        if n is None or n >= len(y):
            return np.arange(len(y))
        return np.sort(np.concatenate([c[np.linspace(0, len(c), n // 2, endpoint=False).astype(int)]
                                       for c in (np.flatnonzero(y == 1), np.flatnonzero(y == 0))]))

    def evaluate(key: str, adv: torch.Tensor, idx: np.ndarray, crafted_on: str, spec: dict,
                 only: dict | None = None) -> None:
        """Evaluate one adversarial set (of the images `idx`) under purifiers (all, or `only`) on both heads."""
        yy, clean = y[idx], pixels[torch.as_tensor(idx)]
        entry = {"crafted_on": crafted_on, "n_images": len(idx), **spec, **perturbation_stats(clean, adv), "eval": {}}
        for pname, pur in (only or purifiers).items():
            feats = embed(adv, pur)
            for hname, det in heads.items():
                thr = det.decision.threshold
                p_before, p_after = clean_probs[pname][hname][idx], probs(det, feats)
                rep = condition_report(yy, p_before, p_after, np.ones_like(yy, dtype=bool), None, thr, clean, adv)
                per = {}
                for cname, cls in (("fake→real", 1), ("real→fake", 0)):
                    c = condition_report(yy, p_before, p_after, yy == cls, None, thr, clean, adv)
                    per[cname] = {"success_rate": c["success_rate"], "n_correct_before": c["n_correct_before"]}
                entry["eval"].setdefault(pname, {})[hname] = {
                    "success_rate": rep["success_rate"], "n_correct_before": rep["n_correct_before"],
                    "ap_before": rep["before"]["ap"], "ap_after": rep["after"]["ap"],
                    "acc_before": rep["before"]["accuracy"], "acc_after": rep["after"]["accuracy"], **per}
        results["attacks"][key] = entry
        ev = entry["eval"]
        log(f"{key} ({len(idx)} images): " + "; ".join(
            f"{p}: ASR {_f(ev[p][crafted_on]['success_rate'])} AP {_f(ev[p][crafted_on]['ap_after'])}" for p in ev)
            + f"  ({time.perf_counter() - t0:.0f} s)")
        save()

    def run_attack(key: str, det: Detector, crafted_on: str, idx: np.ndarray, method: str, eps: float,
                   through: str | None = None) -> None:
        if key in results["attacks"] and results["attacks"][key].get("n_images") == len(idx):
            return  # measured by the run this one resumes
        ts = time.perf_counter()
        steps = 1 if method == "fgsm" else args.steps
        cfg = AttackConfig(method, eps, steps, batch_size=args.batch_size)
        sel = torch.as_tensor(idx)
        adv = attack(det, pixels[sel], target[sel], cfg, purifiers[through] if through else None)
        results["seconds"][key] = round(time.perf_counter() - ts, 1)
        spec = {"method": method, "eps": eps, "steps": steps, "adaptive": through is not None}
        if through:
            spec["through"] = through
        evaluate(key, adv, idx, crafted_on, spec, only={through: purifiers[through]} if through else None)

    # Most important first, so a run cut short still answers the main questions: at eps 4 on every
    # held-out image, non-adaptive (under every purifier) and adaptive (through each); then the eps sweep,
    # FGSM, the linear-crafted transfer and adaptive attacks at the sweep's budgets on a class-balanced
    # part (`--sweep-images`), since each PGD step costs a backbone forward and backward per image.
    main_idx, sweep_idx, adaptive_idx = subset(None), subset(args.sweep_images), subset(args.adaptive_images)
    run_attack("pgd eps4 on causalclip", det_c, "causalclip", main_idx, "pgd", 4.0)
    for pname in purifiers:
        if pname != "none":
            run_attack(f"adaptive pgd eps4 through {pname}", det_c, "causalclip", adaptive_idx, "pgd", 4.0, pname)
    sweep = [float(e) for e in args.eps.split(",") if float(e) != 4.0]
    for eps in sweep:
        run_attack(f"pgd eps{eps:g} on causalclip", det_c, "causalclip", sweep_idx, "pgd", eps)
    run_attack("fgsm eps4 on causalclip", det_c, "causalclip", sweep_idx, "fgsm", 4.0)
    run_attack("pgd eps4 on linear", det_l, "linear", sweep_idx, "pgd", 4.0)
    for eps in [float(e) for e in args.adaptive_eps.split(",") if e.strip() and float(e) != 4.0]:
        for pname in purifiers:
            if pname != "none":
                run_attack(f"adaptive pgd eps{eps:g} through {pname}", det_c, "causalclip", sweep_idx, "pgd", eps,
                           pname)
    save()
    log(f"done in {time.perf_counter() - t0:.0f} s; results in {out_dir / 'adversarial.json'} and .md")


def _f(v: object) -> str:
    return "–" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)


def render_summary(r: dict) -> list[str]:
    """Pivot: one row per attack, one column per purifier; a cell is 'ASR / AP after' on the CausalCLIP head
    (for the linear-crafted attack: transferred to the CausalCLIP head). Adaptive attacks fill one row."""
    if not r["clean"]:
        return []
    purs = list(r["clean"]["causalclip"])
    lines = ["| CausalCLIP head | " + " | ".join(purs) + " |", "|---|" + "---|" * len(purs),
             "| clean AP (acc) | " + " | ".join(f"{_f(r['clean']['causalclip'][p]['ap'])} "
                                              f"({_f(r['clean']['causalclip'][p]['accuracy'])})" for p in purs) + " |"]
    adaptive: dict[float, dict] = {}
    for key, a in r["attacks"].items():
        if a.get("adaptive"):
            adaptive.setdefault(a["eps"], {})[a["through"]] = (a["eval"][a["through"]]["causalclip"], a.get("n_images"))
            continue
        cells = []
        for p in purs:
            m = a["eval"].get(p, {}).get("causalclip")
            cells.append("–" if m is None else f"{_f(m['success_rate'])} / {_f(m['ap_after'])}")
        label = key + (" → causalclip (transfer)" if a["crafted_on"] != "causalclip" else "")
        lines.append(f"| {label}{_n(a.get('n_images'))} | " + " | ".join(cells) + " |")
    for eps, by_pur in sorted(adaptive.items(), key=lambda kv: -kv[0]):
        cells = [f"{_f(by_pur[p][0]['success_rate'])} / {_f(by_pur[p][0]['ap_after'])}" if p in by_pur else "–"
                 for p in purs]
        n = next(iter(by_pur.values()))[1]
        lines.append(f"| adaptive pgd eps{eps:g} (through the purifier){_n(n)} | " + " | ".join(cells) + " |")
    return lines


def _n(n: int | None) -> str:
    return f" ({n} images)" if n else ""


def render_md(r: dict) -> str:
    heads = list(r["clean"])
    purs = list(next(iter(r["clean"].values()))) if r["clean"] else []
    runs = r["command"].split(" ; resumed: ")
    lines = [f"# Adversarial robustness ({len(r['images'])} held-out images)", "",
             *[f"- {'resumed by' if i else 'run'}: `{c}`" for i, c in enumerate(runs)], "",
             *([r["note"], ""] if r.get("note") else []),
             "## Summary: attack success rate / AP after, CausalCLIP head", "",
             *render_summary(r), "", "## Clean AP / accuracy per purifier", "",
             "| purifier | " + " | ".join(f"{h} AP | {h} acc" for h in heads) + " |",
             "|---|" + "---|---|" * len(heads)]
    for p in purs:
        lines.append(f"| {p} | " + " | ".join(f"{_f(r['clean'][h][p]['ap'])} | {_f(r['clean'][h][p]['accuracy'])}"
                                             for h in heads) + " |")
    lines += ["", "## Attacks: success rate (verdicts flipped among those right before) and AP after", "",
              "| attack | images | crafted on | L∞ /255 | PSNR dB | purifier | evaluated on | ASR | ASR fake→real | "
              "ASR real→fake | AP before | AP after | acc after |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for key, a in r["attacks"].items():
        for p, by_head in a["eval"].items():
            for h, m in by_head.items():
                n = a.get("n_images", len(r["images"]))
                lines.append(f"| {key} | {n} | {a['crafted_on']} | {_f(a['linf_mean'])} | {_f(a['psnr_mean'])} | {p} | "
                             f"{h}{' (transfer)' if h != a['crafted_on'] else ''} | {_f(m['success_rate'])} | "
                             f"{_f(m['fake→real']['success_rate'])} | {_f(m['real→fake']['success_rate'])} | "
                             f"{_f(m['ap_before'])} | {_f(m['ap_after'])} | {_f(m['acc_after'])} |")
    t = r.get("purifier_training") or {}
    if "val_after" in t:  # the issue-21 U-Net (benchmarks/gpu_purifier/train.py)
        vb, va = t["val_before"], t["val_after"]
        lines += ["", f"Learned purifier: {t['arch']['kind']} ({t['n_parameters']:,} parameters), {t['n_images']} "
                  f"training images, {t['iterations_run']} iterations of {t['config']['batch_size']} on "
                  f"{', '.join(t['heads'])} ({t['seconds_train']} s). Validation ({va['n_images']} images, PGD 4/255): "
                  f"feature error {vb['feature_error_adv']:.4f} → {va['feature_error_purified_adv']:.4f} "
                  f"(clean through it {va['feature_error_purified_clean']:.5f}); flip rate "
                  f"{va['head0']['flip_rate']:.2f} → {va['head0']['flip_rate_after_purifier']:.2f}."]
    elif t:
        lines += ["", f"Learned purifier: {t['n_images']} training images, PGD flip rate on them "
                  f"{t['attack_flip_rate']:.2f}; L1 to clean {t['l1_adv_vs_clean']:.4f} → "
                  f"{t['l1_purified_adv_vs_clean']:.4f} (clean inputs: {t['l1_purified_clean_vs_clean']:.4f}); "
                  f"{t['seconds']} s."]
        if "feature_error_adv" in t:
            lines += ["", f"Representation-guided (feature weight {t['config']['feature_weight']:g}): relative "
                      f"feature error of the adversarial training images {t['feature_error_adv']:.4f} → "
                      f"{t['feature_error_purified_adv']:.4f} after the purifier (clean images through it: "
                      f"{t['feature_error_purified_clean']:.4f}); verdicts still flipped after it "
                      f"{t['flip_rate_after_purifier']:.2f} (non-adaptive, training images)."]
    lines += ["", "Seconds per stage: " + ", ".join(f"{k} {v}" for k, v in r["seconds"].items())]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
