"""`asyncsgd report DIR [DIR...]`: tables and plots that compare runs, from their run records.

A DIR is a run directory (summary.json + metrics.jsonl, written by `asyncsgd train` or by a
bench), a bench output directory (results.json + runs/), or a folder holding run directories
somewhere below it. The report is what `asyncsgd bench` writes too (bench calls this module):

- results.json: per scenario and algorithm, median and min/max over repeats of time to the
  target accuracy, final test accuracy, samples/s, achieved FLOP/s and MFU, staleness mean and
  max, bytes sent; ratios against sync and hogwild (>1: this algorithm is better); run dirs.
- report.md: a table per scenario at the top (who wins, by how much), then the plots.
- accuracy-<scenario>.png (test accuracy vs wall-clock time and vs samples), speed-<scenario>.png
  (time to target, throughput, MFU), staleness-<scenario>.png (histograms).

Runs given as plain directories are grouped into scenarios by task (and model); runs of one
algorithm whose settings differ (workers=2 vs 4, ...) get labels naming the difference, runs with
equal settings are repeats of one another.
"""

from __future__ import annotations

import json
import math
import re
import statistics
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ConfigError

SCHEMA = "asyncsgd.results/1"
REFERENCES = ("sync", "hogwild")  # ratios are reported against these algorithms
# Settings that do not make two runs different methods (they are repeats of each other).
_NOT_A_DIFFERENCE = {"seed", "out", "resume", "progress", "target_accuracy", "eval_points", "checkpoint_every",
                     "stall_timeout", "threads_per_worker", "data_dir", "algorithm"}


@dataclass
class Run:
    """One run directory, read back, plus where it sits in a comparison."""

    dir: Path
    summary: dict | None
    metrics: list[dict]
    scenario: str = ""
    label: str = ""
    repeat: int = 0
    status: str = "ok"  # ok | diverged | error (bench records failed runs too)
    error: str | None = None
    extra: dict = field(default_factory=dict)


# -- reading ------------------------------------------------------------------------------------

def load_run(path) -> Run:
    """Read one run directory; ConfigError naming it if summary.json or metrics.jsonl is missing or bad."""
    d = Path(path)
    try:
        summary = json.loads((d / "summary.json").read_text())
        lines = (d / "metrics.jsonl").read_text().splitlines()
        metrics = [json.loads(line) for line in lines if line.strip()]
    except FileNotFoundError as e:
        raise ConfigError(f"report dir {str(d)!r} has no {Path(e.filename).name}; accepted: a run directory "
                          "(summary.json + metrics.jsonl) or a bench directory (results.json)") from None
    except (OSError, ValueError) as e:
        raise ConfigError(f"report dir {str(d)!r} holds an unreadable run record ({str(e).splitlines()[0][:100]}); "
                          "accepted: summary.json and metrics.jsonl as asyncsgd writes them") from None
    if not isinstance(summary, dict) or "algorithm" not in summary:
        raise ConfigError(f"report dir {str(d)!r}: summary.json has no 'algorithm'; accepted: a summary.json "
                          "written by asyncsgd")
    return Run(dir=d, summary=summary, metrics=metrics)


def collect(dirs) -> tuple[list[Run], dict]:
    """Runs from every DIR, plus what a bench directory recorded (machine, suite, run order).

    Bench directories keep their scenarios, labels and repeats; other runs are grouped here.
    """
    runs: list[Run] = []
    loose: list[Run] = []
    meta: dict = {}
    seen: set[Path] = set()
    for raw in dirs:
        d = Path(raw)
        if not d.is_dir():
            raise ConfigError(f"report dir {str(raw)!r} does not exist or is not a directory; accepted: a run "
                              "directory (summary.json + metrics.jsonl) or a bench directory (results.json)")
        if (d / "results.json").is_file():
            bench_runs, bench_meta = _load_bench(d)
            for r in bench_runs:
                if r.dir.resolve() not in seen:
                    seen.add(r.dir.resolve())
                    runs.append(r)
            if not meta:
                meta = bench_meta
            continue
        found = [d] if (d / "summary.json").exists() else sorted(p.parent for p in d.rglob("summary.json"))
        if not found:
            raise ConfigError(f"report dir {str(raw)!r} holds no run record (no summary.json or results.json "
                              "in it or below it); accepted: a run directory or a bench directory")
        for rd in found:
            if rd.resolve() not in seen:
                seen.add(rd.resolve())
                loose.append(load_run(rd))
    _group(loose)
    return runs + loose, meta


