"""The numbers of a comparison: per-run metrics, medians and min/max over repeats (time to target
counting 'not reached' as slowest), ratios against the reference algorithms, the winner, and the
results.json structure that holds them all (build_results).

registry() is the one place the report reads the algorithm registry and option table from.
"""

from __future__ import annotations

import math
import statistics
import time
from collections import Counter
from pathlib import Path

from .load import Run, comparable_settings, varies

SCHEMA = "asyncsgd.results/1"
REFERENCES = ("sync", "hogwild")  # ratios are reported against these algorithms
METRICS = ("final_test_accuracy", "best_test_accuracy", "final_test_loss", "samples_per_s", "achieved_flops", "mfu",
           "staleness_mean", "staleness_max", "bytes_sent", "wall_time_s", "workers")


def registry() -> tuple[dict, dict]:
    """(ALGORITHMS, options): the algorithm registry in its order, and which algorithms use each
    setting that only some use (from their specs). Every import of them in the report goes through here."""
    from ..algorithms.registry import ALGORITHMS

    options: dict[str, tuple] = {}
    for name, algo in ALGORITHMS.items():
        for option in algo.options:
            options[option] = options.get(option, ()) + (name,)
    return ALGORITHMS, options


def stats(values: list) -> dict:
    """Median, min and max of the values that are not None (all None: nulls), plus the values."""
    vals = [v for v in values if v is not None]
    if not vals:
        return {"median": None, "min": None, "max": None, "values": values}
    return {"median": statistics.median(vals), "min": min(vals), "max": max(vals), "values": values}


def ttt_stats(values: list) -> dict:
    """Median over repeats counting 'not reached' as infinitely slow: null if half or more never got there."""
    n = len(values)
    reached = sorted(v for v in values if v is not None)
    keyed = reached + [math.inf] * (n - len(reached))
    med = statistics.median(keyed) if n else math.inf
    return {"median": None if math.isinf(med) or math.isnan(med) else med,
            "min": reached[0] if reached else None,
            "max": reached[-1] if reached and len(reached) == n else None,
            "reached": len(reached), "runs": n, "values": values}


def ratio(num, den):
    return None if num is None or den is None or den == 0 else num / den


def run_time_to_target(run: Run, target: float | None) -> float | None:
    from ..records import time_to_target

    return time_to_target(run.metrics, target) if target is not None else None


def run_metrics(run: Run, target: float | None, flops: float | None, peak: float | None) -> dict:
    from ..mfu import mfu

    s = run.summary
    sps = s.get("samples_per_s")
    stale = s.get("staleness") or {}
    accs = [m.get("test_accuracy") for m in run.metrics if m.get("test_accuracy") is not None]
    return {
        "time_to_target_s": run_time_to_target(run, target),
        "final_test_accuracy": s.get("final_test_accuracy"),
        "best_test_accuracy": max(accs) if accs else None,
        "final_test_loss": s.get("final_test_loss"),
        "samples_per_s": sps,
        "achieved_flops": flops * sps if flops and sps is not None else None,
        "mfu": mfu(flops, sps, peak),
        "staleness_mean": stale.get("mean"),
        "staleness_max": stale.get("max"),
        "bytes_sent": s.get("bytes_sent"),
        "wall_time_s": s.get("wall_time_s"),
        "workers": s.get("workers"),
        "collapsed": bool(s.get("collapsed")),
    }


