"""AdamW, SGDW and decouple(): thin torch.optim shells over :mod:`decoupled.kernels` and
:mod:`decoupled.conventions`.

Each parameter group carries ``lr`` (eta_t * alpha, set by any torch LR scheduler), ``base_lr`` (alpha: the lr
the group was built with), ``weight_decay`` and ``decay`` (the convention). At every step the group's decay
terms come from :func:`decoupled.conventions.decay_terms` and the update from one kernel call.

Reference: I. Loshchilov and F. Hutter, "Decoupled Weight Decay Regularization", ICLR 2019, arXiv:1711.05101.
"""

from __future__ import annotations

import copyreg
import functools
import inspect
import sys
import warnings
from typing import Any, Callable, Iterable

import torch
from torch import Tensor
from torch.optim import Optimizer

from . import kernels
from . import precision as _precision
from ._validation import (
    KernelChoiceError,
    check_beta,
    check_bool,
    check_kernel_choice,
    check_nonnegative,
    check_unit_interval,
)
from .conventions import DECAY_CONVENTIONS, check_decay, decay_terms, group_decay_terms
from .kernels.layout import is_dense
from .kernels.layout import pick as layout_pick
from .precision import check_precision, check_seed, keeps_master, prepare_state, state_dtype

__all__ = ["AdamW", "SGDW", "decouple"]

ParamsT = Iterable[Tensor] | Iterable[dict[str, Any]]


def _scalar(name: str, value: Any) -> Any:
    """A hyperparameter that may be a 1-element Tensor (as torch.optim allows for lr and betas), as a Python
    number; other values unchanged. On the CPU this is no synchronisation; on a GPU it is one per group and step,
    which ``capturable=True`` avoids (there the kernels take the tensors themselves)."""
    if isinstance(value, Tensor):
        if value.numel() != 1:
            raise ValueError(f"Tensor {name} must be 1-element, got shape {tuple(value.shape)}")
        return value.item()
    return value


def _check_decay_keys(group: dict[str, Any]) -> None:
    check_nonnegative("lr", _scalar("lr", group["lr"]))
    check_nonnegative("base_lr", _scalar("base_lr", group["base_lr"]))
    check_nonnegative("weight_decay", group["weight_decay"])
    check_decay(group["decay"])
    group_decay_terms(group)  # refuses decoupled decay in a group built with lr=0


def _foreign_decay(group: dict[str, Any]) -> str | None:
    """The convention of a torch optimizer's group's weight_decay (None when its keys do not tell).

    torch's Adam, AdamW, NAdam and RAdam say it with ``decoupled_weight_decay`` (True: theta *= 1 - lr_t wd, this
    package's "lr"; False: L2); torch.optim.SGD (momentum and dampening keys) knows only L2.
    """
    flag = group.get("decoupled_weight_decay")
    if isinstance(flag, bool):
        return "lr" if flag else "l2"
    if "momentum" in group and "dampening" in group:
        return "l2"
    return None


def _adopt_foreign_decay(group: dict[str, Any], target: str) -> str:
    """Give a group loaded from a torch optimizer's checkpoint the convention that continues that run exactly.

    ``group["decay"]`` already holds the loading optimizer's default ``target``. Returns what was done ("" when
    nothing changes): torch's lr-coupled decay w becomes the paper's w * base_lr under "decoupled" (the same
    factor lr_t * w at every step of any schedule); any other mismatch keeps the checkpoint's own convention in
    that group. Raises a ValueError when the convention cannot be told from the group's keys.
    """
    weight_decay = group["weight_decay"]
    source = _foreign_decay(group)
    if weight_decay == 0 or source == target:
        group["decay"] = target
        return ""
    if source is None:
        if target == "lr":  # a torch.optim.AdamW checkpoint of a torch without the flag: as before
            return ""
        raise ValueError(
            f"cannot tell the weight-decay convention of a loaded param group with weight_decay={weight_decay!r} "
            "and no 'decay' or 'decoupled_weight_decay' key; set group['decay'] in the state_dict's param_groups "
            f"to the convention it was trained with ({', '.join(map(repr, DECAY_CONVENTIONS))}) before loading"
        )
    base_lr = float(_scalar("base_lr", group["base_lr"]))  # a Tensor lr (torch's capturable runs) as a number
    if source == "lr" and target == "decoupled" and base_lr > 0:
        group["weight_decay"] = weight_decay * base_lr
        return (
            f"torch's lr-coupled weight_decay={weight_decay!r} converted to decay='decoupled' "
            f"weight_decay={group['weight_decay']!r} (= weight_decay * base_lr {base_lr!r}: the same decay at every "
            "step)"
        )
    group["decay"] = source
    return (
        f"keeps the checkpoint's convention decay={source!r} with weight_decay={weight_decay!r} (this optimizer "
        f"was built with decay={target!r}, which no weight decay converts to exactly)"
    )


class _DecayGroups:
    """Mixin for torch optimizers whose groups carry a decay convention.

    Keeps ``base_lr`` (the lr a group was built with) in every group, fills this package's keys into groups
    loaded from checkpoints of other optimizers (a torch.optim.AdamW checkpoint loads into
    ``AdamW(decay="lr")``), and validates every group, naming the group and the bad value.
    """

    # Keys a group must get before the inner optimizer's defaults are filled in (decouple() only: there the
    # inner optimizer is built with weight_decay=0 while the groups keep the user's value).
    _decay_defaults: dict[str, Any] = {}

    def _check_group(self, group: dict[str, Any]) -> None:
        _check_decay_keys(group)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        for key, value in self._decay_defaults.items():
            param_group.setdefault(key, value)
        super().add_param_group(param_group)  # type: ignore[misc]
        group = self.param_groups[-1]  # type: ignore[attr-defined]
        group.setdefault("base_lr", _scalar("lr", group["lr"]))  # a float: a Tensor lr is changed in place
        try:
            self._check_group(group)
        except (TypeError, ValueError) as error:
            self.param_groups.pop()  # type: ignore[attr-defined]
            index = len(self.param_groups)  # type: ignore[attr-defined]
            raise type(error)(f"param group {index}: {error}") from None

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """torch's ``Optimizer.load_state_dict``, keeping the dtypes the checkpoint stored for the state of
        bfloat16/float16 parameters (remainders, rounding streams, float32 moments), which torch would cast to the
        parameter's dtype."""
        super().load_state_dict(state_dict)  # type: ignore[misc]
        _precision.restore_loaded_dtypes(self, state_dict)  # type: ignore[arg-type]

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)  # type: ignore[misc]
        notes = []
        for index, group in enumerate(self.param_groups):  # type: ignore[attr-defined]
            foreign = "decay" not in group  # every group of this package carries its convention
            own_weight_decay = "weight_decay" in group
            for key, value in self.defaults.items():  # type: ignore[attr-defined]
                if key != "differentiable":  # torch's base __setstate__ adds it to the defaults, not a group key
                    group.setdefault(key, value)
            # A torch checkpoint whose scheduler recorded initial_lr knows the lr it was built with.
            group.setdefault("base_lr", group.get("initial_lr", group["lr"]))
            if foreign and own_weight_decay:
                note = _adopt_foreign_decay(group, self.defaults["decay"])  # type: ignore[attr-defined]
                if note:
                    notes.append(f"param group {index}: {note}")
        if notes:
            warnings.warn(
                "loaded a state_dict of an optimizer outside this package (its groups have no 'decay'): "
                + "; ".join(notes),
                UserWarning,
                stacklevel=3,
            )