def _load_bench(d: Path) -> tuple[list[Run], dict]:
    try:
        res = json.loads((d / "results.json").read_text())
        order = res["run_order"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"report dir {str(d)!r}: results.json is not a bench result ({type(e).__name__}: "
                          f"{str(e)[:80]}); accepted: results.json written by asyncsgd bench") from None
    runs = []
    for entry in order:
        rd = d / entry["run_dir"]
        if entry.get("status", "ok") == "ok":
            run = load_run(rd)
        else:
            run = Run(dir=rd, summary=None, metrics=[])
        run.scenario, run.label, run.repeat = entry["scenario"], entry["algorithm"], entry.get("repeat", 0)
        run.status, run.error = entry.get("status", "ok"), entry.get("error")
        run.extra = {k: entry[k] for k in ("index", "seed", "started_at", "elapsed_s") if k in entry}
        runs.append(run)
    meta = {k: res.get(k) for k in ("machine", "suite", "target_accuracy")}
    meta["bench"] = {k: res[k] for k in ("complete", "bench_elapsed_s") if k in res}
    meta["scenario_info"] = {name: {k: v for k, v in sc.items() if k in ("settings", "flops_per_sample",
                                                                           "target_accuracy", "adjustments")}
                             for name, sc in (res.get("scenarios") or {}).items()}
    return runs, meta


def _group(runs: list[Run]) -> None:
    """Scenario = task (plus model where a task was run with several); label = algorithm (plus settings)."""
    models: dict[str, set] = {}
    for r in runs:
        models.setdefault(r.summary.get("task", "?"), set()).add(r.summary.get("model"))
    for r in runs:
        task = r.summary.get("task", "?")
        r.scenario = task if len(models[task]) == 1 else f"{task}-{r.summary.get('model')}"
    by_algo: dict[tuple, list[Run]] = {}
    for r in runs:
        by_algo.setdefault((r.scenario, r.summary["algorithm"]), []).append(r)
    for (_, algo), group in by_algo.items():
        configs = [r.summary.get("config") or {} for r in group]
        keys = sorted({k for c in configs for k in c} - _NOT_A_DIFFERENCE)
        differ = [k for k in keys if len({json.dumps(c.get(k), sort_keys=True) for c in configs}) > 1]
        counts: dict[str, int] = {}
        for r, c in zip(group, configs):
            r.label = algo + "".join(f" {k}={_short(c.get(k))}" for k in differ)
            r.repeat = counts.get(r.label, 0)
            counts[r.label] = r.repeat + 1


def _short(v) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


# -- numbers ----------------------------------------------------------------------------------

def _stats(values: list) -> dict:
    vals = [v for v in values if v is not None]
    if not vals:
        return {"median": None, "min": None, "max": None, "values": values}
    return {"median": statistics.median(vals), "min": min(vals), "max": max(vals), "values": values}


def _ttt_stats(values: list) -> dict:
    """Median over repeats counting 'not reached' as infinitely slow: null if half or more never got there."""
    n = len(values)
    reached = sorted(v for v in values if v is not None)
    keyed = reached + [math.inf] * (n - len(reached))
    med = statistics.median(keyed) if n else math.inf
    return {"median": None if math.isinf(med) or math.isnan(med) else med,
            "min": reached[0] if reached else None,
            "max": reached[-1] if reached and len(reached) == n else None,
            "reached": len(reached), "runs": n, "values": values}


