"""Bad input of every kind (flags, TOML files, --out, huge and infinite values, the Python API) is
one line on stderr naming the value, and exit code 2; the run record's config.toml replays a run."""

from __future__ import annotations

import functools
import json
import math

import pytest
import torch

import asyncsgd
from asyncsgd import cli
from asyncsgd.algorithms.registry import ALGORITHMS
from asyncsgd.config import DERIVED
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
    "backward threads beside fb-ratio auto": (["--fb-ratio", "auto", "--backward-threads", "3"],
                                               ["--backward-threads 3 is not used with --fb-ratio auto", "one of them"]),
    "nesterov without momentum": (["--nesterov", "--momentum", "0"], ["--nesterov is not used with --momentum 0"]),
    "lpap's threads beside simulated workers": (["--runtime", "sim", "--algo", "lpap", "--sim-workers", "8",
                                                 "--workers-per-group", "3"],
                                                ["--workers-per-group 3 is not used with --sim-workers 8"]),
    # the real runtime's settings, which the simulated cluster would ignore
    "checkpoints on the simulator": (["--runtime", "sim", "--checkpoint-every", "0.5"],
                                     ["--checkpoint-every 0.5 is not used by the simulated cluster", "--runtime real"]),
    "stall watch on the simulator": (["--runtime", "sim", "--stall-timeout", "30"],
                                     ["--stall-timeout 30.0 is not used by the simulated cluster", "--runtime real"]),
    "torch threads on the simulator": (["--runtime", "sim", "--threads-per-worker", "2"],
                                       ["--threads-per-worker 2 is not used by the simulated cluster", "1, or unset"]),
    "a GPU for the simulator": (["--runtime", "sim", "--device", "cuda"],
                                ["--device 'cuda' is not used by the simulated cluster", "cpu, auto"]),
    "simulated workers for sequential": (["--runtime", "sim", "--algo", "sequential", "--sim-workers", "4"],
                                         ["--sim-workers 4 is not used by --algo sequential", "leave --sim-workers unset"]),
    # whole numbers and their ranges
    "too many real workers": (["--workers", "257"], ["--workers 257", "1 to 256"]),
    "negative workers": (["--workers", "-1"], ["--workers -1", ">= 1"]),
    "fractional workers": (["--workers", "1.5"], ["'1.5'", "a whole number"]),
    "workers beyond 64 bits": (["--workers", "99999999999999999999999"], ["99999999999999999999999", "a whole number"]),
    "zero batch": (["--batch-size", "0"], ["--batch-size 0", ">= 1"]),
    "huge batch": (["--batch-size", "2097152"], ["--batch-size 2097152", "at most"]),
    "negative seed": (["--seed", "-1"], ["--seed -1", ">= 0"]),
    "seed beyond 64 bits": (["--seed", "9223372036854775808"], ["9223372036854775808", "a whole number"]),
    "zero eval points": (["--eval-points", "0"], ["--eval-points 0", ">= 1"]),
    "zero torch threads": (["--threads-per-worker", "0"], ["--threads-per-worker 0", ">= 1"]),
    "huge torch threads": (["--threads-per-worker", "2000"], ["--threads-per-worker 2000", "at most 1024"]),
    "zero samples": (["--num-samples", "0"], ["--num-samples 0", ">= 1"]),
    "negative samples": (["--task", "logreg", "--num-samples", "-5"], ["--num-samples -5", ">= 1"]),
    # numbers: zero, negative, NaN, infinite, huge
    "zero epochs": (["--epochs", "0"], ["--epochs 0.0", "> 0"]),
    "negative epochs": (["--epochs", "-1"], ["--epochs -1.0", "> 0"]),
    "NaN epochs": (["--epochs", "nan"], ["--epochs nan", "a number"]),
    "infinite epochs": (["--epochs", "inf"], ["--epochs inf", "a number"]),
    "zero lr": (["--lr", "0"], ["--lr 0.0", "> 0"]),
    "NaN lr": (["--lr", "nan"], ["--lr nan", "a number"]),
    "lr that overflows to inf": (["--lr", "1e400"], ["--lr inf", "a number"]),
    "negative momentum": (["--momentum", "-0.1"], ["--momentum -0.1", "[0, 1)"]),
    "momentum that rounds to one": (["--momentum", "0.9999999999999999999"], ["--momentum 1.0", "[0, 1)"]),
    "negative weight decay": (["--weight-decay", "-1"], ["--weight-decay -1.0", ">= 0"]),
    "infinite weight decay": (["--weight-decay", "inf"], ["--weight-decay inf", "a number"]),
    "negative gradient clip": (["--clip-grad-norm", "-1"], ["--clip-grad-norm -1.0", ">= 0"]),
    "NaN gradient clip": (["--clip-grad-norm", "nan"], ["--clip-grad-norm nan", "a number"]),
    "negative warm-up": (["--warmup-epochs", "-1"], ["--warmup-epochs -1.0", ">= 0"]),
    "huge warm-up": (["--warmup-epochs", "1e300"], ["--warmup-epochs 1e+300", "at most 100000"]),
    "zero lr gamma": (["--lr-gamma", "0"], ["--lr-gamma 0.0", "(0, 1]"]),
    "lr gamma above one": (["--lr-gamma", "2"], ["--lr-gamma 2.0", "(0, 1]"]),
    "infinite lr gamma": (["--lr-gamma", "inf"], ["--lr-gamma inf", "a number"]),
    "lr step outside the run": (["--schedule", "step", "--lr-steps", "1.5"], ["--lr-steps (1.5,)", "(0, 1)"]),
    "lr step that is no number": (["--schedule", "step", "--lr-steps", "0.5,x"], ["'0.5,x'", "fractions like"]),
    "empty lr steps": (["--schedule", "step", "--lr-steps", ""], ["--lr-steps ''", "fractions like"]),
    "zero target": (["--target-accuracy", "0"], ["--target-accuracy 0.0", "(0, 1]"]),
    "NaN target": (["--target-accuracy", "nan"], ["--target-accuracy nan", "a number"]),
    "zero checkpoint interval": (["--checkpoint-every", "0"], ["--checkpoint-every 0.0", "> 0"]),
    "NaN checkpoint interval": (["--checkpoint-every", "nan"], ["--checkpoint-every nan", "a number"]),
    "zero stall timeout": (["--stall-timeout", "0"], ["--stall-timeout 0.0", "seconds > 0"]),
    "negative stall timeout": (["--stall-timeout", "-5"], ["--stall-timeout -5.0", "seconds > 0"]),
    # choices
    "unknown schedule": (["--schedule", "linear"], ["'linear'", "cosine, constant, step"]),
    "unknown lr scaling": (["--algo", "sync", "--lr-scaling", "sqrt"], ["'sqrt'", "linear, none"]),
    "unknown device": (["--device", "tpu"], ["'tpu'", "cpu, cuda, auto"]),
    "unknown progress display": (["--progress", "fancy"], ["'fancy'", "auto, bar, lines, none"]),
    "unknown runtime": (["--runtime", "cloud"], ["'cloud'", "real, sim"]),
    "unknown model": (["--model", "resnet999"], ["'resnet999'", "does not fit mnist1d", "cnn1d"]),
    "model of another input shape": (["--model", "cnn2d"], ["'cnn2d'", "does not fit mnist1d"]),
    "empty model": (["--model", ""], ["--model ''", "non-empty"]),
    "empty out": (["--out", ""], ["--out ''", "non-empty"]),
    "empty data dir": (["--data-dir", ""], ["--data-dir ''", "non-empty"]),
    "empty config path": (["--config", ""], ["--config ''", "a readable TOML file"]),
    "config that is a directory": (["--config", "/"], ["--config '/'", "Is a directory"]),
    "npz task without a path": (["--task", "npz:"], ["'npz:'", "npz:PATH"]),
    "npz task that is a directory": (["--task", "npz:/"], ["npz: file /", "not found"]),
    # pdasgd, lpap, dasgd options
    "zero forward threads": (["--algo", "pdasgd", "--forward-threads", "0"], ["--forward-threads 0", ">= 1"]),
    "zero backward threads": (["--algo", "pdasgd", "--backward-threads", "0"], ["--backward-threads 0", ">= 1"]),
    "negative queue": (["--algo", "pdasgd", "--queue-size", "-1"], ["--queue-size -1", ">= 0 (0: the next forward waits"]),
    "numeric fb ratio": (["--algo", "pdasgd", "--fb-ratio", "2"], ["--fb-ratio '2'", "auto"]),
    "unknown update mode": (["--algo", "pdasgd", "--updates", "whole"], ["'whole'", "layer, block"]),
    "unknown backward weights": (["--algo", "pdasgd", "--backward-weights", "old"], ["'old'", "forward, current"]),
    "unknown sharing": (["--algo", "pdasgd", "--sharing", "disk"], ["'disk'", "memory, average, auto"]),
    "zero groups": (["--algo", "lpap", "--groups", "0"], ["--groups 0", ">= 1"]),
    "zero workers per group": (["--algo", "lpap", "--workers-per-group", "0"], ["--workers-per-group 0", ">= 1"]),
    "zero averaging interval": (["--algo", "lpap", "--average-every", "0"], ["--average-every 0", ">= 1"]),
    "zero send interval": (["--algo", "dasgd", "--send-every", "0"], ["--send-every 0", ">= 1"]),
    "unknown topology": (["--algo", "dasgd", "--topology", "star"], ["'star'", "all, ring, random:M"]),
    "random topology of no peers": (["--algo", "dasgd", "--topology", "random:0"], ["'random:0'", "M >= 1"]),
    "random topology of no number": (["--algo", "dasgd", "--topology", "random:x"], ["'random:x'", "M >= 1"]),
    "drop limit of no number": (["--algo", "dasgd", "--staleness", "drop:x"], ["'drop:x'", "drop:MAX"]),
    "negative drop limit": (["--algo", "dasgd", "--staleness", "drop:-1"], ["'drop:-1'", "drop:MAX"]),
    # settings that would be silently ignored or overridden
    "workers of the one-process reference": (["--algo", "sequential", "--workers", "3"],
                                             ["--workers 3 is not used by --algo sequential", "leave --workers unset"]),
    "workers of lpap, whose processes are its groups": (["--algo", "lpap", "--workers", "3"],
                                                        ["--workers 3 is not used by --algo lpap", "--groups"]),
    "workers overridden by sim workers": (["--runtime", "sim", "--algo", "hogwild", "--sim-workers", "4", "--workers", "3"],
                                          ["--workers 3 is not used with --sim-workers 4"]),
    "option of another algorithm (pdasgd's)": (["--algo", "hogwild", "--forward-threads", "2"],
                                               ["--forward-threads is not used by --algo hogwild", "--algo pdasgd"]),
    "option of another algorithm (lpap's)": (["--algo", "hogwild", "--groups", "2"],
                                             ["--groups is not used by --algo hogwild", "--algo lpap"]),
    # delays and stragglers
    "negative latency": (["--delay", "latency=-1ms"], ["'-1ms'", "unit us, ms or s"]),
    "latency in hours": (["--delay", "latency=1h"], ["'1h'", "unit us, ms or s"]),
    "huge latency": (["--delay", "latency=99999999999s"], ["'99999999999s'", "at most 60s"]),
    "unknown jitter": (["--delay", "latency=1ms,jitter=gauss"], ["jitter=gauss", "jitter=exp|none"]),
    "latency given twice": (["--delay", "latency=1ms,latency=2ms"], ["latency=1ms,latency=2ms", "latency twice"]),
    "bandwidth of 1 bps": (["--delay", "latency=1ms,bandwidth=1bps"], ["'1bps'", "at least 1kbps"]),
    "bandwidth of no number": (["--delay", "latency=1ms,bandwidth=fast"], ["'fast'", "bps, kbps, Mbps"]),
    "empty delay": (["--delay", ""], ["--delay ''", "latency=DURATION"]),
    "negative straggler": (["--straggler", "worker=-1,slowdown=2"], ["worker=-1,slowdown=2", "W a worker index >= 0"]),
    "straggler faster than the rest": (["--straggler", "worker=0,slowdown=0.5"], ["slowdown=0.5", "S from 1 to 1000"]),
    "straggler slowdown of 2000": (["--straggler", "worker=0,slowdown=2000"], ["slowdown=2000", "S from 1 to 1000"]),
    "straggler without a slowdown": (["--straggler", "worker=0"], ["--straggler 'worker=0'", "worker=W,slowdown=S"]),
    "straggler of no number": (["--straggler", "worker=a,slowdown=2"], ["worker=a", "worker=W,slowdown=S"]),
    "straggler of an unknown key": (["--straggler", "worker=0,slowdown=2,speed=3"], ["speed=3", "worker=W,slowdown=S"]),
    "straggler slowdown NaN": (["--straggler", "worker=0,slowdown=nan"], ["slowdown=nan", "S from 1 to 1000"]),
    # the simulated cluster
    "zero sim workers": (["--runtime", "sim", "--sim-workers", "0"], ["--sim-workers 0", "1 to 65536"]),
    "huge sim workers": (["--runtime", "sim", "--sim-workers", "100000"], ["--sim-workers 100000", "1 to 65536"]),
    "zero sim forward time": (["--runtime", "sim", "--sim-forward-s", "0"], ["--sim-forward-s 0.0", "seconds > 0"]),
    "infinite sim forward time": (["--runtime", "sim", "--sim-forward-s", "inf"], ["--sim-forward-s inf", "a number"]),
    "pareto without a mean": (["--runtime", "sim", "--sim-compute", "pareto:1"], ["'pareto:1'", "ALPHA > 1"]),
    "unknown compute law": (["--runtime", "sim", "--sim-compute", "gamma:2"], ["'gamma:2'", "fixed, lognormal:SIGMA"]),
    "infinite device rate": (["--runtime", "sim", "--sim-device-flops", "inf"], ["--sim-device-flops inf", "a number"]),
}


