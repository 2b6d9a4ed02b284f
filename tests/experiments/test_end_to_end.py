"""End to end through the console entry point: a smoke sweep, its store, CSV, figures and report agree; a sweep
killed with SIGKILL leaves a readable store and resumes without recording anything twice."""

from __future__ import annotations

import csv
import os
import re
import sqlite3

import pytest

from decoupled.experiments.config import load_sweep_config
from decoupled.experiments.store import Store

from .conftest import cli, kill_after_runs, popen_cli

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_smoke_sweep_outputs_exist_and_agree(tmp_path):
    out = tmp_path / "smoke"
    result = cli("sweep", "--preset", "smoke", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert f"output folder: {out}" in result.stdout.splitlines()[0] and result.stdout.rstrip().endswith(str(out))
    config = load_sweep_config("smoke")
    expected_runs = sum(g.cells for g in config.grids) * config.seeds

    with Store.open(out, create=False) as store:
        rows = store.runs()
    assert len(rows) == expected_runs
    row = rows[0]
    assert row["code_version"] and row["library_versions"]["torch"] and row["hardware"]["cores"]
    assert len(row["train_loss"]) == len(row["val_error"]) == len(row["test_error"]) == config.train.epochs
    assert row["final_test_error"] == row["test_error"][-1]

    with open(out / "results.csv", newline="") as handle:
        table = list(csv.DictReader(handle))
    assert len(table) == expected_runs
    by_id = {int(r["id"]): r for r in table}
    for stored in rows:
        assert float(by_id[stored["id"]]["final_test_error"]) == stored["final_test_error"]

    for name in ("heatmaps.png", "curves.png"):
        assert (out / name).read_bytes()[:8] == PNG_MAGIC
    markdown = (out / "report.md").read_text()
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 2 and "<img" in page and 'src="heatmaps.png"' not in page

    # The report's best cells are those the store says: lowest mean validation error, reported on test.
    for optimizer in ("adam", "adamw", "sgd", "sgdw"):
        cells: dict[tuple, list] = {}
        for stored in rows:
            if stored["optimizer"] == optimizer:
                cells.setdefault((stored["lr"], stored["weight_decay"]), []).append(stored)
        best = min(cells.values(), key=lambda runs: sum(r["final_val_error"] for r in runs) / len(runs))
        mean_test = 100 * sum(r["final_test_error"] for r in best) / len(best)
        line = next(l for l in markdown.splitlines() if l.startswith("| ") and f"| {_label(optimizer)} |" in l)
        assert f"{mean_test:.2f}%" in line, (line, mean_test)
    for heading in ("## Findings", "## Best setting of each optimizer", "## Decoupled vs L2", "## Setup"):
        assert heading in markdown
    assert "decoupling slope" in markdown and "basin width" in markdown

    # `decoupled report` re-renders the same from the store alone.
    os.remove(out / "report.md")
    os.remove(out / "heatmaps.png")
    again = cli("report", str(out))
    assert again.returncode == 0, again.stderr
    rerendered = (out / "report.md").read_text()
    assert _without_timestamp(rerendered) == _without_timestamp(markdown)
    assert (out / "heatmaps.png").exists()


def _label(name: str) -> str:
    """The paper's labels, written out rather than read from OPTIMIZERS: no other test pins what the report
    calls each optimizer."""
    return {"adam": "Adam (L2)", "adamw": "AdamW", "sgd": "SGD (L2)", "sgdw": "SGDW"}[name]


def _without_timestamp(text: str) -> str:
    return re.sub(r"rendered \d{4}-\d\d-\d\d \d\d:\d\d UTC", "rendered", text)


@pytest.mark.slow
def test_sigkill_loses_only_runs_in_flight_and_resume_finishes(tmp_path):
    out = tmp_path / "killed"
    args = ["sweep", "--preset", "smoke", "--optimizers", "adamw,sgdw", "--epochs", "2", "--workers", "1",
            "--out", str(out), "--no-report"]  # fmt: skip
    store_file = out / "results.sqlite"
    kill_after_runs(popen_cli(*args), store_file)

    db = sqlite3.connect(store_file)
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    survivors = db.execute("SELECT config_hash, seed, final_test_error FROM runs").fetchall()
    db.close()
    planned = 2 * 4 * 2
    assert 2 <= len(survivors) < planned
    assert all(error is not None for _, _, error in survivors)

    resumed = cli(*args)
    assert resumed.returncode == 0, resumed.stderr
    assert f"{planned - len(survivors)} runs to do ({len(survivors)} already in the store)" in resumed.stdout
    with Store.open(out, create=False) as store:
        rows = store.runs()
    assert len(rows) == planned == len({(r["config_hash"], r["seed"]) for r in rows})
    kept = {(r["config_hash"], r["seed"]): r["final_test_error"] for r in rows}
    assert all(kept[(key, seed)] == error for key, seed, error in survivors)


@pytest.mark.slow
def test_two_sweeps_on_one_folder_record_each_run_once(tmp_path):
    """Two sweeps started together on one output folder race to create the store and the data cache and to
    record the same runs: both succeed and every run is recorded exactly once."""
    out = tmp_path / "shared"
    args = ["sweep", "--preset", "smoke", "--optimizers", "sgdw", "--epochs", "1", "--workers", "1",
            "--train-size", "300", "--val-size", "100", "--test-size", "100", "--out", str(out), "--no-report"]  # fmt: skip
    first, second = popen_cli(*args), popen_cli(*args)
    for process in (first, second):
        _, err = process.communicate(timeout=240)
        assert process.returncode == 0, err
    with Store.open(out, create=False) as store:
        rows = store.runs()
    assert len(rows) == 4 * 2 == len({(r["config_hash"], r["seed"]) for r in rows})
    assert sqlite3.connect(out / "results.sqlite").execute("PRAGMA integrity_check").fetchone()[0] == "ok"
