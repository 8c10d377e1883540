"""ddp: synchronous data parallelism through torch.nn.parallel.DistributedDataParallel, the
baseline users run today (gloo on CPU, nccl when each process has a GPU: launch/worker.py).

Each process wraps its replica in DDP, which all-reduces the gradients bucket by bucket while
backward runs. Batches are strided as in sync (step s: batches s*N .. s*N+N-1, rank r takes
s*N+r) and the lr is scaled as in sync (--lr-scaling), so at equal settings ddp computes sync's
updates, up to the rounding of DDP's reduction (tests/test_ddp.py): ddp is sync done by DDP.

DDP averages the ranks' gradients with equal weights; sync weights each by its batch size. To
make a partial last step the same, each rank scales its loss by n_r * N / (the step's samples),
so DDP's mean is sync's weighted mean. A rank without a batch in the last step still joins the
all-reduce (every DDP rank must), with a batch weighted 0.

--delay is paid in a communication hook (register_comm_hook) per bucket: the hook sleeps the
latency (+ the bucket's bytes / bandwidth), then starts the bucket's all-reduce, so a model in B
buckets pays B latencies a step, as DDP over a real network pays one per bucket. The hooks count
the all-reduces and the seconds slept (summary.json "ddp"; per_worker idle_s holds the seconds
slept: the wait inside DDP's all-reduce overlaps backward and is not separated from it). A
straggler sleeps in its first bucket's hook (ctx.compute_done), so the others wait for it in
that all-reduce, as in sync.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import os
import tempfile

from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
from torch.nn.parallel import DistributedDataParallel

from ...delays import pay
from ..sync.rules import lr_factor

_DDP_ARGS = inspect.signature(DistributedDataParallel.__init__).parameters


def delayed_allreduce(ctx):
    """The comm hook: pay --delay for this bucket, then DDP's own all-reduce (mean over ranks)."""
    n, rank = ctx.world_size, ctx.rank
    collectives, paid_s, idle_s = (ctx.board.view(name) for name in ("collectives", "delay_paid_s", "idle_s"))

    def hook(state, bucket):  # no annotations: DDP compares them with the classes, and ours are strings
        ctx.compute_done()  # a straggler: its compute so far x slowdown, before its first bucket leaves
        buffer = bucket.buffer()
        nbytes = buffer.numel() * buffer.element_size()
        seconds = pay(ctx.delay, nbytes, ctx.rng)  # on the critical path: backward waits here
        collectives[rank] += 1
        paid_s[rank] += seconds
        idle_s[rank] += seconds
        ctx.count_message(bytes_=int(nbytes * 2 * (n - 1) / n), messages=2 * (n - 1))  # a ring all-reduce, as sync
        return default_hooks.allreduce_hook(state, bucket)
    return hook


@contextlib.contextmanager
def _inductor_cache_removed():
    """DDP's constructor makes TorchInductor's cache folder (torchinductor_<user> in the temp
    folder) although nothing is compiled, and it would outlive the run there: unless the user
    chose a cache folder, point it at a temporary one for the constructor and remove it after."""
    if "TORCHINDUCTOR_CACHE_DIR" in os.environ:
        yield
        return
    with tempfile.TemporaryDirectory(prefix="asyncsgd-ddp-") as tmp:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = tmp
        try:
            yield
        finally:
            del os.environ["TORCHINDUCTOR_CACHE_DIR"]


def run(ctx) -> None:
    replica = ctx.replica()
    replica.train()
    cuda = ctx.device.type == "cuda"
    # No buffer sync in forward: as in sync, each replica keeps its own buffers (BatchNorm
    # statistics), and the only collectives of a step are the buckets' (the hooks see every one).
    # newer torch names it forward_sync_buffers (which still syncs at init: the replicas are equal then)
    kwargs = {"forward_sync_buffers" if "forward_sync_buffers" in _DDP_ARGS else "broadcast_buffers": False}
    if ctx.cfg.bucket_cap_mb is not None:
        kwargs["bucket_cap_mb"] = ctx.cfg.bucket_cap_mb
    with _inductor_cache_removed():
        model = DistributedDataParallel(replica, device_ids=[ctx.device.index] if cuda else None, **kwargs)
    model.register_comm_hook(None, delayed_allreduce(ctx))
    params = [p for p in replica.parameters() if p.requires_grad]
    opt = ctx.optimizer(params)
    n, rank, plan = ctx.world_size, ctx.rank, ctx.plan
    lr_scale = lr_factor(ctx.cfg, n)  # as sync
    first_step = ctx.spec.start_batch // n
    num_steps = math.ceil(plan.num_batches / n)
    ctx.start()
    for step in range(first_step, num_steps):
        if ctx.board.stop[0]:
            break
        k = step * n + rank
        ks = range(step * n, min((step + 1) * n, plan.num_batches))
        step_samples = sum(min(plan.batch_size, plan.total - j * plan.batch_size) for j in ks)
        has_batch = k < plan.num_batches
        x, y = ctx.fetch(k if has_batch else plan.num_batches - 1)
        local = len(y) if has_batch else 0
        loss = ctx.loss(model(x), y)
        (loss * (local * n / step_samples)).backward()  # DDP's mean over ranks = sync's batch-weighted mean
        grads = [p.grad for p in params]
        opt.step(grads, lr_scale * ctx.lr(plan.samples_before(step * n)))
        for p in params:
            p.grad = None
        ctx.record(local, loss, staleness=0 if rank == 0 else None, model=replica, optimizer=opt, updates=int(rank == 0),
                   next_batch=(step + 1) * n)
    ctx.finish(replica)
