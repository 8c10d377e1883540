"""asyncsgd bench: results.json schema, interleaving, ratios and MFU, failures, bad input.

One test trains for real (a tiny quick suite through the CLI); the others replace
asyncsgd.runner.run with a fake that writes a run record with known numbers, so the ratios,
medians and the run order can be checked exactly.
"""

import argparse
import json
import math
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import assert_one_line_error, read_run, run_cli

from asyncsgd import bench
from asyncsgd.errors import ConfigError, WorkerError
from asyncsgd.tasks.npz import load_npz

MAKE_NPZ = Path(__file__).parents[1] / "bench" / "make_npz.py"

PNG = b"\x89PNG\r\n\x1a\n"


def _one_line_error(proc, *needles):
    return assert_one_line_error(proc, 2, *needles)


def _pngs(out: Path) -> list[Path]:
    files = sorted(out.glob("*.png"))
    for f in files:
        assert f.read_bytes()[:8] == PNG and f.stat().st_size > 2000, f
    return files


# -- a real tiny suite --------------------------------------------------------------------------

@pytest.mark.slow
def test_tiny_quick_suite_writes_results_report_and_plots(tmp_path):
    out = tmp_path / "bench"
    algos = ["hogwild", "sync"]  # the two references every ratio is taken against (sequential: the fake runner's tests)
    proc = run_cli("bench", "--suite", "quick", "--algos", ",".join(algos), "--epochs", "0.25", "--repeats", "2",
                   "--eval-points", "4", "--peak-flops", "1e11", "--target-accuracy", "0.15", "--out", out,
                   "--set", "threads_per_worker=1", timeout=300)
    assert proc.returncode == 0, proc.stderr
    res = json.loads((out / "results.json").read_text())

    assert res["complete"] is True
    for key in ("cpu", "cores", "torch_version", "asyncsgd_version", "device", "peak_flops"):
        assert res["machine"][key] not in (None, ""), key
    assert res["peak_flops"]["flops"] == 1e11 and "given" in res["peak_flops"]["source"]
    assert res["suite"]["name"] == "quick" and res["suite"]["repeats"] == 2 and res["suite"]["algorithms"] == algos

    # Interleaved: A B A B, every algorithm of a repeat with the same seed.
    order = [(e["repeat"], e["algorithm"]) for e in res["run_order"]]
    assert order == [(r, a) for r in range(2) for a in algos]
    assert [e["seed"] for e in res["run_order"]] == [0, 0, 1, 1]
    assert [e["started_at"] for e in res["run_order"]] == sorted(e["started_at"] for e in res["run_order"])
    assert all(e["status"] == "ok" for e in res["run_order"])

    sc = res["scenarios"]["quick"]
    fps = sc["flops_per_sample"]
    assert fps > 0
    samples = set()
    for algo in algos:
        e = sc["algorithms"][algo]
        assert e["runs"] == e["completed"] == 2
        assert len(e["run_dirs"]) == 2
        for metric in ("final_test_accuracy", "samples_per_s", "mfu", "staleness_mean", "staleness_max",
                       "bytes_sent"):
            st = e[metric]
            assert st["min"] <= st["median"] <= st["max"], (algo, metric, st)
        for d, sps, m in zip(e["run_dirs"], e["samples_per_s"]["values"], e["mfu"]["values"]):
            summary, metrics = read_run(out / d)
            assert summary["algorithm"] == algo and summary["samples_per_s"] == sps and metrics
            assert math.isclose(m, fps * sps / 1e11, rel_tol=1e-9)  # MFU = FLOPs/sample * samples/s / peak
            samples.add(summary["samples"])
        for ref in ("sync", "hogwild"):
            ratio = e[f"time_to_target_ratio_vs_{ref}"]
            mine, theirs = e["time_to_target_s"]["median"], sc["algorithms"][ref]["time_to_target_s"]["median"]
            if mine is None or theirs is None:
                assert ratio is None
            else:
                assert math.isclose(ratio, theirs / mine)
            assert math.isclose(e[f"throughput_ratio_vs_{ref}"],
                                e["samples_per_s"]["median"] / sc["algorithms"][ref]["samples_per_s"]["median"])
    assert len(samples) == 1  # the same sample budget for every algorithm
    assert sc["algorithms"]["sync"]["throughput_ratio_vs_sync"] == 1.0
    assert sc["algorithms"]["sync"]["bytes_sent"]["median"] > 0  # sync all-reduces; hogwild shares memory

    report = (out / "report.md").read_text()
    for algo in algos:
        assert f"| {algo} |" in report
    assert "| algorithm | runs | time to 0.15 (s) | vs sync | vs hogwild | final test acc |" in report
    pngs = _pngs(out)
    assert {p.name for p in pngs} >= {"accuracy-quick.png", "speed-quick.png", "staleness-quick.png"}
    for p in pngs:
        assert f"({p.name})" in report  # every plot is shown in the report


