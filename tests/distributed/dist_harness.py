"""Shared pieces of the distributed tests: a 2-process gloo launcher, the model, the data, the optimizer cases.

Everything here runs the same way in one process (the reference: the full batch) and in each rank of a
spawned group (its half of the batch), so that the tests can compare the two to float64 round-off.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import Tensor, nn
from torch.distributed.fsdp import fully_shard

import decoupled
from cases import PATHS  # tests/cases.py (conftest.py puts tests/ on sys.path)

WORLD_SIZE = 2
STEPS = 5
BATCH = 8  # global batch: each of the 2 ranks takes 4 rows
LR = 0.05
SGD_LR = 0.2
WEIGHT_DECAY = 0.02  # paper units: the per-step decay at eta_t = 1

# --------------------------------------------------------------------------------------------- launching


def run(task: Callable[..., Any], *args: Any, world_size: int = WORLD_SIZE, timeout: float = 150.0) -> Any:
    """Run ``task(rank, world_size, *args)`` in ``world_size`` spawned processes joined in a gloo group on the
    loopback interface; return what rank 0 returned. A failure in any rank is raised here with its traceback."""
    with tempfile.TemporaryDirectory() as tmp:
        context = mp.start_processes(
            _entry, args=(world_size, tmp, task, args), nprocs=world_size, join=False, start_method="spawn"
        )
        deadline = time.monotonic() + timeout
        while not context.join(timeout=1.0):
            if time.monotonic() > deadline:
                for process in context.processes:
                    if process.is_alive():
                        process.kill()
                raise TimeoutError(f"{task.__name__} did not finish within {timeout:.0f} s")
        return torch.load(Path(tmp) / "result.pt", weights_only=False)


def _entry(rank: int, world_size: int, tmp: str, task: Callable[..., Any], args: tuple) -> None:
    os.environ["GLOO_SOCKET_IFNAME"] = "lo0" if sys.platform == "darwin" else "lo"  # loopback only
    torch.set_num_threads(1)  # 2 processes on a 2-core machine
    # A file store needs no port: nothing to race for with other test runs on the machine.
    dist.init_process_group(
        "gloo", init_method=f"file://{tmp}/store", rank=rank, world_size=world_size, timeout=timedelta(seconds=90)
    )
    try:
        result = task(rank, world_size, *args)
        if rank == 0:
            torch.save(result, Path(tmp) / "result.pt")
        dist.barrier()
    finally:
        dist.destroy_process_group()


# ------------------------------------------------------------------------------------------- model, data


class Net(nn.Module):
    """A tiny MLP with the awkward parts: a frozen layer, a parameter the forward never uses (its grad stays
    None), and tensors of 3 and 1 elements that split unevenly (3 = 2 + 1, 1 = 1 + 0) over 2 FSDP2 shards."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(6, 8)
        self.frozen = nn.Linear(8, 8)
        self.frozen.requires_grad_(False)
        self.out = nn.Linear(8, 3)
        self.scale = nn.Parameter(torch.ones(1))
        self.unused = nn.Parameter(torch.randn(5))

    def forward(self, x: Tensor) -> Tensor:
        h = torch.tanh(self.inp(x))
        h = h + 0.5 * torch.tanh(self.frozen(h))
        return self.scale * self.out(h)


def make_model(seed: int = 0, dtype: torch.dtype = torch.float64) -> Net:
    torch.manual_seed(seed)
    return Net().to(dtype)


def shard(model: Net) -> Net:
    """FSDP2: the two trained layers, then the root (the frozen layer and the loose parameters)."""
    fully_shard(model.inp)
    fully_shard(model.out)
    fully_shard(model)
    return model


def param_groups(model: nn.Module, lr: float) -> list[dict[str, Any]]:
    """Two groups: weights (decayed; the frozen layer and the unused parameter too) and the rest (not decayed,
    half the lr), so that per-group lr, base_lr and weight decay all matter."""
    decayed = [model.inp.weight, model.out.weight, model.frozen.weight, model.frozen.bias, model.unused]
    rest = [model.inp.bias, model.out.bias, model.scale]
    return [{"params": decayed}, {"params": rest, "weight_decay": 0.0, "lr": lr / 2}]


def batch(step: int, rank: int = 0, world_size: int = 1, dtype: torch.dtype = torch.float64) -> tuple[Tensor, Tensor]:
    """Step ``step``'s global batch, or rank ``rank``'s equal share of it."""
    generator = torch.Generator().manual_seed(1000 + step)
    x = torch.randn(BATCH, 6, generator=generator, dtype=dtype)
    y = torch.randn(BATCH, 3, generator=generator, dtype=dtype)
    share = BATCH // world_size
    return x[rank * share : (rank + 1) * share], y[rank * share : (rank + 1) * share]


def schedule(optimizer: torch.optim.Optimizer) -> decoupled.CosineWarmRestarts:
    """SGDR stepped every batch: periods of 2 then 4 steps, so the lr falls, restarts and falls again."""
    return decoupled.CosineWarmRestarts(optimizer, first_period=1, steps_per_epoch=2, period_mult=2, eta_min=0.1)


