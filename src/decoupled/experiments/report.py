"""The report of a sweep: ``report.md`` and a self-contained ``report.html`` (images inlined as base64), plus
the PNG figures and ``results.csv``, all re-rendered from the store alone (``decoupled report DIR``).

The report states its findings in numbers and says plainly where they do not show the paper's claims.
"""

from __future__ import annotations

import base64
import html
import math
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from decoupled.precision import PRECISIONS

from .analysis import (
    BASIN_POINTS,
    NOISE_MULTIPLE,
    TRAINED_WITHIN,
    Comparison,
    Findings,
    OptimizerFindings,
    analyze,
    compare_best,
    decay_effect,
)
from .config import OPTIMIZERS, SweepConfig
from .files import write_text_atomic
from .plots import CURVES_FILENAME, HEATMAP_FILENAME, plot_curves, plot_heatmaps, plot_precision_heatmaps
from .store import Store, StoreError
from .sweep import CSV_FILENAME
from .train import format_power_of_two

__all__ = ["ReportPaths", "md_code", "md_text", "render_report", "statements"]


@dataclass(frozen=True)
class ReportPaths:
    markdown: Path
    html: Path
    figures: tuple[Path, ...]  # the heatmaps first
    csv: Path


# ------------------------------------------------------------------------------------------ names as text

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# What Markdown (and _inline_html) would read as markup: a backslash escape makes it literal. An underscore
# between letters or digits is plain text already (train_loss), and a pipe is left to the tables' own escape
# (the template's "cell" filter), which a second escape would undo.
_MARKUP = re.compile(r"[\\`*\[\]<>~&]|(?<!\w)_|_(?!\w)|^#")


def md_text(text: object) -> str:
    """A name (a task's, a folder's, an error message) as literal Markdown: its markup characters
    backslash-escaped and its line breaks as spaces, so that it cannot open a link, a code span or emphasis in
    report.md, nor in report.html (:func:`_inline_html` reads the same escapes)."""
    return _MARKUP.sub(lambda match: "\\" + match.group(0), _CONTROL.sub(" ", str(text)))


def md_code(text: object) -> str:
    """``text`` as one Markdown code span, whatever backticks it holds: fenced by one backtick more than its
    longest run of them, and padded with a space where it starts or ends with one (CommonMark's rules)."""
    text = _CONTROL.sub(" ", str(text))
    fence = "`" * (max((len(run) for run in re.findall(r"`+", text)), default=0) + 1)
    pad = " " if text[:1] == "`" or text[-1:] == "`" or (text[:1] == text[-1:] == " " and text.strip()) else ""
    return f"{fence}{pad}{text}{pad}{fence}"


# ------------------------------------------------------------------------------------------ plain statements


def _pct(value: float) -> str:
    return f"{100 * value:.2f}%"


def _pm(opt: OptimizerFindings) -> str:
    text = _pct(opt.best_test_mean)
    if not math.isnan(opt.best_test_std):
        text += f" +- {100 * opt.best_test_std:.2f}"
    return text


def _slope(opt: OptimizerFindings) -> str:
    return "n/a" if opt.slope is None else f"{opt.slope:+.2f}"


def statements(findings: Findings, scale: bool = True) -> list[str]:
    """The findings as plain sentences, each with its numbers; the first ones say what is and is not shown.
    ``scale``: end with what a small stand-in can show (once per report)."""
    lines: list[str] = []
    from .findings.f1 import pair_sentence, pair_verdicts

    for base, variant, verdict in pair_verdicts(findings):
        pair = f"{base.label} vs {variant.label}"
        lines.append(pair_sentence(base, variant, verdict))
        if base.best is None or variant.best is None:
            continue
        wider = variant.basin_width > base.basin_width
        lines.append(
            f"Basin width ({pair}): {variant.label} has {variant.basin_width} cells within {BASIN_POINTS:g} point of its "
            f"best test error, {base.label} {base.basin_width}"
            + (
                " (the decoupled variant's good region is wider)."
                if wider
                else " (the decoupled variant's is not wider)."
            )
        )
    for comparison in findings.comparisons:
        lines.append(_comparison_sentence(comparison))
    for opt in findings.optimizers:
        if opt.best is not None and not opt.inside:
            lines.append(
                f"**{opt.label}'s best cell lies on the grid's edge** ({', '.join(opt.edges)}): its optimum may lie "
                f"outside the grid; widen grid.{opt.name} and run again (finished runs are kept)."
            )
        if opt.row_best_on_edge:
            lines.append(
                f"{opt.label}: in {opt.row_best_on_edge} of {opt.slope_rows} rows the best weight decay is the grid's "
                "smallest or largest, so its slope is a bound rather than an estimate there."
            )
    if findings.runs_not_fractions:
        lines.append(
            f"**{findings.runs_not_fractions} runs have errors outside [0, 1]**: the toolkit reads errors as fractions "
            "(the report shows them as percentages) and counts a diverged run as 1.0, so these numbers mix scales. "
            "Report each error as a fraction (a percentage divided by 100)."
        )
    if findings.runs_used < findings.runs_expected:
        lines.append(
            f"{findings.runs_expected - findings.runs_used} of {findings.runs_expected} runs are missing "
            "(interrupted or failed): these numbers are provisional; run the same command again to finish."
        )
    config = findings.config
    if scale and config.task is None and (config.data.dataset != "cifar10" or config.model.name != "shake_shake"):
        lines.append(
            f"Scale: this is a small stand-in ({config.data.dataset}, {config.data.train_size} training examples, "
            f"{config.model.name} network, {config.train.epochs} epochs). The paper measured its generalization gap "
            "on CIFAR-10 with a 26 2x64d Shake-Shake ResNet over 100 epochs and more (`--preset paper`); what a small "
            "setting can show is the decoupling of learning rate and weight decay, and it need not show the gap."
        )
    return lines


