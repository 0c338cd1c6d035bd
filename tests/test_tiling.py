import numpy as np
import pytest
import torch

from emunet.model.unet import create_model
from emunet.infer.tiling import plan_tiles, predict_image


def _whole_image(model, image):
    """The network applied once to the whole mirror-padded image, cropped to the image."""
    h, w = image.shape
    b = model.border // 2
    in_h, in_w = model.fit_input_size(h), model.fit_input_size(w)
    padded = np.pad(image, ((b, in_h - h - b), (b, in_w - w - b)), mode="symmetric")
    with torch.no_grad():
        logits = model(torch.from_numpy(padded)[None, None] * 2 - 1)
    return torch.softmax(logits, 1)[0, 1, :h, :w].numpy()


@pytest.fixture(scope="module")
def valid_net():
    torch.manual_seed(0)
    return create_model("unet_medical", width=4, depth=2, norm="batch").eval()


@pytest.mark.parametrize("shape,tile,overlap,batch", [((100, 130), 36, 0.5, 3), ((64, 64), 20, 0.0, 1), ((150, 90), 68, 0.25, 8)])
def test_tiles_equal_the_network_on_the_whole_mirror_padded_image(valid_net, rng, shape, tile, overlap, batch):
    image = rng.random(shape, dtype=np.float32)
    tiled = predict_image(valid_net, image, tile=tile, overlap=overlap, batch_size=batch)
    np.testing.assert_allclose(tiled, _whole_image(valid_net, image), atol=1e-5)


def test_a_single_tile_larger_than_the_image(valid_net, rng):
    image = rng.random((17, 23), dtype=np.float32)
    tiled = predict_image(valid_net, image, tile=100)
    np.testing.assert_allclose(tiled, _whole_image(valid_net, image), atol=1e-5)


def test_same_padded_net_with_context_margin_is_close_to_whole_image(rng):
    torch.manual_seed(0)
    net = create_model("unet_cpu", width=4, depth=2).eval()
    image = rng.random((96, 96), dtype=np.float32)
    tiled = predict_image(net, image, tile=32, overlap=0.5, margin=32)
    with torch.no_grad():
        padded = np.pad(image, 64, mode="symmetric")
        whole = torch.softmax(net(torch.from_numpy(padded)[None, None] * 2 - 1), 1)[0, 1, 64:-64, 64:-64].numpy()
    assert np.abs(tiled - whole).max() < 0.05
    assert tiled.shape == image.shape and 0 <= tiled.min() and tiled.max() <= 1


def test_tile_plan_covers_the_image_with_strides_on_the_pooling_grid():
    plan = plan_tiles(create_model("unet_medical", width=1), 512, 512, tile=388, overlap=0.25)
    assert plan.in_size == 572 and plan.out_size == 388
    assert plan.stride % 16 == 0 and plan.stride <= 0.75 * 388
    assert plan.covered_h >= 512 and plan.covered_w >= 512
    origins = list(plan.origins())
    assert len(origins) == plan.ny * plan.nx == 4


def test_a_cpu_takes_one_tile_per_pass_and_a_gpu_the_batch(valid_net, rng, monkeypatch):
    from emunet.infer.tiling import _per_pass

    seen = []
    forward = valid_net.forward

    def spy(x):
        seen.append(x.shape[0])
        return forward(x)

    monkeypatch.setattr(valid_net, "forward", spy)
    image = rng.random((200, 200), dtype=np.float32)
    one_by_one = predict_image(valid_net, image, tile=60, batch_size=5)
    assert set(seen) == {1} and len(seen) > 5
    monkeypatch.setattr(valid_net, "forward", forward)
    np.testing.assert_allclose(one_by_one, _whole_image(valid_net, image), atol=1e-5)
    assert _per_pass(torch.device("cuda"), 5) == 5 and _per_pass(torch.device("cpu"), 5) == 1


def test_test_time_augmentation_is_equivariant(valid_net, rng):
    from emunet.infer.tta import predict_image_tta

    image = rng.random((40, 56), dtype=np.float32)
    prob = predict_image_tta(valid_net, image, tile=36)
    assert prob.shape == image.shape
    # averaging over the whole symmetry group makes the result commute with a turn
    turned = predict_image_tta(valid_net, np.ascontiguousarray(np.rot90(image)), tile=36)
    np.testing.assert_allclose(np.rot90(prob), turned, atol=1e-5)


@pytest.mark.parametrize("tta", [False, True])
def test_an_ensemble_predicts_the_mean_of_its_models(rng, tta):
    from pathlib import Path

    from emunet.config import PredictConfig
    from emunet.io.data import Volume
    from emunet.infer.predict import predict_volume

    models = []
    for seed in (1, 2, 3):
        torch.manual_seed(seed)
        models.append(create_model("unet_cpu", width=4, depth=2).eval())
    volume = Volume(rng.random((2, 40, 52), dtype=np.float32), ["a", "b"], Path("mem"))
    pcfg = PredictConfig(tile=32, overlap=0.25, margin=8, tta=tta, smooth=0.7)
    singles = [predict_volume(m, volume, pcfg) for m in models]
    together = predict_volume(models, volume, pcfg)
    np.testing.assert_allclose(together, np.mean(singles, axis=0), atol=1e-6)
    assert not np.allclose(singles[0], singles[1], atol=1e-3)  # the models do differ
    assert all(not m.training for m in models)
    np.testing.assert_array_equal(predict_volume(models[:1], volume, pcfg), singles[0])


