"""Shared fixtures: paths to the ISBI data beside the checkout and small copies of it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

ISBI = Path(__file__).resolve().parents[2] / "shared" / "data" / "isbi2012"
ISBI_SCORING = ISBI.parent / "isbi-scoring"


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist (`-n N`), each worker process computes on its share of the cores, and
    so do the commands its tests start (they inherit ``OMP_NUM_THREADS``): N workers each with
    every core's worth of PyTorch threads oversubscribe the machine, and OpenMP's threads then
    spin waiting for cores the other workers hold (on 2 cores, `-n 2`: 13 % more CPU time for the
    same suite, docs/speed.md). A thread count given in the environment is kept; tests that ask
    for threads (``train.threads``, blockwise ``--workers``) still get what they ask for."""
    import os

    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers < 2 or "OMP_NUM_THREADS" in os.environ:
        return
    from emunet.device import core_share

    share = core_share(workers)
    os.environ["OMP_NUM_THREADS"] = str(share)
    import torch

    torch.set_num_threads(share)


@pytest.fixture(scope="session")
def isbi_dir() -> Path:
    if not (ISBI / "train-volume.tif").exists():
        pytest.fail(f"ISBI 2012 data not found at {ISBI}; the tests read it from ../shared/data/isbi2012")
    return ISBI


@pytest.fixture(scope="session")
def scoring_dir() -> Path:
    if not (ISBI_SCORING / "expected.json").exists():
        pytest.fail(f"ISBI scoring cases not found at {ISBI_SCORING}; the tests read them from ../shared/data/isbi-scoring")
    return ISBI_SCORING


@pytest.fixture(scope="session")
def small_isbi(isbi_dir, tmp_path_factory) -> dict[str, Path]:
    """The first 10 ISBI slices cropped to 256x256 and 2 test slices, as TIFF stacks in a temp folder."""
    import tifffile

    out = tmp_path_factory.mktemp("isbi_small")
    images = tifffile.imread(isbi_dir / "train-volume.tif")[:10, :256, :256]
    labels = tifffile.imread(isbi_dir / "train-labels.tif")[:10, :256, :256]
    test = tifffile.imread(isbi_dir / "test-volume.tif")[:2, :200, :300]
    paths = {"images": out / "train-volume.tif", "labels": out / "train-labels.tif", "test": out / "test-volume.tif"}
    tifffile.imwrite(paths["images"], images)
    tifffile.imwrite(paths["labels"], labels)
    tifffile.imwrite(paths["test"], test)
    return paths


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture(scope="session")
def tiny_run(small_isbi, tmp_path_factory) -> Path:
    """One tiny membrane model trained once per test session by ``unet run`` with the CPU preset's
    settings (4 steps, validated at steps 2 and 4, the test slices predicted and segmented), for
    the tests that only read a trained run. A test that writes into a run copies it first."""
    from emunet.cli import main
    from test_train import CONFIGS, TINY

    out = tmp_path_factory.mktemp("tiny_run") / "run"
    args = [f"data.images={small_isbi['images']}", f"data.labels={small_isbi['labels']}",
            f"data.test_images={small_isbi['test']}", *TINY, "train.steps=4", "train.val_every=2",
            "predict.tta=false"]  # the preset's test-time turns: test_train's own test (8x every later prediction)
    assert main(["run", "-c", str(CONFIGS / "isbi-cpu.yaml"), "--out", str(out), "-q", *args]) == 0
    return out
