"""Benchmark of one optimizer step: decoupled's AdamW/SGDW on every path against torch.optim and peers.

Prints a table: implementation x size x threads x dtype -> median ms per step, ratio to torch's fused
optimizer of the same family (torch.optim.AdamW(fused=True) for the Adam family, torch.optim.SGD(momentum=0.9,
fused=True) for the SGD family), % of the in-place memory-bandwidth limit, and the peak extra memory of a step.

Method (see docs/benchmark.md):

* bf16/fp16 parameters are stepped as ``precision`` says (decoupled.precision): our rows without a precision in
  their name are the default "exact" (float32 moments and a remainder: 26 B per bf16 Adam parameter, 18 B for
  SGD with momentum), "stochastic" moves 22 / 14 B, "nearest" (torch's way) 14 / 10 B. ``--bytes`` prints the
  bytes per parameter each precision keeps, measured from the live tensors.
* Every number comes from real ``optimizer.step()`` calls on parameters whose ``.grad`` is set, after warm-up
  steps (the first step allocates the state; it is timed separately as "first ms"), so Python overhead counts.
* Each implementation is timed in rounds interleaved with its family's baseline, on the same parameters and in
  the same process: a round runs ``--steps`` baseline steps and ``--steps`` steps of the implementation (the
  order alternates between rounds). "ms" is the median of all the implementation's steps; "ratio" is the median
  over rounds of (the implementation's round median / the baseline's round median), so that load from other
  processes hits both sides of a ratio alike.
* The bandwidth limit is that of a large in-place axpy (``y.add_(x, alpha=a)`` on 64M-element fp32 tensors:
  12 bytes per element), the fastest of three before every round of the same thread count, median over the
  run. "% bw" = (bytes the update must move per step / median step time) / that limit. The bytes an update must
  move per parameter: Adam(W) 7 tensors' worth (read param, grad, m, v; write param, m, v: 28 B in fp32,
  14 B in bf16), SGD with momentum and RMSprop 5 (20 B fp32, 10 B bf16).
* torch.optim.SGD(fused=True) on bf16 CPU tensors (torch 2.13.0) skips the parameter write (a torch bug; see
  :data:`TORCH_BF16_SGD_CAVEAT`): as a bf16 baseline it is faster than any correct step can be.
* Peak extra memory: each (implementation, size, dtype) runs in a fresh subprocess that builds the parameters and
  gradients, reads its resident set size (VmRSS), resets the kernel's high-water mark (``5 > /proc/self/
  clear_refs``), builds the optimizer and runs three steps, then reads the high-water mark (VmHWM). "extra" is
  HWM - RSS_before - state bytes (the state the algorithm must keep: Adam 2 x params, SGD momentum / RMSprop
  1 x params), i.e. everything a step allocates beyond params + grads + state, including memory malloc keeps
  after a step; "% pgs" is it as a share of params + grads + state. On CUDA: torch.cuda.max_memory_allocated.

Run ``python benchmarks/bench.py --help`` for the options; ``--smoke`` runs every implementation on tiny
tensors in a few seconds (for CI: it checks that the benchmark runs, never how fast).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

try:  # run from a checkout without installing: benchmarks/ sits beside src/
    import decoupled
except ImportError:  # pragma: no cover
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    import decoupled

from decoupled.kernels import native as _native

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp64": torch.float64}
ADAM_LR, ADAM_WD_TORCH = 1e-3, 1e-2  # torch.optim.AdamW's defaults
SGD_LR, SGD_MOMENTUM, SGD_WD = 0.1, 0.9, 5e-4
# The same decay in each convention where one exists: torch's AdamW(lr=1e-3, weight_decay=1e-2) decays
# 1e-5 per step; "l2" gets the coefficient the same code would be given in torch.optim.Adam/SGD.
OUR_WD = {
    "adam": {"decoupled": ADAM_LR * ADAM_WD_TORCH, "lr": ADAM_WD_TORCH, "constant": ADAM_LR * ADAM_WD_TORCH,
             "corrected": ADAM_LR * ADAM_WD_TORCH, "l2": 1e-4},
    "sgd": {"decoupled": SGD_LR * SGD_WD, "lr": SGD_WD, "constant": SGD_LR * SGD_WD, "corrected": SGD_LR * SGD_WD,
            "l2": SGD_WD},
}  # fmt: skip
# Cautious weight decay is timed with these conventions (the mask is the same code under every one of them).
CAUTIOUS_DECAYS = ("decoupled", "corrected")


# --------------------------------------------------------------------------------------------------------
# Implementations


@dataclasses.dataclass(frozen=True)
class Impl:
    """One optimizer to time: ``build(params)`` returns it; ``tensors`` is the number of full-size tensors
    its update must read or write per parameter (7 for Adam(W): param, grad, m, v read; param, m, v written)."""

    name: str
    family: str  # "adam" or "sgd": which baseline its ratio is taken against
    build: Callable[[list[torch.Tensor]], torch.optim.Optimizer]
    tensors: int
    state_tensors: int
    baseline: bool = False
    wrap: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext
    skip: str = ""  # why it cannot run here ("" when it can)
    # How bf16/fp16 parameters are stepped (decoupled.precision): "exact"/"stochastic" run the float32 step with
    # float32 moments ("exact" keeps a remainder too); "nearest" steps in the parameters' dtype, as torch does.
    precision: str = "nearest"
    decay_only: bool = False  # decouple(): only its decay runs on the master; the inner state keeps its dtype
    dtypes: tuple[str, ...] = ()  # the dtypes it is timed in (empty: all)

    def bytes_per_element(self, dtype_name: str) -> tuple[int, int]:
        """(bytes a step must move, bytes of state) per parameter element in ``dtype_name``."""
        size = DTYPES[dtype_name].itemsize
        moved, state = self.tensors * size, self.state_tensors * size
        if size != 2 or self.precision == "nearest":
            return moved, state
        remainder = {"exact": 2 if dtype_name == "bf16" else 4, "stochastic": 0}[self.precision]
        if self.decay_only:  # the decay pass reads and writes the parameter and its remainder
            return moved + 2 * (size + remainder), state + remainder
        # param read and written, grad read, each float32 moment read and written, the remainder read and written
        return 3 * size + 8 * self.state_tensors + 2 * remainder, 4 * self.state_tensors + remainder


def _paths(family: str, device: str) -> list[tuple[str, dict[str, Any], Callable[[], Any], str]]:
    """(label, kwargs, wrap, skip) for the default path and every explicit path of our optimizers."""
    paths: list[tuple[str, dict[str, Any], Callable[[], Any], str]] = [
        ("auto", {}, contextlib.nullcontext, ""),
        ("fused", {"fused": True}, contextlib.nullcontext, ""),
    ]
    native_skip = "" if _native.available() else f"native kernel unavailable: {_native.unavailable_reason()}"
    if family == "sgd" and device == "cpu":
        paths[1] = ("fused-native", {"fused": True}, contextlib.nullcontext, native_skip)
        paths.append(("fused-torch", {"fused": True}, _native.bypassed, ""))
    if family == "adam" and device == "cpu":  # fused: native for cautious and bf16, torch's kernel otherwise
        paths.append(("fused-native", {"fused": True}, _native.forced, native_skip))
        paths.append(("fused-torch", {"fused": True}, _native.bypassed, ""))
    paths += [("foreach", {"foreach": True}, contextlib.nullcontext, ""), ("forloop", {"foreach": False, "fused": False}, contextlib.nullcontext, "")]
    return paths


def _peer_impls() -> list[Impl]:
    """Peers, imported only when built (importing them costs seconds); skipped when not installed."""
    import importlib.util

    def installed(module: str, package: str) -> str:
        return "" if importlib.util.find_spec(module) is not None else f"{package} not installed"

    def po_sgdw(p: list[torch.Tensor]) -> torch.optim.Optimizer:
        from pytorch_optimizer import SGDW

        return SGDW(p, lr=SGD_LR, momentum=SGD_MOMENTUM, weight_decay=SGD_WD, weight_decouple=True)

    def po_stable_adamw(p: list[torch.Tensor]) -> torch.optim.Optimizer:
        from pytorch_optimizer import StableAdamW

        return StableAdamW(p, lr=ADAM_LR, weight_decay=ADAM_WD_TORCH)

    def composer_adamw(p: list[torch.Tensor]) -> torch.optim.Optimizer:  # pragma: no cover (not installed here)
        from composer.optim import DecoupledAdamW

        return DecoupledAdamW(p, lr=ADAM_LR, weight_decay=ADAM_LR * ADAM_WD_TORCH)

    def composer_sgdw(p: list[torch.Tensor]) -> torch.optim.Optimizer:  # pragma: no cover (not installed here)
        from composer.optim import DecoupledSGDW

        return DecoupledSGDW(p, lr=SGD_LR, momentum=SGD_MOMENTUM, weight_decay=SGD_LR * SGD_WD)

    # pytorch_optimizer.AdamW is torch.optim.AdamW re-exported: nothing separate to time.
    po_skip = installed("pytorch_optimizer", "pytorch-optimizer")
    composer_skip = installed("composer", "mosaicml (composer)")
    return [
        Impl("pytorch_optimizer.SGDW", "sgd", po_sgdw, 5, 1, skip=po_skip),
        Impl("pytorch_optimizer.StableAdamW", "adam", po_stable_adamw, 7, 2, skip=po_skip),
        Impl("composer.DecoupledAdamW", "adam", composer_adamw, 7, 2, skip=composer_skip),
        Impl("composer.DecoupledSGDW", "sgd", composer_sgdw, 5, 1, skip=composer_skip),
    ]


def implementations(device: str) -> list[Impl]:
    """Every implementation, baselines first; the CUDA list drops CPU-only paths."""
    from torch.optim import SGD, Adam, AdamW, RMSprop

    impls = [
        Impl("torch AdamW fused", "adam", lambda p: AdamW(p, lr=ADAM_LR, weight_decay=ADAM_WD_TORCH, fused=True), 7, 2, baseline=True),
        Impl("torch SGD fused", "sgd", lambda p: SGD(p, lr=SGD_LR, momentum=SGD_MOMENTUM, weight_decay=SGD_WD, fused=True), 5, 1, baseline=True),
        Impl("torch AdamW foreach", "adam", lambda p: AdamW(p, lr=ADAM_LR, weight_decay=ADAM_WD_TORCH, foreach=True), 7, 2),
        Impl("torch AdamW forloop", "adam", lambda p: AdamW(p, lr=ADAM_LR, weight_decay=ADAM_WD_TORCH, foreach=False), 7, 2),
        Impl("torch SGD foreach", "sgd", lambda p: SGD(p, lr=SGD_LR, momentum=SGD_MOMENTUM, weight_decay=SGD_WD, foreach=True), 5, 1),
    ]  # fmt: skip
    for family, cls, kwargs, tensors, state in (
        ("adam", decoupled.AdamW, {"lr": ADAM_LR}, 7, 2),
        ("sgd", decoupled.SGDW, {"lr": SGD_LR, "momentum": SGD_MOMENTUM}, 5, 1),
    ):
        variants = [(decay, False) for decay in decoupled.DECAY_CONVENTIONS]
        variants += [(decay, True) for decay in CAUTIOUS_DECAYS]
        for decay, cautious in variants:
            for label, path_kwargs, wrap, skip in _paths(family, device):
                wd = OUR_WD[family][decay]
                options = dict(kwargs, weight_decay=wd, decay=decay, **path_kwargs, **({"cautious": True} if cautious else {}))
                impls.append(Impl(
                    f"{cls.__name__}[{decay}{',cautious' if cautious else ''}] {label}", family,
                    lambda p, c=cls, k=options: c(p, **k), tensors, state, wrap=wrap, skip=skip, precision="exact",
                ))  # fmt: skip
        # The other precisions of bf16 parameters (the rows above are "exact", the default), on the default path
        # and on the explicit ones, which compute the same bits.
        for precision in ("stochastic", "nearest"):
            for label, path_kwargs, wrap, skip in _paths(family, device):
                if label in ("fused-torch",) and precision != "nearest":
                    continue  # no torch kernel takes a float32 master
                options = dict(kwargs, weight_decay=OUR_WD[family]["decoupled"], precision=precision, **path_kwargs)
                impls.append(Impl(
                    f"{cls.__name__}[decoupled,{precision}] {label}", family, lambda p, c=cls, k=options: c(p, **k),
                    tensors, state, wrap=wrap, skip=skip, precision=precision, dtypes=("bf16",),
                ))  # fmt: skip
    AdamD, RMSpropD = decoupled.decouple(Adam), decoupled.decouple(RMSprop)
    impls += [
        Impl("decouple(Adam) default", "adam", lambda p: AdamD(p, lr=ADAM_LR, weight_decay=ADAM_WD_TORCH * ADAM_LR), 7, 2, precision="exact", decay_only=True),
        Impl("decouple(Adam) fused", "adam", lambda p: AdamD(p, lr=ADAM_LR, weight_decay=ADAM_WD_TORCH * ADAM_LR, fused=True), 7, 2, precision="exact", decay_only=True),
        Impl("decouple(RMSprop) foreach", "adam", lambda p: RMSpropD(p, lr=1e-2, weight_decay=1e-4, foreach=True), 5, 1, precision="exact", decay_only=True),
    ]  # fmt: skip
    return impls + _peer_impls()


# --------------------------------------------------------------------------------------------------------
# Problems


def tensor_sizes(total: int, count: int) -> list[int]:
    """``count`` tensor sizes adding up to ``total``, mixed like a network's: a quarter are small vectors
    (biases, norms: 256 to 4096 elements), the rest weights whose sizes span a factor of 64 (deterministic)."""
    small_count = count // 4
    small = [256 << (i % 5) for i in range(small_count)]
    large_count = count - small_count
    weights = [2 ** (6 * i / max(large_count - 1, 1)) for i in range(large_count)]
    budget = total - sum(small)
    large = [max(1, int(budget * w / sum(weights))) for w in weights]
    large[-1] += total - sum(small) - sum(large)
    sizes = []
    for i in range(count):  # interleave small and large, as layers alternate weights and biases
        source = small if (i % 4 == 3 and small) else large
        sizes.append(source.pop(0) if source else (small or large).pop(0))
    return sizes


def parse_size(text: str) -> tuple[int, int]:
    """'10M/100' -> (10_000_000, 100)."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([kKmM]?)/(\d+)", text)
    if not match:
        raise argparse.ArgumentTypeError(f"size must look like 10M/100 (params/tensors), got {text!r}")
    scale = {"": 1, "k": 1_000, "m": 1_000_000}[match.group(2).lower()]
    return int(float(match.group(1)) * scale), int(match.group(3))


