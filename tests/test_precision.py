"""Low-precision parameters (decoupled.precision): "exact" is bit for bit the float32-master run on every path.

"exact" keeps a float32 master per bfloat16/float16 parameter (the parameter and a remainder in the state) and
applies the float32 step to it. It is compared, bit for bit, with two independent float32 runs:

* tests/reference.py's ReferenceMasterAdam/SGD: the paper's step emulated in float64 with every operation rounded
  once to float32 (numpy's exact sqrt);
* the same optimizer on float32 parameters: the native float32 kernels (the same operations, no FMA).

over hundreds of scheduled steps with two param groups, on every kernel path, at 1 and 2 threads. Also: the pure
decay down to 1e-7 per step, "stochastic" (unbiased, reproducible, independent of path and threads), the
masters' read-out and load, checkpoints, decouple(), odd layouts, and the refusals.

With DECOUPLED_TEST_DEVICE=cuda (benchmarks/gpu_check.py runs the tests of DEVICE_TESTS so) the optimizers' tensors
of the exact-mode runs, the decay conventions, the odd layouts and the stochastic paths live on the GPU (the
one-pass path is then the Triton kernel); the references stay on the CPU.
"""

from __future__ import annotations

import contextlib
import copy
import io
import itertools

import pytest
import torch
from device import TEST_DEVICE
from reference import ReferenceMasterAdam, ReferenceMasterSGD, cosine_warm_restarts, round_like_parameter

import decoupled
from decoupled.kernels import lowp, native

LOW = {"bf16": torch.bfloat16, "fp16": torch.float16}
PATHS = {
    "default": {},
    "forloop": {"foreach": False, "fused": False},
    "foreach": {"foreach": True},
    "fused": {"fused": True},
}
# The tests that run on DECOUPLED_TEST_DEVICE (the others are about the CPU's native kernels and threads, or
# device-independent bookkeeping).
DEVICE_TESTS = (
    "test_exact_is_the_float32_master_run_bit_for_bit",
    "test_exact_follows_every_decay_convention",
    "test_exact_on_odd_layouts",
    "test_stochastic_is_reproducible_from_its_seed_and_the_same_on_every_path",
)
native_only = pytest.mark.skipif(not native.available(), reason=f"native kernel: {native.unavailable_reason()}")
STEPS_PER_EPOCH, FIRST_PERIOD, PERIOD_MULT = 10, 3.0, 2.0

# name -> (family, optimizer kwargs, reference kwargs); the reference takes the same options.
CASES = {
    "AdamW": ("adam", {}, {}),
    "AdamW-amsgrad-maximize": (
        "adam",
        dict(betas=(0.8, 0.99), eps=1e-6, amsgrad=True, maximize=True),
        dict(betas=(0.8, 0.99), eps=1e-6, amsgrad=True, maximize=True),
    ),
    "AdamW-cautious": ("adam", dict(cautious=True), dict(cautious=True)),
    "SGDW": ("sgd", dict(momentum=0.9), dict(momentum=0.9)),
    "SGDW-nesterov-maximize": (
        "sgd",
        dict(momentum=0.8, nesterov=True, maximize=True),
        dict(momentum=0.8, nesterov=True, maximize=True),
    ),
    "SGDW-no-momentum": ("sgd", dict(momentum=0.0), dict(momentum=0.0)),
    "SGDW-cautious": ("sgd", dict(momentum=0.9, cautious=True), dict(momentum=0.9, cautious=True)),
}
BASE_LR = {"adam": 3e-3, "sgd": 0.05}
# Shapes per group: a matrix, a vector of odd length, an empty tensor; the second group a larger odd vector.
SHAPES = [[(5, 7), (33,), (0,)], [(257,)]]
GROUP_HYPER = [{"lr_scale": 1.0, "weight_decay": 0.03}, {"lr_scale": 0.5, "weight_decay": 0.2}]


def _bits(tensor: torch.Tensor) -> torch.Tensor:
    """A tensor's raw bits (bitwise comparison: NaN payloads and signed zeros included)."""
    if tensor.dtype in (torch.bfloat16, torch.float16, torch.int16):
        return tensor.view(torch.int16)
    if tensor.dtype == torch.float32:
        return tensor.contiguous().view(torch.int32)
    return tensor


