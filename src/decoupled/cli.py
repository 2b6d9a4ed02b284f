"""The ``decoupled`` command line: ``decoupled sweep``, ``decoupled reproduce`` and ``decoupled report DIR...``.

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
    figures = ", ".join(map(str, paths.figures))
    print(f"report: {paths.markdown} and {paths.html}; figures: {figures}; rows: {paths.csv}")


# ---------------------------------------------------------------------------------------------------- sweep


def _add_sweep_arguments(parser: argparse.ArgumentParser) -> None:
    from .experiments.backends import BACKENDS  # a new backend (issue 5: ray) becomes a choice by joining BACKENDS
    from .precision import PRECISIONS

    what = parser.add_argument_group("what to run (a preset, then --config, then these flags; later wins)")
    what.add_argument(
        "--task",
        metavar="FILE_OR_MODULE:NAME",
        help="your own model and data: a Task or LoopTask in a Python file or module (docs/your-model.md)",
    )
    what.add_argument("--preset", default="default", help="a preset's name: default, smoke, paper, or a finding's "
                      "experiment f1 .. f5 (default: default)")  # fmt: skip
    what.add_argument("--config", metavar="FILE", help="a TOML file layered over the preset (same keys as presets)")
    what.add_argument(
        "--optimizers", metavar="LIST",
        help="comma-separated subset of adam,adamw,sgd,sgdw (default: the four) and adamw-cautious,sgdw-cautious,adamc",
    )  # fmt: skip
    what.add_argument(
        "--dtype", metavar="NAME",
        help="the parameters' dtype during training: float32 (default) or bfloat16 (train.dtype)",
    )  # fmt: skip
    what.add_argument(
        "--precision", metavar="LIST",
        help="with --dtype bfloat16: comma-separated arms of how the optimizer writes the parameters, of "
        f"{','.join(PRECISIONS)} (default: exact; refused with float32, where all step alike)",
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
        ("precision",): args.precision,  # likewise
        ("train", "dtype"): args.dtype,
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


def _refusals() -> tuple[type[BaseException], ...]:
    """The errors a command turns into one line (see :func:`_refused`)."""
    from .experiments.backends import BackendError

    return (*_toolkit_errors(), ValueError, BackendError, KeyboardInterrupt, OSError, sqlite3.Error)


def _toolkit_errors() -> tuple[type[BaseException], ...]:
    """The toolkit's own errors: their message is already the line (some are also OSErrors or ValueErrors)."""
    from .experiments.config import ConfigError
    from .experiments.data import DataError
    from .experiments.files import OutputFolderError
    from .experiments.store import StoreError
    from .experiments.tasks import TaskError

    return (ConfigError, DataError, StoreError, TaskError, OutputFolderError)


def _refused(prog: str, error: BaseException, out: Path | None) -> int:
    """The one line and exit code of a command that stopped on ``error``: bad input or a failing filesystem 2,
    a backend that failed 1, Ctrl-C 130 (saying where the finished runs are)."""
    from .experiments.backends import BackendError

    if isinstance(error, KeyboardInterrupt):
        where = f" in {out}; the same command with --out {out} resumes" if out else ""
        print(f"\n{prog}: interrupted; finished runs are stored{where}", file=sys.stderr)
        return EXIT_INTERRUPTED
    if isinstance(error, BackendError):
        print(f"{prog}: {error}", file=sys.stderr)
        return EXIT_FAILED_RUNS
    if isinstance(error, (OSError, sqlite3.Error)) and not isinstance(error, _toolkit_errors()):
        return _fail(prog, _filesystem_message(error) + _resume_hint(out))
    return _fail(prog, str(error))


def _execution(args: argparse.Namespace, out: Path, prog: str):
    """ExecutionOptions from the flags shared by sweep and reproduce (device, workers, threads, backend)."""
    from .experiments.config import ConfigError
    from .experiments.sweep import ExecutionOptions, default_workers, resolve_device

    if args.threads < 1:
        raise ConfigError(f"--threads must be >= 1, got {args.threads}")
    if args.backend == "ray":  # the device and the default worker count are the cluster's, not this machine's
        from .experiments.ray_backend import connect, resolve_address

        address, origin = resolve_address(args.ray_address)
        cluster = connect(address, origin=origin)
        device = cluster.device(args.device)
        default = cluster.slots(device, args.threads)
        print(f"{prog}: on {cluster.describe()}", flush=True)
    elif args.ray_address is not None:
        raise ConfigError("--ray-address needs --backend ray")
    else:
        device = resolve_device(args.device)
        default = default_workers(device)
    workers = args.workers if args.workers is not None else default
    if workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {workers}")
    return ExecutionOptions(out=out, workers=workers, device=device, threads=args.threads, backend=args.backend,
                            address=args.ray_address, allow_large=getattr(args, "allow_large", False))  # fmt: skip


