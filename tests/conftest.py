"""Shared fixtures and helpers: tiny synthetic data, tiny trained models, the recovery set-up, image data, the CLI
runner. Test modules never import each other; what they share lives here, behind fixtures."""

from __future__ import annotations

import os
import subprocess
import warnings
from pathlib import Path
from types import SimpleNamespace

import anndata as ad
import mudata
import numpy as np
import pandas as pd
import pytest
import torch

os.environ.setdefault("WANDB_MODE", "offline")
# One intra-op thread, inherited by the CLI subprocesses: on a 2-core machine, several processes each
# spinning 2 OpenMP threads slow each other down by an order of magnitude.
os.environ["OMP_NUM_THREADS"] = "1"
os.environ.setdefault("MPLBACKEND", "Agg")
torch.set_num_threads(1)


def pytest_configure(config):
    # pytest-xdist >= 3.8 sends files in order of their number of tests unless told not to; the order below is
    # the one wanted
    if hasattr(config.option, "loadscopereorder"):
        config.option.loadscopereorder = False


def pytest_collection_modifyitems(config, items):
    """Files with a test marked slow first. Each of the two workers takes whole files (``--dist loadfile``) in
    this order (``pytest_configure``); a long file started last would leave one worker running it alone while
    the other idles."""
    slow = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow)


