"""The Ray backend (issue 5), on one local Ray instance (2 CPUs, loopback only) shared by this module's tests:
the same numbers as the local backend, resume, a dying worker retried and recorded once, the command line's
refusals. A real multi-node cluster is not available here; the nearest test is a second process (the command
line) that connects to this instance by address, as a driver on a cluster's head node would.
"""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from decoupled.cli import main
from decoupled.experiments.backends import BackendError, RunFailed, WorkerSetup, make_backend
from decoupled.experiments.config import load_sweep_config
from decoupled.experiments.progress import PlainProgress
from decoupled.experiments.ray_backend import (
    INSTALL_HINT, TEST_DIE_ENV, ClusterInfo, RayBackend, RayUnavailable, resolve_address,
)  # fmt: skip
from decoupled.experiments.store import Store
from decoupled.experiments.sweep import ExecutionOptions, run_sweep
from decoupled.experiments.train import RunTask

from .conftest import SRC, cli, tiny_overrides

# Curves and final numbers of a run; what must be equal bit for bit whichever backend ran it.
OUTCOME = ("train_loss", "val_error", "test_error", "final_val_error", "final_test_error", "diverged", "epochs_run",
           "extra", "device")  # fmt: skip


def _descendants(pid: int) -> set[int]:
    """Every live process below ``pid`` (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A local Ray instance started by the backend itself; stopped at the end, leaving no process behind."""
    ray = pytest.importorskip("ray")
    from decoupled.experiments.ray_backend import connect

    die_dir = tmp_path_factory.mktemp("die")
    saved = os.environ.get(TEST_DIE_ENV)
    os.environ[TEST_DIE_ENV] = str(die_dir)  # the instance's worker processes inherit it
    before = _descendants(os.getpid())
    try:
        info = connect(None, local_cpus=2)
    finally:
        if saved is None:
            del os.environ[TEST_DIE_ENV]
        else:
            os.environ[TEST_DIE_ENV] = saved
    ray_roots = _descendants(os.getpid()) - before  # Ray's servers; its workers are started below them
    try:
        yield info, die_dir
    finally:
        started = ray_roots.union(*(_descendants(pid) for pid in ray_roots))
        ray.shutdown()
        deadline = time.monotonic() + 20
        while any(_alive(pid) for pid in started) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not [pid for pid in started if _alive(pid)], "Ray left processes behind"


def _quiet() -> PlainProgress:
    return PlainProgress(io.StringIO())


def _rows(out: Path) -> dict[tuple[str, int], dict]:
    with Store.open(out, create=False) as store:
        rows = store.runs()
    keyed = {(row["config_hash"], row["seed"]): row for row in rows}
    assert len(keyed) == len(rows), "a run was recorded twice"
    return keyed


def test_a_local_instance_is_loopback_only_and_sized_by_its_cpus(cluster):
    import ray

    info, _ = cluster
    assert info.local and info.cpus == 2 and info.gpus == 0
    assert info.address.startswith("127.0.0.1:")
    assert {node["NodeManagerAddress"] for node in ray.nodes()} == {"127.0.0.1"}


