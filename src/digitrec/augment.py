"""Batched data augmentation on tensors: random affine and elastic distortion.

Everything works on a whole batch at once (one ``affine_grid`` + one
``grid_sample``), never per sample in Python, and draws its randomness from an
explicit ``torch.Generator`` so that a run is reproducible from its seed.
Augmentation moves and bends pixels; it never touches labels. Its settings,
:class:`~digitrec.config.AugmentConfig`, live with the rest of the (torch-free) configuration.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .config import AugmentConfig


def _uniform(count: int, bound: float, generator: torch.Generator) -> torch.Tensor:
    return (torch.rand(count, generator=generator) * 2 - 1) * bound


def _to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Copy CPU random draws to ``device``; on CUDA through pinned memory without blocking the host,
    so that augmenting a batch never waits for the GPU (no host sync per step)."""
    if device.type == "cpu":
        return tensor
    if device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


def augment_batch(x: torch.Tensor, config: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """Randomly distort ``x``: (B, 1, H, W) float in [0, 1] -> same shape, dtype and range.

    Random numbers are drawn on the CPU from ``generator`` (the same numbers on any device, so a run
    is reproducible from its seed wherever it runs); the warp itself runs on ``x``'s device.
    """
    if not config.enabled:
        return x
    out = _warp(x, config, generator) if config.geometric else x
    if config.stroke > 0:
        out = _vary_strokes(out, config.stroke, generator)
    return out.clamp_(0.0, 1.0)


def _warp(x: torch.Tensor, config: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """A random affine map (and elastic field) per image, applied by one ``grid_sample``."""
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
    grid = F.affine_grid(_to_device(theta, x.device), [batch, 1, height, width], align_corners=False)
    if config.elastic > 0:
        grid = grid + _elastic_field(batch, height, width, config, generator, x.device)
    return F.grid_sample(x, grid.to(x.dtype), mode="bilinear", padding_mode="zeros", align_corners=False)


def _vary_strokes(x: torch.Tensor, probability: float, generator: torch.Generator) -> torch.Tensor:
    """Thicken each image's strokes with ``probability`` and thin them with the same probability, by
    about half a pixel on each side: the mean of the image and its grey-level dilation (or erosion)
    by a 3x3 cross. Pens and drawing pages make strokes of other widths than MNIST's. A whole pixel
    of erosion would erase MNIST's thinnest strokes. x: (B, 1, H, W)."""
    draws = _to_device(torch.rand(len(x), generator=generator), x.device).view(-1, 1, 1, 1)
    padded = F.pad(x, (1, 1, 1, 1))  # zero background outside the image
    height, width = x.shape[2], x.shape[3]
    cross = torch.stack(
        [
            x,
            padded[:, :, :height, 1 : width + 1],  # the pixel above
            padded[:, :, 2:, 1 : width + 1],  # below
            padded[:, :, 1 : height + 1, :width],  # left
            padded[:, :, 1 : height + 1, 2:],  # right
        ]
    )  # (5, B, 1, H, W)
    thicker, thinner = (x + cross.amax(dim=0)) / 2, (x + cross.amin(dim=0)) / 2
    out = torch.where(draws < probability, thicker, x)
    return torch.where(draws >= 1 - probability, thinner, out)


def _elastic_field(
    batch: int,
    height: int,
    width: int,
    config: AugmentConfig,
    generator: torch.Generator,
    device: torch.device,
) -> torch.Tensor:
    """A smooth random displacement field (B, H, W, 2) in grid units (Simard et al., 2003)."""
    noise = _to_device(torch.rand(batch, 2, height, width, generator=generator), device) * 2 - 1
    radius = max(1, round(3 * config.elastic_sigma))
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float32, device=device)
    kernel = torch.exp(-(offsets**2) / (2 * config.elastic_sigma**2))
    kernel = kernel / kernel.sum()
    # Separable Gaussian blur of each displacement channel.
    field = noise.view(batch * 2, 1, height, width)
    field = F.conv2d(F.pad(field, (radius, radius, 0, 0), mode="reflect"), kernel.view(1, 1, 1, -1))
    field = F.conv2d(F.pad(field, (0, 0, radius, radius), mode="reflect"), kernel.view(1, 1, -1, 1))
    field = field.view(batch, 2, height, width)
    field = field / field.abs().amax(dim=(2, 3), keepdim=True).clamp_min(1e-6)  # peak 1 per map
    # Pixels to grid units (the side is 2) with Python scalars: a tensor made on a GPU from a list would
    # wait for the GPU.
    x_shift, y_shift = (
        field[:, 0] * (config.elastic * 2.0 / width),
        field[:, 1] * (config.elastic * 2.0 / height),
    )
    return torch.stack((x_shift, y_shift), dim=-1)  # (B, H, W, 2)
