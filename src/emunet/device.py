"""Where and in which precision the network runs.

``auto`` picks the fastest device present (CUDA, then Apple's MPS, then the CPU) and, on it, the
fastest precision that the hardware runs natively: on a CPU, bf16 only where the processor has
bf16 arithmetic (AMX or AVX512-BF16) and oneDNN may use it; elsewhere bf16 is emulated through
fp32 and runs several times slower than fp32 itself (8x on an AVX2-only Zen 3).
"""

from __future__ import annotations

import logging
import os
from contextlib import nullcontext
from dataclasses import dataclass
from functools import lru_cache

import torch

from .errors import ConfigError

log = logging.getLogger("emunet")

__all__ = ["keep_freed_memory", "usable_cores", "core_share", "resolve_device", "resolve_precision", "choose_precision", "PrecisionChoice", "cpu_has_native_bf16",
           "autocast_for", "mps_available"]

PRECISIONS = ("auto", "fp32", "bf16", "fp16")

# oneDNN's ISA names (ONEDNN_MAX_CPU_ISA, or the older DNNL_MAX_CPU_ISA) up to which it has no bf16
# arithmetic: capped at one of these, oneDNN converts bf16 to fp32 and back around fp32 kernels.
_ISA_WITHOUT_BF16 = frozenset({"SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI"})


# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3


@lru_cache(maxsize=None)
def keep_freed_memory() -> bool:
    """Have glibc's malloc keep the memory a step frees for the next step's tensors.

    By default large blocks are mapped from the OS and unmapped when freed, so every CPU training
    step faults the same activations' pages in again (2 million page faults in 40 steps of the main
    job, 10 % of its time in the kernel). Blocks up to 32 MB (glibc's ceiling) now come from the
    heap, and up to 1 GiB of free heap is kept rather than trimmed. Prediction on a CPU faults
    its tiles' activations in the same way (700 thousand faults for one 2048 px section, its
    network 2.1-8.3 s against 1.7-1.9 s with this). True where glibc took the settings;
    elsewhere (macOS, Windows, musl) nothing changes. Process-wide, so called only where a
    command or a Dask worker owns the process (training, ``unet predict`` and ``unet evaluate``,
    blockwise prediction), not by the library's other entry points (napari, ``Segmenter``).
    """
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    settings = ((_M_MMAP_THRESHOLD, 32 << 20), (_M_TRIM_THRESHOLD, 1 << 30), (_M_TOP_PAD, 64 << 20))
    return all(mallopt(ctypes.c_int(name), ctypes.c_int(value)) == 1 for name, value in settings)


def usable_cores() -> int:
    """The cores this process may run on: its CPU affinity where the system tells it (a batch
    scheduler's share of a node), else every core of the machine."""
    import os

    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # macOS and Windows have no affinity call
        return os.cpu_count() or 1