def _comparison_sentence(c: Comparison) -> str:
    base, variant = c.base, c.variant
    numbers = (
        f"{variant.label} {_pm(variant)} vs {base.label} {_pm(base)} (best cells picked on validation; "
        f"difference {100 * c.difference:+.2f} points = {100 * c.relative:+.1f}% relative; noise: "
        f"{_noise_text(c)})"
    )
    paper = (
        "the paper reports about 15% lower test error for AdamW"
        if base.name == "adam"
        else ("the paper reports SGDW about as good as or better than SGD, with easier tuning")
    )
    if c.verdict == "better":
        return f"**{variant.label} generalizes better than {base.label}** here: {numbers}; {paper}."
    if c.verdict == "worse":
        return f"**Not shown: {base.label} beats {variant.label}** here, beyond the noise: {numbers}; {paper}."
    return (
        f"**Not shown: no generalization gap between {variant.label} and {base.label}** beyond the noise: {numbers}; "
        f"{paper}."
    )


def _noise_text(c: Comparison) -> str:
    seed = "unknown with one seed" if math.isnan(c.standard_error) else f"{100 * c.standard_error:.2f} points (seeds)"
    test = "unknown" if math.isnan(c.test_set_noise) else f"{100 * c.test_set_noise:.2f} points"
    return f"standard error {seed}, {test} per measurement (test-set size)"


# ------------------------------------------------------------------------------------------ document model

Block = tuple  # ("h1"|"h2"|"p", text) | ("ul", [text]) | ("table", header, rows) | ("img", file, alt)


def _runs_line(parts: Sequence[Findings], other: int) -> str:
    """How many of the planned runs of ``parts`` (one sweep's analyses) are stored, diverged, and their compute."""
    used, expected = sum(f.runs_used for f in parts), sum(f.runs_expected for f in parts)
    diverged, wall = sum(f.runs_diverged for f in parts), sum(f.wall_time_total_s for f in parts)
    return (
        f"Runs: {used} of {expected} recorded, {diverged} diverged (NaN/inf loss; counted as 100% error); "
        f"{wall / 60:.1f} minutes of compute in all"
        + (f"; {other} other stored runs are not part of this grid" if other else "")
        + "."
    )


