"""Low-precision parameters: how AdamW, SGDW and decouple() write bfloat16 and float16 parameters.

A bfloat16 parameter of 0.5 under a per-step decay of 1e-4 never moves when each step is rounded to bfloat16:
0.5 * (1 - 1e-4) rounds back to 0.5 (a bfloat16 has 8 significant bits, so any change under half an ulp, 2^-9
relative, is lost), and with it the paper's weight decay late in a schedule, where eta_t * lambda is smallest.
``precision`` chooses what a step does instead (a keyword of the optimizers and a key of every param group):

=============  ============================================================  ==========================
precision      what a step of a bfloat16/float16 parameter does              extra state per element
=============  ============================================================  ==========================
"exact"        the float32 step on the float32 master (parameter +           2 bytes (bfloat16), 4
(default)      remainder), written back as the master rounded to nearest     (float16); moments float32
               and the new remainder: bit for bit the mixed-precision
               recipe with float32 master weights
"stochastic"   the float32 step on the parameter's own value, rounded        none (moments float32)
               stochastically: right on average, each weight random-walks
"nearest"      the step in the parameter's dtype, as torch.optim does        none (moments in the
               (small updates and the decay are lost)                        parameter's dtype)
=============  ============================================================  ==========================

float32 and float64 parameters are their own master: every precision steps them alike (a documented no-op, so
that one setting serves a model that mixes dtypes). The remainder of "exact" is the master's low 16 bits for
bfloat16 (the parameter being the high 16 bits rounded to nearest, ties away from zero, as TransformerEngine
stores them) and ``master - float(param)`` in float32 for float16. The random bits of "stochastic" come from a
counter-based hash of the group's ``seed``, the parameter's position in the optimizer, its rounding count and the
element's index: a run is reproducible from its seed and independent of the thread count and the kernel path.
See :mod:`decoupled.kernels.lowp` for the arithmetic and docs/low-precision.md for what each mode costs.

Example:
    >>> import torch, decoupled
    >>> model = torch.nn.Linear(4, 2).to(torch.bfloat16)
    >>> opt = decoupled.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)  # precision="exact"
    >>> model(torch.randn(8, 4, dtype=torch.bfloat16)).square().mean().backward()
    >>> opt.step()
    >>> masters = decoupled.master_weights(opt)  # {parameter: its float32 master}
    >>> masters[model.weight].dtype
    torch.float32
"""

from __future__ import annotations

from collections.abc import Mapping
from numbers import Integral
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from .kernels import lowp

__all__ = [
    "PRECISIONS",
    "check_precision",
    "check_seed",
    "load_master_state_dict",
    "master_state_dict",
    "master_weights",
    "set_master_weights",
]

# One entry per precision: what it does, in the words the errors and the docs use.
PRECISIONS: dict[str, str] = {
    "exact": "the float32 step on a float32 master (the parameter and a remainder), rounded to nearest",
    "stochastic": "the float32 step on the parameter, rounded stochastically (unbiased, no remainder)",
    "nearest": "the step in the parameter's own dtype, as torch.optim does (small updates are lost)",
}
LOW_PRECISION_DTYPES = lowp.LOW_PRECISION_DTYPES
REMAINDER = "remainder"  # the state key of an "exact" parameter's remainder
STREAM = "rounding_stream"  # the state key of a "stochastic" parameter's (key, count) pair
_MOMENT_KEYS = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq", "momentum_buffer")


def check_precision(value: object) -> str:
    """``value`` if it names a precision, else a ValueError/TypeError naming it."""
    names = ", ".join(map(repr, PRECISIONS))
    if not isinstance(value, str):
        raise TypeError(f"precision must be one of {names}, got {value!r}")
    if value not in PRECISIONS:
        raise ValueError(f"precision must be one of {names}, got {value!r}")
    return value


def check_seed(value: object) -> int:
    """The stochastic rounding's seed: an integer in [0, 2^64)."""
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise TypeError(f"seed must be an integer in [0, 2**64), got {value!r}")
    seed = int(value)
    if not 0 <= seed < 2**64:
        raise ValueError(f"seed must be an integer in [0, 2**64), got {value!r}")
    return seed


def keeps_master(param: Tensor, precision: str) -> bool:
    """Whether a step of ``param`` under ``precision`` runs the float32 step of :mod:`decoupled.kernels.lowp`."""
    return precision != "nearest" and _real_dtype(param) in LOW_PRECISION_DTYPES


def _real_dtype(param: Tensor) -> torch.dtype:
    return param.real.dtype if param.is_complex() else param.dtype


def state_dtype(param: Tensor, precision: str) -> torch.dtype:
    """The dtype of a parameter's moments: float32 where its step runs in float32, else the parameter's own
    (complex parameters: the complex dtype of that real dtype)."""
    if not keeps_master(param, precision):
        return param.dtype
    return torch.complex64 if param.is_complex() else torch.float32


