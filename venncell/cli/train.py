"""``venncell-train``: set up the data, train both stages, write the model, the latents and the metrics.

A thin layer over ``venncell.VennCell``; there is no second training loop.
"""

from __future__ import annotations

import difflib
import sys
from dataclasses import asdict
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from venncell.analysis.block_enrichment import check_modalities
from venncell.analysis.writers import training_summary
from venncell.cli.common import (
    CONFIG_PATH,
    REPORT_OUTPUTS,
    atomic_write_json,
    check_folders_free,
    check_output_dir,
    check_overrides,
    clear_earlier_outputs,
    friendly,
    in_multirun,
    load_data,
    log,
    recovery_summary,
    run_folder_lock,
    training_failure,
)
from venncell.cli.store import data_settings, register_configs, to_object
from venncell.data.files import atomic_write
from venncell.data.registry import as_setup_options, stored_options
from venncell.data.synthetic import truth_from_mudata
from venncell.data.validate import VennCellInputError
from venncell.model import VennCell
from venncell.module.config import ModelConfig
from venncell.train.config import TrainConfig

# ground-truth recovery is scored on at most this many cells (a random subset beyond): its kNN probes grow
# faster than the cells
RECOVERY_CELLS = 10_000


def make_loggers(cfg: DictConfig, run_dir: Path):
    """A factory: one logger per stage, so each stage's CSV has its own step axis."""
    kind = cfg.logger.kind
    if kind == "none":
        return False
    from lightning.pytorch.loggers import CSVLogger

    def csv(stage: str) -> CSVLogger:
        return CSVLogger(save_dir=str(run_dir), name="logs", version=stage)

    if kind == "csv":
        return csv
    if kind == "wandb":  # one W&B run for both stages; wandb is imported only here
        from venncell.cli.tracking import wandb_logger_factory

        wandb = wandb_logger_factory(cfg, run_dir)
        # the CSV logs too: every run has logs/<stage>/metrics.csv (README), and resume keeps them
        return lambda stage: [wandb(stage), csv(stage)]
    raise VennCellInputError(
        f"logger.kind={kind!r} is not known; use logger=csv, logger=wandb or logger=none."
    )


def _check_logger(kind: str) -> None:
    """The logger's package, before the data are read: W&B is an optional extra."""
    import importlib.util

    if kind == "wandb" and importlib.util.find_spec("wandb") is None:
        raise VennCellInputError(
            "logger=wandb needs the optional package wandb: pip install 'venncell[wandb]' (or leave logger at "
            "its default, csv)."
        )


TRAINER_SEED = (
    "trainer.seed is not a setting of venncell-train: the run's one seed is the top-level `seed=` (e.g. seed=1, "
    "or -m seed=0,1,2 for a sweep)."
)


def run_train(cfg: DictConfig, run_dir: Path) -> dict:
    """Everything ``venncell-train`` does, callable from Python (tests, sweeps), holding ``run_dir`` while it runs
    (``run_folder_lock``)."""
    with run_folder_lock(Path(run_dir)):
        return _run_train(cfg, Path(run_dir))


