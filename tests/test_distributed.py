"""torchrun with 2 CPU processes (gloo): same result as one process, and surviving a dead rank."""

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from emunet.model.checkpoint import list_checkpoints, load_state

# No batch norm: per-rank batch statistics would differ from one process's by design.
TINY = ["model.preset=unet_cpu", "model.width=4", "model.depth=2", "model.norm=none", "train.tile=32",
        "train.batch_size=4", "train.lr=1e-4", "train.log_every=1", "train.val_every=0", "predict.tile=64",
        "train.precision=fp32", "train.dist_timeout=60"]

pytestmark = pytest.mark.slow  # subprocesses killed and restarted: minutes, not seconds


def _cmd(paths, out, nproc, *extra, torchrun_args=()):
    train = ["train", "-q", "--out", str(out), f"data.images={paths['images']}", f"data.labels={paths['labels']}", *TINY, *extra]
    if nproc == 1:
        return [sys.executable, "-m", "emunet", *train]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            *torchrun_args, "-m", "emunet", *train]


def _env():
    return dict(os.environ, OMP_NUM_THREADS="1")


def _final(out, step):
    return load_state(out / "checkpoints" / f"step_{step:06d}.pt")


def test_two_processes_match_one_process_with_the_same_global_batch(small_isbi, tmp_path):
    extra = ["train.steps=4", "train.checkpoint_every=2"]
    for n in (1, 2):
        done = subprocess.run(_cmd(small_isbi, tmp_path / f"n{n}", n, *extra), env=_env(), capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
    one, two = _final(tmp_path / "n1", 4), _final(tmp_path / "n2", 4)
    for name, value in one["model"].items():
        torch.testing.assert_close(two["model"][name], value, rtol=1e-4, atol=1e-6)
    assert torch.equal(one["rng"]["sampler"], two["rng"]["sampler"])


def test_checkpoint_from_two_processes_resumes_on_one(small_isbi, tmp_path):
    extra = ["train.steps=4", "train.checkpoint_every=2"]
    out = tmp_path / "two"
    done = subprocess.run(_cmd(small_isbi, out, 2, *extra), env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    (out / "checkpoints" / "step_000004.pt").unlink()
    done = subprocess.run(_cmd(small_isbi, out, 1, *extra, "--resume"), env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    reference = tmp_path / "one"
    subprocess.run(_cmd(small_isbi, reference, 1, *extra), env=_env(), check=True, capture_output=True, timeout=300)
    for name, value in _final(reference, 4)["model"].items():
        torch.testing.assert_close(_final(out, 4)["model"][name], value, rtol=1e-4, atol=1e-6)


def _children(pid):
    found = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    return [int(p) for p in found]


def _wait_for_checkpoint(out, proc, timeout=120):
    deadline = time.time() + timeout
    while not list_checkpoints(out / "checkpoints"):
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.2)


@pytest.mark.parametrize("restarts", [0, 1])
def test_a_killed_rank_ends_or_restarts_the_job_in_bounded_time(small_isbi, tmp_path, restarts):
    out = tmp_path / f"restarts{restarts}"
    proc = subprocess.Popen(_cmd(small_isbi, out, 2, "train.steps=400", "train.checkpoint_every=5",
                                 torchrun_args=[f"--max-restarts={restarts}"]),
                            env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for_checkpoint(out, proc)
    workers = _children(proc.pid)
    assert len(workers) == 2
    os.kill(workers[1], signal.SIGKILL)
    start = time.time()
    stdout, err = proc.communicate(timeout=300)
    if restarts == 0:
        assert proc.returncode != 0
        assert time.time() - start < 120
    else:
        assert proc.returncode == 0, err[-3000:]
        assert "resumed from" in stdout  # the restarted workers continued from the last checkpoint
        assert list_checkpoints(out / "checkpoints")[-1][0] == 400
    for _, path in list_checkpoints(out / "checkpoints"):
        load_state(path)  # the last good checkpoints are intact
