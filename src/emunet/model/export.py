"""Export to ONNX (opset 17+) with dynamic batch, height and width, for ONNX Runtime, TensorRT
or Ascend. Optionally the softmax is folded in, so the output is class probabilities."""

from __future__ import annotations

import json
import tempfile
import warnings
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn

from ..errors import UsageError
from ..io.pixels import Intensity
from .unet import UNet

__all__ = ["export_onnx"]


class _WithSoftmax(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.model(x), dim=1)


def onnx_metadata(model: UNet, softmax: bool, intensity: Intensity | None = None) -> dict[str, str]:
    """What a consumer of the ONNX file needs to feed it and read it, as metadata_props."""
    scaling = "pixels scaled to grey in [0, 1]"
    if intensity:
        scaling = (f"pixels scaled to grey in [0, 1] as in training ({intensity.how}: (value - {intensity.low:g}) / "
                   f"({intensity.high:g} - {intensity.low:g}), clipped)")
    sections = model.cfg.in_channels
    return {
        "emunet.input": f"image: (N, {sections}, H, W) float32 = 2 * grey - 1; grey: {scaling}"
                        + ("" if sections == 1 else f"; the channels are {sections} consecutive sections, the slice in the middle"),
        "emunet.input_sizes": "H and W any multiple of 16" if model.cfg.padding == "same"
                              else f"H and W from {model.fit_input_size(1)} in steps of 16; the output is {model.border} px smaller",
        "emunet.output": _output_meaning(model, softmax),
        "emunet.model_config": json.dumps(asdict(model.cfg)),
        "emunet.intensity": json.dumps(asdict(intensity) if intensity else {}),
    }


def _output_meaning(model: UNet, softmax: bool) -> str:
    offsets = model.cfg.offsets
    if offsets:
        return (f"logits: (N, {len(offsets)}, H', W'); channel c: pixel (y, x) and pixel (y + dy, x + dx) lie in one "
                f"cell, offsets (dy, dx) = {json.dumps([list(o) for o in offsets])} (a sigmoid gives probabilities)")
    return (("probabilities" if softmax else "logits") + ": (N, 2, H', W'); channel 1 = cell interior, channel 0 = membrane"
            + ("" if softmax else " (softmax over the channels gives probabilities)"))


def export_onnx(model: UNet, path: str | Path, opset: int = 17, softmax: bool = False, intensity: Intensity | None = None) -> Path:
    """Write ``model`` as ONNX to ``path`` (atomically) and check it with ``onnx.checker``.

    The input ``image`` is (batch, channels, height, width), already mapped to [-1, 1] as in
    training; height and width must be sizes the network accepts (``UNet.fit_input_size``).
    The output is ``logits`` (or ``probabilities`` with ``softmax``). The file's metadata say
    so, with the input scaling of the training images (``intensity``) and the model config.
    """
    import onnx

    if opset < 17:
        raise UsageError(f"--opset {opset} is too old; use 17 or newer")
    if softmax and model.cfg.offsets:
        raise UsageError("--softmax is the membrane head's; an affinity model's logits take a sigmoid per channel")
    path = Path(path)
    model = model.eval().cpu()
    net = _WithSoftmax(model) if softmax else model
    size = model.fit_input_size(64)
    example = torch.zeros(1, model.cfg.in_channels, size, size)
    output = "probabilities" if softmax else "logits"
    axes = {0: "batch", 2: "height", 3: "width"}
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        tmp_path = Path(tmp) / path.name
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer notes about shape-dependent branches
            torch.onnx.export(net, (example,), str(tmp_path), dynamo=False, opset_version=opset,
                              input_names=["image"], output_names=[output],
                              dynamic_axes={"image": axes, output: axes})
        exported = onnx.load(str(tmp_path))
        for key, value in onnx_metadata(model, softmax, intensity).items():
            exported.metadata_props.add(key=key, value=value)
        onnx.checker.check_model(exported)
        onnx.save(exported, str(tmp_path))
        tmp_path.replace(path)
    return path
