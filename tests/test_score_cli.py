"""``unet score`` as a user calls it: the challenge's fixtures, a label image, bad input."""

import json

import numpy as np
import pytest
import tifffile

from emunet.cli import main


def test_score_prints_the_references_maxima_and_writes_json(scoring_dir, tmp_path, capsys):
    out = tmp_path / "scores.json"
    code = main(["score", str(scoring_dir / "7_noisy_real_crops_prob.tif"), str(scoring_dir / "7_noisy_real_crops_lab.tif"),
                 "--json", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    want = json.loads((scoring_dir / "expected.json").read_text())["7_noisy_real_crops"]
    assert f"Maximal V_rand after thinning: {want['max_v_rand']:.6f}" in printed
    assert f"Maximal V_info after thinning: {want['max_v_info']:.6f}" in printed
    saved = json.loads(out.read_text())
    np.testing.assert_allclose([r["v_rand"] for r in saved["by_threshold"]], want["v_rand"], atol=1e-12)
    assert saved["v_rand"] == pytest.approx(want["max_v_rand"], abs=1e-12)


def test_score_picks_the_folds_slices_from_the_full_label_stack(scoring_dir, isbi_dir, capsys):
    code = main(["score", str(scoring_dir / "fold1_main_prob.tif"), str(isbi_dir / "train-labels.tif"), "--fold", "1"])
    assert code == 0
    want = json.loads((scoring_dir / "expected.json").read_text())["fold1_main"]
    assert f"Maximal V_rand after thinning: {want['max_v_rand']:.6f} at threshold 0.9" in capsys.readouterr().out


def test_score_a_label_image(tmp_path, capsys):
    from emunet.score.challenge import segment_truth

    label = np.full((40, 40), 255, np.uint8)
    label[:, 19:21] = 0  # two cells
    label[19:21, :] = 0  # four cells
    cells = segment_truth(label == 255).astype(np.uint16)
    tifffile.imwrite(tmp_path / "lab.tif", label)
    tifffile.imwrite(tmp_path / "cells.tif", cells)
    assert main(["score", str(tmp_path / "cells.tif"), str(tmp_path / "lab.tif"), "--segmentation"]) == 0
    assert "Maximal V_rand after thinning: 1.000000 (split 1.0000, merge 1.0000)" in capsys.readouterr().out
    merged = np.where(cells > 0, 1, 0).astype(np.uint16)  # all four cells one segment
    tifffile.imwrite(tmp_path / "merged.tif", merged)
    assert main(["score", str(tmp_path / "merged.tif"), str(tmp_path / "lab.tif"), "--segmentation"]) == 0
    assert "Maximal V_rand after thinning: 0.4" in capsys.readouterr().out  # merge part 1/4 -> F = 0.4


@pytest.mark.parametrize(
    "maps, extra, message",
    [
        (np.full((2, 8, 8), 1.5, np.float32), [], "must be finite and lie in [0, 1]"),
        (np.zeros((2, 8, 8), np.int32), [], "pass --segmentation"),
        (np.zeros((3, 8, 8), np.float32), [], "3 maps for 2 label slices"),
        (np.zeros((2, 8, 8), np.float32), ["--slices", "5"], "out of range"),
        (np.zeros((2, 8, 8), np.float32), ["--slices", "a-b"], "--slices must list"),
    ],
)
def test_score_refuses_bad_input_in_one_line(tmp_path, capsys, maps, extra, message):
    labels = np.zeros((2, 8, 8), np.uint8)
    labels[:, :4] = 255
    tifffile.imwrite(tmp_path / "lab.tif", labels)
    tifffile.imwrite(tmp_path / "maps.tif", maps, photometric="minisblack")
    assert main(["score", str(tmp_path / "maps.tif"), str(tmp_path / "lab.tif"), *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_every_command_takes_q(scoring_dir, capsys):
    from emunet.cli import build_parser

    parser = build_parser()
    for name in parser._subparsers._group_actions[0].choices:
        assert "-q" in parser._subparsers._group_actions[0].choices[name].format_help(), name
    assert main(["score", "-q", str(scoring_dir / "1_perfect_thin_prob.tif"), str(scoring_dir / "1_perfect_thin_lab.tif")]) == 0
    assert capsys.readouterr().out == ""


def test_version(capsys):
    import emunet

    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.strip() == f"unet {emunet.__version__}"
