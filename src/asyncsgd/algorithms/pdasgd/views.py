"""How a layer's gradient reaches its update while the backward pass is still running.

Every forward thread runs its own module tree whose parameters and buffers ARE the shared
tensors (ViewedReplica). When a module runs, a forward pre-hook swaps in a fresh view
(`p.view_as(p)`) of each of its shared parameters; autograd treats the view as a node of its
own, so a tensor hook on it fires exactly when that layer's gradient has been computed, for
this pass only. The backward thread's hook applies the layer's update to the shared parameter
(through .data, so autograd's version checks never fire), and the pass is run with
torch.autograd.grad over the views, so nothing is accumulated in a .grad that threads would share.
"""

from __future__ import annotations

import copy
import functools

import torch


def shared_replica(model: torch.nn.Module) -> torch.nn.Module:
    """A new module tree whose parameters and buffers are the model's own tensors (shared).
    A forward thread swaps per-pass views into the modules it runs, so each needs its own tree."""
    memo = {id(t): t for t in list(model.parameters()) + list(model.buffers())}
    return copy.deepcopy(model, memo)


class ViewedReplica:
    """A forward thread's module tree (shared_replica) run on per-pass views of the parameters.

    Why views made when each module runs, not all at the start: autograd runs ready nodes in
    reverse creation order, so a view created before the forward would have its node (and our
    hook) run after everything else, at the very end of the backward. A view created in the
    module's forward pre-hook sits just below that module's own operations, so its gradient is
    delivered as soon as the module's backward has run. The pre-hook also notes the layer's
    version then: the moment the forward reads that layer.
    A parameter used outside its own module's call (read by a parent before the module runs)
    gets the pass's early view, made at the start; both kinds are inputs of the backward.
    """

    def __init__(self, model: torch.nn.Module, params: list, version_of, snapshot: bool = False):
        """snapshot (--backward-weights forward): each module runs on a private copy of its
        parameters taken when it runs (p.clone()), so the graph saves that copy, not the live
        shared tensor, and the backward computes the exact gradient at the weights the forward
        read. Without it (current) the graph saves views of the live parameters: a pending
        backward then uses whatever other threads wrote since its forward."""
        self.module = shared_replica(model)
        self.params, self.version_of, self.snapshot = params, version_of, snapshot
        index = {id(p): i for i, p in enumerate(params)}  # by identity: tied weights are one layer
        self.slots = []  # (module, attribute, layer)
        for mod in self.module.modules():
            mine = [(n, index[id(p)]) for n, p in mod._parameters.items() if p is not None and id(p) in index]
            if mine:
                self.slots += [(mod, n, i) for n, i in mine]
                mod.register_forward_pre_hook(functools.partial(self._enter, mine))
        self.late = self.read = self.hook = None

    def _enter(self, mine, module, args) -> None:
        if self.late is None:
            return
        for n, i in mine:
            v = self.late[i]
            if v is None:  # first call of this module in this pass (a reused module keeps its view)
                p = self.params[i]
                self.read[i] = self.version_of(i)  # read before the copy: a write in between counts as stale
                v = self.late[i] = p.clone() if self.snapshot else p.view_as(p)
                if self.hook is not None:
                    v.register_hook(functools.partial(self.hook, i))
            module._parameters[n] = v

    def __call__(self, x, read: list, hook=None):
        """The model's output on x and the pass's views [(layer, view)]; read[i] is set to the
        version of layer i when the forward read it. hook(i, grad), if given, is registered on
        every view as it is made (here, on the forward thread, not by the backward that runs it)."""
        early = [p.view_as(p) for p in self.params]
        if hook is not None:
            for i, v in enumerate(early):
                v.register_hook(functools.partial(hook, i))
        self.late, self.read, self.hook = [None] * len(self.params), read, hook
        for mod, n, i in self.slots:
            mod._parameters[n] = early[i]
        try:
            out = self.module(x)
        finally:
            for mod, n, i in self.slots:
                mod._parameters[n] = self.params[i]
            late, self.late, self.read, self.hook = self.late, None, None, None
        return out, list(enumerate(early)) + [(i, v) for i, v in enumerate(late) if v is not None]