def _setup_lines(findings: Findings, parameters: int | None, runs: str | None = None) -> list[str]:
    """The Setup section; ``runs``: its line on the runs (default: ``findings``' own)."""
    config = findings.config
    data, model, train = config.data, config.model, config.train
    steps = math.ceil(data.train_size / train.batch_size) * train.epochs
    # A LoopTask without Data loads its own: its sizes (and so steps and the normalizer) are not known here.
    normalizer = math.sqrt(train.batch_size / (data.train_size * train.epochs)) if data.train_size else math.nan
    params = f", {parameters:,} parameters" if parameters else ""
    if config.task is not None:  # a user task: its own data and model (docs/your-model.md)
        source = f"task {md_code(config.task)}'s own"
        model_line = f"Model: task {md_code(config.task)}'s own{params}."
    else:
        source = {
            "mnist1d": f"MNIST-1D generated locally (generator seed {data.seed})",
            "digits": "scikit-learn's digits (8x8, as 64-sample signals)",
            "cifar10": f"CIFAR-10 from {md_code(data.data_dir)}" + (" with pad-4 crop + flip" if data.augment else ""),
        }[data.dataset]
        model_line = (
            f"Model: `{model.name}` width {model.width}, depth {model.depth}"
            f"{', BatchNorm' if model.batchnorm or model.name == 'shake_shake' else ''}{params}."
        )
    return [
        f"Data: {source}; "
        + (
            f"{data.train_size} training / {data.val_size} validation / {data.test_size} test examples "
            if data.train_size
            else "loaded by its own loop (sizes not known to the toolkit) "
        )
        + "(validation picks each optimizer's best cell, test reports it).",
        model_line,
        f"Training: {train.epochs} epochs of batch {train.batch_size}{f' ({steps} steps)' if steps else ''}, schedule eta_t = "
        f"{'cosine from 1 to 0 over the run, per batch' if train.schedule == 'cosine' else 'constant 1'}, "
        f"weight decay on {'all parameters (as the paper)' if train.decay_scope == 'all' else 'weights only'}; "
        f"{config.seeds} seeds per cell (seed s: same initialization and batch order in every cell).",
        "Optimizers: one implementation per family, differing only in where lambda enters: SGD = "
        '`decoupled.SGDW(decay="l2")`, SGDW = `decoupled.SGDW(decay="decoupled")` (momentum '
        f'{train.momentum}), Adam = `decoupled.AdamW(decay="l2")`, AdamW = `decoupled.AdamW(decay="decoupled")` '
        f"(betas {train.beta1}, {train.beta2}).",
        "Units (the paper's): learning rate = alpha, the peak of eta_t * alpha. For SGDW/AdamW the weight decay is "
        "lambda per step at eta_t = 1, in the decoupled convention theta <- theta - eta_t lambda theta (not multiplied "
        "by alpha; torch.optim.AdamW's weight_decay is lambda / alpha). For SGD/Adam it is the L2 factor lambda, "
        "g <- g + lambda theta. The paper's normalized decay (appendix B.1) is "
        "lambda_norm = lambda / sqrt(b / (B T))"
        + (f" = lambda x {1 / normalizer:.1f} here." if not math.isnan(normalizer) else "."),
        runs or _runs_line([findings], findings.runs_other),
        f"Provenance: code {md_text(', '.join(findings.code_versions) or 'n/a')}; hardware "
        f"{md_text(findings.hardware.get('cpu', 'n/a'))} ({md_text(findings.hardware.get('device', 'n/a'))}"
        + (f", {md_text(findings.hardware['gpu'])}" if "gpu" in findings.hardware else "")
        + ").",
    ]


def _optimizer_table(findings: Findings) -> tuple[list[str], list[list[str]]]:
    header = [
        "optimizer", "convention", "best lr", "best weight decay", "val error", "test error (mean +- std)", "seeds",
        "optimum inside grid", "basin slope, upper edge [95% interval]", "decoupling slope (argmin per row; rows)",
        f"basin width (cells within {BASIN_POINTS:g} pt)",
    ]  # fmt: skip
    rows = []
    for opt in findings.optimizers:
        spec = OPTIMIZERS[opt.name]
        if opt.best is None:
            what = "every cell diverged" if opt.cells_measured else "no runs"
            rows.append([opt.label, spec.weight_decay_meaning, what] + [""] * 8)
            continue
        rows.append([
            opt.label, spec.weight_decay_meaning, format_power_of_two(opt.best_lr),
            format_power_of_two(opt.best_weight_decay), _pct(opt.best_val_mean), _pm(opt),
            str(len(opt.best_test_errors)), "yes" if opt.inside else f"NO ({', '.join(opt.edges)})",
            "n/a" if opt.basin is None else opt.basin.interval.format(2),
            f"{_slope(opt)} ({opt.slope_rows})", f"{opt.basin_width} of {opt.cells_measured}",
        ])  # fmt: skip
    return header, rows


def _comparison_table(findings: Findings) -> tuple[list[str], list[list[str]]]:
    header = ["comparison", "L2", "decoupled", "difference (points)", "relative improvement", "seed noise (SE)",
              "test-set noise", f"verdict (> {NOISE_MULTIPLE:g} x noise)"]  # fmt: skip
    rows = []
    for c in findings.comparisons:
        rows.append([
            f"{c.variant.label} over {c.base.label}", _pm(c.base), _pm(c.variant), f"{100 * c.difference:+.2f}",
            f"{100 * c.relative:+.1f}%", "n/a" if math.isnan(c.standard_error) else f"{100 * c.standard_error:.2f}",
            f"{100 * c.test_set_noise:.2f}", _VERDICTS[c.verdict],
        ])  # fmt: skip
    return header, rows


_VERDICTS = {"better": "decoupled better", "worse": "L2 better", "tie": "within noise"}


