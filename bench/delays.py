#!/usr/bin/env python
"""Time to accuracy with a straggler and network latency: dasgd and lpap against sync.

A benchmark script, not a test: run it on a quiet machine.

    python bench/delays.py --out runs/bench-delays             # the real run (tens of minutes on 2 cores)
    python bench/delays.py --tiny --out /tmp/bench-delays       # smoke check of the script (~2 minutes)

Scenario (the PD-ASGD paper's delay experiments, scaled down to mnist1d): 4 workers, worker 1
four times slower (--straggler worker=1,slowdown=4), 20 ms on every message (--delay
latency=20ms), next to the same runs without straggler and delay ("clean", skip with --no-clean).
Every algorithm sees the same total samples (--epochs over the whole training set) and the same
seeds; runs are interleaved (sync dasgd lpap sync dasgd lpap ...) so drift of the machine hits
all alike. Each run is a plain `python -m asyncsgd train` in its own directory under --out.

Settings per algorithm (ALGOS below; --set ALGO:KEY=VALUE overrides): each gets the learning
rate that suits it on mnist1d, because a comparison against an untuned sync means nothing:
- sync: 4 workers x batch 32 = sequential with batch 128, which wants lr 0.1 (momentum 0.9).
- dasgd: momentum 0, lr 0.1 (the paper's plain SGD; with momentum 0.9 four asynchronous workers
  diverge on mnist1d, docs/distributed.md).
- lpap: 4 groups of 1 Hogwild! worker (so the straggler is one worker of four, as for the
  others; --lpap-layout 2x2 for 2 groups of 2 threads), defaults otherwise.

Output in --out: results.json (one record per run: time to target, final accuracy, wall time,
throughput, staleness, idle time per worker, bytes) and results.md (median time to the target
per algorithm and scenario, and the speed-up against sync).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ALGOS = {
    "sync": ["--workers", "4", "--lr", "0.1"],
    "dasgd": ["--workers", "4", "--momentum", "0", "--lr", "0.1"],
    "lpap": ["--groups", "4", "--workers-per-group", "1"],
}
SCENARIOS = {
    "straggler+latency": ["--straggler", "worker=1,slowdown=4", "--delay", "latency=20ms"],
    "clean": [],
}
KEEP = ("final_test_accuracy", "time_to_target_s", "wall_time_s", "samples_per_s", "samples", "updates",
        "bytes_sent", "messages_sent", "dropped_updates", "consensus_distance", "lost_workers")


def run_one(out: Path, algo: str, scenario: str, repeat: int, args, timeout: float) -> dict:
    run_dir = out / "runs" / scenario / f"{algo}-r{repeat}"
    cmd = [sys.executable, "-m", "asyncsgd", "train", "--algo", algo, "--task", "mnist1d",
           "--epochs", str(args.epochs), "--target-accuracy", str(args.target), "--seed", str(args.seed + repeat),
           "--eval-points", str(args.eval_points), "--threads-per-worker", "1", "--progress", "none",
           "--device", "cpu", "--out", str(run_dir), *ALGOS[algo], *SCENARIOS[scenario], *args.extra.get(algo, [])]
    t = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        rc, err = proc.returncode, proc.stderr
    except subprocess.TimeoutExpired:
        rc, err = None, f"timed out after {timeout:.0f} s"
    record = {"algorithm": algo, "scenario": scenario, "repeat": repeat, "exit_code": rc,
              "process_s": round(time.perf_counter() - t, 2), "command": " ".join(cmd)}
    summary_path = run_dir / "summary.json"
    if rc == 0 and summary_path.exists():
        s = json.loads(summary_path.read_text())
        record.update({k: s.get(k) for k in KEEP})
        record["staleness_mean"] = s["staleness"]["mean"]
        record["idle_s"] = [w["idle_s"] for w in s["per_worker"]]
        record["worker_samples"] = [w["samples"] for w in s["per_worker"]]
        if "exchange" in s:
            record["latency_ms_mean"] = s["exchange"]["latency_ms_mean"]
    else:
        record["error"] = err.strip().splitlines()[-1] if err.strip() else "no summary.json"
    return record


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def report(records: list[dict], args) -> str:
    lines = [f"# Time to {args.target:g} test accuracy: mnist1d, 4 workers, {args.epochs:g} epochs, "
             f"{args.repeats} repeat(s)", "",
             "Median over repeats; 'not reached' counts when fewer than half the repeats reached the target.", "",
             "| scenario | algorithm | time to target (s) | reached | final accuracy | wall time (s) | "
             "samples/s | staleness mean | speed-up vs sync |", "|---|---|---|---|---|---|---|---|---|"]
    for scenario in dict.fromkeys(r["scenario"] for r in records):
        rows = {a: [r for r in records if r["scenario"] == scenario and r["algorithm"] == a] for a in ALGOS}
        times = {}
        for algo, rs in rows.items():
            if not rs:
                continue
            reached = [r["time_to_target_s"] for r in rs if r.get("time_to_target_s") is not None]
            times[algo] = median(reached) if len(reached) * 2 >= len(rs) else None
        for algo, rs in rows.items():
            if not rs:
                continue
            t, ref = times.get(algo), times.get("sync")
            speedup = f"{ref / t:.2f}x" if t and ref else "n/a"
            fmt = lambda v, d=3: "n/a" if v is None else f"{v:.{d}f}"
            lines.append(f"| {scenario} | {algo} | {fmt(t, 2) if t is not None else 'not reached'} | "
                         f"{sum(r.get('time_to_target_s') is not None for r in rs)}/{len(rs)} | "
                         f"{fmt(median([r.get('final_test_accuracy') for r in rs]), 4)} | "
                         f"{fmt(median([r.get('wall_time_s') for r in rs]), 2)} | "
                         f"{fmt(median([r.get('samples_per_s') for r in rs]), 0)} | "
                         f"{fmt(median([r.get('staleness_mean') for r in rs]), 2)} | {speedup} |")
    failed = [r for r in records if r["exit_code"] != 0]
    if failed:
        lines += ["", "Failed runs:"] + [f"- {r['scenario']} {r['algorithm']} r{r['repeat']}: exit {r['exit_code']}: "
                                         f"{r.get('error', '')}" for r in failed]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--epochs", type=float, default=20.0, help="epochs of every run (default 20)")
    p.add_argument("--target", type=float, default=0.90, help="target test accuracy (default 0.90)")
    p.add_argument("--repeats", type=int, default=3, help="runs per algorithm and scenario (default 3)")
    p.add_argument("--seed", type=int, default=0, help="seed of repeat 0; repeat i uses seed + i")
    p.add_argument("--eval-points", type=int, default=40, help="snapshots per run (time-to-target resolution)")
    p.add_argument("--algos", default=",".join(ALGOS), help=f"comma-separated subset of {', '.join(ALGOS)}")
    p.add_argument("--no-clean", action="store_true", help="skip the runs without straggler and delay")
    p.add_argument("--lpap-layout", choices=("4x1", "2x2"), default="4x1", help="lpap groups x workers per group")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="ALGO:FLAG=VALUE",
                   help="extra train flag for one algorithm, e.g. dasgd:staleness=adaptive (repeatable)")
    p.add_argument("--timeout", type=float, default=1800, help="seconds per run before it is stopped")
    p.add_argument("--tiny", action="store_true", help="smoke check: 1 epoch, target 0.3, 1 repeat, 4 eval points")
    args = p.parse_args(argv)
    if args.tiny:
        args.epochs, args.target, args.repeats, args.eval_points = 1.0, 0.3, 1, 4
    if args.lpap_layout == "2x2":
        ALGOS["lpap"] = ["--groups", "2", "--workers-per-group", "2"]
    algos = [a.strip() for a in args.algos.split(",") if a.strip()]
    unknown = [a for a in algos if a not in ALGOS]
    if unknown:
        p.error(f"--algos {','.join(unknown)} not accepted; accepted: {', '.join(ALGOS)}")
    args.extra = {}
    for item in args.sets:
        algo, _, kv = item.partition(":")
        key, _, value = kv.partition("=")
        if algo not in ALGOS or not key:
            p.error(f"--set {item!r} not accepted; accepted: ALGO:FLAG=VALUE, e.g. dasgd:staleness=adaptive")
        args.extra.setdefault(algo, []).extend([f"--{key.replace('_', '-')}", value] if value else [f"--{key}"])
    scenarios = [s for s in SCENARIOS if not (args.no_clean and s == "clean")]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    records = []
    for repeat in range(args.repeats):
        for scenario in scenarios:
            for algo in algos:  # interleaved: A B C A B C
                r = run_one(out, algo, scenario, repeat, args, args.timeout)
                records.append(r)
                print(f"[bench/delays] {scenario} {algo} r{repeat}: exit {r['exit_code']} "
                      f"time to {args.target:g}: {r.get('time_to_target_s')} s, accuracy {r.get('final_test_accuracy')}",
                      file=sys.stderr, flush=True)
                (out / "results.json").write_text(json.dumps({"args": {k: v for k, v in vars(args).items()},
                                                              "algos": {a: ALGOS[a] for a in algos},
                                                              "scenarios": SCENARIOS, "runs": records}, indent=2) + "\n")
    (out / "results.md").write_text(report(records, args))
    print((out / "results.md").read_text())
    return 0 if all(r["exit_code"] == 0 for r in records) else 1


if __name__ == "__main__":
    raise SystemExit(main())
