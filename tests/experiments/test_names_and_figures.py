"""Names are text and figures fit: a task's or a folder's name with Markdown or HTML in it, characters the font
or the output cannot show, grids of any shape, errors on another scale."""

from __future__ import annotations

import html
import subprocess
import sys
import warnings

import pytest
from torch import nn

from decoupled.cli import main
from decoupled.experiments import Task
from decoupled.experiments.analysis import analyze
from decoupled.experiments.config import load_sweep_config, with_task_data
from decoupled.experiments.plots import heatmap_figure
from decoupled.experiments.report import _inline_html, md_code, md_text, render_report
from decoupled.experiments.store import Store

from .conftest import _cli_env, add_runs, tensor_data, tiny_overrides
from .test_analysis import _rows


def test_a_store_holding_errors_on_another_scale_still_renders_and_says_so(capsys, tmp_path):
    config = load_sweep_config("smoke", overrides=tiny_overrides(seeds=2))
    add_runs(tmp_path, config, error_of=lambda task, index: 37.5 + index if index % 2 else 1e30)
    assert main(["report", str(tmp_path)]) == 0, capsys.readouterr()
    markdown = (tmp_path / "report.md").read_text()
    assert "**8 runs have errors outside [0, 1]**" in markdown





def _figure_problems(findings) -> list[str]:
    """Where the heatmaps' texts overlap the title or each other, or leave the figure (px at 110 dpi)."""
    import matplotlib.pyplot as plt

    figure = heatmap_figure(findings)
    figure.set_dpi(110)
    figure.canvas.draw()
    renderer = figure.canvas.get_renderer()
    box = figure.bbox
    title = figure._suptitle.get_window_extent(renderer)
    problems = [f"{box.height:.0f} px tall"] if box.height > 2500 else []
    titles = [ax.title.get_window_extent(renderer) for ax in figure.axes if ax.get_title()]
    problems += [f"panel title {i} under the figure's title" for i, t in enumerate(titles) if t.overlaps(title)]
    problems += [f"panel titles {i} and {j} overlap" for i, a in enumerate(titles) for j, b in enumerate(titles)
                 if i < j and a.overlaps(b)]  # fmt: skip
    texts = [title, *titles] + [
        text.get_window_extent(renderer) for ax in figure.axes
        for text in (ax.xaxis.label, ax.yaxis.label, *ax.get_xticklabels(), *ax.get_yticklabels()) if text.get_text()
    ]  # fmt: skip
    problems += [f"a text at {t.x0:.0f}..{t.x1:.0f} x {t.y0:.0f}..{t.y1:.0f} leaves the figure" for t in texts
                 if t.x0 < 1 or t.y0 < 1 or t.x1 > box.width - 1 or t.y1 > box.height - 1]  # fmt: skip
    plt.close(figure)
    return problems


@pytest.mark.parametrize("lrs, weight_decays", [(1, 11), (12, 12), (5, 9), (11, 1)])
def test_heatmaps_of_any_grid_shape_keep_their_texts_apart_and_inside(lrs, weight_decays):
    grid = {"lr": [2.0**-k for k in range(lrs)], "weight_decay": [2.0**-k for k in range(weight_decays)]}
    config = load_sweep_config("smoke", overrides={"seeds": 2, "optimizers": ["adam", "adamw"],
                                                   "grid": {"adam": grid, "adamw": grid}})  # fmt: skip
    findings = analyze(config, _rows(config, lambda name, i, j, seed: 0.1 + 0.01 * ((3 * i + j) % 5) + 0.01 * seed))
    assert _figure_problems(findings) == []


EVIL = "[x](javascript:alert(1)) **b** `c` <i>$\\frac$ | a_b_"


def _task_config(task, **extra):
    """A tiny sweep of ``task`` (its sizes: those of _tensors)."""
    overrides = {k: v for k, v in tiny_overrides(**extra).items() if k not in ("data", "model")}
    return with_task_data(load_sweep_config("smoke", overrides=overrides, task=task), (20, 20, 20))


def test_names_are_text_in_both_reports_and_the_figure(tmp_path):
    task = Task(model=nn.Flatten, data=tensor_data(), name=EVIL)
    config = _task_config(task, optimizers=["adamw"])
    folder = tmp_path / "out `[y](javascript:z)` **"
    add_runs(folder, config)
    with Store.open(folder) as store:
        store.add_failure(config.run_config("adamw", 0.01, 1e-3), 1, "ValueError: [boom](javascript:alert(2)) **x**")
    render_report(folder)
    page, markdown = (folder / "report.html").read_text(), (folder / "report.md").read_text()
    assert "href=" not in page  # a sweep's report links nothing: no name made a link
    assert "<strong>b</strong>" not in page and "<strong>x</strong>" not in page and "<i>" not in page
    assert html_text(EVIL) in page and html_text(str(folder)) in page
    assert md_code(EVIL) in markdown and md_code(folder) in markdown
    assert md_text("[boom](javascript:alert(2)) **x**") in markdown


def html_text(text: str) -> str:
    return html.escape(text)


def test_md_text_and_md_code_read_back_as_the_same_text():
    for name in (EVIL, "``a`b``", "`", " x ", "a\nb"):
        plain = name.replace("\n", " ")
        assert _inline_html(md_code(name)) == f"<code>{html_text(plain)}</code>", name
        assert _inline_html(md_text(name)) == html_text(plain), name
    assert _inline_html("[F1](F1/heatmaps.png) [x](javascript:y) [w](https://example.org/a)") == (
        '<a href="F1/heatmaps.png">F1</a> [x](javascript:y) <a href="https://example.org/a">w</a>'
    )


def test_a_name_the_font_cannot_draw_is_written_as_code_points_without_warnings():
    task = Task(model=nn.Flatten, data=tensor_data(), name="日本語-タスク")
    config = _task_config(task)
    findings = analyze(config, _rows(config, lambda name, i, j, seed: 0.1 + 0.01 * seed))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        import matplotlib.pyplot as plt

        figure = heatmap_figure(findings)
        figure.canvas.draw()
        title = figure._suptitle.get_text()
        plt.close(figure)
    assert not [w for w in caught if "Glyph" in str(w.message)], [str(w.message) for w in caught]
    assert "\\u65e5\\u672c\\u8a9e-\\u30bf\\u30b9\\u30af" in title, title


def test_a_unicode_name_under_lang_c_and_an_ascii_output_is_escaped_not_an_error(tmp_path):
    task = Task(model=nn.Flatten, data=tensor_data(), name="日本語")
    config = _task_config(task)
    folder = tmp_path / "結果"
    add_runs(folder, config)
    env = {"LANG": "C", "LC_ALL": "C", "PYTHONIOENCODING": "ascii"}
    result = subprocess.run([sys.executable, "-m", "decoupled.cli", "report", str(folder)], env=_cli_env(env),
                            capture_output=True, text=True, timeout=240)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "Glyph" not in result.stderr and "codec" not in result.stderr and result.stderr.strip() == "", result.stderr
    assert "\\u7d50\\u679c" in result.stdout and "report: " in result.stdout
