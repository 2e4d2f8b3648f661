"""Training-time augmentation on whole batches of device-resident images, one draw per image.

A ``torchvision.transforms.v2`` transform applied to a batch tensor draws one set of parameters
for the whole batch; here every image draws its own crop, rotation and intensity jitter, and
one ``affine_grid``/``grid_sample`` call applies them all (the geometry), followed by two
broadcast multiplies (the intensities). The parameters come from a generator the engine seeds
with (run seed, epoch), so a resumed run draws what an uninterrupted one would.

Which augmentations suit a dataset is a fact about the dataset: ``DatasetSpec.augment``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class Augmentation:
    """What a training image may undergo (torchvision's RandomResizedCrop, RandomRotation,
    ColorJitter and RandomHorizontalFlip, drawn per image)."""

    crop_scale: tuple[float, float] = (0.7, 1.0)    # share of the image's area kept
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)  # aspect ratio of the crop
    rotation: float = 10.0                          # degrees, either way
    brightness: float = 0.2                         # factor drawn from 1 +- this
    contrast: float = 0.2                           # likewise, around each image's mean
    hflip: bool = False                             # off wherever left and right differ in anatomy


def draw(aug: Augmentation, n: int, generator: "torch.Generator") -> dict[str, "torch.Tensor"]:
    """Every image's parameters, drawn on the CPU (the same numbers on every device)."""
    import torch

    def uniform(low, high):
        return low + (high - low) * torch.rand(n, generator=generator, dtype=torch.float64)

    area = uniform(*aug.crop_scale)
    # the aspect ratio, log-uniform over the ratios at which a crop of that area fits inside the
    # image (where torchvision retries its draw), so every crop keeps the area it drew
    low = torch.clamp(torch.log(area), min=math.log(aug.crop_ratio[0]))
    high = torch.clamp(-torch.log(area), max=math.log(aug.crop_ratio[1]))
    ratio = torch.exp(low + (high - low) * torch.rand(n, generator=generator, dtype=torch.float64))
    # crop sides as fractions of the image's
    width, height = torch.sqrt(area * ratio), torch.sqrt(area / ratio)
    # the crop's centre, anywhere the crop still fits inside the image ([-1, 1] coordinates)
    cx = (1 - width) * uniform(-1.0, 1.0)
    cy = (1 - height) * uniform(-1.0, 1.0)
    angle = torch.deg2rad(uniform(-aug.rotation, aug.rotation))
    flip = (torch.rand(n, generator=generator) < 0.5).double() * 2 - 1 if aug.hflip else torch.ones(n, dtype=torch.float64)
    return {"width": width * flip, "height": height, "cx": cx, "cy": cy, "angle": angle,
            "brightness": uniform(1 - aug.brightness, 1 + aug.brightness),
            "contrast": uniform(1 - aug.contrast, 1 + aug.contrast)}


def apply(x: "torch.Tensor", params: dict[str, "torch.Tensor"]) -> "torch.Tensor":
    """Augment a float batch ``(N, C, H, W)`` in [0, 1] with per-image ``params`` (from
    :func:`draw`); returns a new batch in [0, 1], same shape. Corners the rotation uncovers are
    black, as torchvision's RandomRotation fills them."""
    import torch
    import torch.nn.functional as F

    p = {k: v.to(device=x.device, dtype=torch.float32) for k, v in params.items()}
    cos, sin = torch.cos(p["angle"]), torch.sin(p["angle"])
    # output coordinates -> input coordinates: scale to the crop, rotate, move to its centre
    theta = torch.stack([torch.stack([p["width"] * cos, -p["height"] * sin, p["cx"]], dim=1),
                         torch.stack([p["width"] * sin, p["height"] * cos, p["cy"]], dim=1)], dim=1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    mean = out.mean(dim=(1, 2, 3), keepdim=True)
    out = (out - mean) * p["contrast"].view(-1, 1, 1, 1) + mean
    return (out * p["brightness"].view(-1, 1, 1, 1)).clamp_(0, 1)