def assert_bits_equal(actual: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    actual = actual.detach().cpu()
    expected = expected.detach().cpu()
    assert actual.dtype == expected.dtype, f"{what}: dtype {actual.dtype} != {expected.dtype}"
    differ = _bits(actual) != _bits(expected)
    assert not differ.any(), (
        f"{what}: {int(differ.sum())} of {differ.numel()} elements differ, first at "
        f"{actual.flatten()[differ.flatten()][:3].tolist()} vs {expected.flatten()[differ.flatten()][:3].tolist()}"
    )


def _initial(dtype: torch.dtype, seed: int = 0) -> list[list[torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    return [[torch.randn(shape, generator=generator).to(dtype) for shape in group] for group in SHAPES]


def _gradient(shape: tuple[int, ...], step: int, index: int, dtype: torch.dtype) -> torch.Tensor | None:
    if index == 1 and step % 4 == 3:
        return None  # a parameter whose gradient is None now and then: no step, no decay
    generator = torch.Generator().manual_seed(10_000 * step + index)
    scale = 10.0 ** (index % 3 - 1)
    return (scale * torch.randn(shape, generator=generator)).to(dtype)


def _optimizer(family: str, groups: list[dict], kwargs: dict, **extra) -> torch.optim.Optimizer:
    cls = decoupled.AdamW if family == "adam" else decoupled.SGDW
    return cls(groups, lr=BASE_LR[family], **kwargs, **extra)


def _groups(params: list[list[torch.Tensor]], family: str) -> list[dict]:
    return [
        {"params": group, "lr": BASE_LR[family] * hyper["lr_scale"], "weight_decay": hyper["weight_decay"]}
        for group, hyper in zip(params, GROUP_HYPER)
    ]


def run_low_precision(case: str, dtype: torch.dtype, steps: int, decay: str = "decoupled", **extra):
    """The case on ``dtype`` parameters under CosineWarmRestarts; returns (optimizer, flat parameter list)."""
    family, kwargs, _ = CASES[case]
    params = [[torch.nn.Parameter(t.to(TEST_DEVICE)) for t in group] for group in _initial(dtype)]
    optimizer = _optimizer(family, _groups(params, family), kwargs, decay=decay, **extra)
    scheduler = decoupled.CosineWarmRestarts(
        optimizer, first_period=FIRST_PERIOD, steps_per_epoch=STEPS_PER_EPOCH, period_mult=PERIOD_MULT
    )
    flat = [p for group in params for p in group]
    for step in range(steps):
        for index, param in enumerate(flat):
            grad = _gradient(param.shape, step, index, dtype)
            param.grad = None if grad is None else grad.to(TEST_DEVICE)
        optimizer.step()
        scheduler.step()
    return optimizer, flat


def run_reference(case: str, dtype: torch.dtype, steps: int, decay: str = "decoupled"):
    """The float64-emulated float32-master run from the same bf16/fp16 values and gradients."""
    family, _, reference_kwargs = CASES[case]
    reference = (ReferenceMasterAdam if family == "adam" else ReferenceMasterSGD)(**reference_kwargs)
    masters = [t.double() for group in _initial(dtype) for t in group]
    group_of = [g for g, group in enumerate(SHAPES) for _ in group]
    alphas = [BASE_LR[family] * hyper["lr_scale"] for hyper in GROUP_HYPER]
    for step in range(steps):
        eta = cosine_warm_restarts(step, STEPS_PER_EPOCH, FIRST_PERIOD, PERIOD_MULT)
        for index, master in enumerate(masters):
            g = group_of[index]
            masters[index] = reference.step(
                index, master, _gradient(master.shape, step, index, dtype), lr=alphas[g] * eta, alpha=alphas[g],
                weight_decay=GROUP_HYPER[g]["weight_decay"], decay=decay,
            )  # fmt: skip
    return reference, [m.float() for m in masters]


def run_float32(case: str, dtype: torch.dtype, steps: int, decay: str = "decoupled"):
    """The same optimizer on float32 parameters (the mixed-precision recipe's masters), on the native float32
    kernels, whose operations are the exact mode's; gradients are the low-precision ones."""
    family, kwargs, _ = CASES[case]
    params = [[torch.nn.Parameter(t.float()) for t in group] for group in _initial(dtype)]
    optimizer = _optimizer(family, _groups(params, family), kwargs, decay=decay, fused=True)
    scheduler = decoupled.CosineWarmRestarts(
        optimizer, first_period=FIRST_PERIOD, steps_per_epoch=STEPS_PER_EPOCH, period_mult=PERIOD_MULT
    )
    flat = [p for group in params for p in group]
    with native.forced():
        for step in range(steps):
            for index, param in enumerate(flat):
                grad = _gradient(param.shape, step, index, dtype)
                param.grad = None if grad is None else grad.float()
            optimizer.step()
            scheduler.step()
    return optimizer, flat


def _threads(count: int) -> contextlib.AbstractContextManager:
    @contextlib.contextmanager
    def threads():
        saved = torch.get_num_threads()
        torch.set_num_threads(count)
        try:
            yield
        finally:
            torch.set_num_threads(saved)

    return threads()


def _moment_keys(family: str, case: str) -> tuple[str, ...]:
    if family == "adam":
        return ("exp_avg", "exp_avg_sq", *(("max_exp_avg_sq",) if "amsgrad" in case else ()))
    return () if "no-momentum" in case else ("momentum_buffer",)


# ------------------------------------------------------------------------------------------------------------
# "exact": bit for bit the float32-master run


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("dtype", LOW.values(), ids=LOW.keys())
@pytest.mark.parametrize("case", CASES)
def test_exact_is_the_float32_master_run_bit_for_bit(case: str, dtype: torch.dtype, path: str) -> None:
    steps = 300
    family = CASES[case][0]
    optimizer, params = run_low_precision(case, dtype, steps, **PATHS[path])
    reference, expected = run_reference(case, dtype, steps)
    masters = decoupled.master_weights(optimizer)
    for index, (param, master) in enumerate(zip(params, expected)):
        assert param.dtype == dtype
        assert_bits_equal(masters[param], master, f"master {index}")
        assert_bits_equal(param, round_like_parameter(master, dtype), f"parameter {index}")
        state = optimizer.state[param]
        if param.numel() == 0 and not state:
            continue
        for key in _moment_keys(family, case):
            assert_bits_equal(state[key], reference.state_tensors(index)[key].float(), f"{key} {index}")
        if family == "adam":
            assert state["step"].item() == reference.state_tensors(index)["step"].item()


@native_only
@pytest.mark.parametrize("dtype", LOW.values(), ids=LOW.keys())
@pytest.mark.parametrize("case", CASES)
def test_exact_equals_the_same_optimizer_on_float32_parameters(case: str, dtype: torch.dtype) -> None:
    """1000 steps: the masters are the float32 run's parameters, the moments its moments, bit for bit."""
    steps = 1000
    family = CASES[case][0]
    optimizer, params = run_low_precision(case, dtype, steps)
    fp32_optimizer, fp32_params = run_float32(case, dtype, steps)
    masters = decoupled.master_weights(optimizer)
    for index, (param, fp32) in enumerate(zip(params, fp32_params)):
        assert_bits_equal(masters[param], fp32.detach(), f"master {index}")
        for key in _moment_keys(family, case):
            if fp32_optimizer.state[fp32]:
                assert_bits_equal(optimizer.state[param][key], fp32_optimizer.state[fp32][key], f"{key} {index}")


@pytest.mark.parametrize("decay", ["lr", "constant", "corrected", "l2"])
@pytest.mark.parametrize("case", ["AdamW", "SGDW"])
def test_exact_follows_every_decay_convention(case: str, decay: str) -> None:
    steps = 120
    for path in PATHS.values():
        optimizer, params = run_low_precision(case, torch.bfloat16, steps, decay=decay, **path)
        _, expected = run_reference(case, torch.bfloat16, steps, decay=decay)
        masters = decoupled.master_weights(optimizer)
        for index, (param, master) in enumerate(zip(params, expected)):
            assert_bits_equal(masters[param], master, f"{path}: master {index}")


@native_only
@pytest.mark.parametrize("precision", ["exact", "stochastic"])
@pytest.mark.parametrize("family", ["adam", "sgd"])
def test_one_and_two_threads_give_the_same_bits(family: str, precision: str) -> None:
    """Tensors above the native kernels' parallel threshold (2^16 elements), odd sizes so that the second
    thread's share starts mid-tensor at an odd index; every path at 1 and 2 threads."""
    sizes = [70_001, 31, 40_003]

    def run(path: dict, threads: int) -> list[torch.Tensor]:
        generator = torch.Generator().manual_seed(5)
        params = [torch.nn.Parameter(torch.randn(n, generator=generator).bfloat16()) for n in sizes]
        cls = decoupled.AdamW if family == "adam" else decoupled.SGDW
        optimizer = cls(params, lr=BASE_LR[family], weight_decay=0.05, precision=precision, **path)
        with _threads(threads):
            for _ in range(20):
                for p in params:
                    p.grad = torch.randn(p.shape, generator=generator).bfloat16()
                optimizer.step()
        state = [t for p in params for t in optimizer.state[p].values() if t.dim() > 0]
        return [p.detach() for p in params] + state

    expected = run(PATHS["forloop"], 1)
    for (name, path), threads in itertools.product(PATHS.items(), (1, 2)):
        for index, (a, b) in enumerate(zip(run(path, threads), expected)):
            assert_bits_equal(a, b, f"{name} at {threads} threads: tensor {index}")


@pytest.mark.parametrize("per_step", [1e-4, 1e-5, 1e-6, 1e-7])
@pytest.mark.parametrize("dtype", LOW.values(), ids=LOW.keys())
@pytest.mark.parametrize("family", ["adam", "sgd"])
def test_pure_decay_is_applied_at_every_size(family: str, dtype: torch.dtype, per_step: float) -> None:
    """Zero gradients, weight decay only: 1000 steps of theta *= 1 - per_step. The masters equal the float32
    run bit for bit and have moved; under "nearest" the parameters never move (the decay rounds away)."""
    theta = torch.linspace(0.25, 2.0, 513).to(dtype)
    runs = {}
    for precision, param_dtype in (("exact", dtype), ("nearest", dtype), ("exact", torch.float32)):
        param = torch.nn.Parameter(theta.to(param_dtype, copy=True))
        cls = decoupled.AdamW if family == "adam" else decoupled.SGDW
        optimizer = cls([param], lr=1e-3, weight_decay=per_step, precision=precision, fused=True)
        with native.forced():
            for _ in range(1000):
                param.grad = torch.zeros_like(param)
                optimizer.step()
        runs[precision, param_dtype] = (decoupled.master_weights(optimizer)[param], param.detach())
    master, _ = runs["exact", dtype]
    assert_bits_equal(master, runs["exact", torch.float32][1], "master against the float32 run")
    assert (master < theta.float()).all(), "the decay moved every master"
    expected_total = 1 - (1 - per_step) ** 1000
    moved = 1 - (master.double() / theta.double())
    assert moved.mean().item() == pytest.approx(expected_total, rel=0.25)  # float32's own resolution at 1e-7
    _, nearest = runs["nearest", dtype]
    if per_step <= 1e-5:
        assert torch.equal(nearest, theta), "precision='nearest' loses a decay below half an ulp (torch's behaviour)"


def test_a_tiny_decay_still_acts_on_a_bfloat16_model() -> None:
    """The guide's check: a bf16 model under AdamW(weight_decay=1e-6), 1000 steps of zero gradients."""
    model = torch.nn.Linear(16, 16).to(torch.bfloat16)
    before = model.weight.detach().clone()
    optimizer = decoupled.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-6)
    for _ in range(1000):
        for p in model.parameters():
            p.grad = torch.zeros_like(p)
        optimizer.step()
    master = decoupled.master_weights(optimizer)[model.weight]
    ratio = master.double() / before.double()
    assert ratio.max().item() < 1 and ratio.mean().item() == pytest.approx(1 - 1e-3, rel=2e-4)


def test_float32_parameters_are_their_own_master() -> None:
    """precision is a documented no-op on float32/float64 parameters: every precision gives the same bits and
    keeps no remainder, so one setting serves a model that mixes dtypes."""
    runs = []
    for precision in decoupled.PRECISIONS:
        params = [torch.nn.Parameter(t.float()) for t in _initial(torch.float32)[0]]
        optimizer = decoupled.AdamW(params, lr=1e-2, weight_decay=0.1, precision=precision)
        for step in range(5):
            for index, p in enumerate(params):
                p.grad = _gradient(p.shape, step, index, torch.float32)
            optimizer.step()
        assert all("remainder" not in optimizer.state[p] and "rounding_stream" not in optimizer.state[p] for p in params)
        runs.append([p.detach().clone() for p in params])
    for run in runs[1:]:
        for a, b in zip(run, runs[0]):
            assert_bits_equal(a, b, "float32 parameter")


def test_a_group_mixing_dtypes_steps_each_as_its_own() -> None:
    generator = torch.Generator().manual_seed(2)
    low = torch.nn.Parameter(torch.randn(40, generator=generator).bfloat16())
    full = torch.nn.Parameter(torch.randn(40, generator=generator))
    optimizer = decoupled.AdamW([low, full], lr=1e-2, weight_decay=0.1)
    alone_low, alone_full = copy.deepcopy(low), copy.deepcopy(full)
    opt_low = decoupled.AdamW([alone_low], lr=1e-2, weight_decay=0.1)
    opt_full = decoupled.AdamW([alone_full], lr=1e-2, weight_decay=0.1)
    for _ in range(10):
        grads = torch.randn(40, generator=generator), torch.randn(40, generator=generator)
        low.grad, alone_low.grad = grads[0].bfloat16(), grads[0].bfloat16()
        full.grad, alone_full.grad = grads[1].clone(), grads[1].clone()
        optimizer.step(), opt_low.step(), opt_full.step()
    assert_bits_equal(low, alone_low, "bf16 parameter")
    assert_bits_equal(full, alone_full, "fp32 parameter")
    assert optimizer.state[low]["remainder"].dtype == torch.bfloat16 and "remainder" not in optimizer.state[full]


# ------------------------------------------------------------------------------------------------------------
# Odd memory layouts


@pytest.mark.parametrize("precision", ["exact", "stochastic"])
def test_odd_layouts_give_the_same_bits_on_every_path(precision: str) -> None:
    """channels_last and transposed bf16 parameters with gradients of their layout (the one-pass kernels take
    them and number elements by their place in memory), and a strided slice (the torch-op paths only)."""

    def run(path: dict) -> list[torch.Tensor]:
        generator = torch.Generator().manual_seed(8)
        params = [
            torch.nn.Parameter(torch.randn(2, 3, 4, 5, generator=generator).bfloat16().to(memory_format=torch.channels_last)),
            torch.nn.Parameter(torch.randn(7, 6, generator=generator).bfloat16().t()),
            torch.nn.Parameter(torch.zeros(100, dtype=torch.bfloat16)[::2]),
        ]
        optimizer = decoupled.AdamW(params, lr=1e-2, weight_decay=0.1, precision=precision, **path)
        for _ in range(6):
            for p in params:
                grad = torch.randn(p.shape, generator=generator).bfloat16()
                p.grad = torch.empty_like(p).copy_(grad)  # the parameter's own layout
            optimizer.step()
        return [p.detach().clone() for p in params]

    expected = run(PATHS["forloop"])
    for name, path in PATHS.items():
        for index, (a, b) in enumerate(zip(run(path), expected)):
            assert_bits_equal(a, b, f"{name}: parameter {index}")


@pytest.mark.parametrize("path", PATHS)
def test_exact_on_odd_layouts(path: str) -> None:
    """channels_last, transposed and strided (sliced) bf16 parameters: the same bits as contiguous ones."""
    generator = torch.Generator().manual_seed(8)
    base = [torch.randn(2, 3, 4, 5, generator=generator), torch.randn(6, 7, generator=generator), torch.randn(50, generator=generator)]

    def make(odd: bool) -> list[torch.nn.Parameter]:
        values = [t.bfloat16().to(TEST_DEVICE) for t in base]
        if odd:
            values = [
                values[0].to(memory_format=torch.channels_last),
                values[1].t().contiguous().t(),
                torch.zeros(100, dtype=torch.bfloat16, device=TEST_DEVICE)[::2].copy_(values[2]),
            ]
        return [torch.nn.Parameter(v) for v in values]

    runs = []
    for odd in (False, True):
        params = make(odd)
        optimizer = decoupled.AdamW(params, lr=1e-2, weight_decay=0.1, **PATHS[path])
        grads = torch.Generator().manual_seed(9)
        for _ in range(8):
            for p in params:
                p.grad = torch.randn(p.shape, generator=grads).bfloat16().to(TEST_DEVICE)
            optimizer.step()
        runs.append([decoupled.master_weights(optimizer)[p].contiguous() for p in params])
    for index, (a, b) in enumerate(zip(*runs)):
        assert_bits_equal(a, b, f"parameter {index}")


# ------------------------------------------------------------------------------------------------------------
# "stochastic"


@native_only
@pytest.mark.parametrize("per_step", [1e-4, 1e-5, 1e-6, 1e-7])
def test_stochastic_rounding_keeps_the_decay_on_average(per_step: float) -> None:
    """The mean decay of bf16 parameters at 0.99609375 (the largest bf16 below 1) is within 1% of the decay
    theta (1 - (1 - per_step)^steps) down to 1e-7 per step, where rounding to nearest keeps none. Sized so that
    the roundings down, whose Poisson noise sets the error, number about 10^5 or more (standard error 0.3%)."""
    theta = 0.99609375
    elements, steps = {1e-4: (20_000, 500), 1e-5: (100_000, 1000), 1e-6: (500_000, 1000), 1e-7: (2_000_000, 2000)}[
        per_step
    ]
    param = torch.nn.Parameter(torch.full((elements,), theta, dtype=torch.bfloat16))
    optimizer = decoupled.AdamW([param], lr=1e-3, weight_decay=per_step, precision="stochastic")
    param.grad = torch.zeros_like(param)
    for _ in range(steps):
        optimizer.step()
    decay = theta - param.detach().double().mean().item()
    assert decay == pytest.approx(theta * (1 - (1 - per_step) ** steps), rel=0.01)


@pytest.mark.parametrize("dtype", LOW.values(), ids=LOW.keys())
def test_stochastic_rounding_of_one_step_is_unbiased(dtype: torch.dtype) -> None:
    """E[round(theta - delta)] = theta - delta, from 2^20 independent roundings of each (theta, delta): changes
    far below a float32 ulp of theta (the small-step rule), between one and many neighbours (the float32
    difference), in bf16's and fp16's normal range, at a power of two (the gap below is half the gap above), at
    zero, and in fp16's subnormal range."""
    count = 2**20
    cases = [(1.0, 3e-8), (1.0, -3e-8), (0.75, 7.5e-8), (-0.75, 7.5e-8), (0.5, 1.3e-3), (1.5, -0.02),
             (0.0, 1e-9), (0.0, -1e-9), (-3.25, 0.4), (2.0**-20, 2.0**-27), (6e-6, 1e-7)]  # fmt: skip
    for theta, delta in cases:
        theta = torch.tensor(theta).to(dtype).item()
        out = torch.empty(count, dtype=dtype)
        lowp.round_stochastic_(
            torch.full((count,), theta), torch.full((count,), delta), out, torch.tensor([lowp.stream_key(1, 2), 0])
        )
        values = out.double()
        down, up = values.min().item(), values.max().item()
        target = theta - delta
        assert down <= target <= up, (dtype, theta, delta)
        standard_error = (up - down) / 2 / count**0.5
        assert abs(values.mean().item() - target) <= 4 * standard_error, (dtype, theta, delta, values.mean().item())


@pytest.mark.parametrize("family", ["adam", "sgd"])
def test_stochastic_is_reproducible_from_its_seed_and_the_same_on_every_path(family: str) -> None:
    def run(seed: int, path: dict) -> list[torch.Tensor]:
        generator = torch.Generator().manual_seed(4)
        params = [torch.nn.Parameter(torch.randn(n, generator=generator).to(dtype).to(TEST_DEVICE)) for n, dtype in ((301, torch.bfloat16), (77, torch.float16))]
        cls = decoupled.AdamW if family == "adam" else decoupled.SGDW
        optimizer = cls(params, lr=BASE_LR[family], weight_decay=0.05, precision="stochastic", seed=seed, **path)
        for _ in range(15):
            for p in params:
                p.grad = torch.randn(p.shape, generator=generator).to(p.dtype).to(TEST_DEVICE)
            optimizer.step()
        return [p.detach().cpu() for p in params]

    first = run(7, PATHS["default"])
    for name, path in PATHS.items():
        for index, (a, b) in enumerate(zip(run(7, path), first)):
            assert_bits_equal(a, b, f"{name}: parameter {index}")
    assert not all(torch.equal(a, b) for a, b in zip(run(8, PATHS["default"]), first)), "another seed, other bits"


def test_stochastic_keeps_no_remainder_and_float32_moments() -> None:
    param = torch.nn.Parameter(torch.randn(10).bfloat16())
    optimizer = decoupled.AdamW([param], lr=1e-3, precision="stochastic")
    param.grad = torch.randn(10).bfloat16()
    optimizer.step()
    state = optimizer.state[param]
    assert "remainder" not in state and state["rounding_stream"].dtype == torch.int64
    assert state["exp_avg"].dtype == torch.float32 and state["rounding_stream"][1].item() == 1


# ------------------------------------------------------------------------------------------------------------
# Masters: read out, start from float32 weights


def test_load_master_state_dict_makes_the_masters_the_float32_weights() -> None:
    """An fp32 checkpoint loaded into a bf16 model: the masters are the fp32 weights bit for bit, and training
    from there is the float32 run from those weights."""
    torch.manual_seed(0)
    fp32 = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 2))
    model = copy.deepcopy(fp32).to(torch.bfloat16)
    optimizer = decoupled.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    result = decoupled.load_master_state_dict(model, optimizer, fp32.state_dict())
    assert not result.missing_keys and not result.unexpected_keys
    masters = decoupled.master_state_dict(model, optimizer)
    for name, value in fp32.state_dict().items():
        assert_bits_equal(masters[name], value, name)
    # Training: the fp32 run with the bf16 forward, the masters' own rounding, is reproduced bit for bit.
    reference = copy.deepcopy(fp32)
    ref_optimizer = decoupled.AdamW(reference.parameters(), lr=1e-2, weight_decay=0.1, fused=True)
    generator = torch.Generator().manual_seed(1)
    for _ in range(20):
        x, y = torch.randn(8, 6, generator=generator), torch.randn(8, 2, generator=generator)
        torch.nn.functional.mse_loss(model(x.bfloat16()).float(), y).backward()
        forward = copy.deepcopy(reference)
        with torch.no_grad():
            for p in forward.parameters():
                p.copy_(round_like_parameter(p, torch.bfloat16).float())
        forward = forward.to(torch.bfloat16)
        torch.nn.functional.mse_loss(forward(x.bfloat16()).float(), y).backward()
        for p, q in zip(reference.parameters(), forward.parameters()):
            p.grad = q.grad.float()
        with native.forced():
            ref_optimizer.step()
        optimizer.step()
        optimizer.zero_grad()
    masters = decoupled.master_state_dict(model, optimizer)
    for name, value in reference.state_dict().items():
        assert_bits_equal(masters[name], value, name)


