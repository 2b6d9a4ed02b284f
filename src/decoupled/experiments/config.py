"""Sweep configuration: frozen dataclasses with units, built from layered TOML tables with strict checking.

A sweep is described by a :class:`SweepConfig`; each run inside it by a :class:`RunConfig` (the sweep's data,
model and training settings plus one optimizer, learning rate and weight decay). Configs are made by
:func:`load_sweep_config`, which layers a preset (``presets/<name>.toml``), an optional user TOML file and
flag overrides (later layers win, key by key), then checks every value. Any problem raises
:class:`ConfigError` with a one-line message that names the key and the bad value; unknown keys are errors.

Units follow the paper (Loshchilov & Hutter, ICLR 2019): ``lr`` is alpha, the peak learning rate (the schedule
multiplies it by eta_t); ``weight_decay`` is lambda in the convention of the optimizer:

* ``adamw``, ``sgdw`` (decoupled): theta <- theta - eta_t * lambda * theta each step (lambda NOT times alpha);
* ``adam``, ``sgd`` (L2, coupled): g <- g + lambda * theta before the update (an L2 penalty lambda/2 ||theta||^2);
* ``adamw-cautious``, ``sgdw-cautious``: decoupled, cautious (decay only where the update and theta agree in sign);
* ``adamc`` (corrected, AdamC): theta <- theta - eta_t^2 * lambda * theta each step.

The three later variants are not in the default list (the paper's four are); select them with ``optimizers``
(``--optimizers``). Without a ``grid.<name>`` table of their own they use the grid of the optimizer whose units
they share (``adamw`` or ``sgdw``).

Low precision: ``train.dtype = "bfloat16"`` trains the model with bfloat16 parameters (and buffers), and
``precision`` (a list of names of :data:`decoupled.precision.PRECISIONS`, default ``["exact"]``, the optimizers'
default) says how the optimizers write them; each precision is an arm of the sweep beside the optimizer, a run's
precision part of its key. With float32 (the default) every precision steps the parameters alike, so
``precision`` is refused there: its arms would be the same runs.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import re
import sys
from dataclasses import asdict, dataclass, fields, replace
from importlib import resources
from pathlib import Path
from typing import Any, Mapping

from decoupled.precision import PRECISIONS

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = [
    "DATASETS",
    "MODELS",
    "OPTIMIZERS",
    "PAPER_OPTIMIZERS",
    "ConfigError",
    "DataConfig",
    "ModelConfig",
    "OptimizerGrid",
    "RunConfig",
    "SweepConfig",
    "TrainConfig",
    "MAX_GENERATED_EXAMPLES",
    "MAX_RUNS",
    "available_presets",
    "check_size",
    "load_sweep_config",
    "parse_override",
]

DATASETS = ("mnist1d", "digits", "cifar10")
MODELS = ("conv1d", "mlp", "shake_shake")
SCHEDULES = ("cosine", "constant", "step", "warm_restarts")
DECAY_SCOPES = ("all", "weights")
# The dtypes a sweep trains its parameters in (torch's names). float16 is left out: without loss scaling its
# gradients underflow, which would confound what the precision of the step does.
DTYPES = ("float32", "bfloat16")
DEFAULT_PRECISIONS = ("exact",)  # a low-precision sweep without ``precision``: the optimizers' default
# Sizes past which a sweep is refused unless asked for (``--allow-large``): a typo such as ``--seeds 1000000000``
# should cost one line, not hours of planning or days of data generation. The default sweep is 200 runs of
# 10,000 examples; 10,000 runs is about 7 hours on 2 cores, and MNIST-1D generates at ~0.6 ms an example.
MAX_RUNS = 10_000
MAX_GENERATED_EXAMPLES = 1_000_000
MAX_AXIS_VALUES = 100_000  # values per grid axis, checked before the axis is built
SEED_MAX = 2**32 - 1  # numpy's legacy seeding, which the MNIST-1D generator uses, takes seeds in [0, 2^32 - 1]


@dataclass(frozen=True)
class OptimizerSpec:
    """One of the four optimizers of the paper's comparison, as a decoupled optimizer class + a convention."""

    name: str  # adam | adamw | sgd | sgdw | adamw-cautious | sgdw-cautious | adamc
    label: str  # as in the paper's figures
    family: str  # "adam" (decoupled.AdamW) or "sgd" (decoupled.SGDW)
    decay: str  # the decoupled library's convention: "l2" (coupled), "decoupled" or "corrected"
    weight_decay_meaning: str  # what lambda does, for axis labels and the report
    cautious: bool = False  # cautious weight decay (Chen et al. 2025)
    grid_like: str = ""  # the optimizer whose grid it uses when the config has no grid.<name> (same units)


