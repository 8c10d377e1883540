"""PD-ASGD (--algo pdasgd): decoupled forward/backward threads with layer-wise updates.

Runs are kept small (few epochs, --threads-per-worker 1, few eval points): the machine is shared.
One-process runs go through cli.main in this process (no interpreter start-up); runs whose exit
code or several processes matter go through the real command line (conftest.run_cli).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from types import SimpleNamespace

import pytest
import torch
from torch.utils.data import TensorDataset

from asyncsgd import cli
from asyncsgd.algorithms.pdasgd import rules, threads, views
from asyncsgd.algorithms.registry import default_algorithm, get_algorithm
from asyncsgd.board import Board
from asyncsgd.optim import LayerSGD
from conftest import read_run, run_cli

# one process unless a test says otherwise (a later --workers wins): the tests below look at one
# model's threads; the CPU default layout (a process per core) has its own tests
SMALL = ("--workers", "1", "--threads-per-worker", "1", "--progress", "none", "--eval-points", "2")


def train(tmp_path, name, *args):
    """One pdasgd run in this process; (exit code, summary)."""
    out = tmp_path / name
    code = cli.main(["train", "--algo", "pdasgd", *SMALL, "--out", str(out), *map(str, args)])
    return code, (read_run(out)[0] if code == 0 else None)


# ------------------------------------------------------------------ the mechanism, unit level

class Marker(torch.autograd.Function):
    """Identity whose backward notes what the optimizer had already done when it runs."""

    seen: list = []

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):
        Marker.seen.append(Marker.probe())
        return g


class Sandwich(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.low, self.high = torch.nn.Linear(4, 8), torch.nn.Linear(8, 3)

    def forward(self, x):
        return self.high(Marker.apply(torch.relu(self.low(x))))


def fake_ctx(model, workers=1, lr=0.1):
    """The parts of a WorkerContext that Decoupled's forward/backward use (the schedule's lr now
    `lr`, its peak cfg.lr 0.1)."""
    n = len(list(model.parameters()))
    board = Board(workers, 1, 1, 1, 1, layers=n)
    x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
    return SimpleNamespace(board=board, rank=0, spec=SimpleNamespace(model=model), device=torch.device("cpu"),
                           plan=SimpleNamespace(indices=lambda k: k), optimizer=lambda ps: LayerSGD(ps, 0.9),
                           fetch=lambda k: (x, y), loss=torch.nn.functional.cross_entropy, lr=lambda: lr,
                           decay_fraction=lambda: lr / 0.1, batch_source=lambda: None)


@pytest.mark.parametrize("mode", ["layer", "block"])
def test_layer_updates_land_during_the_backward(mode):
    torch.manual_seed(0)
    model = Sandwich()
    w = threads.Decoupled(fake_ctx(model), 1, 1, 1, mode)
    high0, low0 = model.high.weight.detach().clone(), model.low.weight.detach().clone()
    high_i = w.names.index("high.weight")
    Marker.seen = []
    Marker.probe = lambda: (not torch.equal(model.high.weight.detach(), high0),
                            int(w.layer_version[0, 0, high_i]),
                            not torch.equal(model.low.weight.detach(), low0))
    replica = w.replica()
    item = w.forward(replica, 0)
    grads = w.backward(item, 0)
    (high_moved, high_version, low_moved), = Marker.seen
    if mode == "layer":  # the upper layer was updated before the backward reached the lower one
        assert high_moved and high_version == 1 and not low_moved
    else:  # block: nothing moves until the whole backward is done
        assert not high_moved and high_version == 0 and not low_moved
    assert not torch.equal(model.high.weight.detach(), high0) and not torch.equal(model.low.weight.detach(), low0)
    assert all(p.grad is None for p in model.parameters())  # threads never share .grad
    assert w.layer_version[0, 0].tolist() == [1, 1, 1, 1]
    assert all(g is not None for g in grads) and sorted(i for i, _, _ in item.stale) == [0, 1, 2, 3]
    assert all(s == own == 0 for _, s, own in item.stale)  # nobody else wrote: no staleness


def test_an_engine_and_its_passes_are_freed_and_leave_no_hook():
    """The parameter hooks hold the engine weakly and each pass's loss-node hook is removed after
    its backward: autograd keeps both from C++, where the garbage collector sees no cycle, so
    otherwise every engine (shared-memory board and all) and every pass graph stayed alive: a CI
    run reached 1,595 open file descriptors. Gradients computed outside a pass reach no update;
    and a finished run removes its hooks from the model, which outlives it."""
    import gc
    import weakref
    torch.manual_seed(0)
    model = Sandwich()
    Marker.probe = lambda: None
    w = threads.Decoupled(fake_ctx(model), 1, 1, 1, "layer")
    item = w.forward(w.replica(), 0)
    pending = weakref.ref(item)  # alive while its loss node's hook (begin -> on_grad -> item) stays
    w.backward(item, 0)
    before = [p.detach().clone() for p in model.parameters()]
    x, y = torch.randn(5, 4), torch.randint(0, 3, (5,))
    torch.autograd.grad(torch.nn.functional.cross_entropy(model(x), y), list(model.parameters()))
    assert all(torch.equal(a, p.detach()) for a, p in zip(before, model.parameters()))  # not a pass: no update
    engine = weakref.ref(w)
    del w, item
    gc.collect()
    assert engine() is None and pending() is None
    hooks = lambda: [len(p._backward_hooks) for p in model.parameters()]
    left = hooks()  # the first engine's, never closed: they hold nothing and do nothing
    w = threads.Decoupled(fake_ctx(model), 1, 1, 1, "layer")
    assert hooks() == [n + 1 for n in left]
    w.close()  # what run() does at its end
    assert hooks() == left


def test_staleness_counts_other_writers_between_read_and_update():
    torch.manual_seed(0)
    model = Sandwich()
    Marker.probe = lambda: None
    w = threads.Decoupled(fake_ctx(model), 1, 2, 2, "layer")
    replica = w.replica()
    a = w.forward(replica, 0)
    b = w.forward(replica, 1)  # read before a's updates land
    w.backward(a, 0)
    w.backward(b, 1)
    c = w.forward(replica, 2)  # read after both
    w.backward(c, 0)
    assert [s for _, s, _ in a.stale] == [0] * 4
    assert [s for _, s, _ in b.stale] == [1] * 4  # a's update of each layer happened in between
    assert [s for _, s, _ in c.stale] == [0] * 4
    assert w.layer_version[0, :2].sum(0).tolist() == [3, 3, 3, 3]
    assert all(p.grad is None for p in model.parameters())


def test_scale_damps_the_own_pipelines_delay_not_the_other_processes_updates():
    """--staleness scale acts on this worker's own updates between a forward's read and its layer
    update (rules.damped_staleness): another worker's updates of the shared model count in the
    staleness, and are not damped; the worker's own are (lr / 2 for one of them)."""
    from asyncsgd.config import Staleness
    torch.manual_seed(0)
    model = Sandwich()
    Marker.probe = lambda: None
    ctx0 = fake_ctx(model, workers=2)
    ctx1 = SimpleNamespace(**{**vars(ctx0), "rank": 1})  # a second worker process on the same model
    w0, w1 = (threads.Decoupled(c, 1, 2, 2, "layer", Staleness("scale"), 2) for c in (ctx0, ctx1))

    def step(w, item, writer):  # (staleness triples, applied update / (lr x gradient)) per layer
        before = [p.detach().clone() for p in model.parameters()]
        grads = w.backward(item, writer)
        ratios = [float((b - p.detach()).norm() / (0.1 * g).norm()) for b, p, g in zip(before, model.parameters(), grads)]
        return item.stale, ratios

    a = w0.forward(w0.replica(), 0)
    w1.backward(w1.forward(w1.replica(), 1), 0)  # worker 1 updates every layer after a's read
    stale, ratios = step(w0, a, 0)
    assert [(s, own) for _, s, own in stale] == [(1, 0)] * 4 and ratios == pytest.approx([1.0] * 4, rel=1e-4)
    b = w0.forward(w0.replica(), 2)
    c = w0.forward(w0.replica(), 3)  # read before b's updates land: its own pipeline's delay
    step(w0, b, 0)
    stale, ratios = step(w0, c, 1)  # thread 1's momentum buffers are fresh: the step is lr x factor x g
    assert [(s, own) for _, s, own in stale] == [(1, 1)] * 4 and ratios == pytest.approx([0.5] * 4, rel=1e-4)


