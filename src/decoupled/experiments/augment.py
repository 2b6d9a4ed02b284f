"""Training-time augmentation of image batches: the paper's pad-4 random crop and horizontal flip."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["random_crop_flip"]


def random_crop_flip(images: Tensor, generator: torch.Generator, padding: int = 4) -> Tensor:
    """Zero-pad (N, C, H, W) images by ``padding`` pixels, crop a random H x W window from each, and flip each
    horizontally with probability 1/2. Random numbers come from ``generator`` (on the CPU) so that a run's
    augmentation is reproducible from its seed."""
    count, _, height, width = images.shape
    padded = torch.nn.functional.pad(images, (padding, padding, padding, padding))
    offsets_y = torch.randint(0, 2 * padding + 1, (count,), generator=generator).tolist()
    offsets_x = torch.randint(0, 2 * padding + 1, (count,), generator=generator).tolist()
    flips = (torch.rand(count, generator=generator) < 0.5).tolist()
    crops = []
    for index, (dy, dx, flip) in enumerate(zip(offsets_y, offsets_x, flips)):
        crop = padded[index, :, dy : dy + height, dx : dx + width]
        crops.append(crop.flip(-1) if flip else crop)
    return torch.stack(crops)
