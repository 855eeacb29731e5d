"""Scale: does `causalclip scan TREE | head -n 200` stay quick and small on trees of 1k–100k files?

For each size (default 1,000, 10,000 and 100,000 files) a tree is written in a temp dir: one tiny
8×8 JPEG made in memory, its bytes written to every file, 1,000 files per sub-folder. Then

    bash -c "python -m causalclip_cli scan TREE -c CKPT --format jsonl | stdbuf -oL head -n 200"

runs (stdbuf makes head pass each line on at once; without it GNU head holds its output in a buffer
until it exits, and the first-result time would be meaningless) and the script records:
  - time from starting the command to the first result line, and until the whole pipeline exits
    (the scan must notice the closed pipe and stop: it exits 141, quietly);
  - peak RSS of the scan's main process (its kernel high-water mark VmHWM, polled from /proc), of each
    DataLoader worker (separate processes), and the largest sampled sum over main + workers (RSS
    counts pages shared copy-on-write with the parent once per process, so the sum overstates; the
    PSS sum, where readable, splits shared pages fairly); plus /usr/bin/time's "maximum resident
    set size", which is the largest single process of main + reaped workers, not a sum;
  - whether the scan's stderr contains a Python traceback (it must not), and both exit codes.
The backbone is not what is measured, so the tiny random tower is the default (--real: ViT-B/16).
Trees are deleted after each size.

    python benchmarks/scale.py                       # 1k, 10k, 100k files
    python benchmarks/scale.py --sizes 200 1000      # quick check

Results: benchmarks/results/scale.json (scale_real.json with --real).

Engines (`--engines local ray`): instead of `| head`, a whole scan of each tree to a JSONL file,

    python -m causalclip_cli scan TREE -c CKPT --engine E --output OUT.jsonl --no-progress

once per engine and size, plus once on a 1-file tree (start-up cost: imports, model load, and for Ray
starting a local cluster and its actors). Recorded: wall time, images/s over the whole command and
after subtracting start-up, the largest sampled PSS sum over the scan and all its descendants (Ray's
GCS, raylet, workers and actors; DataLoader workers for the local engine), and whether both engines
wrote the same records. With the tiny tower this measures engine overhead, not the backbone;
`--real --images N` scans N real images of ../shared/data with the released ViT-B/16 head instead.

    python benchmarks/scale.py --engines local ray --sizes 1000 10000      # tiny tower: engine overhead
    python benchmarks/scale.py --engines local ray --real --images 64      # ViT-B/16 throughput

Results: benchmarks/results/scale_engines.json (scale_engines_real.json with --real).
"""

from __future__ import annotations

import argparse
import io
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _util import REPO, apply_threads, log, machine_info, make_checkpoint, write_results  # noqa: E402

GNU_TIME = "/usr/bin/time"
# Fallback when GNU time is missing: run the scan as a child and report RUSAGE_CHILDREN's ru_maxrss (KiB),
# the same number GNU time reports (max over the scan and its reaped descendants).
RUSAGE_WRAPPER = (
    "import resource, subprocess, sys\n"
    "rc = subprocess.call(sys.argv[2:])\n"
    "open(sys.argv[1], 'w').write(f'Maximum resident set size (kbytes): "
    "{resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}\\n')\n"
    "sys.exit(rc if rc >= 0 else 128 - rc)\n"
)


