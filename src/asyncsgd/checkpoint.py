"""Checkpoints: written atomically, read with torch.load(weights_only=True).

checkpoint.pt holds the model state_dict, the lead worker's momentum buffers, where the run
stands (next batch of the plan, samples done, elapsed training time) and the resolved config;
model.pt holds the state_dict alone, for users. Both are written to a temporary file in the
same directory and renamed over the old one, so a crash mid-write leaves the previous intact.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from .errors import ConfigError

CHECKPOINT = "checkpoint.pt"
MODEL = "model.pt"


def atomic_save(obj, path: Path) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(obj, tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save_checkpoint(out_dir: Path, state_dict: dict, momentum: torch.Tensor | None, next_batch: int,
                    samples_done: int, elapsed_s: float, config: dict) -> None:
    from . import __version__
    atomic_save({"format": 1, "model": state_dict, "momentum": momentum, "next_batch": int(next_batch),
                 "samples_done": int(samples_done), "elapsed_s": float(elapsed_s), "config": config,
                 "asyncsgd_version": __version__}, Path(out_dir) / CHECKPOINT)
    atomic_save(state_dict, Path(out_dir) / MODEL)


def _count(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


_ENTRIES = {"model": lambda v: isinstance(v, dict), "config": lambda v: isinstance(v, dict),
            "momentum": lambda v: v is None or isinstance(v, torch.Tensor), "next_batch": _count,
            "samples_done": _count,
            "elapsed_s": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0}


def load_checkpoint(run_dir: str) -> dict:
    """The checkpoint of a run directory; ConfigError (exit 2) if missing or unreadable."""
    path = Path(run_dir) / CHECKPOINT
    if not path.exists():
        raise ConfigError(f"--resume {run_dir!r}: no {CHECKPOINT} there; accepted: the --out directory "
                          "of a run that wrote a checkpoint")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(ckpt, dict) or ckpt.get("format") != 1:
            raise ValueError("not an asyncsgd checkpoint")
        for key, ok in _ENTRIES.items():  # a resumed run reads every one of them
            if not ok(ckpt.get(key)):
                raise ValueError(f"no valid {key!r} entry")
    except Exception as e:  # torch raises many types for corrupt files
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ConfigError(f"--resume {run_dir!r}: {CHECKPOINT} is unreadable ({msg[:160]}); "
                          "accepted: a checkpoint written by asyncsgd") from None
    return ckpt
