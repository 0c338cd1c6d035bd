"""The batch stream: batches prepared ahead in a thread are the batches prepared in turn."""

import shutil

import pytest
import torch

from emunet.batches import BatchStream
from emunet.train import train

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
