"""decoupled: exact decoupled weight decay for PyTorch.

SGDW and AdamW as in Loshchilov & Hutter, "Decoupled Weight Decay Regularization" (ICLR 2019): weight decay
scaled by the schedule multiplier eta_t only, never by the learning rate, so that learning rate and weight
decay can be tuned independently. Other conventions (torch's lr-scaled decay, constant decay, L2) are one
keyword away (``decay=``), and :func:`decouple` gives any torch optimizer the same treatment.
"""

# The names below are imported on first use (PEP 562), not here: importing torch takes a second or more, and the
# ``decoupled`` command must answer --help and --version, and handle a Ctrl-C, before it has paid for that.
# ``from decoupled import AdamW`` and ``decoupled.AdamW`` work as with plain imports.
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .conventions import DECAY_CONVENTIONS, convert_weight_decay, decay_timescale, weight_decay_from_timescale
    from .groups import effective_decay, param_groups
    from .optimizers import SGDW, AdamW, decouple
    from .precision import PRECISIONS, load_master_state_dict, master_state_dict, master_weights, set_master_weights
    from .schedules import CosineWarmRestarts, normalized_weight_decay

# Each public name -> the submodule that defines it.
_EXPORTS = {
    "DECAY_CONVENTIONS": "conventions",
    "convert_weight_decay": "conventions",
    "decay_timescale": "conventions",
    "weight_decay_from_timescale": "conventions",
    "effective_decay": "groups",
    "param_groups": "groups",
    "SGDW": "optimizers",
    "AdamW": "optimizers",
    "decouple": "optimizers",
    "PRECISIONS": "precision",
    "load_master_state_dict": "precision",
    "master_state_dict": "precision",
    "master_weights": "precision",
    "set_master_weights": "precision",
    "CosineWarmRestarts": "schedules",
    "normalized_weight_decay": "schedules",
}

__all__ = [
    "DECAY_CONVENTIONS",
    "PRECISIONS",
    "AdamW",
    "CosineWarmRestarts",
    "SGDW",
    "convert_weight_decay",
    "decay_timescale",
    "decouple",
    "effective_decay",
    "load_master_state_dict",
    "master_state_dict",
    "master_weights",
    "normalized_weight_decay",
    "param_groups",
    "set_master_weights",
    "weight_decay_from_timescale",
]

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'decoupled' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
