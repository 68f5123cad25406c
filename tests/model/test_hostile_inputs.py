"""Generated hostile inputs (hypothesis): data of every dtype, magnitude, shape, sparsity and naming, label columns
and numeric settings, through the API and the command line.

The invariant of every case: either a ``VennCellInputError`` (a one-line CLI error with a non-zero exit code)
that names the modality or setting and leaves nothing written, or a model that trains with finite losses and
returns finite latents. With ``VENNCELL_HOSTILE_TABLE=path`` each case's class and outcome are recorded there
(``docs/build_reliability_table.py`` turns them into the table in docs/reliability.md).
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections import Counter
from pathlib import Path

import anndata as ad
import mudata as md
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from venncell import VennCell, VennCellInputError
from venncell.train import NonFiniteLossError

TINY = dict(shared_dim=2, private_dim=1, hidden=8, encoder_hidden=8, n_layers=1)
QUICK = dict(stage1_epochs=1, stage2_epochs=1, batch_size=16, progress_bar="none")
SETTINGS = dict(deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
_OUTCOMES: list[dict] = []


def _record(case: str, outcome: str) -> None:
    _OUTCOMES.append({"class": case, "outcome": outcome})


@pytest.fixture(scope="module", autouse=True)
def _write_outcomes():
    yield
    path = os.environ.get("VENNCELL_HOSTILE_TABLE")
    if path:
        old = json.loads(Path(path).read_text()) if Path(path).exists() else []
        Path(path).write_text(json.dumps(old + _OUTCOMES, indent=1))
    counts = Counter(o["class"] for o in _OUTCOMES)
    print("hostile cases per class:", dict(counts), "total", sum(counts.values()))


def _attempt(case: str, build, run_dir: Path, train: dict | None = None) -> None:
    """Build (and train) a model; assert the invariant."""
    assert not any(run_dir.iterdir()) if run_dir.exists() else True
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = build()
            model.train(run_dir=run_dir, **{**QUICK, **(train or {})})
    except VennCellInputError as e:
        msg = str(e)
        assert msg and "\n" not in msg.strip(), msg
        assert not run_dir.exists() or not any(run_dir.rglob("*.ckpt")), (
            "an error after writing checkpoints"
        )
        _record(case, "clear error")
        return
    except NonFiniteLossError:
        _record(case, "diverged: named term, last good checkpoint")
        return
    z = model.get_latent_representation(block="all")
    finite = np.isfinite(z[~np.isnan(z).all(1)])
    assert finite.all(), "non-finite latents"
    losses = [v for k, v in model.history["stage1"].items() if k.endswith("loss_epoch")]
    assert all(math.isfinite(v) for v in losses), model.history["stage1"]
    _record(case, "trains, finite")


# ------------------------------------------------------------------------------------------ data
DTYPES = st.sampled_from(
    ["float32", "float64", "int32", "int64", "uint8", "bool", "object", "complex64", "float16"]
)
MAGNITUDES = st.sampled_from(
    [
        "counts",
        "tiny",
        "huge",
        "1e12",
        "1e30",
        "1e300",
        "negative",
        "nan",
        "inf",
        "zeros",
        "one_zero_column",
        "empty_cell",
    ]
)
LAYOUTS = st.sampled_from(["dense", "csr", "csc"])  # anndata itself refuses COO
NAMES = st.sampled_from(
    ["unique", "duplicate_features", "duplicate_cells", "empty_name", "numeric"]
)


def _matrix(rng, n, f, dtype, magnitude, layout):
    x = rng.poisson(3.0, (n, f)).astype(np.float64) + (
        np.arange(f)[None, :] == 0
    )  # counts, no empty cell
    if x.size == 0 or n < 4:
        # no room to place the oddity; such data is refused as too small whatever it holds
        pass
    elif magnitude == "tiny":
        x = x * 1e-30
    elif magnitude == "huge":
        x = x * 1e6
    elif magnitude in ("1e12", "1e30", "1e300"):
        x[0, -1] = float(magnitude)
    elif magnitude == "negative":
        x[1, 0] = -3.0
    elif magnitude == "nan":
        x[2, 1 % f] = np.nan
    elif magnitude == "inf":
        x[0, 0] = np.inf
    elif magnitude == "zeros":
        x[:] = 0.0
    elif magnitude == "one_zero_column":
        x[:, -1] = 0.0
    elif magnitude == "empty_cell":
        x[3] = 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        x = x.astype(dtype)
    if layout != "dense" and dtype not in ("object", "bool", "complex64", "float16"):
        x = {"csr": sp.csr_matrix, "csc": sp.csc_matrix}[layout](x)
    return x


@st.composite
def hostile_mudata(draw):
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    n = draw(st.sampled_from([0, 1, 5, 12, 40]))
    n_mod = draw(st.sampled_from([1, 2, 3]))
    kinds = draw(
        st.lists(
            st.sampled_from(["rna", "protein", "atac", "features"]),
            min_size=n_mod,
            max_size=n_mod,
            unique=True,
        )
    )
    f = draw(st.sampled_from([0, 1, 3, 20]))
    dtype, magnitude, layout, names = draw(DTYPES), draw(MAGNITUDES), draw(LAYOUTS), draw(NAMES)
    cells = [f"c{i}" for i in range(n)]
    if names == "duplicate_cells" and n > 1:
        cells[1] = cells[0]
    mods = {}
    for k, kind in enumerate(kinds):
        width = f if k == 0 else 6
        x = _matrix(
            rng,
            n,
            width,
            dtype if k == 0 else "float32",
            magnitude if k == 0 else "counts",
            layout,
        )
        feats = [f"{kind}{j}" for j in range(width)]
        if names == "duplicate_features" and width > 1:
            feats[1] = feats[0]
        elif names == "empty_name" and width:
            feats[0] = ""
        elif names == "numeric":
            feats = [str(j) for j in range(width)]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            mods[kind] = ad.AnnData(
                x, obs=pd.DataFrame(index=cells), var=pd.DataFrame(index=feats)
            )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with md.set_options(pull_on_update=False):
            mdata = md.MuData(mods)
    case = (
        f"data: {magnitude}"
        if n >= 10 and n_mod >= 2 and f
        else "data: too few cells, features or modalities"
    )
    return mdata, case


@settings(max_examples=90, **SETTINGS)
@given(hostile_mudata())
def test_hostile_data_through_the_api(tmp_path_factory, data):
    mdata, case = data
    run_dir = tmp_path_factory.mktemp("hostile")

    def build():
        VennCell.setup_mudata(mdata)
        return VennCell(mdata, **TINY)

    _attempt(case, build, run_dir)


# ------------------------------------------------------------------------------------------ labels
LABELS = st.sampled_from(
    [
        "strings",
        "nan",
        "floats_per_cell",
        "ints",
        "one_batch",
        "bools",
        "category_unused",
        "missing_column",
    ]
)


@settings(max_examples=25, **SETTINGS)
@given(LABELS, st.integers(0, 1000))
def test_hostile_batch_columns(tmp_path_factory, tiny_batchable, label, seed):
    mdata = tiny_batchable.copy()
    rng = np.random.default_rng(seed)
    n = mdata.n_obs
    values = {
        "strings": rng.choice(["a", "b", "c"], n),
        "nan": np.where(rng.random(n) < 0.1, np.nan, 1.0),
        "floats_per_cell": rng.normal(size=n),
        "ints": rng.integers(0, 3, n),
        "one_batch": np.full(n, "x"),
        "bools": rng.random(n) < 0.5,
        "category_unused": pd.Categorical(rng.choice(["a", "b"], n), categories=["a", "b", "z"]),
    }
    if label != "missing_column":
        mdata.obs["batch"] = values[label]

    def build():
        VennCell.setup_mudata(mdata, batch_key="batch")
        return VennCell(mdata, **TINY)

    _attempt(f"batch labels: {label}", build, tmp_path_factory.mktemp("labels"))


@pytest.fixture(scope="module")
def tiny_batchable():
    from venncell import make_synthetic

    mdata, _ = make_synthetic(n_cells=48, modalities={"rna": 15, "protein": 6}, seed=4)
    return mdata


# ------------------------------------------------------------------------------------------ settings
NUMBERS = st.one_of(
    st.sampled_from(
        [
            0,
            -1,
            1,
            2,
            3,
            0.5,
            -0.5,
            1e9,
            -1e9,
            float("nan"),
            float("inf"),
            float("-inf"),
            True,
            1.5,
            10**12,
        ]
    ),
    st.floats(-10, 10),
)
MODEL_KEYS = [
    "shared_dim",
    "private_dim",
    "hidden",
    "n_layers",
    "dropout",
    "encoder_dropout",
    "latent_noise",
    "latent_l2",
    "kl_weight",
    "consistency_weight",
    "independence_weight",
    "leakage_every",
    "consistency_cells",
    "latent_init_logvar",
]
TRAIN_KEYS = [
    "stage1_epochs",
    "batch_size",
    "lr_network",
    "lr_latent",
    "lr_encoder",
    "grad_clip",
    "seed",
]


@settings(max_examples=40, **SETTINGS)
@given(st.sampled_from(MODEL_KEYS + TRAIN_KEYS), NUMBERS)
def test_hostile_numeric_settings(tmp_path_factory, tiny_batchable, key, value):
    mdata = tiny_batchable.copy()
    model_kw = {**TINY, key: value} if key in MODEL_KEYS else TINY
    train_kw = {key: value} if key in TRAIN_KEYS else {}
    if train_kw.get("stage1_epochs", 1) not in (1, 2) and isinstance(value, int) and value > 2:
        train_kw["stage1_epochs"] = (
            2  # a large valid epoch count tells nothing more and takes long
        )

    def build():
        VennCell.setup_mudata(mdata)
        return VennCell(mdata, **model_kw)

    run_dir = tmp_path_factory.mktemp("settings")
    _attempt(f"setting: {'model' if key in MODEL_KEYS else 'trainer'}", build, run_dir, train_kw)


# ------------------------------------------------------------------------------------------ the command line
CLI_CASES = st.sampled_from(
    [
        "model.shared_dim=-1",
        "model.dropout=2",
        "trainer.lr_latent=nan",
        "trainer.grad_clip=-5",
        "seed=-4",
        "trainer.batch_size=1",
        "model.kl_wieght=1",
        "data=mudata",
        "data.path=/nonexistent.h5mu",
        "trainer.devices=0",
        "model.latent_posterior=wishart",
        "data.validation_fraction=1.5",
        "trainer.stage1_epochs=0",
        "data.n_cells=5",
        "data.batch_key=cluster",
        "model.cnn_channels=[0]",
        "trainer.precision=8",
        "data.modalities=rna:200",
    ]
)


@pytest.mark.slow
@settings(max_examples=8, **SETTINGS)
@given(CLI_CASES)
def test_hostile_command_lines(tmp_path_factory, helpers, override):
    out = tmp_path_factory.mktemp("cli") / "run"
    res = helpers.run_cli(
        ["venncell-train", *helpers.TINY_CLI, override, f"hydra.run.dir={out}"], ok=False
    )
    written = [p for p in ("venn.h5mu", "metrics.json", "model") if (out / p).exists()]
    if res.returncode == 0:
        assert written == ["venn.h5mu", "metrics.json", "model"]
        _record("command line", "trains, finite")
        return
    assert "Traceback" not in res.stderr, res.stderr[-3000:]
    assert not written, written
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert lines and len(lines) <= 8, (
        res.stderr
    )  # Hydra's own messages (a key not in a config) take a few lines
    _record("command line", "clear error")