@pytest.mark.parametrize("lr,ratio", [(0.1, 0.5), (0.05, 1.0), (0.025, 1.0), (0.08, 0.625)])
def test_cap_damps_a_stale_update_to_the_peak_lrs_limit_only(lr, ratio):
    """--staleness cap: a layer update one own update stale steps min(lr, peak / 2), so at the
    peak lr (0.1) it is scale's lr / 2, and once the schedule's lr is at or below peak / 2 it is
    the full lr; in between peak / 2 (0.08: 0.05 of it, a ratio 0.625)."""
    from asyncsgd.config import Staleness
    torch.manual_seed(0)
    model = Sandwich()
    Marker.probe = lambda: None
    w = threads.Decoupled(fake_ctx(model, lr=lr), 1, 2, 2, "layer", Staleness("cap"), 1)
    b, c = w.forward(w.replica(), 0), w.forward(w.replica(), 1)  # c reads before b's updates land
    w.backward(b, 0)
    before = [p.detach().clone() for p in model.parameters()]
    grads = w.backward(c, 1)  # thread 1's momentum buffers are fresh: the step is lr x factor x g
    ratios = [float((x - p.detach()).norm() / (lr * g).norm()) for x, p, g in zip(before, model.parameters(), grads)]
    assert [own for _, _, own in c.stale] == [1] * 4 and ratios == pytest.approx([ratio] * 4, rel=1e-4)


