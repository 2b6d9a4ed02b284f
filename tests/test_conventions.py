"""The one place that turns a group's hyperparameters into decay terms."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import decoupled
from decoupled.conventions import DECAY_CONVENTIONS, DecayTerms, convert_weight_decay, decay_terms


@pytest.mark.parametrize(
    "decay, expected",
    [
        ("decoupled", DecayTerms(0.25 * 0.01, 0.0)),  # eta_t * lambda
        ("lr", DecayTerms(0.5e-3 * 0.01, 0.0)),  # lr_t * lambda
        ("constant", DecayTerms(0.01, 0.0)),  # lambda
        ("corrected", DecayTerms(0.25**2 * 0.01, 0.0)),  # eta_t^2 * lambda
        ("l2", DecayTerms(0.0, 0.01)),  # lambda * theta added to the gradient
    ],
)
def test_decay_terms(decay, expected):
    terms = decay_terms(decay, lr=0.5e-3, base_lr=2e-3, weight_decay=0.01)
    assert terms.factor == pytest.approx(expected.factor) and terms.l2 == expected.l2


def test_decoupled_decay_does_not_depend_on_the_base_learning_rate():
    """The paper's point: at the same eta_t, changing alpha leaves the decay alone."""
    small = decay_terms("decoupled", lr=0.5e-4, base_lr=1e-4, weight_decay=0.01).factor
    large = decay_terms("decoupled", lr=0.5e-1, base_lr=1e-1, weight_decay=0.01).factor
    assert small == pytest.approx(large) == pytest.approx(0.005)


def test_lr_at_zero_during_warmup_gives_zero_decoupled_decay():
    assert decay_terms("decoupled", lr=0.0, base_lr=1e-3, weight_decay=0.1).factor == 0.0


@pytest.mark.parametrize("source", ["decoupled", "lr", "constant", "corrected"])
@pytest.mark.parametrize("target", ["decoupled", "lr", "constant", "corrected"])
def test_conversions_give_the_same_decay_at_eta_1(source, target):
    lr, weight_decay = 3e-3, 0.02
    converted = convert_weight_decay(weight_decay, source=source, target=target, lr=lr)
    before = decay_terms(source, lr=lr, base_lr=lr, weight_decay=weight_decay).factor
    after = decay_terms(target, lr=lr, base_lr=lr, weight_decay=converted).factor
    assert after == pytest.approx(before)


def test_decoupled_and_lr_conventions_agree_at_every_step_of_a_schedule():
    alpha, w = 1e-3, 0.1
    ours = convert_weight_decay(w, source="lr", target="decoupled", lr=alpha)
    for eta in (1.0, 0.7, 0.01, 0.0):
        assert decay_terms("decoupled", lr=eta * alpha, base_lr=alpha, weight_decay=ours).factor == pytest.approx(
            decay_terms("lr", lr=eta * alpha, base_lr=alpha, weight_decay=w).factor
        )


def test_the_conventions_are_named_once():
    assert DECAY_CONVENTIONS == ("decoupled", "lr", "constant", "corrected", "l2")


def test_corrected_decay_follows_the_square_of_the_schedule_and_not_alpha():
    for alpha in (1e-4, 1e-1):
        for eta in (1.0, 0.5, 0.1, 0.0):
            factor = decay_terms("corrected", lr=eta * alpha, base_lr=alpha, weight_decay=0.02).factor
            assert factor == pytest.approx(eta**2 * 0.02, rel=1e-12, abs=0)


def test_corrected_decay_needs_a_base_lr():
    with pytest.raises(ValueError, match=r"^decay='corrected' scales weight decay by eta_t = lr / base_lr"):
        decay_terms("corrected", lr=0.0, base_lr=0.0, weight_decay=0.1)


def timm_corrected_factor(lr_t: float, max_lr: float, weight_decay: float) -> float:
    """timm/optim/adamw.py (AdamWLegacy, corrected_weight_decay=True): wd_scale = lr ** 2 / max_lr, and the
    parameter is multiplied by 1 - wd_scale * weight_decay; max_lr is the constructor's lr."""
    return lr_t**2 / max_lr * weight_decay


