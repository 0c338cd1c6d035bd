"""Joint augmentation of image and mask batches, in torch so it runs wherever the model runs.

Flips and 90-degree turns (the lab's flips, extended to the square's full symmetry group),
the lab's brightness shift, and the U-Net paper's elastic deformation: random displacements
on a coarse grid (3x3, std 10 px), smoothly (bicubically) interpolated to a dense field,
applied bilinearly to the image and nearest-neighbour to the mask. Optionally (nnU-Net's
habit) turns by any angle and zooms, resampled together with the elastic field in one pass;
intensity changes that imitate faint, oblique membranes and other microscopes (blur, contrast,
gamma, Gaussian and shot noise, as gunpowder and torch-em draw them), and section defects
(dark or missing bands, a misaligned neighbouring section).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..config import AugmentConfig

__all__ = ["AugmentConfig", "augment_batch", "elastic_deform", "gaussian_blur", "random_affine_grid"]


def gaussian_blur(images: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """Blur each (C, H, W) sample of a batch with its own sigma (px; 0 leaves it unchanged),
    separably, with reflected borders."""
    b, c, h, w = images.shape
    radius = max(1, min(math.ceil(3 * float(sigmas.max())), h - 1, w - 1))
    offsets = torch.arange(-radius, radius + 1, device=images.device, dtype=images.dtype)
    s = sigmas.to(images).clamp_min(1e-3)[:, None]
    kernels = torch.exp(-0.5 * (offsets[None] / s) ** 2)
    kernels = kernels / kernels.sum(1, keepdim=True)  # (B, K); sigma ~0 gives a unit impulse
    kernels = kernels.repeat_interleave(c, dim=0)  # one per (sample, channel)
    x = images.reshape(1, b * c, h, w)
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="reflect"), kernels[:, None, None, :], groups=b * c)
    x = F.conv2d(F.pad(x, (0, 0, radius, radius), mode="reflect"), kernels[:, None, :, None], groups=b * c)
    return x.reshape(b, c, h, w)


def intensity_changes(images: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """Blur, contrast, gamma and noise of :class:`AugmentConfig`, each drawing random numbers
    only when on (so configs without them keep their random stream)."""
    b = images.shape[0]
    dev = generator.device
    draw = lambda: torch.rand(b, generator=generator, device=dev).to(images.device)[:, None, None, None]  # noqa: E731
    if cfg.blur > 0:
        images = gaussian_blur(images, torch.rand(b, generator=generator, device=dev) * cfg.blur)
    if cfg.contrast > 0:
        factor = (1 + (torch.rand(b, generator=generator, device=dev) * 2 - 1) * cfg.contrast).to(images)
        mean = images.mean(dim=(1, 2, 3), keepdim=True)
        images = mean + (images - mean) * factor[:, None, None, None]
    if cfg.gamma > 0:
        power = torch.exp((draw() * 2 - 1) * math.log1p(cfg.gamma))
        images = images.clamp(0, 1) ** power
    if cfg.poisson > 0:
        electrons = cfg.poisson * torch.exp(draw() * math.log(50.0))
        counts = torch.poisson((images.clamp(0, 1) * electrons).float(), generator=generator).to(images)
        images = counts / electrons
    if cfg.noise > 0:
        images = images + torch.randn(images.shape, generator=generator, device=dev).to(images) * draw() * cfg.noise
    return images


def section_defects(images: torch.Tensor, share: float, generator: torch.Generator) -> torch.Tensor:
    """A dark or missing band across ``share`` of the samples (the middle section of a 2.5-D
    input), or for 2.5-D input a neighbouring section shifted (misaligned); masks stay as they
    are, so the model learns to see through a defect."""
    b, c, h, w = images.shape
    dev = generator.device
    hit = (torch.rand(b, generator=generator, device=dev) < share).tolist()
    kind = torch.randint(0, 3 if c > 1 else 2, (b,), generator=generator, device=dev).tolist()
    where = torch.rand(b, 2, generator=generator, device=dev).tolist()
    images = images.clone()
    for i in (i for i in range(b) if hit[i]):
        if kind[i] == 2:  # misaligned: one neighbouring section moved by up to 8 px
            side = 0 if where[i][0] < 0.5 else c - 1
            shift = (int((where[i][1] * 2 - 1) * 8), int((where[i][0] * 2 - 1) * 8))
            images[i, side] = torch.roll(images[i, side], shift, dims=(0, 1))
            continue
        width = 4 + int(where[i][1] * 20)
        start = int(where[i][0] * max(h - width, 1))
        band = images[i, c // 2, start:start + width]
        images[i, c // 2, start:start + width] = band * 0.3 if kind[i] == 0 else images[i, c // 2].mean()
    return images


def random_affine_grid(
    b: int, h: int, w: int, max_degrees: float, scale: float, generator: torch.Generator, device: torch.device
) -> torch.Tensor:
    """(B, H, W, 2) sampling grids (grid_sample's [-1, 1] coordinates) that turn each sample by a
    random angle in [-max_degrees, max_degrees] and zoom it by a log-uniform factor in
    [1/(1+scale), 1+scale], about the centre, with the pixels kept square."""
    dev = generator.device
    angle = (torch.rand(b, generator=generator, device=dev) * 2 - 1) * math.radians(max_degrees)
    zoom = torch.exp((torch.rand(b, generator=generator, device=dev) * 2 - 1) * math.log1p(scale))
    angle, zoom = angle.to(device), zoom.to(device)
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    theta = torch.zeros(b, 2, 3, device=device)
    # rotation in pixel units, expressed in normalised coordinates of a w x h image
    theta[:, 0, 0], theta[:, 0, 1] = cos, -sin * (h - 1) / max(w - 1, 1)
    theta[:, 1, 0], theta[:, 1, 1] = sin * (w - 1) / max(h - 1, 1), cos
    return F.affine_grid(theta, [b, 1, h, w], align_corners=True)


def elastic_deform(
    images: torch.Tensor, labels: torch.Tensor, std: float, grid: int, generator: torch.Generator,
    base: torch.Tensor | None = None, chosen: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Warp (B, C, H, W) images and (B, H, W) integer labels by one smooth random field each
    (``std`` 0: no field; only for samples where the (B,) bool ``chosen`` is set, if given),
    added to ``base`` grids (default: the identity)."""
    b, _, h, w = images.shape
    if base is None:
        ys = torch.linspace(-1.0, 1.0, h, device=images.device)
        xs = torch.linspace(-1.0, 1.0, w, device=images.device)
        base_y, base_x = torch.meshgrid(ys, xs, indexing="ij")
    else:
        base_x, base_y = base[..., 0], base[..., 1]
    if std > 0:
        coarse = torch.randn(b, 2, grid, grid, generator=generator, device=generator.device) * std
        coarse = coarse.to(images.device)
        field = F.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=True)  # pixels
        if chosen is not None:
            field = field * chosen.to(field)[:, None, None, None]
        gx = base_x + field[:, 0] * (2.0 / max(w - 1, 1))
        gy = base_y + field[:, 1] * (2.0 / max(h - 1, 1))
    else:
        gx, gy = base_x.expand(b, h, w), base_y.expand(b, h, w)
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
    if cfg.rotate > 0 or cfg.scale > 0:
        # one resampling for turn, zoom and elastic field together (each would blur the image)
        base = random_affine_grid(b, *images.shape[-2:], cfg.rotate, cfg.scale, generator, images.device)
        std = cfg.elastic_std if cfg.elastic_prob > 0 else 0.0
        chosen = torch.rand(b, generator=generator, device=dev) < cfg.elastic_prob if 0 < std and cfg.elastic_prob < 1 else None
        images, labels = elastic_deform(images, labels, std, cfg.elastic_grid, generator, base=base, chosen=chosen)
    elif cfg.elastic_std > 0 and cfg.elastic_prob > 0:
        # unwarped samples stay bit-exact (no resampling through an identity grid)
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
    images = intensity_changes(images, cfg, generator)
    if cfg.defects > 0:
        images = section_defects(images, cfg.defects, generator)
    return images, labels
