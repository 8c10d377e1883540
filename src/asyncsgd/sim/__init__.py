"""The simulated cluster (--runtime sim): every algorithm as a deterministic discrete-event program.

One process, one thread, any number of virtual workers (1,024 and more for mnist1d and logreg).
Events run in simulated-time order (a heap keyed by (time, insertion order)); whenever a virtual
worker reads parameters, the REAL gradient of the REAL batch is computed at exactly the
parameters it would have read at that simulated moment, so staleness, drops and convergence are
those of the algorithm; compute-time and network models decide only WHEN things land.

The machinery only; each algorithm's twin lives next to its real schedule (algorithms/<name>/sim.py).
- core.py: event loop, compute-time model (the model's FLOPs over a stated device rate by default,
  or given / measured forward and backward times, x a per-pass random factor x straggler
  slowdown), network model (delays.message_delay), counters, flat models.
- simulation.py: the Simulation every twin plays on (clock, plan, claims, lr, snapshots).
- runtime.py: run_sim(cfg, task): setup, simulate, evaluate snapshots, write the run record.

The method, its simplifications and the sweep results: docs/simulator.md. This file imports
nothing, so a twin can import the machinery without loading the runtime.
"""
