"""layup: spec.py, worker.py (real schedule), sim.py (simulated twin)."""
