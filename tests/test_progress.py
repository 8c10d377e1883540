"""The progress display never looks hung: a line at once, lines while training (with rate and
ETA), a final line, and a line before the evaluation; at 80 columns the bar keeps its text; on a
terminal (a pty) a real run shows the start-up line, the training bar and the evaluation bar."""

from __future__ import annotations

import os
import pty
import subprocess
import sys
import time

import pytest
import torch

from asyncsgd import records
from asyncsgd.board import Board
from asyncsgd.config import RunConfig


def test_piped_output_starts_at_once_and_ends_with_a_final_line(tmp_path):
    started = time.time()
    proc = subprocess.Popen([sys.executable, "-m", "asyncsgd", "train", "--algo", "sequential", "--epochs", "1",
                             "--threads-per-worker", "1", "--out", str(tmp_path / "run")],
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    lines = []
    for line in proc.stderr:
        lines.append((time.time() - started, line.rstrip()))
    assert proc.wait(timeout=300) == 0, lines
    text = [t for _, t in lines]
    # piped: no transient line (the terminal's start-up and task lines: bad input must stay one
    # line); the launcher's first line comes before training starts
    assert text[0] == "[asyncsgd] sequential: starting 1 worker"
    assert lines[0][0] <= [s for s, t in lines if t.startswith("[asyncsgd] training:")][0]
    final = [t for t in text if t.startswith("[asyncsgd] training done: 8000/8000 samples in ")]
    assert len(final) == 1 and "samples/s" in final[0] and "loss nan" not in final[0]
    assert text.index(final[0]) < text.index("[asyncsgd] evaluating 40 snapshots")


def test_lines_carry_rate_eta_and_no_nan_loss(capsys):
    board = Board(2, 1, 1, 1, 1)
    p = records.Progress(RunConfig(algorithm="hogwild", progress="lines"), 1000, board, 0, workers=2)
    p.LINE_EVERY_S = 0.0
    board.t0[0] = time.time() - 2
    p.update()  # training started; no worker has a loss yet
    board.samples[0], board.samples[1] = 300, 200
    board.loss[0], board.loss[1] = 1.0, 2.0
    p.start = (time.time() - 1.0, 0)
    p.update()
    out = capsys.readouterr().err.splitlines()
    assert out[0] == "[asyncsgd] training: 0/1000 samples"
    assert "500/1000 samples (50%)" in out[1] and "samples/s ETA " in out[1] and "loss 1.500" in out[1]
    assert not any("nan" in line for line in out)


def test_the_bar_keeps_its_text_at_80_columns(monkeypatch, capsys):
    """tqdm with a fixed-width bar: at 80 columns the counts, rate and postfix still fit."""
    import io

    from tqdm import tqdm
    monkeypatch.setenv("COLUMNS", "80")
    buf = io.StringIO()
    board = Board(1, 1, 1, 1, 1)
    p = records.Progress(RunConfig(algorithm="sequential", progress="bar"), 80000, board, 0)
    board.t0[0] = time.time()
    monkeypatch.setattr(sys, "stderr", buf)
    p.update()
    board.samples[0], board.loss[0] = 40000, 0.5
    p.update()
    p.close()
    last = buf.getvalue().replace("\r", "\n").strip().splitlines()[-1]
    assert len(last) <= 80 and "sequential loss 0.500" in last and "40.0k/80.0k" in last and "/s" in last, last
    assert isinstance(p, records.Progress) and tqdm is not None and torch is not None


def _read_pty(pid: int, fd: int, timeout: float, mark: bytes | None = None):
    """Everything the child on the pty writes until it ends (killed after `timeout` s: a hang fails
    the test, it does not hang the suite): (output, seconds until `mark` first appeared, status)."""
    import select

    started, out, first = time.time(), b"", None
    while time.time() < started + timeout:
        if not select.select([fd], [], [], 1.0)[0]:
            continue
        try:
            chunk = os.read(fd, 4096)
        except OSError:
            break
        if not chunk:
            break
        out += chunk
        if mark is not None and first is None and mark in out:
            first = time.time() - started
    else:
        os.kill(pid, 9)
    _, status = os.waitpid(pid, 0)
    return out, first, status


@pytest.mark.parametrize("args,error", [
    (["--lr", "-1"], "asyncsgd: error: --lr -1"),  # refused before PyTorch loads
    (["--task", "mnist10k"], "asyncsgd: error: task mnist10k needs --data-dir"),  # while the task is prepared
])
def test_a_terminal_sees_a_start_up_line_within_a_second_and_bad_input_stays_one_line(tmp_path, args, error):
    """On a terminal (a pty) the CLI says it is starting before PyTorch loads, then which task it
    prepares; when the input is bad those lines are erased and the error is the one line left on
    the screen."""
    import asyncsgd.cli  # noqa: F401 (the import cost is not the line's)
    pid, fd = pty.fork()
    if pid == 0:  # the child: the CLI on a terminal
        os.execv(sys.executable, [sys.executable, "-m", "asyncsgd", "train", *args, "--out", str(tmp_path / "r")])
    out, first, status = _read_pty(pid, fd, timeout=120, mark=b"starting")
    assert os.waitstatus_to_exitcode(status) == 2
    text = out.decode()
    assert first is not None and "[asyncsgd] starting: loading PyTorch" in text
    screen = text.split("\x1b[K")[-1].strip().splitlines()  # what is left after the erase
    assert len(screen) == 1 and screen[0].startswith(error), screen


def test_a_terminal_of_80_columns_shows_start_up_training_and_evaluation(tmp_path):
    """A real run on a pty 80 columns wide: the start-up line first (before PyTorch loads), then
    "starting 1 worker", the training bar and the evaluation bar, each line within 80 columns."""
    import fcntl
    import re
    import struct
    import termios

    pid, fd = pty.fork()
    if pid == 0:  # the child: the CLI on a terminal of 24 rows x 80 columns
        fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
        env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
        os.execve(sys.executable, [sys.executable, "-m", "asyncsgd", "train", "--algo", "sequential", "--epochs", "1",
                                   "--num-samples", "2000", "--eval-points", "4", "--threads-per-worker", "1",
                                   "--out", str(tmp_path / "r")], env)
    out, _, status = _read_pty(pid, fd, timeout=180)
    text = out.decode(errors="replace")
    assert os.waitstatus_to_exitcode(status) == 0, text
    # what the terminal showed, update by update: tqdm rewrites a line after \r
    shown = [s.strip() for s in re.split(r"[\r\n]", re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", text)) if s.strip()]
    assert shown[0] == "[asyncsgd] starting: loading PyTorch", shown[:3]

    def first(pattern):
        return next(i for i, s in enumerate(shown) if re.search(pattern, s))

    starting = first(r"^\[asyncsgd\] sequential: starting 1 worker$")
    training = first(r"^sequential .*\d+%\|.{10}\| .*/s")
    evaluating = first(r"^evaluating +\d+%\|.{12}\| \d+/\d+")
    assert starting < training < evaluating, shown
    assert any(re.search(r"^sequential .*100%\|", s) for s in shown), shown
    display = shown[:first(r"^algorithm +sequential$")]  # what follows is the printed summary
    assert evaluating < len(display) and max(len(s) for s in display) <= 80, [s for s in display if len(s) > 80]