def _fast(args) -> list[str]:
    """FAST, less the flags a case gives itself."""
    return [a for i, a in enumerate(FAST) if (FAST[i - 1] if i % 2 else a) not in args]


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
    out = [] if "--out" in args else ["--out", tmp_path / "run"]
    one_line(*main(capsys, *args, *out, *_fast(args)), *needles)


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
    'workers = "4"': ["--workers '4'", "a whole number"],
    "workers = 4.0": ["--workers 4.0", "a whole number"],
    "workers = 99999999999999999999": ["--workers 99999999999999999999", "a whole number"],
    'epochs = "10"': ["--epochs '10'", "a number"],
    "lr = true": ["--lr True", "a number"],
    "lr = -inf": ["--lr -inf", "a number"],
    "batch_size = 1e3": ["--batch-size 1000.0", "a whole number"],
    "seed = -1": ["--seed -1", ">= 0"],
    'lr_steps = ["a"]': ["--lr-steps ('a',)", "a list of numbers"],
    "lr_steps = [0.5, [0.7]]": ["--lr-steps (0.5, [0.7])", "a list of numbers"],
    "lr_steps = [0.5, inf]": ["--lr-steps (0.5, inf)", "a list of numbers"],
    'delay = "latency=20"': ["'20'", "unit us, ms or s"],
    "progress = 1": ["--progress 1", "text"],
    'device = "gpu"': ["--device 'gpu'", "cpu, cuda, auto"],
    "resume = 5": ["--resume 5", "text"],
    'out = ""': ["--out ''", "non-empty"],
    'algo = "nope"': ["--algo 'nope'", "sequential"],
    "nesterov = 1": ["--nesterov 1", "true or false"],
    'overwrite = "yes"': ["--overwrite 'yes'", "true or false"],
    "epochs = 1979-05-27": ["--epochs datetime.date(1979, 5, 27)", "a number"],
    "momentum = nan": ["--momentum nan", "a number"],
    'staleness = {kind = "drop"}': ["--staleness {'kind': 'drop'}", "text"],
    "eval_points = 100000": ["--eval-points 100000", "at most 1000"],
    "stall_timeout = 1e300": ["--stall-timeout 1e+300", "at most"],
    "[section]\nlr = 1": ["unknown setting 'section'", "accepted:"],
    "config = 'other.toml'": ["unknown setting 'config'", "accepted:"],
    "lr = 1\nlr = 2": ["run.toml", "not valid TOML"],
    'algo = "dasgd"\nalgorithm = "lpap"': ["'algorithm' is given twice", "'algo'", "each setting once"],
    "batch-size = 64\nbatch_size = 32": ["'batch_size' is given twice", "'batch-size'", "each setting once"],
}


