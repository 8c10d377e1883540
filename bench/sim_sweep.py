"""Sweep the simulated cluster from a few to a thousand workers under heavy-tailed stragglers.

    python bench/sim_sweep.py                       # 4..1024 workers, sync vs dasgd, logreg
    python bench/sim_sweep.py --workers 4,16,64     # smaller, a minute or two
    python bench/sim_sweep.py --out bench/results/sim-sweep

Every point is one `--runtime sim` run (in this process, one thread, deterministic). The cluster:
each batch costs forward 10 ms + backward 20 ms at best, times a Pareto(1.5) factor (minimum 1,
mean 3, P(factor > x) = x^-1.5: most steps near the best case, a heavy tail of stragglers), and
every message or collective pays 1 ms latency with exponential jitter plus 10 Gbit/s transfer.
Same task, seed, epochs (total samples) and target for every point; sync with its default linear
lr scaling (lr x N) and with --lr-scaling none (sync:none), dasgd as analysed (plain SGD at lr
0.1, an update per message, --staleness none) and with --staleness scale (dasgd:scale). Writes results.json and results.md (the table
docs/simulator.md quotes) to --out, and prints the table.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from asyncsgd.config import RunConfig
from asyncsgd.errors import DivergedError
from asyncsgd.runner import run

DASGD_PLAIN = dict(momentum=0.0, lr=0.1, send_every=1)
CLUSTER = dict(sim_forward_s=0.010, sim_backward_s=0.020, sim_compute="pareto:1.5",
               delay="latency=1ms,jitter=exp,bandwidth=10Gbps")


def point(spec: str, workers: int, args, out: Path) -> dict:
    """One run. spec: an algorithm name, optionally with a variant: dasgd:POLICY (--staleness POLICY),
    sync:SCALING (--lr-scaling SCALING, e.g. sync:none keeps the lr at N workers)."""
    algo, _, variant = spec.partition(":")
    name = f"{spec.replace(':', '-')}-{workers}"
    extra = {"lr_scaling": variant} if algo == "sync" and variant else {}
    if algo == "dasgd":  # the analysed algorithm (plain SGD, an update per message), not dasgd's defaults
        extra = {**DASGD_PLAIN, "staleness": variant or "none"}
    cfg = RunConfig(algorithm=algo, runtime="sim", task=args.task, sim_workers=workers, epochs=args.epochs,
                    batch_size=args.batch_size, seed=args.seed, target_accuracy=args.target, eval_points=args.eval_points,
                    progress="none", out=str(out / name), **CLUSTER, **extra)
    t = time.perf_counter()
    try:
        s = run(cfg)
    except DivergedError as e:
        return {"algorithm": spec, "workers": workers, "diverged": str(e), "host_s": round(time.perf_counter() - t, 1)}
    metrics = _metrics(out / name)
    loss_target = s["optimal_loss"] + args.loss_gap if s["optimal_loss"] is not None else None
    reached = [r["wall_time_s"] for r in metrics if loss_target is not None and r["train_loss"] <= loss_target]
    return {"algorithm": spec, "workers": workers, "time_to_target_s": s["time_to_target_s"],
            "time_to_loss_s": min(reached) if reached else None, "loss_target": loss_target,
            "sim_time_s": s["sim_time_s"], "final_test_accuracy": s["final_test_accuracy"],
            "best_test_accuracy": max(r["test_accuracy"] for r in metrics),
            "final_train_loss": s["final_train_loss"],
            "staleness_mean": s["staleness"]["mean"], "staleness_max": s["staleness"]["max"],
            "updates": s["updates"], "messages_sent": s["messages_sent"], "bytes_sent": s["bytes_sent"],
            "host_s": round(time.perf_counter() - t, 1)}


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


def table(rows: list[dict], args) -> str:
    fmt = lambda v, spec: "-" if v is None else format(v, spec)
    lines = [f"task {args.task}, {args.epochs:g} epochs, batch {args.batch_size}/worker, seed {args.seed}, "
             f"target test accuracy {args.target}, target train loss optimum + {args.loss_gap:g}; "
             "compute 10+20 ms x Pareto(1.5); network 1 ms latency (exp jitter) + 10 Gbit/s", "",
             "| algorithm | workers | time to acc target (sim s) | time to loss target (sim s) | run time (sim s) | "
             "final acc | final train loss | staleness mean / max | messages | host s |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if "diverged" in r:
            lines.append(f"| {r['algorithm']} | {r['workers']} | diverged | - | - | - | - | - | - | {r['host_s']} |")
            continue
        ttt = "not reached" if r["time_to_target_s"] is None else fmt(r["time_to_target_s"], ".2f")
        ttl = "not reached" if r["time_to_loss_s"] is None else fmt(r["time_to_loss_s"], ".2f")
        lines.append(f"| {r['algorithm']} | {r['workers']} | {ttt} | {ttl} | {r['sim_time_s']:.2f} | "
                     f"{r['final_test_accuracy']:.3f} | {r['final_train_loss']:.3f} | "
                     f"{r['staleness_mean']:.1f} / {r['staleness_max']} | {r['messages_sent']:,} | {r['host_s']} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.error = lambda message: p.exit(2, f"sim_sweep.py: {message}; accepted: see --help\n")  # one line, not argparse's usage block
    p.add_argument("--workers", default="4,16,64,256,1024", help="comma-separated virtual worker counts")
    p.add_argument("--algos", default="sync,sync:none,dasgd,dasgd:scale",
                   help="comma-separated algorithms with optional variants: dasgd:scale (--staleness), "
                        "sync:none (--lr-scaling)")
    p.add_argument("--task", default="logreg")
    p.add_argument("--epochs", type=float, default=20.0)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--target", type=float, default=0.80, help="target test accuracy")
    p.add_argument("--loss-gap", type=float, default=0.02, help="target train loss: the task's optimum + this")
    p.add_argument("--eval-points", type=int, default=200, help="snapshots per run: the time-to-target resolution")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/sim-sweep")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for workers in (int(w) for w in args.workers.split(",")):
        for algo in args.algos.split(","):
            rows.append(point(algo, workers, args, out))
            print(json.dumps(rows[-1]), flush=True)
    (out / "results.json").write_text(json.dumps({"settings": vars(args), "cluster": CLUSTER, "rows": rows}, indent=2) + "\n")
    text = table(rows, args)
    (out / "results.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
