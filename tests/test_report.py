"""asyncsgd report: from real run directories, from a bench directory, and on bad input."""

import json
import math
from pathlib import Path

import pytest

from conftest import assert_one_line_error, read_run, run_cli

from asyncsgd import report

PNG = b"\x89PNG\r\n\x1a\n"
TINY = ["--epochs", "0.25", "--eval-points", "4", "--progress", "none", "--threads-per-worker", "1",
        "--target-accuracy", "0.15"]


def _one_line_error(proc, *needles):
    return assert_one_line_error(proc, 2, *needles)


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """Two tiny real runs: sequential (in-process) and hogwild (2 worker processes)."""
    base = tmp_path_factory.mktemp("runs")
    dirs = []
    for algo in ("sequential", "hogwild"):
        d = base / f"my-{algo}"
        workers = ["--workers", "2"] if algo == "hogwild" else []  # sequential refuses --workers 2
        proc = run_cli("train", "--algo", algo, *workers, "--out", d, *TINY)
        assert proc.returncode == 0, proc.stderr
        dirs.append(d)
    return dirs


@pytest.mark.slow
def test_report_from_two_run_directories(two_runs, tmp_path):
    out = tmp_path / "rep"
    proc = run_cli("report", *two_runs, "--out", out, "--peak-flops", "2e10")
    assert proc.returncode == 0, proc.stderr
    md = (out / "report.md").read_text()
    for d, algo in zip(two_runs, ("sequential", "hogwild")):
        assert f"| {algo} |" in md  # a table row per run
        assert str(d) in md  # and the run directory it came from
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == ["accuracy-mnist1d.png", "speed-mnist1d.png", "staleness-mnist1d.png"]
    for name in pngs:
        assert (out / name).read_bytes()[:8] == PNG and f"({name})" in md
    res = json.loads((out / "results.json").read_text())
    algos = res["scenarios"]["mnist1d"]["algorithms"]
    assert list(algos) == ["sequential", "hogwild"]
    fps = res["scenarios"]["mnist1d"]["flops_per_sample"]
    assert fps > 0
    for d, algo in zip(two_runs, ("sequential", "hogwild")):
        summary, metrics = read_run(d)
        e = algos[algo]
        assert e["run_dirs"] == [str(d)]
        assert e["samples_per_s"]["median"] == summary["samples_per_s"]
        assert e["final_test_accuracy"]["median"] == summary["final_test_accuracy"]
        assert math.isclose(e["mfu"]["median"], fps * summary["samples_per_s"] / 2e10)
        assert e["time_to_target_s"]["values"] == [summary["time_to_target_s"]]  # same target as the runs'
        assert e["staleness_max"]["median"] == summary["staleness"]["max"]
    assert res["target_accuracy"] == 0.15
    # No sync run among them: the ratios against sync are null, against hogwild they are numbers.
    assert algos["sequential"]["time_to_target_ratio_vs_sync"] is None
    assert math.isclose(algos["sequential"]["throughput_ratio_vs_hogwild"],
                        algos["sequential"]["samples_per_s"]["median"] / algos["hogwild"]["samples_per_s"]["median"])


@pytest.mark.slow
def test_report_with_a_different_target_and_a_parent_folder(two_runs, tmp_path):
    out = tmp_path / "rep"
    proc = run_cli("report", two_runs[0].parent, "--out", out, "--target-accuracy", "0.11", "--peak-flops", "1e10")
    assert proc.returncode == 0, proc.stderr
    res = json.loads((out / "results.json").read_text())
    assert res["target_accuracy"] == 0.11
    assert set(res["scenarios"]["mnist1d"]["algorithms"]) == {"sequential", "hogwild"}
    assert "time to 0.11 (s)" in (out / "report.md").read_text()


