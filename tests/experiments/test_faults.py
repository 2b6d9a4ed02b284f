"""Faults and bad input (issue 11): each gets one line on stderr and exit code 2 (130 for Ctrl-C), never a
traceback, and no stored run is lost or touched. Full and read-only disks are simulated by patching the writes,
so every test runs without root."""

from __future__ import annotations

import errno
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from decoupled.experiments import data as data_module
from decoupled.experiments import files as files_module
from decoupled.experiments import provenance
from decoupled.experiments import store as store_module
from decoupled.experiments import sweep as sweep_module
from decoupled.experiments.backends import RunFailed, RunFinished, RunStarted, train_task
from decoupled.experiments.config import MAX_RUNS, ConfigError, check_size, load_sweep_config
from decoupled.experiments.data import load_splits
from decoupled.experiments.progress import PlainProgress, RichProgress
from decoupled.experiments.store import Store
from decoupled.experiments.sweep import plan_tasks
from decoupled.experiments.train import RunRecord

from .conftest import _cli_env, tiny_overrides
from .test_cli import TINY, _refused

# Four optimizers x one cell x two seeds: eight runs of a fraction of a second each.
EIGHT = [*TINY[: TINY.index("--optimizers")], "--optimizers", "adam,adamw,sgd,sgdw", *TINY[TINY.index("--lr") :]]
EIGHT[EIGHT.index("--seeds") + 1] = "2"


class InlineBackend:
    """Runs the tasks one after another in this process: the sweep's own code paths, without seconds of spawning
    workers, so that the patches of a test (a full disk) apply."""

    name = "inline"
    workers = 1

    def run(self, setup, tasks):
        splits = load_splits(setup.data, Path(setup.cache_dir))
        described = provenance.describe("cpu")
        for task in tasks:
            yield RunStarted(task, 0)
            outcome = train_task(task, splits, torch.device("cpu"), described)
            if outcome[0] == "finished":
                yield RunFinished(task, 0, outcome[1])
            else:
                yield RunFailed(task, 0, *outcome[1:])


@pytest.fixture
def inline(monkeypatch):
    monkeypatch.setattr(sweep_module, "make_backend", lambda *args, **kwargs: InlineBackend())


def _sweep(out: Path, *extra: str) -> list[str]:
    return ["sweep", *EIGHT, "--out", str(out), "--no-report", *extra]


def _count_runs(out: Path) -> int:
    with sqlite3.connect(out / "results.sqlite") as db:
        return db.execute("SELECT COUNT(*) FROM runs").fetchone()[0]


