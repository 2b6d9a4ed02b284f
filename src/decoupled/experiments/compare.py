"""``decoupled report A B ...``: several output folders side by side in one report (the same experiment on two
machines, two budgets, a smoke run against a full one).

Each folder contributes one column: for a reproduction or a finding's folder, each finding's verdict and number
(its rendered ``result.json``); for a plain sweep, F1 per family (the basin slopes with their intervals) and each
optimizer's best test error.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path

from .analysis import analyze
from .findings.common import fmt_slope
from .report import Block, write_document
from .store import Store, StoreError

__all__ = ["render_comparison"]


def _finding_cells(folder: Path) -> dict[str, str]:
    """Row name -> cell text, for one folder (rendered first by the caller)."""
    from .reproduce import MANIFEST_FILENAME, folder_kind

    kind = folder_kind(folder)
    if kind in ("reproduction", "finding"):
        folders = [folder / name for name in json.loads((folder / MANIFEST_FILENAME).read_text())["findings"]] if (
            kind == "reproduction") else [folder]  # fmt: skip
        cells = {}
        for sub in folders:
            path = sub / "result.json"
            if path.exists():
                result = json.loads(path.read_text(encoding="utf-8"))
                cells[result["finding"]] = f"**{result['verdict']}**: {result['ours']}"
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


def render_comparison(folders: Sequence[Path], out: Path) -> tuple[Path, Path]:
    """One table, a column per folder (each already rendered), in ``out``/comparison.md and .html."""
    columns = [_finding_cells(Path(folder)) for folder in folders]
    names: list[str] = []
    for column in columns:
        names += [name for name in column if name not in names]
    header = ["", *[f"`{folder}`" for folder in folders]]
    rows = [[name, *[column.get(name, "") for column in columns]] for name in names]
    out.mkdir(parents=True, exist_ok=True)
    blocks: list[Block] = [
        ("h1", "Side by side: " + ", ".join(str(f) for f in folders)),
        ("p", f"Rendered {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; each folder's own report has the "
              "figures and the details."),
        ("table", header, rows),
    ]  # fmt: skip
    return write_document(blocks, out, "comparison")