@pytest.mark.parametrize("line", sorted(BAD_TOML))
def test_toml_values_are_type_checked(line, tmp_path, capsys):
    cfg = tmp_path / "run.toml"
    cfg.write_text(line.replace("\\n", "\n") + "\n")
    out = [] if line.startswith("out") else ["--out", tmp_path / "run"]
    one_line(*main(capsys, "--config", cfg, *out, *FAST), *BAD_TOML[line])


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
    # workers_from says how --workers got its value: chosen by the machine the first time, given
    # by config.toml the second (config.DERIVED: provenance, not a setting)
    assert {k: v for k, v in a.items() if k not in ("out", *DERIVED)} == {
        k: v for k, v in b.items() if k not in ("out", *DERIVED)}
    assert b["workers_from"] is None


def test_config_toml_of_an_fb_ratio_auto_run_replays_it(tmp_path, capsys):
    """--fb-ratio auto chooses the backward threads, and --backward-threads beside it is refused:
    config.toml keeps fb_ratio and leaves the resolved backward_threads out, so it replays."""
    first, again = tmp_path / "first", tmp_path / "again"
    assert cli.main(["train", "--runtime", "sim", "--fb-ratio", "auto", "--task", "logreg", "--epochs", "0.2",
                     "--progress", "none", "--out", str(first)]) == 0
    toml = (first / "config.toml").read_text()
    assert 'fb_ratio = "auto"' in toml and "backward_threads" not in toml
    assert cli.main(["train", "--config", str(first / "config.toml"), "--out", str(again)]) == 0


