"""Your own model and data, declaratively: the toolkit's training loop runs it for every cell of the sweep.

    decoupled sweep --task examples/own_task.py:task --preset smoke

scikit-learn's bundled digits (8x8 images, 1797 examples, no download), a small MLP written here.
"""

import torch
from sklearn.datasets import load_digits
from torch import nn

from decoupled.experiments import Data, Task


def model() -> nn.Module:  # called once per run, after the toolkit has seeded torch
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 128), nn.BatchNorm1d(128), nn.ReLU(), nn.Linear(128, 10))


def data() -> Data:  # deterministic: called once in the sweep process and once in each worker
    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32) / 8 - 1  # pixel values 0..16 -> [-1, 1]
    y = torch.tensor(digits.target)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))  # the bundled copy is sorted
    x, y = x[order], y[order]
    return Data(train=(x[:1000], y[:1000]), val=(x[1000:1400], y[1000:1400]), test=(x[1400:], y[1400:]))


# Loss and error default to cross-entropy and classification error; epochs and the grids come from the preset.
task = Task(model=model, data=data, batch_size=64, name="digits-mlp")
