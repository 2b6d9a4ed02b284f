"""Build, cache and call the fused CPU kernels (csrc/sgd.c, csrc/adam.c) through ctypes.

torch has no fused kernel for SGD with decoupled weight decay: its fused SGD adds the decay to the gradient
(L2) and keeps the learning rate outside the momentum buffer. Nor can its fused AdamW mask the decay (cautious
weight decay), and in bfloat16 it is compute bound on a CPU core. Both updates are a few arithmetic operations
per element and memory bound, so plain C loops compiled with the machine's C compiler reach the bandwidth
floor. Both kernels live in one library.

The library is compiled once per machine on first use (well under a second) into a cache folder
(``$DECOUPLED_CACHE_DIR``, else ``$XDG_CACHE_HOME/decoupled``, else ``~/.cache/decoupled``; where that cannot be
written, a per-user folder under the temporary directory), named by a hash of the source, the flags, the compiler
and the CPU it is built for (``-march=native``), and written atomically so that concurrent processes never load
a half-written file. Without a C compiler, :func:`available` is False and the dispatcher uses another path.

It is built with OpenMP and links ``libgomp.so.1``: inside a process that imported torch, the dynamic loader
resolves that name to the OpenMP runtime torch already loaded, so both share one thread pool.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import os
import platform
import shutil
import stat
import subprocess
import sys
import tempfile
from array import array
from pathlib import Path
from typing import Iterator

import torch
from torch import Tensor

__all__ = [
    "adam_",
    "adam_lowp_",
    "adam_preferred",
    "adam_steps_code",
    "available",
    "bypassed",
    "forced",
    "unavailable_reason",
    "sgd_",
    "sgd_lowp_",
    "supports_adam_dtype",
    "supports_dtype",
    "supports_lowp_dtype",
    "team_size",
]

_CSRC = Path(__file__).with_name("csrc")
_SOURCES = (_CSRC / "sgd.c", _CSRC / "adam.c")  # compiled together into one library
_HEADERS = (_CSRC / "common.h",)
_ABI_VERSION = 4
_numel, _data_ptr = Tensor.numel, Tensor.data_ptr
_DTYPE_CODES = {torch.float32: 0, torch.float64: 1, torch.bfloat16: 2, torch.float16: 3}
# Tried in order: the fastest flags first, then ones any C compiler takes.
# -fno-math-errno lets sqrt vectorize (it changes no result: IEEE sqrt is exact, only errno is not set).
# -ffp-contract=off: no fused multiply-adds, so that every operation rounds once, as the torch ops of the other
# paths do (gcc's -std=c11 implies it; clang contracts within an expression unless told not to).
_FLAG_SETS = (
    ["-O3", "-march=native", "-fno-math-errno", "-ffp-contract=off", "-fopenmp"],
    ["-O3", "-fno-math-errno", "-ffp-contract=off", "-fopenmp"],
    ["-O3", "-fno-math-errno", "-ffp-contract=off"],
)


def _cache_dirs() -> list[Path]:
    """Where the built library may live, in order: the configured cache folder, then a per-user folder under
    the temporary directory (for a HOME that is missing or read-only, or an unwritable DECOUPLED_CACHE_DIR)."""
    dirs = []
    root = os.environ.get("DECOUPLED_CACHE_DIR")
    if root:
        dirs.append(Path(root))
    else:
        xdg = os.environ.get("XDG_CACHE_HOME")
        try:
            dirs.append((Path(xdg) if xdg else Path.home() / ".cache") / "decoupled")
        except (RuntimeError, KeyError):  # no HOME and no passwd entry: Path.home() cannot tell
            pass
    private = _private_temp_dir()
    if private is not None:
        dirs.append(private)
    return dirs


def _private_temp_dir() -> Path | None:
    """A folder under the temporary directory that only this user can write (made with mode 700), or None.

    The temporary directory is shared: a library loaded from a folder another user could write would run their
    code, so the folder must be ours and closed to others."""
    if not hasattr(os, "getuid"):
        return None
    folder = Path(tempfile.gettempdir()) / f"decoupled-{os.getuid()}"
    try:
        folder.mkdir(mode=0o700, exist_ok=True)
        info = folder.lstat()
    except OSError:
        return None
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o022:
        return None
    return folder


def _cpu_signature() -> str:
    """What ``-march=native`` compiles for: the CPU's model and feature flags (not the hostname: a home folder
    shared by machines with other CPUs must not load a library built for another one)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            first = handle.read().split("\n\n", 1)[0]
        keys = ("vendor_id", "cpu family", "model", "model name", "flags", "Features", "CPU implementer", "CPU part")
        fields = [line for line in first.splitlines() if line.split(":", 1)[0].strip() in keys]
        if fields:
            return "\n".join(fields)
    except OSError:
        pass
    if sys.platform == "darwin":
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            return subprocess.run(
                ["sysctl", "-n", "machdep.cpu.brand_string", "machdep.cpu.features", "hw.optional.arm64"],
                capture_output=True, text=True, timeout=10,
            ).stdout  # fmt: skip
    return f"{platform.machine()} {platform.processor()}"


