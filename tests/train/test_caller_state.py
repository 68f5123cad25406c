"""Training and refinement leave the caller's process as they found it: its random generators, torch's
deterministic-algorithm and cuDNN settings and the environment. Lightning's seed_everything reseeded the caller's
numpy, torch and Python generators (two different seeds gave the same draws after train()), and
Trainer(deterministic=True) left torch's deterministic algorithms on, so the caller's torch.empty filled every
allocation and ops without a deterministic kernel raised."""

from __future__ import annotations

import os
import random

import numpy as np
import pytest
import torch

from venncell import VennCell
from venncell.data import make_synthetic
from venncell.train.caller_state import ENV_KEYS


def _state() -> dict:
    return {
        "deterministic": torch.are_deterministic_algorithms_enabled(),
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "env": {k: os.environ.get(k) for k in ENV_KEYS},
    }


def _draws(seed: int, work) -> tuple:
    """The caller's next draws after seeding with ``seed`` and running ``work``."""
    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002  (the legacy global generator is the caller's)
    torch.manual_seed(seed)
    work()
    return random.random(), np.random.rand(), torch.rand(1).item()  # noqa: NPY002


@pytest.fixture
def cudnn_benchmark_on():
    before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True
    yield
    torch.backends.cudnn.benchmark = before


def test_train_and_refine_leave_the_callers_state(
    tiny_mdata, tmp_path, helpers, cudnn_benchmark_on
):
    mdata = tiny_mdata.copy()
    VennCell.setup_mudata(mdata)
    model = VennCell(mdata, shared_dim=3, private_dim=2, hidden=32, encoder_hidden=32)
    before = _state()
    assert _draws(1, lambda: model.train(run_dir=tmp_path / "a", **helpers.FAST)) == _draws(
        1, lambda: None
    )
    assert _state() == before
    # another seed gives other draws after training too (the training's own seed reset them all)
    assert _draws(2, lambda: model.train(run_dir=tmp_path / "b", **helpers.FAST)) == _draws(
        2, lambda: None
    )
    new, _ = make_synthetic(n_cells=40, modalities=dict(helpers.TINY_MODS), seed=9)
    refined = _draws(3, lambda: model.get_latent_representation(new, refine_epochs=2))
    assert refined == _draws(3, lambda: None)
    assert _state() == before


def test_a_failed_training_leaves_the_callers_state(tiny_mdata, tmp_path, helpers):
    from lightning.pytorch.callbacks import Callback

    class Boom(Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            raise RuntimeError("boom")

    mdata = tiny_mdata.copy()
    VennCell.setup_mudata(mdata)
    model = VennCell(mdata, shared_dim=3, private_dim=2, hidden=32, encoder_hidden=32)
    before = _state()

    def fail():
        with pytest.raises(RuntimeError, match="boom"):
            model.train(run_dir=tmp_path, trainer_kwargs={"callbacks": [Boom()]}, **helpers.FAST)

    assert _draws(4, fail) == _draws(4, lambda: None)
    assert _state() == before


def test_a_failed_run_in_a_temporary_folder_is_named_or_removed(tiny_mdata, helpers):
    """train() without run_dir trains in a temporary folder; a failure (here a callback's error in the second
    epoch, after a checkpoint) kept it without a word, unseen by the user, 14 MB a fit for 300 cells."""
    import re
    import shutil
    import sys
    from pathlib import Path

    from lightning.pytorch.callbacks import Callback

    class Boom(Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            if trainer.current_epoch == 1:
                raise RuntimeError("boom")

    mdata = tiny_mdata.copy()
    VennCell.setup_mudata(mdata)
    model = VennCell(mdata, shared_dim=3, private_dim=2, hidden=32, encoder_hidden=32)
    with pytest.raises(RuntimeError, match="boom") as err:
        if sys.version_info < (
            3,
            11,
        ):  # exceptions take notes from 3.11; before, a warning names the folder
            with pytest.warns(UserWarning, match="checkpoints are kept in") as said:
                model.train(trainer_kwargs={"callbacks": [Boom()]}, **helpers.FAST)
        else:
            model.train(trainer_kwargs={"callbacks": [Boom()]}, **helpers.FAST)
    notes = (
        str(said[0].message)
        if sys.version_info < (3, 11)
        else " ".join(getattr(err.value, "__notes__", []))
    )
    kept = re.search(r"kept in (\S+);", notes)
    assert kept and "resume=True" in notes, notes
    assert any(Path(kept.group(1)).rglob("*.ckpt"))
    shutil.rmtree(kept.group(1))


def test_embedding_new_cells_leaves_the_callers_torch_stream(trained_tiny, helpers):
    """Each data loader pass drew its workers' seed from torch's global generator: embedding moved the caller's
    stream (the python and numpy ones were untouched)."""
    model, _, _ = trained_tiny
    new, _ = make_synthetic(n_cells=40, modalities=dict(helpers.TINY_MODS), seed=9)
    assert _draws(5, lambda: model.get_latent_representation(new)) == _draws(5, lambda: None)
    assert _draws(5, lambda: model.get_latent_representation()) == _draws(5, lambda: None)


def test_a_model_whose_encoder_training_failed_trains_again(tiny_mdata, tmp_path, helpers):
    """Stage 2 freezes the latent tables and decoders, and Lightning skipped the unfreezing when the fit raised:
    the next train() on the same model failed with "element 0 of tensors does not require grad"."""
    from lightning.pytorch.callbacks import Callback

    class Boom(Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            if type(pl_module).__name__ == "Stage2Plan":
                raise RuntimeError("boom")

    mdata = tiny_mdata.copy()
    VennCell.setup_mudata(mdata)
    model = VennCell(mdata, shared_dim=3, private_dim=2, hidden=32, encoder_hidden=32)
    with pytest.raises(RuntimeError, match="boom"):
        model.train(run_dir=tmp_path / "a", trainer_kwargs={"callbacks": [Boom()]}, **helpers.FAST)
    assert all(p.requires_grad for p in model.module.parameters())
    model.train(run_dir=tmp_path / "b", **helpers.FAST)
    assert model.is_trained
