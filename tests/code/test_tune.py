"""Tuning helpers that need no training."""

import optuna
import pytest

from agerange.tune import _removed_when_done


def test_a_pruned_trial_leaves_no_checkpoints(tmp_path):
    folder = tmp_path / "trial_3"
    with pytest.raises(optuna.TrialPruned), _removed_when_done(folder):
        (folder / "soup").mkdir(parents=True)
        (folder / "soup" / "epoch_009.npz").write_bytes(b"weights")
        raise optuna.TrialPruned("pruned at epoch 9")
    assert not folder.exists()