class _Optimizer(_DecayGroups, Optimizer):
    """Shared shell of AdamW and SGDW: validation of the defaults and of every group, sparse-gradient check."""

    def __init__(self, params: ParamsT, defaults: dict[str, Any]) -> None:
        self._check_group(dict(defaults, base_lr=_scalar("lr", defaults["lr"])))  # unprefixed messages for arguments
        super().__init__(params, defaults)

    def _check_group(self, group: dict[str, Any]) -> None:
        _check_decay_keys(group)
        check_bool("maximize", group["maximize"])
        check_kernel_choice(group["foreach"], group["fused"])
        check_bool("capturable", group.get("capturable", False))
        check_bool("differentiable", group.get("differentiable", False))
        if group.get("differentiable") and (group["fused"] or group["foreach"]):
            kind = "fused" if group["fused"] else "foreach"
            raise KernelChoiceError(f"`{kind}` does not support `differentiable` (it runs the for-loop path)")
        if isinstance(group["lr"], Tensor) and group["foreach"] and not group.get("capturable"):
            raise ValueError("lr as a Tensor is not supported for capturable=False and foreach=True")
        _check_precision_keys(group)
        check_bool("cautious", group.get("cautious", False))
        if group.get("cautious") and group["decay"] == "l2":
            raise ValueError(
                "cautious=True masks a decoupled weight decay (theta -= factor * 1[u theta >= 0] * theta); "
                "decay='l2' adds weight_decay * theta to the gradient instead, where there is no decay to mask: "
                "use a decoupled convention ('decoupled', 'lr', 'constant', 'corrected') or cautious=False"
            )

    def _grad_enabled(self) -> bool:
        """Steps run without autograd, except with ``differentiable=True`` (as in torch.optim)."""
        return bool(self.defaults.get("differentiable", False))

    def _params_with_grad(self, group: dict[str, Any], group_index: int) -> list[Tensor]:
        params = []
        for index, param in enumerate(group["params"]):
            if param.grad is None:
                continue
            if param.grad.is_sparse:
                raise ValueError(
                    f"{type(self).__name__} does not support sparse gradients (param group {group_index}, "
                    f"parameter {index} of shape {tuple(param.shape)}); use dense gradients, e.g. "
                    "nn.Embedding(sparse=False), or torch.optim.SparseAdam"
                )
            params.append(param)
        return params


def _check_precision_keys(group: dict[str, Any]) -> None:
    """The group's ``precision`` and ``seed``, and the kernel options its float32 step of bfloat16/float16
    parameters cannot take (autograd cannot follow the integer views of a remainder; capturable steps would
    compute the bias corrections on the device)."""
    precision = check_precision(group["precision"])
    check_seed(group["seed"])
    if precision == "nearest" or not any(keeps_master(p, precision) for p in group.get("params", ())):
        return
    for flag in ("differentiable", "capturable"):
        if group.get(flag):
            raise ValueError(
                f"{flag}=True is not supported with precision={precision!r} on bfloat16/float16 parameters (their "
                "step runs in float32 on a master autograd and CUDA graphs cannot follow); use precision='nearest' "
                "or float32 parameters"
            )


def _evaluate(closure: Callable[[], Any] | None) -> Any:
    """The closure's loss, computed with gradients enabled (steps run under no_grad), or None."""
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()


def _real(tensor: Tensor) -> Tensor:
    """A complex tensor as a real view with a trailing dimension of 2 (updates write through)."""
    return torch.view_as_real(tensor) if tensor.is_complex() else tensor


_PLAIN_TENSOR_TYPES = (Tensor, torch.nn.Parameter)


def _dtensor_type() -> type | None:
    # A DTensor can only exist once torch.distributed.tensor (torch 2.4: torch.distributed._tensor) is imported;
    # looking it up rather than importing it keeps `import decoupled` from paying ~1 s for it.
    for name in ("torch.distributed.tensor", "torch.distributed._tensor"):
        dtensor = getattr(sys.modules.get(name), "DTensor", None)
        if dtensor is not None:
            return dtensor
    return None


def _local(tensor: Tensor, like: Tensor | None = None) -> Tensor:
    """What a kernel updates in place: ``tensor`` itself, or its local shard if it is a DTensor; complex as real.

    The updates are elementwise, so a DTensor (FSDP2, tensor parallel) is updated through its local shard
    (``to_local()`` is a view: writes go through). A gradient placed unlike its parameter ``like`` is first
    redistributed to the parameter's placements. The native kernels take data pointers and cannot take a
    DTensor (whose own data pointer is null); the local shard also spares every op DTensor's dispatch.
    """
    if type(tensor) in _PLAIN_TENSOR_TYPES:  # the common case, checked first: this runs for every tensor, every step
        return _real(tensor)
    dtensor = _dtensor_type()
    if dtensor is not None and isinstance(tensor, dtensor):
        if like is not None and (tensor.placements != like.placements or tensor.device_mesh != like.device_mesh):
            tensor = tensor.redistribute(like.device_mesh, like.placements)
        tensor = tensor.to_local()
    return _real(tensor)


def _eager_under_compile(step: Callable[..., Any]) -> Callable[..., Any]:
    """Make torch.compile run ``step`` eagerly (a graph break around the call) instead of tracing into it.

    Tracing it gains nothing (the default kernels already make one pass over memory) and goes wrong: torch's
    fused Adam op fails functionalization (an internal assert in torch 2.13), the native SGD kernel is a ctypes
    call, and a scheduled lr (a Python float) would recompile the graph at every step. ``torch.compiler.disable``
    is applied on the first call made while compiling: applied here, it would import torch._dynamo (~2 s) with
    ``import decoupled``.
    """

    @functools.wraps(step)
    def wrapper(self: Any, closure: Callable[[], Any] | None = None) -> Any:
        if not torch.compiler.is_compiling():
            return step(self, closure)
        # Not cached in a variable: dynamo guards on it, and its change from None would recompile once.
        return torch.compiler.disable(step)(self, closure)

    return wrapper


def _no_grad_unless_differentiable(step: Callable[..., Any]) -> Callable[..., Any]:
    """Run ``step`` without autograd, or with it for an optimizer built with ``differentiable=True`` (whose steps
    must be differentiated through, e.g. in meta-learning), as torch.optim does."""

    @functools.wraps(step)
    def wrapper(self: Any, closure: Callable[[], Any] | None = None) -> Any:
        with torch.set_grad_enabled(self._grad_enabled()):
            return step(self, closure)

    return wrapper


