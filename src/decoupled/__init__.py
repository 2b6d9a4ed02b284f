"""decoupled: exact decoupled weight decay for PyTorch.

SGDW and AdamW as in Loshchilov & Hutter, "Decoupled Weight Decay Regularization" (ICLR 2019): weight decay
scaled by the schedule multiplier eta_t only, never by the learning rate, so that learning rate and weight
decay can be tuned independently. Other conventions (torch's lr-scaled decay, constant decay, L2) are one
keyword away (``decay=``), and :func:`decouple` gives any torch optimizer the same treatment.
"""

from .conventions import DECAY_CONVENTIONS, convert_weight_decay, decay_timescale, weight_decay_from_timescale
from .groups import effective_decay, param_groups
from .optimizers import SGDW, AdamW, decouple
from .schedules import CosineWarmRestarts, normalized_weight_decay

__all__ = [
    "DECAY_CONVENTIONS",
    "AdamW",
    "CosineWarmRestarts",
    "SGDW",
    "convert_weight_decay",
    "decay_timescale",
    "decouple",
    "effective_decay",
    "normalized_weight_decay",
    "param_groups",
    "weight_decay_from_timescale",
]

__version__ = "0.1.0"
