"""Every code block of README.md and docs/*.md runs as printed: an example that does not work fails
the suite. New blocks are picked up by themselves.

What runs, and how (one test per block, `README.md:62`; the blocks of one page run in order in
one temporary directory, as a reader following the page would, so a later block may use the runs
an earlier one made):
- a shell block (no language, bash, sh): each command, `&&` and `\\` continuations as a shell
  reads them, comments dropped.
  - `asyncsgd ARGS` runs in this process (asyncsgd.cli.main, what the `asyncsgd` script calls),
    shortened (SHORTEN below): train for 1 epoch on 1,000 generated samples with 2 evaluation
    points, at most 2 worker processes (the CI machine has 2 cores); bench one algorithm
    (sequential, or the suite's first variant), one repeat, one scenario. Everything else is as
    printed.
  - `torchrun ...` runs on loopback: one torchrun per `--nnodes`, node ranks 0..N-1, each in its own
    directory (its own "machine"), `--master-addr` 127.0.0.1 and a free `--master-port`.
  - `python SCRIPT ARGS` runs the repository's script, with the shortening flags of SCRIPTS.
  - `pip install -e PATH[EXTRAS]` is checked, not run: PATH is the checkout and every extra is in
    pyproject.toml.
- a python block runs as a script (`python example.py`) with `epochs=N` set to `epochs=1`.
- a toml block is written to the file its first line names (`# run.toml: COMMAND`) and COMMAND
  runs, shortened like any other.
Files that a page uses as the reader's own (FIXTURES): `my_data.npz` (arrays x and y) and
`run.toml` (a few settings).

Marked blocks (an HTML comment on the line before the fence):
- `<!-- output -->` or `<!-- output: WHAT -->`: what a command prints, or a diagram; not run.
- `<!-- skip: REASON -->`: skipped with REASON, for a block that needs a GPU (run where one is),
  a second machine, downloaded data, or is the test suite itself. There are fewer than 10
  (test_skipped_blocks_are_few_and_say_why lists them).
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shlex
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from asyncsgd import cli
from asyncsgd.bench import SUITES
from asyncsgd.errors import AsyncSGDError
from asyncsgd.config import load_toml
from test_torchrun import finish_nodes, free_port

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
SHELL = ("", "bash", "sh", "shell")
GENERATED_TASKS = ("mnist1d", "logreg", "quadratic")  # --num-samples sets their size
MAX_SKIPPED = 9

# Shortening flags, appended to a command (argparse: the last value of a flag wins).
TRAIN = ["--epochs", "1", "--eval-points", "2"]
NUM_SAMPLES = ["--num-samples", "1000"]  # generated tasks only
MAX_WORKERS = {"workers": 2, "groups": 2, "workers_per_group": 1}  # at most 2 processes
BENCH = ["--epochs", "1", "--repeats", "1", "--eval-points", "2", "--peak-seconds", "0.1"]
SCRIPTS = {"bench/sim_sweep.py": ["--workers", "4", "--algos", "dasgd", "--epochs", "1", "--eval-points", "2"]}


@dataclass
class Block:
    page: Path
    line: int  # of the opening fence
    lang: str
    text: str
    mark: str | None  # "output", "skip" or None
    reason: str | None

    @property
    def id(self) -> str:
        return f"{self.page.relative_to(REPO)}:{self.line}"


FENCE = re.compile(r"^```(\w*)\n(.*?)^```\s*$", re.S | re.M)
MARK = re.compile(r"<!--\s*(output|skip)\s*(?::\s*(.*?))?\s*-->")


def blocks(page: Path) -> list[Block]:
    text = page.read_text()
    out = []
    for m in FENCE.finditer(text):
        before = [line for line in text[:m.start()].splitlines() if line.strip()]
        mark = MARK.fullmatch(before[-1].strip()) if before else None
        out.append(Block(page, text[:m.start()].count("\n") + 1, m.group(1), m.group(2),
                         mark.group(1) if mark else None, mark.group(2) if mark else None))
    return out


ALL = [b for page in PAGES for b in blocks(page)]


def needs_gpu_here(block: Block) -> bool:
    """A block that only needs a GPU runs where there is one."""
    return block.reason == "needs a GPU" and torch.cuda.is_available()


def test_skipped_blocks_are_few_and_say_why(capsys):
    skipped = [b for b in ALL if b.mark == "skip"]
    with capsys.disabled():
        print("\ndocumentation blocks not run here:")
        for b in skipped:
            print(f"  {b.id}: {b.reason}")
    assert all(b.reason for b in skipped), "a skipped block says why: <!-- skip: REASON -->"
    assert len(skipped) <= MAX_SKIPPED, [b.id for b in skipped]
    assert [b.id for b in ALL if b.mark is None and b.lang not in (*SHELL, "python", "toml")] == [], \
        "a block of another language is marked <!-- output --> or <!-- skip: REASON -->"


# -- running a page ---------------------------------------------------------------------------


def my_data_npz(path: Path) -> None:
    """The reader's own arrays for `--task npz:my_data.npz`: x (N, 20) and labels y."""
    g = np.random.default_rng(0)
    x = g.standard_normal((1200, 20)).astype(np.float32)
    np.savez(path, x=x, y=(x[:, 0] + x[:, 1] > 0).astype(np.int64))