# Adam/SGD with L2 are decoupled.AdamW/SGDW with decay="l2": one implementation, only line 6/12 differs.
OPTIMIZERS: dict[str, OptimizerSpec] = {
    spec.name: spec
    for spec in (
        OptimizerSpec("sgd", "SGD (L2)", "sgd", "l2", "L2 factor: g += lambda * theta"),
        OptimizerSpec("sgdw", "SGDW", "sgd", "decoupled", "decoupled: theta -= eta_t * lambda * theta"),
        OptimizerSpec("adam", "Adam (L2)", "adam", "l2", "L2 factor: g += lambda * theta"),
        OptimizerSpec("adamw", "AdamW", "adam", "decoupled", "decoupled: theta -= eta_t * lambda * theta"),
        OptimizerSpec("adamw-cautious", "AdamW (cautious)", "adam", "decoupled",
                      "cautious: theta -= eta_t * lambda * 1[u theta >= 0] * theta", cautious=True, grid_like="adamw"),
        OptimizerSpec("sgdw-cautious", "SGDW (cautious)", "sgd", "decoupled",
                      "cautious: theta -= eta_t * lambda * 1[u theta >= 0] * theta", cautious=True, grid_like="sgdw"),
        OptimizerSpec("adamc", "AdamC", "adam", "corrected", "corrected: theta -= eta_t^2 * lambda * theta",
                      grid_like="adamw"),
    )
}  # fmt: skip
# The default selection: the paper's comparison (its Figure 2).
PAPER_OPTIMIZERS = ("adam", "adamw", "sgd", "sgdw")


class ConfigError(ValueError):
    """A bad configuration value; the message is one line that names the key and the value."""


@dataclass(frozen=True)
class DataConfig:
    """Which data, and how much of it. Sizes are numbers of examples."""

    dataset: str = "mnist1d"  # mnist1d (generated locally) | digits (scikit-learn's copy) | cifar10 (local folder)
    train_size: int = 4000  # examples the optimizer sees
    val_size: int = 2000  # examples that pick each optimizer's best cell
    test_size: int = 4000  # examples that report it (never used for any choice)
    seed: int = 0  # seed of the data generator and of the split; runs use their own seeds
    data_dir: str = ""  # cifar10: folder holding cifar-10-batches-py/ (or where --download puts it)
    download: bool = False  # cifar10: fetch the archive when data_dir lacks it
    augment: bool = False  # images only: pad-4 random 32x32 crop + horizontal flip on training batches


@dataclass(frozen=True)
class ModelConfig:
    """The network. ``width`` and ``depth`` mean what the model's name says."""

    name: str = "conv1d"  # conv1d (MNIST-1D) | mlp (any data) | shake_shake (26 2x64d on CIFAR-10)
    width: int = 32  # conv1d: channels; mlp: hidden units; shake_shake: channels of the first stage (64 = 2x64d)
    depth: int = 3  # conv1d: conv layers; mlp: hidden layers; shake_shake: layers (26 = 4 blocks per stage)
    batchnorm: bool = True  # conv1d/mlp: BatchNorm after each layer (shake_shake always has it)