def test_config_toml_of_a_run_without_momentum_replays_it(tmp_path, capsys):
    """--nesterov beside --momentum 0 is refused; the default Nesterov of a run without momentum
    stays out of its config.toml, so that the file replays."""
    first, again = tmp_path / "first", tmp_path / "again"
    assert cli.main(["train", "--runtime", "sim", "--momentum", "0", "--task", "logreg", "--epochs", "0.2",
                     "--progress", "none", "--out", str(first)]) == 0
    assert "nesterov" not in (first / "config.toml").read_text()
    assert cli.main(["train", "--config", str(first / "config.toml"), "--out", str(again)]) == 0


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


# npz files: each bad file is refused while the task loads, before any worker starts, naming the
# file and the array.
import numpy as np  # noqa: E402

_X = np.random.default_rng(0).normal(size=(50, 4)).astype(np.float32)
_Y = np.arange(50) % 3

BAD_NPZ = {
    "float labels": (dict(x=_X, y=_Y.astype(np.float32)), ["array 'y'", "dtype float32", "integer class labels"]),
    "labels of two dimensions": (dict(x=_X, y=_Y.reshape(50, 1)), ["array 'y'", "shape [50, 1]"]),
    "x of five dimensions": (dict(x=np.zeros((50, 1, 1, 1, 1), np.float32), y=_Y), ["array 'x'", "shape [50, 1, 1, 1, 1]"]),
    "x of one dimension": (dict(x=np.zeros(50, np.float32), y=_Y), ["array 'x'", "shape [50]"]),
    "fewer labels than rows": (dict(x=_X, y=_Y[:40]), ["'x' has 50 rows but 'y' has 40"]),
    "negative label": (dict(x=_X, y=_Y - 1), ["negative label -1"]),
    "label of a million": (dict(x=_X, y=np.where(_Y == 0, 10**6, _Y)), ["label 1000000", "at most 100000"]),
    "label beyond int64": (dict(x=_X, y=np.full(50, 2**63 + 5, dtype=np.uint64)), ["label 9223372036854775813"]),
    "one class only": (dict(x=_X, y=np.zeros(50, np.int64)), ["one class only (label 0)", "at least 2 classes"]),
    "no rows": (dict(x=_X[:0], y=_Y[:0]), ["array 'x'", "is empty"]),
    "no labels": (dict(x=_X), ["no array 'y'", "found: x"]),
    "test inputs without test labels": (dict(x=_X, y=_Y, x_test=_X), ["has 'x_test' but no 'y_test'"]),
    "test rows of another shape": (dict(x=_X, y=_Y, x_test=_X[:, :3], y_test=_Y), ["'x_test' rows have shape [3]"]),
    "test label not in training": (dict(x=_X, y=_Y, x_test=_X, y_test=_Y + 5), ["'y_test' has label 7"]),
    "infinite input": (dict(x=np.where(_X > 2, np.inf, _X), y=_Y), ["array 'x'", "NaN or inf"]),
    "input beyond float32": (dict(x=np.full((50, 4), 1e300), y=_Y), ["array 'x'", "NaN or inf values (as float32"]),
    "complex input": (dict(x=_X.astype(np.complex64), y=_Y), ["dtype complex64", "float or integer"]),
    "boolean input": (dict(x=_X > 0, y=_Y), ["array 'x'", "dtype bool"]),
    "boolean labels": (dict(x=_X, y=_Y > 0), ["array 'y'", "dtype bool"]),
    "text input": (dict(x=np.array(["a"] * 50), y=_Y), ["dtype <U1"]),
    "one row": (dict(x=_X[:1], y=_Y[:1]), ["1 row, too few for the 80/20 train/test split"]),  # rows first
    "object input": (dict(x=np.array([object()] * 50, dtype=object), y=_Y), ["cannot read array 'x'", "allow_pickle"]),
}


