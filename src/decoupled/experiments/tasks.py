"""Tasks: what one run of a sweep trains. Your own model and data, or one of the built-in ones, in two forms.

* :class:`Task` (declarative): a model factory, the data (:class:`Data`: train / validation / test), optionally a
  loss and an error metric; the toolkit's own training loop runs it.
* :class:`LoopTask` (full control): your training function, called once per run with a :class:`Run` that builds
  the cell's optimizer and schedule over the parameters you pass and takes your per-epoch numbers.

The built-in tasks (MNIST-1D conv net, digits MLP, CIFAR-10 Shake-Shake) are :class:`Task` objects too
(:func:`builtin_task`): every run of every sweep goes through :class:`Run`.

What the toolkit does with a task, per run (cell: optimizer o, learning rate alpha, weight decay lambda; seed s):

1. seed Python's, numpy's and torch's generators with s (the same s in every cell: cells differ only in their
   hyperparameters, so their comparison is less noisy);
2. build the optimizer over your parameters: o in {adam, adamw} is :class:`decoupled.AdamW`, o in {sgd, sgdw}
   :class:`decoupled.SGDW`, with ``lr = alpha`` and lambda in o's convention: adamw/sgdw decoupled,
   ``theta <- theta - eta_t * lambda * theta``; adam/sgd L2, ``g <- g + lambda * theta``;
3. the schedule sets ``lr_t = eta_t * alpha`` every batch: cosine ``eta_t = 0.5 (1 + cos(pi t / T))`` with t and T
   in epochs (t advancing by 1 / steps_per_epoch per batch), or constant ``eta_t = 1``;
4. after every epoch it records the mean training loss and the validation and test errors; the validation error
   picks each optimizer's best cell, the test error reports it;
5. a non-finite loss, parameter or reported number ends the run as *diverged* (counted as 100% error); an
   exception, or a run that never builds its optimizer, reports an epoch more or fewer than ``epochs``, or
   reports an error outside [0, 1], is a *failed* run with its error message (stored; the next sweep on the
   folder retries it). Either way the sweep goes on.

Example (the declarative form; ``decoupled sweep --task this_file.py:task``)::

    def model():
        return nn.Sequential(nn.Flatten(), nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))

    def data():
        x, y = ...  # tensors
        return Data(train=(x[:1000], y[:1000]), val=(x[1000:1400], y[1000:1400]), test=(x[1400:], y[1400:]))

    task = Task(model=model, data=data, batch_size=64, name="digits-mlp")
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import importlib.util
import math
import sys
import traceback
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Union

import torch
from torch import Tensor, nn

import decoupled

from .config import OPTIMIZERS, ModelConfig, RunConfig

__all__ = [
    "Data",
    "Diverged",
    "LoopTask",
    "Run",
    "Task",
    "TaskError",
    "builtin_task",
    "classification_error",
    "data_fingerprint",
    "load_task",
    "make_optimizer",
]

#: Module names given to task files loaded by path (the Ray backend ships these modules by value).
FILE_MODULE_PREFIX = "decoupled_task_file_"
DEFAULT_TASK_NAME = "task"


class TaskError(ValueError):
    """A task that cannot be imported or has the wrong shape; the message is one line naming the task."""


class Diverged(Exception):
    """Raise it in a training loop to end the run as diverged (the toolkit raises it from :meth:`Run.report`
    when a reported number is NaN or infinite). The message is stored with the run."""


# ------------------------------------------------------------------------------------------------ data

Split = Union[tuple[Tensor, Tensor], torch.utils.data.Dataset]


def _check_split(split: Any, name: str) -> Split:
    if isinstance(split, (tuple, list)):
        if len(split) != 2 or not all(isinstance(part, Tensor) for part in split):
            raise TaskError(f"Data.{name} must be (inputs, targets) tensors or a torch Dataset, got {_kind(split)}")
        inputs, targets = split
        if inputs.ndim == 0 or targets.ndim == 0 or len(inputs) != len(targets):
            raise TaskError(
                f"Data.{name}: inputs and targets must have one row per example, got shapes "
                f"{tuple(inputs.shape)} and {tuple(targets.shape)}"
            )
        split = (inputs, targets)
    elif not isinstance(split, torch.utils.data.Dataset) or not hasattr(split, "__len__"):
        raise TaskError(
            f"Data.{name} must be (inputs, targets) tensors or a torch Dataset with len(), got {_kind(split)}"
        )
    if _rows(split) == 0:
        raise TaskError(f"Data.{name} is empty")
    return split


def _kind(value: Any) -> str:
    return f"{type(value).__module__}.{type(value).__qualname__}".removeprefix("builtins.")


@dataclass(frozen=True)
class Data:
    """Train / validation / test splits: each ``(inputs, targets)`` tensors (indexed by example along dim 0) or a
    ``torch.utils.data.Dataset`` whose items are ``(input, target)``. The training split trains, the validation
    split picks each optimizer's best cell, the test split reports it."""

    train: Split
    val: Split
    test: Split

    def __post_init__(self) -> None:
        for name in ("train", "val", "test"):
            object.__setattr__(self, name, _check_split(getattr(self, name), name))

    @property
    def sizes(self) -> tuple[int, int, int]:
        """Examples in (train, val, test)."""
        return _rows(self.train), _rows(self.val), _rows(self.test)

    def to(self, device: torch.device | str) -> "Data":
        """Tensor splits moved to ``device`` (once per worker); a Dataset's batches move as they are drawn."""
        moved: dict[str, Any] = {
            name: tuple(t.to(device) for t in split) if isinstance(split, tuple) else split
            for name, split in (("train", self.train), ("val", self.val), ("test", self.test))
        }
        return Data(**moved)