@dataclass(frozen=True)
class TrainConfig:
    """How one run trains."""

    epochs: int = 15  # passes over the training set
    batch_size: int = 128  # examples per step
    # eta_t, stepped per batch: cosine from 1 to 0 over the run | constant (eta_t = 1) | step (x0.1 at 30%, 60% and
    # 80% of the run, the paper's drops at epochs 30, 60, 80 of 100) | warm_restarts (cosine periods doubling from
    # epochs / (2^k - 1), k restarts filling the run, with the weight decay read as lambda_norm: AdamWR / SGDWR)
    schedule: str = "cosine"
    momentum: float = 0.9  # sgd/sgdw: beta1 of Algorithm 1 (the momentum mu)
    beta1: float = 0.9  # adam/adamw
    beta2: float = 0.999  # adam/adamw
    eps: float = 1e-8  # adam/adamw: added to sqrt(vhat)
    decay_scope: str = "all"  # all: decay every parameter (as the paper) | weights: not biases/norm parameters
    eval_batch_size: int = 2048  # examples per forward pass when measuring errors (memory only, not results)
    # Measure validation and test error after every epoch (the curves) or only after the last one: evaluation
    # costs more than training on a small training set, and only F5's figure needs the curves.
    curves: bool = True
    # The parameters' (and buffers') dtype during training, one of DTYPES. Inputs are cast to it at the model's
    # entrance, outputs back to float32 for the loss and the error; the test error is the trained model's own.
    dtype: str = "float32"


@dataclass(frozen=True)
class OptimizerGrid:
    """The learning-rate x weight-decay grid of one optimizer. Values in the paper's units (module docstring)."""

    optimizer: str  # a key of OPTIMIZERS
    lrs: tuple[float, ...]  # alpha values, ascending
    weight_decays: tuple[float, ...]  # lambda values, ascending (0 allowed)

    @property
    def cells(self) -> int:
        return len(self.lrs) * len(self.weight_decays)


@dataclass(frozen=True)
class RunConfig:
    """Everything that determines one run's numbers, apart from its seed. Its hash keys the store."""

    data: DataConfig
    model: ModelConfig
    train: TrainConfig
    optimizer: str
    lr: float
    weight_decay: float
    task: str | None = None  # a user task's name (None: the built-in task of ``data`` and ``model``)
    # How the optimizer writes low-precision parameters (a key of PRECISIONS); None for float32 training.
    precision: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return _without_defaults(asdict(self))

    def key(self) -> str:
        """A stable 16-hex-digit hash of the config (independent of dict order and of Python versions).

        Keys added after the store's first version are left out of the hash while they hold their default, so
        the runs of a store written before them still count as done."""
        raw = self.to_dict()
        for table, name in _KEYS_ADDED_LATER:
            if raw[table].get(name, getattr(_DEFAULTS[table], name)) == getattr(_DEFAULTS[table], name):
                raw[table].pop(name, None)
        text = json.dumps(raw, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]


_KEYS_ADDED_LATER = (("train", "curves"), ("train", "dtype"))  # (table, key): hashed only when not at their default
_DEFAULTS = {"data": DataConfig(), "model": ModelConfig(), "train": TrainConfig()}


