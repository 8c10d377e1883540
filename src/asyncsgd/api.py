"""The Python API: train any nn.Module factory on any map-style dataset with any algorithm.

    import asyncsgd
    summary = asyncsgd.train(model_fn, train_set, test_set, algorithm="hogwild", workers=2, epochs=3)

model_fn must be picklable (a module-level function or class, or functools.partial of one)
for algorithms that start processes. The returned dict is the run's summary.json.
"""

from __future__ import annotations


from .config import FIELD_NAMES, RunConfig, check_types
from .errors import ConfigError


def train(model_fn=None, train_set=None, test_set=None, *, algorithm: str | None = None, task: str | None = None,
          loss: str = "cross_entropy", num_classes: int | None = None, **settings) -> dict:
    """Train and return the summary. Give model_fn + datasets, or a built-in task name."""
    from .algorithms.registry import default_algorithm
    from .runner import run
    from .settings import check_options, check_resume
    from .tasks import Task

    unknown = sorted(set(settings) - set(FIELD_NAMES))
    if unknown:
        raise ConfigError(f"train(): unknown setting(s) {', '.join(unknown)}; accepted: {', '.join(FIELD_NAMES)}")
    settings = check_types({**settings, **({"algorithm": algorithm} if algorithm is not None else {}),
                            **({"task": task} if task is not None else {})})
    algorithm, task = settings.pop("algorithm", None), settings.pop("task", None)
    if settings.get("resume") is not None:
        check_resume(set(settings) | ({"algorithm"} if algorithm else set()) | ({"task"} if task else set()))
    check_options(algorithm or default_algorithm(), settings, settings.get("runtime"))
    import torch

    if model_fn is not None and (isinstance(model_fn, torch.nn.Module) or not callable(model_fn)):
        raise ConfigError(f"train(): model_fn {type(model_fn).__name__} is not accepted; accepted: a callable that "
                          "returns a new nn.Module (the class itself, or a function), not a model instance")
    cfg = RunConfig(algorithm=algorithm or default_algorithm(), **settings)
    if model_fn is None:
        if train_set is not None:
            raise ConfigError("train(): a train_set needs a model_fn; accepted: model_fn with train_set and test_set, or task=NAME")
        return run(cfg.replace(task=task or cfg.task))
    if train_set is None or test_set is None:
        raise ConfigError("train(): model_fn needs train_set and test_set; accepted: map-style datasets of (x, y)")
    if loss not in ("cross_entropy", "mse"):
        raise ConfigError(f"train(): loss {loss!r} is not accepted; accepted: cross_entropy, mse")
    if num_classes is not None and not (isinstance(num_classes, int) and not isinstance(num_classes, bool)
                                        and num_classes >= 2):
        raise ConfigError(f"train(): num_classes {num_classes!r} is not accepted; accepted: a whole number >= 2 "
                          "(or leave it unset)")
    builtin = sorted(k for k in ("model", "num_samples", "data_dir") if settings.get(k) is not None)
    if builtin:  # they choose or build a built-in task's model and data, which model_fn and the datasets replace
        raise ConfigError(f"train(): {builtin[0]}={settings[builtin[0]]!r} is not used with model_fn and datasets; "
                          "accepted with: task=NAME (a built-in task)")
    for name, ds in (("train_set", train_set), ("test_set", test_set)):
        _check_dataset(name, ds)
    info = {"train_samples": len(train_set), "test_samples": len(test_set)}
    if num_classes is not None:
        _check_num_classes(model_fn, test_set, num_classes)
        info["num_classes"] = num_classes
    name = getattr(model_fn, "__name__", None) or getattr(getattr(model_fn, "func", None), "__name__", "custom")
    user_task = Task(name=task or "custom", model_name=name, train_set=train_set, test_set=test_set,
                     model_fn=model_fn, loss=loss, num_classes=num_classes, info=info)
    return run(cfg.replace(task=user_task.name), task=user_task)


def _check_num_classes(model_fn, test_set, num_classes: int) -> None:
    """num_classes says how many class scores the model gives per sample: checked here, on the first
    test sample, so that a model of the wrong width fails with one line instead of training on."""
    import torch

    if len(test_set) == 0:
        return
    model = model_fn()
    x = torch.as_tensor(test_set[0][0]).unsqueeze(0)
    try:
        with torch.no_grad():
            out = model.eval()(x)
    except Exception as e:
        raise ConfigError(f"train(): the model of model_fn failed on the first test sample ({type(e).__name__}: "
                          f"{str(e).splitlines()[0][:120] if str(e) else ''}); accepted: a model that takes one "
                          "batch of the test set's inputs") from None
    width = out.shape[-1] if isinstance(out, torch.Tensor) and out.dim() >= 1 else None
    if width != num_classes:
        raise ConfigError(f"train(): num_classes {num_classes} is not what the model gives: {width} score(s) per "
                          "sample; accepted: the width of the model's output")


def _check_dataset(name: str, ds) -> None:
    """A map-style dataset of (x, y) pairs, checked on its first item, so that a wrong argument
    fails here with one line instead of in every worker."""
    ok = not isinstance(ds, (str, bytes)) and hasattr(ds, "__len__") and hasattr(ds, "__getitem__")
    if ok and len(ds) > 0:
        try:
            first = ds[0]
            ok = isinstance(first, (tuple, list)) and len(first) == 2
        except Exception:
            ok = False
    if not ok:
        raise ConfigError(f"train(): {name} {type(ds).__name__} is not accepted; accepted: a map-style dataset "
                          "whose items are (x, y) pairs, e.g. a TensorDataset(x, y)")