def test_ray_gives_the_local_backends_numbers_bit_for_bit_and_resumes(cluster, tmp_path):
    """All four optimizers, two epochs: the same curves and final errors through both backends. The Ray sweep
    runs half the grid first; the full sweep then runs only the other half."""
    config = load_sweep_config("smoke", overrides=tiny_overrides(train={"epochs": 2, "batch_size": 64}))
    local = run_sweep(config, ExecutionOptions(out=tmp_path / "local", workers=2), _quiet())
    assert local.recorded == 4 and not local.failed

    half = load_sweep_config("smoke", overrides=tiny_overrides(optimizers=["adam", "sgdw"], train={"epochs": 2,
                                                                                                   "batch_size": 64}))
    first = run_sweep(half, ExecutionOptions(out=tmp_path / "ray", workers=2, backend="ray"), _quiet())
    assert (first.recorded, first.skipped, first.failed) == (2, 0, [])
    rest = run_sweep(config, ExecutionOptions(out=tmp_path / "ray", workers=2, backend="ray"), _quiet())
    assert (rest.recorded, rest.skipped, rest.failed) == (2, 2, [])

    by_local, by_ray = _rows(tmp_path / "local"), _rows(tmp_path / "ray")
    assert by_local.keys() == by_ray.keys() and len(by_ray) == 4
    for key, row in by_ray.items():
        assert len(row["test_error"]) == 2
        assert {name: row[name] for name in OUTCOME} == {name: by_local[key][name] for name in OUTCOME}, key
        assert row["hardware"]["torch_threads"] == 1 and row["code_version"] == by_local[key]["code_version"]


def test_a_dying_worker_is_retried_and_its_run_recorded_once(cluster, tmp_path, monkeypatch):
    """Seed 0's task kills its worker process once (Ray retries it); seed 1's every time (it fails after the
    retries, is not recorded, and the next sweep records it); seed 2 runs plainly."""
    from decoupled.experiments import ray_backend

    _, die_dir = cluster
    config = load_sweep_config("smoke", overrides=tiny_overrides(optimizers=["sgdw"], seeds=3))
    key = config.run_config("sgdw", 0.1, 1e-5).key()
    (die_dir / f"{key}-0").write_text("1")
    (die_dir / f"{key}-1").write_text("99")
    monkeypatch.setattr(ray_backend, "RETRIES", 1)
    out = tmp_path / "dying"
    summary = run_sweep(config, ExecutionOptions(out=out, workers=2, backend="ray"), _quiet())

    assert (die_dir / f"{key}-0").read_text() == "0"  # it died once, then ran
    assert (die_dir / f"{key}-1").read_text() == "97"  # the first try and one retry died
    assert summary.recorded == 2
    assert [(f.task.seed, f.error) for f in summary.failed] == [
        (1, "worker process died (WorkerCrashedError) on each of 2 tries")]  # fmt: skip
    assert sorted(_rows(out)) == [(key, 0), (key, 2)]

    (die_dir / f"{key}-1").unlink()
    again = run_sweep(config, ExecutionOptions(out=out, workers=2, backend="ray"), _quiet())
    assert (again.recorded, again.skipped, again.failed) == (1, 2, [])
    assert sorted(_rows(out)) == [(key, 0), (key, 1), (key, 2)]


