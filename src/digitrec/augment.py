"""Batched data augmentation on tensors: random affine and elastic distortion.

Everything works on a whole batch at once (one ``affine_grid`` + one
``grid_sample``), never per sample in Python, and draws its randomness from an
explicit ``torch.Generator`` so that a run is reproducible from its seed.
Augmentation moves and bends pixels; it never touches labels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class AugmentConfig:
    rotate: float = 0.0  # max rotation, degrees (uniform in [-rotate, rotate])
    translate: float = 0.0  # max shift, fraction of the image side (0.1 = 2.8 px)
    scale: float = 0.0  # max relative zoom (0.1 = 0.9x .. 1.1x)
    shear: float = 0.0  # max shear, degrees
    elastic: float = 0.0  # elastic displacement strength, pixels (Simard et al. use ~ 34 * sigma / 28)
    elastic_sigma: float = 4.0  # smoothness of the elastic field, pixels
    stroke: float = 0.0  # probability of thickening, and again of thinning, the strokes (3x3 max/min filter)

    @property
    def enabled(self) -> bool:
        return any((self.rotate, self.translate, self.scale, self.shear, self.elastic, self.stroke))


def _uniform(count: int, bound: float, generator: torch.Generator) -> torch.Tensor:
    return (torch.rand(count, generator=generator) * 2 - 1) * bound


def augment_batch(x: torch.Tensor, config: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """Randomly distort ``x``: (B, 1, H, W) float in [0, 1] -> same shape, dtype and range.

    Random numbers are drawn on the CPU from ``generator`` (reproducible on any
    device) and the warp runs on ``x``'s device.
    """
    if not config.enabled:
        return x
    batch, _, height, width = x.shape
    angle = _uniform(batch, math.radians(config.rotate), generator)
    shear = _uniform(batch, math.radians(config.shear), generator)
    zoom = 1.0 + _uniform(batch, config.scale, generator)
    shift = _uniform(2 * batch, 2 * config.translate, generator).view(batch, 2)  # grid units: side = 2
    cos, sin, tan = torch.cos(angle), torch.sin(angle), torch.tan(shear)
    # Map from output to input coordinates: rotation @ shear, divided by the zoom.
    theta = torch.zeros(batch, 2, 3)
    theta[:, 0, 0] = cos / zoom
    theta[:, 0, 1] = (cos * tan - sin) / zoom
    theta[:, 1, 0] = sin / zoom
    theta[:, 1, 1] = (sin * tan + cos) / zoom
    theta[:, :, 2] = shift
    grid = F.affine_grid(theta, [batch, 1, height, width], align_corners=False)  # (B, H, W, 2)
    if config.elastic > 0:
        grid = grid + _elastic_field(batch, height, width, config, generator)
    out = F.grid_sample(
        x, grid.to(x.device, x.dtype), mode="bilinear", padding_mode="zeros", align_corners=False
    )
    return out.clamp_(0.0, 1.0)


def _elastic_field(
    batch: int, height: int, width: int, config: AugmentConfig, generator: torch.Generator
) -> torch.Tensor:
    """A smooth random displacement field (B, H, W, 2) in grid units (Simard et al., 2003)."""
    noise = torch.rand(batch, 2, height, width, generator=generator) * 2 - 1
    radius = max(1, round(3 * config.elastic_sigma))
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-(offsets**2) / (2 * config.elastic_sigma**2))
    kernel = kernel / kernel.sum()
    # Separable Gaussian blur of each displacement channel.
    field = noise.view(batch * 2, 1, height, width)
    field = F.conv2d(F.pad(field, (radius, radius, 0, 0), mode="reflect"), kernel.view(1, 1, 1, -1))
    field = F.conv2d(F.pad(field, (0, 0, radius, radius), mode="reflect"), kernel.view(1, 1, -1, 1))
    field = field.view(batch, 2, height, width)
    field = field / field.abs().amax(dim=(2, 3), keepdim=True).clamp_min(1e-6)  # peak 1 per map
    pixels_to_grid = torch.tensor([2.0 / width, 2.0 / height]).view(1, 2, 1, 1)
    return (field * config.elastic * pixels_to_grid).permute(0, 2, 3, 1)
