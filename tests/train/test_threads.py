"""The CPU thread policy: never more threads than the cores other processes leave free."""

from __future__ import annotations

import pytest
import torch

from venncell import VennCellInputError
from venncell.train import threads
from venncell.train.config import TrainConfig
from venncell.train.schedule import threads_for


@pytest.mark.parametrize(
    "cores, load, ranks, expected",
    [
        (2, 0.0, 1, 2),
        (2, 2.1, 1, 1),
        (2, 4.0, 1, 1),
        (16, 0.0, 1, 4),
        (16, 2.0, 2, 4),
        (8, 0.0, 4, 2),
    ],
)
def test_auto_threads_take_only_the_free_cores(monkeypatch, cores, load, ranks, expected):
    monkeypatch.setattr(threads, "available_cores", lambda: cores)
    monkeypatch.setattr(threads, "busy_cores", lambda: load)
    assert threads.auto_threads(processes_per_machine=ranks) == expected
    assert threads.auto_threads(on_accelerator=True) == 1


def test_explicit_threads_win_and_bad_values_are_refused(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert threads_for(TrainConfig(num_threads=3)) == 3
    assert threads_for(TrainConfig()) == 2  # the job's own pin
    monkeypatch.delenv("OMP_NUM_THREADS")
    monkeypatch.setattr(threads, "busy_cores", lambda: 0.0)
    assert threads_for(TrainConfig(accelerator="gpu")) == 1
    assert threads_for(TrainConfig()) == min(4, threads.available_cores())
    with pytest.raises(VennCellInputError, match="trainer.num_threads"):
        TrainConfig(num_threads=0)


def test_training_uses_the_policy_and_restores_the_callers_threads(
    tiny_mdata, tmp_path, monkeypatch
):
    from venncell import VennCell

    seen = []
    real = torch.set_num_threads
    monkeypatch.setattr(torch, "set_num_threads", lambda n: (seen.append(n), real(n)))
    before = torch.get_num_threads()
    VennCell.setup_mudata(tiny_mdata)
    model = VennCell(tiny_mdata, seed=0)
    model.train(
        stage1_epochs=1, stage2_epochs=1, progress_bar="none", run_dir=tmp_path, num_threads=2
    )
    assert seen[0] == 2 and seen[-1] == before and torch.get_num_threads() == before