@dataclass(frozen=True)
class SweepConfig:
    """A whole sweep: every optimizer's grid, crossed with ``seeds`` seeds (0 .. seeds-1)."""

    name: str  # the preset's or user's name for it (not part of any run's key)
    seeds: int  # runs per cell, seeds 0 .. seeds-1; seed s gives the same init and batch order in every cell
    data: DataConfig
    model: ModelConfig
    train: TrainConfig
    grids: tuple[OptimizerGrid, ...]
    task: str | None = None  # a user task's name (``--task``); None: the built-in task of ``data`` and ``model``
    # The arms of a low-precision sweep (keys of PRECISIONS), each crossed with every grid; () for float32.
    precisions: tuple[str, ...] = ()

    def run_config(self, optimizer: str, lr: float, weight_decay: float, precision: str | None = None) -> RunConfig:
        return RunConfig(self.data, self.model, self.train, optimizer, lr, weight_decay, self.task, precision)

    @property
    def precision(self) -> str | None:
        """The precision of a sweep of one arm (None for float32); a ValueError for a sweep of several, which is
        analyzed one arm at a time (:meth:`by_precision`)."""
        if len(self.precisions) > 1:
            raise ValueError(f"sweep {self.name!r} has {len(self.precisions)} precision arms: take one (by_precision)")
        return self.precisions[0] if self.precisions else None

    def by_precision(self) -> tuple["SweepConfig", ...]:
        """One sweep per precision arm (the sweep itself when it has one, or none: float32)."""
        if len(self.precisions) <= 1:
            return (self,)
        return tuple(replace(self, precisions=(precision,)) for precision in self.precisions)

    def float32_reference(self) -> "SweepConfig":
        """The same sweep with float32 parameters: the runs a low-precision sweep is compared with."""
        return replace(self, train=replace(self.train, dtype="float32"), precisions=())

    @property
    def arm_label(self) -> str:
        """What the parameters were and how they were written: 'float32', 'bfloat16, precision "nearest"'."""
        if not self.precisions:
            return self.train.dtype
        return f"{self.train.dtype}, precision " + ", ".join(f'"{precision}"' for precision in self.precisions)

    @property
    def cells(self) -> int:
        """Learning-rate x weight-decay cells over every optimizer's grid and every precision arm."""
        return sum(grid.cells for grid in self.grids) * max(len(self.precisions), 1)

    @property
    def runs(self) -> int:
        """Runs in the whole plan: every cell times every seed (counted, not built)."""
        return self.cells * self.seeds

    def to_dict(self) -> dict[str, Any]:
        return _without_defaults(asdict(self))

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> "SweepConfig":
        """Rebuild from :meth:`to_dict` output (as stored), without the layering of :func:`load_sweep_config`.
        An optimizer or a precision this version does not know (a newer version's) is a ValueError naming it."""
        for grid in raw["grids"]:
            if grid["optimizer"] not in OPTIMIZERS:
                raise ValueError(
                    f"unknown optimizer {grid['optimizer']!r} (this version knows {', '.join(OPTIMIZERS)})"
                )
        for precision in raw.get("precisions", ()):
            if precision not in PRECISIONS:
                raise ValueError(f"unknown precision {precision!r} (this version knows {', '.join(PRECISIONS)})")
        return cls(
            name=raw["name"],
            seeds=int(raw["seeds"]),
            data=DataConfig(**raw["data"]),
            model=ModelConfig(**raw.get("model", {})),
            train=TrainConfig(**raw["train"]),
            grids=tuple(
                OptimizerGrid(g["optimizer"], tuple(g["lrs"]), tuple(g["weight_decays"])) for g in raw["grids"]
            ),
            task=raw.get("task"),
            precisions=tuple(raw.get("precisions", ())),
        )


def _without_defaults(tree: dict[str, Any]) -> dict[str, Any]:
    """A built-in task's config has no ``task`` key, so that its hash (the store's key) is what it was before
    tasks existed; a user task's has no ``model`` (the task brings its own; its name stands for it). A float32
    one has no ``train.dtype`` and no ``precision`` (``precisions``): it is stored as before they existed, so
    that a store of float32 runs reads the same in earlier versions too."""
    if tree.get("task") is None:
        tree.pop("task", None)
    else:
        tree.pop("model", None)
    for key in ("precision", "precisions"):
        if key in tree and not tree[key]:
            del tree[key]
    if tree.get("train", {}).get("dtype") == TrainConfig.dtype:
        del tree["train"]["dtype"]
    return tree


# ----------------------------------------------------------------------------------------------------------
# Loading: presets, files and overrides are nested dicts merged key by key, then checked once.

_PRESET_PACKAGE = "decoupled.experiments.presets"
_TOP_KEYS = ("name", "seeds", "optimizers", "precision", "data", "model", "train", "grid")
_AXIS_KEYS = {"lr": ("lr", "lr_log2"), "weight_decay": ("weight_decay", "weight_decay_log2")}


def available_presets() -> list[str]:
    """Names of the presets shipped with the package (``presets/*.toml``)."""
    folder = resources.files(_PRESET_PACKAGE)
    return sorted(entry.name[:-5] for entry in folder.iterdir() if entry.name.endswith(".toml"))