def _listing(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------------------------------------- bad config


@pytest.mark.parametrize(
    "setting, expected",
    [
        ("grid.adamw.lr_log2=[1,inf]", "grid.adamw.lr_log2: exponents must be finite numbers, got [1, inf]"),
        ("grid.adamw.lr_log2=[nan,1]", "grid.adamw.lr_log2: exponents must be finite numbers, got [nan, 1]"),
        ("grid.adamw.lr_log2=[1000,1100]", "grid.adamw.lr_log2 = [1000, 1100]: 2^1024 overflows a float"),
        ("grid.adamw.weight_decay_log2=[2000,2001]", "grid.adamw.weight_decay_log2 = [2000, 2001]: 2^2000 overflows"),
        ("grid.adamw.lr_log2=[-2000,-1999]", "grid.adamw.lr_log2: learning rate must be > 0, got 0.0"),
        ("grid.adamw.lr_log2=[-40,40,1e-9]", "grid.adamw.lr_log2 = [-40, 40, 1e-09] gives 80,000,000,001 values"),
        ("data.seed=-1", "data.seed must be in [0, 2^32 - 1], got -1"),
        ("data.seed=4294967296", "data.seed must be in [0, 2^32 - 1], got 4294967296"),
        ("train.nope=1", "unknown config key train.nope; known keys here: epochs,"),
        ("name=../../escaped", "name must be a plain folder name"),
        ("name=a/b", "name must be a plain folder name"),
    ],
)
def test_bad_settings_name_their_key(capsys, setting, expected):
    _refused(capsys, ["sweep", "--set", setting], expected)


def test_both_forms_of_an_axis_in_one_config_table_are_refused(capsys, tmp_path):
    config = tmp_path / "both.toml"
    config.write_text("[grid.adamw]\nlr = [0.1]\nlr_log2 = [-3, -1]\n")
    _refused(capsys, ["sweep", "--config", str(config)], "grid.adamw: give lr or lr_log2, not both")
    both = ["--set", "grid.sgd.weight_decay=[0.1]", "--set", "grid.sgd.weight_decay_log2=[-3,-1]"]
    _refused(capsys, ["sweep", *both], "grid.sgd: give weight_decay or weight_decay_log2, not both")
    # One form in the file still replaces the preset's other form, as before.
    config.write_text("[grid.adamw]\nlr = [0.1]\n")
    assert next(g for g in load_sweep_config("smoke", config).grids if g.optimizer == "adamw").lrs == (0.1,)


def test_a_binary_config_file_is_named(capsys, tmp_path):
    config = tmp_path / "sweep.toml"
    config.write_bytes(bytes(range(256)) * 4)
    line = _refused(capsys, ["sweep", "--config", str(config)], f"config file {str(config)!r} is not TOML text")
    assert "not UTF-8" in line


def test_a_name_cannot_put_the_output_outside_runs(capsys, tmp_path, monkeypatch):
    work = tmp_path / "a" / "b"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    _refused(capsys, ["sweep", *TINY, "--set", "name=../../escaped"], "name must be a plain folder name")
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a", "b"]


@pytest.mark.parametrize(
    "flags, expected",
    [
        (["--seeds", "1000000000"], "the plan has 100,000,000,000 runs (100 cells x 1,000,000,000 seeds), more than"),
        (["--train-size", "1000000000"], "1,000,006,000 MNIST-1D examples to generate"),
    ],
)
def test_huge_plans_are_refused_before_anything_is_built(capsys, tmp_path, flags, expected):
    line = _refused(capsys, ["sweep", *flags, "--out", str(tmp_path / "out")], expected)
    assert "--allow-large" in line
    assert not (tmp_path / "out").exists()


def test_allow_large_lifts_the_size_limits(capsys, tmp_path):
    config = load_sweep_config("default", overrides={"seeds": MAX_RUNS})
    with pytest.raises(ConfigError, match=f"the plan has {config.runs:,} runs"):
        check_size(config)
    check_size(config, allow_large=True)
    # Past the size check, the sweep goes on to its next step (here a refusal of the output folder).
    (tmp_path / "file").write_text("")
    argv = ["sweep", "--seeds", "1000000000", "--allow-large", "--out", str(tmp_path / "file")]
    _refused(capsys, argv, "output folder")


# ------------------------------------------------------------------------------------------ damaged stores


def _store_with_runs(folder: Path, count: int = 60) -> None:
    config = load_sweep_config("smoke", overrides=tiny_overrides())
    with Store.open(folder) as store:
        store.add_sweep(config, "test")
        for seed in range(count):
            error = 0.1 + seed / 1000
            store.add_run(
                RunRecord(config.run_config("adamw", 0.01, 1e-3), seed, [1.0] * 20, [error] * 20, [error] * 20,
                          error, error, False, 1.0, "cpu",
                          provenance={"code_version": "t", "library_versions": {}, "hardware": {}})  # fmt: skip
            )


def test_a_store_with_a_damaged_page_is_refused_and_left_alone(capsys, tmp_path, inline):
    out = tmp_path / "out"
    _store_with_runs(out)
    path = out / "results.sqlite"
    assert path.stat().st_size > 12 * 4096
    with open(path, "r+b") as handle:  # 16 KiB of garbage over pages 8-11
        handle.seek(7 * 4096)
        handle.write(os.urandom(16 * 1024))
    before = _listing(out)
    for argv in (["report", str(out)], _sweep(out)):
        line = _refused(capsys, argv, str(path))
        assert "left unchanged" in line and ".recover" in line, line
        assert _listing(out) == before  # nothing written into the damaged file, nor beside it


def test_an_empty_store_file_is_refused_and_left_alone(capsys, tmp_path, inline):
    out = tmp_path / "out"
    out.mkdir()
    (out / "results.sqlite").write_bytes(b"")
    for argv in (["report", str(out)], _sweep(out)):
        _refused(capsys, argv, "is empty (0 bytes), not a results store")
        assert _listing(out) == {"results.sqlite": b""}


def test_two_sweeps_creating_one_store_at_once_share_it(tmp_path):
    config = load_sweep_config("smoke")
    errors = []

    def open_store(index: int) -> None:
        try:
            with Store.open(tmp_path / "out") as store:
                store.add_sweep(config, f"sweep {index}")
        except Exception as error:  # noqa: BLE001 - reported by the assertion below
            errors.append(error)

    threads = [threading.Thread(target=open_store, args=(index,)) for index in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    with sqlite3.connect(tmp_path / "out" / "results.sqlite") as db:
        assert db.execute("SELECT COUNT(*) FROM sweeps").fetchone()[0] == 4  # one store, not one per thread
    assert [p.name for p in (tmp_path / "out").iterdir() if not p.name.startswith("results.sqlite")] == []


# ---------------------------------------------------------------------------------------------- filesystem


def test_out_that_is_a_file_or_under_one_is_refused(capsys, tmp_path):
    (tmp_path / "file").write_text("keep")
    _refused(capsys, ["sweep", *TINY, "--out", str(tmp_path / "file")], "output folder")
    _refused(capsys, ["sweep", *TINY, "--out", str(tmp_path / "file" / "sub")], "which is a file")
    assert (tmp_path / "file").read_text() == "keep"


@pytest.mark.skipif(not Path("/proc/self").exists(), reason="needs Linux /proc")
def test_out_in_proc_is_refused(capsys):
    _refused(capsys, ["sweep", *TINY, "--out", "/proc/decoupled-sweep-test"], "cannot create output folder")


def _raise(code: int):
    def refuse(*args, **kwargs):
        raise OSError(code, os.strerror(code))

    return refuse


def test_a_read_only_output_folder_is_named_as_such(capsys, tmp_path, inline, monkeypatch):
    out = tmp_path / "out"
    assert main_ok(_sweep(out)) == 0  # a finished sweep
    before = _listing(out)
    monkeypatch.setattr(files_module.tempfile, "TemporaryFile", _raise(errno.EROFS))
    line = _refused(capsys, _sweep(out), "cannot write in output folder")
    assert "Read-only file system" in line and "store" not in line
    assert _listing(out) == before
    fresh = tmp_path / "fresh"
    _refused(capsys, _sweep(fresh), "Read-only file system")
    assert not fresh.exists()  # the folder it made for the probe is gone again


def test_a_report_on_a_read_only_filesystem_is_one_line(capsys, tmp_path, inline, monkeypatch):
    out = tmp_path / "out"
    assert main_ok(_sweep(out)) == 0
    monkeypatch.setattr(files_module.tempfile, "mkstemp", _raise(errno.EROFS))
    _refused(capsys, ["report", str(out)], "Read-only file system")
    assert _count_runs(out) == 8


def test_a_full_disk_for_the_data_cache_is_one_line(capsys, tmp_path, inline, monkeypatch):
    monkeypatch.setattr(data_module.np, "savez", _raise(errno.ENOSPC))
    line = _refused(capsys, _sweep(tmp_path / "out"), "cannot write the data cache")
    assert "No space left on device" in line
    assert not (tmp_path / "out").exists()


class _FullAfter:
    """A connection that reports a full disk once ``inserts`` runs have been written (as SQLite does)."""

    def __init__(self, connection: sqlite3.Connection, inserts: int):
        object.__setattr__(self, "_connection", connection)
        object.__setattr__(self, "_left", inserts)

    def execute(self, sql: str, *args):
        if sql.lstrip().startswith("INSERT OR IGNORE INTO runs"):
            if self._left == 0:
                raise sqlite3.OperationalError("database or disk is full")
            object.__setattr__(self, "_left", self._left - 1)
        return self._connection.execute(sql, *args)

    def __getattr__(self, name):
        return getattr(self._connection, name)

    def __setattr__(self, name, value):
        setattr(self._connection, name, value)


def test_a_full_disk_during_a_sweep_keeps_the_recorded_runs_and_resumes(capsys, tmp_path, inline, monkeypatch):
    out = tmp_path / "out"
    connect = sqlite3.connect
    monkeypatch.setattr(store_module.sqlite3, "connect", lambda *a, **k: _FullAfter(connect(*a, **k), 3))
    line = _refused(capsys, _sweep(out), "database or disk is full")
    assert str(out / "results.sqlite") in line and "recorded before are kept" in line
    monkeypatch.setattr(store_module.sqlite3, "connect", connect)
    assert _count_runs(out) == 3
    assert main_ok(_sweep(out)) == 0
    assert "5 runs to do (3 already in the store)" in capsys.readouterr().out
    assert _count_runs(out) == 8


def test_a_full_disk_for_the_csv_is_one_line(capsys, tmp_path, inline, monkeypatch):
    out = tmp_path / "out"
    monkeypatch.setattr(store_module, "atomic_write", _raise(errno.ENOSPC))
    line = _refused(capsys, _sweep(out), "results.csv")
    assert "No space left on device" in line
    assert _count_runs(out) == 8  # every run is stored; `decoupled report` rewrites the CSV


def test_a_full_disk_while_the_report_renders_is_one_line(capsys, tmp_path, inline, monkeypatch):
    from decoupled.experiments import report

    out = tmp_path / "out"
    assert main_ok(_sweep(out)) == 0
    monkeypatch.setattr(report, "render_report", _raise(errno.ENOSPC))
    _refused(capsys, ["report", str(out)], "No space left on device while rendering the report")


def main_ok(argv: list[str]) -> int:
    from decoupled.cli import main

    return main(argv)


# ---------------------------------------------------------------------------------------------- interrupts


def test_ctrl_c_while_the_report_renders_says_how_to_render_it(capsys, tmp_path, inline, monkeypatch):
    from decoupled.experiments import report

    out = tmp_path / "out"

    def interrupted(folder, **options):
        raise KeyboardInterrupt

    monkeypatch.setattr(report, "render_report", interrupted)
    assert main_ok(["sweep", *EIGHT, "--out", str(out)]) == 130
    err = capsys.readouterr().err
    assert f"interrupted while rendering the report; every run is stored: decoupled report {out}" in err
    assert "Traceback" not in err and _count_runs(out) == 8


def _interrupt(args: list[str], cwd: Path, when) -> subprocess.CompletedProcess:
    """Start the CLI in its own process group, wait until ``when(lines so far)``, Ctrl-C the group (as a
    terminal does: the workers too), and collect what it printed."""
    process = subprocess.Popen(
        [sys.executable, "-m", "decoupled.cli", *args], cwd=cwd, env=_cli_env(None), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    lines: list[str] = []
    while not when(lines):
        line = process.stdout.readline()
        if not line:
            break
        lines.append(line)
    os.killpg(process.pid, signal.SIGINT)
    out, err = process.communicate(timeout=240)
    return subprocess.CompletedProcess(args, process.returncode, "".join(lines) + out, err)


def test_ctrl_c_early_or_while_workers_start_is_one_line(tmp_path):
    def soon(lines):
        time.sleep(0.3)  # while Python and torch load
        return True

    early = _interrupt(["sweep", *TINY, "--out", "early"], tmp_path, soon)
    assert early.returncode in (130, -signal.SIGINT), early
    assert "Traceback" not in early.stderr and len(early.stderr.strip().splitlines()) <= 1, early.stderr
    starting = _interrupt(["sweep", *EIGHT, "--workers", "2", "--out", "s"], tmp_path, lambda lines: any(
        "starting" in line for line in lines))  # fmt: skip
    assert starting.returncode == 130, starting
    assert "Traceback" not in starting.stderr, starting.stderr  # nor from a worker still importing torch
    assert "interrupted; finished runs are stored in s" in starting.stderr


# -------------------------------------------------------------------------------------------- pipes, output


def test_a_closed_output_pipe_silences_the_sweep_which_finishes(tmp_path):
    process = subprocess.Popen(
        [sys.executable, "-m", "decoupled.cli", *_sweep(Path("out")), "--workers", "1"], cwd=tmp_path,
        env=_cli_env(None), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    head = [process.stdout.readline() for _ in range(3)]  # as `| head -3`
    process.stdout.close()
    err = process.stderr.read().decode()
    assert process.wait(timeout=240) == 0, err
    assert "Traceback" not in err and "BrokenPipe" not in err, err
    assert head[0].startswith(b"decoupled sweep")
    assert _count_runs(tmp_path / "out") == 8  # every run, not the first two


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main_ok(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == "decoupled 0.1.0"


def test_one_worker_is_singular_and_starting_workers_are_shown(tiny_config, capsys):
    import io

    stream = io.StringIO()
    progress = PlainProgress(stream)
    progress.begin(4, 0, 1)
    assert stream.getvalue().splitlines() == [
        "4 runs to do (0 already in the store) on 1 worker",
        "1 worker starting (loading torch and the data) ...",
    ]
    rich = RichProgress()
    rich.begin(4, 0, 2)
    rich.console.print(rich._render())
    rich.end()
    assert capsys.readouterr().out.count("starting (loading torch and the data)") >= 2


def test_the_first_eta_counts_workers_and_not_their_start(tiny_config, monkeypatch):
    """2 workers take 6 s to start, then every run takes 1 s: after the first run finishes, 9 runs are left,
    about 4.5 s of work for 2 workers (elapsed / done would say 7 s x 9 = 63 s)."""
    clock = [0.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    tasks = plan_tasks(load_sweep_config("smoke", overrides=tiny_overrides(seeds=3)))[:10]
    record = RunRecord(tasks[0].config, 0, [1.0], [0.1], [0.1], 0.1, 0.1, False, 1.0)
    progress = PlainProgress(open(os.devnull, "w"))
    progress.begin(len(tasks), 0, 2)
    clock[0] = 6.0
    progress.update(RunStarted(tasks[0], 0))
    progress.update(RunStarted(tasks[1], 1))
    clock[0] = 7.0
    progress.update(RunFinished(tasks[0], 0, record))
    progress.update(RunStarted(tasks[2], 0))
    eta = progress.eta_seconds()
    # 9 runs of 1 s left on 2 workers, 1 of them done but for the last instant: (9 - 1) / 2 = 4 s
    assert eta is not None and 3.5 <= eta <= 5.0, eta


def test_the_report_is_announced_before_it_renders(capsys, tmp_path, inline):
    assert main_ok(["sweep", *EIGHT, "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert out.index("rendering the report of") < out.index("report: ")


# ------------------------------------------------------------------------------------------ missing extras


@pytest.mark.parametrize(
    "blocked, args",
    [
        ("mnist1d", ["sweep", "--preset", "smoke", "--out", "out"]),
        ("matplotlib", ["report", "out"]),
        ("sklearn", ["sweep", "--preset", "smoke", "--dataset", "digits", "--set", "model.name=mlp",
                     "--train-size", "100", "--val-size", "50", "--test-size", "50", "--out", "out"]),
    ],  # fmt: skip
)
def test_without_the_sweep_extra_one_line_names_it(tmp_path, blocked, args):
    """As after `pip install decoupled` without [sweep]: an import hook makes the module unimportable."""
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        f"        if name.split('.')[0] == {blocked!r}:\n"
        "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "from decoupled.cli import main\n"
        f"sys.exit(main({args!r}))\n"
    )
    if args[0] == "report":
        _store_with_runs(tmp_path / "out", count=2)
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=_cli_env(None), capture_output=True,
                            text=True, timeout=240)  # fmt: skip
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and 'pip install "decoupled[sweep]"' in lines[0] and blocked in lines[0], lines
    if args[0] == "sweep":
        assert not (tmp_path / "out").exists()


def test_every_public_name_of_the_lazy_package_resolves():
    """The package imports its names on first use (so that the command starts fast and Ctrl-C is caught)."""
    import decoupled

    assert sorted(decoupled._EXPORTS) == sorted(decoupled.__all__)
    for name in decoupled.__all__:
        assert getattr(decoupled, name) is not None