def _ratio(num, den):
    return None if num is None or den is None or den == 0 else num / den


def run_metrics(run: Run, target: float | None, flops: float | None, peak: float | None) -> dict:
    from .mfu import mfu
    from .records import time_to_target

    s = run.summary
    sps = s.get("samples_per_s")
    stale = s.get("staleness") or {}
    accs = [m.get("test_accuracy") for m in run.metrics if m.get("test_accuracy") is not None]
    return {
        "time_to_target_s": time_to_target(run.metrics, target) if target is not None else None,
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
    }


METRICS = ("final_test_accuracy", "best_test_accuracy", "final_test_loss", "samples_per_s", "achieved_flops", "mfu",
           "staleness_mean", "staleness_max", "bytes_sent", "wall_time_s", "workers")


def build_results(runs: list[Run], *, target: float | None, peak: dict | None, flops: dict, machine: dict | None = None,
                  suite: dict | None = None, run_order: list | None = None, scenario_info: dict | None = None,
                  base_dir: Path | None = None) -> dict:
    """The results.json structure: per scenario and label, statistics over repeats and ratios.

    flops: {scenario: FLOPs per sample or None}; peak: {'flops': F, 'source': ..., 'method': ...} or None.
    """
    peak_f = (peak or {}).get("flops")
    scenarios: dict = {}
    for name in _ordered(r.scenario for r in runs):
        group = [r for r in runs if r.scenario == name]
        fps = flops.get(name)
        algos: dict = {}
        for label in label_order(r.label for r in group):
            members = [r for r in group if r.label == label]
            ok = [r for r in members if r.status == "ok"]
            per = [run_metrics(r, target, fps, peak_f) for r in ok]
            entry = {"runs": len(members), "completed": len(ok),
                     "failed": dict(Counter(r.status for r in members if r.status != "ok")),
                     "time_to_target_s": _ttt_stats([p["time_to_target_s"] for p in per])}
            for k in METRICS:
                entry[k] = _stats([p[k] for p in per])
            entry["run_dirs"] = [_rel(r.dir, base_dir) for r in members]
            algos[label] = entry
        for label, e in algos.items():
            for ref in REFERENCES:
                r = algos.get(ref)
                e[f"time_to_target_ratio_vs_{ref}"] = _ratio(r["time_to_target_s"]["median"],
                                                             e["time_to_target_s"]["median"]) if r else None
                e[f"throughput_ratio_vs_{ref}"] = _ratio(e["samples_per_s"]["median"],
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


def _differences(runs: list[Run]) -> dict:
    """{setting: {label: value}} for settings (not seeds, paths, ...) whose values differ between
    labels, among the algorithms that use the setting (an lpap-only --groups is not a difference
    between hogwild and sync, whose configs merely carry its default)."""
    by_label: dict[str, tuple[str, dict]] = {}
    for r in runs:
        by_label.setdefault(r.label, (r.summary.get("algorithm"), r.summary.get("config") or {}))
    keys = sorted({k for _, c in by_label.values() for k in c} - _NOT_A_DIFFERENCE)
    from .algorithms.registry import users_of

    out = {}
    for k in keys:
        users = users_of(k) or None  # [] : a shared setting
        values = {label: c.get(k) for label, (algo, c) in by_label.items() if users is None or algo in users}
        if len({json.dumps(v, sort_keys=True) for v in values.values()}) > 1:
            out[k] = values
    return out


def _winner(algos: dict, target) -> dict | None:
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


def _ordered(items) -> list:
    out: list = []
    for x in items:
        if x not in out:
            out.append(x)
    return out


def label_order(labels) -> list:
    """Registry order (sequential, sync, hogwild, ...), then anything else as first seen."""
    from .algorithms.registry import ALGORITHMS

    labels = _ordered(labels)
    rank = {name: i for i, name in enumerate(ALGORITHMS)}
    return sorted(labels, key=lambda l: (rank.get(l.split(" ")[0], len(rank)), labels.index(l)))


def _rel(p: Path, base: Path | None) -> str:
    if base is not None:
        try:
            return str(Path(p).resolve().relative_to(Path(base).resolve()))
        except ValueError:
            pass
    return str(p)


# -- rendering --------------------------------------------------------------------------------

def _fmt(v, spec=".2f", none="–") -> str:
    return none if v is None else format(v, spec)


def _x(v) -> str:
    return "–" if v is None else f"{v:.2f}x"


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "scenario"


def _colors(labels: list) -> dict:
    import matplotlib

    cmap = matplotlib.colormaps["tab10" if len(labels) <= 10 else "tab20"]
    return {label: cmap(i % cmap.N) for i, label in enumerate(labels)}


def render(results: dict, runs: list[Run], out_dir, title: str | None = None) -> list[Path]:
    """Write report.md, the PNGs and results.json into out_dir; returns the files written."""
    try:
        import matplotlib
        matplotlib.use("Agg", force=True)
    except ImportError:  # tables and results.json still come; the plots need matplotlib
        matplotlib = None
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = []
    target = results.get("target_accuracy")
    md = [f"# {title or 'asyncsgd comparison'}", ""]
    md += _header(results)
    plots: dict[str, list[Path]] = {}
    for name, sc in results["scenarios"].items():
        md += _table(name, sc, target)
        group = [r for r in runs if r.scenario == name and r.status == "ok"]
        labels = list(sc["algorithms"])
        if matplotlib is None:
            continue
        colors = _colors(labels)
        slug = _slug(name)
        plots[name] = [
            _plot_accuracy(out / f"accuracy-{slug}.png", name, group, labels, colors, target),
            _plot_speed(out / f"speed-{slug}.png", name, sc, labels, colors, target),
            _plot_staleness(out / f"staleness-{slug}.png", name, group, labels, colors),
        ]
        files += plots[name]
    if matplotlib is None:
        md += ["Plots: not drawn, matplotlib is not installed (pip install 'asyncsgd[plot]').", ""]
    for name, pngs in plots.items():
        md += [f"## Plots: {name}", ""]
        md += [f"![{p.stem}]({p.name})" for p in pngs] + [""]
    md += _run_list(results)
    md += _notes(results)
    (out / "report.md").write_text("\n".join(md) + "\n")
    (out / "results.json").write_text(json.dumps(results, indent=2, default=_json_default) + "\n")
    return [out / "report.md", out / "results.json", *files]


def _json_default(o):
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"{type(o).__name__} is not JSON serializable")


