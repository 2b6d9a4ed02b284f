"""``decoupled report A B ...``: several output folders side by side in one report (the same experiment on two
machines, two budgets, a smoke run against a full one).

Each folder contributes one column: for a reproduction or a finding's folder, each finding's verdict and number
(its rendered ``result.json``); for a plain sweep, F1 per family (the basin slopes with their intervals) and each
optimizer's best test error. A low-precision sweep contributes a column per precision arm (and one for the float32
runs of its grid that its folder holds); a comparison with such a column also gets the low-precision section of a
sweep's report, each low-precision column against a float32 column of the same grid (another folder's too).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

from .analysis import Findings, analyze
from .files import prepare_output_folder
from .findings.common import fmt_slope, provisional_note
from .plots import plot_precision_heatmaps
from .report import PRECISION_HEATMAP_FILENAME, Block, Column, md_code, md_text, precision_blocks, write_document
from .store import Store, StoreError, damaged_file, read_json

__all__ = ["render_comparison"]


class _Column(NamedTuple):
    header: str  # Markdown
    label: str  # plain text: the folder, and a low-precision sweep's arm
    cells: dict[str, str]  # row name -> cell text
    findings: Findings | None  # a sweep's (one arm's); None for a finding or a reproduction


def _columns(folder: Path) -> list[_Column]:
    """The columns of one folder (rendered first by the caller): one for a reproduction, a finding or a sweep, one
    per precision arm of a low-precision sweep (and one for its folder's float32 runs of the grid, if any)."""
    from .reproduce import folder_kind, read_manifest

    kind = folder_kind(folder)
    if kind in ("reproduction", "finding"):
        folders = [folder / name for name in read_manifest(folder)["findings"]] if kind == "reproduction" else [folder]
        cells = {}
        for sub in folders:
            path = sub / "result.json"
            if path.exists():
                result = _read_result(path)
                note = provisional_note(result["runs"], result["runs_expected"])
                cells[md_text(result["finding"])] = f"**{md_text(result['verdict'])}**{note}: {md_text(result['ours'])}"
        return [_Column(md_code(folder), str(folder), cells, None)]
    with Store.open(folder, create=False) as store:
        config = store.latest_sweep()
        if config is None:
            raise StoreError(f"the store in {str(folder)!r} records no sweep; nothing to compare")
        rows = store.runs()
    if not config.precisions:
        findings = analyze(config, rows)
        return [_Column(md_code(folder), str(folder), _sweep_cells(findings), findings)]
    arms = [analyze(config.float32_reference(), rows)] + [analyze(arm, rows) for arm in config.by_precision()]
    return [
        _Column(f"{md_code(folder)} ({md_text(f.config.arm_label)})", f"{folder} ({f.config.arm_label})",
                _sweep_cells(f), f)
        for f in arms
        if f.runs_used or f.config.precisions  # the float32 runs only when the folder holds some
    ]  # fmt: skip


def _sweep_cells(findings: Findings) -> dict[str, str]:
    from .findings.f1 import pair_verdicts

    cells = {}
    for base, variant, verdict in pair_verdicts(findings):
        cells[f"F1 {base.label} vs {variant.label}"] = (
            f"**{verdict}**: {fmt_slope(base.basin.interval if base.basin else None)} vs "
            f"{fmt_slope(variant.basin.interval if variant.basin else None)}"
        )
    for opt in findings.optimizers:
        if opt.best is not None:
            cells[f"{opt.label}: best test error"] = f"{100 * opt.best_test_mean:.2f}%"
    return cells


def _read_result(path: Path) -> dict:
    """A finding's result.json (as rendered); a StoreError naming the file when it is damaged."""
    result = read_json(path)
    texts_ok = isinstance(result, dict) and all(isinstance(result.get(k), str) for k in ("finding", "verdict", "ours"))
    if not texts_ok or not all(isinstance(result.get(k), int) for k in ("runs", "runs_expected")):
        raise damaged_file(path, "not a finding's result: finding, verdict, ours, runs and runs_expected expected")
    return result


def render_comparison(folders: Sequence[Path], out: Path) -> tuple[Path, Path]:
    """One table, a column per folder (each already rendered; a low-precision sweep's: one per precision arm), in
    ``out``/comparison.md and .html; with a low-precision column, the low-precision section after it."""
    columns = [column for folder in folders for column in _columns(Path(folder))]
    names: list[str] = []
    for column in columns:
        names += [name for name in column.cells if name not in names]
    header = ["", *[column.header for column in columns]]
    rows = [[name, *[column.cells.get(name, "") for column in columns]] for name in names]
    prepare_output_folder(out)
    blocks: list[Block] = [
        ("h1", "Side by side: " + ", ".join(md_text(f) for f in folders)),
        ("p", f"Rendered {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; each folder's own report has the "
              "figures and the details."),
        ("table", header, rows),
    ]  # fmt: skip
    sweeps: list[Column] = [(c.label, c.findings) for c in columns if c.findings is not None]
    if any(findings.config.precisions for _, findings in sweeps):
        plot_precision_heatmaps(sweeps, out / PRECISION_HEATMAP_FILENAME)
        blocks += [("h2", "Low precision against float32"), *precision_blocks(sweeps, PRECISION_HEATMAP_FILENAME)]
    return write_document(blocks, out, "comparison")
