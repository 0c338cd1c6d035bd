"""Where and in which precision the network runs."""

from __future__ import annotations

from contextlib import nullcontext

import torch

from .errors import ConfigError

__all__ = ["resolve_device", "resolve_precision", "autocast_for"]


def resolve_device(name: str) -> torch.device:
    """'auto' is CUDA where present, else the CPU; 'cpu', 'cuda' and 'cuda:N' as named."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} asked for, but CUDA is not available on this machine")
    return device


def resolve_precision(name: str, device: torch.device) -> str:
    """'auto' is bf16 on the CPU (AMX and AVX-512 run it natively) and fp16 on CUDA."""
    if name != "auto":
        return name
    return "bf16" if device.type == "cpu" else "fp16"


def autocast_for(device: torch.device, precision: str):
    """An autocast context for ``precision`` ('fp32', 'bf16' or 'fp16') on ``device``."""
    if precision == "fp32":
        return nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)
