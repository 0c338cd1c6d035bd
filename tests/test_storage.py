"""Data and runs in object storage, against a real S3 server (SeaweedFS) on loopback."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from emunet.cli import main

from s3_server import ACCESS_KEY, SECRET_KEY, S3Server
from test_train import TINY


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = S3Server(tmp_path_factory.mktemp("s3"))
    s.start()
    yield s
    s.stop(grace=2.0)


@pytest.fixture
def store(server, monkeypatch, tmp_path):
    """The server's environment for this test, a fresh bucket, and an s3fs handle to check it."""
    import s3fs

    for key, value in server.environment().items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("EMUNET_CACHE", str(tmp_path / "cache"))
    fs = s3fs.S3FileSystem(key=ACCESS_KEY, secret=SECRET_KEY, client_kwargs={"endpoint_url": server.endpoint},
                           skip_instance_cache=True)
    bucket = f"lab-{tmp_path.name.replace('_', '-').lower()[-40:]}"
    fs.mkdir(bucket)
    return fs, bucket


def _upload_data(fs, bucket, small_isbi):
    for key, name in (("images", "train-volume.tif"), ("labels", "train-labels.tif"), ("test", "test-volume.tif")):
        fs.put_file(str(small_isbi[key]), f"{bucket}/data/{name}")
    return [f"data.images=s3://{bucket}/data/train-volume.tif", f"data.labels=s3://{bucket}/data/train-labels.tif",
            f"data.test_images=s3://{bucket}/data/test-volume.tif"]


def _weights(path):
    from safetensors.torch import load_file

    return load_file(str(path))


@pytest.mark.slow
def test_the_lab_layout_on_a_store_trains_evaluates_and_predicts(store, small_isbi, tmp_path, capsys):
    fs, bucket = store
    data = _upload_data(fs, bucket, small_isbi)
    out = f"s3://{bucket}/output"
    assert data  # the lab's layout: --data_url holds the three stacks, --train_url takes every output
    assert main(["run", "--data_url", f"s3://{bucket}/data/", "--train_url", out, "-q", *TINY, "train.steps=4",
                 "train.val_every=2", "train.keep=1"]) == 0
    listed = sorted(p.split("/output/", 1)[1] for p in fs.find(f"{bucket}/output"))
    for name in ("config.yaml", "best.safetensors", "last.safetensors", "metrics.csv", "validation.jsonl", "eval.json",
                 "report.html", "test-probabilities.tif", "checkpoints/step_000004.pt"):
        assert name in listed, (name, listed)
    assert any(p.startswith("tensorboard/") for p in listed) and any(p.startswith("test-overlays/") for p in listed)
    # keep=1 pruned the step-2 checkpoint on the store too, unless it is the best
    best_step = json.loads(fs.cat_file(f"{bucket}/output/eval.json"))["step"]
    assert {p for p in listed if p.startswith("checkpoints/")} == {f"checkpoints/step_{s:06d}.pt" for s in {4, best_step}}
    config = fs.cat_file(f"{bucket}/output/config.yaml").decode()
    assert f"out_dir: {out}" in config
    for path in fs.find(f"{bucket}/output"):  # credentials are never written anywhere
        assert SECRET_KEY.encode() not in fs.cat_file(path) and ACCESS_KEY.encode() not in fs.cat_file(path)

    # byte for byte what a local run of the same settings writes
    local = tmp_path / "local"
    assert main(["run", "--out", str(local), "-q", f"data.images={small_isbi['images']}", f"data.labels={small_isbi['labels']}",
                 f"data.test_images={small_isbi['test']}", *TINY, "train.steps=4", "train.val_every=2", "train.keep=1"]) == 0
    fs.get_file(f"{bucket}/output/best.safetensors", str(tmp_path / "best.safetensors"))
    remote, here = _weights(tmp_path / "best.safetensors"), _weights(local / "best.safetensors")
    assert remote.keys() == here.keys() and all(torch.equal(remote[k], here[k]) for k in here)
    assert fs.cat_file(f"{bucket}/output/validation.jsonl") == (local / "validation.jsonl").read_bytes()

    # evaluate and predict from the store, writing to it
    assert main(["evaluate", f"{out}/best.safetensors", "-q", "--precision", "fp32"]) == 0
    scored = json.loads(fs.cat_file(f"{bucket}/output/eval.json"))  # beside the checkpoint, as for a local one
    assert scored["mean"] == json.loads((local / "eval.json").read_text())["mean"]
    assert main(["predict", f"{out}/best.safetensors", f"s3://{bucket}/data/test-volume.tif", "-o",
                 f"{out}/predicted.tif", "--masks", f"{out}/masks", "-q", "--precision", "fp32"]) == 0
    assert f"wrote {out}/predicted.tif" in capsys.readouterr().out
    fs.get_file(f"{bucket}/output/predicted.tif", str(tmp_path / "predicted.tif"))
    assert np.array_equal(tifffile.imread(tmp_path / "predicted.tif"), tifffile.imread(local / "test-probabilities.tif"))
    assert len(fs.ls(f"{bucket}/output/masks")) == 2