def _compiler() -> str | None:
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _compile(compiler: str, flags: list[str], target: Path) -> str | None:
    """Compile the kernel into ``target``; return None on success, else the compiler's (or the file system's)
    complaint."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    except OSError as error:
        return f"cannot write to {target.parent}: {error}"
    os.close(fd)
    command = [compiler, *flags, "-shared", "-fPIC", "-std=c11", *map(str, _SOURCES), "-o", tmp, "-lm"]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            return (result.stderr or result.stdout).strip() or f"exit code {result.returncode}"
        os.replace(tmp, target)  # atomic: a concurrent loader sees the old file or the whole new one
        return None
    except (OSError, subprocess.SubprocessError) as error:
        return str(error)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except OSError:  # e.g. a cache folder we may not enter
        return False


@functools.lru_cache(maxsize=None)
def _load() -> tuple[ctypes.CDLL | None, str]:
    if os.environ.get("DECOUPLED_DISABLE_NATIVE"):
        return None, "disabled by DECOUPLED_DISABLE_NATIVE"
    if sys.platform == "win32":
        return None, "the native kernel is built for Linux and macOS only"
    compiler = _compiler()
    if compiler is None:
        return None, "no C compiler found (set CC, or install gcc or clang)"
    source = b"".join(path.read_bytes() for path in (*_SOURCES, *_HEADERS))
    cpu = _cpu_signature()
    errors = []
    for flags in _FLAG_SETS:
        key = hashlib.sha256(source + " ".join([compiler, *flags, platform.machine(), cpu]).encode()).hexdigest()
        target = _built(compiler, flags, f"kernels-{key[:16]}.so", errors)
        if target is None:
            continue
        try:
            library = ctypes.CDLL(str(target))
        except OSError as error:
            errors.append(f"{' '.join(flags)}: {error}")
            continue
        if library.decoupled_abi_version() != _ABI_VERSION:
            errors.append(f"{target} has ABI {library.decoupled_abi_version()}, expected {_ABI_VERSION}")
            continue
        library.decoupled_sgd.restype = ctypes.c_int
        library.decoupled_sgd.argtypes = [
            ctypes.c_int64, ctypes.c_void_p, ctypes.c_int, ctypes.c_double, ctypes.c_double, ctypes.c_int,
            ctypes.c_int, ctypes.c_double, ctypes.c_double, ctypes.c_int, ctypes.c_int,
        ]  # fmt: skip
        library.decoupled_adam.restype = ctypes.c_int
        library.decoupled_adam.argtypes = [
            ctypes.c_int64, ctypes.c_void_p, ctypes.c_int, ctypes.c_int, ctypes.c_double, ctypes.c_double,
            ctypes.c_double, ctypes.c_double, ctypes.c_double, ctypes.c_double, ctypes.c_int, ctypes.c_int,
            ctypes.c_int, ctypes.c_int,
        ]  # fmt: skip
        library.decoupled_adam_lowp.restype = ctypes.c_int
        library.decoupled_adam_lowp.argtypes = [
            ctypes.c_int64, ctypes.c_void_p, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_double,
            ctypes.c_double, ctypes.c_double, ctypes.c_double, ctypes.c_double, ctypes.c_double, ctypes.c_double,
            ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int,
        ]  # fmt: skip
        library.decoupled_sgd_lowp.restype = ctypes.c_int
        library.decoupled_sgd_lowp.argtypes = [
            ctypes.c_int64, ctypes.c_void_p, ctypes.c_int, ctypes.c_int, ctypes.c_double, ctypes.c_double,
            ctypes.c_int, ctypes.c_int, ctypes.c_double, ctypes.c_double, ctypes.c_double, ctypes.c_int, ctypes.c_int,
        ]  # fmt: skip
        library.decoupled_team_size.restype = ctypes.c_int
        library.decoupled_team_size.argtypes = [ctypes.c_int]
        return library, ""
    return None, "could not build the native kernels: " + "; ".join(errors)


def _library() -> ctypes.CDLL:
    library = _load()[0]
    if library is None:
        raise RuntimeError(unavailable_reason())
    return library


def _built(compiler: str, flags: list[str], name: str, errors: list[str]) -> Path | None:
    """The library ``name`` in the first cache folder that has it or can have it built, else None (with the
    reasons appended to ``errors``)."""
    for folder in _cache_dirs():
        target = folder / name
        if _is_file(target):
            return target
        error = _compile(compiler, flags, target)
        if error is None:
            return target
        errors.append(f"{' '.join(flags)}: {error}")
        if not error.startswith("cannot write to"):
            return None  # the compiler refused these flags: another folder will not change that
    return None


def available() -> bool:
    """Whether the fused CPU kernels (SGD, Adam) could be built and loaded on this machine."""
    return _load()[0] is not None


def unavailable_reason() -> str:
    """Why :func:`available` is False ("" when it is True)."""
    return _load()[1]


_bypassed = False  # set by bypassed()


@contextlib.contextmanager
def bypassed() -> Iterator[None]:
    """Within the block the dispatcher takes no tensor to the native kernel: fused SGD on the CPU runs torch's
    fused SGD mapping, the path CUDA tensors take (for tests and benchmarks of that path; not thread-safe)."""
    global _bypassed
    saved, _bypassed = _bypassed, True
    try:
        yield
    finally:
        _bypassed = saved


_forced = False  # set by forced()
# The dtypes whose plain (non-cautious) Adam steps take the native kernel by default, where it beats torch's
# fused AdamW (docs/benchmark.md): bfloat16, where torch's is compute bound. fp32 stays on torch's kernel.
_ADAM_PREFERRED = (torch.bfloat16,)
# float16 is not among the native Adam kernel's dtypes: C's _Float16 arithmetic does not vectorize without
# AVX512-FP16 and made the step 5x slower than torch's fused one; cautious float16 steps take torch's kernel
# after a mask pass instead (see decoupled.kernels.fused).
_ADAM_DTYPES = (torch.float32, torch.float64, torch.bfloat16)


@contextlib.contextmanager
def forced() -> Iterator[None]:
    """Within the block every Adam step the native kernel can take runs on it, not only the cautious and the
    bfloat16 ones (for tests and benchmarks of the kernel in fp32/fp64/fp16; not thread-safe)."""
    global _forced
    saved, _forced = _forced, True
    try:
        yield
    finally:
        _forced = saved


def adam_preferred(dtype: torch.dtype) -> bool:
    """Whether a plain Adam step on CPU tensors of ``dtype`` takes the native kernel rather than torch's."""
    return (_forced or dtype in _ADAM_PREFERRED) and supports_adam_dtype(dtype)


