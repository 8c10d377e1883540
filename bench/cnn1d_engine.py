"""What bench/pass_cost.py and bench/pipeline_ceiling.py share: cnn1d (mnist1d's model) at batch 32
on one torch thread, pdasgd's default optimizer (momentum 0.9, clip 1), and a pdasgd engine
(threads.Decoupled) on it with the parts of a WorkerContext the engine uses, records discarded."""
from types import SimpleNamespace

import torch

from asyncsgd.algorithms.pdasgd.threads import Decoupled
from asyncsgd.board import Board
from asyncsgd.optim import LayerSGD
from asyncsgd.tasks import get_task

LR = 1e-4  # small enough that the weights barely move: every pass costs the same
torch.set_num_threads(1)
torch.manual_seed(0)
model = get_task("mnist1d").model_fn()
params = [p for p in model.parameters() if p.requires_grad]
x, y = torch.randn(32, 1, 40), torch.randint(0, 10, (32,))
loss_fn = torch.nn.functional.cross_entropy


def make_opt(ps):
    return LayerSGD(ps, momentum=0.9, clip_grad_norm=1.0)


def engine(forward_threads: int = 1, backward_threads: int = 1, batches=lambda: None) -> Decoupled:
    """A layer-wise engine on the model; batches: the forward threads' batch source (None: done)."""
    ctx = SimpleNamespace(board=Board(1, 1, 1, 1, 1, layers=len(params)), rank=0, spec=SimpleNamespace(model=model),
                          device=torch.device("cpu"), optimizer=make_opt, fetch=lambda k: (x, y), loss=loss_fn,
                          lr=lambda: LR, decay_fraction=lambda: 1.0, batch_source=lambda: batches,
                          record_staleness=lambda values: None, record=lambda *a, **k: None)
    return Decoupled(ctx, forward_threads, backward_threads, forward_threads, "layer")


def no_arguments(doc: str, script: str) -> None:
    """A script that takes no arguments: --help prints its doc, anything else exits 2."""
    import sys
    if sys.argv[1:] in (["-h"], ["--help"]):
        print(doc)
        sys.exit(0)
    if sys.argv[1:]:
        print(f"{script}: unexpected argument {sys.argv[1]!r}; accepted: none, or --help", file=sys.stderr)
        sys.exit(2)


def per_pass_us(fn, passes: int) -> float:
    """Microseconds per call of fn, over `passes` calls."""
    import time
    t = time.perf_counter()
    for _ in range(passes):
        fn()
    return (time.perf_counter() - t) / passes * 1e6


def interleaved(arms: dict, rounds: int, passes: int) -> dict:
    """{arm: [microseconds per pass, one per round]}: the arms one after the other in every round,
    after a warm-up (oneDNN's kernels, the allocator), so that a slow spell of the machine lands on
    all of them."""
    for fn in arms.values():
        per_pass_us(fn, 100)
    results = {name: [] for name in arms}
    for _ in range(rounds):
        for name, fn in arms.items():
            results[name].append(per_pass_us(fn, passes))
    return results
