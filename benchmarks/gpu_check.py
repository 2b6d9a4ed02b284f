"""The GPU check: everything this project can only verify on a CUDA machine, in one command, in under 10 minutes.

    python benchmarks/gpu_check.py [--out DIR] [--dry-run]

Steps (each with its own time budget; the whole run stops at 9.5 minutes):

1. ``parity``: the parity tests on cuda (``DECOUPLED_TEST_DEVICE=cuda pytest tests/test_parity.py
   tests/test_kernel_paths.py tests/test_torch_equivalence.py tests/test_decouple.py``): every kernel path and
   decouple() route against the float64 references, the optimizers' tensors on the GPU.
2. ``low-precision``: bfloat16/float16 parameters on cuda (``DECOUPLED_TEST_DEVICE=cuda pytest
   tests/test_triton.py`` and the device tests of tests/test_precision.py, its ``DEVICE_TESTS``): the Triton
   kernels compiled and run on the GPU, bit for bit lowp's float32 step on CPU copies, and the optimizers'
   "exact" and "stochastic" runs on the GPU against the float64-emulated float32 reference. Needs Triton
   (``pip install 'decoupled[triton]'``): without it the step fails and says so.
3. ``copy-bandwidth``: the HBM bandwidth limit, measured by a device-to-device copy of a 2 GiB tensor (reads
   and writes count: 2 x 2 GiB per copy), the fastest of 10.
4. ``bench``: benchmarks/bench.py on cuda at 100M and 1B parameters (in 100 and 200 tensors), fp32 and bf16:
   AdamW/SGDW's default paths and decouple(Adam) as a ratio to torch.optim.AdamW(fused=True) /
   SGD(momentum=0.9, fused=True) on the same parameters, and, here, the bytes each step must move over the copy
   bandwidth of step 3. On bf16 parameters AdamW/SGDW's default is precision="exact" (float32 moments and a
   16-bit remainder, the Triton kernel): those rows are the low-precision default against torch's fused AdamW/SGD
   on the same bf16 parameters (which keep bf16 moments and lose small decays).
5. ``sweep``: ``decoupled sweep --preset smoke --device cuda``.

It writes into ``--out`` (default ``runs/gpu-check-TIME``): one log per step, ``bench.json``/``bench.md``,
the sweep's folder, and ``summary.json`` + ``summary.md`` (status, seconds and the key numbers of every step).
Exit status: 0 when every step passed, 1 when one failed or ran out of time, 2 (one line on stderr) when no
CUDA device is visible. ``--dry-run`` prints the plan without running anything (no GPU needed).
"""

from __future__ import annotations

import argparse
import ast
import importlib.metadata
import importlib.util
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TOTAL_BUDGET_S = 570  # the whole check: under 10 minutes with the interpreter's start and the summary
PARITY_TESTS = ["tests/test_parity.py", "tests/test_kernel_paths.py", "tests/test_torch_equivalence.py",
                "tests/test_decouple.py"]  # fmt: skip
PRECISION_TESTS = Path("tests") / "test_precision.py"  # its DEVICE_TESTS run in the low-precision step
BENCH_SIZES = ["100M/100", "1000M/200"]
BENCH_ONLY = r"^(AdamW\[(decoupled|lr)\] auto|SGDW\[decoupled\] auto|decouple\(Adam\) default)$"
COPY_BYTES = 2 * 2**30


@dataclass
class Step:
    name: str
    command: list[str]
    budget_s: int
    env: dict[str, str] = field(default_factory=dict)
    log: str = ""
    needs: str = ""  # a module the step cannot run without ("" for none)


@dataclass
class Outcome:
    name: str
    status: str  # "passed", "failed", "timed out", "skipped"
    seconds: float
    detail: str = ""
    numbers: dict[str, Any] = field(default_factory=dict)


def precision_device_tests() -> list[str]:
    """The node ids of tests/test_precision.py's DEVICE_TESTS (read from its source: nothing is imported)."""
    tree = ast.parse((ROOT / PRECISION_TESTS).read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "DEVICE_TESTS" for t in node.targets):
            return [f"{PRECISION_TESTS.as_posix()}::{name}" for name in ast.literal_eval(node.value)]
    raise RuntimeError(f"{PRECISION_TESTS} has no DEVICE_TESTS")


