"""Synthetic convex problems with a known optimum, so "how close to optimal" is measurable.

logreg: binary logistic regression. Gaussian features, labels drawn from a planted linear model
through the sigmoid (the Bernoulli draw is the label noise, so the data are not separable and the
optimum is finite). The model is `linear` d -> 2 with cross-entropy, whose optimum equals that of
logistic regression on the logit difference; we find it by Newton's method in float64 (convex,
d+1 unknowns: deterministic and exact to ~1e-15, where L-BFGS would stop at its tolerance).

quadratic: least squares, b = A w* + c + noise; model `linear` d -> 1, loss "mse" (torch's
mse_loss: mean squared error, no 1/2); optimum in closed form by np.linalg.lstsq in float64.

Both optima are computed from the float32 values stored in the datasets, so they are the optima
of exactly the data the algorithms see. The seed fixes the planted model and both sets; the
training set for a smaller num_samples is a prefix of the larger one, and the test set is the same.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from torch.utils.data import TensorDataset

from ..errors import ConfigError
from .models import build_model, check_model

FEATURES, TRAIN, TEST = 20, 4000, 1000


def _streams(seed: int):
    """Independent generators for the planted model, the training set and the test set."""
    return [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(3)]


def logistic_loss(x: np.ndarray, y: np.ndarray, theta: np.ndarray) -> float:
    """Mean binary cross-entropy of logits x @ theta[:-1] + theta[-1] (float64)."""
    z = x @ theta[:-1] + theta[-1]
    return float(np.mean(np.logaddexp(0.0, z) - y * z))


def logreg_optimum(x: np.ndarray, y: np.ndarray, tol: float = 1e-12, max_iter: int = 100):
    """(min loss, theta) of logistic regression with bias, by damped Newton's method in float64."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    xb = np.hstack([x, np.ones((len(x), 1))])
    theta = np.zeros(xb.shape[1])
    f = logistic_loss(x, y, theta)
    for _ in range(max_iter):
        p = np.exp(-np.logaddexp(0.0, -(xb @ theta)))  # sigmoid, overflow-free
        g = xb.T @ (p - y) / len(x)
        if np.linalg.norm(g) < tol:
            break
        h = (xb * (p * (1 - p))[:, None]).T @ xb / len(x)
        step = np.linalg.lstsq(h, g, rcond=None)[0]
        t = 1.0
        while t > 1e-12:  # backtracking (Armijo) line search
            f_new = logistic_loss(x, y, theta - t * step)
            if f_new <= f - 1e-4 * t * (g @ step):
                break
            t /= 2
        if f_new >= f:  # no more progress in float64
            break
        theta, f = theta - t * step, f_new
    return f, theta


def logreg_task(model: str | None = None, seed: int = 0, num_samples: int | None = None):
    """Logistic regression, d=20, 4,000 train (num_samples) / 1,000 test, known optimal_loss."""
    from . import Task

    model = check_model("logreg", model, ("linear",))
    d, n = FEATURES, TRAIN if num_samples is None else num_samples
    if n < 10 * d:
        raise ConfigError(f"--num-samples {n} is too small for logreg; accepted: >= {10 * d} "
                          f"(fewer points can be linearly separable, with no finite optimum)")
    r_model, r_train, r_test = _streams(seed)
    w, c = r_model.normal(size=d) * 3 / np.sqrt(d), r_model.normal() * 0.5  # logits have std ~3

    def draw(rng, m):
        x = rng.normal(size=(m, d)).astype(np.float32)
        p = 1 / (1 + np.exp(-(x.astype(np.float64) @ w + c)))
        return x, (rng.random(m) < p).astype(np.int64)

    x, y = draw(r_train, n)
    x_test, y_test = draw(r_test, TEST)
    opt, _ = logreg_optimum(x, y)
    train = TensorDataset(torch.from_numpy(x), torch.from_numpy(y))
    test = TensorDataset(torch.from_numpy(x_test), torch.from_numpy(y_test))
    return Task(name="logreg", model_name=model, train_set=train, test_set=test,
                model_fn=functools.partial(build_model, "linear", (d,), 2), num_classes=2,
                optimal_loss=opt,
                info={"train_samples": n, "test_samples": TEST, "input_shape": [d],
                      "source": f"synthetic logistic regression (seed {seed})",
                      "optimum_solver": "Newton, float64"})


def quadratic_task(model: str | None = None, seed: int = 0, num_samples: int | None = None,
                   noise: float = 0.5):
    """Least squares, d=20, 4,000 train (num_samples) / 1,000 test, known optimal_loss (mse)."""
    from . import Task

    model = check_model("quadratic", model, ("linear",))
    d, n = FEATURES, TRAIN if num_samples is None else num_samples
    if n < 1:
        raise ConfigError(f"--num-samples {n} is too small for quadratic; accepted: >= 1")
    r_model, r_train, r_test = _streams(seed)
    w, c = r_model.normal(size=d), r_model.normal()

    def draw(rng, m):
        a = rng.normal(size=(m, d)).astype(np.float32)
        b = (a.astype(np.float64) @ w + c + noise * rng.normal(size=m)).astype(np.float32)
        return a, b[:, None]

    a, b = draw(r_train, n)
    a_test, b_test = draw(r_test, TEST)
    opt, _ = least_squares_optimum(a, b)
    train = TensorDataset(torch.from_numpy(a), torch.from_numpy(b))
    test = TensorDataset(torch.from_numpy(a_test), torch.from_numpy(b_test))
    return Task(name="quadratic", model_name=model, train_set=train, test_set=test,
                model_fn=functools.partial(build_model, "linear", (d,), 1), loss="mse",
                num_classes=None, optimal_loss=opt,
                info={"train_samples": n, "test_samples": TEST, "input_shape": [d],
                      "source": f"synthetic least squares (seed {seed}, noise {noise})",
                      "optimum_solver": "lstsq, float64"})


def least_squares_optimum(a: np.ndarray, b: np.ndarray):
    """(min mean squared error, theta = [w; bias]) of b ~ a @ w + bias, in float64."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64).reshape(len(a))
    ab = np.hstack([a, np.ones((len(a), 1))])
    theta = np.linalg.lstsq(ab, b, rcond=None)[0]
    return float(np.mean((ab @ theta - b) ** 2)), theta
