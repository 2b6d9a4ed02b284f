"""The paper's five findings (PAPER.md, "The findings") as experiments: one module per finding, each with its
claim, its analysis (statistics with intervals -> a verdict) and its figure; its preset is ``presets/findings/fN.toml``.

``decoupled reproduce`` runs them (:mod:`decoupled.experiments.reproduce`).
"""

from __future__ import annotations

from types import ModuleType

from . import f1, f2, f3, f4, f5

FINDINGS: dict[str, ModuleType] = {"F1": f1, "F2": f2, "F3": f3, "F4": f4, "F5": f5}

__all__ = ["FINDINGS"]