def test_master_weights_of_nearest_and_float32_parameters_are_their_values() -> None:
    low = torch.nn.Parameter(torch.randn(5).bfloat16())
    full = torch.nn.Parameter(torch.randn(5, dtype=torch.float64))
    optimizer = decoupled.AdamW([{"params": [low], "precision": "nearest"}, {"params": [full]}])
    masters = decoupled.master_weights(optimizer)
    assert masters[low].dtype == torch.float32 and torch.equal(masters[low], low.detach().float())
    assert masters[full].dtype == torch.float64 and torch.equal(masters[full], full.detach())
    assert masters[full] is not full


def test_set_master_weights_refuses_what_is_not_a_parameter_of_the_optimizer() -> None:
    param = torch.nn.Parameter(torch.randn(3).bfloat16())
    optimizer = decoupled.AdamW([param])
    with pytest.raises(ValueError, match="not a parameter of this optimizer"):
        decoupled.set_master_weights(optimizer, {torch.zeros(3): torch.zeros(3)})
    with pytest.raises(ValueError, match="a value of shape \\(4,\\)"):
        decoupled.set_master_weights(optimizer, {param: torch.zeros(4)})
    with pytest.raises(TypeError, match="torch.optim.Optimizer"):
        decoupled.master_weights(object())


# ------------------------------------------------------------------------------------------------------------
# Checkpoints


