"""The Ray backend: a sweep's runs as Ray tasks, on a cluster or on a local Ray instance (issue 5).

``decoupled sweep --backend ray`` connects to the cluster at ``--ray-address`` (else ``RAY_ADDRESS``), or starts
a local Ray instance that listens on loopback only. As with :class:`~.backends.LocalBackend`, the sweep process
records every finished run itself: a task returns its :class:`~.train.RunRecord` and the driver writes it to the
store, so a cluster needs no access to the output folder and a run is recorded once, however often Ray ran it.

* Each task asks for ``threads`` CPUs (1 by default) and runs with that many torch threads; with ``--device
  cuda`` it asks for one GPU too (Ray sets CUDA_VISIBLE_DEVICES, so the task's GPU is ``cuda:0``).
* The data is loaded once, in the driver, and put in Ray's object store (:func:`ray.put`): every node fetches it
  once, and no node needs the dataset on its disk or a shared filesystem.
* A task whose worker process dies (killed, out of memory, its node lost) is retried by Ray, ``retries`` times;
  a run that raises is not retried (it would raise again) and is reported as failed, like the local backend's.
* At most ``workers`` tasks are submitted at a time (by default, what the cluster can run at once), in the
  sweep's seed-major order, so the display's "running" lines are the tasks in flight.

Ray is imported only here and only when the backend is used: ``import decoupled`` and the local backend never
import it. Ray missing or a cluster out of reach is :class:`RayUnavailable` (a ValueError: the command line's
one-line refusal with exit code 2), raised before any output folder is made.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import re
import socket
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Generator, Mapping, Sequence

from .backends import (
    BackendError,
    Event,
    RunFailed,
    RunFinished,
    RunStarted,
    WorkerSetup,
    failure,
    prepare_torch,
    train_task,
)
from .train import RunTask

__all__ = ["ClusterInfo", "RayBackend", "RayUnavailable", "connect", "resolve_address"]

INSTALL_HINT = "the ray backend needs Ray: pip install 'decoupled[ray]'"
RETRIES = 3  # times Ray re-runs a task whose worker died (Ray's own default, made explicit)
CONNECT_TIMEOUT_S = 5.0  # to reach a cluster's address before Ray tries (Ray itself waits minutes)

# Test seam, read by the task only when set: a folder of marker files named "<config hash>-<seed>", each holding
# how many more times the task of that run must kill its own worker process (tests/experiments/test_ray_backend).
TEST_DIE_ENV = "DECOUPLED_TEST_RAY_DIE_DIR"


class RayUnavailable(ValueError):
    """Ray is not installed, or the cluster cannot be reached or used as asked; one-line message."""


@dataclass(frozen=True)
class ClusterInfo:
    """The Ray cluster this process is connected to."""

    address: str  # the GCS address ("127.0.0.1:PORT" for a local instance)
    cpus: int
    gpus: int
    local: bool  # started by this process (and stopped when it exits)

    @property
    def where(self) -> str:
        return "a local Ray instance" if self.local else f"the Ray cluster at {self.address}"

    def describe(self) -> str:
        return f"{self.where}: {self.cpus} CPUs, {self.gpus} GPUs"

    def device(self, requested: str) -> str:
        """``auto`` -> cuda when the cluster has GPUs (the sweep process itself may have none), else cpu."""
        if requested == "auto":
            return "cuda" if self.gpus else "cpu"
        if requested == "cuda" and not self.gpus:
            raise RayUnavailable(f"--device cuda, but {self.where} has no GPU (use --device cpu or auto)")
        if requested not in ("cpu", "cuda"):
            raise ValueError(f"--device must be cpu, cuda or auto, got {requested!r}")
        return requested

    def slots(self, device: str, threads: int) -> int:
        """Tasks the cluster runs at once: one per GPU on cuda, one per ``threads`` CPUs on the CPU."""
        return max(self.gpus if device == "cuda" else self.cpus // max(threads, 1), 1)


def resolve_address(flag: str | None, environ: Mapping[str, str] = os.environ) -> tuple[str | None, str]:
    """(address, where it came from): ``--ray-address``, else ``RAY_ADDRESS``, else None: a local instance (which
    ``local`` names too)."""
    for address, origin in ((flag, "--ray-address"), (environ.get("RAY_ADDRESS"), "RAY_ADDRESS")):
        if address:
            return (None, "a local instance") if address == "local" else (address, origin)
    return None, "a local instance"


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise RayUnavailable(INSTALL_HINT) from None
    return ray


def _check_reachable(address: str, origin: str) -> None:
    """Fail fast on an address nothing listens on: Ray would retry it for minutes before giving up."""
    if address in ("auto", "local"):
        return
    host_port = address.split("://", 1)[-1].rstrip("/")
    host, _, port = host_port.rpartition(":")
    if not host or not port.isdigit():
        return  # not HOST:PORT; let Ray judge it
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise RayUnavailable(
            f"cannot reach the Ray cluster at {address!r} (from {origin}): {reason.lower()}; "
            "start it (ray start --head) or fix the address"
        ) from None


def _last_line(error: BaseException) -> str:
    """The exception at the bottom of a Ray error's text (which starts with the task's name, in colour)."""
    lines = [line.strip() for line in re.sub(r"\x1b\[[0-9;]*m", "", str(error)).splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__


_INSTALLED = ("decoupled", "torch", "ray")  # what every node needs installed, as here


def _missing_module_hint(cause: str) -> str:
    """What to do about a task that Ray could not run: name the module its workers could not import."""
    missing = re.search(r"No module named '([^']+)'", cause)
    module = missing.group(1) if missing else None
    if module is None or module.split(".")[0] in _INSTALLED:
        return "every node needs this decoupled, torch and Ray installed (the same versions as here)"
    return (
        f"the workers cannot import module {module!r}, which the task needs: install it on every node, or put it "
        "in the task file's folder (modules there travel with the task)"
    )


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


def _start_local(ray: Any, cpus: int | None) -> None:
    """A Ray instance for this process alone, listening on loopback only.

    Ray binds its servers to the node's IP address, which it takes to be the loopback address when "clusters"
    are off (the switch RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 sets, read once into ray_constants at import);
    turn that off for the start only, so that a later connection to a real cluster is unaffected.
    """
    constants = getattr(getattr(ray, "_private", None), "ray_constants", None)
    saved = getattr(constants, "ENABLE_RAY_CLUSTER", None)
    if constants is not None and saved is not None:
        constants.ENABLE_RAY_CLUSTER = False
    try:
        ray.init(address="local", num_cpus=cpus, include_dashboard=False, log_to_driver=False,
                 logging_level=logging.WARNING)  # fmt: skip
    finally:
        if constants is not None and saved is not None:
            constants.ENABLE_RAY_CLUSTER = saved


def connect(address: str | None = None, *, origin: str = "--ray-address", local_cpus: int | None = None) -> ClusterInfo:
    """Connect this process to Ray: the cluster at ``address``, or a new local instance when it is None (with
    ``local_cpus`` CPUs, default all). A process already connected (``ray.init`` was called) stays on that
    connection. Raises :class:`RayUnavailable` with a one-line message."""
    ray = _import_ray()
    local = False
    if not ray.is_initialized():
        if address is None:
            try:
                _start_local(ray, local_cpus)
            except Exception as error:  # noqa: BLE001 - Ray raises many kinds; the user gets one line
                raise RayUnavailable(f"cannot start a local Ray instance: {_first_line(error)}") from None
            local = True
        else:
            _check_reachable(address, origin)
            try:
                ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
            except Exception as error:  # noqa: BLE001
                raise RayUnavailable(
                    f"cannot connect to the Ray cluster at {address!r} (from {origin}): {_first_line(error)}"
                ) from None
    resources = ray.cluster_resources()
    try:
        gcs = ray.get_runtime_context().gcs_address
    except Exception:  # noqa: BLE001 - not offered through Ray Client (ray://)
        gcs = None
    return ClusterInfo(gcs or address or "local", int(resources.get("CPU", 0)), int(resources.get("GPU", 0)), local)


# ---------------------------------------------------------------------------------------------- worker side

_warmed_up = False


def _die_if_told(task: RunTask) -> None:
    """Test seam (see TEST_DIE_ENV): kill this worker process, as the OS or a lost node would."""
    folder = os.environ.get(TEST_DIE_ENV)
    if not folder:
        return
    marker = Path(folder) / f"{task.config.key()}-{task.seed}"
    try:
        left = int(marker.read_text())
    except (OSError, ValueError):
        return
    if left > 0:
        marker.write_text(str(left - 1))
        os._exit(1)


def _run_task(setup: WorkerSetup, splits: Any, task: RunTask, user_task: Any = None) -> tuple:
    """One run inside a Ray worker: ("finished", record) or ("failed", one line, traceback). ``splits``: the
    built-in task's data, or with ``user_task`` that task's loaded data (or None)."""
    global _warmed_up
    _die_if_told(task)
    try:
        import torch

        from . import provenance

        # Warm up once per worker process, as the local workers do: Ray reuses the worker for later tasks.
        prepare_torch(setup.threads, warm_up=not _warmed_up)
        _warmed_up = True
        device = torch.device("cuda" if setup.device == "cuda" else "cpu")
        splits = splits.to(device) if splits is not None else None
        described = provenance.describe(str(device))
    except Exception as error:  # noqa: BLE001 - one bad run must not stop the sweep
        return ("failed", *failure(error))
    if user_task is not None:
        return train_task(task, None, device, described, user_task, splits)
    return train_task(task, splits, device, described)


def _ship_task_files_by_value() -> None:
    """Task files loaded by path (``--task file.py:NAME``) are not importable on the cluster's nodes, nor the
    modules they import from their own folder (as a script does): make Ray's pickler send their code along with
    the task (installed modules still travel by reference)."""
    from ray import cloudpickle

    from .tasks import FILE_MODULE_PREFIX

    modules = list(sys.modules.items())
    files = [getattr(module, "__file__", None) for name, module in modules if name.startswith(FILE_MODULE_PREFIX)]
    folders = {Path(file).resolve().parent for file in files if file}
    for name, module in modules:
        if module is not None and (name.startswith(FILE_MODULE_PREFIX) or _is_neighbour(name, module, folders)):
            cloudpickle.register_pickle_by_value(module)


def _is_neighbour(name: str, module: Any, folders: set[Path]) -> bool:
    """Whether ``module`` is a top-level module or package that lives in one of ``folders`` (beside a task
    file), and is not this package."""
    file = getattr(module, "__file__", None)
    if not file or "." in name or name.split(".")[0] == "decoupled":
        return False
    path = Path(file).resolve()
    home = path.parent.parent if path.name == "__init__.py" else path.parent
    return home in folders


# ---------------------------------------------------------------------------------------------- driver side


class RayBackend:
    """Runs tasks on Ray, at most ``workers`` at a time; see the module docstring."""

    name = "ray"

    def __init__(self, workers: int, threads: int = 1, *, address: str | None = None, retries: int | None = None):
        retries = RETRIES if retries is None else retries
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        if retries < 0:
            raise ValueError(f"retries must be >= 0, got {retries}")
        self.workers = workers
        self.threads = threads
        self.retries = retries
        self._finished = False  # a task has run (so Ray can run them here)
        # Now, so that Ray missing or a cluster out of reach is refused before the sweep opens its store. A process
        # already connected (the command line connects first, to learn the cluster's size) keeps that connection.
        address, origin = resolve_address(address)
        connect(address, origin=origin)

    def run(self, setup: WorkerSetup, tasks: Sequence[RunTask]) -> Generator[Event, None, None]:
        if not tasks:
            return
        import ray

        from .data import load_splits

        # Once, here: each node fetches the object once and deserializes it per task (MNIST-1D: ~2 MB;
        # the paper's CIFAR-10: ~180 MB of uint8 images). A user task's data likewise, and the task itself.
        user_task = None
        if setup.task is not None:
            from .tasks import load_task, without_data

            task_object = load_task(setup.task) if isinstance(setup.task, str) else setup.task
            data = setup.task_data if setup.task_data is not None else task_object.load_data()
            _ship_task_files_by_value()
            splits, user_task = ray.put(data), ray.put(without_data(task_object))
            setup = replace(setup, task=None, task_data=None)  # both go to the workers as object refs instead
        else:
            splits = ray.put(load_splits(setup.data, Path(setup.cache_dir)))
        remote = ray.remote(**self.task_options(setup))(_run_task)
        waiting = collections.deque(tasks)
        free = list(range(self.workers))
        in_flight: dict[Any, tuple[int, RunTask]] = {}
        try:
            while waiting or in_flight:
                while waiting and free:
                    slot, task = free.pop(0), waiting.popleft()
                    ref = remote.options(name=f"decoupled {task.describe()}").remote(setup, splits, task, user_task)
                    in_flight[ref] = (slot, task)
                    yield RunStarted(task, slot)
                # A timeout, so that Ctrl-C in the sweep process is seen within a second.
                done, _ = ray.wait(list(in_flight), num_returns=1, timeout=1.0)
                for ref in done:
                    slot, task = in_flight.pop(ref)
                    free.append(slot)
                    free.sort()
                    yield self._outcome(ray, ref, slot, task)
        finally:
            for ref in in_flight:  # an interrupted sweep: its runs in flight are not recorded anyway
                with contextlib.suppress(Exception):  # finished meanwhile, or the cluster is gone
                    ray.cancel(ref, force=True)

    def task_options(self, setup: WorkerSetup) -> dict[str, Any]:
        """What each task asks Ray for: ``threads`` CPUs, and one GPU on cuda; retried when its worker dies."""
        gpus = 1 if setup.device == "cuda" else 0
        return {"num_cpus": setup.threads, "num_gpus": gpus, "max_retries": self.retries, "retry_exceptions": False}

    def _outcome(self, ray: Any, ref: Any, slot: int, task: RunTask) -> Event:
        try:
            result = ray.get(ref)
        except ray.exceptions.RayError as error:
            errors = ray.exceptions
            if isinstance(error, (errors.WorkerCrashedError, errors.NodeDiedError, errors.OutOfMemoryError)):
                reason = f"worker process died ({type(error).__name__}) on each of {self.retries + 1} tries"
            else:  # Ray could not run the task at all: e.g. this package cannot be imported on the node
                cause = _last_line(error)
                if not self._finished:  # nothing has run: every task would fail the same way
                    raise BackendError(f"Ray could not run a task ({cause}); {_missing_module_hint(cause)}") from None
                reason = f"Ray could not run it: {cause}"
            return RunFailed(task, slot, reason, str(error))
        self._finished = True
        if result[0] == "finished":
            return RunFinished(task, slot, result[1])
        return RunFailed(task, slot, result[1], result[2])
