"""The ``decoupled`` command line: ``decoupled sweep`` and ``decoupled report DIR``.

Each subcommand is one entry of :data:`COMMANDS` (name, help, a function that adds its arguments, a function
that runs it and returns the exit code), so another command (``bench``) is one more entry. Bad input, and a
filesystem that fails (a file in the way, read-only, full), get one line on stderr and exit code 2, never a
traceback; nothing already stored is touched by a refused command. Ctrl-C at any moment is one line and exit code
130; a closed output pipe (``decoupled sweep | head``) silences the output and the sweep goes on.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import signal
import sqlite3
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, NoReturn, Sequence

if TYPE_CHECKING:
    from .experiments.report import ReportPaths

__all__ = ["COMMANDS", "Command", "build_parser", "main"]

EXIT_OK, EXIT_FAILED_RUNS, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130

# The modules of the [sweep] extra (pyproject.toml), by import name, and the one line a missing one gets.
SWEEP_EXTRA_MODULES = ("mnist1d", "sklearn", "matplotlib", "rich", "tomli")
INSTALL_SWEEP_EXTRA = 'pip install "decoupled[sweep]"'


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (``decoupled sweep: error: ...``) with exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


def _fail(prog: str, message: str) -> int:
    print(f"{prog}: error: {message}", file=sys.stderr)
    return EXIT_BAD_INPUT


def _missing_extra(prog: str, module: str) -> int:
    return _fail(prog, f"the sweep toolkit needs the [sweep] extra (no module named {module!r}): {INSTALL_SWEEP_EXTRA}")


def _require_modules(prog: str, modules: Sequence[str]) -> int | None:
    """Exit code for the first of ``modules`` that cannot be imported (checked before any work), else None."""
    for module in modules:
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):  # an import hook that refuses it, or a module set to None
            found = False
        if not found:
            return _missing_extra(prog, module)
    return None


def _filesystem_message(error: OSError | sqlite3.Error) -> str:
    """One line for a filesystem failure that reached the command (a full disk, a read-only folder)."""
    if isinstance(error, OSError):
        where = f" {error.filename!r}" if error.filename else ""
        return f"cannot write{where}: {error.strerror or error}"
    return f"the results store failed: {error}"


def _print_report_paths(paths: ReportPaths) -> None:
    """What ``sweep`` and ``report`` print after rendering a report."""
    print(f"report: {paths.markdown} and {paths.html}; figures: {paths.heatmaps}, {paths.curves}; rows: {paths.csv}")


# ---------------------------------------------------------------------------------------------------- sweep


def _add_sweep_arguments(parser: argparse.ArgumentParser) -> None:
    from .experiments.backends import BACKENDS  # a new backend (issue 5: ray) becomes a choice by joining BACKENDS

    what = parser.add_argument_group("what to run (a preset, then --config, then these flags; later wins)")
    what.add_argument(
        "--task",
        metavar="FILE_OR_MODULE:NAME",
        help="your own model and data: a Task or LoopTask in a Python file or module (docs/your-model.md)",
    )
    what.add_argument("--preset", default="default", help="a preset's name: default, smoke, paper (default: default)")
    what.add_argument("--config", metavar="FILE", help="a TOML file layered over the preset (same keys as presets)")
    what.add_argument(
        "--optimizers", metavar="LIST",
        help="comma-separated subset of adam,adamw,sgd,sgdw (default: the four) and adamw-cautious,sgdw-cautious,adamc",
    )  # fmt: skip
    what.add_argument("--seeds", type=int, metavar="N", help="runs per cell (seeds 0..N-1)")
    what.add_argument("--epochs", type=int, metavar="N", help="epochs per run")
    what.add_argument("--batch-size", type=int, metavar="N", help="examples per step")
    what.add_argument("--dataset", metavar="NAME", help="mnist1d, digits or cifar10")
    what.add_argument("--data-dir", metavar="DIR", help="cifar10: folder with cifar-10-batches-py/")
    what.add_argument("--download", action="store_true", default=None, help="cifar10: fetch the data if missing")
    what.add_argument("--train-size", type=int, metavar="N", help="training examples")
    what.add_argument("--val-size", type=int, metavar="N", help="validation examples (pick the best cell)")
    what.add_argument("--test-size", type=int, metavar="N", help="test examples (report it)")
    what.add_argument("--lr", metavar="VALUES", help="comma-separated learning rates for every optimizer's grid")
    what.add_argument("--weight-decay", metavar="VALUES", help="comma-separated weight decays for every grid")
    what.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any config key, e.g. --set train.schedule=constant --set grid.adamw.lr_log2=[-10,-6]",
    )
    how = parser.add_argument_group("where and how it runs (changes no result)")
    how.add_argument(
        "--out", metavar="DIR", help="output folder; the same folder again resumes (default: runs/NAME-TIME)"
    )
    how.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="runs at once (default: CPU cores, or GPUs on cuda; on ray, the cluster's)",
    )
    how.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="default: cuda if visible")
    how.add_argument("--threads", type=int, default=1, metavar="N", help="torch threads per CPU worker (default 1)")
    how.add_argument("--backend", default="local", choices=BACKENDS, help="execution backend (default: local)")
    how.add_argument(
        "--ray-address",
        metavar="ADDRESS",
        help="--backend ray: the cluster (default: RAY_ADDRESS, else a local Ray instance)",
    )
    how.add_argument("--no-report", action="store_true", help="do not render the report at the end")
    how.add_argument(
        "--allow-large",
        action="store_true",
        help="run a plan past 10,000 runs or 1,000,000 generated examples (refused by default: likely a typo)",
    )
    _add_weight_decay_axis_argument(how)


def _number_list(flag: str, text: str) -> list[float]:
    from .experiments.config import ConfigError

    values = []
    for part in text.split(","):
        try:
            values.append(float(part))
        except ValueError:
            raise ConfigError(f"{flag}: {part.strip()!r} is not a number") from None
    return values


def _overrides(args: argparse.Namespace) -> dict:
    """The flags as a nested config dict (only those given)."""
    from .experiments.config import OPTIMIZERS, parse_override, set_path

    tree: dict = {}
    flags = {
        ("seeds",): args.seeds,
        ("optimizers",): args.optimizers,  # a comma-separated string, which the config splits
        ("train", "epochs"): args.epochs,
        ("train", "batch_size"): args.batch_size,
        ("data", "dataset"): args.dataset,
        ("data", "data_dir"): args.data_dir,
        ("data", "download"): args.download,
        ("data", "train_size"): args.train_size,
        ("data", "val_size"): args.val_size,
        ("data", "test_size"): args.test_size,
    }
    for path, value in flags.items():
        if value is not None:
            set_path(tree, list(path), value)
    for flag, key, text in (("--lr", "lr", args.lr), ("--weight-decay", "weight_decay", args.weight_decay)):
        if text is not None:
            values = _number_list(flag, text)
            for name in OPTIMIZERS:
                set_path(tree, ["grid", name, key], values)
    for item in args.set:
        keys, value = parse_override(item)
        set_path(tree, keys, value)
    return tree


def _default_out(name: str) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = Path("runs") / f"{name}-{stamp}"
    suffix = 1
    while out.exists():
        suffix += 1
        out = Path("runs") / f"{name}-{stamp}-{suffix}"
    return out


def _run_sweep(args: argparse.Namespace) -> int:
    prog = "decoupled sweep"
    from .experiments.backends import BackendError
    from .experiments.config import ConfigError, check_size, load_sweep_config
    from .experiments.data import DataError
    from .experiments.files import OutputFolderError
    from .experiments.progress import make_progress
    from .experiments.store import StoreError
    from .experiments.sweep import ExecutionOptions, default_workers, resolve_device, run_sweep
    from .experiments.tasks import TaskError, load_task

    out: Path | None = None
    try:
        task = load_task(args.task) if args.task is not None else None
        config = load_sweep_config(args.preset, args.config, _overrides(args), task=task)
        check_size(config, allow_large=args.allow_large)  # before anything is built, connected or written
        needed = (
            [] if task is not None else {"mnist1d": ["mnist1d"], "digits": ["sklearn"]}.get(config.data.dataset, [])
        )
        missing = _require_modules(prog, [*needed, *([] if args.no_report else ["matplotlib"])])
        if missing is not None:
            return missing
        if args.threads < 1:
            raise ConfigError(f"--threads must be >= 1, got {args.threads}")
        if args.backend == "ray":  # the device and the default worker count are the cluster's, not this machine's
            from .experiments.ray_backend import connect, resolve_address

            address, origin = resolve_address(args.ray_address)
            cluster = connect(address, origin=origin)
            device = cluster.device(args.device)
            default = cluster.slots(device, args.threads)
            print(f"decoupled sweep: on {cluster.describe()}", flush=True)
        elif args.ray_address is not None:
            raise ConfigError("--ray-address needs --backend ray")
        else:
            device = resolve_device(args.device)
            default = default_workers(device)
        workers = args.workers if args.workers is not None else default
        if workers < 1:
            raise ConfigError(f"--workers must be >= 1, got {workers}")
        out = Path(args.out) if args.out else _default_out(config.name)
        options = ExecutionOptions(out=out, workers=workers, device=device, threads=args.threads, backend=args.backend,
                                   address=args.ray_address, allow_large=args.allow_large)  # fmt: skip
        on = f"task {task.name!r}" if task is not None else config.data.dataset
        print(f"decoupled sweep '{config.name}': {config.cells} cells x {config.seeds} seeds on {on}, "
              f"device {device}; output folder: {out}", flush=True)  # fmt: skip
        summary = run_sweep(config, options, make_progress(sys.stdout), task=task)
    except (ConfigError, DataError, StoreError, TaskError, OutputFolderError, ValueError) as error:
        return _fail(prog, str(error))
    except (OSError, sqlite3.Error) as error:
        return _fail(prog, _filesystem_message(error) + _resume_hint(out))
    except BackendError as error:
        print(f"{prog}: {error}", file=sys.stderr)
        return EXIT_FAILED_RUNS
    except KeyboardInterrupt:
        where = f" in {out}; the same command with --out {out} resumes" if out else ""
        print(f"\n{prog}: interrupted; finished runs are stored{where}", file=sys.stderr)
        return EXIT_INTERRUPTED
    print(
        f"recorded {summary.recorded} runs ({summary.diverged} diverged), {summary.skipped} were already stored"
        + (f", {summary.duplicates} recorded meanwhile by another sweep" if summary.duplicates else "")
        + (f", {len(summary.failed)} FAILED (not recorded; re-run to retry)" if summary.failed else "")
        + f"; {summary.wall_time_s / 60:.1f} minutes",
        flush=True,
    )
    for failure in summary.failed[:5]:
        print(f"  failed: {failure.task.describe()}: {failure.error}", file=sys.stderr)
    if not args.no_report:
        code = _render(prog, out, args.weight_decay_axis)
        if code != EXIT_OK:
            return code
    print(f"output folder: {out}")
    return EXIT_FAILED_RUNS if summary.failed else EXIT_OK


def _resume_hint(out: Path | None) -> str:
    """For an error after the store was opened: the runs recorded before it are kept, and how to go on."""
    from .experiments.store import STORE_FILENAME

    if out is None or not (out / STORE_FILENAME).exists():
        return ""
    return f" (runs recorded so far are kept in {out}; the same command with --out {out} resumes)"


def _render(prog: str, folder: Path | str, weight_decay_unit: str = "lambda") -> int:
    """Render the report of ``folder``, saying so first (it takes seconds); one line on interrupt or failure."""
    from .experiments.store import StoreError

    print(f"rendering the report of {folder} ...", flush=True)
    try:
        from .experiments.report import render_report

        paths = render_report(folder, weight_decay_unit=weight_decay_unit)
    except KeyboardInterrupt:
        print(f"\n{prog}: interrupted while rendering the report; every run is stored: "
              f"decoupled report {folder} renders it", file=sys.stderr)  # fmt: skip
        return EXIT_INTERRUPTED
    except StoreError as error:
        return _fail(prog, str(error))
    except (OSError, sqlite3.Error) as error:
        return _fail(prog, f"{_filesystem_message(error)} while rendering the report of {folder} (the runs are kept)")
    _print_report_paths(paths)
    return EXIT_OK


# --------------------------------------------------------------------------------------------------- report


def _add_weight_decay_axis_argument(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    parser.add_argument(
        "--weight-decay-axis", choices=["lambda", "tau"], default="lambda",
        help="label the heatmaps' decoupled weight decays as lambda (default) or as the timescale "
        "tau = 1/(lambda * steps per epoch) in epochs",
    )  # fmt: skip


def _add_report_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("folder", metavar="DIR", help="a sweep's output folder (holding results.sqlite)")
    _add_weight_decay_axis_argument(parser)


def _run_report(args: argparse.Namespace) -> int:
    prog = "decoupled report"
    missing = _require_modules(prog, ["matplotlib"])
    return missing if missing is not None else _render(prog, args.folder, args.weight_decay_axis)


COMMANDS: list[Command] = [
    Command(
        "sweep",
        "run the learning-rate x weight-decay sweep (resumes in the same --out)",
        _add_sweep_arguments,
        _run_sweep,
    ),
    Command("report", "re-render a sweep's report, figures and CSV from its store", _add_report_arguments, _run_report),
]


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("decoupled")
    except PackageNotFoundError:  # run from a source tree without installing
        from . import __version__

        return __version__


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="decoupled", description="Decoupled weight decay (SGDW, AdamW): experiments.")
    parser.add_argument("--version", action="version", version=f"decoupled {_version()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True
    for command in COMMANDS:
        sub = commands.add_parser(command.name, help=command.help, description=command.help)
        command.add_arguments(sub)
        sub.set_defaults(handler=command.run)
    return parser


_NUMBER_FLAGS = ("--lr", "--weight-decay")


def _join_negative_numbers(argv: Sequence[str]) -> list[str]:
    """``--lr -1e-4`` -> ``--lr=-1e-4``: argparse takes "-1e-4" for an option and says "expected one argument",
    which hides the real problem (a negative value, refused later with its own message)."""
    joined: list[str] = []
    items = list(argv)
    index = 0
    while index < len(items):
        item = items[index]
        if item in _NUMBER_FLAGS and index + 1 < len(items) and items[index + 1].startswith("-"):
            joined.append(f"{item}={items[index + 1]}")
            index += 2
            continue
        joined.append(item)
        index += 1
    return joined


class _PipeSafeOutput:
    """Standard output that, once its reader has gone (``decoupled sweep | head -3``), drops what is written
    instead of raising BrokenPipeError: the sweep goes on and records every run, only its output is lost."""

    def __init__(self, stream):
        self._stream = stream
        self.broken = False

    def write(self, text: str) -> int:
        if not self.broken:
            try:
                return self._stream.write(text)
            except BrokenPipeError:
                self._break()
        return len(text)

    def flush(self) -> None:
        if not self.broken:
            try:
                self._stream.flush()
            except BrokenPipeError:
                self._break()

    def _break(self) -> None:
        self.broken = True
        try:  # point the descriptor at /dev/null, so the interpreter's own flush at exit cannot fail either
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self._stream.fileno())
            os.close(devnull)
        except (OSError, ValueError, AttributeError):  # not a real file (a test's capture)
            pass

    def isatty(self) -> bool:
        return not self.broken and self._stream.isatty()

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


class _InterruptCounter:
    """Counts Ctrl-Cs while a command runs (and raises KeyboardInterrupt as Python does). A Ctrl-C in the middle
    of a third-party import can surface as another error (numpy's lazy attributes end in a RecursionError);
    with the count, main still reports it as the interruption it was."""

    def __init__(self) -> None:
        self.count = 0
        self.previous = None
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGINT, self._handle)

    def _handle(self, signum, frame) -> None:
        self.count += 1
        signal.default_int_handler(signum, frame)

    def restore(self) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)


def main(argv: Sequence[str] | None = None) -> int:
    saved = sys.stdout
    sys.stdout = _PipeSafeOutput(saved)
    interrupts = _InterruptCounter()
    try:
        args = build_parser().parse_args(_join_negative_numbers(sys.argv[1:] if argv is None else argv))
        return args.handler(args)
    except KeyboardInterrupt:  # before a command's own handler is in place (e.g. while torch is imported)
        print("\ndecoupled: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as error:
        if interrupts.count:  # a Ctrl-C that broke an import on its way
            print("\ndecoupled: interrupted", file=sys.stderr)
            return EXIT_INTERRUPTED
        name = getattr(error, "name", None) or ""
        if isinstance(error, ModuleNotFoundError) and name.split(".")[0] in SWEEP_EXTRA_MODULES:
            return _missing_extra("decoupled", name)  # a module of the sweep extra, imported by the toolkit itself
        raise
    finally:
        interrupts.restore()
        sys.stdout = saved


if __name__ == "__main__":
    sys.exit(main())