def _run_train(cfg: DictConfig, run_dir: Path) -> dict:
    # a rerun in the same folder appends to its train.log: this line starts each run's part
    log.info("venncell-train %s", " ".join(sys.argv[1:]) or "(the defaults)")
    # only as +trainer.seed: the group has no such key (store._without_seed)
    if "seed" in cfg.trainer:
        raise VennCellInputError(TRAINER_SEED)
    model_cfg = to_object(
        ModelConfig, cfg.model
    )  # every setting checked before anything is read or written
    train_cfg = to_object(TrainConfig, cfg.trainer)
    from venncell.cli.report import check_enrichment, train_report_settings

    report = train_report_settings(cfg.get("report"))
    data = data_settings(cfg.data)
    _check_logger(cfg.logger.kind)
    _check_objective(cfg.objective, cfg.evaluate_recovery)
    mdata = load_data(cfg)
    if _is_recovery_score(cfg.objective):
        _check_recovery_objective(cfg.objective, truth_from_mudata(mdata))
    register, batch_key = data["register"], data.get("batch_key")
    stored = stored_options(mdata)
    # a file set up in Python (setup_mudata, then .write) keeps its setup unless data.register is given
    if register is None and stored is not None:
        register, batch_key = as_setup_options(stored), batch_key or stored.get("batch_key")
        log.info("Using the setup stored in the file (data.register overrides it): %s", register)
    mdata, register = _split_panels(mdata, data["split_panels"], register, batch_key)
    VennCell.setup_mudata(mdata, modalities=register, batch_key=batch_key)
    backed = bool(getattr(mdata, "isbacked", False))
    model = VennCell(
        mdata,
        validation_fraction=data["validation_fraction"],
        seed=cfg.seed,
        backed=backed,
        chunk_size=data.get("chunk_size") if backed else None,
        **asdict(model_cfg),
    )
    log.info("%s", model)
    _check_history_objective(cfg.objective, list(model.specs))
    if report is not None and report.markers is not None:
        model.check_markers(report.markers)  # a mistyped marker fails now, not after training
    if report is not None and report.enrich:  # a model without genes fails now too
        check_modalities(model.specs, check_enrichment(report))
    train_kwargs = {**asdict(train_cfg), "seed": cfg.seed}
    if (
        cfg.resume
    ):  # before anything of this run is written: a mismatch must leave the earlier run intact
        model.check_resume(run_dir, **train_kwargs)
    run_dir.mkdir(parents=True, exist_ok=True)
    # a fresh start either way: resume=false, or nothing to resume
    if not cfg.resume or not any((run_dir / "checkpoints").rglob("*.ckpt")):
        clear_earlier_outputs(run_dir, keep=_input_path(cfg))
    else:  # the model trains on: a report of it as it was would sit beside the new one
        clear_earlier_outputs(run_dir, keep=_input_path(cfg), outputs=REPORT_OUTPUTS)
    (run_dir / "config_resolved.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    history = model.train(
        run_dir=run_dir, logger=make_loggers(cfg, run_dir), resume=cfg.resume, **train_kwargs
    )
    if history.get("ddp", {}).get("global_rank", 0) != 0:
        # a DDP worker (Lightning re-ran this command for it): rank 0 holds the gathered model and writes outputs
        return {"history": history, "model": repr(model)}
    # the log holds the end of training too, not only the progress bars
    for stage, got in training_summary(history).items():
        log.info(
            "%s: %d epochs, training loss %s, held-out loss %s (%.0f s)",
            stage,
            got["epochs"],
            *(
                "-" if v is None else f"{v:.4g}"
                for v in (got["training_loss"], got["held_out_loss"])
            ),
            got["seconds"] or float("nan"),
        )
    model.save(run_dir / "model")
    model.write_latents()
    metrics = {"history": history, "model": repr(model)}
    truth = truth_from_mudata(mdata)
    if truth is not None and cfg.evaluate_recovery:
        from venncell.analysis.recovery import evaluate_recovery
        from venncell.module.embed import obsm_names

        metrics["recovery"] = {}
        # it can take longer than a short training: say so, and score at most RECOVERY_CELLS cells
        log.info(
            "Scoring the latents against the data's true factors on %d cells (evaluate_recovery=false skips it)",
            min(mdata.n_obs, RECOVERY_CELLS),
        )
        # read back what write_latents just put in .obsm (the default, then each alone) rather than embed again;
        # every block, regions included
        # true blocks of modalities renamed or left out since the data were made have no learned block to score
        names = obsm_names(model.module)
        blocks = {
            k: v for k, v in truth.blocks().items() if k in names or not k.startswith("private:")
        }
        unmatched = sorted(set(truth.blocks()) - set(blocks))
        if unmatched:
            log.warning(
                "The data's true factors %s match no block of the model (%s): not scored. Name the .obsm "
                "true_private_<modality> keys after the modalities to score them.",
                unmatched,
                ", ".join(names),
            )
        for source, suffix in (("average", ""), ("encoder", "_encoder"), ("stage1", "_stage1")):
            learned = {key: mdata.obsm[f"{name}{suffix}"] for key, name in names.items()}
            metrics["recovery"][source] = evaluate_recovery(
                learned, blocks, max_cells=RECOVERY_CELLS
            )
        log.info(
            "recovery (kNN R^2, the default latents): %s",
            metrics["recovery"]["average"]["knn"]["summary"],
        )
    atomic_write_json(metrics, run_dir / "metrics.json")
    # before venn.h5mu is written, so that it carries the venn_* .var columns
    if report is not None:
        from venncell.cli.report import report_with

        try:
            report_with(model, run_dir, report, save_h5mu=False)
        except BaseException:
            _write_latents_file(
                mdata, run_dir, backed
            )  # a failed report must not cost the trained latents
            raise
    _write_latents_file(mdata, run_dir, backed)
    from venncell.cli.tracking import finish_run

    finish_run(
        cfg, run_dir, metrics
    )  # keep last: logs recovery and figures to W&B, closes the run
    log.info("Wrote %s", run_dir)
    why = training_failure(metrics)
    if why:  # a workflow must not take a diverged model for a result
        from venncell.train.errors import TrainingFailedError

        raise TrainingFailedError(
            f"training failed ({why}). The outputs in {run_dir} are written for inspection, not for use; train "
            "again with lower learning rates (stage1: trainer.lr_latent and trainer.lr_network; stage2: "
            "trainer.lr_encoder) or, where the losses were still falling, more epochs."
        )
    return metrics