def plan(out: Path) -> list[Step]:
    """The check's steps, in order, each a command run from the repository root."""
    python = sys.executable
    pytest = [python, "-m", "pytest", "-q", "--maxfail=20", "-p", "no:cacheprovider"]
    return [
        Step("parity", [*pytest, *PARITY_TESTS, f"--junitxml={out / 'parity.xml'}"], 220,
             {"DECOUPLED_TEST_DEVICE": "cuda"}, "parity.log"),
        Step("low-precision", [*pytest, "tests/test_triton.py", *precision_device_tests(),
                               f"--junitxml={out / 'low-precision.xml'}"], 100,
             {"DECOUPLED_TEST_DEVICE": "cuda"}, "low-precision.log", needs="triton"),
        Step("copy-bandwidth", [python, str(Path(__file__).resolve()), "--_copy-bandwidth"], 20,
             log="copy-bandwidth.log"),
        Step("bench", [python, str(ROOT / "benchmarks" / "bench.py"), "--device", "cuda", "--sizes", *BENCH_SIZES,
                       "--dtypes", "fp32", "bf16", "--only", BENCH_ONLY, "--rounds", "5", "--steps", "3",
                       "--no-memory", "--json", str(out / "bench.json"), "--markdown", str(out / "bench.md")],
             170, log="bench.log"),
        Step("sweep", [python, "-m", "decoupled.cli", "sweep", "--preset", "smoke", "--device", "cuda",
                       "--out", str(out / "sweep")], 60, log="sweep.log"),
    ]  # fmt: skip