def _header(res: dict) -> list[str]:
    m = res.get("machine") or {}
    lines = []
    if m:
        lines.append(f"Machine: {m.get('cpu', '?')}, {m.get('cores', '?')} cores, device {m.get('device', '?')}; "
                     f"torch {m.get('torch_version', '?')}, asyncsgd {m.get('asyncsgd_version', '?')}, "
                     f"Python {m.get('python', '?')}.")
    suite = res.get("suite")
    if suite:
        lines.append(f"Suite `{suite.get('name')}`: task {suite.get('task')}, {suite.get('workers')} workers, "
                     f"{suite.get('epochs')} epochs (same samples for every algorithm), "
                     f"{suite.get('repeats')} repeat(s) run interleaved, target test accuracy "
                     f"{suite.get('target_accuracy')}.")
        if suite.get("command"):
            lines.append(f"Command: `{suite['command']}`")
    peak = res.get("peak_flops") or {}
    if peak.get("flops"):
        lines.append(f"Peak for MFU: {peak['flops'] / 1e9:.1f} GFLOP/s ({peak.get('source', '?')}: "
                     f"{peak.get('method', '')}).")
    else:
        lines.append("MFU: not computed (no peak FLOP/s known for the machine these runs came from; "
                     "give one with --peak-flops).")
    lines.append("")
    lines.append("Ratios: time-to-target ratio = reference's median time / this algorithm's median time; throughput "
                 "ratio = this algorithm's samples/s / the reference's. Above 1 means this algorithm is better. "
                 "Values are medians over repeats, [min–max] in brackets.")
    return lines + [""]


