"""Shared test helpers: run the CLI as a user would, read run records."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def run_cli(*args, timeout: float = 240, env=None, cwd=None):
    """Run `python -m asyncsgd ARGS`; returns CompletedProcess with text stdout/stderr."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "asyncsgd", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=full_env, cwd=cwd)


def read_run(out_dir) -> tuple[dict, list[dict]]:
    out_dir = Path(out_dir)
    summary = json.loads((out_dir / "summary.json").read_text())
    metrics = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return summary, metrics


@pytest.fixture
def cli():
    return run_cli
