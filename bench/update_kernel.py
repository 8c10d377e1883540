#!/usr/bin/env python
"""What LayerSGD's one-kernel update saves per pass, cnn1d (mnist1d's model), batch 32, one torch
thread, momentum 0.9 and clip 1 (bench/cnn1d_engine.py). Two optimizers, four arms interleaved
over rounds in one process (medians of microseconds per pass):

- ops: the update as torch.optim.SGD's single-tensor path writes it, three in-place ops
  (buf.mul_(momentum).add_(d); p.add_(buf, alpha=-lr)), and a new 0-d tensor for each layer's
  gradient norm: LayerSGD before 2026-12-06 (late);
- per call: one torch._fused_sgd_ call per layer update (per block step: one for the whole model)
  and the norm written into a kept 0-d tensor, with the kernel's arguments (`.data`, the buffer's
  slice, the device checks of the norm and the clip) made on every call: LayerSGD before
  2026-12-07 (night);
- kernel: LayerSGD now, the same kernel, its arguments made once when the optimizer is made;

each in a plain pass (forward, torch.autograd.grad, a block step: Hogwild!'s and sequential's)
and in pdasgd's engine pass (each layer updated from its parameter hook as its gradient appears).

    python bench/update_kernel.py
"""
import copy
import statistics

import torch

import cnn1d_engine
from asyncsgd.optim import LayerSGD, total_norm

cnn1d_engine.no_arguments(__doc__, "update_kernel.py")


class ThreeOps(LayerSGD):
    """The update as three in-place ops and a freshly allocated norm (momentum only: no weight decay,
    no Nesterov, which the runs timed here do not use)."""

    def update(self, index, grad, lr):
        norm = torch.linalg.vector_norm(grad)
        factor = self._clip_factor(norm, norm.device.type == "cpu")
        self._apply(index, grad if factor is None else grad * factor, lr)

    def _apply(self, index, grad, lr):
        buf = self.buffers[index]
        buf.mul_(self.momentum).add_(grad)
        self.params[index].data.add_(buf, alpha=-lr)

    def step(self, grads, lr, scale=1.0):
        norm = total_norm(list(grads))
        factor = self._clip_factor(norm, norm.device.type == "cpu")
        for i, g in enumerate(grads):
            self._apply(i, g if factor is None else g * factor, lr)


class PerCall(LayerSGD):
    """The one-kernel update with its arguments made on every call, as LayerSGD.update made it
    before 2026-12-07 (night)."""

    def _norm(self, grad):
        if grad.device.type != "cpu":
            return torch.linalg.vector_norm(grad)
        if self._scratch is None or self._scratch.dtype != grad.dtype:
            self._scratch = torch.empty((), dtype=grad.dtype)
        return torch.linalg.vector_norm(grad, out=self._scratch)

    def update(self, index, grad, lr):
        if self.clip_grad_norm:
            norm = self._norm(grad)
            if (factor := self._clip_factor(norm, norm.device.type == "cpu")) is not None:
                grad = grad * factor
        self._apply(index, grad, lr)

    def _apply(self, index, grad, lr):
        self._fused([self.params[index].data], [grad], self.buffers[index:index + 1], lr)

    def _fused(self, params, grads, buffers, lr):
        torch._fused_sgd_(params, grads, buffers, weight_decay=self.weight_decay, momentum=self.momentum,
                          lr=lr, dampening=0.0, nesterov=self.nesterov, maximize=False, is_first_step=False)

    _scratch = None


def arms_for(name: str, cls) -> dict:
    """A plain pass and an engine pass, each on its own copy of the model, with optimizer class cls."""
    cnn1d_engine.make_opt = lambda ps: cls(ps, momentum=0.9, clip_grad_norm=1.0)
    cnn1d_engine.model = model = copy.deepcopy(cnn1d_engine.model)
    cnn1d_engine.params = params = list(model.parameters())
    opt = cnn1d_engine.make_opt(params)
    engine = cnn1d_engine.engine()
    replica = engine.replica()
    x, y, loss_fn, lr = cnn1d_engine.x, cnn1d_engine.y, cnn1d_engine.loss_fn, cnn1d_engine.LR
    return {f"plain, {name}": lambda: opt.step(torch.autograd.grad(loss_fn(model(x), y), params), lr),
            f"engine, {name}": lambda: engine.backward(engine.forward(replica, 0), 0)}


results = cnn1d_engine.interleaved({**arms_for("ops", ThreeOps), **arms_for("per call", PerCall),
                                   **arms_for("kernel", LayerSGD)}, rounds=31, passes=200)
median = {name: statistics.median(v) for name, v in results.items()}
for name, v in results.items():
    print(f"{name}: {median[name]:.0f} us per pass (quartiles {statistics.quantiles(v, n=4)[0]:.0f}-"
          f"{statistics.quantiles(v, n=4)[2]:.0f})")
for kind in ("plain", "engine"):
    print(f"{kind}: kernel / ops {median[f'{kind}, kernel'] / median[f'{kind}, ops']:.3f}, kernel / per call "
          f"{median[f'{kind}, kernel'] / median[f'{kind}, per call']:.3f} "
          f"({median[f'{kind}, kernel'] - median[f'{kind}, per call']:+.0f} us)")
print(f"engine / plain: ops {median['engine, ops'] / median['plain, ops']:.3f}, "
      f"kernel {median['engine, kernel'] / median['plain, kernel']:.3f}")