def run_toml(path: Path) -> None:
    """The reader's own settings for `--config run.toml` (docs/configuration.md's example runs there)."""
    path.write_text('algorithm = "sequential"\nepochs = 2\nschedule = "constant"\n')


FIXTURES = {"my_data.npz": my_data_npz, "run.toml": run_toml}


class Page:
    """One page's directory, and how far its blocks have run."""

    def __init__(self, path: Path, where: Path):
        self.path, self.dir, self.done = path, where, 0
        for name, make in FIXTURES.items():
            make(where / name)


_pages: dict[Path, Page] = {}


@pytest.fixture
def page_of(tmp_path_factory):
    def get(block: Block) -> Page:
        if block.page not in _pages:
            _pages[block.page] = Page(block.page, tmp_path_factory.mktemp(block.page.stem))
        return _pages[block.page]
    return get


def commands(text: str) -> list[list[str]]:
    """A shell block's commands: lines joined at `\\`, comments dropped, split at `&&`."""
    out = []
    for line in text.replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        while words:
            cut = words.index("&&") if "&&" in words else len(words)
            out.append(words[:cut])
            words = words[cut + 1:]
    return out


def shorten_train(args: list[str]) -> list[str]:
    try:  # read as the CLI reads it
        ns = vars(cli.build_parser().parse_args(["train", *args]))
    except AsyncSGDError as e:
        pytest.fail(f"`asyncsgd train {shlex.join(args)}` is not accepted: {e}")
    if ns.get("resume"):
        return args  # a resumed run keeps its saved settings
    given = {**(load_toml(ns["config"]) if ns.get("config") else {}), **ns}
    extra = list(TRAIN)
    task = given.get("task", "mnist1d")
    if task in GENERATED_TASKS and given.get("num_samples", 10**9) > 1000:
        extra += NUM_SAMPLES
    for name, most in MAX_WORKERS.items():
        if given.get(name, 0) > most:
            extra += ["--" + name.replace("_", "-"), str(most)]
    return args + extra


def bench_shortened(args: list[str]) -> list[str]:
    """BENCH, one algorithm (sequential, or the suite's first variant), the last scenario (the one
    with delays, where there are two) and a generated task's size."""
    suite = SUITES.get(option(args, "--suite") or "quick", {})
    extra = ["--algos", next(iter(suite.get("variants") or {}), "sequential")]
    if suite.get("scenarios") and option(args, "--scenarios") is None:
        extra += ["--scenarios", list(suite["scenarios"])[-1]]
    if suite.get("task") in GENERATED_TASKS:
        extra += ["--set", "num_samples=1000"]
    return BENCH + extra


def run_asyncsgd(args: list[str], cwd: Path) -> None:
    """`asyncsgd ARGS` in this process: the entry point of the `asyncsgd` script, from cwd."""
    out, err = io.StringIO(), io.StringIO()
    here, sigterm, threads = os.getcwd(), signal.getsignal(signal.SIGTERM), torch.get_num_threads()
    os.chdir(cwd)
    try:
        if args[:1] == ["train"]:
            args = ["train", *shorten_train(args[1:])]
        elif args[:1] == ["bench"]:
            args = args + bench_shortened(args)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = cli.main(args)
    finally:  # what a run sets for its own process
        os.chdir(here)
        signal.signal(signal.SIGTERM, sigterm)
        torch.set_num_threads(threads)
    assert code == 0, f"`asyncsgd {shlex.join(args)}` exited {code}:\n{err.getvalue()}{out.getvalue()}"


def run_subprocess(argv: list[str], cwd: Path, timeout: float = 180) -> None:
    proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.returncode == 0, f"`{shlex.join(argv)}` exited {proc.returncode}:\n{proc.stderr}{proc.stdout}"