def _variant_table(findings: Findings) -> tuple[list[str], list[list[str]]]:
    """Cautious / corrected decay against AdamW, each at its validation-picked best cell (same noise rules)."""
    header = ["comparison", "AdamW", "variant", "difference (points)", "seed noise (SE)", "test-set noise",
              f"verdict (> {NOISE_MULTIPLE:g} x noise)"]  # fmt: skip
    verdicts = {"better": "variant better", "worse": "AdamW better", "tie": "within noise"}
    rows = [
        [f"{c.variant.label} vs {c.base.label}", _pm(c.base), _pm(c.variant), f"{100 * c.difference:+.2f}",
         "n/a" if math.isnan(c.standard_error) else f"{100 * c.standard_error:.2f}", f"{100 * c.test_set_noise:.2f}",
         verdicts[c.verdict]]
        for c in findings.variant_comparisons
    ]  # fmt: skip
    return header, rows


def _method_lines() -> list[str]:
    return [
        "A run's error is its final error; a diverged run counts as 100%. A cell's error is the mean over its seeds.",
        "Each optimizer's best cell is picked on the validation error; its test error is reported (mean +- sample "
        "std over seeds).",
        "Relative improvement = (L2 error - decoupled error) / L2 error. Seed noise: standard error of the difference, "
        "sqrt(s1^2/n1 + s2^2/n2); test-set noise: sqrt(p(1-p)/N_test). A difference counts beyond "
        f"{NOISE_MULTIPLE:g} x the larger of the two.",
        "Basin slope (the verdict's basis), from the basin's upper edge: in each learning-rate row whose best cell "
        f"trained well (mean test error at most {TRAINED_WITHIN:g}x the grid's best), the log2(weight decay) at which "
        f"the row's mean test error, climbing from its lowest towards larger lambda, first reaches {TRAINED_WITHIN:g}x "
        "that lowest (interpolated between grid points; a diverged seed counts as 100%); the least-squares slope of "
        "those edges against log2(learning rate) (-1: the L2 diagonal, 0: axis-aligned), with a 95% "
        "parametric-bootstrap interval (2000 replicates with the seed noise, plus the edges' scatter about their "
        "line beyond it). The edge, not a fitted optimum: these grids are a plateau at small lambda, then a cliff. "
        "F1 is reproduced for a family when the decoupled interval lies above the L2 one and within +-0.5 of 0; "
        "partly when one of the two holds; inconclusive when an interval is wider than +-1.",
        "Argmin slope (for comparison only): least-squares slope of log10(best weight decay) against log10(learning rate), one point per "
        "learning-rate row (its best weight decay on validation), over rows that trained well (row's best "
        f"validation error at most {TRAINED_WITHIN:g}x the optimizer's best). L2 with a slope of -1 keeps "
        "lambda x alpha constant (the diagonal of Figure 2); "
        "0 means the best weight decay does not depend on the learning rate.",
        f"Basin width: cells whose mean test error is within {BASIN_POINTS:g} point of the grid's lowest.",
        "Heatmaps: rings mark the 10 cells of lowest test error (as in Figure 2), the red square the cell picked on "
        "validation, hatched a cell where a seed diverged (never ringed, picked or counted), grey a cell without runs; "
        "the validation map beside each test map is the one that picks the cells.",
    ]


FAILURES_SHOWN = 20  # rows of the failed-runs table; the rest are counted


def failure_blocks(failures: list[dict], rows: list[dict]) -> list[Block]:
    """The "Failed runs" section: every run that failed (raised, or its worker died) and has not been recorded
    since, with its error, and the reasons of diverged runs; nothing when there are neither."""
    diverged = [row for row in rows if row["diverged"]]
    if not failures and not diverged:
        return []
    blocks: list[Block] = [("h2", "Failed runs")]
    if failures:
        table = [
            [OPTIMIZERS[f["optimizer"]].label if f["optimizer"] in OPTIMIZERS else md_text(f["optimizer"]),
             format_power_of_two(f["lr"]), format_power_of_two(f["weight_decay"]), str(f["seed"]), md_text(f["error"])]
            for f in failures[:FAILURES_SHOWN]
        ]  # fmt: skip
        more = f" ({len(failures) - FAILURES_SHOWN} more not shown; all are in `results.sqlite`, table failures)"
        blocks += [
            ("p", f"{len(failures)} runs failed and are not in the numbers above"
                  f"{more if len(failures) > FAILURES_SHOWN else ''}; the same command again retries them."),
            ("table", ["optimizer", "lr", "weight decay", "seed", "error"], table),
        ]  # fmt: skip
    if diverged:
        reasons: dict[str, int] = {}
        for row in diverged:
            reason = str(row["extra"].get("diverged", "training loss became NaN/inf"))
            reason = re.sub(r" at epoch \d+.*", "", reason)  # group "train_loss is nan at epoch 3, step 2" by kind
            reasons[reason] = reasons.get(reason, 0) + 1
        text = "; ".join(
            f"{md_text(reason)} ({count})" for reason, count in sorted(reasons.items(), key=lambda kv: -kv[1])
        )
        blocks.append(("p", f"{len(diverged)} runs diverged (counted as 100% error): {text}."))
    return blocks


