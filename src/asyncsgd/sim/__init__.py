"""The simulated cluster (--runtime sim): every algorithm as a deterministic discrete-event program.

One process, one thread, any number of virtual workers (1,024 and more for mnist1d and logreg).
Events run in simulated-time order (a heap keyed by (time, insertion order)); whenever a virtual
worker reads parameters, the REAL gradient of the REAL batch is computed at exactly the
parameters it would have read at that simulated moment, so staleness, drops and convergence are
those of the algorithm; compute-time and network models decide only WHEN things land.

- core.py: event loop, compute-time model (measured or given forward/backward times x a per-pass
  random factor x straggler slowdown), network model (delays.message_delay), counters, flat models.
- algorithms.py: sequential, sync, hogwild, lpap, pdasgd, dasgd as event programs.
- runtime.py: run_sim(cfg, task): setup, simulate, evaluate snapshots, write the run record.

The method, its simplifications and the sweep results: docs/simulator.md.
"""

from .runtime import SIM_ALGORITHMS, run_sim, sim_layout, straggler_range

__all__ = ["SIM_ALGORITHMS", "run_sim", "sim_layout", "straggler_range"]
