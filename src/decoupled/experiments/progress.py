"""Live progress of a sweep: a rich display on a terminal, plain lines otherwise (logs, CI, pipes).

Both show the same things: runs done of the total with an ETA, what each worker is running, and the best
validation error so far of each optimizer.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

from .backends import RunFailed, RunFinished, RunStarted
from .train import RunRecord, RunTask

__all__ = ["PlainProgress", "RichProgress", "SweepProgress", "make_progress"]


def _percent(value: float | None) -> str:
    return "diverged" if value is None else f"{100 * value:.2f}%"


def _count(number: int, noun: str) -> str:
    """``1 worker``, ``2 workers``."""
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


STARTING = "starting (loading torch and the data)"  # what a worker is doing before its first run


class SweepProgress:
    """Shared bookkeeping; subclasses draw it. Call :meth:`begin`, then :meth:`update` per event, then :meth:`end`."""

    def __init__(self) -> None:
        self.total = 0
        self.done = 0
        self.failed = 0
        self.workers = 0
        self.started_at = time.monotonic()
        self.running: dict[int, RunTask] = {}
        self.run_started: dict[int, float] = {}  # worker -> when its current run started
        self.durations: list[float] = []  # seconds from start to end of each finished run, as seen here
        self.best: dict[str, tuple[float, RunTask]] = {}  # optimizer -> (val error, task)

    def begin(self, total: int, skipped: int, workers: int) -> None:
        self.total, self.workers = total, workers
        self.started_at = time.monotonic()

    def begin_line(self, total: int, skipped: int, workers: int) -> str:
        return f"{total} runs to do ({skipped} already in the store) on {_count(workers, 'worker')}"

    def update(self, event: RunStarted | RunFinished | RunFailed) -> None:
        now = time.monotonic()
        if isinstance(event, RunStarted):
            self.running[event.worker] = event.task
            self.run_started[event.worker] = now
            return
        self.running.pop(event.worker, None)
        began = self.run_started.pop(event.worker, None)
        if began is not None:
            self.durations.append(now - began)
        self.done += 1
        if isinstance(event, RunFailed):
            self.failed += 1
        else:
            self._note_best(event.record, event.task)

    def _note_best(self, record: RunRecord, task: RunTask) -> None:
        if record.final_val_error is None:
            return
        current = self.best.get(task.config.optimizer)
        if current is None or record.final_val_error < current[0]:
            self.best[task.config.optimizer] = (record.final_val_error, task)

    def eta_seconds(self) -> float | None:
        """Seconds left: the runs not finished times the mean run time, shared by the workers, less what the runs
        in flight have already done. Measured from each run's start, so neither the seconds the workers take to
        start nor the runs in flight at the first finish inflate it (elapsed / done would, by up to workers x)."""
        if not self.durations:
            return None
        mean = sum(self.durations) / len(self.durations)
        now = time.monotonic()
        in_flight = sum(min(now - began, mean) for began in self.run_started.values())
        return max(mean * (self.total - self.done) - in_flight, 0.0) / max(self.workers, 1)

    def end(self) -> None:
        pass


class PlainProgress(SweepProgress):
    """One line per finished run, flushed at once, for output that is not a terminal."""

    def __init__(self, stream: TextIO | None = None):
        super().__init__()
        self.stream = stream if stream is not None else sys.stdout

    def begin(self, total: int, skipped: int, workers: int) -> None:
        super().begin(total, skipped, workers)
        print(self.begin_line(total, skipped, workers), file=self.stream, flush=True)
        if total:
            print(f"{_count(workers, 'worker')} {STARTING} ...", file=self.stream, flush=True)

    def update(self, event: RunStarted | RunFinished | RunFailed) -> None:
        super().update(event)
        if isinstance(event, RunStarted):
            return
        eta = self.eta_seconds()
        eta_text = f", ETA {_clock(eta)}" if eta is not None else ""
        if isinstance(event, RunFailed):
            outcome = f"FAILED: {event.error}"
        else:
            record = event.record
            outcome = (
                f"val {_percent(record.final_val_error)}, test {_percent(record.final_test_error)}, "
                f"{record.wall_time_s:.1f} s"
            )
        print(f"[{self.done}/{self.total}{eta_text}] {event.task.describe()}: {outcome}", file=self.stream, flush=True)


class RichProgress(SweepProgress):
    """A live panel: the overall bar with ETA, a line per worker, the best so far per optimizer."""

    def __init__(self) -> None:
        super().__init__()
        from rich.console import Console, Group
        from rich.live import Live
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )
        from rich.table import Table

        self._Group, self._Table = Group, Table
        self.console = Console()
        self.bar = Progress(
            TextColumn("[bold]sweep"), BarColumn(), MofNCompleteColumn(), TextColumn("elapsed"),
            TimeElapsedColumn(), TextColumn("ETA {task.fields[eta]}"), console=self.console,
        )  # fmt: skip
        # Our ETA, not rich's TimeRemainingColumn: that one divides elapsed time by runs done, as eta_seconds says.
        self.bar_task = self.bar.add_task("runs", total=1, eta="-:--")
        self.live = Live(self._render(), console=self.console, refresh_per_second=4, transient=False)

    def _render(self):
        table = self._Table(show_header=False, box=None, padding=(0, 1))
        for worker in range(self.workers):
            task = self.running.get(worker)
            idle = "[dim]idle" if self.done or self.running else f"[dim]{STARTING}"
            table.add_row(f"worker {worker}", task.describe() if task else idle)
        best = self._Table(show_header=True, box=None, padding=(0, 1))
        best.add_column("best so far")
        best.add_column("val error", justify="right")
        best.add_column("cell")
        for name, (error, task) in sorted(self.best.items()):
            best.add_row(name, _percent(error), task.describe())
        parts = [self.bar, table]
        if self.best:
            parts.append(best)
        if self.failed:
            parts.append(f"[red]{self.failed} runs failed (not recorded; a re-run retries them)")
        return self._Group(*parts)

    def begin(self, total: int, skipped: int, workers: int) -> None:
        super().begin(total, skipped, workers)
        self.console.print(self.begin_line(total, skipped, workers))
        self.bar.update(self.bar_task, total=max(total, 1), completed=0)
        self.live.start()

    def update(self, event: RunStarted | RunFinished | RunFailed) -> None:
        super().update(event)
        if isinstance(event, RunFailed):
            self.console.print(f"[red]run failed[/red] {event.task.describe()}: {event.error}")
        eta = self.eta_seconds()
        self.bar.update(self.bar_task, completed=self.done, eta="-:--" if eta is None else _clock(eta))
        self.live.update(self._render())

    def end(self) -> None:
        self.live.update(self._render())
        self.live.stop()


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}:{seconds % 60:02d}"


def make_progress(stream: TextIO = sys.stdout) -> SweepProgress:
    """The rich display when ``stream`` is a terminal, else plain lines."""
    if stream.isatty():
        try:
            return RichProgress()
        except ImportError:  # rich is in the sweep extra; plain lines need nothing
            pass
    return PlainProgress(stream)
