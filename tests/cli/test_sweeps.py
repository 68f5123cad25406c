"""Sweeps: hparams_search=optuna end to end (2 tiny trials), failed jobs, and venncell-sweep-summary."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from venncell.cli.sweep import main

pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")

SEARCHED = {
    "model.shared_dim",
    "model.private_dim",
    "model.kl_weight",
    "trainer.lr_latent",
    "trainer.lr_network",
}


def read_csv(path: Path) -> list[dict]:
    with path.open() as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def optuna_sweep(tmp_path_factory, helpers) -> Path:
    out = tmp_path_factory.mktemp("optuna")
    helpers.run_cli(_optuna_command(helpers, out))
    return out


def _optuna_command(helpers, out: Path, *overrides: str) -> list[str]:
    """Two tiny Optuna trials into ``out``."""
    return [
        "venncell-train",
        "hparams_search=optuna",
        "hydra.sweeper.n_trials=2",
        *helpers.TINY_CLI,
        "trainer.stage1_epochs=2",
        "trainer.stage2_epochs=1",
        "logger=none",
        *overrides,
        f"hydra.sweep.dir={out}",
    ]


def _compose_optuna(*overrides: str):
    from hydra import compose, initialize_config_module

    from venncell.cli.store import register_configs

    register_configs()
    with initialize_config_module(config_module="venncell.conf", version_base="1.3"):
        return compose(
            "config", overrides=["hparams_search=optuna", *overrides], return_hydra_config=True
        )


def test_optuna_config_composes():
    cfg = _compose_optuna(
        "objective=shared_recovery", "hydra.sweeper.direction=maximize", "hydra.sweeper.n_trials=7"
    )
    sw = cfg.hydra.sweeper
    assert (
        sw._target_.endswith("OptunaSweeper") and sw.n_trials == 7 and sw.direction == "maximize"
    )
    assert set(sw.params) == SEARCHED
    assert cfg.objective == "shared_recovery" and str(cfg.hydra.mode).endswith("MULTIRUN")
    assert cfg.hydra.callbacks.sweep_summary._target_ == "venncell.cli.sweep.SweepSummaryCallback"


@pytest.mark.parametrize(
    "override, sampler",
    [
        ([], "TPESampler"),
        (["hydra/sweeper/sampler=random"], "RandomSampler"),
        (["hydra/sweeper/sampler=cmaes"], "CmaEsSampler"),
    ],
)
def test_every_sampler_the_optuna_config_names_composes(override, sampler):
    """conf/hparams_search/optuna.yaml's comment offers these samplers: each must compose with the file's settings."""
    cfg = _compose_optuna(*override)
    assert (
        cfg.hydra.sweeper.sampler._target_.endswith(sampler)
        and cfg.hydra.sweeper.sampler.seed == cfg.seed
    )


def test_optuna_sweep(optuna_sweep):
    d = optuna_sweep
    best = OmegaConf.load(d / "optimization_results.yaml")
    assert set(best.best_params) == SEARCHED
    runs = sorted(p for p in d.iterdir() if (p / ".hydra").is_dir())
    assert [p.name for p in runs] == ["0", "1"]
    losses = []
    for r in runs:
        overrides = {o.split("=", 1)[0] for o in OmegaConf.load(r / ".hydra" / "overrides.yaml")}
        assert SEARCHED <= overrides
        losses.append(
            json.loads((r / "metrics.json").read_text())["history"]["stage2"]["stage2/val/recon"]
        )
    assert best.best_value == pytest.approx(min(losses))

    # written by the Hydra callback when the multirun ended
    rows = read_csv(d / "sweep_summary.csv")
    assert [r["status"] for r in rows] == ["ok", "ok"] and [r["rank"] for r in rows] == ["1", "2"]
    objs = [float(r["objective"]) for r in rows]
    assert objs == sorted(losses)
    assert {
        "model.shared_dim",
        "stage2/val/recon",
        "stage2/val/loss",
        "stage1/val/loss",
        "shared_recovery",
        "error",
    } <= set(rows[0])
    md = (d / "sweep_summary.md").read_text()
    assert "Objective: `stage2/val/recon` (minimize)" in md and "| model.shared_dim |" in md


def test_summary_cli_maximize_and_failed_run(optuna_sweep, tmp_path, capsys):
    sweep = tmp_path / "sweep"
    shutil.copytree(optuna_sweep, sweep)
    (sweep / "sweep_summary.csv").unlink()
    # a job that died before writing metrics.json, with the error only in its Hydra log
    dead = sweep / "2"
    (dead / ".hydra").mkdir(parents=True)
    (dead / ".hydra" / "overrides.yaml").write_text("- model.shared_dim=99\n")
    (dead / "cli.log").write_text(
        "[2024-01-01 00:00:00,000][venncell][INFO] - start\n"
        "[2024-01-01 00:00:01,000][venncell][ERROR] - something | broke\n"
    )
    assert shutil.which(
        "venncell-sweep-summary"
    )  # the console script; called in-process below (faster)
    assert main([str(sweep), "--objective", "shared_recovery", "--direction", "maximize"]) == 0
    out = capsys.readouterr().out
    assert "Wrote" in out and "(maximize)" in out
    rows = read_csv(sweep / "sweep_summary.csv")
    assert [r["status"] for r in rows] == ["ok", "ok", "failed"]
    rec = [float(r["shared_recovery"]) for r in rows[:2]]
    assert rec == sorted(rec, reverse=True) and [float(r["objective"]) for r in rows[:2]] == rec
    assert (
        rows[2]["run"] == "2" and rows[2]["error"] == "something | broke" and rows[2]["rank"] == ""
    )
    assert "something \\| broke" in (sweep / "sweep_summary.md").read_text()

    # defaults come from the sweep itself (objective stage2/val/recon, the Optuna sweeper's direction)
    assert main([str(sweep), "--out", str(tmp_path / "t"), "--quiet"]) == 0
    assert (
        "Objective: `stage2/val/recon` (minimize)"
        in (tmp_path / "t" / "sweep_summary.md").read_text()
    )

    assert main([str(tmp_path / "t")]) == 2
    assert "no runs" in capsys.readouterr().err


def test_a_run_whose_training_failed_is_not_ranked(optuna_sweep, tmp_path):
    """A diverged run's held-out reconstruction can look as good as a healthy run's: the summary lists it as a
    failed training with the reason, unranked (venncell-train also exits with code 3 for it)."""
    sweep = tmp_path / "sweep"
    shutil.copytree(optuna_sweep, sweep)
    path = sweep / "0" / "metrics.json"
    metrics = json.loads(path.read_text())
    metrics["history"]["failed"] = {"stage1": "its training loss ended far above its lowest"}
    path.write_text(json.dumps(metrics))
    assert main([str(sweep), "--quiet"]) == 0
    rows = read_csv(sweep / "sweep_summary.csv")
    assert [r["status"] for r in rows] == ["ok", "training failed"]
    assert rows[1]["run"] == "0" and rows[1]["rank"] == "" and "far above" in rows[1]["error"]
    assert rows[0]["rank"] == "1"


def test_a_trial_without_its_objective_fails_alone(tmp_path, helpers):
    """Optuna's sweeper ended the whole study with a traceback when a trial returned NaN (an objective the run did
    not report); such a trial now fails alone, with the reason, and the next one runs."""
    res = helpers.run_cli(
        # a held-out metric of a run without held-out cells: a metric name, but none this run has
        _optuna_command(
            helpers, tmp_path, "objective=stage2/val/recon", "data.validation_fraction=0"
        ),
        ok=False,
    )
    assert "Values cannot be specified" not in res.stderr, res.stderr[-2000:]
    rows = read_csv(tmp_path / "sweep_summary.csv")
    assert [r["status"] for r in rows] == ["failed", "failed"]
    assert "not among this run's metrics" in rows[0]["error"]
    assert all(
        (tmp_path / r / "metrics.json").is_file() for r in ("0", "1")
    )  # the outputs are kept


def test_an_objective_no_run_reports_is_refused_before_training(tmp_path, helpers):
    from venncell.data.validate import VennCellInputError

    def run(*overrides):
        from hydra import compose, initialize_config_module

        from venncell.cli.store import register_configs
        from venncell.cli.train import run_train

        register_configs()
        with initialize_config_module(config_module="venncell.conf", version_base="1.3"):
            cfg = compose("config", overrides=[*helpers.TINY_CLI, "logger=none", *overrides])
        run_train(cfg, tmp_path / "run")

    with pytest.raises(VennCellInputError, match="is not a metric of a run"):
        run("objective=shared_recovry")
    with pytest.raises(VennCellInputError, match="evaluate_recovery=false skips"):
        run("objective=shared_recovery", "evaluate_recovery=false")
    with pytest.raises(VennCellInputError, match="did you mean objective=min_private_recovery"):
        run("objective=min_privat_recovery")
    # a mistyped stage metric was found only after the first trial had trained
    with pytest.raises(VennCellInputError, match="did you mean objective=stage2/val/recon/rna\\?"):
        run("objective=stage2/val/recon_rna")
    with pytest.raises(
        VennCellInputError, match="did you mean objective=stage1/train/recon/rna_epoch\\?"
    ):
        run("objective=stage1/train/recon/rna")
    from venncell.cli.train import _check_history_objective

    for key in ("stage1/train/loss_step", "stage2/val/recon", "stage1/val/consistency/rna"):
        _check_history_objective(key, ["rna", "protein"])  # metrics every such run logs
    # a metric of the other stage (recon is stage 2's; consistency stage 1's) is no metric of a run either
    for key in ("stage1/val/recon", "stage2/val/consistency/rna", "stage2/train/loss_epoch"):
        with pytest.raises(VennCellInputError, match="is not a metric a run logs"):
            _check_history_objective(key, ["rna", "protein"])
    assert not (tmp_path / "run" / "config_resolved.yaml").exists()  # nothing trained or written


def test_failed_jobs_are_listed(tmp_path, helpers):
    # job 0 fails on a bad setting (checked before the data are read), job 1 on an unknown dataset; both are
    # recorded by the callback that conf/config.yaml switches on, and the first failure does not stop the second
    res = helpers.run_cli(
        [
            "venncell-train",
            "-m",
            *helpers.TINY_CLI,
            "logger=none",
            "trainer.accelerator=bogus,cpu",
            "data.name=bogus",
            f"hydra.sweep.dir={tmp_path}",
        ],
        ok=False,
    )
    assert res.returncode != 0
    assert "trainer.accelerator" in (tmp_path / "0" / "job_error.txt").read_text()
    # the callback wrote the summary although Hydra re-raised the failure (it once wrote none)
    written = {r["run"]: r["status"] for r in read_csv(tmp_path / "sweep_summary.csv")}
    assert written == {"0": "failed", "1": "failed"}
    assert main([str(tmp_path), "--quiet"]) == 0
    rows = {r["run"]: r for r in read_csv(tmp_path / "sweep_summary.csv")}
    assert rows["0"]["status"] == rows["1"]["status"] == "failed"
    assert (
        rows["0"]["error"].startswith("VennCellInputError: ")
        and "accelerator" in rows["0"]["error"]
    )
    assert "data.name='bogus' is not known" in rows["1"]["error"]
    assert "data.name='bogus' is not known" in (tmp_path / "1" / "job_error.txt").read_text()
    assert rows["1"]["data.name"] == "bogus"


def test_a_single_run_writes_no_sweep_summary(tmp_path):
    """The summary is written after every job of a multirun; a single run (the callback sees its jobs too) must
    not create the sweep folder in the user's working directory."""
    from types import SimpleNamespace

    from hydra.core.utils import JobStatus
    from omegaconf import OmegaConf

    from venncell.cli.sweep import SweepSummaryCallback

    done = SimpleNamespace(status=JobStatus.COMPLETED)
    for mode, made in (("RunMode.RUN", False), ("RunMode.MULTIRUN", True)):
        sweep = tmp_path / mode
        cfg = OmegaConf.create({"hydra": {"mode": mode, "sweep": {"dir": str(sweep)}}})
        if made:  # a multirun's job folder
            (sweep / "0" / ".hydra").mkdir(parents=True)
            (sweep / "0" / ".hydra" / "overrides.yaml").write_text("[]\n")
        SweepSummaryCallback().on_job_end(cfg, done)
        assert (sweep / "sweep_summary.csv").exists() == made and sweep.exists() == made, mode


def test_a_stop_signal_ends_the_sweep_not_only_its_job(monkeypatch):
    """SIGTERM or Ctrl-C stopped the running job of a multirun, and Hydra went on with the next ones."""
    import signal

    from venncell.cli import common
    from venncell.train.safety import TrainingInterrupted

    monkeypatch.setattr(common, "in_multirun", lambda: True)

    def stopped():
        raise TrainingInterrupted(signal.SIGTERM, Path("run"))

    with pytest.raises(SystemExit) as out:
        common.friendly(stopped)()
    assert out.value.code == 143

    def bad_input():
        raise common.VennCellInputError("a bad setting")

    with pytest.raises(
        common.VennCellInputError
    ):  # a failed job: Hydra records it and runs the others
        common.friendly(bad_input)()