def supports_adam_dtype(dtype: torch.dtype) -> bool:
    """Whether the native Adam kernel takes CPU tensors of ``dtype`` (float32, float64, bfloat16)."""
    return dtype in _ADAM_DTYPES and supports_dtype(dtype)


def supports_dtype(dtype: torch.dtype) -> bool:
    library = _load()[0]
    if _bypassed or library is None or dtype not in _DTYPE_CODES:
        return False
    return dtype != torch.float16 or bool(library.decoupled_supports_f16())


def team_size(requested: int) -> int:
    """How many threads a parallel region of the native kernel gets when it asks for ``requested``.

    The kernel asks for ``torch.get_num_threads()``; it runs on torch's own OpenMP runtime, so this is the
    thread count torch's kernels use too (1 when the library was built without OpenMP).
    """
    library = _library()
    return int(library.decoupled_team_size(requested))


def sgd_(
    params: list[Tensor],
    grads: list[Tensor],
    momentum_buffers: list[Tensor] | None,
    *,
    lr: float,
    momentum: float,
    nesterov: bool,
    maximize: bool,
    keep: float,
    l2: float,
    cautious: bool = False,
    numels: list[int] | None = None,
) -> None:
    """One fused step over contiguous CPU tensors of one dtype (see csrc/sgd.c for the math).

    ``keep`` = 1 - decay factor. ``momentum_buffers`` is ignored (may be None) when ``momentum`` is 0.
    ``numels`` (the element counts of ``params``) may be passed when the caller has them already.
    The caller guarantees device, dtype, contiguity and matching sizes (:func:`decoupled.kernels.fused.sgd`
    checks them): the kernel writes through raw addresses.
    """
    library = _library()
    count = len(params)
    if count == 0:
        return
    # One int64 table per step: element counts, then the addresses of params, grads and buffers.
    table = array("q", numels if numels is not None else map(_numel, params))
    table.extend(map(_data_ptr, params))
    table.extend(map(_data_ptr, grads))
    if momentum:
        table.extend(map(_data_ptr, momentum_buffers))  # type: ignore[arg-type]
    status = library.decoupled_sgd(
        count, table.buffer_info()[0], _DTYPE_CODES[params[0].dtype], lr, momentum, int(nesterov),
        int(maximize), keep, l2, int(cautious), torch.get_num_threads(),
    )  # fmt: skip
    if status != 0:
        raise RuntimeError(f"native SGD kernel failed with status {status} (dtype {params[0].dtype})")


