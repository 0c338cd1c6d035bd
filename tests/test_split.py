import pytest

from emunet.io.data import DataError
from emunet.train.sampling import fold_split

# The lab's folds for the 30 ISBI slices: np.random.seed(0); shuffle; deque.rotate(6 * k).
EXPECTED_VALIDATION = {
    0: [25, 3, 0, 21, 15, 12],
    1: [6, 4, 18, 19, 9, 7],
    2: [8, 14, 23, 20, 1, 29],
    3: [27, 11, 17, 22, 5, 16],
    4: [2, 28, 13, 10, 26, 24],
}


@pytest.mark.parametrize("fold", range(5))
def test_lab_folds_are_pinned(fold):
    train, val = fold_split(30, fold)
    assert val == EXPECTED_VALIDATION[fold]
    assert len(train) == 24 and sorted(train + val) == list(range(30))


def test_fold_one_is_the_documented_default():
    assert sorted(fold_split(30, 1)[1]) == [4, 6, 7, 9, 18, 19]


def test_folds_partition_the_slices():
    seen = sorted(i for k in range(5) for i in fold_split(30, k)[1])
    assert seen == list(range(30))


def test_split_does_not_touch_global_numpy_state():
    import numpy as np

    np.random.seed(123)
    expected = np.random.rand()
    np.random.seed(123)
    fold_split(30, 1)
    assert np.random.rand() == expected


@pytest.mark.parametrize("n", [0, 1])
def test_too_few_slices_is_a_clear_error(n):
    with pytest.raises(DataError, match="too few"):
        fold_split(n, 1)