@pytest.mark.parametrize("precision", ["exact", "stochastic"])
@pytest.mark.parametrize("family", ["adam", "sgd"])
def test_state_dict_round_trip_resumes_bit_for_bit(family: str, precision: str) -> None:
    """torch's load_state_dict casts state to the parameter's dtype; the remainders (bf16 bits, fp16's float32),
    the int64 stream and the float32 moments must come back as they were saved."""
    def build() -> tuple[list[torch.nn.Parameter], torch.optim.Optimizer]:
        params = [torch.nn.Parameter(t) for t in _initial(torch.bfloat16)[0] + _initial(torch.float16)[1]]
        cls = decoupled.AdamW if family == "adam" else decoupled.SGDW
        return params, cls(params, lr=BASE_LR[family], weight_decay=0.1, precision=precision)

    def steps(params, optimizer, which: range) -> None:
        for step in which:
            for index, p in enumerate(params):
                p.grad = _gradient(p.shape, step, index, p.dtype)
            optimizer.step()

    params, optimizer = build()
    steps(params, optimizer, range(6))
    buffer = io.BytesIO()
    torch.save({"params": [p.detach() for p in params], "optimizer": optimizer.state_dict()}, buffer)
    steps(params, optimizer, range(6, 12))

    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    resumed, resumed_optimizer = build()
    with torch.no_grad():
        for p, value in zip(resumed, saved["params"]):
            p.copy_(value)
    resumed_optimizer.load_state_dict(saved["optimizer"])
    steps(resumed, resumed_optimizer, range(6, 12))
    for index, (a, b) in enumerate(zip(resumed, params)):
        assert_bits_equal(a, b, f"parameter {index}")
        state, expected = resumed_optimizer.state[a], optimizer.state[b]
        assert state.keys() == expected.keys()
        for key in state:
            assert_bits_equal(state[key], expected[key], f"{key} of parameter {index}")