def _summary_line(summary) -> str:
    return (
        f"recorded {summary.recorded} runs ({summary.diverged} diverged), {summary.skipped} were already stored"
        + (f", {summary.duplicates} recorded meanwhile by another sweep" if summary.duplicates else "")
        + (f", {len(summary.failed)} FAILED (not recorded; re-run to retry)" if summary.failed else "")
        + f"; {summary.wall_time_s / 60:.1f} minutes"
    )


def _run_sweep(args: argparse.Namespace) -> int:
    prog = "decoupled sweep"
    from .experiments.config import check_size, load_sweep_config
    from .experiments.findings.common import is_experiment_preset
    from .experiments.progress import make_progress
    from .experiments.reproduce import check_folder_kind
    from .experiments.sweep import run_sweep
    from .experiments.tasks import load_task

    out: Path | None = None
    try:
        if is_experiment_preset(args.preset):  # a finding's experiment (presets/findings/f1..f5.toml): several arms
            return _run_experiment_preset(args)
        task = load_task(args.task) if args.task is not None else None
        config = load_sweep_config(args.preset, args.config, _overrides(args), task=task)
        check_size(config, allow_large=args.allow_large)  # before anything is built, connected or written
        needed = (
            [] if task is not None else {"mnist1d": ["mnist1d"], "digits": ["sklearn"]}.get(config.data.dataset, [])
        )
        missing = _require_modules(prog, [*needed, *([] if args.no_report else ["matplotlib"])])
        if missing is not None:
            return missing
        out = Path(args.out) if args.out else _default_out(config.name)
        check_folder_kind(out, "sweep")  # not into a finding's or a reproduction's folder
        options = _execution(args, out, prog)
        on = f"task {task.name!r}" if task is not None else config.data.dataset
        on += f" ({config.arm_label} arms)" if config.precisions else ""
        print(f"decoupled sweep '{config.name}': {config.cells} cells x {config.seeds} seeds on {on}, "
              f"device {options.device}; output folder: {out}", flush=True)  # fmt: skip
        summary = run_sweep(config, options, make_progress(sys.stdout), task=task)
    except _refusals() as error:
        return _refused(prog, error, out)
    print(_summary_line(summary), flush=True)
    for failure in summary.failed[:5]:
        print(f"  failed: {failure.task.describe()}: {failure.error}", file=sys.stderr)
    if not args.no_report:
        code = _render(prog, out, args.weight_decay_axis)
        if code != EXIT_OK:
            return code
    print(f"output folder: {out}")
    return EXIT_FAILED_RUNS if summary.failed else EXIT_OK


def _run_experiment_preset(args: argparse.Namespace) -> int:
    """``decoupled sweep --preset f4``: one finding's experiment (all its arms, and those of the findings it
    reads) into one folder, then its report."""
    from .experiments.config import ConfigError
    from .experiments.findings.common import load_experiment
    from .experiments.progress import make_progress
    from .experiments.reproduce import run_experiment

    prog = "decoupled sweep"
    out: Path | None = None
    try:
        if getattr(args, "task", None) is not None:
            raise ConfigError(f"--task runs your model on a sweep preset; {args.preset!r} is a finding's experiment "
                              "on the built-in MNIST-1D task")  # fmt: skip
        if args.config is not None:
            raise ConfigError(f"--config layers over a sweep preset; {args.preset!r} is a finding's experiment "
                              "(use --set KEY=VALUE, which applies to each of its arms)")  # fmt: skip
        missing = _require_modules(prog, ["mnist1d", *([] if args.no_report else ["matplotlib"])])
        if missing is not None:
            return missing
        overrides = _overrides(args)
        experiment = load_experiment(args.preset, overrides=overrides)
        out = Path(args.out) if args.out else _default_out(args.preset)
        options = _execution(args, out, prog)
        print(f"decoupled sweep '{args.preset}' ({experiment.finding}): {len(experiment.arms)} arms; output folder: "
              f"{out}", flush=True)  # fmt: skip
        summary = run_experiment(
            experiment, options, make_progress(sys.stdout), include_needs=True, overrides=overrides
        )
    except _refusals() as error:
        return _refused(prog, error, out)
    print(_summary_line(summary), flush=True)
    if not args.no_report:
        code = _render(prog, out, kind="finding")
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


