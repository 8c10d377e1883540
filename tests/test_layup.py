"""layup: gossip message counts and bytes per layer, a killed worker, the simulated 1024-worker
run, the options it takes, and (acceptance) accuracy against sequential."""

from __future__ import annotations

import math
import statistics
import time

import pytest

from conftest import assert_one_line_error, read_run, run_cli
from test_dasgd import run_and_kill

from asyncsgd.exchange import wire

FAST = ["--threads-per-worker", "1", "--progress", "none", "--eval-points", "4"]
CNN1D_LAYERS = [640, 128, 12288, 128, 12288, 128, 12800, 40]  # payload bytes of each layer (float32)


@pytest.mark.parametrize("gossip", ["average", "updates"])
@pytest.mark.parametrize("topology, fanout, k", [("random:2", 2, 3)])  # one run each (4 processes: ~3 s)
def test_one_message_per_layer_group_to_each_peer_and_bytes(tmp_path, topology, fanout, k, gossip):
    """random:M: every group of --send-every k updates of a layer goes to M peers (a message each,
    or merged into a message of that layer still queued: coalesced); bytes_sent is exactly the
    messages x (header + that layer's payload), DONE a header only. The same with either payload
    (--gossip: the layer's parameters, or its summed updates)."""
    out = tmp_path / "run"
    r = run_cli("train", "--algo", "layup", "--workers", 4, "--epochs", 0.5, "--topology", topology,
                "--send-every", k, "--gossip", gossip, *FAST, "--out", out)
    assert r.returncode == 0, r.stderr[-3000:]
    s, _ = read_run(out)
    # the counts below hold for 4 workers that all finish: a lost one is a different failure (say why)
    assert s["lost_workers"] == [], (s["lost_reasons"], r.stderr[-3000:])
    x = s["exchange"]
    assert x["header_bytes"] == wire.header_bytes(4) == (8 + 4) * 8
    assert [layer["payload_bytes"] for layer in x["by_layer"]] == CNN1D_LAYERS
    assert sum(w["samples"] for w in s["per_worker"]) == 4000  # 125 full batches of 32
    for w, pw in zip(s["per_worker"], x["per_worker"]):
        passes = w["samples"] // 32  # each backward pass updates every layer once (scale: none dropped)
        for layer in pw["by_layer"]:
            assert layer["rounds"] == math.ceil(passes / k), (layer, passes)
            assert layer["data_messages"] + layer["coalesced"] == layer["rounds"] * fanout
        assert pw["control_messages"] == 3  # DONE to every peer
        # a round's layers to one peer leave as one frame: fewer sends than messages, and no frame
        # holds more than every layer plus the DONE
        messages = pw["data_messages"] + pw["control_messages"]
        assert messages / (len(CNN1D_LAYERS) + 1) <= pw["sends"] < pw["data_messages"], pw
    assert x["rounds"] == sum(layer["rounds"] for layer in x["by_layer"])
    assert s["messages_sent"] == x["data_messages"] + x["control_messages"]
    assert s["bytes_sent"] == sum(layer["data_messages"] * (x["header_bytes"] + layer["payload_bytes"])
                                  for layer in x["by_layer"]) + x["control_messages"] * x["header_bytes"]
    assert x["received"] == s["messages_sent"] and s["malformed_messages"] == 0
    # per-layer staleness covers the own and the peers' layer updates; replica 0 and the average reported
    assert [layer["count"] for layer in s["staleness_by_layer"]] == [
        s["backward_passes"] + layer["data_messages"] for layer in x["by_layer"]]
    assert s["final_avg_test_accuracy"] is not None and s["consensus_distance"] > 0
    assert s["gossip"] == gossip