def _split_panels(mdata, names: list[str], register, batch_key: str | None):
    """``data.split_panels``: each named modality's features that some batches did not measure move to modalities
    of their own (``venncell.data.split_panels``), registered as the modality they came from."""
    if not names:
        return mdata, register
    from venncell.data.panels import split_panels

    if batch_key is None:
        raise VennCellInputError(
            f"data.split_panels={names} splits by batch: name the batch column, data.batch_key=<obs column>."
        )
    if getattr(mdata, "isbacked", False):
        raise VennCellInputError(
            "data.split_panels needs the data in memory: leave out data.backed=true, or split in Python "
            "(venncell.data.split_panels), write the MuData and train on that file."
        )
    for name in names:
        entry = register.get(name) if isinstance(register, dict) else None
        layer = entry.get("layer") if isinstance(entry, dict) else None
        mdata = split_panels(mdata, name, batch_key, layer=layer)
        made = mdata.uns["venncell_panels"]
        if isinstance(register, dict) and name in register:
            register = {**register, **{panel: register[name] for panel in made}}
        elif isinstance(register, list) and name in register:
            register = [*register, *made]
        if name not in mdata.mod and register is not None:  # every feature moved to a panel
            register = (
                {k: v for k, v in register.items() if k != name}
                if isinstance(register, dict)
                else [k for k in register if k != name]
            )
        log.info(
            "data.split_panels: %s -> %s",
            name,
            ", ".join(f"{p} (measured in {', '.join(b)})" for p, b in made.items())
            or "nothing to split",
        )
    return mdata, register


def _input_path(cfg: DictConfig) -> Path | None:
    """The run's input file (data=mudata), which a fresh run must not remove even when it lies in the run folder."""
    path = cfg.data.get("path") if cfg.data.get("name") == "mudata" else None
    return Path(path) if path else None


def _write_latents_file(mdata, run_dir: Path, backed: bool) -> None:
    """venn.h5mu (the input with the latents), or for out-of-core input venn_latents.h5ad (latents only: copying
    the input into the run folder would defeat the point)."""
    if backed:
        import anndata as ad

        latents = ad.AnnData(
            obs=mdata.obs[[]].assign(venn_split=mdata.obs["venn_split"]),
            obsm={k: v for k, v in mdata.obsm.items() if k.startswith("X_venn")},
            uns={k: mdata.uns[k] for k in ("venncell_latents",) if k in mdata.uns},
        )
        # AnnData.write writes .h5ad: the same temporary file and rename
        atomic_write(latents, run_dir / "venn_latents.h5ad")
    else:
        atomic_write(mdata, run_dir / "venn.h5mu")


def _is_recovery_score(key) -> bool:
    return str(key).endswith("_recovery") or str(key).startswith("leak_")


def _check_objective(key, evaluate_recovery: bool) -> None:
    """Refuse, before training, an objective no run could report (a sweep would train every trial for nothing)."""
    if str(key).startswith(("stage1/", "stage2/")):
        return
    if not _is_recovery_score(key):
        raise VennCellInputError(
            f"objective={key} is not a metric of a run: name a stage-1 or stage-2 history key (e.g. "
            "objective=stage2/val/recon; every key is in a run's metrics.json) or, on data with true factors, a "
            "recovery score (shared_recovery, min_private_recovery, leak_private_into_shared, ...)."
        )
    if not evaluate_recovery:
        raise VennCellInputError(
            f"objective={key} is a recovery score, but evaluate_recovery=false skips scoring it: drop that "
            "override, or optimise a held-out score (objective=stage2/val/recon)."
        )


def _check_history_objective(key, modalities: list[str]) -> None:
    """A stage-1 or stage-2 objective must name a metric a run logs: ``stage1/train/<term>_epoch``,
    ``stage1/val/<term>`` or ``stage2/val/<term>``, with each stage's terms (``venncell.module.losses``) for these
    modalities; a typo would otherwise surface after the first trial. Terms of Venn regions and the joint encoder
    (``a~b``, ``joint``) are accepted unchecked."""
    from venncell.module import losses

    key = str(key)
    if not key.startswith(("stage1/", "stage2/")):
        return
    per_modality = {
        "stage1": [
            losses.RECON,
            losses.RECON_SHARED_ONLY,
            losses.CONSISTENCY,
            losses.INDEPENDENCE,
            losses.PRIOR,
        ],
        "stage2": [
            losses.RECON,
            losses.RECON_SHARED_ONLY,
            losses.LATENT_SHARED,
            losses.LATENT_PRIVATE,
        ],
    }
    terms = {
        stage: [
            "loss",
            *(["recon", "shared_only"] if stage == "stage2" else [f"{losses.PRIOR}/shared"]),
        ]
        + [f"{k}/{m}" for k in kinds for m in modalities]
        for stage, kinds in per_modality.items()
    }
    known = [
        *(f"stage1/train/{t}_epoch" for t in terms["stage1"]),
        *(f"{stage}/val/{t}" for stage in terms for t in terms[stage]),
        "stage1/train/loss_step",
        "stage2/train/loss_step",
    ]
    if key in known or "~" in key or "joint" in key or "shared:" in key:
        return
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    raise VennCellInputError(
        f"objective={key} is not a metric a run logs"
        + (f"; did you mean objective={close[0]}?" if close else ".")
        + " Stage metrics are stage1/train/<term>_epoch (epoch means), stage1/val/<term> or stage2/val/<term> "
        f"(held-out cells), with terms loss, <kind>/<modality> for these modalities ({', '.join(modalities)}) and, "
        "in stage 2, recon; e.g. objective=stage2/val/recon. Every key is in a run's metrics.json."
    )


