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
"corrected"    theta -= eta_t^2 * weight_decay * theta AdamC / SGDC (Defazio et al. 2025); timm's
                                                       ``corrected_weight_decay=True``
"l2"           g += weight_decay * theta               torch.optim.Adam/SGD ``weight_decay`` (coupled)
=============  ======================================  =====================================================

with the schedule multiplier ``eta_t = lr_t / base_lr``, where ``base_lr`` is the learning rate the parameter
group was built with (the paper's alpha). ``torch.optim.AdamW(lr=a, weight_decay=w)`` is therefore the paper's
AdamW with ``weight_decay = a * w`` (see :func:`convert_weight_decay`). In every decoupled convention
``weight_decay`` is in the paper's units (the per-step decay at eta_t = 1) except "lr" (torch's units: per
step at lr_t = 1).

"corrected" (Defazio et al., "Why Gradients Rapidly Increase Near the End of Training", arXiv:2506.02285) is
meant for layers followed by a normalization layer: there the steady-state weight norm follows
sqrt(lr_t / lambda_t), and a per-step decay that follows eta_t^2 keeps the effective step lr_t / ||theta||^2
constant as the schedule anneals. timm's ``corrected_weight_decay=True`` with lr ``a`` and weight_decay ``w``
decays by ``lr_t^2 / a * w = eta_t^2 * (a * w)`` per step, so it is ``decay="corrected"`` with
``weight_decay = a * w`` (timm divides by the constructor's lr for every group; see
:func:`convert_weight_decay`).

Any decoupled convention may be made *cautious* (Chen et al. 2025, arXiv:2510.12402; ``cautious=True`` on
:class:`decoupled.AdamW` and :class:`decoupled.SGDW`): the factor is applied only where the update direction
u_t and theta_{t-1} do not have opposite signs, ``theta_t = theta_{t-1} - step_t - factor *
1[u_t theta_{t-1} >= 0] theta_{t-1}``. The factor computed here is unchanged; the mask is the kernels'.