def _fake_run_dir(path: Path, algo: str, lr: float, seed: int, t_hit: float, sps: float, summary_extra=None,
                  **config) -> Path:
    """A run record with known numbers; summary_extra overrides fields of its summary.json."""
    path.mkdir(parents=True)
    rows = [{"wall_time_s": t, "samples": int(1000 * t), "test_accuracy": 0.95 if t >= t_hit else 0.4,
             "test_loss": 0.2, "train_loss": 0.2} for t in (1.0, 2.0, 3.0, 4.0)]
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = {"algorithm": algo, "task": "mytask", "model": "mlp", "workers": 2, "samples": 4000,
               "wall_time_s": 4.0, "samples_per_s": sps, "final_test_accuracy": 0.95, "final_test_loss": 0.2,
               "target_accuracy": 0.9, "staleness": {"mean": 0.5, "max": 2}, "staleness_histogram": {"0": 3, "2": 1},
               "bytes_sent": 0, "config": {"algorithm": algo, "lr": lr, "seed": seed, "out": str(path), **config},
               "task_info": {"train_samples": 1000}, "device": "elsewhere", **(summary_extra or {})}
    (path / "summary.json").write_text(json.dumps(summary))
    return path


def test_runs_are_grouped_into_labels_and_repeats(tmp_path):
    # record-keeping settings (tensorboard, overwrite) do not make two runs different methods
    dirs = [_fake_run_dir(tmp_path / "a", "hogwild", 0.1, 0, 2.0, 100.0, tensorboard=True),
            _fake_run_dir(tmp_path / "b", "hogwild", 0.1, 1, 3.0, 300.0, overwrite=True),
            _fake_run_dir(tmp_path / "c", "hogwild", 0.2, 0, 1.0, 200.0),
            _fake_run_dir(tmp_path / "d", "sync", 0.1, 0, 4.0, 100.0)]
    runs, meta = report.collect(dirs)
    assert [(r.label, r.repeat) for r in runs] == [("hogwild lr=0.1", 0), ("hogwild lr=0.1", 1),
                                                   ("hogwild lr=0.2", 0), ("sync", 0)]
    res = report.build_results(runs, target=0.9, peak=None, flops={})
    algos = res["scenarios"]["mytask"]["algorithms"]
    assert algos["hogwild lr=0.1"]["time_to_target_s"]["median"] == 2.5
    assert algos["hogwild lr=0.1"]["time_to_target_ratio_vs_sync"] == pytest.approx(4.0 / 2.5)
    assert algos["hogwild lr=0.2"]["time_to_target_ratio_vs_sync"] == pytest.approx(4.0)
    assert algos["hogwild lr=0.1"]["time_to_target_ratio_vs_hogwild"] is None  # no plain "hogwild" label
    assert algos["hogwild lr=0.1"]["mfu"]["median"] is None  # no peak known
    assert res["scenarios"]["mytask"]["winner"]["algorithm"] == "hogwild lr=0.2"


def test_differing_settings_only_among_the_algorithms_that_use_them(tmp_path):
    """Every config carries every field; --sharing (pdasgd only) or --staleness where only its
    users agree is not a difference between algorithms, lr is."""
    dirs = [_fake_run_dir(tmp_path / "h", "sync", 0.05, 0, 2.0, 100.0, sharing="auto", staleness="none"),
            _fake_run_dir(tmp_path / "p", "pdasgd", 0.05, 0, 2.0, 100.0, sharing="memory", staleness="adaptive"),
            _fake_run_dir(tmp_path / "d", "dasgd", 0.1, 0, 2.0, 100.0, sharing="auto", staleness="adaptive")]
    runs, _ = report.collect(dirs)
    differ = report.build_results(runs, target=0.9, peak=None, flops={})["scenarios"]["mytask"]["differing_settings"]
    assert differ == {"lr": {"sync": 0.05, "pdasgd": 0.05, "dasgd": 0.1}}


def test_not_reached_counts_as_slowest_in_the_median():
    stats = report.ttt_stats([2.0, None, 4.0])
    assert stats["median"] == 4.0 and stats["min"] == 2.0 and stats["max"] is None and stats["reached"] == 2
    assert report.ttt_stats([2.0, None, None])["median"] is None


