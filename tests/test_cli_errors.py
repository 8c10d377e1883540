"""Every exit code, driven through the CLI with real bad input: one line on stderr, no traceback."""

import json

import numpy as np
import pytest
import torch

from conftest import assert_one_line_error as _one_line_error, read_run, run_cli

FAST = ["--progress", "none", "--threads-per-worker", "1"]


@pytest.fixture
def nan_npz(tmp_path):
    x = np.random.default_rng(0).normal(size=(50, 4)).astype(np.float32)
    x[3, 2] = np.nan
    path = tmp_path / "bad.npz"
    np.savez(path, x=x, y=np.arange(50) % 3)
    return path


BAD_INPUTS = {
    "unknown algorithm": (["--algo", "nope"], ["'nope'", "accepted:", "hogwild", "sync"]),
    "unknown task": (["--task", "imagenet"], ["'imagenet'", "accepted:", "mnist1d"]),
    "negative lr": (["--lr", "-1"], ["--lr", "-1", "accepted: a number > 0"]),
    "zero workers": (["--workers", "0"], ["--workers", "accepted: a whole number >= 1"]),
    "non-numeric epochs": (["--epochs", "many"], ["'many'", "accepted: a number"]),
    "momentum of one": (["--momentum", "1"], ["--momentum", "[0, 1)"]),
    "target above one": (["--target-accuracy", "1.5"], ["--target-accuracy", "1.5", "(0, 1]"]),
    "straggler outside the workers": (["--algo", "hogwild", "--workers", "2", "--straggler", "worker=5,slowdown=4"],
                                      ["--straggler", "worker=5"]),
    "malformed delay": (["--delay", "latency=fast"], ["'fast'", "accepted:"]),
    "unknown flag": (["--learning-rate", "0.1"], ["--learning-rate", "accepted:"]),
    "a value given to a switch": (["--nesterov=yes"], ["--nesterov", "'yes'", "accepted: the switch alone"]),
    "missing npz": (["--task", "npz:/no/such/file.npz"], ["/no/such/file.npz"]),
    "mnist files missing": (["--task", "mnist", "--data-dir", "{tmp}/empty"], ["{tmp}/empty", "put the four IDX files"]),
    "resume without checkpoint": (["--resume", "{tmp}"], ["--resume", "checkpoint.pt"]),
    "missing config": (["--config", "{tmp}/nope.toml"], ["nope.toml", "no such file"]),
    "simulator flag on the real runtime": (["--sim-workers", "64"],
                                           ["--sim-workers is only used by the simulated cluster", "--runtime sim"]),
    "option of another algorithm": (["--algo", "sync", "--topology", "ring"],
                                    ["--topology is not used by --algo sync", "--algo dasgd"]),
}


@pytest.mark.parametrize("name", sorted(BAD_INPUTS))
def test_bad_input_exits_2_with_one_line(name, tmp_path):
    args, needles = BAD_INPUTS[name]
    fmt = lambda s: s.replace("{tmp}", str(tmp_path))
    proc = run_cli("train", *map(fmt, args), "--out", tmp_path / "run", *FAST, timeout=120)
    _one_line_error(proc, 2, *map(fmt, needles))


@pytest.mark.parametrize("args", [["--lr", "-1"], ["--workers", "0"], ["--algo", "nope"], ["--delay", "latency=fast"],
                                  ["--algo", "sync", "--topology", "ring"]])
def test_a_bad_flag_is_refused_before_torch_is_imported(args):
    """The numbers, the names and the structured settings are checked before the runner imports
    torch (1.4 s on 2 cores): a typo is answered at once, and without a torch import."""
    import subprocess
    import sys
    code = ("import sys; from asyncsgd.cli import main; rc = main(sys.argv[1:]); "
            "print(rc, 'torch' in sys.modules, file=sys.stderr)")
    proc = subprocess.run([sys.executable, "-c", code, "train", *args], capture_output=True, text=True, timeout=60)
    error, verdict = proc.stderr.strip().splitlines()
    assert error.startswith("asyncsgd: error: ") and verdict == "2 False", proc.stderr


def test_npz_with_nan_exits_2(nan_npz, tmp_path):
    proc = run_cli("train", "--task", f"npz:{nan_npz}", "--out", tmp_path / "run", *FAST)
    _one_line_error(proc, 2, str(nan_npz), "NaN")


def test_invalid_and_unknown_config_settings_exit_2(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("lr = [unclosed\n")
    _one_line_error(run_cli("train", "--config", bad, *FAST), 2, "bad.toml", "not valid TOML")
    unknown = tmp_path / "unknown.toml"
    unknown.write_text("learning_rate = 0.1\n")
    _one_line_error(run_cli("train", "--config", unknown, *FAST), 2, "'learning_rate'", "accepted:")
    wrong_type = tmp_path / "type.toml"
    wrong_type.write_text('lr = "fast"\n')
    _one_line_error(run_cli("train", "--config", wrong_type, *FAST), 2, "--lr", "'fast'")


def test_corrupt_checkpoint_exits_2(tmp_path):
    (tmp_path / "checkpoint.pt").write_bytes(b"this is not a checkpoint")
    _one_line_error(run_cli("train", "--resume", tmp_path, *FAST), 2, "checkpoint.pt is unreadable")


def test_divergence_exits_3_and_keeps_the_last_good_checkpoint(tmp_path):
    out = tmp_path / "run"
    proc = run_cli("train", "--algo", "sequential", "--task", "quadratic", "--lr", "3", "--momentum", "0",
                   "--warmup-epochs", "3", "--epochs", "6", "--checkpoint-every", "0.25", "--out", out, *FAST)
    line = _one_line_error(proc, 3, "diverged", "at update", "last good checkpoint")
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    assert all(torch.isfinite(t).all() for t in ckpt["model"].values()), "the kept checkpoint must be finite"
    assert 0 < ckpt["samples_done"] < 6 * 4000
    ended = json.loads((out / "summary.json").read_text())  # a diverged run still says how it ended
    assert ended["status"] == "diverged" and ended["checkpoint"] == "checkpoint.pt", line
    assert 0 < ended["diverged_at_update"] and ended["samples"] < ended["planned_samples"] == 6 * 4000


def test_config_file_values_are_used_and_flags_override(tmp_path):
    cfg = tmp_path / "run.toml"
    cfg.write_text('algo = "sequential"\nepochs = 0.5\nbatch-size = 50\nlr = 0.02\n')
    out = tmp_path / "run"
    proc = run_cli("train", "--config", cfg, "--lr", "0.03", "--out", out, *FAST)
    assert proc.returncode == 0, proc.stderr
    summary, _ = read_run(out)
    assert summary["algorithm"] == "sequential" and summary["config"]["batch_size"] == 50
    assert summary["config"]["lr"] == 0.03 and summary["samples"] == 4000


def test_a_reader_that_leaves_the_pipe_stops_the_command_quietly():
    """`asyncsgd bench --dry-run | head -1`: the pipe closes under the printing; the command stops
    with exit code 141 (128 + SIGPIPE) and no traceback."""
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-m", "asyncsgd", "bench", "--suite", "quick", "--dry-run"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # the reader leaves before the command prints (it is still importing)
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141 and err == "", err