def option(words: list[str], name: str) -> str | None:
    return words[words.index(name) + 1] if name in words else None


def run_torchrun(words: list[str], cwd: Path) -> None:
    """On loopback: node ranks 0..nnodes-1, each a torchrun in its own directory."""
    m = words.index("-m")
    launcher, module = words[1:m], words[m + 1:]
    assert module[:2] == ["asyncsgd", "train"], f"no rule for torchrun -m {' '.join(module)}"
    module = module[:2] + shorten_train(module[2:])
    nodes = int(option(launcher, "--nnodes") or 1)
    port = str(free_port())
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    procs = []
    for node in range(nodes):
        opts = list(launcher)
        for name, value in (("--node-rank", str(node)), ("--master-addr", "127.0.0.1"), ("--master-port", port)):
            if name in opts:
                opts[opts.index(name) + 1] = value
            else:
                opts += [name, value]
        where = cwd / f"machine{node}"
        where.mkdir(exist_ok=True)
        with open(where / "stdout", "w") as o, open(where / "stderr", "w") as e:
            p = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", *opts, "--max-restarts", "0",
                                  "-m", *module], cwd=where, stdout=o, stderr=e, env={**env, "PYTHONUNBUFFERED": "1"})
        p.logs = (where / "stdout", where / "stderr")
        procs.append(p)
    for node, (code, out, err) in enumerate(finish_nodes(procs, timeout=180)):
        assert code == 0, f"torchrun node {node} exited {code}:\n{err}{out}"


def check_pip(words: list[str]) -> None:
    """`pip install -e .[extras]`: the checkout is installable and declares those extras."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    assert words[:3] == ["pip", "install", "-e"] and len(words) == 4, f"no rule for `{shlex.join(words)}`"
    m = re.fullmatch(r"\.(?:\[([\w,-]+)\])?", words[3])
    assert m, f"`{shlex.join(words)}`: install the checkout (.) or its extras (.[name])"
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    missing = [e for e in (m.group(1) or "").split(",") if e and e not in project["optional-dependencies"]]
    assert missing == [], f"`{shlex.join(words)}`: pyproject.toml has no extra {missing}"


def run_command(words: list[str], cwd: Path) -> None:
    tool = words[0]
    if tool == "asyncsgd":
        run_asyncsgd(words[1:], cwd)
    elif tool == "torchrun":
        run_torchrun(words, cwd)
    elif tool == "python":
        script = words[1]
        assert (REPO / script).is_file(), f"`python {script}`: no such script in the repository"
        run_subprocess([sys.executable, str(REPO / script), *words[2:], *SCRIPTS.get(script, [])], cwd)
    elif tool == "pip":
        check_pip(words)
    else:
        pytest.fail(f"no rule to run `{shlex.join(words)}`: add one to tests/test_examples.py or mark the block")


def run_block(block: Block, cwd: Path) -> None:
    if block.lang in SHELL:
        for words in commands(block.text):
            run_command(words, cwd)
    elif block.lang == "python":
        script = cwd / "example.py"
        script.write_text(re.sub(r"\bepochs=\d+(\.\d*)?", "epochs=1", block.text))
        run_subprocess([sys.executable, str(script)], cwd)
    elif block.lang == "toml":
        first = block.text.splitlines()[0]
        m = re.fullmatch(r"#\s*(\S+\.toml):\s*(.+)", first)
        assert m, f"a TOML block's first line names its file and command (# run.toml: asyncsgd ...), not {first!r}"
        (cwd / m.group(1)).write_text(block.text)
        for words in commands(m.group(2)):
            run_command(words, cwd)
    else:
        pytest.fail(f"no rule to run a {block.lang} block: mark it <!-- output --> or <!-- skip: REASON -->")


def runs(block: Block) -> bool:
    return block.mark is None or needs_gpu_here(block)


@pytest.mark.parametrize("block", ALL, ids=[b.id for b in ALL])
def test_documentation_block_runs_as_printed(block, page_of):
    if block.mark == "output":
        pytest.skip(f"output, not a command: {block.reason or 'what a command prints'}")
    if not runs(block):
        pytest.skip(block.reason)
    page = page_of(block)
    mine = blocks(block.page)
    index = next(i for i, b in enumerate(mine) if b.line == block.line)
    # the blocks before this one ran first (a page is read in order), each once
    for earlier in mine[page.done:index + 1]:
        if runs(earlier):
            run_block(earlier, page.dir)
        page.done += 1
