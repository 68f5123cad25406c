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
    assert threads_for(TrainConfig(num_threads=3)) == (3, "num_threads")
    assert threads_for(TrainConfig()) == (2, "OMP_NUM_THREADS")  # the job's own pin
    monkeypatch.delenv("OMP_NUM_THREADS")
    monkeypatch.setattr(threads, "busy_cores", lambda: 0.0)
    assert threads_for(TrainConfig(accelerator="gpu"))[0] == 1
    n, why = threads_for(TrainConfig())
    assert n == min(4, threads.available_cores()) and why.startswith("automatic:"), why
    with pytest.raises(VennCellInputError, match="trainer.num_threads"):
        TrainConfig(num_threads=0)


def test_training_uses_the_policy_and_restores_the_callers_threads(
    tiny_mdata, tmp_path, monkeypatch, caplog
):
    from venncell import VennCell

    seen = []
    real = torch.set_num_threads
    monkeypatch.setattr(torch, "set_num_threads", lambda n: (seen.append(n), real(n)))
    before = torch.get_num_threads()
    VennCell.setup_mudata(tiny_mdata)
    model = VennCell(tiny_mdata, seed=0)
    with caplog.at_level("INFO", logger="venncell"):
        model.train(
            stage1_epochs=1, stage2_epochs=1, progress_bar="none", run_dir=tmp_path, num_threads=2
        )
    assert seen[0] == 2 and seen[-1] == before and torch.get_num_threads() == before
    assert (
        "CPU threads: 2 (num_threads)" in caplog.text
    )  # the log says what it chose (it said nothing)
