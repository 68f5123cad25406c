"""How batches reach the step and when checkpoints are written: the device-resident path trains the same model as the
DataLoader, and spaced checkpoints keep the first and last epoch with ``last.ckpt`` linking the newest."""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest
from lightning.pytorch.callbacks import ModelCheckpoint

from venncell import VennCell, VennCellInputError
from venncell.data.resident import ResidentBatches
from venncell.data.validate import VennCellInputWarning, VennCellTrainingWarning
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


def test_default_epochs_follow_the_number_of_cells(tmp_path, helpers, monkeypatch):
    """100 + 40 up to FULL_EPOCHS_CELLS cells, then in proportion to FULL_EPOCHS_CELLS / cells, to a floor; a run
    given no epochs trains for those, one given epochs for those."""
    from venncell.train import config

    assert [config.default_epochs(n) for n in (1, 20_000, 40_000, 100_000, 10**7)] == [
        (100, 40),
        (100, 40),
        (50, 20),
        (20, 8),
        (10, 4),
    ]
    assert config.TrainConfig(stage2_epochs=7).for_cells(100_000).stage2_epochs == 7
    # 300 cells: 100 x 6 / 300 = 2, 40 x 6 / 300 -> 1
    monkeypatch.setattr(config, "FULL_EPOCHS_CELLS", 6)
    monkeypatch.setattr(config, "FEWEST_STAGE1_EPOCHS", 1)
    monkeypatch.setattr(config, "FEWEST_STAGE2_EPOCHS", 1)
    model = VennCell(_partly_paired_with_batches(helpers), **SMALL)
    history = model.train(run_dir=tmp_path, progress_bar="none")
    assert (len(history["epochs"]["stage1"]), len(history["epochs"]["stage2"])) == (2, 1)
    model.check_resume(tmp_path)  # the epochs it resolved are the ones it resumes with
    history = model.train(run_dir=tmp_path, stage1_epochs=3, stage2_epochs=1, progress_bar="none")
    assert len(history["epochs"]["stage1"]) == 3


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


def test_lr_anneal_lowers_the_stage1_rates_to_zero_over_its_last_epochs():
    from types import SimpleNamespace

    from venncell.train.config import TrainConfig
    from venncell.train.plans import Stage1Plan

    def scale(epoch, batch):  # the schedule alone, on a stand-in for the plan and its trainer
        trainer = SimpleNamespace(num_training_batches=10, max_epochs=4, current_epoch=epoch)
        return Stage1Plan._anneal_scale(
            SimpleNamespace(trainer=trainer, current_epoch=epoch, lr_anneal=0.5), batch
        )

    assert scale(0, 0) == scale(1, 9) == 1.0  # the first half at the full rates
    curve = [scale(e, b) for e in (2, 3) for b in range(10)]
    assert curve[0] == 1.0 and all(a > b for a, b in zip(curve, curve[1:]))  # then falling
    assert curve[10] == pytest.approx(0.5) and curve[-1] < 0.01
    with pytest.raises(VennCellInputError, match="lr_anneal"):
        TrainConfig(lr_anneal=1.5)


def test_a_finite_blow_up_is_called_a_failure_with_the_fix():
    """A learning rate far too high made the losses explode without a NaN: training ended with rc 0, no warning,
    and new cells collapsed onto one point."""
    from venncell.train.schedule import warn_if_diverged

    def rows(stage, losses):
        return [{"epoch": i, f"stage{stage}/train/loss_epoch": v} for i, v in enumerate(losses)]

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not warn_if_diverged(
            1, rows(1, [39.0, 31.0, 25.0, 25.2]), {}
        )  # a little noise at the end
        assert not warn_if_diverged(
            1, rows(1, [-10.0, -40.0, -55.0, -54.0]), {}
        )  # Gaussian NLLs go below 0
        assert not warn_if_diverged(2, rows(2, [4.0, 2.0]), {"stage2/val/latent_shared/rna": 0.3})
    with pytest.warns(
        VennCellTrainingWarning, match=r"Stage 1 failed.*ended at 120.*lr_latent and lr_network"
    ):
        assert warn_if_diverged(1, rows(1, [39.0, 4023.0, 345.0, 120.0]), {})
    # a blow-up within the first epoch leaves no lower epoch: the first step's loss is the reference
    blown = rows(1, [330957.0, 480564.0, 62255.0, 816.0])
    with pytest.warns(VennCellInputWarning, match=r"ended at 816.*its first step"):
        assert warn_if_diverged(1, blown, {}, first_loss=36.0)
    # region blocks and the joint encoder are not a modality's shared estimate; a modality with few held-out
    # cells has a score too noisy to read
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        healthy = {"stage2/val/latent_shared/rna": 0.3, "stage2/val/latent_shared/protein": 2.2}
        assert not warn_if_diverged(2, [], healthy, held_out={"rna": 50, "protein": 3})
        assert not warn_if_diverged(2, [], healthy, held_out={"rna": 50, "protein": 40})
        # too few held-out cells to read at all, however bad
        assert not warn_if_diverged(
            2, [], {"stage2/val/latent_shared/rna": 1e9}, held_out={"rna": 9}
        )
        regions = {
            "stage2/val/latent_shared/rna": 0.3,
            "stage2/val/latent_shared/shared:atac+rna/rna": 8.4,
            "stage2/val/latent_shared/joint": 5.0,
        }
        assert not warn_if_diverged(2, [], regions)
    with pytest.warns(
        VennCellTrainingWarning, match=r"Stage 2 failed.*\['protein'\] place.*lr_encoder"
    ):
        warn_if_diverged(
            2,
            rows(2, [6.6, 6.5]),
            {"stage2/val/latent_shared/rna": 0.4, "stage2/val/latent_shared/protein": 1.05},
        )
    # on fewer held-out cells only a far worse encoder (or an infinite score) is a sure failure
    for score in (12.0, float("inf")):
        with pytest.warns(VennCellTrainingWarning, match=r"Stage 2 failed.*\['rna'\]"):
            warn_if_diverged(2, [], {"stage2/val/latent_shared/rna": score}, held_out={"rna": 40})


