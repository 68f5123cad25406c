"""logger=wandb end to end, offline: both stages, the config, recovery and figures reach the W&B run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("wandb")

from venncell.cli.tracking import read_offline_run  # noqa: E402


@pytest.fixture(scope="module")
def wandb_run(tmp_path_factory, helpers) -> Path:
    out = tmp_path_factory.mktemp("wandb") / "run"
    (out / "figures").mkdir(parents=True)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(2, 2))
    ax.plot([0, 1], [1, 0])
    fig.savefig(out / "figures" / "umap_shared.png")
    plt.close(fig)
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("WANDB_")
    }  # offline must be the default
    res = subprocess.run(
        # report=true: its report.html's figures go to W&B (a report.html left from before is an old run's
        # output, which a fresh run removes)
        [
            "venncell-train",
            *helpers.TINY_CLI,
            "logger=wandb",
            "report=true",
            f"hydra.run.dir={out}",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    return out


def test_wandb_offline_run(wandb_run):
    runs = list((wandb_run / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, runs
    r = read_offline_run(runs[0])
    assert r["exit_code"] == 0
    # the resolved config
    assert r["config"]["model"]["shared_dim"] == 8 and r["config"]["data"]["n_cells"] == 200
    assert r["config"]["run_dir"] == str(wandb_run)

    hist = r["history"]
    keys = set().union(*hist)
    for m in ("rna", "protein", "atac"):  # per-modality losses of both stages
        assert any(k.startswith(f"stage1/train/recon/{m}") for k in keys), m
        assert f"stage1/val/recon/{m}" in keys and f"stage2/val/recon/{m}" in keys, m
    assert {
        "stage1/train/loss_epoch",
        "stage1/val/loss",
        "stage2/train/loss_epoch",
        "stage2/val/loss",
    } <= keys

    # stage 2's Lightning step restarts at 0: it has its own step axis and no row was dropped
    assert r["metrics"]["stage1/*"] == "stage1/step" and r["metrics"]["stage2/*"] == "stage2/step"
    steps = [h["_step"] for h in hist]
    assert steps == list(range(len(hist)))
    s1 = [h for h in hist if any(k.startswith("stage1/") for k in h)]
    s2 = [h for h in hist if any(k.startswith("stage2/") for k in h)]
    assert all("stage1/step" in h for h in s1) and all("stage2/step" in h for h in s2)
    assert s1[-1]["_step"] < s2[0]["_step"]
    assert min(h["stage2/step"] for h in s2) < max(h["stage1/step"] for h in s1)
    assert (
        len([h for h in s2 if "stage2/val/loss" in h]) >= 2
    )  # every stage-2 validation (fast: each epoch)

    # final values, recovery scores (ground truth exists), figures and files
    metrics = json.loads((wandb_run / "metrics.json").read_text())
    assert r["summary"]["stage2/val/loss"] == pytest.approx(
        metrics["history"]["stage2"]["stage2/val/loss"]
    )
    rec = metrics["recovery"]["encoder"]["knn"]["summary"]["shared_recovery"]
    assert r["summary"]["recovery/encoder/knn/shared_recovery"] == pytest.approx(rec)
    assert "recovery/stage1/linear/min_private_recovery" in r["summary"]
    img = next(h for h in hist if "figures/umap_shared._type" in h)
    assert img["figures/umap_shared._type"] == "image-file"
    assert (runs[0] / "files" / img["figures/umap_shared.path"]).exists()
    assert r["history"][-1]["report/figure_1._type"] == "image-file"
    for name in ("metrics.json", "config_resolved.yaml", "report.html"):
        assert (runs[0] / "files" / name).exists(), name
    # and the CSV logs every run has
    for stage in ("stage1", "stage2"):
        assert (wandb_run / "logs" / stage / "metrics.csv").exists(), stage


def test_csv_logger_does_not_import_wandb(tmp_path, monkeypatch):
    from omegaconf import OmegaConf

    from venncell.cli.tracking import finish_run
    from venncell.cli.train import make_loggers

    monkeypatch.setitem(sys.modules, "wandb", None)  # any `import wandb` now raises ImportError
    cfg = OmegaConf.create({"logger": {"kind": "csv"}})
    assert type(make_loggers(cfg, tmp_path)("stage1")).__name__ == "CSVLogger"
    finish_run(cfg, tmp_path, {"recovery": {}})
    with pytest.raises(ImportError):
        make_loggers(OmegaConf.create({"logger": {"kind": "wandb"}}), tmp_path)("stage1")


def test_progress_bar_columns_are_short_and_distinct():
    """Lightning cut both stage-1 loss names to "stage1/train/los…" and showed the logger's version as "v_num"."""
    from venncell.train.progress import _bar_metrics

    assert _bar_metrics(
        {"v_num": "age1", "stage1/train/loss_step": 1.0, "stage1/train/loss_epoch": 2.0}
    ) == {
        "loss": 1.0,
        "loss_epoch": 2.0,
    }
    assert _bar_metrics({"stage2/train/loss_step": 1.0, "stage2/val/loss": 3.0}) == {
        "loss": 1.0,
        "val/loss": 3.0,
    }


