"""optim.LayerSGD: torch.optim.SGD's maths one tensor at a time, and --clip-grad-norm as
torch.nn.utils.clip_grad_norm_ clips (the whole model's norm in a block step, each layer's own in
a layer-wise update), reaching the optimizer of real and simulated runs alike."""

from __future__ import annotations

import pytest
import torch

from asyncsgd.config import RunConfig
from asyncsgd.optim import LayerSGD
from asyncsgd.runner import run


def model_and_grads(seed: int, steps: int = 4):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.ReLU(), torch.nn.Linear(5, 3))
    grads = [[torch.randn_like(p) * 3 for p in model.parameters()] for _ in range(steps)]
    return model, grads


def torch_reference(seed: int, clip: float, per_layer: bool, **sgd):
    """torch.optim.SGD over the same gradients, clipped by clip_grad_norm_ (whole or per tensor)."""
    model, grads = model_and_grads(seed)
    params = list(model.parameters())
    opt = torch.optim.SGD(params, lr=0.1, **sgd)
    for step in grads:
        for p, g in zip(params, step):
            p.grad = g.clone()
        if clip:
            for group in ([[p] for p in params] if per_layer else [params]):
                torch.nn.utils.clip_grad_norm_(group, clip)
        opt.step()
    return [p.detach() for p in params]


@pytest.mark.parametrize("sgd", [dict(momentum=0.9), dict(momentum=0.9, nesterov=True, weight_decay=0.01), {}])
@pytest.mark.parametrize("clip", [0.0, 0.5])
def test_block_step_is_torch_sgd_after_clip_grad_norm(sgd, clip):
    model, grads = model_and_grads(1)
    opt = LayerSGD(model.parameters(), clip_grad_norm=clip, **sgd)
    for step in grads:
        opt.step(step, 0.1)
    for mine, ref in zip(model.parameters(), torch_reference(1, clip, per_layer=False, **sgd)):
        torch.testing.assert_close(mine.detach(), ref)


@pytest.mark.parametrize("sgd", [dict(momentum=0.9), dict(momentum=0.9, nesterov=True, weight_decay=0.01), {}])
@pytest.mark.parametrize("layer_wise", [False, True])
def test_the_update_is_torch_fused_sgd_bit_for_bit(sgd, layer_wise):
    """LayerSGD calls torch.optim.SGD(fused=True)'s kernel, per layer or once per block step: the
    same bits, not only close ones."""
    model, grads = model_and_grads(3)
    opt = LayerSGD(model.parameters(), **sgd)
    ref_model, _ = model_and_grads(3)
    ref_params = list(ref_model.parameters())
    ref = torch.optim.SGD(ref_params, lr=0.1, fused=True, **sgd)
    for step in grads:
        if layer_wise:
            for i, g in reversed(list(enumerate(step))):
                opt.update(i, g, 0.1)
        else:
            opt.step(step, 0.1)
        for p, g in zip(ref_params, step):
            p.grad = g.clone()
        ref.step()
    for mine, theirs in zip(model.parameters(), ref_params):
        assert torch.equal(mine.detach(), theirs.detach())


@pytest.mark.parametrize("clip", [0.0, 0.5])
def test_layer_update_clips_each_layer_by_its_own_norm(clip):
    model, grads = model_and_grads(2)
    opt = LayerSGD(model.parameters(), momentum=0.9, clip_grad_norm=clip)
    for step in grads:
        for i, g in reversed(list(enumerate(step))):  # as a backward produces them
            opt.update(i, g, 0.1)
    for mine, ref in zip(model.parameters(), torch_reference(2, clip, per_layer=True, momentum=0.9)):
        torch.testing.assert_close(mine.detach(), ref)
    if clip:  # and the clip did act: the whole-model rule gives other weights
        whole = torch_reference(2, clip, per_layer=False, momentum=0.9)
        assert any(not torch.allclose(m.detach(), w) for m, w in zip(model.parameters(), whole))


@pytest.mark.parametrize("runtime,algorithm", [("real", "sequential"), ("real", "pdasgd"), ("sim", "dasgd")])
def test_clip_grad_norm_reaches_the_runs_optimizer(tmp_path, runtime, algorithm):
    """A clip of 1e-6 leaves every step ~1e-7 long: the training loss cannot fall, where it does
    at the same settings without the clip. An option accepted and ignored fails here."""
    def final_loss(clip: float) -> float:
        cfg = RunConfig(algorithm=algorithm, task="logreg", runtime=runtime, workers=1 if runtime == "real" else 2,
                        epochs=1.0, lr=0.5, clip_grad_norm=clip, progress="none", eval_points=2,
                        threads_per_worker=1, out=str(tmp_path / f"{runtime}-{algorithm}-{clip}"))
        return run(cfg)["final_train_loss"]

    free, clipped = final_loss(0.0), final_loss(1e-6)
    assert free < 0.6 < clipped, (free, clipped)  # logreg starts at 0.78


def test_a_block_step_over_mixed_dtypes_updates_each_tensor():
    """The kernel takes tensors of one device and dtype per call: a model with a float64 part is
    stepped tensor by tensor, to the same values as torch.optim.SGD(fused=True)."""
    torch.manual_seed(4)
    params = [torch.randn(5, 3), torch.randn(3, dtype=torch.float64)]
    ref_params = [p.clone().requires_grad_() for p in params]
    opt = LayerSGD(params, momentum=0.9)
    ref = torch.optim.SGD(ref_params, lr=0.1, momentum=0.9, fused=True)
    for _ in range(3):
        grads = [torch.randn_like(p) for p in params]
        opt.step(grads, 0.1)
        for p, g in zip(ref_params, grads):
            p.grad = g.clone()
        ref.step()
    for mine, theirs in zip(params, ref_params):
        assert mine.dtype == theirs.dtype and torch.equal(mine, theirs.detach())


def test_updates_land_in_the_flat_vector_the_parameters_view():
    """LayerSGD takes each parameter's `.data` once, when it is made, so it is made after
    tensors.flatten_params (as every schedule does): its layer updates and block steps then write
    into the one vector that dasgd, lpap and layup send and average, and the parameters see them."""
    from asyncsgd.tensors import flatten_params
    model, grads = model_and_grads(5)
    params = list(model.parameters())
    flat = flatten_params(params)
    opt = LayerSGD(params, momentum=0.9, clip_grad_norm=0.5)
    before = flat.clone()
    opt.update(0, grads[0][0], 0.1)
    opt.step(grads[1], 0.1)
    offset = 0
    for p in params:
        assert p.data_ptr() == flat[offset:].data_ptr()  # still a view of the vector
        assert not torch.equal(flat[offset:offset + p.numel()], before[offset:offset + p.numel()])
        offset += p.numel()