def _kernel_choice(group: dict[str, Any]) -> dict[str, bool | None]:
    """The group's foreach/fused request; a differentiable step runs the for-loop path (the only one autograd
    can follow)."""
    if group.get("differentiable"):
        return {"foreach": False, "fused": False}
    return {"foreach": group["foreach"], "fused": group["fused"]}


def _kernel_tensors(params: list[Tensor], grads: list[Tensor], *states: list[Tensor]) -> tuple[list[Tensor], ...]:
    """The lists the kernels update in place: the same lists in the common case (plain real tensors: one type
    and one complex check per parameter, not per tensor), else each tensor through :func:`_local` (DTensors as
    their local shards, complex tensors as real views). Grads and state are of their parameter's kind."""
    if all(type(p) in _PLAIN_TENSOR_TYPES and not p.is_complex() for p in params):
        return (params, grads, *states)
    return (
        [_local(p) for p in params],
        [_local(g, p) for g, p in zip(grads, params)],
        *([_local(t) for t in tensors] for tensors in states),
    )


_is_contiguous = Tensor.is_contiguous


def _state_like(state: dict[str, Any], key: str, param: Tensor, param_contiguous: bool) -> Tensor:
    """``state[key]`` in its parameter's memory layout, re-laid out (and stored) once if it is not.

    State made here has its parameter's layout already (``zeros_like``); state loaded from a checkpoint saved
    in another layout (e.g. before ``model.to(memory_format=torch.channels_last)``) does not, and the one-pass
    kernels would send such a parameter to a slower strided path at every step. Costs one ``is_contiguous`` in
    the common case (``param_contiguous``: the caller's, once per parameter).
    """
    tensor = state[key]
    if param_contiguous and _is_contiguous(tensor):
        return tensor
    state[key] = tensor = kernels.layout.relayout_like(tensor, param)
    return tensor


# float32/float64 parameters are their own master: no precision changes their step (complex64/128 neither).
_OWN_MASTER_DTYPES = (torch.float32, torch.float64, torch.complex64, torch.complex128)


class _AdamLists:
    """The tensor lists of one Adam kernel call, gathered parameter by parameter."""

    def __init__(self) -> None:
        self.params: list[Tensor] = []
        self.exp_avgs: list[Tensor] = []
        self.exp_avg_sqs: list[Tensor] = []
        self.max_exp_avg_sqs: list[Tensor] = []
        self.steps: list[Tensor] = []
        self.remainders: list[Tensor] = []
        self.streams: list[Tensor] = []

    def add(
        self, state: dict[str, Any], param: Tensor, amsgrad: bool, remainder: Tensor | None, stream: Tensor | None
    ) -> None:
        contiguous = _is_contiguous(param)
        self.params.append(param)
        self.exp_avgs.append(_state_like(state, "exp_avg", param, contiguous))
        self.exp_avg_sqs.append(_state_like(state, "exp_avg_sq", param, contiguous))
        if amsgrad:
            self.max_exp_avg_sqs.append(_state_like(state, "max_exp_avg_sq", param, contiguous))
        self.steps.append(state["step"])
        if remainder is not None:
            self.remainders.append(_state_like(state, _precision.REMAINDER, param, contiguous))
        if stream is not None:
            self.streams.append(stream)

    def run(self, precision: str, hyper: dict[str, Any]) -> None:
        """One :func:`decoupled.kernels.adam` call over the gathered tensors (if any)."""
        if not self.params:
            return
        params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, remainders = _kernel_tensors(
            self.params, [p.grad for p in self.params], self.exp_avgs, self.exp_avg_sqs, self.max_exp_avg_sqs,
            self.remainders,
        )  # fmt: skip
        kernels.adam(
            params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, self.steps,
            precision=precision, remainders=remainders, streams=self.streams, **hyper,
        )  # fmt: skip


def _new_step(param: Tensor) -> Tensor:
    # As torch.optim: a float32 scalar, on the CPU for CPU parameters and beside the parameter otherwise
    # (torch's fused kernels read it on the device).
    return torch.zeros((), dtype=torch.float32, device=param.device)


