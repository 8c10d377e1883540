"""The named algorithms, by name. New algorithms add a folder with spec.py and register here;
every command (train, bench, report, algorithms) and both runtimes pick them up."""

from __future__ import annotations

from ..config import RunConfig
from ..errors import ConfigError
from .base import Algorithm
from .dasgd.spec import DASGD
from .ddp.spec import DDP
from .hogwild.spec import HOGWILD
from .layup.spec import LAYUP
from .lpap.spec import LPAP
from .pdasgd.spec import PDASGD
from .sequential.spec import SEQUENTIAL
from .sync.spec import SYNC

ALGORITHMS: dict[str, Algorithm] = {a.name: a for a in (SEQUENTIAL, SYNC, DDP, HOGWILD, PDASGD, DASGD, LPAP, LAYUP)}
DEFAULT_ALGORITHM = RunConfig.algorithm  # a RunConfig made without --algo runs what the CLI runs


def get_algorithm(name: str) -> Algorithm:
    if name not in ALGORITHMS:
        raise ConfigError(f"--algo {name!r} is not accepted; accepted: {', '.join(ALGORITHMS)}")
    return ALGORITHMS[name]


def default_algorithm() -> str:
    return DEFAULT_ALGORITHM


def users_of(option: str) -> list[str]:
    """The algorithms that use a setting only some algorithms use ([] for a shared setting)."""
    return [name for name, a in ALGORITHMS.items() if option in a.options]