def _train_tiny(mdata, run_dir, **settings) -> VennCell:
    mdata = mdata.copy()
    VennCell.setup_mudata(mdata)
    model = VennCell(mdata, shared_dim=3, private_dim=2, hidden=32, encoder_hidden=32, seed=0)
    model.train(run_dir=run_dir, progress_bar="none", **settings)
    return model


def test_an_encoder_learning_rate_far_too_high_is_reported(tmp_path):
    from venncell.data import make_synthetic

    mdata, _ = make_synthetic(
        n_cells=600, modalities={"rna": 40, "protein": 10}, seed=0
    )  # 60 held out
    with pytest.warns(VennCellTrainingWarning, match="Stage 2 failed.*lr_encoder"):
        _train_tiny(mdata, tmp_path, stage1_epochs=2, stage2_epochs=3, lr_encoder=50.0)
    # 400 cells (40 held out): a rate 100,000 times too high blows the encoders far past the mean's error
    few, _ = make_synthetic(n_cells=400, modalities={"rna": 40, "protein": 10}, seed=0)
    with pytest.warns(VennCellTrainingWarning, match="Stage 2 failed.*lr_encoder"):
        _train_tiny(few, tmp_path / "few", stage1_epochs=2, stage2_epochs=3, lr_encoder=100.0)


def test_lr_anneal_sets_the_optimisers_rates_and_a_resume_must_keep_it(tmp_path, tiny_mdata):
    from lightning.pytorch.callbacks import Callback

    class Rates(Callback):
        seen: list = []

        def on_train_batch_end(self, trainer, plan, outputs, batch, batch_idx):
            if plan.stage == 1:
                nets, rows = plan.optimizers(use_pl_optimizer=False)
                self.seen.append((nets.param_groups[0]["lr"], rows.param_groups[0]["lr"]))

    mdata = tiny_mdata.copy()
    VennCell.setup_mudata(mdata)
    model = VennCell(mdata, shared_dim=3, private_dim=2, hidden=32, encoder_hidden=32, seed=0)
    settings = dict(stage1_epochs=4, stage2_epochs=1, lr_anneal=0.5, progress_bar="none")
    model.train(run_dir=tmp_path, trainer_kwargs={"callbacks": [Rates()]}, **settings)
    nets, rows = zip(*Rates.seen)
    assert nets[0] == pytest.approx(1e-3) and rows[0] == pytest.approx(3e-2)  # full rates first
    assert nets[-1] < 1e-4 and rows[-1] < 3e-3  # nearly 0 at the end
    # the rates of every step after the start depend on it: a resume without it is refused, not run at the
    # checkpoint's annealed rates
    with pytest.raises(VennCellInputError, match="lr_anneal"):
        model.check_resume(tmp_path, **{**settings, "lr_anneal": 0.0})


def test_a_failed_stage_1_is_reported_and_stage_2_not_blamed(tmp_path, tiny_mdata):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = _train_tiny(
            tiny_mdata, tmp_path, stage1_epochs=6, stage2_epochs=2, lr_network=10.0
        )
    failed = [str(w.message) for w in caught if "failed:" in str(w.message)]
    assert len(failed) == 1 and failed[0].startswith("Stage 1 failed"), failed
    assert list(model.history["failed"]) == ["stage1"]  # kept with the model, for its report
