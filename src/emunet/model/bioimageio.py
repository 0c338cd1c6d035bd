"""A BioImage Model Zoo package (format 0.5) of a trained model, for ilastik, deepImageJ (Fiji),
napari and bioimageio.core: ``rdf.yaml`` with TorchScript, ONNX and state-dict weights, test
input and output tensors, the input scaling as preprocessing, and a documentation page.

The package's network takes raw pixel values, scaled to [-1, 1] by its preprocessing (the
training images' recorded scaling, then 2 * grey - 1), and gives class probabilities (softmax
folded in): channel 1 = cell interior, channel 0 = membrane.
"""

from __future__ import annotations

import tempfile
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import UsageError
from ..io.files import atomic_write
from ..io.pixels import Intensity
from .checkpoint import Checkpoint
from .unet import UNet, UNetConfig

__all__ = ["ProbabilityUNet", "export_bioimageio"]


class ProbabilityUNet(nn.Module):
    """The U-Net with its softmax: class probabilities, channel 1 = cell interior. Built from
    the model config's fields, so the package's state-dict weights name their architecture."""

    def __init__(self, **config: Any) -> None:
        super().__init__()
        self.net = UNet(UNetConfig(**config))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.net(x), dim=1)


def _test_input(model: UNet, intensity: Intensity | None, rng: np.random.Generator) -> np.ndarray:
    """A raw-pixel test image the network accepts: smooth random blobs in the training images'
    pixel range (no data needs to travel with the code)."""
    from scipy import ndimage

    size = model.fit_input_size(64)
    field = ndimage.gaussian_filter(rng.random((model.cfg.in_channels, size, size)), (0, 4, 4))
    field = (field - field.min()) / (field.max() - field.min() + 1e-12)
    low, high = (intensity.low, intensity.high) if intensity else (0.0, 1.0)
    return (low + field * (high - low)).astype(np.float32)[None]


def _documentation(cfg: UNetConfig, intensity: Intensity | None, meta: dict) -> str:
    scaling = intensity.how if intensity else "grey values in [0, 1]"
    scores = meta.get("val") or {}
    lines = [
        "# emunet membrane U-Net",
        "",
        "Segments cell membranes in electron-microscopy images (trained on ISBI 2012-like serial-section TEM).",
        "",
        "- **Input** `raw`: one grey image (batch, channel, y, x), raw pixel values; the preprocessing scales them "
        f"as the training images were ({scaling}) and maps them to [-1, 1].",
        "- **Output** `probabilities`: (batch, channel, y, x), channel 0 = membrane, channel 1 = cell interior, "
        "summing to 1 (the ISBI submission convention is channel 1).",
        f"- **Network**: U-Net (Ronneberger et al. 2015), width {cfg.width}, depth {cfg.depth}, {cfg.padding} padding, "
        f"normalisation {cfg.norm}" + ("; the output is smaller than the input by the network's border." if cfg.padding == "valid" else "."),
        "- Tile large images with overlap; the network sees each tile alone.",
    ]
    if scores:
        shown = ", ".join(f"{k} {v:.4f}" for k, v in scores.items() if isinstance(v, float))
        lines += ["", f"Validation scores of these weights (their run's held-out slices): {shown}."]
    return "\n".join(lines) + "\n"