@pytest.mark.slow
def test_a_folder_on_a_store_is_read_as_a_folder_and_a_run_resumes_from_the_store(store, small_isbi, tmp_path):
    fs, bucket = store
    images = tifffile.imread(small_isbi["images"])
    labels = tifffile.imread(small_isbi["labels"])
    for i in range(len(images)):
        fs.pipe_file(f"{bucket}/slices/images/s{i:02d}.tif", _tiff_bytes(images[i]))
        fs.pipe_file(f"{bucket}/slices/labels/s{i:02d}.tif", _tiff_bytes(labels[i]))
    data = [f"data.images=s3://{bucket}/slices/images/", f"data.labels=s3://{bucket}/slices/labels/"]
    out = f"s3://{bucket}/run"
    common = [*data, *TINY, "train.val_every=2"]
    assert main(["train", "--out", out, "-q", *common, "train.steps=4"]) == 0
    assert main(["train", "--out", out, "-q", *common, "train.steps=4"]) == 2  # a run is there: refused
    assert main(["train", "--resume", "--out", out, "-q", "train.steps=6"]) == 0  # its config.yaml read from the store
    assert main(["train", "--resume-from", f"{out}/checkpoints/step_000004.pt", "--out", f"s3://{bucket}/again", "-q",
                 *common, "train.steps=6"]) == 0
    assert _same_weights(fs, f"{bucket}/again/last.safetensors", f"{bucket}/run/last.safetensors", tmp_path)
    metrics = fs.cat_file(f"{bucket}/run/metrics.csv").decode().splitlines()
    assert [line.split(",")[0] for line in metrics[1:]][-1] == "6"
    whole = tmp_path / "whole"
    local_data = [f"data.images={small_isbi['images']}", f"data.labels={small_isbi['labels']}"]
    assert main(["train", "--out", str(whole), "-q", *local_data, *TINY, "train.val_every=2", "train.steps=6"]) == 0
    fs.get_file(f"{bucket}/run/last.safetensors", str(tmp_path / "last.safetensors"))
    a, b = _weights(tmp_path / "last.safetensors"), _weights(whole / "last.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in b)

    # resumed again with keep=1: the checkpoints written before the resume are pruned on the store too
    assert main(["train", "--resume", "--out", out, "-q", "train.steps=8", "train.keep=1"]) == 0
    fs.get_file(f"{bucket}/run/checkpoints/step_000008.pt", str(tmp_path / "8.pt"))
    best_step = torch.load(tmp_path / "8.pt", weights_only=True)["best"]["step"]
    kept = {p.rsplit("/", 1)[1] for p in fs.find(f"{bucket}/run/checkpoints")}
    assert kept == {f"step_{s:06d}.pt" for s in (8, best_step)}


def _same_weights(fs, a: str, b: str, tmp_path) -> bool:
    fs.get_file(a, str(tmp_path / "a.safetensors"))
    fs.get_file(b, str(tmp_path / "b.safetensors"))
    wa, wb = _weights(tmp_path / "a.safetensors"), _weights(tmp_path / "b.safetensors")
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_score_reads_maps_and_labels_from_a_store_and_writes_its_json_there(store, scoring_dir, capsys):
    fs, bucket = store
    fs.put_file(str(scoring_dir / "fold1_main_prob.tif"), f"{bucket}/maps/prob.tif")
    fs.put_file(str(scoring_dir.parent / "isbi2012" / "train-labels.tif"), f"{bucket}/maps/labels.tif")
    assert main(["score", f"s3://{bucket}/maps/prob.tif", f"s3://{bucket}/maps/labels.tif", "--fold", "1", "--json",
                 f"s3://{bucket}/maps/scores.json"]) == 0
    scored = json.loads(fs.cat_file(f"{bucket}/maps/scores.json"))
    want = json.loads((scoring_dir / "expected.json").read_text())["fold1_main"]
    assert scored["v_rand"] == pytest.approx(want["max_v_rand"], abs=1e-12) and scored["maps"] == f"s3://{bucket}/maps/prob.tif"


def _tiff_bytes(array) -> bytes:
    import io

    buf = io.BytesIO()
    tifffile.imwrite(buf, array)
    return buf.getvalue()


def test_errors_name_the_url_and_what_to_check(store, small_isbi, server, monkeypatch, capsys):
    fs, bucket = store
    data = _upload_data(fs, bucket, small_isbi)
    args = ["train", "-q", *TINY, "train.steps=2"]

    assert main([*args, *data, "--out", "s3://no-such-bucket-here/run"]) == 2
    assert "s3://no-such-bucket-here/run: no such bucket" in capsys.readouterr().err
    assert main([*args, f"data.images=s3://{bucket}/data/missing.tif", *data[1:], "--out", f"s3://{bucket}/r1"]) == 2
    assert f"s3://{bucket}/data/missing.tif: no such object" in capsys.readouterr().err
    assert main(["predict", f"s3://{bucket}/nothing/best.safetensors", str(small_isbi["test"]), "-o", "x.tif"]) == 2
    assert f"s3://{bucket}/nothing/best.safetensors: no such object" in capsys.readouterr().err
    assert main(["predict", "gs://bucket/best.safetensors", str(small_isbi["test"]), "-o", "x.tif"]) == 2
    assert "gs://bucket/best.safetensors: gs:// needs gcsfs: pip install gcsfs" in capsys.readouterr().err
    assert main(["predict", "isbi-membranes", f"s3://{bucket}/data/train-volume.tif", "-o", "v.ome.zarr", "-q"]) == 2
    assert "a TIFF volume on a store cannot be read block by block; store it as Zarr" in capsys.readouterr().err
    assert main(["predict", "isbi-membranes", "s3://no-such-bucket-here/v.zarr", "-o", "v.ome.zarr", "-q"]) == 2
    assert "s3://no-such-bucket-here/v.zarr: no such bucket" in capsys.readouterr().err
    assert not (Path.cwd() / "v.ome.zarr").exists()

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    assert main([*args, *data, "--out", f"s3://{bucket}/r2"]) == 2
    err = capsys.readouterr().err
    assert f"s3://{bucket}/r2: access denied" in err and "AWS_SECRET_ACCESS_KEY" in err and "not-the-secret" not in err

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens there
    start = time.monotonic()
    assert main([*args, f"data.images={small_isbi['images']}", f"data.labels={small_isbi['labels']}",
                 "--out", f"s3://{bucket}/r3"]) == 2
    err = capsys.readouterr().err
    assert f"s3://{bucket}/r3: cannot reach the store at http://127.0.0.1:9" in err and len(err.splitlines()) == 1
    assert time.monotonic() - start < 60
    assert not (Path.cwd() / "x.tif").exists()


@pytest.mark.slow
def test_a_store_that_goes_away_during_training_loses_nothing(store, server, small_isbi, tmp_path):
    fs, bucket = store
    data = _upload_data(fs, bucket, small_isbi)
    # one thread: as fast for this tiny net alone, and it does not fight the suite's other worker for the cores
    settings = [*data, *TINY, "train.steps=600", "train.val_every=50", "train.keep=20", "train.threads=1", "storage.retry_s=120"]
    out = f"s3://{bucket}/flaky"
    env = {**__import__("os").environ}
    run = subprocess.Popen([sys.executable, "-m", "emunet", "train", "--out", out, "-q", *settings],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    deadline = time.monotonic() + 120
    while not fs.exists(f"{bucket}/flaky/checkpoints/step_000050.pt"):  # training and uploading: now pull the plug
        assert run.poll() is None and time.monotonic() < deadline, run.communicate()[0]
        time.sleep(0.2)
        fs.invalidate_cache()
    server.kill()
    seen = []
    for line in run.stdout:  # until the uploader says the store is away (not a guess at how long it takes)
        seen.append(line)
        if "upload failed" in line:
            break
    assert run.poll() is None, "".join(seen)  # training goes on without the store
    server.start()
    rest, _ = run.communicate(timeout=300)
    output = "".join(seen) + rest
    assert run.returncode == 0, output
    assert "upload failed" in output and "training goes on" in output

    whole = tmp_path / "whole"
    local = [f"data.images={small_isbi['images']}", f"data.labels={small_isbi['labels']}"]
    # in a fresh process as the run above: earlier tests' thread settings in this one would change the sums
    subprocess.run([sys.executable, "-m", "emunet", "train", "--out", str(whole), "-q", *local, *TINY, "train.steps=600",
                    "train.val_every=50", "train.keep=20", "train.threads=1"], check=True, env=env)
    fs.invalidate_cache()
    listed = sorted(p.rsplit("/", 1)[1] for p in fs.find(f"{bucket}/flaky/checkpoints"))
    assert listed == sorted(p.name for p in (whole / "checkpoints").iterdir())
    for name in ("last.safetensors", "best.safetensors"):
        fs.get_file(f"{bucket}/flaky/{name}", str(tmp_path / name))
        a, b = _weights(tmp_path / name), _weights(whole / name)
        assert all(torch.equal(a[k], b[k]) for k in b), name
    assert fs.cat_file(f"{bucket}/flaky/validation.jsonl") == (whole / "validation.jsonl").read_bytes()


@pytest.mark.slow
def test_cross_validation_writes_its_folds_and_report_to_a_store(store, small_isbi):
    fs, bucket = store
    data = _upload_data(fs, bucket, small_isbi)
    assert main(["cv", "--folds", "0,1", "--out", f"s3://{bucket}/cv", "-q", *data, *TINY, "train.steps=2",
                 "train.val_every=2"]) == 0
    listed = {p.split("/cv/", 1)[1] for p in fs.find(f"{bucket}/cv")}
    for name in ("cv.json", "report.html", "test-probabilities.tif", "fold0/best.safetensors", "fold1/eval.json",
                 "fold1/config.yaml"):
        assert name in listed, (name, sorted(listed))
    summary = json.loads(fs.cat_file(f"{bucket}/cv/cv.json"))
    assert summary["folds"] == [0, 1]
    fold = json.loads(fs.cat_file(f"{bucket}/cv/fold1/eval.json"))
    assert fold["checkpoint"] == f"s3://{bucket}/cv/fold1/best.safetensors"  # named as on the store


def test_an_hdf5_output_on_a_store_keeps_the_files_other_datasets(store, tiny_run, small_isbi, tmp_path):
    import h5py

    fs, bucket = store
    with h5py.File(tmp_path / "mine.h5", "w") as f:
        f["keep/me"] = np.arange(3)
    fs.put_file(str(tmp_path / "mine.h5"), f"{bucket}/out/mine.h5")
    assert main(["predict", str(tiny_run / "best.safetensors"), str(small_isbi["test"]), "-o",
                 f"s3://{bucket}/out/mine.h5:/prob", "--segment", "-q", "--precision", "fp32"]) == 0
    fs.get_file(f"{bucket}/out/mine.h5", str(tmp_path / "back.h5"))
    with h5py.File(tmp_path / "back.h5", "r") as f:
        assert set(f) == {"keep", "prob", "cells"} and np.array_equal(f["keep/me"][...], np.arange(3))
        assert f["prob"].shape == (2, 200, 300) and f["cells"].dtype == np.uint32


def _markers(fs, prefix: str) -> int:
    try:
        return len(fs.ls(prefix, refresh=True))
    except FileNotFoundError:
        return 0


@pytest.mark.slow
def test_a_volume_on_a_store_is_segmented_into_the_store_by_a_cluster_that_loses_a_worker_and_its_client(
        store, isbi_dir, tmp_path):
    """A Zarr volume on the store, read chunk by chunk; map and cells written back as OME-Zarr by
    two worker processes; a worker killed, then the client killed and run again: the output is
    the one a local, undisturbed run writes. Two sections 256 px wide: 16 blocks, each with its
    neighbours on two sides at least, and half the network's work of whole sections."""
    import os
    import signal

    import zarr
    from distributed import Client, LocalCluster

    fs, bucket = store
    stack = tifffile.imread(isbi_dir / "train-volume.tif")[:2, :, :256]
    local_in = tmp_path / "two.zarr"
    zarr.open_array(str(local_in), mode="w", shape=stack.shape, chunks=(1, 128, 128), dtype=stack.dtype,
                    zarr_format=2)[...] = stack
    fs.put(str(local_in), f"{bucket}/in/two.zarr", recursive=True)
    common = ["--segment", "--block", "128", "--chunk", "128", "--close-gaps", "0", "--precision", "fp32", "-q"]
    url = f"s3://{bucket}/out/cells.ome.zarr"
    reference = tmp_path / "local.ome.zarr"
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        predict = [sys.executable, "-m", "emunet", "predict", "isbi-membranes", "--scheduler", cluster.scheduler_address]
        # undisturbed, from and to local files, on the same workers (the same threads: the same sums)
        subprocess.run([*predict, str(local_in), "-o", str(reference), *common], check=True)
        command = [*predict, f"s3://{bucket}/in/two.zarr", "-o", url, *common]
        run = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
        markers = f"{bucket}/out/.cells.ome.zarr.blocks"
        deadline = time.monotonic() + 300
        killed_worker = False
        while _markers(fs, markers) < 8:  # of 16 blocks' markers (and the cells' scratch folder)
            assert run.poll() is None, run.stderr.read()
            assert time.monotonic() < deadline
            if not killed_worker and _markers(fs, markers) >= 3:
                os.kill(next(iter(client.run(os.getpid).values())), signal.SIGKILL)  # its nanny starts another
                killed_worker = True
            time.sleep(0.1)
        run.kill()  # the client too, anywhere in a block
        run.wait()
        again = subprocess.run(command, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    # every connection to the store closed in order, in the loop that opened it
    assert "Unclosed" not in again.stderr and "Traceback" not in again.stderr, again.stderr
    finished = int(re.search(r"\((\d+) finished before\)", again.stdout).group(1))
    assert 0 < finished < 16
    fs.get(f"{bucket}/out/cells.ome.zarr", str(tmp_path / "fetched.ome.zarr"), recursive=True)
    for array in ("0", "labels/cells/0"):
        np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "fetched.ome.zarr" / array), mode="r")[...],
                                      zarr.open_array(str(reference / array), mode="r")[...], err_msg=array)
    attrs = json.loads(fs.cat_file(f"{bucket}/out/cells.ome.zarr/.zattrs"))
    assert attrs["emunet"]["made_by"]["input"]["path"] == f"s3://{bucket}/in/two.zarr"
    assert attrs["multiscales"][0]["axes"][0]["name"] == "z"


def test_a_place_on_the_store_writes_lists_and_removes_as_a_folder_does(store):
    """The same operations as tests/test_places.py's on a disk, on the server; a removed output
    is free again although the server keeps its empty folders."""
    from emunet.io.places import Place

    fs, bucket = store
    out = Place(f"s3://{bucket}/run/out.ome.zarr")
    assert out.is_free() and out.names() == set() and not (out / ".zattrs").is_file()
    (out / "0" / "0.0.0").write_bytes(b"chunk")
    (out / ".zattrs").write_bytes(b"{}")
    assert not out.is_free() and out.names() == {"0", ".zattrs"} and (out / "0").names() == {"0.0.0"}
    assert (out / "0" / "0.0.0").read_bytes() == b"chunk" and fs.cat_file(f"{bucket}/run/out.ome.zarr/.zattrs") == b"{}"
    out.remove()
    assert out.is_free() and not (out / ".zattrs").is_file()
    out.remove()
