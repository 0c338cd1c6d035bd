"""Joint augmentation of image and mask batches, in torch so it runs wherever the model runs.

Flips and 90-degree turns (the lab's flips, extended to the square's full symmetry group),
the lab's brightness shift, and the U-Net paper's elastic deformation: random displacements
on a coarse grid (3x3, std 10 px), smoothly (bicubically) interpolated to a dense field,
applied bilinearly to the image and nearest-neighbour to the mask.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["AugmentConfig", "augment_batch", "elastic_deform"]


@dataclass
class AugmentConfig:
    """Args:
    flip: random horizontal and vertical flips.
    rotate90: random 0/90/180/270-degree turns.
    brightness: add a uniform shift in [-b, b] to each image (images are in [0, 1]); 0 disables.
    elastic_std: std in pixels of the coarse grid's displacements; 0 disables.
    elastic_grid: points per side of the coarse grid (3 in the paper).
    elastic_prob: share of samples that are deformed.
    """

    flip: bool = True
    rotate90: bool = True
    brightness: float = 0.2
    elastic_std: float = 10.0
    elastic_grid: int = 3
    elastic_prob: float = 1.0


def elastic_deform(
    images: torch.Tensor, labels: torch.Tensor, std: float, grid: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Warp (B, C, H, W) images and (B, H, W) integer labels by one smooth random field each."""
    b, _, h, w = images.shape
    coarse = torch.randn(b, 2, grid, grid, generator=generator, device=generator.device) * std
    coarse = coarse.to(images.device)
    field = F.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=True)  # pixels
    ys = torch.linspace(-1.0, 1.0, h, device=images.device)
    xs = torch.linspace(-1.0, 1.0, w, device=images.device)
    base_y, base_x = torch.meshgrid(ys, xs, indexing="ij")
    gx = base_x + field[:, 0] * (2.0 / max(w - 1, 1))
    gy = base_y + field[:, 1] * (2.0 / max(h - 1, 1))
    sample_grid = torch.stack([gx, gy], dim=-1)
    warped = F.grid_sample(images, sample_grid, mode="bilinear", padding_mode="reflection", align_corners=True)
    warped_labels = F.grid_sample(
        labels[:, None].float(), sample_grid, mode="nearest", padding_mode="reflection", align_corners=True
    )[:, 0].to(labels.dtype)
    return warped, warped_labels


def augment_batch(
    images: torch.Tensor, labels: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Augment square (B, C, S, S) images and (B, S, S) labels together.

    All randomness comes from ``generator``, so a saved generator state replays a run exactly.
    """
    b = images.shape[0]
    dev = generator.device
    if cfg.elastic_std > 0 and cfg.elastic_prob > 0:
        chosen = torch.rand(b, generator=generator, device=dev) < cfg.elastic_prob
        warped, warped_labels = elastic_deform(images, labels, cfg.elastic_std, cfg.elastic_grid, generator)
        chosen = chosen.to(images.device)
        images = torch.where(chosen[:, None, None, None], warped, images)
        labels = torch.where(chosen[:, None, None], warped_labels, labels)
    turns = torch.randint(0, 4 if cfg.rotate90 else 1, (b,), generator=generator, device=dev).tolist()
    flips = torch.randint(0, 2 if cfg.flip else 1, (b, 2), generator=generator, device=dev).tolist()
    out_x, out_y = [], []
    for i in range(b):
        x, y = images[i], labels[i]
        dims = [d for d, f in zip((-2, -1), flips[i]) if f]
        if dims:
            x, y = x.flip(dims), y.flip(dims)
        if turns[i]:
            x, y = torch.rot90(x, turns[i], (-2, -1)), torch.rot90(y, turns[i], (-2, -1))
        out_x.append(x)
        out_y.append(y)
    images, labels = torch.stack(out_x), torch.stack(out_y)
    if cfg.brightness > 0:
        shift = (torch.rand(b, generator=generator, device=dev) * 2 - 1) * cfg.brightness
        images = images + shift.to(images.device)[:, None, None, None]
    return images, labels
