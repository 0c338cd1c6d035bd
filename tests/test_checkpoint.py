import os
from dataclasses import asdict

import pytest
import torch

from emunet.model.checkpoint import CheckpointError, load, load_into, load_state, save_state, save_weights
from emunet.io.files import atomic_write_bytes
from emunet.model.unet import create_model


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_payload_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "step_000001.pt"
    torch.save({"model": {}, "config": {}, "evil": _Payload(marker)}, path)
    with pytest.raises(CheckpointError, match="pickled Python objects"):
        load_state(path)
    with pytest.raises(CheckpointError):
        load(path)
    assert not marker.exists()


def test_other_architecture_lists_the_mismatched_tensors(tmp_path):
    small = create_model("unet_cpu", width=4, depth=2)
    save_weights(tmp_path / "w.safetensors", small, small.cfg, {"step": 1})
    other = create_model("unet_cpu", width=8, depth=2)
    tensors = small.state_dict()
    with pytest.raises(CheckpointError, match=r"mis-shaped \['down1"):
        load_into(other, tensors, tmp_path / "w.safetensors")
    deeper = create_model("unet_cpu", width=4, depth=3)
    with pytest.raises(CheckpointError, match="missing .*down3"):
        load_into(deeper, tensors, tmp_path / "w.safetensors")


def test_safetensors_round_trip(tmp_path):
    torch.manual_seed(0)
    model = create_model("unet_medical", width=2, depth=2).eval()
    save_weights(tmp_path / "w.safetensors", model, model.cfg, {"step": 5})
    checkpoint = load(tmp_path / "w.safetensors")
    loaded, info = checkpoint.network, checkpoint.meta
    assert info["step"] == 5
    x = torch.randn(1, 1, 44, 44)
    torch.testing.assert_close(loaded(x), model(x))


def test_not_a_checkpoint(tmp_path):
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 100)
    with pytest.raises(CheckpointError, match="junk.safetensors: cannot read"):
        load(tmp_path / "junk.safetensors")
    with pytest.raises(CheckpointError, match="does not exist"):
        load(tmp_path / "missing.pt")


def test_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "keep.bin"
    atomic_write_bytes(path, b"old")

    def broken_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError):
        atomic_write_bytes(path, b"new")
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["keep.bin"]  # no temp file left behind


@pytest.mark.parametrize("suffix", [".pt", ".safetensors", ".ckpt"])
def test_an_image_given_as_a_checkpoint_is_named_for_what_it_is(tmp_path, suffix):
    from PIL import Image

    path = tmp_path / f"picture{suffix}"
    Image.new("L", (8, 8)).save(path, format="PNG")
    with pytest.raises(CheckpointError, match="this is a PNG image, not a checkpoint"):
        load(path)


def test_a_crafted_header_cannot_build_a_huge_model(tmp_path):
    import json

    from safetensors.torch import save_file

    path = tmp_path / "huge.safetensors"
    config = {"in_channels": 1, "num_classes": 2, "width": 2048, "depth": 8, "padding": "same", "norm": "none"}
    save_file({"x": torch.zeros(1)}, str(path), metadata={"model_config": json.dumps(config)})
    with pytest.raises(CheckpointError, match="width 2048 .* out of range"):
        load(path)
    config.update(width=256, depth=6)  # each within bounds, together 5 billion parameters
    save_file({"x": torch.zeros(1)}, str(path), metadata={"model_config": json.dumps(config)})
    with pytest.raises(CheckpointError, match="parameters, more than"):
        load(path)


def test_a_text_file_given_as_a_training_checkpoint_is_not_called_a_pickle(tmp_path):
    path = tmp_path / "notes.pt"
    path.write_text("these are notes, not weights")
    with pytest.raises(CheckpointError, match="not a PyTorch training checkpoint"):
        load(path)


def test_a_checkpoint_says_what_its_file_records(tmp_path):
    """One reader of checkpoints: the network, the step, the run's settings and input scaling,
    and whether it is a bundled model, from a safetensors file, a .pt state and a name alike."""
    from emunet.config import Config, run_settings
    from emunet.io.pixels import Intensity

    model = create_model("unet_cpu", width=4).eval()
    run = {"train": {"steps": 7}, "segment": {"min_size": 9}, "intensity": {"low": 0.0, "high": 4095.0, "dtype": "uint16", "how": "12-bit"}}
    save_weights(tmp_path / "w.safetensors", model, model.cfg, {"step": 3, "config": run, "val": {"v_rand": 0.9}})
    checkpoint = load(tmp_path / "w.safetensors")
    assert (checkpoint.step, checkpoint.format, checkpoint.bundled) == (3, "safetensors", False)
    assert checkpoint.intensity == Intensity(0.0, 4095.0, "uint16", "12-bit")
    assert checkpoint.extra == {"val": {"v_rand": 0.9}} and checkpoint.meta["config"]["train"] == {"steps": 7}
    settings = run_settings(checkpoint)
    assert (settings.train.steps, settings.segment.min_size, settings.predict.tile) == (7, 9, Config().predict.tile)

    save_state(tmp_path / "s.pt", {"model": model.state_dict(), "config": {"model_resolved": asdict(model.cfg)}, "step": 11})
    state = load(tmp_path / "s.pt")
    assert (state.step, state.format, state.intensity) == (11, "training state", None)
    assert run_settings(state) == Config()  # a run that recorded nothing but its network: the defaults

    bundled = load("isbi-membranes")
    assert bundled.bundled and bundled.given == "isbi-membranes" and bundled.intensity is not None
    assert (run_settings(bundled).model.preset, run_settings(load("isbi-cells")).model.head) == ("unet_cpu", "affinities")
