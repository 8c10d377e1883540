"""Bad input of every kind (flags, TOML files, --out, huge and infinite values, the Python API) is
one line on stderr naming the value, and exit code 2; the run record's config.toml replays a run."""

from __future__ import annotations

import json

import pytest
import torch

import asyncsgd
from asyncsgd import cli
from asyncsgd.algorithms.registry import ALGORITHMS
from asyncsgd.errors import ConfigError

FAST = ["--progress", "none", "--threads-per-worker", "1"]

BAD_FLAGS = {
    "bare-number delay is not seconds": (["--delay", "latency=20"], ["'20'", "unit us, ms or s"]),
    "zero bandwidth": (["--delay", "latency=1ms,bandwidth=0"], ["bandwidth", "'0'", "> 0"]),
    "infinite checkpoint interval": (["--checkpoint-every", "inf"], ["--checkpoint-every", "inf"]),
    "infinite stall timeout": (["--stall-timeout", "inf"], ["--stall-timeout", "inf"]),
    "huge stall timeout": (["--stall-timeout", "1e300"], ["--stall-timeout", "at most"]),
    "infinite straggler slowdown": (["--straggler", "worker=0,slowdown=inf"], ["--straggler", "slowdown=inf"]),
    "seed of 1e23": (["--seed", "1e23"], ["'1e23'", "a whole number"]),
    "huge epochs": (["--epochs", "1e300"], ["--epochs", "at most 100000"]),
    "huge eval points": (["--eval-points", "100000"], ["--eval-points", "100000", "at most 1000"]),
    "huge backward threads": (["--backward-threads", "100000"], ["--backward-threads", "at most 64"]),
    "huge forward threads": (["--forward-threads", "100000"], ["--forward-threads", "at most 64"]),
    "huge queue": (["--queue-size", "100000"], ["--queue-size", "at most 1024"]),
    "huge groups": (["--algo", "lpap", "--groups", "100000"], ["--groups", "at most 256"]),
    "huge workers per group": (["--algo", "lpap", "--workers-per-group", "100000"], ["--workers-per-group", "at most 64"]),
    "huge sample count": (["--task", "logreg", "--num-samples", "100000000000"], ["--num-samples", "at most"]),
    "more random peers than there are": (["--algo", "dasgd", "--workers", "2", "--topology", "random:50"],
                                         ["--topology", "'random:50'", "at most the 1 peer"]),
    "device rate with measured times": (["--runtime", "sim", "--sim-times", "measured", "--sim-device-flops", "1e9"],
                                        ["--sim-device-flops is not used"]),
    "unknown staleness policy": (["--staleness", "sometimes"], ["--staleness", "'sometimes'", "adaptive"]),
    "unknown sim times": (["--runtime", "sim", "--sim-times", "guess"], ["--sim-times", "'guess'", "flops, measured"]),
    "sim device rate of zero": (["--runtime", "sim", "--sim-device-flops", "0"], ["--sim-device-flops", "FLOP/s > 0"]),
}


def main(capsys, *args) -> tuple[int, list[str]]:
    code = cli.main(["train", *map(str, args)])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    return code, err


def one_line(code, err, *needles):
    assert code == 2, err
    assert len(err) == 1 and "Traceback" not in err[0], err
    for n in needles:
        assert n in err[0], (n, err[0])


@pytest.mark.parametrize("name", sorted(BAD_FLAGS))
def test_bad_flag_exits_2_with_one_line(name, tmp_path, capsys):
    args, needles = BAD_FLAGS[name]
    one_line(*main(capsys, *args, "--out", tmp_path / "run", *FAST), *needles)


