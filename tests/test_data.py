"""Reading images and masks, and every bad-input error naming the file."""

import numpy as np
import pytest
import tifffile
from PIL import Image

from emunet.io.data import DataError, load_labelled, read_images, read_labels
from emunet.train.sampling import TileSampler


def _png(path, array):
    Image.fromarray(array).save(path)
    return path


def _pairs(tmp_path, n=3, size=(32, 40), mask_values=(0, 255)):
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        _png(images / f"s{i}.png", rng.integers(0, 256, size, dtype=np.uint8))
        _png(masks / f"s{i}.png", np.where(rng.random(size) > 0.3, mask_values[1], mask_values[0]).astype(np.uint8))
    return images, masks


def test_isbi_stacks(isbi_dir):
    vol = load_labelled(isbi_dir / "train-volume.tif", isbi_dir / "train-labels.tif")
    assert vol.images.shape == (30, 512, 512) and vol.images.dtype == np.float32
    assert 0.0 <= vol.images.min() and vol.images.max() <= 1.0
    assert set(np.unique(vol.labels)) == {0, 1}
    assert 0.7 < vol.labels.mean() < 0.85  # about 22 % membrane


def test_folder_pairs_matched_by_name(tmp_path):
    images, masks = _pairs(tmp_path)
    (masks / "s0.png").rename(masks / "z0.png")
    with pytest.raises(DataError, match="no mask named like image 's0'"):
        load_labelled(images, masks)


def test_folder_pairs_read(tmp_path):
    images, masks = _pairs(tmp_path)
    vol = load_labelled(images, masks)
    assert vol.images.shape == (3, 32, 40) and vol.names == ["s0", "s1", "s2"]
    expected = np.asarray(Image.open(masks / "s1.png")) == 255
    np.testing.assert_array_equal(vol.labels[1], expected)


def test_inverted_foreground_option(tmp_path):
    images, masks = _pairs(tmp_path, mask_values=(255, 0))
    vol = load_labelled(images, masks, foreground=0)
    np.testing.assert_array_equal(vol.labels[0], np.asarray(Image.open(masks / "s0.png")) == 0)


def test_sixteen_bit_rgb_and_rgba_are_reduced_to_grey(tmp_path):
    tifffile.imwrite(tmp_path / "a16.tif", np.full((2, 8, 8), 65535, np.uint16))
    assert read_images(tmp_path / "a16.tif").images.max() == pytest.approx(1.0)
    rgb = np.zeros((8, 8, 3), np.uint8)
    rgb[..., 1] = 255
    assert read_images(_png(tmp_path / "rgb.png", rgb)).images[0, 0, 0] == pytest.approx(0.587, abs=3e-3)
    rgba = np.dstack([rgb, np.full((8, 8), 7, np.uint8)])
    assert read_images(_png(tmp_path / "rgba.png", rgba)).images.shape == (1, 8, 8)


def test_float_images_are_scaled_and_nan_refused(tmp_path):
    tifffile.imwrite(tmp_path / "f.tif", np.linspace(-5, 5, 64, dtype=np.float32).reshape(8, 8))
    vol = read_images(tmp_path / "f.tif")
    assert vol.images.min() == 0.0 and vol.images.max() == 1.0
    bad = np.zeros((8, 8), np.float32)
    bad[3, 3] = np.nan
    tifffile.imwrite(tmp_path / "nan.tif", bad)
    with pytest.raises(DataError, match="nan.tif: image contains NaN"):
        read_images(tmp_path / "nan.tif")


def test_missing_path(tmp_path):
    with pytest.raises(DataError, match="nowhere.tif: path does not exist"):
        read_images(tmp_path / "nowhere.tif")


def test_empty_folder(tmp_path):
    with pytest.raises(DataError, match="folder holds no"):
        read_images(tmp_path)


def test_not_an_image(tmp_path):
    (tmp_path / "notes.png").write_text("hello")
    with pytest.raises(DataError, match="notes.png: cannot read as an image"):
        read_images(tmp_path / "notes.png")


