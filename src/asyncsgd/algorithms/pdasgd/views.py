"""A forward thread's module tree: when each layer is read, and (--backward-weights forward) the
private copy of the weights its backward will use.

Every forward thread runs its own module tree whose parameters and buffers ARE the shared
tensors (shared_replica). Each module that owns parameters has its forward wrapped in that tree,
and the wrapper notes each layer's version the moment the module runs (the forward's read of that
layer); with snapshot it also swaps in a private copy (`p.clone()`) of each of the module's
parameters, so the graph saves that copy and the backward computes the exact gradient at the
weights the forward read.

How the gradients reach their updates is not this module's business: the engine (threads.py)
hooks the shared parameters themselves, once (Decoupled._leaf_grad).
"""

from __future__ import annotations

import copy
import functools

import torch


def shared_replica(model: torch.nn.Module) -> torch.nn.Module:
    """A new module tree whose parameters and buffers are the model's own tensors (shared).
    A forward thread notes its reads (and swaps in copies) through its own tree's hooks."""
    memo = {id(t): t for t in list(model.parameters()) + list(model.buffers())}
    return copy.deepcopy(model, memo)


class ReadingReplica:
    """A forward thread's module tree (shared_replica) that notes when each layer is read.

    A parameter used outside its own module's call (read by a parent before or without the module
    running) keeps the version noted when the pass started and, with snapshot, is read live.
    """

    def __init__(self, model: torch.nn.Module, params: list, version_of, snapshot: bool = False):
        """version_of(i): layer i's version now (the engine's _read); snapshot: --backward-weights
        forward (each module runs on a private copy of its parameters, taken when it runs)."""
        self.module = shared_replica(model)
        self.params, self.version_of, self.snapshot = params, version_of, snapshot
        index = {id(p): i for i, p in enumerate(params)}  # by identity: tied weights are one layer
        self.slots = []  # (module, attribute, layer)
        for mod in self.module.modules():
            mine = [(n, index[id(p)]) for n, p in mod._parameters.items() if p is not None and id(p) in index]
            if mine:
                self.slots += [(mod, n, i) for n, i in mine]
                # The module's own forward, wrapped in this tree (an instance attribute), rather than
                # a forward pre-hook: a module with hooks takes nn.Module's slower call path on every
                # call, and the wrapper cost 0.5-4% less per cnn1d engine pass (bench/pass_cost.py;
                # docs/pdasgd.md, "One kernel per update").
                mod.forward = functools.partial(self._run, mine, mod, mod.forward)
        self.read = self.copies = None

    def _run(self, mine, module, forward, *args, **kwargs):
        self._enter(mine, module, args)
        return forward(*args, **kwargs)

    def _enter(self, mine, module, args) -> None:
        if self.read is None:
            return
        for n, i in mine:
            if self.copies[i] is None:  # the first call of a layer's module in this pass is its read
                self.read[i] = self.version_of(i)  # read before the copy: a write in between counts as stale
                self.copies[i] = self.params[i].clone() if self.snapshot else self.params[i]
            if self.snapshot:  # a reused module, or a tied weight's other module, runs on the same copy
                module._parameters[n] = self.copies[i]

    def __call__(self, x, read: list):
        """The model's output on x; read[i] is set to the version of layer i when the forward read it."""
        self.read, self.copies = read, [None] * len(self.params)
        try:
            return self.module(x)
        finally:
            self.read = self.copies = None
            if self.snapshot:
                for mod, n, i in self.slots:
                    mod._parameters[n] = self.params[i]
