"""Checkpoints that survive crashes and never execute code.

Training state (model, optimiser, scheduler, scaler, step, random states, config) is saved
with ``torch.save`` and read back with ``torch.load(weights_only=True)``, which refuses
pickled objects. Deployable weights are ``safetensors`` files whose metadata carry the model
config. Every write goes to a temporary file in the same folder, is flushed to disk, and is
then renamed over the target, so a kill at any moment leaves either the old or the new file.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable

import torch

from ..io.storage import local_copy
from ..errors import CheckpointError
from ..io.files import atomic_write, atomic_write_bytes
from ..io.pixels import Intensity
from .bundled import BUNDLED_DIR, name_hint, resolve_checkpoint
from .unet import UNet, UNetConfig
from .ms_checkpoint import mindspore_network

__all__ = [
    "Checkpoint",
    "CheckpointError",
    "load",
    "save_state",
    "load_state",
    "save_weights",
    "import_mindspore",
    "list_checkpoints",
    "prune_checkpoints",
]

STEP_FILE = re.compile(r"^step_(\d+)\.pt$")


def save_state(path: Path, state: dict[str, Any]) -> None:
    atomic_write(path, lambda f: torch.save(state, f))


# What a file that is not a checkpoint usually is, by its first bytes.
_OTHER_FORMATS = MappingProxyType({b"\x89PNG": "a PNG image", b"II*\x00": "a TIFF image", b"MM\x00*": "a TIFF image",
                  b"\xff\xd8\xff": "a JPEG image", b"GIF8": "a GIF image", b"%PDF": "a PDF document"})

# Bounds on a network described by a file: the largest presets are far inside them, and a
# crafted header could otherwise make the loader allocate gigabytes before anything is checked.
MAX_WIDTH, MAX_DEPTH, MAX_CHANNELS, MAX_PARAMETERS = 256, 6, 64, 500_000_000


def _not_a_checkpoint(path: Path) -> str | None:
    """What the file is, when its first bytes say it is a known non-checkpoint format."""
    with open(path, "rb") as f:
        head = f.read(8)
    return next((what for magic, what in _OTHER_FORMATS.items() if head.startswith(magic)), None)


def _existing_checkpoint(path: str | Path) -> Path:
    """The local file of a checkpoint (a URL's cached copy), refused where it is missing or is
    another kind of file. A bundled model's name is its shipped file."""
    path = local_copy(resolve_checkpoint(path))
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint does not exist")
    other = _not_a_checkpoint(path)
    if other:
        raise CheckpointError(f"{path}: this is {other}, not a checkpoint (.safetensors, .pt or the lab's .ckpt)")
    return path


def _with_name_hint(load: Callable) -> Callable:
    """``load``, whose refusals of a checkpoint argument also say which bundled model a mistyped
    name meant, or that a local path of a model's name hides it."""
    @functools.wraps(load)
    def hinted(path: str | Path, *args: Any, **kwargs: Any) -> Any:
        try:
            return load(path, *args, **kwargs)
        except CheckpointError as exc:
            hint = name_hint(path)
            if hint and hint not in str(exc):  # load reads a .pt through load_state
                raise CheckpointError(f"{exc}; {hint}") from None
            raise
    return hinted


@_with_name_hint
def load_state(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = _existing_checkpoint(path)
    with open(path, "rb") as f:
        head = f.read(4)
    if not head.startswith((b"PK\x03\x04", b"\x80")):  # torch.save writes a zip archive (a pickle before 1.6)
        raise CheckpointError(f"{path}: not a PyTorch training checkpoint (.pt); give best.safetensors, "
                              "last.safetensors, checkpoints/step_N.pt or the lab's .ckpt")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if "weights_only" in str(exc) or "Unsupported global" in str(exc):
            msg = "it holds pickled Python objects, which are refused for safety"
        raise CheckpointError(f"{path}: cannot load checkpoint ({msg})") from None
    if not isinstance(state, dict) or "model" not in state or "config" not in state:
        raise CheckpointError(f"{path}: not a checkpoint of this tool (no model/config entries)")
    return state


def save_weights(path: Path, model: torch.nn.Module, model_config: UNetConfig, meta: dict[str, Any]) -> None:
    from dataclasses import asdict

    from safetensors.torch import save

    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    metadata = {"model_config": json.dumps(asdict(model_config)), **{k: json.dumps(v) for k, v in meta.items()}}
    atomic_write_bytes(path, save(tensors, metadata=metadata))


def _parameter_count(cfg: UNetConfig) -> int:
    """About the parameters of the U-Net ``cfg`` describes (within 0.1 %), without building it."""
    widths = [cfg.width * 2**i for i in range(cfg.depth + 1)]
    conv = lambda cin, cout, k: cin * cout * k * k + cout  # noqa: E731 (bias or norm affine: same order)
    total = conv(cfg.in_channels, widths[0], 3) + conv(widths[0], widths[0], 3)
    for i in range(1, cfg.depth + 1):
        total += conv(widths[i - 1], widths[i], 3) + conv(widths[i], widths[i], 3)
        total += widths[i] * widths[i - 1] * 4 + 2 * conv(widths[i - 1], widths[i - 1], 3) + widths[i - 1] ** 2 * 9
    return total + conv(widths[0], cfg.num_classes, 1)


def _build(model_cfg: dict, source: Path) -> UNet:
    """The network a file describes, after checking the description is sane and bounded."""
    try:
        cfg = UNetConfig(**model_cfg)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{source}: bad model config in checkpoint ({exc})") from None
    limits = [(cfg.width, MAX_WIDTH, "width"), (cfg.depth, MAX_DEPTH, "depth"), (cfg.in_channels, MAX_CHANNELS, "in_channels"),
              (cfg.num_classes, MAX_CHANNELS, "num_classes")]
    for value, limit, name in limits:
        if not isinstance(value, int) or not 1 <= value <= limit:
            raise CheckpointError(f"{source}: model {name} {value!r} in the checkpoint is out of range 1..{limit}; "
                                  "the file is damaged or not this tool's")
    if _parameter_count(cfg) > MAX_PARAMETERS:
        raise CheckpointError(f"{source}: the checkpoint describes a network of {_parameter_count(cfg):,d} parameters, "
                              f"more than {MAX_PARAMETERS:,d}; the file is damaged or not this tool's")
    return UNet(cfg)


def load_into(model: torch.nn.Module, tensors: dict[str, torch.Tensor], source: Path) -> None:
    """Load a state dict, naming every missing, unexpected or mis-shaped tensor on failure."""
    own = model.state_dict()
    missing = sorted(set(own) - set(tensors))
    extra = sorted(set(tensors) - set(own))
    shapes = sorted(
        f"{k} {tuple(tensors[k].shape)} != {tuple(own[k].shape)}" for k in set(own) & set(tensors) if tensors[k].shape != own[k].shape
    )
    if missing or extra or shapes:
        parts = []
        if missing:
            parts.append(f"missing {missing[:10]}{' ...' if len(missing) > 10 else ''}")
        if extra:
            parts.append(f"unexpected {extra[:10]}{' ...' if len(extra) > 10 else ''}")
        if shapes:
            parts.append(f"mis-shaped {shapes[:10]}")
        raise CheckpointError(f"{source}: checkpoint does not fit the model: " + "; ".join(parts))
    model.load_state_dict(tensors)


@dataclass(frozen=True)
class Checkpoint:
    """A model file read once: the network (eval mode) and what the file says about it.

    Every reader of a checkpoint (prediction, fine-tuning, ``train.init``, export, the CLI) takes
    this, so the metadata is parsed here and nowhere else.
    """

    network: UNet
    given: str | Path  # as named: a path, a URL or a bundled model's name
    path: Path  # the local file that was read (a URL's cached copy, a bundled model's shipped file)
    format: str  # "safetensors", "training state" (.pt) or "mindspore" (the lab's .ckpt)
    step: int | None = None
    run: Mapping[str, Any] | None = None  # the settings of the run that wrote it, as recorded
    extra: Mapping[str, Any] = field(default_factory=dict)  # the rest of its metadata (validation scores, ...)

    @property
    def bundled(self) -> bool:
        """Whether it is one of the models shipped in the package."""
        return self.path.resolve().parent == BUNDLED_DIR.resolve()

    @property
    def intensity(self) -> Intensity | None:
        """How the run scaled its training images, where the file records it: prediction and
        fine-tuning scale new images the same way, so the network sees what it learnt from."""
        recorded = (self.run or {}).get("intensity")
        return Intensity(**recorded) if isinstance(recorded, dict) else None

    @property
    def meta(self) -> dict[str, Any]:
        """The metadata as one dict (step, run config as "config", the rest), as written."""
        return {**self.extra, "step": self.step, **({"config": dict(self.run)} if self.run is not None else {})}


@_with_name_hint
def load(given: str | Path, device: str | torch.device = "cpu") -> Checkpoint:
    """A :class:`Checkpoint` from ``.safetensors`` weights, a ``.pt`` training checkpoint, a
    MindSpore ``.ckpt``, a URL of one or a bundled model's name."""
    path = _existing_checkpoint(given)
    if path.suffix == ".ckpt":  # the MindSpore lab's format
        model, _ = import_mindspore(path)
        return Checkpoint(model.to(device).eval(), given, path, "mindspore")
    if path.suffix == ".safetensors":
        tensors, model_cfg, meta = _read_safetensors(path)
        kind = "safetensors"
    else:
        state = load_state(path)
        tensors, model_cfg = state["model"], state["config"].get("model_resolved") or {}
        meta = {"step": state.get("step"), "config": state["config"]}
        kind = "training state"
    model = _build(model_cfg, path)
    load_into(model, tensors, path)
    run = meta.pop("config", None)
    step = meta.pop("step", None)
    return Checkpoint(model.to(device).eval(), given, path, kind, step, run if isinstance(run, dict) else None, meta)


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict, dict[str, Any]]:
    """Tensors, model config and the rest of the metadata of a weights file this tool wrote."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:
        raise CheckpointError(f"{path}: cannot read safetensors file ({exc})") from None
    if "model_config" not in header:
        raise CheckpointError(f"{path}: safetensors file has no model_config metadata; not written by this tool")
    try:
        meta = {k: json.loads(v) for k, v in header.items()}
    except json.JSONDecodeError:
        raise CheckpointError(f"{path}: corrupt metadata") from None
    return tensors, meta.pop("model_config"), meta


def import_mindspore(path: str | Path) -> tuple[UNet, list[str]]:
    """The lab's network from a MindSpore checkpoint, widths taken from the tensor shapes.

    Returns the model (eval mode) and the names of the optimiser entries that were set aside.
    Missing, extra or mis-shaped network tensors are refused with an error naming them.
    """
    path = local_copy(path)
    tensors, model_cfg, skipped = mindspore_network(path)
    model = UNet(model_cfg)
    load_into(model, tensors, path)
    return model.eval(), skipped


def list_checkpoints(folder: Path) -> list[tuple[int, Path]]:
    """(step, path) of ``step_N.pt`` files, oldest first."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := STEP_FILE.match(p.name))]
    return sorted(found)


def prune_checkpoints(folder: Path, keep: int, protect: set[int]) -> None:
    """Delete all but the newest ``keep`` checkpoints, sparing the steps in ``protect``."""
    found = list_checkpoints(folder)
    for step, path in found[: max(0, len(found) - keep)]:
        if step not in protect:
            path.unlink(missing_ok=True)
