"""Bad hyperparameters and inputs: each raises a ValueError/TypeError with exactly the message below."""

from __future__ import annotations

import pytest
import torch

import decoupled
from decoupled.schedules import restart_position


def params(shape=(3, 2)):
    return [torch.nn.Parameter(torch.zeros(shape))]


def opt_adamw(**kw):
    return lambda: decoupled.AdamW(params(), **kw)


def opt_sgdw(**kw):
    kw.setdefault("lr", 0.1)
    return lambda: decoupled.SGDW(params(), **kw)


RMSpropW = decoupled.decouple(torch.optim.RMSprop)
DECAY_NAMES = "'decoupled', 'lr', 'constant', 'corrected', 'l2'"

ERROR_CASES = [
    # (id, call, exception type, exact message)
    ("adamw-negative-lr", opt_adamw(lr=-1.0), ValueError, "lr must be >= 0, got -1.0"),
    ("adamw-nan-lr", opt_adamw(lr=float("nan")), ValueError, "lr must be finite, got nan"),
    ("adamw-string-lr", opt_adamw(lr="0.1"), TypeError, "lr must be a real number, got '0.1'"),
    ("adamw-tensor-lr-2-elements", opt_adamw(lr=torch.tensor([0.1, 0.1])), ValueError,
     "Tensor lr must be 1-element, got shape (2,)"),
    ("adamw-negative-eps", opt_adamw(eps=-1e-8), ValueError, "eps must be >= 0, got -1e-08"),
    ("adamw-negative-weight-decay", opt_adamw(weight_decay=-0.1), ValueError, "weight_decay must be >= 0, got -0.1"),
    ("adamw-beta1-one", opt_adamw(betas=(1.0, 0.999)), ValueError, "betas[0] must be in [0, 1), got 1.0"),
    ("adamw-beta2-negative", opt_adamw(betas=(0.9, -0.1)), ValueError, "betas[1] must be in [0, 1), got -0.1"),
    ("adamw-betas-not-pair", opt_adamw(betas=0.9), TypeError, "betas must be a pair (beta1, beta2), got 0.9"),
    ("adamw-unknown-decay", opt_adamw(decay="adamw"), ValueError, f"decay must be one of {DECAY_NAMES}, got 'adamw'"),
    ("adamw-decay-none", opt_adamw(decay=None), TypeError, f"decay must be one of {DECAY_NAMES}, got None"),
    ("adamw-amsgrad-string", opt_adamw(amsgrad="yes"), TypeError, "amsgrad must be True or False, got 'yes'"),
    ("adamw-maximize-int", opt_adamw(maximize=1), TypeError, "maximize must be True or False, got 1"),
    ("adamw-foreach-and-fused", opt_adamw(foreach=True, fused=True), ValueError,
     "foreach=True and fused=True cannot be combined; set at most one (`fused` and `foreach` cannot be `True` "
     "together)"),
    ("adamw-fused-string", opt_adamw(fused="yes"), TypeError, "fused must be True, False or None, got 'yes'"),
    ("adamw-decoupled-built-with-lr-0", opt_adamw(lr=0.0, weight_decay=0.1), ValueError,
     "decay='decoupled' scales weight decay by eta_t = lr / base_lr, but base_lr is 0 (the group was built "
     "with lr=0); build it with its peak lr (a scheduler may start from 0), or use decay='lr' or 'constant'"),
    ("adamw-group-negative-lr", lambda: decoupled.AdamW([{"params": params(), "lr": -0.5}]), ValueError,
     "param group 0: lr must be >= 0, got -0.5"),
    ("adamw-second-group-bad-decay",
     lambda: decoupled.AdamW([{"params": params()}, {"params": params(), "decay": "L2"}]), ValueError,
     f"param group 1: decay must be one of {DECAY_NAMES}, got 'L2'"),
    ("adamw-empty-params", lambda: decoupled.AdamW([]), ValueError, "optimizer got an empty parameter list"),
    ("sgdw-momentum-one", opt_sgdw(momentum=1.0), ValueError, "momentum must be in [0, 1), got 1.0"),
    ("sgdw-negative-momentum", opt_sgdw(momentum=-0.1), ValueError, "momentum must be in [0, 1), got -0.1"),
    ("sgdw-nesterov-without-momentum", opt_sgdw(momentum=0.0, nesterov=True), ValueError,
     "nesterov=True needs momentum > 0 and dampening 0, got momentum=0.0, dampening=0.0"),
    ("sgdw-negative-lr", opt_sgdw(lr=-0.1), ValueError, "lr must be >= 0, got -0.1"),
    ("decouple-not-a-class", lambda: decoupled.decouple(int), TypeError,
     "decouple() takes a torch.optim.Optimizer subclass, got <class 'int'>"),
    ("decouple-instance", lambda: decoupled.decouple(torch.optim.SGD(params(), lr=0.1)), TypeError,
     "decouple() takes an optimizer class, not an instance: use decouple(SGD), got a SGD"),
    ("decouple-lbfgs", lambda: decoupled.decouple(torch.optim.LBFGS), TypeError,
     "decouple() does not support LBFGS: it re-evaluates the closure within one step"),
    ("decouple-negative-weight-decay", lambda: RMSpropW(params(), lr=0.01, weight_decay=-1.0), ValueError,
     "weight_decay must be >= 0, got -1.0"),
    ("decouple-unknown-decay", lambda: RMSpropW(params(), lr=0.01, decay="torch"), ValueError,
     f"decay must be one of {DECAY_NAMES}, got 'torch'"),
    ("decouple-unknown-keyword", lambda: RMSpropW(params(), lr=0.01, bogus=1), TypeError,
     "DecoupledRMSprop: got an unexpected keyword argument 'bogus'"),
    ("restarts-zero-period", lambda: decoupled.CosineWarmRestarts(decoupled.AdamW(params()), first_period=0),
     ValueError, "first_period must be > 0, got 0"),
    ("restarts-zero-steps-per-epoch",
     lambda: decoupled.CosineWarmRestarts(decoupled.AdamW(params()), first_period=1, steps_per_epoch=0),
     ValueError, "steps_per_epoch must be an integer >= 1, got 0"),
    ("restarts-shrinking-periods",
     lambda: decoupled.CosineWarmRestarts(decoupled.AdamW(params()), first_period=1, period_mult=0.5),
     ValueError, "period_mult must be >= 1, got 0.5"),
    ("restarts-eta-max-below-min",
     lambda: decoupled.CosineWarmRestarts(decoupled.AdamW(params()), first_period=1, eta_min=0.5, eta_max=0.1),
     ValueError, "eta_max must be >= eta_min, got eta_max=0.1 < eta_min=0.5"),
    ("restarts-norm-per-group-count",
     lambda: decoupled.CosineWarmRestarts(decoupled.AdamW(params()), first_period=1, weight_decay_norm=[0.1, 0.2]),
     ValueError, "weight_decay_norm has 2 values for 1 param groups"),
    ("normalized-zero-batch", lambda: decoupled.normalized_weight_decay(0.025, 0, 50_000, 100), ValueError,
     "batch_size must be > 0, got 0"),
    ("normalized-negative-norm", lambda: decoupled.normalized_weight_decay(-0.025, 128, 50_000, 100), ValueError,
     "lambda_norm must be >= 0, got -0.025"),
    ("param-groups-not-a-module", lambda: decoupled.param_groups(params(), 0.1), TypeError,
     "param_groups() takes an nn.Module, got list"),
    ("param-groups-negative-decay", lambda: decoupled.param_groups(torch.nn.Linear(2, 2), -0.1), ValueError,
     "weight_decay must be >= 0, got -0.1"),
    ("effective-decay-not-an-optimizer", lambda: decoupled.effective_decay(object()), TypeError,
     "effective_decay() takes a torch.optim.Optimizer, got object"),
    ("convert-from-l2", lambda: decoupled.convert_weight_decay(0.1, source="l2", target="decoupled", lr=1e-3),
     ValueError, "an L2 penalty has no equivalent decoupled weight decay for adaptive optimizers "
     "(Proposition 2), so 'l2' -> 'decoupled' is not a conversion"),
    ("convert-zero-lr", lambda: decoupled.convert_weight_decay(0.1, source="lr", target="decoupled", lr=0),
     ValueError, "lr must be a positive finite number to convert weight decay, got 0"),
    ("convert-negative-weight-decay",
     lambda: decoupled.convert_weight_decay(-0.1, source="lr", target="decoupled", lr=1e-3),
     ValueError, "weight_decay must be >= 0, got -0.1"),
    ("convert-nan-weight-decay",
     lambda: decoupled.convert_weight_decay(float("nan"), source="lr", target="decoupled", lr=1e-3),
     ValueError, "weight_decay must be finite, got nan"),
    ("convert-string-weight-decay",
     lambda: decoupled.convert_weight_decay("0.1", source="lr", target="decoupled", lr=1e-3),
     TypeError, "weight_decay must be a real number, got '0.1'"),
    ("convert-string-lr", lambda: decoupled.convert_weight_decay(0.1, source="lr", target="decoupled", lr="1e-3"),
     TypeError, "lr must be a real number, got '1e-3'"),
    ("convert-bool-lr", lambda: decoupled.convert_weight_decay(0.1, source="lr", target="decoupled", lr=True),
     TypeError, "lr must be a real number, got True"),
    ("restarts-fractional-steps-per-epoch",
     lambda: decoupled.CosineWarmRestarts(decoupled.AdamW(params()), first_period=1, steps_per_epoch=2.5),
     ValueError, "steps_per_epoch must be an integer >= 1, got 2.5"),
    ("restarts-string-steps-per-epoch",
     lambda: decoupled.CosineWarmRestarts(decoupled.AdamW(params()), first_period=1, steps_per_epoch="390"),
     TypeError, "steps_per_epoch must be an integer >= 1, got '390'"),
    ("restarts-bool-steps-per-epoch",
     lambda: decoupled.CosineWarmRestarts(decoupled.AdamW(params()), first_period=1, steps_per_epoch=True),
     TypeError, "steps_per_epoch must be an integer >= 1, got True"),
    ("restarts-string-norm",
     lambda: decoupled.CosineWarmRestarts(decoupled.AdamW(params()), first_period=1, weight_decay_norm="0.1"),
     TypeError, "weight_decay_norm must be a real number, got '0.1'"),
    ("restarts-negative-norm-in-list",
     lambda: decoupled.CosineWarmRestarts(decoupled.AdamW(params()), first_period=1, weight_decay_norm=[-0.1]),
     ValueError, "weight_decay_norm[0] must be >= 0, got -0.1"),
    ("restart-position-negative-step", lambda: restart_position(-1, 4, 1.0), ValueError,
     "step must be an integer >= 0, got -1"),
    ("restart-position-zero-steps-per-epoch", lambda: restart_position(3, 0, 1.0), ValueError,
     "steps_per_epoch must be an integer >= 1, got 0"),
    ("normalized-string-epochs", lambda: decoupled.normalized_weight_decay(0.025, 128, 50_000, "100"), TypeError,
     "epochs must be a real number, got '100'"),
    ("decouple-cautious", lambda: RMSpropW(params(), lr=0.01, cautious=True), ValueError,
     "DecoupledRMSprop: decouple() does not support cautious=True: cautious weight decay decays only the "
     "coordinates where the update direction and the parameter share a sign, and a wrapper around any optimizer "
     "does not see that direction; use decoupled.AdamW or decoupled.SGDW"),
]