_SPLIT_KEYS = {"train": "train", "val": "val", "validation": "val", "test": "test"}


def as_data(value: Any) -> Data | None:
    """``value`` as :class:`Data` when it spells one another way: a mapping with keys train, val (or
    validation) and test, or a (train, val, test) sequence of splits; else None."""
    if isinstance(value, Data):
        return value
    if isinstance(value, Mapping) and set(value) <= set(_SPLIT_KEYS) and len({_SPLIT_KEYS[k] for k in value}) == 3:
        return Data(**{_SPLIT_KEYS[key]: split for key, split in value.items()})
    if (
        isinstance(value, (tuple, list))
        and len(value) == 3
        and all(isinstance(v, (tuple, list, torch.utils.data.Dataset)) for v in value)
    ):
        return Data(*value)
    return None


def _load_data(data: Any, where: str) -> Data | None:
    """``data`` as given to a task: None, a :class:`Data` (or its spelling of :func:`as_data`), or a function
    returning one."""
    try:
        if data is None or not callable(data):
            return as_data(data) if data is not None else None
        loaded = data()
        converted = as_data(loaded)
    except TaskError as error:  # a Data of the wrong shape
        raise TaskError(f"{where}: {error}") from None
    except Exception as error:
        raise TaskError(f"{where}: its data() raised {_one_line(error)}") from None
    if converted is None:
        raise TaskError(
            f"{where}: its data() must return a decoupled.experiments.Data (or a dict with train, val, test), "
            f"got {_kind(loaded)}"
        )
    return converted


# ------------------------------------------------------------------------------------------------ tasks


def classification_error(outputs: Tensor, targets: Tensor) -> Tensor:
    """The default error metric: 1 where ``outputs.argmax(1)`` is not the target class, else 0, per example."""
    return outputs.argmax(dim=1) != targets


def _positive(value: Any, name: str) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise TaskError(f"{name} must be an integer >= 1 or None, got {value!r}")


def _callable(value: Any, name: str, optional: bool = False) -> None:
    if (value is not None or not optional) and not callable(value):
        raise TaskError(f"{name} must be callable, got {_kind(value)}")


class _TaskBase:
    """What both kinds of task share: loading their data, and how messages name them."""

    data: Any
    name: str | None

    def load_data(self) -> Data | None:
        """The task's data: its Data, or what its data function returns (checked); None without data."""
        return _load_data(self.data, self.label)

    @property
    def label(self) -> str:
        return f"task {self.name!r}" if self.name else "the task"


