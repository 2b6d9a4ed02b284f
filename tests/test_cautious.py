"""Cautious weight decay (Chen et al. 2025) and corrected decay (Defazio et al. 2025) beyond test_parity's table.

test_parity runs AdamW/SGDW(cautious=True) with every decoupled convention on every path against the float64
reference of tests/reference.py, and test_kernel_paths every path against the for-loop one. Here: the mask on
its own (exactly, on every path and dtype), parameter groups that mix cautious and plain decay and different
conventions, bfloat16, state_dict round trips, and the refusals.
"""

from __future__ import annotations

import contextlib
import copy
import io
import math

import pytest
import torch
from reference import ReferenceAdam, ReferenceSGD, cosine_warm_restarts

import decoupled
from decoupled.kernels import native

# name -> (optimizer kwargs, context): every kernel path, the native Adam kernel and torch's fused one included.
PATHS = {
    "default": ({}, contextlib.nullcontext),
    "forloop": ({"foreach": False, "fused": False}, contextlib.nullcontext),
    "foreach": ({"foreach": True}, contextlib.nullcontext),
    "fused": ({"fused": True}, contextlib.nullcontext),
    "fused-torch": ({"fused": True}, native.bypassed),  # the path CUDA tensors take (no native kernel)
}
DTYPES = {"fp32": torch.float32, "fp64": torch.float64, "bf16": torch.bfloat16}


def _theta(dtype: torch.dtype) -> torch.Tensor:
    values = torch.arange(-50, 51, dtype=torch.float64) / 25
    return values[values != 0].to(dtype)  # 50 negative and 50 positive values in [-2, 2], none of them 0


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("family", ["AdamW", "SGDW"])
def test_the_mask_spares_exactly_the_coordinates_whose_update_opposes_theta(family, path, dtype):
    """One step that isolates the decay: with decay="constant" theta_1 = (1 - 0.1 * mask) theta_0 - step, where
    the step is negligible (AdamW: lr=0, its u_t is still mhat / (sqrt(vhat) + eps); SGDW: lr=1e-30, below
    every ulp). The gradient's sign pattern makes u_t agree with theta on every other coordinate."""
    kwargs, context = PATHS[path]
    theta = _theta(dtype)
    param = torch.nn.Parameter(theta.clone())
    grad = torch.ones_like(theta)
    grad[::2] = -1  # u_t has the sign of g (AdamW: m_1 = (1 - beta1) g; SGDW: m_1 = lr g)
    lr = 0.0 if family == "AdamW" else 1e-30
    make = decoupled.AdamW if family == "AdamW" else decoupled.SGDW
    # bf16: the kernels that step in bf16 (precision="exact" is bit-identical on every path: test_precision)
    nearest = {"precision": "nearest"} if dtype == torch.bfloat16 else {}
    optimizer = make([param], lr=lr, weight_decay=0.1, decay="constant", cautious=True, **kwargs, **nearest)
    param.grad = grad
    with context():
        optimizer.step()
    same_side = (grad * theta) >= 0
    compute = torch.float64 if dtype == torch.float64 else torch.float32  # the kernels compute bf16 in float32
    expected = torch.where(same_side, (theta.to(compute) * torch.tensor(1 - 0.1, dtype=compute)).to(dtype), theta)
    assert 40 < same_side.sum() < 60
    assert torch.equal(param.detach(), expected)


@pytest.mark.parametrize("family", ["AdamW", "SGDW"])
def test_cautious_decay_changes_the_run(family):
    """A sanity check of the tests themselves: the mask is not a no-op on the problems they use."""
    runs = []
    for cautious in (False, True):
        torch.manual_seed(0)
        param = torch.nn.Parameter(torch.randn(100, dtype=torch.float64))
        make = decoupled.AdamW if family == "AdamW" else decoupled.SGDW
        optimizer = make([param], lr=0.05, weight_decay=0.1, cautious=cautious)
        for _ in range(10):
            param.grad = torch.randn(100, dtype=torch.float64)
            optimizer.step()
        runs.append(param.detach().clone())
    assert (runs[0] - runs[1]).abs().max() > 1e-3


