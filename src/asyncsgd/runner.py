"""run(cfg, task): train one run and write its record, in whichever runtime and launch the
settings and the environment say: the simulated cluster (--runtime sim), one rank of a torchrun
job (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT set), or local processes started here."""

from __future__ import annotations

import json
from pathlib import Path

from .checkpoint import load_checkpoint
from .errors import ConfigError
from .config import RunConfig, check_types
from .launch.local import Launcher
from .launch.torchrun import TorchrunLauncher, torchrun_env
from .settings import resolve


def _status(run_dir: Path) -> str | None:
    """How the run in run_dir ended: done, interrupted, diverged (summary.json), or None (no summary)."""
    path = run_dir / "summary.json"
    if path.is_dir():  # the record of the resumed run could not be written there at its end
        raise ConfigError(f"--resume {str(run_dir)!r}: its summary.json is a directory; accepted: the directory "
                          "of an interrupted run, where summary.json is a file or absent")
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return record.get("status", "done") if isinstance(record, dict) else None  # not a record: as none


def run(cfg: RunConfig, task=None) -> dict:
    """Returns the summary dict. Under torchrun rank 0 returns the summary, the other ranks
    {"torchrun_rank": r, "record_written": False}."""
    if cfg.runtime == "sim":
        from .sim.runtime import run_sim  # the simulated cluster (discrete-event, one process)
        return run_sim(resolve(cfg), task)
    if cfg.resume:
        if _status(Path(cfg.resume)) == "done":
            raise ConfigError(f"--resume {cfg.resume!r} is not accepted: that run has finished (it has a summary.json); "
                              "accepted: the directory of an interrupted run")
        ckpt = load_checkpoint(cfg.resume)
        saved = check_types({k: v for k, v in ckpt["config"].items() if k in RunConfig.__dataclass_fields__})
        cfg = RunConfig(**{**saved, "resume": cfg.resume, "out": cfg.resume, "progress": cfg.progress,
                           "threads_per_worker": cfg.threads_per_worker or saved.get("threads_per_worker")})
    env = torchrun_env()
    if env is not None and env["world_size"] > 1:
        return TorchrunLauncher(cfg, env, task).run()
    return Launcher(cfg, task).run()