def test_cap_factor_matches_scale_at_the_peak_and_its_vectorised_twin():
    import numpy as np
    from asyncsgd.config import Staleness
    from asyncsgd.exchange.policy import StalenessPolicy
    cap, scale = StalenessPolicy(Staleness("cap"), 4), StalenessPolicy(Staleness("scale"), 4)
    s = np.array([0, 1, 2, 3, 9])
    assert [cap.factor(int(v)) for v in s] == [1.0] + [scale.factor(int(v)) for v in s[1:]]
    # at a fifth of the peak lr only s >= 4 is capped: min(1, 1 / ((1 + s) x 0.2))
    assert [cap.factor(int(v), 0.2) for v in s] == pytest.approx([1.0, 1.0, 1.0, 1.0, 0.5])
    for fraction in (1.0, 0.5, 0.2, 1e-6):
        assert cap.factors(s, fraction) == pytest.approx([cap.factor(int(v), fraction) for v in s])


def test_decay_fraction_holds_the_damping_through_the_warm_up():
    """cap's release: 1.0 through the warm-up (the lr there is small, the network at its sharpest),
    then the cosine's lr over its peak, 0.5 halfway through what follows the warm-up."""
    from asyncsgd.optim import decay_fraction, learning_rate
    cfg = SimpleNamespace(lr=0.05, epochs=10, warmup_epochs=2, schedule="cosine")
    total = 80_000
    assert [decay_fraction(cfg, n, total) for n in (0, 8_000, 15_999)] == [1.0, 1.0, 1.0]
    assert learning_rate(cfg, 6_000, total) < 0.05 / 2  # what a release by the lr alone would undamp
    assert decay_fraction(cfg, 16_000, total) == pytest.approx(1.0)
    assert decay_fraction(cfg, 48_000, total) == pytest.approx(0.5)
    assert decay_fraction(cfg, total, total) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("weights", ["current", "forward"])
def test_backward_weights(weights):
    """A pass whose forward ran before another pass's updates: with --backward-weights forward
    its gradient is exactly the gradient at the weights its forward read; with current the
    graph aliases the live weights, so the updates in between leak into it."""
    torch.manual_seed(0)
    model = Sandwich()
    Marker.probe = lambda: None
    ctx = fake_ctx(model)
    w = threads.Decoupled(ctx, 1, 2, 2, "layer", backward_weights=weights)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    replica = w.replica()
    a, b = w.forward(replica, 0), w.forward(replica, 1)
    w.backward(a, 0)  # moves every layer before b's backward runs
    grads = w.backward(b, 1)
    x, y = ctx.fetch(1)
    ref = Sandwich()
    ref.load_state_dict(before)
    exact = torch.autograd.grad(torch.nn.functional.cross_entropy(ref(x), y), list(ref.parameters()))
    low_w = w.names.index("low.weight")  # its gradient flows through the (moved) upper layer
    if weights == "forward":
        assert all(torch.allclose(g, e) for g, e in zip(grads, exact))
    else:
        assert not torch.allclose(grads[low_w], exact[low_w])
    assert [s for _, s, _ in b.stale] == [1] * 4  # the same staleness either way
    assert all(p.grad is None for p in model.parameters())


def test_forward_reads_each_layer_when_its_module_runs():
    """The version a forward records for a layer is the one current when that layer's module
    ran, not when the pass started."""
    model = Sandwich()
    w = threads.Decoupled(fake_ctx(model), 1, 1, 1, "layer")
    replica = w.replica()
    high = [w.names.index("high.weight"), w.names.index("high.bias")]
    low = [w.names.index("low.weight"), w.names.index("low.bias")]

    def bump_high(module, args):  # someone updates the upper layer while the lower one runs
        for i in high:
            w.layer_version[0, 1, i] += 1
    handle = replica.module.low.register_forward_hook(lambda m, a, o: bump_high(m, a))
    item = w.forward(replica, 0)
    handle.remove()
    assert [item.read[i] for i in low] == [0, 0] and [item.read[i] for i in high] == [1, 1]


