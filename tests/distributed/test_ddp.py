"""DistributedDataParallel: 2 gloo processes on CPU train like one process on the full batch (float64).

Every optimizer case (every kernel path of AdamW and SGDW, the decay conventions, decouple()-made optimizers)
runs 5 steps under an SGDR schedule, in one spawned group for all cases; the parameters and every optimizer
state tensor must match the single-process run to float64 round-off, and the two replicas must be identical.
ZeroRedundancyOptimizer (each rank steps its part of the parameters, then broadcasts it) wraps them too.
"""

from __future__ import annotations

import pytest
import torch.distributed as dist
from dist_harness import (
    CASES, LR, SGD_LR, STEPS, WEIGHT_DECAY, assert_frozen_and_unused_untouched, assert_same, build, make_model,
    param_groups, reference, run, schedule, snapshot, train,
)  # fmt: skip
from torch.nn.parallel import DistributedDataParallel

import decoupled

ZERO_CASES = {  # the reference case each ZeroRedundancyOptimizer(optimizer_class=...) must reproduce
    "AdamW-default": (decoupled.AdamW, dict(lr=LR, weight_decay=WEIGHT_DECAY)),
    "SGDW-default": (decoupled.SGDW, dict(lr=SGD_LR, momentum=0.9, weight_decay=WEIGHT_DECAY)),
}
# Also run with gradient_as_bucket_view=True: the gradients are then views into DDP's flat buckets, and the
# native SGD kernel and torch's fused AdamW read them through data pointers and strides.
BUCKET_VIEW_CASES = ["AdamW-fused", "SGDW-fused"]


def ddp_task(rank: int, world_size: int, cases: list[str]) -> dict:
    results = {}
    runs = [(case, False) for case in cases] + [(case, True) for case in BUCKET_VIEW_CASES]
    for case, bucket_view in runs:
        model = make_model()
        # The unused parameter gets no gradient: DDP must be told, and leaves its grad None on every rank.
        ddp = DistributedDataParallel(model, find_unused_parameters=True, gradient_as_bucket_view=bucket_view)
        optimizer, scheduler = build(case, model)
        train(ddp, optimizer, scheduler, range(STEPS), rank, world_size)
        assert model.unused.grad is None and model.frozen.weight.grad is None
        mine = snapshot(model, optimizer)
        replicas = [None] * world_size
        dist.all_gather_object(replicas, mine)
        for other in replicas[1:]:
            assert_same(other, mine, exact=True)  # every replica applied the very same update
        results[(case, "bucket view") if bucket_view else case] = mine
    # Imported here, in the ranks: torch.distributed.optim warns about torch.jit.script at import.
    from torch.distributed.optim import ZeroRedundancyOptimizer

    for case, (optimizer_class, kwargs) in ZERO_CASES.items():
        model = make_model()
        ddp = DistributedDataParallel(model, find_unused_parameters=True)
        optimizer = ZeroRedundancyOptimizer(param_groups(model, kwargs["lr"]), optimizer_class, **kwargs)
        train(ddp, optimizer, schedule(optimizer), range(STEPS), rank, world_size)
        results["ZeRO", case] = {name: p.detach().clone() for name, p in model.named_parameters()}
    return results


@pytest.fixture(scope="module")
def ddp_results() -> dict:
    return run(ddp_task, list(CASES))


@pytest.mark.parametrize("case", list(CASES))
def test_ddp_matches_one_process(ddp_results: dict, case: str) -> None:
    expected = reference(case)
    assert_same(ddp_results[case], expected)
    assert_frozen_and_unused_untouched(ddp_results[case])


@pytest.mark.parametrize("case", BUCKET_VIEW_CASES)
def test_ddp_gradient_as_bucket_view(ddp_results: dict, case: str) -> None:
    assert_same(ddp_results[case, "bucket view"], reference(case))


@pytest.mark.parametrize("case", list(ZERO_CASES))
def test_zero_redundancy_optimizer_matches_one_process(ddp_results: dict, case: str) -> None:
    expected = {name: value for name, value in reference(case).items() if "/" not in name}  # parameters only
    assert_same(ddp_results["ZeRO", case], expected)
