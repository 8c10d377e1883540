"""Network delay models shared by the real runtime (sleeps inside the engine) and the simulator.

--delay latency=20ms[,jitter=exp][,bandwidth=1Gbps]: every message or collective pays the
latency (jitter=exp: drawn from an exponential distribution with that mean) plus size /
bandwidth. Synchronous algorithms pay it on their critical path, as on a real cluster;
asynchronous ones pay it in their background communication threads.
"""

from __future__ import annotations

import random
import time

from .config import Delay


def message_delay(delay: Delay | None, nbytes: int, rng: random.Random) -> float:
    """Seconds one message of nbytes takes under the delay model (0 without one)."""
    if not delay:
        return 0.0
    latency = delay.latency_s
    if delay.jitter == "exp" and latency > 0:
        latency = rng.expovariate(1.0 / latency)
    if delay.bandwidth_bps:
        latency += nbytes * 8 / delay.bandwidth_bps
    return latency


def pay(delay: Delay | None, nbytes: int, rng: random.Random) -> float:
    """Sleep for one message's delay; returns the seconds slept."""
    seconds = message_delay(delay, nbytes, rng)
    if seconds > 0:
        time.sleep(seconds)
    return seconds
