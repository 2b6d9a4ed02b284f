"""Parameter-group helpers: which parameters to decay, and the decay each group actually applies."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Any, Iterable

import torch
from torch import nn
from torch.optim import Optimizer

from ._validation import check_nonnegative
from .conventions import group_decay_terms

__all__ = ["GroupSummary", "ParamGroups", "effective_decay", "param_groups"]

# Modules whose parameters are scales and shifts, not weights: decaying them towards 0 fights the model.
_NORMALIZATION_TYPES: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._NormBase,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.LocalResponseNorm,
    *((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()),
)
_EMBEDDING_TYPES: tuple[type[nn.Module], ...] = (nn.Embedding, nn.EmbeddingBag)


@dataclass(frozen=True)
class GroupSummary:
    """What fell into one group: its weight decay, and how many tensors and elements it holds."""

    name: str
    weight_decay: float
    tensors: int
    elements: int


class ParamGroups(list):
    """The list of parameter-group dicts (pass it to any optimizer), plus :attr:`summary` and :meth:`report`."""

    summary: list[GroupSummary]

    def report(self) -> str:
        """One line per group: name, weight decay, tensors and elements."""
        return "\n".join(
            f"{s.name:>8}: weight_decay={s.weight_decay:g}, {s.tensors} tensors, {s.elements:,} elements"
            for s in self.summary
        )


def param_groups(
    model: nn.Module,
    weight_decay: float,
    *,
    decay_embeddings: bool = True,
    exclude: Iterable[str] = (),
    **group_options: Any,
) -> ParamGroups:
    """Split a model's trainable parameters into a decayed and an undecayed group, by rule.

    Not decayed: biases, every parameter of a normalization layer (BatchNorm, LayerNorm, GroupNorm, RMSNorm,
    ...), any other parameter with fewer than 2 dimensions (gains, scalars), embeddings when
    ``decay_embeddings=False``, and parameters whose qualified name matches a pattern of ``exclude``
    (fnmatch, e.g. ``"*.pos_embed"``). Everything else gets ``weight_decay``. A parameter shared by several
    modules is listed once, undecayed if any rule says so. ``group_options`` (lr, betas, ...) go into both
    groups. Each group also carries ``param_names``, which torch's optimizers keep in state_dicts.

    Example:
        >>> import torch, decoupled
        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.LayerNorm(8), torch.nn.Linear(8, 2))
        >>> groups = decoupled.param_groups(model, weight_decay=1e-4)
        >>> print(groups.report())
           decay: weight_decay=0.0001, 2 tensors, 48 elements
        no_decay: weight_decay=0, 4 tensors, 26 elements
        >>> opt = decoupled.AdamW(groups, lr=1e-3)
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"param_groups() takes an nn.Module, got {type(model).__name__}")
    check_nonnegative("weight_decay", weight_decay)
    patterns = [exclude] if isinstance(exclude, str) else list(exclude)
    undecayed: set[int] = set()
    for module_name, module in model.named_modules():
        for name, param in module.named_parameters(recurse=False):
            qualified = f"{module_name}.{name}" if module_name else name
            if (
                name.endswith("bias")
                or isinstance(module, _NORMALIZATION_TYPES)
                or param.ndim < 2
                or (not decay_embeddings and isinstance(module, _EMBEDDING_TYPES))
                or any(fnmatch.fnmatchcase(qualified, pattern) for pattern in patterns)
            ):
                undecayed.add(id(param))
    decay_named, no_decay_named = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (no_decay_named if id(param) in undecayed else decay_named).append((name, param))
    groups = ParamGroups()
    groups.summary = []
    for group_name, named, value in (("decay", decay_named, weight_decay), ("no_decay", no_decay_named, 0.0)):
        if named:
            groups.append(
                dict(group_options, params=[p for _, p in named], param_names=[n for n, _ in named], weight_decay=value)
            )
        groups.summary.append(GroupSummary(group_name, value, len(named), sum(p.numel() for _, p in named)))
    return groups


def effective_decay(optimizer: Optimizer) -> list[float | None]:
    """The per-step decay factor f of each group's next step: theta <- (1 - f) theta for its parameters.

    Works for this package's optimizers (any convention, decouple()-made ones included) and for torch's own:

    * torch.optim.AdamW, and Adam, NAdam, RAdam with ``decoupled_weight_decay=True``: f = lr * weight_decay;
    * torch.optim.Adafactor and Muon (their decay is theta *= 1 - lr * weight_decay, whatever the update's
      own step size): f = lr * weight_decay;
    * torch.optim.ASGD: weight_decay is L2; its ``lambd`` decays theta *= 1 - lambd * eta, with eta its own
      step size (kept per parameter: this reads the group's first parameter with state, else lr);
    * SGD, Adam, NAdam, RAdam, Adamax, RMSprop, Adagrad, Adadelta: ``weight_decay`` is an L2 penalty;
    * Rprop, SparseAdam, LBFGS: no weight decay (0).

    An L2 penalty (decay="l2", or torch's L2 ``weight_decay``) has no per-step factor, since it goes through the
    gradient and, for adaptive methods, the preconditioner: its entry is None. With ``cautious=True`` the factor is
    that of the coordinates the mask decays (those where the update and theta do not have opposite signs); the
    others keep theta. For decay="corrected" it is eta_t^2 * weight_decay.

    Example:
        >>> import torch, decoupled
        >>> opt = decoupled.AdamW(torch.nn.Linear(2, 2).parameters(), lr=1e-3, weight_decay=1e-4)
        >>> for group in opt.param_groups: group["lr"] = 0.5e-3   # what a scheduler does: eta_t = 0.5
        >>> decoupled.effective_decay(opt)
        [5e-05]
    """
    if not isinstance(optimizer, Optimizer):
        raise TypeError(f"effective_decay() takes a torch.optim.Optimizer, got {type(optimizer).__name__}")
    factors: list[float | None] = []
    lr_coupled = tuple(
        getattr(torch.optim, name) for name in ("AdamW", "Adafactor", "Muon") if hasattr(torch.optim, name)
    )
    for group in optimizer.param_groups:
        weight_decay = float(group.get("weight_decay", 0.0))
        if "decay" in group:
            terms = group_decay_terms(group)
            factors.append(None if group["decay"] == "l2" and weight_decay else terms.factor)
        elif "decoupled_weight_decay" in group:
            factors.append(float(group["lr"]) * weight_decay if group["decoupled_weight_decay"] else _l2(weight_decay))
        elif isinstance(optimizer, lr_coupled):
            factors.append(float(group["lr"]) * weight_decay)
        elif isinstance(optimizer, torch.optim.ASGD) and not weight_decay:
            factors.append(float(group["lambd"]) * _asgd_eta(optimizer, group))
        else:
            factors.append(_l2(weight_decay))
    return factors


def _l2(weight_decay: float) -> float | None:
    return None if weight_decay else 0.0


def _asgd_eta(optimizer: Optimizer, group: dict[str, Any]) -> float:
    """The step size eta ASGD's next step uses (its decay is theta *= 1 - lambd * eta): the state's, else lr."""
    for param in group["params"]:
        eta = optimizer.state.get(param, {}).get("eta")
        if eta is not None:
            return float(eta)
    return float(group["lr"])