@dataclass(frozen=True)
class Task(_TaskBase):
    """A declarative task: the toolkit's training loop trains ``model()`` on ``data``.

    * ``model``: called with no arguments, after seeding, returns the ``nn.Module`` (a new one per run);
    * ``data``: a :class:`Data` or a function returning one (called once per worker process; on Ray once in all);
    * ``loss(outputs, targets)``: a scalar to minimize; default cross-entropy;
    * ``error(outputs, targets)``: lower is better, either per example (shape (N,): averaged over the split) or
      the batch mean (averaged weighted by batch size); default classification error (fraction misclassified);
    * ``batch_size``, ``epochs``: the task's own training settings (None: the preset's); ``--batch-size``,
      ``--epochs``, ``--set train.*`` and a ``--config`` file override them;
    * ``augment(inputs, generator)``: applied to every training batch of tensor data, with the run's seeded
      CPU generator;
    * ``name``: identifies the task in the store (part of every run's key); default: the attribute it was
      loaded from and its file or module.

    Each epoch is one pass over a seeded permutation of the training split; evaluation runs in ``model.eval()``
    under ``torch.no_grad()`` in batches of ``train.eval_batch_size``.
    """

    model: Callable[[], nn.Module]
    data: Data | Callable[[], Data]
    loss: Callable[[Any, Any], Tensor] | None = None
    error: Callable[[Any, Any], Any] | None = None
    batch_size: int | None = None
    epochs: int | None = None
    augment: Callable[[Tensor, torch.Generator], Tensor] | None = None
    name: str | None = None
    source: str | None = field(default=None, repr=False, compare=False)  # set by load_task: where it came from

    def __post_init__(self) -> None:
        _callable(self.model, "Task.model")
        _check_data_field(self, "Task")
        for name in ("loss", "error", "augment"):
            _callable(getattr(self, name), f"Task.{name}", optional=True)
        _check_common(self, "Task")


@dataclass(frozen=True)
class LoopTask(_TaskBase):
    """A full-control task: ``train(run)`` is your training loop, called once per run with a :class:`Run`.

    Build your model, call ``optimizer, scheduler = run.optimizer(model, steps_per_epoch=...)``, train as you
    like (your DataLoader, mixed precision, gradient clipping, a Lightning or Hugging Face model), step the
    scheduler every batch, and call ``run.report(train_loss=..., val_error=..., test_error=...)`` after every
    epoch. ``data`` (optional; a :class:`Data` or a function returning one) is loaded once per worker (on Ray once
    in all, through the object store) and handed to you as ``run.data``. ``batch_size``, ``epochs``, ``name`` as
    for :class:`Task`; ``run.batch_size`` and ``run.epochs`` are the sweep's values.
    """

    train: Callable[["Run"], Any]
    data: Data | Callable[[], Data] | None = None
    batch_size: int | None = None
    epochs: int | None = None
    name: str | None = None
    source: str | None = field(default=None, repr=False, compare=False)  # set by load_task: where it came from

    def __post_init__(self) -> None:
        _callable(self.train, "LoopTask.train")
        if self.data is not None:
            _check_data_field(self, "LoopTask")
        _check_common(self, "LoopTask")


AnyTask = Union[Task, LoopTask]


def _check_data_field(task: AnyTask, kind: str) -> None:
    """A task's data is a function (called later) or data now: checked, and kept as :class:`Data`."""
    if callable(task.data):
        return
    data = as_data(task.data)
    if data is None:
        raise TaskError(
            f"{kind}.data must be a Data, a dict with train, val and test splits, or a function returning one; "
            f"got {_kind(task.data)}"
        )
    object.__setattr__(task, "data", data)


def _check_common(task: AnyTask, kind: str) -> None:
    _positive(task.batch_size, f"{kind}.batch_size")
    _positive(task.epochs, f"{kind}.epochs")
    if task.name is not None and (not isinstance(task.name, str) or not task.name.strip()):
        raise TaskError(f"{kind}.name must be a non-empty string or None, got {task.name!r}")


def without_data(task: AnyTask) -> AnyTask:
    """``task`` without its data (a Data, or the function that loads it): the Ray backend ships the loaded data
    once, separately, and the data function may live in a module that the cluster's nodes cannot import."""
    if isinstance(task, Task):
        return dataclasses.replace(task, data=_no_data)
    return dataclasses.replace(task, data=None)


def _no_data() -> Data:  # pragma: no cover - never called: the data travels separately
    raise RuntimeError("the task's data travels separately")


# ------------------------------------------------------------------------------------------------ loading


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


def _where_in(path: Path, error: BaseException) -> str:
    """`` (line N)`` of the innermost frame of ``error`` in ``path``, if any."""
    frames = [f for f in traceback.extract_tb(error.__traceback__) if Path(f.filename).resolve() == path]
    if isinstance(error, SyntaxError) and error.lineno:
        return f" (line {error.lineno})"
    return f" (line {frames[-1].lineno})" if frames else ""