@pytest.mark.parametrize("name", sorted(BAD_NPZ))
def test_bad_npz_files_exit_2_naming_the_array(name, tmp_path, capsys):
    arrays, needles = BAD_NPZ[name]
    path = tmp_path / "data.npz"
    np.savez(path, **arrays)
    one_line(*main(capsys, "--task", f"npz:{path}", "--out", tmp_path / "run", *FAST), str(path), *needles)


@pytest.mark.parametrize("name, write, needles", [
    ("a single .npy array", lambda p: np.save(p, _X), ["is a single .npy array"]),
    ("no archive at all", lambda p: p.write_text("hello"), ["cannot read"]),
])
def test_files_that_are_not_npz_archives_exit_2(name, write, needles, tmp_path, capsys):
    path = tmp_path / "data.npz"
    write(path)
    if path.with_suffix(".npz.npy").exists():
        path.with_suffix(".npz.npy").rename(path)
    one_line(*main(capsys, "--task", f"npz:{path}", "--out", tmp_path / "run", *FAST), str(path), *needles)


def test_num_samples_beyond_an_npz_file_exits_2(tmp_path, capsys):
    path = tmp_path / "data.npz"
    np.savez(path, x=_X, y=_Y)
    one_line(*main(capsys, "--task", f"npz:{path}", "--num-samples", "100", "--out", tmp_path / "run", *FAST),
             "--num-samples 100", "which has 40 training samples", "1..40")