def test_report_rerenders_a_bench_directory(tmp_path, monkeypatch):
    """A bench output directory (results.json + runs/) renders again, keeping its scenarios and order."""
    import argparse

    from asyncsgd import bench

    def fake_run(cfg):
        sps = {"sequential": 100.0, "sync": 200.0, "hogwild": 400.0}[cfg.algorithm]
        d = _fake_run_dir(Path(cfg.out), cfg.algorithm, 0.1, cfg.seed, {"sequential": 3.0, "sync": 4.0,
                                                                        "hogwild": 2.0}[cfg.algorithm], sps)
        return json.loads((d / "summary.json").read_text())

    monkeypatch.setattr("asyncsgd.runner.run", fake_run)
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    b = tmp_path / "bench"
    assert bench.main(parser.parse_args(["--out", str(b), "--peak-flops", "1e9", "--algos", "sequential,sync,hogwild",
                                         "--repeats", "2"])) == 0
    first = json.loads((b / "results.json").read_text())
    proc = run_cli("report", b, "--out", tmp_path / "again")
    assert proc.returncode == 0, proc.stderr
    again = json.loads((tmp_path / "again" / "results.json").read_text())
    assert list(again["scenarios"]) == ["quick"]
    assert [(e["algorithm"], e["repeat"]) for e in again["run_order"]] == \
        [(e["algorithm"], e["repeat"]) for e in first["run_order"]]
    for algo in ("sequential", "sync", "hogwild"):
        a, f = again["scenarios"]["quick"]["algorithms"][algo], first["scenarios"]["quick"]["algorithms"][algo]
        for key in ("time_to_target_s", "samples_per_s", "mfu", "time_to_target_ratio_vs_sync"):
            assert a[key] == f[key], (algo, key)
    assert again["machine"]["peak_flops"]["flops"] == 1e9
    assert "hogwild" in (tmp_path / "again" / "report.md").read_text()


# -- a report says only what is so ------------------------------------------------------------------

def _report_md(tmp_path, *argv) -> str:
    out = tmp_path / "rep"
    proc = run_cli("report", *argv, "--out", out)
    assert proc.returncode == 0, proc.stderr
    return (out / "report.md").read_text()


def test_without_a_target_there_is_no_time_to_target(tmp_path):
    no_target = {"target_accuracy": None}
    dirs = [_fake_run_dir(tmp_path / "s", "sync", 0.1, 0, 2.0, 100.0, no_target),
            _fake_run_dir(tmp_path / "h", "hogwild", 0.1, 0, 3.0, 200.0, {**no_target, "final_test_accuracy": 0.97})]
    md = _report_md(tmp_path, *dirs)
    assert "n/a" not in md and "| time to" not in md and "reached" not in md
    assert "| algorithm | runs | final test acc | workers | samples/s | throughput vs sync |" in md
    assert "No target accuracy given (--target-accuracy); best final test accuracy: **hogwild** (0.9700)." in md
    assert "time-to-target ratio" not in md and "throughput ratio = " in md
    # With a target the column and the sentence are back.
    md = _report_md(tmp_path / "t", *dirs, "--target-accuracy", "0.9")
    assert "| algorithm | runs | time to 0.9 (s) | vs sync | vs hogwild | final test acc |" in md
    assert "**Fastest to 0.9 test accuracy: sync**" in md


def _report_in_process(*argv) -> int:
    import argparse

    parser = argparse.ArgumentParser()
    report.add_arguments(parser)
    return report.main(parser.parse_args([str(a) for a in argv]))


def _bench_main(bench, *argv) -> int:
    import argparse

    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    return bench.main(parser.parse_args([str(a) for a in argv]))


def _peak_now(flops):
    """A stand-in for mfu.measure_peak_flops that reports `flops`, as a measurement would."""
    return lambda *a, **kw: {"flops": flops, "method": f"fake matmul benchmark: {flops:g}"}