def parse_spec(spec: str) -> tuple[str, str, bool]:
    """``"FILE_OR_MODULE:NAME"`` -> (file or module, NAME, is a file). NAME defaults to ``task``."""
    if not isinstance(spec, str) or not spec.strip():
        raise TaskError(f"--task must be FILE_OR_MODULE:NAME (e.g. examples/own_task.py:task), got {spec!r}")
    source, sep, name = spec.strip().rpartition(":")
    if not sep or (len(source) == 1 and source.isalpha()):  # no NAME (or a Windows drive letter)
        source, name = spec.strip(), DEFAULT_TASK_NAME
    if not name.isidentifier():
        raise TaskError(f"--task {spec}: {name!r} is not a Python name (expected FILE_OR_MODULE:NAME)")
    is_file = source.endswith(".py") or "/" in source or "\\" in source or Path(source).is_file()
    return source, name, is_file


def _import_file(source: str, spec: str) -> Any:
    path = Path(source).expanduser().resolve()
    if not path.is_file():
        raise TaskError(f"--task {spec}: no such file {source!r}")
    module_name = FILE_MODULE_PREFIX + hashlib.sha256(str(path).encode()).hexdigest()[:12] + "_" + _safe(path.stem)
    if module_name in sys.modules:
        return sys.modules[module_name]
    module_spec = importlib.util.spec_from_file_location(module_name, path)
    if module_spec is None or module_spec.loader is None:
        raise TaskError(f"--task {spec}: {source!r} cannot be imported as a Python file")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[module_name] = module  # dataclasses and pickling look modules up by name
    if str(path.parent) not in sys.path:
        sys.path.append(str(path.parent))  # as when the file runs as a script: its neighbours import
    try:
        module_spec.loader.exec_module(module)
    except (Exception, SystemExit) as error:
        del sys.modules[module_name]
        raise TaskError(
            f"--task {spec}: importing {source} raised {_one_line(error)}{_where_in(path, error)}"
        ) from None
    return module


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in text)


def _import_module(source: str, spec: str) -> Any:
    try:
        return importlib.import_module(source)
    except ModuleNotFoundError as error:
        if error.name and (source == error.name or source.startswith(error.name + ".")):
            raise TaskError(f"--task {spec}: no module named {error.name!r} (and no file {source!r})") from None
        raise TaskError(f"--task {spec}: importing {source} raised {_one_line(error)}") from None
    except Exception as error:
        raise TaskError(f"--task {spec}: importing {source} raised {_one_line(error)}") from None


def load_task(spec: str) -> AnyTask:
    """The task named by ``spec``, ``"FILE_OR_MODULE:NAME"``: attribute NAME (default ``task``) of a Python file
    (``examples/own_task.py:task``) or of an importable module (``mypackage.tasks:task``). A task without a
    name is named after where it came from (``own_task.py:task``). Raises :class:`TaskError` (one line) when
    the file or module cannot be imported or NAME is not a :class:`Task` or :class:`LoopTask`."""
    source, name, is_file = parse_spec(spec)
    module = _import_file(source, spec) if is_file else _import_module(source, spec)
    if not hasattr(module, name):
        defined = sorted(k for k, v in vars(module).items() if isinstance(v, (Task, LoopTask)))
        hint = f"; it defines {', '.join(defined)}" if defined else "; it defines no Task or LoopTask"
        raise TaskError(f"--task {spec}: {source} has no attribute {name!r}{hint}")
    task = getattr(module, name)
    if not isinstance(task, (Task, LoopTask)):
        what = "a function" if callable(task) and not isinstance(task, type) else _kind(task)
        raise TaskError(
            f"--task {spec}: {name!r} is {what}, not a decoupled.experiments.Task or LoopTask"
            + (" (a training function goes in LoopTask(train=...))" if what == "a function" else "")
        )
    # Workers load it again from here: an absolute path, so that a worker's working folder does not matter.
    where = f"{Path(source).expanduser().resolve()}:{name}" if is_file else f"{source}:{name}"
    default_name = f"{Path(source).stem if is_file else source}:{name}"
    return dataclasses.replace(task, name=task.name or default_name, source=where)


# ------------------------------------------------------------------------------------------------ one run


