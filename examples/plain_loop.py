"""A plain PyTorch training loop with the paper's AdamW and warm restarts (AdamWR).

    python examples/plain_loop.py                  # AdamW, 3 epochs on synthetic data, CPU
    python examples/plain_loop.py --optimizer sgdw --epochs 1 --amp

What it shows: parameter groups without decay on biases and norms; weight decay in the paper's units (a
per-step decay that follows the schedule but is NOT multiplied by the learning rate), here normalized and
recomputed at each restart (appendix B.1); the SGDR schedule stepped every batch; and, with ``--amp``, bf16
autocast with a GradScaler. Under DDP or FSDP2 the loop is the same: see docs/distributed.md.
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

import decoupled

# Hyperparameters in one place.
LR = {"adamw": 3e-3, "sgdw": 0.05}  # alpha, the peak learning rate
WEIGHT_DECAY_NORM = 0.025  # lambda_norm: per-step decay lambda = lambda_norm * sqrt(1 / (batches per epoch * T_i))
BATCH_SIZE = 64
FIRST_PERIOD = 1  # T_0, the first restart period in epochs; each next one is PERIOD_MULT times longer
PERIOD_MULT = 2


def make_data(samples: int, seed: int = 0) -> torch.utils.data.TensorDataset:
    """A synthetic 10-class problem: labels from a random linear map of 32 features."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(samples, 32, generator=generator)
    y = (x @ torch.randn(32, 10, generator=generator)).argmax(dim=1)
    return torch.utils.data.TensorDataset(x, y)


def make_model() -> nn.Module:
    return nn.Sequential(nn.Linear(32, 64), nn.LayerNorm(64), nn.ReLU(), nn.Linear(64, 10))


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description="AdamW/SGDW with warm restarts on synthetic data")
    parser.add_argument("--optimizer", choices=["adamw", "sgdw"], default="adamw")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--samples", type=int, default=4096)
    parser.add_argument("--amp", action="store_true", help="bf16 autocast and a GradScaler")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    torch.manual_seed(args.seed)
    loader = torch.utils.data.DataLoader(make_data(args.samples, args.seed), batch_size=BATCH_SIZE, shuffle=True)
    model = make_model()

    # Two groups: "decay" (the weight matrices) and "no_decay" (biases, LayerNorm). The scheduler below sets
    # each group's weight_decay, so the value given here is a placeholder.
    groups = decoupled.param_groups(model, weight_decay=0.0)
    if args.optimizer == "adamw":
        optimizer = decoupled.AdamW(groups, lr=LR["adamw"])
    else:
        optimizer = decoupled.SGDW(groups, lr=LR["sgdw"], momentum=0.9)
    scheduler = decoupled.CosineWarmRestarts(
        optimizer, first_period=FIRST_PERIOD, steps_per_epoch=len(loader), period_mult=PERIOD_MULT,
        weight_decay_norm=[WEIGHT_DECAY_NORM, 0.0],  # one per group: decay, no_decay
    )  # fmt: skip
    scaler = torch.amp.GradScaler("cpu", enabled=args.amp)

    loss = torch.tensor(float("nan"))
    for epoch in range(args.epochs):
        decay = decoupled.effective_decay(optimizer)[0]  # theta <- (1 - decay) theta at this step
        total = 0.0
        for x, y in loader:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.amp):
                loss = nn.functional.cross_entropy(model(x), y)
            scaler.scale(loss).backward()
            scaler.step(optimizer)  # skipped, and nothing decayed, if the gradients hold inf/NaN
            scaler.update()
            scheduler.step()  # every batch: T_cur advances by 1 / len(loader) epochs
            optimizer.zero_grad(set_to_none=True)
            total += loss.item()
        print(f"epoch {epoch + 1}: mean loss {total / len(loader):.4f} (per-step decay at its start {decay:.2e})")
    return loss.item()


if __name__ == "__main__":
    main()
