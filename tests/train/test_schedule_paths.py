"""How batches reach the step and when checkpoints are written: the device-resident path trains the same model as the
DataLoader, and spaced checkpoints keep the first and last epoch with ``last.ckpt`` linking the newest."""

from __future__ import annotations

import os

import numpy as np
import pytest
from lightning.pytorch.callbacks import ModelCheckpoint

from venncell import VennCell, VennCellInputError
from venncell.data.resident import ResidentBatches
from venncell.train import schedule

SMALL = dict(shared_dim=3, private_dim=2, hidden=16, encoder_hidden=16, seed=2)
EPOCHS = dict(stage1_epochs=6, stage2_epochs=2, batch_size=64, progress_bar="none")


def _partly_paired_with_batches(helpers):
    mdata, *_ = helpers.partially_paired(seed=3, n=300)
    mdata.obs["site"] = np.where(np.arange(mdata.n_obs) % 3 == 0, "s1", "s2")
    VennCell.setup_mudata(mdata, batch_key="site")
    return mdata


def test_batches_on_the_device_train_the_same_model_as_the_dataloader(
    tmp_path, helpers, monkeypatch
):
    """Partly paired cells (a boolean-mask branch), batches and a held-out split: bit-identical latents."""
    used = []
    real = schedule._loader
    monkeypatch.setattr(
        schedule, "_loader", lambda *a, **k: used.append(real(*a, **k)) or used[-1]
    )
    runs = {}
    for on_device in (True, False):
        model = VennCell(_partly_paired_with_batches(helpers), **SMALL)
        model.train(run_dir=tmp_path / str(on_device), data_on_device=on_device, **EPOCHS)
        runs[on_device] = (
            model.get_latent_representation(block="all"),
            model.get_latent_representation(source="stage1"),
        )
    # the default path really is the resident one, and the other one the DataLoader
    assert [isinstance(u, ResidentBatches) for u in used] == [True, True, False, False]
    for a, b in zip(runs[True], runs[False]):
        np.testing.assert_array_equal(a, b)


def test_checkpoints_are_spaced_and_last_links_the_newest(tmp_path, helpers, monkeypatch):
    saved = []
    real = ModelCheckpoint._save_checkpoint
    monkeypatch.setattr(
        ModelCheckpoint,
        "_save_checkpoint",
        lambda self, trainer, path: (
            saved.append(os.path.basename(path)) or real(self, trainer, path)
        ),
    )
    model = VennCell(_partly_paired_with_batches(helpers), **SMALL)
    monkeypatch.setattr(
        schedule, "CHECKPOINT_SPACING", 1e9
    )  # a save "costs" more than any run: first and last
    model.train(run_dir=tmp_path / "spaced", **EPOCHS)
    assert saved == ["epoch0000.ckpt", "epoch0005.ckpt", "epoch0000.ckpt", "epoch0001.ckpt"]
    folder = tmp_path / "spaced" / "checkpoints" / "stage1"
    assert sorted(p.name for p in folder.iterdir()) == ["epoch0005.ckpt", "last.ckpt"]
    assert (folder / "last.ckpt").is_symlink() and (
        folder / "last.ckpt"
    ).resolve().name == "epoch0005.ckpt"
    saved.clear()
    monkeypatch.setattr(schedule, "CHECKPOINT_SPACING", 0.0)  # free: every epoch, one file each
    model = VennCell(_partly_paired_with_batches(helpers), **SMALL)
    model.train(run_dir=tmp_path / "every", **EPOCHS)
    assert saved == [f"epoch{e:04d}.ckpt" for e in range(6)] + ["epoch0000.ckpt", "epoch0001.ckpt"]


@pytest.mark.parametrize("on_device", [None, False])
def test_the_resident_path_is_chosen_only_where_it_can_be(on_device, helpers):
    from venncell.train.config import TrainConfig

    model = VennCell(_partly_paired_with_batches(helpers), **SMALL)
    cfg = TrainConfig(data_on_device=on_device)
    trainer = schedule.quiet_trainer(accelerator="cpu", devices=1, logger=False)
    got = schedule._resident(cfg, model.data, trainer)
    assert (got is not None) == (on_device is None)
    # worker processes were asked for: they need the DataLoader
    assert schedule._resident(TrainConfig(num_workers=2), model.data, trainer) is None


def test_asking_for_the_device_path_where_it_cannot_be_says_why(helpers, caplog):
    from venncell.train.config import TrainConfig

    model = VennCell(_partly_paired_with_batches(helpers), **SMALL)
    trainer = schedule.quiet_trainer(accelerator="cpu", devices=1, logger=False)
    cfg = TrainConfig(data_on_device=True, num_workers=2)
    with caplog.at_level("WARNING", logger="venncell.train.schedule"):
        assert schedule._resident(cfg, model.data, trainer) is None
    assert "data_on_device=true" in caplog.text and "num_workers=2" in caplog.text


def test_default_batch_size_follows_the_number_of_cells(tmp_path, helpers, monkeypatch):
    """128 cells until an epoch would keep fewer than BATCHES_PER_EPOCH batches of the doubled size, at most 1,024."""
    from venncell.train import config

    assert [config.default_batch_size(n) for n in (1, 12_799, 12_800, 25_600, 51_200, 10**7)] == [
        128,
        128,
        256,
        512,
        1024,
        1024,
    ]
    monkeypatch.setattr(config, "BATCHES_PER_EPOCH", 1)  # 300 cells then take 256 per batch
    used = []
    real = schedule._loader
    monkeypatch.setattr(
        schedule, "_loader", lambda *a, **k: used.append(real(*a, **k)) or used[-1]
    )
    model = VennCell(_partly_paired_with_batches(helpers), **SMALL)
    model.train(run_dir=tmp_path, stage1_epochs=1, stage2_epochs=1, progress_bar="none")
    assert [u.sampler.batch_size for u in used] == [256, 256]
    # the size a run resolved is the one its checkpoints resume with, given or not
    model.check_resume(tmp_path)
    model.check_resume(tmp_path, batch_size=256)


def test_resuming_with_another_batch_size_than_the_default_gave_is_refused(
    tmp_path, helpers, monkeypatch
):
    """Resuming a run that took the default batch size with another batch size."""
    from venncell.train import config

    monkeypatch.setattr(config, "BATCHES_PER_EPOCH", 1)  # 300 cells then take 256 per batch
    model = VennCell(_partly_paired_with_batches(helpers), **SMALL)
    model.train(run_dir=tmp_path, stage1_epochs=1, stage2_epochs=1, progress_bar="none")
    with pytest.raises(VennCellInputError, match="batch size"):
        model.check_resume(tmp_path, batch_size=128)


@pytest.mark.parametrize("precision", ["16-mixed", "bf16-mixed", "bf16-true", "64-true"])
def test_precisions_other_than_float32_are_refused_with_the_fix(precision):
    from venncell.train.config import TrainConfig

    with pytest.raises(VennCellInputError, match="trainer.precision='32-true'"):
        TrainConfig(precision=precision)
    assert TrainConfig(precision="32-true").precision == "32-true"