# --resume of a damaged or foreign checkpoint: refused before the run starts, naming the entry.
def _checkpoint(**changes):
    from asyncsgd.config import RunConfig
    good = {"format": 1, "model": {}, "momentum": None, "next_batch": 0, "samples_done": 0, "elapsed_s": 0.0,
            "config": RunConfig(algorithm="sequential", epochs=0.1).to_dict()}
    return {k: v for k, v in {**good, **changes}.items() if v is not _GONE}


_GONE = object()
BAD_CHECKPOINTS = {
    "no config entry": (_checkpoint(config=_GONE), ["checkpoint.pt is unreadable", "no valid 'config' entry"]),
    "a config that is text": (_checkpoint(config="hello"), ["no valid 'config' entry"]),
    "no next batch": (_checkpoint(next_batch=_GONE), ["no valid 'next_batch' entry"]),
    "a negative next batch": (_checkpoint(next_batch=-5), ["no valid 'next_batch' entry"]),
    "no model": (_checkpoint(model=_GONE), ["no valid 'model' entry"]),
    "momentum that is a list": (_checkpoint(momentum=[1.0]), ["no valid 'momentum' entry"]),
    "another format": (_checkpoint(format=2), ["not an asyncsgd checkpoint"]),
    "a list": ([1, 2], ["not an asyncsgd checkpoint"]),
    "a model of another shape": (_checkpoint(), ["the checkpoint does not fit the model"]),
    "a saved config of an unknown algorithm": (_checkpoint(config={"algorithm": "nope"}), ["--algo 'nope'"]),
    "a saved lr that is text": (_checkpoint(config={"algorithm": "sequential", "lr": "fast"}), ["--lr 'fast'"]),
}


