"""The run folder: cv continues an unfinished cross-validation, a full disk stops training at
the first failed write (naming the file, keeping the last good checkpoint), a run's saved paths
work from any folder, and refusals leave nothing behind."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from emunet.cli import main
from test_train import TINY


def _data_args(small_isbi) -> list[str]:
    return [f"data.images={small_isbi['images']}", f"data.labels={small_isbi['labels']}", "data.test_images=null"]


@pytest.mark.slow
def test_cv_resume_continues_the_unfinished_fold_and_keeps_the_finished_ones(small_isbi, tmp_path, capsys):
    out = tmp_path / "cv"
    args = [*_data_args(small_isbi), *TINY, "train.steps=4", "train.val_every=2", "train.checkpoint_every=2",
            "train.keep=5"]
    assert main(["cv", "--folds", "0,1", "--out", str(out), "-q", *args]) == 0
    whole = json.loads((out / "cv.json").read_text())
    fold1 = json.loads((out / "fold1" / "eval.json").read_text())
    # fold 1 stopped after step 2: its later files gone, as a killed run leaves them
    for name in ("eval.json", "best.safetensors", "last.safetensors", "checkpoints/step_000004.pt"):
        (out / "fold1" / name).unlink()
    (out / "cv.json").unlink()
    fold0_weights = (out / "fold0" / "best.safetensors").read_bytes()
    fold0_mtime = (out / "fold0" / "best.safetensors").stat().st_mtime_ns
    capsys.readouterr()
    assert main(["cv", "--folds", "0,1", "--out", str(out), *args]) == 2  # without --resume: refused, as before
    assert "--resume" in capsys.readouterr().err
    assert main(["cv", "--folds", "0,1", "--out", str(out), "--resume", "-q"]) == 0  # settings from the folds' config.yaml
    assert (out / "fold0" / "best.safetensors").read_bytes() == fold0_weights
    assert (out / "fold0" / "best.safetensors").stat().st_mtime_ns == fold0_mtime
    resumed = json.loads((out / "fold1" / "eval.json").read_text())
    assert resumed["mean"] == fold1["mean"] and resumed["step"] == fold1["step"]
    assert json.loads((out / "cv.json").read_text())["mean"] == whole["mean"]
    assert main(["cv", "--folds", "0,1", "--out", str(out), "--resume", "--overwrite", "-q"]) == 2
    assert "give one" in capsys.readouterr().err


def _can_mount_tmpfs(folder: Path) -> bool:
    if not shutil.which("unshare"):
        return False
    probe = subprocess.run(["unshare", "-r", "-m", "sh", "-c", f"mount -t tmpfs -o size=64k none {folder}"],
                           capture_output=True)
    return probe.returncode == 0


@pytest.mark.slow
def test_a_full_disk_stops_training_at_the_first_failed_write_and_keeps_the_last_checkpoint(small_isbi, tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    if not _can_mount_tmpfs(disk):
        pytest.skip("needs unshare and a tmpfs mount in a user namespace to make a small disk")
    command = [sys.executable, "-m", "emunet", "train", "-q", "--out", str(disk / "run"), *_data_args(small_isbi), *TINY,
               "model.width=8", "train.steps=40", "train.val_every=0", "train.checkpoint_every=5", "train.keep=10"]
    script = f"mount -t tmpfs -o size=900k none {disk} && {' '.join(command)}; echo rc=$?; ls {disk / 'run' / 'checkpoints'}"
    done = subprocess.run(["unshare", "-r", "-m", "sh", "-c", script], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    lines = done.stdout.split()
    assert "rc=2" in lines, done.stdout + done.stderr
    kept = [name for name in lines if name.startswith("step_")]
    error = done.stderr.strip().splitlines()[-1]
    assert error.startswith(f"unet train: error: {disk / 'run' / 'checkpoints'}/step_") and "No space left on device" in error
    assert "Traceback" not in done.stderr
    failed = int(error.split("step_")[1].split(".pt")[0])
    assert kept and failed < 40 and f"step_{failed - 5:06d}.pt" in kept  # it stopped at once; the one before is kept


def test_a_runs_saved_paths_work_from_any_folder(small_isbi, tmp_path, monkeypatch, capsys):
    project = tmp_path / "project"
    (project / "data").mkdir(parents=True)
    for key in ("images", "labels"):
        shutil.copy(small_isbi[key], project / "data" / Path(small_isbi[key]).name)
    monkeypatch.chdir(project)
    args = ["data.images=data/train-volume.tif", "data.labels=data/train-labels.tif", "data.test_images=null", *TINY,
            "train.steps=2", "train.val_every=2", "train.checkpoint_every=1"]
    assert main(["train", "--out", "runs/a", "-q", *args]) == 0
    monkeypatch.chdir(tmp_path)  # elsewhere: the run's relative paths no longer lead anywhere from here
    assert main(["evaluate", str(project / "runs" / "a" / "best.safetensors"), "--precision", "fp32", "-q"]) == 0
    assert main(["train", "--out", str(project / "runs" / "a"), "--resume", "train.steps=3"]) == 0
    assert "resumed from" in capsys.readouterr().out
    saved = (project / "runs" / "a" / "config.yaml").read_text()
    assert f"images: {project / 'data' / 'train-volume.tif'}" in saved


def test_a_refused_start_leaves_no_folder(small_isbi, tmp_path, capsys):
    out = tmp_path / "new" / "run"
    assert main(["train", "--out", str(out), "-q", "data.images=" + str(tmp_path / "missing.tif"),
                 f"data.labels={small_isbi['labels']}", *TINY, "train.steps=2"]) == 2
    assert "missing.tif" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()


def test_the_last_validated_step_is_kept_unless_told_otherwise(small_isbi, tmp_path, capsys):
    import json as _json

    from emunet.model.checkpoint import load

    out = tmp_path / "last"
    assert main(["train", "--out", str(out), "-q", *_data_args(small_isbi), *TINY, "train.steps=4", "train.val_every=1"]) == 0
    meta = load(out / "best.safetensors").meta
    assert meta["step"] == 4
    steps = [_json.loads(line)["step"] for line in (out / "validation.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]
    assert "(step 4: the last step; the scored slices chose nothing)" in capsys.readouterr().out


def test_a_choice_by_the_scored_slices_is_labelled_optimistic(small_isbi, tmp_path, capsys):
    import json as _json

    out = tmp_path / "chose"
    assert main(["run", "--out", str(out), "-q", *_data_args(small_isbi), *TINY, "train.steps=2", "train.val_every=1",
                 "train.select_by=v_rand", "data.test_images=null"]) == 0
    said = capsys.readouterr().out
    record = _json.loads((out / "eval.json").read_text())
    assert record["chosen_by"].startswith("best v_rand of the validations on the scored slices themselves, so optimistic")
    assert record["chosen_by"] in said and record["chosen_by"] in (out / "report.html").read_text()


def test_inner_validation_chooses_the_model_and_the_fold_scores_it_once(small_isbi, tmp_path):
    import json as _json

    from emunet.train.sampling import fold_split

    out = tmp_path / "inner"
    assert main(["run", "--out", str(out), "-q", *_data_args(small_isbi), *TINY, "train.steps=4", "train.val_every=2",
                 "data.inner_val=2", "train.select_by=lab_dice"]) == 0
    train_idx, fold_idx = fold_split(10, 1)
    names = lambda idx: [f"train-volume_{i:03d}" for i in idx]  # noqa: E731
    chose = [_json.loads(line) for line in (out / "validation.jsonl").read_text().splitlines()]
    assert all([s["slice"] for s in v["slices"]] == names(train_idx[-2:]) for v in chose)  # inner slices choose
    scored = _json.loads((out / "eval.json").read_text())
    assert [s["slice"] for s in scored["slices"]] == names(fold_idx)  # the fold's own slices score, once
    assert scored["chosen_by"] == ("best lab_dice of the validations on 2 training slices set aside (data.inner_val); "
                                   "the scored slices chose nothing")
    assert main(["train", "--out", str(tmp_path / "bad"), "-q", *_data_args(small_isbi), *TINY, "data.inner_val=8"]) == 2
