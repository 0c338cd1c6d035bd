"""ONNX export, checked against PyTorch in ONNX Runtime."""

import numpy as np
import pytest
import torch

from emunet.model.checkpoint import save_weights
from emunet.cli import main
from emunet.model.unet import create_model

ort = pytest.importorskip("onnxruntime")


def _run(path, x):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"image": x})[0]


@pytest.mark.parametrize(
    "preset,overrides,sizes",
    [("unet_medical", {"width": 4}, [(1, 572, 572), (2, 188, 204)]), ("unet_cpu", {}, [(1, 256, 256), (3, 96, 160)])],
)
def test_onnx_matches_pytorch(tmp_path, preset, overrides, sizes):
    from emunet.model.export import export_onnx

    torch.manual_seed(0)
    model = create_model(preset, **overrides).eval()
    path = export_onnx(model, tmp_path / "m.onnx")
    rng = np.random.default_rng(0)
    for n, h, w in sizes:
        x = rng.uniform(-1, 1, (n, 1, h, w)).astype(np.float32)
        with torch.no_grad():
            expected = model(torch.from_numpy(x)).numpy()
        got = _run(path, x)
        assert got.shape == expected.shape
        assert np.abs(got - expected).max() < 1e-4


def test_cli_export_with_softmax(tmp_path, capsys):
    model = create_model("unet_cpu", width=4)
    save_weights(tmp_path / "w.safetensors", model, model.cfg, {"step": 1})
    assert main(["export", str(tmp_path / "w.safetensors"), str(tmp_path / "p.onnx"), "--softmax"]) == 0
    probs = _run(tmp_path / "p.onnx", np.zeros((1, 1, 64, 64), np.float32))
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert main(["export", str(tmp_path / "w.safetensors"), str(tmp_path / "p.txt")]) == 2
    assert "must be a .onnx file" in capsys.readouterr().err


def test_onnx_session_drives_the_overlap_tile_prediction(tmp_path):
    """The README's recipe: ONNX Runtime as the model inside predict_image."""
    from emunet.model.export import export_onnx
    from emunet.infer.tiling import predict_image

    torch.manual_seed(0)
    model = create_model("unet_cpu", width=4).eval()
    session = ort.InferenceSession(str(export_onnx(model, tmp_path / "m.onnx")), providers=["CPUExecutionProvider"])
    image = np.random.default_rng(0).random((100, 150), dtype=np.float32)
    expected = predict_image(model, image, tile=64)
    net = create_model("unet_cpu", width=4)
    net.forward = lambda x: torch.from_numpy(session.run(None, {"image": x.contiguous().numpy()})[0])
    np.testing.assert_allclose(predict_image(net, image, tile=64), expected, atol=1e-4)


def test_onnx_files_say_how_to_feed_and_read_them(tmp_path, capsys):
    import json

    import onnx

    model = create_model("unet_cpu", width=4)
    intensity = {"low": 0.0, "high": 4095.0, "dtype": "uint16", "how": "12-bit"}
    save_weights(tmp_path / "w.safetensors", model, model.cfg, {"step": 1, "config": {"intensity": intensity}})
    assert main(["export", str(tmp_path / "w.safetensors"), str(tmp_path / "m.onnx")]) == 0
    meta = {p.key: p.value for p in onnx.load(str(tmp_path / "m.onnx")).metadata_props}
    assert "2 * grey - 1" in meta["emunet.input"] and "12-bit" in meta["emunet.input"]
    assert "channel 1 = cell interior" in meta["emunet.output"]
    assert json.loads(meta["emunet.intensity"]) == intensity and json.loads(meta["emunet.model_config"])["width"] == 4


@pytest.mark.slow
@pytest.mark.parametrize("preset, overrides", [("unet_cpu", {"width": 4}), ("unet_medical", {"width": 2, "depth": 2})])
def test_bioimageio_package_passes_the_model_zoos_own_test(tmp_path, capsys, preset, overrides):
    import zipfile

    import yaml
    from bioimageio.core import test_model

    model = create_model(preset, **overrides)
    intensity = {"low": 0.0, "high": 255.0, "dtype": "uint8", "how": "8-bit"}
    save_weights(tmp_path / "w.safetensors", model, model.cfg, {"step": 3, "config": {"intensity": intensity}})
    package = tmp_path / "model.zip"
    assert main(["export", str(tmp_path / "w.safetensors"), str(package), "--format", "bioimageio"]) == 0
    with zipfile.ZipFile(package) as z:
        rdf = yaml.safe_load(z.read("rdf.yaml"))
        assert {"test_input.npy", "test_output.npy", "README.md"} <= set(z.namelist())
    assert rdf["format_version"].startswith("0.5") and set(rdf["weights"]) == {"pytorch_state_dict", "torchscript", "onnx"}
    scaling = next(step for step in rdf["inputs"][0]["preprocessing"] if step["id"] == "scale_linear")
    assert scaling["kwargs"] == {"gain": 2 / 255, "offset": -1.0}
    summary = test_model(package)
    assert summary.status == "passed", summary.format()


@pytest.mark.parametrize("preset, overrides", [("unet_cpu", {"width": 4}), ("unet_medical", {"width": 2, "depth": 2})])
def test_bioimageio_torchscript_weights_take_other_sizes(tmp_path, capsys, preset, overrides):
    import io
    import zipfile

    import torch

    model = create_model(preset, **overrides).eval()
    save_weights(tmp_path / "w.safetensors", model, model.cfg, {"step": 1})
    assert main(["export", str(tmp_path / "w.safetensors"), str(tmp_path / "m.zip"), "--format", "bioimageio", "-q"]) == 0
    with zipfile.ZipFile(tmp_path / "m.zip") as z:
        scripted = torch.jit.load(io.BytesIO(z.read("weights.torchscript.pt")))
    size = model.fit_input_size(64) + 32  # not the traced size
    x = torch.rand(1, 1, size, size) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), torch.softmax(model(x), dim=1))
