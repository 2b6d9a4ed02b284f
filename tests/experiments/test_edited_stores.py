"""Stores edited by hand or written by another program: every row and the latest sweep's config are checked
before a number is computed from them, and a store that a full disk cut short is never left behind. Each is one
line naming the file and the row, exit code 2, and every file as it was."""

from __future__ import annotations

import json
import shutil
import sqlite3
import textwrap
from pathlib import Path

import pytest

from decoupled.cli import main
from decoupled.experiments import store as store_module
from decoupled.experiments.config import load_sweep_config

from .conftest import add_runs, refused, refused_unchanged, tiny_overrides
from .test_cli import TINY
from .test_faults import inline  # noqa: F401 - a fixture


def _edit_store(folder: Path, sql: str, *args) -> None:
    """An edit by hand (or by another program): one statement, committed, the connection closed."""
    db = sqlite3.connect(folder / "results.sqlite")
    with db:
        db.execute(sql, args)
    db.close()


def _stored_folder(tmp_path: Path) -> tuple[Path, list]:
    folder = tmp_path / "out"
    config = load_sweep_config("smoke", overrides=tiny_overrides(seeds=2))
    add_runs(folder, config)
    return folder, ["sweep", "--preset", "smoke", "--config", str(_tiny_toml(tmp_path)), "--out", str(folder),
                    "--no-report", "--workers", "1"]  # fmt: skip


def _tiny_toml(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text(textwrap.dedent("""
        seeds = 2
        data = { train_size = 300, val_size = 150, test_size = 150 }
        model = { width = 8 }
        train = { epochs = 1, batch_size = 64 }
        grid.adam = { lr = [0.01], weight_decay = [1e-4] }
        grid.adamw = { lr = [0.01], weight_decay = [1e-3] }
        grid.sgd = { lr = [0.1], weight_decay = [1e-4] }
        grid.sgdw = { lr = [0.1], weight_decay = [1e-5] }
    """))
    return path


@pytest.mark.parametrize(
    "column, value, problem",
    [
        ("final_test_error", None, "final_test_error is NULL in a run that did not diverge"),
        ("final_val_error", "NaN", "final_val_error is 'NaN' in a run that did not diverge"),
        ("config", '{"train": {"epochs": 1}', "config is not JSON"),
        ("val_error", "[0.1, oops]", "val_error is not JSON"),
        ("extra", "[]", "extra must be a JSON object, got []"),
        ("test_error", '["0.1"]', "test_error must be a JSON list of numbers"),
        ("seed", -1, "seed must be an integer >= 0, got -1"),
    ],
)
def test_a_damaged_row_is_named_by_report_and_sweep_which_touch_nothing(capsys, tmp_path, column, value, problem):
    folder, sweep = _stored_folder(tmp_path)
    _edit_store(folder, f"UPDATE runs SET {column} = ? WHERE id = 3", value)
    for argv in (["report", str(folder)], sweep):
        line = refused_unchanged(capsys, argv, f"{str(folder / 'results.sqlite')!r}: run row 3 is damaged", folder)
        assert problem in line and "DELETE FROM runs WHERE id = 3" in line, line
    _edit_store(folder, "DELETE FROM runs WHERE id = 3")  # the fix the message gives
    assert main(["report", str(folder)]) == 0


def test_a_sweep_config_that_does_not_parse_or_names_an_unknown_optimizer_is_named(capsys, tmp_path):
    folder, _ = _stored_folder(tmp_path)
    db = sqlite3.connect(folder / "results.sqlite")
    (stored,) = db.execute("SELECT config FROM sweeps").fetchone()
    db.close()
    newer = json.loads(stored)
    newer["grids"][0]["optimizer"] = "lion"  # as a newer version, with an optimizer this one lacks, would write
    for config, expected in ((json.dumps(newer), "unknown optimizer 'lion'"), ("{'name': 1", "Expecting property")):
        _edit_store(folder, "UPDATE sweeps SET config = ?", config)
        line = refused_unchanged(capsys, ["report", str(folder)], "the config of its latest sweep (row 1", folder)
        assert expected in line and str(folder / "results.sqlite") in line, line


def test_a_store_created_on_a_full_disk_is_named_as_such_and_not_left_behind(capsys, tmp_path, inline, monkeypatch):  # noqa: F811
    """On a full disk SQLite's writes fail silently where it cannot report them (a WAL checkpoint when the
    connection closes): simulated here by a new store file that is cut short as its connection closes."""
    connect = sqlite3.connect

    class CutShort:
        def __init__(self, path, *args, **kwargs):
            self._path, self._db = str(path), connect(path, *args, **kwargs)

        def close(self):
            self._db.close()
            if Path(self._path).name.startswith(".results-"):
                with open(self._path, "r+b") as handle:
                    handle.truncate(4096)  # the schema's pages never reached the file

        def __getattr__(self, name):
            return getattr(self._db, name)

    monkeypatch.setattr(store_module.sqlite3, "connect", CutShort)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(1 << 30, 1 << 30, 4096))
    out = tmp_path / "out"
    line = refused(capsys, ["sweep", *TINY, "--out", str(out), "--no-report"], "cannot create")
    assert "no space left on device" in line and ".recover" not in line and "damaged" not in line, line
    assert not (out / "results.sqlite").exists() and not list(out.glob(".results-*"))