def _heading(config: SweepConfig, out: Path) -> list[Block]:
    suffix = f", {config.train.dtype} parameters" if config.precisions else ""
    return [
        ("h1", f"Decoupled weight decay: learning rate x weight decay sweep ({md_text(config.name)}){suffix}"),
        ("p", f"Output folder {md_code(out)}, rendered {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} from "
              f"{md_code(out / 'results.sqlite')} ({md_code(f'decoupled report {out}')} renders it again)."),
    ]  # fmt: skip


def _findings_blocks(
    findings: Findings, heading: str = "h2", heatmaps: str = HEATMAP_FILENAME, curves: str = CURVES_FILENAME,
    scale: bool = True,
) -> list[Block]:  # fmt: skip
    """The sections of one sweep's (or one precision arm's) findings, tables and figures."""
    optimizer_header, optimizer_rows = _optimizer_table(findings)
    comparison_header, comparison_rows = _comparison_table(findings)
    blocks: list[Block] = [
        (heading, "Findings"),
        ("ul", statements(findings, scale)),
        (heading, "Best setting of each optimizer"),
        ("table", optimizer_header, optimizer_rows),
    ]
    if comparison_rows:
        blocks += [(heading, "Decoupled vs L2"), ("table", comparison_header, comparison_rows)]
    if findings.variant_comparisons:
        blocks += [(heading, "Later weight-decay rules vs AdamW"), ("table", *_variant_table(findings))]
    return blocks + [
        (heading, "Heatmaps (cf. Figure 2 of the paper)"),
        ("img", heatmaps, "test error over learning rate x weight decay, one panel per optimizer"),
        (heading, "Learning curves of the best settings (cf. Figures 3-4)"),
        ("img", curves, "training loss and test error per epoch of each optimizer's best setting"),
    ]


def _closing_blocks(setup: list[str], method: list[str]) -> list[Block]:
    return [
        ("h2", "Setup"),
        ("ul", setup),
        ("h2", "How the numbers are computed"),
        ("ul", method),
        ("p", f"Every run, with its per-epoch curves and provenance: `{CSV_FILENAME}` and `results.sqlite`."),
    ]


def build_document(
    findings: Findings, out: Path, parameters: int | None, failures: list[Block] | None = None
) -> list[Block]:
    return [
        *_heading(findings.config, out),
        *_findings_blocks(findings),
        *(failures or []),
        *_closing_blocks(_setup_lines(findings, parameters), _method_lines()),
    ]


# ------------------------------------------------------------------------------------------ low precision

PRECISION_HEATMAP_FILENAME = "heatmaps-precision.png"
Column = tuple[str, Findings]  # a label and a sweep's (or one precision arm's) findings: a column of the comparison


def arm_files(config: SweepConfig) -> tuple[str, str]:
    """The heatmap and curve files of one precision arm of a low-precision sweep."""
    return f"heatmaps-{config.precision}.png", f"curves-{config.precision}.png"


def same_setup(a: SweepConfig, b: SweepConfig) -> bool:
    """Whether two sweeps train the same grids on the same data, model and training but for the parameters'
    dtype and precision (and seeds, name): whether one can stand as the other's float32 reference."""

    def core(config: SweepConfig) -> SweepConfig:
        return replace(config.float32_reference(), name="", seeds=1)

    return core(a) == core(b)


def reference_of(columns: Sequence[Column], low: Findings) -> Column | None:
    """The first float32 column of the same setup as the low-precision ``low``, if any."""
    return next((c for c in columns if not c[1].config.precisions and same_setup(c[1].config, low.config)), None)


def _points(value: float) -> str:
    return f"{100 * value:+.2f}"