def test_mfu_uses_the_peak_the_bench_recorded_not_one_measured_at_report_time(tmp_path, monkeypatch):
    from asyncsgd import bench

    def fake_run(cfg):
        d = _fake_run_dir(Path(cfg.out), cfg.algorithm, 0.1, cfg.seed, 2.0, 1000.0)
        return json.loads((d / "summary.json").read_text())

    monkeypatch.setattr("asyncsgd.runner.run", fake_run)
    monkeypatch.setattr("asyncsgd.mfu.measure_peak_flops", _peak_now(2.266e11))  # the machine while benching
    b = tmp_path / "bench"
    assert _bench_main(bench, "--out", b, "--algos", "sync,hogwild") == 0
    recorded = json.loads((b / "results.json").read_text())
    assert recorded["peak_flops"]["flops"] == 2.266e11 and recorded["peak_flops"]["source"] == "measured"
    fps = recorded["scenarios"]["quick"]["flops_per_sample"]

    monkeypatch.setattr("asyncsgd.mfu.measure_peak_flops", _peak_now(6.4e10))  # the same machine, busy, later
    assert _report_in_process(b, "--out", tmp_path / "again") == 0
    res = json.loads((tmp_path / "again" / "results.json").read_text())
    assert res["peak_flops"]["flops"] == 2.266e11
    assert res["scenarios"]["quick"]["algorithms"]["hogwild"]["mfu"]["median"] == pytest.approx(fps * 1000 / 2.266e11)
    assert "Peak for MFU: 226.6 GFLOP/s (measured: fake matmul benchmark" in (tmp_path / "again" / "report.md").read_text()


def test_plain_run_directories_get_mfu_only_from_a_given_peak(tmp_path, monkeypatch):
    """Runs from `asyncsgd train` on this very machine record no peak: no MFU, and the report says why."""
    from asyncsgd.records import device_name

    here = {"device": device_name("cpu")}
    dirs = [_fake_run_dir(tmp_path / "s", "sync", 0.1, 0, 2.0, 100.0, here),
            _fake_run_dir(tmp_path / "h", "hogwild", 0.1, 0, 3.0, 200.0, here)]
    monkeypatch.setattr("asyncsgd.mfu.measure_peak_flops", _peak_now(6.4e10))
    monkeypatch.setattr("asyncsgd.report.command._count_flops", lambda run: 1000.0)
    assert _report_in_process(*dirs, "--out", tmp_path / "rep") == 0
    res = json.loads((tmp_path / "rep" / "results.json").read_text())
    md = (tmp_path / "rep" / "report.md").read_text()
    assert res["peak_flops"] is None
    assert all(e["mfu"]["median"] is None for e in res["scenarios"]["mytask"]["algorithms"].values())
    assert "Peak for MFU" not in md and "%" not in md
    assert "MFU: left out, plain run directories (from `asyncsgd train`) record no peak FLOP/s" in md
    assert md.count("MFU: left out") == 1

    assert _report_in_process(*dirs, "--out", tmp_path / "given", "--peak-flops", "1e8") == 0
    res = json.loads((tmp_path / "given" / "results.json").read_text())
    assert res["scenarios"]["mytask"]["algorithms"]["hogwild"]["mfu"]["median"] == pytest.approx(1000 * 200.0 / 1e8)
    md = (tmp_path / "given" / "report.md").read_text()
    assert "Peak for MFU: 0.1 GFLOP/s (given (--peak-flops)" in md and "| 0.20% |" in md and "left out" not in md