class Tricky(torch.nn.Module):
    """A tied weight (two modules, one tensor) and a module whose parameters the parent reads
    without calling it: every gradient must still reach its update."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.side = torch.nn.Linear(4, 4), torch.nn.Linear(4, 4), torch.nn.Linear(4, 3)
        self.b.weight = self.a.weight

    def forward(self, x):
        h = torch.relu(self.b(torch.relu(self.a(x))))
        return torch.nn.functional.linear(h, self.side.weight, self.side.bias)


@pytest.mark.parametrize("mode", ["layer", "block"])
def test_update_is_the_full_gradient_for_tied_and_borrowed_parameters(mode):
    import copy
    torch.manual_seed(0)
    model = Tricky()
    ref = copy.deepcopy(model)
    ctx = fake_ctx(model)
    x, y = ctx.fetch(0)
    grads = torch.autograd.grad(torch.nn.functional.cross_entropy(ref(x), y), list(ref.parameters()))
    w = threads.Decoupled(ctx, 1, 1, 1, mode)
    assert len(w.params) == 5  # a.weight (= b.weight), a.bias, b.bias, side.weight, side.bias
    before = [p.detach().clone() for p in w.params]
    w.backward(w.forward(w.replica(), 0), 0)
    for p, p0, g in zip(w.params, before, grads):  # first step of momentum SGD: p -= lr * g
        torch.testing.assert_close(p.detach(), p0 - 0.1 * g)
    assert w.layer_version[0, 0].tolist() == [1] * 5


def test_replica_shares_parameters_and_buffers():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    rep = views.shared_replica(model)
    assert rep is not model and rep[1] is not model[1]
    assert all(a is b for a, b in zip(rep.parameters(), model.parameters()))
    assert all(a is b for a, b in zip(rep.buffers(), model.buffers()))


def test_auto_threads_ratio_and_clamp():
    assert rules.auto_threads(1, 1.0, 2.0) == (1, 2)
    assert rules.auto_threads(2, 1.0, 2.1) == (2, 4)
    assert rules.auto_threads(1, 1.0, 0.2) == (1, 1)
    assert rules.auto_threads(3, 1.0, 9.0) == (3, 8)


def test_default_workers_follow_the_device_and_the_layout_with_their_reason(monkeypatch, tmp_path):
    """--workers unset: on a CPU one process per core (2), each 1F:1B at a queue of 0, unless a
    thread layout is given (then one process of it); one process on a GPU and in the simulator;
    each with its reason in the config's workers_from. A given --workers wins and has none, and
    workers_from is not a setting anyone can give."""
    from asyncsgd.config import RunConfig, load_toml
    from asyncsgd.errors import ConfigError
    from asyncsgd.settings import resolve, replayable
    cpu = resolve(RunConfig(algorithm="pdasgd", device="cpu"))
    why = "2 processes (as Hogwild!'s default; one per core on 2 cores), each 1F:1B taking turns (--queue-size 0), on one shared model"
    assert (cpu.workers, cpu.workers_from, cpu.forward_threads, cpu.backward_threads) == (2, why, 1, 1)
    assert cpu.queue_size == 0 and cpu.staleness == "cap" and cpu.clip_grad_norm == 1.0
    assert (cpu.lr, cpu.warmup_epochs) == (0.075, 0.5)  # taking turns: Hogwild!'s lr and warm-up
    for layout in ({"backward_threads": 2}, {"forward_threads": 1, "backward_threads": 1}, {"fb_ratio": "auto"}):
        one = resolve(RunConfig(algorithm="pdasgd", device="cpu", **layout))
        assert (one.workers, one.workers_from) == (1, "one process: the thread layout given is one model's"), layout
        assert one.queue_size == 1 and one.staleness == "none", layout
        assert (one.lr, one.warmup_epochs, one.clip_grad_norm) == (0.05, 2.0, 1.0), layout
    two = resolve(RunConfig(algorithm="pdasgd", device="cpu", workers=2, forward_threads=1, backward_threads=1))
    assert two.queue_size == 0 and two.lr == 0.075  # several processes on one model, one backward thread each
    given = resolve(RunConfig(algorithm="pdasgd", device="cpu", workers=2, queue_size=1))
    assert (given.queue_size, given.lr, given.warmup_epochs, given.clip_grad_norm) == (1, 0.05, 2.0, 0.0)
    avg = resolve(RunConfig(algorithm="pdasgd", device="cpu", workers=2, sharing="average"))
    assert avg.backward_threads == 2 and avg.queue_size == 1 and avg.lr == 0.05  # replicas: 1F:2B, as measured
    sim = resolve(RunConfig(algorithm="pdasgd", device="cpu", runtime="sim"))
    assert (sim.workers, sim.workers_from) == (1, "one process: the simulator's default, the same on every machine")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    gpu = resolve(RunConfig(algorithm="pdasgd", device="auto"))
    assert (gpu.workers, gpu.workers_from) == (1, "one process on the GPU: its forward and backward threads share the device")
    given = resolve(RunConfig(algorithm="pdasgd", device="cpu", workers=3))
    assert (given.workers, given.workers_from) == (3, None)
    assert replayable(cpu)["workers"] == 2 and "workers_from" not in replayable(cpu)
    assert resolve(RunConfig(algorithm="hogwild", device="cpu")).workers_from is None  # pdasgd's rule only
    (tmp_path / "c.toml").write_text('workers_from = "me"\n')
    with pytest.raises(ConfigError, match="unknown setting 'workers_from'"):
        load_toml(str(tmp_path / "c.toml"))


def test_registered_and_default():
    from asyncsgd.config import RunConfig
    from asyncsgd.settings import resolve as validate
    algo = get_algorithm("pdasgd").for_config(validate(RunConfig(algorithm="pdasgd", device="cpu")))
    assert algo.shared_model and not algo.distributed and default_algorithm() == "pdasgd"  # replicas: test_pdasgd_replicas.py
    from asyncsgd.algorithms.pdasgd import spec
    assert algo.summary_extra is spec.summary_extra


# ------------------------------------------------------------------ whole runs

def test_default_settings_reach_90_percent_on_mnist1d(tmp_path):
    """`asyncsgd train` as a new user runs it (only where the record goes and no progress output).
    One run, no retry: until 2026-12-01 about 1 default run in 16 collapsed near the peak lr
    (0.272, 0.783, 0.7365); the scale + 2-epoch warm-up defaults (docs/pdasgd.md, "Stale updates")
    ended 16 of 16 measured runs at 0.9415 or more. Then one process per core (2 x 1F:2B) was the
    default for a day, and a fresh-clone CI run of this test ended at 0.8445: the default was one
    process again. Since 2026-12-06 it is one process per core of 1F:1B taking turns (--queue-size
    0), whose own pipeline adds no delay (rules.auto_processes; docs/pdasgd.md, "One process per
    core, taking turns")."""
    t = time.time()
    out = tmp_path / "run"
    r = run_cli("train", "--progress", "none", "--out", out, timeout=240)
    assert r.returncode == 0, r.stderr
    s, _ = read_run(out)
    # the layout: 2 processes of 1F:1B, printed and recorded with its reason
    why = "2 processes (as Hogwild!'s default; one per core on 2 cores), each 1F:1B taking turns (--queue-size 0), on one shared model"
    assert s["algorithm"] == "pdasgd" and s["workers"] == 2
    assert s["layout"]["processes"] == 2 and s["layout"]["workers_from"] == why
    assert (s["layout"]["forward_threads"], s["layout"]["backward_threads"]) == (1, 1)
    assert f"pdasgd: 2 process(es) x (1 forward + 1 backward, on one thread), {why}" in r.stderr
    # what cap acted on: each process's own updates, which at a queue of 0 are never stale
    layers = s["staleness_by_layer"]
    assert all(d["own_mean"] == 0 and d["mean"] > 0 for d in layers)
    assert s["final_test_accuracy"] >= 0.90, s["final_test_accuracy"]
    assert s["wall_time_s"] < 120 and time.time() - t < 240
    # whether a * lr * tau_max < 1 depends on the largest staleness seen, which a busy machine
    # raises: assert the check is computed from this run's numbers, not that it passes
    th = s["theory"]
    assert th["staleness_max"] == s["staleness"]["max"]
    assert th["in_regime"] == (th["a_lr_tau_max"] < 1) and (th["bias_bound"] is not None) == th["in_regime"]
    assert s["forward_threads"] == 1 and s["backward_threads"] == 1 and s["updates_mode"] == "layer"
    assert s["queue_size"] == 0 and s["queue_peak"] == 1  # one slot, held through the backward
    n_layers = len(s["staleness_by_layer"])
    assert n_layers == 8 and s["backward_passes"] == s["updates"] == 2500
    assert sum(d["count"] for d in s["staleness_by_layer"]) == s["staleness"]["count"] == 2500 * n_layers
    assert 0 < s["misaligned_fraction"] < 1


def test_layer_updates_are_fresher_than_block_updates(tmp_path):
    """Same threads (1 forward, 1 backward). The next forward runs while a backward runs; a
    layer-wise backward has already updated the upper layers when that forward reaches them, a
    block backward updates nothing until it ends. Batches of 512 make the forward long enough
    for that to show on a CPU (with tiny batches the forward is over before the first update)."""
    runs = {}
    for mode in ("layer", "block"):
        code, s = train(tmp_path, mode, "--workers", 1, "--epochs", 3, "--batch-size", 512, "--backward-threads", 1,
                        "--updates", mode)
        assert code == 0 and s["updates_mode"] == mode
        by_layer = {d["layer"]: d for d in s["staleness_by_layer"]}
        mean = sum(d["mean"] * d["count"] for d in by_layer.values()) / s["staleness"]["count"]
        assert mean == pytest.approx(s["staleness"]["mean"], abs=1e-3)
        runs[mode] = (mean, by_layer)
    (layer, layer_by), (block, block_by) = runs["layer"], runs["block"]
    assert layer < block, (layer, block)
    assert layer_by["head.weight"]["mean"] < layer_by["features.0.weight"]["mean"]  # updated first, read last


@pytest.mark.parametrize("fb", [(1, 1), (1, 2), (2, 2), (1, 4)])
def test_thread_ratios_complete(tmp_path, fb):
    f, b = fb
    t = time.time()
    code, s = train(tmp_path, f"{f}f{b}b", "--workers", 1, "--epochs", 1, "--forward-threads", f,
                    "--backward-threads", b)
    assert code == 0 and time.time() - t < 60
    assert (s["forward_threads"], s["backward_threads"]) == (f, b)
    assert s["samples"] == 8000 and s["backward_passes"] == s["updates"] == 250  # every batch once
    assert s["queue_size"] == 1 and s["queue_peak"] == 1  # default: one pending forward, whatever F
    assert s["staleness"]["count"] == 250 * 8
    assert s["final_train_loss"] == s["final_train_loss"]  # finite: no NaN (divergence would exit 3)
    assert 0 <= s["misaligned_fraction"] <= 1 and s["staleness"]["max"] <= 250
    # No accuracy bar here: in one epoch at lr 0.05 / momentum 0.9, 1F:1B and 2F:2B sometimes
    # collapse (docs/pdasgd.md); accuracy is asserted by the default-settings test.


def test_queue_depth_never_exceeds_queue_size(tmp_path):
    code, s = train(tmp_path, "q", "--workers", 1, "--epochs", 0.5, "--forward-threads", 3, "--backward-threads", 1,
                    "--queue-size", 2)
    assert code == 0 and s["queue_size"] == 2 and 1 <= s["queue_peak"] <= 2
    assert s["backward_passes"] == 125


@pytest.mark.parametrize("runtime,threads", [("real", 2), ("sim", 2), ("real", 1)])
def test_queue_size_0_runs_no_forward_ahead_of_the_backward(tmp_path, runtime, threads):
    """--queue-size 0: the next forward starts when the last backward has finished, so with one
    worker no layer update ever finds a layer changed since its forward read it (staleness 0, no
    misaligned backward), in the real threads and in the simulated twin alike; 2F:2B only take
    turns, and 1F:1B runs both roles on one thread (Decoupled._turns_loop) with the same counters."""
    code, s = train(tmp_path, f"q0{runtime}{threads}", "--workers", 1, "--epochs", 0.5, "--forward-threads", threads,
                    "--backward-threads", threads, "--queue-size", 0, "--runtime", runtime)
    assert code == 0 and s["queue_size"] == 0 and s["queue_peak"] == 1
    assert s["backward_passes"] == 125 and s["staleness"]["count"] == 125 * 8
    assert s["staleness"]["max"] == 0 and s["misaligned_fraction"] == 0


def test_fb_ratio_auto_chooses_and_records(tmp_path, capsys):
    code, s = train(tmp_path, "auto", "--workers", 1, "--epochs", 0.25, "--fb-ratio", "auto")
    err = capsys.readouterr().err
    assert code == 0 and "pdasgd: --fb-ratio auto: forward" in err
    assert s["fb_ratio"] == "auto" and s["forward_threads"] == 1 and 1 <= s["backward_threads"] <= 8
    assert f"-> 1 forward thread(s), {s['backward_threads']} backward thread(s)" in err


class BNNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(10, 32), torch.nn.BatchNorm1d(32), torch.nn.ReLU(),
                                       torch.nn.Linear(32, 3))

    def forward(self, x):
        return self.net(x)