class AdamW(_Optimizer):
    r"""Adam with decoupled weight decay: Algorithm 2 of Loshchilov & Hutter (ICLR 2019), exactly.

    With alpha the lr the group was built with (``base_lr``), eta_t = lr_t / alpha the schedule multiplier set by
    any torch LR scheduler, and lambda = ``weight_decay``::

        g_t     = grad f_t(theta_{t-1})                 (negated when maximize=True)
        m_t     = beta1 m_{t-1} + (1 - beta1) g_t
        v_t     = beta2 v_{t-1} + (1 - beta2) g_t^2     (v_t = max(v_t, vmax_{t-1}) in the step with amsgrad)
        theta_t = theta_{t-1} - eta_t (alpha mhat_t / (sqrt(vhat_t) + eps) + lambda theta_{t-1})

    with mhat_t = m_t / (1 - beta1^t), vhat_t = v_t / (1 - beta2^t). lambda is NOT multiplied by alpha; that is
    what lets learning rate and weight decay be tuned independently. ``decay`` picks another convention
    (see :mod:`decoupled.conventions`): "lr" is torch.optim.AdamW (theta -= lr_t lambda theta), "constant" is
    TF Addons (theta -= lambda theta), "corrected" is AdamC (theta -= eta_t^2 lambda theta), "l2" is Adam with
    an L2 penalty (g_t += lambda theta_{t-1}).

    With ``cautious=True`` (cautious weight decay, Chen et al. 2025, arXiv:2510.12402) the decay is applied
    only where the update direction u_t = mhat_t / (sqrt(vhat_t) + eps) and theta_{t-1} do not have opposite
    signs: theta_t = theta_{t-1} - eta_t alpha u_t - eta_t lambda 1[u_t theta_{t-1} >= 0] theta_{t-1} (any
    decoupled convention's factor in place of eta_t lambda). On the CPU it runs in the one-pass native kernel at
    the plain step's cost.

    Args:
        params: parameters or parameter groups (dicts that may override any hyperparameter below).
        lr: learning rate alpha (default 1e-3).
        betas: (beta1, beta2) in [0, 1) (default (0.9, 0.999)).
        eps: added to sqrt(vhat) (default 1e-8).
        weight_decay: lambda, the per-step decay at eta_t = 1 (default 1e-5: torch.optim.AdamW's default
            weight_decay=1e-2 at its default lr=1e-3, expressed in the paper's units).
        decay: "decoupled" (default), "lr", "constant", "corrected" or "l2".
        amsgrad: use the running maximum of v_t (Reddi et al., 2018).
        maximize: maximize the objective instead of minimizing it.
        cautious: cautious weight decay (default False; refused with decay="l2").
        precision: how bfloat16/float16 parameters are stepped (:mod:`decoupled.precision`): "exact" (default:
            the float32 step on a float32 master kept as the parameter plus a remainder in the state, bit for bit
            the mixed-precision recipe with float32 masters), "stochastic" (the float32 step rounded
            stochastically), "nearest" (the step in the parameter's dtype, as torch.optim.AdamW). The moments
            are float32 but under "nearest". No effect on float32/float64 parameters.
        seed: the seed of stochastic rounding's counter-based random bits (default 0).
        foreach, fused: pick an implementation as in torch.optim; by default the fastest that supports the
            parameters (fused: torch's fused AdamW kernel, with weight_decay = eta_t lambda / lr_t; on the CPU
            this package's native kernel for bfloat16 and for cautious decay, and for every precision other than
            "nearest"; every path gives the same bits under "exact" and "stochastic").
        capturable: keep the step counts on the parameters' device and compute without host synchronisation
            (for CUDA graphs); ``lr`` and ``betas`` may then be Tensors on that device. Runs the foreach (or
            for-loop) path; ``fused=True`` with it is refused. Also accepted on the CPU, where torch refuses it.
        differentiable: let autograd follow the step (runs the for-loop path; ``fused``/``foreach`` refused).

    ``lr`` (and ``betas``, both or neither) may be 1-element Tensors, as in torch.optim: a scheduler then changes
    the Tensor in place; without ``capturable`` its value is read once per group and step.

    Example:
        >>> import torch, decoupled
        >>> model = torch.nn.Linear(4, 2)
        >>> opt = decoupled.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
        >>> sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=100)
        >>> model(torch.randn(8, 4)).square().mean().backward()
        >>> opt.step(); sched.step()

    Migrating from torch.optim.AdamW(lr=a, weight_decay=w): use weight_decay=a * w for the same run
    (:func:`decoupled.convert_weight_decay`), or keep w with ``decay="lr"``.

    Reference: I. Loshchilov and F. Hutter, "Decoupled Weight Decay Regularization", ICLR 2019.
    """

    def __init__(
        self,
        params: ParamsT,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-5,
        *,
        decay: str = "decoupled",
        amsgrad: bool = False,
        maximize: bool = False,
        cautious: bool = False,
        precision: str = "exact",
        seed: int = 0,
        foreach: bool | None = None,
        fused: bool | None = None,
        capturable: bool = False,
        differentiable: bool = False,
    ) -> None:
        defaults = dict(
            lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, decay=decay, amsgrad=amsgrad,
            maximize=maximize, cautious=cautious, precision=precision, seed=seed, foreach=foreach, fused=fused,
            capturable=capturable, differentiable=differentiable,
        )  # fmt: skip
        super().__init__(params, defaults)

    def _check_group(self, group: dict[str, Any]) -> None:
        super()._check_group(group)
        betas = group["betas"]
        if isinstance(betas, (tuple, list)) and len(betas) == 2:
            tensors = [isinstance(beta, Tensor) for beta in betas]
            if tensors[0] != tensors[1]:
                raise ValueError("betas must be either both floats or both Tensors")
            if tensors[0] and group["foreach"] and not group["capturable"]:
                raise ValueError("betas[0] as a Tensor is not supported for capturable=False and foreach=True")
            betas = (_scalar("betas[0]", betas[0]), _scalar("betas[1]", betas[1]))
        check_beta(betas)
        check_nonnegative("eps", group["eps"])
        check_bool("amsgrad", group["amsgrad"])
        if group["capturable"] and group["fused"]:
            raise KernelChoiceError(
                "fused=True with capturable=True is not supported: capturable steps run the foreach path (leave "
                "fused unset, or set foreach=True)"
            )

    @_eager_under_compile
    @_no_grad_unless_differentiable
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Perform one optimization step; ``closure`` re-evaluates the model and returns the loss."""
        loss = _evaluate(closure)
        for group_index, group in enumerate(self.param_groups):
            params = self._params_with_grad(group, group_index)
            if not params:
                continue
            amsgrad, capturable, precision = group["amsgrad"], group.get("capturable", False), group["precision"]
            plain, master = _AdamLists(), _AdamLists()
            for param in params:
                state = self.state[param]
                if "step" not in state:  # a new parameter (or one whose master alone was set)
                    state["step"] = _new_step(param)
                for key in ("exp_avg", "exp_avg_sq", *(("max_exp_avg_sq",) if amsgrad else ())):
                    if key not in state:
                        moment = state_dtype(param, precision)
                        state[key] = torch.zeros_like(param, dtype=moment, memory_format=torch.preserve_format)
                remainder = stream = None
                if param.dtype not in _OWN_MASTER_DTYPES:
                    remainder, stream = prepare_state(self, group, param, state)
                if state["step"].device != param.device and (capturable or not param.is_cpu):
                    state["step"] = state["step"].to(param.device)
                lists = master if remainder is not None or stream is not None else plain
                lists.add(state, param, amsgrad, remainder, stream)
            lr, (beta1, beta2) = group["lr"], group["betas"]
            if not capturable:  # Tensor hyperparameters as numbers (capturable kernels take the tensors)
                lr, beta1, beta2 = _scalar("lr", lr), _scalar("betas[0]", beta1), _scalar("betas[1]", beta2)
            terms = decay_terms(group["decay"], lr=lr, base_lr=group["base_lr"], weight_decay=group["weight_decay"])
            hyper = dict(
                lr=lr, beta1=beta1, beta2=beta2, eps=group["eps"], decay_factor=terms.factor, l2=terms.l2,
                amsgrad=amsgrad, maximize=group["maximize"], capturable=capturable, cautious=group["cautious"],
                **_kernel_choice(group),
            )  # fmt: skip
            plain.run("nearest", hyper)
            master.run(precision, hyper)
        return loss


class SGDW(_Optimizer):
    r"""SGD with momentum and decoupled weight decay: Algorithm 1 of Loshchilov & Hutter (ICLR 2019), exactly.

    With alpha the lr the group was built with (``base_lr``), eta_t = lr_t / alpha, lambda = ``weight_decay`` and
    mu = ``momentum``; the scheduled step eta_t alpha sits INSIDE the momentum buffer, as in the paper::

        g_t     = grad f_t(theta_{t-1})                 (negated when maximize=True)
        m_t     = mu m_{t-1} + eta_t alpha g_t          (m_0 = 0)
        theta_t = theta_{t-1} - m_t - eta_t lambda theta_{t-1}

    and with ``nesterov=True`` the step is mu m_t + eta_t alpha g_t instead of m_t. With ``cautious=True``
    (cautious weight decay, Chen et al. 2025) the decay is applied only where u_t, the vector subtracted (m_t;
    with nesterov mu m_t + eta_t alpha g_t; without momentum eta_t alpha g_t), and theta_{t-1} do not have
    opposite signs: theta_t = theta_{t-1} - u_t - eta_t lambda 1[u_t theta_{t-1} >= 0] theta_{t-1}.

    How this differs from torch.optim.SGD: torch (and the authors' Lua code) keep the learning rate outside
    the buffer (buf = mu buf + g; theta -= lr_t buf). The two agree while the learning rate is constant; under
    a schedule, torch's buffer applies the *current* lr to all past gradients, while here each gradient keeps
    the lr of the step it was taken at. ``state["momentum_buffer"]`` therefore holds the lr-scaled velocity m_t,
    not torch's buf, and torch.optim.SGD checkpoints do not carry over.

    Args:
        params: parameters or parameter groups (dicts that may override any hyperparameter below).
        lr: learning rate alpha (required).
        momentum: mu in [0, 1) (default 0.9); 0 keeps no buffer.
        weight_decay: lambda, the per-step decay at eta_t = 1 (default 5e-5: the common CIFAR setting of
            SGD with lr 0.1 and L2 5e-4, expressed in the paper's units).
        decay: "decoupled" (default), "lr", "constant", "corrected" or "l2" (see :mod:`decoupled.conventions`).
        dampening: as in torch.optim.SGD, m_t = mu m_{t-1} + (1 - dampening) eta_t alpha g_t, except at a
            buffer's first step (m_1 = eta_t alpha g_1, as torch starts its buffer at g_1) (default 0).
        nesterov: Nesterov momentum (needs momentum > 0 and dampening 0).
        maximize: maximize the objective instead of minimizing it.
        cautious: cautious weight decay (default False; refused with decay="l2").
        precision: how bfloat16/float16 parameters are stepped, as for :class:`AdamW` ("exact" by default; the
            momentum buffer is float32 but under "nearest"). No effect on float32/float64 parameters.
        seed: the seed of stochastic rounding's counter-based random bits (default 0).
        foreach, fused: pick an implementation as in torch.optim; by default the fastest that supports the
            parameters (fused: a one-pass native kernel on the CPU, torch's fused SGD elsewhere).

    Example:
        >>> import torch, decoupled
        >>> model = torch.nn.Linear(4, 2)
        >>> opt = decoupled.SGDW(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-5)
        >>> model(torch.randn(8, 4)).square().mean().backward()
        >>> opt.step()

    Reference: I. Loshchilov and F. Hutter, "Decoupled Weight Decay Regularization", ICLR 2019.
    """

    def __init__(
        self,
        params: ParamsT,
        lr: float,
        momentum: float = 0.9,
        weight_decay: float = 5e-5,
        *,
        decay: str = "decoupled",
        dampening: float = 0.0,
        nesterov: bool = False,
        maximize: bool = False,
        cautious: bool = False,
        precision: str = "exact",
        seed: int = 0,
        foreach: bool | None = None,
        fused: bool | None = None,
        differentiable: bool = False,
    ) -> None:
        defaults = dict(
            lr=lr, momentum=momentum, weight_decay=weight_decay, decay=decay, dampening=dampening,
            nesterov=nesterov, maximize=maximize, cautious=cautious, precision=precision, seed=seed,
            foreach=foreach, fused=fused, differentiable=differentiable,
        )  # fmt: skip
        super().__init__(params, defaults)

    def _check_group(self, group: dict[str, Any]) -> None:
        super()._check_group(group)
        momentum = check_unit_interval("momentum", group["momentum"])
        dampening = check_nonnegative("dampening", group.get("dampening", 0.0))
        if dampening > 1:
            raise ValueError(f"dampening must be in [0, 1], got {group['dampening']!r}")
        check_bool("nesterov", group["nesterov"])
        if group["nesterov"] and (momentum == 0 or dampening != 0):
            raise ValueError(
                f"nesterov=True needs momentum > 0 and dampening 0, got momentum={momentum!r}, dampening={dampening!r}"
            )

    @_eager_under_compile
    @_no_grad_unless_differentiable
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Perform one optimization step; ``closure`` re-evaluates the model and returns the loss."""
        loss = _evaluate(closure)
        for group_index, group in enumerate(self.param_groups):
            params = self._params_with_grad(group, group_index)
            if not params:
                continue
            momentum, dampening, precision = group["momentum"], group.get("dampening", 0.0), group["precision"]
            buffers, fresh, extras = [], [], []
            for param in params:
                state = self.state[param]
                if momentum != 0:
                    if state.get("momentum_buffer") is None:
                        moment = state_dtype(param, precision)
                        buffer = torch.zeros_like(param, dtype=moment, memory_format=torch.preserve_format)
                        state["momentum_buffer"] = buffer
                        fresh.append(param)
                extra = (None, None) if param.dtype in _OWN_MASTER_DTYPES else prepare_state(self, group, param, state)
                if momentum != 0:
                    buffers.append(_state_like(state, "momentum_buffer", param, _is_contiguous(param)))
                if extra[0] is not None:
                    extra = (_state_like(state, _precision.REMAINDER, param, _is_contiguous(param)), None)
                extras.append(extra)
            lr = _scalar("lr", group["lr"])
            terms = decay_terms(group["decay"], lr=lr, base_lr=group["base_lr"], weight_decay=group["weight_decay"])
            hyper = dict(
                momentum=momentum, nesterov=group["nesterov"], maximize=group["maximize"], decay_factor=terms.factor,
                l2=terms.l2, cautious=group["cautious"], **_kernel_choice(group),
            )  # fmt: skip
            if dampening != 0 and momentum != 0:
                # m = mu m + (1 - dampening) lr g, but a new buffer starts at lr g (as torch's starts at g): the
                # update is m itself (no nesterov with dampening), so the buffer's lr is the only difference.
                started = [i for i, param in enumerate(params) if not any(param is new for new in fresh)]
                if len(started) != len(params):
                    new = [i for i in range(len(params)) if i not in set(started)]
                    new_extras = [extras[i] for i in new]
                    self._sgd(layout_pick(params, new), layout_pick(buffers, new), new_extras, lr, hyper, precision)
                    params, buffers = layout_pick(params, started), layout_pick(buffers, started)
                    extras = [extras[i] for i in started]
                lr = (1 - dampening) * lr
            self._sgd(params, buffers, extras, lr, hyper, precision)
        return loss

    @staticmethod
    def _sgd(
        params: list[Tensor],
        buffers: list[Tensor],
        extras: list[tuple[Tensor | None, Tensor | None]],
        lr: float,
        hyper: dict[str, Any],
        precision: str,
    ) -> None:
        """One kernel call for the parameters stepped in their own dtype, one for those with a float32 master
        (``extras``: each parameter's remainder and rounding stream, or Nones)."""
        master = [i for i, (remainder, stream) in enumerate(extras) if remainder is not None or stream is not None]
        if len(master) == len(params):
            parts = [(master, precision)]
        elif master:
            plain = [i for i in range(len(params)) if i not in set(master)]
            parts = [(plain, "nearest"), (master, precision)]
        else:
            parts = [(list(range(len(params))), "nearest")]
        for indices, mode in parts:
            picked = layout_pick(params, indices)
            remainders = [extras[i][0] for i in indices if extras[i][0] is not None]
            streams = [extras[i][1] for i in indices if extras[i][1] is not None]
            params_, grads, buffers_, remainders = _kernel_tensors(
                picked, [p.grad for p in picked], layout_pick(buffers, indices), remainders
            )
            kernels.sgd(
                params_, grads, buffers_, lr=lr, precision=mode, remainders=remainders, streams=streams, **hyper
            )


# How the ``weight_decay`` of torch's own optimizers acts, keyed by the class that defines ``step``. decouple()
# hands its decay to the inner step where that is exact (no second pass over memory) and decays first elsewhere.
_FLAG = "decoupled_weight_decay"  # the group's decoupled_weight_decay: True theta *= 1 - lr wd, False g += wd theta
_LR_COUPLED = "lr-coupled"  # theta *= 1 - lr wd before the update, always (Muon, Adafactor; AdamW before torch 2.7)
_L2 = "l2"  # g += wd theta, after maximize's negation (SGD, RMSprop, Adagrad, ...)


def _torch_classes(*names: str) -> tuple[type, ...]:
    return tuple(getattr(torch.optim, name) for name in names if hasattr(torch.optim, name))


_INNER_DECAY_KINDS: dict[type, str] = {
    **dict.fromkeys(_torch_classes("Adam", "NAdam", "RAdam"), _FLAG),
    **dict.fromkeys(_torch_classes("AdamW", "Muon", "Adafactor"), _LR_COUPLED),
    **dict.fromkeys(_torch_classes("SGD", "RMSprop", "Adagrad", "Adadelta", "Adamax", "ASGD"), _L2),
}
# torch's optimizers that raise on a sparse gradient (SGD, Adagrad and SparseAdam take them): decouple() refuses
# those gradients before it touches anything, so that a refused step leaves the parameters as they were.
_REFUSE_SPARSE: tuple[type, ...] = _torch_classes(
    "Adam", "AdamW", "NAdam", "RAdam", "RMSprop", "Adadelta", "Adamax", "ASGD", "Rprop", "Muon", "Adafactor"
)
# The wrapper torch.optim.Optimizer puts around a class's step the first time the class is built (it runs the
# step hooks); decouple() calls the inner step without it, so that hooks run once, around the whole step.
_HOOKED_STEP_CODE = Optimizer.profile_hook_step(lambda *args, **kwargs: None).__code__


def _without_step_hooks(step: Callable[..., Any]) -> Callable[..., Any]:
    while getattr(step, "__code__", None) is _HOOKED_STEP_CODE:
        step = step.__wrapped__  # type: ignore[attr-defined]
    return step


def _step_owner(optimizer_cls: type) -> type:
    return next(cls for cls in optimizer_cls.__mro__ if "step" in cls.__dict__)


def _inner_decay_kind(optimizer_cls: type, signature: inspect.Signature) -> str | None:
    """How the inner optimizer's own weight_decay acts, if decouple() knows it (None: unknown or absent)."""
    if "weight_decay" not in signature.parameters:
        return None
    owner = _step_owner(optimizer_cls)
    kind = _INNER_DECAY_KINDS.get(owner)
    if kind == _FLAG and "decoupled_weight_decay" not in inspect.signature(owner.__init__).parameters:
        return _L2  # an older torch, whose Adam's weight_decay was L2 only (its AdamW had a step of its own)
    return kind


def _param_tensors(params: list[Any]) -> list[Tensor] | None:
    """The tensors of an optimizer's ``params`` argument (tensors, (name, tensor) pairs or group dicts), or None
    when it holds something else. Groups' ``params`` are made lists in place, as torch's add_param_group does."""
    tensors: list[Tensor] = []
    for item in params:
        if isinstance(item, dict):
            members = item.get("params", [])
            members = [members] if isinstance(members, Tensor) else list(members)
            item["params"] = members
            tensors += [m[1] if isinstance(m, tuple) else m for m in members]
        else:
            tensors.append(item[1] if isinstance(item, tuple) else item)
    return tensors if all(isinstance(t, Tensor) for t in tensors) else None


def _fused_accepts(tensors: list[Tensor]) -> bool:
    """Whether torch's fused Adam takes every tensor: plain floating-point tensors on a fused device."""
    from torch.utils._foreach_utils import _get_fused_kernels_supported_devices

    devices = _get_fused_kernels_supported_devices()
    return bool(tensors) and all(
        type(t) in _PLAIN_TENSOR_TYPES and t.device.type in devices and torch.is_floating_point(t) for t in tensors
    )


_ADAM_STATE_TENSORS = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")


def _fused_layouts_agree(optimizer: Any, params: list[Tensor]) -> bool:
    """Whether torch's fused Adam, which walks raw memory, may take these parameters with their gradients and Adam
    state: one dense layout for each parameter's tensors. A parameter whose state was found to agree is
    remembered with its strides (until load_state_dict), so a step checks only the gradients' strides."""
    known: dict[int, tuple[int, ...]] = optimizer.__dict__.setdefault("_dense_layouts", {})
    for param in params:
        stride = param.stride()
        if param.grad.stride() != stride:  # type: ignore[union-attr]
            return False
        if known.get(id(param)) == stride:
            continue
        if not is_dense(param):
            return False
        state = optimizer.state.get(param)
        if state:
            if any(t is not None and t.stride() != stride for t in map(state.get, _ADAM_STATE_TENSORS)):
                return False
            known[id(param)] = stride
    return True


class _DecoupledType(type):
    """The type of decouple()'s classes: a class pickles as ``decouple(inner)``, so its instances pickle whole."""

    _inner_cls: type[Optimizer]


def _reduce_decoupled_class(cls: _DecoupledType) -> tuple[Any, tuple[type[Optimizer]]]:
    return decouple, (cls._inner_cls,)


_METACLASSES: dict[type, type] = {type: _DecoupledType}
_DECOUPLED_CLASSES: dict[type, type] = {}
copyreg.pickle(_DecoupledType, _reduce_decoupled_class)  # type: ignore[arg-type]


def _metaclass_for(optimizer_cls: type) -> type:
    base = type(optimizer_cls)
    if base not in _METACLASSES:  # the inner class has a metaclass of its own (e.g. abc.ABCMeta)
        _METACLASSES[base] = type(f"_Decoupled{base.__name__}", (_DecoupledType, base), {})
        copyreg.pickle(_METACLASSES[base], _reduce_decoupled_class)  # type: ignore[arg-type]
    return _METACLASSES[base]


class _GroupSettings:
    """Group keys set for the inner step only (its weight decay, its decoupled flag, its fused flag), and restored
    afterwards whatever happens."""

    def __init__(self) -> None:
        self.saved: list[tuple[dict[str, Any], str, bool, Any]] = []

    def set(self, group: dict[str, Any], key: str, value: Any) -> None:
        self.saved.append((group, key, key in group, group.get(key)))
        group[key] = value

    def restore(self) -> None:
        for group, key, present, value in reversed(self.saved):
            if present:
                group[key] = value
            else:
                group.pop(key, None)
        self.saved.clear()


def decouple(optimizer_cls: type[Optimizer]) -> type[Optimizer]:
    """Make any torch.optim.Optimizer subclass apply its ``weight_decay`` decoupled from the gradient.

    The returned subclass takes the inner optimizer's arguments plus ``decay`` (default "decoupled"); its
    ``weight_decay`` is this package's (the paper's units for "decoupled": the per-step decay at eta_t = 1) and
    defaults to 0, whatever the inner optimizer's own default. Each step applies, to every parameter that has a
    gradient::

        theta_t = (1 - factor) theta_{t-1} - inner update       (factor from decoupled.conventions.decay_terms:
                                                                 eta_t weight_decay for "decoupled", ...)

    and with decay="l2" the inner update sees the gradient g + weight_decay * theta_{t-1} instead (p.grad itself
    is left as it was). The decay takes theta_{t-1}, as in Algorithms 1-2 of Loshchilov & Hutter (ICLR 2019).

    How it runs: where the inner optimizer applies a weight decay of its own that can carry the factor exactly,
    the decay is handed to the inner step, so that it costs no second pass over memory: torch's Adam, NAdam and
    RAdam (``decoupled_weight_decay=True`` with weight_decay = factor / lr_t, every kernel path of theirs),
    Muon and Adafactor (whose own decay is theta *= 1 - lr_t wd), and, for "l2", the inner optimizer's own L2
    term (SGD, RMSprop, Adagrad, ...). Everywhere else (and at lr_t = 0) the parameters are decayed in one
    multiply before the inner step. decouple(torch.optim.Adam) built without ``foreach``/``fused`` runs torch's
    fused Adam kernel when torch accepts every parameter for it (floating point, on a fused device), falling back
    for a step to torch's default path for a group whose tensors do not share one dense memory layout.

    Guarantees: the class is the same object for the same ``optimizer_cls`` and pickles by reference, so its
    instances pickle and ``torch.save`` whole; step hooks (the optimizer's and torch's global ones) run once per
    step; a step that raises (a sparse gradient for an optimizer that refuses them is refused before anything is
    touched) leaves the parameters undecayed. ``cautious=True`` is refused: cautious decay masks the decay by the
    sign of the inner update direction, which a wrapper around any optimizer does not see (use decoupled.AdamW
    or SGDW). A closure, when given, is evaluated once before the decay (optimizers that re-evaluate it, like
    LBFGS, are not supported).

    Example:
        >>> import torch, decoupled
        >>> RMSpropW = decoupled.decouple(torch.optim.RMSprop)
        >>> opt = RMSpropW(torch.nn.Linear(4, 2).parameters(), lr=1e-2, weight_decay=1e-4)
        >>> MuonW = decoupled.decouple(torch.optim.Muon)  # Muon with weight decay independent of its lr
        >>> opt = MuonW([torch.nn.Parameter(torch.randn(4, 4))], lr=0.02, weight_decay=1e-4)
    """
    if isinstance(optimizer_cls, Optimizer):
        name = type(optimizer_cls).__name__
        raise TypeError(f"decouple() takes an optimizer class, not an instance: use decouple({name}), got a {name}")
    if not (isinstance(optimizer_cls, type) and issubclass(optimizer_cls, Optimizer)):
        raise TypeError(f"decouple() takes a torch.optim.Optimizer subclass, got {optimizer_cls!r}")
    if isinstance(optimizer_cls, _DecoupledType):
        return optimizer_cls  # already decoupled
    if issubclass(optimizer_cls, torch.optim.LBFGS):
        raise TypeError("decouple() does not support LBFGS: it re-evaluates the closure within one step")
    if optimizer_cls not in _DECOUPLED_CLASSES:
        _DECOUPLED_CLASSES[optimizer_cls] = _make_decoupled(optimizer_cls)
    return _DECOUPLED_CLASSES[optimizer_cls]


def _make_decoupled(optimizer_cls: type[Optimizer]) -> type[Optimizer]:
    signature = inspect.signature(optimizer_cls.__init__)
    inner_has_weight_decay = "weight_decay" in signature.parameters
    inner_has_cautious = "cautious" in signature.parameters
    kind = _inner_decay_kind(optimizer_cls, signature)
    refuses_sparse = _step_owner(optimizer_cls) in _REFUSE_SPARSE
    # torch's fused Adam (the Adam family only: torch 2.13's fused CPU SGD drops bf16 updates).
    may_fuse = kind == _FLAG and "fused" in signature.parameters and "foreach" in signature.parameters

    def __init__(
        self: Any,
        params: ParamsT,
        *args: Any,
        decay: str = "decoupled",
        precision: str = "exact",
        seed: int = 0,
        **kwargs: Any,
    ) -> None:
        cautious = False if inner_has_cautious else kwargs.pop("cautious", False)
        if cautious is not False:
            raise ValueError(
                f"{type(self).__name__}: decouple() does not support cautious={cautious!r}: cautious weight decay "
                "decays only the coordinates where the update direction and the parameter share a sign, and a "
                "wrapper around any optimizer does not see that direction; use decoupled.AdamW or decoupled.SGDW"
            )
        weight_decay = kwargs.pop("weight_decay", None) if not inner_has_weight_decay else None
        if may_fuse and not isinstance(params, Tensor):
            params = list(params)  # looked at twice: here, and by the inner constructor
        try:
            bound = signature.bind(self, params, *args, **kwargs)
        except TypeError as error:
            raise TypeError(f"{type(self).__name__}: {error}") from None
        if inner_has_weight_decay:
            weight_decay = bound.arguments.get("weight_decay")
            bound.arguments["weight_decay"] = 0.0  # the inner optimizer's own decay is off but when a step sets it
        weight_decay = 0.0 if weight_decay is None else weight_decay
        check_nonnegative("weight_decay", weight_decay)
        check_decay(decay)
        check_precision(precision)
        check_seed(seed)
        self._decay_defaults = {"weight_decay": weight_decay, "decay": decay, "precision": precision, "seed": seed}
        self._auto_fused = may_fuse and _may_auto_fuse(bound.arguments, params)
        if self._auto_fused:
            bound.arguments["fused"] = True
        optimizer_cls.__init__(self, *bound.args[1:], **bound.kwargs)
        self.defaults.update(self._decay_defaults)
        # GradScaler must unscale and skip whole steps itself: a skipped step must not decay either.
        self._step_supports_amp_scaling = False

    def _check_group(self: Any, group: dict[str, Any]) -> None:
        _check_decay_keys(group)
        _check_precision_keys(group)
        if not inner_has_cautious and group.get("cautious", False) is not False:
            raise ValueError(
                f"decouple() does not support cautious={group['cautious']!r} (see decoupled.decouple); "
                "use decoupled.AdamW or decoupled.SGDW"
            )

    def __getstate__(self: Any) -> dict[str, Any]:
        return dict(optimizer_cls.__getstate__(self), _auto_fused=getattr(self, "_auto_fused", False))

    def load_state_dict(self: Any, state_dict: dict[str, Any]) -> None:
        self.__dict__.pop("_dense_layouts", None)  # the loaded state's layouts are checked afresh
        _DecayGroups.load_state_dict(self, state_dict)

    @_eager_under_compile
    def step(self: Any, closure: Callable[[], Any] | None = None) -> Any:
        loss = _evaluate(closure)
        groups = self.param_groups
        with_grad = [[p for p in group["params"] if p.grad is not None] for group in groups]
        if refuses_sparse:
            _refuse_sparse(type(self).__name__, optimizer_cls.__name__, groups)
        settings = _GroupSettings()
        decayed: list[tuple[list[Tensor], float]] = []  # decayed here, before the inner step
        saved: list[tuple[Tensor, Tensor]] = []  # (tensor, its value before this step) of low-precision decays
        pending: list[tuple[dict[str, Any], dict[str, Any]]] = []  # (state, its new master entries)
        saved_grads: list[tuple[Tensor, Tensor]] = []
        try:
            with torch.no_grad():
                for group, params in zip(groups, with_grad):
                    rest = _decay_masters(self, group, params, saved, pending)
                    # The inner optimizer's own decay would reach every parameter of the group: it is handed
                    # over only where no parameter was decayed on its master here.
                    inner = kind if len(rest) == len(params) else None
                    _hand_over_decay(self, group, rest, inner, settings, decayed, saved_grads, stepped=params)
            inner_loss = _without_step_hooks(optimizer_cls.step)(self, None)
            for state, entries in pending:
                state.update(entries)
        except BaseException:
            with torch.no_grad():
                for params, factor in decayed:  # the inner step raised: undo this step's decay
                    for p in params:
                        p.div_(1 - factor)
                for tensor, value in saved:
                    tensor.copy_(value)
            raise
        finally:
            for p, grad in saved_grads:
                p.grad = grad
            settings.restore()
        return loss if closure is not None else inner_loss

    name = f"Decoupled{optimizer_cls.__name__}"
    namespace = {
        "__init__": __init__, "_check_group": _check_group, "__getstate__": __getstate__,
        "load_state_dict": load_state_dict, "step": step,
        "__module__": __name__, "__qualname__": name, "_inner_cls": optimizer_cls,
        "__doc__": f"{optimizer_cls.__name__} with decoupled weight decay (made by decoupled.decouple).\n\n"
        f"{decouple.__doc__}",
    }  # fmt: skip
    metaclass = _metaclass_for(optimizer_cls)
    return metaclass(name, (_DecayGroups, optimizer_cls), namespace)  # type: ignore[no-any-return]


def _may_auto_fuse(arguments: dict[str, Any], params: Any) -> bool:
    """Whether a decouple(Adam) built without foreach/fused takes torch's fused kernel: every tensor qualifies."""
    if arguments.get("foreach") is not None or arguments.get("fused") is not None:
        return False
    if arguments.get("differentiable") or arguments.get("capturable") or isinstance(arguments.get("lr"), Tensor):
        return False
    tensors = [params] if isinstance(params, Tensor) else _param_tensors(params)
    return tensors is not None and _fused_accepts(tensors)


def _refuse_sparse(name: str, inner_name: str, groups: list[dict[str, Any]]) -> None:
    for group_index, group in enumerate(groups):
        for index, param in enumerate(group["params"]):
            if param.grad is not None and param.grad.is_sparse:
                raise RuntimeError(
                    f"{name}: {inner_name} does not support sparse gradients (param group {group_index}, parameter "
                    f"{index} of shape {tuple(param.shape)}); nothing was updated. Use dense gradients, e.g. "
                    "nn.Embedding(sparse=False), or torch.optim.SparseAdam"
                )


def _decay_masters(
    optimizer: Any,
    group: dict[str, Any],
    params: list[Tensor],
    saved: list[tuple[Tensor, Tensor]],
    pending: list[tuple[dict[str, Any], dict[str, Any]]],
) -> list[Tensor]:
    """Apply this step's decay to the group's bfloat16/float16 parameters on their float32 masters (precision
    "exact" or "stochastic"), keeping their values before it in ``saved``; return the other parameters, whose
    decay :func:`_hand_over_decay` applies. The inner optimizer's own update of those parameters stays its own
    (rounded to their dtype), but the decay, a relative change far below half an ulp, is no longer lost.

    A parameter without state yet gets its remainder (or rounding stream) only after the inner step (``pending``):
    torch's optimizers make their state when they find a parameter's state empty."""
    precision = group["precision"]
    if precision == "nearest" or not params:
        return params
    masters = [p for p in params if keeps_master(p, precision)]
    terms = group_decay_terms(group)
    if not masters or terms.factor == 0:  # nothing to decay here ("l2" goes through the gradient)
        return params
    remainders, streams = [], []
    for param in masters:
        state = optimizer.state[param]
        target: dict[str, Any] = state if state else {}
        if not state:
            pending.append((state, target))
        remainder, stream = prepare_state(optimizer, group, param, target, moments=False)
        for tensor in (param, remainder, stream):
            if tensor is not None:
                saved.append((tensor, tensor.detach().clone()))
        if remainder is not None:
            remainders.append(_local(remainder))
        if stream is not None:
            streams.append(stream)
    kernels.lowp.decay_([_local(p) for p in masters], remainders, streams, terms.factor, precision)
    return [p for p in params if not keeps_master(p, precision)]


def _hand_over_decay(
    optimizer: Any,
    group: dict[str, Any],
    params: list[Tensor],
    kind: str | None,
    settings: _GroupSettings,
    decayed: list[tuple[list[Tensor], float]],
    saved_grads: list[tuple[Tensor, Tensor]],
    stepped: list[Tensor] | None = None,
) -> None:
    """Give one group's decay of this step to the inner optimizer where it can apply it exactly, else apply it.
    ``stepped``: every parameter the inner step will update (default ``params``), for the fused layout check."""
    terms = group_decay_terms(group) if params else None
    settings.set(group, "weight_decay", 0.0)  # the inner optimizer's own decay stays off unless set below
    if terms is None:
        return
    lr = group["lr"]
    if kind == _FLAG:
        settings.set(group, "decoupled_weight_decay", terms.l2 == 0)
    if terms.l2 != 0:
        if kind in (_FLAG, _L2):
            settings.set(group, "weight_decay", terms.l2)  # the inner optimizer's own L2 term: g + l2 theta
        else:
            sign = -1.0 if group.get("maximize", False) else 1.0  # the inner step negates g when maximizing
            for p in params:
                saved_grads.append((p, p.grad))  # type: ignore[arg-type]
                p.grad = p.grad.add(p, alpha=sign * terms.l2)  # type: ignore[union-attr]
    elif terms.factor != 0:
        if kind in (_FLAG, _LR_COUPLED) and isinstance(lr, (float, int)) and lr != 0:
            settings.set(group, "weight_decay", terms.factor / lr)  # the inner step's theta *= 1 - lr_t * wd
        else:
            local = [_local(p) for p in params]
            kernels.decay_(local, terms.factor)
            decayed.append((local, terms.factor))
    if optimizer._auto_fused and group.get("fused"):
        if not _fused_layouts_agree(optimizer, params if stepped is None else stepped):
            settings.set(group, "fused", False)  # torch's fused kernel walks raw memory: take its default path
