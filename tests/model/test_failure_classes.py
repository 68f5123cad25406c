"""One test per failure class of the hostile-input review (reliability, round two): each failed before its fix --
silently (wrong output, exit 0) or with a traceback from deep inside a library."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
import warnings

import anndata as ad
import mudata as md
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

from venncell import VennCell, VennCellInputError, make_synthetic
from venncell.data import VennCellInputWarning
from venncell.train import NonFiniteLossError

TINY = dict(shared_dim=3, private_dim=2, hidden=16, encoder_hidden=16)
QUICK = dict(stage1_epochs=2, stage2_epochs=1, batch_size=32, progress_bar="none")


def _pair(x_rna, x_other, other="protein", n=None):
    n = n or x_rna.shape[0]
    names = [f"c{i}" for i in range(n)]

    def a(x, prefix):
        return ad.AnnData(
            x,
            obs=pd.DataFrame(index=names),
            var=pd.DataFrame(index=[f"{prefix}{j}" for j in range(x.shape[1])]),
        )

    return md.MuData({"rna": a(x_rna, "g"), other: a(x_other, "p")})


def _counts(n=60, f=12, seed=0, lam=3.0):
    x = np.random.default_rng(seed).poisson(lam, (n, f)).astype(np.float32)
    x[:, 0] += 1  # no empty cell
    return x


# ------------------------------------------------------------------------------------------ extreme magnitudes
def test_a_count_beyond_float32_integers_is_refused():
    """One RNA count of 1e12 trained with exit 0 and a negative NB loss (float32 cancellation)."""
    x = _counts()
    x[3, 4] = 1e12
    mdata = _pair(x, _counts(seed=1))
    VennCell.setup_mudata(mdata)
    with pytest.raises(VennCellInputError, match="rna.*2\\^24"):
        VennCell(mdata, **TINY)


def test_a_value_finite_in_float64_but_not_in_float32_is_refused():
    """It passed the finite check and died in sklearn's PCA."""
    feats = np.random.default_rng(0).normal(size=(60, 5))
    feats[2, 1] = 1e300
    mdata = _pair(_counts(), feats, other="features")
    VennCell.setup_mudata(
        mdata, {"rna": "rna", "features": {"kind": "features", "likelihood": "gaussian"}}
    )
    with pytest.raises(VennCellInputError, match="features.*float32"):
        VennCell(mdata, **TINY)


def test_features_of_any_scale_train(tmp_path):
    """A column of 1e30 died as a traceback; reduced features (10 PCs next to 19 unstandardised topic scores up to
    4.6e5, stored sparse) crashed the spectral start with ArpackError. Both must train with finite latents."""
    rng = np.random.default_rng(3)
    n = 120
    pcs = rng.normal(size=(n, 10)).astype(np.float32)
    pcs[:, 0] *= 1e30 / 10  # a column of huge values
    topics = rng.gamma(0.3, 1e5, size=(n, 19)) * (rng.random((n, 19)) < 0.4)
    topics[:, 0] = 4.6e5
    topics[::7, 0] = 0.0
    mdata = _pair(pcs, sp.csr_matrix(topics.astype(np.float32)), other="chrom_topics")
    VennCell.setup_mudata(
        mdata,
        {
            "rna": {"kind": "features", "likelihood": "gaussian"},
            "chrom_topics": {"kind": "features", "likelihood": "gaussian"},
        },
    )
    model = VennCell(mdata, **TINY)
    model.train(run_dir=tmp_path, **QUICK)
    assert np.isfinite(model.get_latent_representation(block="all")).all()
    assert all(np.isfinite(v) for v in model.history["stage1"].values())


# ------------------------------------------------------------------------------------------ checkpoints
def test_a_non_finite_latent_is_never_saved_as_last_good(tmp_path):
    """An update that wrote NaN into the latent table was saved as last.ckpt one epoch before the error."""
    mdata, _ = make_synthetic(n_cells=160, modalities={"rna": 40, "protein": 12}, seed=5)
    VennCell.setup_mudata(mdata)
    model = VennCell(mdata, **TINY)
    table = model.module.private_tables["protein"]
    calls = {"n": 0}
    original = model.module.latents

    def poison(
        idx,
    ):  # after two epochs: one row of the table (a cell not in this batch) becomes NaN
        calls["n"] += 1
        if calls["n"] == 30:
            with torch.no_grad():
                table.weight[int(np.setdiff1d(np.arange(160), idx.numpy())[0])] = float("nan")
        return original(idx)

    model.module.latents = poison
    with pytest.raises(NonFiniteLossError, match="NaN/inf|non-finite"):
        model.train(
            run_dir=tmp_path, stage1_epochs=6, stage2_epochs=1, batch_size=32, progress_bar="none"
        )
    ckpt = torch.load(
        tmp_path / "checkpoints" / "stage1" / "last.ckpt", map_location="cpu", weights_only=False
    )
    assert all(
        torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point()
    )
    # the cause removed, training resumes from that checkpoint and finishes
    model.module.latents = original
    with torch.no_grad():
        table.weight.nan_to_num_(0.0)
    model.train(
        run_dir=tmp_path,
        stage1_epochs=6,
        stage2_epochs=1,
        batch_size=32,
        progress_bar="none",
        resume=True,
    )
    assert np.isfinite(model.get_latent_representation(block="all")).all()


# ------------------------------------------------------------------------------------------ degenerate sizes
@pytest.mark.parametrize("n", [1, 2, 9])
def test_too_few_cells_are_refused_up_front(n):
    """1-2 cells trained fully, wrote every output, then failed with a KeyError traceback."""
    mdata = _pair(_counts(n=n), _counts(n=n, seed=1))
    VennCell.setup_mudata(mdata)
    with pytest.raises(VennCellInputError, match="cells"):
        VennCell(mdata, **TINY)


