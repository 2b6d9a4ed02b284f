"""Weight-decay conventions: the ONE place that turns a group's hyperparameters into decay terms.

Every optimizer in this package, and every kernel, sees weight decay only as two numbers:

* ``factor``: the multiplicative decay of this step, ``theta <- (1 - factor) * theta_{t-1}``;
* ``l2``: the coefficient of an L2 penalty, ``g <- g + l2 * theta_{t-1}`` (the gradient path).

Which of the two a group gets, and how large it is, depends on the convention named by ``decay``:

=============  ======================================  =====================================================
decay          per-step change of theta                used by
=============  ======================================  =====================================================
"decoupled"    theta -= eta_t * weight_decay * theta   the paper (Loshchilov & Hutter, ICLR 2019), its code
"lr"           theta -= lr_t * weight_decay * theta    torch.optim.AdamW, optax.adamw, Keras, timm, apex
"constant"     theta -= weight_decay * theta           TensorFlow Addons' DecoupledWeightDecayExtension
"l2"           g += weight_decay * theta               torch.optim.Adam/SGD ``weight_decay`` (coupled)
=============  ======================================  =====================================================

with the schedule multiplier ``eta_t = lr_t / base_lr``, where ``base_lr`` is the learning rate the parameter
group was built with (the paper's alpha). ``torch.optim.AdamW(lr=a, weight_decay=w)`` is therefore the paper's
AdamW with ``weight_decay = a * w`` (see :func:`convert_weight_decay`).

Reference: I. Loshchilov and F. Hutter, "Decoupled Weight Decay Regularization", ICLR 2019, arXiv:1711.05101.
"""

from __future__ import annotations

import math
from numbers import Real
from typing import Any, NamedTuple

from ._validation import check_nonnegative

__all__ = ["DECAY_CONVENTIONS", "DecayTerms", "check_decay", "convert_weight_decay", "decay_terms", "group_decay_terms"]

DECAY_CONVENTIONS: tuple[str, ...] = ("decoupled", "lr", "constant", "l2")


class DecayTerms(NamedTuple):
    """The weight decay of one step of one parameter group.

    ``factor``: theta_t = (1 - factor) * theta_{t-1} - update (0 when the convention is "l2").
    ``l2``: the gradient is g + l2 * theta_{t-1} (0 unless the convention is "l2").
    """

    factor: float
    l2: float


def check_decay(decay: object) -> str:
    """Return ``decay`` if it names a convention, else raise a ValueError/TypeError that names it."""
    if not isinstance(decay, str):
        raise TypeError(f"decay must be one of {_names()}, got {decay!r}")
    if decay not in DECAY_CONVENTIONS:
        raise ValueError(f"decay must be one of {_names()}, got {decay!r}")
    return decay


def decay_terms(decay: str, *, lr: float, base_lr: float, weight_decay: float) -> DecayTerms:
    """The decay terms of one step: ``lr`` is this step's learning rate (eta_t * alpha), ``base_lr`` is alpha.

    >>> decay_terms("decoupled", lr=0.5e-3, base_lr=1e-3, weight_decay=0.01)  # eta_t = 0.5
    DecayTerms(factor=0.005, l2=0.0)
    >>> decay_terms("lr", lr=0.5e-3, base_lr=1e-3, weight_decay=0.01).factor  # torch.optim.AdamW
    5e-06
    """
    if decay == "decoupled":
        if weight_decay == 0:
            return DecayTerms(0.0, 0.0)
        if base_lr == 0:
            raise ValueError(
                "decay='decoupled' scales weight decay by eta_t = lr / base_lr, but base_lr is 0 (the group was "
                "built with lr=0); build it with its peak lr (a scheduler may start from 0), or use decay='lr' "
                "or 'constant'"
            )
        return DecayTerms(lr / base_lr * weight_decay, 0.0)
    if decay == "lr":
        return DecayTerms(lr * weight_decay, 0.0)
    if decay == "constant":
        return DecayTerms(weight_decay, 0.0)
    if decay == "l2":
        return DecayTerms(0.0, weight_decay)
    check_decay(decay)
    raise AssertionError("unreachable")  # pragma: no cover


def group_decay_terms(group: dict[str, Any]) -> DecayTerms:
    """The decay terms a parameter group's next step applies, from its lr, base_lr, weight_decay and decay."""
    return decay_terms(group["decay"], lr=group["lr"], base_lr=group["base_lr"], weight_decay=group["weight_decay"])


def convert_weight_decay(weight_decay: float, *, source: str, target: str, lr: float) -> float:
    """Convert a weight decay between the decoupled conventions so that both runs decay alike.

    ``lr`` is the base learning rate alpha the run is built with. The conversions are exact for every
    step of any schedule between "decoupled" and "lr" (both follow eta_t); "constant" ignores the schedule,
    so it equals the others only while eta_t = 1. "l2" has no equivalent decay for adaptive methods
    (Proposition 2 of the paper), so converting to or from it is refused.

    >>> convert_weight_decay(0.01, source="lr", target="decoupled", lr=1e-3)  # torch.optim.AdamW(wd=0.01)
    1e-05
    """
    weight_decay = check_nonnegative("weight_decay", weight_decay)
    check_decay(source)
    check_decay(target)
    if "l2" in (source, target) and source != target:
        raise ValueError(
            "an L2 penalty has no equivalent decoupled weight decay for adaptive optimizers "
            f"(Proposition 2), so {source!r} -> {target!r} is not a conversion"
        )
    if isinstance(lr, bool) or not isinstance(lr, Real):
        raise TypeError(f"lr must be a real number, got {lr!r}")
    if not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a positive finite number to convert weight decay, got {lr!r}")
    # Express as the paper's per-step decay at eta_t = 1 ("decoupled" == "constant" there), then back.
    per_step = weight_decay * lr if source == "lr" else weight_decay
    return per_step / lr if target == "lr" else per_step


def _names() -> str:
    return ", ".join(repr(name) for name in DECAY_CONVENTIONS)
