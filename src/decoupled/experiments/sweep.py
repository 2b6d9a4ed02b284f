"""A sweep: plan the grid's runs, skip those already stored, run the rest on a backend, record each one.

Resuming is the same command again: runs whose (config hash, seed) is in the store are skipped, so a sweep
that was interrupted, crashed or killed continues where it stopped, and a grid that is widened later only
runs its new cells.
"""

from __future__ import annotations

import os
import time
from contextlib import closing, suppress
from dataclasses import dataclass, field
from pathlib import Path

from . import provenance
from .backends import Event, RunFailed, RunFinished, WorkerSetup, make_backend
from .config import SweepConfig, check_size, with_task_data
from .data import prepare_data
from .files import prepare_output_folder, remove_if_empty
from .progress import SweepProgress
from .store import STORE_FILENAME, Store, StoreError
from .tasks import AnyTask, TaskError, data_fingerprint, describe_sizes
from .train import RunTask

__all__ = [
    "ExecutionOptions",
    "SweepSummary",
    "default_workers",
    "plan_tasks",
    "resolve_device",
    "run_sweep",
    "run_sweeps",
]

CSV_FILENAME = "results.csv"


@dataclass(frozen=True)
class ExecutionOptions:
    """Where and how a sweep runs; none of it changes a run's numbers (so none of it is in a run's key)."""

    out: Path  # output folder: store, CSV, data cache, report
    workers: int  # runs at once
    device: str = "cpu"  # cpu | cuda (resolved from auto)
    threads: int = 1  # torch threads per CPU worker
    backend: str = "local"
    address: str | None = None  # ray: the cluster's address (else RAY_ADDRESS, else a local Ray instance)
    allow_large: bool = False  # lift the size limits of config.check_size (MAX_RUNS runs, generated examples)


@dataclass
class SweepSummary:
    planned: int = 0  # runs in the grid
    skipped: int = 0  # already in the store
    recorded: int = 0  # finished and recorded now
    duplicates: int = 0  # finished, but another sweep had recorded them first
    failed: list[RunFailed] = field(default_factory=list)
    diverged: int = 0
    wall_time_s: float = 0.0


def plan_tasks(config: SweepConfig) -> list[RunTask]:
    """Every run of the sweep, seed-major: all cells of seed 0 (of every precision arm) first, so a sweep stopped
    halfway already has a full grid with one seed."""
    return [
        RunTask(config.run_config(grid.optimizer, lr, weight_decay, precision), seed)
        for seed in range(config.seeds)
        for precision in config.precisions or (None,)
        for grid in config.grids
        for lr in grid.lrs
        for weight_decay in grid.weight_decays
    ]


