"""Reproductions, findings and sweeps in one tree: each kind of folder kept apart, every folder checked before
anything is written (a refused command leaves every file as it was), damaged JSON files named, atomic writes,
and the reports of findings that diverged or are half stored."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest

from decoupled.cli import main
from decoupled.experiments import files as files_module
from decoupled.experiments.findings.common import load_experiment
from decoupled.experiments.store import write_json

from .conftest import add_runs, refused, refused_unchanged
from .test_cli import TINY
from .test_faults import _store_with_runs


def _finding_folder(folder: Path, preset: str = "f2", smoke: bool = True, **runs) -> int:
    """A finding's folder as ``decoupled reproduce`` leaves it (experiment.json and a store of made-up runs)."""
    experiment = load_experiment(preset, smoke)
    folder.mkdir(parents=True, exist_ok=True)
    experiment.write(folder)
    return sum(add_runs(folder, arm.config, **runs) for arm in experiment.arms)


def _reproduction(out: Path, **runs) -> Path:
    """A smoke reproduction of F2 alone, with made-up runs."""
    out.mkdir(parents=True)
    write_json(out / "reproduction.json", {"findings": ["F2"], "smoke": True})
    _finding_folder(out / "F2", **runs)
    return out




def test_a_refused_smoke_reproduction_writes_nothing_and_the_full_one_then_resumes(capsys, tmp_path):
    out = tmp_path / "repro"
    planned = _finding_folder(out / "F2", smoke=False)  # every run of the full F2, and no reproduction.json
    line = refused_unchanged(capsys, ["reproduce", "--smoke", "--only", "F2", "--out", str(out)],
                              "holds experiment F2; use another --out folder for F2 (smoke)", out)  # fmt: skip
    assert not (out / "reproduction.json").exists(), line
    assert main(["reproduce", "--only", "F2", "--out", str(out), "--workers", "1", "--no-report"]) == 0
    assert f"F2: recorded 0 runs (0 diverged), {planned} were already stored" in capsys.readouterr().out
    assert json.loads((out / "reproduction.json").read_text()) == {"findings": ["F2"], "smoke": False}


def _sweep_folder(folder: Path) -> Path:
    _store_with_runs(folder, count=2)
    return folder


@pytest.mark.parametrize(
    "make, argv, expected",
    [
        (_sweep_folder, ["reproduce", "--smoke", "--out", "{folder}"], "holds a sweep (results.sqlite without"),
        (_sweep_folder, ["sweep", "--preset", "f2", "--out", "{folder}"], "holds a sweep (results.sqlite without"),
        (lambda folder: _reproduction(folder), ["reproduce", "--smoke", "--out", "{folder}/F2"],
         "is a finding's folder (experiment.json)"),
        (lambda folder: _reproduction(folder), ["sweep", *TINY, "--out", "{folder}/F2"],
         "is a finding's folder (experiment.json); use another --out for a sweep"),
        (lambda folder: _reproduction(folder), ["sweep", *TINY, "--out", "{folder}"],
         "holds a reproduction (reproduction.json); use another --out for a sweep"),
        (lambda folder: _reproduction(folder), ["sweep", *TINY, "--out", "{folder}/F4"],
         "is F4's folder in the reproduction in"),
        (lambda folder: _reproduction(folder), ["sweep", "--preset", "f4", "--out", "{folder}/F2"],
         "is F2's folder in the reproduction in"),
        (lambda folder: _sweep_folder(_reproduction(folder) / "F3"), ["reproduce", "--smoke", "--out", "{folder}"],
         "/F3' holds a sweep (results.sqlite without experiment.json); use another --out for a finding's"),
    ],
)  # fmt: skip
def test_folders_of_different_kinds_are_not_mixed(capsys, tmp_path, make, argv, expected):
    make(tmp_path / "made")
    argv = [arg.format(folder=tmp_path / "made") for arg in argv]
    refused_unchanged(capsys, argv, expected, tmp_path / "made")


@pytest.mark.parametrize("command", [["reproduce", "--smoke", "--only", "F2"], ["sweep", "--preset", "f2"],
                                     ["report", "{other}", "{other}"]])  # fmt: skip
def test_an_out_that_is_a_file_gets_the_sweeps_wording(capsys, tmp_path, command):
    (tmp_path / "file").write_text("keep")
    other = _sweep_folder(tmp_path / "other")
    argv = [arg.format(other=other) for arg in command] + ["--out", str(tmp_path / "file")]
    expected = f"output folder {str(tmp_path / 'file')!r} is a file; choose another --out"
    refused_unchanged(capsys, argv, expected, tmp_path)


@pytest.mark.skipif(not Path("/proc/self").exists(), reason="needs Linux /proc")
def test_a_reproduction_out_in_proc_gets_the_sweeps_wording(capsys):
    refused(capsys, ["reproduce", "--smoke", "--out", "/proc/decoupled-test"], "cannot create output folder")


