"""run_sim: one simulated run, from config to run record (summary.json, metrics.jsonl, model.pt)."""

from __future__ import annotations

import copy
import json
import math
import sys
import time

import numpy as np
import torch
from torch.utils.data import TensorDataset, default_collate

from .. import records
from ..algorithms.registry import get_algorithm
from ..checkpoint import save_checkpoint
from ..engine import BatchPlan
from ..errors import ConfigError
from ..settings import write_config_toml
from ..tensors import StateFlattener, loss_fn
from .core import ComputeModel, EventLoop, FlatModel, Network, Stats, flops_compute, measure_compute
from .simulation import Simulation

def _train_tensors(ds) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(ds, TensorDataset):
        return ds.tensors[0], ds.tensors[1]
    x, y = default_collate([ds[i] for i in range(len(ds))])
    return x, y


def _deterministic(mode: bool) -> None:
    """torch.use_deterministic_algorithms(mode) without its one other effect, which the simulator
    never uses: it also sets torch._inductor.config.deterministic, and importing that config imports
    the compiler stack, 1.1 s of a simulated run's start-up (of 3.3 s for 64 workers on logreg).
    The flag itself is the same call the public function makes."""
    set_flag = getattr(torch._C, "_set_deterministic_algorithms", None)
    if set_flag is None:  # a torch without it: the public function, import and all
        torch.use_deterministic_algorithms(mode)
    else:
        set_flag(mode)


def run_sim(cfg, task=None) -> dict:
    """Simulate one run (cfg validated) and write its record; returns the summary dict."""
    from ..tasks import get_task

    if cfg.resume:
        raise ConfigError(f"--resume {cfg.resume!r} is not accepted with --runtime sim; accepted: --resume with "
                          "--runtime real (a simulated run is replayed exactly from its seed instead)")
    started_at = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    algo = get_algorithm(cfg.algorithm)
    replicated = algo.for_config(cfg).snapshot_all_replicas  # several models: replica 0, plus the average
    workers, groups, per_group = algo.sim_layout(cfg)
    t = time.perf_counter()
    if task is None:
        task = get_task(cfg.task, model=cfg.model, data_dir=cfg.data_dir, seed=cfg.seed, num_samples=cfg.num_samples)
    setup_s = time.perf_counter() - t
    n_train = len(task.train_set)
    if n_train == 0:
        raise ConfigError(f"--task {cfg.task!r} has an empty training set; accepted: at least one sample")
    out = records.make_run_dir(cfg)
    write_config_toml(cfg, out / "config.toml")
    total = max(1, round(cfg.epochs * n_train))
    snapshot_every = max(1, math.ceil(total / cfg.eval_points))

    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)  # one thread: bit-identical reruns (and the run's cost is a clock, not a race)
    _deterministic(True)
    try:
        torch.manual_seed(cfg.seed)
        model = task.model_fn()  # the same initial weights as a real run of this seed
        x, y = _train_tensors(task.train_set)
        plan = BatchPlan(n_train, total, cfg.batch_size, cfg.seed)
        loss_f = loss_fn(task.loss)
        if cfg.sim_forward_s is None or cfg.sim_backward_s is None:
            probe = plan.indices(0)
            if cfg.sim_times == "measured":  # opt-in: this host's clock (recorded; not reproducible elsewhere)
                fwd, bwd = measure_compute(copy.deepcopy(model), loss_f, x[probe], y[probe])
            else:
                fwd, bwd = flops_compute(copy.deepcopy(model), loss_f, x[probe], y[probe], cfg.sim_device_flops)
            source = cfg.sim_times
            if cfg.sim_forward_s is not None or cfg.sim_backward_s is not None:
                source = "given+" + source
            fwd = cfg.sim_forward_s or fwd
            bwd = cfg.sim_backward_s or bwd
        else:
            fwd, bwd, source = cfg.sim_forward_s, cfg.sim_backward_s, "given"
        torch.manual_seed(cfg.seed)
        replicas = algo.sim_replicas(workers, groups) if algo.sim_replicas else 1
        n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
        state = torch.empty(replicas, n_params)
        fm = FlatModel(model, loss_f, x, y, plan, state[0] if replicas == 1 else torch.empty(n_params))
        if replicas > 1:
            state.copy_(fm.flat.expand(replicas, -1))
        stats = Stats(workers, len(fm.params))
        loop = EventLoop()
        compute = ComputeModel(fwd, bwd, cfg.parsed.sim_compute, cfg.parsed.straggler, cfg.seed, workers, per_group)
        sim = Simulation(cfg, fm, state, workers, loop, compute, Network(cfg.parsed.delay, cfg.seed, workers),
                         stats, total, snapshot_every, replicated, groups, per_group)
        sim.on_event = _progress(cfg, stats, loop, total)
        host0 = time.perf_counter()
        algo.sim(sim)
        end = max(sim.end_time, loop.now)
        sim.snapshot(end, stats.global_samples)  # the final state
        host_s = time.perf_counter() - host0

        t = time.perf_counter()
        metrics, states = _evaluate(task, fm, sim.snapshots)
        theory = None
        if algo.sim_theory:
            from ..theory import theory_check
            st = _staleness(stats)
            theory = theory_check(task, states, stats.grad_norm_max, st[0], st[1], cfg.lr, cfg.weight_decay)
        eval_s = time.perf_counter() - t
    finally:
        torch.set_num_threads(threads)
        _deterministic(deterministic)

    records.write_metrics(out / "metrics.jsonl", records.add_lr(metrics, cfg, total))
    board = stats.to_board(len(fm.params))
    # The twin added its algorithm's fields (sim.extra) itself: no summary_extra hook here.
    record = records.RunRecord(cfg=cfg, task=task, board=board, model=model, out=out, device="cpu", workers=workers,
                               launch="sim", setup_s=setup_s, metrics=metrics,
                               started_at=started_at)
    summary = records.summary(record, metrics, end, eval_s)
    summary["threads_per_worker"] = 1
    summary["device"] = "simulated (" + summary["device"] + ", 1 thread)"
    summary["runtime"] = "sim"
    summary["sim_time_s"] = summary["wall_time_s"]
    summary["host_time_s"] = round(host_s, 3)
    if replicated:  # as exchange/summary.py: replica 0 above, the replicas' average here
        final = metrics[-1] if metrics else {}
        summary["consensus_distance"] = final.get("consensus_distance")
        summary["final_avg_test_accuracy"] = final.get("avg_test_accuracy")
        summary["final_avg_test_loss"] = final.get("avg_test_loss")
    summary["sim"] = {
        "forward_s": fwd, "backward_s": bwd, "compute_times": source, "compute_factor": cfg.sim_compute,
        "straggler": cfg.straggler, "delay": cfg.delay, "groups": groups, "workers_per_group": per_group,
        "events": loop.events, "gradient_batches": plan.num_batches,
        "network_model": "p2p: link-serialised size/bandwidth + latency (jitter), FIFO per pair; "
                         "all-reduce: 2*ceil(log2 n) latency hops + 2(n-1)/n*size/bandwidth",
    }
    summary["sim"].update(sim.sim_extra)
    summary.update(sim.extra)
    if theory is not None:
        summary["theory"] = theory
    final = _state_dict(task, fm, sim.snapshots[-1]["params"])
    save_checkpoint(out, final, None, plan.num_batches, total, end, cfg.to_dict())
    if cfg.tensorboard:
        records.write_tensorboard(record, summary, metrics)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _staleness(stats) -> tuple[float, int]:
    hist = stats.hist.sum(0)
    n = int(hist.sum())
    mean = float((hist * np.arange(len(hist))).sum() / n) if n else 0.0
    return round(mean, 4), int(stats.stale_max.max())


