"""The algorithms, one folder each: spec.py (options, defaults, checks, process layout, summary
fields), worker.py (the real schedule) and sim.py (its simulated twin, calling the same rules).

registry.py holds the Algorithm objects by name. This file imports nothing, so that a worker
module can import its own folder's helpers without loading every algorithm.
"""
