"""The examples in examples/ run, and the calls that Lightning and the HF Trainer make work without them.

Each example runs here with a tiny setting when its framework is installed (lightning; transformers with
accelerate). Whether or not they are, the framework-free tests below make the same calls on the optimizer
and scheduler: the configure_optimizers dict Lightning validates and its closure step, and the Trainer's
step / scheduler.step / zero_grad sequence with a checkpoint round trip of both state dicts.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch
from torch import nn

import decoupled

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def load_example(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses and pickling look modules up by name
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def one_thread():
    # The examples' tiny models run faster on one thread than on two contended ones.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ------------------------------------------------------------------------------------------- the examples


@pytest.mark.parametrize("argv", [["--epochs", "2", "--samples", "512"],
                                  ["--optimizer", "sgdw", "--epochs", "1", "--samples", "256", "--amp"]])  # fmt: skip
def test_plain_loop(argv: list[str], capsys: pytest.CaptureFixture) -> None:
    final_loss = load_example("plain_loop").main(argv)
    assert final_loss == final_loss and final_loss < 2.4  # finite, and below chance level (ln 10 = 2.30) or near
    assert "epoch 1: mean loss" in capsys.readouterr().out


def test_lightning_module() -> None:
    pytest.importorskip("lightning")
    model = load_example("lightning_module").main(["--max-steps", "12", "--samples", "256"])
    optimizer = model.trainer.optimizers[0]
    assert isinstance(optimizer, decoupled.AdamW)
    assert optimizer.state and next(iter(optimizer.state.values()))["step"].item() == 12
    scheduler = model.trainer.lr_scheduler_configs[0].scheduler
    assert scheduler.last_epoch == 12  # stepped every batch ("interval": "step")


def test_hf_trainer() -> None:
    pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    trainer = load_example("hf_trainer").main(["--max-steps", "12", "--samples", "256"])
    assert trainer.state.global_step == 12
    # The Trainer steps our optimizer through accelerate's wrapper, and never builds its own.
    assert isinstance(getattr(trainer.optimizer, "optimizer", trainer.optimizer), decoupled.AdamW)
    assert trainer.lr_scheduler.last_epoch == 12


# ------------------------------------------------------------------------------------------- the same calls


def tiny() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.LayerNorm(16), nn.ReLU(), nn.Linear(16, 3))
    x, y = torch.randn(32, 8), torch.randint(0, 3, (32,))
    return model, x, y


def configure_optimizers(model: nn.Module) -> dict:
    """What examples/lightning_module.py returns."""
    optimizer = decoupled.AdamW(decoupled.param_groups(model, weight_decay=1e-4), lr=3e-3)
    scheduler = decoupled.CosineWarmRestarts(optimizer, first_period=1, steps_per_epoch=4)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def test_configure_optimizers_shape_and_closure_steps() -> None:
    model, x, y = tiny()
    config = configure_optimizers(model)
    # What Lightning checks of a configure_optimizers() dict.
    assert set(config) <= {"optimizer", "lr_scheduler", "monitor"}
    optimizer, scheduler_config = config["optimizer"], config["lr_scheduler"]
    assert isinstance(optimizer, torch.optim.Optimizer)
    assert isinstance(scheduler_config["scheduler"], torch.optim.lr_scheduler.LRScheduler)
    assert scheduler_config["scheduler"].optimizer is optimizer
    assert scheduler_config["interval"] in ("step", "epoch")
    # Lightning's automatic optimization: optimizer.step(closure), the closure runs forward and backward.
    losses = []
    for _ in range(6):

        def closure() -> torch.Tensor:
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            return loss

        losses.append(optimizer.step(closure=closure).item())
        scheduler_config["scheduler"].step()
    assert losses[-1] < losses[0]
    assert optimizer.param_groups[0]["lr"] == pytest.approx(scheduler_config["scheduler"].get_last_lr()[0])


def trainer_steps(model, optimizer, scheduler, x, y, steps: range) -> None:
    """The Hugging Face Trainer's inner loop: backward, clip, optimizer.step, scheduler.step, zero_grad."""
    for _ in steps:
        nn.functional.cross_entropy(model(x), y).backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()


@pytest.mark.parametrize("family", ["AdamW", "SGDW"])
def test_trainer_sequence_with_checkpoint_round_trip(family: str, tmp_path: Path) -> None:
    def build(model):
        groups = decoupled.param_groups(model, weight_decay=1e-3)
        if family == "AdamW":
            optimizer = decoupled.AdamW(groups, lr=3e-3)
        else:
            optimizer = decoupled.SGDW(groups, lr=0.05)
        return optimizer, decoupled.CosineWarmRestarts(optimizer, first_period=1, steps_per_epoch=3, period_mult=2)

    model, x, y = tiny()
    optimizer, scheduler = build(model)
    trainer_steps(model, optimizer, scheduler, x, y, range(4))
    # What the Trainer writes to a checkpoint folder: the model, optimizer.pt and scheduler.pt.
    torch.save(model.state_dict(), tmp_path / "model.pt")
    torch.save(optimizer.state_dict(), tmp_path / "optimizer.pt")
    torch.save(scheduler.state_dict(), tmp_path / "scheduler.pt")
    trainer_steps(model, optimizer, scheduler, x, y, range(4, 9))

    resumed, _, _ = tiny()
    torch.nn.init.zeros_(resumed[0].weight)  # only the checkpoint can make it right
    resumed.load_state_dict(torch.load(tmp_path / "model.pt"))
    optimizer2, scheduler2 = build(resumed)
    optimizer2.load_state_dict(torch.load(tmp_path / "optimizer.pt"))
    scheduler2.load_state_dict(torch.load(tmp_path / "scheduler.pt"))
    trainer_steps(resumed, optimizer2, scheduler2, x, y, range(4, 9))
    for a, b in zip(model.parameters(), resumed.parameters()):
        assert torch.equal(a, b)
    assert optimizer2.param_groups[0]["weight_decay"] == optimizer.param_groups[0]["weight_decay"]


# ------------------------------------------------------------------------------------- your own model


@pytest.mark.slow
@pytest.mark.parametrize("example", ["own_task", "own_loop"])
def test_own_model_examples_sweep_at_smoke_size(example: str, tmp_path: Path) -> None:
    """`decoupled sweep --task examples/<example>.py:task --preset smoke`, as the docs say, from the repository
    root (one seed, to keep the suite short), with its report."""
    import os
    import subprocess

    src = Path(decoupled.__file__).resolve().parents[1]
    out = tmp_path / example
    no_report = [] if example == "own_task" else ["--no-report"]  # one report is enough to check (and takes ~10 s)
    result = subprocess.run(
        [sys.executable, "-m", "decoupled.cli", "sweep", "--task", f"examples/{example}.py:task", "--preset", "smoke",
         "--seeds", "1", "--workers", "2", "--out", str(out), *no_report],
        cwd=EXAMPLES.parent, capture_output=True, text=True, timeout=600,
        env={**os.environ, "PYTHONPATH": str(src) + os.pathsep + os.environ.get("PYTHONPATH", "")},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "recorded 16 runs" in result.stdout and "FAILED" not in result.stdout
    if no_report:
        return
    markdown = (out / "report.md").read_text()
    assert "## Best setting of each optimizer" in markdown and "Data: task `digits-mlp" in markdown
    assert "1000 training / 400 validation / 397 test examples" in markdown


def test_the_declarative_example_is_under_40_lines() -> None:
    assert len((EXAMPLES / "own_task.py").read_text().splitlines()) < 40