def make_optimizer(config: RunConfig, params: nn.Module | Iterable[Any], seed: int = 0) -> torch.optim.Optimizer:
    """The optimizer of ``config``'s cell over ``params`` (see the module docstring for the mapping).

    ``params``: an ``nn.Module`` (every parameter decayed with ``train.decay_scope = "all"``, biases and norm
    parameters not with ``"weights"``), an iterable of tensors (one group, all decayed), or of param-group dicts
    (each gets the cell's weight decay unless it sets its own ``weight_decay``, e.g. 0). A low-precision run's
    optimizer writes its parameters with ``config.precision`` (:mod:`decoupled.precision`), stochastic rounding
    seeded with the run's ``seed``; a float32 run's is built as it always was.
    """
    spec = OPTIMIZERS[config.optimizer]
    train = config.train
    low_precision: dict[str, Any] = {} if config.precision is None else {"precision": config.precision, "seed": seed}
    groups: Any
    if isinstance(params, nn.Module):
        if train.decay_scope == "all":
            groups = [{"params": list(params.parameters()), "weight_decay": config.weight_decay}]
        else:
            groups = decoupled.param_groups(params, config.weight_decay)
    else:
        items = list(params)
        if items and all(isinstance(item, dict) for item in items):
            groups = [{"weight_decay": config.weight_decay, **item} for item in items]
        else:
            groups = [{"params": items, "weight_decay": config.weight_decay}]
    if spec.family == "adam":  # adamw-cautious / sgdw-cautious: cautious=True; adamc: decay="corrected"
        return decoupled.AdamW(
            groups, lr=config.lr, betas=(train.beta1, train.beta2), eps=train.eps,
            weight_decay=config.weight_decay, decay=spec.decay, cautious=spec.cautious, **low_precision,
        )  # fmt: skip
    return decoupled.SGDW(
        groups, lr=config.lr, momentum=train.momentum, weight_decay=config.weight_decay, decay=spec.decay,
        cautious=spec.cautious, **low_precision,
    )  # fmt: skip


def _eta_one(_: int) -> float:
    return 1.0


STEP_DROPS = (0.3, 0.6, 0.8)  # fractions of the run where the step schedule multiplies eta_t by 0.1


def warm_restart_periods(epochs: int) -> tuple[float, list[float]]:
    """The warm-restart schedule of a run of ``epochs``: (first period T_0, epochs at which each period ends).

    Periods double (T_mult = 2) and fill the run exactly: k = floor(log2(epochs + 1)) periods of T_0 * 2^i with
    T_0 = epochs / (2^k - 1); 15 epochs give periods 1, 2, 4, 8 ending at epochs 1, 3, 7, 15.

    >>> warm_restart_periods(15)
    (1.0, [1.0, 3.0, 7.0, 15.0])
    """
    count = max(1, int(math.floor(math.log2(epochs + 1) + 1e-9)))
    first = epochs / (2**count - 1)
    ends, total = [], 0.0
    for i in range(count):
        total += first * 2**i
        ends.append(round(total, 9))
    return first, ends


def make_scheduler(config: RunConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int) -> Any:
    """The sweep's schedule for ``optimizer``, stepped every batch: one cosine period over ``train.epochs``
    (:class:`decoupled.CosineWarmRestarts`); ``warm_restarts``: cosine periods doubling from
    :func:`warm_restart_periods`, with the weight decay read as lambda_norm (AdamWR / SGDWR); ``step``: x0.1 at
    30%, 60% and 80% of the run; ``constant``: eta_t = 1 throughout."""
    train = config.train
    if train.schedule == "cosine":
        return decoupled.CosineWarmRestarts(optimizer, first_period=train.epochs, steps_per_epoch=steps_per_epoch)
    if train.schedule == "warm_restarts":
        # lambda = lambda_norm sqrt(b / (B T_i)) at the start of every period (b / B = 1 / steps_per_epoch, as the
        # authors' code).
        first, _ = warm_restart_periods(train.epochs)
        return decoupled.CosineWarmRestarts(
            optimizer, first_period=first, steps_per_epoch=steps_per_epoch, period_mult=2.0,
            weight_decay_norm=config.weight_decay,
        )  # fmt: skip
    if train.schedule == "step":
        drops = [math.ceil(fraction * train.epochs * steps_per_epoch) for fraction in STEP_DROPS]
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.1 ** sum(step >= d for d in drops))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, _eta_one)


