"""Execution backends: how the runs of a sweep get executed, behind one small interface.

A backend takes the data description and a list of :class:`~decoupled.experiments.train.RunTask` and yields
events as runs start, finish or fail. It never touches the store: the sweep records each finished run itself,
so a backend that runs elsewhere (a Ray cluster: :mod:`.ray_backend`) only has to ship tasks out and records back.

:class:`LocalBackend` runs tasks in worker processes on this machine, started with the 'spawn' method
(the library's native SGD kernel uses OpenMP, whose thread pool does not survive fork after use), each with
``threads`` torch threads (1 by default: N single-threaded workers beat one N-threaded run on small models).
"""

from __future__ import annotations

import os
import queue
import signal
import threading
import time
import traceback
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Generator, Protocol, Sequence, Union

from .config import DataConfig
from .tasks import TaskError
from .train import RunRecord, RunTask, run_task, train_run

__all__ = [
    "BACKENDS",
    "Backend",
    "Event",
    "LocalBackend",
    "RunFailed",
    "RunFinished",
    "RunStarted",
    "WorkerSetup",
    "make_backend",
]


@dataclass(frozen=True)
class WorkerSetup:
    """What every worker needs before its first task."""

    data: DataConfig
    cache_dir: str  # where prepare_data() left generated data (MNIST-1D)
    device: str  # "cpu" or "cuda"; CUDA workers take GPUs round robin
    threads: int = 1  # torch threads per worker on the CPU
    # A user task (None: the built-in task of each run's data and model config): "FILE_OR_MODULE:NAME", which
    # a worker loads with load_task, or the Task / LoopTask itself (pickled to the worker).
    task: Any = None
    # The task's data as the sweep process loaded it (for a backend that ships it once, Ray); never pickled to
    # local workers, which load it themselves.
    task_data: Any = field(default=None, compare=False, repr=False)
    # tasks.data_fingerprint of that data: a worker that loads the task's data itself must get the same.
    data_fingerprint: str | None = None


def load_worker_task(setup: WorkerSetup, device: str) -> tuple[Any, Any]:
    """(the user task, its data on ``device``) in a worker, or (None, None) for the built-in task, whose data
    the worker loads from its data config. Data that differs from what the sweep process loaded (its sizes
    recorded with every run) is a TaskError: the runs would train on other data than the store says."""
    if setup.task is None:
        return None, None
    import torch

    from .tasks import TaskError, data_fingerprint, load_task

    task = load_task(setup.task) if isinstance(setup.task, str) else setup.task
    data = task.load_data()
    here = data_fingerprint(data)
    if setup.data_fingerprint is not None and here != setup.data_fingerprint:
        raise TaskError(
            f"{task.label}: its data differs between processes: {setup.data_fingerprint} in the sweep process, "
            f"{here} in a worker; data() must return the same data wherever it is called (seed its random "
            "generators; do not depend on state set at run time or on the working folder); nothing was run"
        )
    return task, data.to(torch.device(device)) if data is not None else None


@dataclass(frozen=True)
class RunStarted:
    task: RunTask
    worker: int


@dataclass(frozen=True)
class RunFinished:
    task: RunTask
    worker: int
    record: RunRecord


@dataclass(frozen=True)
class RunFailed:
    """A run that raised (or whose worker died). It is not recorded, so the next sweep retries it."""

    task: RunTask
    worker: int
    error: str  # one line
    details: str = ""  # the traceback, when there is one


Event = Union[RunStarted, RunFinished, RunFailed]


class BackendError(RuntimeError):
    """The backend cannot run anything (e.g. every worker failed to start); one-line message."""


class Backend(Protocol):
    """Runs tasks and reports on them. ``workers`` is how many run at once (for display and ETA)."""

    name: str
    workers: int

    def run(self, setup: WorkerSetup, tasks: Sequence[RunTask]) -> Generator[Event, None, None]:
        """Yield RunStarted, then RunFinished or RunFailed, for every task; stop workers when the iterator is
        closed early (an interrupted sweep)."""
        ...


# ---------------------------------------------------------------------------------------------- worker side


def _watch_parent(parent_pid: int) -> None:
    """Exit when the sweep process is gone (killed with SIGKILL, say): the run in flight could not be recorded
    anyway, and an orphan would keep a core busy."""
    while True:
        if os.getppid() != parent_pid:
            os._exit(0)
        time.sleep(0.5)


def prepare_torch(threads: int, *, warm_up: bool = True) -> None:
    """Give this worker process ``threads`` torch threads. ``warm_up``: also build one optimizer, because torch
    imports its compiler stack (~2 s) the first time any optimizer is built; paying that here keeps the first
    run's wall time comparable with the others'."""
    import torch

    torch.set_num_threads(threads)
    if warm_up:
        torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)


def failure(error: Exception) -> tuple[str, str]:
    """(one line, traceback) of the exception being handled, as a RunFailed carries them."""
    return f"{type(error).__name__}: {error}", traceback.format_exc()


def train_task(task: RunTask, splits, device, described: dict, user_task: Any = None, user_data: Any = None) -> tuple:
    """Run ``task`` in a worker: ("finished", record, with provenance ``described``) or ("failed", one line,
    traceback). ``user_task`` (with its loaded ``user_data``): the sweep's task; None: the built-in task of the
    run's model config on ``splits``. Every backend's workers run their tasks through this."""
    try:
        if user_task is None:
            record = train_run(task.config, task.seed, splits, device)
        else:
            record = run_task(user_task, user_data, task.config, task.seed, device)
        record.provenance = described
        return ("finished", record)
    except Exception as error:  # noqa: BLE001 - one bad run must not stop the sweep
        return ("failed", *failure(error))


