"""benchmarks/gpu_check.py's parts that run without a GPU: the plan, the refusal without CUDA, the summary."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"


def load():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("gpu_check", module)  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, check=False)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is visible: the check would run")
def test_without_cuda_it_exits_2_with_one_line(tmp_path):
    done = run("--out", str(tmp_path / "out"))
    assert done.returncode == 2
    assert done.stdout == ""
    assert len(done.stderr.strip().splitlines()) == 1
    assert done.stderr.startswith("gpu_check: no CUDA device visible")
    assert not (tmp_path / "out").exists()  # nothing written


def test_dry_run_prints_every_step_within_ten_minutes(tmp_path):
    done = run("--dry-run", "--out", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert lines[0].startswith(f"gpu check: results into {tmp_path / 'out'}")
    steps = [line.split()[0] for line in lines[1:]]
    assert steps == ["parity", "copy-bandwidth", "bench", "sweep"]
    assert "DECOUPLED_TEST_DEVICE=cuda" in lines[1] and "tests/test_parity.py" in lines[1]
    assert "tests/test_kernel_paths.py" in lines[1]
    assert "--device cuda --sizes 100M/100 1000M/200" in lines[3]
    assert "sweep --preset smoke --device cuda" in lines[4]
    gpu_check = load()
    assert sum(step.budget_s for step in gpu_check.plan(tmp_path)) <= gpu_check.TOTAL_BUDGET_S < 600


def test_bench_rows_get_the_share_of_the_copy_bandwidth():
    gpu_check = load()
    bench = {"results": [
        {"impl": "torch AdamW fused", "family": "adam", "size": "100M/100", "dtype": "fp32", "total": 10**8,
         "ms": 1.0, "ratio": 1.0, "note": ""},
        {"impl": "SGDW[decoupled] auto", "family": "sgd", "size": "1000M/200", "dtype": "bf16", "total": 10**9,
         "ms": 4.0, "ratio": 0.98, "note": ""},
        {"impl": "skipped", "family": "sgd", "size": "1000M/200", "dtype": "bf16", "total": 10**9,
         "ms": float("nan"), "ratio": float("nan"), "note": "not here"},
    ]}  # fmt: skip
    rows = gpu_check.bandwidth_rows(bench, copy_gbps=4000.0)
    assert [r["impl"] for r in rows] == ["torch AdamW fused", "SGDW[decoupled] auto"]
    assert rows[0]["pct_copy_bw"] == pytest.approx(100 * 28e8 / 1e-3 / 1e9 / 4000)  # 28 B/param in 1 ms: 70%
    assert rows[1]["pct_copy_bw"] == pytest.approx(100 * 10e9 / 4e-3 / 1e9 / 4000)
    text = gpu_check.summary_markdown([gpu_check.Outcome("bench", "passed", 12.0, "exit 0", {"rows": rows})], "H")
    assert "| SGDW[decoupled] auto | 1000M/200 | bf16 | 4.000 | 0.98 | 62% |" in text


def test_the_parity_tests_refuse_a_cuda_device_that_is_not_there():
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is visible")
    done = subprocess.run(
        [sys.executable, "-c", "import device"], cwd=ROOT / "tests", capture_output=True, text=True,
        env={"DECOUPLED_TEST_DEVICE": "cuda", "PATH": "/usr/bin:/bin"}, check=False,
    )  # fmt: skip
    assert done.returncode != 0 and "DECOUPLED_TEST_DEVICE=cuda but torch.cuda.is_available() is False" in done.stderr