STEPS = 40


def _mixed_run(family: str, dtype: torch.dtype, path: dict, context):
    """Three groups: cautious "decoupled", plain "corrected", cautious "corrected" at another lr; a warm-restart
    schedule; parameter 1's gradient is None every third step. Returns the run and the float64 reference."""
    generator = torch.Generator().manual_seed(11)
    values = [torch.randn(n, generator=generator, dtype=torch.float64) for n in (30, 17, 12, 9)]
    params = [torch.nn.Parameter(v.clone().to(dtype)) for v in values]
    groups = [
        {"params": [params[0], params[1]], "cautious": True, "decay": "decoupled", "weight_decay": 0.05},
        {"params": [params[2]], "cautious": False, "decay": "corrected", "weight_decay": 0.2},
        {"params": [params[3]], "cautious": True, "decay": "corrected", "weight_decay": 0.1, "lr": 0.5 * 0.02},
    ]
    if family == "AdamW":
        optimizer = decoupled.AdamW(groups, lr=0.02, **path)
        references = [ReferenceAdam(cautious=g["cautious"]) for g in groups]
    else:
        optimizer = decoupled.SGDW(groups, lr=0.02, momentum=0.9, nesterov=True, **path)
        references = [ReferenceSGD(momentum=0.9, nesterov=True, cautious=g["cautious"]) for g in groups]
    alphas = [g["lr"] for g in optimizer.param_groups]
    owner = [0, 0, 1, 2]
    expected = [v.clone() for v in values]
    with context():
        for step in range(STEPS):
            eta = cosine_warm_restarts(step, 5, 2.0, 2.0)
            for group, alpha in zip(optimizer.param_groups, alphas):
                group["lr"] = alpha * eta
            for index, param in enumerate(params):
                if index == 1 and step % 3 == 2:
                    param.grad = None
                    continue
                noise = torch.randn(param.shape, generator=generator, dtype=torch.float64)
                grad = expected[index] - 1.0 + noise
                param.grad = grad.to(dtype)
                group = optimizer.param_groups[owner[index]]
                expected[index] = references[owner[index]].step(
                    index, expected[index], param.grad.double(), lr=group["lr"], alpha=alphas[owner[index]],
                    weight_decay=group["weight_decay"], decay=group["decay"],
                )  # fmt: skip
            optimizer.step()
    return optimizer, params, references, owner, expected


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("family", ["AdamW", "SGDW"])
def test_groups_mixing_cautious_and_plain_and_conventions_match_the_reference(family, path, dtype):
    kwargs, context = PATHS[path]
    optimizer, params, references, owner, expected = _mixed_run(family, dtype, kwargs, context)
    tolerance = {"rtol": 1e-9, "atol": 1e-11} if dtype == torch.float64 else {"rtol": 2e-4, "atol": 2e-5}
    keys = ("exp_avg", "exp_avg_sq") if family == "AdamW" else ("momentum_buffer",)
    for index, param in enumerate(params):
        torch.testing.assert_close(param.detach().double(), expected[index], **tolerance)
        reference_state = references[owner[index]].state_tensors(index)
        for key in keys:
            torch.testing.assert_close(optimizer.state[param][key].double(), reference_state[key], **tolerance)
        if family == "AdamW":
            assert optimizer.state[param]["step"].item() == reference_state["step"].item()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("family", ["AdamW", "SGDW"])
def test_reduced_precision_cautious_runs_stay_near_the_float64_reference(family, path, dtype):
    """bf16 rounds every stored value to 8 bits (and a mask decision near u_t = 0 may go either way), so the
    bound is loose: within 5% of the parameters' scale after 40 steps; the fp32 run is within 0.02%. (fp16
    AdamW on the CPU takes torch's fused kernel after a mask pass, not the native kernel.)"""
    kwargs, context = PATHS[path]
    _, params, _, _, expected = _mixed_run(family, dtype, kwargs, context)
    for param, reference in zip(params, expected):
        assert param.dtype == dtype
        error = (param.detach().double() - reference).abs().max().item() / reference.abs().max().item()
        assert error < 0.05, error


