"""One run (reproducible, divergence) and the store (resume, duplicates, versions, concurrent writers)."""

from __future__ import annotations

import csv
import multiprocessing
import sqlite3

import pytest
import torch

import decoupled
from decoupled.experiments.backends import LocalBackend, RunFinished, WorkerSetup
from decoupled.experiments.config import load_sweep_config
from decoupled.experiments.data import load_splits, prepare_data
from decoupled.experiments.store import SCHEMA_VERSION, Store, StoreError
from decoupled.experiments.sweep import ExecutionOptions, run_sweep
from decoupled.experiments.progress import PlainProgress
from decoupled.experiments.train import RunRecord, RunTask, make_optimizer, train_run

from .conftest import tiny_overrides


def test_the_four_optimizers_share_two_classes_and_differ_in_convention(tiny_config):
    model = torch.nn.Linear(2, 2)
    expected = {"adam": (decoupled.AdamW, "l2"), "adamw": (decoupled.AdamW, "decoupled"),
                "sgd": (decoupled.SGDW, "l2"), "sgdw": (decoupled.SGDW, "decoupled")}  # fmt: skip
    for name, (cls, decay) in expected.items():
        optimizer = make_optimizer(tiny_config.run_config(name, 0.01, 1e-3), model)
        assert type(optimizer) is cls
        assert {g["decay"] for g in optimizer.param_groups} == {decay}
        assert {g["weight_decay"] for g in optimizer.param_groups} == {1e-3}


def test_a_run_is_reproducible_in_any_process(tmp_path, tiny_config):
    """The same cell and seed give the same numbers in this process and in a spawned worker."""
    prepare_data(tiny_config.data, tmp_path)
    splits = load_splits(tiny_config.data, tmp_path)
    config = tiny_config.run_config("sgdw", 0.1, 1e-4)
    here = train_run(config, 1, splits, torch.device("cpu"))
    again = train_run(config, 1, splits, torch.device("cpu"))
    assert (here.train_loss, here.test_error) == (again.train_loss, again.test_error)
    events = list(LocalBackend(workers=1).run(WorkerSetup(tiny_config.data, str(tmp_path), "cpu"), [RunTask(config, 1)]))
    remote = next(e.record for e in events if isinstance(e, RunFinished))
    assert (remote.train_loss, remote.val_error, remote.test_error) == (here.train_loss, here.val_error, here.test_error)
    assert remote.provenance["hardware"]["torch_threads"] == 1
    other_seed = train_run(config, 2, splits, torch.device("cpu"))
    assert other_seed.train_loss != here.train_loss


def test_a_diverging_run_is_recorded_as_diverged(tmp_path, tiny_config):
    splits = load_splits(tiny_config.data)
    # theta <- (1 - eta_t lambda) theta with lambda = 1e30: the weights overflow within two steps.
    record = train_run(tiny_config.run_config("sgdw", 0.1, 1e30), 0, splits, torch.device("cpu"))
    assert record.diverged and record.final_test_error is None and record.final_val_error is None
    with Store.open(tmp_path) as store:
        assert store.add_run(record)
        (row,) = store.runs()
    assert row["diverged"] is True and row["final_test_error"] is None


def _record(config, seed: int, error: float = 0.1) -> RunRecord:
    return RunRecord(config, seed, [1.0], [error], [error], error, error, False, 1.0, "cpu",
                     provenance={"code_version": "test", "library_versions": {}, "hardware": {}})  # fmt: skip


def test_store_never_records_a_run_twice(tmp_path, tiny_config):
    config = tiny_config.run_config("adamw", 0.01, 1e-3)
    with Store.open(tmp_path) as store:
        assert store.add_run(_record(config, 0)) is True
        assert store.add_run(_record(config, 0, error=0.5)) is False
        assert store.add_run(_record(config, 1)) is True
        assert store.finished_keys() == {(config.key(), 0), (config.key(), 1)}
        assert [r["final_test_error"] for r in store.runs()] == [0.1, 0.1]  # the first record stands
    assert sqlite3.connect(tmp_path / "results.sqlite").execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_store_of_another_schema_version_is_refused_and_left_alone(tmp_path):
    Store.open(tmp_path).close()
    db = sqlite3.connect(tmp_path / "results.sqlite")
    db.execute("UPDATE meta SET value = '999' WHERE key = 'schema_version'")
    db.commit()
    db.close()
    before = (tmp_path / "results.sqlite").read_bytes()
    with pytest.raises(StoreError) as caught:
        Store.open(tmp_path)
    assert f"written with store schema version 999; this version of decoupled reads version {SCHEMA_VERSION}" in str(caught.value)
    assert (tmp_path / "results.sqlite").read_bytes() == before


def test_a_file_that_is_not_a_store_is_refused(tmp_path):
    (tmp_path / "results.sqlite").write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError, match="is not a readable results store"):
        Store.open(tmp_path)
    other = tmp_path / "other"
    other.mkdir()
    db = sqlite3.connect(other / "results.sqlite")
    db.execute("CREATE TABLE t (x)")
    db.commit()
    db.close()
    with pytest.raises(StoreError, match="is an SQLite file but not a decoupled results store"):
        Store.open(other)


def _write_many(folder: str, worker: int, count: int) -> None:
    """Write ``count`` runs, half of them also written by the other writer (same keys)."""
    config = load_sweep_config("smoke", overrides=tiny_overrides())
    with Store.open(folder) as store:
        for index in range(count):
            seed = index if index % 2 == 0 else 1000 * (worker + 1) + index
            store.add_run(_record(config.run_config("adamw", 0.01, 1e-3), seed))


def test_two_concurrent_writers_do_not_corrupt_the_store(tmp_path):
    context = multiprocessing.get_context("spawn")
    writers = [context.Process(target=_write_many, args=(str(tmp_path), w, 60)) for w in range(2)]
    for process in writers:
        process.start()
    for process in writers:
        process.join(timeout=120)
        assert process.exitcode == 0
    db = sqlite3.connect(tmp_path / "results.sqlite")
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    # 30 shared seeds (recorded once) + 30 own seeds per writer
    assert db.execute("SELECT COUNT(*) FROM runs").fetchone()[0] == 30 + 2 * 30
    assert db.execute("SELECT COUNT(DISTINCT config_hash || seed) FROM runs").fetchone()[0] == 90


def test_resume_skips_finished_runs(tmp_path, tiny_config, capsys):
    options = ExecutionOptions(out=tmp_path, workers=2)
    first = run_sweep(tiny_config, options, PlainProgress())
    assert (first.planned, first.recorded, first.skipped, first.failed) == (4, 4, 0, [])
    with Store.open(tmp_path) as store:
        rows = {(r["config_hash"], r["seed"]): r["id"] for r in store.runs()}
    second = run_sweep(tiny_config, options, PlainProgress())
    assert (second.recorded, second.skipped) == (0, 4)
    wider = load_sweep_config("smoke", overrides=tiny_overrides(seeds=2))
    third = run_sweep(wider, options, PlainProgress())
    assert (third.recorded, third.skipped) == (4, 4)  # only the new seed runs
    with Store.open(tmp_path) as store:
        after = {(r["config_hash"], r["seed"]): r["id"] for r in store.runs()}
        sweeps = store.latest_sweep()
    assert len(after) == 8 and all(after[key] == value for key, value in rows.items())
    assert sweeps == wider
    assert "4 runs to do (4 already in the store)" in capsys.readouterr().out
    with open(tmp_path / "results.csv", newline="") as handle:
        assert len(list(csv.DictReader(handle))) == 8