def test_worker_counts_are_those_the_runs_used(tmp_path, monkeypatch):
    """The bench asks every algorithm for 2 workers; sequential runs 1 and its summary says so."""
    from asyncsgd import bench

    def fake_run(cfg):
        used = {"workers": 1 if cfg.algorithm == "sequential" else cfg.workers}
        d = _fake_run_dir(Path(cfg.out), cfg.algorithm, 0.1, cfg.seed, 2.0, 1000.0, used, workers=cfg.workers)
        return json.loads((d / "summary.json").read_text())

    monkeypatch.setattr("asyncsgd.runner.run", fake_run)
    b = tmp_path / "bench"
    assert _bench_main(bench, "--out", b, "--peak-flops", "1e9", "--algos", "sequential,sync,hogwild") == 0
    md = (b / "report.md").read_text()
    assert "2 workers" not in md
    assert "workers (sequential 1, sync 2, hogwild 2)" in md
    rows = {line.split(" | ")[0][2:]: line.split(" | ") for line in md.splitlines() if line.startswith("| ")}
    col = rows["algorithm"].index("workers")
    assert [rows[a][col] for a in ("sequential", "sync", "hogwild")] == ["1", "2", "2"]

    # Plain run directories: sequential asked for 2 and for 4 workers ran 1 process both times: repeats.
    dirs = [_fake_run_dir(tmp_path / f"seq{n}", "sequential", 0.1, n, 2.0, 100.0, {"workers": 1}, workers=n)
            for n in (2, 4)]
    runs, _ = report.collect(dirs)
    assert [(r.label, r.repeat) for r in runs] == [("sequential", 0), ("sequential", 1)]


def test_repeat_markers_only_with_repeats(tmp_path, monkeypatch):
    """One run per algorithm: no 'median repeat', no min–max whiskers; two repeats: both."""
    import matplotlib.axes
    import matplotlib.figure

    drawn = {"xerr": [], "text": []}
    barh, text, suptitle = matplotlib.axes.Axes.barh, matplotlib.figure.Figure.text, matplotlib.figure.Figure.suptitle
    monkeypatch.setattr(matplotlib.axes.Axes, "barh", lambda self, *a, xerr=None, **kw: (
        drawn["xerr"].append(xerr), barh(self, *a, xerr=xerr, **kw))[1])
    monkeypatch.setattr(matplotlib.figure.Figure, "text", lambda self, x, y, s, *a, **kw: (
        drawn["text"].append(s), text(self, x, y, s, *a, **kw))[1])
    monkeypatch.setattr(matplotlib.figure.Figure, "suptitle", lambda self, s, *a, **kw: (
        drawn["text"].append(s), suptitle(self, s, *a, **kw))[1])

    once = [_fake_run_dir(tmp_path / "one" / a, a, 0.1, 0, t, 100.0) for a, t in (("sync", 2.0), ("hogwild", 3.0))]
    assert _report_in_process(*once, "--out", tmp_path / "rep1") == 0
    md = (tmp_path / "rep1" / "report.md").read_text()
    assert "median repeat" not in md and "over repeats" not in md and "min–max" not in md
    assert drawn["xerr"] and all(e is None for e in drawn["xerr"])
    assert not any("repeat" in t or "min–max" in t for t in drawn["text"])

    drawn["xerr"].clear(), drawn["text"].clear()
    twice = once + [_fake_run_dir(tmp_path / "two" / a, a, 0.1, 1, t, 300.0) for a, t in (("sync", 3.0),
                                                                                           ("hogwild", 4.0))]
    assert _report_in_process(*twice, "--out", tmp_path / "rep2") == 0
    md = (tmp_path / "rep2" / "report.md").read_text()
    assert "Accuracy plot: bold line = the median repeat" in md and "whiskers span min–max" in md
    assert "Values are medians over repeats, [min–max] in brackets." in md
    assert any(e is not None for e in drawn["xerr"])
    assert any("median repeat" in t for t in drawn["text"]) and any("min–max" in t for t in drawn["text"])