@pytest.mark.parametrize("call, error_type, message", [c[1:] for c in ERROR_CASES], ids=[c[0] for c in ERROR_CASES])
def test_bad_input_raises_exact_message(call, error_type, message):
    with pytest.raises(error_type) as raised:
        call()
    assert str(raised.value) == message


@pytest.mark.parametrize("make", [decoupled.AdamW, lambda p: decoupled.SGDW(p, lr=0.1)], ids=["AdamW", "SGDW"])
def test_sparse_gradient_names_the_parameter(make):
    embedding = torch.nn.Embedding(10, 3, sparse=True)
    optimizer = make(embedding.parameters())
    embedding(torch.tensor([1, 2])).sum().backward()
    name = "AdamW" if make is decoupled.AdamW else "SGDW"
    with pytest.raises(ValueError) as raised:
        optimizer.step()
    assert str(raised.value) == (
        f"{name} does not support sparse gradients (param group 0, parameter 0 of shape (10, 3)); "
        "use dense gradients, e.g. nn.Embedding(sparse=False), or torch.optim.SparseAdam"
    )


def test_fused_request_on_an_unsupported_device_is_refused():
    param = torch.nn.Parameter(torch.zeros(3, device="meta"))
    optimizer = decoupled.AdamW([param], fused=True)
    param.grad = torch.zeros(3, device="meta")
    with pytest.raises(ValueError, match=r"^fused=True is not supported for device 'meta' \(fused kernels run on"):
        optimizer.step()


