"""The theory check: is a run inside the regime PD-ASGD's gradient-bias bound covers, and what is the bound?

PD-ASGD (arXiv 2410.05985) bounds the bias of a gradient computed on weights up to tau_max updates
old by   ||b|| <= G * a * lr * tau_max / (1 - a * lr * tau_max),   valid when a * lr * tau_max < 1,
with G a bound on gradient norms and a the Lipschitz constant of the gradient. We measure every
term on the run itself:

- tau_max, and the mean staleness for context: the run's staleness statistics (summary.json).
- G: the largest mini-batch gradient norm observed during training. Real runs: board.grad_norm_max
  (engine.WorkerContext.record fills it every 8th step of each worker when the schedule passes
  grads=...); simulated runs: every gradient computed.
- a: after training, a secant estimate on the run's own trajectory: for consecutive parameter
  snapshots w_i, w_{i+1} (the --eval-points copies), ||g(w_i) - g(w_{i+1})|| / ||w_i - w_{i+1}||,
  g the full-batch gradient of the training loss on the fixed 2,000-sample training slice that
  records.py evaluates train_loss on (model in eval mode, so g is a fixed function of the
  parameters), maximised over the pairs; plus --weight-decay (the L2 term's own constant). A
  secant is a LOWER bound on the true constant, taken where the run actually went.
- lr: the peak learning rate (--lr); warm-up and decay only lower the step, so this is the worst case.

in_regime is False when a * lr * tau_max >= 1: the guarantee says nothing there, bias_bound is null.
"""

from __future__ import annotations

import math

import torch
from torch.utils.data import TensorDataset, default_collate

from .tensors import StateFlattener, loss_fn

METHOD = ("bias <= G*a*lr*tau_max/(1-a*lr*tau_max) (PD-ASGD); tau_max = max staleness of the run; "
          "G = largest mini-batch gradient norm observed; a = max over consecutive parameter snapshots (real runs: at most 12, evenly spaced) of "
          "||g(w_i)-g(w_j)||/||w_i-w_j||, g the full-batch gradient on the 2,000-sample training slice "
          "(eval mode), plus weight decay: a secant lower bound on the Lipschitz constant; lr = peak --lr")


def _sig(x: float | None, digits: int = 6):
    return None if x is None else float(f"{x:.{digits}g}")


def _slice_batches(dataset, limit: int, chunk: int):
    from .records import TRAIN_LOSS_SAMPLES

    n = min(len(dataset), limit or TRAIN_LOSS_SAMPLES)
    if isinstance(dataset, TensorDataset):
        xs, ys = (t[:n] for t in dataset.tensors)
        return [(xs[i:i + chunk], ys[i:i + chunk]) for i in range(0, n, chunk)], n
    return [default_collate([dataset[j] for j in range(i, min(i + chunk, n))]) for i in range(0, n, chunk)], n


def lipschitz_estimate(task, states, device: str = "cpu", samples: int = 2000, chunk: int = 500) -> tuple[float | None, int]:
    """(a, pairs used): max secant ratio of the full-batch gradient over consecutive snapshots.

    states: flat model states in engine.StateFlattener layout (board.snap rows), in training order."""
    if len(states) < 2:
        return None, 0
    model = task.model_fn().to(device)
    model.eval()
    flat = StateFlattener(model)
    params = [p for p in model.parameters() if p.requires_grad]
    loss_f = loss_fn(task.loss)
    batches, n = _slice_batches(task.train_set, samples, chunk)

    def point(state):
        flat.load_flat(model, state.to(device))
        total = [torch.zeros_like(p) for p in params]
        for x, y in batches:
            x, y = x.to(device), y.to(device)
            loss = loss_f(model(x), y) * (len(y) / n)
            for acc, g in zip(total, torch.autograd.grad(loss, params)):
                acc.add_(g)
        w = torch.cat([p.detach().reshape(-1) for p in params]).double()
        return w, torch.cat([g.reshape(-1) for g in total]).double()

    best, pairs = None, 0
    prev = point(states[0])
    for state in states[1:]:
        cur = point(state)
        dw = float(torch.linalg.vector_norm(cur[0] - prev[0]))
        if dw > 1e-12:
            ratio = float(torch.linalg.vector_norm(cur[1] - prev[1])) / dw
            if math.isfinite(ratio):
                best = ratio if best is None else max(best, ratio)
                pairs += 1
        prev = cur
    return best, pairs


def theory_check(task, states, grad_norm_max: float | None, staleness_mean: float, staleness_max: int,
                 lr: float, weight_decay: float = 0.0, device: str = "cpu") -> dict:
    """The summary's "theory" block from measured values (see the module docstring).

    task: tasks.Task; states: flat snapshots (StateFlattener layout) in training order;
    grad_norm_max: G (None or 0 when not observed); staleness_mean / staleness_max: the run's."""
    a, pairs = lipschitz_estimate(task, states, device)
    if a is not None:
        a += weight_decay
    G = grad_norm_max if grad_norm_max else None
    tau = int(staleness_max)
    x = None if a is None else a * lr * tau
    in_regime = x is not None and x < 1
    bound = G * x / (1 - x) if in_regime and G is not None else None
    return {"staleness_mean": _sig(float(staleness_mean)), "staleness_max": tau, "G": _sig(G), "a": _sig(a),
            "lr": lr, "a_lr_tau_max": _sig(x), "bias_bound": _sig(bound), "in_regime": bool(in_regime),
            "lipschitz_pairs": pairs, "method": METHOD}


MAX_SNAPSHOTS = 12


def add_theory(record, summary: dict) -> None:
    """summary["theory"] for a real run: call from an algorithm's summary_extra hook (records.summary
    passes (record, summary)). Reads record.board (snapshots of row 0, grad_norm_max),
    record.task, record.cfg (lr, weight_decay), record.device and summary["staleness"]."""
    b = record.board
    count = int(b.snap_count[0])
    # At most MAX_SNAPSHOTS evenly spaced snapshots: each costs a full-batch gradient, and a big
    # model's 40 would cost minutes of evaluation (still off the training clock).
    keep = sorted({round(i * (count - 1) / (MAX_SNAPSHOTS - 1)) for i in range(MAX_SNAPSHOTS)}) if count > MAX_SNAPSHOTS \
        else range(count)
    states = [b.snap[0, i] for i in keep]
    stale = summary["staleness"]
    summary["theory"] = theory_check(record.task, states, float(b.grad_norm_max.max()), stale["mean"], stale["max"],
                                     record.cfg.lr, record.cfg.weight_decay, record.device)
