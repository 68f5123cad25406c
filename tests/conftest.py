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


# --- error catalogue -------------------------------------------------------------------------------
# With VENNCELL_ERROR_TABLE=path, every VennCell error/warning raised while a test runs is recorded with
# the test's id and written to that JSON file; docs/build_error_table.py turns it into docs/errors.md, so
# the table of bad inputs and their messages comes from the tests rather than being written by hand.
_CATALOGUE_PATH = os.environ.get("VENNCELL_ERROR_TABLE")
_catalogue: list[dict] = []
_current_test = {"id": None, "doc": ""}


def _record(cls):
    original = cls.__init__

    def __init__(self, *args, **kwargs):
        original(self, *args, **kwargs)
        if _current_test["id"] and args:
            _catalogue.append({"test": _current_test["id"], "doc": _current_test["doc"],
                               "type": cls.__name__, "message": str(args[0])})

    cls.__init__ = __init__


if _CATALOGUE_PATH:
    from venncell.data import VennCellInputError, VennCellInputWarning
    from venncell.train.plans import NonFiniteLossError

    for _cls in (VennCellInputError, VennCellInputWarning, NonFiniteLossError):
        _record(_cls)

    @pytest.fixture(autouse=True)
    def _name_current_test(request):
        _current_test["id"] = request.node.nodeid
        _current_test["doc"] = (request.function.__doc__ or "").strip().splitlines()[0] if request.function.__doc__ else ""
        yield
        _current_test["id"] = None

    def pytest_sessionfinish(session, exitstatus):
        import json

        Path(_CATALOGUE_PATH).write_text(json.dumps(_catalogue, indent=1))