def size_label(total: int, count: int) -> str:
    value = f"{total / 1e6:g}M" if total >= 1_000_000 else f"{total / 1e3:g}k"
    return f"{value}/{count}"


def make_problem(total: int, count: int, dtype: torch.dtype, device: str) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    params = []
    for size in tensor_sizes(total, count):
        p = torch.randn(size, generator=generator).to(device=device, dtype=dtype).requires_grad_()
        p.grad = (torch.randn(size, generator=generator) * 1e-2).to(device=device, dtype=dtype)
        params.append(p)
    return params


# --------------------------------------------------------------------------------------------------------
# Timing


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _timed(fn: Callable[[], Any], device: str) -> float:
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return (time.perf_counter() - start) * 1e3


class Bandwidth:
    """The in-place bandwidth limit: a large axpy ``y += a x`` (12 bytes per fp32 element), in GB/s."""

    def __init__(self, elements: int, device: str) -> None:
        self.x = torch.rand(elements, device=device)
        self.y = torch.rand(elements, device=device)
        self.device = device
        self.samples: list[float] = []
        self.measure()

    def measure(self, repeats: int = 3) -> None:
        """One sample: the fastest of ``repeats`` axpys (the limit is what the machine can do)."""
        ms = min(_timed(lambda: self.y.add_(self.x, alpha=1e-6), self.device) for _ in range(repeats))
        self.samples.append(12 * self.x.numel() / (ms * 1e-3) / 1e9)

    @property
    def gbps(self) -> float:
        return statistics.median(self.samples)


