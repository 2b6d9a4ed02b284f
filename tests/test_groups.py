"""param_groups(): which parameters are decayed; effective_decay(): what each group's next step applies."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import decoupled


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(10, 4)
        self.conv = nn.Conv1d(4, 6, 3)
        self.bn = nn.BatchNorm1d(6)
        self.ln = nn.LayerNorm(6)
        self.head = nn.Linear(6, 10)
        self.gain = nn.Parameter(torch.ones(6))  # a custom 1-D scale
        self.frozen = nn.Linear(3, 3)
        self.frozen.requires_grad_(False)


def names(group) -> set[str]:
    return set(group["param_names"])


def test_default_rules():
    groups = decoupled.param_groups(Net(), weight_decay=0.1)
    decay, no_decay = groups
    assert names(decay) == {"embed.weight", "conv.weight", "head.weight"}
    assert names(no_decay) == {"conv.bias", "bn.weight", "bn.bias", "ln.weight", "ln.bias", "head.bias", "gain"}
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert [(s.name, s.tensors, s.elements) for s in groups.summary] == [
        ("decay", 3, 40 + 72 + 60),
        ("no_decay", 7, 6 + 6 + 6 + 6 + 6 + 10 + 6),
    ]
    assert "decay: weight_decay=0.1, 3 tensors, 172 elements" in groups.report()


def test_embeddings_and_patterns_can_be_excluded():
    groups = decoupled.param_groups(Net(), weight_decay=0.1, decay_embeddings=False, exclude=["head.*"])
    assert names(groups[0]) == {"conv.weight"}
    assert {"embed.weight", "head.weight"} <= names(groups[1])


def test_group_options_reach_both_groups_and_the_optimizer_accepts_them():
    groups = decoupled.param_groups(Net(), weight_decay=0.1, lr=0.01, betas=(0.8, 0.9))
    optimizer = decoupled.AdamW(groups)
    assert [g["lr"] for g in optimizer.param_groups] == [0.01, 0.01]
    assert [g["betas"] for g in optimizer.param_groups] == [(0.8, 0.9), (0.8, 0.9)]
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.1, 0.0]


def test_shared_parameter_is_listed_once_and_undecayed_if_any_owner_says_so():
    embed = nn.Embedding(10, 4)
    head = nn.Linear(4, 10, bias=False)
    head.weight = embed.weight  # tied
    model = nn.Sequential(embed, head)
    groups = decoupled.param_groups(model, weight_decay=0.1, decay_embeddings=False)
    all_params = [p for g in groups for p in g["params"]]
    assert len(all_params) == 1
    assert groups[0]["weight_decay"] == 0.0


def test_empty_group_is_left_out_but_summarized():
    groups = decoupled.param_groups(nn.Linear(3, 3, bias=False), weight_decay=0.1)
    assert len(groups) == 1
    assert [(s.name, s.tensors) for s in groups.summary] == [("decay", 1), ("no_decay", 0)]


@pytest.mark.parametrize(
    "decay, expected",
    [("decoupled", 0.5 * 0.01), ("lr", 0.05 * 0.01), ("constant", 0.01), ("l2", None)],
)
def test_effective_decay_of_each_convention_under_a_schedule(decay, expected):
    optimizer = decoupled.SGDW(nn.Linear(2, 2).parameters(), lr=0.1, weight_decay=0.01, decay=decay)
    optimizer.param_groups[0]["lr"] = 0.05  # eta_t = 0.5
    assert decoupled.effective_decay(optimizer) == [pytest.approx(expected) if expected else None]


def test_effective_decay_of_torch_optimizers():
    params = list(nn.Linear(2, 2).parameters())
    assert decoupled.effective_decay(torch.optim.AdamW(params, lr=1e-3, weight_decay=0.1)) == [pytest.approx(1e-4)]
    assert decoupled.effective_decay(torch.optim.Adam(params, lr=1e-3, weight_decay=0.1, decoupled_weight_decay=True)) == [pytest.approx(1e-4)]
    assert decoupled.effective_decay(torch.optim.SGD(params, lr=0.1, weight_decay=0.1)) == [None]
    assert decoupled.effective_decay(torch.optim.SGD(params, lr=0.1)) == [0.0]


def test_effective_decay_is_what_a_step_applies():
    param = nn.Parameter(torch.ones(4, dtype=torch.float64))
    optimizer = decoupled.decouple(torch.optim.Adagrad)([param], lr=0.2, weight_decay=0.05)
    optimizer.param_groups[0]["lr"] = 0.1
    (factor,) = decoupled.effective_decay(optimizer)
    param.grad = torch.zeros(4, dtype=torch.float64)
    optimizer.step()
    torch.testing.assert_close(param.detach(), torch.full((4,), 1 - factor, dtype=torch.float64))
    assert factor == pytest.approx(0.5 * 0.05)


def _measured_factor(optimizer, param) -> float:
    """The decay one step applies, measured: theta = 1 and a zero gradient keep every update at 0."""
    with torch.no_grad():
        param.fill_(1.0)
    param.grad = torch.zeros_like(param)
    optimizer.step()
    return 1.0 - param.detach().flatten()[0].item()


@pytest.mark.parametrize(
    "make",
    [
        lambda p: torch.optim.Adafactor(p, lr=0.01, weight_decay=0.1),
        lambda p: torch.optim.Muon(p, lr=0.01, weight_decay=0.1),
        lambda p: torch.optim.AdamW(p, lr=0.01, weight_decay=0.1),
        lambda p: torch.optim.NAdam(p, lr=0.01, weight_decay=0.1, decoupled_weight_decay=True),
        lambda p: torch.optim.RAdam(p, lr=0.01, weight_decay=0.1, decoupled_weight_decay=True),
        lambda p: torch.optim.ASGD(p, lr=0.01, lambd=0.1),
        lambda p: torch.optim.Rprop(p, lr=0.01),
    ],
    ids=["Adafactor", "Muon", "AdamW", "NAdam-decoupled", "RAdam-decoupled", "ASGD-lambd", "Rprop"],
)
def test_effective_decay_of_torch_optimizers_is_what_their_step_applies(make):
    """Read from each torch optimizer's own rule (torch 2.13 source), then checked against a step: Adafactor and
    Muon decay by lr * weight_decay like AdamW, ASGD by lambd * eta."""
    param = nn.Parameter(torch.ones(3, 3, dtype=torch.float64))
    optimizer = make([param])
    for _ in range(2):  # before the first step and with state
        (factor,) = decoupled.effective_decay(optimizer)
        assert factor is not None
        assert _measured_factor(optimizer, param) == pytest.approx(factor, rel=1e-6, abs=1e-12)


def test_effective_decay_reads_l2_for_torch_optimizers_with_an_l2_weight_decay():
    params = list(nn.Linear(2, 2).parameters())
    for cls in (torch.optim.Adam, torch.optim.NAdam, torch.optim.RAdam, torch.optim.Adamax, torch.optim.RMSprop,
                torch.optim.Adagrad, torch.optim.Adadelta, torch.optim.ASGD):  # fmt: skip
        assert decoupled.effective_decay(cls(params, weight_decay=0.1)) == [None], cls.__name__
        assert decoupled.effective_decay(cls(params, weight_decay=0.0, **({"lambd": 0.0} if cls is torch.optim.ASGD else {}))) == [0.0]