def test_gossip_averaging_keeps_the_replicas_together(tmp_path):
    """--gossip average (the default) against updates, 4 workers, the same seed: averaging a layer
    with a peer's parameters holds the replicas together, where updates alone let them drift
    (10 epochs: consensus distance 0.005 against 6, docs/layup.md). Both learn. Measured at the end
    of the cosine: while the lr is high, averaged replicas still differ by their latest updates."""
    runs = {}
    for gossip in ("average", "updates"):
        out = tmp_path / gossip
        r = run_cli("train", "--algo", "layup", "--workers", 4, "--epochs", 3, "--warmup-epochs", 0.5,
                    "--gossip", gossip, *FAST, "--out", out)
        assert r.returncode == 0, r.stderr[-3000:]
        runs[gossip] = read_run(out)[0]
    avg, upd = runs["average"], runs["updates"]
    assert (avg["config"]["staleness"], avg["config"]["lr"]) == ("none", 0.2)
    assert (upd["config"]["staleness"], upd["config"]["lr"]) == ("adaptive", 0.1)
    assert avg["consensus_distance"] < 0.2 * upd["consensus_distance"], (avg["consensus_distance"],
                                                                          upd["consensus_distance"])
    for s in (avg, upd):
        assert s["final_test_accuracy"] > 0.4, s["final_test_accuracy"]  # chance is 0.1; 0.66-0.75 measured


def killed_run(tmp_path, epochs: int, *extra) -> dict:
    """4 layup workers, worker 2 SIGKILLed a second into training: the survivors finish (exit 0),
    the lost worker is named, and they claim its share of the plan."""
    out = tmp_path / "run"
    code, err = run_and_kill(out, 2, 1.0, "--algo", "layup", "--workers", 4, "--epochs", epochs, *FAST, *extra,
                             timeout=600)
    assert code == 0, err[-3000:]
    assert "worker 2 was killed by SIGKILL" in err and "continuing with the survivors" in err
    s, _ = read_run(out)
    assert s["lost_workers"] == [2]
    assert s["lost_reasons"] == {"2": "worker 2 was killed by SIGKILL (exit code -9)"}
    assert s["samples"] >= 0.97 * epochs * 8000
    assert s["per_worker"][2]["samples"] < s["per_worker"][0]["samples"]
    return s


@pytest.mark.slow
def test_killed_layup_worker_survivors_finish(tmp_path):
    # 6 epochs, so that the kill a second into training comes well before the end (at --send-every 8
    # 4 workers train 2 epochs in about a second on 2 cores), and a 0.5-epoch warm-up: layup's default
    # 2 epochs would be a third of the run (with a core kept busy, a 2-epoch run of warm-up only ended
    # at test loss 2.33, no better than chance)
    s = killed_run(tmp_path, 6, "--warmup-epochs", "0.5")
    # Still learning after the kill: the test loss falls well below chance's ln 10 = 2.303. Not an
    # accuracy bar: accuracy ranged widely over runs of the same code (0.17-0.35 at 2 epochs), so a bar
    # on it fails by chance. The 0.88 is the acceptance test's.
    _, metrics = read_run(tmp_path / "run")
    assert metrics[-1]["samples"] == s["samples"]
    assert metrics[-1]["test_loss"] < math.log(10) - 0.2, metrics
    assert metrics[-1]["test_loss"] < metrics[0]["test_loss"] - 0.1, metrics


@pytest.mark.parametrize("gossip", ["average", "updates"])
def test_simulated_1024_workers_on_logreg_in_under_a_minute(tmp_path, gossip):
    out = tmp_path / "sim"
    t = time.monotonic()
    r = run_cli("train", "--runtime", "sim", "--algo", "layup", "--sim-workers", 1024, "--task", "logreg",
                "--num-samples", 2000, "--epochs", 30, "--lr", 0.5, "--send-every", 1, "--gossip", gossip,
                "--progress", "none", "--out", out, timeout=120)
    wall = time.monotonic() - t
    assert r.returncode == 0, r.stderr[-3000:]
    assert wall < 60, wall
    s, metrics = read_run(out)
    assert s["workers"] == 1024 and s["samples"] == 30 * 2000
    assert metrics[-1]["test_loss"] < metrics[0]["test_loss"] - 0.02, (metrics[0], metrics[-1])  # it trained
    x = s["exchange"]
    assert x["header_bytes"] == wire.header_bytes(1024)
    for layer in x["by_layer"]:  # the default random:1 and --send-every 1: a message per layer update
        assert layer["data_messages"] == layer["rounds"] == s["backward_passes"]
    assert s["bytes_sent"] == sum(layer["data_messages"] * (x["header_bytes"] + layer["payload_bytes"])
                                  for layer in x["by_layer"]) + x["control_messages"] * x["header_bytes"]