def blobs(n, seed):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(3, 10, generator=torch.Generator().manual_seed(7)) * 3
    y = torch.randint(0, 3, (n,), generator=g)
    return TensorDataset(centers[y] + torch.randn(n, 10, generator=g), y)


def test_batchnorm_model_trains_with_two_forward_threads(tmp_path):
    import asyncsgd
    s = asyncsgd.train(BNNet, blobs(1200, 1), blobs(300, 2), algorithm="pdasgd", workers=1, epochs=2,
                       forward_threads=2, backward_threads=2, threads_per_worker=1, progress="none",
                       eval_points=2, out=str(tmp_path / "bn"))
    names = [d["layer"] for d in s["staleness_by_layer"]]
    assert names == ["net.0.weight", "net.0.bias", "net.1.weight", "net.1.bias", "net.3.weight", "net.3.bias"]
    assert s["final_test_accuracy"] >= 0.95  # evaluation uses the running statistics the threads kept
    assert s["backward_passes"] == 2 * 1200 // 32


# ------------------------------------------------------------------ failures stop the run

FAILING_MODEL = textwrap.dedent('''
    import os
    import torch

    CALLS = {"forward": 0, "backward": 0}

    def _tick(kind):
        CALLS[kind] += 1
        if os.environ.get("PDFAIL_WHERE") == kind and CALLS[kind] >= int(os.environ.get("PDFAIL_AFTER", "20")):
            raise RuntimeError(f"injected {kind} failure")

    class Boom(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x.view_as(x)

        @staticmethod
        def backward(ctx, g):
            _tick("backward")
            return g

    class FailingNet(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.body = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(40, 32), torch.nn.ReLU())
            self.head = torch.nn.Linear(32, 10)

        def forward(self, x):
            _tick("forward")
            return self.head(Boom.apply(self.body(x)))
''')