def _render(prog: str, folder: Path | str, weight_decay_unit: str = "lambda", kind: str = "sweep") -> int:
    """Render the report of ``folder`` (a sweep's, a finding's or a reproduction's: ``kind``), saying so first
    (it takes seconds); one line on interrupt or failure."""
    from .experiments.store import StoreError

    print(f"rendering the report of {folder} ...", flush=True)
    try:
        if kind == "reproduction":
            from .experiments.reproduce import render_reproduction

            reproduction = render_reproduction(Path(folder))
            print(f"report: {reproduction.markdown} and {reproduction.html}")
            for result in reproduction.results:
                print(f"  {result.finding}: {result.verdict_text()}")
        elif kind == "finding":
            from .experiments.reproduce import render_finding

            result = render_finding(Path(folder))
            print(f"{result.finding}: {result.verdict_text()}; report: {Path(folder) / 'report.md'} and "
                  f"{Path(folder) / 'report.html'}")  # fmt: skip
        else:
            from .experiments.report import render_report

            _print_report_paths(render_report(folder, weight_decay_unit=weight_decay_unit))
    except KeyboardInterrupt:
        print(f"\n{prog}: interrupted while rendering the report; every run is stored: "
              f"decoupled report {folder} renders it", file=sys.stderr)  # fmt: skip
        return EXIT_INTERRUPTED
    except StoreError as error:
        return _fail(prog, str(error))
    except (OSError, sqlite3.Error) as error:
        return _fail(prog, f"{_filesystem_message(error)} while rendering the report of {folder} (the runs are kept)")
    return EXIT_OK


# ------------------------------------------------------------------------------------------------ reproduce


