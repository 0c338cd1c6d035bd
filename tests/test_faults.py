"""Faults during training: kills, Ctrl-C, non-finite losses, unwritable outputs."""

import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch

from emunet.model.checkpoint import list_checkpoints, load_state
from emunet.cli import main

TINY = ["model.preset=unet_cpu", "model.width=4", "model.depth=2", "train.tile=32", "train.batch_size=2",
        "train.lr=1e-3", "train.log_every=1", "train.val_every=0", "predict.tile=64", "train.precision=fp32"]

pytestmark = pytest.mark.slow  # subprocesses killed and restarted: minutes, not seconds


def _args(paths, out, *extra):
    return ["train", "-q", "--out", str(out), f"data.images={paths['images']}", f"data.labels={paths['labels']}", *TINY, *extra]


def _launch(paths, out, *extra):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-m", "emunet", *_args(paths, out, *extra)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_random_kills_always_resume_from_a_complete_checkpoint(small_isbi, tmp_path):
    steps = ["train.steps=60", "train.checkpoint_every=1", "train.keep=2"]
    reference = tmp_path / "reference"  # same process settings (threads) as the killed runs
    done = _launch(small_isbi, reference, *steps)
    assert done.wait(timeout=300) == 0, done.stderr.read()

    out = tmp_path / "killed"
    rng = random.Random(0)
    kills = 0
    for attempt in range(40):
        if kills >= 10:
            break
        newest = _newest_step(out)
        proc = _launch(small_isbi, out, *steps, *(["--resume"] if attempt else []))
        # killed once it trains (a checkpoint past where it started), at a random moment of the
        # steps and checkpoint writes after that: no kill spent on the start-up, whatever the machine's speed
        deadline = time.monotonic() + 120
        while _newest_step(out) <= newest and proc.poll() is None:
            assert time.monotonic() < deadline, "no checkpoint within 120 s"
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 0.1))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            kills += 1
            for _, path in list_checkpoints(out / "checkpoints"):
                load_state(path)  # every visible checkpoint is complete
        else:
            assert proc.returncode == 0, proc.stderr.read()
            # finished before enough kills: start over from scratch to keep killing
            for p in (out / "checkpoints").iterdir():
                p.unlink()
    assert kills >= 10
    # then let it finish undisturbed (on a slow machine the kills alone may not reach the end)
    done = _launch(small_isbi, out, *steps, "--resume")
    assert done.wait(timeout=300) == 0, done.stderr.read()
    final = load_state(out / "checkpoints" / "step_000060.pt")["model"]
    expected = load_state(reference / "checkpoints" / "step_000060.pt")["model"]
    for name in expected:
        torch.testing.assert_close(final[name], expected[name], rtol=0, atol=0)


def _newest_step(out) -> int:
    found = list_checkpoints(out / "checkpoints")
    return found[-1][0] if found else 0


def test_ctrl_c_saves_a_checkpoint_and_exits_cleanly(small_isbi, tmp_path):
    out = tmp_path / "interrupted"
    proc = _launch(small_isbi, out, "train.steps=100000", "train.checkpoint_every=1000")
    deadline = time.time() + 60
    while not (out / "metrics.csv").exists() or (out / "metrics.csv").read_text().count("\n") < 4:
        assert time.time() < deadline and proc.poll() is None
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert "interrupted at step" in err and "saved checkpoints/step_" in err and "Traceback" not in err
    found = list_checkpoints(out / "checkpoints")
    assert len(found) == 1 and found[0][0] >= 3
    state = load_state(found[0][1])
    assert state["step"] == found[0][0]


def _wait_for_rows(out, proc, rows):
    deadline = time.time() + 120
    while not (out / "metrics.csv").exists() or (out / "metrics.csv").read_text().count("\n") < rows + 1:
        assert time.time() < deadline and proc.poll() is None
        time.sleep(0.05)


def test_ctrl_c_mid_step_resumes_bit_identical(small_isbi, tmp_path):
    reference = tmp_path / "reference"
    steps = "train.steps=150"  # long enough that both interrupts land inside the steps
    assert _launch(small_isbi, reference, steps).wait(timeout=300) == 0
    out = tmp_path / "interrupted"
    for attempt in range(3):  # interrupted twice at random moments, then run to the end
        proc = _launch(small_isbi, out, steps, *(["--resume"] if attempt else []))
        if attempt < 2:
            _wait_for_rows(out, proc, 3 + 40 * attempt)  # training has started
            time.sleep(random.uniform(0.0, 0.1))  # a random moment, most likely inside a step
            proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == (130 if attempt < 2 else 0), err
    final = load_state(out / "checkpoints" / "step_000150.pt")["model"]
    expected = load_state(reference / "checkpoints" / "step_000150.pt")["model"]
    for name in expected:  # batch-norm running statistics and counts included
        torch.testing.assert_close(final[name], expected[name], rtol=0, atol=0)


def test_non_finite_loss_stops_with_a_clear_message(small_isbi, tmp_path, monkeypatch, capsys):
    import emunet.train.loop as train_module

    real = train_module.segmentation_loss
    calls = {"n": 0}

    def poisoned(logits, labels, *args):
        calls["n"] += 1
        loss = real(logits, labels, *args)
        return loss * float("nan") if calls["n"] == 5 else loss

    monkeypatch.setattr(train_module, "segmentation_loss", poisoned)
    out = tmp_path / "nan"
    assert main(_args(small_isbi, out, "train.steps=10", "train.checkpoint_every=2")) == 2
    err = capsys.readouterr().err
    assert "loss became nan at step 5" in err and "last good checkpoint is kept" in err
    assert [s for s, _ in list_checkpoints(out / "checkpoints")] == [2, 4]
    load_state(out / "checkpoints" / "step_000004.pt")


def test_unwritable_output_fails_before_training(small_isbi, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    assert main(_args(small_isbi, blocker / "run", "train.steps=2")) == 2
    err = capsys.readouterr().err
    assert "a-file" in err and "Traceback" not in err


@pytest.mark.parametrize("size", [(10, 13), (1, 1)])
def test_images_smaller_than_the_network_input_are_mirror_padded(tmp_path, size):
    import numpy as np

    from emunet.model.unet import create_model
    from emunet.infer.tiling import predict_image

    model = create_model("unet_medical", width=2).eval()
    prob = predict_image(model, np.random.default_rng(0).random(size, dtype=np.float32), tile=388)
    assert prob.shape == size and np.isfinite(prob).all()