@pytest.mark.parametrize("name", sorted(BAD_CHECKPOINTS))
def test_resume_of_a_bad_checkpoint_exits_2(name, tmp_path, capsys):
    ckpt, needles = BAD_CHECKPOINTS[name]
    torch.save(ckpt, tmp_path / "checkpoint.pt")
    one_line(*main(capsys, "--resume", tmp_path, "--progress", "none"), *needles)


@pytest.mark.parametrize("flags", [["--out", "elsewhere"], ["--overwrite"], ["--runtime", "sim"], ["--seed", "3"],
                                   ["--workers", "4"]])
def test_resume_refuses_every_other_setting(flags, tmp_path, capsys):
    torch.save(_checkpoint(), tmp_path / "checkpoint.pt")
    one_line(*main(capsys, "--resume", tmp_path, *flags, "--progress", "none"),
             f"{flags[0]} is not accepted with --resume", "accepted with --resume: --progress")


def test_resume_of_a_file_or_nothing_exits_2(tmp_path, capsys):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    for target in (a_file, tmp_path / "missing", ""):
        one_line(*main(capsys, "--resume", target, "--progress", "none"), f"--resume {str(target)!r}",
                 "no checkpoint.pt there")


# The Python API: the same checks, as ConfigError with the message the CLI prints.
_DS = torch.utils.data.TensorDataset(torch.zeros(10, 4), torch.zeros(10, dtype=torch.long))
_LINEAR = functools.partial(torch.nn.Linear, 4, 2)