def median_run(members: list[Run], target) -> Run:
    """The median repeat by time to target (not reached: slowest), ties broken by final accuracy."""
    def key(r):
        t = run_time_to_target(r, target)
        acc = r.summary.get("final_test_accuracy") or 0.0
        return (math.inf if t is None else t, -acc)

    ranked = sorted(members, key=key)
    return ranked[(len(ranked) - 1) // 2]


def build_results(runs: list[Run], *, target: float | None, peak: dict | None, flops: dict, machine: dict | None = None,
                  suite: dict | None = None, run_order: list | None = None, scenario_info: dict | None = None,
                  base_dir: Path | None = None) -> dict:
    """The results.json structure: per scenario and label, statistics over repeats and ratios.

    flops: {scenario: FLOPs per sample or None}; peak: {'flops': F, 'source': ..., 'method': ...} or None.
    """
    peak_f = (peak or {}).get("flops")
    scenarios: dict = {}
    for name in ordered(r.scenario for r in runs):
        group = [r for r in runs if r.scenario == name]
        fps = flops.get(name)
        algos: dict = {}
        for label in label_order(r.label for r in group):
            members = [r for r in group if r.label == label]
            ok = [r for r in members if r.status == "ok"]
            per = [run_metrics(r, target, fps, peak_f) for r in ok]
            entry = {"runs": len(members), "completed": len(ok),
                     "failed": dict(Counter(r.status for r in members if r.status != "ok")),
                     "time_to_target_s": ttt_stats([p["time_to_target_s"] for p in per])}
            for k in METRICS:
                entry[k] = stats([p[k] for p in per])
            entry["collapsed"] = sum(p["collapsed"] for p in per)  # runs that collapsed (summary.json)
            entry["run_dirs"] = [_rel(r.dir, base_dir) for r in members]
            algos[label] = entry
        for label, e in algos.items():
            for ref in REFERENCES:
                r = reference(algos, ref)
                e[f"time_to_target_ratio_vs_{ref}"] = ratio(r["time_to_target_s"]["median"],
                                                            e["time_to_target_s"]["median"]) if r else None
                e[f"throughput_ratio_vs_{ref}"] = ratio(e["samples_per_s"]["median"],
                                                        r["samples_per_s"]["median"]) if r else None
        info = (scenario_info or {}).get(name, {})
        differ = _differences([r for r in group if r.summary])
        if differ:
            info = {**info, "differing_settings": differ}
        scenarios[name] = {**{k: v for k, v in info.items() if k not in ("flops_per_sample", "target_accuracy")},
                           "target_accuracy": target, "flops_per_sample": fps, "algorithms": algos,
                           "winner": _winner(algos, target)}
    out = {"schema": SCHEMA, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
           "machine": machine or {}, "peak_flops": peak, "target_accuracy": target}
    if suite is not None:
        out["suite"] = suite
    out["scenarios"] = scenarios
    out["run_order"] = run_order if run_order is not None else [
        {"index": i, "scenario": r.scenario, "algorithm": r.label, "repeat": r.repeat,
         "run_dir": _rel(r.dir, base_dir), "status": r.status, **({"error": r.error} if r.error else {}),
         **r.extra} for i, r in enumerate(runs)]
    out["run_dirs"] = [_rel(r.dir, base_dir) for r in runs]
    return out


def reference(algos: dict, ref: str) -> dict | None:
    """The entry ratios are taken against: the label `ref`, else the one label that is `ref` with a
    note in parentheses ("hogwild (single-device reference)" in the cluster suite)."""
    if ref in algos:
        return algos[ref]
    noted = [e for label, e in algos.items() if label.split(" (")[0] == ref]
    return noted[0] if len(noted) == 1 else None


def _differences(runs: list[Run]) -> dict:
    """{setting: {label: value}} for settings (not seeds, paths, ...) whose values differ between
    labels, among the algorithms that use the setting (an lpap-only --groups is not a difference
    between hogwild and sync, whose configs merely carry its default)."""
    _, options = registry()
    by_label: dict[str, tuple[str, dict]] = {}
    for r in runs:
        by_label.setdefault(r.label, (r.summary.get("algorithm"), comparable_settings(r)))
    keys = sorted({k for _, s in by_label.values() for k in s})
    out = {}
    for k in keys:
        users = options.get(k)
        values = {label: s.get(k) for label, (algo, s) in by_label.items() if users is None or algo in users}
        if varies(values.values()):
            out[k] = values
    return out


def _winner(algos: dict, target) -> dict | None:
    """The fastest to target, else the most accurate; an algorithm most of whose runs collapsed is
    not ranked (the report marks it instead)."""
    algos = {label: e for label, e in algos.items() if not e.get("collapsed", 0) * 2 > max(1, e["completed"])}
    timed = [(e["time_to_target_s"]["median"], label) for label, e in algos.items()
             if e["time_to_target_s"]["median"] is not None]
    if timed:
        t, label = min(timed)
        return {"by": "time_to_target_s", "algorithm": label, "value": t,
                **{f"ratio_vs_{ref}": algos[label][f"time_to_target_ratio_vs_{ref}"] for ref in REFERENCES}}
    accs = [(e["final_test_accuracy"]["median"], label) for label, e in algos.items()
            if e["final_test_accuracy"]["median"] is not None]
    if accs:
        a, label = max(accs)
        return {"by": "final_test_accuracy", "algorithm": label, "value": a}
    return None


def has_repeats(sc: dict) -> bool:
    """Whether some algorithm of this scenario finished more than one run (medians, min-max mean something)."""
    return any(e["completed"] > 1 for e in sc["algorithms"].values())


def ordered(items) -> list:
    """The distinct items in the order first seen."""
    out: list = []
    for x in items:
        if x not in out:
            out.append(x)
    return out


def label_order(labels) -> list:
    """Registry order (sequential, sync, hogwild, ...), then anything else as first seen."""
    algorithms, _ = registry()
    labels = ordered(labels)
    rank = {name: i for i, name in enumerate(algorithms)}
    return sorted(labels, key=lambda l: (rank.get(l.split(" ")[0], len(rank)), labels.index(l)))


def _rel(p: Path, base: Path | None) -> str:
    if base is not None:
        try:
            return str(Path(p).resolve().relative_to(Path(base).resolve()))
        except ValueError:
            pass
    return str(p)