@pytest.fixture(autouse=True)
def _quiet_mudata():
    """mudata's pull-on-update FutureWarning, set for each test (the package itself sets no global option)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)
        with mudata.set_options(pull_on_update=False):
            yield


SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"
TINY_MODS = {"rna": 60, "protein": 20, "atac": 60}
FAST = dict(stage1_epochs=3, stage2_epochs=2, batch_size=64, progress_bar="none")


@pytest.fixture
def shared_dataset():
    """``shared_dataset(name)``: the path of a dataset in ../shared/datasets, or skip the test when it is absent."""

    def find(name: str) -> Path:
        p = SHARED / name
        if not p.exists():
            pytest.skip(f"shared dataset {name} not available at {p}")
        return p

    return find


# --- the synthetic recovery set-up (analysis/test_recovery.py and the tests that reuse its data) -----------------
RECOVERY_MODS = {"rna": 400, "protein": 80, "atac": 600}
RECOVERY_TRAIN = dict(
    stage1_epochs=60, stage2_epochs=20, batch_size=128, lr_latent=0.05, progress_bar="none"
)
N_TRAIN = 1500


def learned_blocks(model, source="encoder") -> dict:
    out = {"shared": model.get_latent_representation(source=source)}
    for m in model.specs:
        out[f"private:{m}"] = model.get_latent_representation(block=f"private:{m}", source=source)
    return out


def make_all_cells():
    """1,800 cells from one generator: the first 1,500 train the model, the rest are never seen by it."""
    from venncell import make_synthetic

    return make_synthetic(n_cells=N_TRAIN + 300, modalities=dict(RECOVERY_MODS), seed=0)


def training_cells(all_cells):
    """The first N_TRAIN cells of ``make_all_cells()`` and their truth."""
    from venncell.data import SyntheticTruth

    mdata, truth = all_cells
    keep = slice(0, N_TRAIN)
    sub = SyntheticTruth(
        shared=truth.shared[keep],
        private={m: v[keep] for m, v in truth.private.items()},
        cluster=truth.cluster[keep],
    )
    return mdata[keep].copy(), sub


def assert_recovers_venn(
    model,
    truth,
    show: bool = False,
    recovery: float = 0.9,
    private: float = 0.85,
    leak: float = 0.15,
    sources=("encoder", "stage1"),
) -> dict:
    """Shared recovers the shared factors and each private block its own, with little leakage, from the encoders
    and from the stage-1 latents (``show``: print the scores, for ``pytest -s``). Returns the summaries."""
    from venncell.analysis.recovery import evaluate_recovery

    out = {}
    for source in sources:
        s = evaluate_recovery(learned_blocks(model, source), truth.blocks())["knn"]["summary"]
        out[source] = s
        if show:
            print(source, {k: round(v, 3) for k, v in s.items()})
        assert s["shared_recovery"] >= recovery, (source, s)
        assert s["min_private_recovery"] >= private, (source, s)
        assert s["leak_private_into_shared"] <= leak, (source, s)
        assert s["leak_shared_into_private"] <= leak, (source, s)
        assert s["leak_private_into_other_private"] <= leak, (source, s)
    return out


# --- partially paired cells ----------------------------------------------------------------------------------------
PAIRING_MODS = {"rna": 120, "protein": 30}


def partially_paired(seed=4, n=600):
    """RNA for every cell; protein for two thirds of the cells, with one third (a different one) RNA-only."""
    from venncell import make_synthetic

    full, truth = make_synthetic(n_cells=n, modalities=dict(PAIRING_MODS), seed=seed)
    rng = np.random.default_rng(seed)
    has_prot = np.sort(rng.permutation(n)[: 2 * n // 3])
    mdata = mudata.MuData({"rna": full["rna"].copy(), "protein": full["protein"][has_prot].copy()})
    order = [list(full.obs_names).index(c) for c in mdata.obs_names]
    return mdata, truth, np.asarray(order), set(full.obs_names[has_prot])


# --- image modalities ----------------------------------------------------------------------------------------------
IMAGE_SIZE = 16
# make_images' private factors are blob positions, which turning or mirroring a crop changes: the tests that use
# it check the Venn split itself, so they train without the default augmentation (tests/data/test_image_augment.py)
IMAGE_MODEL = dict(
    shared_dim=2,
    private_dim=2,
    hidden=32,
    encoder_hidden=32,
    cnn_channels=[8, 16],
    seed=0,
    image_augment=False,
)


def make_images(n=300, seed=0):
    """Two-channel crops: the shared factor scales the brightness of both channels' blobs; private factor 0
    moves channel 0's blob left/right, private factor 1 moves channel 1's blob up/down."""
    rng = np.random.default_rng(seed)
    f = rng.uniform(-1, 1, size=(n, 3))  # shared, private ch0, private ch1
    yy, xx = np.mgrid[:IMAGE_SIZE, :IMAGE_SIZE].astype(np.float32)
    c = IMAGE_SIZE / 2 - 0.5
    amp = (1.0 + 0.7 * f[:, 0])[:, None, None]

    def blob(y, x):
        return np.exp(
            -((yy[None] - y[:, None, None]) ** 2 + (xx[None] - x[:, None, None]) ** 2)
            / (2 * 2.0**2)
        )

    ch0 = amp * blob(np.full(n, c), c + 4 * f[:, 1])
    ch1 = amp * blob(c + 4 * f[:, 2], np.full(n, c))
    img = np.stack([ch0, ch1], axis=1) + 0.05 * rng.normal(size=(n, 2, IMAGE_SIZE, IMAGE_SIZE))
    return img.astype(np.float32), f


def image_mudata(img, store: str | None = None):
    from venncell import VennCell

    names = [f"cell{i}" for i in range(len(img))]
    mods = {}
    for m in ("ch0", "ch1"):
        a = ad.AnnData(np.zeros((len(img), 0), dtype=np.float32), obs=pd.DataFrame(index=names))
        if store is None:
            a.obsm["img"] = img  # both channels; the registry picks one
        mods[m] = a
    mdata = mudata.MuData(mods)
    if store is None:
        reg = {m: {"kind": "image", "obsm_key": "img", "channels": [int(m[-1])]} for m in mods}
    else:  # both modalities read different channels of one shared store
        reg = {m: {"kind": "image", "store": store, "channels": [int(m[-1])]} for m in mods}
    VennCell.setup_mudata(mdata, modalities=reg)
    return mdata


# --- the command line ----------------------------------------------------------------------------------------------
TINY_CLI = [
    "trainer=fast",
    "data.n_cells=200",
    "data.modalities={rna:60,protein:20,atac:60}",
    "model.hidden=32",
    "model.encoder_hidden=32",
    "trainer.batch_size=64",
]


def run_cli(cmd: list[str], ok: bool = True, **kwargs) -> subprocess.CompletedProcess:
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, **kwargs)
    if ok and res.returncode != 0:
        raise AssertionError(
            f"{cmd} failed ({res.returncode}):\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
        )
    return res


@pytest.fixture(scope="session")
def helpers():
    """The helpers above, for test modules (which never import each other or this file)."""
    return SimpleNamespace(
        FAST=FAST,
        TINY_MODS=TINY_MODS,
        RECOVERY_MODS=RECOVERY_MODS,
        RECOVERY_TRAIN=RECOVERY_TRAIN,
        N_TRAIN=N_TRAIN,
        learned_blocks=learned_blocks,
        make_all_cells=make_all_cells,
        training_cells=training_cells,
        assert_recovers_venn=assert_recovers_venn,
        PAIRING_MODS=PAIRING_MODS,
        partially_paired=partially_paired,
        IMAGE_SIZE=IMAGE_SIZE,
        IMAGE_MODEL=IMAGE_MODEL,
        make_images=make_images,
        image_mudata=image_mudata,
        TINY_CLI=TINY_CLI,
        run_cli=run_cli,
    )


@pytest.fixture(scope="session")
def recovery_cells():
    """``make_all_cells()``, built once per test process."""
    return make_all_cells()


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
            _catalogue.append(
                {
                    "test": _current_test["id"],
                    "doc": _current_test["doc"],
                    "type": type(self).__name__,
                    "message": str(args[0]),
                }
            )

    cls.__init__ = __init__


if _CATALOGUE_PATH:
    from venncell.data import VennCellInputError, VennCellInputWarning
    from venncell.train.plans import NonFiniteLossError

    for _cls in (VennCellInputError, VennCellInputWarning, NonFiniteLossError):
        _record(_cls)

    @pytest.fixture(autouse=True)
    def _name_current_test(request):
        _current_test["id"] = request.node.nodeid
        _current_test["doc"] = (
            (request.function.__doc__ or "").strip().splitlines()[0]
            if request.function.__doc__
            else ""
        )
        yield
        _current_test["id"] = None

    def pytest_sessionfinish(session, exitstatus):
        import json

        Path(_CATALOGUE_PATH).write_text(json.dumps(_catalogue, indent=1))
