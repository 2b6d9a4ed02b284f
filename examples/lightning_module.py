"""PyTorch Lightning: the paper's AdamW with warm restarts, returned from configure_optimizers.

    pip install lightning
    python examples/lightning_module.py --max-steps 200

Lightning calls optimizer.step() (through its closure), zero_grad() and, with ``"interval": "step"``, the
scheduler after every batch; the optimizer needs nothing Lightning-specific. The same module runs under
Lightning's DDP and FSDP strategies unchanged.
"""

from __future__ import annotations

import argparse

import lightning as L
import torch
from torch import nn

import decoupled

LR = 3e-3  # alpha, the peak learning rate
WEIGHT_DECAY = 1e-4  # paper units: the per-step decay at the peak lr (theta <- (1 - eta_t * 1e-4) theta)


class Classifier(L.LightningModule):
    def __init__(self, lr: float = LR, weight_decay: float = WEIGHT_DECAY, restart_every: int = 100) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(32, 64), nn.LayerNorm(64), nn.ReLU(), nn.Linear(64, 10))

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.cross_entropy(self.net(x), y)
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def configure_optimizers(self) -> dict:
        groups = decoupled.param_groups(self, weight_decay=self.hparams.weight_decay)  # no decay on biases, norms
        optimizer = decoupled.AdamW(groups, lr=self.hparams.lr)
        # first_period counts in "epochs" of steps_per_epoch scheduler steps; stepped every batch here.
        scheduler = decoupled.CosineWarmRestarts(optimizer, first_period=1, steps_per_epoch=self.hparams.restart_every)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def make_loader(samples: int = 2048, batch_size: int = 64, seed: int = 0) -> torch.utils.data.DataLoader:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(samples, 32, generator=generator)
    y = (x @ torch.randn(32, 10, generator=generator)).argmax(dim=1)
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=batch_size, shuffle=True)


def main(argv: list[str] | None = None) -> Classifier:
    parser = argparse.ArgumentParser(description="Lightning + decoupled.AdamW on synthetic data")
    parser.add_argument("--max-steps", type=int, default=200)
    parser.add_argument("--samples", type=int, default=2048)
    args = parser.parse_args(argv)
    L.seed_everything(0, verbose=False)
    model = Classifier(restart_every=max(args.max_steps // 2, 1))
    trainer = L.Trainer(
        max_steps=args.max_steps, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
        enable_model_summary=False, enable_progress_bar=False,
    )  # fmt: skip
    trainer.fit(model, make_loader(args.samples))
    print(f"trained {trainer.global_step} steps, last loss {trainer.callback_metrics['train_loss'].item():.4f}")
    return model


if __name__ == "__main__":
    main()
