"""The commands as Python functions: what they hand back is what the CLI prints and writes."""

from __future__ import annotations

import json
import shutil

import numpy as np

from emunet.cli import main
from emunet.infer.predictor import Predictor
from emunet.jobs import evaluate


def test_evaluate_from_python_equals_the_command(tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    assert main(["evaluate", str(run / "best.safetensors"), "--json", str(tmp_path / "cli.json"), "--precision", "fp32",
                 "-q"]) == 0
    predictor = Predictor.load(run / "best.safetensors", "cpu", "fp32")
    done = evaluate(predictor, json=tmp_path / "py.json", progress=False)
    from_cli = json.loads((tmp_path / "cli.json").read_text())
    assert done.report.mean == from_cli["mean"] and done.data == from_cli["data"]
    assert json.loads((tmp_path / "py.json").read_text())["mean"] == from_cli["mean"]


def test_the_predictor_predicts_as_predict_writes(tiny_run, small_isbi, tmp_path):
    import tifffile

    assert main(["predict", str(tiny_run / "best.safetensors"), str(small_isbi["test"]), "-o", str(tmp_path / "p.tif"),
                 "--segment", "--precision", "fp32", "-q"]) == 0
    predictor = Predictor.load([tiny_run / "best.safetensors"], "cpu", "fp32")
    prediction = predictor.predict(predictor.read(small_isbi["test"]))
    np.testing.assert_array_equal(prediction.probs, tifffile.imread(tmp_path / "p.tif"))
    np.testing.assert_array_equal(predictor.cells_of(prediction), tifffile.imread(tmp_path / "p-cells.tif"))


def _refuse(constant):
    raise ValueError(f"{constant} is not JSON")


def test_evaluate_writes_standard_json_with_null_where_a_score_is_undefined(tiny_run, tmp_path):
    """Thresholds 0 and 1 leave V_info's split undefined: the file says null, not Python's bare NaN,
    which JavaScript's JSON.parse and other strict readers refuse."""
    assert main(["evaluate", str(tiny_run / "best.safetensors"), "--json", str(tmp_path / "e.json"), "--precision", "fp32",
                 "-q"]) == 0
    text = (tmp_path / "e.json").read_text()
    saved = json.loads(text, parse_constant=_refuse)
    assert "NaN" not in text and "Infinity" not in text
    assert "null" in text, "the thresholds' table holds undefined scores"
    assert isinstance(saved["mean"]["v_rand"], float)


def test_the_predictor_shapes_its_answer_as_the_image_it_was_given(tiny_run, small_isbi):
    import pytest
    import tifffile
    import torch

    from emunet.errors import DataError

    predictor = Predictor.load(tiny_run / "best.safetensors", "cpu", "fp32")
    image = tifffile.imread(small_isbi["test"])[0, :96, :80]
    want = predictor(image)
    assert want.shape == (96, 80)
    for same in (image.tolist(), torch.from_numpy(image)):
        np.testing.assert_array_equal(predictor(same), want)
        assert predictor.cells(same).shape == (96, 80)
    assert predictor(image[None]).shape == (1, 96, 80)
    with pytest.raises(DataError, match=r"looks like an RGB image; give one grey channel"):
        predictor(np.stack([image] * 3, axis=-1))


def test_score_from_python_equals_the_command(tmp_path, capsys):
    """Saved maps scored by ``jobs.score`` and by ``unet score``: one function behind both. A map
    that is the labels themselves scores 1 at every threshold above 0 (the oracle)."""
    import tifffile

    from emunet.jobs import score
    from emunet.train.sampling import fold_split

    labels = np.zeros((12, 64, 64), np.uint8)
    labels[:, :, :] = 255
    labels[:, 31:33, :] = labels[:, :, 31:33] = 0  # four cells per slice
    tifffile.imwrite(tmp_path / "labels.tif", labels)
    tifffile.imwrite(tmp_path / "maps.tif", (labels / 255).astype(np.float32))
    done = score(tmp_path / "maps.tif", tmp_path / "labels.tif", fold=1, json=tmp_path / "py.json")
    assert done.slices == sorted(fold_split(12, 1)[1]) and done.names == [f"slice {i}" for i in done.slices]
    assert done.result["v_rand"] == 1.0
    assert main(["score", str(tmp_path / "maps.tif"), str(tmp_path / "labels.tif"), "--fold", "1", "--json",
                 str(tmp_path / "cli.json")]) == 0
    ours, theirs = json.loads((tmp_path / "py.json").read_text()), json.loads((tmp_path / "cli.json").read_text())
    assert {k: v for k, v in ours.items() if k != "seconds"} == {k: v for k, v in theirs.items() if k != "seconds"}


def test_evaluate_from_python_names_its_arguments_not_the_commands_flags(tiny_run):
    import pytest

    from emunet.errors import UsageError

    with pytest.raises(UsageError, match="images and labels go together") as caught:
        evaluate(tiny_run / "best.safetensors", images=tiny_run / "x.tif")
    assert "--" not in str(caught.value)
