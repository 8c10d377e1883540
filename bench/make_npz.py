"""A user's own 1-D data for `--task npz:PATH`: noisy sinusoids in 4 separable classes.

The convergence issue's own-data check (docs/pdasgd.md, "Your own data") trains the README's
example on this file. Class k is a sine of frequency k + 1 cycles per signal with a random phase,
plus Gaussian noise, so the classes are separable but not trivially: x has the shape
[n, 1 channel, length], which the npz task trains with cnn1d.

    python bench/make_npz.py my_data.npz            # x (3000, 1, 40), y (3000,), seed 7
    asyncsgd train --task npz:my_data.npz --algo pdasgd --forward-threads 1 --backward-threads 2
"""

from __future__ import annotations

import argparse
import math
import sys

import numpy as np

MAX_VALUES = 100_000_000  # n x length: 0.8 GB while generating (float64), 0.4 GB written


def sinusoids(n: int = 3000, length: int = 40, classes: int = 4, noise: float = 0.3, seed: int = 7):
    """(x float32 [n, 1, length], y int64 [n]): class y is a sine of frequency y + 1 with noise."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    t = np.arange(length) / length
    phase = rng.uniform(0, 2 * np.pi, n)
    x = np.sin(2 * np.pi * (y[:, None] + 1) * t[None, :] + phase[:, None]) + noise * rng.standard_normal((n, length))
    return x[:, None, :].astype(np.float32), y.astype(np.int64)


def fail(message: str) -> None:
    """Bad input: one line on stderr and exit code 2, as the asyncsgd CLI does."""
    print(message, file=sys.stderr)
    sys.exit(2)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", help="the .npz file to write (arrays x and y)")
    p.add_argument("--n", type=int, default=3000, help="signals (default 3000)")
    p.add_argument("--length", type=int, default=40, help="samples per signal (default 40)")
    p.add_argument("--noise", type=float, default=0.3, help="standard deviation of the noise (default 0.3)")
    p.add_argument("--seed", type=int, default=7, help="generator seed (default 7)")
    p.error = lambda message: fail(f"make_npz: {message}")  # one line, not argparse's usage block
    a = p.parse_args()
    bad = (f"--n {a.n}: at least 4 signals" if a.n < 4 else
           f"--length {a.length}: at least 2 samples per signal" if a.length < 2 else
           f"--n {a.n} x --length {a.length}: at most {MAX_VALUES:,} values" if a.n * a.length > MAX_VALUES else
           f"--noise {a.noise}: a finite number, 0 or more" if not math.isfinite(a.noise) or a.noise < 0 else
           f"--seed {a.seed}: 0 or more" if a.seed < 0 else None)
    if bad:
        fail(f"make_npz: {bad}")
    x, y = sinusoids(a.n, a.length, noise=a.noise, seed=a.seed)
    try:
        np.savez(a.out, x=x, y=y)
    except OSError as e:
        fail(f"make_npz: cannot write {a.out} ({e.strerror or e})")
    print(f"{a.out}: x {x.shape}, y {y.shape}, classes {np.bincount(y).tolist()}")


if __name__ == "__main__":
    main()
