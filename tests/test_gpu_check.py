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
    assert steps == ["parity", "low-precision", "copy-bandwidth", "bench", "sweep"]
    assert "DECOUPLED_TEST_DEVICE=cuda" in lines[1] and "tests/test_parity.py" in lines[1]
    assert "tests/test_kernel_paths.py" in lines[1]
    assert "DECOUPLED_TEST_DEVICE=cuda" in lines[2] and "tests/test_triton.py" in lines[2]
    assert "tests/test_precision.py::test_exact_is_the_float32_master_run_bit_for_bit" in lines[2]
    assert "--device cuda --sizes 100M/100 1000M/200" in lines[4] and "--dtypes fp32 bf16" in lines[4]
    assert "sweep --preset smoke --device cuda" in lines[5]
    gpu_check = load()
    assert sum(step.budget_s for step in gpu_check.plan(tmp_path)) <= gpu_check.TOTAL_BUDGET_S < 600


def test_the_low_precision_step_runs_the_device_tests_of_test_precision():
    """Its node ids are test_precision's DEVICE_TESTS, each a test that exists there and follows TEST_DEVICE."""
    import test_precision

    gpu_check = load()
    ids = gpu_check.precision_device_tests()
    assert ids == [f"tests/test_precision.py::{name}" for name in test_precision.DEVICE_TESTS]
    for name in test_precision.DEVICE_TESTS:
        assert callable(getattr(test_precision, name)), name
    step = next(s for s in gpu_check.plan(ROOT / "out") if s.name == "low-precision")
    assert step.needs == "triton" and step.env == {"DECOUPLED_TEST_DEVICE": "cuda"}
    assert "tests/test_triton.py" in step.command and set(ids) <= set(step.command)


def test_a_step_whose_module_is_missing_fails_and_says_so(tmp_path):
    gpu_check = load()
    step = gpu_check.Step("low-precision", [sys.executable, "-c", "raise SystemExit(3)"], 30,
                          log="x.log", needs="no_such_module_here")  # fmt: skip
    outcome = gpu_check.run_step(step, tmp_path, 100.0)
    assert outcome.status == "failed" and "needs no_such_module_here, which is not installed" in outcome.detail
    assert not (tmp_path / "x.log").exists(), "nothing was run"


def test_bench_counts_the_remainder_and_float32_moments_of_exact_bf16():
    spec = importlib.util.spec_from_file_location("bench", ROOT / "benchmarks" / "bench.py")
    bench = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("bench", bench)  # dataclasses look their module up
    spec.loader.exec_module(bench)
    impls = {impl.name: impl for impl in bench.implementations("cpu")}

    def count(name: str, dtype: str) -> int:
        return impls[name].bytes_per_element(dtype)[0]

    assert count("torch AdamW fused", "fp32") == 28 and count("AdamW[decoupled] auto", "fp32") == 28
    assert count("torch AdamW fused", "bf16") == 14  # bf16 moments
    assert count("AdamW[decoupled] auto", "bf16") == 26  # 2+2+2+8 read, 2+2+8 written
    assert count("AdamW[decoupled,stochastic] auto", "bf16") == 22 and count("AdamW[decoupled,nearest] auto", "bf16") == 14
    assert count("SGDW[decoupled] auto", "bf16") == 18  # 2+2+2+4 read, 2+2+4 written
    assert count("torch SGD fused", "bf16") == 10
    assert count("decouple(Adam) default", "bf16") == 22  # torch's bf16 Adam and a decay pass (2 x 4 B)


def test_bench_rows_get_the_share_of_the_copy_bandwidth():
    gpu_check = load()
    bench = {"results": [
        {"impl": "torch AdamW fused", "family": "adam", "size": "100M/100", "dtype": "fp32", "total": 10**8,
         "ms": 1.0, "ratio": 1.0, "note": "", "moved_bytes": 28},
        {"impl": "SGDW[decoupled] auto", "family": "sgd", "size": "1000M/200", "dtype": "bf16", "total": 10**9,
         "ms": 6.0, "ratio": 0.98, "note": "", "moved_bytes": 18},
        {"impl": "skipped", "family": "sgd", "size": "1000M/200", "dtype": "bf16", "total": 10**9,
         "ms": float("nan"), "ratio": float("nan"), "note": "not here"},
    ]}  # fmt: skip
    rows = gpu_check.bandwidth_rows(bench, copy_gbps=4000.0)
    assert [r["impl"] for r in rows] == ["torch AdamW fused", "SGDW[decoupled] auto"]
    assert rows[0]["pct_copy_bw"] == pytest.approx(100 * 28e8 / 1e-3 / 1e9 / 4000)  # 28 B/param in 1 ms: 70%
    assert rows[1]["pct_copy_bw"] == pytest.approx(100 * 18e9 / 6e-3 / 1e9 / 4000)  # exact bf16: 18 B/param
    text = gpu_check.summary_markdown([gpu_check.Outcome("bench", "passed", 12.0, "exit 0", {"rows": rows})], "H")
    assert "| SGDW[decoupled] auto | 1000M/200 | bf16 | 6.000 | 0.98 | 75% |" in text


def test_the_parity_tests_refuse_a_cuda_device_that_is_not_there():
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is visible")
    done = subprocess.run(
        [sys.executable, "-c", "import device"], cwd=ROOT / "tests", capture_output=True, text=True,
        env={"DECOUPLED_TEST_DEVICE": "cuda", "PATH": "/usr/bin:/bin"}, check=False,
    )  # fmt: skip
    assert done.returncode != 0 and "DECOUPLED_TEST_DEVICE=cuda but torch.cuda.is_available() is False" in done.stderr
