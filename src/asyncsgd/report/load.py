"""Reading run records: one run directory (load_run), a bench directory (results.json + runs/), or
a folder of run directories (collect), and grouping loose runs into scenarios, labels and repeats.

Owns the Run record and which settings make two runs different methods (comparable_settings).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ..config import DERIVED
from ..errors import ConfigError

# Settings that do not make two runs different methods (they are repeats of each other); the
# derived fields say how a setting got its value, which the setting itself shows.
_NOT_A_DIFFERENCE = {"seed", "out", "resume", "overwrite", "progress", "tensorboard", "target_accuracy",
                     "eval_points", "checkpoint_every", "stall_timeout", "threads_per_worker", "data_dir", "algorithm",
                     *DERIVED}

# Settings whose value in summary.json (what the run did) wins over its config (what was asked).
_USED = ("workers",)


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


def load_run(path) -> Run:
    """Read one run directory; ConfigError naming it if summary.json or metrics.jsonl is missing, bad JSON,
    or not of the shape asyncsgd writes (_SUMMARY, _METRICS_ROW), so that the rest of the report can trust it."""
    d = Path(path)
    try:
        summary = json.loads((d / "summary.json").read_text())
        lines = (d / "metrics.jsonl").read_text().splitlines()
        rows = [(n, json.loads(line)) for n, line in enumerate(lines, 1) if line.strip()]
    except FileNotFoundError as e:
        raise ConfigError(f"report dir {str(d)!r} has no {Path(e.filename).name}; accepted: a run directory "
                          "(summary.json + metrics.jsonl) or a bench directory (results.json)") from None
    except (OSError, ValueError) as e:
        raise ConfigError(f"report dir {str(d)!r} holds an unreadable run record ({str(e).splitlines()[0][:100]}); "
                          "accepted: summary.json and metrics.jsonl as asyncsgd writes them") from None
    problem = _problem(summary, _SUMMARY, required=("algorithm",)) or _histogram_problem(summary)
    if problem:
        raise ConfigError(f"report dir {str(d)!r}: summary.json is not a run summary ({problem}); accepted: a "
                          "summary.json written by asyncsgd")
    for n, row in rows:
        problem = _problem(row, _METRICS_ROW, required=tuple(_METRICS_ROW))
        if problem:
            raise ConfigError(f"report dir {str(d)!r}: metrics.jsonl is not a run's metrics (line {n}: {problem}); "
                              "accepted: metrics.jsonl as asyncsgd writes it, one JSON object per line with numbers "
                              "wall_time_s and samples and test_accuracy a number or null")
    return Run(dir=d, summary=summary, metrics=[row for _, row in rows])


def collect(dirs) -> tuple[list[Run], dict]:
    """Runs from every DIR, plus what a bench directory recorded (machine, suite, run order).

    Bench directories keep their scenarios, labels and repeats; other runs are grouped here.
    meta["recorded_peaks"]: the peak FLOP/s each bench directory recorded (None where none);
    meta["loose_runs"]: how many runs came from plain run directories (they record no peak).
    """
    runs: list[Run] = []
    loose: list[Run] = []
    meta: dict = {}
    peaks: list = []
    seen: set[Path] = set()
    for raw in dirs:
        d = Path(raw)
        if not d.is_dir():
            raise ConfigError(f"report dir {str(raw)!r} does not exist or is not a directory; accepted: a run "
                              "directory (summary.json + metrics.jsonl) or a bench directory (results.json)")
        if (d / "results.json").is_file():
            bench_runs, bench_meta = load_bench(d)
            for r in bench_runs:
                if r.dir.resolve() not in seen:
                    seen.add(r.dir.resolve())
                    runs.append(r)
            if not meta:
                meta = bench_meta
            peaks.append(bench_meta["peak_flops"])
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
    return runs + loose, {**meta, "recorded_peaks": peaks, "loose_runs": len(loose)}


def load_bench(d: Path) -> tuple[list[Run], dict]:
    """The runs of a bench directory, in run order, and what its results.json recorded about them."""
    try:
        res = json.loads((d / "results.json").read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(f"report dir {str(d)!r}: results.json is not a bench result ({type(e).__name__}: "
                          f"{str(e)[:80]}); accepted: results.json written by asyncsgd bench") from None
    problem = _results_problem(res)
    if problem:
        raise ConfigError(f"report dir {str(d)!r}: results.json is not a bench result ({problem}); accepted: "
                          "results.json written by asyncsgd bench")
    order = res["run_order"]
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
    meta["peak_flops"] = res.get("peak_flops") or (res.get("machine") or {}).get("peak_flops")
    meta["bench"] = {k: res[k] for k in ("complete", "bench_elapsed_s") if k in res}
    meta["scenario_info"] = {name: {k: v for k, v in sc.items() if k in ("settings", "flops_per_sample",
                                                                           "target_accuracy", "adjustments")}
                             for name, sc in (res.get("scenarios") or {}).items()}
    return runs, meta


# The shape of the records the report reads: {field: kind}, a kind being "a number", "an integer", "a string",
# "an object" or "a list" (maybe "... or null"), or {field: kind} for an object (or null) holding those fields.
# Fields not named here are not read, so they are not checked.
_NUMBER = "a number or null"
_SUMMARY = {"algorithm": "a string", "task": "a string", "model": "a string or null", "workers": _NUMBER,
            "target_accuracy": _NUMBER, "final_test_accuracy": _NUMBER, "final_test_loss": _NUMBER,
            "samples_per_s": _NUMBER, "bytes_sent": _NUMBER, "wall_time_s": _NUMBER,
            "staleness": {"mean": _NUMBER, "max": _NUMBER}, "staleness_histogram": "an object or null",
            "config": "an object or null", "task_info": {"train_samples": _NUMBER}}
_METRICS_ROW = {"wall_time_s": "a number", "samples": "a number", "test_accuracy": _NUMBER}
_RESULTS = {"run_order": "a list", "scenarios": "an object or null", "target_accuracy": _NUMBER,
            "peak_flops": {"flops": _NUMBER}, "machine": {"peak_flops": {"flops": _NUMBER}},
            "suite": "an object or null"}
_RUN_ENTRY = {"run_dir": "a string", "scenario": "a string", "algorithm": "a string", "status": "a string",
              "repeat": "an integer", "index": "an integer"}
_SCENARIO = {"flops_per_sample": _NUMBER, "adjustments": "an object or null"}
_TYPES = {"a number": (int, float), "an integer": int, "a string": str, "an object": dict, "a list": list}


def _problem(record, spec: dict, required=(), at: str = "") -> str | None:
    """What keeps a JSON value from being an object of the shape spec describes, or None: not an object,
    a field whose value is not of its kind, or a required field missing. at: where the object sits in its
    file (run_order[3]), for the message."""
    if not isinstance(record, dict):
        return f"{at!r} is {_show(record)}, not an object" if at else f"it is {_show(record)}, not an object"
    for key, kind in spec.items():
        value = record.get(key)
        if isinstance(kind, dict):
            problem = None if value is None else _problem(value, kind, at=_path(at, key))
            if problem:
                return problem
        elif key in record and not _fits(value, kind):
            return f"{_path(at, key)!r} is {_show(value)}, not {kind}"
    missing = [key for key in required if key not in record]
    return f"no {_path(at, missing[0])!r}" if missing else None


def _fits(value, kind: str) -> bool:
    if value is None:
        return kind.endswith(" or null")
    return isinstance(value, _TYPES[kind.removesuffix(" or null")]) and not isinstance(value, bool)


def _results_problem(res) -> str | None:
    """What keeps results.json from the shape the report reads (_RESULTS, its run_order and scenarios), or None."""
    problem = _problem(res, _RESULTS, required=("run_order",))
    if problem:
        return problem
    for i, entry in enumerate(res["run_order"]):
        problem = _problem(entry, _RUN_ENTRY, required=("run_dir", "scenario", "algorithm"), at=f"run_order[{i}]")
        if problem:
            return problem
    for name, sc in (res.get("scenarios") or {}).items():
        problem = _problem(sc, _SCENARIO, at=f"scenarios.{name}")
        if problem:
            return problem
    return None


def _histogram_problem(summary: dict) -> str | None:
    """What is wrong with summary.json's staleness_histogram ({staleness: count}, both integers), or None."""
    for k, v in (summary.get("staleness_histogram") or {}).items():
        if not (k.isdecimal() and _fits(v, "an integer")):
            return f"'staleness_histogram' holds {_show({k: v})}, not an integer count per integer staleness"
    return None


