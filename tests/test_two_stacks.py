"""The training set of the two-stack models (scripts/two_stacks.py): one pixel size, the held-out
sections left out, and the labels' membranes thinned without opening them."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import two_stacks  # noqa: E402


def test_a_section_of_another_pixel_size_is_resampled_to_the_models():
    image = np.tile((np.arange(1024) % 256).astype(np.uint8)[None, :], (1024, 1))
    mask = np.full((1024, 1024), 255, np.uint8)
    mask[:, 500:510] = 0
    resampled, resampled_mask = two_stacks.at_model_size(image, mask, 4.6)
    assert resampled.shape == resampled_mask.shape == (1178, 1178)  # 1024 x 4.6 / 4
    assert set(np.unique(resampled_mask)) == {0, 255}
    assert (resampled_mask[0] == 0).sum() == pytest.approx(10 * 4.6 / 4, abs=1)  # the wall as wide in nm
    assert two_stacks.at_model_size(image, mask, 4.0)[0] is image
    windows = two_stacks.corner_windows(resampled)
    assert len(windows) == 4 and all(w.shape == (512, 512) for w in windows)
    assert windows[3][-1, -1] == resampled[-1, -1] and len(two_stacks.corner_windows(image[:512, :512])) == 1


def test_thinned_membranes_keep_their_centre_and_stay_closed():
    """A thick ring of membrane (20 px) around a cell, thinned to 6 px: still one closed wall
    between the inside and the outside, about 6 px wide, and never wider than it was."""
    yy, xx = np.mgrid[:200, :200]
    radius = np.hypot(yy - 100, xx - 100)
    mask = np.where((radius > 40) & (radius < 60), 0, 255).astype(np.uint8)
    thin = two_stacks.thin_membranes(mask, 6.0)
    assert ((thin == 0) <= (mask == 0)).all()
    assert ndimage.label(thin == 255)[1] == 2  # inside and outside, not joined
    width = (thin[100, 100:] == 0).sum()
    assert 5 <= width <= 7, width


def test_the_held_out_sections_are_not_in_the_training_set():
    written, held = two_stacks.pairs(isbi_copies=1, hold_out=True)
    names = {name for name, _, _ in written}
    assert not any(name.startswith(f"isbi_{z:02d}_") for z in two_stacks.ISBI_HELD_OUT for name in names)
    assert not any(name.startswith(f"vnc_{z:02d}_") for z in two_stacks.VNC_HELD_OUT for name in names)
    assert len(written) == 24 + 14 * 4 and held["isbi"][0].shape == (6, 512, 512) and held["vnc"][0].shape == (6, 1024, 1024)
    from emunet.train.sampling import fold_split

    assert sorted(two_stacks.ISBI_HELD_OUT) == sorted(fold_split(30, 1)[1])
    assert two_stacks.VNC_HELD_OUT == fold_split(20, 0, 0.7)[1]