@dataclass
class Run:
    """One run of a task, as the toolkit hands it to a training loop: the cell, the seed, and two calls.

    ``optimizer_name`` (adam, adamw, sgd, sgdw), ``lr`` (alpha), ``weight_decay`` (lambda, in ``decay``'s
    convention: ``"decoupled"`` or ``"l2"``), ``seed`` (already applied to Python's, numpy's and torch's
    generators), ``epochs`` and ``batch_size`` (the sweep's), ``device``, ``data`` (the task's loaded
    :class:`Data`, on ``device`` where it is tensors; None without data), ``config`` (the whole
    :class:`~decoupled.experiments.config.RunConfig`), ``dtype`` (the torch dtype the model trains in:
    ``model.to(run.dtype)``) and ``precision`` (how the optimizer writes such parameters; None for float32).
    """

    config: RunConfig
    seed: int
    device: torch.device
    data: Data | None = None
    train_loss: list[float] = field(default_factory=list)
    val_error: list[float] = field(default_factory=list)
    test_error: list[float] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    optimizers_built: int = 0

    @property
    def optimizer_name(self) -> str:
        return self.config.optimizer

    @property
    def lr(self) -> float:
        return self.config.lr

    @property
    def weight_decay(self) -> float:
        return self.config.weight_decay

    @property
    def decay(self) -> str:
        return OPTIMIZERS[self.config.optimizer].decay

    @property
    def epochs(self) -> int:
        return self.config.train.epochs

    @property
    def batch_size(self) -> int:
        return self.config.train.batch_size

    @property
    def dtype(self) -> torch.dtype:
        return getattr(torch, self.config.train.dtype)

    @property
    def precision(self) -> str | None:
        return self.config.precision

    def optimizer(self, params: nn.Module | Iterable[Any], steps_per_epoch: int) -> tuple[torch.optim.Optimizer, Any]:
        """``(optimizer, scheduler)`` for this cell over ``params`` (a module, tensors or param groups; see
        :func:`make_optimizer`). Step the scheduler once per batch, after ``optimizer.step()``; with
        ``steps_per_epoch`` batches per epoch its eta_t reaches 0 at the end of ``epochs`` epochs (cosine)."""
        if isinstance(steps_per_epoch, bool) or not isinstance(steps_per_epoch, int) or steps_per_epoch < 1:
            raise ValueError(f"run.optimizer: steps_per_epoch must be an integer >= 1, got {steps_per_epoch!r}")
        if not isinstance(params, nn.Module):
            params = list(params)
        optimizer = make_optimizer(self.config, params, self.seed)
        self._check_dtype(optimizer)
        self.optimizers_built += 1
        counted = sum(p.numel() for group in optimizer.param_groups for p in group["params"])
        self.extra["parameters"] = self.extra.get("parameters", 0) + counted
        self.extra["steps_per_epoch"] = steps_per_epoch
        return optimizer, make_scheduler(self.config, optimizer, steps_per_epoch)

    def _check_dtype(self, optimizer: torch.optim.Optimizer) -> None:
        """A low-precision run whose parameters are not in its dtype would be recorded as one it is not."""
        if self.dtype == torch.float32:
            return
        dtypes = {p.dtype for group in optimizer.param_groups for p in group["params"]}
        if self.dtype not in dtypes:
            found = ", ".join(sorted(str(d).removeprefix("torch.") for d in dtypes)) or "none"
            raise TypeError(
                f"run.optimizer: the sweep trains in {self.config.train.dtype} (train.dtype), but no parameter is "
                f"{self.config.train.dtype} (found {found}): convert the model first, model.to(run.dtype)"
            )

    def report(self, train_loss: float, val_error: float, test_error: float) -> None:
        """Record one finished epoch: mean training loss, validation and test error (fractions in [0, 1], lower is
        better; the report prints them as percentages). A NaN or infinite value raises :class:`Diverged`, which
        ends the run as diverged (let it propagate); an error outside [0, 1], or a report past the run's
        ``epochs``, fails the run."""
        values = {}
        for name, value in (("train_loss", train_loss), ("val_error", val_error), ("test_error", test_error)):
            try:
                values[name] = float(value)
            except (TypeError, ValueError):
                raise TypeError(f"run.report: {name} must be a number, got {_kind(value)}") from None
        epoch = len(self.train_loss) + 1
        if epoch > self.epochs:
            raise RuntimeError(
                f"run.report was called for epoch {epoch} of a {self.epochs}-epoch run: report once per epoch, "
                "after it ends"
            )
        for name, value in values.items():
            if not math.isfinite(value):
                raise Diverged(f"{name} is {value} at epoch {epoch}")
        for name in ("val_error", "test_error"):
            if not 0 <= values[name] <= 1:
                raise ValueError(
                    f"run.report: {name} must be a fraction in [0, 1] (the analysis counts a diverged run as 1.0, "
                    f"i.e. 100%), got {values[name]:g} at epoch {epoch}; report a percentage divided by 100"
                )
        self.train_loss.append(values["train_loss"])
        self.val_error.append(values["val_error"])
        self.test_error.append(values["test_error"])