BAD_API = {
    "workers as text": (dict(workers="4"), ["--workers '4'", "a whole number"]),
    "infinite epochs": (dict(epochs=math.inf), ["--epochs inf", "a number"]),
    "NaN lr": (dict(lr=math.nan), ["--lr nan", "a number"]),
    "an unknown setting": (dict(learning_rate=0.1), ["unknown setting(s) learning_rate", "accepted:"]),
    "lr steps as text": (dict(lr_steps="0.5"), ["--lr-steps '0.5'", "a list of numbers"]),
    "out as a number": (dict(out=5), ["--out 5", "text"]),
    "resume as a number": (dict(resume=5), ["--resume 5", "text"]),
    "a boolean seed": (dict(seed=True), ["--seed True", "a whole number"]),
    "algorithm as a number": (dict(algorithm=5), ["--algo 5", "text"]),
    "an unknown algorithm": (dict(algorithm="nope"), ["--algo 'nope'", "hogwild"]),
    "huge eval points": (dict(eval_points=10**6), ["--eval-points 1000000", "at most 1000"]),
    "workers sequential would ignore": (dict(algorithm="sequential", workers=4), ["--workers 4 is not used"]),
    "a bare-number delay": (dict(delay="latency=5"), ["'5'", "unit us, ms or s"]),
    "an option of another algorithm": (dict(algorithm="sync", topology="ring"), ["--topology is not used by --algo sync"]),
    "an unknown task": (dict(task="imagenet"), ["'imagenet'", "mnist1d"]),
    "a loss we do not know": (dict(model_fn=_LINEAR, train_set=_DS, test_set=_DS, loss="l1"), ["loss 'l1'", "mse"]),
    "a model name instead of a factory": (dict(model_fn="mlp", train_set=_DS, test_set=_DS), ["model_fn str"]),
    "no test set": (dict(model_fn=_LINEAR, train_set=_DS), ["needs train_set and test_set"]),
    "a train set without a model": (dict(train_set=_DS), ["a train_set needs a model_fn"]),
    "num_classes as text": (dict(model_fn=_LINEAR, train_set=_DS, test_set=_DS, num_classes="2"), ["num_classes '2'"]),
    "num_classes the model does not give": (dict(model_fn=_LINEAR, train_set=_DS, test_set=_DS, num_classes=3),
                                             ["num_classes 3 is not what the model gives: 2 score(s) per sample"]),
    "a built-in task's model beside model_fn": (dict(model_fn=_LINEAR, train_set=_DS, test_set=_DS, model="mlp"),
                                                ["model='mlp' is not used with model_fn", "task=NAME"]),
    "a built-in task's sample count beside datasets": (dict(model_fn=_LINEAR, train_set=_DS, test_set=_DS,
                                                            num_samples=100), ["num_samples=100 is not used"]),
    "a train set that is text": (dict(model_fn=_LINEAR, train_set="abc", test_set=_DS), ["train_set str", "(x, y) pairs"]),
    "a test set of bare tensors": (dict(model_fn=_LINEAR, train_set=_DS, test_set=torch.zeros(10, 4)),
                                   ["test_set Tensor", "(x, y) pairs"]),
}


@pytest.mark.parametrize("name", sorted(BAD_API))
def test_the_api_raises_config_error_naming_the_value(name):
    kwargs, needles = BAD_API[name]
    with pytest.raises(ConfigError) as e:
        asyncsgd.train(**kwargs, progress="none")
    assert "\n" not in str(e.value)
    for n in needles:
        assert n in str(e.value), (n, str(e.value))


def test_the_api_and_the_cli_say_the_same(tmp_path, capsys):
    """One validation layer: the CLI's line is 'asyncsgd: error: ' + the API's ConfigError."""
    for flags, kwargs in ((["--lr", "nan"], dict(lr=math.nan)), (["--algo", "sequential", "--workers", "3"],
                                                                 dict(algorithm="sequential", workers=3)),
                          (["--delay", "latency=20"], dict(delay="latency=20"))):
        code, err = main(capsys, *flags, *FAST)
        with pytest.raises(ConfigError) as e:
            asyncsgd.train(**kwargs, progress="none", threads_per_worker=1)
        assert code == 2 and err == [f"asyncsgd: error: {e.value}"]


def test_snapshots_that_do_not_fit_shared_memory_exit_2(tmp_path, capsys, monkeypatch):
    """The snapshot buffer is sized from --eval-points and the model, and refused before it is
    allocated when /dev/shm cannot hold it (here: /dev/shm made to look 10 MB small)."""
    monkeypatch.setattr("asyncsgd.launch.local.shared_memory_free", lambda: 10 << 20)
    one_line(*main(capsys, "--algo", "dasgd", "--eval-points", "1000", "--out", tmp_path / "run", *FAST),
             "--eval-points 1000", "GiB of shared memory", "2 replica(s) x 1003 copies of 9,610 values",
             "accepted: at most 133 here")
    assert not (tmp_path / "run" / "summary.json").exists()