def tiny_jpeg() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (120, 80, 200)).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def make_tree(root: Path, n: int, per_dir: int, data: bytes) -> float:
    """n copies of `data` in sub-folders of `per_dir` files; returns seconds taken."""
    t0 = time.perf_counter()
    for d in range(0, n, per_dir):
        sub = root / f"d{d // per_dir:04d}"
        sub.mkdir(parents=True)
        for i in range(d, min(d + per_dir, n)):
            fd = os.open(sub / f"f{i:07d}.jpg", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                os.write(fd, data)
            finally:
                os.close(fd)
    return time.perf_counter() - t0


# --------------------------------------------------------------------------- /proc memory sampling


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return fh.read()
    except OSError:  # the process exited between listing and reading
        return None


def _ppid(pid: int) -> int | None:
    stat = _read(f"/proc/{pid}/stat")
    if not stat:
        return None
    # Field 4, after the command name in parentheses (which may itself contain spaces or ')').
    return int(stat[stat.rindex(")") + 2:].split()[1])


def _is_scan(pid: int) -> bool:
    raw = _read(f"/proc/{pid}/cmdline")
    args = raw.split("\0") if raw else []
    # `python -m causalclip_cli scan ...` itself, not a wrapper (time, bash) that carries it in its argv.
    return args[1:4] == ["-m", "causalclip_cli", "scan"]


def _kib(text: str, key: str) -> int | None:
    m = re.search(rf"^{key}:\s+(\d+) kB", text, re.M)
    return int(m.group(1)) if m else None


@dataclass
class MemoryWatch:
    """Polls /proc for the scan's main process (a descendant of `root`) and its worker processes."""

    root: int
    interval: float = 0.05
    pss: bool = True
    main_pid: int | None = None
    main_hwm_kib: int = 0
    worker_hwm_kib: dict[int, int] = field(default_factory=dict)
    peak_sum_rss_kib: int = 0
    peak_sum_pss_kib: int = 0
    max_workers_alive: int = 0
    samples: int = 0
    _parents: dict[int, int] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _descendants(self, of: int) -> list[int]:
        # No /proc/PID/task/TID/children on every kernel: map parents once per new pid instead.
        for name in os.listdir("/proc"):
            if name.isdigit():
                pid = int(name)
                if pid not in self._parents:
                    ppid = _ppid(pid)
                    if ppid is not None:
                        self._parents[pid] = ppid
        kids: dict[int, list[int]] = {}
        for pid, ppid in self._parents.items():
            kids.setdefault(ppid, []).append(pid)
        out, stack = [], [of]
        while stack:
            for k in kids.get(stack.pop(), []):
                out.append(k)
                stack.append(k)
        return out

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def sample(self) -> None:
        if self.main_pid is None:
            for pid in self._descendants(self.root):
                # The main process is the scan whose parent is not a scan (workers are forks of it).
                if _is_scan(pid) and not _is_scan(self._parents.get(pid, 0)):
                    self.main_pid = pid
                    break
            if self.main_pid is None:
                return
        pids = [self.main_pid, *self._descendants(self.main_pid)]
        rss_sum = pss_sum = alive_workers = 0
        for pid in pids:
            status = _read(f"/proc/{pid}/status")
            if not status:
                continue
            hwm, rss = _kib(status, "VmHWM"), _kib(status, "VmRSS")
            if hwm is None:  # a zombie: its memory is gone
                continue
            if pid == self.main_pid:
                self.main_hwm_kib = max(self.main_hwm_kib, hwm)
            else:
                alive_workers += 1
                self.worker_hwm_kib[pid] = max(self.worker_hwm_kib.get(pid, 0), hwm)
            rss_sum += rss or 0
            if self.pss:
                rollup = _read(f"/proc/{pid}/smaps_rollup")
                pss_sum += (_kib(rollup, "Pss") or 0) if rollup else 0
        self.samples += 1
        self.max_workers_alive = max(self.max_workers_alive, alive_workers)
        self.peak_sum_rss_kib = max(self.peak_sum_rss_kib, rss_sum)
        self.peak_sum_pss_kib = max(self.peak_sum_pss_kib, pss_sum)


# --------------------------------------------------------------------------- one run


def _mib(kib: int | None) -> float | None:
    return round(kib / 1024, 1) if kib else None


def run_one(tree: Path, n: int, ckpt: Path, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    scan = [sys.executable, "-m", "causalclip_cli", "scan", str(tree), "-c", str(ckpt), "--format", "jsonl",
            "--no-progress"]
    if args.workers is not None:
        scan += ["--workers", str(args.workers)]
    if args.batch_size is not None:
        scan += ["--batch-size", str(args.batch_size)]
    rss_file, err_file, rc_file = work / "rusage.txt", work / "scan.stderr", work / "rc.txt"
    if os.access(GNU_TIME, os.X_OK):
        wrapped = [GNU_TIME, "-v", "-o", str(rss_file), *scan]
        rss_tool = "GNU time -v"
    else:
        wrapped = [sys.executable, "-c", RUSAGE_WRAPPER, str(rss_file), *scan]
        rss_tool = "getrusage(RUSAGE_CHILDREN) wrapper"
    head = f"head -n {args.lines}"
    if shutil.which("stdbuf"):
        head = "stdbuf -oL " + head
    script = (f"{shlex.join(wrapped)} 2>{shlex.quote(str(err_file))} | {head}; "
              f"s=(\"${{PIPESTATUS[@]}}\"); echo \"${{s[0]}} ${{s[1]}}\" > {shlex.quote(str(rc_file))}; "
              f"exit \"${{s[0]}}\"")
    for f in (rss_file, err_file, rc_file):
        f.unlink(missing_ok=True)

    t0 = time.perf_counter()
    proc = subprocess.Popen(["bash", "-c", script], cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    watch = MemoryWatch(proc.pid, interval=args.poll, pss=os.path.exists("/proc/self/smaps_rollup"))
    watch.start()
    assert proc.stdout is not None
    first = proc.stdout.readline()
    t_first = time.perf_counter() - t0 if first else None
    lines = 1 if first else 0
    t_last = t_first
    for _ in proc.stdout:
        lines += 1
        t_last = time.perf_counter() - t0
    # (EOF on this pipe only comes when bash exits: bash holds the pipe too, so time the last line instead.)
    bash_err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    rc_bash = proc.wait()
    wall = time.perf_counter() - t0
    watch.stop()

    stderr = (err_file.read_text(errors="replace") if err_file.exists() else "") + bash_err
    codes = rc_file.read_text().split() if rc_file.exists() else []
    scan_rc = int(codes[0]) if codes else rc_bash
    rus = rss_file.read_text(errors="replace") if rss_file.exists() else ""
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", rus)
    workers = sorted(watch.worker_hwm_kib.values())
    max_single = int(m.group(1)) if m else None
    # Polling can miss the main process's last growth; the wait() figure is exact, and when it exceeds
    # every worker's peak it can only be the main process's.
    main_peak = watch.main_hwm_kib
    if max_single is not None and max_single > max(workers, default=0):
        main_peak = max(main_peak, max_single)
    return {
        "files": n,
        "command": script,
        "first_result_s": round(t_first, 3) if t_first is not None else None,
        "last_line_s": round(t_last, 3) if t_last is not None else None,
        "wall_s": round(wall, 3),
        "lines": lines,
        "scan_exit_code": scan_rc,  # 141: the scan saw the pipe close and stopped quietly
        "head_exit_code": int(codes[1]) if len(codes) > 1 else None,
        "traceback_in_stderr": "Traceback" in stderr,
        "stderr_tail": stderr[-1500:] if ("Traceback" in stderr or scan_rc not in (0, 1, 141)) else None,
        "main_peak_rss_mib": _mib(main_peak),
        "main_peak_rss_mib_polled": _mib(watch.main_hwm_kib),
        "workers_seen": len(workers),
        "workers_max_alive": watch.max_workers_alive,
        "worker_peak_rss_mib_max": _mib(max(workers)) if workers else None,
        "worker_peak_rss_mib_sum": _mib(sum(workers)) if workers else None,
        "tree_peak_sum_rss_mib": _mib(watch.peak_sum_rss_kib),
        "tree_peak_sum_pss_mib": _mib(watch.peak_sum_pss_kib) if watch.pss else None,
        "max_single_process_rss_mib": _mib(max_single),
        "max_single_process_rss_tool": rss_tool,
        "memory_samples": watch.samples,
    }


# --------------------------------------------------------------------------- engines: local vs ray


def run_engine(tree: Path, n: int, ckpt: Path, engine: str, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    out = work / f"out-{engine}-{n}.jsonl"
    scan = [sys.executable, "-m", "causalclip_cli", "scan", str(tree), "-c", str(ckpt), "--engine", engine,
            "--output", str(out), "--no-progress"]
    if args.batch_size is not None:
        scan += ["--batch-size", str(args.batch_size)]
    if engine == "local" and args.workers is not None:
        scan += ["--workers", str(args.workers)]
    err_file = work / "engine.stderr"
    # `; exit $?` keeps bash from exec'ing the scan, so the watch finds it as a descendant.
    script = f"{shlex.join(scan)} 2>{shlex.quote(str(err_file))}; exit $?"
    t0 = time.perf_counter()
    proc = subprocess.Popen(["bash", "-c", script], cwd=REPO, stdin=subprocess.DEVNULL)
    watch = MemoryWatch(proc.pid, interval=args.poll, pss=os.path.exists("/proc/self/smaps_rollup"))
    watch.start()
    rc = proc.wait()
    wall = time.perf_counter() - t0
    watch.stop()
    stderr = err_file.read_text(errors="replace") if err_file.exists() else ""
    m = re.search(r"(\d+) image\(s\) in ([\d.]+) s", stderr)
    records = out.read_text().splitlines() if out.exists() else []
    return {
        "engine": engine, "files": n, "command": shlex.join(scan), "exit_code": rc, "wall_s": round(wall, 2),
        "records": len(records), "summary_images": int(m.group(1)) if m else None,
        "summary_seconds": float(m.group(2)) if m else None,
        "peak_sum_pss_mib": _mib(watch.peak_sum_pss_kib) if watch.pss else None,
        "peak_sum_rss_mib": _mib(watch.peak_sum_rss_kib), "main_peak_rss_mib": _mib(watch.main_hwm_kib),
        "processes_seen": 1 + len(watch.worker_hwm_kib), "traceback_in_stderr": "Traceback" in stderr,
        "stderr_tail": stderr[-1500:] if rc not in (0, 1, 3) or "Traceback" in stderr else None,
        "output": str(out),
    }


def _same_records(a: Path, b: Path) -> dict[str, Any]:
    import json

    ra = [json.loads(x) for x in a.read_text().splitlines()] if a.exists() else []
    rb = [json.loads(x) for x in b.read_text().splitlines()] if b.exists() else []
    same_paths = [r["path"] for r in ra] == [r["path"] for r in rb]
    diffs = [abs(x["probability"] - y["probability"]) for x, y in zip(ra, rb, strict=False)
             if x["probability"] is not None and y["probability"] is not None]
    labels = sum(x["label"] == y["label"] and x["error"] == y["error"] for x, y in zip(ra, rb, strict=False))
    return {"same_paths_in_order": same_paths, "max_abs_prob_diff": max(diffs, default=None),
            "same_label_and_error": labels, "records": [len(ra), len(rb)]}


def engines_main(args: argparse.Namespace) -> None:
    from _util import SHARED_DATA, list_images, mirror_with_symlinks, spread

    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="causalclip-engines-", dir=args.tmpdir) as tmp_name:
        tmp = Path(tmp_name)
        ckpt, ckpt_desc = make_checkpoint(tmp, tiny=not args.real)
        log(f"checkpoint: {ckpt_desc}")
        trees: list[tuple[int, Path]] = []
        if args.real:
            files = spread(list_images(SHARED_DATA), args.images)
            one = mirror_with_symlinks(files[:1], SHARED_DATA, tmp / "tree-1")
            trees = [(1, one), (len(files), mirror_with_symlinks(files, SHARED_DATA, tmp / f"tree-{len(files)}"))]
        else:
            data = tiny_jpeg()
            for n in [1, *args.sizes]:
                make_tree(tmp / f"tree-{n}", n, args.per_dir, data)
                trees.append((n, tmp / f"tree-{n}"))
        for n, tree in trees:
            outs = {}
            for engine in args.engines:
                log(f"{engine}: scanning {n:,} files ...")
                row = run_engine(tree, n, ckpt, engine, args, tmp)
                outs[engine] = Path(row.pop("output"))
                rows.append(row)
                log(f"    wall {row['wall_s']} s, exit {row['exit_code']}, records {row['records']}, "
                    f"peak PSS sum {row['peak_sum_pss_mib']} MiB")
                if row["stderr_tail"]:
                    log(row["stderr_tail"])
            if len(outs) == 2:
                rows[-1]["agreement_with_" + args.engines[0]] = _same_records(*outs.values())
    startup = {r["engine"]: r["wall_s"] for r in rows if r["files"] == 1}
    for r in rows:
        r["images_per_s"] = round(r["files"] / r["wall_s"], 2)
        busy = r["wall_s"] - startup.get(r["engine"], 0.0)
        r["images_per_s_after_startup"] = round(r["files"] / busy, 2) if r["files"] > 1 and busy > 0 else None
    result = {
        "benchmark": "scale_engines",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine_info("cpu"),
        "settings": {"checkpoint": ckpt_desc, "engines": args.engines, "batch_size": args.batch_size,
                     "workers": args.workers, "threads": args.threads, "poll_s": args.poll, "real": args.real},
        "notes": [
            "files == 1 rows: start-up cost (wall time of a 1-file scan)",
            "images_per_s: files / wall_s (whole command); images_per_s_after_startup: files / (wall_s - the "
            "same engine's 1-file wall_s)",
            "peak_sum_pss_mib: largest sampled PSS sum over the scan and every descendant process (Ray: GCS, "
            "raylet, workers, actors; local: DataLoader workers). Ray processes that detach from the scan's "
            "process tree are not counted",
        ],
        "runs": rows,
    }
    path = write_results("scale_engines_real" if args.real else "scale_engines", result, args.out)
    log("")
    log(f"{'engine':>6} {'files':>7} {'wall s':>8} {'img/s':>8} {'img/s-su':>9} {'PSS MiB':>8} {'exit':>5}")
    for r in rows:
        su = r["images_per_s_after_startup"]
        log(f"{r['engine']:>6} {r['files']:>7,} {r['wall_s']:>8.1f} {r['images_per_s']:>8.1f} "
            f"{(f'{su:.1f}' if su else '-'):>9} {r['peak_sum_pss_mib'] or 0:>8.0f} {r['exit_code']:>5}")
    log(f"\nwrote {path}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1_000, 10_000, 100_000])
    ap.add_argument("--per-dir", type=int, default=1_000, help="files per sub-folder")
    ap.add_argument("--lines", type=int, default=200, help="head -n LINES")
    ap.add_argument("--real", action="store_true", help="ViT-B/16 instead of the tiny random tower")
    ap.add_argument("--workers", type=int, default=None, help="pass --workers to the scan (default: its own)")
    ap.add_argument("--batch-size", type=int, default=None, help="pass --batch-size (default: its own)")
    ap.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS for the scan")
    ap.add_argument("--poll", type=float, default=0.05, help="seconds between /proc memory samples")
    ap.add_argument("--tmpdir", type=Path, default=None, help="where to build the trees (default: system temp)")
    ap.add_argument("--out", type=Path, default=None, help="results folder (default benchmarks/results)")
    ap.add_argument("--engines", nargs="+", choices=["local", "ray"], default=None,
                    help="compare whole scans per engine (throughput, start-up, memory) instead of `| head`")
    ap.add_argument("--images", type=int, default=64, help="--engines --real: how many real images")
    args = ap.parse_args()
    apply_threads(args.threads)
    if args.engines:
        engines_main(args)
        return

    rows: list[dict[str, Any]] = []
    data = tiny_jpeg()
    with tempfile.TemporaryDirectory(prefix="causalclip-scale-", dir=args.tmpdir) as tmp_name:
        tmp = Path(tmp_name)
        ckpt, ckpt_desc = make_checkpoint(tmp, tiny=not args.real)
        log(f"checkpoint: {ckpt_desc}")
        for n in args.sizes:
            tree = tmp / f"tree-{n}"
            made = make_tree(tree, n, args.per_dir, data)
            log(f"{n:,} files written in {made:.1f} s; scanning | head -n {args.lines} ...")
            try:
                row = run_one(tree, n, ckpt, args, tmp)
            finally:
                shutil.rmtree(tree, ignore_errors=True)  # 100k inodes: do not keep them around
            row["tree_write_s"] = round(made, 2)
            rows.append(row)
            log(f"    first {row['first_result_s']} s, wall {row['wall_s']} s, main peak "
                f"{row['main_peak_rss_mib']} MiB, exit {row['scan_exit_code']}, "
                f"traceback {'YES' if row['traceback_in_stderr'] else 'no'}")
            if row["stderr_tail"]:
                log(row["stderr_tail"])

    result = {
        "benchmark": "scale",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine_info("cpu"),
        "settings": {"lines": args.lines, "per_dir": args.per_dir, "checkpoint": ckpt_desc, "workers": args.workers,
                     "batch_size": args.batch_size, "threads": args.threads, "poll_s": args.poll},
        "notes": [
            "first_result_s: command start (bash) to the first line out of `stdbuf -oL head`",
            "wall_s: until bash exits, i.e. both the scan and head have exited",
            "main_peak_rss_mib: VmHWM of the scan's main process polled from /proc every poll_s seconds, raised "
            "to max_single_process_rss_mib when that exceeds every worker's peak (then it is the main's)",
            "worker_*: VmHWM of each DataLoader worker process; tree_peak_sum_*: largest sampled sum over main "
            "+ workers (RSS double-counts copy-on-write pages, PSS does not)",
            "max_single_process_rss_mib: ru_maxrss of the scan as reported at wait(): the largest single "
            "process among main and reaped workers, not a sum",
        ],
        "runs": rows,
    }
    path = write_results("scale_real" if args.real else "scale", result, args.out)

    log("")
    hdr = (f"{'files':>8} {'first s':>8} {'wall s':>8} {'peak RSS MB':>12} {'worker MB':>10} "
           f"{'sum PSS MB':>11} {'exit':>5} {'traceback':>10}")
    log(hdr)
    log("-" * len(hdr))
    for r in rows:
        def fmt(v: float | None, w: int, nd: int = 2) -> str:
            return f"{v:>{w}.{nd}f}" if v is not None else f"{'-':>{w}}"

        log(f"{r['files']:>8,} {fmt(r['first_result_s'], 8)} {fmt(r['wall_s'], 8)} "
            f"{fmt(r['main_peak_rss_mib'], 12, 1)} {fmt(r['worker_peak_rss_mib_max'], 10, 1)} "
            f"{fmt(r['tree_peak_sum_pss_mib'], 11, 1)} {r['scan_exit_code']:>5} "
            f"{'YES' if r['traceback_in_stderr'] else 'no':>10}")
    log("(peak RSS = scan main process; worker MB = largest DataLoader worker; sum PSS = main + workers)")
    log(f"\nwrote {path}")


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