@dataclasses.dataclass
class Result:
    impl: str
    family: str
    size: str
    threads: str
    dtype: str
    total: int = 0
    count: int = 0
    ms: float = float("nan")
    first_ms: float = float("nan")
    ratio: float = float("nan")
    bw_pct: float = float("nan")
    extra_mb: float = float("nan")
    extra_pct: float = float("nan")
    note: str = ""
    moved_bytes: float = float("nan")  # bytes per parameter a step must move (Impl.bytes_per_element)


def time_config(impls: list[Impl], params: list[torch.Tensor], bandwidth: Bandwidth, *, device: str,
                warmup: int, rounds: int, steps: int, log: Callable[[str], None]) -> dict[str, tuple[float, float, float]]:
    """{impl name: (median ms, first-step ms, ratio to the family baseline)} for one configuration."""
    baselines = {impl.family: impl for impl in impls if impl.baseline}
    baseline_opts = {}
    for family, impl in baselines.items():
        opt = impl.build(params)
        for _ in range(warmup + 1):
            opt.step()
        baseline_opts[family] = opt
    out = {}
    big = sum(p.numel() for p in params) >= 1_000_000
    for impl in impls:
        if big:  # free the previous implementation's state (gc.collect costs ~0.3 s: not in the smoke)
            gc.collect()
        opt = impl.build(params)
        with impl.wrap():
            first = _timed(opt.step, device)
            for _ in range(warmup):
                opt.step()
        mine, base, ratios = [], [], []
        base_opt = baseline_opts[impl.family]
        for r in range(rounds):
            bandwidth.measure()
            order = (0, 1) if r % 2 == 0 else (1, 0)
            round_times: list[list[float]] = [[], []]
            for which in order:
                o, wrap = (opt, impl.wrap) if which == 0 else (base_opt, contextlib.nullcontext)
                with wrap():
                    for _ in range(steps):
                        round_times[which].append(_timed(o.step, device))
            mine += round_times[0]
            base += round_times[1]
            ratios.append(statistics.median(round_times[0]) / statistics.median(round_times[1]))
        out[impl.name] = (statistics.median(mine), first, statistics.median(ratios))
        log(f"    {impl.name:34s} {out[impl.name][0]:9.2f} ms  ratio {out[impl.name][2]:5.2f}  (first step {first:.1f} ms)")
        del opt
    del baseline_opts
    return out


