"""The theory check (theory.py): the Lipschitz estimate is right where it can be computed exactly,
the bias bound and the regime flag follow the PD-ASGD formula, and real and simulated pdasgd /
dasgd summaries carry the block."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from asyncsgd.config import RunConfig
from asyncsgd.launch.local import Launcher
from asyncsgd.runner import run
from asyncsgd.tasks import get_task
from asyncsgd.tensors import StateFlattener
from asyncsgd.theory import add_theory, lipschitz_estimate, theory_check

torch.set_num_threads(1)


def quadratic_hessian(task) -> np.ndarray:
    """The exact Hessian of the quadratic task's training-slice loss mean((A w + c - b)^2): 2/n X^T X."""
    x, _ = task.train_set.tensors
    x = np.hstack([x[:2000].double().numpy(), np.ones((min(2000, len(x)), 1))])
    return 2 * x.T @ x / len(x)


def states_along(task, directions) -> list[torch.Tensor]:
    """Flat model states: the initial model, then moved by each direction in turn ([w; bias] order)."""
    model = task.model_fn()
    flat = StateFlattener(model)
    out = [flat.to_flat(model, torch.empty(flat.numel))]
    for d in directions:
        out.append(out[-1] + torch.as_tensor(d, dtype=torch.float32))
    return out


def test_lipschitz_estimate_is_exact_on_a_quadratic():
    """For least squares the gradient is linear, g(w) = H w + const: a step along H's top
    eigenvector has secant ratio lambda_max, along the bottom one lambda_min; the estimate is the
    max over consecutive pairs, so lambda_max, to float32 precision."""
    task = get_task("quadratic", seed=0)
    h = quadratic_hessian(task)
    vals, vecs = np.linalg.eigh(h)
    states = states_along(task, [0.5 * vecs[:, 0], 0.5 * vecs[:, -1], 0.3 * vecs[:, 3]])
    a, pairs = lipschitz_estimate(task, states)
    assert pairs == 3
    assert a == pytest.approx(vals[-1], rel=2e-3)
    assert vals[0] < vals[-1] / 1.2  # the pairs really differ: the max is what was picked


def test_bias_bound_and_regime():
    """bias = G*a*lr*tau/(1 - a*lr*tau) inside the regime; null and flagged outside it."""
    task = get_task("quadratic", seed=0)
    vals, vecs = np.linalg.eigh(quadratic_hessian(task))
    states = states_along(task, [0.5 * vecs[:, -1]])
    inside = theory_check(task, states, grad_norm_max=3.0, staleness_mean=1.5, staleness_max=4, lr=0.01)
    x = inside["a"] * 0.01 * 4
    assert inside["in_regime"] is True and inside["a_lr_tau_max"] == pytest.approx(x, rel=1e-5)
    assert inside["bias_bound"] == pytest.approx(3.0 * x / (1 - x), rel=1e-5)
    assert inside["staleness_max"] == 4 and inside["staleness_mean"] == 1.5 and inside["G"] == 3.0
    tau = int(np.ceil(1 / (inside["a"] * 0.01))) + 1
    outside = theory_check(task, states, 3.0, 1.5, tau, lr=0.01)
    assert outside["in_regime"] is False and outside["bias_bound"] is None and outside["a_lr_tau_max"] >= 1
    no_g = theory_check(task, states, 0.0, 1.5, 4, lr=0.01)
    assert no_g["G"] is None and no_g["bias_bound"] is None and no_g["in_regime"] is True
    decayed = theory_check(task, states, 3.0, 1.5, 4, lr=0.01, weight_decay=0.5)
    assert decayed["a"] == pytest.approx(inside["a"] + 0.5, rel=1e-6)
    assert theory_check(task, states[:1], 3.0, 1.5, 4, lr=0.01)["a"] is None  # one snapshot: no pair


def test_add_theory_on_a_real_pdasgd_run(tmp_path):
    """The hook the real pdasgd / dasgd summaries call: from the launcher's board (snapshots,
    grad_norm_max), task and config. tau_max is the run's own max staleness."""
    launcher = Launcher(RunConfig(algorithm="pdasgd", task="logreg", workers=1, epochs=1, progress="none",
                                  out=str(tmp_path / "real"), eval_points=6))
    summary = launcher.run()
    add_theory(launcher, summary)
    t = summary["theory"]
    assert t["staleness_max"] == summary["staleness"]["max"] and t["staleness_mean"] == summary["staleness"]["mean"]
    assert t["G"] is not None and t["G"] > 0  # decoupled.py passes grads= to ctx.record
    assert t["a"] > 0 and t["lipschitz_pairs"] >= 5 and t["lr"] == 0.05
    assert t["a_lr_tau_max"] == pytest.approx(t["a"] * 0.05 * t["staleness_max"], rel=1e-4)
    assert t["in_regime"] == (t["a_lr_tau_max"] < 1)
    assert (t["bias_bound"] is None) == (not t["in_regime"])


@pytest.mark.parametrize("algo", ["pdasgd", "dasgd"])
def test_simulated_summaries_carry_the_theory_block(tmp_path, algo):
    s = run(RunConfig(algorithm=algo, runtime="sim", task="logreg", workers=4, epochs=2, progress="none",
                      out=str(tmp_path / algo), sim_forward_s=0.001, sim_backward_s=0.002, eval_points=8))
    t = s["theory"]
    assert t["staleness_max"] == s["staleness"]["max"] > 0
    assert t["G"] > 0 and t["a"] > 0 and t["lipschitz_pairs"] >= 7
    assert t["a_lr_tau_max"] == pytest.approx(t["a"] * t["lr"] * t["staleness_max"], rel=1e-4)
    assert (t["bias_bound"] is None) == (not t["in_regime"])
    # a thousand workers' worth of staleness leaves the regime the bound covers
    big = run(RunConfig(algorithm=algo, runtime="sim", task="logreg", sim_workers=512, epochs=2, progress="none",
                        out=str(tmp_path / f"{algo}-big"), sim_forward_s=0.001, sim_backward_s=0.002, eval_points=8))
    assert big["theory"]["staleness_max"] > 10 * t["staleness_max"]
    assert big["theory"]["a_lr_tau_max"] > t["a_lr_tau_max"]