@pytest.mark.parametrize("path", ["default", "forloop", "foreach", "fused"])
@pytest.mark.parametrize("family", ["AdamW", "SGDW"])
def test_state_dict_round_trip_resumes_bit_identically(family, path):
    kwargs, _ = PATHS[path]
    make = decoupled.AdamW if family == "AdamW" else (lambda p, **kw: decoupled.SGDW(p, lr=0.05, **kw))
    generator = torch.Generator().manual_seed(3)
    grads = [torch.randn(2, 64, generator=generator) for _ in range(12)]

    def build():
        model = torch.nn.Linear(64, 2, bias=False)
        torch.nn.init.normal_(model.weight, generator=torch.Generator().manual_seed(4))
        groups = [{"params": [model.weight], "cautious": True, "decay": "corrected", "weight_decay": 0.1}]
        optimizer = make(groups, **kwargs)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=12)
        return model, optimizer, scheduler

    def steps(model, optimizer, scheduler, grads):
        for grad in grads:
            model.weight.grad = grad.clone()
            optimizer.step()
            scheduler.step()

    model, optimizer, scheduler = build()
    steps(model, optimizer, scheduler, grads)
    uninterrupted = model.weight.detach().clone()

    model, optimizer, scheduler = build()
    steps(model, optimizer, scheduler, grads[:5])
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "optim": optimizer.state_dict(), "sched": scheduler.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer)
    model, optimizer, scheduler = build()
    optimizer.param_groups[0]["cautious"] = False  # the checkpoint's groups must bring cautious=True back
    model.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optim"])
    scheduler.load_state_dict(saved["sched"])
    assert optimizer.param_groups[0]["cautious"] is True and optimizer.param_groups[0]["decay"] == "corrected"
    steps(model, optimizer, scheduler, grads[5:])
    assert torch.equal(model.weight.detach(), uninterrupted)


def test_a_checkpoint_without_the_cautious_key_loads_with_the_optimizers_default():
    """Checkpoints of this package from before cautious decay (or of torch.optim.AdamW) have no such key."""
    param = torch.nn.Parameter(torch.ones(3))
    param.grad = torch.ones(3)
    old = decoupled.AdamW([param], weight_decay=0.1)
    old.step()
    state = copy.deepcopy(old.state_dict())
    for group in state["param_groups"]:
        del group["cautious"]
    new = decoupled.AdamW([param], weight_decay=0.1)
    new.load_state_dict(state)
    assert new.param_groups[0]["cautious"] is False
    new.step()


def test_effective_decay_reports_the_factor_of_the_coordinates_it_decays():
    optimizer = decoupled.SGDW(torch.nn.Linear(2, 2).parameters(), lr=0.1, weight_decay=1e-3, cautious=True)
    assert decoupled.effective_decay(optimizer) == [pytest.approx(1e-3)]