def test_predict_volume_closes_gaps_after_the_blur(rng):
    from dataclasses import replace
    from pathlib import Path

    from emunet.config import PredictConfig
    from emunet.io.data import Volume
    from emunet.infer.predict import predict_volume
    from emunet.infer.postprocess import close_gaps_in_place

    torch.manual_seed(0)
    net = create_model("unet_cpu", width=4, depth=2).eval()
    volume = Volume(rng.random((2, 40, 52), dtype=np.float32), ["a", "b"], Path("mem"))
    plain = PredictConfig(tile=32, overlap=0.25, margin=8, smooth=0.7)
    want = predict_volume(net, volume, plain)
    for prob in want:
        close_gaps_in_place(prob, 0.3)
    np.testing.assert_array_equal(predict_volume(net, volume, replace(plain, close_gaps=0.3)), want)


@pytest.mark.slow
def test_a_2_5d_model_takes_the_sections_as_channels(rng):
    from pathlib import Path

    from emunet.config import PredictConfig
    from emunet.io.data import Volume
    from emunet.infer.predict import predict_volume
    from emunet.infer.predict import model_context
    from emunet.infer.tta import predict_image_tta

    torch.manual_seed(0)
    net = create_model("unet_cpu", width=4, depth=2, in_channels=3).eval()
    assert model_context(net) == 1
    stack = rng.random((4, 40, 52), dtype=np.float32)
    as_list = predict_image(net, [stack[0], stack[1], stack[2]], tile=32, margin=8)
    np.testing.assert_array_equal(as_list, predict_image(net, stack[:3], tile=32, margin=8))
    # the neighbours matter, and a validation subset takes them from the whole stack
    assert not np.allclose(as_list, predict_image(net, stack[[1, 1, 1]], tile=32, margin=8), atol=1e-4)
    fold = Volume(stack, list("abcd"), Path("mem")).subset([1, 3])
    probs = predict_volume(net, fold, PredictConfig(tile=32, margin=8))
    np.testing.assert_array_equal(probs[0], as_list)
    np.testing.assert_array_equal(probs[1], predict_image(net, stack[[2, 3, 3]], tile=32, margin=8))
    # test-time augmentation turns all sections together
    prob = predict_image_tta(net, stack[:3], tile=32, margin=8)
    turned = predict_image_tta(net, np.ascontiguousarray(np.rot90(stack[:3], axes=(1, 2))), tile=32, margin=8)
    np.testing.assert_allclose(np.rot90(prob), turned, atol=1e-5)
    with pytest.raises(ValueError, match="takes 3 input channel"):
        predict_image(net, stack[0], tile=32)
    with pytest.raises(ValueError, match="neither 2-D"):
        model_context(create_model("unet_cpu", width=4, depth=2, in_channels=2))


def test_the_python_interface_gives_what_predict_writes(tiny_run, small_isbi, tmp_path, capsys):
    import tifffile

    from emunet import Segmenter
    from emunet.cli import main

    run = tiny_run
    assert main(["predict", str(run / "last.safetensors"), str(small_isbi["test"]), "-o", str(tmp_path / "p.tif"), "-q"]) == 0
    written = tifffile.imread(tmp_path / "p.tif")
    segment = Segmenter(run / "last.safetensors")
    np.testing.assert_array_equal(segment(small_isbi["test"]), written)
    raw = tifffile.imread(small_isbi["test"])  # uint8 pixels, scaled as in training
    np.testing.assert_array_equal(segment(raw[1]), written[1])


def test_predict_writes_one_tiff_per_image_of_any_size(tiny_run, small_isbi, tmp_path, capsys):
    import tifffile
    from PIL import Image

    from emunet.cli import main

    run = tiny_run
    folder = tmp_path / "mixed"
    folder.mkdir()
    test = tifffile.imread(small_isbi["test"])
    Image.fromarray(test[0, :100, :120]).save(folder / "a.png")
    Image.fromarray(test[1, :70, :50]).save(folder / "b.jpg", quality=95)
    assert main(["predict", str(run / "last.safetensors"), str(folder), "-o", str(tmp_path / "p.tif"), "-q"]) == 2
    assert "give a folder as -o" in capsys.readouterr().err
    assert main(["predict", str(run / "last.safetensors"), str(folder), "-o", str(tmp_path / "probs"),
                 "--overlays", str(tmp_path / "over"), "-q"]) == 0
    assert tifffile.imread(tmp_path / "probs" / "a.tif").shape == (100, 120)
    assert tifffile.imread(tmp_path / "probs" / "b.tif").shape == (70, 50)
    assert sorted(p.name for p in (tmp_path / "over").iterdir()) == ["a_overlay.png", "b_overlay.png"]
