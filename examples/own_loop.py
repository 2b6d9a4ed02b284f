"""Your own training loop, with full control: the toolkit hands it the cell's optimizer and schedule and takes
its per-epoch numbers; everything else (DataLoader, mixed precision, gradient clipping, ...) is yours.

    decoupled sweep --task examples/own_loop.py:task --preset smoke

The same digits and MLP as examples/own_task.py, in an ordinary PyTorch loop. The data is loaded once per
worker (on Ray once in all, through the object store) and arrives as ``run.data``.
"""

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from decoupled.experiments import LoopTask, Run

from own_task import data  # the digits splits of the declarative example, next to this file


def error_rate(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        return (model(inputs).argmax(dim=1) != targets).float().mean().item()


def train(run: Run) -> None:
    """One run: ``run`` carries the cell (run.optimizer_name, run.lr, run.weight_decay, run.decay), the seed
    (already applied), run.epochs, run.batch_size, run.device and run.data."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 128), nn.BatchNorm1d(128), nn.ReLU(), nn.Linear(128, 10))
    model = model.to(run.device)
    loader = DataLoader(
        TensorDataset(*run.data.train), batch_size=run.batch_size, shuffle=True,
        generator=torch.Generator().manual_seed(run.seed),  # the batch order follows the run's seed
    )  # fmt: skip
    # The toolkit builds both: AdamW or SGDW with the cell's lr, weight decay and convention, and the sweep's
    # schedule (cosine over run.epochs, stepped per batch).
    optimizer, scheduler = run.optimizer(model, steps_per_epoch=len(loader))
    for _ in range(run.epochs):
        model.train()
        total, batches = 0.0, 0
        for inputs, targets in loader:
            with torch.autocast(run.device.type, dtype=torch.bfloat16, enabled=run.device.type == "cuda"):
                loss = nn.functional.cross_entropy(model(inputs), targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), max_norm=5.0)
            optimizer.step()
            scheduler.step()
            total, batches = total + loss.item(), batches + 1
        # A NaN or infinite number here ends the run as diverged (it raises decoupled.experiments.Diverged).
        run.report(
            train_loss=total / batches,
            val_error=error_rate(model, *run.data.val),
            test_error=error_rate(model, *run.data.test),
        )


task = LoopTask(train=train, data=data, batch_size=64, name="digits-mlp-loop")
