"""Small helpers the task modules share: where data lives, training-set limits, one-line errors."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import ConfigError


def default_data_dir() -> Path:
    """$ASYNCSGD_DATA, else ~/.cache/asyncsgd/data: where downloaded datasets go by default."""
    env = os.environ.get("ASYNCSGD_DATA")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "asyncsgd" / "data"


def resolve_data_dir(data_dir) -> Path:
    return Path(data_dir).expanduser() if data_dir else default_data_dir()


def check_num_samples(task: str, num_samples: int | None, available: int) -> int:
    """How many training samples to keep: all by default, else num_samples (1..available)."""
    if num_samples is None:
        return available
    if not 1 <= num_samples <= available:
        raise ConfigError(f"--num-samples {num_samples} does not fit {task}, which has {available} "
                          f"training samples; accepted: 1..{available}")
    return num_samples


def one_line(err: BaseException) -> str:
    """An exception as `Type: message` on one line, for embedding in our own one-line errors."""
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text}" if text else type(err).__name__
