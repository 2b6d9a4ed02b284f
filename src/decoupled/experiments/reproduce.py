"""``decoupled reproduce``: every finding of the paper, one experiment each, with a verdict from the data.

Layout of an output folder::

    OUT/reproduction.json          which findings, smoke or not (so ``decoupled report OUT`` re-renders it)
    OUT/reproduction.md, .html     one table row per finding (F1 .. F5), then a section per finding
    OUT/F1/ ... OUT/F5/            one experiment each: its own resumable store (results.sqlite), experiment.json,
                                   report.md/.html, its figure and results.csv

Each finding's folder is an ordinary output folder: ``decoupled report OUT/F4`` re-renders that finding alone,
and running the same command again resumes every experiment where it stopped.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from .config import ConfigError
from .files import prepare_output_folder
from .findings import FINDINGS
from .findings.common import EXPERIMENT_FILENAME, Experiment, FindingResult, load_experiment, read_arms
from .progress import SweepProgress
from .report import Block, md_code, md_text, write_document
from .store import STORE_FILENAME, Store, StoreError, damaged_file, read_json, write_json
from .sweep import ExecutionOptions, SweepSummary, run_sweeps

__all__ = [
    "MANIFEST_FILENAME",
    "Reproduction",
    "check_folder_kind",
    "folder_kind",
    "parse_only",
    "read_manifest",
    "render_finding",
    "render_reproduction",
    "reproduce",
    "run_experiment",
]

MANIFEST_FILENAME = "reproduction.json"


def parse_only(text: str | None) -> list[str]:
    """``"F4,f2"`` -> ["F2", "F4"] (in the paper's order); None -> all. Unknown names are a ConfigError."""
    if text is None:
        return list(FINDINGS)
    names = [part.strip().upper() for part in text.split(",") if part.strip()]
    if not names:
        raise ConfigError(f"--only {text!r} names no finding; choose from {', '.join(FINDINGS)}")
    for name in names:
        if name not in FINDINGS:
            raise ConfigError(f"--only: unknown finding {name!r}; choose from {', '.join(FINDINGS)}")
    return [name for name in FINDINGS if name in names]


def with_needs(findings: Sequence[str]) -> list[str]:
    """``findings`` plus those whose runs they read (F3 reads F2's), in the paper's order."""
    wanted = set(findings)
    for name in findings:
        wanted |= set(load_experiment(_preset(name)).needs)
    return [name for name in FINDINGS if name in wanted]


def _preset(finding: str) -> str:
    return FINDINGS[finding].__name__.rsplit(".", 1)[-1]  # module f4 <-> preset f4


def run_experiment(
    experiment: Experiment,
    options: ExecutionOptions,
    progress: SweepProgress,
    *,
    include_needs: bool,
    overrides: dict | None = None,
) -> SweepSummary:
    """Run every arm of ``experiment`` not yet in ``options.out``'s store. ``include_needs``: also run the arms
    of the findings it reads (standalone ``decoupled sweep --preset f3``) into the same folder, with the same
    ``overrides`` as ``experiment`` was loaded with (so that both see the same data)."""
    arms = list(experiment.arms)
    if include_needs:
        for need in experiment.needs:
            arms += list(load_experiment(_preset(need), experiment.smoke, overrides).arms)
        experiment = replace(experiment, arms=tuple(arms))
    folder = options.out
    check_experiment_folder(folder, experiment)
    prepare_output_folder(folder)
    experiment.write(folder)  # first: a folder killed halfway is still a finding's folder, for report and resume
    return run_sweeps([arm.config for arm in arms], options, progress)


# ------------------------------------------------------------------------------------------ kinds of folder


def folder_kind(folder: Path) -> str:
    """What ``decoupled report`` finds in a folder: "reproduction", "finding" or "sweep"."""
    return _found_kind(folder) or "sweep"


def _found_kind(folder: Path) -> str | None:
    """The kind of output folder ``folder`` is (or, inside a reproduction's folder under a finding's name, is to
    be): "reproduction", "finding" or "sweep"; None for a folder that holds none of ours (or does not exist)."""
    if (folder / MANIFEST_FILENAME).exists():
        return "reproduction"
    if (folder / EXPERIMENT_FILENAME).exists():
        return "finding"
    if (folder / STORE_FILENAME).exists():
        return "sweep"
    if folder.name in FINDINGS and (folder.parent / MANIFEST_FILENAME).exists():
        return "finding"
    return None


_KIND_WORDS = {"reproduction": "a reproduction", "finding": "a finding's experiment", "sweep": "a sweep"}


def check_folder_kind(folder: Path, kind: str) -> None:
    """Refuse to put ``kind`` ("sweep", "finding" or "reproduction") into ``folder`` when it is an output folder
    of another kind: each folder's report renders one kind, and a sweep's report.md would replace a finding's.
    Reads only (a ConfigError before anything is written)."""
    found = _found_kind(folder)
    if found is None or found == kind:
        return
    if found == "reproduction":
        what = f"holds a reproduction ({MANIFEST_FILENAME})"
    elif found == "finding" and not (folder / EXPERIMENT_FILENAME).exists():
        what = f"is {folder.name}'s folder in the reproduction in {str(folder.parent)!r}"
    elif found == "finding":
        what = f"is a finding's folder ({EXPERIMENT_FILENAME})"
    else:
        what = f"holds a sweep ({STORE_FILENAME} without {EXPERIMENT_FILENAME})"
    raise ConfigError(f"output folder {str(folder)!r} {what}; use another --out for {_KIND_WORDS[kind]}")


def check_experiment_folder(folder: Path, experiment: Experiment) -> None:
    """Refuse ``folder`` for ``experiment`` before anything is written: another kind of folder, another
    experiment's (or a smoke one's for a full one), or an unreadable store; reads only."""
    check_folder_kind(folder, "finding")
    if folder.name in FINDINGS and folder.name != experiment.finding and (folder.parent / MANIFEST_FILENAME).exists():
        raise ConfigError(f"output folder {str(folder)!r} is {folder.name}'s folder in the reproduction in "
                          f"{str(folder.parent)!r}; use another --out for {experiment.finding}")  # fmt: skip
    if (folder / EXPERIMENT_FILENAME).exists():
        previous = read_experiment(folder)
        if previous.finding != experiment.finding or previous.smoke != experiment.smoke:
            raise ConfigError(
                f"{str(folder)!r} holds experiment {previous.finding}{' (smoke)' if previous.smoke else ''}; "
                f"use another --out folder for {experiment.finding}{' (smoke)' if experiment.smoke else ''}"
            )
    if (folder / STORE_FILENAME).exists():
        with Store.open(folder, create=False) as store:
            store.runs()  # every row readable


def read_experiment(folder: Path) -> Experiment:
    """``folder``'s experiment.json, of a finding this version knows; a StoreError naming the file if not."""
    experiment = Experiment.read(folder)
    if experiment.finding not in FINDINGS:
        raise damaged_file(folder / EXPERIMENT_FILENAME, f"unknown finding {experiment.finding!r}")
    return experiment


def read_manifest(out: Path) -> dict[str, Any]:
    """``out``/reproduction.json: {"findings": [...], "smoke": bool}; a StoreError naming the file if it is
    missing, damaged or of another shape."""
    path = out / MANIFEST_FILENAME
    raw = read_json(path)
    if (
        not isinstance(raw, dict)
        or not isinstance(raw.get("smoke"), bool)
        or not isinstance(raw.get("findings"), list)
        or not all(isinstance(name, str) and name in FINDINGS for name in raw["findings"])
    ):
        raise damaged_file(path, 'not a reproduction\'s manifest: {"findings": ["F1", ...], "smoke": false} expected')
    return raw


def _gather(folder: Path, experiment: Experiment) -> dict[tuple[str, str], Any]:
    """Every arm the finding's analysis reads: its own store's, and for each need not in it, the sibling
    folder's (OUT/F2 next to OUT/F3) when there is one."""
    arms = read_arms(folder, experiment)
    have = {finding for finding, _ in arms}
    for need in experiment.needs:
        sibling = folder.parent / need
        if need not in have and (sibling / EXPERIMENT_FILENAME).exists() and (sibling / STORE_FILENAME).exists():
            arms.update(read_arms(sibling, read_experiment(sibling)))
    return arms


def _setup_text(experiment: Experiment) -> str:
    own = [arm for arm in experiment.arms if arm.finding == experiment.finding]
    config = own[0].config
    data, model = config.data, config.model
    budgets = list(dict.fromkeys((arm.config.train.epochs, arm.config.train.batch_size) for arm in own))
    if len(budgets) == 1:
        training = f"{budgets[0][0]} epochs of batch {budgets[0][1]}"
    else:  # F4's arms are budgets
        training = "epochs x batch by arm " + ", ".join(f"{e} x {b}" for e, b in budgets)
    cells = sum(g.cells for arm in experiment.arms for g in arm.config.grids)
    return (
        f"{data.dataset} ({data.train_size} train / {data.val_size} validation / {data.test_size} test), "
        f"{model.name} width {model.width}, {training}, {config.seeds} seeds; "
        f"arms: {', '.join(arm.name for arm in own)}; {cells} cells"
    )


def render_finding(folder: str | Path) -> FindingResult:
    """Analyze a finding's folder from its store(s) alone, write its figure and report.md/.html, and return
    its result (the row and section of the reproduction report)."""
    folder = Path(folder)
    experiment = read_experiment(folder)
    arms = _gather(folder, experiment)
    module = FINDINGS[experiment.finding]
    result: FindingResult = module.analyze(arms, folder)
    own = [f for (finding, _), f in arms.items() if finding == experiment.finding]
    result.runs = sum(f.runs_used for f in own)
    result.runs_expected = sum(f.runs_expected for f in own)
    result.runs_diverged = sum(f.runs_diverged for f in own)
    result.wall_time_s = sum(f.wall_time_total_s for f in own)
    result.setup = _setup_text(experiment)
    if result.runs and result.runs_diverged == result.runs:
        result.details.insert(0, (
            f"**Every run diverged** ({result.runs} of {result.runs} stored): no cell trained, so there is no "
            "number to compare and no interval (the grid's learning rates or weight decays are too large here)."
        ))  # fmt: skip
    if result.runs < result.runs_expected:
        provisional = (
            f"**Provisional:** {result.runs} of {result.runs_expected} runs are stored (interrupted or failed); the "
            "same `decoupled reproduce` command finishes them."
        )
        result.details.insert(0, provisional)
    hardware: dict = next((f.hardware for f in own if f.hardware), {})
    blocks = [("h1", f"{result.finding}: {result.title}" + (" (smoke)" if experiment.smoke else ""))]
    blocks += _summary_table([result], link=False)
    blocks += _section(result, hardware, level="h2")
    write_document(blocks, folder, "report")
    write_json(folder / "result.json", result.to_dict())
    return result


def _summary_table(results: Sequence[FindingResult], link: bool, prefix: str = "") -> list[Block]:
    header = ["finding", "the paper's claim", "the paper measured", "ours (95% interval)", "verdict", "figure"]
    rows = []
    for r in results:
        target = f"{prefix}{r.finding}/{r.figure}" if link else r.figure
        rows.append([r.finding, r.claim, r.paper, r.ours, f"**{r.verdict}**{r.provisional_note}",
                     f"[{r.figure}]({target})"])  # fmt: skip
    return [("table", header, rows)]


def _section(result: FindingResult, hardware: dict, level: str = "h2", prefix: str = "") -> list[Block]:
    blocks: list[Block] = [(level, f"{result.finding}: {result.title} -- {result.verdict_text()}")]
    blocks.append(("p", f"**The paper:** {result.claim} {result.paper}."))
    blocks.append(("ul", result.details))
    for caption, header, rows in result.tables:
        blocks += [("p", f"**{caption}**"), ("table", header, rows)]
    blocks.append(("img", f"{prefix}{result.figure}", result.figure_caption))
    cpu = md_text(hardware.get("cpu") or hardware.get("processor") or hardware.get("machine") or "unknown CPU")
    cores = hardware.get("cores")
    blocks.append(("p", f"Setup: {result.setup}. {result.runs} of {result.runs_expected} runs stored, "
                        f"{result.runs_diverged} diverged ({result.wall_time_s / 60:.1f} minutes of run time summed "
                        f"over workers, on {cpu}" + (f", {md_text(cores)} cores" if cores else "") + ")."))  # fmt: skip
    return blocks


@dataclass(frozen=True)
class Reproduction:
    """A rendered reproduction report: its two files and each finding's result, in the paper's order."""

    markdown: Path
    html: Path
    results: list[FindingResult]


def render_reproduction(out: str | Path) -> Reproduction:
    """Re-render every finding's folder under ``out`` and the reproduction report from the stores alone."""
    out = Path(out)
    manifest = read_manifest(out)
    results: list[FindingResult] = []
    hardware: dict = {}
    for finding in manifest["findings"]:
        folder = out / finding
        if not (folder / EXPERIMENT_FILENAME).exists() or not (folder / STORE_FILENAME).exists():
            continue  # not started yet (or stopped before its first run): no row until it has runs
        results.append(render_finding(folder))
        hardware = hardware or _hardware(folder)
    smoke = " (smoke: toy sizes, the machinery only; these verdicts mean nothing)" if manifest["smoke"] else ""
    blocks: list[Block] = [
        ("h1", f"Decoupled weight decay: the paper's findings on this machine{smoke}"),
        ("p", f"Output folder {md_code(out)}, rendered {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} from "
              f"each finding's store ({md_code(f'decoupled report {out}')} renders it again; the same "
              "`decoupled reproduce` resumes)."),
        ("p", "Verdicts come from 95% intervals over seeds, by fixed rules (docs/reproduce.md): **reproduced**, "
              "**partly**, **not reproduced at this scale**, **inconclusive** (the interval is too wide to tell); "
              "**provisional** while runs are missing."),
    ]  # fmt: skip
    blocks += _summary_table(results, link=True)
    for result in results:
        for block in _section(result, hardware, prefix=f"{result.finding}/"):
            blocks.append(block)
    markdown, page = write_document(blocks, out, "reproduction")
    return Reproduction(markdown, page, results)


def _hardware(folder: Path) -> dict:
    try:
        experiment = read_experiment(folder)
        arms = read_arms(folder, experiment)
    except (OSError, ValueError, StoreError):
        return {}
    return next((f.hardware for f in arms.values() if f.hardware), {})


def reproduce(
    out: Path,
    findings: Sequence[str],
    smoke: bool,
    options: ExecutionOptions,
    progress_for: Callable[[str], SweepProgress],
    overrides: dict | None = None,
) -> dict[str, SweepSummary]:
    """Run each finding's experiment (and those it reads) into OUT/<finding>, then render the report.
    Every config is loaded and checked, and every folder it will write, before anything is written: a refused
    command leaves ``out`` as it was."""
    order = with_needs(findings)
    experiments = {name: load_experiment(_preset(name), smoke, overrides) for name in order}
    check_folder_kind(out, "reproduction")
    previous = read_manifest(out) if (out / MANIFEST_FILENAME).exists() else None
    if previous is not None and previous["smoke"] != smoke:
        raise ConfigError(f"{str(out)!r} holds a {'smoke ' if previous['smoke'] else ''}reproduction; "
                          f"use another --out folder for {'--smoke' if smoke else 'the full one'}")  # fmt: skip
    for name in order:
        check_experiment_folder(out / name, experiments[name])
    order_all = [n for n in FINDINGS if n in set(previous["findings"] if previous else []) | set(order)]
    prepare_output_folder(out)
    write_json(out / MANIFEST_FILENAME, {"findings": order_all, "smoke": smoke})
    summaries = {}
    for name in order:
        folder = out / name
        summaries[name] = run_experiment(
            experiments[name], replace(options, out=folder), progress_for(name), include_needs=False
        )
    return summaries
