"""The table of optimizer cases that drives the tests, and a deterministic problem to run them on.

Each case names how to build the package's optimizer, the matching reference, and its capabilities as fields
(not skip lists keyed by name).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

import decoupled
from decoupled import DECAY_CONVENTIONS
from device import TEST_DEVICE
from reference import ReferenceAdam, ReferenceSGD

DECAYS = DECAY_CONVENTIONS  # test_conventions pins the tuple itself
DECOUPLED_DECAYS = tuple(decay for decay in DECAYS if decay != "l2")
PATHS = {
    "default": {},
    "forloop": {"foreach": False, "fused": False},
    "foreach": {"foreach": True},
    "fused": {"fused": True},
}


@dataclass(frozen=True)
class OptimizerCase:
    name: str
    make: Callable[..., torch.optim.Optimizer]  # make(param_groups, decay=..., **path) -> optimizer
    make_reference: Callable[[], Any]
    state_keys: tuple[str, ...]  # the state tensors to compare with the reference
    maximize: bool = False  # then the gradients are of -f, so that the run stays bounded
    scale_spread: float = 1.0  # gradient scales are 10 ** (spread * (i - 3)): Adam takes any, SGD needs lr*scale < 2
    base_lr: float = 0.02  # the lr of build_groups' group 0 (alpha); group 1 takes GROUP_HYPER's share of it
    decays: tuple[str, ...] = DECAY_CONVENTIONS  # the conventions it takes (cautious decay refuses "l2")


def _adamw(**options):
    return lambda groups, **kw: decoupled.AdamW(groups, **options, **kw)


def _sgdw(**options):
    return lambda groups, **kw: decoupled.SGDW(groups, lr=0.05, **options, **kw)


OPTIMIZER_CASES = [
    OptimizerCase("AdamW", _adamw(), lambda: ReferenceAdam(), ("step", "exp_avg", "exp_avg_sq")),
    OptimizerCase(
        "AdamW-amsgrad-maximize",
        _adamw(betas=(0.8, 0.99), eps=1e-6, amsgrad=True, maximize=True),
        lambda: ReferenceAdam(betas=(0.8, 0.99), eps=1e-6, amsgrad=True, maximize=True),
        ("step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"),
        maximize=True,
    ),
    OptimizerCase(
        "SGDW",
        _sgdw(momentum=0.9),
        lambda: ReferenceSGD(momentum=0.9),
        ("momentum_buffer",),
        scale_spread=1 / 3,
        base_lr=0.05,
    ),
    OptimizerCase(
        "SGDW-nesterov-maximize",
        _sgdw(momentum=0.8, nesterov=True, maximize=True),
        lambda: ReferenceSGD(momentum=0.8, nesterov=True, maximize=True),
        ("momentum_buffer",),
        maximize=True,
        scale_spread=1 / 3,
        base_lr=0.05,
    ),
    OptimizerCase(
        "SGDW-no-momentum", _sgdw(momentum=0.0), lambda: ReferenceSGD(momentum=0.0), (), scale_spread=1 / 3, base_lr=0.05
    ),
    OptimizerCase(
        "AdamW-cautious",
        _adamw(cautious=True),
        lambda: ReferenceAdam(cautious=True),
        ("step", "exp_avg", "exp_avg_sq"),
        decays=DECOUPLED_DECAYS,
    ),
    OptimizerCase(
        "AdamW-cautious-amsgrad-maximize",
        _adamw(betas=(0.8, 0.99), eps=1e-6, amsgrad=True, maximize=True, cautious=True),
        lambda: ReferenceAdam(betas=(0.8, 0.99), eps=1e-6, amsgrad=True, maximize=True, cautious=True),
        ("step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"),
        maximize=True,
        decays=DECOUPLED_DECAYS,
    ),
    OptimizerCase(
        "SGDW-cautious",
        _sgdw(momentum=0.9, cautious=True),
        lambda: ReferenceSGD(momentum=0.9, cautious=True),
        ("momentum_buffer",),
        scale_spread=1 / 3,
        base_lr=0.05,
        decays=DECOUPLED_DECAYS,
    ),
    OptimizerCase(
        "SGDW-cautious-nesterov-maximize",
        _sgdw(momentum=0.8, nesterov=True, maximize=True, cautious=True),
        lambda: ReferenceSGD(momentum=0.8, nesterov=True, maximize=True, cautious=True),
        ("momentum_buffer",),
        maximize=True,
        scale_spread=1 / 3,
        base_lr=0.05,
        decays=DECOUPLED_DECAYS,
    ),
    OptimizerCase(
        "SGDW-cautious-no-momentum",
        _sgdw(momentum=0.0, cautious=True),
        lambda: ReferenceSGD(momentum=0.0, cautious=True),
        (),
        scale_spread=1 / 3,
        base_lr=0.05,
        decays=DECOUPLED_DECAYS,
    ),
]

# Parameter specs: (group, shape, complex). Group 0 and 1 differ in lr and weight decay.
PARAM_SPECS = [
    (0, (5, 3), False),
    (0, (7,), False),
    (0, (0,), False),  # an empty tensor
    (1, (4, 4), False),
    (1, (3,), True),  # a complex parameter
    (1, (2, 0, 3), False),  # another empty one
    (1, (6,), False),  # the frozen-then-unfrozen parameter
]
FROZEN_INDEX = 6
FROZEN_UNTIL = 12  # its gradient is None for the first steps
SOMETIMES_NONE_INDEX = 1  # its gradient is None every third step
GROUP_HYPER = [
    {"lr_scale": 1.0, "weight_decay": 0.05},
    {"lr_scale": 0.3, "weight_decay": 0.2},
]


def initial_values(seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    values = []
    for _, shape, is_complex in PARAM_SPECS:
        value = torch.randn(*shape, 2 if is_complex else 1, generator=generator, dtype=torch.float64)
        values.append(torch.view_as_complex(value) if is_complex else value.squeeze(-1))
    return values


def gradient(
    index: int, theta: torch.Tensor, step: int, *, sign: float = 1.0, spread: float = 1.0
) -> torch.Tensor | None:
    """A badly scaled, noisy quadratic's gradient sign * scale_i * (theta - 1 + noise), or None (see the specs)."""
    if index == FROZEN_INDEX and step < FROZEN_UNTIL:
        return None
    if index == SOMETIMES_NONE_INDEX and step % 3 == 2:
        return None
    generator = torch.Generator().manual_seed(1000 * step + index)
    real_shape = tuple(theta.shape) + ((2,) if theta.is_complex() else ())
    noise = torch.randn(real_shape, generator=generator, dtype=torch.float64)
    scale = sign * 10.0 ** (spread * (index - 3))  # 1e-3 ... 1e3 across parameters for spread 1
    real_theta = (torch.view_as_real(theta).double() if theta.is_complex() else theta.double()).cpu()
    grad = scale * (real_theta - 1.0) + scale * noise
    grad = grad.to(device=theta.device, dtype=torch.float64 if theta.dtype in (torch.float64, torch.complex128) else torch.float32)
    return torch.view_as_complex(grad) if theta.is_complex() else grad


