"""Datasets (MNIST-1D generation, digits, the CIFAR-10 loader on a tiny folder), augmentation and the models."""

from __future__ import annotations

import pickle
import random
import urllib.request

import numpy as np
import pytest
import torch

from decoupled.experiments.augment import random_crop_flip
from decoupled.experiments.config import DataConfig, ModelConfig
from decoupled.experiments.data import DataError, load_splits, prepare_data, read_cifar10
from decoupled.experiments.models import Conv1dNet, ShakeShakeResNet, build_model, count_parameters

from .conftest import write_tiny_cifar


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """No test may reach the network: any download attempt fails loudly."""

    def refuse(*args, **kwargs):
        raise AssertionError("a test tried to download")

    monkeypatch.setattr(urllib.request, "urlretrieve", refuse)
    monkeypatch.setattr(urllib.request, "urlopen", refuse)


def test_mnist1d_is_generated_reproducibly_split_and_cached(tmp_path):
    config = DataConfig(train_size=120, val_size=40, test_size=50, seed=3)
    state = np.random.get_state()[1].copy(), random.getstate()
    prepare_data(config, tmp_path)
    assert (np.random.get_state()[1] == state[0]).all() and random.getstate() == state[1]  # caller's RNGs untouched
    assert len(list(tmp_path.glob("mnist1d-*.npz"))) == 1
    cached = load_splits(config, tmp_path)
    fresh = load_splits(config)  # generated again without the cache: the same numbers
    assert torch.equal(cached.x_train, fresh.x_train) and torch.equal(cached.y_test, fresh.y_test)
    assert (len(cached.x_train), len(cached.x_val), len(cached.x_test)) == (120, 40, 50)
    assert cached.input_shape == (1, 40) and cached.num_classes == 10
    rows = torch.cat([cached.x_train, cached.x_val, cached.x_test]).flatten(1)
    assert len(torch.unique(rows, dim=0)) == 210  # no example is in two splits
    other = load_splits(DataConfig(train_size=120, val_size=40, test_size=50, seed=4))
    assert not torch.equal(other.x_train, cached.x_train)


def test_digits_splits_and_size_limit():
    splits = load_splits(DataConfig(dataset="digits", train_size=1000, val_size=397, test_size=400))
    assert splits.input_shape == (1, 64) and splits.num_classes == 10
    with pytest.raises(DataError, match="exceed the 1797 examples of digits"):
        load_splits(DataConfig(dataset="digits", train_size=1000, val_size=500, test_size=400))


def test_cifar10_loader_on_a_tiny_folder(tmp_path):
    write_tiny_cifar(tmp_path, per_batch=6, test=8)
    x_train, y_train, x_test, y_test, classes = read_cifar10(tmp_path)
    assert x_train.shape == (30, 3, 32, 32) and x_train.dtype == np.uint8 and x_test.shape == (8, 3, 32, 32)
    assert list(y_train[:6]) == [0, 1, 2, 3, 4, 5] and classes[0] == "airplane"
    with open(tmp_path / "cifar-10-batches-py" / "data_batch_1", "rb") as handle:
        raw = pickle.load(handle, encoding="bytes")[b"data"]
    assert np.array_equal(x_train[0, 0].ravel(), raw[0, :1024])  # channel-major rows: red first
    config = DataConfig(dataset="cifar10", data_dir=str(tmp_path), train_size=25, val_size=5, test_size=8)
    splits = load_splits(config)
    assert (len(splits.x_train), len(splits.x_val), len(splits.x_test)) == (25, 5, 8)
    images = splits.to_input(splits.x_train[:2])
    assert images.dtype == torch.float32 and images.shape == (2, 3, 32, 32) and abs(float(images.mean())) < 1
    train_rows = {bytes(r) for r in splits.x_train.flatten(1).numpy()}
    assert not any(bytes(r) in train_rows for r in splits.x_val.flatten(1).numpy())  # validation held out


def test_cifar10_errors_name_the_folder_and_the_problem(tmp_path):
    with pytest.raises(DataError) as caught:
        read_cifar10(tmp_path / "nowhere")
    assert "is not readable CIFAR-10: missing data_batch_1" in str(caught.value) and "--download" in str(caught.value)
    write_tiny_cifar(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(b"not a pickle")
    with pytest.raises(DataError, match="cannot read CIFAR-10 batch"):
        read_cifar10(tmp_path)
    config = DataConfig(dataset="cifar10", data_dir=str(tmp_path / "nowhere"), download=False)
    with pytest.raises(DataError):
        prepare_data(config, tmp_path)


def test_crop_flip_keeps_shape_and_is_reproducible():
    images = torch.arange(2 * 3 * 32 * 32, dtype=torch.float32).reshape(2, 3, 32, 32)
    a = random_crop_flip(images, torch.Generator().manual_seed(0))
    b = random_crop_flip(images, torch.Generator().manual_seed(0))
    assert a.shape == images.shape and torch.equal(a, b)
    # Every output pixel is an input pixel or padding (0).
    assert set(a.unique().tolist()) <= set(images.unique().tolist()) | {0.0}


def test_conv1d_net_matches_the_pilots_size():
    model = Conv1dNet(1, 10, width=32, depth=3)
    assert count_parameters(model) == 11_018
    assert model(torch.randn(4, 1, 40)).shape == (4, 10)


def test_shake_shake_26_2x64d_has_the_papers_size():
    assert 11.5e6 < count_parameters(ShakeShakeResNet(10, width=64, depth=26)) < 11.8e6


def test_shake_shake_forward_backward_on_a_tiny_batch():
    torch.manual_seed(0)
    model = build_model(ModelConfig(name="shake_shake", width=4, depth=8), (3, 32, 32), 10)
    images = torch.randn(3, 3, 32, 32)
    logits = model(images)
    assert logits.shape == (3, 10)
    logits.logsumexp(dim=1).mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    model.eval()  # at test time the branches are averaged: deterministic
    with torch.no_grad():
        assert torch.equal(model(images), model(images))
    model.train()  # in training the mix is random per image
    with torch.no_grad():
        assert not torch.equal(model(images), model(images))


def test_models_refuse_inputs_of_the_wrong_shape():
    with pytest.raises(ValueError, match="conv1d takes"):
        build_model(ModelConfig(name="conv1d"), (3, 32, 32), 10)
    with pytest.raises(ValueError, match="shake_shake takes"):
        build_model(ModelConfig(name="shake_shake", width=4, depth=8), (1, 40), 10)