@pytest.mark.parametrize("flag, value, needle", [
    ("--updates", "block", "--updates is not used by --algo layup"),
    ("--sharing", "average", "--sharing is not used by --algo layup"),
    ("--topology", "random:4", "random:M with M at most the 3 peer(s)"),
    ("--gossip", "params", "--gossip 'params' is not accepted; accepted: average, updates"),
    ("--staleness", "cap", "--staleness 'cap' is not used by --algo layup --gossip average"),
])
def test_options_layup_refuses(flag, value, needle):
    r = run_cli("train", "--algo", "layup", "--workers", 4, flag, value, "--progress", "none")
    assert_one_line_error(r, 2, needle)


# -- acceptance: minutes of training --------------------------------------------------------

@pytest.mark.acceptance
def test_layup_within_one_point_of_sequential_and_robust_to_a_straggler_and_latency(tmp_path):
    """4 workers against sequential, the same epochs (median of 3 seeds, no delays); and >= 0.90 in
    every seed with one 4x straggler and 20 ms per message."""
    args = ["--epochs", 10, *FAST]
    seq, lay, slow = [], [], []
    for seed in (0, 1, 2):
        for name, algo, extra, into in (("seq", "sequential", [], seq), ("layup", "layup", ["--workers", 4], lay),
                                        ("slow", "layup", ["--workers", 4, "--straggler", "worker=1,slowdown=4",
                                                           "--delay", "latency=20ms"], slow)):
            out = tmp_path / f"{name}{seed}"
            r = run_cli("train", "--algo", algo, *extra, *args, "--seed", seed, "--out", out, timeout=900)
            assert r.returncode == 0, r.stderr[-3000:]
            into.append(read_run(out)[0]["final_test_accuracy"])
    assert statistics.median(lay) >= statistics.median(seq) - 0.01, (seq, lay)
    assert min(slow) >= 0.90, slow


@pytest.mark.acceptance
def test_killed_layup_worker_survivors_reach_088(tmp_path):
    s = killed_run(tmp_path, 20)
    assert s["final_test_accuracy"] >= 0.88, s["final_test_accuracy"]


@pytest.mark.parametrize("averaging", [True, False])  # --gossip average / updates
def test_a_group_filled_by_another_thread_after_the_lock_is_not_sent_twice(averaging):
    """--send-every k > 1: the backward threads of a worker add to the same pending group of a
    layer. Whether this update filled the group is decided under the layer's lock: once it is
    released another thread may fill the group and take it (here, forced: that thread's update runs
    the moment the first one releases the lock). Read again after the lock, the first thread saw a
    full group it had not taken and failed (UnboundLocalError in a cluster suite run, which lost
    that worker)."""
    from types import SimpleNamespace

    import numpy as np
    import torch

    from asyncsgd.algorithms.layup.worker import Gossiping

    sent, taken = [], []

    class PreemptedLock:
        """A layer lock whose first release lets another backward thread's whole update run."""
        def __init__(self):
            self.preempt = None

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            other, self.preempt = self.preempt, None
            if other is not None:
                other()
            return False

    def take_group(i):
        group, w.pending[i] = w.pending[i], None
        taken.append(group[2])
        return [1], len(taken) - 1

    param = torch.nn.Parameter(torch.zeros(3))
    lock = PreemptedLock()
    w = SimpleNamespace(params=[param], locks=[lock], pending=[None], k=2, clock=np.zeros((1, 2), np.int64), version=[0], rank=0,
                        averaging=averaging,
                        bump=lambda writer, i: None, _take_group=take_group,
                        send=lambda i, group, targets, round_: sent.append((group[2], targets, round_)))
    opt = SimpleNamespace(update=lambda i, grad, lr: param.data.add_(grad, alpha=-lr))
    item = SimpleNamespace(seen=[np.zeros(2, np.int64)], decayed=1.0)
    grad = torch.ones(3)
    lock.preempt = lambda: Gossiping.update(w, item, opt, 1, 0, grad, 0.1)  # the other thread fills the group
    Gossiping.update(w, item, opt, 0, 0, grad, 0.1)  # this one's update only started it
    assert taken == [2] and sent == [(2, [1], 0)]  # one group of 2 updates, sent once, by the thread that took it
    assert w.pending == [None] and int(w.clock[0, 0]) == 2 and w.version == [2]