def train(model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, steps: range, rank: int = 0,
          world_size: int = 1) -> None:  # fmt: skip
    dtype = next(p.dtype for p in model.parameters())
    for step in steps:
        x, y = batch(step, rank, world_size, dtype)
        nn.functional.mse_loss(model(x), y).backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)


# ------------------------------------------------------------------------------------------- optimizer cases

# One table drives every distributed test: name -> factory(param groups). Every kernel path of both families,
# the decay conventions, and optimizers made by decouple().
DecoupledAdam = decoupled.decouple(torch.optim.Adam)
DecoupledSGD = decoupled.decouple(torch.optim.SGD)
DecoupledRMSprop = decoupled.decouple(torch.optim.RMSprop)


def _adamw(decay: str = "decoupled", **kw: Any) -> Callable[[Any], torch.optim.Optimizer]:
    return lambda groups: decoupled.AdamW(groups, lr=LR, weight_decay=WEIGHT_DECAY, decay=decay, **kw)


def _sgdw(decay: str = "decoupled", **kw: Any) -> Callable[[Any], torch.optim.Optimizer]:
    kw.setdefault("momentum", 0.9)
    return lambda groups: decoupled.SGDW(groups, lr=SGD_LR, weight_decay=WEIGHT_DECAY, decay=decay, **kw)


CASES: dict[str, Callable[[Any], torch.optim.Optimizer]] = {}
for _path, _kw in PATHS.items():
    CASES[f"AdamW-{_path}"] = _adamw(**_kw)
    CASES[f"SGDW-{_path}"] = _sgdw(**_kw)
for _decay in ("lr", "l2"):  # "decoupled" is above, on every path
    for _path in ("forloop", "fused"):
        CASES[f"AdamW-{_path}-{_decay}"] = _adamw(_decay, **PATHS[_path])
        CASES[f"SGDW-{_path}-{_decay}"] = _sgdw(_decay, **PATHS[_path])
CASES["AdamW-fused-amsgrad"] = _adamw(amsgrad=True, fused=True)
CASES["SGDW-fused-nesterov"] = _sgdw(nesterov=True, fused=True)
CASES["SGDW-fused-no-momentum"] = _sgdw(momentum=0.0, fused=True)
CASES["decouple(Adam)"] = lambda groups: DecoupledAdam(groups, lr=LR, weight_decay=WEIGHT_DECAY)
CASES["decouple(Adam)-lr"] = lambda groups: DecoupledAdam(groups, lr=LR, weight_decay=WEIGHT_DECAY, decay="lr")
CASES["decouple(SGD)"] = lambda groups: DecoupledSGD(groups, lr=SGD_LR, momentum=0.9, weight_decay=WEIGHT_DECAY)
CASES["decouple(RMSprop)-l2"] = lambda groups: DecoupledRMSprop(
    groups, lr=LR / 5, weight_decay=WEIGHT_DECAY, decay="l2"
)


def case_lr(case: str) -> float:
    return SGD_LR if "SGD" in case else LR


def build(case: str, model: nn.Module) -> tuple[torch.optim.Optimizer, Any]:
    optimizer = CASES[case](param_groups(model, case_lr(case)))
    return optimizer, schedule(optimizer)


# ------------------------------------------------------------------------------------------- results


def full(tensor: Tensor) -> Tensor:
    """A plain CPU copy of ``tensor``, gathered first if it is a DTensor."""
    if hasattr(tensor, "full_tensor"):
        tensor = tensor.full_tensor()
    return tensor.detach().clone()


def snapshot(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Tensor]:
    """Every parameter and every optimizer state tensor, by name ("out.weight", "out.weight/exp_avg", ...)."""
    result = {}
    for name, param in model.named_parameters():
        result[name] = full(param)
        for key, value in optimizer.state.get(param, {}).items():
            if isinstance(value, Tensor):
                result[f"{name}/{key}"] = full(value)
    return result


def reference(case: str, steps: range = range(STEPS)) -> dict[str, Tensor]:
    """One process, the full batch: what the distributed runs must reproduce."""
    model = make_model()
    optimizer, scheduler = build(case, model)
    train(model, optimizer, scheduler, steps)
    return snapshot(model, optimizer)


def assert_frozen_and_unused_untouched(result: dict[str, Tensor]) -> None:
    """The frozen layer and the unused parameter end as they began: no gradient, so no decay either."""
    initial = dict(make_model().named_parameters())
    for name in ("frozen.weight", "frozen.bias", "unused"):
        assert torch.equal(result[name], initial[name].detach()), name


def assert_same(actual: dict[str, Tensor], expected: dict[str, Tensor], *, exact: bool = False) -> None:
    assert sorted(actual) == sorted(expected)
    for name in expected:
        # float64 round-off: the distributed gradient is an average of per-rank means, summed in another order.
        tolerance = dict(rtol=0.0, atol=0.0) if exact else dict(rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(actual[name], expected[name], **tolerance, msg=lambda m: f"{name}: {m}")