def test_a_nearest_checkpoint_resumes_under_exact() -> None:
    """A checkpoint of a bf16 run stepped in bf16 (torch's, or precision="nearest") loads into the default
    "exact": the moments become float32, the masters start at the parameters."""
    param = torch.nn.Parameter(torch.randn(20).bfloat16())
    torch_optimizer = torch.optim.AdamW([param], lr=1e-3)
    param.grad = torch.randn(20).bfloat16()
    torch_optimizer.step()
    assert torch_optimizer.state[param]["exp_avg"].dtype == torch.bfloat16
    optimizer = decoupled.AdamW([param], lr=1e-3, decay="lr")
    optimizer.load_state_dict(torch_optimizer.state_dict())
    optimizer.step()
    state = optimizer.state[param]
    assert state["exp_avg"].dtype == torch.float32 and state["remainder"].dtype == torch.bfloat16
    assert torch.isfinite(param).all()


def test_switching_precision_keeps_the_master() -> None:
    param = torch.nn.Parameter(torch.randn(30).bfloat16())
    optimizer = decoupled.AdamW([param], lr=1e-3, weight_decay=1e-3)
    for _ in range(3):
        param.grad = torch.randn(30).bfloat16()
        optimizer.step()
    optimizer.param_groups[0]["precision"] = "nearest"
    param.grad = torch.randn(30).bfloat16()
    optimizer.step()
    state = optimizer.state[param]
    assert "remainder" not in state and state["exp_avg"].dtype == torch.bfloat16


