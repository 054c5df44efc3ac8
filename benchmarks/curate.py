"""Curation throughput and memory: records/second with 1 and 2 worker processes, and peak memory at
two input sizes, to show that memory stays flat as the input grows.

The raw sample (1,714 real records) is replicated into a temporary .jsonl; each copy gets its copy
number appended to the title (and the ASIN), so dedupe keeps the copies as distinct products.
Each run is a fresh child process so its peak RSS (ru_maxrss) is its own; the workers' peak is the
largest of the children. For contrast, one child just loads the raw records into a list — the
memory a non-streaming pipeline would need before doing any work.

    python benchmarks/curate.py                      # 50,000 and 200,000 records, 1 and 2 workers
    python benchmarks/curate.py --sizes 20000 --workers 1,2
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_RAW = Path(os.environ.get("APPRAISER_DATA", REPO.parent / "shared" / "data")) / "raw"
SAMPLE = "meta_Health_and_Personal_Care.sample.jsonl"


def replicate(sample: Path, n: int, dest: Path) -> Path:
    """Write `n` records: copies of the sample with the copy number in title and ASIN."""
    records = [json.loads(line) for line in sample.read_text(encoding="utf-8").splitlines() if line.strip()]
    with open(dest, "w", encoding="utf-8") as f:
        for i in range(n):
            copy, rec = divmod(i, len(records))
            r = dict(records[rec])
            if copy:
                r["title"] = f"{r.get('title') or ''} (copy {copy})"
                r["parent_asin"] = f"{r.get('parent_asin')}-{copy}"
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    return dest


def peak_mib(who: int) -> float:
    return resource.getrusage(who).ru_maxrss / 1024  # KiB on Linux


def cpu_seconds(who: int) -> float:
    r = resource.getrusage(who)
    return r.ru_utime + r.ru_stime


def child_curate(path: str, out: str, workers: int) -> None:
    from appraiser.data.curate import CurateConfig, curate

    t0 = time.perf_counter()
    result = curate([path], out, CurateConfig(workers=workers), category="Health_and_Personal_Care")
    seconds = time.perf_counter() - t0
    s = result.stats
    print(
        json.dumps(
            {
                "records": s["records"],
                "kept": s["kept"],
                "seconds": seconds,
                "scan_seconds": s["scan_seconds"],
                "main_mib": peak_mib(resource.RUSAGE_SELF),
                "worker_mib": peak_mib(resource.RUSAGE_CHILDREN),
                "main_cpu": cpu_seconds(resource.RUSAGE_SELF),
                "worker_cpu": cpu_seconds(resource.RUSAGE_CHILDREN),
            }
        )
    )


def child_naive(path: str) -> None:
    with open(path, encoding="utf-8") as f:
        records = [json.loads(line) for line in f]
    print(json.dumps({"records": len(records), "main_mib": peak_mib(resource.RUSAGE_SELF)}))


def run_child(*args: str) -> dict:
    cmd = [sys.executable, __file__, "--child", *args]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="50000,200000", help="input sizes in records")
    ap.add_argument("--workers", default="1,2", help="worker counts to compare")
    ap.add_argument("--raw", type=Path, default=DEFAULT_RAW / SAMPLE, help="the raw sample to replicate")
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        if args.child[0] == "naive":
            child_naive(args.child[1])
        else:
            child_curate(args.child[0], args.child[1], int(args.child[2]))
        return

    sizes = [int(x) for x in args.sizes.split(",")]
    workers = [int(x) for x in args.workers.split(",")]
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f} at start")
    rows = []
    with tempfile.TemporaryDirectory(prefix="appraiser-bench-") as tmp:
        for n in sizes:
            t0 = time.perf_counter()
            path = replicate(args.raw, n, Path(tmp) / f"meta_Health_and_Personal_Care.x{n}.jsonl")
            size_mb = path.stat().st_size / 1e6
            print(f"\n{n:,} records ({size_mb:,.0f} MB) written in {time.perf_counter() - t0:.1f} s")
            naive = run_child("naive", str(path))
            print(f"  for contrast, json.loads of every record into a list: peak {naive['main_mib']:,.0f} MiB")
            for w in workers:
                r = run_child(str(path), str(Path(tmp) / f"out-{n}-{w}"), str(w))
                r.update(n=n, workers=w, rate=r["records"] / r["seconds"])
                rows.append(r)
                print(
                    f"  workers={w}: {r['seconds']:6.1f} s  {r['rate']:8,.0f} records/s  kept {r['kept']:,}  "
                    f"peak main {r['main_mib']:,.0f} MiB, largest worker {r['worker_mib']:,.0f} MiB  "
                    f"CPU main {r['main_cpu']:.1f} s, workers {r['worker_cpu']:.1f} s"
                )
            os.unlink(path)

    print(f"\nsummary (load average {os.getloadavg()[0]:.2f} at the end: wall times depend on other load)")
    print(
        f"{'records':>9} {'workers':>7} {'seconds':>8} {'records/s':>10} {'main MiB':>9} {'worker MiB':>10} "
        f"{'main CPU s':>10} {'worker CPU s':>12}"
    )
    for r in rows:
        print(
            f"{r['n']:>9,} {r['workers']:>7} {r['seconds']:>8.1f} {r['rate']:>10,.0f} "
            f"{r['main_mib']:>9,.0f} {r['worker_mib']:>10,.0f} "
            f"{r['main_cpu']:>10.1f} {r['worker_cpu']:>12.1f}"
        )
    for n in sizes:
        by_w = {r["workers"]: r for r in rows if r["n"] == n}
        if 1 not in by_w:
            continue
        serial_cpu = by_w[1]["main_cpu"]
        for w, r in by_w.items():
            if w == 1:
                continue
            # On otherwise idle cores a run can't be faster than its busiest process (the parent or a
            # worker), nor than all its CPU time spread over this machine's cores.
            cores = os.cpu_count() or 1
            bound = max(r["main_cpu"], r["worker_cpu"] / w, (r["main_cpu"] + r["worker_cpu"]) / cores)
            wall = by_w[1]["seconds"] / r["seconds"]
            print(
                f"speedup at {n:,} records, {w} workers vs 1: {wall:.2f}x wall clock; "
                f"best case on {cores} idle cores (from CPU times) {serial_cpu / bound:.2f}x "
                f"(1 worker {serial_cpu:.1f} CPU s; "
                f"{w} workers: parent {r['main_cpu']:.1f} s, workers {r['worker_cpu']:.1f} s)"
            )
    if len(sizes) > 1:
        small, big = min(sizes), max(sizes)
        for w in workers:
            a = next(r for r in rows if r["n"] == small and r["workers"] == w)
            b = next(r for r in rows if r["n"] == big and r["workers"] == w)
            print(
                f"memory, {w} worker(s): {small:,} → {big:,} records ({big / small:.0f}x input): main "
                f"{a['main_mib']:,.0f} → {b['main_mib']:,.0f} MiB, worker {a['worker_mib']:,.0f} → "
                f"{b['worker_mib']:,.0f} MiB"
            )


if __name__ == "__main__":
    main()
