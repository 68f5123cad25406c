"""Determinism, NaN safety and resume after a real SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import mudata as md
import numpy as np
import pytest

from venncell import VennCell, VennCellInputError
from venncell.data import make_synthetic
from venncell.train import NonFiniteLossError


def _tiny_model(seed=0):
    mdata, _ = make_synthetic(
        n_cells=160, modalities={"rna": 60, "protein": 20, "atac": 60}, seed=5
    )
    VennCell.setup_mudata(mdata)
    return VennCell(mdata, shared_dim=3, private_dim=2, hidden=16, encoder_hidden=16, seed=seed)


def test_same_seed_same_latents(tmp_path, helpers):
    runs = []
    for i in range(2):
        model = _tiny_model(seed=11)
        model.train(run_dir=tmp_path / str(i), **helpers.FAST)
        runs.append(
            (
                model.get_latent_representation(block="all"),
                model.get_latent_representation(source="stage1"),
            )
        )
    np.testing.assert_array_equal(runs[0][0], runs[1][0])
    np.testing.assert_array_equal(runs[0][1], runs[1][1])
    other = _tiny_model(seed=12)
    other.train(run_dir=tmp_path / "other", **helpers.FAST)
    assert not np.allclose(other.get_latent_representation(block="all"), runs[0][0])


def test_a_second_train_in_the_same_session_trains_with_dropout(tmp_path, helpers):
    """Training ends with the networks in eval mode, which Lightning keeps: a second train() on the same object (an
    in-process resume with more epochs) trained with dropout off and drifted from the same resume of a fresh object."""
    import shutil

    import torch

    first = _tiny_model()
    first.train(run_dir=tmp_path / "a", **helpers.FAST)
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    modes = []
    dropout = next(m for m in first.module.encoders.modules() if isinstance(m, torch.nn.Dropout))
    dropout.register_forward_pre_hook(lambda mod, args: modes.append(mod.training))
    longer = {**helpers.FAST, "stage2_epochs": helpers.FAST["stage2_epochs"] + 2}
    first.train(run_dir=tmp_path / "a", resume=True, **longer)
    assert any(modes), "dropout never in training mode"
    fresh = _tiny_model()
    fresh.train(run_dir=tmp_path / "b", resume=True, **longer)
    np.testing.assert_array_equal(
        first.get_latent_representation(block="all", source="encoder"),
        fresh.get_latent_representation(block="all", source="encoder"),
    )


def test_non_finite_loss_names_modality_and_checkpoint(tmp_path):
    model = _tiny_model()
    original = model.module.nll
    calls = {"n": 0}

    def poisoned(m, raw, batch):
        out = original(m, raw, batch)
        if m == "protein":
            calls["n"] += 1
            if calls["n"] > 12:  # after the first epochs have been checkpointed
                return out * float("nan")
        return out

    model.module.nll = poisoned
    with pytest.raises(NonFiniteLossError) as err:
        model.train(
            run_dir=tmp_path, stage1_epochs=20, stage2_epochs=1, batch_size=64, progress_bar="none"
        )
    msg = str(err.value)
    assert "recon/protein" in msg and "Stage 1" in msg
    assert "last.ckpt" in msg
    ckpt = msg.split("Last good checkpoint: ")[1].split(". ")[0]
    assert Path(ckpt).exists()


TRAIN = [
    "venncell-train",
    "trainer=fast",
    "data.n_cells=400",
    "data.modalities={rna:60,protein:20,atac:60}",
    "model.hidden=32",
    "model.encoder_hidden=32",
    "trainer.batch_size=32",
    "trainer.stage1_epochs=30",
    "trainer.stage2_epochs=10",
    "evaluate_recovery=false",
    "logger=none",
]


def _latents(run_dir: Path) -> np.ndarray:
    m = md.read_h5mu(str(run_dir / "venn.h5mu"))
    return np.hstack(
        [m.obsm["X_venn_shared"], m.obsm["X_venn_shared_stage1"], m.obsm["X_venn_private_rna"]]
    )


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> np.ndarray:
    ref = tmp_path_factory.mktemp("ref")
    subprocess.run([*TRAIN, f"hydra.run.dir={ref}"], check=True, capture_output=True, timeout=600)
    return _latents(ref)


def _epoch_rows(run_dir: Path, stage: str) -> list[int]:
    """The epochs of a stage's CSV log that carry the epoch-level training loss, in file order; and checks that
    the per-step rows are each logged once, in order (a resumed run must not repeat the killed run's steps)."""
    import csv

    with (run_dir / "logs" / stage / "metrics.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    steps = [int(float(r["step"])) for r in rows if r.get(f"{stage}/train/loss_step")]
    assert steps and steps == sorted(set(steps)), f"{stage}: step rows repeated or out of order"
    return [int(float(r["epoch"])) for r in rows if r.get(f"{stage}/train/loss_epoch")]


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["stage1", "stage2"])
def test_kill_and_resume_matches_uninterrupted(tmp_path, stage, uninterrupted):
    run = tmp_path / "killed"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    # the CSV log too: Lightning's CSV writer deletes an existing metrics.csv, and the resumed run must keep it
    killed = [*TRAIN, "logger=csv", f"hydra.run.dir={run}"]
    proc = subprocess.Popen(killed, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    ckpt_dir = run / "checkpoints" / stage
    deadline = time.time() + 300
    while time.time() < deadline and not list(ckpt_dir.glob("epoch*.ckpt")):
        if proc.poll() is not None:
            pytest.fail(f"training ended before a {stage} checkpoint appeared")
        time.sleep(0.05)
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (run / "venn.h5mu").exists()
    subprocess.run([*killed, "resume=true"], check=True, capture_output=True, timeout=600)
    # Same batches, same noise, same optimiser state: CPU float32 results agree to rounding.
    np.testing.assert_allclose(_latents(run), uninterrupted, rtol=0, atol=1e-5)
    # every epoch's row once, in order: the killed part kept, the epochs after its checkpoint logged once (again)
    assert _epoch_rows(run, "stage1") == list(range(30))
    assert _epoch_rows(run, "stage2") == list(range(10))
    first = json.loads((run / "metrics.json").read_text())["history"]
    # resuming a finished run changes nothing, its logs and metrics.json included (a stage it did not train had
    # empty metrics and a wall time of ~0 s there)
    subprocess.run([*killed, "resume=true"], check=True, capture_output=True, timeout=600)
    assert _epoch_rows(run, "stage1") == list(range(30)) and _epoch_rows(run, "stage2") == list(
        range(10)
    )
    again = json.loads((run / "metrics.json").read_text())["history"]
    assert first["stage1"] and first["stage2"], first
    assert again == first
    # the per-epoch history (VennCell.epoch_history) holds every epoch once, the killed part's too
    assert [r["epoch"] for r in first["epochs"]["stage1"]] == list(range(30))
    assert [r["epoch"] for r in first["epochs"]["stage2"]] == list(range(10))


def test_resume_with_more_stage1_epochs_trains_stage2_again(tmp_path, helpers):
    """Resuming a finished run with more stage-1 epochs trained them, then resumed stage 2's finished checkpoint,
    which put the old stage-1 latents and encoders back: the extra epochs were lost without a word."""
    first = _tiny_model()
    first.train(run_dir=tmp_path, **helpers.FAST)
    longer = _tiny_model()
    longer.train(run_dir=tmp_path, resume=True, **{**helpers.FAST, "stage1_epochs": 6})
    moved = np.abs(
        longer.get_latent_representation(source="stage1")
        - first.get_latent_representation(source="stage1")
    ).max()
    assert moved > 1e-3
    # stage 2 fitted the new stage-1 latents: its encoders differ from the first run's too
    assert (
        np.abs(
            longer.get_latent_representation(source="encoder")
            - first.get_latent_representation(source="encoder")
        ).max()
        > 1e-3
    )
    again = _tiny_model()  # and resuming that finished run changes nothing
    again.train(run_dir=tmp_path, resume=True, **{**helpers.FAST, "stage1_epochs": 6})
    np.testing.assert_array_equal(
        again.get_latent_representation(block="all"), longer.get_latent_representation(block="all")
    )
    # fewer epochs than the checkpoints hold: refused by name before anything runs (it was Lightning's traceback)
    for call in (_tiny_model().check_resume, lambda **kw: _tiny_model().train(resume=True, **kw)):
        with pytest.raises(
            VennCellInputError, match="stage1 of .* has trained 6 epochs, more than the 3"
        ):
            call(run_dir=tmp_path, **helpers.FAST)
    # another setting: the refusal names it and both values (it named only the group, and "e.g. shared_dim")
    with pytest.raises(
        VennCellInputError, match=r"lr_latent: 0.03 in the checkpoint, 0.01 now\)"
    ) as err:
        _tiny_model().check_resume(
            run_dir=tmp_path, **{**helpers.FAST, "stage1_epochs": 6, "lr_latent": 0.01}
        )
    assert "shared_dim" not in str(err.value)
    # a whole number for a float setting is the same setting (grad_clip=10 was refused, naming nothing)
    _tiny_model().check_resume(
        run_dir=tmp_path, **{**helpers.FAST, "stage1_epochs": 6, "grad_clip": 10}
    )


def test_a_moved_run_folder_resumes_from_its_newest_checkpoint(tmp_path, helpers):
    """After ``mv run moved``, resuming wrote last-v1.ckpt and left last.ckpt on the old epoch, so every later
    resume went back to it."""
    _tiny_model().train(run_dir=tmp_path / "run", **helpers.FAST)
    (tmp_path / "run").rename(tmp_path / "moved")
    _tiny_model().train(
        run_dir=tmp_path / "moved", resume=True, **{**helpers.FAST, "stage1_epochs": 5}
    )
    folder = tmp_path / "moved" / "checkpoints" / "stage1"
    assert not list(folder.glob("last-v*.ckpt"))
    assert (folder / "last.ckpt").resolve().name == "epoch0004.ckpt"


def test_resume_keeps_the_csv_rows_before_the_checkpoint_and_skips_a_line_cut_short(tmp_path):
    from lightning.pytorch.loggers import CSVLogger

    from venncell.train.schedule import _keep_csv_history, quiet_trainer

    logger = CSVLogger(save_dir=str(tmp_path), name="logs", version="stage1")
    folder = tmp_path / "logs" / "stage1"
    folder.mkdir(parents=True)
    (folder / "metrics.csv").write_text(
        "epoch,loss,step\n0,1.5,0\n0,1.25,3\n1,1.0,5\n1,0"
    )  # killed mid-line
    trainer = quiet_trainer(logger=logger, enable_progress_bar=False, enable_checkpointing=False)
    _keep_csv_history(trainer, step=5)  # the checkpoint was taken after 5 logged steps
    assert logger.experiment.metrics == [
        {"epoch": 0, "loss": 1.5, "step": 0},
        {"epoch": 0, "loss": 1.25, "step": 3},
    ]
    logger.save()
    assert (folder / "metrics.csv").read_text().splitlines()[1:] == ["0,1.5,0", "0,1.25,3"]


def test_resume_skips_a_truncated_last_checkpoint(tmp_path):
    """A kill during a checkpoint write leaves ``last.ckpt`` cut short: resuming takes the epoch copy beside it."""
    import torch

    from venncell.train.schedule import _resume_path

    folder = tmp_path / "checkpoints" / "stage1"
    folder.mkdir(parents=True)
    state = {
        "global_step": 14,
        "loops": {"fit_loop": {"epoch_loop.state_dict": {"_batches_that_stepped": 7}}},
        "state_dict": {"w": torch.arange(100_000, dtype=torch.float32)},
    }
    torch.save(state, folder / "epoch0003.ckpt")
    whole = (folder / "epoch0003.ckpt").read_bytes()
    (folder / "last.ckpt").write_bytes(whole[: len(whole) // 2])
    assert _resume_path(tmp_path, "stage1", resume=True)[:2] == (str(folder / "epoch0003.ckpt"), 7)
    (folder / "last.ckpt").write_bytes(whole)
    assert _resume_path(tmp_path, "stage1", resume=True)[:2] == (str(folder / "last.ckpt"), 7)
    (folder / "epoch0003.ckpt").write_bytes(whole[:100])
    (folder / "last.ckpt").write_bytes(whole[:-10])
    assert _resume_path(tmp_path, "stage1", resume=True)[:2] == (None, 0)
    assert _resume_path(tmp_path, "stage1", resume=False)[:2] == (None, 0)


def test_a_checkpoint_is_written_whole_or_not_at_all(tmp_path, monkeypatch):
    """A full disk while a checkpoint is written: no truncated ``*.ckpt`` is left for resuming to meet, nothing
    partial stays behind, and the error is an OSError naming the checkpoint (not a temporary file elsewhere)."""
    import torch

    from venncell.train.safety import SameFolderCheckpointIO

    io, target = SameFolderCheckpointIO(), tmp_path / "checkpoints" / "stage1" / "epoch0001.ckpt"
    io.save_checkpoint({"w": torch.arange(10)}, target)
    assert torch.equal(torch.load(target)["w"], torch.arange(10))
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full to fill the disk with")
    later = target.with_name("epoch0002.ckpt")
    # every write to the file the checkpoint goes through first fails as on a full disk
    os.symlink("/dev/full", later.with_name(f".{later.name}.partial"))
    with pytest.raises(OSError, match="No space left") as caught:
        io.save_checkpoint({"w": torch.randn(1000, 100)}, later)
    assert caught.value.filename == str(later)
    assert sorted(p.name for p in target.parent.iterdir()) == ["epoch0001.ckpt"]
    # training writes its checkpoints this way
    written, save = [], SameFolderCheckpointIO.save_checkpoint
    monkeypatch.setattr(
        SameFolderCheckpointIO,
        "save_checkpoint",
        lambda self, c, path, **k: written.append(Path(path).name) or save(self, c, path, **k),
    )
    model = _tiny_model()
    model.train(run_dir=tmp_path / "run", stage1_epochs=1, stage2_epochs=1, progress_bar="none")
    assert written == ["epoch0000.ckpt", "epoch0000.ckpt"]  # stage 1's, then stage 2's
    # next to a user's own plugins; a checkpoint writer of their own replaces it
    from lightning.fabric.plugins.environments import LightningEnvironment
    from lightning.pytorch.plugins.io import TorchCheckpointIO

    from venncell.train import schedule
    from venncell.train.config import TrainConfig

    for plugins, used in (
        ([LightningEnvironment()], SameFolderCheckpointIO),
        ([TorchCheckpointIO()], TorchCheckpointIO),
    ):
        cfg = TrainConfig(trainer_kwargs={"plugins": plugins}).for_cells(100)
        trainer, _ = schedule._trainer(cfg, "stage1", 1, tmp_path / "t", False)
        assert type(trainer.strategy.checkpoint_io) is used


def test_resume_finds_the_newest_whole_checkpoint_at_every_step_of_a_save(tmp_path):
    """A save writes epochN+1, removes epochN, then relinks ``last.ckpt``: a kill at any point leaves a whole
    checkpoint that resuming finds."""
    import os

    import torch

    from venncell.train.schedule import _resume_path

    folder = tmp_path / "checkpoints" / "stage1"
    folder.mkdir(parents=True)

    def save(epoch: int, steps: int) -> bytes:
        state = {
            "loops": {"fit_loop": {"epoch_loop.state_dict": {"_batches_that_stepped": steps}}},
            "state_dict": {"w": torch.full((50_000,), float(epoch))},
        }
        torch.save(state, folder / f"epoch{epoch:04d}.ckpt")
        return (folder / f"epoch{epoch:04d}.ckpt").read_bytes()

    def found():
        return _resume_path(tmp_path, "stage1", resume=True)[1]

    save(2, 6)
    os.symlink("epoch0002.ckpt", folder / "last.ckpt")
    whole = save(3, 8)
    (folder / "epoch0003.ckpt").write_bytes(
        whole[: len(whole) // 2]
    )  # killed while writing epoch 3
    assert found() == 6
    (folder / "epoch0003.ckpt").write_bytes(whole)  # written; epoch 2 not yet removed
    assert found() == 6  # last.ckpt still names epoch 2, which is whole
    (folder / "epoch0002.ckpt").unlink()  # removed; last.ckpt now dangles
    assert found() == 8
    (folder / "last.ckpt").unlink()  # relinking: the old link gone, the new one not yet made
    assert found() == 8
    os.symlink("epoch0003.ckpt", folder / "last.ckpt")
    assert found() == 8 and _resume_path(tmp_path, "stage1", resume=True)[0] == str(
        folder / "last.ckpt"
    )


def test_resume_says_when_it_starts_afresh_and_names_each_checkpoint_once(
    tmp_path, helpers, caplog
):
    """``resume=true`` in a folder without checkpoints started afresh silently; resuming named each checkpoint
    three times in the log (two checks before the run, then the run)."""
    with caplog.at_level("INFO", logger="venncell"):
        _tiny_model().train(run_dir=tmp_path, resume=True, **helpers.FAST)
    assert "holds no checkpoint of this run, so there is nothing to resume" in caplog.text
    caplog.clear()
    with caplog.at_level("INFO", logger="venncell"):
        _tiny_model().train(run_dir=tmp_path, resume=True, **helpers.FAST)
    assert caplog.text.count("Resuming stage1 from") == 1, caplog.text


def test_a_checkpoint_from_before_newer_model_fields_resumes(tmp_path, helpers):
    """A run checkpointed before image_augment, private_kl_scale and start_batch_alignment existed was refused as
    one of "other model settings", with no setting to give that could match it."""
    import hashlib
    import json

    import torch

    import venncell
    from venncell.module.config import ADDED_FIELDS
    from venncell.train.safety import FINGERPRINT_KEY, SETTINGS

    _tiny_model().train(run_dir=tmp_path, **helpers.FAST)
    for path in (tmp_path / "checkpoints").rglob("*.ckpt"):
        if path.is_symlink():
            continue
        ckpt = torch.load(path, weights_only=False)
        assert ckpt["venncell_version"] == venncell.__version__  # what wrote it
        old = ckpt[FINGERPRINT_KEY]
        model = {k: v for k, v in old[SETTINGS]["model"].items() if k not in ADDED_FIELDS}
        digest = hashlib.sha256(json.dumps(model, sort_keys=True, default=str).encode())
        old["model"] = digest.hexdigest()[:16]
        old[SETTINGS]["model"] = model
        old.pop("model_accepts", None)
        torch.save(ckpt, path)
    _tiny_model().check_resume(run_dir=tmp_path, **helpers.FAST)
    # a setting that did exist still has to match, and a new field away from its old behaviour is named
    with pytest.raises(
        VennCellInputError, match=r"private_kl_scale: 1.0 in the checkpoint, 2.0 now"
    ):
        mdata, _ = make_synthetic(
            n_cells=160, modalities={"rna": 60, "protein": 20, "atac": 60}, seed=5
        )
        VennCell.setup_mudata(mdata)
        VennCell(
            mdata, shared_dim=3, private_dim=2, hidden=16, encoder_hidden=16, private_kl_scale=2.0
        ).check_resume(run_dir=tmp_path, **helpers.FAST)


@pytest.mark.parametrize("stop", ["signal", "error"])
def test_a_trained_model_whose_new_training_stops_keeps_its_networks(tmp_path, helpers, stop):
    """Ctrl-C in a second train() left a mix of old and new weights that still called itself trained, with the
    first training's history."""
    from lightning.pytorch.callbacks import Callback

    from venncell import TrainingInterrupted

    class Stop(Callback):
        def on_train_batch_end(self, trainer, pl_module, *args):
            if trainer.current_epoch == 1:
                if stop == "signal":
                    os.kill(os.getpid(), signal.SIGINT)
                else:
                    raise RuntimeError("a failure mid-training")

    model = _tiny_model()
    model.train(**helpers.FAST)
    before = {
        source: model.get_latent_representation(block="all", source=source)
        for source in ("stage1", "encoder")
    }
    history = model.history
    expected = TrainingInterrupted if stop == "signal" else RuntimeError
    with pytest.raises(expected) as err:
        model.train(
            run_dir=tmp_path, **{**helpers.FAST, "trainer_kwargs": {"callbacks": [Stop()]}}
        )
    if stop == "signal":
        assert isinstance(err.value, KeyboardInterrupt)
        assert f"model.train(run_dir={str(tmp_path)!r}, resume=True, ...)" in str(err.value)
    assert model.is_trained and model.history is history
    for source, z in before.items():
        np.testing.assert_array_equal(
            model.get_latent_representation(block="all", source=source), z
        )


def test_the_repr_of_a_trained_model_gives_its_epochs(helpers):
    model = _tiny_model()
    assert repr(model).endswith("trained=False)")
    model.train(**helpers.FAST)
    assert repr(model).endswith("trained=True (3 + 2 epochs))")