# ------------------------------------------------------------------------------------------------------------
# decouple()


@pytest.mark.parametrize("inner", ["Adam", "SGD", "RMSprop", "Adafactor"])
@pytest.mark.parametrize("dtype", LOW.values(), ids=LOW.keys())
def test_decouple_keeps_the_decay_of_low_precision_parameters(inner: str, dtype: torch.dtype) -> None:
    """decouple(X) on bf16/fp16: the decay (the part the inner optimizer does not do) is applied to the float32
    master, so that 1000 steps of 1e-5 per step move it as the float32 run does, bit for bit. (RMSprop gets an
    eps float16 can hold: torch's default 1e-8 rounds to 0 there, and 0 / 0 is NaN.)"""
    theta = torch.linspace(0.25, 2.0, 64).to(dtype)
    cls = decoupled.decouple(getattr(torch.optim, inner))
    param, reference = torch.nn.Parameter(theta.clone()), torch.nn.Parameter(theta.float())
    optimizer = cls([param], lr=1e-3, weight_decay=1e-5, **({"eps": 1e-3} if inner == "RMSprop" else {}))
    fp32 = decoupled.AdamW([reference], lr=1e-3, weight_decay=1e-5, fused=True)
    with native.forced():
        for _ in range(1000):
            param.grad, reference.grad = torch.zeros_like(param), torch.zeros_like(reference)
            optimizer.step()
            fp32.step()
    assert_bits_equal(decoupled.master_weights(optimizer)[param], reference.detach(), "master")
    assert "remainder" in optimizer.state[param]