FAILING_MAIN = textwrap.dedent('''
    import sys
    import asyncsgd.tasks as tasks
    import pdfail

    _get = tasks.get_task

    def get_task(*args, **kwargs):
        task = _get(*args, **kwargs)
        task.model_fn = pdfail.FailingNet
        return task

    tasks.get_task = get_task

    if __name__ == "__main__":
        from asyncsgd import cli
        sys.exit(cli.main(sys.argv[1:]))
''')


# 2 workers: the CPU default's 1F:1B taking turns, one thread per process plays both roles;
# 1 worker: 1F:2B, a thread per role
@pytest.mark.parametrize("where,workers,thread", [("backward", 2, "backward on the forward/backward thread"),
                                                  ("forward", 1, "forward thread 0")])
def test_thread_failure_exits_1_with_the_error(tmp_path, where, workers, thread):
    (tmp_path / "pdfail.py").write_text(FAILING_MODEL)
    (tmp_path / "failmain.py").write_text(FAILING_MAIN)
    env = {"PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]),
           "PDFAIL_WHERE": where, "PDFAIL_AFTER": "20"}
    t = time.time()
    r = subprocess.run([sys.executable, str(tmp_path / "failmain.py"), "train", "--algo", "pdasgd", *SMALL,
                        "--workers", str(workers), "--epochs", "2", "--out", str(tmp_path / "run")],
                       capture_output=True, text=True, timeout=120, env={**os.environ, **env})
    took = time.time() - t
    assert r.returncode == 1, (r.returncode, r.stderr[-2000:])
    assert f"pdasgd {thread} of worker " in r.stderr and f"RuntimeError: injected {where} failure" in r.stderr
    assert "(batch " in r.stderr and "Traceback" not in r.stderr  # one clear line, no traceback dump
    assert took < 60, took
    assert "injected" in (tmp_path / "run" / "error.log").read_text()  # the traceback is kept there