def test_the_command_line_connects_to_a_running_cluster_by_ray_address(cluster, tmp_path):
    """A second process connects by RAY_ADDRESS (a driver on a cluster's head node), runs there, records here."""
    info, _ = cluster
    out = tmp_path / "cli"
    # Ray rewrites a loopback address to the machine's own; keep it loopback (this instance listens there only).
    env = {"RAY_ADDRESS": info.address, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    result = cli("sweep", "--backend", "ray", "--preset", "smoke", "--optimizers", "sgdw", "--seeds", "1",
                 "--epochs", "1", "--train-size", "200", "--val-size", "100", "--test-size", "100", "--lr", "0.01",
                 "--weight-decay", "0.001", "--out", str(out), "--no-report", env=env)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert f"decoupled sweep: on the Ray cluster at {info.address}: 2 CPUs, 0 GPUs" in result.stdout
    assert "1 runs to do (0 already in the store) on 1 worker" in result.stdout
    assert "recorded 1 runs" in result.stdout and "Traceback" not in result.stderr
    assert len(_rows(out)) == 1


def _store_with_one_sweep(out: Path) -> bytes:
    with Store.open(out) as store:
        store.add_sweep(load_sweep_config("smoke"), "test")
    return (out / "results.sqlite").read_bytes()


def test_an_unreachable_ray_address_exits_2_with_one_line_and_keeps_the_store(tmp_path):
    pytest.importorskip("ray")
    with socket.socket() as probe:  # a loopback port nothing listens on
        probe.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{probe.getsockname()[1]}"
    out = tmp_path / "out"
    before = _store_with_one_sweep(out)
    result = cli("sweep", "--backend", "ray", "--ray-address", address, "--preset", "smoke", "--out", str(out))
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result
    assert lines == [f"decoupled sweep: error: cannot reach the Ray cluster at '{address}' (from --ray-address): "
                     "connection refused; start it (ray start --head) or fix the address"]  # fmt: skip
    assert (out / "results.sqlite").read_bytes() == before


def test_without_ray_installed_the_ray_backend_exits_2_with_the_install_hint(capsys, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError, as when it is missing
    out = tmp_path / "out"
    before = _store_with_one_sweep(out)
    code = main(["sweep", "--backend", "ray", "--preset", "smoke", "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 2
    assert captured.err.strip().splitlines() == [f"decoupled sweep: error: {INSTALL_HINT}"]
    assert (out / "results.sqlite").read_bytes() == before
    with pytest.raises(RayUnavailable, match="pip install 'decoupled\\[ray\\]'"):
        make_backend("ray", 1)


def test_ray_address_without_the_ray_backend_is_refused(capsys):
    assert main(["sweep", "--ray-address", "auto"]) == 2
    assert capsys.readouterr().err.strip() == "decoupled sweep: error: --ray-address needs --backend ray"


def test_the_address_comes_from_the_flag_then_ray_address_then_a_local_instance():
    assert resolve_address("10.0.0.1:6379", {"RAY_ADDRESS": "auto"}) == ("10.0.0.1:6379", "--ray-address")
    assert resolve_address(None, {"RAY_ADDRESS": "auto"}) == ("auto", "RAY_ADDRESS")
    assert resolve_address(None, {}) == (None, "a local instance")
    assert resolve_address("local", {"RAY_ADDRESS": "auto"}) == (None, "a local instance")


def test_device_workers_and_what_each_task_asks_for_come_from_the_cluster():
    """The GPU half, without a GPU: what a task asks Ray for and how many run at once on a GPU cluster."""
    gpus = ClusterInfo("10.0.0.1:6379", cpus=64, gpus=8, local=False)
    assert gpus.device("auto") == "cuda" and gpus.slots("cuda", threads=1) == 8
    assert gpus.slots("cpu", threads=4) == 16
    cpus = ClusterInfo("127.0.0.1:1", cpus=2, gpus=0, local=True)
    assert cpus.device("auto") == "cpu" and cpus.slots("cpu", threads=1) == 2
    with pytest.raises(RayUnavailable, match="--device cuda, but a local Ray instance has no GPU"):
        cpus.device("cuda")
    backend = RayBackend.__new__(RayBackend)  # the options alone, without connecting
    backend.retries = 3
    data = load_sweep_config("smoke").data
    assert backend.task_options(WorkerSetup(data, "", "cuda", threads=1)) == {
        "num_cpus": 1, "num_gpus": 1, "max_retries": 3, "retry_exceptions": False}  # fmt: skip
    assert backend.task_options(WorkerSetup(data, "", "cpu", threads=2))["num_gpus"] == 0


def test_a_task_ray_cannot_run_stops_the_sweep_unless_runs_already_finished():
    """A node without this package (say) fails every task: stop at once, rather than fail each run in turn."""
    ray = pytest.importorskip("ray")
    text = "\x1b[36mray::decoupled sgdw()\x1b[39m (pid=1)\nModuleNotFoundError: No module named 'decoupled'"

    class Unrunnable:
        exceptions = ray.exceptions

        @staticmethod
        def get(ref):
            raise ray.exceptions.RaySystemError(text)

    backend = RayBackend.__new__(RayBackend)  # its outcome policy alone, without connecting
    backend.retries, backend._finished = 3, False
    config = load_sweep_config("smoke")
    task = RunTask(config.run_config("sgdw", 0.1, 1e-4), 0)
    with pytest.raises(BackendError, match="^Ray could not run a task \\(ModuleNotFoundError: No module named "
                                           "'decoupled'\\); every node needs this decoupled, torch and Ray"):
        backend._outcome(Unrunnable, None, 0, task)
    backend._finished = True
    failed = backend._outcome(Unrunnable, None, 1, task)
    assert failed == RunFailed(task, 1, "Ray could not run it: ModuleNotFoundError: No module named 'decoupled'",
                               f"System error: {text}")  # fmt: skip


def test_a_module_the_workers_cannot_import_is_named():
    """A task that imports a module the nodes lack: the message names that module, not this package."""
    ray = pytest.importorskip("ray")

    class Unrunnable:
        exceptions = ray.exceptions

        @staticmethod
        def get(ref):
            raise ray.exceptions.RaySystemError("ray::decoupled sgdw()\nModuleNotFoundError: No module named 'helper'")

    backend = RayBackend.__new__(RayBackend)
    backend.retries, backend._finished = 3, False
    task = RunTask(load_sweep_config("smoke").run_config("sgdw", 0.1, 1e-4), 0)
    with pytest.raises(BackendError) as caught:
        backend._outcome(Unrunnable, None, 0, task)
    assert "the workers cannot import module 'helper', which the task needs" in str(caught.value)
    assert "every node needs this decoupled" not in str(caught.value)


def test_neither_the_library_nor_the_local_backend_imports_ray():
    code = (
        "import sys, decoupled, decoupled.cli, decoupled.experiments.ray_backend\n"
        "from decoupled.experiments.backends import make_backend\n"
        "decoupled.cli.build_parser(); make_backend('local', 1)\n"
        "print('ray' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env={"PYTHONPATH": str(SRC)}, timeout=120)  # fmt: skip
    assert result.stdout.strip() == "False", result.stderr


# ------------------------------------------------------------------------------ your own model (issue 13)

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
TASK_GRID = {"seeds": 1, "train": {"epochs": 2}, "optimizers": ["adamw", "sgd"],
             "grid": {"adamw": {"lr": [0.01], "weight_decay": [1e-3]}, "sgd": {"lr": [0.1], "weight_decay": [1e-4]}}}  # fmt: skip


@pytest.mark.parametrize("example", ["own_task", "own_loop"])
def test_user_tasks_of_both_levels_run_on_ray_with_the_local_backends_numbers(cluster, tmp_path, example):
    """The declarative and the full-control example, from their files: on Ray the task travels to the workers
    (its file's code by value: the workers cannot import it) and the data once through the object store."""
    from decoupled.experiments.tasks import load_task

    task = load_task(f"{EXAMPLES / example}.py:task")
    config = load_sweep_config("smoke", overrides=TASK_GRID, task=task)
    local = run_sweep(config, ExecutionOptions(out=tmp_path / "local", workers=2), _quiet(), task=task)
    on_ray = run_sweep(config, ExecutionOptions(out=tmp_path / "ray", workers=2, backend="ray"), _quiet(), task=task)
    assert (local.recorded, local.failed, on_ray.recorded, on_ray.failed) == (2, [], 2, [])
    by_local, by_ray = _rows(tmp_path / "local"), _rows(tmp_path / "ray")
    assert by_local.keys() == by_ray.keys()
    for key, row in by_ray.items():
        assert len(row["test_error"]) == 2 and row["config"]["task"] == task.name
        assert {name: row[name] for name in OUTCOME} == {name: by_local[key][name] for name in OUTCOME}, key


def test_a_raising_user_task_on_ray_is_recorded_as_failed_and_the_sweep_goes_on(cluster, tmp_path):
    from decoupled.experiments.tasks import load_task

    path = tmp_path / "picky.py"
    path.write_text(
        "from torch import nn\n"
        "from decoupled.experiments import LoopTask\n"
        "def train(run):\n"
        "    optimizer, scheduler = run.optimizer(nn.Linear(2, 2), steps_per_epoch=1)\n"
        "    if run.optimizer_name == 'sgd':\n"
        "        raise RuntimeError('sgd is not welcome here')\n"
        "    for _ in range(run.epochs):\n"
        "        run.report(0.5, 0.25, 0.125)\n"
        "task = LoopTask(train=train)\n"
    )
    task = load_task(f"{path}:task")
    config = load_sweep_config("smoke", overrides=TASK_GRID, task=task)
    out = tmp_path / "out"
    summary = run_sweep(config, ExecutionOptions(out=out, workers=2, backend="ray"), _quiet(), task=task)
    assert summary.recorded == 1 and [f.error for f in summary.failed] == ["RuntimeError: sgd is not welcome here"]
    with Store.open(out, create=False) as store:
        (row,) = store.runs()
        (failure,) = store.failures()
    assert (row["optimizer"], row["final_test_error"], failure["optimizer"]) == ("adamw", 0.125, "sgd")


def test_a_task_file_importing_a_module_beside_it_runs_on_ray(cluster, tmp_path):
    """The task file's neighbours import on the workers as they do locally: their code travels with the task."""
    from decoupled.experiments.tasks import load_task

    (tmp_path / "beside_the_task.py").write_text("from torch import nn\ndef model():\n    return nn.Linear(2, 2)\n")
    path = tmp_path / "neighbourly.py"
    path.write_text(
        "from decoupled.experiments import LoopTask\n"
        "from beside_the_task import model\n"
        "def train(run):\n"
        "    run.optimizer(model(), steps_per_epoch=1)\n"
        "    for _ in range(run.epochs):\n"
        "        run.report(0.5, 0.25, 0.125)\n"
        "task = LoopTask(train=train)\n"
    )
    task = load_task(f"{path}:task")
    config = load_sweep_config("smoke", overrides={**TASK_GRID, "optimizers": ["adamw"]}, task=task)
    summary = run_sweep(config, ExecutionOptions(out=tmp_path / "out", workers=1, backend="ray"), _quiet(), task=task)
    assert (summary.recorded, summary.failed) == (1, [])


def test_reproduce_runs_on_ray_with_the_local_backends_numbers_and_verdict(cluster, tmp_path):
    """``decoupled reproduce --backend ray`` (a driver connecting by RAY_ADDRESS): the same runs, numbers and
    verdict as the local backend's, and a second call resumes with nothing left to run."""
    info, _ = cluster
    env = {"RAY_ADDRESS": info.address, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    on_ray, local = tmp_path / "ray", tmp_path / "local"
    result = cli("reproduce", "--smoke", "--only", "F4", "--backend", "ray", "--out", str(on_ray), env=env)
    assert result.returncode == 0, result.stderr
    assert f"on the Ray cluster at {info.address}" in result.stdout and "Traceback" not in result.stderr
    assert cli("reproduce", "--smoke", "--only", "F4", "--workers", "2", "--out", str(local)).returncode == 0
    ray_rows, local_rows = _rows(on_ray / "F4"), _rows(local / "F4")
    assert ray_rows.keys() == local_rows.keys() and len(ray_rows) == 100
    same = [k for k in OUTCOME if k != "device"]
    for key, row in ray_rows.items():
        assert {k: row[k] for k in same} == {k: local_rows[key][k] for k in same}
    verdicts = [json.loads((folder / "F4" / "result.json").read_text())["ours"] for folder in (on_ray, local)]
    assert verdicts[0] == verdicts[1]
    again = cli("reproduce", "--smoke", "--only", "F4", "--backend", "ray", "--out", str(on_ray), env=env)
    assert again.returncode == 0 and "0 runs to do (100 already in the store)" in again.stdout, again.stdout