def _remainder_like(param: Tensor) -> Tensor:
    dtype = lowp.remainder_dtype(_real_dtype(param))
    if param.is_complex():  # complex32: the remainders of its float16 pairs, as the real view sees them
        dtype = torch.complex64
    return torch.zeros_like(param, dtype=dtype, memory_format=torch.preserve_format)


def prepare_state(
    optimizer: Optimizer, group: dict[str, Any], param: Tensor, state: dict[str, Any], *, moments: bool = True
) -> tuple[Tensor | None, Tensor | None]:
    """Make the state a parameter's precision needs and convert what it no longer matches: the moments to
    :func:`state_dtype` (unless ``moments`` is False: decouple()'s inner optimizers keep theirs), a remainder for
    "exact" (zeros: the master starts at the parameter), a rounding stream for "stochastic"; a remainder is
    dropped when the precision no longer keeps one. Returns (remainder, stream)."""
    precision = group["precision"]
    want = state_dtype(param, precision)
    for key in _MOMENT_KEYS if moments else ():
        value = state.get(key)
        if isinstance(value, Tensor) and value.dtype != want:
            state[key] = value.to(want)
    if not keeps_master(param, precision):
        state.pop(REMAINDER, None)
        state.pop(STREAM, None)
        return None, None
    if precision == "exact":
        state.pop(STREAM, None)
        remainder = state.get(REMAINDER)
        if remainder is None:
            remainder = state[REMAINDER] = _remainder_like(param)
        elif remainder.dtype != _remainder_like(param).dtype or remainder.shape != param.shape:
            raise ValueError(
                f"state[{REMAINDER!r}] of a {param.dtype} parameter of shape {tuple(param.shape)} has dtype "
                f"{remainder.dtype} and shape {tuple(remainder.shape)}; expected {_remainder_like(param).dtype} of the "
                "parameter's shape (was the state loaded by code that casts state to the parameter's dtype?)"
            )
        return remainder, None
    state.pop(REMAINDER, None)
    stream = state.get(STREAM)
    if stream is None:
        stream_key = lowp.stream_key(group["seed"], _position(optimizer, param))
        stream = state[STREAM] = torch.tensor([stream_key, 0], dtype=torch.int64, device=param.device)
    return None, stream


def _position(optimizer: Optimizer, param: Tensor) -> int:
    """The parameter's position among all of the optimizer's parameters (the order of its param groups)."""
    positions: dict[int, int] = optimizer.__dict__.get("_param_positions", {})
    if id(param) not in positions:
        every = [p for group in optimizer.param_groups for p in group["params"]]
        positions = {id(p): index for index, p in enumerate(every)}
        optimizer.__dict__["_param_positions"] = positions
    return positions[id(param)]


# ------------------------------------------------------------------------------------------------------------
# Checkpoints: torch's load_state_dict casts every state tensor but "step" to its parameter's dtype, which would
# round the float32 moments of a bfloat16 parameter (or a float16 one's float32 remainder) and turn the int64
# rounding stream into bfloat16 numbers.


def restore_loaded_dtypes(optimizer: Optimizer, state_dict: Mapping[str, Any]) -> None:
    """After torch's ``Optimizer.load_state_dict``: give the state of every bfloat16/float16 parameter back the
    dtypes the checkpoint stored (moved to the parameter's device), so that remainders, streams and float32
    moments survive the load bit for bit. The next step converts whatever its precision needs otherwise."""
    saved_ids = [i for group in state_dict["param_groups"] for i in group["params"]]
    params = [p for group in optimizer.param_groups for p in group["params"]]
    for saved_id, param in zip(saved_ids, params):
        saved = state_dict["state"].get(saved_id)
        if not saved or _real_dtype(param) not in LOW_PRECISION_DTYPES:
            continue
        state = optimizer.state[param]
        for key, value in saved.items():
            if key != "step" and isinstance(value, Tensor) and state.get(key) is not None:
                state[key] = value.to(device=param.device)


# ------------------------------------------------------------------------------------------------------------
# The float32 masters


def _exact_params(optimizer: Optimizer) -> list[tuple[Tensor, Tensor]]:
    """(parameter, remainder) of every parameter whose group keeps an "exact" master and that has a remainder."""
    pairs = []
    for group in optimizer.param_groups:
        if group.get("precision") != "exact":
            continue
        for param in group["params"]:
            remainder = optimizer.state.get(param, {}).get(REMAINDER)
            if remainder is not None and keeps_master(param, "exact"):
                pairs.append((param, remainder))
    return pairs


def _join(param: Tensor, remainder: Tensor) -> Tensor:
    if param.is_complex():
        return torch.view_as_complex(lowp.join(torch.view_as_real(param.detach()), torch.view_as_real(remainder)))
    return lowp.join(param.detach(), remainder)