L2_REFUSAL = (
    "cautious=True masks a decoupled weight decay (theta -= factor * 1[u theta >= 0] * theta); decay='l2' adds "
    "weight_decay * theta to the gradient instead, where there is no decay to mask: use a decoupled convention "
    "('decoupled', 'lr', 'constant', 'corrected') or cautious=False"
)


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda p: decoupled.AdamW(p, decay="l2", cautious=True), ValueError, L2_REFUSAL),
        (lambda p: decoupled.SGDW(p, lr=0.1, decay="l2", cautious=True), ValueError, L2_REFUSAL),
        (lambda p: decoupled.AdamW([{"params": p, "decay": "l2"}], cautious=True), ValueError,
         f"param group 0: {L2_REFUSAL}"),
        (lambda p: decoupled.SGDW([{"params": p, "cautious": True}], lr=0.1, decay="l2"), ValueError,
         f"param group 0: {L2_REFUSAL}"),
        (lambda p: decoupled.AdamW(p, cautious="yes"), TypeError, "cautious must be True or False, got 'yes'"),
        (lambda p: decoupled.SGDW(p, lr=0.1, cautious=None), TypeError, "cautious must be True or False, got None"),
        (lambda p: decoupled.AdamW(p, decay="corrected", lr=0.0, weight_decay=0.1), ValueError,
         "decay='corrected' scales weight decay by eta_t = lr / base_lr, but base_lr is 0 (the group was built "
         "with lr=0); build it with its peak lr (a scheduler may start from 0), or use decay='lr' or 'constant'"),
    ],
)  # fmt: skip
def test_refusals_name_the_reason(call, error, message):
    with pytest.raises(error) as raised:
        call([torch.nn.Parameter(torch.zeros(2))])
    assert str(raised.value) == message


def test_a_cautious_l2_group_added_later_is_refused_and_not_kept():
    optimizer = decoupled.AdamW([torch.nn.Parameter(torch.zeros(2))], cautious=True)
    with pytest.raises(ValueError, match=r"^param group 1: cautious=True masks a decoupled weight decay"):
        optimizer.add_param_group({"params": [torch.nn.Parameter(torch.zeros(2))], "decay": "l2"})
    assert len(optimizer.param_groups) == 1


@pytest.mark.parametrize("family", ["adam", "sgd"])
def test_the_kernels_refuse_a_cautious_l2_step(family):
    """A group edited after construction (group["decay"] = "l2") reaches the dispatcher, which refuses it too."""
    param = torch.nn.Parameter(torch.zeros(2))
    param.grad = torch.ones(2)
    optimizer = (
        decoupled.AdamW([param], cautious=True) if family == "adam" else decoupled.SGDW([param], lr=0.1, cautious=True)
    )
    optimizer.param_groups[0]["decay"] = "l2"
    with pytest.raises(ValueError, match="cautious weight decay masks a decoupled decay"):
        optimizer.step()


def test_corrected_decay_is_the_square_of_the_schedule_in_a_run():
    """decay="corrected": after one step at eta_t = 0.5 with lr tiny, theta has decayed by 0.25 * lambda."""
    param = torch.nn.Parameter(torch.ones(4, dtype=torch.float64))
    optimizer = decoupled.SGDW([param], lr=1.0, momentum=0.0, weight_decay=0.2, decay="corrected")
    optimizer.param_groups[0]["lr"] = 0.5
    param.grad = torch.zeros(4, dtype=torch.float64)
    optimizer.step()
    assert torch.allclose(param.detach(), torch.full((4,), 1 - 0.25 * 0.2, dtype=torch.float64))
    assert math.isclose(decoupled.effective_decay(optimizer)[0], 0.25 * 0.2)


@pytest.mark.parametrize("step_dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_native_adam_kernel_counts_float64_steps_too(step_dtype):
    """Step counts loaded from a checkpoint made under torch.set_default_dtype(torch.float64) are float64
    scalars; the native kernel increments those in place as well (and the for-loop path agrees)."""
    runs = []
    for path in ({}, {"foreach": False, "fused": False}):
        param = torch.nn.Parameter(torch.linspace(-1, 1, 64))
        optimizer = decoupled.AdamW([param], lr=0.01, weight_decay=0.1, cautious=True, **path)
        for step in range(6):
            param.grad = torch.sin(torch.arange(64.0) + step)
            optimizer.step()
            if step == 0:
                optimizer.state[param]["step"] = optimizer.state[param]["step"].to(step_dtype)
        assert optimizer.state[param]["step"].dtype == step_dtype and optimizer.state[param]["step"].item() == 6
        runs.append(param.detach().clone())
    torch.testing.assert_close(runs[0], runs[1], rtol=1e-6, atol=1e-7)
