"""The one place that turns a group's hyperparameters into decay terms."""

from __future__ import annotations

import pytest

from decoupled.conventions import DECAY_CONVENTIONS, DecayTerms, convert_weight_decay, decay_terms


@pytest.mark.parametrize(
    "decay, expected",
    [
        ("decoupled", DecayTerms(0.25 * 0.01, 0.0)),  # eta_t * lambda
        ("lr", DecayTerms(0.5e-3 * 0.01, 0.0)),  # lr_t * lambda
        ("constant", DecayTerms(0.01, 0.0)),  # lambda
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


@pytest.mark.parametrize("source", ["decoupled", "lr", "constant"])
@pytest.mark.parametrize("target", ["decoupled", "lr", "constant"])
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
    assert DECAY_CONVENTIONS == ("decoupled", "lr", "constant", "l2")