def precision_sentence(label: str, low: Findings, reference: Column | None) -> str:
    """What one low-precision column shows, in one sentence from its numbers: for which optimizers the weight
    decay stops mattering (it buys more than 2x its noise in float32, not here), still matters, or cannot show it
    (it does not matter beyond the noise even in float32); without a float32 reference, where it matters."""
    lost: list[str] = []
    kept: list[str] = []
    flat: list[str] = []
    unknown: list[str] = []
    ref_label, ref_findings = reference if reference is not None else ("", None)
    for opt in low.optimizers:
        effect = decay_effect(opt, low.config.data.test_size)
        ref_opt = ref_findings.by_name(opt.name) if ref_findings is not None else None
        ref = decay_effect(ref_opt, ref_findings.config.data.test_size) if ref_findings and ref_opt else None
        if effect is None or (ref_findings is not None and ref is None):
            unknown.append(opt.label)
        elif ref is None:
            (kept if effect.matters else flat).append(f"{opt.label} ({_points(effect.gain)} points)")
        elif not ref.matters:
            flat.append(f"{opt.label} ({_points(ref.gain)} points in {md_text(ref_label)})")
        else:
            numbers = f"{opt.label} ({_points(effect.gain)} points, {_points(ref.gain)} in {md_text(ref_label)})"
            (kept if effect.matters else lost).append(numbers)
    parts = []
    if reference is None:
        if kept:
            parts.append(f"the weight decay matters beyond the noise for {_and(kept)}")
        if flat:
            parts.append(f"{'it' if parts else 'the weight decay'} matters no more than the noise for {_and(flat)}")
    else:
        if lost:
            parts.append(f"the weight decay stops mattering for {_and(lost)}")
        if kept:
            parts.append(f"{'it' if parts else 'the weight decay'} still matters for {_and(kept)}")
        if flat:
            parts.append(f"{'it' if parts else 'the weight decay'} matters no more than the noise even in "
                         f"{md_text(ref_label)} for {_and(flat)}, so this grid cannot show it lost there")  # fmt: skip
    if unknown:
        parts.append(f"{_and(unknown)}: no cell to compare (no runs, or every cell diverged)")
    what = ("what the weight decay buys at the best cell's learning rate: the test error at the grid's smallest "
            "weight decay minus at the best")  # fmt: skip
    text = f"**{md_text(label)}**: " + "; ".join(parts) + f" ({what})."
    if reference is None:
        text += (" No float32 runs of the same grid to compare with: run the same sweep without --dtype into this "
                 "folder, or compare with a float32 folder (`decoupled report THIS FLOAT32`).")  # fmt: skip
    return text