def test_truncated_tiff(tmp_path, isbi_dir):
    data = (isbi_dir / "train-volume.tif").read_bytes()
    (tmp_path / "cut.tif").write_bytes(data[: len(data) // 3])
    with pytest.raises(DataError, match="cut.tif"):
        read_images(tmp_path / "cut.tif")


def test_truncated_png(tmp_path):
    _png(tmp_path / "ok.png", np.zeros((64, 64), np.uint8) + np.arange(64, dtype=np.uint8))
    data = (tmp_path / "ok.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="cut.png: cannot read"):
        read_images(tmp_path / "cut.png")


def test_unequal_counts(tmp_path):
    images, masks = _pairs(tmp_path)
    (masks / "s2.png").unlink()
    with pytest.raises(DataError, match="2 masks for 3 images"):
        load_labelled(images, masks)


def test_unequal_image_sizes(tmp_path):
    images, _ = _pairs(tmp_path)
    _png(images / "s9.png", np.zeros((16, 16), np.uint8))
    with pytest.raises(DataError, match=r"s9.png: image shape \(16, 16\) differs"):
        read_images(images)


def test_mask_and_image_sizes_differ(tmp_path):
    tifffile.imwrite(tmp_path / "img.tif", np.zeros((2, 8, 8), np.uint8))
    tifffile.imwrite(tmp_path / "lab.tif", np.zeros((2, 8, 9), np.uint8))
    with pytest.raises(DataError, match="masks are 8x9 but images"):
        load_labelled(tmp_path / "img.tif", tmp_path / "lab.tif")


def test_mask_with_more_than_two_values_names_them(tmp_path):
    tifffile.imwrite(tmp_path / "lab.tif", np.array([[0, 128], [255, 0]], np.uint8))
    with pytest.raises(DataError, match=r"lab.tif: mask is not two-valued; found values \[0, 128, 255\]"):
        read_labels(tmp_path / "lab.tif")


def test_foreground_value_absent(tmp_path):
    tifffile.imwrite(tmp_path / "lab.tif", np.array([[0, 1], [1, 0]], np.uint8))
    with pytest.raises(DataError, match="foreground value 255 does not occur"):
        read_labels(tmp_path / "lab.tif")


def test_image_smaller_than_minimum(tmp_path):
    tifffile.imwrite(tmp_path / "tiny.tif", np.zeros((4, 4), np.uint8))
    with pytest.raises(DataError, match="tiny.tif: image is 4x4, smaller than the minimum 8x8"):
        read_images(tmp_path / "tiny.tif", min_size=8)


def test_tile_sampler_aligns_images_and_labels(tmp_path):
    import torch

    from emunet.io.data import Volume

    images = np.random.default_rng(1).random((3, 40, 50)).astype(np.float32)
    labels = (images > 0.5).astype(np.uint8)
    sampler = TileSampler(Volume(images, ["a", "b", "c"], tmp_path, labels), 64, 24, torch.Generator().manual_seed(0))
    x, y = sampler.sample(6)
    assert x.shape == (6, 1, 64, 64) and y.shape == (6, 64, 64)
    torch.testing.assert_close(y, (x[:, 0] > 0.5).long())


def test_planes_are_neighbouring_sections_mirrored_at_the_stack_ends(tmp_path):
    from emunet.io.data import Volume

    stack = np.arange(5, dtype=np.float32)[:, None, None] * np.ones((5, 3, 4), np.float32)
    vol = Volume(stack, list("abcde"), tmp_path)
    values = lambda planes: [float(p[0, 0]) for p in planes]  # noqa: E731
    assert values(vol.planes(2, 1)) == [1, 2, 3]
    assert values(vol.planes(0, 1)) == [0, 0, 1]
    assert values(vol.planes(4, 2)) == [2, 3, 4, 4, 3]
    # a subset (a validation fold, say) still sees its neighbours in the whole stack
    fold = vol.subset([3, 0])
    assert values(fold.planes(0, 1)) == [2, 3, 4] and values(fold.planes(1, 0)) == [0]
    assert all(np.shares_memory(p, stack) for p in fold.planes(0, 2))  # views, not copies
    one = Volume(stack[:1], ["a"], tmp_path)
    assert values(one.planes(0, 2)) == [0, 0, 0, 0, 0]


def test_tile_sampler_with_context_stacks_the_neighbouring_sections(tmp_path):
    import torch

    from emunet.io.data import Volume

    base = np.random.default_rng(2).random((40, 50)).astype(np.float32)
    stack = np.stack([base + 10 * z for z in range(5)])  # section z is the base pattern + 10 z
    labels = np.repeat((base > 0.5).astype(np.uint8)[None], 5, axis=0)
    train = Volume(stack, list("abcde"), tmp_path, labels).subset([2])
    sampler = TileSampler(train, 64, 24, torch.Generator().manual_seed(0), context=1)
    x, y = sampler.sample(5)
    assert x.shape == (5, 3, 64, 64) and y.shape == (5, 64, 64)
    torch.testing.assert_close(y, (x[:, 1] - 20 > 0.5).long())
    torch.testing.assert_close(x[:, 0], x[:, 1] - 10)
    torch.testing.assert_close(x[:, 2], x[:, 1] + 10)


def test_antialiased_masks_need_the_threshold_option_and_then_read(tmp_path):
    mask = np.zeros((8, 8), np.uint8)
    mask[:, 4:] = 255
    mask[:, 3] = 128  # an antialiased edge
    mask[:, 2] = 16
    tifffile.imwrite(tmp_path / "m.tif", mask)
    with pytest.raises(DataError, match="not two-valued.*data.mask_threshold"):
        read_labels(tmp_path / "m.tif")
    labels, _ = read_labels(tmp_path / "m.tif", 255, threshold=128)
    assert labels[0, 0].tolist() == [0, 0, 0, 1, 1, 1, 1, 1]
    inverted, _ = read_labels(tmp_path / "m.tif", 0, threshold=128)
    assert inverted[0, 0].tolist() == [1, 1, 1, 0, 0, 0, 0, 0]


def test_inverted_masks_are_warned_about(tmp_path, caplog):
    mask = np.zeros((10, 10), np.uint8)
    mask[:, :2] = 255  # 255 on a fifth of the pixels: membranes marked with 255
    tifffile.imwrite(tmp_path / "m.tif", mask)
    with caplog.at_level("WARNING", logger="emunet"):
        read_labels(tmp_path / "m.tif", 255)
    assert "covers only 20% of the pixels" in caplog.text and "data.foreground" in caplog.text


def test_one_valued_masks_are_refused_for_training(tmp_path):
    from emunet.config import load_config
    from emunet.train.loop import load_split

    images = np.zeros((5, 16, 16), np.uint8)
    tifffile.imwrite(tmp_path / "i.tif", images)
    tifffile.imwrite(tmp_path / "m.tif", np.full((5, 16, 16), 255, np.uint8))
    cfg = load_config(None, [f"data.images={tmp_path / 'i.tif'}", f"data.labels={tmp_path / 'm.tif'}"])
    with pytest.raises(DataError, match="every mask pixel is of one class"):
        load_split(cfg)


def test_jpeg_images_are_read_and_other_files_named(tmp_path, caplog):
    from PIL import Image

    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.fromarray(np.full((8, 8), 200, np.uint8)).save(folder / "a.png")
    Image.fromarray(np.full((8, 8), 100, np.uint8)).save(folder / "b.jpg", quality=100)
    (folder / "notes.txt").write_text("not an image")
    with caplog.at_level("WARNING", logger="emunet"):
        volume = read_images(folder)
    assert volume.names == ["a", "b"] and abs(float(volume.images[1].mean()) - 100 / 255) < 0.01
    assert "skipped 1 file(s)" in caplog.text and "notes.txt" in caplog.text


def test_tiff_axes_are_read_from_the_metadata(tmp_path, caplog):
    rgb = np.zeros((32, 40, 3), np.uint8)
    rgb[..., 0] = 255  # pure red: grey 0.299 * 255
    tifffile.imwrite(tmp_path / "rgb.tif", rgb, photometric="rgb")
    volume = read_images(tmp_path / "rgb.tif")
    assert volume.images.shape == (1, 32, 40) and abs(float(volume.images.mean()) - 0.299) < 0.01

    hyper = np.zeros((4, 2, 32, 40), np.uint8)
    hyper[:, 1] = 200
    tifffile.imwrite(tmp_path / "hyper.tif", hyper, imagej=True, metadata={"axes": "ZCYX"})
    with pytest.raises(DataError, match="2 channels .*data.channel"):
        read_images(tmp_path / "hyper.tif")
    second = read_images(tmp_path / "hyper.tif", channel=1)
    assert second.images.shape == (4, 32, 40) and abs(float(second.images.mean()) - 200 / 255) < 1e-6
    with pytest.raises(DataError, match="channel 2 asked for"):
        read_images(tmp_path / "hyper.tif", channel=2)

    tifffile.imwrite(tmp_path / "cyx.tif", hyper[:, 0], imagej=True, metadata={"axes": "CYX"})
    with caplog.at_level("WARNING", logger="emunet"):
        assert read_images(tmp_path / "cyx.tif").images.shape == (4, 32, 40)
    assert "channels (axes CYX) as sections" in caplog.text


def test_twelve_bit_data_is_scaled_by_its_bit_depth_as_eight_bit_data_is(tmp_path):
    eight = (np.arange(64, dtype=np.uint8).reshape(8, 8) * 4)
    twelve = eight.astype(np.uint16) * 16 + 15  # the same picture in 12 bits: 0..4095
    tifffile.imwrite(tmp_path / "8.tif", eight)
    tifffile.imwrite(tmp_path / "12.tif", twelve)
    a, b = read_images(tmp_path / "8.tif"), read_images(tmp_path / "12.tif")
    assert b.intensity.how == "12-bit" and b.intensity.high == 4095
    np.testing.assert_allclose(a.images, b.images, atol=1.0 / 255)
    # a recorded scaling is kept for new images of the same type, whatever their own range
    darker = read_images(tmp_path / "12.tif", intensity=b.intensity)
    tifffile.imwrite(tmp_path / "dark.tif", (twelve // 2).astype(np.uint16))
    assert read_images(tmp_path / "dark.tif", intensity=b.intensity).images.max() < 0.51
    assert read_images(tmp_path / "dark.tif").intensity.how == "11-bit"
    np.testing.assert_array_equal(darker.images, b.images)


def test_percentile_scaling_clips_the_tails(tmp_path):
    image = np.linspace(0, 1000, 10_000, dtype=np.float32).reshape(100, 100)
    tifffile.imwrite(tmp_path / "f.tif", image)
    volume = read_images(tmp_path / "f.tif", intensity_mode="percentile")
    assert volume.intensity.how == "percentiles 0.5-99.5" and volume.images.min() == 0 and volume.images.max() == 1
    assert abs(float(np.median(volume.images)) - 0.5) < 0.01


def test_instance_labels_get_the_threshold_that_reads_them(tmp_path):
    """An id per cell and 0 on the membranes: the hint says threshold 1, and that reads them."""
    cells = np.zeros((2, 12, 12), np.uint16)
    cells[:, 1:5, 1:5], cells[:, 1:5, 7:11], cells[:, 7:11, 1:11] = 3, 700, 1201
    tifffile.imwrite(tmp_path / "cells.tif", cells, photometric="minisblack")
    with pytest.raises(DataError, match=r"instance labels .* set --mask-threshold 1 \(data.mask_threshold=1\)"):
        read_labels(tmp_path / "cells.tif")
    labels, _ = read_labels(tmp_path / "cells.tif", 255, threshold=1)
    np.testing.assert_array_equal(labels, (cells > 0).astype(np.uint8))