def core_share(parties: int) -> int:
    """The cores each of ``parties`` threads or processes that share this process's cores may
    compute on (at least one): PyTorch's thread count for each, so that together they do not hold
    more OpenMP threads than cores (libgomp then stops their waiting spin, docs/volumes.md)."""
    return max(1, usable_cores() // max(1, parties))


def mps_available() -> bool:
    """Whether Apple's Metal GPU (MPS) can be used by this PyTorch on this machine."""
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def resolve_device(name: str) -> torch.device:
    """'auto' is CUDA where present, then Apple's MPS, else the CPU; 'cpu', 'cuda', 'cuda:N' and
    'mps' as named (refused in one line where absent)."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if mps_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} asked for, but CUDA is not available on this machine; use --device cpu")
    if device.type == "mps" and not mps_available():
        raise ConfigError(f"device {name!r} asked for, but Apple's MPS is not available here (it needs an Apple-silicon "
                          "Mac, macOS 12.3 or newer and a PyTorch built with MPS); use --device cpu")
    if device.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"device {name!r} is not supported; use auto, cpu, cuda, cuda:N or mps")
    return device


def _onednn_isa_cap() -> str | None:
    """The ISA oneDNN is capped at by the environment, upper case, or None."""
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA")
    return cap.strip().upper() if cap else None


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AMX or AVX512-BF16) and oneDNN may use it.

    ``torch.ops.mkldnn._is_mkldnn_bf16_supported()`` alone is not enough: it is also true on
    AVX-512 processors without bf16 instructions, where oneDNN emulates them.
    """
    cap = _onednn_isa_cap()
    if cap in _ISA_WITHOUT_BF16:
        return False
    cpu = torch.cpu
    has_units = any(getattr(cpu, probe, lambda: False)() for probe in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"))
    try:
        onednn_bf16 = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        onednn_bf16 = False
    return has_units and onednn_bf16


@dataclass(frozen=True)
class PrecisionChoice:
    """The precision a run uses and, in words, why (printed at the start of a run)."""

    precision: str
    reason: str

    def __str__(self) -> str:
        return f"{self.precision}: {self.reason}"


def choose_precision(name: str, device: torch.device) -> PrecisionChoice:
    """Resolve 'auto' for ``device`` and say why; an explicit choice is kept, with a warning (once
    per process) where it will be slow (bf16 on a CPU that emulates it) and an error where the
    device cannot run it."""
    if name not in PRECISIONS:
        raise ConfigError(f"unknown precision {name!r}; use {', '.join(PRECISIONS)}")
    if device.type == "cuda":
        if name == "auto":
            return PrecisionChoice("fp16", "CUDA runs fp16 natively (with a gradient scaler for training)")
        return PrecisionChoice(name, "as asked")
    if device.type == "mps":
        if name == "auto":
            # fp16 autocast on MPS needs a recent PyTorch and its gradient scaler on MPS more so;
            # fp32 runs everywhere MPS does.
            return PrecisionChoice("fp32", "fp32 runs on every MPS version")
        if name != "fp32" and not _autocast_available("mps"):
            raise ConfigError(f"precision {name!r} is not available on MPS with this PyTorch {torch.__version__}; "
                              "use --precision fp32 (or auto)")
        return PrecisionChoice(name, "as asked")
    return _choose_on_cpu(name)


def _choose_on_cpu(name: str) -> PrecisionChoice:
    native = cpu_has_native_bf16()
    if name == "auto":
        if native:
            return PrecisionChoice("bf16", "this CPU runs bf16 natively (AMX or AVX512-BF16)")
        cap = _onednn_isa_cap()
        why = f"oneDNN is capped at {cap} (ONEDNN_MAX_CPU_ISA)" if cap in _ISA_WITHOUT_BF16 else "this CPU has no native bf16"
        return PrecisionChoice("fp32", f"{why}; bf16 would be emulated, several times slower")
    if name == "fp16":
        return PrecisionChoice("fp16", "as asked (fp16 on a CPU is emulated by most processors and slow)")
    if name == "bf16" and not native:
        _warn_emulated_bf16()
    return PrecisionChoice(name, "as asked")


@lru_cache(maxsize=1)
def _warn_emulated_bf16() -> None:
    """Once per process: every prediction and validation asks again."""
    log.warning("precision bf16 asked for, but this CPU has no native bf16 (AMX or AVX512-BF16): it is emulated "
                "and runs several times slower than fp32; use precision auto or fp32")


def resolve_precision(name: str, device: torch.device) -> str:
    """The precision ``name`` means on ``device``: see :func:`choose_precision`."""
    return choose_precision(name, device).precision


def _autocast_available(device_type: str) -> bool:
    probe = getattr(torch.amp, "is_autocast_available", None)
    return bool(probe(device_type)) if probe is not None else False


def autocast_for(device: torch.device, precision: str):
    """An autocast context for ``precision`` ('fp32', 'bf16' or 'fp16') on ``device``."""
    if precision == "fp32":
        return nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)