# --------------------------------------------------------------------------------------------------------
# Peak memory (fresh subprocess per configuration)


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def fill_memory_columns(results: list[Result], impls: dict[str, Impl], memory_only: str | None, threads: int,
                 device: str, *, fp32_only: bool = False) -> None:
    """Fill in the peak extra memory of the results ``memory_only`` (a regex; None: all) selects, one
    subprocess per (implementation, size, dtype), shared by that configuration's thread counts."""
    pattern = re.compile(memory_only) if memory_only else None
    memo: dict[tuple[str, str, str], dict[str, float]] = {}
    for r in results:
        if r.note or (pattern is not None and not pattern.search(r.impl)) or (fp32_only and r.dtype != "fp32"):
            continue
        key = (r.impl, r.size, r.dtype)
        if key not in memo:
            print(f"  memory {key}", file=sys.stderr, flush=True)
            memo[key] = measure_memory(impls[r.impl], r.total, r.count, r.dtype, threads, device)
        r.extra_mb, r.extra_pct = memo[key]["extra_mb"], memo[key]["extra_pct"]


def memory_probe(impl_name: str, total: int, count: int, dtype_name: str, threads: int, device: str) -> dict[str, float]:
    """Run in a fresh process: peak bytes a step allocates beyond params + grads + state."""
    torch.set_num_threads(threads)
    impl = next(i for i in implementations(device) if i.name == impl_name)
    params = make_problem(total, count, DTYPES[dtype_name], device)
    param_bytes = sum(p.numel() * p.element_size() for p in params)
    state_bytes = impl.bytes_per_element(dtype_name)[1] * sum(p.numel() for p in params)
    pgs = 2 * param_bytes + state_bytes
    with impl.wrap():  # a tiny run first: libraries, modules and thread pools a first step loads are not the step's
        tiny = [torch.zeros(3, device=device, dtype=DTYPES[dtype_name], requires_grad=True)]
        tiny[0].grad = torch.ones_like(tiny[0])
        impl.build(tiny).step()
    del tiny
    gc.collect()
    if device == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        before = _status_kb("VmRSS") * 1024
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    opt = impl.build(params)
    with impl.wrap():
        for _ in range(3):
            opt.step()
    if device == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = _status_kb("VmHWM") * 1024
    extra = peak - before - state_bytes
    return {"extra_mb": extra / 2**20, "extra_pct": 100 * extra / pgs}


