"""Models that ship inside the package, usable by name wherever a checkpoint path is:
``unet predict isbi-cells img.tif --segment``, ``Segmenter("isbi-membranes")``,
``train.init=isbi-membranes``. No download at run time: the weights are package data.

Each is described in ``bundled/models.json`` (what it was trained on, by which config and
command, its pixel size, the data's terms, the recipe's scores on the folds it was not trained
on); ``scripts/bundle_models.py`` writes that file and the weights from finished runs.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import CheckpointError

__all__ = ["BundledModel", "bundled_models", "bundled_model", "resolve_checkpoint", "is_model_name", "names_a_model", "name_hint", "describe", "BUNDLED_DIR"]

BUNDLED_DIR = Path(__file__).with_name("bundled")
_NAME = re.compile(r"^[a-z][a-z0-9-]*$")  # no dot, no slash: never a file name this tool writes


@dataclass(frozen=True)
class BundledModel:
    """One shipped model and what a user needs to know to trust it on their data."""

    name: str
    file: str  # in BUNDLED_DIR
    head: str  # 'membrane' or 'affinities'
    summary: str
    trained_on: str
    pixel_size_nm: float
    data_terms: str
    recipe: str  # the config and command that trained it
    scores: dict = field(default_factory=dict)  # the recipe's fold scores, and how they were measured

    @property
    def path(self) -> Path:
        return BUNDLED_DIR / self.file


def bundled_models() -> dict[str, BundledModel]:
    """The shipped models by name (read from the package each time: a few hundred bytes)."""
    index = BUNDLED_DIR / "models.json"
    if not index.is_file():
        return {}
    entries = json.loads(index.read_text())
    return {e["name"]: BundledModel(**e) for e in entries}


def is_model_name(given: str | Path) -> bool:
    """Whether ``given`` is written as a model name (lower-case words and dashes, no suffix)
    rather than a path."""
    return isinstance(given, (str, Path)) and bool(_NAME.match(str(given)))


def names_a_model(given: str | Path) -> bool:
    """Whether a checkpoint argument means a bundled model: written as a name, and no file or
    folder of that name here (a path always wins)."""
    return is_model_name(given) and not Path(given).exists()


def name_hint(given: str | Path) -> str:
    """For an error about the checkpoint ``given``: the bundled model it was likely meant to be
    (``ISBI-Cells``, ``isbi_membranes``), or that a local path of a bundled model's name hides
    that model; '' where neither."""
    text = str(given)
    models = bundled_models()
    if text in models and Path(text).exists():
        kind = "folder" if Path(text).is_dir() else "file"
        return (f"a {kind} named {text} here hides the bundled model of that name (a path always wins); "
                f"run from another folder, or rename the {kind}")
    near = text.strip().lower().replace("_", "-")
    if near != text and near in models and not Path(text).exists():
        return f"did you mean the bundled model {near}? (names are lower case with dashes; unet models lists them)"
    return ""


def bundled_model(name: str) -> BundledModel:
    models = bundled_models()
    if name not in models:
        known = ", ".join(sorted(models)) or "none in this installation"
        raise CheckpointError(f"{name}: no such model and no such file; bundled models: {known} (unet models lists "
                              "them), or give a checkpoint path (.safetensors, .pt, .ckpt)")
    return models[name]


def resolve_checkpoint(given: str | Path) -> str | Path:
    """The file behind a checkpoint argument: a bundled model's weights for its name, else
    ``given`` unchanged (a path or URL, checked where it is read)."""
    if names_a_model(given):
        return bundled_model(str(given)).path
    return given


def describe(model: BundledModel) -> str:
    """What ``unet models`` prints for one model."""
    lines = [f"{model.name}  ({model.head} head, {model.pixel_size_nm:g} nm pixels)  {model.summary}",
             f"  trained on:  {model.trained_on}",
             f"  data terms:  {model.data_terms}",
             f"  made by:     {model.recipe}"]
    for label, value in model.scores.items():
        lines.append(f"  {label}: {value}")
    return "\n".join(lines)
