"""``decoupled reproduce --smoke`` end to end, resume, re-rendering, side by side, and bad input."""

from __future__ import annotations

import json

import pytest

from decoupled.cli import main
from decoupled.experiments.findings.common import VERDICTS

from .conftest import cli

PNG = b"\x89PNG\r\n\x1a\n"
FINDINGS = ("F1", "F2", "F3", "F4", "F5")


def _rows(markdown: str) -> dict[str, list[str]]:
    rows = {}
    for line in markdown.splitlines():
        if line.startswith("| F") and line[4:5] == " ":
            cells = [cell.strip() for cell in line.strip().strip("|").split(" | ")]
            rows[cells[0]] = cells
    return rows


@pytest.mark.slow
def test_reproduce_smoke_end_to_end_resume_and_reports(tmp_path):
    out = tmp_path / "repro"
    result = cli("reproduce", "--smoke", "--out", str(out), "--workers", "2", timeout=900)
    assert result.returncode == 0, result.stderr
    markdown = (out / "reproduction.md").read_text()
    rows = _rows(markdown)
    assert list(rows) == list(FINDINGS)
    for finding, cells in rows.items():
        verdict = cells[4].strip("*")
        assert verdict in VERDICTS, cells
        figure = out / finding / cells[5].split("](")[1].rstrip(")").split("/", 1)[1]
        assert figure.read_bytes()[:8] == PNG
        assert (out / finding / "results.sqlite").exists() and (out / finding / "report.md").exists()
        assert f"## {finding}: " in markdown
        assert f"{finding}: {verdict}" in result.stdout
    page = (out / "reproduction.html").read_text()
    assert page.count("data:image/png;base64,") == 5 and 'src="F1/' not in page and "<table>" in page

    again = cli("reproduce", "--smoke", "--out", str(out), "--only", "f3", "--no-report")
    assert again.returncode == 0, again.stderr
    f2 = next(line for line in again.stdout.splitlines() if line.startswith("F2: recorded"))
    f3 = next(line for line in again.stdout.splitlines() if line.startswith("F3: recorded"))
    assert f2.startswith("F2: recorded 0 runs") and f3.startswith("F3: recorded 0 runs")  # F3 reads F2: both kept

    stored = json.loads((out / "F4" / "result.json").read_text())
    (out / "F4" / "report.md").unlink()
    assert cli("report", str(out / "F4")).returncode == 0  # from the store alone, the same verdict
    assert (out / "F4" / "report.md").exists()
    assert json.loads((out / "F4" / "result.json").read_text())["verdict"] == stored["verdict"]
    assert cli("report", str(out)).returncode == 0

    compare = cli("report", str(out), str(out / "F4"), "--out", str(tmp_path / "cmp"))
    assert compare.returncode == 0, compare.stderr
    table = (tmp_path / "cmp" / "comparison.md").read_text()
    assert "| F4 |" in table and table.count("\n|---") == 1  # one table, a column per folder


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["reproduce", "--only", "F9"], "unknown finding 'F9'"),
        (["reproduce", "--only", ","], "names no finding"),
        (["reproduce", "--ray-address", "x:1"], "--ray-address needs --backend ray"),
        (["reproduce", "--workers", "0"], "--workers must be >= 1"),
        (["reproduce", "--set", "train.nope=1", "--smoke"], "nope"),
        (["sweep", "--preset", "f4", "--config", "x.toml"], "finding's experiment"),
        (["report", "/nonexistent/folder"], "is not a folder"),
    ],
)
def test_bad_input_exits_2_with_one_line(capsys, tmp_path, argv, expected):
    if argv[0] == "reproduce":
        argv = [*argv, "--out", str(tmp_path / "out")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert expected in err and err.count("\n") == 1, err
    assert not (tmp_path / "out").exists()


def test_smoke_into_a_full_reproduction_folder_is_refused(capsys, tmp_path):
    out = tmp_path / "full"
    out.mkdir()
    (out / "reproduction.json").write_text(json.dumps({"findings": ["F1"], "smoke": False}))
    assert main(["reproduce", "--smoke", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "use another --out folder" in err and err.count("\n") == 1
    assert json.loads((out / "reproduction.json").read_text()) == {"findings": ["F1"], "smoke": False}
