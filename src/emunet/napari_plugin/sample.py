"""Sample data for the plugin: EM-like slices made on the spot (the ISBI files are not ours to
ship). Cells are the Voronoi regions of random seeds, drawn as ISBI draws them: a light, grainy
interior with dark specks (vesicles, organelles), dark membranes about 3 px (12 nm) wide, the
blur and noise of a TEM at 4 nm per pixel."""

from __future__ import annotations

import numpy as np

__all__ = ["em_like_slices", "sample_slices"]


def em_like_slices(n: int = 3, size: int = 512, cells: int = 120, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` uint8 slices (n, size, size) and their cell labels (uint32, 0 = membrane)."""
    from scipy import ndimage as ndi
    from skimage.segmentation import find_boundaries

    rng = np.random.default_rng(seed)
    images, labels = [], []
    for _ in range(n):
        seeds = np.zeros((size, size), np.uint32)
        seeds[rng.integers(0, size, cells), rng.integers(0, size, cells)] = np.arange(1, cells + 1)
        _, (rows, cols) = ndi.distance_transform_edt(seeds == 0, return_indices=True)
        # bent walls: the nearest seed looked up through a smooth random displacement
        bend = [ndi.gaussian_filter(rng.normal(0, 1, (size, size)), 24) * 24 * 24 / 2 for _ in range(2)]
        y, x = np.mgrid[:size, :size]
        ys = np.clip(np.rint(y + bend[0]), 0, size - 1).astype(int)
        xs = np.clip(np.rint(x + bend[1]), 0, size - 1).astype(int)
        regions = seeds[rows[ys, xs], cols[ys, xs]]
        membrane = ndi.binary_dilation(find_boundaries(regions, mode="thick"), iterations=1)
        shading = ndi.gaussian_filter(rng.normal(0, 1, (size, size)), 40) * 600  # uneven section thickness
        grain = ndi.gaussian_filter(rng.normal(0, 1, (size, size)), 1.5) * 40
        specks = ndi.gaussian_filter((rng.random((size, size)) > 0.9985).astype(float), 3) * 2500
        picture = 175 + shading + grain - specks
        picture[membrane] = 55 + shading[membrane] * 0.5
        picture = ndi.gaussian_filter(picture, 1.0) + rng.normal(0, 8, (size, size))
        images.append(np.clip(picture, 0, 255).astype(np.uint8))
        labels.append(np.where(membrane, 0, regions).astype(np.uint32))
    return np.stack(images), np.stack(labels)


def sample_slices() -> list[tuple]:
    """napari's sample-data hook: the slices as an image layer and their cells as a labels layer."""
    images, labels = em_like_slices()
    return [(images, {"name": "EM-like slices"}, "image"), (labels, {"name": "true cells", "visible": False}, "labels")]