def resolve_device(device: str) -> str:
    """ "auto" -> "cuda" when a GPU is visible, else "cpu"; "cuda" without one is a ValueError."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is visible to torch (use --device cpu or auto)")
    if device not in ("cpu", "cuda"):
        raise ValueError(f"--device must be cpu, cuda or auto, got {device!r}")
    return device


def default_workers(device: str) -> int:
    """One worker per core on the CPU; one per GPU on CUDA."""
    if device == "cuda":
        import torch

        return max(torch.cuda.device_count(), 1)
    return os.cpu_count() or 1


def _record(event: Event, store: Store, summary: SweepSummary) -> None:
    """Store a finished run (one transaction) and count it; store and count a failed one (as a failure, not a
    run: the report lists it, and the next sweep retries it)."""
    if isinstance(event, RunFinished):
        if store.add_run(event.record):
            summary.recorded += 1
            summary.diverged += int(event.record.diverged)
        else:
            summary.duplicates += 1  # another sweep on the same store recorded it first
    elif isinstance(event, RunFailed):
        store.add_failure(event.task.config, event.task.seed, event.error, event.details)
        summary.failed.append(event)


def _check_picklable(task: AnyTask) -> None:
    """A task made in Python (not by load_task) reaches spawned workers by pickle: refuse one that cannot."""
    import pickle

    try:
        pickle.dumps(task)
    except Exception as error:  # noqa: BLE001 - pickle raises several kinds
        raise TaskError(
            f"{task.label} cannot be sent to worker processes ({type(error).__name__}: {error}): define its "
            "functions at module level (no lambdas or local functions), or load it with load_task('FILE:NAME')"
        ) from None


def run_sweep(
    config: SweepConfig, options: ExecutionOptions, progress: SweepProgress, task: AnyTask | None = None
) -> SweepSummary:
    """Run every run of ``config`` not yet in ``options.out``'s store, recording each as it finishes.

    ``task``: a user task (:mod:`.tasks`; ``config`` made by ``load_sweep_config(..., task=task)``), else the
    built-in task of ``config.data`` and ``config.model``. Its data is loaded here once, to check it (and on
    Ray to ship it) before anything runs. Raises ConfigError/DataError/StoreError/TaskError/OutputFolderError
    (bad input; nothing stored is touched) before any run starts, and StoreError when a write fails later (a
    full disk): the runs recorded before it are kept.
    """
    return run_sweeps([config], options, progress, task)


def run_sweeps(
    configs: list[SweepConfig], options: ExecutionOptions, progress: SweepProgress, task: AnyTask | None = None
) -> SweepSummary:
    """:func:`run_sweep` for several sweeps on the same data (and task) into one store (the arms of one
    experiment of ``decoupled reproduce``), on one backend: the workers start once and load the data once. A run
    shared by two sweeps (the same config and seed) runs once."""
    if not configs:
        raise ValueError("run_sweeps needs at least one sweep config")
    for config in configs[1:]:
        if config.data != configs[0].data:
            raise ValueError(f"sweeps {configs[0].name!r} and {config.name!r} use different data; run them apart")
    started = time.monotonic()
    summary = SweepSummary()
    for config in configs:
        check_size(config, allow_large=options.allow_large)  # counts only: before anything is built or written
    cache_dir = options.out / "data"
    # The folder first: a file in the way or a read-only/full filesystem is named as such, not as a bad store.
    created = prepare_output_folder(options.out)
    task_data = None
    try:
        _stored_keys(options.out, check_rows=True)  # refuse a damaged or incompatible store before any work
        if task is not None:
            for config in configs:
                if config.task != task.name:
                    raise ValueError(f"the config is for task {config.task!r}, not {task.name!r}: load it with task=")
            if options.backend == "local" and not task.source:
                _check_picklable(task)
            task_data = task.load_data()  # raises TaskError on bad data
            configs = [with_task_data(config, describe_sizes(task_data)) for config in configs]
        else:
            prepare_data(configs[0].data, cache_dir)  # fails early, in this process
        # Before the store too: a backend that cannot be used (Ray missing, a cluster out of reach) changes nothing.
        backend = make_backend(options.backend, options.workers, options.threads, address=options.address)
    except BaseException:
        remove_if_empty([*created, cache_dir])  # a refused sweep leaves no empty folder behind
        raise
    tasks: list[RunTask] = []
    seen: set[tuple[str, int]] = set()
    for config in configs:
        for run in plan_tasks(config):
            if run.key not in seen:
                seen.add(run.key)
                tasks.append(run)
    summary.planned = len(tasks)
    finished = _stored_keys(options.out)
    todo = [run for run in tasks if run.key not in finished]
    summary.skipped = len(tasks) - len(todo)
    # Spawned local workers import a loaded task again from where it came from (and check that its data is the
    # data loaded here); Ray ships the task and the data loaded here.
    shipped = task.source if task is not None and task.source and options.backend == "local" else task
    fingerprint = data_fingerprint(task_data) if task is not None else None
    setup = WorkerSetup(configs[0].data, str(cache_dir), options.device, options.threads, task=shipped,
                        task_data=task_data, data_fingerprint=fingerprint)  # fmt: skip
    progress.begin(len(todo), summary.skipped, min(backend.workers, max(len(todo), 1)))
    store: Store | None = None
    try:
        # closing(): an interrupted sweep stops its workers now, not whenever the generator is collected.
        with closing(backend.run(setup, todo)) as events:
            for event in events:
                # The store is made (and the sweep recorded) at the first event, once the workers are running: a
                # sweep refused while they start (a task whose data differs there) leaves the folder as it was.
                store = store or _open_for_recording(options.out, configs)
                _record(event, store, summary)
                progress.update(event)
        store = store or _open_for_recording(options.out, configs)  # nothing was left to run
    except BaseException:
        progress.end()
        if store is None:
            remove_if_empty([*created, cache_dir])
        else:
            # Best effort: the error in flight (Ctrl-C, a full disk) says more than a CSV that cannot be written
            # for the same reason; every recorded run is in the store, and `decoupled report` rewrites the CSV.
            with suppress(StoreError):
                store.export_csv(options.out / CSV_FILENAME)
            store.close()
        raise
    progress.end()
    with store:
        store.export_csv(options.out / CSV_FILENAME)
    summary.wall_time_s = time.monotonic() - started
    return summary


def _stored_keys(folder: Path, check_rows: bool = False) -> set[tuple[str, int]]:
    """(config hash, seed) of every run in ``folder``'s store; none without a store (nothing is made here).
    Refuses a damaged or incompatible store; ``check_rows``: also one with a row the report could not read."""
    if not (folder / STORE_FILENAME).exists():
        return set()
    with Store.open(folder, create=False) as store:
        if check_rows:
            store.runs()
        return store.finished_keys()


def _open_for_recording(folder: Path, configs: list[SweepConfig]) -> Store:
    """The store of ``folder`` (made when there is none), with the sweeps of ``configs`` recorded in it."""
    store = Store.open(folder)
    try:
        for config in configs:
            store.add_sweep(config, provenance.code_version())
    except BaseException:
        store.close()
        raise
    return store