def _worker_main(worker: int, parent_pid: int, setup: WorkerSetup, tasks, events) -> None:
    # The sweep process handles Ctrl-C and stops the workers; a worker must not die mid-write of an event.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_watch_parent, args=(parent_pid,), daemon=True).start()
    try:
        import torch

        from . import provenance
        from .data import load_splits

        prepare_torch(setup.threads)
        device = setup.device
        if device == "cuda" and torch.cuda.device_count() > 1:
            device = f"cuda:{worker % torch.cuda.device_count()}"
        user_task, user_data = load_worker_task(setup, device)
        splits = None if user_task else load_splits(setup.data, Path(setup.cache_dir)).to(torch.device(device))
        described = provenance.describe(device)
    except TaskError as error:  # the user's task (its data differs here, say): refused, as bad input is
        events.put(("setup_refused", worker, str(error)))
        return
    except Exception as error:  # noqa: BLE001 - reported to the sweep, which stops
        events.put(("setup_failed", worker, *failure(error)))
        return
    while True:
        task = tasks.get()
        if task is None:
            return
        events.put(("started", worker, task))
        outcome = train_task(task, splits, torch.device(device), described, user_task, user_data)
        events.put((outcome[0], worker, task, *outcome[1:]))


# ---------------------------------------------------------------------------------------------- local


class LocalBackend:
    """``workers`` processes on this machine, fed from one task queue (so fast workers take more tasks)."""

    name = "local"

    def __init__(self, workers: int, threads: int = 1):
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.workers = workers
        self.threads = threads

    def run(self, setup: WorkerSetup, tasks: Sequence[RunTask]) -> Generator[Event, None, None]:
        if not tasks:
            return
        import multiprocessing

        context = multiprocessing.get_context("spawn")
        task_queue = context.Queue()
        event_queue = context.Queue()
        count = min(self.workers, len(tasks))
        for task in tasks:
            task_queue.put(task)
        for _ in range(count):
            task_queue.put(None)  # one stop sign per worker
        processes = [
            context.Process(
                target=_worker_main,
                args=(index, os.getpid(), replace(setup, task_data=None), task_queue, event_queue),
                name=f"decoupled-worker-{index}",
                daemon=True,
            )  # fmt: skip
            for index in range(count)
        ]
        _start_ignoring_sigint(processes)
        in_flight: dict[int, RunTask] = {}
        outstanding = len(tasks)
        try:
            while outstanding > 0:
                try:
                    message = event_queue.get(timeout=1.0)
                except queue.Empty:
                    for failure in self._runs_of_dead_workers(processes, in_flight):
                        outstanding -= 1
                        yield failure
                    if outstanding > 0 and not any(process.is_alive() for process in processes):
                        raise BackendError(f"every worker process exited with {outstanding} runs left") from None
                    continue
                kind, worker = message[0], message[1]
                if kind == "started":
                    in_flight[worker] = message[2]
                    yield RunStarted(message[2], worker)
                elif kind == "finished":
                    in_flight.pop(worker, None)
                    outstanding -= 1
                    yield RunFinished(message[2], worker, message[3])
                elif kind == "failed":
                    in_flight.pop(worker, None)
                    outstanding -= 1
                    yield RunFailed(message[2], worker, message[3], message[4])
                elif kind == "setup_failed":
                    raise BackendError(f"worker {worker} could not start: {message[2]}")
                elif kind == "setup_refused":
                    raise TaskError(message[2])
        finally:
            for process in processes:
                if process.is_alive():
                    process.terminate()
            for process in processes:
                process.join(timeout=10)
            task_queue.cancel_join_thread()
            event_queue.cancel_join_thread()

    @staticmethod
    def _runs_of_dead_workers(processes: list, in_flight: dict[int, RunTask]) -> list[RunFailed]:
        """A RunFailed for the task of every worker that died mid-run (killed by the OS, a segfault, ...)."""
        failures = []
        for index, process in enumerate(processes):
            if not process.is_alive() and index in in_flight:
                reason = f"worker process died (exit code {process.exitcode})"
                failures.append(RunFailed(in_flight.pop(index), index, reason))
        return failures


def _start_ignoring_sigint(processes: list) -> None:
    """Start worker processes that ignore Ctrl-C from birth: a terminal's Ctrl-C reaches the whole process group,
    and a worker still importing torch would print a KeyboardInterrupt traceback. The sweep process handles it
    and stops the workers (``_worker_main`` ignores SIGINT too, for workers started otherwise)."""
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if in_main_thread else None
    try:
        for process in processes:
            process.start()  # a spawned child inherits the ignored disposition (and Python keeps it)
    finally:
        if in_main_thread:
            signal.signal(signal.SIGINT, signal.SIG_DFL if previous is None else previous)


BACKENDS = ("local", "ray")


def make_backend(name: str, workers: int, threads: int = 1, *, address: str | None = None) -> Backend:
    """The backend called ``name``. ``address``: ray only, the cluster (else RAY_ADDRESS, else a local instance);
    making a Ray backend connects to it (RayUnavailable, a ValueError, when it cannot)."""
    if name == "local":
        return LocalBackend(workers, threads)
    if name == "ray":
        from .ray_backend import RayBackend  # here, so that nothing imports Ray unless it is used

        return RayBackend(workers, threads, address=address)
    raise ValueError(f"unknown backend {name!r}; choose one of: {', '.join(BACKENDS)}")
