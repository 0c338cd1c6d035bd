"""Joint augmentation: images and labels move together, every channel alike, repeatably."""

import math

import pytest
import torch
import torch.nn.functional as F

from emunet.train.augment import AugmentConfig, augment_batch, elastic_deform, gaussian_blur, random_affine_grid

OFF = dict(flip=False, rotate90=False, brightness=0.0, elastic_std=0.0)


def _batch(b=6, size=48, channels=1, seed=0):
    gen = torch.Generator().manual_seed(seed)
    # a smooth pattern, so nearest-neighbour labels and bilinear images stay comparable
    coarse = torch.rand(b, 1, 6, 6, generator=gen)
    image = F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=True)
    return image.repeat(1, channels, 1, 1), (image[:, 0] > 0.5).long()


def test_flips_and_turns_keep_images_and_labels_aligned():
    x, y = _batch()
    ax, ay = augment_batch(x, y, AugmentConfig(**(OFF | dict(flip=True, rotate90=True))), torch.Generator().manual_seed(1))
    torch.testing.assert_close(ay, (ax[:, 0] > 0.5).long())
    assert not torch.equal(ax, x)


@pytest.mark.parametrize("extra", [dict(elastic_std=10.0), dict(rotate=30.0, scale=0.2), dict(rotate=30.0, elastic_std=10.0, elastic_prob=0.5)])
def test_warps_move_labels_with_images_and_all_channels_alike(extra):
    x, y = _batch(channels=3)
    cfg = AugmentConfig(**(OFF | extra))
    ax, ay = augment_batch(x, y, cfg, torch.Generator().manual_seed(2))
    agree = (ay == (ax[:, 1] > 0.5).long()).float().mean()
    assert agree > 0.97  # nearest vs bilinear differ only along the label edges
    torch.testing.assert_close(ax[:, 0], ax[:, 1])
    torch.testing.assert_close(ax[:, 2], ax[:, 1])
    again = augment_batch(x, y, cfg, torch.Generator().manual_seed(2))
    assert torch.equal(again[0], ax) and torch.equal(again[1], ay)


def test_affine_grid_turns_and_zooms_about_the_centre_in_pixel_units():
    b, h, w, degrees, scale = 4, 30, 50, 40.0, 0.3
    grid = random_affine_grid(b, h, w, degrees, scale, torch.Generator().manual_seed(3), torch.device("cpu"))
    gen = torch.Generator().manual_seed(3)  # the same draws, by hand
    angle = (torch.rand(b, generator=gen) * 2 - 1) * math.radians(degrees)
    zoom = torch.exp((torch.rand(b, generator=gen) * 2 - 1) * math.log1p(scale))
    yy, xx = torch.meshgrid(torch.arange(h) - (h - 1) / 2, torch.arange(w) - (w - 1) / 2, indexing="ij")
    for i in range(b):
        c, s = math.cos(angle[i]) / zoom[i], math.sin(angle[i]) / zoom[i]
        want_x, want_y = c * xx - s * yy, s * xx + c * yy  # source pixel of each output pixel
        got_x = grid[i, ..., 0] * (w - 1) / 2
        got_y = grid[i, ..., 1] * (h - 1) / 2
        torch.testing.assert_close(got_x, want_x.float(), atol=1e-4, rtol=0)
        torch.testing.assert_close(got_y, want_y.float(), atol=1e-4, rtol=0)
    assert (zoom >= 1 / 1.3).all() and (zoom <= 1.3).all()


def test_without_turn_or_zoom_the_affine_warp_is_the_identity():
    x, y = _batch()
    base = random_affine_grid(len(x), 48, 48, 0.0, 0.0, torch.Generator().manual_seed(0), torch.device("cpu"))
    wx, wy = elastic_deform(x, y, 0.0, 3, torch.Generator(), base=base)
    torch.testing.assert_close(wx, x, atol=1e-5, rtol=0)
    assert torch.equal(wy, y)
    # samples not chosen for the elastic field get the base grid alone
    none = torch.zeros(len(x), dtype=torch.bool)
    fx, _ = elastic_deform(x, y, 10.0, 3, torch.Generator().manual_seed(5), base=base, chosen=none)
    torch.testing.assert_close(fx, wx, atol=0, rtol=0)


def test_brightness_shifts_each_sample_by_one_amount_in_range():
    x, y = _batch(channels=3)
    ax, _ = augment_batch(x, y, AugmentConfig(**(OFF | dict(brightness=0.2))), torch.Generator().manual_seed(4))
    shift = (ax - x).flatten(1)
    assert torch.allclose(shift, shift[:, :1].expand_as(shift), atol=1e-6)
    assert shift.abs().max() <= 0.2 + 1e-6 and shift[:, 0].std() > 0


def test_config_bounds_for_turn_and_zoom():
    from emunet.config import ConfigError, load_config

    assert load_config(None, ["augment.rotate=45", "augment.scale=0.25"]).augment.rotate == 45
    assert load_config(None, ["augment.blur=1.5", "augment.contrast=0.3"]).augment.blur == 1.5
    for bad in ("augment.rotate=-1", "augment.rotate=200", "augment.scale=1.5", "augment.blur=-1", "augment.blur=20", "augment.contrast=1"):
        with pytest.raises(ConfigError, match=bad.split("=")[0]):
            load_config(None, [bad])


