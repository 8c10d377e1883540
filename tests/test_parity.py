"""Each algorithm's simulated twin (sim.py) against its real schedule (worker.py): the same
defaults, queue depth, momentum ownership, header bytes and thread rule, because both call the
same rules (algorithms/<name>/spec.py, pdasgd/rules.py, exchange/)."""

from __future__ import annotations

import pytest

from asyncsgd.algorithms.pdasgd import rules, threads
from asyncsgd.algorithms.registry import ALGORITHMS
from asyncsgd.config import RunConfig
from asyncsgd.exchange import wire
from asyncsgd.runner import run
from asyncsgd.settings import resolve
from asyncsgd.sim import simulation
from test_pdasgd import Sandwich, fake_ctx

SIM = dict(runtime="sim", task="logreg", epochs=1, eval_points=2, progress="none", sim_compute="fixed")


def sim(tmp_path, name, **settings):
    return run(RunConfig(out=str(tmp_path / name), **{**SIM, **settings}))


@pytest.mark.parametrize("name", sorted(ALGORITHMS))
def test_twin_runs_at_the_algorithms_resolved_defaults(tmp_path, name):
    """The simulated record's settings are the same resolved settings a real run records."""
    s = sim(tmp_path, name, algorithm=name)
    real = resolve(RunConfig(algorithm=name, **{**SIM, "out": str(tmp_path / name)}))
    assert s["config"] == real.to_dict()
    for key, value in ALGORITHMS[name].defaults.items():  # a layout-dependent default: for this layout
        assert s["config"][key] == (value(real) if callable(value) else value)


def test_pdasgd_queue_depth_and_threads_follow_the_rules(tmp_path, monkeypatch):
    rows = []
    original = simulation.Simulation.momentum_rows
    monkeypatch.setattr(simulation.Simulation, "momentum_rows", lambda self, n: rows.append(n) or original(self, n))
    s = sim(tmp_path, "pd", algorithm="pdasgd", forward_threads=2, backward_threads=3, workers=2)
    cfg = resolve(RunConfig(algorithm="pdasgd", forward_threads=2, backward_threads=3))
    assert s["queue_size"] == cfg.queue_size == 1  # default: one pending forward, whatever F
    assert rows == [2 * 3]  # momentum: one buffer set per backward thread of every worker, as real:
    real = threads.Decoupled(fake_ctx(Sandwich()), 2, 3, cfg.queue_size, "layer")
    assert rules.MOMENTUM_PER == "backward thread" and len(real.opts) == 3 and len({id(o) for o in real.opts}) == 3
    auto = sim(tmp_path, "auto", algorithm="pdasgd", fb_ratio="auto")
    t = auto["sim"]
    assert (auto["forward_threads"], auto["backward_threads"]) == rules.auto_threads(1, t["forward_s"], t["backward_s"])


@pytest.mark.parametrize("name, settings, peers", [("dasgd", {"workers": 3}, 3), ("lpap", {"groups": 3}, 3)])
def test_header_bytes_are_the_real_exchanges(tmp_path, name, settings, peers):
    s = sim(tmp_path, name, algorithm=name, **settings)
    ex = s["exchange"]
    assert ex["header_bytes"] == wire.header_bytes(peers)  # what the real Exchange sends (Exchange.header_bytes)
    assert s["bytes_sent"] >= ex["data_messages"] * (ex["header_bytes"] + ex["payload_bytes"])


def test_layup_header_and_bytes_are_the_real_exchanges(tmp_path):
    """layup's twin: the real header (wire.header_bytes) on every message, one layer's payload each."""
    s = sim(tmp_path, "layup", algorithm="layup", workers=3)
    ex = s["exchange"]
    assert ex["header_bytes"] == wire.header_bytes(3)
    assert s["bytes_sent"] == sum(layer["data_messages"] * (ex["header_bytes"] + layer["payload_bytes"])
                                  for layer in ex["by_layer"]) + ex["control_messages"] * ex["header_bytes"]