# ------------------------------------------------------------------ accuracy against sequential

def _mean_accuracy(tmp_path, algo, task, seeds, epochs):
    accs = []
    for seed in seeds:
        out = tmp_path / f"{algo}-{task}-{seed}"
        r = run_cli("train", "--algo", algo, "--task", task, "--seed", seed, "--epochs", epochs, *SMALL,
                    "--out", out, timeout=300)
        assert r.returncode == 0, r.stderr
        accs.append(read_run(out)[0]["final_test_accuracy"])
    return sum(accs) / len(accs), accs


# The bar: within 1.0 point of sequential (3-seed means). Measured on a quiet 2-core
# machine: gap 0.30 points for seeds 0-2 and 0.34 over seeds 0-4 (docs/pdasgd.md); earlier
# measurements, under load and before the adaptive default, ranged 0.7-1.4.
TOLERANCE = {"mnist1d": 0.01, "logreg": 0.01}


@pytest.mark.acceptance
@pytest.mark.parametrize("task", ["mnist1d", "logreg"])
def test_default_pdasgd_close_to_sequential(tmp_path, task):
    """3-seed means, 10 epochs, every other setting at its default."""
    seq, seq_accs = _mean_accuracy(tmp_path, "sequential", task, (0, 1, 2), 10)
    pd, pd_accs = _mean_accuracy(tmp_path, "pdasgd", task, (0, 1, 2), 10)
    assert pd >= seq - TOLERANCE[task], (pd_accs, seq_accs)


def test_staleness_policy_applies_to_layer_updates(tmp_path):
    """--staleness is honoured: drop:0 discards every layer update that saw another update land
    (counted), while the default (none, each layer's gradient clipped to norm 1) drops nothing and
    still learns."""
    # one process: the staleness the policy acts on (its own updates) is all of it
    code, dropped = train(tmp_path, "drop", "--epochs", 0.5, "--staleness", "drop:0", "--workers", 1)
    assert code == 0
    total = dropped["staleness"]["count"]
    stale = total - dropped["staleness_histogram"].get("0", 0)
    assert dropped["config"]["staleness"] == "drop:0"
    assert dropped["dropped_updates"] == stale > 0
    # the policy alone: the 2-epoch warm-up of the defaults would take the whole 2-epoch run
    code, default = train(tmp_path, "default", "--epochs", 2, "--warmup-epochs", 0.5)
    assert code == 0 and default["config"]["staleness"] == "none" and default["config"]["warmup_epochs"] == 0.5
    assert default["config"]["clip_grad_norm"] == 1.0
    assert default["dropped_updates"] == 0 and default["final_test_accuracy"] > 0.3  # 3x chance after 2 epochs


