"""report.md: the header (machine, suite, peak for MFU), a table per scenario (who wins, by how
much), the plots and the run list; render() writes it next to the PNGs and results.json.
"""

from __future__ import annotations

import json
from pathlib import Path

from .load import Run, short
from .plots import draw, repeat_notes
from .stats import REFERENCES, has_repeats


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
        if matplotlib is None:
            continue
        group = [r for r in runs if r.scenario == name and r.status == "ok"]
        plots[name] = draw(out, name, sc, group, target)
        files += plots[name]
    if matplotlib is None:
        md += ["Plots: not drawn, matplotlib is not installed (pip install 'asyncsgd[plot]').", ""]
    for name, pngs in plots.items():
        md += [f"## Plots: {name}", ""]
        md += [f"![{p.stem}]({p.name})" for p in pngs] + [""]
        notes = repeat_notes(results["scenarios"][name])
        if notes:
            md += [" ".join(f"{plot.capitalize()} plot: {text}." for plot, text in notes.items()), ""]
    md += _run_list(results)
    md += _notes(results)
    (out / "report.md").write_text("\n".join(md) + "\n")
    (out / "results.json").write_text(json.dumps(results, indent=2, default=_json_default) + "\n")
    return [out / "report.md", out / "results.json", *files]


def _json_default(o):
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"{type(o).__name__} is not JSON serializable")


def _fmt(v, spec=".2f", none="–") -> str:
    return none if v is None else format(v, spec)


def _x(v) -> str:
    return "–" if v is None else f"{v:.2f}x"


def _percent(v) -> str:
    return "–" if v is None else f"{100 * v:.2f}%"


