"""The batch stream: batches prepared ahead in a thread are the batches prepared in turn."""

import shutil

import pytest
import torch

from emunet.train.batches import BatchStream
from emunet.train.loop import train

from test_train import _cfg, _losses


def _draws(generator):
    return lambda: (torch.rand(3, generator=generator), torch.randint(0, 9, (2,), generator=generator))


@pytest.mark.parametrize("ahead", [0, 1, 3])
def test_the_stream_and_its_position_do_not_depend_on_how_far_ahead_it_runs(ahead):
    inline = torch.Generator().manual_seed(5)
    expected, positions = [], []
    for _ in range(6):
        expected.append(_draws(inline)())
        positions.append(inline.get_state())
    gen = torch.Generator().manual_seed(5)
    with BatchStream(_draws(gen), gen, ahead, torch.device("cpu")) as stream:
        for want, position in zip(expected, positions):
            got = next(stream)
            assert all(torch.equal(a, b) for a, b in zip(got, want))
            assert torch.equal(stream.position, position)  # not where the thread has got to


def test_an_error_while_preparing_a_batch_reaches_the_training_loop():
    def broken():
        raise RuntimeError("tile sampler broke")

    with BatchStream(broken, torch.Generator(), 2, torch.device("cpu")) as stream:
        with pytest.raises(RuntimeError, match="tile sampler broke"):
            next(stream)


def test_a_run_prepared_ahead_resumes_a_run_prepared_in_turn_exactly(small_isbi, tmp_path):
    extra = ["train.steps=6", "train.checkpoint_every=3", "train.val_every=0", "augment.elastic_std=5"]
    whole = tmp_path / "whole"
    train(_cfg(small_isbi, whole, *extra, "train.prefetch=0"), progress=False)
    resumed = tmp_path / "resumed"
    (resumed / "checkpoints").mkdir(parents=True)
    shutil.copy(whole / "checkpoints" / "step_000003.pt", resumed / "checkpoints")
    train(_cfg(small_isbi, resumed, *extra, "train.prefetch=3"), resume=True, progress=False)
    a, b = _losses(whole), _losses(resumed)
    assert [b[s] for s in (4, 5, 6)] == [a[s] for s in (4, 5, 6)]
    final_a = torch.load(whole / "checkpoints" / "step_000006.pt", weights_only=True)["model"]
    final_b = torch.load(resumed / "checkpoints" / "step_000006.pt", weights_only=True)["model"]
    for name in final_a:
        assert torch.equal(final_a[name], final_b[name]), name


def _validation_outputs(run_dir):
    import csv
    import json

    from emunet.model.checkpoint import load

    with open(run_dir / "metrics.csv") as f:
        rows = [{k: v for k, v in r.items() if k.startswith("val_") or k in ("step", "loss")} for r in csv.DictReader(f)]
    validations = [json.loads(line) for line in (run_dir / "validation.jsonl").read_text().splitlines()]
    checkpoint = load(run_dir / "best.safetensors")
    best, meta = checkpoint.network, checkpoint.meta
    return rows, validations, best.state_dict(), meta["step"]


@pytest.mark.slow
def test_scores_computed_in_the_background_give_the_same_run(small_isbi, tmp_path):
    extra = ["train.steps=6", "train.val_every=2", "train.log_every=3", "train.select_by=v_rand", "train.keep=2"]
    train(_cfg(small_isbi, tmp_path / "fg", *extra, "train.background_scoring=false"), progress=False)
    result = train(_cfg(small_isbi, tmp_path / "bg", *extra, "train.background_scoring=true"), progress=False)
    fg, bg = _validation_outputs(tmp_path / "fg"), _validation_outputs(tmp_path / "bg")
    assert fg[0] == bg[0] and fg[1] == bg[1] and fg[3] == bg[3] == result.step
    assert [r["step"] for r in fg[1]] == [2, 4, 6] and all(r.get("val_v_rand") for r in fg[0] if r["step"] in "246")
    for name in fg[2]:
        assert torch.equal(fg[2][name], bg[2][name]), name
    # each validation step's checkpoint, written when its scores arrived, is the one written at the step
    names = sorted(p.name for p in (tmp_path / "fg" / "checkpoints").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "bg" / "checkpoints").iterdir())
    for name in names:
        a = torch.load(tmp_path / "fg" / "checkpoints" / name, weights_only=True)
        b = torch.load(tmp_path / "bg" / "checkpoints" / name, weights_only=True)
        assert a["step"] == b["step"] and a["best"] == b["best"]
        assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
        assert torch.equal(a["rng"]["sampler"], b["rng"]["sampler"])


def test_background_scoring_is_refused_under_torchrun():
    from emunet.train.distributed import DistContext
    from emunet.errors import ConfigError
    from emunet.train.loop import _scores_in_background

    several = DistContext(rank=0, world_size=2, local_rank=0)
    with pytest.raises(ConfigError, match="several processes"):
        _scores_in_background(True, several)
    assert _scores_in_background(None, several) is False
    one = DistContext()
    assert _scores_in_background(None, one) and not _scores_in_background(False, one)