def _table(name: str, sc: dict, target) -> list[str]:
    t = "n/a" if target is None else f"{target:g}"
    lines = [f"## Scenario: {name}", ""]
    w = sc.get("winner")
    if w and w["by"] == "time_to_target_s":
        vs = ", ".join(f"{_x(w.get(f'ratio_vs_{ref}'))} vs {ref}" for ref in REFERENCES
                       if w.get(f"ratio_vs_{ref}") is not None and w["algorithm"] != ref)
        lines.append(f"**Fastest to {t} test accuracy: {w['algorithm']}** ({w['value']:.2f} s median"
                     + (f"; {vs}" if vs else "") + ").")
    elif w:
        lines.append(f"No algorithm reached {t} in at least half its repeats; best final test accuracy: "
                     f"**{w['algorithm']}** ({w['value']:.4f}).")
    if sc.get("settings"):
        lines.append(f"Settings: `{json.dumps(sc['settings'], sort_keys=True)}`")
    if sc.get("differing_settings"):
        lines.append("Settings that differ between the algorithms here: " + "; ".join(
            f"{k} (" + ", ".join(f"{label} {_short(v)}" for label, v in vals.items()) + ")"
            for k, vals in sc["differing_settings"].items()) + ".")
    if sc.get("adjustments"):
        for algo, why in sc["adjustments"].items():
            lines.append(f"- {algo}: {why}")
    lines.append("")
    lines.append(f"| algorithm | runs | time to {t} (s) | vs sync | vs hogwild | final test acc | samples/s | "
                 "throughput vs sync | MFU | staleness mean / max | bytes sent |")
    lines.append("|---|---|---|---|---|---|---|---|---|---|---|")
    for label, e in sc["algorithms"].items():
        tt = e["time_to_target_s"]
        if e["completed"] == 0:
            ttt = "no run finished"
        elif tt["median"] is None:
            ttt = f"not reached ({tt['reached']}/{tt['runs']})" if target is not None else "–"
        else:
            ttt = f"{tt['median']:.2f}"
            if tt["runs"] > 1:
                ttt += f" [{_fmt(tt['min'])}–{_fmt(tt['max'], none='n/r')}]"
            if tt["reached"] < tt["runs"]:
                ttt += f" ({tt['reached']}/{tt['runs']} reached)"
        acc = e["final_test_accuracy"]
        acc_s = _fmt(acc["median"], ".4f") + (f" [{_fmt(acc['min'], '.3f')}–{_fmt(acc['max'], '.3f')}]"
                                              if e["completed"] > 1 else "")
        mfu = e["mfu"]["median"]
        runs = f"{e['completed']}/{e['runs']}" + ("" if not e["failed"] else " (" + ", ".join(
            f"{n} {k}" for k, n in e["failed"].items()) + ")")
        bytes_ = e["bytes_sent"]["median"]
        lines.append(" | ".join([
            f"| {label}", runs, ttt, _x(e["time_to_target_ratio_vs_sync"]), _x(e["time_to_target_ratio_vs_hogwild"]),
            acc_s, _fmt(e["samples_per_s"]["median"], ",.0f"), _x(e["throughput_ratio_vs_sync"]),
            "–" if mfu is None else f"{100 * mfu:.2f}%",
            f"{_fmt(e['staleness_mean']['median'])} / {_fmt(e['staleness_max']['median'], '.0f')}",
            "–" if bytes_ is None else f"{bytes_:,.0f}"]) + " |")
    fps = sc.get("flops_per_sample")
    if fps:
        lines.append("")
        lines.append(f"FLOPs per sample (forward + backward, FlopCounterMode): {fps:,.0f}.")
    return lines + [""]