def _read_toml(text: str, origin: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{origin} is not valid TOML: {error}") from None


def read_preset(name: str) -> dict[str, Any]:
    if name not in available_presets():
        raise ConfigError(f"unknown preset {name!r}; choose one of: {', '.join(available_presets())}")
    text = resources.files(_PRESET_PACKAGE).joinpath(f"{name}.toml").read_text(encoding="utf-8")
    return _read_toml(text, f"preset {name!r}")


def read_config_file(path: str | Path) -> dict[str, Any]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError(f"cannot read config file {str(path)!r}: {error.strerror or error}") from None
    except UnicodeDecodeError as error:
        byte = error.object[error.start]
        raise ConfigError(
            f"config file {str(path)!r} is not TOML text: byte {error.start} is {byte:#04x}, not UTF-8"
        ) from None
    return _read_toml(text, f"config file {str(path)!r}")


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"train.epochs=30"`` -> (["train", "epochs"], 30); the value is read as TOML, else as a bare string."""
    key, sep, value = text.partition("=")
    path = [part.strip() for part in key.split(".")]
    if not sep or not all(path):
        raise ConfigError(f"override {text!r} is not KEY=VALUE (e.g. train.epochs=30)")
    try:
        parsed = tomllib.loads(f"v = {value.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        parsed = value.strip()
    return path, parsed


def set_path(tree: dict[str, Any], path: list[str], value: Any) -> None:
    """Set ``tree[path[0]][path[1]]... = value``, creating tables on the way."""
    node = tree
    for part in path[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{'.'.join(path)}: {part!r} is a value, not a table")
    node[path[-1]] = value


def merge(base: Mapping[str, Any], override: Mapping[str, Any], _path: tuple[str, ...] = ()) -> dict[str, Any]:
    """Deep-merge ``override`` into a copy of ``base``. Setting one form of a grid axis (``lr`` or ``lr_log2``)
    drops the other form from ``base``, so a user's explicit values replace a preset's range."""
    merged = copy.deepcopy(dict(base))
    if len(_path) == 2 and _path[0] == "grid":
        # Drop base's forms of each axis the override sets, before setting any: a layer that gives both forms
        # keeps both, and the check refuses them (popping per key would silently drop the first one).
        for forms in _AXIS_KEYS.values():
            if any(form in override for form in forms):
                for form in forms:
                    merged.pop(form, None)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = merge(merged[key], value, (*_path, key))
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def load_sweep_config(
    preset: str = "default",
    config_file: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    task: Any = None,
) -> SweepConfig:
    """Layer preset < config file < overrides (a nested dict), and check the result.

    ``task``: a user task (:mod:`.tasks`): its ``batch_size`` and ``epochs`` (when set) sit between the preset
    and the config file; the config file and the overrides must not set ``data`` or ``model`` keys (the task
    brings its own). The sweep's data sizes are filled in by :func:`with_task_data` once the data is loaded.
    """
    raw = read_preset(preset)
    raw.setdefault("name", preset)
    layers = [read_config_file(config_file) if config_file is not None else {}, dict(overrides or {})]
    if task is not None:
        for origin, layer in zip((f"config file {str(config_file)!r}", "the command line"), layers):
            for key in ("data", "model"):
                if layer.get(key):
                    raise ConfigError(
                        f"{key}.{next(iter(layer[key]))} (from {origin}) does not apply to --task: the task brings "
                        f"its own {'data' if key == 'data' else 'model'}"
                    )
        task_train = {k: getattr(task, k) for k in ("batch_size", "epochs") if getattr(task, k) is not None}
        raw = merge(raw, {"train": task_train, "name": re.sub(r"[^\w-]+", "-", task.name).strip("-") or "task"})
    for layer in layers:
        if layer:
            raw = merge(raw, layer)
    config = sweep_config_from_dict(raw)
    if task is not None:
        # The preset's data and model tables say nothing about a task's: keep neutral defaults, not theirs.
        config = replace(config, data=DataConfig(dataset="task"), model=ModelConfig(), task=task.name)
    return config


def with_task_data(config: SweepConfig, sizes: tuple[int, int, int]) -> SweepConfig:
    """``config`` with a user task's data sizes (train, validation, test) recorded: part of every run's key, so
    that changed data never resumes from runs on the old data; the report's noise estimate uses the test size."""
    train, val, test = sizes
    return replace(config, data=DataConfig(dataset="task", train_size=train, val_size=val, test_size=test))


# ----------------------------------------------------------------------------------------------------------
# Checking: every message names the key (as a dotted path) and the value.


def _unknown_keys(table: Mapping[str, Any], allowed: tuple[str, ...] | list[str], where: str) -> None:
    for key in table:
        if key not in allowed:
            prefix = f"{where}." if where else ""
            raise ConfigError(f"unknown config key {prefix}{key}; known keys here: {', '.join(allowed)}")


def _table(raw: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = raw.get(key, {})
    if not isinstance(value, Mapping):
        raise ConfigError(f"{key} must be a table, got {value!r}")
    return value


def _typed(cls: type, table: Mapping[str, Any], where: str) -> Any:
    """Build dataclass ``cls`` from ``table`` (defaults for missing keys), checking key names and types."""
    names = [f.name for f in fields(cls)]
    _unknown_keys(table, names, where)
    defaults = cls()
    values = {}
    for name in names:
        default = getattr(defaults, name)
        value = table.get(name, default)
        if isinstance(default, bool):
            ok = isinstance(value, bool)
        elif isinstance(default, int):
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif isinstance(default, float):
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            value = float(value) if ok else value
        else:
            ok = isinstance(value, str)
        if not ok:
            raise ConfigError(f"{where}.{name} must be {type(default).__name__}, got {value!r}")
        values[name] = value
    return cls(**values)


def _positive_int(value: int, key: str) -> None:
    if value < 1:
        raise ConfigError(f"{key} must be >= 1, got {value!r}")


def _choice(value: str, choices: tuple[str, ...], key: str) -> None:
    if value not in choices:
        raise ConfigError(f"{key} must be one of {', '.join(choices)}, got {value!r}")


def _check_data(data: DataConfig) -> None:
    _choice(data.dataset, DATASETS, "data.dataset")
    for name in ("train_size", "val_size", "test_size"):
        _positive_int(getattr(data, name), f"data.{name}")
    if not 0 <= data.seed <= SEED_MAX:
        raise ConfigError(f"data.seed must be in [0, 2^32 - 1], got {data.seed!r}")
    if data.dataset == "cifar10" and not data.data_dir:
        raise ConfigError("data.data_dir must name a folder for dataset cifar10 (--data-dir DIR)")
    if data.augment and data.dataset != "cifar10":
        raise ConfigError(f"data.augment (crop + flip) needs image data (cifar10), got dataset {data.dataset!r}")


def _check_model(model: ModelConfig, data: DataConfig) -> None:
    _choice(model.name, MODELS, "model.name")
    _positive_int(model.width, "model.width")
    _positive_int(model.depth, "model.depth")
    if model.name == "conv1d" and data.dataset == "cifar10":
        raise ConfigError("model.name 'conv1d' takes 1-D signals (mnist1d, digits), got dataset 'cifar10'")
    if model.name == "shake_shake":
        if data.dataset != "cifar10":
            raise ConfigError(f"model.name 'shake_shake' takes 32x32 images (cifar10), got dataset {data.dataset!r}")
        if (model.depth - 2) % 6 != 0 or model.depth < 8:
            raise ConfigError(f"model.depth for shake_shake must be 6n + 2 >= 8 (e.g. 26), got {model.depth!r}")


def _check_train(train: TrainConfig) -> None:
    _positive_int(train.epochs, "train.epochs")
    _positive_int(train.batch_size, "train.batch_size")
    _positive_int(train.eval_batch_size, "train.eval_batch_size")
    _choice(train.schedule, SCHEDULES, "train.schedule")
    _choice(train.decay_scope, DECAY_SCOPES, "train.decay_scope")
    _choice(train.dtype, DTYPES, "train.dtype")
    for name in ("momentum", "beta1", "beta2"):
        value = getattr(train, name)
        if not (math.isfinite(value) and 0 <= value < 1):
            raise ConfigError(f"train.{name} must be in [0, 1), got {value!r}")
    if not (math.isfinite(train.eps) and train.eps >= 0):
        raise ConfigError(f"train.eps must be >= 0, got {train.eps!r}")


def _axis(table: Mapping[str, Any], axis: str, where: str) -> tuple[float, ...]:
    """One grid axis from either explicit values (``lr = [0.01, 0.02]``) or powers of two
    (``lr_log2 = [start, stop]`` or ``[start, stop, step]``: 2^start, 2^(start+step), ..., up to 2^stop)."""
    values_key, log2_key = _AXIS_KEYS[axis]
    noun = "learning rate" if axis == "lr" else "weight decay"
    if values_key in table and log2_key in table:
        raise ConfigError(f"{where}: give {values_key} or {log2_key}, not both")
    if values_key in table:
        raw = table[values_key]
        raw = raw if isinstance(raw, list) else [raw]
        for value in raw:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ConfigError(f"{where}.{values_key}: {noun} must be a finite number, got {value!r}")
        values = [float(v) for v in raw]
    elif log2_key in table:
        raw = table[log2_key]
        if (
            not isinstance(raw, list)
            or len(raw) not in (2, 3)
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in raw)
        ):
            raise ConfigError(f"{where}.{log2_key} must be [start, stop] or [start, stop, step] exponents, got {raw!r}")
        start, stop, step = (list(raw) + [1])[:3]
        if not all(math.isfinite(v) for v in (start, stop, step)):
            raise ConfigError(f"{where}.{log2_key}: exponents must be finite numbers, got {raw!r}")
        if step <= 0:
            raise ConfigError(f"{where}.{log2_key}: step must be > 0, got {step!r}")
        count = max(math.floor((stop - start) / step + 1e-9) + 1, 0)
        if count > MAX_AXIS_VALUES:
            raise ConfigError(
                f"{where}.{log2_key} = {raw!r} gives {count:,} values; at most {MAX_AXIS_VALUES:,} per axis"
            )
        values = []
        for i in range(count):
            exponent = start + i * step
            try:
                values.append(2.0**exponent)
            except OverflowError:
                raise ConfigError(
                    f"{where}.{log2_key} = {raw!r}: 2^{exponent:g} overflows a float (exponents must be below 1024)"
                ) from None
    else:
        raise ConfigError(f"{where} needs {values_key} = [values] or {log2_key} = [start, stop]")
    if not values:
        raise ConfigError(
            f"empty grid: {where}.{log2_key if log2_key in table else values_key} = "
            f"{table.get(log2_key, table.get(values_key))!r} gives no {noun}"
        )
    used = log2_key if log2_key in table else values_key
    for value in values:
        if axis == "lr" and value <= 0:
            raise ConfigError(f"{where}.{used}: learning rate must be > 0, got {value!r}")
        if axis == "weight_decay" and value < 0:
            raise ConfigError(f"{where}.{used}: weight decay must be >= 0, got {value!r}")
    if len(set(values)) != len(values):
        raise ConfigError(f"{where}.{used}: repeated value in {values!r}")
    return tuple(sorted(values))


def _grids(raw: Mapping[str, Any]) -> tuple[OptimizerGrid, ...]:
    names = _names(raw, "optimizers", PAPER_OPTIMIZERS)
    if not names:
        raise ConfigError("empty grid: optimizers = [] selects no optimizer")
    for name in names:
        _choice(name, tuple(OPTIMIZERS), "optimizers")
    grid_tables = _table(raw, "grid")
    _unknown_keys(grid_tables, list(OPTIMIZERS), "grid")
    grids = []
    for name in names:
        table = grid_tables.get(name)
        if table is None and OPTIMIZERS[name].grid_like:
            table = grid_tables.get(OPTIMIZERS[name].grid_like)
        if table is None:
            raise ConfigError(f"grid.{name} is missing: optimizer {name!r} needs a learning-rate x weight-decay grid")
        if not isinstance(table, Mapping):
            raise ConfigError(f"grid.{name} must be a table, got {table!r}")
        _unknown_keys(table, [key for forms in _AXIS_KEYS.values() for key in forms], f"grid.{name}")
        where = f"grid.{name}"
        grids.append(OptimizerGrid(name, _axis(table, "lr", where), _axis(table, "weight_decay", where)))
    return tuple(grids)


def sweep_config_from_dict(raw: Mapping[str, Any]) -> SweepConfig:
    """Check a merged config tree and build the :class:`SweepConfig`; raise :class:`ConfigError` if bad."""
    _unknown_keys(raw, _TOP_KEYS, "")
    name = raw.get("name", "custom")
    if not isinstance(name, str):
        raise ConfigError(f"name must be a string, got {name!r}")
    _check_name(name)
    seeds = raw.get("seeds", 2)
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise ConfigError(f"seeds (runs per cell) must be an integer >= 1, got {seeds!r}")
    data = _typed(DataConfig, _table(raw, "data"), "data")
    model = _typed(ModelConfig, _table(raw, "model"), "model")
    train = _typed(TrainConfig, _table(raw, "train"), "train")
    _check_data(data)
    _check_model(model, data)
    _check_train(train)
    return SweepConfig(name, seeds, data, model, train, _grids(raw), precisions=_precisions(raw, train))


def _names(raw: Mapping[str, Any], key: str, default: tuple[str, ...]) -> list[str]:
    """A list of names from ``key`` of ``raw`` (a list, or a comma-separated string as its flag gives it)."""
    names = raw.get(key, list(default))
    if isinstance(names, str):
        names = [part.strip() for part in names.split(",") if part.strip()]
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ConfigError(f"{key} must be a list of names, got {names!r}")
    if len(set(names)) != len(names):
        raise ConfigError(f"{key}: repeated name in {names!r}")
    return names


def _precisions(raw: Mapping[str, Any], train: TrainConfig) -> tuple[str, ...]:
    """The precision arms: none for float32 (refused when given: every precision steps float32 alike, so its arms
    would repeat the same runs), :data:`DEFAULT_PRECISIONS` for a low-precision dtype without ``precision``."""
    if train.dtype == "float32":
        if "precision" in raw:
            raise ConfigError(
                f"precision = {raw['precision']!r} needs low-precision parameters: with train.dtype 'float32' every "
                "precision takes the same step (its arms would be the same runs); add --dtype bfloat16 "
                "(train.dtype), or leave precision out"
            )
        return ()
    names = _names(raw, "precision", DEFAULT_PRECISIONS)
    if not names:
        raise ConfigError("empty grid: precision = [] selects no precision")
    for name in names:
        _choice(name, tuple(PRECISIONS), "precision")
    return tuple(names)


def _check_name(name: str) -> None:
    """The name becomes the default output folder runs/NAME-TIME, so it must stay one folder name inside runs/."""
    if (
        not name
        or name.startswith(".")
        or any(sep in name for sep in ("/", "\\"))
        or any(ord(char) < 32 for char in name)
    ):
        raise ConfigError(
            f"name must be a plain folder name (no '/', '\\', leading '.' or control characters), got {name!r}"
        )


def check_size(config: SweepConfig, *, allow_large: bool = False) -> None:
    """Refuse a plan past :data:`MAX_RUNS` runs, or MNIST-1D data past :data:`MAX_GENERATED_EXAMPLES` examples,
    unless ``allow_large`` (``--allow-large``). Counts only: nothing is built."""
    if allow_large:
        return
    if config.runs > MAX_RUNS:
        raise ConfigError(
            f"the plan has {config.runs:,} runs ({config.cells:,} cells x {config.seeds:,} seeds), more than "
            f"{MAX_RUNS:,}; pass --allow-large to run it anyway"
        )
    data = config.data
    total = data.train_size + data.val_size + data.test_size
    if data.dataset == "mnist1d" and total > MAX_GENERATED_EXAMPLES:
        hours = total * 0.6e-3 / 3600
        raise ConfigError(
            f"data sizes {data.train_size:,} + {data.val_size:,} + {data.test_size:,} = {total:,} MNIST-1D examples "
            f"to generate (about {hours:,.0f} hours), more than {MAX_GENERATED_EXAMPLES:,}; pass --allow-large to "
            "generate them anyway"
        )