def test_the_median_of_two_staleness_maxima_keeps_its_half(tmp_path):
    """Repeats whose staleness max is 9 and 8: the table says 8.5 (results.json's median), not 8."""
    runs = [_fake_run_dir(tmp_path / f"d{i}", "dasgd", 0.1, i, 2.0, 100.0,
                          summary_extra={"staleness": {"mean": 0.5, "max": top}}) for i, top in enumerate((9, 8))]
    assert _report_in_process(*runs, "--out", tmp_path / "rep") == 0
    row = next(line for line in (tmp_path / "rep" / "report.md").read_text().splitlines() if line.startswith("| dasgd"))
    assert "| 0.50 / 8.5 |" in row, row


# -- bad input ------------------------------------------------------------------------------------

def test_missing_directory(tmp_path):
    _one_line_error(run_cli("report", tmp_path / "nowhere", "--out", tmp_path / "o"), "nowhere", "does not exist")
    assert not (tmp_path / "o").exists()


def test_directory_without_runs(tmp_path):
    (tmp_path / "empty").mkdir()
    _one_line_error(run_cli("report", tmp_path / "empty", "--out", tmp_path / "o"), "empty", "no run record")


def test_broken_run_record(tmp_path):
    d = _fake_run_dir(tmp_path / "broken", "sync", 0.1, 0, 1.0, 1.0)
    (d / "metrics.jsonl").write_text("{not json\n")
    good = _fake_run_dir(tmp_path / "good", "sync", 0.1, 0, 1.0, 1.0)
    _one_line_error(run_cli("report", good, d, "--out", tmp_path / "o"), "broken", "unreadable")


def test_run_directory_without_metrics(tmp_path):
    d = _fake_run_dir(tmp_path / "half", "sync", 0.1, 0, 1.0, 1.0)
    (d / "metrics.jsonl").unlink()
    _one_line_error(run_cli("report", d, "--out", tmp_path / "o"), "half", "metrics.jsonl")


@pytest.mark.parametrize("value", ["abc", "0", "-1", "inf", "nan", ""])
def test_bad_peak_flops(tmp_path, value):
    d = _fake_run_dir(tmp_path / "r", "sync", 0.1, 0, 1.0, 1.0)
    _one_line_error(run_cli("report", d, "--peak-flops", value, "--out", tmp_path / "o"),
                    f"--peak-flops {value!r}", "accepted: a finite number of FLOP/s > 0")
    assert not (tmp_path / "o").exists()


def test_a_collapsed_run_is_marked_not_ranked(tmp_path):
    """summary.json says collapsed; the report marks the run and ranks the others."""
    from asyncsgd.records import collapse_check

    rows = [{"test_accuracy": a, "train_loss": l} for a, l in ((0.3, 2.0), (0.91, 0.4), (0.52, 1.1))]
    c = collapse_check(rows)
    assert c["collapsed"] and c["best_test_accuracy"] == 0.91 and "0.5200" in c["why"]
    assert not collapse_check([{"test_accuracy": a, "train_loss": l} for a, l in ((0.3, 2.0), (0.9, 0.4), (0.88, 0.41))])["collapsed"]
    assert collapse_check([{"test_accuracy": 0.1, "train_loss": l} for l in (2.3, 1.0, 2.31)])["collapsed"]
    from asyncsgd.report.load import Run
    from asyncsgd.report.stats import build_results

    def run(label, final, collapsed):
        return Run(dir=tmp_path / label, label=label, scenario="s", repeat=0,
                   summary={"algorithm": label, "final_test_accuracy": final, "collapsed": collapsed, "workers": 1,
                            "samples_per_s": 1.0, "staleness": {}},
                   metrics=[{"wall_time_s": 1.0, "samples": 1, "test_accuracy": final}], status="ok")
    res = build_results([run("pdasgd", 0.99, True), run("hogwild", 0.95, False)], target=None, peak=None, flops={})
    sc = res["scenarios"]["s"]
    assert sc["algorithms"]["pdasgd"]["collapsed"] == 1 and sc["winner"]["algorithm"] == "hogwild"
    from asyncsgd.report.markdown import _accuracy
    assert _accuracy(sc["algorithms"]["pdasgd"]).endswith("**collapsed**")


