"""U-Net (Ronneberger et al., 2015, arXiv:1505.04597) and a registry of named presets.

The parts are named after the paper's figure (``inc``, ``down1``..``down4``, ``up1``..``up4``,
``outc``), the way milesial/Pytorch-UNet names them, so the code and the diagram line up.
The ``unet_medical`` preset reproduces the MindSpore lab's network tensor for tensor:
valid 3x3 convolutions with bias, no normalisation, transposed convolutions without bias
followed by ReLU, and the up-sampled tensor placed before the skip in the concatenation.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from types import MappingProxyType
from typing import Callable

import torch
from torch import nn

from .affinities import DEFAULT_OFFSETS, check_offsets
from ..errors import ConfigError

__all__ = ["UNetConfig", "UNet", "to_network_input", "PRESETS", "register_preset", "create_model", "count_parameters", "init_lab_weights"]


@dataclass
class UNetConfig:
    """Shape of a U-Net.

    Args:
        in_channels: image channels (1 for grey EM).
        num_classes: output channels; class 1 is "cell interior" for ISBI.
        width: channels of the first level; level i has ``width * 2**i``.
        depth: number of 2x down-samplings (4 in the paper).
        padding: ``"valid"`` (paper, output smaller than input) or ``"same"``.
        norm: ``"none"``, ``"batch"``, ``"instance"`` or ``"group"`` (8 groups).
        dropout: dropout probability after the deepest block (the paper uses 0.5 there).
        up_bias: bias on the transposed convolutions (MindSpore's default is no bias).
        up_relu: ReLU after each transposed convolution, as the lab does.
        init: how fresh weights are drawn: ``"torch"`` (PyTorch's defaults) or ``"lab"`` (the
            MindSpore lab's: see :func:`init_lab_weights`). Loaded weights replace either.
        head: ``"membrane"`` (class logits, softmax; the lab's) or ``"affinities"`` (one logit per
            offset, sigmoid: the probability that a pixel and its partner lie in one cell).
        offsets: the affinity head's (dy, dx) offsets; empty for the membrane head (the
            affinity head's default: :data:`affinities.DEFAULT_OFFSETS`).
    """

    in_channels: int = 1
    num_classes: int = 2
    width: int = 64
    depth: int = 4
    padding: str = "valid"
    norm: str = "none"
    dropout: float = 0.0
    up_bias: bool = False
    up_relu: bool = True
    init: str = "torch"
    head: str = "membrane"
    offsets: tuple[tuple[int, int], ...] = ()

    def __post_init__(self) -> None:
        if self.head not in ("membrane", "affinities"):
            raise ConfigError(f"model.head must be 'membrane' or 'affinities', got {self.head!r}")
        if self.head == "affinities":
            self.offsets = check_offsets(self.offsets or DEFAULT_OFFSETS)
            self.num_classes = len(self.offsets)
        elif self.offsets:
            raise ConfigError("model.offsets are the affinity head's: set model.head=affinities, or leave offsets unset")
        else:
            self.offsets = ()  # also when read back from a file's JSON as []
        if self.init not in ("torch", "lab"):
            raise ConfigError(f"model.init must be 'torch' or 'lab', got {self.init!r}")
        if self.padding not in ("valid", "same"):
            raise ConfigError(f"model.padding must be 'valid' or 'same', got {self.padding!r}")
        if self.norm not in ("none", "batch", "instance", "group"):
            raise ConfigError(f"model.norm must be none/batch/instance/group, got {self.norm!r}")
        if self.width < 1 or self.depth < 1:
            raise ConfigError("model.width and model.depth must be positive")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model.dropout must be in [0, 1), got {self.dropout}")


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=True)
    if kind == "group":
        return nn.GroupNorm(min(8, channels), channels)
    return nn.Identity()


class DoubleConv(nn.Module):
    """(3x3 conv => [norm] => ReLU) * 2; without norm the tensor names are the lab's
    (``double_conv.0``, ``double_conv.2``)."""

    def __init__(self, cin: int, cout: int, padding: str, norm: str) -> None:
        super().__init__()
        pad = 1 if padding == "same" else 0
        layers: list[nn.Module] = []
        for c_in in (cin, cout):
            layers.append(nn.Conv2d(c_in, cout, 3, padding=pad, bias=norm == "none"))
            if norm != "none":
                layers.append(_norm(norm, cout))
            layers.append(nn.ReLU(inplace=True))
        self.double_conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.double_conv(x)


class Down(nn.Module):
    """2x2 max-pool => DoubleConv."""

    def __init__(self, cin: int, cout: int, padding: str, norm: str, dropout: float = 0.0) -> None:
        super().__init__()
        self.maxpool_conv = nn.Sequential(nn.MaxPool2d(2), DoubleConv(cin, cout, padding, norm))
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.maxpool_conv(x))


class _Crop(torch.autograd.Function):
    """A slice whose gradient keeps the input's memory layout.

    Plain slicing back-propagates into a new NCHW tensor; on a channels_last network that
    gradient then meets the max-pool's channels_last one, and the sum and the ReLU backward
    fall to slow mixed-layout loops (a fifth of the lab net's bf16 step on CPU).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, top: int, left: int, height: int, width: int) -> torch.Tensor:
        ctx.shape, ctx.window = x.shape, (top, left, height, width)
        channels_last = x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last)
        ctx.layout = torch.channels_last if channels_last else torch.contiguous_format
        return x[..., top : top + height, left : left + width]

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        top, left, height, width = ctx.window
        full = torch.empty(ctx.shape, dtype=grad.dtype, device=grad.device, memory_format=ctx.layout).zero_()
        full[..., top : top + height, left : left + width] = grad
        return full, None, None, None, None


def center_crop(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Crop the centre ``height x width`` of an NCHW tensor (the paper's skip cropping)."""
    top = (x.shape[-2] - height) // 2
    left = (x.shape[-1] - width) // 2
    if not (x.requires_grad and torch.is_grad_enabled()) or torch.jit.is_tracing():
        return x[..., top : top + height, left : left + width]
    return _Crop.apply(x, top, left, height, width)


class Up(nn.Module):
    """2x2 transposed conv [=> ReLU], concatenate [up, cropped skip], DoubleConv."""

    def __init__(self, cin: int, cout: int, cfg: UNetConfig) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(cin, cout, 2, stride=2, bias=cfg.up_bias)
        self.relu = nn.ReLU(inplace=True) if cfg.up_relu else nn.Identity()
        self.conv = DoubleConv(2 * cout, cout, cfg.padding, cfg.norm)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.up(x))
        if x.shape[-2:] != skip.shape[-2:]:
            skip = center_crop(skip, x.shape[-2], x.shape[-1])
        return self.conv(torch.cat([x, skip], dim=1))


class OutConv(nn.Module):
    """1x1 convolution to class logits."""

    def __init__(self, cin: int, num_classes: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class UNet(nn.Module):
    """The U-Net of the paper's Fig. 1, configurable by :class:`UNetConfig`.

    Input sizes must fit the network: :meth:`input_size` and :meth:`output_size` give the
    matching sizes, and :meth:`fit_input_size` the nearest valid input at least as large.
    """

    def __init__(self, cfg: UNetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        w = [cfg.width * 2**i for i in range(cfg.depth + 1)]
        self.inc = DoubleConv(cfg.in_channels, w[0], cfg.padding, cfg.norm)
        for i in range(1, cfg.depth + 1):
            drop = cfg.dropout if i == cfg.depth else 0.0
            setattr(self, f"down{i}", Down(w[i - 1], w[i], cfg.padding, cfg.norm, drop))
        for i in range(1, cfg.depth + 1):
            setattr(self, f"up{i}", Up(w[cfg.depth - i + 1], w[cfg.depth - i], cfg))
        self.outc = OutConv(w[0], cfg.num_classes)
        if cfg.init == "lab":
            init_lab_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = [self.inc(x)]
        for i in range(1, self.cfg.depth + 1):
            skips.append(getattr(self, f"down{i}")(skips[-1]))
        x = skips.pop()
        for i in range(1, self.cfg.depth + 1):
            x = getattr(self, f"up{i}")(x, skips.pop())
        return self.outc(x)

    # --- sizes -------------------------------------------------------------------------
    def output_size(self, size: int) -> int:
        """Output side for an input side, or raise ValueError if ``size`` does not fit."""
        shrink = 4 if self.cfg.padding == "valid" else 0
        s = size
        for _ in range(self.cfg.depth):
            s -= shrink
            if s <= 0 or s % 2:
                raise ValueError(f"input size {size} does not fit this U-Net")
            s //= 2
        s -= shrink
        for _ in range(self.cfg.depth):
            s = 2 * s - shrink
        if s <= 0:
            raise ValueError(f"input size {size} is too small for this U-Net")
        return s

    def input_size(self, out: int) -> int:
        """Input side that gives exactly ``out`` output pixels (ValueError if impossible)."""
        size = self.fit_input_size(out)
        if self.output_size(size) != out:
            raise ValueError(f"no input size gives output size {out}")
        return size

    def fit_input_size(self, out: int) -> int:
        """Smallest valid input side whose output is at least ``out``."""
        step = 2**self.cfg.depth
        size = step
        while True:
            try:
                if self.output_size(size) >= out:
                    return size
            except ValueError:
                pass
            size += 2 if self.cfg.padding == "valid" else step

    @property
    def border(self) -> int:
        """Pixels lost in total across one axis, both sides together (184 for the paper's valid
        U-Net: 92 on each side)."""
        size = self.fit_input_size(1)
        return size - self.output_size(size)


# The lab's initialisation: its DoubleConv and OutConv draw weights from MindSpore's
# TruncatedNormal(0.06) (cut at two standard deviations) with zero biases, and its
# Conv2dTranspose keeps MindSpore's default 'normal' init, N(0, 0.01). Without normalisation,
# PyTorch's default (about ten times smaller in the deepest layers) starts the 23 layers with
# a signal near zero and the lab's 600 steps fall short of the lab's dice.
LAB_CONV_STD = 0.06
LAB_UP_STD = 0.01


@torch.no_grad()
def init_lab_weights(model: nn.Module) -> None:
    """Draw every convolution's weights as the MindSpore lab does, in place."""
    for module in model.modules():
        if isinstance(module, nn.ConvTranspose2d):
            nn.init.normal_(module.weight, 0.0, LAB_UP_STD)
        elif isinstance(module, nn.Conv2d):
            nn.init.trunc_normal_(module.weight, 0.0, LAB_CONV_STD, -2 * LAB_CONV_STD, 2 * LAB_CONV_STD)
        else:
            continue
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def to_network_input(images):
    """Map [0, 1] grey values to [-1, 1], the range the lab feeds its network (training,
    tiled prediction and export all feed it so)."""
    return images * 2.0 - 1.0


# --- presets, timm style: a name maps to a config ----------------------------------------
# The registry is the one module-level object that changes: register_preset adds to it (a user's
# own presets too); everyone else reads it through PRESETS, a read-only view.
_PRESET_REGISTRY: dict[str, Callable[[], UNetConfig]] = {}
PRESETS: Mapping[str, Callable[[], UNetConfig]] = MappingProxyType(_PRESET_REGISTRY)


def register_preset(name: str) -> Callable[[Callable[[], UNetConfig]], Callable[[], UNetConfig]]:
    def wrap(fn: Callable[[], UNetConfig]) -> Callable[[], UNetConfig]:
        _PRESET_REGISTRY[name] = fn
        return fn

    return wrap


@register_preset("unet_medical")
def _unet_medical() -> UNetConfig:
    """The MindSpore lab's network and initialisation: 572 -> 388, 31,029,698 parameters."""
    return UNetConfig(init="lab")


@register_preset("unet_paper")
def _unet_paper() -> UNetConfig:
    """The paper's network with biased transposed convs: 31,030,658 parameters."""
    return UNetConfig(up_bias=True, up_relu=False, init="lab")


@register_preset("unet_cpu")
def _unet_cpu() -> UNetConfig:
    """A 16-wide, batch-normalised, same-padded U-Net that trains in minutes on a CPU."""
    return UNetConfig(width=16, padding="same", norm="batch")


def create_model(name: str = "unet_medical", **overrides: object) -> UNet:
    """Build a preset by name, overriding any :class:`UNetConfig` field."""
    if name not in PRESETS:
        raise ConfigError(f"unknown model preset {name!r}; known: {', '.join(sorted(PRESETS))}")
    cfg = asdict(PRESETS[name]())
    known = {f.name for f in fields(UNetConfig)}
    bad = set(overrides) - known
    if bad:
        raise ConfigError(f"unknown model option(s) {sorted(bad)}; known: {sorted(known)}")
    cfg.update({k: v for k, v in overrides.items() if v is not None})
    return UNet(UNetConfig(**cfg))