def test_no_held_out_cells_still_finishes(tmp_path, helpers):
    """validation_fraction=0 failed after writing every output (the held-out metric was missing)."""
    out = tmp_path / "run"
    res = helpers.run_cli(
        [
            "venncell-train",
            *helpers.TINY_CLI,
            "data.validation_fraction=0",
            f"hydra.run.dir={out}",
        ],
        ok=False,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert (out / "venn.h5mu").exists() and (out / "metrics.json").exists()


def test_a_count_modality_with_one_feature_is_refused_and_its_way_out_trains(tmp_path):
    """It died in the spectral start; then it trained, into constant predictions (one feature's share of its own
    total is 1). The message's way out, log counts as one Gaussian feature, trains."""
    mdata = _pair(_counts(), _counts(f=1, seed=2, lam=8.0) + 1)
    VennCell.setup_mudata(mdata)
    with pytest.raises(
        VennCellInputError, match=r"single feature.*np.log1p\(mdata\['protein'\].X\)"
    ):
        VennCell(mdata, **TINY)
    # counts in a layer (.X normalised, so constant for one feature): the fix reads the layer
    mdata["protein"].layers["counts"] = mdata["protein"].X.copy()
    VennCell.setup_mudata(mdata, modalities={"rna": "rna", "protein": {"layer": "counts"}})
    with pytest.raises(
        VennCellInputError, match=r"np.log1p\(mdata\['protein'\].layers\['counts'\]\)"
    ):
        VennCell(mdata, **TINY)
    mdata["protein"].layers["log1p"] = np.log1p(mdata["protein"].X)
    VennCell.setup_mudata(
        mdata, modalities={"rna": "rna", "protein": {"kind": "features", "layer": "log1p"}}
    )
    model = VennCell(mdata, **TINY)
    model.train(run_dir=tmp_path, **QUICK)
    assert np.isfinite(model.get_latent_representation(block="all")).all()


# ------------------------------------------------------------------------------------------ labels and names
def test_duplicate_feature_names_are_refused():
    """Accepted, so new data with reordered columns embedded with silently wrong latents."""
    mdata = _pair(_counts(), _counts(seed=1))
    mdata["protein"].var_names = ["p0", "p1", "p1"] + [f"p{j}" for j in range(3, 12)]
    with pytest.raises(
        VennCellInputError, match="protein.*repeated feature name.*var_names_make_unique"
    ):
        VennCell.setup_mudata(
            mdata
        )  # at setup, as the message says (it passed until VennCell(mdata))


def test_missing_batch_labels_are_refused():
    """NaN batch labels silently became a batch of their own."""
    mdata = _pair(_counts(), _counts(seed=1))
    mdata.obs["batch"] = ["a", "b"] * 29 + [np.nan, np.nan]
    with pytest.raises(VennCellInputError, match="batch.*NaN"):
        VennCell.setup_mudata(mdata, batch_key="batch")


def test_a_continuous_batch_column_is_refused():
    """A float batch_key with one value per cell became hundreds of batches and ended in non-finite losses."""
    mdata = _pair(_counts(), _counts(seed=1))
    mdata.obs["depth"] = np.random.default_rng(0).normal(size=60)
    with pytest.raises(VennCellInputError, match="depth.*continuous"):
        VennCell.setup_mudata(mdata, batch_key="depth")
    mdata.obs["barcode"] = [f"b{i}" for i in range(60)]
    with pytest.raises(VennCellInputError, match="one per cell"):
        VennCell.setup_mudata(mdata, batch_key="barcode")


# ------------------------------------------------------------------------------------------ settings
@pytest.mark.parametrize(
    "key,value",
    [
        ("grad_clip", -5.0),
        ("lr_latent", float("nan")),
        ("seed", -1),
        ("lr_network", float("inf")),
        ("batch_size", 1.5),
    ],
)
def test_out_of_range_training_settings_are_refused(tiny_mdata, key, value, tmp_path):
    """grad_clip=-5 flipped the gradients (loss rose, exit 0); NaN learning rates and negative seeds passed."""
    VennCell.setup_mudata(tiny_mdata)
    model = VennCell(tiny_mdata, **TINY)
    with pytest.raises(VennCellInputError, match=key):
        model.train(run_dir=tmp_path, **{**QUICK, key: value})
    assert not any(tmp_path.iterdir())  # nothing written


def test_a_negative_modality_weight_and_seed_are_refused(tiny_mdata):
    with pytest.raises(VennCellInputError, match="weight"):
        VennCell.setup_mudata(
            tiny_mdata, {"rna": {"kind": "rna", "weight": -1.0}, "protein": "protein"}
        )
    VennCell.setup_mudata(tiny_mdata)
    with pytest.raises(VennCellInputError, match="seed"):
        VennCell(tiny_mdata, seed=-3)


# ------------------------------------------------------------------------------------------ signals
@pytest.mark.slow
def test_sigterm_stops_with_a_checkpoint_and_exit_143_then_resumes_exactly(tmp_path, helpers):
    """SIGTERM during training exited 0 with no outputs: a killed job reported success."""
    args = [
        "venncell-train",
        *helpers.TINY_CLI,
        "trainer.stage1_epochs=40",
        "trainer.stage2_epochs=4",
        "logger=none",
        "evaluate_recovery=false",
    ]
    ref = tmp_path / "ref"
    helpers.run_cli([*args, f"hydra.run.dir={ref}"])
    run = tmp_path / "run"
    proc = subprocess.Popen(
        [*args, f"hydra.run.dir={run}"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.time() + 300
    while (
        not list((run / "checkpoints" / "stage1").glob("epoch*.ckpt")) and time.time() < deadline
    ):
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 143, err[-2000:]
    assert "SIGTERM" in err and "resume=true" in err and "Traceback" not in err
    assert (
        not (run / "venn.h5mu").exists()
        and (run / "checkpoints" / "stage1" / "last.ckpt").exists()
    )
    helpers.run_cli([*args, f"hydra.run.dir={run}", "resume=true"])
    a, b = (md.read_h5mu(str(d / "venn.h5mu")) for d in (ref, run))
    for key in ("X_venn_shared", "X_venn_shared_stage1", "X_venn_private_rna"):
        assert np.abs(a.obsm[key] - b.obsm[key]).max() == 0.0, key


# ------------------------------------------------------------------------------------------ resume
def test_resume_with_other_settings_is_refused_and_keeps_the_run(tmp_path, helpers):
    """resume=true with a changed shared_dim gave a torch size-mismatch traceback and overwrote
    config_resolved.yaml with the rejected config."""
    run = tmp_path / "run"
    helpers.run_cli(["venncell-train", *helpers.TINY_CLI, f"hydra.run.dir={run}"])
    before = (run / "config_resolved.yaml").read_text()
    res = helpers.run_cli(
        [
            "venncell-train",
            *helpers.TINY_CLI,
            f"hydra.run.dir={run}",
            "resume=true",
            "model.shared_dim=5",
        ],
        ok=False,
    )
    assert res.returncode == 2 and "model settings" in res.stderr and "Traceback" not in res.stderr
    assert re.search(r"shared_dim: \d+ in the checkpoint, 5 now", " ".join(res.stderr.split()))
    # where to find the settings to give again (Hydra has already rewritten .hydra/ with this attempt's)
    assert f"That run's settings are in {run / 'config_resolved.yaml'}" in " ".join(
        res.stderr.split()
    )
    assert (run / "config_resolved.yaml").read_text() == before
    res = helpers.run_cli(
        [
            "venncell-train",
            *helpers.TINY_CLI,
            f"hydra.run.dir={run}",
            "resume=true",
            "data.seed=9",
        ],
        ok=False,
    )
    assert res.returncode == 2 and "data" in res.stderr


def test_a_fresh_run_in_an_old_folder_does_not_resume_the_old_run(tmp_path, helpers):
    """A fresh run (resume=false) into an old run folder, killed and resumed, silently continued the old run."""
    run = tmp_path / "run"
    helpers.run_cli(["venncell-train", *helpers.TINY_CLI, f"hydra.run.dir={run}"])
    old = sorted(p.name for p in (run / "checkpoints" / "stage1").glob("*.ckpt"))
    assert old
    # a fresh run into the same folder, with other settings: the old checkpoints go before it starts
    res = helpers.run_cli(
        [
            "venncell-train",
            *helpers.TINY_CLI,
            f"hydra.run.dir={run}",
            "model.shared_dim=5",
            "trainer.stage1_epochs=1",
        ],
        ok=False,
    )
    assert res.returncode == 0
    ckpt = torch.load(
        run / "checkpoints" / "stage1" / "last.ckpt", map_location="cpu", weights_only=False
    )
    assert ckpt["state_dict"]["module.shared_table.weight"].shape[1] == 5


# ------------------------------------------------------------------------------------------ API and model files
def test_an_untrained_model_reloads_untrained(tiny_mdata, tmp_path):
    """An untrained model saved, and load() marked it trained: random encoders embedded cells silently."""
    VennCell.setup_mudata(tiny_mdata)
    VennCell(tiny_mdata, **TINY).save(tmp_path / "m")
    loaded = VennCell.load(tmp_path / "m")
    assert not loaded.is_trained
    with pytest.raises(VennCellInputError, match="not trained"):
        loaded.get_latent_representation(tiny_mdata)


def test_saving_under_a_file_names_the_file(trained_tiny, tmp_path):
    """model.save("afile/model") said only "File exists" (mkdir's message)."""
    model, _, _ = trained_tiny
    (tmp_path / "afile").write_text("")
    with pytest.raises(VennCellInputError, match="afile is a file, not a folder"):
        model.save(tmp_path / "afile" / "model")


def test_a_constant_marker_says_so_and_every_table_has_a_note_column(trained_tiny, tmp_path):
    """A constant marker's note read "too few cells measured in every modality, or a constant marker"; the markers
    table lacked its `note` column when no marker had a note (code reading it broke); and the HTML report of
    constant markers alone failed with pandas' KeyError (venncell-report's exit code 1)."""
    from venncell.analysis.report import write_report

    model, mdata, _ = trained_tiny
    mdata.obs["flat"] = 1.0
    try:
        res = model.attribution(["flat", "cluster"], progress=False, n_boot=20, n_perm=20)
        only = model.attribution(["cluster"], progress=False, n_boot=20, n_perm=20)
        alone = model.attribution(["flat"], progress=False, n_boot=20, n_perm=20)
    finally:
        del mdata.obs["flat"]
    html = write_report(alone, tmp_path / "report.html", umap=False).read_text()
    assert "No marker has held-out scores to draw" in html
    flat = res.markers.set_index("marker").loc["flat"]
    assert (
        flat["verdict"] == "not captured"
        and flat["note"] == "a constant marker: nothing to predict"
    )
    assert "note" in only.markers.columns and (only.markers["note"] == "").all()


def test_result_tables_under_a_file_name_the_file(trained_tiny, tmp_path):
    """AttributionResult.write under a file raised a bare NotADirectoryError (model.save named the file)."""
    model, _, _ = trained_tiny
    res = model.attribution([], progress=False)
    (tmp_path / "afile").write_text("")
    for out in (tmp_path / "afile", tmp_path / "afile" / "sub"):
        with pytest.raises(
            VennCellInputError, match="attribution tables.*afile is a file, not a folder"
        ):
            res.write(out)
    # the HTML report makes its folder (a bare FileNotFoundError) and names a file in the way
    from venncell.analysis.report import write_report

    assert write_report(res, tmp_path / "new" / "report.html", umap=False).is_file()
    with pytest.raises(VennCellInputError, match="the report.*afile is a file, not a folder"):
        write_report(res, tmp_path / "afile" / "report.html", umap=False)


def test_saving_never_empties_a_folder_that_holds_more_than_a_model(trained_tiny, tmp_path):
    """model.save("results") replaced the folder: the user's notes and figures in it were deleted, no warning."""
    from venncell.model import MODEL_FILES

    model, _, _ = trained_tiny
    results = tmp_path / "results"
    (results / "figures").mkdir(parents=True)
    (results / "notes.txt").write_text("mine")
    with pytest.raises(
        VennCellInputError, match="holds other files \\(figures, notes.txt\\).*results/model"
    ):
        model.save(results)
    assert (results / "notes.txt").read_text() == "mine" and (results / "figures").is_dir()
    with pytest.raises(VennCellInputError, match="notes.txt: it is a file, not a folder"):
        model.save(results / "notes.txt")
    # a model saved before is replaced, and an empty folder is used
    model.save(results / "model")
    model.save(results / "model")
    (tmp_path / "empty").mkdir()
    model.save(tmp_path / "empty")
    assert {p.name for p in (tmp_path / "empty").iterdir()} == {
        p.name for p in (results / "model").iterdir()
    }
    assert not list(tmp_path.glob(".*"))  # no temporary or old folder left
    # a rename that fails after the earlier model was moved aside: it goes back (it was left hidden as .model.old)
    import venncell.model as vm

    calls, os_replace = [], vm.os.replace

    def flaky(a, b):
        calls.append(a)
        if len(calls) == 2:
            raise PermissionError(13, "Permission denied")
        return os_replace(a, b)

    before = (results / "model" / "model.pt").read_bytes()
    vm.os.replace = flaky
    try:
        with pytest.raises(VennCellInputError, match="Permission denied"):
            model.save(results / "model")
    finally:
        vm.os.replace = os_replace
    assert (results / "model" / "model.pt").read_bytes() == before
    assert not [p.name for p in results.iterdir() if p.name.startswith(".")]
    # the current folder, and a link to a model folder (".": no name to put the temporary folder beside; a link
    # was renamed away and a stale one then crashed the next save)
    import os

    here = os.getcwd()
    try:
        os.chdir(tmp_path / "empty")
        for where in (".", tmp_path):
            with pytest.raises(
                VennCellInputError, match="is the current folder.*model.save\\('model'\\)"
            ):
                model.save(where)
    finally:
        os.chdir(here)
    assert sorted(p.name for p in (tmp_path / "empty").iterdir()) == sorted(MODEL_FILES)
    (tmp_path / "link").symlink_to(tmp_path / "empty")
    for _ in range(2):
        model.save(tmp_path / "link")
    assert (tmp_path / "link").is_symlink() and VennCell.load(tmp_path / "link").is_trained
    assert not [p for p in tmp_path.glob(".*")] and sorted(
        p.name for p in (tmp_path / "empty").iterdir()
    ) == sorted(MODEL_FILES)


def test_a_tampered_model_file_is_a_clear_error(trained_tiny, tmp_path):
    """torch's unpickling error advised weights_only=False (unsafe)."""
    model, _, _ = trained_tiny
    model.save(tmp_path / "m")
    (tmp_path / "m" / "model.pt").write_bytes(b"PK\x03\x04 not a model")
    with pytest.raises(VennCellInputError, match="model.pt") as err:
        VennCell.load(tmp_path / "m")
    assert "weights_only" not in str(err.value)


def test_predicting_from_no_source_is_refused(trained_tiny):
    """predict source=[] predicted a modality from itself."""
    model, mdata, _ = trained_tiny
    with pytest.raises(VennCellInputError, match="source is empty"):
        model.predict_modality(mdata, source=[], target="protein")


@pytest.mark.parametrize(
    "call",
    [
        lambda m, d: VennCell(None),
        lambda m, d: VennCell(d.mod["rna"]),
        lambda m, d: m.get_latent_representation(block="private:nope"),
        lambda m, d: m.get_latent_representation(modalities="rna"),
        lambda m, d: m.get_latent_representation(d.mod["rna"]),
        lambda m, d: m.predict_modality(d, source=["rna"], target="nope"),
        lambda m, d: m.predict_modality(d, source=["rna"], target="protein", scale="log"),
        lambda m, d: m.train(stage1_epochs=1, unknown_option=3),
        lambda m, d: VennCell.load("/nonexistent/model"),
        lambda m, d: VennCell.setup_mudata(d, modalities=3),
        lambda m, d: VennCell.setup_mudata(d, modalities={"rna": 5, "protein": "protein"}),
    ],
    ids=[
        "no-data",
        "anndata",
        "block",
        "modalities-str",
        "new-anndata",
        "target",
        "scale",
        "train-kwarg",
        "load",
        "setup-type",
        "setup-entry",
    ],
)
def test_api_misuse_is_a_venncell_error(trained_tiny, call):
    """Bare TypeError / KeyError / AttributeError instead of VennCellInputError with a fix."""
    model, mdata, _ = trained_tiny
    with pytest.raises(VennCellInputError):
        call(model, mdata.copy())


# ------------------------------------------------------------------------------------------ weak spots
def test_channels_last_images_are_named():
    """Channels-last crops were accepted without a word."""
    from venncell.data.validate import check_image_array

    with pytest.raises(VennCellInputError, match="channels-last"):
        check_image_array("dapi", np.zeros((10, 34, 34, 3), dtype=np.float32), None, 10)
    # picking channels did not switch the check off: channels=[0] read a 34 x 3 strip per "channel"
    with pytest.raises(VennCellInputError, match="channels-last"):
        check_image_array("dapi", np.zeros((10, 34, 34, 3), dtype=np.float32), [0], 10)
    check_image_array("dapi", np.zeros((10, 3, 34, 34), dtype=np.float32), [0], 10)


def test_object_dtype_is_a_clear_error():
    x = _counts().astype(object)
    mdata = _pair(_counts(), x)
    VennCell.setup_mudata(
        mdata, {"rna": "rna", "protein": {"kind": "protein", "likelihood": "nb"}}
    )
    with pytest.raises(VennCellInputError, match="protein.*non-numeric"):
        VennCell(mdata, **TINY)


def test_an_absent_gpu_is_a_clear_error(tiny_mdata, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    VennCell.setup_mudata(tiny_mdata)
    with pytest.raises(VennCellInputError, match="no CUDA GPU"):
        VennCell(tiny_mdata, **TINY).train(run_dir=tmp_path, accelerator="gpu", **QUICK)


def test_an_unwritable_run_folder_is_one_line(tmp_path, helpers):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    res = helpers.run_cli(
        ["venncell-train", *helpers.TINY_CLI, f"hydra.run.dir={blocker / 'run'}"], ok=False
    )
    assert res.returncode != 0 and "Traceback" not in res.stderr, res.stderr[-2000:]


def test_metrics_csv_keeps_every_epoch_after_a_kill(tmp_path, helpers):
    """One epoch's row was lost from metrics.csv after a kill: the log is flushed with every checkpoint."""
    run = tmp_path / "run"
    args = [
        "venncell-train",
        *helpers.TINY_CLI,
        "trainer.stage1_epochs=60",
        "trainer.stage2_epochs=2",
        f"hydra.run.dir={run}",
    ]
    proc = subprocess.Popen(
        args,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    deadline = time.time() + 300
    folder = run / "checkpoints" / "stage1"
    while len(list(folder.glob("epoch*.ckpt"))) < 1 and time.time() < deadline:
        time.sleep(0.1)
    time.sleep(1.0)
    proc.kill()
    proc.wait()
    ckpt = torch.load(folder / "last.ckpt", map_location="cpu", weights_only=False)
    done = ckpt["epoch"] + 1  # epochs the checkpoint covers
    rows = pd.read_csv(run / "logs" / "stage1" / "metrics.csv")
    logged = set(rows.dropna(subset=["stage1/train/loss_epoch"])["epoch"].astype(int))
    assert set(range(done)) <= logged, (done, sorted(logged))


def test_a_new_modality_under_another_name_is_named_not_dropped_silently(trained_tiny):
    """New data whose protein is called 'adt' would be embedded from RNA alone without a word."""
    model, mdata, _ = trained_tiny
    new = md.MuData({"rna": mdata["rna"][:30].copy(), "adt": mdata["protein"][:30].copy()})
    with pytest.warns(VennCellInputWarning, match=r"lack.*'protein'.*\['adt'\]") as caught:
        z = model.get_latent_representation(new, block="private:protein")
    assert np.isnan(z).all()
    assert len(caught) == 1 and caught[0].filename == __file__  # once, at the user's line
    new.mod["protein"] = new.mod.pop("adt")  # the fix the warning gives
    new.update()
    with warnings.catch_warnings():
        warnings.simplefilter("error", VennCellInputWarning)
        z = model.get_latent_representation(new, block="private:protein")
        # a modality beside all of the model's (one it was not trained on) is left out quietly
        extra = md.MuData(
            {**{m: mdata[m][:30].copy() for m in mdata.mod}, "hto": mdata["rna"][:30].copy()}
        )
        model.get_latent_representation(extra)
    assert np.isfinite(z).all()


def test_write_latents_refuses_modalities_the_model_lacks(trained_tiny):
    """It once wrote an all-NaN shared latent (and venncell-embed exited 0)."""
    model, mdata, _ = trained_tiny
    new = mdata[:20].copy()
    for key in [
        k for k in new.obsm if k.startswith("X_venn")
    ]:  # other tests write to the shared fixture
        del new.obsm[key]
    with pytest.raises(VennCellInputError, match="hic"):
        model.write_latents(new, modalities=["hic"])
    assert not [k for k in new.obsm if k.startswith("X_venn")]


def test_too_few_permutations_for_alpha_are_refused(trained_tiny):
    """With n_perm=10 no p-value can fall below 0.05: every marker would read 'not captured'."""
    model, _, _ = trained_tiny
    with pytest.raises(VennCellInputError, match="n_perm >= 20, or the default 100"):
        model.attribution(["cluster"], n_perm=10, progress=False)
    with pytest.raises(VennCellInputError, match=r"n_perm >= 200\.$"):
        model.attribution(["cluster"], alpha=0.005, progress=False)
    with pytest.raises(VennCellInputError, match="alpha must be above 0"):
        model.attribution(["cluster"], alpha=0, progress=False)


def test_analysis_and_refine_settings_are_checked_before_any_work(trained_tiny, tmp_path):
    """A NaN ridge gave NaN scores the smallest p-value (a "shared" verdict) and a half-written folder; knn_k=0,
    negative seeds and batch_size=0 failed deep in numpy, sklearn or Lightning; 5 cells made a plan."""
    model, mdata, _ = trained_tiny
    for bad, match in (
        ({"ridge_alpha": float("nan")}, "ridge_alpha=nan must be a finite number"),
        ({"ridge_alpha": 0.0}, "ridge_alpha must be above 0"),
        ({"knn_k": 0}, "knn_k=0 is out of range"),
        ({"seed": -1}, "seed=-1 is out of range"),
        ({"max_cells": -3}, "max_cells=-3 is out of range"),
        ({"n_boot": 2.5}, "n_boot=2.5 must be an integer"),
        # no gain's p-value could pass (they read 0 with every draw above 0)
        (
            {"n_boot": 10},
            r"n_boot=10 bootstrap draws cannot give a gain's p-value below alpha=0.05.*n_boot >= 20",
        ),
    ):
        with pytest.raises(VennCellInputError, match=match):
            model.attribution(["cluster"], progress=False, **bad)
    for bad, match in (
        ({"seed": -1}, "seed=-1 is out of range"),
        ({"max_cells": 5}, "max_cells=5: at least 10 cells"),
    ):
        with pytest.raises(VennCellInputError, match=match):
            model.plan_measurements(**bad)
    for bad, match in (
        ({"seed": -1}, r"refine\(seed=...\)=-1 is out of range"),
        ({"batch_size": 0}, "batch_size=...\\)=0 is out of range"),
        ({"lr_latent": float("nan")}, "lr_latent=...\\)=nan must be a finite number"),
    ):
        with pytest.raises(VennCellInputError, match=match):
            model.refine(mdata, epochs=1, **bad)
    # a result whose JSON cannot be written leaves no file behind
    res = model.attribution(["cluster"], n_boot=20, progress=False, write_var=False)
    res.config.ridge_alpha = float("nan")
    with pytest.raises(ValueError):
        res.write(tmp_path / "out")
    assert not list((tmp_path / "out").glob("*"))


def test_a_marker_of_an_unknown_modality_says_so(trained_tiny):
    model, _, _ = trained_tiny
    with pytest.raises(VennCellInputError, match="'hic' is not a modality of the model"):
        model.attribution(["hic:foo"], progress=False)
    # a known feature under a wrong prefix is suggested under its own modality, whatever its case (the string
    # match suggested rna features for adt:CD4)
    feature = model.mdata["protein"].var_names[3]
    with pytest.raises(VennCellInputError, match=rf"Did you mean \['protein:{feature}'\]"):
        model.attribution([f"adt:{feature.upper()}"], progress=False)
    with pytest.raises(VennCellInputError, match=rf"Did you mean \['protein:{feature}'\]"):
        model.attribution([feature.upper()], progress=False)


def test_a_protein_marker_named_without_its_tag_is_suggested_under_its_own_modality():
    """'protein:CD4' suggested rna:CD4 where the protein is CD4_TotalSeqB (the usual CITE-seq naming): following
    the hint swapped the protein for its mRNA."""
    from types import SimpleNamespace

    from venncell.analysis.markers import _unknown_marker_message

    def spec(features, kind):
        return SimpleNamespace(features=features, n_features=len(features), kind=kind)

    specs = {
        "rna": spec(["CD4", "CD45", "MS4A1"], "rna"),
        "protein": spec(["CD45RA_TotalSeqB", "CD4_TotalSeqB", "CD8a_TotalSeqB"], "protein"),
    }
    mdata = SimpleNamespace(obs=pd.DataFrame(columns=["cell_type"]))
    assert "Did you mean ['protein:CD4_TotalSeqB']" in _unknown_marker_message(
        "protein:CD4", mdata, specs
    )
    assert "Did you mean ['protein:CD8a_TotalSeqB']" in _unknown_marker_message(
        "protein:cd8a", mdata, specs
    )
    # a name only another modality holds is still suggested there
    assert "Did you mean ['rna:MS4A1']" in _unknown_marker_message("protein:MS4A1", mdata, specs)
    # the MuData's own columns are listed before the many pulled up from the modalities (they were cut off)
    pulled = [f"rna:qc_{i}" for i in range(20)]
    mdata = SimpleNamespace(obs=pd.DataFrame(columns=[*pulled, "cell_type", "batch"]))
    msg = _unknown_marker_message("celltype", mdata, specs)
    assert "(cell_type, batch, rna:qc_0," in msg and "rna:qc_19" not in msg.split("Did you")[0], (
        msg
    )


def test_an_image_channel_named_twice_is_refused():
    from venncell.data.validate import check_image_array

    with pytest.raises(VennCellInputError, match="name a channel twice"):
        check_image_array("dapi", np.zeros((10, 3, 8, 8), dtype=np.float32), [0, 0], 10)


def test_cells_with_none_of_the_models_modalities_are_named():
    """Registering [protein, atac] on data where some cells have RNA only kept those cells without a word; their
    latents came out NaN."""
    import re

    full, _ = make_synthetic(n_cells=60, modalities={"rna": 20, "protein": 10, "atac": 20}, seed=0)
    names = full.obs_names
    mdata = md.MuData(
        {
            "rna": full["rna"].copy(),
            "protein": full["protein"][names[:40]].copy(),
            "atac": full["atac"][names[10:45]].copy(),
        }
    )
    VennCell.setup_mudata(mdata)
    VennCell(mdata, seed=0)  # every cell has a modality: no warning
    VennCell.setup_mudata(mdata, modalities=["protein", "atac"])
    with pytest.warns(
        UserWarning, match=r"15 of 60 cells have none of the model's modalities"
    ) as rec:
        VennCell(mdata, seed=0)
    fix = re.search(r"Leave them out: `([^`]+)`", str(rec[0].message)).group(1)
    scope = {"mdata": mdata, "np": np}
    exec(fix, scope)  # the fix it gives works as written
    assert list(scope["mdata"].obs_names) == list(names[:45])


def test_a_failed_write_leaves_no_file_and_names_the_entry(tmp_path):
    """An .uns value HDF5 cannot hold used to fail deep in anndata and leave the hidden temporary file behind."""
    from venncell.data.files import atomic_write

    adata = ad.AnnData(np.zeros((3, 2), dtype=np.float32))
    adata.uns["bad"] = {"x": object()}
    with pytest.raises(VennCellInputError, match="x_test.h5ad.*bad.*write again"):
        atomic_write(adata, tmp_path / "x_test.h5ad")
    assert list(tmp_path.iterdir()) == []


def test_a_failed_text_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    """metrics.json, the attribution tables and the report were written through a temporary file that a failed
    write left behind beside the run's outputs."""
    from venncell.data.files import atomic_write_text

    path = atomic_write_text(tmp_path / "metrics.json", "old")
    with pytest.raises(UnicodeEncodeError):
        atomic_write_text(path, "new \ud800")  # a lone surrogate UTF-8 cannot encode
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def _image_pair(img):
    names = [f"c{i}" for i in range(len(img))]
    mods = {}
    for m in ("a", "b"):
        mods[m] = ad.AnnData(
            np.zeros((len(img), 0), dtype=np.float32), obs=pd.DataFrame(index=names)
        )
        mods[m].obsm["img"] = img
    mdata = md.MuData(mods)
    VennCell.setup_mudata(
        mdata,
        {
            "a": {"kind": "image", "obsm_key": "img"},
            "b": {"kind": "image", "obsm_key": "img", "channels": [1]},
        },
    )
    return mdata


def test_a_constant_image_channel_and_a_wrong_channel_count_are_named(helpers):
    """An all-zero channel (an empty or wrongly chosen one) trained into NaN latents, reported as a learning-rate
    problem; new crops with another channel count were told to crop or resize."""
    img, _ = helpers.make_images(n=80, seed=0)
    flat = img.copy()
    flat[:, 1] = 0.0
    with pytest.raises(VennCellInputError, match=r"Modality 'a': channel\(s\) \[1\].*one value"):
        VennCell(_image_pair(flat))
    model = VennCell(_image_pair(img), **helpers.IMAGE_MODEL)
    model.train(**helpers.FAST)
    query = ad.AnnData(
        np.zeros((10, 0), dtype=np.float32), obs=pd.DataFrame(index=[f"q{i}" for i in range(10)])
    )
    query.obsm["img"] = img[:10, :1]
    with pytest.raises(VennCellInputError, match=r"Give the 2 channel\(s\)"):
        model.get_latent_representation(md.MuData({"a": query}), modalities=["a"])
    # crops of another intensity scale (another bit depth) embedded without a word
    query = ad.AnnData(
        np.zeros((20, 0), dtype=np.float32), obs=pd.DataFrame(index=[f"q{i}" for i in range(20)])
    )
    query.obsm["img"] = img[20:40]
    with warnings.catch_warnings():
        warnings.simplefilter("error", VennCellInputWarning)
        model.get_latent_representation(md.MuData({"a": query}), modalities=["a"])
    query.obsm["img"] = img[20:40] / 256
    with pytest.warns(
        VennCellInputWarning, match="'a': these crops' intensities are on another scale"
    ):
        model.get_latent_representation(md.MuData({"a": query}), modalities=["a"])


def test_renamed_modalities_are_named(trained_tiny):
    """Modalities renamed in the query gave 'None of the registered modalities has a cell' without a name."""
    model, mdata, _ = trained_tiny
    query = md.MuData({f"my_{m}": mdata[m].copy() for m in mdata.mod})
    with pytest.raises(
        VennCellInputError, match=r"\(rna, protein, atac\).*\['my_rna', 'my_protein', 'my_atac'\]"
    ):
        model.get_latent_representation(query)


def test_a_region_of_modalities_never_measured_together_is_named():
    """Protein and ATAC never on the same cell: the protein+atac region trained without a word, and attribution
    then crashed in scipy (ZeroDivisionError) after warning that it probed 0 cells."""
    full, _ = make_synthetic(
        n_cells=200, modalities={"rna": 40, "protein": 10, "atac": 40}, seed=3
    )
    a, b = full.obs_names[:100], full.obs_names[100:]
    mdata = md.MuData(
        {
            "rna": full["rna"].copy(),
            "protein": full["protein"][a].copy(),
            "atac": full["atac"][b].copy(),
        }
    )
    mdata.obs["cluster"] = full.obs["cluster"].reindex(mdata.obs_names).to_numpy()
    VennCell.setup_mudata(mdata)
    with pytest.warns(VennCellInputWarning, match=r"Venn region 'atac\+protein': only 0 cell"):
        model = VennCell(mdata, venn_regions="pairs", shared_dim=4, private_dim=2, hidden=32)
    model.train(stage1_epochs=2, stage2_epochs=1, batch_size=64, progress_bar="none")
    with pytest.raises(VennCellInputError, match="only 0 of 200 are.*markers=\\[\\]"):
        model.attribution(["cluster"], n_boot=20, progress=False, write_var=False)
    result = model.attribution([], n_boot=20, progress=False, write_var=False)
    assert set(result.features) == {"rna", "protein", "atac"}


def test_prediction_from_a_modality_some_cells_lack_gives_nan_rows(tmp_path, helpers):
    """predict_modality refused the whole call when some cells lacked the source, where
    get_latent_representation(modalities=...) gives NaN rows; and a model loaded without its data told train() to
    'pass new cells as mdata=...', which train does not take."""
    full, _ = make_synthetic(n_cells=160, modalities={"rna": 30, "protein": 10}, seed=0)
    rna_only, both = full.obs_names[:40], full.obs_names[40:]
    mdata = md.MuData({"rna": full["rna"].copy(), "protein": full["protein"][both].copy()})
    VennCell.setup_mudata(mdata)
    model = VennCell(mdata, seed=0)
    model.train(**helpers.FAST)
    with pytest.warns(VennCellInputWarning, match="40 of 160 cell"):
        pred = model.predict_modality(source=["protein"], target="rna")
    lacking = mdata.obs_names.isin(rna_only)
    assert np.isnan(pred[lacking]).all() and np.isfinite(pred[~lacking]).all()
    model.save(tmp_path / "m")
    with pytest.raises(
        VennCellInputError, match=r"needed to train\. Load it with its training data"
    ):
        VennCell.load(tmp_path / "m").train(**helpers.FAST)


def test_a_cut_list_of_columns_says_how_many_more():
    """A missing batch_key listed the first 10 .obs columns as if they were all of them."""
    mdata, _ = make_synthetic(n_cells=40, modalities={"rna": 10, "protein": 5}, seed=0)
    for i in range(12):
        mdata.obs[f"col{i}"] = i
    with pytest.raises(VennCellInputError, match=r"col8, \.\.\. \(\d+ more\)"):
        VennCell.setup_mudata(mdata, batch_key="batch")


def test_new_cells_on_another_scale_than_training_are_named(helpers):
    """Raw counts given to a model trained on log-normalised values (Gaussian) were embedded without a word."""
    import scipy.sparse as sparse

    mdata, _ = make_synthetic(n_cells=160, modalities={"rna": 30, "protein": 10}, seed=0)
    counts = mdata["rna"].X.copy()
    mdata["rna"].X = sparse.csr_matrix(np.log1p(counts.toarray()))
    VennCell.setup_mudata(
        mdata, {"rna": {"kind": "rna", "likelihood": "gaussian"}, "protein": "protein"}
    )
    model = VennCell(mdata, seed=0)
    model.train(**helpers.FAST)
    same = mdata.copy()
    with warnings.catch_warnings():
        warnings.simplefilter("error", VennCellInputWarning)
        model.get_latent_representation(same[:60].copy())  # a subset of the same scale: no warning
    raw = mdata.copy()
    raw["rna"].X = counts
    with pytest.warns(VennCellInputWarning, match="'rna': these cells' values lie a median"):
        model.get_latent_representation(raw)


def test_a_batch_never_seen_is_embedded_with_a_warning_and_predicted_batch_neutral(helpers):
    """An unseen batch label refused the embedding too, though the encoders do not read the batch (the latents
    were the same under any training label); prediction refused it, and now predicts batch-neutral (the mean of
    its predictions as each training batch), with a warning; cell weights, which need the cells' own batch
    effect, still refuse it; refinement learns it (``test_refine.py``)."""
    mdata, _ = make_synthetic(
        n_cells=200, modalities={"rna": 30, "protein": 10}, n_batches=2, seed=0
    )
    VennCell.setup_mudata(mdata, batch_key="batch")
    model = VennCell(mdata, seed=0)
    model.train(**helpers.FAST)
    query = mdata[:50].copy()
    known = model.get_latent_representation(query, source="encoder")
    as_batch = {}
    for b in ("b0", "b1"):
        query.obs["batch"] = b
        as_batch[b] = model.predict_modality(query, source=["rna"], target="protein")
    neutral = (as_batch["b0"] + as_batch["b1"]) / 2
    assert not np.allclose(
        as_batch["b0"], as_batch["b1"]
    )  # the batches differ, so the mean means something
    query.obs["batch"] = "a new lab"
    with pytest.warns(
        VennCellInputWarning,
        match="batches \\['a new lab'\\] were not in training.*refine_epochs=N",
    ):
        z = model.get_latent_representation(query)
    np.testing.assert_array_equal(z, known)
    with pytest.warns(VennCellInputWarning, match="never saw: their 'protein'.*batch-neutral"):
        pred = model.predict_modality(query, source=["rna"], target="protein")
    np.testing.assert_allclose(pred, neutral, rtol=1e-5, atol=1e-7)
    with pytest.raises(
        VennCellInputError, match="not seen in training \\(it knew 'b0', 'b1'\\).*reads them"
    ):
        model.cell_modality_weights(query, refine_epochs=2)
    # no batch column at all: embedded and predicted the same way (it was refused, unlike an unknown label)
    del query.obs["batch"]
    with pytest.warns(VennCellInputWarning, match="'batch' is not a column of mdata.obs"):
        np.testing.assert_array_equal(model.get_latent_representation(query), known)
    with pytest.warns(VennCellInputWarning, match="no 'batch' column.*batch-neutral"):
        pred = model.predict_modality(query, source=["rna"], target="protein")
    np.testing.assert_allclose(pred, neutral, rtol=1e-5, atol=1e-7)
    # refinement without the column: refused, with a new label as the fix and no embedding warning first
    with warnings.catch_warnings():
        warnings.simplefilter("error", VennCellInputWarning)
        with pytest.raises(VennCellInputError, match="label of their own.*'query'"):
            model.get_latent_representation(query, refine_epochs=2)
    # the column only in a modality's .obs: the fix names that modality, not a placeholder
    rna = query["rna"].copy()
    rna.obs["batch"] = mdata.obs["batch"].to_numpy()[:50]
    with pytest.raises(VennCellInputError, match=r"mdata\['rna'\]\.obs\['batch'\]"):
        model.get_latent_representation(md.MuData({"rna": rna}), refine_epochs=2)
    with pytest.warns(VennCellInputWarning, match=r"batch-neutral") as said:
        model.predict_modality(md.MuData({"rna": rna}), source=["rna"], target="protein")
    assert any("mdata['rna'].obs['batch']" in str(w.message) for w in said), [
        str(w.message) for w in said
    ]


def test_a_modality_changed_without_update_is_refused_not_mispaired(helpers):
    """A modality reordered (or filtered) after the MuData was built, without mdata.update(), was paired with
    the wrong cells through mdata.obsmap: training and embedding went on with scrambled cells (or an IndexError)."""
    mdata, _ = make_synthetic(n_cells=120, modalities={"rna": 30, "protein": 10}, seed=0)
    VennCell.setup_mudata(mdata)
    model = VennCell(mdata, **TINY)
    model.train(**helpers.FAST)
    for change in (
        lambda m: m.mod.__setitem__(
            "rna", m["rna"][np.random.default_rng(5).permutation(m.n_obs)].copy()
        ),
        lambda m: m.mod.__setitem__("protein", m["protein"][:30].copy()),
    ):
        changed = mdata.copy()
        change(changed)
        with pytest.raises(VennCellInputError, match="no longer match.*mdata.update()"):
            model.get_latent_representation(changed)
        with pytest.raises(VennCellInputError, match="no longer match.*mdata.update()"):
            VennCell(changed, **TINY)
        changed.update()  # the fix it gives: then the cells pair by name again
        model.get_latent_representation(changed)


def test_resume_with_another_chunk_size_is_refused(tmp_path, helpers):
    """The chunk size decides which batches are drawn; a run resumed with another one mixed two runs silently."""
    mdata, _ = make_synthetic(n_cells=150, modalities={"rna": 30, "protein": 10}, seed=0)
    VennCell.setup_mudata(mdata)
    VennCell(mdata, chunk_size=64, **TINY).train(run_dir=tmp_path, **helpers.FAST)
    VennCell(mdata, chunk_size=64, **TINY).check_resume(tmp_path, **helpers.FAST)  # the same: fine
    for other in (32, None):
        with pytest.raises(VennCellInputError, match="chunk size"):
            VennCell(mdata, chunk_size=other, **TINY).check_resume(tmp_path, **helpers.FAST)


def test_several_devices_train_with_ddp_and_other_strategies_are_refused():
    """devices=2 with the default strategy crashed inside Lightning ("parameters that were not used"): Lightning's
    own choice refuses the unused parameters a rank's batch leaves; "ddp_spawn" failed the same way."""
    from venncell.train.config import TrainConfig

    assert TrainConfig(devices=2).strategy == "ddp" and TrainConfig(num_nodes=2).strategy == "ddp"
    assert (
        TrainConfig(devices=1).strategy == "auto" and TrainConfig(devices=[0, 1]).strategy == "ddp"
    )
    with pytest.raises(
        VennCellInputError, match="trainer.strategy='ddp_spawn' is not supported.*'ddp'"
    ):
        TrainConfig(strategy="ddp_spawn")


def test_trainer_keywords_that_would_override_the_schedule_are_refused():
    """trainer_kwargs={"max_epochs": 5} trained both stages 5 epochs whatever stage1_epochs said, and an unknown
    keyword reached Lightning's own TypeError."""
    from venncell.train.config import TrainConfig

    with pytest.raises(VennCellInputError, match=r"trainer_kwargs\['max_epochs'\].*stage1_epochs"):
        TrainConfig(trainer_kwargs={"max_epochs": 5})
    with pytest.raises(VennCellInputError, match=r"trainer_kwargs\['default_root_dir'\].*run_dir"):
        TrainConfig(trainer_kwargs={"default_root_dir": "x"})
    with pytest.raises(
        VennCellInputError, match=r"trainer_kwargs\['precision'\].*train\(precision="
    ):
        TrainConfig(trainer_kwargs={"precision": "16-mixed"})
    with pytest.raises(
        VennCellInputError, match=r"\['gradient_clip_vall'\] are not lightning.Trainer"
    ):
        TrainConfig(trainer_kwargs={"gradient_clip_vall": 1.0})
    # Lightning's own refusals under manual optimisation advised "switch to automatic optimization"
    with pytest.raises(VennCellInputError, match=r"gradient_clip_val'\].*set grad_clip instead"):
        TrainConfig(trainer_kwargs={"gradient_clip_val": 1.0})
    with pytest.raises(VennCellInputError, match=r"accumulate_grad_batches'\].*leave it out"):
        TrainConfig(trainer_kwargs={"accumulate_grad_batches": 2})
    with pytest.raises(VennCellInputError, match="must be a dict"):
        TrainConfig(trainer_kwargs=["logger"])
    TrainConfig(trainer_kwargs={"deterministic": True, "logger": False, "callbacks": []})


def test_training_cells_with_reordered_genes_warn_once(helpers):
    """Training cells handed back with their genes in another order were read twice (once to check they are the
    training cells, once to embed them), and every warning about how they are read came twice."""
    mdata, _ = make_synthetic(n_cells=150, modalities={"rna": 30, "protein": 10}, seed=0)
    VennCell.setup_mudata(mdata)
    model = VennCell(mdata, **TINY)
    model.train(**helpers.FAST)
    sub = mdata[:40].copy()
    again = md.MuData({"rna": sub["rna"][:, ::-1].copy(), "protein": sub["protein"].copy()})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        z = model.get_latent_representation(again)
    said = [w for w in caught if "features reordered" in str(w.message)]
    assert len(said) == 1, [str(w.message) for w in caught]
    np.testing.assert_allclose(z, model.get_latent_representation(sub), rtol=1e-5, atol=1e-6)