@pytest.mark.parametrize(
    "content",
    ["", "{", "{}", "[1]", '{"findings": ["F9"], "smoke": true}', '{"findings": "F2", "smoke": true}', "\udcff"],
)
def test_a_damaged_reproduction_json_is_named_by_every_command(capsys, tmp_path, content):
    out = _reproduction(tmp_path / "repro")
    manifest = out / "reproduction.json"
    manifest.write_bytes(content.encode("utf-8", "surrogateescape"))
    for argv in (["report", str(out)], ["reproduce", "--smoke", "--only", "F2", "--out", str(out)]):
        line = refused_unchanged(capsys, argv, f"{str(manifest)!r} is damaged", out)
        assert "it was left unchanged" in line


@pytest.mark.parametrize("content", ["", "{}", "[1]", '{"finding": "F2"}', "null"])
def test_a_damaged_experiment_json_is_named_by_every_command(capsys, tmp_path, content):
    out = _reproduction(tmp_path / "repro")
    experiment = out / "F2" / "experiment.json"
    experiment.write_text(content)
    for argv in (["report", str(out)], ["report", str(out / "F2")],
                 ["reproduce", "--smoke", "--only", "F2", "--out", str(out)],
                 ["sweep", "--preset", "f2", "--out", str(out / "F2")]):  # fmt: skip
        refused_unchanged(capsys, argv, f"{str(experiment)!r} is damaged", out)


def test_a_finding_with_an_unknown_optimizer_is_named(capsys, tmp_path):
    out = _reproduction(tmp_path / "repro")
    path = out / "F2" / "experiment.json"
    raw = json.loads(path.read_text())
    raw["arms"][0]["config"]["grids"][0]["optimizer"] = "lion"
    path.write_text(json.dumps(raw))
    line = refused_unchanged(capsys, ["report", str(out)], f"{str(path)!r} is damaged", out)
    assert "unknown optimizer 'lion'" in line


def test_json_files_are_written_atomically(capsys, tmp_path, monkeypatch):
    """A report that cannot finish its writes (the rename fails) leaves every JSON file whole, as it was."""
    out = _reproduction(tmp_path / "repro")
    assert main(["report", str(out)]) == 0
    capsys.readouterr()
    before = {path: path.read_bytes() for path in out.rglob("*.json")}
    assert len(before) == 3  # reproduction.json, F2/experiment.json, F2/result.json
    synced = []
    monkeypatch.setattr(files_module.os, "fsync", lambda fd: synced.append(fd))
    monkeypatch.setattr(files_module.os, "replace", lambda *args: (_ for _ in ()).throw(OSError(errno.EIO, "I/O")))
    refused(capsys, ["report", str(out)], "I/O")
    assert {path: path.read_bytes() for path in out.rglob("*.json")} == before
    assert synced and not [p for p in out.rglob("tmp*")]  # flushed to disk before the rename; no leftover


def test_a_finding_whose_every_run_diverged_says_so(capsys, tmp_path):
    out = _reproduction(tmp_path / "repro", diverged=True)
    assert main(["report", str(out)]) == 0
    for path in (out / "reproduction.md", out / "F2" / "report.md"):
        text = path.read_text()
        assert "fewer than 2 seeds" not in text, path
        assert "n/a (every run diverged)" in text and "**Every run diverged** (24 of 24 stored)" in text, path
        assert "24 of 24 runs stored, 24 diverged" in text, path


def test_a_half_stored_finding_marks_its_verdict_provisional_where_it_is_shown(capsys, tmp_path):
    out = _reproduction(tmp_path / "repro", keep=lambda index: index % 2 == 0)
    assert main(["report", str(out)]) == 0
    printed = capsys.readouterr().out
    line = next(line for line in printed.splitlines() if line.startswith("  F2: "))
    assert line.endswith(" (provisional: 12 of 24 runs stored)"), line
    row = next(line for line in (out / "reproduction.md").read_text().splitlines() if line.startswith("| F2 |"))
    assert "** (provisional: 12 of 24 runs stored) |" in row, row
    assert json.loads((out / "F2" / "result.json").read_text())["runs"] == 12
    assert main(["report", str(out / "F2")]) == 0
    assert "(provisional: 12 of 24 runs stored); report:" in capsys.readouterr().out




def test_a_comparison_without_the_runs_it_reads_says_which_are_missing(capsys, tmp_path):
    out = tmp_path / "repro"
    out.mkdir()
    write_json(out / "reproduction.json", {"findings": ["F3"], "smoke": True})
    _finding_folder(out / "F3", preset="f3")  # F3 compares with F2's Adam+L2 and SGD+L2: not there
    assert main(["report", str(out)]) == 0
    result = json.loads((out / "F3" / "result.json").read_text())
    assert result["ours"].startswith("Adam+L2 minus AdamW: n/a (F2's runs are missing)"), result["ours"]


def test_a_refused_comparison_leaves_no_folder_for_it(capsys, tmp_path):
    other = _sweep_folder(tmp_path / "other")
    (tmp_path / "empty").mkdir()  # no store: its report is refused
    new = tmp_path / "comparison"
    refused(capsys, ["report", str(other), str(tmp_path / "empty"), "--out", str(new)], "no results store in")
    assert not new.exists()