def test_a_bad_group_added_later_is_refused_and_not_kept():
    optimizer = decoupled.AdamW(params())
    with pytest.raises(ValueError) as raised:
        optimizer.add_param_group({"params": params(), "weight_decay": -1.0})
    assert str(raised.value) == "param group 1: weight_decay must be >= 0, got -1.0"
    assert len(optimizer.param_groups) == 1


def test_decoupled_decay_from_a_group_whose_base_lr_became_zero_is_refused_at_step():
    param = torch.nn.Parameter(torch.zeros(2))
    optimizer = decoupled.AdamW([param], lr=1e-3, weight_decay=0.1)
    optimizer.param_groups[0]["base_lr"] = 0.0
    param.grad = torch.ones(2)
    with pytest.raises(ValueError, match=r"^decay='decoupled' scales weight decay by eta_t = lr / base_lr"):
        optimizer.step()


def test_numpy_numbers_are_accepted_where_python_numbers_are():
    """torch takes NumPy scalars (a steps_per_epoch computed with numpy, a weight decay read from an array)."""
    import numpy as np

    optimizer = decoupled.AdamW(params(), lr=np.float64(1e-3), weight_decay=np.float32(1e-4))
    scheduler = decoupled.CosineWarmRestarts(optimizer, first_period=np.int64(2), steps_per_epoch=np.int64(390))
    assert scheduler.steps_per_epoch == 390 and type(scheduler.steps_per_epoch) is int
    assert restart_position(np.int64(800), np.int32(390), 2.0) == restart_position(800, 390, 2.0)
    norm = decoupled.CosineWarmRestarts(optimizer, first_period=1, weight_decay_norm=np.array([0.025]))
    assert norm.weight_decay_norms == [0.025]
    assert decoupled.convert_weight_decay(np.float32(0.5), source="lr", target="decoupled", lr=np.float64(1e-2)) == (
        pytest.approx(5e-3)
    )
    assert decoupled.normalized_weight_decay(0.025, np.int64(128), np.int64(50_000), np.int64(100)) == pytest.approx(
        0.025 * (128 / 5e6) ** 0.5
    )