Reference: I. Loshchilov and F. Hutter, "Decoupled Weight Decay Regularization", ICLR 2019, arXiv:1711.05101.
"""

from __future__ import annotations

import math
from numbers import Integral, Real
from typing import Any, NamedTuple

from ._validation import check_nonnegative

__all__ = [
    "DECAY_CONVENTIONS",
    "DecayTerms",
    "check_decay",
    "convert_weight_decay",
    "decay_terms",
    "decay_timescale",
    "group_decay_terms",
    "weight_decay_from_timescale",
]

DECAY_CONVENTIONS: tuple[str, ...] = ("decoupled", "lr", "constant", "corrected", "l2")
# The conventions that follow the schedule multiplier eta_t = lr / base_lr (and so need base_lr > 0).
_SCHEDULED = ("decoupled", "corrected")


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
    >>> decay_terms("corrected", lr=0.5e-3, base_lr=1e-3, weight_decay=0.01).factor  # eta_t^2 * lambda
    0.0025
    """
    if decay in _SCHEDULED:
        if weight_decay == 0:
            return DecayTerms(0.0, 0.0)
        if base_lr == 0:
            raise ValueError(
                f"decay={decay!r} scales weight decay by eta_t = lr / base_lr, but base_lr is 0 (the group was "
                "built with lr=0); build it with its peak lr (a scheduler may start from 0), or use decay='lr' "
                "or 'constant'"
            )
        eta = lr / base_lr
        return DecayTerms((eta * eta if decay == "corrected" else eta) * weight_decay, 0.0)
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

    ``lr`` is the base learning rate alpha the run is built with. Every decoupled convention is converted
    through the per-step decay at eta_t = 1 (``weight_decay * lr`` for "lr", ``weight_decay`` for the others,
    which are in the paper's units). The conversions are exact for every step of any schedule between
    "decoupled" and "lr" (both follow eta_t); "constant" ignores the schedule and "corrected" follows eta_t^2,
    so they equal the others only while eta_t = 1. "l2" has no equivalent decay for adaptive methods
    (Proposition 2 of the paper), so converting to or from it is refused.

    timm's ``corrected_weight_decay=True`` (lr ``a``, weight_decay ``w``; per-step decay ``lr_t^2 / a * w``)
    is exactly, at every step, ``decay="corrected"`` with ``convert_weight_decay(w, source="lr",
    target="corrected", lr=a) == a * w``: timm's w is in torch's units. (timm divides by the constructor's lr
    in every group; a group of lr ``b`` there decays by ``eta_t^2 * b^2 / a * w``.)

    >>> convert_weight_decay(0.01, source="lr", target="decoupled", lr=1e-3)  # torch.optim.AdamW(wd=0.01)
    1e-05
    >>> convert_weight_decay(0.05, source="lr", target="corrected", lr=1e-3)  # timm, corrected_weight_decay
    5e-05
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


def weight_decay_from_timescale(tau_epochs: float, *, steps_per_epoch: int) -> float:
    """The weight decay, in the paper's units, whose weights average over the last ``tau_epochs`` epochs.

    Wang & Aitchison ("How to set AdamW's weight decay as you scale model and dataset size", arXiv:2405.13698)
    read AdamW's iterates as an exponential moving average of the updates with timescale ``tau_iter = 1 /
    (per-step decay)`` steps, and found the best ``tau_epoch = tau_iter / M`` (M = ``steps_per_epoch``) roughly
    constant across model and data set sizes. In this package's units the per-step decay at eta_t = 1 is the
    weight decay itself, so ``weight_decay = 1 / (tau_epochs * steps_per_epoch)``; for torch's units
    (``decay="lr"``) divide it by the learning rate (:func:`convert_weight_decay`).

    What a schedule does: the per-step decay is ``eta_t * weight_decay`` ("decoupled"), so the timescale at
    step t is ``tau_epochs / eta_t``: it holds at eta_t = 1 and lengthens as the learning rate anneals
    (under a cosine schedule from 1 to 0 the run as a whole forgets at half the rate: mean eta_t = 1/2; with
    "corrected", mean eta_t^2 = 3/8). "constant" keeps it at ``tau_epochs`` throughout. With cautious decay
    the masked coordinates decay less often, so ``tau_epochs`` is a lower bound for them.

    >>> weight_decay_from_timescale(10, steps_per_epoch=390)  # average over the last 10 CIFAR epochs (b=128)
    0.0002564102564102564
    """
    tau = _check_positive_real("tau_epochs", tau_epochs)
    steps = _check_steps_per_epoch(steps_per_epoch)
    return 1.0 / (tau * steps)


def decay_timescale(weight_decay: float, *, steps_per_epoch: int) -> float:
    """The averaging timescale, in epochs, of a weight decay in the paper's units: ``1 / (weight_decay * M)``.

    The inverse of :func:`weight_decay_from_timescale` (M = ``steps_per_epoch``); 0 (no decay) gives infinity.
    It is the timescale at eta_t = 1: at step t of a schedule it is ``decay_timescale(...) / eta_t`` for
    "decoupled", ``/ eta_t^2`` for "corrected", and unchanged for "constant". For torch's units (``decay="lr"``,
    weight decay w at learning rate a) pass ``a * w``.

    >>> decay_timescale(1e-4, steps_per_epoch=390)  # about 25.6 epochs
    25.641025641025642
    """
    if isinstance(weight_decay, bool) or not isinstance(weight_decay, Real):
        raise TypeError(f"weight_decay must be a real number, got {weight_decay!r}")
    if not (math.isfinite(weight_decay) and weight_decay >= 0):
        raise ValueError(f"weight_decay must be a finite number >= 0, got {weight_decay!r}")
    steps = _check_steps_per_epoch(steps_per_epoch)
    if weight_decay == 0:
        return math.inf
    return 1.0 / (float(weight_decay) * steps)


def _check_positive_real(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def _check_steps_per_epoch(value: object) -> int:
    """A positive integer (Python's or numpy's), else an error naming ``steps_per_epoch``."""
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise TypeError(f"steps_per_epoch must be a positive integer, got {value!r}")
    if value <= 0:
        raise ValueError(f"steps_per_epoch must be a positive integer, got {int(value)}")  # numpy's repr varies
    return int(value)


def _names() -> str:
    return ", ".join(repr(name) for name in DECAY_CONVENTIONS)