_STEP_CODES = {torch.float32: 0, torch.float64: 1}


def adam_steps_code(steps: list[Tensor]) -> int | None:
    """0 (float32) or 1 (float64) if every step count is a one-element CPU tensor of that dtype, else None.

    The kernel increments the counts through their addresses; counts of any other kind (on a device, of
    another dtype, mixed) go to a path that handles them.
    """
    dtype = steps[0].dtype if steps and isinstance(steps[0], Tensor) else None
    code = _STEP_CODES.get(dtype)  # type: ignore[arg-type]
    if code is None:
        return None
    for step in steps:
        if not (isinstance(step, Tensor) and step.dtype is dtype and step.is_cpu and step.numel() == 1):
            return None
    return code


def adam_(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    max_exp_avg_sqs: list[Tensor],
    steps: list[Tensor],
    *,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    keep: float,
    l2: float,
    amsgrad: bool,
    maximize: bool,
    cautious: bool,
    numels: list[int] | None = None,
) -> None:
    """One fused Adam(W) step over CPU tensors of one dtype (see csrc/adam.c for the math); increments ``steps``.

    ``keep`` = 1 - decay factor. ``max_exp_avg_sqs`` is ignored unless ``amsgrad``. The caller guarantees
    device, dtype, one shared dense layout and matching sizes, and that :func:`adam_steps_code` is not None
    (:func:`decoupled.kernels.fused.adam` checks them): the kernel writes through raw addresses.
    """
    library = _library()
    count = len(params)
    if count == 0:
        return
    steps_code = adam_steps_code(steps)
    if steps_code is None:
        raise RuntimeError("the native Adam kernel takes step counts that are float32 or float64 CPU scalars")
    table = array("q", numels if numels is not None else map(_numel, params))
    for tensors in (params, grads, exp_avgs, exp_avg_sqs, steps):
        table.extend(map(_data_ptr, tensors))
    if amsgrad:
        table.extend(map(_data_ptr, max_exp_avg_sqs))
    status = library.decoupled_adam(
        count, table.buffer_info()[0], _DTYPE_CODES[params[0].dtype], steps_code, lr, beta1, beta2, eps, keep, l2,
        int(amsgrad), int(maximize), int(cautious), torch.get_num_threads(),
    )  # fmt: skip
    if status != 0:
        raise RuntimeError(f"native Adam kernel failed with status {status} (dtype {params[0].dtype})")