def test_timm_corrected_weight_decay_maps_exactly_at_every_step():
    a, w = 3e-3, 0.05
    ours = convert_weight_decay(w, source="lr", target="corrected", lr=a)
    assert ours == pytest.approx(a * w)
    for eta in (1.0, 0.8, 0.3, 0.01, 0.0):
        factor = decay_terms("corrected", lr=eta * a, base_lr=a, weight_decay=ours).factor
        assert factor == pytest.approx(timm_corrected_factor(eta * a, a, w), rel=1e-12, abs=1e-30)


def test_effective_decay_reads_corrected_decay():
    optimizer = decoupled.AdamW(torch.nn.Linear(2, 2).parameters(), lr=1e-3, weight_decay=1e-2, decay="corrected")
    for group in optimizer.param_groups:
        group["lr"] = 0.5e-3  # eta_t = 0.5
    assert decoupled.effective_decay(optimizer) == [pytest.approx(0.25 * 1e-2)]


# The timescale view (Wang & Aitchison 2024): tau_epochs = 1 / (weight_decay * steps_per_epoch).


@pytest.mark.parametrize("steps_per_epoch", [390, np.int64(390), np.int32(390)], ids=["int", "int64", "int32"])
def test_weight_decay_from_timescale_and_back(steps_per_epoch):
    weight_decay = decoupled.weight_decay_from_timescale(10, steps_per_epoch=steps_per_epoch)
    assert weight_decay == pytest.approx(1 / 3900)
    assert decoupled.decay_timescale(weight_decay, steps_per_epoch=steps_per_epoch) == pytest.approx(10)
    assert decoupled.decay_timescale(np.float64(1e-4), steps_per_epoch=steps_per_epoch) == pytest.approx(1e4 / 390)


def test_decay_timescale_is_the_decay_applied_over_tau_epochs():
    """After tau_iter = tau * M steps at eta_t = 1 the weights have decayed by about e^-1: an EMA's timescale."""
    tau, steps = 2.5, 40
    weight_decay = decoupled.weight_decay_from_timescale(tau, steps_per_epoch=steps)
    assert (1 - weight_decay) ** round(tau * steps) == pytest.approx(math.exp(-1), rel=1e-2)


def test_no_decay_has_an_infinite_timescale():
    assert decoupled.decay_timescale(0.0, steps_per_epoch=10) == math.inf


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda: decoupled.weight_decay_from_timescale(0, steps_per_epoch=10), ValueError,
         "tau_epochs must be a finite number > 0, got 0"),
        (lambda: decoupled.weight_decay_from_timescale(-1.0, steps_per_epoch=10), ValueError,
         "tau_epochs must be a finite number > 0, got -1.0"),
        (lambda: decoupled.weight_decay_from_timescale(float("inf"), steps_per_epoch=10), ValueError,
         "tau_epochs must be a finite number > 0, got inf"),
        (lambda: decoupled.weight_decay_from_timescale("10", steps_per_epoch=10), TypeError,
         "tau_epochs must be a real number, got '10'"),
        (lambda: decoupled.weight_decay_from_timescale(10, steps_per_epoch=0), ValueError,
         "steps_per_epoch must be a positive integer, got 0"),
        (lambda: decoupled.weight_decay_from_timescale(10, steps_per_epoch=39.5), TypeError,
         "steps_per_epoch must be a positive integer, got 39.5"),
        (lambda: decoupled.weight_decay_from_timescale(10, steps_per_epoch=True), TypeError,
         "steps_per_epoch must be a positive integer, got True"),
        (lambda: decoupled.decay_timescale(-1e-4, steps_per_epoch=10), ValueError,
         "weight_decay must be a finite number >= 0, got -0.0001"),
        (lambda: decoupled.decay_timescale(float("nan"), steps_per_epoch=10), ValueError,
         "weight_decay must be a finite number >= 0, got nan"),
        (lambda: decoupled.decay_timescale(None, steps_per_epoch=10), TypeError,
         "weight_decay must be a real number, got None"),
        (lambda: decoupled.decay_timescale(1e-4, steps_per_epoch=np.int64(-3)), ValueError,
         "steps_per_epoch must be a positive integer, got -3"),
    ],
)  # fmt: skip
def test_timescale_functions_name_the_bad_argument(call, error, message):
    with pytest.raises(error) as raised:
        call()
    assert str(raised.value) == message
