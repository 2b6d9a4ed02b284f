"""``decoupled report A B ...``: several output folders side by side in one report (the same experiment on two
machines, two budgets, a smoke run against a full one).

Each folder contributes one column: for a reproduction or a finding's folder, each finding's verdict and number
(its rendered ``result.json``); for a plain sweep, F1 per family (the basin slopes with their intervals) and each
optimizer's best test error.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

from .analysis import analyze
from .files import prepare_output_folder
from .findings.common import fmt_slope, provisional_note
from .report import Block, md_code, md_text, write_document
from .store import Store, StoreError, damaged_file, read_json

__all__ = ["render_comparison"]


def _finding_cells(folder: Path) -> dict[str, str]:
    """Row name -> cell text, for one folder (rendered first by the caller)."""
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
        return cells
    from .findings.f1 import pair_verdicts

    with Store.open(folder, create=False) as store:
        config = store.latest_sweep()
        if config is None:
            raise StoreError(f"the store in {str(folder)!r} records no sweep; nothing to compare")
        rows = store.runs()
    findings = analyze(config, rows)
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
    """One table, a column per folder (each already rendered), in ``out``/comparison.md and .html."""
    columns = [_finding_cells(Path(folder)) for folder in folders]
    names: list[str] = []
    for column in columns:
        names += [name for name in column if name not in names]
    header = ["", *[md_code(folder) for folder in folders]]
    rows = [[name, *[column.get(name, "") for column in columns]] for name in names]
    prepare_output_folder(out)
    blocks: list[Block] = [
        ("h1", "Side by side: " + ", ".join(md_text(f) for f in folders)),
        ("p", f"Rendered {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; each folder's own report has the "
              "figures and the details."),
        ("table", header, rows),
    ]  # fmt: skip
    return write_document(blocks, out, "comparison")