def measure_memory(impl: Impl, total: int, count: int, dtype_name: str, threads: int, device: str) -> dict[str, float]:
    command = [sys.executable, __file__, "--_memory-probe", json.dumps([impl.name, total, count, dtype_name, threads, device])]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)
    if done.returncode != 0:
        raise RuntimeError(f"memory probe of {impl.name} failed: {done.stderr.strip()[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------------------------------------
# Bytes per parameter, from the live tensors


def _state_bytes(optimizer: torch.optim.Optimizer) -> int:
    return sum(v.nbytes for state in optimizer.state.values() for v in state.values() if isinstance(v, torch.Tensor))


def bytes_table(elements: int = 1 << 20, device: str = "cpu") -> str:
    """Weights, gradient and optimizer state per parameter, measured after one step on ``elements`` parameters
    (in 4 tensors), for bf16/fp16 parameters under each precision beside float32 and torch's optimizers."""

    def measure(dtype: torch.dtype, build: Callable[[list[torch.Tensor]], torch.optim.Optimizer], master: bool = False):
        params = [torch.zeros(elements // 4, dtype=dtype, device=device, requires_grad=True) for _ in range(4)]
        masters = [p.detach().float().requires_grad_() for p in params] if master else params
        for p in (*params, *masters):
            p.grad = torch.zeros_like(p)
        optimizer = build(masters)
        optimizer.step()
        weights = sum(p.nbytes for p in params) + (sum(p.nbytes for p in masters) if master else 0)
        grads = sum(p.grad.nbytes for p in params) + (sum(p.grad.nbytes for p in masters) if master else 0)
        return [value / elements for value in (weights, grads, _state_bytes(optimizer))]

    from torch.optim import AdamW as TorchAdamW

    rows = [
        ("torch.optim.AdamW, float32", torch.float32, lambda p: TorchAdamW(p, fused=True), False),
        ("torch mixed precision: bf16 copy + float32 master, grads and AdamW", torch.bfloat16,
         lambda p: TorchAdamW(p, fused=True), True),
        ("torch.optim.AdamW, bf16 (loses a small decay)", torch.bfloat16, lambda p: TorchAdamW(p, fused=True), False),
    ]  # fmt: skip
    for cls, kwargs in ((decoupled.AdamW, {}), (decoupled.SGDW, {"lr": SGD_LR})):
        for precision in decoupled.PRECISIONS:
            rows.append((f"decoupled.{cls.__name__}, bf16, precision={precision!r}", torch.bfloat16,
                         lambda p, c=cls, k=kwargs, q=precision: c(p, precision=q, **k), False))  # fmt: skip
    rows.append(("decoupled.AdamW, fp16, precision='exact'", torch.float16, lambda p: decoupled.AdamW(p), False))
    AdamD = decoupled.decouple(torch.optim.Adam)
    rows.append(("decouple(torch.optim.Adam), bf16, precision='exact'", torch.bfloat16, lambda p: AdamD(p, weight_decay=1e-5), False))
    lines = ["| optimizer | weights | gradient | state | bytes per parameter |", "|---|---|---|---|---|"]
    for name, dtype, build, master in rows:
        weights, grads, state = measure(dtype, build, master)
        lines.append(f"| {name} | {weights:g} | {grads:g} | {state:.3g} | {weights + grads + state:.3g} |")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------------
# Report


def machine_description(device: str) -> str:
    if device == "cuda":
        return f"{torch.cuda.get_device_name()} (CUDA {torch.version.cuda}), torch {torch.__version__}"
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return (f"{model}, {os.cpu_count()} logical CPUs, torch {torch.__version__} "
            f"({torch.__config__.parallel_info().splitlines()[-1].strip()}), Python {platform.python_version()}")


def _fmt(value: float, spec: str) -> str:
    return "-" if value != value else format(value, spec)


def markdown_table(results: list[Result], bandwidths: dict[str, float]) -> str:
    lines = []
    for threads, gbps in bandwidths.items():
        lines.append(f"In-place bandwidth limit (fp32 axpy, {threads} thread(s)): {gbps:.1f} GB/s")
    lines.append("")
    lines.append("| implementation | size | threads | dtype | ms/step | first step ms | ratio | % bw | extra MB | extra % pgs |")
    lines.append("|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        if r.note:
            lines.append(f"| {r.impl} | {r.size} | {r.threads} | {r.dtype} | skipped: {r.note} | | | | | |")
            continue
        lines.append(
            f"| {r.impl} | {r.size} | {r.threads} | {r.dtype} | {_fmt(r.ms, '.2f')} | {_fmt(r.first_ms, '.1f')} | "
            f"{_fmt(r.ratio, '.2f')} | {_fmt(r.bw_pct, '.0f')} | {_fmt(r.extra_mb, '.1f')} | {_fmt(r.extra_pct, '.1f')} |"
        )
    return "\n".join(lines)


def goal_table(results: list[Result]) -> str:
    """The goal at a glance: each default path's ratio to torch's fused optimizer, per configuration
    (target <= 1.00; above 1.05 is a bug), and its % of the bandwidth limit."""
    configs = sorted({(r.size, r.threads, r.dtype) for r in results}, key=lambda c: (c[0], c[1], c[2] != "fp32"))
    defaults = [name for name in dict.fromkeys(r.impl for r in results) if name.endswith(" auto") or r_is_baseline(name)]
    cell = {(r.impl, r.size, r.threads, r.dtype): r for r in results}
    lines = [
        "| ratio (% bw) | " + " | ".join(f"{s} {t}t {d}" for s, t, d in configs) + " |",
        "|---|" + "---|" * len(configs),
    ]
    for name in defaults:
        row = []
        for size, threads, dtype in configs:
            r = cell.get((name, size, threads, dtype))
            row.append("-" if r is None or r.note else f"{_fmt(r.ratio, '.2f')} ({_fmt(r.bw_pct, '.0f')}%)")
        lines.append(f"| {name} | " + " | ".join(row) + " |")
    if any(r.impl == "torch SGD fused" and r.dtype == "bf16" and not r.note for r in results):
        lines.append("")
        lines.append(TORCH_BF16_SGD_CAVEAT)
    return "\n".join(lines)


# Found by tests/test_kernel_paths.py::test_sgdw_fused_without_native_kernel_moves_reduced_precision_params.
TORCH_BF16_SGD_CAVEAT = (
    "Note: on the CPU, torch.optim.SGD(fused=True) with bf16/fp16 parameters (torch 2.13.0) computes a wrong step: "
    "its vectorized loop never writes the parameters, so it moves 8 of the 10 bytes per parameter a correct step "
    "moves. bf16 SGD-family ratios are against a baseline that does less work; its % bw counts the 10 bytes."
)


def r_is_baseline(name: str) -> bool:
    return name in ("torch AdamW fused", "torch SGD fused")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="every implementation on tiny tensors, once (CI)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    parser.add_argument("--sizes", type=parse_size, nargs="+", default=[parse_size("10M/100"), parse_size("50M/200")])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="CPU threads (ignored on CUDA)")
    parser.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=sorted(DTYPES))
    parser.add_argument("--only", default="", help="regex: time only the implementations whose name matches")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=3, help="steps per implementation per round")
    parser.add_argument("--warmup", type=int, default=2, help="steps after the first, before timing")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    parser.add_argument("--memory-only", default="", help="regex: probe memory only for these implementations")
    parser.add_argument("--memory-threads", type=int, default=1, help="thread count of the memory probes")
    parser.add_argument("--bandwidth-elements", type=int, default=64 * 2**20)
    parser.add_argument("--markdown", type=Path, help="also write the table to this file")
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    parser.add_argument("--from-json", type=Path, nargs="+", help="print the tables of earlier --json runs (no "
                        "timing); rows of later files replace those of earlier ones")
    parser.add_argument("--update-memory", action="store_true", help="with --from-json: re-probe the memory of the "
                        "rows --memory-only selects and write the first file back")
    parser.add_argument("--bytes", action="store_true", help="print the bytes per parameter of each precision "
                        "(weights, gradient, state, measured from the live tensors) and exit")
    parser.add_argument("--_memory-probe", dest="memory_probe", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.bytes:
        print(bytes_table(device=args.device))
        return 0

    if args.from_json:
        rows: dict[tuple[str, str, str, str], Result] = {}
        bandwidths, machine = {}, ""
        for path in args.from_json:
            saved = json.loads(path.read_text())
            machine = saved["machine"]
            for raw in saved["results"]:
                r = Result(**raw)
                old = rows.get((r.impl, r.size, r.threads, r.dtype))
                if old is not None and r.extra_mb != r.extra_mb:  # keep the memory a timing-only rerun lacks
                    r.extra_mb, r.extra_pct = old.extra_mb, old.extra_pct
                rows[(r.impl, r.size, r.threads, r.dtype)] = r
            for threads, gbps in saved["bandwidth_gbps"].items():
                bandwidths[f"{threads} ({path.name})" if threads in bandwidths else threads] = gbps
        results = list(rows.values())
        if args.update_memory:
            impls = {i.name: i for i in implementations(args.device)}
            fill_memory_columns(results, impls, args.memory_only, args.memory_threads, args.device)
            saved = {"machine": machine, "bandwidth_gbps": bandwidths, "results": [dataclasses.asdict(r) for r in results]}
            args.from_json[0].write_text(json.dumps(saved, indent=1))
        results.sort(key=lambda r: (r.family, r.size, r.dtype, r.threads))
        print(f"Machine: {machine}\n\n{goal_table(results)}\n\n{markdown_table(results, bandwidths)}")
        return 0

    if args.memory_probe:
        print(json.dumps(memory_probe(*json.loads(args.memory_probe))))
        return 0
    if args.smoke:
        args.sizes, args.threads, args.dtypes = [parse_size("20k/8")], [1], ["fp32", "bf16"]
        args.rounds, args.steps, args.warmup, args.bandwidth_elements = 1, 1, 1, 2**16
        args.memory_only = args.memory_only or r"^SGDW\[decoupled\] auto$"  # one probe: that the probe runs
    device = args.device
    thread_counts = args.threads if device == "cpu" else [torch.get_num_threads()]
    impls = implementations(device)
    pattern = re.compile(args.only) if args.only else None
    selected = [i for i in impls if i.baseline or pattern is None or pattern.search(i.name)]
    log = lambda text: print(text, file=sys.stderr, flush=True)  # noqa: E731
    log(f"machine: {machine_description(device)}")
    log(f"native kernels: {'available' if _native.available() else _native.unavailable_reason()}")

    results: list[Result] = []
    bandwidths: dict[str, float] = {}
    for threads in thread_counts:
        if device == "cpu":
            torch.set_num_threads(threads)
        bandwidth = Bandwidth(args.bandwidth_elements, device)
        thread_label = str(threads) if device == "cpu" else "-"
        for total, count in args.sizes:
            for dtype_name in args.dtypes:
                label = size_label(total, count)
                log(f"  size {label}, {thread_label} thread(s), {dtype_name}")
                params = make_problem(total, count, DTYPES[dtype_name], device)
                runnable = [i for i in selected if not i.skip and (not i.dtypes or dtype_name in i.dtypes)]
                timings = time_config(runnable, params, bandwidth, device=device, warmup=args.warmup,
                                      rounds=args.rounds, steps=args.steps, log=log)  # fmt: skip
                del params
                gc.collect()
                for impl in selected:
                    if impl.dtypes and dtype_name not in impl.dtypes:
                        continue
                    result = Result(impl.name, impl.family, label, thread_label, dtype_name, total, count, note=impl.skip)
                    if not impl.skip:
                        result.ms, result.first_ms, result.ratio = timings[impl.name]
                        result.moved_bytes = impl.bytes_per_element(dtype_name)[0]
                        moved = result.moved_bytes * total
                        result.bw_pct = 100 * moved / (result.ms * 1e-3) / 1e9 / bandwidth.gbps
                    results.append(result)
        bandwidths[thread_label] = bandwidth.gbps
        del bandwidth
    if not args.no_memory:
        log("  peak memory (one subprocess per configuration)")
        fill_memory_columns(results, {i.name: i for i in selected}, args.memory_only, args.memory_threads, device,
                     fp32_only=args.smoke)  # fmt: skip
    results.sort(key=lambda r: (r.family, r.size, r.dtype, r.threads))
    table = f"{goal_table(results)}\n\n{markdown_table(results, bandwidths)}"
    if args.smoke:  # that the bytes table runs too
        table += f"\n\n{bytes_table(elements=4096, device=device)}"
    print(f"Machine: {machine_description(device)}\n")
    print(table)
    if args.markdown:
        args.markdown.write_text(f"Machine: {machine_description(device)}\n\n{table}\n")
    if args.json:
        saved = {"machine": machine_description(device), "bandwidth_gbps": bandwidths,
                 "results": [dataclasses.asdict(r) for r in results]}  # fmt: skip
        args.json.write_text(json.dumps(saved, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
