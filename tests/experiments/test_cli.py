"""The command line's refusals: one line on stderr naming the bad value, exit code 2, stored results intact."""

from __future__ import annotations

import sqlite3

import pytest

from decoupled.cli import COMMANDS, build_parser

from .conftest import cli, write_tiny_cifar
from .conftest import refused as _refused

TINY = ["--preset", "smoke", "--seeds", "1", "--epochs", "1", "--train-size", "200", "--val-size", "100",
        "--test-size", "100", "--optimizers", "sgdw", "--lr", "0.1", "--weight-decay", "0.0001"]  # fmt: skip


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["sweep", "--preset", "nope"], "decoupled sweep: error: unknown preset 'nope'; choose one of: default, paper, smoke"),
        (["sweep", "--set", "train.epoch=3"], "unknown config key train.epoch;"),
        (["sweep", "--set", "grid.adamw.lr_log2=[-4,-8]"], "empty grid: grid.adamw.lr_log2 = [-4, -8] gives no learning rate"),
        (["sweep", "--optimizers", ","], "empty grid: optimizers = [] selects no optimizer"),
        (["sweep", "--lr", "-0.1"], "grid.adam.lr: learning rate must be > 0, got -0.1"),
        (["sweep", "--lr", "fast"], "--lr: 'fast' is not a number"),
        (["sweep", "--weight-decay", "-1e-4", "--optimizers", "sgdw"], "grid.sgdw.weight_decay: weight decay must be >= 0, got -0.0001"),
        (["sweep", "--workers", "0"], "--workers must be >= 1, got 0"),
        (["sweep", "--workers", "two"], "argument --workers: invalid int value: 'two'"),
        (["sweep", "--device", "tpu"], "argument --device: invalid choice: 'tpu'"),
        (["sweep", "--backend", "dask"], "argument --backend: invalid choice: 'dask'"),
        (["sweep", "--config", "/nonexistent/sweep.toml"], "cannot read config file '/nonexistent/sweep.toml'"),
        (["bogus"], "argument COMMAND: invalid choice: 'bogus'"),
    ],
)
def test_bad_input_exits_2_with_one_line(capsys, argv, expected):
    _refused(capsys, argv, expected)


def test_unreadable_data_folder_exits_2(capsys, tmp_path):
    argv = ["sweep", *TINY, "--dataset", "cifar10", "--set", "model.name=mlp", "--data-dir", str(tmp_path / "none"),
            "--out", str(tmp_path / "out")]  # fmt: skip
    line = _refused(capsys, argv, "is not readable CIFAR-10: missing data_batch_1")
    assert str(tmp_path / "none") in line
    assert not (tmp_path / "out").exists()  # a refused sweep leaves no empty output folder behind


def test_incompatible_store_exits_2_and_is_left_unchanged(capsys, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    db = sqlite3.connect(out / "results.sqlite")
    db.executescript("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT); INSERT INTO meta VALUES ('schema_version', '0');"
                     "CREATE TABLE runs (id INTEGER); INSERT INTO runs VALUES (7);")  # fmt: skip
    db.close()
    before = (out / "results.sqlite").read_bytes()
    _refused(capsys, ["sweep", *TINY, "--out", str(out)], "was written with store schema version 0")
    assert (out / "results.sqlite").read_bytes() == before
    _refused(capsys, ["report", str(out)], "was written with store schema version 0")


def test_report_of_a_folder_without_a_store_exits_2(capsys, tmp_path):
    _refused(capsys, ["report", str(tmp_path)], "no results store in")


def test_commands_are_a_table_that_another_command_can_join():
    assert [c.name for c in COMMANDS] == ["sweep", "report", "reproduce"]
    parser = build_parser()
    assert parser.parse_args(["report", "x"]).folder == "x"


def test_cifar10_sweep_on_a_tiny_folder_runs(tmp_path):
    """The CIFAR-10 path end to end on a tiny folder (an MLP, not Shake-Shake: the tests never train that)."""
    write_tiny_cifar(tmp_path / "data", per_batch=8, test=10)
    result = cli("sweep", *TINY, "--dataset", "cifar10", "--data-dir", str(tmp_path / "data"), "--train-size", "30",
                 "--val-size", "10", "--test-size", "10", "--set", "model.name=mlp", "--set", "data.augment=true",
                 "--batch-size", "10", "--workers", "1", "--out", str(tmp_path / "out"), "--no-report")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "recorded 1 runs (0 diverged)" in result.stdout