BAD_TOML = {
    "task = 5": ["--task", "5", "text"],
    "staleness = 5": ["--staleness", "5"],
    "delay = 20": ["--delay", "20"],
    "lr_steps = 0.5": ["--lr-steps", "0.5", "a list of numbers"],
    'algorithm = ["dasgd"]': ["--algo", "['dasgd']"],
    "out = 5": ["--out", "5"],
    "threads_per_worker = true": ["--threads-per-worker", "True", "a whole number"],
    'nesterov = "no"': ["--nesterov", "'no'", "true or false"],
    'partitioned = "no"': ["--partitioned", "'no'", "true or false"],
    "epochs = inf": ["--epochs", "inf"],
    "lr = nan": ["--lr", "nan"],
    "seed = 1.5": ["--seed", "1.5", "a whole number"],
}


@pytest.mark.parametrize("line", sorted(BAD_TOML))
def test_toml_values_are_type_checked(line, tmp_path, capsys):
    cfg = tmp_path / "run.toml"
    cfg.write_text(line + "\n")
    one_line(*main(capsys, "--config", cfg, "--out", tmp_path / "run", *FAST), *BAD_TOML[line])


def test_a_non_utf8_toml_file_exits_2(tmp_path, capsys):
    cfg = tmp_path / "latin1.toml"
    cfg.write_bytes('task = "caf\xe9"\n'.encode("latin-1"))
    one_line(*main(capsys, "--config", cfg, *FAST), "latin1.toml", "UTF-8")


def test_an_unusable_out_exits_2(tmp_path, capsys):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    for out, needles in ((a_file, [str(a_file), "it is a file"]), (a_file / "under", [str(a_file / "under"), "cannot be written"]),
                         ("/proc/asyncsgd-run", ["/proc/asyncsgd-run", "cannot be written"])):
        one_line(*main(capsys, "--algo", "sequential", "--epochs", "0.01", "--out", out, *FAST), *needles)


@pytest.mark.parametrize("call, needles", [
    (lambda: asyncsgd.train(task=5), ["--task", "5"]),
    (lambda: asyncsgd.train(staleness=3), ["--staleness", "3"]),
    (lambda: asyncsgd.train(algorithm="sequential", nesterov="no"), ["--nesterov", "'no'"]),
    (lambda: asyncsgd.train(torch.nn.Linear(2, 2), [], []), ["model_fn", "Linear", "not a model instance"]),
])
def test_the_python_api_raises_the_same_config_error(call, needles):
    with pytest.raises(ConfigError) as e:
        call()
    for n in needles:
        assert n in str(e.value)


def test_the_api_rejects_an_out_that_is_a_file(tmp_path):
    f = tmp_path / "f"
    f.write_text("")
    with pytest.raises(ConfigError, match="it is a file"):
        asyncsgd.train(algorithm="sequential", epochs=0.01, out=str(f), progress="none")


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"asyncsgd {asyncsgd.__version__}"