def _eval_model(task, fm):
    model = task.model_fn()
    model.load_state_dict(fm.model.state_dict())  # float buffers (BatchNorm statistics): the simulation's
    params = [p for p in model.parameters() if p.requires_grad]
    return model, params


@torch.no_grad()
def _load(params, vec: torch.Tensor) -> None:
    i = 0
    for p in params:
        p.copy_(vec[i:i + p.numel()].view_as(p))
        i += p.numel()


def _state_dict(task, fm, vec: torch.Tensor) -> dict:
    model, params = _eval_model(task, fm)
    _load(params, vec)
    return model.state_dict()


def _evaluate(task, fm, snapshots: list[dict]) -> tuple[list[dict], list[torch.Tensor]]:
    """records.evaluate_snapshots' rows for the simulated snapshots (time = simulated seconds), and
    the snapshots as flat states (StateFlattener layout) for the theory check."""
    model, params = _eval_model(task, fm)
    flattener = StateFlattener(model)
    train_slice = records._train_slice(task.train_set)
    rows, states = [], []
    for snap in snapshots:
        _load(params, snap["params"])
        states.append(flattener.to_flat(model, torch.empty(flattener.numel)))
        acc, loss = records.evaluate(model, task.test_set, task.loss, "cpu")
        _, train_loss = records.evaluate(model, train_slice, task.loss, "cpu")
        row = {"wall_time_s": round(float(snap["time"]), 4), "samples": int(snap["samples"]),
               "test_accuracy": acc, "test_loss": loss, "train_loss": train_loss}
        if "avg" in snap:
            row["consensus_distance"] = snap["consensus_distance"]
            _load(params, snap["avg"])
            row["avg_test_accuracy"], row["avg_test_loss"] = records.evaluate(model, task.test_set, task.loss, "cpu")
        rows.append(row)
    return rows, states


def _progress(cfg, stats, loop, total):
    """Host-side progress lines every 5 s (stderr), unless --progress none."""
    if cfg.progress == "none":
        return lambda: None
    last = [time.perf_counter()]

    def tick() -> None:
        now = time.perf_counter()
        if now - last[0] >= 5.0:
            last[0] = now
            print(f"[asyncsgd sim] {stats.global_samples}/{total} samples "
                  f"({100 * stats.global_samples / total:.0f}%), simulated {loop.now:.3f} s", file=sys.stderr, flush=True)
    return tick