# ------------------------------------------------------------------------------------------------ the loop


def _rows(split: Split) -> int:
    return len(split[0]) if isinstance(split, tuple) else len(split)  # type: ignore[arg-type]  # checked: has len


def _batch(split: Split, index: Tensor, device: torch.device) -> tuple[Any, Any]:
    if isinstance(split, tuple):
        return split[0][index], split[1][index]
    inputs, targets = torch.utils.data.default_collate([split[i] for i in index.tolist()])
    return _to(inputs, device), _to(targets, device)


def _to(value: Any, device: torch.device) -> Any:
    return value.to(device) if isinstance(value, Tensor) else value


def _to_dtype(value: Any, dtype: torch.dtype) -> Any:
    """A floating tensor of inputs in the model's ``dtype`` (anything else as it is: labels, uint8 images)."""
    if dtype == torch.float32 or not isinstance(value, Tensor) or not value.is_floating_point():
        return value
    return value.to(dtype)


def _to_float32(value: Any, dtype: torch.dtype) -> Any:
    """A low-precision model's floating outputs in float32, for the loss and the error."""
    if dtype == torch.float32 or not isinstance(value, Tensor) or not value.is_floating_point():
        return value
    return value.float()


def _evaluate(
    model: nn.Module, split: Split, error: Callable, batch_size: int, device: torch.device,
    dtype: torch.dtype = torch.float32,
) -> float:  # fmt: skip
    """The mean of ``error`` over ``split``, in eval mode (BatchNorm uses its running statistics), of the model
    as it trains (a low-precision model in its ``dtype``: its outputs go to float32 only for ``error``)."""
    model.eval()
    total: float | int = 0
    count = _rows(split)
    with torch.no_grad():
        for start in range(0, count, batch_size):
            if isinstance(split, tuple):
                inputs, targets = split[0][start : start + batch_size], split[1][start : start + batch_size]
            else:
                inputs, targets = _batch(split, torch.arange(start, min(start + batch_size, count)), device)
            value = error(_to_float32(model(_to_dtype(inputs, dtype)), dtype), targets)
            if isinstance(value, Tensor) and value.ndim > 0:
                # Summed as integers when they are (the default): the same number as counting mistakes.
                total += int(value.sum()) if not value.is_floating_point() else float(value.double().sum())
            else:
                total += float(value) * min(batch_size, count - start)
    return total / count