def test_trainers_skip_lightnings_banner(caplog):
    import logging

    from venncell.train.schedule import quiet_trainer

    with caplog.at_level(logging.INFO):
        quiet_trainer(
            accelerator="cpu", logger=False, enable_progress_bar=False, enable_checkpointing=False
        )
    assert not [
        r for r in caplog.records if "GPU available" in r.getMessage() or "Tip" in r.getMessage()
    ]
    assert (
        logging.getLogger("lightning.pytorch.utilities.rank_zero").level == logging.NOTSET
    )  # restored


def test_a_python_logger_gets_the_settings_and_every_term(tmp_path, tiny_mdata):
    """From Python, a W&B or CSV logger got no configuration, and the prior's term (KL) was in no log."""
    import pandas as pd
    import yaml
    from lightning.pytorch.loggers import CSVLogger

    from venncell import VennCell, VennCellInputError

    mdata = tiny_mdata.copy()
    VennCell.setup_mudata(mdata)
    model = VennCell(mdata, shared_dim=4, private_dim=2, hidden=32, encoder_hidden=32)
    with pytest.raises(VennCellInputError, match="pass a Lightning logger.*command line"):
        model.train(logger="wandb")
    model.train(
        stage1_epochs=2,
        stage2_epochs=1,
        progress_bar="none",
        logger=lambda stage: CSVLogger(tmp_path, name="logs", version=stage),
    )
    settings = yaml.safe_load((tmp_path / "logs" / "stage1" / "hparams.yaml").read_text())
    assert settings["model/shared_dim"] == 4 and settings["trainer/stage1_epochs"] == 2
    columns = pd.read_csv(tmp_path / "logs" / "stage1" / "metrics.csv").columns
    assert {"stage1/train/prior/shared_epoch", "stage1/train/prior/rna_epoch"} <= set(columns)
    assert "stage1/train/prior/shared_epoch" in model.epoch_history("stage1").columns


@pytest.mark.parametrize("bar", ["rich", "tqdm"])
def test_progress_bars_name_the_stage(tiny_mdata, tmp_path, capsys, bar):
    """Lightning's bars read "Epoch 0/N-1" in both stages, with no word of which stage and counted from 0 where the
    per-epoch lines count from 1: each bar names its stage and counts as the lines do."""
    from venncell import VennCell

    mdata = tiny_mdata.copy()
    VennCell.setup_mudata(mdata)
    model = VennCell(mdata, shared_dim=3, private_dim=2, hidden=32, encoder_hidden=32)
    model.train(run_dir=tmp_path, stage1_epochs=1, stage2_epochs=1, progress_bar=bar)
    shown = capsys.readouterr()
    text = shown.out + shown.err
    assert "Stage 1 epoch 1/1" in text and "Stage 2 epoch 1/1" in text
    assert "epoch 0" not in text