def test_blur_matches_scipy_per_sample_and_zero_sigma_is_identity():
    from scipy import ndimage

    x = torch.rand(3, 2, 40, 50, generator=torch.Generator().manual_seed(6))
    out = gaussian_blur(x, torch.tensor([0.0, 1.0, 2.0]))
    torch.testing.assert_close(out[0], x[0], atol=0, rtol=0)
    for i, sigma in ((1, 1.0), (2, 2.0)):
        for c in range(2):
            # the kernel's radius is 3 x the batch's largest sigma (6 px) for every sample
            ref = ndimage.gaussian_filter(x[i, c].numpy(), sigma, mode="mirror", truncate=6.0 / sigma)
            torch.testing.assert_close(out[i, c], torch.from_numpy(ref), atol=1e-5, rtol=0)
    # a sigma wider than a tiny image still works (the kernel is cut to the image)
    assert gaussian_blur(torch.rand(1, 1, 4, 4), torch.tensor([3.0])).shape == (1, 1, 4, 4)


def test_blur_and_contrast_change_images_only_within_their_ranges():
    x, y = _batch(channels=2)
    cfg = AugmentConfig(**(OFF | dict(blur=1.5, contrast=0.3)))
    ax, ay = augment_batch(x, y, cfg, torch.Generator().manual_seed(7))
    assert torch.equal(ay, y)  # labels untouched: no geometric change
    torch.testing.assert_close(ax[:, 0], ax[:, 1])
    # blur keeps the mean; contrast scales deviations about it by at most 1.3
    torch.testing.assert_close(ax.mean(dim=(1, 2, 3)), x.mean(dim=(1, 2, 3)), atol=2e-3, rtol=0)
    ratio = ax.std(dim=(1, 2, 3)) / x.std(dim=(1, 2, 3))
    assert ratio.max() <= 1.3 + 1e-3 and ratio.min() >= 0.5 and ratio.std() > 0
    again, _ = augment_batch(x, y, cfg, torch.Generator().manual_seed(7))
    assert torch.equal(again, ax)


def test_intensity_changes_come_after_the_geometry_and_leave_its_random_draws_alone():
    x, y = _batch()
    before = augment_batch(x, y, AugmentConfig(elastic_std=10.0), torch.Generator().manual_seed(8))
    on = augment_batch(x, y, AugmentConfig(elastic_std=10.0, contrast=0.3), torch.Generator().manual_seed(8))
    assert torch.equal(on[1], before[1]) and not torch.equal(on[0], before[0])


def test_gamma_raises_each_image_to_one_power_within_its_range():
    x, y = _batch()
    x = x.clamp(0.05, 1)
    ax, ay = augment_batch(x, y, AugmentConfig(**(OFF | dict(gamma=0.6))), torch.Generator().manual_seed(3))
    assert torch.equal(ay, y)
    powers = torch.log(ax) / torch.log(x)  # the same power at every pixel of a sample
    inner = (x < 0.95)
    per_sample = [p[m] for p, m in zip(powers, inner)]
    for p in per_sample:
        assert p.max() - p.min() < 1e-3 and 1 / 1.6 - 1e-4 <= p.mean() <= 1.6 + 1e-4
    assert torch.stack([p.mean() for p in per_sample]).std() > 0.01


def test_noise_has_the_drawn_strength_and_a_high_dose_barely_changes_the_image():
    x, y = _batch(b=8, size=64)
    noisy, _ = augment_batch(x, y, AugmentConfig(**(OFF | dict(noise=0.1))), torch.Generator().manual_seed(4))
    deviation = (noisy - x).std(dim=(1, 2, 3))
    assert deviation.max() <= 0.11 and deviation.max() > 0.03
    shot, _ = augment_batch(x, y, AugmentConfig(**(OFF | dict(poisson=20))), torch.Generator().manual_seed(4))
    assert torch.allclose(shot.mean(dim=(1, 2, 3)), x.mean(dim=(1, 2, 3)), atol=0.02)  # unbiased
    # shot noise: the variance of a pixel of grey g at dose e is g / e, at most g / 20 here
    residual = ((shot - x) ** 2).mean(dim=(1, 2, 3)) / x.mean(dim=(1, 2, 3))
    assert residual.max() <= 1 / 20 * 1.3 and residual.min() >= 1 / (20 * 50) * 0.7


def test_section_defects_leave_masks_and_spare_samples_alone():
    x, y = _batch(b=8, channels=3)
    out, labels = augment_batch(x, y, AugmentConfig(**(OFF | dict(defects=0.5))), torch.Generator().manual_seed(5))
    assert torch.equal(labels, y)
    changed = [(out[i] != x[i]).any(dim=(1, 2)) for i in range(8)]
    hit = [c.any().item() for c in changed]
    assert 0 < sum(hit) < 8
    for c in changed:  # a band darkens or blanks the middle section; a misalignment moves one neighbour
        assert c.sum() <= 1
    off, _ = augment_batch(x, y, AugmentConfig(**OFF), torch.Generator().manual_seed(5))
    assert torch.equal(off, x)
