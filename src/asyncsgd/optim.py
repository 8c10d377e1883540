"""SGD applied one parameter tensor ("layer") at a time, and the learning-rate schedule.

Why not torch.optim.SGD: PD-ASGD updates each layer the moment its gradient exists, from
several threads, and Hogwild! updates a shared model from several processes. Both need an
update that (1) touches one tensor, (2) takes the gradient as an argument instead of reading
a shared .grad buffer another thread may be writing, and (3) writes through `.data`, so
autograd's in-place version check never fires on a tensor a pending backward has saved.
The maths is torch.optim.SGD's (momentum with dampening 0, optional Nesterov, L2 weight
decay added to the gradient), so sequential runs match torch.optim.SGD step for step.

--clip-grad-norm C scales a gradient down to norm C when it is longer, as
torch.nn.utils.clip_grad_norm_ does, before decay and momentum. A whole-model ("block") step
clips by the norm of all its gradients together, exactly that function's rule. A layer-wise
update clips each layer by its own norm: when one layer's gradient is ready the others do not
exist yet, so no whole-model norm can be waited for without giving up the layer-wise update.
"""

from __future__ import annotations

import math

import torch


class LayerSGD:
    """Momentum SGD over a list of parameters, updated one index at a time, lock-free.

    One thread uses a LayerSGD at a time (each Hogwild! process, pdasgd backward thread and lpap
    thread makes its own, as each keeps its own momentum): it keeps scratch tensors (_norm_out)."""

    def __init__(self, params, momentum: float = 0.0, nesterov: bool = False, weight_decay: float = 0.0,
                 buffers: list[torch.Tensor] | None = None, clip_grad_norm: float = 0.0):
        """params: their storage must stay where it is from here on (tensors.flatten_params comes
        first): the updates write through each parameter's `.data`, taken once, here."""
        self.params = list(params)
        self.momentum, self.nesterov, self.weight_decay = momentum, nesterov, weight_decay
        self.clip_grad_norm = clip_grad_norm  # 0: no clipping
        # Momentum buffers may live in shared memory (given) so a checkpoint can save them.
        self.buffers = buffers if buffers is not None else (
            [torch.zeros_like(p.data) for p in self.params] if momentum > 0 else [])
        # What one layer's update hands the kernel, made once: pdasgd makes its updates inside
        # autograd's backward, between two kernels, where each Python line runs slower than it does
        # in a loop, and making these on every call (`.data`, the buffer's slice, the norm's and the
        # clip's device checks) cost 40-60 us of a 1,450-1,500 us cnn1d engine pass (four runs of
        # bench/update_kernel.py; docs/pdasgd.md, "A leaner layer update").
        self._data = [[p.data] for p in self.params]
        self._buffer = [self.buffers[i:i + 1] for i in range(len(self.params))]
        self._kernel_args = dict(weight_decay=weight_decay, momentum=momentum, dampening=0.0, nesterov=nesterov,
                                 maximize=False, is_first_step=False)
        # A CPU layer's gradient norm is written into that layer's 0-d tensor here (None on a GPU,
        # where the norm stays on the device): a new one per update is an allocation
        # (posix_memalign) between autograd's kernels, which a py-spy --native profile of the engine
        # pass showed as a third of the norm's samples (bench/update_kernel.py).
        self._norm_out = [torch.empty((), dtype=p.dtype) if p.device.type == "cpu" else None for p in self.params]

    def _clip_factor(self, norm: torch.Tensor, on_cpu: bool):
        """torch.nn.utils.clip_grad_norm_'s factor for gradients of this norm (a layer's, or a block's
        total), or None for "leave them": on the CPU reading the norm is free, and most updates then
        skip the multiply (95-96% of the layer updates at clip 1 in bench/grad_norms.py's mnist1d
        runs); on a GPU the factor stays a tensor (no device sync). on_cpu: where the norm is, which
        the caller already knows (a layer update asks inside a backward, where even a device check
        is paid with cold caches: docs/pdasgd.md, "A leaner layer update")."""
        if not on_cpu:
            return (self.clip_grad_norm / (norm + 1e-6)).clamp(max=1.0)
        n = float(norm) + 1e-6
        return self.clip_grad_norm / n if n > self.clip_grad_norm else None

    # No torch.no_grad() here or in step: every operand is outside autograd already (the parameter
    # through .data, the momentum buffers, gradients from autograd.grad without create_graph), and
    # the decorator's context cost a few microseconds per call, 8 calls per pdasgd pass on cnn1d.
    def update(self, index: int, grad: torch.Tensor, lr: float) -> None:
        """One layer's update in place, the gradient clipped by its own norm (--clip-grad-norm)."""
        if self.clip_grad_norm:
            out = self._norm_out[index]  # None on a GPU
            norm = torch.linalg.vector_norm(grad) if out is None else torch.linalg.vector_norm(grad, out=out)
            if (factor := self._clip_factor(norm, on_cpu=out is not None)) is not None:
                grad = grad * factor
        self._fused(self._data[index], [grad], self._buffer[index], lr)

    def _fused(self, params: list, grads: list, buffers: list, lr: float) -> None:
        """torch.optim.SGD(fused=True)'s kernel (torch._fused_sgd_), called directly: the functional
        torch.optim.sgd path first groups the tensors by device and dtype in Python, which costs more
        than the update itself for one layer. One kernel does decay, momentum (dampening 0, optional
        Nesterov) and the step, bit for bit torch.optim.SGD(fused=True) (test_optim.py; the three
        in-place ops it replaced round differently in the last bit), and a block step makes one call
        for the whole model. `python bench/update_kernel.py` (cnn1d, one thread, four runs): a plain
        pass with a block step takes 0.939-0.977x the time of the three-op form, pdasgd's layer-wise
        engine pass 0.916-1.007x (docs/pdasgd.md, "One kernel per update")."""
        torch._fused_sgd_(params, grads, buffers, lr=lr, **self._kernel_args)

    def step(self, grads, lr: float, scale: float = 1.0) -> None:
        """Update every layer (a whole-model, "block" update); grads in parameter order, clipped
        by their norm together (--clip-grad-norm)."""
        grads = [g if g is None or scale == 1.0 else g * scale for g in grads]
        if self.clip_grad_norm:
            norm = total_norm([g for g in grads if g is not None])
            factor = self._clip_factor(norm, on_cpu=norm.device.type == "cpu")
            if factor is not None:
                grads = [g if g is None else g * factor for g in grads]
        given = [i for i, g in enumerate(grads) if g is not None]
        params = [self._data[i][0] for i in given]
        buffers = [self.buffers[i] for i in given] if self.momentum else []
        grads = [grads[i] for i in given]
        if len({(g.device, g.dtype) for g in grads}) == 1:  # one kernel call for the whole model
            self._fused(params, grads, buffers, lr)
        else:  # the kernel takes tensors of one device and dtype
            for i, (p, g) in enumerate(zip(params, grads)):
                self._fused([p], [g], buffers[i:i + 1], lr)

    def state(self) -> list[torch.Tensor]:
        return [b.clone() for b in self.buffers]

    def load_state(self, buffers: list[torch.Tensor]) -> None:
        for b, saved in zip(self.buffers, buffers):
            b.copy_(saved)