# -- the bench logic with a fake runner -----------------------------------------------------------

# algorithm -> (training seconds, samples/s, accuracy curve reaching 0.9 at that time or never)
FAKE = {"sequential": (4.0, 1000.0, 2.0), "sync": (4.0, 2000.0, 3.0), "hogwild": (4.0, 4000.0, 1.5),
        "pdasgd": (4.0, 3000.0, 2.5)}


def _fake_run(calls, fail=()):
    def run(cfg):
        calls.append((cfg.algorithm, cfg.seed, cfg.out, cfg.straggler))
        if cfg.algorithm in fail:
            raise WorkerError("worker 1 exited with code 9")
        wall, sps, t_hit = FAKE[cfg.algorithm]
        t_hit += 0.5 * cfg.seed  # repeats differ: medians and min/max are then checkable
        out = Path(cfg.out)
        out.mkdir(parents=True)
        rows = [{"wall_time_s": t, "samples": int(t * sps), "test_accuracy": 0.95 if t >= t_hit else 0.5,
                 "test_loss": 0.1, "train_loss": 0.1} for t in (0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0)]
        (out / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        summary = {"algorithm": cfg.algorithm, "task": "mnist1d", "model": "cnn1d", "workers": 2, "samples": 8000,
                   "wall_time_s": wall, "samples_per_s": sps, "final_test_accuracy": 0.95, "final_test_loss": 0.1,
                   "target_accuracy": cfg.target_accuracy, "staleness": {"mean": 1.0, "max": 3},
                   "staleness_histogram": {"0": 5, "1": 3, "3": 1}, "bytes_sent": 100, "config": cfg.to_dict(),
                   "task_info": {"train_samples": 8000}, "device": "cpu"}
        (out / "summary.json").write_text(json.dumps(summary))
        return summary
    return run


def _args(tmp_path, **kw):
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    argv = ["--out", str(tmp_path / "b"), "--peak-flops", "1e9", "--algos", "sequential,sync,hogwild"]
    for k, v in kw.items():
        argv += [f"--{k.replace('_', '-')}", str(v)]
    return parser.parse_args(argv)


def test_interleaving_ratios_and_medians_exact(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr("asyncsgd.runner.run", _fake_run(calls))
    assert bench.main(_args(tmp_path, repeats=3, target_accuracy=0.9)) == 0
    assert [(a, s) for a, s, _, _ in calls] == [(a, r) for r in range(3) for a in ("sequential", "sync", "hogwild")]
    res = json.loads((tmp_path / "b" / "results.json").read_text())
    algos = res["scenarios"]["quick"]["algorithms"]
    # times to 0.9 over seeds 0, 1, 2: sequential 2.0/2.5/3.0, sync 3.0/3.5/4.0, hogwild 1.5/2.0/2.5
    assert algos["sync"]["time_to_target_s"] == {"median": 3.5, "min": 3.0, "max": 4.0, "reached": 3, "runs": 3,
                                                 "values": [3.0, 3.5, 4.0]}
    assert algos["hogwild"]["time_to_target_ratio_vs_sync"] == pytest.approx(3.5 / 2.0)
    assert algos["sequential"]["time_to_target_ratio_vs_hogwild"] == pytest.approx(2.0 / 2.5)
    assert algos["hogwild"]["throughput_ratio_vs_sync"] == pytest.approx(2.0)
    fps = res["scenarios"]["quick"]["flops_per_sample"]
    assert algos["hogwild"]["mfu"]["median"] == pytest.approx(fps * 4000 / 1e9)
    assert res["scenarios"]["quick"]["winner"]["algorithm"] == "hogwild"
    assert [e["run_dir"] for e in res["run_order"]][:2] == ["runs/quick/sequential-r0", "runs/quick/sync-r0"]
    report = (tmp_path / "b" / "report.md").read_text()
    assert "Fastest to 0.9 test accuracy: hogwild" in report and "1.75x vs sync" in report
    assert len(_pngs(tmp_path / "b")) == 3


def test_target_not_reached_gives_null_ratio(tmp_path, monkeypatch):
    monkeypatch.setattr("asyncsgd.runner.run", _fake_run([]))
    # The fake curves top out at 0.95: a target of 0.99 is reached by nobody.
    assert bench.main(_args(tmp_path, repeats=1, target_accuracy=0.99)) == 0
    res = json.loads((tmp_path / "b" / "results.json").read_text())
    for e in res["scenarios"]["quick"]["algorithms"].values():
        assert e["time_to_target_s"]["median"] is None and e["time_to_target_s"]["reached"] == 0
        assert e["time_to_target_ratio_vs_sync"] is None and e["time_to_target_ratio_vs_hogwild"] is None
        assert e["throughput_ratio_vs_sync"] is not None
    assert res["scenarios"]["quick"]["winner"]["by"] == "final_test_accuracy"
    assert "not reached (0/1)" in (tmp_path / "b" / "report.md").read_text()


def test_a_failing_algorithm_is_recorded_and_the_others_go_on(tmp_path, monkeypatch, capsys):
    calls = []
    monkeypatch.setattr("asyncsgd.runner.run", _fake_run(calls, fail={"sync"}))
    assert bench.main(_args(tmp_path, repeats=2, target_accuracy=0.9)) == 1
    assert len(calls) == 6
    res = json.loads((tmp_path / "b" / "results.json").read_text())
    statuses = [(e["algorithm"], e["status"]) for e in res["run_order"]]
    assert statuses.count(("sync", "error")) == 2 and statuses.count(("hogwild", "ok")) == 2
    assert "exited with code 9" in res["run_order"][1]["error"]
    sync = res["scenarios"]["quick"]["algorithms"]["sync"]
    assert sync["completed"] == 0 and sync["failed"] == {"error": 2}
    assert res["scenarios"]["quick"]["algorithms"]["hogwild"]["time_to_target_ratio_vs_sync"] is None
    assert "2 run(s) failed" in capsys.readouterr().err


def test_delays_suite_drops_the_straggler_where_it_has_no_worker(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr("asyncsgd.runner.run", _fake_run(calls))
    args = _args(tmp_path, suite="delays", repeats=1, target_accuracy=0.9, scenarios="straggler-latency")
    assert bench.main(args) == 0
    stragglers = {a: s for a, _, _, s in calls}
    assert stragglers == {"sequential": None, "sync": "worker=1,slowdown=4", "hogwild": "worker=1,slowdown=4"}
    res = json.loads((tmp_path / "b" / "results.json").read_text())
    sc = res["scenarios"]["straggler-latency"]
    assert "sequential" in sc["adjustments"] and sc["settings"]["delay"] == "latency=20ms"
    assert calls[0][2].endswith("runs/straggler-latency/sequential-r0")


def test_delays_suite_runs_pdasgd_at_its_default_layout(tmp_path):
    """pdasgd's workers are left to its default (a process per core on a CPU): the straggler is
    checked against the layout the run will resolve to, not refused for an unset --workers."""
    from asyncsgd.algorithms.registry import ALGORITHMS
    from asyncsgd.settings import resolve
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    p = bench.plan(parser.parse_args(["--suite", "delays", "--out", str(tmp_path / "d"), "--algos", "pdasgd"]))
    runs = [(scenario, cfg) for _, scenario, _, cfg in bench.run_order(p)]
    assert len(runs) == 2 * 3 and all(cfg.workers is None for _, cfg in runs)
    processes = ALGORITHMS["pdasgd"].processes(resolve(runs[0][1]))
    expected = "worker=1,slowdown=4" if processes > 1 else None  # one core: one process, no worker 1
    assert {cfg.straggler for scenario, cfg in runs if scenario == "straggler-latency"} == {expected}


def test_speed_suite_plans_sequential_hogwild_and_the_pdasgd_layouts(tmp_path, monkeypatch):
    calls, clips, fake = [], set(), _fake_run([])

    def run(cfg):
        from asyncsgd.algorithms.registry import ALGORITHMS
        from asyncsgd.settings import resolve
        processes = ALGORITHMS[cfg.algorithm].processes(resolve(cfg))  # sequential: --workers unset
        calls.append((cfg.algorithm, processes, cfg.forward_threads, cfg.backward_threads, cfg.threads_per_worker,
                      cfg.seed, cfg.task, cfg.model, cfg.target_accuracy, Path(cfg.out).name))
        clips.add((cfg.algorithm, resolve(cfg).clip_grad_norm))
        return fake(cfg)
    monkeypatch.setattr("asyncsgd.runner.run", run)
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    assert bench.main(parser.parse_args(["--suite", "speed", "--out", str(tmp_path / "b"), "--peak-flops", "1e9"])) == 0
    # label -> (algorithm, processes, forward threads, backward threads, torch threads per process);
    # None: not given, the algorithm's default applies when the run resolves its settings
    layouts = {"sequential": ("sequential", 1, None, None, None), "sequential threads=1": ("sequential", 1, None, None, 1),
               "hogwild": ("hogwild", 2, None, None, None), "hogwild (default)": ("hogwild", 2, None, None, None),
               "pdasgd (default)": ("pdasgd", 2, None, None, None),  # a process per core (the CPU default)
               "pdasgd 1x1F:2B": ("pdasgd", 1, 1, 2, None), "pdasgd 1x1F:1B": ("pdasgd", 1, 1, 1, None),
               "pdasgd 1x1F:1B threads=1": ("pdasgd", 1, 1, 1, 1),
               "pdasgd 2x1F:1B": ("pdasgd", 2, 1, 1, None), "pdasgd 2x1F:2B": ("pdasgd", 2, 1, 2, None)}
    slug = {"sequential": "sequential", "sequential threads=1": "sequential-threads-1", "hogwild": "hogwild",
            "hogwild (default)": "hogwild--default-", "pdasgd (default)": "pdasgd--default-",
            "pdasgd 1x1F:2B": "pdasgd-1x1F-2B", "pdasgd 1x1F:1B": "pdasgd-1x1F-1B",
            "pdasgd 1x1F:1B threads=1": "pdasgd-1x1F-1B-threads-1", "pdasgd 2x1F:1B": "pdasgd-2x1F-1B",
            "pdasgd 2x1F:2B": "pdasgd-2x1F-2B"}
    # 3 repeats, interleaved: every layout once per repeat, repeat r with seed r
    assert calls == [(*layouts[label], r, "mnist1d", "cnn1d", 0.95, f"{slug[label]}-r{r}")
                     for r in range(3) for label in layouts]
    res = json.loads((tmp_path / "b" / "results.json").read_text())
    algos = res["scenarios"]["speed"]["algorithms"]
    assert set(algos) == set(layouts) and all(e["samples_per_s"]["median"] is not None for e in algos.values())
    assert all(e["time_to_target_s"]["runs"] == 3 for e in algos.values())
    assert clips >= {("hogwild", 0.0), ("hogwild", 2.0)}  # the reference at its fastest, and at its defaults
    assert algos["pdasgd (default)"]["throughput_ratio_vs_hogwild"] == pytest.approx(  # against the unclipped row
        algos["pdasgd (default)"]["samples_per_s"]["median"] / algos["hogwild"]["samples_per_s"]["median"])
    # --algos picks variants by algorithm (or label)
    p = bench.plan(parser.parse_args(["--suite", "speed", "--out", str(tmp_path / "c"), "--algos", "pdasgd,hogwild"]))
    assert p["algos"] == [label for label in layouts if label.startswith("pdasgd")] + ["hogwild", "hogwild (default)"]


HOGWILD_REF = "hogwild (single-device reference)"


def _cluster_plan(tmp_path, *argv):
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    return bench.plan(parser.parse_args(["--suite", "cluster", "--out", str(tmp_path / "c"), *argv]))


def test_cluster_suite_plans_n_devices_that_share_nothing(tmp_path):
    """The cluster suite: the algorithms that run across devices, each as 4 processes without a
    shared model (lpap one group per device), in three scenarios; hogwild (one shared model) only as
    the single-device reference; layup where it is registered; the same samples for everyone."""
    from asyncsgd.algorithms.registry import ALGORITHMS

    p = _cluster_plan(tmp_path)
    labels = ["sync", "ddp", "lpap", "pdasgd sharing=average", "dasgd"] + ["layup"] * ("layup" in ALGORITHMS)
    assert p["algos"] == labels + [bench.FLOOR, HOGWILD_REF] and p["repeats"] == 3
    scenarios = {"no-delay": (None, None), "latency": ("latency=20ms", None),
                 "straggler-latency": ("latency=20ms", "worker=1,slowdown=4")}
    assert list(p["suite"]["scenarios"]) == list(scenarios)
    for (scenario, label), cfg in p["configs"].items():
        algo = ALGORITHMS[cfg.algorithm].for_config(cfg)
        assert (cfg.delay, cfg.straggler) == scenarios[scenario], (scenario, label)
        assert algo.processes(cfg) == 4 and cfg.device == "cpu" and cfg.threads_per_worker is None  # cores / 4 each
        assert cfg.epochs == 20.0 and cfg.task == "mnist1d" and cfg.target_accuracy == 0.9  # the same samples
        assert algo.shared_model is (label == HOGWILD_REF), label  # only the reference shares memory
    assert p["adjustments"] == {}  # every algorithm has a worker 1 to slow down
    lpap, pd = p["configs"][("latency", "lpap")], p["configs"][("latency", "pdasgd sharing=average")]
    assert (lpap.groups, lpap.workers_per_group) == (4, 1) and pd.sharing == "average"
    assert p["suite"]["notes"][HOGWILD_REF].startswith("single-device reference")
    floor = p["configs"][("latency", bench.FLOOR)]  # replicas that send nothing: what the messages must beat
    assert (floor.algorithm, floor.topology) == ("dasgd", "none")
    assert p["suite"]["notes"][bench.FLOOR].startswith("the floor, not a cluster algorithm")
    # N devices: lpap's groups follow --set workers=N
    p8 = _cluster_plan(tmp_path, "--set", "workers=8", "--scenarios", "no-delay")
    assert {ALGORITHMS[c.algorithm].processes(c) for c in p8["configs"].values()} == {8}


def test_cluster_suite_dry_run_prints_the_runs_in_order(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("asyncsgd.runner.run", lambda cfg: pytest.fail("a dry run trains nothing"))
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    out = tmp_path / "c"
    assert bench.main(parser.parse_args(["--suite", "cluster", "--out", str(out), "--dry-run", "--repeats", "2"])) == 0
    lines = capsys.readouterr().out.splitlines()
    labels = _cluster_plan(tmp_path)["algos"]
    heads = [f"# {sc} / {label} / repeat {r}" for r in range(2) for sc in ("no-delay", "latency", "straggler-latency")
             for label in labels]
    assert lines[0::2] == heads and not out.exists()
    commands = dict(zip(lines[0::2], lines[1::2]))
    assert commands[f"# straggler-latency / {HOGWILD_REF} / repeat 1"] == (
        f"asyncsgd train --algo hogwild --workers 4 --epochs 20 --seed 1 --target-accuracy 0.9 --out "
        f"{out}/runs/straggler-latency/hogwild--single-device-reference--r1 --device cpu --progress none "
        "--delay latency=20ms --straggler worker=1,slowdown=4")
    assert "--algo lpap" in commands["# latency / lpap / repeat 0"] and \
        "--groups 4 --workers-per-group 1 --delay latency=20ms" in commands["# latency / lpap / repeat 0"]
    # every printed command is one `asyncsgd train` accepts, and it runs the bench's settings
    from asyncsgd import cli
    from asyncsgd.settings import resolve
    parser = cli.build_parser()
    planned = bench.run_order(_cluster_plan(tmp_path, "--repeats", "2"))
    for (r, scenario, label, cfg), (head, command) in zip(planned, commands.items()):
        assert head == f"# {scenario} / {label} / repeat {r}"
        given = cli.config_from_args(parser.parse_args(shlex.split(command)[1:]))
        assert resolve(given) == resolve(cfg), command


def test_cluster_report_labels_hogwild_as_the_single_device_reference(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr("asyncsgd.runner.run", _fake_run(calls))
    args = _args(tmp_path, suite="cluster", repeats=1, scenarios="latency")
    args.algos = "sync,hogwild"
    assert bench.main(args) == 0
    assert [(a, s) for a, s, _, _ in calls] == [("sync", 0), ("hogwild", 0)]
    res = json.loads((tmp_path / "b" / "results.json").read_text())
    sc = res["scenarios"]["latency"]
    assert list(sc["algorithms"]) == ["sync", HOGWILD_REF]
    assert sc["notes"] == {HOGWILD_REF: bench.SUITES["cluster"]["notes"][HOGWILD_REF]}
    # ratios against hogwild still find it under its label: sync (3.0 s) / hogwild (1.5 s)
    assert sc["algorithms"]["sync"]["time_to_target_ratio_vs_hogwild"] == pytest.approx(1.5 / 3.0)
    report = (tmp_path / "b" / "report.md").read_text()
    assert f"- {HOGWILD_REF}: single-device reference, not a cluster algorithm" in report
    assert f"| {HOGWILD_REF} |" in report


def test_every_suite_is_a_small_declarative_dict():
    for name, suite in bench.SUITES.items():
        assert {"task", "workers", "epochs", "target_accuracy", "repeats", "settings", "scenarios"} <= set(suite)
        assert 0 < suite["target_accuracy"] <= 1 and suite["repeats"] >= 1 and suite["scenarios"]
    assert bench.SUITES["quick"]["task"] == "mnist1d" and bench.SUITES["quick"]["workers"] == 2
    assert bench.SUITES["delays"]["workers"] == 4
    assert bench.SUITES["paper"]["model"] == "resnet18" and bench.SUITES["paper"]["settings"]["device"] == "cuda"


def test_default_algorithms_are_the_registry(tmp_path):
    from asyncsgd.algorithms.registry import ALGORITHMS

    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    p = bench.plan(parser.parse_args(["--out", str(tmp_path / "x")]))
    assert p["algos"] == list(ALGORITHMS)


# -- bad input ------------------------------------------------------------------------------------

def test_unknown_suite(tmp_path):
    _one_line_error(run_cli("bench", "--suite", "huge", "--out", tmp_path / "o"), "--suite", "'huge'", "quick",
                    "delays", "paper")
    assert not (tmp_path / "o").exists()


def test_unknown_algorithm(tmp_path):
    _one_line_error(run_cli("bench", "--algos", "sync,nope", "--out", tmp_path / "o"), "--algos", "'nope'",
                    "accepted:", "hogwild", "sync")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("argv, needles", [
    (["--repeats", "0"], ["--repeats", "0", "from 1 to 1000"]),
    (["--repeats", "99999999999", "--dry-run"], ["--repeats 99999999999", "from 1 to 1000"]),  # not a hang
    (["--seed", "99999999999999999999999", "--dry-run"], ["--seed 99999999999999999999999", "2**62"]),
    (["--seed", "abc"], ["--seed", "'abc'", "a whole number"]),
    (["--peak-flops", "inf", "--dry-run"], ["--peak-flops inf", "finite"]),
    # --set takes the types train takes, and a dry run refuses what train would refuse
    (["--set", "nesterov=yes", "--dry-run"], ["--set 'nesterov=yes'", "--nesterov 'yes'", "true or false"]),
    (["--set", "lr_steps=a,b", "--dry-run"], ["--set 'lr_steps=a,b'", "fractions of the run"]),
    (["--set", "task=imagenet", "--dry-run"], ["unknown task 'imagenet'", "mnist1d"]),
    (["--set", "model=nope", "--dry-run"], ["unknown model 'nope'", "cnn1d"]),
    (["--epochs", "-1"], ["--epochs", "-1", "> 0"]),
    (["--target-accuracy", "2"], ["--target-accuracy", "2", "(0, 1]"]),
    (["--scenarios", "rain"], ["--scenarios", "'rain'", "quick"]),
    (["--set", "lr"], ["--set", "'lr'", "KEY=VALUE"]),
    (["--set", "seed=3"], ["--set", "'seed=3'"]),
])
def test_bad_values(tmp_path, argv, needles):
    _one_line_error(run_cli("bench", *argv, "--out", tmp_path / "o"), *needles)


def test_set_lr_steps_reaches_the_runs_as_train_takes_it(tmp_path):
    proc = run_cli("bench", "--algos", "sequential", "--set", "schedule=step", "--set", "lr_steps=0.25,0.5",
                   "--dry-run", "--out", tmp_path / "o")
    assert proc.returncode == 0, proc.stderr
    assert "--schedule step --lr-steps 0.25,0.5 " in proc.stdout, proc.stdout


@pytest.mark.parametrize("make_out, needles", [
    (lambda tmp: "", ["--out ''", "a directory path"]),  # not silently the default directory
    (lambda tmp: (tmp / "afile").write_text("x") and tmp / "afile" / "sub", ["afile is a file"]),
    (lambda tmp: "/proc/asyncsgd-bench-test", ["could not be made", "a directory path this user can write"]),
])
def test_out_that_cannot_be_a_directory(tmp_path, make_out, needles):
    """Refused in one line: before, an --out under a file or where no directory can be made ended in
    a traceback once the task was built."""
    out = make_out(tmp_path)
    proc = run_cli("bench", "--algos", "sequential", "--epochs", "0.01", "--peak-flops", "1e9", "--out", out)
    _one_line_error(proc, *needles)


def test_out_dir_that_holds_files(tmp_path):
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "results.json").write_text("{}")
    _one_line_error(run_cli("bench", "--out", tmp_path / "o"), "--out", "new or empty")


def test_paper_suite_without_cuda():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    _one_line_error(run_cli("bench", "--suite", "paper"), "cuda")


@pytest.mark.parametrize("suite", ["quick", "delays", "speed", "cluster", "seeds"])
def test_every_planned_run_is_a_train_command_that_train_accepts(tmp_path, suite):
    """A suite's settings go to the algorithms that use them (lpap's --groups, dasgd's --send-every,
    --workers where the process count follows it), so that each run's printed command is one
    `asyncsgd train` accepts, with the very settings the bench runs: train refuses a setting the
    algorithm does not use, and the bench must not run what train would refuse."""
    from asyncsgd import cli
    from asyncsgd.settings import resolve

    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    sets = [] if suite == "speed" else ["--set", "send_every=4"]  # speed runs no dasgd nor layup
    sets += ["--set", "nesterov=false"]  # printed as --no-nesterov (the shared default is True)
    p = bench.plan(parser.parse_args(["--suite", suite, "--out", str(tmp_path / "b"), *sets]))
    train = cli.build_parser()
    for _, _, label, cfg in bench.run_order(p):
        command = bench.train_command(cfg)
        given = cli.config_from_args(train.parse_args(shlex.split(command)[1:]))  # ConfigError: refused
        assert resolve(given) == resolve(cfg), command
        assert ("--send-every 4" in command) == (cfg.algorithm in ("dasgd", "layup")), command


def test_a_set_no_algorithm_of_the_bench_uses_is_refused(tmp_path):
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    args = parser.parse_args(["--suite", "quick", "--algos", "sync,hogwild", "--out", str(tmp_path / "b"),
                              "--set", "send_every=4"])
    with pytest.raises(ConfigError) as e:
        bench.plan(args)
    assert str(e.value) == ("--set 'send_every=4' is not accepted; accepted: a setting one of this bench's "
                            "algorithms uses (send_every is used by dasgd, layup; the bench runs sync, hogwild)")


def test_make_npz_writes_a_users_own_data_that_the_npz_task_loads(tmp_path):
    """bench/make_npz.py (the own-data check of docs/pdasgd.md): x [3000, 1, 40], 4 classes, the
    same file for the same seed, and separable: each signal's strongest frequency is its class + 1
    in nearly every case."""
    paths = [tmp_path / "a.npz", tmp_path / "b.npz"]
    for p in paths:
        done = subprocess.run([sys.executable, str(MAKE_NPZ), str(p)], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith(f"{p}: x (3000, 1, 40), y (3000,), classes [")
    a = load_npz(paths[0])
    assert a["x"].shape == (3000, 1, 40) and a["y"].shape == (3000,) and sorted(set(a["y"].tolist())) == [0, 1, 2, 3]
    assert np.array_equal(np.load(paths[0])["x"], np.load(paths[1])["x"])
    peak = np.abs(np.fft.rfft(a["x"][:, 0, :], axis=1))[:, 1:].argmax(axis=1)  # cycles per signal - 1
    assert (peak == a["y"]).mean() > 0.95


@pytest.mark.parametrize("argv, needles", [
    (["--n", "2"], ["--n 2", "at least 4"]),
    (["--length", "1"], ["--length 1", "at least 2"]),
    (["--noise", "nan"], ["--noise nan", "finite"]),
    (["--noise", "-1"], ["--noise -1.0", "0 or more"]),
    (["--seed", "-3"], ["--seed -3", "0 or more"]),
    (["--n", "10000000", "--length", "40"], ["--n 10000000 x --length 40", "at most 100,000,000"]),
    (["--n", "abc"], ["--n", "invalid int value: 'abc'"]),
])
def test_make_npz_refuses_bad_values_in_one_line(tmp_path, argv, needles):
    done = subprocess.run([sys.executable, str(MAKE_NPZ), str(tmp_path / "a.npz"), *argv],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert all(n in done.stderr for n in needles) and "Traceback" not in done.stderr
    assert not (tmp_path / "a.npz").exists()


def test_make_npz_names_an_unwritable_path(tmp_path):
    out = tmp_path / "missing" / "a.npz"
    done = subprocess.run([sys.executable, str(MAKE_NPZ), str(out)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert str(out) in done.stderr and "cannot write" in done.stderr


BENCH_SCRIPTS = sorted(p for p in (Path(__file__).resolve().parents[1] / "bench").glob("*.py")
                       if p.name != "cnn1d_engine.py")  # a module the scripts import, not a script


@pytest.mark.parametrize("script", BENCH_SCRIPTS, ids=[p.name for p in BENCH_SCRIPTS])
def test_every_bench_script_refuses_an_unknown_argument_in_one_line(script, tmp_path):
    """A bench script given an argument it does not take exits 2 with one line that names it, before
    it measures anything (clip_cost.py ran its whole benchmark with it, pdasgd_profile.py raised)."""
    given = [str(tmp_path / "a.npz")] if script.name == "make_npz.py" else []  # its one required argument
    done = subprocess.run([sys.executable, str(script), *given, "--no-such-flag"], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "--no-such-flag" in done.stderr and "Traceback" not in done.stderr
    assert done.stdout == ""