def master_weights(optimizer: Optimizer) -> dict[Tensor, Tensor]:
    """Every parameter of ``optimizer`` with its float32 master, as new tensors: the exact master of a
    bfloat16/float16 parameter under precision "exact" (parameter + remainder), and ``param.float()`` for
    the others (a float64 parameter stays float64: it is its own master).

    Use it to evaluate or export the weights the optimizer actually holds (:func:`master_state_dict` gives them
    by the model's names).
    """
    if not isinstance(optimizer, Optimizer):
        raise TypeError(f"master_weights() takes a torch.optim.Optimizer, got {type(optimizer).__name__}")
    masters = {param: _join(param, remainder) for param, remainder in _exact_params(optimizer)}
    for group in optimizer.param_groups:
        for param in group["params"]:
            if param not in masters:
                masters[param] = _promote(param.detach())
    return masters


def _promote(tensor: Tensor) -> Tensor:
    """A new tensor: bfloat16/float16 (complex32) values in float32 (complex64), exactly; others copied."""
    if tensor.dtype in LOW_PRECISION_DTYPES:
        return tensor.float()
    if tensor.dtype == torch.complex32:
        return tensor.to(torch.complex64)
    return tensor.clone()


def set_master_weights(optimizer: Optimizer, weights: Mapping[Tensor, Tensor]) -> None:
    """Set parameters from float32 (or float64) values: for a bfloat16/float16 parameter under "exact" the
    remainder is made so that its master equals the value rounded once to float32, bit for bit; other
    parameters are copied into (rounded to nearest, as ``Tensor.copy_``). ``weights`` maps parameters of
    ``optimizer`` to values of their shape."""
    if not isinstance(optimizer, Optimizer):
        raise TypeError(f"set_master_weights() takes a torch.optim.Optimizer, got {type(optimizer).__name__}")
    groups = {id(p): group for group in optimizer.param_groups for p in group["params"]}
    for param, value in weights.items():
        group = groups.get(id(param))
        if group is None:
            raise ValueError(
                f"set_master_weights(): a tensor of shape {tuple(param.shape)} is not a parameter of this optimizer"
            )
        if not isinstance(value, Tensor) or value.shape != param.shape:
            shape = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
            raise ValueError(
                f"set_master_weights(): a value of shape {shape} for a parameter of shape {tuple(param.shape)}"
            )
        with torch.no_grad():
            if group.get("precision") == "exact" and keeps_master(param, "exact"):
                state = optimizer.state[param]
                remainder = state.get(REMAINDER)
                if remainder is None:
                    remainder = state[REMAINDER] = _remainder_like(param)
                _split(value.to(device=param.device), param, remainder)
            else:
                param.copy_(value)


def _split(value: Tensor, param: Tensor, remainder: Tensor) -> None:
    if param.is_complex():
        value = torch.view_as_real(value.to(torch.complex64))
        param, remainder = torch.view_as_real(param.detach()), torch.view_as_real(remainder)
    lowp.split_(value.float() if not param.is_complex() else value, param.detach(), remainder)


def master_state_dict(model: nn.Module, optimizer: Optimizer) -> dict[str, Tensor]:
    """``model.state_dict()`` with every low-precision floating tensor in float32: the exact masters of the
    parameters ``optimizer`` keeps under "exact", the others converted (exactly). For evaluation, export, or a
    float32 copy of the model: ``fp32_model.load_state_dict(master_state_dict(model, optimizer))``."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"master_state_dict() takes an nn.Module, got {type(model).__name__}")
    if not isinstance(optimizer, Optimizer):
        raise TypeError(f"master_state_dict() takes a torch.optim.Optimizer, got {type(optimizer).__name__}")
    masters = {id(param): _join(param, remainder) for param, remainder in _exact_params(optimizer)}
    params = {name: param for name, param in model.named_parameters(remove_duplicate=False)}
    result = {}
    for name, value in model.state_dict().items():
        param = params.get(name)
        if param is not None and id(param) in masters:
            result[name] = masters[id(param)]
        elif isinstance(value, Tensor) and (value.dtype in LOW_PRECISION_DTYPES or value.dtype == torch.complex32):
            result[name] = _promote(value.detach())
        else:
            result[name] = value
    return result


def load_master_state_dict(
    model: nn.Module, optimizer: Optimizer, state_dict: Mapping[str, Any], strict: bool = True
) -> Any:
    """Load a float32 (or any) state_dict into a low-precision model so that the parameters ``optimizer`` keeps
    under "exact" get masters equal to the loaded values bit for bit (their remainders made for it); everything
    else loads as ``model.load_state_dict`` loads it. Returns what that returns (missing and unexpected keys).
    Call it after building the optimizer, and before its first step or after loading its state."""
    result = model.load_state_dict(state_dict, strict=strict)
    owned = {id(p) for group in optimizer.param_groups for p in group["params"]}
    params = dict(model.named_parameters(remove_duplicate=False))
    weights = {params[name]: value for name, value in state_dict.items() if name in params}
    set_master_weights(optimizer, {p: v for p, v in weights.items() if id(p) in owned})
    return result