def fit(task: Task, run: Run) -> None:
    """The toolkit's training loop for a declarative task (see :class:`Task`). A low-precision run
    (``train.dtype``) trains the model in that dtype, parameters and buffers: each batch's floating inputs are
    cast to it at the model's entrance and its outputs back to float32 for the loss and the error."""
    data = run.data
    assert data is not None
    device, dtype = run.device, run.dtype
    model = task.model()
    if not isinstance(model, nn.Module):
        raise TypeError(f"{task.label}: model() must return an nn.Module, got {_kind(model)}")
    model = model.to(device)
    if dtype != torch.float32:
        model = model.to(dtype)
    train_split = data.train
    batch_size = run.batch_size
    steps_per_epoch = math.ceil(_rows(train_split) / batch_size)
    optimizer, scheduler = run.optimizer(model, steps_per_epoch)
    loss_fn = task.loss or nn.functional.cross_entropy
    error_fn = task.error or classification_error
    order = torch.Generator().manual_seed(run.seed)  # batch order and augmentation, on the CPU for reproducibility
    on = train_split[0].device if isinstance(train_split, tuple) else torch.device("cpu")
    for epoch in range(1, run.epochs + 1):
        model.train()
        permutation = torch.randperm(_rows(train_split), generator=order).to(on)
        total_loss = torch.zeros((), device=device)
        for step in range(steps_per_epoch):
            index = permutation[step * batch_size : (step + 1) * batch_size]
            inputs, targets = _batch(train_split, index, device)
            if task.augment is not None:
                inputs = task.augment(inputs, order)
            loss = loss_fn(_to_float32(model(_to_dtype(inputs, dtype)), dtype), targets)
            if not torch.isfinite(loss):
                raise Diverged(f"training loss is {float(loss.detach())} at epoch {epoch}, step {step + 1}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            total_loss += loss.detach()
        mean_loss = float(total_loss) / steps_per_epoch
        if not all(torch.isfinite(p).all() for p in model.parameters()):
            raise Diverged(f"parameters are not finite after epoch {epoch}")
        if not run.config.train.curves and epoch < run.epochs:  # no curves: one evaluation, after the last epoch
            run.train_loss.append(mean_loss)
            continue
        eval_batch = run.config.train.eval_batch_size
        run.report(
            mean_loss,
            _evaluate(model, data.val, error_fn, eval_batch, device, dtype),
            _evaluate(model, data.test, error_fn, eval_batch, device, dtype),
        )


# ------------------------------------------------------------------------------------------------ built-in


class _Inputs(nn.Module):
    """Applies a dataset's input conversion (CIFAR-10: uint8 -> normalized float) before the network."""

    def __init__(self, convert: Callable[[Tensor], Tensor], network: nn.Module):
        super().__init__()
        self.convert = convert
        self.network = network

    def forward(self, x: Tensor) -> Tensor:
        # In the network's dtype: the conversion makes float32 whatever dtype the network trains in.
        return self.network(_to_dtype(self.convert(x), next(self.network.parameters()).dtype))


def _builtin_model(
    model: ModelConfig, input_shape: tuple[int, ...], num_classes: int, convert: Callable | None
) -> nn.Module:
    from .models import build_model

    network = build_model(model, input_shape, num_classes)
    return network if convert is None else _Inputs(convert, network)


def builtin_task(model: ModelConfig, splits: Any, augment: bool = False) -> Task:
    """A built-in dataset (:class:`~decoupled.experiments.data.Splits`, already loaded) and model config as a
    :class:`Task`: the path every ``decoupled sweep`` without ``--task`` takes."""
    from .augment import random_crop_flip
    from .data import _identity

    convert = None if splits.to_input is _identity else splits.to_input
    return Task(
        model=partial(_builtin_model, model, splits.input_shape, splits.num_classes, convert),
        data=Data(
            train=(splits.x_train, splits.y_train),
            val=(splits.x_val, splits.y_val),
            test=(splits.x_test, splits.y_test),
        ),
        augment=random_crop_flip if augment else None,
        name=None,
    )


def data_fingerprint(data: Data | None) -> str:
    """What identifies a task's loaded data across processes, cheaply: each split's size, and for tensor splits
    their shapes, dtypes and a SHA-256 of up to 256 evenly spaced examples (a few kB, whatever the data's size).
    A Dataset split counts by its size only: its items may be drawn at random (augmentation) on every access."""
    if data is None:
        return "no data"
    digest = hashlib.sha256()
    for name, split in (("train", data.train), ("val", data.val), ("test", data.test)):
        digest.update(f"{name}:{_rows(split)};".encode())
        if isinstance(split, tuple):
            rows = _rows(split)
            sample = torch.linspace(0, rows - 1, min(rows, 256)).long()
            for part in split:
                digest.update(f"{tuple(part.shape)}:{part.dtype};".encode())
                try:
                    values = part.detach()[sample.to(part.device)].cpu().contiguous().flatten()
                    digest.update(values.view(torch.uint8).numpy().tobytes())
                except (RuntimeError, TypeError):  # a layout without bytes to read (sparse, quantized): shapes only
                    continue
    return "{} train / {} validation / {} test examples, data {}".format(*data.sizes, digest.hexdigest()[:12])


def describe_sizes(data: Data | None) -> tuple[int, int, int]:
    """(train, val, test) examples of a task's data; zeros for a LoopTask without data."""
    return data.sizes if data is not None else (0, 0, 0)
