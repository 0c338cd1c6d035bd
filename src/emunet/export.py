"""Export to ONNX (opset 17+) with dynamic batch, height and width, for ONNX Runtime, TensorRT
or Ascend. Optionally the softmax is folded in, so the output is class probabilities."""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

import torch
from torch import nn

from .errors import UsageError
from .model import UNet

__all__ = ["export_onnx"]


class _WithSoftmax(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.model(x), dim=1)


def export_onnx(model: UNet, path: str | Path, opset: int = 17, softmax: bool = False) -> Path:
    """Write ``model`` as ONNX to ``path`` (atomically) and check it with ``onnx.checker``.

    The input ``image`` is (batch, channels, height, width), already mapped to [-1, 1] as in
    training; height and width must be sizes the network accepts (``UNet.fit_input_size``).
    The output is ``logits`` (or ``probabilities`` with ``softmax``).
    """
    import onnx

    if opset < 17:
        raise UsageError(f"--opset {opset} is too old; use 17 or newer")
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
        onnx.checker.check_model(str(tmp_path))
        tmp_path.replace(path)
    return path
