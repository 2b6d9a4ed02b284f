"""Which tensors a one-pass kernel may walk as raw memory, and what happens to the others.

torch's fused Adam(W) and SGD kernels and this package's native SGD kernel treat each tensor as ``numel``
consecutive elements from its data pointer, and update element i of a parameter from element i of its gradient
and state tensors. That is only right when every tensor of a parameter is dense and non-overlapping (its
elements fill ``numel`` consecutive slots) and all of them share one layout (the same strides), so that slot i
holds the same index in each. None of those kernels checks this (torch.optim.AdamW(fused=True) neither; torch
does not make it the default): a column slice of a larger tensor, a gradient with other strides, an expanded
(stride-0) gradient or a channels_last parameter with contiguous state give wrong values or write out of
bounds.

So the dispatcher (:func:`decoupled.kernels._run`) asks :func:`split_walkable` which parameters the one-pass
kernel may take: in the common case (every tensor contiguous) all of them, found with one ``is_contiguous``
per tensor and no copy; otherwise the rest run on the foreach path (or the for-loop path where foreach is not
supported), which follows strides. A parameter whose own memory overlaps (an expanded tensor) cannot be updated
in place by any path and is refused by :func:`check_no_overlap` before anything is written.

The optimizers keep their state in their parameter's layout (:func:`relayout_like`): state made by
``zeros_like`` already is, and state loaded from a checkpoint saved in another layout is copied into the
parameter's layout once, at the first step, so that the one-pass kernel takes it again.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["check_no_overlap", "is_dense", "pick", "relayout_like", "split_walkable"]

_is_contiguous = Tensor.is_contiguous


def is_dense(tensor: Tensor) -> bool:
    """Whether ``tensor``'s elements fill exactly ``numel`` consecutive slots from its data pointer (dense and
    non-overlapping, in any order of dimensions: contiguous, channels_last, transposed, permuted).

    >>> is_dense(torch.zeros(4, 6).t()), is_dense(torch.zeros(4, 6)[:, :3]), is_dense(torch.zeros(1, 3).expand(2, 3))
    (True, False, False)
    """
    if tensor.is_contiguous():
        return True
    expected = 1
    for stride, size in sorted((s, n) for s, n in zip(tensor.stride(), tensor.shape) if n != 1):
        if size == 0:
            return True
        if stride != expected:
            return False
        expected *= size
    return True


def _walkable(tensors: tuple[Tensor, ...]) -> bool:
    """Whether a parameter (first) and its gradient and state tensors can be walked in lockstep as raw memory."""
    param = tensors[0]
    if param.numel() == 0:
        return True
    if not is_dense(param):
        return False
    strides = param.stride()
    return all(t.stride() == strides for t in tensors[1:])


def split_walkable(lists: list[list[Tensor]], elementwise: int) -> tuple[list[list[Tensor]], list[list[Tensor]]]:
    """Split parallel tensor lists into (walkable, rest) by parameter position.

    ``lists[0]`` are the parameters; the first ``elementwise`` lists (parameters, gradients, state tensors of the
    parameter's shape; an empty list is a state the update does not use) decide; later lists (e.g. Adam's step
    counts) follow their parameter. ``rest`` is empty in the common case, checked with one ``is_contiguous`` per
    tensor (about 0.1 us each); otherwise each position goes where :func:`_walkable` says.
    """
    layout_lists = [tensors for tensors in lists[:elementwise] if tensors]
    if all(all(map(_is_contiguous, tensors)) for tensors in layout_lists):
        return lists, []
    fast = [index for index, tensors in enumerate(zip(*layout_lists)) if _walkable(tensors)]
    if len(fast) == len(lists[0]):
        return lists, []
    slow = sorted(set(range(len(lists[0]))) - set(fast))
    return [pick(tensors, fast) for tensors in lists], [pick(tensors, slow) for tensors in lists]


def pick(tensors: list[Tensor], indices: list[int]) -> list[Tensor]:
    """The entries of a parallel list at ``indices`` (an empty list, a state the update does not use, stays empty)."""
    return [tensors[i] for i in indices] if tensors else []


def check_no_overlap(params: list[Tensor]) -> None:
    """Refuse parameters whose memory overlaps itself (e.g. ``expand``-ed): an in-place update would write one
    slot several times (the for-loop path raises too; a one-pass kernel writes past the tensor's storage).

    Only non-contiguous parameters are looked at (a contiguous tensor cannot overlap), so this costs one
    ``is_contiguous`` per parameter in the common case.
    """
    for index, param in enumerate(params):
        if not param.is_contiguous() and torch._debug_has_internal_overlap(param) == 1:
            raise RuntimeError(
                f"parameter {index} of a group (shape {tuple(param.shape)}, strides {param.stride()}) has "
                "overlapping memory (e.g. made by expand()), so it cannot be updated in place: several of its "
                "elements are one memory location; make it a tensor of its own, e.g. nn.Parameter(t.clone())"
            )


def relayout_like(tensor: Tensor, param: Tensor) -> Tensor:
    """``tensor`` (a state tensor of ``param``'s shape) in ``param``'s memory layout: itself when the layouts
    already agree (always in the common case) or when ``param`` is not dense (no one-pass kernel takes it then),
    else a copy with ``param``'s strides, to be stored in place of the old one (a copy once, not every step)."""
    if tensor.stride() == param.stride() or tensor.shape != param.shape or not is_dense(param):
        return tensor
    like = torch.empty_like(param, dtype=tensor.dtype, device=tensor.device, memory_format=torch.preserve_format)
    return like.copy_(tensor)