def build_groups(values: list[torch.Tensor], dtype: torch.dtype, base_lr: float) -> tuple[list, list[torch.Tensor]]:
    params = []
    for value in values:
        if value.is_complex():
            target = torch.complex128 if dtype == torch.float64 else torch.complex64
        else:
            target = dtype
        params.append(torch.nn.Parameter(value.clone().to(device=TEST_DEVICE, dtype=target)))
    groups = []
    for group_index, hyper in enumerate(GROUP_HYPER):
        members = [p for p, (g, _, _) in zip(params, PARAM_SPECS) if g == group_index]
        groups.append({"params": members, "lr": base_lr * hyper["lr_scale"], "weight_decay": hyper["weight_decay"]})
    return groups, params


# The integration tests' (amp, compile) model and data.
def make_model(dtype: torch.dtype = torch.float32) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3)).to(dtype)


def batch(step: int, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(step)
    return torch.randn(16, 6, generator=generator).to(dtype), torch.randn(16, 3, generator=generator).to(dtype)


def schedule(optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LambdaLR:
    """lr_t = lr / (1 + t): a new lr at every step."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 / (1 + step))


def train_eagerly(
    make_optimizer: Callable[[Any], torch.optim.Optimizer], steps: int, dtype: torch.dtype = torch.float32
) -> tuple[nn.Module, torch.optim.Optimizer]:
    """make_model(dtype) trained eagerly on batch(step, dtype) for ``steps`` steps under schedule()."""
    model = make_model(dtype)
    optimizer = make_optimizer(model.parameters())
    scheduler = schedule(optimizer)
    for step in range(steps):
        x, y = batch(step, dtype)
        nn.functional.mse_loss(model(x), y).backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
    return model, optimizer


# Whole-optimizer cases for the integration tests (amp, compile): AdamW and SGDW on every kernel path, and
# decouple()-made optimizers. Tests add the extra cases they need to a copy.
INTEGRATION_CASES: dict[str, Callable[[Any], torch.optim.Optimizer]] = {}
for _path, _options in PATHS.items():
    INTEGRATION_CASES[f"AdamW-{_path}"] = lambda p, o=_options: decoupled.AdamW(p, lr=1e-2, weight_decay=0.05, **o)
    INTEGRATION_CASES[f"SGDW-{_path}"] = lambda p, o=_options: decoupled.SGDW(
        p, lr=0.1, momentum=0.9, weight_decay=0.05, **o
    )
INTEGRATION_CASES["decouple(Adam)"] = lambda p: decoupled.decouple(torch.optim.Adam)(p, lr=1e-2, weight_decay=0.05)
# Cautious decay on the default path (the native kernels on the CPU) and corrected decay.
INTEGRATION_CASES["AdamW-cautious"] = lambda p: decoupled.AdamW(p, lr=1e-2, weight_decay=0.05, cautious=True)
INTEGRATION_CASES["SGDW-cautious-corrected"] = lambda p: decoupled.SGDW(
    p, lr=0.1, momentum=0.9, weight_decay=0.05, decay="corrected", cautious=True
)
