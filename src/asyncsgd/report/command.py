"""`asyncsgd report DIR [DIR...]`: its flags (add_arguments) and what it does (main): read the runs,
settle the target and the peak for MFU, build the results and render them.
"""

from __future__ import annotations

import math
from pathlib import Path

from ..errors import ConfigError
from .load import Run, collect
from .markdown import render
from .stats import build_results, ordered


def add_arguments(parser) -> None:
    parser.add_argument("dirs", nargs="+", metavar="DIR",
                        help="run directories (summary.json + metrics.jsonl), bench directories (results.json), "
                             "or folders holding run directories")
    parser.add_argument("--out", default=None,
                        help="where report.md, the PNGs and results.json go (default: the bench directory when one "
                             "bench directory is given, else ./report)")
    parser.add_argument("--target-accuracy", type=float, default=None,
                        help="time-to-target threshold (default: the bench's, or the runs' own --target-accuracy)")
    parser.add_argument("--peak-flops", default=None, metavar="FLOPS",
                        help="peak FLOP/s for MFU, e.g. 1.5e11 (default: the peak the bench measured and recorded "
                             "with the runs; plain run directories record none, so no MFU without this)")
    parser.add_argument("--title", default=None, help="report title")


def main(args) -> int:
    if args.target_accuracy is not None and not 0 < args.target_accuracy <= 1:
        raise ConfigError(f"--target-accuracy {args.target_accuracy!r} is not accepted; accepted: a fraction in "
                          "(0, 1], e.g. 0.9")
    given_peak = None if args.peak_flops is None else peak_flops_value(args.peak_flops)
    bench_dirs = [d for d in args.dirs if (Path(d) / "results.json").is_file()]
    out = Path(args.out) if args.out else (Path(bench_dirs[0]) if len(bench_dirs) == 1 and len(args.dirs) == 1
                                           else Path("report"))
    check_out(out, given=args.out is not None)
    runs, meta = collect(args.dirs)
    target = args.target_accuracy if args.target_accuracy is not None else meta.get("target_accuracy")
    if target is None:
        targets = {r.summary.get("target_accuracy") for r in runs if r.summary}
        target = targets.pop() if len(targets) == 1 else None
    scenario_info = meta.get("scenario_info") or {}
    flops = {name: info.get("flops_per_sample") for name, info in scenario_info.items()}
    for name in ordered(r.scenario for r in runs):
        if flops.get(name) is None:
            flops[name] = _count_flops(next(r for r in runs if r.scenario == name and r.summary))
    machine = meta.get("machine")
    if given_peak is not None:
        peak, no_mfu = {"flops": given_peak, "source": "given (--peak-flops)", "method": "given by the user"}, None
    else:
        peak, no_mfu = recorded_peak(meta)
    base = out if all(_inside(r.dir, out) for r in runs) else None
    results = build_results(runs, target=target, peak=peak, flops=flops, machine=machine, suite=meta.get("suite"),
                            scenario_info=scenario_info, base_dir=base)
    results.update(meta.get("bench") or {})
    if no_mfu:
        results["mfu_left_out"] = no_mfu
    title = args.title or (f"asyncsgd bench: {meta['suite'].get('name')} suite" if meta.get("suite") else None)
    files = render(results, runs, out, title=title)
    for name, sc in results["scenarios"].items():
        w = sc.get("winner")
        if w:
            print(f"{name}: {'fastest to target' if w['by'] == 'time_to_target_s' else 'best accuracy'}: "
                  f"{w['algorithm']} ({w['value']:.4g})")
    print(f"report: {files[0]} ({len(files) - 2} plots, results.json) from {len(runs)} run(s)")
    return 0


def peak_flops_value(text) -> float:
    """--peak-flops as a number of FLOP/s: finite and > 0, else ConfigError naming the value."""
    try:
        value = float(text)
    except (TypeError, ValueError):
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise ConfigError(f"--peak-flops {text!r} is not accepted; accepted: a finite number of FLOP/s > 0, "
                          "e.g. 1.5e11")
    return value


def check_out(out: Path, given: bool) -> None:
    """The report's directory: new or existing, not a file nor a path under one (ConfigError naming it)."""
    from ..records import file_in_the_way

    above = file_in_the_way(out)  # out itself, or where it will be made
    if above is not None:
        what = f"--out {str(out)!r}" if given else f"the default output directory {str(out)!r} (no --out given)"
        where = "it" if above == out else repr(str(above))
        raise ConfigError(f"{what} is not accepted: {where} is a file; accepted: a directory (new or existing)")


def recorded_peak(meta: dict) -> tuple[dict | None, str | None]:
    """The peak FLOP/s recorded with every one of the runs, or (None, why MFU is left out).

    A peak measured now would say how busy this machine is now, not what it could do when the runs ran.
    """
    peaks = meta.get("recorded_peaks") or []
    known = [p for p in peaks if p and p.get("flops")]
    if meta.get("loose_runs"):
        why = "plain run directories (from `asyncsgd train`) record no peak FLOP/s"
    elif len(known) < len(peaks):
        why = "a bench directory here recorded no peak FLOP/s"
    elif len({p["flops"] for p in known}) > 1:
        why = "the bench directories here recorded different peaks"
    else:
        return (known[0] if known else None), None
    return None, (f"MFU: left out, {why}, and a peak measured now would reflect this machine's load now rather "
                  "than the runs'; give the peak with --peak-flops FLOPS.")


def _inside(p: Path, base: Path) -> bool:
    try:
        Path(p).resolve().relative_to(Path(base).resolve())
        return True
    except ValueError:
        return False


def _count_flops(run: Run) -> float | None:
    """FLOPs per sample of a plain run's task and model, rebuilt from its config (None if it cannot be)."""
    from ..mfu import flops_per_sample
    from ..tasks import get_task

    cfg = run.summary.get("config") or {}
    try:
        task = get_task(cfg.get("task", run.summary.get("task")), model=cfg.get("model"), data_dir=cfg.get("data_dir"),
                        seed=cfg.get("seed", 0), num_samples=cfg.get("num_samples"))
        return flops_per_sample(task, cfg.get("batch_size", 32))
    except Exception:  # a custom task (Python API) or data no longer there: MFU is then null
        return None
