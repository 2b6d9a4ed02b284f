"""What every finding of ``decoupled reproduce`` shares: its experiment (preset -> arms), its result, the verdict
rules.

An experiment is one finding's runs: one or more *arms*, each an ordinary :class:`SweepConfig` (F4's arms are
budgets, F5's are schedules), all on the same data and all recorded in one store, the finding's folder. Its
preset (``presets/findings/fN.toml``) holds the sweep keys of the presets plus:

* ``finding = "F4"``; ``base = "default"`` to start from another preset's keys;
* ``[arms.NAME]``: overrides of each arm over the rest (no arms: one arm called "main");
* ``[smoke]``: overrides for ``--smoke`` (toy sizes, same statistics), with ``smoke.arms.NAME`` per arm;
* ``needs = ["F2"]``: findings whose runs this one reads too (F3 compares with F2's Adam+L2 and SGD+L2).

Verdicts (one of :data:`VERDICTS`) come from 95% intervals only, by the rules of :func:`direction_verdict`,
:func:`slope_pair_verdict`, :func:`exponent_verdict` and :func:`combine`; never from an argmin.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..analysis import Findings, analyze
from ..config import ConfigError, SweepConfig, merge, read_preset, sweep_config_from_dict
from ..stats import Interval
from ..store import Store, damaged_file, read_json, write_json

__all__ = [
    "EXPERIMENT_FILENAME",
    "INCONCLUSIVE",
    "NOT_REPRODUCED",
    "PARTLY",
    "REPRODUCED",
    "VERDICTS",
    "Arm",
    "Experiment",
    "FindingResult",
    "combine",
    "direction_verdict",
    "exponent_verdict",
    "load_experiment",
    "no_interval_reason",
    "read_arms",
    "slope_pair_verdict",
]

REPRODUCED, PARTLY, NOT_REPRODUCED, INCONCLUSIVE = (
    "reproduced",
    "partly",
    "not reproduced at this scale",
    "inconclusive",
)
VERDICTS = (REPRODUCED, PARTLY, NOT_REPRODUCED, INCONCLUSIVE)
EXPERIMENT_FILENAME = "experiment.json"

# Thresholds of the rules below, fixed before any run (never tuned to make a verdict agree with the paper).
NEAR_ZERO_SLOPE = 0.5  # F1: a decoupled basin is "axis-aligned" when its slope interval lies within +-0.5
MAX_SLOPE_HALF_WIDTH = 1.0  # F1/F4: an interval wider than +-1 cannot tell -1 (or -1/2) from 0: inconclusive
NEGLIGIBLE_POINTS = 0.005  # an error difference whose interval lies within +-0.5 points is "no effect here"


@dataclass(frozen=True)
class Arm:
    """One sweep of an experiment; ``finding`` says which experiment's arm it is (F3 also reads F2's)."""

    finding: str
    name: str
    config: SweepConfig


@dataclass(frozen=True)
class Experiment:
    finding: str  # "F1" .. "F5"
    preset: str  # "f1" .. "f5"
    smoke: bool
    arms: tuple[Arm, ...]  # this finding's own arms
    needs: tuple[str, ...] = ()  # findings whose arms this one also reads

    def to_dict(self) -> dict[str, Any]:
        return {
            "finding": self.finding,
            "preset": self.preset,
            "smoke": self.smoke,
            "needs": list(self.needs),
            "arms": [{"finding": a.finding, "name": a.name, "config": a.config.to_dict()} for a in self.arms],
        }

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> Experiment:
        """From :meth:`to_dict` output; a ValueError, TypeError or KeyError when ``raw`` is not one."""
        if not isinstance(raw["smoke"], bool):
            raise ValueError(f"smoke must be true or false, got {raw['smoke']!r}")
        arms = tuple(Arm(a["finding"], a["name"], SweepConfig.from_dict(a["config"])) for a in raw["arms"])
        return cls(raw["finding"], raw["preset"], raw["smoke"], arms, tuple(raw.get("needs", ())))

    def write(self, folder: Path) -> None:
        """``folder``/experiment.json, atomically (``folder`` exists)."""
        write_json(folder / EXPERIMENT_FILENAME, self.to_dict())

    @classmethod
    def read(cls, folder: Path) -> Experiment:
        """The experiment of ``folder``; a StoreError naming the file when it is missing or damaged."""
        path = folder / EXPERIMENT_FILENAME
        raw = read_json(path)
        try:
            return cls.from_dict(raw)
        except (TypeError, ValueError, KeyError, AttributeError) as error:
            problem = f"missing key {error}" if isinstance(error, KeyError) else str(error)
            raise damaged_file(path, f"not an experiment of decoupled reproduce: {problem}") from None


_FOLDER = "findings"  # presets/findings/fN.toml: apart from the sweep presets, which load_sweep_config reads


def experiment_presets() -> list[str]:
    """Names of the shipped experiment presets (``presets/findings/*.toml``): f1 .. f5."""
    from importlib import resources

    folder = resources.files("decoupled.experiments.presets").joinpath(_FOLDER)
    return sorted(entry.name[:-5] for entry in folder.iterdir() if entry.name.endswith(".toml"))


def is_experiment_preset(name: str) -> bool:
    return name in experiment_presets()


def read_experiment_preset(name: str) -> dict[str, Any]:
    from importlib import resources

    from ..config import _read_toml

    if name not in experiment_presets():
        raise ConfigError(f"unknown experiment preset {name!r}; choose one of: {', '.join(experiment_presets())}")
    text = (
        resources.files("decoupled.experiments.presets").joinpath(_FOLDER).joinpath(f"{name}.toml").read_text("utf-8")
    )
    return _read_toml(text, f"preset {name!r}")


def load_experiment(preset: str, smoke: bool = False, overrides: Mapping[str, Any] | None = None) -> Experiment:
    """The experiment of preset ``preset`` (``presets/<preset>.toml`` with a ``finding`` key): its arms as
    checked sweep configs. ``overrides`` (a nested dict, as ``--set``) layer over every arm, last."""
    raw = read_experiment_preset(preset)
    finding = raw.pop("finding", None)
    if not isinstance(finding, str):
        raise ConfigError(f"preset {preset!r} is a sweep, not a finding's experiment (it has no 'finding' key)")
    base = raw.pop("base", None)
    needs = raw.pop("needs", [])
    arms = raw.pop("arms", {"main": {}})
    smoke_table = raw.pop("smoke", {})
    if base is not None:
        raw = merge(read_preset(base), raw)
    raw.setdefault("name", preset)
    smoke_arms = {}
    if smoke:
        smoke_table = dict(smoke_table)
        smoke_arms = smoke_table.pop("arms", {})
        raw = merge(raw, smoke_table)
    configs = []
    for arm_name, arm in arms.items():
        tree = merge(raw, arm)
        tree = merge(tree, smoke_arms.get(arm_name, {}))
        if overrides:
            tree = merge(tree, overrides)
        tree["name"] = f"{preset}-{arm_name}" + ("-smoke" if smoke else "")  # one folder name (config checks it)
        config = sweep_config_from_dict(tree)
        if len(config.precisions) > 1:  # a finding's statistics read one grid per optimizer and arm
            raise ConfigError(
                f"precision = {list(config.precisions)!r}: an experiment's arm takes one precision; compare "
                "precisions with decoupled sweep --dtype bfloat16 --precision ..."
            )
        configs.append(Arm(finding, arm_name, config))
    return Experiment(finding, preset, smoke, tuple(configs), tuple(needs))


def read_arms(folder: Path, experiment: Experiment) -> dict[tuple[str, str], Findings]:
    """(finding, arm name) -> that arm's :class:`Findings`, from ``folder``'s store."""
    with Store.open(folder, create=False) as store:
        rows = store.runs()
    return {(arm.finding, arm.name): analyze(arm.config, rows) for arm in experiment.arms}


@dataclass
class FindingResult:
    """One finding's row and section of the reproduction report."""

    finding: str
    title: str
    claim: str  # the paper's claim, one sentence
    paper: str  # what the paper measured
    ours: str  # our number with its interval
    verdict: str  # one of VERDICTS
    figure: str  # file name in the finding's folder
    figure_caption: str
    details: list[str] = field(default_factory=list)  # sentences of its section
    tables: list[tuple[str, list[str], list[list[str]]]] = field(default_factory=list)  # (caption, header, rows)
    runs: int = 0
    runs_expected: int = 0
    runs_diverged: int = 0
    wall_time_s: float = 0.0  # sum of the runs' wall times
    setup: str = ""

    @property
    def provisional_note(self) -> str:
        """The verdict's mark while runs are missing (interrupted or failed): " (provisional: 40 of 100 runs
        stored)"; else the empty string."""
        return provisional_note(self.runs, self.runs_expected)

    def verdict_text(self) -> str:
        """The verdict as printed and tabled: marked provisional while runs are missing."""
        return self.verdict + self.provisional_note

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("finding", "title", "claim", "paper", "ours", "verdict", "figure",
                                                 "runs", "runs_expected", "runs_diverged", "wall_time_s")}  # fmt: skip


def provisional_note(runs: int, expected: int) -> str:
    """The mark of a verdict from ``runs`` of ``expected`` runs: " (provisional: RUNS of EXPECTED runs stored)"
    while runs are missing, else the empty string."""
    return f" (provisional: {runs} of {expected} runs stored)" if runs < expected else ""


# ---------------------------------------------------------------------------------------------------- verdicts


def direction_verdict(interval: Interval | None, paper: float | None = None) -> str:
    """The verdict on a claimed positive effect (an error difference, > 0 in the paper's direction).

    * no interval (fewer than 2 seeds): inconclusive;
    * the interval lies above 0: reproduced, or partly if a paper value is given and the whole interval lies
      below it (an effect in the paper's direction, but smaller);
    * it lies below 0: not reproduced (the opposite holds here);
    * it contains 0: inconclusive when it also contains the paper's value, or (with no paper value) when it
      reaches beyond +-0.5 points; else not reproduced at this scale (the effect is absent or negligible here).
    """
    if interval is None:
        return INCONCLUSIVE
    if interval.low > 0:
        return PARTLY if paper is not None and interval.high < paper else REPRODUCED
    if interval.high < 0:
        return NOT_REPRODUCED
    if paper is not None:
        return INCONCLUSIVE if interval.contains(paper) else NOT_REPRODUCED
    return NOT_REPRODUCED if max(-interval.low, interval.high) <= NEGLIGIBLE_POINTS else INCONCLUSIVE


def slope_pair_verdict(l2: Interval | None, decoupled: Interval | None) -> str:
    """F1 for one family: reproduced when the decoupled variant's basin-slope interval lies above the L2 one's
    (excludes it) and within +-0.5 of 0 (axis-aligned); partly when one of the two holds; not reproduced when
    neither; inconclusive without both intervals or when either is wider than +-1."""
    if l2 is None or decoupled is None:
        return INCONCLUSIVE
    if max(l2.half_width, decoupled.half_width) > MAX_SLOPE_HALF_WIDTH:
        return INCONCLUSIVE
    separated = decoupled.low > l2.high
    near_zero = -NEAR_ZERO_SLOPE <= decoupled.low and decoupled.high <= NEAR_ZERO_SLOPE
    return {2: REPRODUCED, 1: PARTLY, 0: NOT_REPRODUCED}[int(separated) + int(near_zero)]


def exponent_verdict(interval: Interval | None, predicted: float = -0.5) -> str:
    """F4: the exponent of lambda* against the number of updates. Reproduced when its interval lies below 0 and
    contains the normalized-decay prediction -1/2; partly when it lies below 0 but excludes -1/2; not reproduced
    when it lies above 0, or contains 0 but not -1/2; inconclusive when it contains both or is wider than +-1."""
    if interval is None or interval.half_width > MAX_SLOPE_HALF_WIDTH:
        return INCONCLUSIVE
    if interval.high < 0:
        return REPRODUCED if interval.contains(predicted) else PARTLY
    if interval.low > 0:
        return NOT_REPRODUCED
    return INCONCLUSIVE if interval.contains(predicted) else NOT_REPRODUCED


def combine(verdicts: list[str]) -> str:
    """One verdict from several parts: all the same -> that one; any reproduced or partly -> partly; else (a mix
    of not reproduced and inconclusive) -> inconclusive."""
    if not verdicts:
        return INCONCLUSIVE
    if len(set(verdicts)) == 1:
        return verdicts[0]
    if REPRODUCED in verdicts or PARTLY in verdicts:
        return PARTLY
    return INCONCLUSIVE


def no_interval_reason(arms: Iterable[Findings]) -> str:
    """Why an interval computed from ``arms`` (a finding's sweeps) can be missing, in words that hold for every
    one of its intervals: no runs, every run diverged, fewer than 2 seeds, or (else) the cells it compares."""
    arms = list(arms)
    used, diverged = sum(f.runs_used for f in arms), sum(f.runs_diverged for f in arms)
    if used == 0:
        return "no runs stored"
    if diverged == used:
        return "every run diverged"
    if min(f.config.seeds for f in arms) < 2:
        return "fewer than 2 seeds"
    return "its cells diverged, or have fewer than 2 seeds stored"


def fmt_points(interval: Interval | None, missing: str) -> str:
    """An error difference (fractions) as points with its interval, e.g. '+0.42 [+0.10, +0.74] points';
    without an interval "n/a (``missing``)", the reason (:func:`no_interval_reason`)."""
    return f"n/a ({missing})" if interval is None else f"{interval.format(2, 100)} points"


def fmt_slope(interval: Interval | None) -> str:
    return "n/a" if interval is None else interval.format(2)
