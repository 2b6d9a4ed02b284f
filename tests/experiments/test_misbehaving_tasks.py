"""User tasks that break the toolkit's contract: data that differs between processes (refused before any run,
the folder left as it was), more or fewer reports than epochs, errors that are not fractions (failed runs with
the reason)."""

from __future__ import annotations

import textwrap

import pytest
import torch
from torch import nn

from decoupled.experiments import LoopTask, Task
from decoupled.experiments.backends import train_task
from decoupled.experiments.config import load_sweep_config, with_task_data
from decoupled.experiments.train import RunTask

from .conftest import refused_unchanged, tensor_data
from .test_faults import _store_with_runs

CPU = torch.device("cpu")


DIFFERENT_DATA = """
    import multiprocessing
    import torch
    from torch import nn
    from decoupled.experiments import Data, Task

    def data():
        # 120 examples in the sweep process, 60 in a worker: data that depends on where it is loaded.
        n = 120 if multiprocessing.current_process().name == "MainProcess" else 60
        x = torch.randn(n, 4, generator=torch.Generator().manual_seed(0))
        y = (x[:, 0] > 0).long()
        third = n // 3
        return Data(train=(x[:third], y[:third]), val=(x[third:2 * third], y[third:2 * third]),
                    test=(x[2 * third:], y[2 * third:]))

    task = Task(model=lambda: nn.Linear(4, 2), data=data, name="moving")
"""


def test_a_task_whose_data_differs_in_the_workers_is_refused_before_any_run(capsys, tmp_path):
    path = tmp_path / "moving.py"
    path.write_text(textwrap.dedent(DIFFERENT_DATA))
    argv = ["sweep", "--task", str(path), "--preset", "smoke", "--optimizers", "sgdw", "--seeds", "1", "--epochs",
            "1", "--lr", "0.1", "--weight-decay", "0.001", "--workers", "1", "--no-report"]  # fmt: skip
    fresh = tmp_path / "fresh"
    line = refused_unchanged(capsys, [*argv, "--out", str(fresh)], "task 'moving': its data differs between", fresh)
    assert "40 train / 40 validation / 40 test examples" in line and "20 train / 20 validation / 20 test" in line
    assert not fresh.exists()
    resumed = tmp_path / "resumed"  # a folder with a store of other runs: untouched, its latest sweep included
    _store_with_runs(resumed, count=2)
    refused_unchanged(capsys, [*argv, "--out", str(resumed)], "its data differs between processes", resumed)


def _loop_task(reports_per_epoch: float) -> LoopTask:
    def train(run):
        model = nn.Linear(4, 2)
        run.optimizer(model, steps_per_epoch=1)
        for _ in range(int(run.epochs * reports_per_epoch)):
            run.report(0.5, 0.25, 0.125)

    return LoopTask(train=train, name="counting")


@pytest.mark.parametrize(
    "reports_per_epoch, message",
    [
        (2, "RuntimeError: run.report was called for epoch 3 of a 2-epoch run: report once per epoch"),
        (0.5, "RuntimeError: the task reported 1 epochs of a 2-epoch run (call run.report once per epoch"),
    ],
)
def test_a_loop_task_reporting_more_or_fewer_epochs_than_planned_fails_the_run(reports_per_epoch, message):
    task = _loop_task(reports_per_epoch)
    config = with_task_data(load_sweep_config("smoke", overrides={"train": {"epochs": 2}}, task=task), (0, 0, 0))
    run = RunTask(config.run_config("adamw", 0.01, 1e-3), 0)
    outcome = train_task(run, None, CPU, {}, task, None)
    assert outcome[0] == "failed" and outcome[1].startswith(message), outcome[1]
    assert train_task(run, None, CPU, {}, _loop_task(1), None)[0] == "finished"  # once per epoch: a run


def _percent_error(outputs, targets):
    return 100.0 * (outputs.argmax(1) != targets).float()


def test_an_error_outside_0_1_fails_the_run_with_the_scale_named():
    data = tensor_data()
    task = Task(model=lambda: nn.Linear(4, 2), data=data, error=_percent_error, name="percent")
    config = with_task_data(load_sweep_config("smoke", overrides={"train": {"epochs": 1}}, task=task), data.sizes)
    outcome = train_task(RunTask(config.run_config("sgdw", 0.1, 1e-4), 0), None, CPU, {}, task, data)
    assert outcome[0] == "failed", outcome
    assert outcome[1].startswith("ValueError: run.report: val_error must be a fraction in [0, 1]"), outcome[1]
    assert "report a percentage divided by 100" in outcome[1]