# -- records of the wrong shape: refused in one line, naming the file and what is wrong -------------

@pytest.mark.parametrize("content, wrong", [
    ({"run_order": 5}, "'run_order' is 5, not a list"),
    ({"run_order": [1]}, "'run_order[0]' is 1, not an object"),
    ({"run_order": [{}]}, "no 'run_order[0].run_dir'"),
    ({"run_order": [{"run_dir": "RUN", "scenario": "s", "algorithm": "a"}], "scenarios": 5},
     "'scenarios' is 5, not an object"),
], ids=["run_order-a-number", "entry-a-number", "entry-without-run_dir", "scenarios-a-number"])
def test_results_json_of_the_wrong_shape(tmp_path, content, wrong):
    run = _fake_run_dir(tmp_path / "run", "sync", 0.1, 0, 1.0, 1.0)
    b = tmp_path / "bench"
    b.mkdir()
    (b / "results.json").write_text(json.dumps(content).replace("RUN", str(run)))
    _one_line_error(run_cli("report", b, "--out", tmp_path / "o"), str(b), "results.json is not a bench result",
                    wrong, "accepted: results.json written by asyncsgd bench")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("field, value, wrong", [
    ("final_test_accuracy", "abc", "'final_test_accuracy' is \"abc\", not a number"),
    ("algorithm", 5, "'algorithm' is 5, not a string"),
    ("staleness", {"mean": "x"}, "'staleness.mean' is \"x\", not a number"),
    ("staleness_histogram", {"a": 1}, "'staleness_histogram' holds {\"a\": 1}"),
], ids=["accuracy-text", "algorithm-number", "staleness-mean-text", "histogram-key-text"])
def test_summary_json_field_of_the_wrong_type(tmp_path, field, value, wrong):
    good = _fake_run_dir(tmp_path / "good", "sync", 0.1, 0, 1.0, 1.0)
    bad = _fake_run_dir(tmp_path / "bad", "hogwild", 0.1, 0, 1.0, 1.0, {field: value})
    _one_line_error(run_cli("report", good, bad, "--out", tmp_path / "o"), str(bad),
                    "summary.json is not a run summary", wrong, "accepted: a summary.json written by asyncsgd")


@pytest.mark.parametrize("line, wrong", [
    ("5", "line 2: it is 5, not an object"),
    ('{"wall_time_s":"a","samples":"b"}', "line 2: 'wall_time_s' is \"a\", not a number"),
    ('{"wall_time_s": 1.0, "samples": 10}', "line 2: no 'test_accuracy'"),
], ids=["a-number", "text-numbers", "without-test_accuracy"])
def test_metrics_line_that_is_not_a_metrics_row(tmp_path, line, wrong):
    d = _fake_run_dir(tmp_path / "run", "sync", 0.1, 0, 1.0, 1.0)
    first = (d / "metrics.jsonl").read_text().splitlines()[0]
    (d / "metrics.jsonl").write_text(f"{first}\n{line}\n")
    _one_line_error(run_cli("report", d, "--out", tmp_path / "o"), str(d), "metrics.jsonl is not a run's metrics",
                    wrong, "accepted: metrics.jsonl as asyncsgd writes it")


@pytest.mark.parametrize("out, wrong", [("afile", "it is a file"), ("afile/sub", "'afile' is a file")],
                         ids=["a-file", "under-a-file"])
def test_out_that_is_a_file_or_under_one(tmp_path, out, wrong):
    d = _fake_run_dir(tmp_path / "run", "sync", 0.1, 0, 1.0, 1.0)
    (tmp_path / "afile").write_text("mine")
    _one_line_error(run_cli("report", d, "--out", out, cwd=tmp_path), f"--out {out!r} is not accepted", wrong,
                    "accepted: a directory")
    assert (tmp_path / "afile").read_text() == "mine"
