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
from dataclasses import dataclass
from pathlib import Path

from .analysis import BASIN_POINTS, NOISE_MULTIPLE, TRAINED_WITHIN, Comparison, Findings, OptimizerFindings, analyze
from .config import OPTIMIZERS
from .files import write_text_atomic
from .plots import CURVES_FILENAME, HEATMAP_FILENAME, plot_curves, plot_heatmaps
from .store import Store, StoreError
from .sweep import CSV_FILENAME
from .train import format_power_of_two

__all__ = ["ReportPaths", "md_code", "md_text", "render_report", "statements"]


@dataclass(frozen=True)
class ReportPaths:
    markdown: Path
    html: Path
    heatmaps: Path
    curves: Path
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


def statements(findings: Findings) -> list[str]:
    """The findings as plain sentences, each with its numbers; the first ones say what is and is not shown."""
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
    if config.task is None and (config.data.dataset != "cifar10" or config.model.name != "shake_shake"):
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


def _setup_lines(findings: Findings, parameters: int | None) -> list[str]:
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
        f"Runs: {findings.runs_used} of {findings.runs_expected} recorded, {findings.runs_diverged} diverged "
        f"(NaN/inf loss; counted as 100% error); {findings.wall_time_total_s / 60:.1f} minutes of compute in all"
        + (f"; {findings.runs_other} other stored runs are not part of this grid" if findings.runs_other else "")
        + ".",
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


def build_document(
    findings: Findings, out: Path, parameters: int | None, failures: list[Block] | None = None
) -> list[Block]:
    config = findings.config
    optimizer_header, optimizer_rows = _optimizer_table(findings)
    comparison_header, comparison_rows = _comparison_table(findings)
    blocks: list[Block] = [
        ("h1", f"Decoupled weight decay: learning rate x weight decay sweep ({md_text(config.name)})"),
        ("p", f"Output folder {md_code(out)}, rendered {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} from "
              f"{md_code(out / 'results.sqlite')} ({md_code(f'decoupled report {out}')} renders it again)."),
        ("h2", "Findings"),
        ("ul", statements(findings)),
        ("h2", "Best setting of each optimizer"),
        ("table", optimizer_header, optimizer_rows),
    ]  # fmt: skip
    if comparison_rows:
        blocks += [("h2", "Decoupled vs L2"), ("table", comparison_header, comparison_rows)]
    if findings.variant_comparisons:
        blocks += [("h2", "Later weight-decay rules vs AdamW"), ("table", *_variant_table(findings))]
    blocks += [
        ("h2", "Heatmaps (cf. Figure 2 of the paper)"),
        ("img", HEATMAP_FILENAME, "test error over learning rate x weight decay, one panel per optimizer"),
        ("h2", "Learning curves of the best settings (cf. Figures 3-4)"),
        ("img", CURVES_FILENAME, "training loss and test error per epoch of each optimizer's best setting"),
        *(failures or []),
        ("h2", "Setup"),
        ("ul", _setup_lines(findings, parameters)),
        ("h2", "How the numbers are computed"),
        ("ul", _method_lines()),
        ("p", f"Every run, with its per-epoch curves and provenance: `{CSV_FILENAME}` and `results.sqlite`."),
    ]
    return blocks


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
    ``weight_decay_unit="tau"`` labels the heatmaps' decoupled weight decays in timescale epochs."""
    folder = Path(folder)
    with Store.open(folder, create=False) as store:
        config = store.latest_sweep()
        if config is None:
            raise StoreError(f"the store in {str(folder)!r} records no sweep; nothing to report")
        rows = store.runs()
        failures = store.failures()
        store.export_csv(folder / CSV_FILENAME, rows)
    findings = analyze(config, rows)
    heatmaps = plot_heatmaps(findings, folder / HEATMAP_FILENAME, weight_decay_unit=weight_decay_unit)
    curves = plot_curves(findings, folder / CURVES_FILENAME)
    parameters = next((row["extra"].get("parameters") for row in rows if row["extra"].get("parameters")), None)
    blocks = build_document(findings, folder, parameters, failure_blocks(failures, rows))
    markdown, page = write_document(blocks, folder, "report")
    return ReportPaths(markdown, page, heatmaps, curves, folder / CSV_FILENAME)