def _path(at: str, key: str) -> str:
    return f"{at}.{key}" if at else key


def _show(value) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def comparable_settings(run: Run) -> dict:
    """The settings of a run that can make it a different method from another run, as the run used
    them: the worker count is the summary's (sequential runs 1 process whatever --workers said)."""
    config = run.summary.get("config") or {}
    used = {k: run.summary[k] for k in _USED if k in run.summary}
    return {k: v for k, v in {**config, **used}.items() if k not in _NOT_A_DIFFERENCE}


def varies(values) -> bool:
    """Whether these setting values (JSON-like: lists, dicts, numbers...) are not all equal."""
    return len({json.dumps(v, sort_keys=True) for v in values}) > 1


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
        settings = [comparable_settings(r) for r in group]
        differ = [k for k in sorted({k for s in settings for k in s}) if varies(s.get(k) for s in settings)]
        counts: dict[str, int] = {}
        for r, s in zip(group, settings):
            r.label = algo + "".join(f" {k}={short(s.get(k))}" for k in differ)
            r.repeat = counts.get(r.label, 0)
            counts[r.label] = r.repeat + 1


def short(v) -> str:
    """A setting's value as a label shows it (0.1, not 0.1000000)."""
    return f"{v:g}" if isinstance(v, float) else str(v)