TURNS, PIPELINE = (0.075, 0.5), (0.05, 2.0)  # (lr, warm-up epochs) of two processes taking turns, and of the rest


@pytest.mark.parametrize("flags, staleness, clip, lr_warmup", [
    (["--device", "cpu"], "cap", 1.0, TURNS),                                    # 2 x 1F:1B taking turns, a process per core
    (["--backward-threads", "2"], "none", 1.0, PIPELINE),                        # 1F:2B, one process
    (["--backward-threads", "4"], "none", 1.0, PIPELINE),                        # 1F:4B
    (["--forward-threads", "2", "--backward-threads", "2"], "cap", 0.0, PIPELINE),  # two writers of each layer's input
    (["--workers", "2", "--backward-threads", "1"], "cap", 1.0, TURNS),          # the same, given: queue 0
    (["--workers", "2", "--backward-threads", "1", "--queue-size", "1"], "cap", 0.0, PIPELINE),  # 2 pipelined processes
    (["--workers", "2", "--sharing", "average"], "none", 1.0, PIPELINE),         # a replica (model) per process
    (["--workers", "4"], "cap", 1.0, PIPELINE),                                  # 4 taking turns: staleness 1.6
    (["--workers", "2", "--fb-ratio", "auto"], "cap", 0.0, PIPELINE),            # threads chosen at run time: queue 1
    (["--runtime", "sim", "--sim-workers", "2"], "cap", 1.0, TURNS),             # the simulated twin of the default
    (["--runtime", "sim", "--sim-workers", "4"], "cap", 1.0, PIPELINE),          # collapsed at Hogwild!'s lr
    (["--workers", "2", "--staleness", "scale", "--clip-grad-norm", "2", "--lr", "0.05"], "scale", 2.0,
     (0.05, 0.5)),                                                               # given: kept
])
def test_staleness_clip_and_lr_defaults_follow_the_writers_per_model(flags, staleness, clip, lr_warmup):
    """pdasgd clips and leaves stale updates undamped with one forward thread per model, and damps
    (cap) without clipping where several forward threads or pipelined processes share one
    (docs/pdasgd.md, "Clipping instead of damping"). Processes taking turns (a queue of 0) clip, and
    cap has nothing to damp there: no process's own update is stale ("One process per core"); they
    take Hogwild!'s lr and warm-up (docs/pdasgd.md, "Later on 2026-12-06")."""
    from asyncsgd.cli import build_parser, config_from_args
    from asyncsgd.settings import resolve
    cfg = resolve(config_from_args(build_parser().parse_args(["train", *flags])))
    assert (cfg.staleness, cfg.clip_grad_norm, (cfg.lr, cfg.warmup_epochs)) == (staleness, clip, lr_warmup)


@pytest.mark.acceptance
@pytest.mark.parametrize("layout", [
    ["--forward-threads", "1", "--backward-threads", "1"],
    ["--forward-threads", "1", "--backward-threads", "2"],
    ["--forward-threads", "2", "--backward-threads", "2"],
    ["--forward-threads", "1", "--backward-threads", "4"],
    ["--workers", "2", "--forward-threads", "1", "--backward-threads", "1"],  # at a queue of 0 since 2026-12-06
], ids=["1F:1B", "1F:2B", "2F:2B", "1F:4B", "2x1F:1B"])
def test_every_layout_converges_in_ten_seeds(tmp_path, layout):
    """The convergence issue's bar for pdasgd's layouts: seeds 0-9, mnist1d, 10 epochs, each at
    its layout's defaults: no run below 0.93 (docs/pdasgd.md, "The layouts" and "The queue")."""
    finals = []
    for seed in range(10):
        out = tmp_path / f"s{seed}"
        r = run_cli("train", "--algo", "pdasgd", *layout, "--seed", seed, "--progress", "none", "--out", out,
                    timeout=300)
        assert r.returncode == 0, r.stderr
        finals.append(read_run(out)[0]["final_test_accuracy"])
    assert min(finals) >= 0.93, finals


def test_one_thread_plays_both_roles_only_when_they_take_turns():
    """1F:1B at a queue of 0 runs on one thread (its forward waits for the last backward anyway),
    which gets the process's whole share of the cores; any other layout runs a thread per role."""
    assert rules.one_thread(1, 1, 0)
    assert not rules.one_thread(1, 1, 1) and not rules.one_thread(1, 2, 0) and not rules.one_thread(2, 2, 0)
