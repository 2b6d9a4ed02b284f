"""The live display: plain lines off a terminal, the rich panel on one; both show progress, workers and best."""

from __future__ import annotations

import io

from decoupled.experiments.backends import RunFailed, RunFinished, RunStarted
from decoupled.experiments.progress import PlainProgress, RichProgress, make_progress
from decoupled.experiments.sweep import plan_tasks
from decoupled.experiments.train import RunRecord


def _events(config):
    tasks = plan_tasks(config)[:3]
    records = [RunRecord(t.config, t.seed, [1.0], [e], [e], e, e, False, 2.0) for t, e in zip(tasks, (0.3, 0.2, 0.1))]
    return [
        RunStarted(tasks[0], 0), RunStarted(tasks[1], 1), RunFinished(tasks[0], 0, records[0]),
        RunStarted(tasks[2], 0), RunFinished(tasks[1], 1, records[1]), RunFailed(tasks[2], 0, "ValueError: boom"),
    ]  # fmt: skip


def test_plain_lines_when_not_a_terminal(tiny_config):
    stream = io.StringIO()
    progress = make_progress(stream)
    assert isinstance(progress, PlainProgress)
    progress.begin(3, 1, 2)
    for event in _events(tiny_config):
        progress.update(event)
    progress.end()
    lines = stream.getvalue().splitlines()
    assert lines[0] == "3 runs to do (1 already in the store) on 2 workers"
    assert lines[1] == "2 workers starting (loading torch and the data) ..."
    assert lines[2].startswith("[1/3, ETA ") and "val 30.00%, test 30.00%, 2.0 s" in lines[2]
    assert lines[4].startswith("[3/3") and "FAILED: ValueError: boom" in lines[4]
    assert progress.best["adam"][0] == 0.3 and progress.best["adamw"][0] == 0.2


def test_rich_panel_shows_workers_and_best(tiny_config, capsys):
    progress = RichProgress()
    progress.begin(3, 0, 2)
    for event in _events(tiny_config)[:4]:
        progress.update(event)
    panel = progress._render()
    progress.end()
    text = capsys.readouterr().out
    assert "3 runs to do" in text and "best so far" in text and "worker 0" in text
    assert progress.running[0] == _events(tiny_config)[3].task and panel is not None