def test_decouple_undoes_a_failed_step_bit_for_bit() -> None:
    class Failing(torch.optim.SGD):
        def step(self, closure=None):
            raise RuntimeError("inner step failed")

    param = torch.nn.Parameter(torch.randn(50).bfloat16())
    optimizer = decoupled.decouple(Failing)([param], lr=0.1, weight_decay=0.01)
    optimizer.state[param]["remainder"] = torch.randint(-(2**15), 2**15, (50,), dtype=torch.int16).view(torch.bfloat16)
    before = param.detach().clone(), optimizer.state[param]["remainder"].clone()
    param.grad = torch.randn(50).bfloat16()
    with pytest.raises(RuntimeError, match="inner step failed"):
        optimizer.step()
    assert_bits_equal(param, before[0], "parameter")
    assert_bits_equal(optimizer.state[param]["remainder"], before[1], "remainder")


# ------------------------------------------------------------------------------------------------------------
# Refusals


@pytest.mark.parametrize("make", [decoupled.AdamW, lambda p, **kw: decoupled.SGDW(p, lr=0.1, **kw), decoupled.decouple(torch.optim.Adam)])
def test_bad_precision_and_seed_are_named(make) -> None:
    params = [torch.nn.Parameter(torch.zeros(2).bfloat16())]
    with pytest.raises(ValueError, match="precision must be one of 'exact', 'stochastic', 'nearest', got 'bf16'"):
        make(params, precision="bf16")
    with pytest.raises(TypeError, match="precision must be one of .* got None"):
        make(params, precision=None)
    for seed, error in ((-1, ValueError), (2**64, ValueError), (True, TypeError), (1.5, TypeError)):
        with pytest.raises(error, match="seed must be an integer"):
            make(params, seed=seed)