def _add_reproduce_arguments(parser: argparse.ArgumentParser) -> None:
    from .experiments.backends import BACKENDS

    parser.add_argument("--out", metavar="DIR", help="output folder; the same folder again resumes "
                        "(default: runs/reproduce-TIME)")  # fmt: skip
    parser.add_argument("--only", metavar="LIST", help="comma-separated findings, e.g. F1,F4 (default: all five)")
    parser.add_argument("--smoke", action="store_true", help="every experiment at toy size (a minute or two)")
    parser.add_argument("--workers", type=int, metavar="N", help="runs at once (default: CPU cores, or GPUs)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="default: cuda if visible")
    parser.add_argument("--threads", type=int, default=1, metavar="N", help="torch threads per CPU worker")
    parser.add_argument("--backend", default="local", choices=BACKENDS, help="execution backend (default: local)")
    parser.add_argument("--ray-address", metavar="ADDRESS", help="--backend ray: the cluster")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a config key for every experiment's arms (e.g. --set seeds=3)")  # fmt: skip
    parser.add_argument("--no-report", action="store_true", help="do not render the reports at the end")


def _run_reproduce(args: argparse.Namespace) -> int:
    from .experiments.config import parse_override, set_path
    from .experiments.progress import make_progress
    from .experiments.reproduce import parse_only, reproduce

    prog = "decoupled reproduce"
    out: Path | None = None
    try:
        findings = parse_only(args.only)
        missing = _require_modules(prog, ["mnist1d", *([] if args.no_report else ["matplotlib"])])
        if missing is not None:
            return missing
        overrides: dict = {}
        for item in args.set:
            path, value = parse_override(item)
            set_path(overrides, path, value)
        out = Path(args.out) if args.out else _default_out("reproduce-smoke" if args.smoke else "reproduce")
        options = _execution(args, out, prog)
        print(f"{prog}: {', '.join(findings)}{' (smoke)' if args.smoke else ''}; output folder: {out}", flush=True)

        def progress_for(name: str):
            print(f"--- {name}: {out / name}", flush=True)
            return make_progress(sys.stdout)

        started = time.monotonic()
        summaries = reproduce(out, findings, args.smoke, options, progress_for, overrides or None)
    except _refusals() as error:
        return _refused(prog, error, out)
    for name, summary in summaries.items():
        print(f"{name}: {_summary_line(summary)}", flush=True)
    failed = any(summary.failed for summary in summaries.values())
    if not args.no_report:
        code = _render(prog, out, kind="reproduction")
        if code != EXIT_OK:
            return code
    print(f"{(time.monotonic() - started) / 60:.1f} minutes; output folder: {out}")
    return EXIT_FAILED_RUNS if failed else EXIT_OK


# --------------------------------------------------------------------------------------------------- report


def _add_weight_decay_axis_argument(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    parser.add_argument(
        "--weight-decay-axis", choices=["lambda", "tau"], default="lambda",
        help="label the heatmaps' decoupled weight decays as lambda (default) or as the timescale "
        "tau = 1/(lambda * steps per epoch) in epochs",
    )  # fmt: skip


def _add_report_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("folder", metavar="DIR", help="an output folder of sweep, sweep --preset fN or reproduce")
    parser.add_argument("more", nargs="*", metavar="DIR", help="more folders: reported side by side with the first")
    parser.add_argument(
        "--out", metavar="DIR", help="with two or more folders: where the comparison goes (default: runs/compare-TIME)"
    )
    _add_weight_decay_axis_argument(parser)


def _run_report(args: argparse.Namespace) -> int:
    from .experiments.store import StoreError

    prog = "decoupled report"
    missing = _require_modules(prog, ["matplotlib"])
    if missing is not None:
        return missing
    from .experiments.compare import render_comparison
    from .experiments.files import OutputFolderError, prepare_output_folder, remove_if_empty
    from .experiments.reproduce import folder_kind

    folders = [Path(folder) for folder in (args.folder, *args.more)]
    created: list[Path] = []
    try:
        for folder in folders:
            if not folder.is_dir():
                raise StoreError(f"{str(folder)!r} is not a folder (give an output folder of sweep or reproduce)")
        if len(folders) == 1 and args.out is not None:
            raise StoreError("--out is for a comparison of two or more folders")
        out = (Path(args.out) if args.out else _default_out("compare")) if len(folders) > 1 else None
        if out is not None:
            created = prepare_output_folder(out)  # before any report is rendered: a file in the way refuses all
        for folder in folders:
            code = _render(prog, folder, args.weight_decay_axis, kind=folder_kind(folder))
            if code != EXIT_OK:
                remove_if_empty(created)  # no comparison: no empty folder for it either
                return code
        if out is not None:
            try:
                markdown, page = render_comparison(folders, out)
            except BaseException:
                remove_if_empty(created)
                raise
            print(f"comparison: {markdown} and {page}")
    except KeyboardInterrupt:
        print(f"\n{prog}: interrupted; the stored runs are untouched", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (StoreError, OutputFolderError) as error:
        return _fail(prog, str(error))
    except (OSError, sqlite3.Error) as error:
        return _fail(prog, _filesystem_message(error))
    return EXIT_OK


COMMANDS: list[Command] = [
    Command(
        "sweep",
        "run the learning-rate x weight-decay sweep (resumes in the same --out)",
        _add_sweep_arguments,
        _run_sweep,
    ),
    Command(
        "report",
        "re-render the report of an output folder from its store; with two or more, compare them side by side",
        _add_report_arguments,
        _run_report,
    ),
    Command(
        "reproduce",
        "run every finding of the paper (F1-F5), one experiment each, with a verdict (resumes in the same --out)",
        _add_reproduce_arguments,
        _run_reproduce,
    ),
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
    instead of raising BrokenPipeError: the sweep goes on and records every run, only its output is lost. A
    character the output's encoding lacks (a task's name, a folder's) is written as its escape, not an error."""

    def __init__(self, stream):
        self._stream = stream
        self.broken = False

    def write(self, text: str) -> int:
        if not self.broken:
            try:
                return self._stream.write(text)
            except UnicodeEncodeError:  # an output encoding without these characters (PYTHONIOENCODING=ascii)
                return self.write(self._encodable(text))
            except BrokenPipeError:
                self._break()
        return len(text)

    def _encodable(self, text: str) -> str:
        """``text`` with each character the stream cannot encode written as its escape (``\\u65e5``)."""
        encoding = getattr(self._stream, "encoding", None) or "ascii"
        return text.encode(encoding, "backslashreplace").decode(encoding)

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