def _and(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


_AGAINST = {"better": "better, beyond the noise", "worse": "worse, beyond the noise", "tie": "within the noise"}


def precision_table(columns: Sequence[Column]) -> tuple[list[str], list[list[str]]]:
    """A row per optimizer and column: its best cell, what the weight decay buys there, and its best test error
    against the float32 reference's (same noise rules as Decoupled vs L2)."""
    header = ["optimizer", "parameters", "best lr", "best weight decay", "test error (mean +- std)",
              "test error at the smallest weight decay (same lr)", "weight decay buys (points) [noise]",
              f"matters (> {NOISE_MULTIPLE:g} x noise)", "against float32 (points)"]  # fmt: skip
    names: list[str] = []
    for _, findings in columns:
        names += [f.name for f in findings.optimizers if f.name not in names]
    rows = []
    for name in names:
        for label, findings in columns:
            opt = findings.by_name(name)
            if opt is None:
                continue
            if opt.best is None:
                what = "every cell diverged" if opt.cells_measured else "no runs"
                rows.append([opt.label, md_text(label), what] + [""] * 6)
                continue
            effect = decay_effect(opt, findings.config.data.test_size)
            buys = "n/a" if effect is None else f"{_points(effect.gain)} [{100 * effect.noise:.2f}]"
            smallest = "n/a" if effect is None else (
                f"{_pct(effect.smallest_error)} at {format_power_of_two(effect.smallest_weight_decay)}"
            )  # fmt: skip
            against = ""
            reference = reference_of(columns, findings) if findings.config.precisions else None
            ref_opt = reference[1].by_name(name) if reference is not None else None
            if ref_opt is not None and ref_opt.best is not None:
                c = compare_best(ref_opt, opt, findings.config.data.test_size)
                against = f"{_points(-c.difference)} ({_AGAINST[c.verdict]})"
            rows.append([
                opt.label, md_text(label), format_power_of_two(opt.best_lr), format_power_of_two(opt.best_weight_decay),
                _pm(opt), smallest, buys, "n/a" if effect is None else ("yes" if effect.matters else "no"), against,
            ])  # fmt: skip
    return header, rows


def precision_blocks(columns: Sequence[Column], figure: str) -> list[Block]:
    """The low-precision section: one sentence per low-precision column, the table, the side-by-side heatmaps
    (``figure``, rendered by the caller with :func:`~.plots.plot_precision_heatmaps`)."""
    lows = [(label, findings) for label, findings in columns if findings.config.precisions]
    return [
        ("ul", [precision_sentence(label, low, reference_of(columns, low)) for label, low in lows]),
        ("table", *precision_table(columns)),
        ("img", figure, "test error over learning rate x weight decay: a row per optimizer, a column per precision"),
    ]


def _precision_setup(config: SweepConfig, out: Path, reference: Findings | None) -> list[str]:
    dtype = config.train.dtype
    arms = "; ".join(f'"{name}": {PRECISIONS[name]}' for name in config.precisions)
    lines = [
        f"Parameters: {dtype} during training, and the buffers (BatchNorm's statistics); each batch's inputs are "
        f"cast to {dtype} at the model's entrance and its outputs to float32 for the loss and the error: the errors "
        f"are those of the {dtype} model as trained (not of float32 masters).",
        f"Precision arms (how the optimizer writes a {dtype} parameter, `decoupled.precision`): {arms}. Stochastic "
        "rounding is seeded with the run's seed.",
    ]
    if reference is not None:
        lines.append(f"Float32 reference: {reference.runs_used} of {reference.runs_expected} runs of the same grid in "
                     "float32 in this folder (the same sweep without --dtype).")  # fmt: skip
    else:
        lines.append("No float32 runs of this grid in this folder: the same sweep without --dtype and --precision, with "
                     f"--out {md_text(out)}, adds them (a comparison with a float32 folder: "
                     f"{md_code(f'decoupled report {out} FLOAT32_FOLDER')}).")  # fmt: skip
    return lines


def _precision_method_lines() -> list[str]:
    return [
        "What the weight decay buys (per optimizer and precision): in the learning-rate row of the best cell (picked "
        "on validation), the mean test error at the grid's smallest weight decay (lambda = 0 when the grid has it) "
        "minus the best cell's. Its noise: the larger of the standard error of the seeds' paired differences (seed s "
        "has the same initialization and batch order in both cells) and sqrt(2) x the test-set noise. It matters "
        f"beyond {NOISE_MULTIPLE:g} x that noise. A weight decay that a precision loses buys nothing: its row is flat.",
        "Against float32: each optimizer's best test error against the float32 run's of the same grid, with the "
        "noise rules of Decoupled vs L2.",
    ]


def _precision_columns(arms: Sequence[Findings], reference: Findings | None) -> list[Column]:
    """A low-precision folder's columns: its float32 runs (when it holds some), then each precision arm."""
    return ([("float32", reference)] if reference is not None else []) + [(f.config.arm_label, f) for f in arms]


def build_precision_document(
    arms: Sequence[Findings], reference: Findings | None, out: Path, parameters: int | None, other_runs: int,
    failures: list[Block] | None = None,
) -> list[Block]:  # fmt: skip
    """The report of a low-precision sweep: the precision section (against float32 when ``reference`` has runs),
    then each precision arm's findings, tables and figures (files of :func:`arm_files`)."""
    config = replace(arms[0].config, precisions=tuple(p for f in arms for p in f.config.precisions))
    columns = _precision_columns(arms, reference)
    title = f"{config.train.dtype} against float32" if reference is not None else "Precision arms"
    blocks = [*_heading(config, out), ("h2", title), *precision_blocks(columns, PRECISION_HEATMAP_FILENAME)]
    for findings in arms:
        heatmaps, curves = arm_files(findings.config)
        blocks += [("h2", md_text(findings.config.arm_label)),
                   *_findings_blocks(findings, "h3", heatmaps, curves, scale=findings is arms[-1])]  # fmt: skip
    parts = [*arms, *([reference] if reference is not None else [])]
    setup = _setup_lines(arms[0], parameters, _runs_line(parts, other_runs))
    setup[2:2] = _precision_setup(config, out, reference)
    return [*blocks, *(failures or []), *_closing_blocks(setup, _method_lines() + _precision_method_lines())]


_CSS = """
body { font-family: system-ui, sans-serif; max-width: 1200px; margin: 2em auto; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
img { max-width: 100%; }
code { background: #f3f3f3; padding: 0 0.2em; }
li { margin: 0.3em 0; }
"""


# A code span (a run of backticks, its text, the same run: CommonMark), or a backslash-escaped punctuation mark.
_LITERAL = re.compile(
    r"(?<!`)(?P<fence>`+)(?!`)(?P<code>.+?)(?<!`)(?P=fence)(?!`)|\\(?P<escaped>[!-/:-@\[-`{-~])", re.S
)
_SAFE_LINK = re.compile(r"(?:https?://|mailto:|[^:/?#]*(?:[/?#]|$))", re.I)  # a web address or a relative one


def _inline_html(text: str) -> str:
    """The Markdown of a block's text as HTML: code spans and backslash escapes first (their text is literal),
    then **strong** and [links](target), a link only to a web address or a relative path (never javascript:)."""
    literals: list[str] = []

    def keep(match: re.Match) -> str:
        if match.group("escaped") is not None:
            literals.append(html.escape(match.group("escaped")))
        else:
            code = match.group("code")
            if code[:1] == code[-1:] == " " and code.strip():
                code = code[1:-1]
            literals.append(f"<code>{html.escape(code)}</code>")
        return f"\x00{len(literals) - 1}\x00"

    escaped = html.escape(_LITERAL.sub(keep, str(text).replace("\x00", "\ufffd")))
    escaped = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", escaped)

    def link(match: re.Match) -> str:
        label, target = match.group(1), match.group(2)
        return f'<a href="{target}">{label}</a>' if _SAFE_LINK.match(html.unescape(target)) else match.group(0)

    escaped = re.sub(r"\[([^\]]+)\]\(([^)\s]+)\)", link, escaped)
    return re.sub(r"\x00(\d+)\x00", lambda match: literals[int(match.group(1))], escaped)


def _plain(text: str) -> str:
    """A block's Markdown as plain text (the HTML page's title): code spans and escapes as their text."""
    return _LITERAL.sub(lambda m: m.group("escaped") or m.group("code"), str(text).replace("**", ""))


def _template():
    import jinja2  # comes with torch; listed in the sweep extra too

    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("decoupled.experiments", "templates"), autoescape=False, keep_trailing_newline=True
    )
    environment.filters["inline"] = _inline_html
    environment.filters["cell"] = lambda cell: str(cell).replace("|", "\\|")
    return environment.get_template("report.j2")


