"""Datasets as in-memory tensors, split into train / validation / test.

* ``mnist1d``: generated locally with the mnist1d package's generator (``make_dataset``; never its download
  path), ``train_size + val_size + test_size`` examples from one seeded generator call, cached as ``.npz`` so that
  worker processes load it instead of regenerating it (generation takes ~0.6 ms an example).
* ``digits``: scikit-learn's bundled 8x8 digits (1797 examples), as 64-sample signals.
* ``cifar10``: torchvision's on-disk format (``cifar-10-batches-py/``: pickled ``data_batch_1..5``,
  ``test_batch``, ``batches.meta``), read with pickle and numpy; the validation set is held out of the training
  batches. ``download=True`` fetches the official archive with urllib when the folder lacks it.

The validation set picks each optimizer's best cell and the test set reports it, so that the reported errors
are not selected on the data that measures them.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import tarfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from .config import DataConfig
from .files import atomic_write

__all__ = ["CIFAR10_URL", "DataError", "Splits", "load_splits", "prepare_data", "read_cifar10"]

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR10_FOLDER = "cifar-10-batches-py"
# Per-channel mean and std of the CIFAR-10 training images (in [0, 1]), the usual normalization.
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
DIGITS_SIZE = 1797


class DataError(ValueError):
    """Data that cannot be read or does not fit the config; the message is one line naming the path or size."""


@dataclass
class Splits:
    """Train / validation / test inputs and labels.

    ``x_*`` hold float32 inputs of shape (N, channels, length) for signals, or uint8 images (N, 3, 32, 32)
    that :attr:`to_input` turns into normalized float32 (kept as uint8 in memory: 4x less than float).
    """

    name: str
    x_train: Tensor
    y_train: Tensor
    x_val: Tensor
    y_val: Tensor
    x_test: Tensor
    y_test: Tensor
    num_classes: int
    to_input: Callable[[Tensor], Tensor]

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    def to(self, device: torch.device) -> "Splits":
        moved = {k: getattr(self, k).to(device) for k in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test")}
        return Splits(self.name, num_classes=self.num_classes, to_input=self.to_input, **moved)


def _identity(x: Tensor) -> Tensor:
    return x


def _normalize_cifar(x: Tensor) -> Tensor:
    """uint8 (N, 3, 32, 32) -> float32, per channel (x / 255 - mean) / std."""
    mean = torch.tensor(CIFAR10_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR10_STD, device=x.device).view(1, 3, 1, 1)
    return (x.float() / 255 - mean) / std


def _split(
    config: DataConfig, x: np.ndarray, y: np.ndarray, name: str, to_input: Callable, num_classes: int | None = None
) -> Splits:
    """``num_classes``: when None, the largest label + 1."""
    train, val = config.train_size, config.val_size
    end = train + val + config.test_size
    return Splits(
        name,
        torch.from_numpy(x[:train]), torch.from_numpy(y[:train]),
        torch.from_numpy(x[train : train + val]), torch.from_numpy(y[train : train + val]),
        torch.from_numpy(x[train + val : end]), torch.from_numpy(y[train + val : end]),
        num_classes=int(y.max()) + 1 if num_classes is None else num_classes, to_input=to_input,
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------------- mnist1d


def _mnist1d_cache_path(config: DataConfig, cache_dir: Path) -> Path:
    total = config.train_size + config.val_size + config.test_size
    tag = hashlib.sha256(json.dumps([total, config.seed]).encode()).hexdigest()[:10]
    return cache_dir / f"mnist1d-{total}-seed{config.seed}-{tag}.npz"


def _generate_mnist1d(total: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``total`` MNIST-1D examples from the package's generator with its default shape arguments.

    ``num_samples`` is rounded up to a multiple of 10 (the generator makes num_samples // 10 per class) and
    ``train_split`` set to 1 so that one call returns every example; we split them ourselves.
    """
    import mnist1d.data  # the sweep extra; imported here so that the other datasets do not need it

    args = mnist1d.data.get_dataset_args()
    args.num_samples = -(-total // 10) * 10
    args.train_split = 1.0
    args.seed = seed
    # make_dataset reseeds numpy's and random's global generators; keep the caller's state.
    import random

    saved = np.random.get_state(), random.getstate()
    try:
        dataset = mnist1d.data.make_dataset(args)
    finally:
        np.random.set_state(saved[0])
        random.setstate(saved[1])
    x = dataset["x"].astype(np.float32)[:total, None, :]  # (N, 1 channel, 40 samples)
    y = dataset["y"].astype(np.int64)[:total]
    return x, y


def _mnist1d(config: DataConfig, cache_dir: Path | None) -> Splits:
    path = _mnist1d_cache_path(config, cache_dir) if cache_dir is not None else None
    if path is not None and path.exists():
        with np.load(path) as arrays:
            x, y = arrays["x"], arrays["y"]
    else:
        x, y = _generate_mnist1d(config.train_size + config.val_size + config.test_size, config.seed)
        if path is not None:
            _atomic_save_npz(path, x=x, y=y)
    return _split(config, x, y, "mnist1d", _identity)


def _atomic_save_npz(path: Path, **arrays: np.ndarray) -> None:
    """Write atomically: a worker reading the cache concurrently sees no file or the whole file. A failed write
    (a full disk) leaves no file and is a DataError naming the cache file."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(path) as handle:
            np.savez(handle, **arrays)  # type: ignore[arg-type]  # numpy's stubs take the first keyword for allow_pickle
    except OSError as error:
        raise DataError(f"cannot write the data cache {str(path)!r}: {error.strerror or error}") from None


# ----------------------------------------------------------------------------------------------------- digits


def _digits(config: DataConfig) -> Splits:
    from sklearn.datasets import load_digits  # bundled with scikit-learn: no download

    digits = load_digits()
    x = (digits.data.astype(np.float32) / 16.0 - 0.5) / 0.5  # pixel values 0..16 -> [-1, 1]
    y = digits.target.astype(np.int64)
    order = np.random.default_rng(config.seed).permutation(len(y))  # the bundled copy is sorted by writer
    return _split(config, x[order][:, None, :], y[order], "digits", _identity)


# ---------------------------------------------------------------------------------------------------- cifar10


def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as handle:
            return pickle.load(handle, encoding="bytes")
    except (OSError, pickle.UnpicklingError, EOFError, ValueError) as error:
        raise DataError(f"cannot read CIFAR-10 batch {str(path)!r}: {error}") from None


def _batch_arrays(path: Path) -> tuple[np.ndarray, np.ndarray]:
    batch = _unpickle(path)
    try:
        data = np.asarray(batch[b"data"], dtype=np.uint8)
        labels = np.asarray(batch[b"labels"], dtype=np.int64)
    except (KeyError, TypeError) as error:
        raise DataError(f"CIFAR-10 batch {str(path)!r} lacks its data/labels entries ({error})") from None
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(labels) != len(data):
        raise DataError(f"CIFAR-10 batch {str(path)!r} has data of shape {data.shape}, expected (N, 3072)")
    return data.reshape(-1, 3, 32, 32), labels  # rows are 1024 red, 1024 green, 1024 blue values


def cifar10_folder(data_dir: str | Path) -> Path:
    """The ``cifar-10-batches-py`` folder inside ``data_dir`` (or ``data_dir`` itself if it is that folder)."""
    root = Path(data_dir).expanduser()
    return root if root.name == CIFAR10_FOLDER else root / CIFAR10_FOLDER


def read_cifar10(data_dir: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """(train images, train labels, test images, test labels, class names) from torchvision's folder format.

    Images are uint8 of shape (N, 3, 32, 32). Raises :class:`DataError` naming the missing or broken file.
    """
    folder = cifar10_folder(data_dir)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    missing = [name for name in names if not (folder / name).is_file()]
    if missing:
        raise DataError(
            f"data folder {str(folder)!r} is not readable CIFAR-10: missing {', '.join(missing)} "
            "(expected torchvision's cifar-10-batches-py; pass --download to fetch it)"
        )
    train = [_batch_arrays(folder / name) for name in names[:5]]
    x_test, y_test = _batch_arrays(folder / "test_batch")
    meta_path = folder / "batches.meta"
    classes = [f"class {i}" for i in range(10)]
    if meta_path.is_file():
        classes = [name.decode() for name in _unpickle(meta_path).get(b"label_names", [])] or classes
    x_train = np.concatenate([x for x, _ in train])
    y_train = np.concatenate([y for _, y in train])
    return x_train, y_train, x_test, y_test, classes


def download_cifar10(data_dir: str | Path) -> Path:
    """Fetch and unpack the official CIFAR-10 python archive into ``data_dir`` (checked by MD5)."""
    root = Path(data_dir).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    archive = root / "cifar-10-python.tar.gz"
    if not archive.exists():
        partial = archive.with_suffix(".part")
        try:
            urllib.request.urlretrieve(CIFAR10_URL, partial)
        except OSError as error:
            raise DataError(f"cannot download CIFAR-10 from {CIFAR10_URL}: {error}") from None
        os.replace(partial, archive)
    digest = hashlib.md5(archive.read_bytes()).hexdigest()
    if digest != CIFAR10_MD5:
        raise DataError(f"{str(archive)!r} has MD5 {digest}, expected {CIFAR10_MD5}; delete it and retry")
    with tarfile.open(archive) as tar:
        tar.extractall(root, filter="data") if hasattr(tarfile, "data_filter") else tar.extractall(root)
    return cifar10_folder(root)


def _cifar10(config: DataConfig) -> Splits:
    x_train, y_train, x_test, y_test, _ = read_cifar10(config.data_dir)
    if config.train_size + config.val_size > len(x_train) or config.test_size > len(x_test):
        raise DataError(
            f"CIFAR-10 in {config.data_dir!r} has {len(x_train)} training and {len(x_test)} test images; "
            f"the config asks for {config.train_size} + {config.val_size} (train + validation) and {config.test_size}"
        )
    # The validation images are held out of the training batches with a seeded permutation.
    order = np.random.default_rng(config.seed).permutation(len(x_train))
    x_train, y_train = x_train[order], y_train[order]
    end = config.train_size + config.val_size
    x = np.concatenate([x_train[:end], x_test[: config.test_size]])
    y = np.concatenate([y_train[:end], y_test[: config.test_size]])
    # 10 classes even when a small subset lacks the last label.
    return _split(config, x, y, "cifar10", _normalize_cifar, num_classes=10)


# --------------------------------------------------------------------------------------------------- entry


def check_sizes(config: DataConfig) -> None:
    total = config.train_size + config.val_size + config.test_size
    if config.dataset == "digits" and total > DIGITS_SIZE:
        raise DataError(
            f"data sizes {config.train_size} + {config.val_size} + {config.test_size} = {total} exceed the "
            f"{DIGITS_SIZE} examples of digits"
        )


def prepare_data(config: DataConfig, cache_dir: Path) -> None:
    """Make the data available to workers before a sweep starts, and fail early (DataError) if it cannot be:
    generate and cache MNIST-1D, download CIFAR-10 if asked, and read the CIFAR-10 folder once."""
    check_sizes(config)
    if config.dataset == "mnist1d":
        path = _mnist1d_cache_path(config, cache_dir)
        if not path.exists():
            _mnist1d(config, cache_dir)
    elif config.dataset == "cifar10":
        if config.download and not (cifar10_folder(config.data_dir) / "test_batch").is_file():
            download_cifar10(config.data_dir)
        _cifar10(config)


def load_splits(config: DataConfig, cache_dir: Path | None = None) -> Splits:
    """The splits described by ``config`` (MNIST-1D read from ``cache_dir`` when it was prepared there)."""
    check_sizes(config)
    if config.dataset == "mnist1d":
        return _mnist1d(config, cache_dir)
    if config.dataset == "digits":
        return _digits(config)
    if config.dataset == "cifar10":
        return _cifar10(config)
    raise DataError(f"unknown dataset {config.dataset!r}")
