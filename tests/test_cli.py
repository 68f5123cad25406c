"""The Hydra apps end to end, as a user runs them (real subprocesses of the console scripts)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import mudata as md
import numpy as np
import pytest

from conftest import shared_dataset

TINY = ["trainer=fast", "data.n_cells=200", "data.modalities={rna:60,protein:20,atac:60}",
        "model.hidden=32", "model.encoder_hidden=32", "trainer.batch_size=64"]


def run(cmd: list[str], ok: bool = True) -> subprocess.CompletedProcess:
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if ok and res.returncode != 0:
        raise AssertionError(f"{cmd} failed ({res.returncode}):\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
    return res


@pytest.fixture(scope="module")
def train_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "run"
    run(["venncell-train", *TINY, f"hydra.run.dir={out}"])
    return out


def test_train_outputs(train_run):
    out = train_run
    mdata = md.read_h5mu(str(out / "venn.h5mu"))
    for key in ["X_venn_shared", "X_venn_private_rna", "X_venn_private_protein", "X_venn_private_atac",
                "X_venn_shared_stage1", "X_venn_private_rna_stage1"]:
        assert key in mdata.obsm, key
        assert mdata.obsm[key].shape[0] == 200
    assert mdata.obsm["X_venn_shared"].shape[1] == 8
    metrics = json.loads((out / "metrics.json").read_text())
    s2 = metrics["history"]["stage2"]
    assert "stage2/val/loss" in s2
    # the default sweep objective: the held-out reconstruction summed over the modalities (weights 1 here)
    per_modality = [s2[f"stage2/val/recon/{m}"] for m in ("rna", "protein", "atac")]
    assert s2["stage2/val/recon"] == pytest.approx(sum(per_modality), rel=1e-5)
    summary = metrics["recovery"]["encoder"]["knn"]["summary"]
    assert {"shared_recovery", "min_private_recovery", "leak_private_into_shared"} <= set(summary)
    assert (out / "checkpoints" / "stage1" / "last.ckpt").exists()
    assert (out / "checkpoints" / "stage2" / "last.ckpt").exists()
    assert (out / ".hydra" / "config.yaml").exists() and (out / "config_resolved.yaml").exists()
    assert (out / "logs" / "stage1" / "metrics.csv").exists()
    assert (out / "model" / "venncell.json").exists()


def test_embed_and_predict_cli(train_run, tmp_path):
    run(["venncell-embed", f"model_dir={train_run / 'model'}", f"data.path={train_run / 'venn.h5mu'}",
         "modalities=[rna]", f"hydra.run.dir={tmp_path / 'e'}"])
    emb = md.read_h5mu(str(tmp_path / "e" / "embedded.h5mu"))
    assert np.isfinite(emb.obsm["X_venn_shared"]).all()
    run(["venncell-predict", f"model_dir={train_run / 'model'}", f"data.path={train_run / 'venn.h5mu'}",
         "source=[rna]", "target=protein", f"hydra.run.dir={tmp_path / 'p'}"])
    pred = md.read_h5mu(str(tmp_path / "p" / "predicted.h5mu"))
    assert pred.obsm["X_venn_predicted_protein"].shape == (200, 20)


def test_multirun(tmp_path):
    run(["venncell-train", "-m", *TINY, "model.shared_dim=2,3", "evaluate_recovery=false", "logger=none",
         f"hydra.sweep.dir={tmp_path}"])
    dims = sorted(md.read_h5mu(str(tmp_path / str(i) / "venn.h5mu")).obsm["X_venn_shared"].shape[1] for i in (0, 1))
    assert dims == [2, 3]


def test_user_mudata(tmp_path):
    from venncell.data import make_synthetic

    mdata, _ = make_synthetic(n_cells=150, modalities={"rna": 40, "atac": 50}, seed=4)
    path = tmp_path / "mine.h5mu"
    mdata.write(str(path))
    run(["venncell-train", "data=mudata", f"data.path={path}", "trainer=fast", "logger=none",
         f"hydra.run.dir={tmp_path / 'out'}"])
    out = md.read_h5mu(str(tmp_path / "out" / "venn.h5mu"))
    assert set(out.mod) == {"rna", "atac"} and "X_venn_private_atac" in out.obsm


def test_muon_fixture_h5mu(tmp_path):
    path = shared_dataset("muon_pbmc_multiome_fixture") / "test_rna_atac.h5mu"
    run(["venncell-train", "data=mudata", f"data.path={path}", "trainer=fast", "logger=none",
         f"hydra.run.dir={tmp_path}"])
    assert (tmp_path / "venn.h5mu").exists()


def test_bad_path_is_one_clear_line(tmp_path):
    res = run(["venncell-train", "data=mudata", f"data.path={tmp_path / 'nope.h5mu'}", "trainer=fast",
               f"hydra.run.dir={tmp_path}"], ok=False)
    assert res.returncode == 2
    assert "venncell: error: data.path=" in res.stderr and "no such file" in res.stderr
    assert "Traceback" not in res.stderr
    # said once on the terminal, and recorded in the run's log (where sweep summaries read a failed job's error)
    assert (res.stdout + res.stderr).count("no such file") == 1
    assert "][ERROR] - data.path=" in (tmp_path / "cli.log").read_text()
    for unset in ([], ["data.path=null"]):
        res = run(["venncell-train", "data=mudata", "trainer=fast", f"hydra.run.dir={tmp_path / 'unset'}", *unset], ok=False)
        assert res.returncode == 2 and "venncell: error: data.path is not set" in res.stderr
        assert "Traceback" not in res.stderr
    trunc = tmp_path / "trunc.h5mu"
    trunc.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 100)
    res = run(["venncell-train", "data=mudata", f"data.path={trunc}", "trainer=fast", f"hydra.run.dir={tmp_path}"], ok=False)
    assert res.returncode == 2 and "unreadable or truncated" in res.stderr


def test_python_module_entry():
    res = run([sys.executable, "-c", "import venncell.cli as c; print(c.config_dir())"])
    assert Path(res.stdout.strip(), "config.yaml").exists()


def test_help_lists_only_what_each_command_takes():
    """venncell-train's --help lists the config groups; the other commands' list their own keys, not training's."""
    train = run(["venncell-train", "--help"]).stdout
    assert train.startswith("venncell-train:") and "trainer: " in train and "model: " in train
    for cmd, key in [("venncell-embed", "refine_epochs"), ("venncell-predict", "target"), ("venncell-report", "markers")]:
        out = run([cmd, "--help"]).stdout
        assert out.startswith(f"{cmd}:") and f"{key}:" in out, out
        assert "Configuration groups" not in out and "trainer: " not in out, out