def _write_files(folder: Path, model: UNet, wrapped: "ProbabilityUNet", intensity: Intensity | None, meta: dict
                 ) -> tuple[float, float]:
    """The package's files: test tensors, state-dict, TorchScript and ONNX weights, README.
    Returns the input scaling (gain, offset) from raw pixels to the network's [-1, 1]."""
    from .export import export_onnx

    raw = _test_input(model, intensity, np.random.default_rng(0))
    low, high = (intensity.low, intensity.high) if intensity else (0.0, 1.0)
    gain, offset = 2.0 / (high - low), -2.0 * low / (high - low) - 1.0  # raw -> [0, 1] -> [-1, 1]
    scaled = torch.from_numpy(np.clip(raw * gain + offset, -1.0, 1.0).astype(np.float32))
    with torch.no_grad():
        expected = wrapped(scaled).numpy()
    np.save(folder / "test_input.npy", raw)
    np.save(folder / "test_output.npy", expected)
    torch.save(wrapped.state_dict(), folder / "weights.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer notes about the skip crop's shape check, constant per size
        torch.jit.trace(wrapped, scaled, check_trace=False).save(str(folder / "weights.torchscript.pt"))
    export_onnx(model, folder / "weights.onnx", softmax=True, intensity=intensity)
    (folder / "README.md").write_text(_documentation(model.cfg, intensity, meta))
    return gain, offset


def _tensors(spec, model: UNet, folder: Path, gain: float, offset: float):
    """The input (raw pixels, scaled and clipped by the package itself) and output descriptions."""
    step, border = 2**model.cfg.depth, model.border
    minimum = model.fit_input_size(1)
    space = [spec.SpaceInputAxis(id=spec.AxisId(a), size=spec.ParameterizedSize(min=minimum, step=step)) for a in "yx"]
    sections = model.cfg.in_channels
    channel_names = ["grey"] if sections == 1 else [f"section{i - sections // 2:+d}" for i in range(sections)]
    preprocessing = [spec.ScaleLinearDescr(kwargs=spec.ScaleLinearKwargs(gain=gain, offset=offset)),
                     spec.ClipDescr(kwargs={"min": -1.0, "max": 1.0})]
    inputs = spec.InputTensorDescr(
        id=spec.TensorId("raw"), description="raw pixel values",
        axes=[spec.BatchAxis(), spec.ChannelAxis(channel_names=[spec.Identifier(n) for n in channel_names]), *space],
        test_tensor=spec.FileDescr(source=folder / "test_input.npy"), preprocessing=preprocessing,
        data=spec.IntervalOrRatioDataDescr(type="float32"))
    out_space = [spec.SpaceOutputAxis(id=spec.AxisId(a), size=spec.SizeReference(
        tensor_id=spec.TensorId("raw"), axis_id=spec.AxisId(a), offset=-border)) for a in "yx"]
    outputs = spec.OutputTensorDescr(
        id=spec.TensorId("probabilities"), description="channel 0: membrane, channel 1: cell interior",
        axes=[spec.BatchAxis(), spec.ChannelAxis(channel_names=[spec.Identifier("membrane"), spec.Identifier("interior")]),
              *out_space],
        test_tensor=spec.FileDescr(source=folder / "test_output.npy"),
        data=spec.IntervalOrRatioDataDescr(type="float32", range=(0.0, 1.0)))
    return inputs, outputs


def _weights(spec, model: UNet, folder: Path):
    """The three weight formats, TorchScript and ONNX converted from the state dict."""
    torch_version = spec.Version(torch.__version__.split("+")[0])
    weights = spec.WeightsDescr(
        pytorch_state_dict=spec.PytorchStateDictWeightsDescr(
            source=folder / "weights.pt", pytorch_version=torch_version,
            architecture=spec.ArchitectureFromLibraryDescr(callable="ProbabilityUNet", import_from="emunet.model.bioimageio",
                                                           kwargs=asdict(model.cfg))),
        torchscript=spec.TorchscriptWeightsDescr(source=folder / "weights.torchscript.pt", pytorch_version=torch_version,
                                                 parent="pytorch_state_dict"),
        onnx=spec.OnnxWeightsDescr(source=folder / "weights.onnx", opset_version=17, parent="pytorch_state_dict"))
    return weights


def export_bioimageio(checkpoint: Checkpoint, output: str | Path, name: str = "emunet membrane U-Net") -> Path:
    """Write the zip package ``output`` of ``checkpoint`` (checked with bioimageio.spec while building)."""
    try:
        from bioimageio.spec import save_bioimageio_package
        from bioimageio.spec.model import v0_5 as spec
    except ImportError:
        raise UsageError("the BioImage Model Zoo export needs bioimageio.core: pip install bioimageio.core") from None

    model, meta, intensity = checkpoint.network, checkpoint.meta, checkpoint.intensity
    if model.cfg.offsets:
        raise UsageError("a BioImage Model Zoo package of this tool describes the membrane head's probabilities; "
                         "export an affinity model to ONNX instead")
    output = Path(output)
    if output.suffix != ".zip":
        raise UsageError(f"{output}: a BioImage Model Zoo package is a .zip file")
    model = model.eval().cpu()
    wrapped = ProbabilityUNet(**asdict(model.cfg)).eval()
    wrapped.net.load_state_dict(model.state_dict())
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        gain, offset = _write_files(folder, model, wrapped, intensity, meta)
        inputs, outputs = _tensors(spec, model, folder, gain, offset)
        weights = _weights(spec, model, folder)
        description = spec.ModelDescr(
            name=name, description="Membrane and cell-interior probabilities of EM images (U-Net, emunet).",
            authors=[spec.Author(name="emunet")], license=spec.LicenseId("Apache-2.0"),
            cite=[spec.CiteEntry(text="Ronneberger, Fischer, Brox: U-Net, MICCAI 2015", doi=spec.Doi("10.1007/978-3-319-24574-4_28"))],
            documentation=spec.FileDescr(source=folder / "README.md"), tags=["unet", "em", "membrane", "segmentation", "2d"],
            inputs=[inputs], outputs=[outputs], weights=weights,
            config={"emunet": {"model": asdict(model.cfg), "intensity": asdict(intensity) if intensity else None,
                                       "step": checkpoint.step}})
        packed = folder / "package.zip"
        save_bioimageio_package(description, output_path=packed)
        atomic_write(output, lambda f: f.write(packed.read_bytes()))
    return output
