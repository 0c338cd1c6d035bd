"""Importing the lab's MindSpore checkpoint (written by MindSpore 2.10 at 1/16 width)."""

from pathlib import Path

import numpy as np
import pytest
import torch

from emunet.model.checkpoint import CheckpointError, load
from emunet.cli import main
from emunet.model.checkpoint import import_mindspore
from emunet.model.ms_checkpoint import read_mindspore_checkpoint

MS = Path(__file__).resolve().parents[2] / "shared" / "data" / "mindspore-unet"
CKPT = MS / "unet_medical_w4.ckpt"


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _write_ckpt(path: Path, tensors: dict[str, np.ndarray]) -> Path:
    """A minimal MindSpore-format writer for the tests (packed dims, Float32)."""
    body = b""
    for name, arr in tensors.items():
        dims = _field(1, b"".join(_varint(d) for d in arr.shape))
        tensor = dims + _field(2, b"Float32") + _field(3, arr.astype("<f4").tobytes())
        body += _field(1, _field(1, name.encode()) + _field(2, tensor))
    path.write_bytes(body)
    return path


@pytest.fixture(scope="module")
def lab_tensors():
    if not CKPT.exists():
        pytest.fail(f"test data missing: {CKPT}")
    return read_mindspore_checkpoint(CKPT)


def test_reads_all_130_entries(lab_tensors):
    assert len(lab_tensors) == 130
    assert lab_tensors["up1.up.weight"].shape == (64, 32, 2, 2)
    assert "up1.up.bias" not in lab_tensors


def test_imported_model_reproduces_mindspore_logits():
    model, skipped = import_mindspore(CKPT)
    assert len(skipped) == 130 - 42 and "global_step" in skipped and any(s.startswith("moment1.") for s in skipped)
    assert model.cfg.width == 4 and model.cfg.depth == 4 and not model.cfg.up_bias
    io = np.load(MS / "unet_medical_w4_io.npz")
    with torch.no_grad():
        logits = model(torch.from_numpy(io["x"])).numpy()
    assert logits.shape == (1, 2, 388, 388)
    assert np.abs(logits - io["logits"]).max() < 1e-4


def test_truncated_checkpoint_is_refused(tmp_path):
    data = CKPT.read_bytes()
    (tmp_path / "cut.ckpt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="cut.ckpt: not a valid MindSpore checkpoint .*runs past the end"):
        read_mindspore_checkpoint(tmp_path / "cut.ckpt")
    (tmp_path / "junk.ckpt").write_bytes(b"\xff" * 64)
    with pytest.raises(CheckpointError, match="junk.ckpt"):
        read_mindspore_checkpoint(tmp_path / "junk.ckpt")


def test_missing_extra_and_misshaped_tensors_are_named(tmp_path, lab_tensors):
    net = {k: v for k, v in lab_tensors.items() if not k.startswith(("moment", "global", "learning", "beta"))}
    missing = dict(net)
    del missing["up2.conv.double_conv.2.bias"]
    with pytest.raises(CheckpointError, match=r"missing \['up2.conv.double_conv.2.bias'\]"):
        import_mindspore(_write_ckpt(tmp_path / "missing.ckpt", missing))
    extra = dict(net, **{"up1.up.bias": np.zeros(32, np.float32)})
    with pytest.raises(CheckpointError, match=r"unexpected \['up1.up.bias'\]"):
        import_mindspore(_write_ckpt(tmp_path / "extra.ckpt", extra))
    bad = dict(net, **{"outc.conv.bias": np.zeros(3, np.float32)})
    with pytest.raises(CheckpointError, match="mis-shaped .*outc.conv.bias"):
        import_mindspore(_write_ckpt(tmp_path / "bad.ckpt", bad))


@pytest.mark.slow
def test_cli_import_then_predict_evaluate_and_fine_tune(tmp_path, small_isbi, capsys):
    out = tmp_path / "lab.safetensors"
    assert main(["import-mindspore", str(CKPT), str(out)]) == 0
    assert "set aside 88 optimiser entries" in capsys.readouterr().out
    model = load(out).network
    io = np.load(MS / "unet_medical_w4_io.npz")
    with torch.no_grad():
        assert np.abs(model(torch.from_numpy(io["x"])).numpy() - io["logits"]).max() < 1e-4
    assert main(["predict", str(CKPT), str(small_isbi["test"]), "-o", str(tmp_path / "p.tif"), "--precision", "fp32"]) == 0
    assert main(["evaluate", str(out), "--images", str(small_isbi["images"]), "--labels", str(small_isbi["labels"]),
                 "--json", str(tmp_path / "e.json")]) == 0
    run = tmp_path / "finetune"
    assert main(["train", "-q", "--out", str(run), f"data.images={small_isbi['images']}", f"data.labels={small_isbi['labels']}",
                 "model.width=4", "train.tile=20", "train.batch_size=1", "train.steps=1", f"train.init={CKPT}",
                 "train.precision=fp32"]) == 0
    assert (run / "best.safetensors").exists()