def total_norm(grads: list[torch.Tensor]) -> torch.Tensor:
    """torch.nn.utils.get_total_norm (the 2-norm of all the tensors together) for tensors on one
    device and of one dtype, as a model's gradients are: the same foreach kernel without that
    function's grouping by device and dtype, which was half its cost per call (16.7 against 33.8 us
    on cnn1d's 8 gradients, one torch thread)."""
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))


def decay_fraction(cfg, samples_done: int, total_samples: int) -> float:
    """How far the schedule has come down from its peak: the lr over cfg.lr once the warm-up is
    over, 1.0 during it. --staleness cap releases its damping of stale updates by this: released by
    the lr alone, the warm-up's small lr undamped them while the network was still at its sharpest,
    and 1F:1B collapsed to chance an epoch in (docs/pdasgd.md, "cap")."""
    if samples_done < cfg.warmup_epochs / cfg.epochs * total_samples:
        return 1.0
    return learning_rate(cfg, samples_done, total_samples) / cfg.lr


def learning_rate(cfg, samples_done: int, total_samples: int) -> float:
    """The lr at a point of GLOBAL progress (samples by all workers): warm-up, then the schedule."""
    warmup = cfg.warmup_epochs / cfg.epochs * total_samples
    if warmup > 0 and samples_done < warmup:
        return cfg.lr * (samples_done + 1) / warmup
    frac = min(1.0, (samples_done - warmup) / max(1.0, total_samples - warmup))
    if cfg.schedule == "cosine":
        return cfg.lr * 0.5 * (1 + math.cos(math.pi * frac))
    if cfg.schedule == "step":
        done = samples_done / max(1, total_samples)
        return cfg.lr * cfg.lr_gamma ** sum(done >= s for s in cfg.lr_steps)
    return cfg.lr