def test_a_peers_message_moves_the_layers_clock_and_version_together():
    """apply_peer: a peer's layer message advances that layer's clock entry of its sender AND the
    layer's version (the Python int the backward reads as the layer's version) by the message's
    steps, averaged or dropped alike, and counts its vector-clock staleness."""
    import threading
    from types import SimpleNamespace

    import numpy as np
    import torch

    from asyncsgd.algorithms.layup.worker import Gossiping
    from asyncsgd.exchange import GRAD, PARAMS

    def replica(averaging):
        flat = torch.zeros(5)
        counters = {n: [0, 0] for n in ("stale_sum", "own_stale_sum", "stale_count", "stale_max")}
        recorded = []
        return SimpleNamespace(
            averaging=averaging, layer_at={0: 0, 3: 1}, slices=[(0, 3), (3, 2)], device=torch.device("cpu"),
            locks=[threading.Lock(), threading.Lock()], clock=np.array([[2, 0, 0], [1, 1, 2]], np.int64),
            version=[2, 4], rank=0, sent=np.array([[2, 1, 2], [1, 0, 0]], np.int64), flat=flat,
            policy=SimpleNamespace(factor=lambda s, decayed: None if s > 1 else 1.0), record_lock=threading.Lock(),
            ctx=SimpleNamespace(record_staleness=recorded.append), dropped=[0], recorded=recorded,
            board=SimpleNamespace(updates=[0]), **counters)

    w = replica(averaging=True)
    msg = SimpleNamespace(kind=PARAMS, offset=3, payload=torch.ones(2), clock=torch.tensor([0, 1, 0]), sender=1,
                          steps=8, decayed=1.0)
    assert Gossiping.apply_peer(w, msg) is True
    assert w.clock[1].tolist() == [1, 9, 2] and w.version == [2, 12]  # moved together, by the steps
    assert w.flat.tolist() == [0, 0, 0, 0.5, 0.5]  # averaged halfway into layer 1's slice
    # staleness 2: worker 2's updates the sender had not applied; the own one was never sent to it
    assert w.recorded == [2] and w.stale_sum == [0, 2] and w.board.updates == [1]

    w = replica(averaging=False)  # updates: a peer's update 3 behind is dropped, and still counted
    msg = SimpleNamespace(kind=GRAD, offset=0, payload=torch.ones(3), clock=torch.tensor([0, 0, 0]), sender=2,
                          steps=4, decayed=1.0)
    assert Gossiping.apply_peer(w, msg) is True
    assert w.clock[0].tolist() == [2, 0, 4] and w.version == [6, 4]
    assert w.recorded == [2]  # the 2 own updates of layer 0 it had sent to worker 2
    assert w.flat.tolist() == [0] * 5 and w.dropped == [1] and w.board.updates == [0]
    assert Gossiping.apply_peer(w, SimpleNamespace(kind=PARAMS)) is False  # the other payload kind: not ours