def test_a_bad_group_precision_names_the_group() -> None:
    optimizer = decoupled.AdamW([torch.nn.Parameter(torch.zeros(2))])
    with pytest.raises(ValueError, match="param group 1: precision must be one of"):
        optimizer.add_param_group({"params": [torch.nn.Parameter(torch.zeros(2))], "precision": "half"})


@pytest.mark.parametrize("flag", ["differentiable", "capturable"])
def test_differentiable_and_capturable_steps_are_refused_on_low_precision_masters(flag: str) -> None:
    param = torch.nn.Parameter(torch.zeros(2).bfloat16())
    with pytest.raises(ValueError, match=f"{flag}=True is not supported with precision='exact'"):
        decoupled.AdamW([param], **{flag: True})
    decoupled.AdamW([param], precision="nearest", **{flag: True})  # the step in bf16 takes them
    decoupled.AdamW([torch.nn.Parameter(torch.zeros(2))], **{flag: True})  # float32: no master to keep


def test_a_corrupted_remainder_is_named() -> None:
    param = torch.nn.Parameter(torch.zeros(4).bfloat16())
    optimizer = decoupled.AdamW([param])
    param.grad = torch.zeros(4).bfloat16()
    optimizer.step()
    optimizer.state[param]["remainder"] = optimizer.state[param]["remainder"].float()  # as a casting loader might
    with pytest.raises(ValueError, match="state\\['remainder'\\] of a torch.bfloat16 parameter .* expected torch.bfloat16"):
        optimizer.step()