def test_default_run_directories_are_unique(tmp_path, monkeypatch, capsys):
    """Two runs started in the same second get two directories (runs/<timestamp>-<algo>, then -2)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("time.strftime", lambda fmt, *a: "20261201-101500")
    for _ in range(2):
        assert cli.main(["train", "--runtime", "sim", "--task", "logreg", "--epochs", "0.05", "--progress", "none"]) == 0
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["20261201-101500-pdasgd", "20261201-101500-pdasgd-2"]


@pytest.mark.parametrize("name", sorted(ALGORITHMS))
def test_config_toml_replays_the_runs_settings(name, tmp_path, capsys):
    """Every run directory holds config.toml; `train --config` accepts it as is and runs the same
    settings (here on the simulator, which writes it through the same code as the real runtime)."""
    first, again = tmp_path / "first", tmp_path / "again"
    extra = {"lpap": ["--groups", "3"], "dasgd": ["--topology", "ring", "--send-every", "2"],
             "pdasgd": ["--backward-threads", "3"], "sync": ["--lr-scaling", "none"]}.get(name, [])
    assert cli.main(["train", "--runtime", "sim", "--algo", name, "--task", "logreg", "--epochs", "0.2",
                     "--progress", "none", "--out", str(first), *extra]) == 0
    assert cli.main(["train", "--config", str(first / "config.toml"), "--out", str(again)]) == 0
    a, b = (json.loads((d / "summary.json").read_text())["config"] for d in (first, again))
    assert {k: v for k, v in a.items() if k != "out"} == {k: v for k, v in b.items() if k != "out"}


def test_config_toml_of_a_real_run_replays_it(tmp_path, capsys):
    first, again = tmp_path / "first", tmp_path / "again"
    args = ["--algo", "sequential", "--epochs", "0.05", "--batch-size", "64", "--lr", "0.03", *FAST]
    assert cli.main(["train", *args, "--out", str(first)]) == 0
    assert cli.main(["train", "--config", str(first / "config.toml"), "--out", str(again)]) == 0
    a, b = (json.loads((d / "summary.json").read_text()) for d in (first, again))
    assert {k: v for k, v in a["config"].items() if k != "out"} == {k: v for k, v in b["config"].items() if k != "out"}
    assert a["final_test_accuracy"] == b["final_test_accuracy"]  # sequential is deterministic


def test_resume_refuses_settings_it_would_ignore(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(["train", "--algo", "sequential", "--epochs", "0.05", *FAST, "--out", str(out)]) == 0
    (out / "summary.json").unlink()  # as an interrupted run leaves it: a checkpoint, no summary
    capsys.readouterr()
    one_line(*main(capsys, "--resume", out, "--algo", "dasgd"), "--algo is not accepted with --resume",
             "accepted with --resume: --progress")
    one_line(*main(capsys, "--resume", out, "--epochs", "5", "--lr", "0.5"), "--epochs is not accepted with --resume")


def test_resume_of_a_finished_run_exits_2(tmp_path, capsys):
    out = tmp_path / "done"
    assert cli.main(["train", "--algo", "sequential", "--epochs", "0.05", *FAST, "--out", str(out)]) == 0
    capsys.readouterr()
    one_line(*main(capsys, "--resume", out, "--progress", "none"), str(out), "has finished")


# Random settings of every kind, as TOML values: the config layer answers with exit 0 or a
# one-line ConfigError, never a traceback (hypothesis draws them; the run itself is not started).
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st  # noqa: E402

from asyncsgd.config import FIELD_NAMES, RunConfig, check_types  # noqa: E402
from asyncsgd.settings import check_options, resolve  # noqa: E402

VALUES = st.one_of(st.none(), st.booleans(), st.integers(-10**30, 10**30), st.floats(allow_nan=True),
                   st.text(max_size=12), st.lists(st.floats(-2, 2), max_size=3),
                   st.sampled_from(["dasgd", "lpap", "sync", "auto", "scale", "drop:3", "random:2", "ring",
                                    "latency=20ms", "worker=1,slowdown=4", "fixed", "pareto:1.5", "inf", "-1"]))


@hsettings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from([f for f in FIELD_NAMES if f not in ("out", "resume", "data_dir", "task")]),
                       VALUES, max_size=4))
def test_random_settings_never_give_a_traceback(values):
    try:
        values = check_types(values)
        algorithm = values.pop("algorithm", None) or "pdasgd"
        check_options(algorithm, values, values.get("runtime"))
        resolve(RunConfig(algorithm=algorithm, **values))
    except ConfigError as e:
        assert "\n" not in str(e) and "accepted" in str(e), str(e)


def test_an_existing_record_is_not_overwritten_unless_asked(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "--runtime", "sim", "--task", "logreg", "--epochs", "0.1", "--progress", "none", "--out", str(out)]
    assert cli.main(args) == 0
    first = (out / "summary.json").read_text()
    capsys.readouterr()
    one_line(*main(capsys, *args[1:]), str(out), "holds another run's record", "--overwrite")
    assert (out / "summary.json").read_text() == first
    assert cli.main(args + ["--seed", "3", "--overwrite"]) == 0
    assert json.loads((out / "summary.json").read_text())["config"]["seed"] == 3


def test_overwrite_without_out_exits_2(capsys):
    one_line(*main(capsys, "--overwrite", *FAST), "--overwrite is not accepted without --out")