def _title(blocks: list[Block]) -> str:
    return _plain(next((block[1] for block in blocks if block[0] == "h1"), "decoupled report"))


def to_markdown(blocks: list[Block]) -> str:
    """The document as Markdown (the same template as :func:`to_html`)."""
    text = _template().render(blocks=blocks, html=False)
    return re.sub(r"\n{3,}", "\n\n", text).strip() + "\n"


def to_html(blocks: list[Block], folder: Path) -> str:
    """A single HTML file: images are inlined as base64 data URLs, so it can be mailed or archived alone."""
    template = _template()
    template.environment.filters["data_url"] = lambda name: (
        "data:image/png;base64," + base64.b64encode((folder / name).read_bytes()).decode("ascii")
    )
    return template.render(blocks=blocks, html=True, title=_title(blocks), css=_CSS)


def write_document(blocks: list[Block], folder: Path, stem: str) -> tuple[Path, Path]:
    """``stem``.md and ``stem``.html in ``folder`` (images named in ``blocks`` are files in ``folder``)."""
    markdown, page = folder / f"{stem}.md", folder / f"{stem}.html"
    write_text_atomic(markdown, to_markdown(blocks))
    write_text_atomic(page, to_html(blocks, folder))
    return markdown, page


def render_report(folder: str | Path, *, weight_decay_unit: str = "lambda") -> ReportPaths:
    """Re-render the CSV, the figures and the report of output folder ``folder`` from its store alone.
    ``weight_decay_unit="tau"`` labels the heatmaps' decoupled weight decays in timescale epochs. A
    low-precision sweep's report compares its precision arms with the folder's float32 runs of the same grid."""
    folder = Path(folder)
    with Store.open(folder, create=False) as store:
        config = store.latest_sweep()
        if config is None:
            raise StoreError(f"the store in {str(folder)!r} records no sweep; nothing to report")
        rows = store.runs()
        failures = store.failures()
        store.export_csv(folder / CSV_FILENAME, rows)
    parameters = next((row["extra"].get("parameters") for row in rows if row["extra"].get("parameters")), None)
    if config.precisions:
        return _render_precision_report(config, rows, failures, folder, parameters, weight_decay_unit)
    findings = analyze(config, rows)
    heatmaps = plot_heatmaps(findings, folder / HEATMAP_FILENAME, weight_decay_unit=weight_decay_unit)
    curves = plot_curves(findings, folder / CURVES_FILENAME)
    blocks = build_document(findings, folder, parameters, failure_blocks(failures, rows))
    markdown, page = write_document(blocks, folder, "report")
    return ReportPaths(markdown, page, (heatmaps, curves), folder / CSV_FILENAME)


def _render_precision_report(
    config: SweepConfig, rows: list[dict], failures: list[dict], folder: Path, parameters: int | None, unit: str
) -> ReportPaths:
    arms = [analyze(arm, rows) for arm in config.by_precision()]
    float32 = analyze(config.float32_reference(), rows)
    reference = float32 if float32.runs_used else None
    columns = _precision_columns(arms, reference)
    figures = [plot_precision_heatmaps(columns, folder / PRECISION_HEATMAP_FILENAME, weight_decay_unit=unit)]
    for findings in arms:
        heatmaps, curves = arm_files(findings.config)
        figures += [plot_heatmaps(findings, folder / heatmaps, weight_decay_unit=unit),
                    plot_curves(findings, folder / curves)]  # fmt: skip
    used = sum(f.runs_used for f in arms) + (reference.runs_used if reference is not None else 0)
    blocks = build_precision_document(arms, reference, folder, parameters, len(rows) - used,
                                      failure_blocks(failures, rows))  # fmt: skip
    markdown, page = write_document(blocks, folder, "report")
    return ReportPaths(markdown, page, tuple(figures), folder / CSV_FILENAME)
