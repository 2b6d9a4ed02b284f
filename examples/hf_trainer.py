"""Hugging Face Trainer: pass the paper's AdamW and its schedule as ``optimizers=(optimizer, scheduler)``.

    pip install transformers accelerate
    python examples/hf_trainer.py --max-steps 200

The Trainer then uses them as given: it calls optimizer.step(), scheduler.step() and zero_grad() every step
and saves/loads both state dicts with its checkpoints. (Its own ``weight_decay`` and ``learning_rate``
arguments are ignored when the optimizer is passed in: set them on the optimizer.) Any torch module whose
forward returns a dict with a "loss" works; a transformers model works the same way.
"""

from __future__ import annotations

import argparse
import tempfile

import torch
from torch import nn
from transformers import Trainer, TrainingArguments

import decoupled

LR = 3e-3  # alpha, the peak learning rate
WEIGHT_DECAY = 1e-4  # paper units: the per-step decay at the peak lr, NOT multiplied by the lr


class Classifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(32, 64), nn.LayerNorm(64), nn.ReLU(), nn.Linear(64, 10))

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        logits = self.net(x)
        out = {"logits": logits}
        if labels is not None:
            out["loss"] = nn.functional.cross_entropy(logits, labels)
        return out


class Synthetic(torch.utils.data.Dataset):
    """A synthetic 10-class problem, as dicts of model inputs (what the Trainer's default collator stacks)."""

    def __init__(self, samples: int = 2048, seed: int = 0) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.x = torch.randn(samples, 32, generator=generator)
        self.y = (self.x @ torch.randn(32, 10, generator=generator)).argmax(dim=1)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"x": self.x[index], "labels": self.y[index]}


def main(argv: list[str] | None = None) -> Trainer:
    parser = argparse.ArgumentParser(description="HF Trainer + decoupled.AdamW on synthetic data")
    parser.add_argument("--max-steps", type=int, default=200)
    parser.add_argument("--samples", type=int, default=2048)
    parser.add_argument("--output-dir", default=None, help="checkpoints go here (default: a temporary folder)")
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    model = Classifier()
    optimizer = decoupled.AdamW(decoupled.param_groups(model, weight_decay=WEIGHT_DECAY), lr=LR)
    scheduler = decoupled.CosineWarmRestarts(optimizer, first_period=1, steps_per_epoch=max(args.max_steps // 2, 1))

    with tempfile.TemporaryDirectory() as tmp:
        training_args = TrainingArguments(
            output_dir=args.output_dir or tmp, max_steps=args.max_steps, per_device_train_batch_size=64,
            logging_steps=max(args.max_steps // 4, 1), save_strategy="no", report_to=[], use_cpu=True,
            disable_tqdm=True, seed=0,
        )  # fmt: skip
        trainer = Trainer(
            model=model, args=training_args, train_dataset=Synthetic(args.samples), optimizers=(optimizer, scheduler)
        )
        result = trainer.train()
    print(f"trained {result.global_step} steps, mean loss {result.training_loss:.4f}")
    return trainer


if __name__ == "__main__":
    main()