def copy_bandwidth_gbps(nbytes: int = COPY_BYTES, repeats: int = 10) -> float:
    """The device-to-device copy bandwidth in GB/s (bytes read + written per second), the fastest of ``repeats``."""
    import torch

    src = torch.empty(nbytes // 4, dtype=torch.float32, device="cuda").uniform_()
    dst = torch.empty_like(src)
    dst.copy_(src)
    best = float("inf")
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        dst.copy_(src)
        end.record()
        end.synchronize()
        best = min(best, start.elapsed_time(end) * 1e-3)
    return 2 * nbytes / best / 1e9


def bandwidth_rows(bench: dict[str, Any], copy_gbps: float) -> list[dict[str, Any]]:
    """Each timed bench row with its ratio and the % of the copy bandwidth its step's bytes reach."""
    rows = []
    for r in bench["results"]:
        if r.get("note") or r["ms"] != r["ms"]:  # skipped, or not timed
            continue
        moved = r["moved_bytes"] * r["total"]  # bench.py's Impl.bytes_per_element: 26 B for exact bf16 AdamW
        gbps = moved / (r["ms"] * 1e-3) / 1e9
        rows.append({"impl": r["impl"], "size": r["size"], "dtype": r["dtype"], "ms": r["ms"], "ratio": r["ratio"],
                     "pct_copy_bw": 100 * gbps / copy_gbps if copy_gbps else float("nan")})  # fmt: skip
    return rows


def summary_markdown(outcomes: list[Outcome], machine: str) -> str:
    lines = [f"# GPU check\n\nMachine: {machine}\n", "| step | status | seconds | detail |", "|---|---|---|---|"]
    lines += [f"| {o.name} | {o.status} | {o.seconds:.0f} | {o.detail} |" for o in outcomes]
    rows = next((o.numbers.get("rows") for o in outcomes if o.name == "bench"), None)
    if rows:
        lines += ["", "| implementation | size | dtype | ms | ratio to torch fused | % of copy bandwidth |",
                  "|---|---|---|---|---|---|"]  # fmt: skip
        lines += [f"| {r['impl']} | {r['size']} | {r['dtype']} | {r['ms']:.3f} | {r['ratio']:.2f} | "
                  f"{r['pct_copy_bw']:.0f}% |" for r in rows]  # fmt: skip
    return "\n".join(lines) + "\n"


def _version(module: str) -> str:
    try:
        return importlib.metadata.version(module)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _tail(path: Path, lines: int = 1) -> str:
    text = path.read_text(errors="replace").strip().splitlines() if path.exists() else []
    return " / ".join(text[-lines:])[:300]


def run_step(step: Step, out: Path, seconds_left: float) -> Outcome:
    budget = min(step.budget_s, seconds_left)
    if budget < 5:
        return Outcome(step.name, "skipped", 0.0, "no time left in the 10-minute budget")
    if step.needs and importlib.util.find_spec(step.needs) is None:
        return Outcome(step.name, "failed", 0.0, f"needs {step.needs}, which is not installed "
                       f"(pip install 'decoupled[{step.needs}]'); nothing was run")  # fmt: skip
    env = dict(os.environ, **step.env)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"), env.get("PYTHONPATH", "")]))
    log = out / step.log
    start = time.monotonic()
    with log.open("w") as handle:
        try:
            done = subprocess.run(step.command, cwd=ROOT, env=env, stdout=handle, stderr=subprocess.STDOUT,
                                  timeout=budget, check=False)  # fmt: skip
        except subprocess.TimeoutExpired:
            return Outcome(step.name, "timed out", time.monotonic() - start, f"over its {budget:.0f} s; see {log.name}")
    seconds = time.monotonic() - start
    status = "passed" if done.returncode == 0 else "failed"
    return Outcome(step.name, status, seconds, f"exit {done.returncode}: {_tail(log)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="results folder (default: runs/gpu-check-TIME)")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and exit; runs nothing")
    parser.add_argument("--_copy-bandwidth", dest="copy_bandwidth", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    out = args.out or ROOT / "runs" / time.strftime("gpu-check-%Y%m%d-%H%M%S")
    steps = plan(out)
    if args.dry_run:
        print(f"gpu check: results into {out}, {TOTAL_BUDGET_S} s in all")
        for step in steps:
            env = " ".join(f"{k}={v}" for k, v in step.env.items())
            print(f"  {step.name} (at most {step.budget_s} s): {env + ' ' if env else ''}{' '.join(step.command)}")
        return 0

    import torch

    if not torch.cuda.is_available():
        print(f"gpu_check: no CUDA device visible (torch {torch.__version__}, "
              f"built for CUDA {torch.version.cuda or 'none'}); nothing was run", file=sys.stderr)  # fmt: skip
        return 2
    if args.copy_bandwidth:
        print(json.dumps({"copy_gbps": copy_bandwidth_gbps()}))
        return 0

    out.mkdir(parents=True, exist_ok=True)
    machine = f"{torch.cuda.get_device_name()} ({torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB), "
    machine += f"torch {torch.__version__}, CUDA {torch.version.cuda}, triton {_version('triton')}"
    deadline = time.monotonic() + TOTAL_BUDGET_S
    outcomes: list[Outcome] = []
    copy_gbps = 0.0
    for step in steps:
        print(f"gpu check: {step.name} ...", file=sys.stderr, flush=True)
        outcome = run_step(step, out, deadline - time.monotonic())
        if step.name == "copy-bandwidth" and outcome.status == "passed":
            copy_gbps = json.loads((out / step.log).read_text().strip().splitlines()[-1])["copy_gbps"]
            outcome.numbers["copy_gbps"] = copy_gbps
            outcome.detail = f"{copy_gbps:.0f} GB/s (read + write)"
        if step.name == "bench" and outcome.status == "passed" and (out / "bench.json").exists():
            outcome.numbers["rows"] = bandwidth_rows(json.loads((out / "bench.json").read_text()), copy_gbps)
        outcomes.append(outcome)
        print(f"gpu check: {step.name} {outcome.status} in {outcome.seconds:.0f} s", file=sys.stderr, flush=True)
    (out / "summary.json").write_text(
        json.dumps({"machine": machine, "steps": [asdict(o) for o in outcomes]}, indent=1)
    )
    (out / "summary.md").write_text(summary_markdown(outcomes, machine))
    print(summary_markdown(outcomes, machine))
    print(f"gpu check: results in {out}", file=sys.stderr)
    return 0 if all(o.status == "passed" for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
