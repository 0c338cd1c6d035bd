"""Training end to end on a few real ISBI slices, a few steps: exact resume and the CLI."""

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from emunet.model.checkpoint import list_checkpoints
from emunet.cli import main
from emunet.config import load_config
from emunet.train.loop import train

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
TINY = ["model.preset=unet_cpu", "model.width=4", "model.depth=2", "train.tile=32", "train.batch_size=2",
        "train.lr=1e-3", "train.log_every=1", "predict.tile=64", "train.precision=fp32"]


def _cfg(paths, out, *extra):
    return load_config(None, [f"data.images={paths['images']}", f"data.labels={paths['labels']}",
                              f"data.test_images={paths['test']}", f"out_dir={out}", *TINY, *extra])


def _losses(run_dir):
    with open(run_dir / "metrics.csv") as f:
        return {int(r["step"]): float(r["loss"]) for r in csv.DictReader(f) if r["loss"]}


@pytest.mark.parametrize("schedule,ema", [("constant", 0.0), ("cosine", 0.9)])
def test_resume_replays_an_uninterrupted_run_exactly(small_isbi, tmp_path, schedule, ema):
    extra = ["train.steps=6", "train.checkpoint_every=3", "train.val_every=0", f"train.schedule={schedule}",
             "model.dropout=0.2", "augment.elastic_std=5", f"train.ema={ema}"]
    whole = tmp_path / "whole"
    train(_cfg(small_isbi, whole, *extra), progress=False)

    resumed = tmp_path / "resumed"
    (resumed / "checkpoints").mkdir(parents=True)
    shutil.copy(whole / "checkpoints" / "step_000003.pt", resumed / "checkpoints")
    train(_cfg(small_isbi, resumed, *extra), resume=True, progress=False)

    a, b = _losses(whole), _losses(resumed)
    assert sorted(b) == [4, 5, 6]
    for step in (4, 5, 6):
        assert b[step] == a[step]
    final_a = torch.load(whole / "checkpoints" / "step_000006.pt", weights_only=True)["model"]
    final_b = torch.load(resumed / "checkpoints" / "step_000006.pt", weights_only=True)["model"]
    for name in final_a:
        torch.testing.assert_close(final_a[name], final_b[name], rtol=0, atol=0)
    from emunet.model.checkpoint import load

    weights_a = load(whole / "last.safetensors").network
    weights_b = load(resumed / "last.safetensors").network
    for (name, a), b in zip(weights_a.state_dict().items(), weights_b.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    if ema:  # the saved weights are the average, not the last step's
        assert not torch.equal(weights_a.state_dict()["outc.conv.weight"], final_a["outc.conv.weight"])


@pytest.mark.slow
def test_same_seed_same_run_and_loss_goes_down(small_isbi, tmp_path):
    extra = ["train.steps=25", "train.val_every=0"]
    train(_cfg(small_isbi, tmp_path / "a", *extra), progress=False)
    train(_cfg(small_isbi, tmp_path / "b", *extra), progress=False)
    a, b = _losses(tmp_path / "a"), _losses(tmp_path / "b")
    assert a == b
    assert np.mean([a[s] for s in range(21, 26)]) < np.mean([a[s] for s in range(1, 6)])


def test_keeps_newest_checkpoints_plus_best(small_isbi, tmp_path):
    out = tmp_path / "run"
    train(_cfg(small_isbi, out, "train.steps=6", "train.val_every=2", "train.keep=1"), progress=False)
    steps = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert "step_000006.pt" in steps and len(steps) <= 2
    assert (out / "best.safetensors").exists() and (out / "last.safetensors").exists()
    assert (out / "config.yaml").exists() and any((out / "tensorboard").iterdir())


def test_cli_run_evaluate_predict(tiny_run, small_isbi, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(tiny_run, out)  # evaluate writes beside the checkpoints
    report = json.loads((out / "eval.json").read_text())
    assert len(report["slices"]) == 2 and 0 < report["mean"]["lab_dice"] <= 1
    probs = tifffile.imread(out / "test-probabilities.tif")
    assert probs.shape == (2, 200, 300) and probs.dtype == np.float32
    assert 0 <= probs.min() and probs.max() <= 1
    assert len(list((out / "test-overlays").glob("*.png"))) == 2
    assert "v_rand" in report["mean"] and 0 <= report["challenge"]["v_rand_threshold"] <= 1
    page = (out / "report.html").read_text()
    assert page.count("<img") == 1 + 6 * 2 and "data:image/png;base64," in page  # curves; per slice 4 of the map, 2 of the cells
    cells = tifffile.imread(out / "test-cells.tif")
    assert cells.shape == (2, 200, 300) and cells.dtype == np.uint32

    assert main(["evaluate", str(out / "best.safetensors"), "--json", str(tmp_path / "e.json"), "--precision", "fp32"]) == 0
    assert "lab_dice" in capsys.readouterr().out
    scored = json.loads((tmp_path / "e.json").read_text())
    assert [r["slice"] for r in scored["slices"]] == [r["slice"] for r in report["slices"]]

    assert main(["evaluate", str(out / "checkpoints" / "step_000004.pt"), "--images", str(small_isbi["images"]),
                 "--labels", str(small_isbi["labels"]), "--json", str(tmp_path / "all.json")]) == 0
    assert len(json.loads((tmp_path / "all.json").read_text())["slices"]) == 10

    # two checkpoints: the mean of their probabilities, written beside the first by default
    assert main(["evaluate", str(out / "best.safetensors"), str(out / "checkpoints" / "step_000002.pt"), "--precision", "fp32"]) == 0
    ensemble = json.loads((out / "eval-ensemble.json").read_text())
    assert len(ensemble["checkpoint"]) == 2 and len(ensemble["slices"]) == 2
    assert "mean of 2 models" in capsys.readouterr().out

    pred = tmp_path / "pred.tif"
    assert main(["predict", str(out / "best.safetensors"), str(small_isbi["test"]), "-o", str(pred),
                 "--masks", str(tmp_path / "masks"), "--tile", "48", "--overlap", "0.5", "--close-gaps", "0.4"]) == 0
    assert tifffile.imread(pred).shape == (2, 200, 300)
    assert len(list((tmp_path / "masks").glob("*_mask.png"))) == 2
    pair = tmp_path / "pair.tif"
    assert main(["predict", str(out / "best.safetensors"), str(out / "last.safetensors"), str(small_isbi["test"]),
                 "-o", str(pair), "--tile", "48"]) == 0
    assert tifffile.imread(pair).shape == (2, 200, 300)


def test_cli_errors_are_one_line_and_name_the_problem(small_isbi, tmp_path, capsys):
    assert main(["train", "train.stepz=3"]) == 2
    assert "unknown setting 'train.stepz'" in capsys.readouterr().err
    assert main(["train", f"data.images={tmp_path / 'none.tif'}", f"out_dir={tmp_path / 'o'}"]) == 2
    err = capsys.readouterr().err
    assert "none.tif: path does not exist" in err and "Traceback" not in err
    assert main(["predict", str(tmp_path / "missing.safetensors"), str(small_isbi["test"]), "-o", str(tmp_path / "p.tif")]) == 2
    assert "missing.safetensors: checkpoint does not exist" in capsys.readouterr().err
    run = tmp_path / "tiny"
    assert main(["train", f"data.images={small_isbi['images']}", f"data.labels={small_isbi['labels']}", *TINY,
                 "train.steps=1", "train.val_every=0", f"out_dir={run}", "-q"]) == 0
    assert main(["predict", str(run / "last.safetensors"), str(small_isbi["test"]), "-o", str(tmp_path / "p.tif"),
                 "--close-gaps", "2"]) == 2
    err = capsys.readouterr().err
    assert "predict.close_gaps (--close-gaps)" in err and "Traceback" not in err and not (tmp_path / "p.tif").exists()


def test_cli_cv_writes_a_report_per_fold(small_isbi, tmp_path, capsys):
    out = tmp_path / "cv"
    args = [f"data.images={small_isbi['images']}", f"data.labels={small_isbi['labels']}", *TINY,
            "train.steps=2", "train.val_every=1", f"data.test_images={small_isbi['test']}"]
    assert main(["cv", "--folds", "0,3", "--out", str(out), "-q", *args]) == 0
    assert tifffile.imread(out / "test-probabilities.tif").shape == (2, 200, 300)  # the folds' ensemble
    assert len(list((out / "test-overlays").glob("*.png"))) == 2
    summary = json.loads((out / "cv.json").read_text())
    assert summary["folds"] == [0, 3] and len(summary["per_fold"]) == 2 and "v_rand" in summary["std"]
    assert (out / "fold0" / "best.safetensors").exists() and (out / "fold3" / "eval.json").exists()
    page = (out / "report.html").read_text()
    assert "<td>mean</td>" in page and page.count("<h3>fold") == 4
    assert main(["cv", "--folds", "x", "--out", str(out)]) == 2
    assert "--folds must be comma-separated" in capsys.readouterr().err


def test_every_logged_row_has_training_seconds(small_isbi, tmp_path):
    out = tmp_path / "run"
    train(_cfg(small_isbi, out, "train.steps=6", "train.val_every=3", "train.log_every=2"), progress=False)
    with open(out / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [2, 3, 4, 6]
    seconds = [float(r["train_s"]) for r in rows]
    assert seconds == sorted(seconds) and seconds[0] > 0
    assert rows[1]["val_lab_dice"] and not rows[1]["loss"]  # step 3: a validation between log steps


def test_training_seconds_count_every_step_and_leave_validation_out(small_isbi, tmp_path, monkeypatch):
    """On a clock the test moves itself (no sleeps, no windows around real time): four steps of
    0.05 s and a validation of 0.2 s between them give 0.2 s of training."""
    import emunet.train.runlog as runlog

    now = [100.0]
    monkeypatch.setattr(runlog.time, "perf_counter", lambda: now[0])
    log = runlog.RunLog(tmp_path, enabled=False)
    for step in range(1, 5):
        now[0] += 0.05  # a training step
        log.add_loss(1.0)
        if step % 2 == 0:
            row = log.log_training(step, 1.0, 1e-3, batch_size=2)
        if step == 2:
            log.pause()
            now[0] += 0.2  # a validation
        log.end_step()
        log.resume()
    assert row["train_s"] == pytest.approx(0.2)  # four steps of 0.05 s, the validation's 0.2 s left out
    assert row["images_per_s"] == pytest.approx(40.0)  # 2 steps of 2 images in 0.1 s


def test_skeleton_weight_trains_and_changes_the_loss(small_isbi, tmp_path):
    extra = ["train.steps=3", "train.val_every=0"]
    train(_cfg(small_isbi, tmp_path / "plain", *extra), progress=False)
    train(_cfg(small_isbi, tmp_path / "skel", *extra, "train.skeleton_weight=1.0"), progress=False)
    plain, skel = _losses(tmp_path / "plain"), _losses(tmp_path / "skel")
    assert skel[1] > plain[1]  # same first batch and weights, plus a positive recall term
    assert all(np.isfinite(v) for v in skel.values())


@pytest.mark.slow
def test_context_trains_a_2_5d_model_that_evaluate_and_predict_use(small_isbi, tmp_path, capsys):
    from emunet.model.checkpoint import load

    out = tmp_path / "ctx"
    train(_cfg(small_isbi, out, "train.steps=3", "train.val_every=0", "data.context=1"), progress=False)
    model = load(out / "last.safetensors").network
    assert model.cfg.in_channels == 3
    assert main(["evaluate", str(out / "last.safetensors"), "--precision", "fp32", "--tta"]) == 0
    assert len(json.loads((out / "eval.json").read_text())["slices"]) == 2
    pred = tmp_path / "pred.tif"
    assert main(["predict", str(out / "last.safetensors"), str(small_isbi["test"]), "-o", str(pred), "--tile", "48"]) == 0
    assert tifffile.imread(pred).shape == (2, 200, 300)
    for bad in ("-1", "9"):
        assert main(["train", f"data.context={bad}", f"out_dir={tmp_path / 'o'}"]) == 2
        assert "data.context must be 0..8" in capsys.readouterr().err
    from emunet.model.checkpoint import save_weights
    from emunet.model.unet import create_model

    odd = create_model("unet_cpu", width=4, depth=2, in_channels=2)
    save_weights(tmp_path / "two.safetensors", odd, odd.cfg, {})
    assert main(["predict", str(tmp_path / "two.safetensors"), str(small_isbi["test"]), "-o", str(tmp_path / "x.tif")]) == 2
    err = capsys.readouterr().err
    assert "two.safetensors: a model with 2 input channels" in err and "Traceback" not in err
    assert not (tmp_path / "x.tif").exists()


def test_validation_log_keeps_per_slice_scores_and_follows_a_resume(small_isbi, tmp_path):
    out = tmp_path / "run"
    extra = ["train.steps=4", "train.val_every=2"]
    train(_cfg(small_isbi, out, *extra), progress=False)
    log = [json.loads(line) for line in (out / "validation.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [2, 4]
    assert [len(r["slices"]) for r in log] == [2, 2] and {"slice", "v_rand", "lab_dice"} <= set(log[0]["slices"][0])
    with open(out / "metrics.csv") as f:
        logged = {int(r["step"]): float(r["val_v_rand"]) for r in csv.DictReader(f) if r["val_v_rand"]}
    assert logged == {r["step"]: r["mean"]["v_rand"] for r in log}
    # resuming from step 2 drops the later validation and scores it again, identically
    (out / "validation.jsonl").write_text((out / "validation.jsonl").read_text() + '{"step": 99, "mean": {}, "slices": []}\n')
    train(_cfg(small_isbi, out, *extra), resume=str(out / "checkpoints" / "step_000002.pt"), progress=False)
    again = [json.loads(line) for line in (out / "validation.jsonl").read_text().splitlines()]
    assert again == log


@pytest.mark.parametrize("precision", ["fp32", pytest.param("bf16", marks=pytest.mark.slow)])  # bf16 is emulated on most CPUs
def test_run_reads_the_training_data_once_and_reports_what_evaluate_gives(small_isbi, tmp_path, monkeypatch, capsys,
                                                                          precision):
    import emunet.io.data

    reads: list[str] = []
    real_read = emunet.io.data._read_file
    monkeypatch.setattr(emunet.io.data, "_read_file", lambda path, *rest: reads.append(str(path)) or real_read(path, *rest))
    out = tmp_path / "run"
    args = [f"data.images={small_isbi['images']}", f"data.labels={small_isbi['labels']}",
            f"data.test_images={small_isbi['test']}", *TINY, "train.steps=4", "train.val_every=2",
            f"train.precision={precision}"]
    assert main(["run", "--out", str(out), "-q", *args]) == 0
    assert reads.count(str(small_isbi["images"])) == 1 and reads.count(str(small_isbi["labels"])) == 1
    run_report = json.loads((out / "eval.json").read_text())
    # the run's figures are its best weights' validation, equal to scoring the saved weights anew
    assert main(["evaluate", str(out / "best.safetensors"), "--json", str(tmp_path / "e.json"), "--precision", precision,
                 "-q"]) == 0
    scored = json.loads((tmp_path / "e.json").read_text())
    assert scored["mean"] == run_report["mean"] and scored["challenge"] == run_report["challenge"]


@pytest.mark.slow
def test_ensemble_benchmark_gives_what_evaluate_gives(small_isbi, tmp_path, capsys, monkeypatch):
    import importlib.util
    import sys

    runs = []
    for seed in (1, 2):
        out = tmp_path / f"seed{seed}"
        train(_cfg(small_isbi, out, "train.steps=2", f"train.seed={seed}", "predict.smooth=1.0", "predict.close_gaps=0.5",
                   "train.precision=bf16"), progress=False)
        runs.append(str(out / "last.safetensors"))
    spec = importlib.util.spec_from_file_location("ensemble", Path(__file__).resolve().parents[1] / "benchmarks" / "ensemble.py")
    ensemble = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "ensemble", ensemble)
    spec.loader.exec_module(ensemble)
    groups, _ = ensemble.score_groups(runs, "bf16")
    assert [g.members for g in groups] == [(0,), (1,), (0, 1)]
    for group, checkpoints in zip(groups, [runs[:1], runs[1:], runs]):
        assert main(["evaluate", *checkpoints, "--json", str(tmp_path / "e.json"), "--precision", "bf16", "--device", "cpu",
                     "-q"]) == 0
        assert json.loads((tmp_path / "e.json").read_text())["mean"] == group.report.mean


def test_a_finished_run_folder_is_refused_unless_resumed_or_overwritten(small_isbi, tmp_path, capsys):
    out = tmp_path / "run"
    data = [f"data.images={small_isbi['images']}", f"data.labels={small_isbi['labels']}", *TINY, "train.val_every=0"]
    assert main(["train", "-q", "--out", str(out), *data, "train.steps=2"]) == 0
    before = (out / "metrics.csv").read_text()
    assert main(["train", "-q", "--out", str(out), *data, "train.steps=3"]) == 2
    assert "not empty" in capsys.readouterr().err and (out / "metrics.csv").read_text() == before
    # --resume without -c continues with the run's own settings; overrides still apply, not taken as a path
    assert main(["train", "-q", "--out", str(out), "--resume", "train.steps=4"]) == 0
    steps = [int(r["step"]) for r in csv.DictReader(open(out / "metrics.csv"))]
    assert steps == [1, 2, 3, 4]
    assert "width: 4" in (out / "config.yaml").read_text()
    # --overwrite starts afresh: no step of the old run survives
    (out / "notes.txt").write_text("mine")
    assert main(["train", "-q", "--out", str(out), *data, "train.steps=1", "--overwrite"]) == 0
    assert [int(r["step"]) for r in csv.DictReader(open(out / "metrics.csv"))] == [1]
    assert [step for step, _ in list_checkpoints(out / "checkpoints")] == [1]
    assert (out / "notes.txt").read_text() == "mine"


def test_a_failing_command_leaves_the_saved_config_alone(small_isbi, tmp_path, capsys):
    out = tmp_path / "run"
    data = [f"data.images={small_isbi['images']}", f"data.labels={small_isbi['labels']}", *TINY, "train.val_every=0"]
    assert main(["train", "-q", "--out", str(out), *data, "train.steps=2"]) == 0
    saved = (out / "config.yaml").read_text()
    assert main(["train", "-q", "--out", str(out), "--resume", f"data.images={tmp_path / 'missing.tif'}"]) == 2
    assert "missing.tif" in capsys.readouterr().err and (out / "config.yaml").read_text() == saved
    assert main(["train", "-q", "--out", str(tmp_path / "nothing"), "--resume"]) == 2
    assert "no run to resume" in capsys.readouterr().err


def test_predict_never_writes_over_its_input_and_checks_outputs_first(tiny_run, small_isbi, tmp_path, capsys):
    run = tiny_run
    image = tmp_path / "input.tif"
    shutil.copy(small_isbi["test"], image)
    original = image.read_bytes()
    assert main(["predict", str(run / "last.safetensors"), str(image), "-o", str(image), "-q"]) == 2
    assert "the output is the input" in capsys.readouterr().err and image.read_bytes() == original
    blocked = tmp_path / "file-not-folder"
    blocked.write_text("x")
    assert main(["predict", str(run / "last.safetensors"), str(image), "-o", str(blocked / "p.tif"), "-q"]) == 2
    assert "cannot write there" in capsys.readouterr().err


@pytest.mark.slow
def test_progress_in_a_log_is_plain_lines(small_isbi, tmp_path):
    import os
    import subprocess
    import sys

    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "emunet", "train", "--out", str(out), f"data.images={small_isbi['images']}",
           f"data.labels={small_isbi['labels']}", *TINY, "train.steps=3", "train.val_every=3"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert done.returncode == 0, done.stderr
    assert "\r" not in done.stderr and "\x1b[" not in done.stderr
    assert "train: 3/3 steps" in done.stderr and "step 3: val lab dice" in done.stdout


def test_probability_stacks_are_imagej_stacks_with_the_inputs_calibration(tiny_run, small_isbi, tmp_path, capsys):
    run = tiny_run
    image = tmp_path / "calibrated.tif"
    tifffile.imwrite(image, tifffile.imread(small_isbi["test"]), imagej=True, resolution=(250.0, 250.0),
                     metadata={"axes": "ZYX", "spacing": 0.05, "unit": "um"})
    out = tmp_path / "prob.tif"
    assert main(["predict", str(run / "last.safetensors"), str(image), "-o", str(out), "-q"]) == 0
    with tifffile.TiffFile(out) as tif:
        assert tif.series[0].axes == "ZYX" and tif.series[0].shape == (2, 200, 300)
        assert tif.pages[0].resolution == pytest.approx((250.0, 250.0))
        meta = tif.imagej_metadata
        assert meta["spacing"] == pytest.approx(0.05) and meta["unit"] == "um"
        assert meta["Labels"] == ["calibrated_000", "calibrated_001"]


def test_checkpoints_record_how_the_training_images_were_scaled(small_isbi, tmp_path, capsys):
    from emunet.infer.predict import load_models

    images16 = tmp_path / "twelve-bit.tif"
    tifffile.imwrite(images16, tifffile.imread(small_isbi["images"]).astype(np.uint16) * 16)  # 0..4080: 12-bit
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), f"data.images={images16}", f"data.labels={small_isbi['labels']}", *TINY,
                 "train.steps=1", "train.val_every=0"]) == 0
    assert "images: 12-bit (uint16), scaled from 0..4095 to 0..1" in capsys.readouterr().out
    loaded = load_models([out / "last.safetensors"], torch.device("cpu"))
    assert loaded.intensity.how == "12-bit" and loaded.intensity.high == 4095


def test_a_run_with_turns_validates_without_them_and_scores_its_weights_with_them(small_isbi, tmp_path, capsys):
    """predict.tta (the main job's preset): the validations along the way predict plainly, and the
    weights the run keeps are scored with the turns, as `unet evaluate --tta` scores them."""
    out = tmp_path / "run"
    assert main(["run", "--out", str(out), "-q", f"data.images={small_isbi['images']}", f"data.labels={small_isbi['labels']}",
                 "data.test_images=null", *TINY, "train.steps=4", "train.val_every=2", "predict.tta=true"]) == 0
    assert "(without test-time turns)" in capsys.readouterr().out
    last = json.loads((out / "validation.jsonl").read_text().splitlines()[-1])
    report = json.loads((out / "eval.json").read_text())
    assert report["step"] == 4
    for flag, name in (("--tta", "turned.json"), ("--no-tta", "plain.json")):
        # fp32 as the run trained and scored (evaluate's auto takes bf16 where the CPU has it)
        assert main(["evaluate", str(out / "best.safetensors"), flag, "--precision", "fp32", "--json",
                     str(tmp_path / name), "-q"]) == 0
    turned, plain = (json.loads((tmp_path / n).read_text())["mean"] for n in ("turned.json", "plain.json"))
    assert report["mean"]["lab_dice"] == pytest.approx(turned["lab_dice"], abs=1e-6)
    assert report["mean"]["v_rand"] == pytest.approx(turned["v_rand"], abs=1e-6)
    assert last["step"] == 4 and last["mean"]["lab_dice"] == pytest.approx(plain["lab_dice"], abs=1e-6)
    assert abs(turned["lab_dice"] - plain["lab_dice"]) > 1e-6  # the two differ: the test tells them apart