def _check_recovery_objective(key: str, truth) -> None:
    """A recovery score must be one these data's true blocks give (``summarise_recovery``'s names)."""
    if truth is None:
        raise VennCellInputError(
            f"objective={key} is a recovery score, which needs data with known true factors (the synthetic "
            "default); these data have none. Optimise a held-out score instead, e.g. objective=stage2/val/recon."
        )
    import pandas as pd

    from venncell.analysis.recovery import summarise_recovery

    # the names a run's summary of these true blocks has (scores aside)
    blocks = list(truth.blocks())
    known = list(summarise_recovery(pd.DataFrame(0.0, index=blocks, columns=blocks)))
    if key not in known:
        close = difflib.get_close_matches(key, known, n=1)
        raise VennCellInputError(
            f"objective={key} is not a recovery score of these data"
            + (f"; did you mean objective={close[0]}?" if close else "")
            + f" They have: {', '.join(known)}."
        )


def _objective(metrics: dict, key: str) -> float:
    """The number a sweeper optimises; NaN (with a warning) when the run has no such metric, e.g. a held-out score
    of a run without held-out cells: the run itself succeeded and its outputs are written."""
    flat = {**metrics["history"].get("stage1", {}), **metrics["history"].get("stage2", {})}
    if key in flat:
        return float(flat[key])
    rec = recovery_summary(metrics)
    if key in rec:
        return float(rec[key])
    if (
        _optuna_sweep()
    ):  # Optuna's sweeper fails the whole study on a NaN; an error fails this trial alone
        raise VennCellInputError(
            f"objective {key!r} is not among this run's metrics (e.g. no held-out cells), so the trial has no "
            "value; its outputs are written. Every metric the run has is in its metrics.json."
        )
    log.warning(
        "objective %r is not among the run's metrics (e.g. no held-out cells); returning NaN.", key
    )
    return float("nan")


def _optuna_sweep() -> bool:
    return in_multirun() and "optuna" in str(HydraConfig.get().sweeper.get("_target_", "")).lower()


@hydra.main(config_path=CONFIG_PATH, config_name="config", version_base="1.3")
def _app(cfg: DictConfig) -> float:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    metrics = friendly(run_train)(cfg, run_dir)
    return friendly(_objective)(metrics, cfg.objective)


def main() -> float:
    """Console entry point."""
    register_configs()
    check_output_dir(sys.argv[1:])
    check_folders_free(sys.argv[1:])
    # Hydra would answer "use +trainer.seed", which is refused in turn
    if any(arg.startswith("trainer.seed=") for arg in sys.argv[1:]):
        print(f"venncell: error: {TRAINER_SEED}", file=sys.stderr)
        raise SystemExit(2)
    _check_sweeper(sys.argv[1:])
    check_overrides(sys.argv[1:], "config")
    return _app()


def _check_sweeper(argv: list[str]) -> None:
    """One line and exit code 2 when a sweep asks for Optuna without its Hydra plugin (an optional extra): Hydra
    would only say that its config group has no such option."""
    import importlib.util

    if any(arg in ("--help", "-h", "--hydra-help", "--info", "--cfg", "-c") for arg in argv):
        return  # Hydra's own questions about the configs, which need no sweeper
    asks = any(
        arg.split("=", 1)[0].lstrip("+~") in ("hparams_search", "hydra/sweeper")
        and "optuna" in arg.split("=", 1)[-1]
        for arg in argv
    )
    try:
        found = importlib.util.find_spec("hydra_plugins.hydra_optuna_sweeper") is not None
    except ModuleNotFoundError:  # no Hydra plugin at all
        found = False
    if asks and not found:
        print(
            "venncell: error: hparams_search=optuna needs Hydra's Optuna sweeper, an optional extra: "
            "pip install 'venncell[sweep]'.",
            file=sys.stderr,
        )
        raise SystemExit(2)