def _header(res: dict) -> list[str]:
    m = res.get("machine") or {}
    lines = []
    if m:
        lines.append(f"Machine: {m.get('cpu', '?')}, {m.get('cores', '?')} cores, device {m.get('device', '?')}; "
                     f"torch {m.get('torch_version', '?')}, asyncsgd {m.get('asyncsgd_version', '?')}, "
                     f"Python {m.get('python', '?')}.")
    suite = res.get("suite")
    if suite:
        lines.append(f"Suite `{suite.get('name')}`: task {suite.get('task')}, "
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
        lines.append(res.get("mfu_left_out") or "MFU: left out, no peak FLOP/s was recorded with these runs; "
                     "give one with --peak-flops FLOPS.")
    lines.append("")
    ratios = ["time-to-target ratio = reference's median time / this algorithm's median time"] \
        if res.get("target_accuracy") is not None else []
    ratios.append("throughput ratio = this algorithm's samples/s / the reference's")
    repeats = any(has_repeats(sc) for sc in res["scenarios"].values())
    lines.append(f"Ratios: {'; '.join(ratios)}. Above 1 means this algorithm is better."
                 + (" Values are medians over repeats, [min–max] in brackets." if repeats else ""))
    return lines + [""]


def _table(name: str, sc: dict, target) -> list[str]:
    lines = [f"## Scenario: {name}", ""]
    lines += _winner_line(sc.get("winner"), target)
    if sc.get("settings"):
        lines.append(f"Settings: `{json.dumps(sc['settings'], sort_keys=True)}`")
    if sc.get("differing_settings"):
        lines.append("Settings that differ between the algorithms here: " + "; ".join(
            f"{k} (" + ", ".join(f"{label} {short(v)}" for label, v in vals.items()) + ")"
            for k, vals in sc["differing_settings"].items()) + ".")
    for algo, text in sc.get("notes", {}).items():  # what a suite says about a label (e.g. a reference)
        lines.append(f"- {algo}: {text}")
    if sc.get("adjustments"):
        for algo, why in sc["adjustments"].items():
            lines.append(f"- {algo}: {why}")
    lines.append("")
    columns = _columns(target)
    lines.append("| " + " | ".join(head for head, _ in columns) + " |")
    lines.append("|" + "---|" * len(columns))
    for label, e in sc["algorithms"].items():
        lines.append("| " + " | ".join(cell(label, e) for _, cell in columns) + " |")
    fps = sc.get("flops_per_sample")
    if fps:
        lines.append("")
        lines.append(f"FLOPs per sample (forward + backward, FlopCounterMode): {fps:,.0f}.")
    return lines + [""]


def _winner_line(w: dict | None, target) -> list[str]:
    if not w:
        return []
    if w["by"] == "time_to_target_s":
        vs = ", ".join(f"{_x(w.get(f'ratio_vs_{ref}'))} vs {ref}" for ref in REFERENCES
                       if w.get(f"ratio_vs_{ref}") is not None and w["algorithm"] != ref)
        return [f"**Fastest to {target:g} test accuracy: {w['algorithm']}** ({w['value']:.2f} s median"
                + (f"; {vs}" if vs else "") + ")."]
    best = f"best final test accuracy: **{w['algorithm']}** ({w['value']:.4f})."
    if target is None:
        return ["No target accuracy given (--target-accuracy); " + best]
    return [f"No algorithm reached {target:g} in at least half its repeats; " + best]


def _columns(target) -> list:
    """(heading, cell(label, entry)) of each table column; the time-to-target ones only with a target."""
    timed = [(f"time to {target:g} (s)", lambda label, e: _time_to_target(e)),
             ("vs sync", lambda label, e: _x(e["time_to_target_ratio_vs_sync"])),
             ("vs hogwild", lambda label, e: _x(e["time_to_target_ratio_vs_hogwild"]))] if target is not None else []
    return [("algorithm", lambda label, e: label), ("runs", lambda label, e: _runs(e)), *timed,
            ("final test acc", lambda label, e: _accuracy(e)),
            ("workers", lambda label, e: _workers(e)),
            ("samples/s", lambda label, e: _fmt(e["samples_per_s"]["median"], ",.0f")),
            ("throughput vs sync", lambda label, e: _x(e["throughput_ratio_vs_sync"])),
            ("MFU", lambda label, e: _percent(e["mfu"]["median"])),
            ("staleness mean / max", lambda label, e: f"{_fmt(e['staleness_mean']['median'])} / "
                                                      f"{_fmt(e['staleness_max']['median'], 'g')}"),
            ("bytes sent", lambda label, e: _fmt(e["bytes_sent"]["median"], ",.0f"))]


def _runs(e: dict) -> str:
    failed = ", ".join(f"{n} {k}" for k, n in e["failed"].items())
    return f"{e['completed']}/{e['runs']}" + (f" ({failed})" if failed else "")


def _workers(e: dict) -> str:
    """The worker processes the runs used, from their summary.json (a range if repeats differ)."""
    w = e["workers"]
    if w["min"] is None:
        return "–"
    return str(w["min"]) if w["min"] == w["max"] else f"{w['min']}–{w['max']}"


def _time_to_target(e: dict) -> str:
    tt = e["time_to_target_s"]
    if e["completed"] == 0:
        return "no run finished"
    if tt["median"] is None:
        return f"not reached ({tt['reached']}/{tt['runs']})"
    text = f"{tt['median']:.2f}"
    if tt["runs"] > 1:
        text += f" [{_fmt(tt['min'])}–{_fmt(tt['max'], none='n/r')}]"
    if tt["reached"] < tt["runs"]:
        text += f" ({tt['reached']}/{tt['runs']} reached)"
    return text


def _accuracy(e: dict) -> str:
    acc = e["final_test_accuracy"]
    spread = f" [{_fmt(acc['min'], '.3f')}–{_fmt(acc['max'], '.3f')}]" if e["completed"] > 1 else ""
    collapsed = e.get("collapsed", 0)
    mark = "" if not collapsed else (" **collapsed**" if e["completed"] <= 1 else
                                     f" **{collapsed}/{e['completed']} collapsed**")
    return _fmt(acc["median"], ".4f") + spread + mark


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