_LOWP_MODES = {"exact": 1, "stochastic": 2}


def supports_lowp_dtype(dtype: torch.dtype) -> bool:
    """Whether the native low-precision kernels take parameters of ``dtype`` (bfloat16; float16 where the C
    compiler has _Float16)."""
    return dtype in (torch.bfloat16, torch.float16) and supports_dtype(dtype)


def adam_lowp_(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    max_exp_avg_sqs: list[Tensor],
    steps: list[Tensor],
    extras: list[Tensor],
    *,
    precision: str,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    decay_factor: float,
    l2: float,
    amsgrad: bool,
    maximize: bool,
    cautious: bool,
) -> None:
    """One Adam(W) step over low-precision CPU tensors of one dtype with float32 moments (csrc/adam.c,
    decoupled_adam_lowp); ``extras`` are the remainders ("exact") or the rounding streams ("stochastic").
    Increments ``steps`` (and the streams' counts). The caller guarantees dtypes, sizes and one dense layout per
    parameter (:func:`decoupled.kernels.fused.adam` checks them): the kernel writes through raw addresses."""
    library = _library()
    count = len(params)
    if count == 0:
        return
    steps_code = adam_steps_code(steps)
    if steps_code is None:
        raise RuntimeError("the native Adam kernel takes step counts that are float32 or float64 CPU scalars")
    table = array("q", map(_numel, params))
    for tensors in (params, grads, exp_avgs, exp_avg_sqs, steps, extras):
        table.extend(map(_data_ptr, tensors))
    if amsgrad:
        table.extend(map(_data_ptr, max_exp_avg_sqs))
    status = library.decoupled_adam_lowp(
        count, table.buffer_info()[0], _DTYPE_CODES[params[0].dtype], _LOWP_MODES[precision], steps_code, lr, beta1,
        beta2, eps, 1 - decay_factor, decay_factor, l2, int(amsgrad), int(maximize), int(cautious),
        torch.get_num_threads(),
    )  # fmt: skip
    if status != 0:
        raise RuntimeError(f"native low-precision Adam kernel failed with status {status} (dtype {params[0].dtype})")


def sgd_lowp_(
    params: list[Tensor],
    grads: list[Tensor],
    momentum_buffers: list[Tensor],
    extras: list[Tensor],
    *,
    precision: str,
    lr: float,
    momentum: float,
    nesterov: bool,
    maximize: bool,
    decay_factor: float,
    l2: float,
    cautious: bool,
) -> None:
    """One SGD(W) step over low-precision CPU tensors of one dtype with float32 momentum buffers (csrc/sgd.c,
    decoupled_sgd_lowp); ``extras`` as for :func:`adam_lowp_`. Same guarantees from the caller."""
    library = _library()
    count = len(params)
    if count == 0:
        return
    table = array("q", map(_numel, params))
    for tensors in (params, grads, *([momentum_buffers] if momentum else []), extras):
        table.extend(map(_data_ptr, tensors))
    status = library.decoupled_sgd_lowp(
        count, table.buffer_info()[0], _DTYPE_CODES[params[0].dtype], _LOWP_MODES[precision], lr, momentum,
        int(nesterov), int(maximize), 1 - decay_factor, decay_factor, l2, int(cautious), torch.get_num_threads(),
    )  # fmt: skip
    if status != 0:
        raise RuntimeError(f"native low-precision SGD kernel failed with status {status} (dtype {params[0].dtype})")
