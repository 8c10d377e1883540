"""Model FLOPs utilization: FLOPs per training sample, the machine's peak, and their ratio.

- flops_per_sample(task): torch.utils.flop_counter.FlopCounterMode counts the FLOPs of one
  forward plus backward pass of the task's model on one batch of training data (matmuls,
  convolutions, attention: the operators FlopCounterMode knows; elementwise ops, the loss and
  the optimizer step are not counted, the usual MFU convention), divided by the batch size.
- measure_peak_flops(device): the achievable dense-matmul FLOP/s of this machine, measured by
  a short micro-benchmark: n x n float32 matmuls (2 n^3 FLOPs each) repeated for about
  `seconds`, using every CPU core (torch.set_num_threads(os.cpu_count()) for the duration) or
  one CUDA device. It is a measured peak, not the vendor's datasheet number; give the datasheet
  number with `asyncsgd bench --peak-flops F` to compare against that instead.
- MFU = flops_per_sample * samples_per_s / peak_flops.
"""

from __future__ import annotations

import os
import time

import torch


def flops_per_sample(task, batch_size: int = 32, device: str = "cpu") -> float | None:
    """FLOPs of forward + backward per training sample of task's model, or None if not countable."""
    from torch.utils.data import TensorDataset, default_collate
    from torch.utils.flop_counter import FlopCounterMode

    from .tensors import loss_fn

    data = task.train_set
    n = min(batch_size, len(data))
    if n == 0:
        return None
    if isinstance(data, TensorDataset):
        x, y = (t[:n] for t in data.tensors)
    else:
        x, y = default_collate([data[i] for i in range(n)])
    torch.manual_seed(0)
    model = task.model_fn().to(device)
    model.train()
    x, y = x.to(device), y.to(device)
    counter = FlopCounterMode(display=False)
    try:
        with counter:
            loss = loss_fn(task.loss)(model(x), y)
            loss.backward()
    except Exception:  # an exotic model the counter cannot follow: MFU is then reported as null
        return None
    total = counter.get_total_flops()
    return float(total) / n if total else None


def measure_peak_flops(device: str = "cpu", seconds: float = 1.0, n: int = 1024,
                       dtype: torch.dtype = torch.float32) -> dict:
    """Dense n x n matmul FLOP/s on device; returns {'flops': F, 'method': text, ...}."""
    on_cuda = device.startswith("cuda")
    old_threads = torch.get_num_threads()
    threads = os.cpu_count() or 1
    if not on_cuda:
        torch.set_num_threads(threads)
    try:
        if on_cuda and n == 1024:
            n = 8192  # big enough to keep a datacenter GPU busy
        g = torch.Generator(device=device).manual_seed(0)
        a = torch.randn(n, n, device=device, dtype=dtype, generator=g)
        b = torch.randn(n, n, device=device, dtype=dtype, generator=g)
        sync = torch.cuda.synchronize if on_cuda else (lambda: None)
        for _ in range(3):  # warm up (thread pool, kernels, clocks)
            c = a @ b
        sync()
        count, t0 = 0, time.perf_counter()
        while True:
            c = a @ b
            count += 1
            if count % (8 if on_cuda else 1) == 0:
                sync()
                elapsed = time.perf_counter() - t0
                if elapsed >= seconds:
                    break
        del c
    finally:
        if not on_cuda:
            torch.set_num_threads(old_threads)
    flops = 2.0 * n ** 3 * count / elapsed
    where = f"{device}, {threads} threads" if not on_cuda else device
    return {"flops": flops, "dtype": str(dtype).replace("torch.", ""), "matmul_size": n, "matmuls": count,
            "seconds": round(elapsed, 3),
            "method": f"{n}x{n} {str(dtype).replace('torch.', '')} matmul micro-benchmark ({where}), "
                      f"{count} matmuls in {elapsed:.2f} s"}


def mfu(flops_per_sample_: float | None, samples_per_s: float | None, peak_flops: float | None) -> float | None:
    if not flops_per_sample_ or samples_per_s is None or not peak_flops:
        return None
    return flops_per_sample_ * samples_per_s / peak_flops