def _run_list(res: dict) -> list[str]:
    lines = ["## Runs", "", "In execution order:" if res.get("suite") else "Run directories:", ""]
    for e in res.get("run_order", []):
        status = "" if e.get("status", "ok") == "ok" else f" **{e['status']}**" + (
            f": {e['error']}" if e.get("error") else "")
        seed = f", seed {e['seed']}" if "seed" in e else ""
        lines.append(f"{e['index'] + 1}. {e['scenario']} / {e['algorithm']} (repeat {e.get('repeat', 0)}{seed}): "
                     f"`{e['run_dir']}`{status}")
    return lines + [""]


def _notes(res: dict) -> list[str]:
    return ["Method: docs/benchmarks.md. Time is training wall-clock only (all workers ready to last worker "
            "done); accuracy is measured afterwards on parameter snapshots taken during training, so time to "
            "target has the resolution of one snapshot interval.", ""]


def _plot_accuracy(path: Path, name: str, runs: list[Run], labels: list, colors: dict, target) -> Path:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for label in labels:
        members = [r for r in runs if r.label == label and r.metrics]
        if not members:
            continue
        bold = _median_run(members, target)
        for r in members:
            rows = [m for m in r.metrics if m.get("test_accuracy") is not None]
            if not rows:
                continue
            is_bold = r is bold
            kw = dict(color=colors[label], lw=2.2 if is_bold else 1.0, alpha=1.0 if is_bold else 0.35,
                      label=label if is_bold else None)
            axes[0].plot([m["wall_time_s"] for m in rows], [m["test_accuracy"] for m in rows], **kw)
            epoch = max(1, (r.summary.get("task_info") or {}).get("train_samples") or 1)
            axes[1].plot([m["samples"] / epoch for m in rows], [m["test_accuracy"] for m in rows], **kw)
    for ax, xl in zip(axes, ("training wall-clock time (s)", "epochs (samples processed / training set size)")):
        if target is not None:
            ax.axhline(target, color="gray", ls="--", lw=1)
        ax.set_xlabel(xl)
        ax.set_ylabel("test accuracy")
        ax.grid(alpha=0.3)
    axes[0].set_title(f"{name}: test accuracy vs time")
    axes[1].set_title(f"{name}: test accuracy vs samples")
    handles, names = axes[0].get_legend_handles_labels()
    if handles:
        axes[0].legend(loc="lower right", fontsize=8)
    fig.text(0.5, 0.005, "bold: the median repeat (by time to target); faint: other repeats", ha="center",
             fontsize=8, color="gray")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _median_run(members: list[Run], target) -> Run:
    from .records import time_to_target

    def key(r):
        t = time_to_target(r.metrics, target) if target is not None else None
        acc = r.summary.get("final_test_accuracy") or 0.0
        return (math.inf if t is None else t, -acc)

    ranked = sorted(members, key=key)
    return ranked[(len(ranked) - 1) // 2]


RATIO_OF = {"time_to_target_s": "time_to_target_ratio_vs_sync", "samples_per_s": "throughput_ratio_vs_sync"}


def _plot_speed(path: Path, name: str, sc: dict, labels: list, colors: dict, target) -> Path:
    import matplotlib.pyplot as plt

    algos = sc["algorithms"]
    have_mfu = any(algos[l]["mfu"]["median"] is not None for l in labels)
    have_flops = any(algos[l]["achieved_flops"]["median"] is not None for l in labels)
    if have_mfu:
        third = ("mfu", 100.0, "MFU (% of peak)")
    elif have_flops:
        third = ("achieved_flops", 1e-9, "achieved GFLOP/s (no peak known for MFU)")
    else:
        third = None
    panels = [("time_to_target_s", 1.0, f"time to {target:g} test accuracy (s), lower is better"
               if target is not None else "time to target (no target given)"),
              ("samples_per_s", 1.0, "throughput (samples/s)")] + ([third] if third else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 0.45 * len(labels) + 1.8), squeeze=False)
    ys = list(range(len(labels)))[::-1]
    for ax, (key, scale, title) in zip(axes[0], panels):
        drawn = False
        for y, label in zip(ys, labels):
            st = algos[label][key]
            med = st["median"]
            if med is None:
                why = ("no run finished" if algos[label]["completed"] == 0 else
                       "not reached" if key == "time_to_target_s" else "n/a")
                ax.text(0, y, " " + why, va="center", fontsize=8)
                continue
            lo, hi = st["min"], st["max"]
            err = None
            if lo is not None and hi is not None:
                err = [[(med - lo) * scale], [(hi - med) * scale]]
            ax.barh(y, med * scale, color=colors[label], xerr=err, capsize=3)
            drawn = True
            ratio = algos[label].get(RATIO_OF.get(key, ""))
            v = med * scale
            note = " " + (f"{v:,.0f}" if v >= 100 else f"{v:.3g}") + (f" ({ratio:.2f}x sync)" if ratio is not None
                                                                      else "")
            ax.text(med * scale, y, note, va="center", fontsize=8)
        ax.set_yticks(ys)
        ax.set_yticklabels(labels)
        ax.set_ylim(-0.6, len(labels) - 0.4)
        ax.set_title(title, fontsize=10)
        ax.grid(axis="x", alpha=0.3)
        ax.margins(x=0.3)
        if drawn:
            ax.set_xlim(left=0)
        else:
            ax.set_xlim(0, 1)
            ax.set_xticks([])
    fig.suptitle(f"{name}: median over repeats, bars span min–max", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _plot_staleness(path: Path, name: str, runs: list[Run], labels: list, colors: dict) -> Path:
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    n = max(1, len(labels))
    cols = min(3, n)
    rows = math.ceil(n / cols)

    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 2.8 * rows), squeeze=False)
    hists: dict[str, dict[int, int]] = {}
    for label in labels:
        hist = hists.setdefault(label, {})
        for r in runs:
            if r.label == label:
                for k, v in (r.summary.get("staleness_histogram") or {}).items():
                    hist[int(k)] = hist.get(int(k), 0) + int(v)
    xmax = max([5] + [max(h) for h in hists.values() if h])  # one x range: the panels compare at a glance
    for ax, label in zip(axes.flat, labels):
        hist = hists[label]
        total = sum(hist.values())
        ax.set_xlim(-0.6, xmax + 0.6)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if total:
            xs = sorted(hist)
            ax.bar(xs, [hist[x] / total for x in xs], color=colors[label], width=0.9)
            mean = sum(k * v for k, v in hist.items()) / total
            ax.set_title(f"{label}: mean {mean:.2f}, max {max(xs)}", fontsize=9)
        else:
            why = "no updates recorded" if any(r.label == label for r in runs) else "no finished run"
            ax.text(0.5, 0.5, why, ha="center", va="center", transform=ax.transAxes)
            ax.set_title(label, fontsize=9)
        ax.set_xlabel("staleness (updates by others between read and write)", fontsize=8)
        ax.set_ylabel("fraction of updates", fontsize=8)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.suptitle(f"{name}: staleness histograms (all repeats)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# -- the command ------------------------------------------------------------------------------

def add_arguments(parser) -> None:
    parser.add_argument("dirs", nargs="+", metavar="DIR",
                        help="run directories (summary.json + metrics.jsonl), bench directories (results.json), "
                             "or folders holding run directories")
    parser.add_argument("--out", default=None,
                        help="where report.md, the PNGs and results.json go (default: the bench directory when one "
                             "bench directory is given, else ./report)")
    parser.add_argument("--target-accuracy", type=float, default=None,
                        help="time-to-target threshold (default: the bench's, or the runs' own --target-accuracy)")
    parser.add_argument("--peak-flops", type=float, default=None,
                        help="peak FLOP/s for MFU (default: the bench's measured peak; for plain run directories "
                             "from this machine, measured now)")
    parser.add_argument("--title", default=None, help="report title")


def main(args) -> int:
    from . import mfu as mfu_mod

    runs, meta = collect(args.dirs)
    if args.target_accuracy is not None and not 0 < args.target_accuracy <= 1:
        raise ConfigError(f"--target-accuracy {args.target_accuracy!r} is not accepted; accepted: a fraction in "
                          "(0, 1], e.g. 0.9")
    if args.peak_flops is not None and not args.peak_flops > 0:
        raise ConfigError(f"--peak-flops {args.peak_flops!r} is not accepted; accepted: a number of FLOP/s > 0, "
                          "e.g. 1.5e11")
    target = args.target_accuracy if args.target_accuracy is not None else meta.get("target_accuracy")
    if target is None:
        targets = {r.summary.get("target_accuracy") for r in runs if r.summary}
        target = targets.pop() if len(targets) == 1 else None
    scenario_info = meta.get("scenario_info") or {}
    flops = {name: info.get("flops_per_sample") for name, info in scenario_info.items()}
    for name in _ordered(r.scenario for r in runs):
        if flops.get(name) is None:
            flops[name] = _count_flops(next(r for r in runs if r.scenario == name and r.summary))
    machine = meta.get("machine")
    peak = None
    if args.peak_flops is not None:
        peak = {"flops": args.peak_flops, "source": "given (--peak-flops)", "method": "given by the user"}
    elif machine and machine.get("peak_flops"):
        peak = machine["peak_flops"]
    else:
        from .records import device_name
        here = device_name("cpu")
        if runs and all(r.summary and r.summary.get("device") == here for r in runs if r.summary):
            peak = {**mfu_mod.measure_peak_flops("cpu"), "source": "measured now by asyncsgd report on this machine"}
            peak["flops"] = round(peak["flops"])
    bench_dirs = [d for d in args.dirs if (Path(d) / "results.json").is_file()]
    out = Path(args.out) if args.out else (Path(bench_dirs[0]) if len(bench_dirs) == 1 and len(args.dirs) == 1
                                           else Path("report"))
    base = out if all(_inside(r.dir, out) for r in runs) else None
    results = build_results(runs, target=target, peak=peak, flops=flops, machine=machine, suite=meta.get("suite"),
                            scenario_info=scenario_info, base_dir=base)
    results.update(meta.get("bench") or {})
    title = args.title or (f"asyncsgd bench: {meta['suite'].get('name')} suite" if meta.get("suite") else None)
    files = render(results, runs, out, title=title)
    for name, sc in results["scenarios"].items():
        w = sc.get("winner")
        if w:
            print(f"{name}: {'fastest to target' if w['by'] == 'time_to_target_s' else 'best accuracy'}: "
                  f"{w['algorithm']} ({w['value']:.4g})")
    print(f"report: {files[0]} ({len(files) - 2} plots, results.json) from {len(runs)} run(s)")
    return 0


def _inside(p: Path, base: Path) -> bool:
    try:
        Path(p).resolve().relative_to(Path(base).resolve())
        return True
    except ValueError:
        return False


def _count_flops(run: Run) -> float | None:
    """FLOPs per sample of a plain run's task and model, rebuilt from its config (None if it cannot be)."""
    from .mfu import flops_per_sample
    from .tasks import get_task

    cfg = run.summary.get("config") or {}
    try:
        task = get_task(cfg.get("task", run.summary.get("task")), model=cfg.get("model"), data_dir=cfg.get("data_dir"),
                        seed=cfg.get("seed", 0), num_samples=cfg.get("num_samples"))
        return flops_per_sample(task, cfg.get("batch_size", 32))
    except Exception:  # a custom task (Python API) or data no longer there: MFU is then null
        return None
