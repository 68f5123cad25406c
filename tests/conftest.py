"""Shared fixtures: tiny synthetic data and one tiny trained model, reused across tests."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import mudata
import pytest
import torch

os.environ.setdefault("WANDB_MODE", "offline")
# One intra-op thread, inherited by the CLI subprocesses: on a 2-core machine, several processes each
# spinning 2 OpenMP threads slow each other down by an order of magnitude.
os.environ["OMP_NUM_THREADS"] = "1"
os.environ.setdefault("MPLBACKEND", "Agg")
mudata.set_options(pull_on_update=False)
warnings.filterwarnings("ignore", category=FutureWarning)
torch.set_num_threads(1)

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"
TINY_MODS = {"rna": 60, "protein": 20, "atac": 60}
FAST = dict(stage1_epochs=3, stage2_epochs=2, batch_size=64, progress_bar="none")


def shared_dataset(name: str) -> Path:
    """Path of a dataset in ../shared/datasets, or skip the test when it is absent."""
    p = SHARED / name
    if not p.exists():
        pytest.skip(f"shared dataset {name} not available at {p}")
    return p


@pytest.fixture
def tiny_mdata():
    from venncell.data import make_synthetic

    mdata, truth = make_synthetic(n_cells=200, modalities=dict(TINY_MODS), seed=1)
    return mdata


@pytest.fixture(scope="session")
def trained_tiny(tmp_path_factory):
    """A model trained for a few epochs; for API plumbing tests, not for quality."""
    from venncell import VennCell
    from venncell.data import make_synthetic

    mdata, truth = make_synthetic(n_cells=240, modalities=dict(TINY_MODS), seed=2)
    VennCell.setup_mudata(mdata)
    model = VennCell(mdata, shared_dim=4, private_dim=2, hidden=32, encoder_hidden=32, seed=0)
    model.train(run_dir=tmp_path_factory.mktemp("tiny_run"), **FAST)
    return model, mdata, truth
