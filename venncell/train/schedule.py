"""The two-stage schedule: one function used by both the Python API and the Hydra CLI."""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import os
import shutil
import time
import warnings
from dataclasses import asdict, replace
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.plugins.io import CheckpointIO
from lightning.pytorch.utilities import rank_zero_only

from venncell.data.dataset import MultiModalData, batch_loader, cell_batches, make_loader
from venncell.data.files import atomic_write_text
from venncell.data.resident import ResidentBatches, ResidentCells, fits_on
from venncell.data.samplers import RankBatches
from venncell.data.validate import (
    VennCellInputError,
    VennCellTrainingWarning,
    user_stacklevel,
)
from venncell.module.embed import fit_mix_weights
from venncell.module.venn import VennModule
from venncell.train.caller_state import caller_state
from venncell.train.config import TrainConfig
from venncell.train.plans import Stage1Plan, Stage2Plan
from venncell.train.progress import progress_bars
from venncell.train.safety import (
    FINGERPRINT_KEY,
    SameFolderCheckpointIO,
    StopOnSignal,
    check_resumable,
    clear_stale_checkpoints,
    fingerprint,
    stop_on_signals,
)
from venncell.train.threads import auto_threads_why, cpu_threads

log = logging.getLogger(__name__)


def _loader(
    data: MultiModalData,
    indices,
    seed: int,
    trainer: L.Trainer,
    fixed_shard: bool,
    cfg: TrainConfig,
    resident: ResidentCells | None,
    split: np.ndarray | None = None,
):
    """A stage's shuffled training batches of ``cfg.batch_size`` cells (per rank under DDP); with ``split`` (one
    boolean per cell) each item is a (training, held-out) pair of batches."""
    if trainer.world_size == 1:  # one process owns every cell: no rank sharding
        sampler = cell_batches(data, indices, cfg.batch_size, True, seed, split)
        if resident is not None:
            return ResidentBatches(resident, sampler, split)
        return batch_loader(data, sampler, cfg.num_workers, cfg.pin_memory, split)
    sampler = RankBatches(
        indices,
        cfg.batch_size,
        True,
        seed,
        trainer.global_rank,
        trainer.world_size,
        fixed_shard,
        data.chunk_size,
    )
    return batch_loader(data, sampler, cfg.num_workers, cfg.pin_memory, split)


def _resident(cfg: TrainConfig, data: MultiModalData, trainer: L.Trainer) -> ResidentCells | None:
    """The data held on the training device (``TrainConfig.data_on_device``), or None for a DataLoader."""
    if cfg.data_on_device is False:
        return None
    device = trainer.strategy.root_device
    if trainer.world_size > 1:
        why = "each DDP rank reads its own shard"
    elif cfg.num_workers:
        why = f"trainer.num_workers={cfg.num_workers} assembles batches in worker processes"
    elif not fits_on(data, device):
        why = "backed data, per-batch image reads, or data too large for its free memory"
    else:
        return ResidentCells(data, device)
    if cfg.data_on_device:
        log.warning(
            "trainer.data_on_device=true, but the data are not held on %s (%s); batches come from a DataLoader.",
            device,
            why,
        )
    return None


def _strategy(cfg: TrainConfig):
    # devices="auto" on a machine with several GPUs: Lightning's "auto" picks a DDP that refuses unused parameters
    every_gpu = (
        cfg.devices in ("auto", -1)
        and cfg.accelerator in ("gpu", "cuda", "auto")
        and torch.cuda.device_count() > 1
    )
    if cfg.strategy != "ddp" and not every_gpu:
        return cfg.strategy
    from lightning.pytorch.strategies import DDPStrategy

    return DDPStrategy(
        process_group_backend=cfg.process_group_backend,
        find_unused_parameters=cfg.find_unused_parameters,
    )


# A checkpoint is written at an epoch's end once the training since the last one took at least this many times as
# long as writing it did: at most ~5% of the time goes to checkpoints (on small data a write every epoch costs more
# than that), and a kill loses at most one epoch or ~20 writes' worth of training.
CHECKPOINT_SPACING = 20.0


class EpochCheckpoint(ModelCheckpoint):
    """Lightning's ``ModelCheckpoint`` at epoch ends, spaced by ``CHECKPOINT_SPACING``, one file per save.

    ``last.ckpt`` is a link to the newest ``epochNNNN.ckpt`` (``save_last="link"``): one write per save, not two.
    Lightning writes the new epoch file before it removes the old one and relinks, so at every instant a kill leaves
    either ``last.ckpt`` whole or an intact epoch file (``_resume_path`` takes the newest readable one). The first
    and the last epoch of a stage are always saved. Under DDP rank 0's clock decides, so every rank saves together
    (saving gathers the latent tables across ranks).
    """

    def __init__(self, **kwargs):
        # no version counter: after a run folder is moved Lightning no longer knows last.ckpt as its own and would
        # write last-v1.ckpt beside it, leaving last.ckpt (which resuming reads first) on an old epoch
        super().__init__(
            save_last="link",
            save_top_k=1,
            every_n_epochs=1,
            enable_version_counter=False,
            **kwargs,
        )
        self._cost = 0.0  # seconds the last save took
        self._saved_at: float | None = None

    def on_train_epoch_end(self, trainer, pl_module):
        now = time.perf_counter()
        due = (
            self._saved_at is None
            or now - self._saved_at >= CHECKPOINT_SPACING * self._cost
            or trainer.current_epoch + 1 >= (trainer.max_epochs or 0)
            or trainer.should_stop
        )
        if not trainer.strategy.broadcast(due, src=0):
            return
        super().on_train_epoch_end(trainer, pl_module)
        self._saved_at = time.perf_counter()
        self._cost = self._saved_at - now


def _trainer(
    cfg: TrainConfig, stage: str, epochs: int, run_dir: Path, loggers
) -> tuple[L.Trainer, ModelCheckpoint]:
    # save_on_train_epoch_end: also in stage 2, whose validation (every check_val_every_n_epoch epochs) would
    # otherwise decide when a checkpoint is written, so a killed run could lose several epochs
    ckpt = EpochCheckpoint(
        dirpath=run_dir / "checkpoints" / stage,
        filename="epoch{epoch:04d}",
        auto_insert_metric_name=False,
        save_on_train_epoch_end=True,
    )
    callbacks = [ckpt, *progress_bars(cfg.progress_bar)]
    kwargs = dict(
        max_epochs=epochs,
        accelerator=cfg.accelerator,
        devices=cfg.devices,
        strategy=_strategy(cfg),
        num_nodes=cfg.num_nodes,
        precision=cfg.precision,
        logger=loggers(stage) if callable(loggers) else loggers,
        callbacks=callbacks,
        enable_progress_bar=cfg.progress_bar != "none",
        log_every_n_steps=cfg.log_every_n_steps,
        default_root_dir=str(run_dir),
        enable_model_summary=False,
        num_sanity_val_steps=0,
        deterministic="warn" if cfg.accelerator != "cpu" else True,
        use_distributed_sampler=False,  # our samplers shard by rank themselves (RankBatches)
    )
    if cfg.limit_train_batches is not None:
        kwargs["limit_train_batches"] = cfg.limit_train_batches
    if stage == "stage2":
        kwargs["check_val_every_n_epoch"] = cfg.check_val_every_n_epoch
    extra = dict(cfg.trainer_kwargs or {})
    kwargs["callbacks"] = callbacks + list(extra.pop("callbacks", []))
    plugins = extra.pop("plugins", None) or []
    plugins = list(plugins) if isinstance(plugins, (list, tuple)) else [plugins]
    # a checkpoint writer of the user's own (as a plugin or inside their strategy) is theirs to keep
    if not any(isinstance(p, CheckpointIO) for p in plugins) and (
        getattr(extra.get("strategy"), "_checkpoint_io", None) is None
    ):
        plugins.append(SameFolderCheckpointIO())
    kwargs["plugins"] = plugins
    kwargs.update(extra)
    return quiet_trainer(**kwargs), ckpt


@contextlib.contextmanager
def lightning_info_off():
    """Lightning's rank-zero info messages off for the block (its warnings still show)."""
    info = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    level = info.level
    info.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        info.setLevel(level)


def quiet_trainer(**kwargs) -> L.Trainer:
    """``L.Trainer(**kwargs)`` without the banner Lightning logs at every Trainer (accelerators found, an advert for
    its cloud logger): train() builds two, refine() and attribution more. Lightning's warnings still show."""
    with lightning_info_off():
        return L.Trainer(**kwargs)


def _resume_path(
    run_dir: Path,
    stage: str,
    resume: bool,
    expected: dict | None = None,
    epochs: int | None = None,
    say: bool = True,
) -> tuple[str | None, int, dict | None, int]:
    """The newest readable checkpoint of a stage, its logged step, its epoch's log row and the epochs it has
    trained (None, 0, None, 0 without one): a kill during a checkpoint write can leave ``last.ckpt`` truncated, and then the per-epoch copy beside it
    is used instead. ``expected``: the run's fingerprint, which the checkpoint must carry (``check_resumable``);
    ``epochs``: the stage's epochs now, which must not be fewer than the checkpoint has trained; ``say``: log which
    checkpoint is used (once per run: not when only checking)."""
    if not resume:
        return None, 0, None, 0
    folder = run_dir / "checkpoints" / stage
    candidates = [folder / "last.ckpt"] + sorted(folder.glob("epoch*.ckpt"), reverse=True)
    for path in candidates:
        if not path.exists():
            continue
        try:
            # mmap: the pickle is read, the tensors only mapped; Lightning reads the file again to resume, so a full
            # load here would read it twice. A truncated write loses the zip's closing directory and fails here.
            ckpt = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
        except Exception as e:  # truncated zip, pickle error, ...
            log.warning("Checkpoint %s is unreadable (%s); trying an older one.", path, e)
            continue
        if expected is not None:
            check_resumable(ckpt.get(FINGERPRINT_KEY), expected, path)
        done = int(ckpt.get("epoch", -1)) + 1
        _check_epochs(done, stage, epochs, run_dir)
        if say:
            log.info("Resuming %s from %s", stage, path)
        return str(path), _logged_step(ckpt), ckpt.get("venncell_epoch_row"), done
    return None, 0, None, 0


def _check_epochs(done: int, stage: str, epochs: int | None, run_dir: Path) -> None:
    """Lightning refuses a checkpoint past the stage's epochs with its own traceback, after the run has started."""
    if epochs is not None and done > epochs:
        raise VennCellInputError(
            f"resume: {stage} of {run_dir} has trained {done} epochs, more than the {epochs} asked for now "
            f"({stage}_epochs). Resume with {stage}_epochs >= {done}, or train afresh in another folder."
        )


def check_resume(
    module: VennModule,
    data: MultiModalData,
    is_train: np.ndarray,
    cfg: TrainConfig,
    run_dir: str | Path,
) -> None:
    """Raise a clear error, before anything is written, when ``run_dir``'s checkpoints belong to another run."""
    cfg = cfg.for_cells(data.n_cells)
    expected = fingerprint(module, data, is_train, cfg)
    done1 = _resume_path(Path(run_dir), "stage1", True, expected, cfg.stage1_epochs, say=False)[3]
    # stage 1 trains further: stage 2 then starts again, so its checkpoints' epochs do not matter
    further = done1 < cfg.stage1_epochs
    _resume_path(
        Path(run_dir), "stage2", True, expected, None if further else cfg.stage2_epochs, say=False
    )


def _batches_done(trainer: L.Trainer) -> int:
    """The logged step a finished ``fit`` reached (what ``_logged_step`` reads from its checkpoint)."""
    return int(trainer.fit_loop.epoch_loop._batches_that_stepped)


def _logged_step(ckpt: dict) -> int:
    """The step the loggers had reached at the checkpoint. Not ``global_step``: that counts optimiser steps, two per
    batch in stage 1 (networks and latents), while the logged step counts batches."""
    try:
        return int(ckpt["loops"]["fit_loop"]["epoch_loop.state_dict"]["_batches_that_stepped"])
    except (KeyError, TypeError):
        return int(ckpt.get("global_step", 0))


def _keep_csv_history(trainer: L.Trainer, step: int, epoch_row: dict | None = None) -> None:
    """Keeps a resumed stage's CSV log: Lightning's CSV writer deletes an existing metrics.csv when it opens it.

    The rows logged before the checkpoint's logged ``step`` are read first and handed back to the new writer, which
    writes them ahead of the resumed rows; rows logged after the checkpoint are dropped, because the resumed run
    logs those steps again. A row a kill cut short is skipped. ``epoch_row``: the checkpoint's copy of its epoch's
    means, added when the kill came before Lightning wrote them. Rank 0 only: it alone writes the log.
    """
    if rank_zero_only.rank != 0:
        return
    for logger in trainer.loggers:
        if not isinstance(logger, CSVLogger):
            continue
        path = Path(logger.log_dir) / "metrics.csv"
        rows, bad = [], 0
        if path.exists():
            with path.open(newline="") as f:
                for row in csv.DictReader(f):
                    try:
                        kept = {
                            k: (int(float(v)) if k in ("step", "epoch") else float(v))
                            for k, v in row.items()
                            if v != ""
                        }
                    except (
                        TypeError,
                        ValueError,
                    ):  # a line cut short (None) or garbled by the kill
                        bad += 1
                        continue
                    if kept.get("step", step) < step:
                        rows.append(kept)
        if bad:
            log.warning("Skipped %d damaged row(s) of %s while resuming.", bad, path)
        if epoch_row and not any(
            r.get("epoch") == epoch_row["epoch"] and set(epoch_row) <= set(r) for r in rows
        ):
            rows.append(
                {**epoch_row, "step": step - 1}
            )  # Lightning logs epoch means at the epoch's last step
        with (
            warnings.catch_warnings()
        ):  # "Previous log files ... will be deleted": not so, they are kept here
            warnings.filterwarnings("ignore", message="Experiment logs directory")
            writer = logger.experiment  # opening the writer (first access) deletes the old file
        if isinstance(getattr(writer, "metrics", None), list):
            writer.metrics[:0] = rows


def run_two_stage(
    module: VennModule,
    data: MultiModalData,
    is_train: np.ndarray,
    cfg: TrainConfig,
    run_dir: str | Path,
    loggers=None,
    resume: bool = False,
) -> dict:
    """Stage 1 (latents + decoders) then stage 2 (encoders), each resumable from its last checkpoint.

    Returns the last logged metrics of each stage, their wall times and every epoch's row (``"epochs"``).
    """
    threads, why = threads_for(cfg)
    # logged: the automatic choice depends on the machine's load at the start
    log.info("CPU threads: %d (%s)", threads, why)
    with warnings.catch_warnings(), cpu_threads(threads), caller_state():
        # deliberate: under DDP the logged training terms are each rank's own shard (Stage1Plan._record)
        warnings.filterwarnings(
            "ignore", message=r".*when logging on epoch level in distributed setting.*"
        )
        # Lightning's own use of a torch API torch deprecates: nothing a user can change
        warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
        # every term is logged as its epoch mean whatever the step interval: small data need no other setting
        warnings.filterwarnings("ignore", message=r".*smaller than the logging interval.*")
        # resuming reuses the run's checkpoint folder, moved or not: Lightning's notes on that are expected
        warnings.filterwarnings(
            "ignore", message=r"Checkpoint directory .* exists and is not empty"
        )
        warnings.filterwarnings("ignore", message=r".*dirpath has changed from")
        return _run_two_stage(module, data, is_train, cfg, Path(run_dir), loggers, resume)


def threads_for(cfg: TrainConfig) -> tuple[int, str]:
    """``trainer.num_threads``, else ``OMP_NUM_THREADS`` (the usual way to pin threads for a whole job), else
    the automatic choice for this accelerator and number of CPU ranks; and where the number came from."""
    if cfg.num_threads is not None:
        return cfg.num_threads, "num_threads"
    env = os.environ.get("OMP_NUM_THREADS", "")
    if env.isdigit() and int(env) >= 1:
        return int(env), "OMP_NUM_THREADS"
    on_accelerator = cfg.accelerator in ("gpu", "cuda", "mps", "tpu") or (
        cfg.accelerator == "auto" and torch.cuda.is_available()
    )
    ranks = cfg.devices if isinstance(cfg.devices, int) and "ddp" in str(cfg.strategy) else 1
    return auto_threads_why(processes_per_machine=ranks, on_accelerator=on_accelerator)


def _run_two_stage(
    module: VennModule,
    data: MultiModalData,
    is_train: np.ndarray,
    cfg: TrainConfig,
    run_dir: Path,
    loggers,
    resume: bool,
) -> dict:
    derived = [
        k for k in ("batch_size", "stage1_epochs", "stage2_epochs") if getattr(cfg, k) is None
    ]
    cfg = cfg.for_cells(data.n_cells)
    if derived:
        log.info(
            "%s: %s (the defaults for %d cells)",
            ", ".join(derived),
            ", ".join(str(getattr(cfg, k)) for k in derived),
            data.n_cells,
        )
    expected = fingerprint(module, data, is_train, cfg)
    if not resume and rank_zero_only.rank == 0:
        clear_stale_checkpoints(run_dir)
    stopper = StopOnSignal()
    cfg = replace(
        cfg,
        trainer_kwargs={
            **cfg.trainer_kwargs,
            "callbacks": [*cfg.trainer_kwargs.get("callbacks", []), stopper],
        },
    )
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    train_idx = np.flatnonzero(is_train)
    val_idx = np.flatnonzero(~is_train)
    all_idx = np.arange(data.n_cells)

    plan1 = Stage1Plan(
        module,
        cfg.lr_network,
        cfg.lr_latent,
        cfg.grad_clip,
        cfg.seed,
        data.chunk_size,
        cfg.lr_anneal,
    )
    plan1.fingerprint = expected
    trainer1, _ = _trainer(cfg, "stage1", cfg.stage1_epochs, run_dir, loggers)
    ckpt1, step1, row1, _ = _resume_path(run_dir, "stage1", resume, expected, cfg.stage1_epochs)
    if resume and ckpt1 is None:
        log.warning(
            "resume: %s holds no checkpoint of this run, so there is nothing to resume; training runs from the "
            "model as it is (its start when untrained, else its trained state, as a second train() does).",
            run_dir,
        )
    if resume:
        _keep_csv_history(trainer1, step1, row1)
    _log_settings(trainer1, module, cfg)  # after: a CSV logger's first use starts its files afresh
    t0 = time.perf_counter()
    resident = _resident(cfg, data, trainer1)
    # every cell, in row order: RankBatches' shard positions are then exactly the rows Stage1Plan gathers
    train1 = _loader(data, all_idx, cfg.seed, trainer1, True, cfg, resident, split=is_train)
    # an earlier train() or embedding left the networks in eval mode, which Lightning keeps: dropout would be off
    module.train()
    # Lightning's info lines here (restoring a checkpoint, "max_epochs reached") repeat what the log says
    with stop_on_signals(stopper, run_dir), lightning_info_off():
        trainer1.fit(plan1, train_dataloaders=train1, ckpt_path=ckpt1)
    got1, seconds1 = _stage_metrics(
        trainer1, run_dir, "stage1", time.perf_counter() - t0, ckpt1 is not None, step1
    )
    metrics = {
        "stage1": got1,
        "wall_time_s": {"stage1": seconds1},
        "epochs": {"stage1": plan1.epoch_rows},
    }
    failed = {"stage1": warn_if_diverged(1, plan1.epoch_rows, got1, plan1.first_loss_value())}
    t0 = time.perf_counter()

    plan2 = Stage2Plan(module, cfg.lr_encoder, seed=cfg.seed)
    plan2.fingerprint = expected
    trainer2, _ = _trainer(cfg, "stage2", cfg.stage2_epochs, run_dir, loggers)
    # not sharded: every rank scores every held-out cell, so the logged values agree without a sync
    val_loader = make_loader(data, val_idx, 1024, False) if len(val_idx) else None
    train2 = _loader(data, train_idx, cfg.seed + 1, trainer2, False, cfg, resident)
    further = _batches_done(trainer1) != step1  # then stage 2's checkpoints are discarded below
    ckpt2, step2, row2, _ = _resume_path(
        run_dir, "stage2", resume, expected, None if further else cfg.stage2_epochs
    )
    if ckpt2 is not None and further:
        # stage 1 trained on (more epochs asked for): stage 2's checkpoints hold the old stage-1 latents and
        # encoders fitted to them, and resuming one would put them back
        log.warning(
            "Stage 1 trained further than when stage 2 was checkpointed; stage 2 starts again."
        )
        if rank_zero_only.rank == 0:
            shutil.rmtree(run_dir / "checkpoints" / "stage2", ignore_errors=True)
            (run_dir / "checkpoints" / "stage2_metrics.json").unlink(missing_ok=True)
        ckpt2, step2, row2 = None, 0, None
    if resume:
        _keep_csv_history(trainer2, step2, row2)
    _log_settings(trainer2, module, cfg)
    module.train()
    try:
        with stop_on_signals(stopper, run_dir), lightning_info_off():
            trainer2.fit(
                plan2, train_dataloaders=train2, val_dataloaders=val_loader, ckpt_path=ckpt2
            )
    finally:
        # Lightning skips the plan's teardown when the fit raises: the frozen latent tables and decoders would
        # stay frozen, and the model could not train again
        plan2.teardown("fit")
    metrics["stage2"], metrics["wall_time_s"]["stage2"] = _stage_metrics(
        trainer2, run_dir, "stage2", time.perf_counter() - t0, ckpt2 is not None, step2
    )
    metrics["epochs"]["stage2"] = plan2.epoch_rows
    # encoders fitted to diverged latents fail too, and lowering lr_encoder would not help
    if not failed["stage1"]:
        held_out = {m: int(data.present(m)[val_idx].sum()) for m in module.modalities}
        failed["stage2"] = warn_if_diverged(
            2, plan2.epoch_rows, metrics["stage2"], held_out=held_out
        )
    # kept with the model: the report says so beside verdicts read from it
    metrics["failed"] = {stage: why for stage, why in failed.items() if why}
    fit_mix_weights(module, data, train_idx, seed=cfg.seed)
    if trainer2.world_size > 1:
        metrics["ddp"] = {"world_size": trainer2.world_size, "global_rank": trainer2.global_rank}
    module.eval()
    return metrics


def _log_settings(trainer: L.Trainer, module: VennModule, cfg: TrainConfig) -> None:
    """The model's and the training's settings, to every logger of the stage (W&B's run config, CSVLogger's
    hparams.yaml), as scvi-tools' plans log their hyperparameters."""
    if not trainer.loggers:
        return
    # flat "model/<field>" keys: a run config of its own (the command line's nested one) stays as it is
    settings = {f"model/{k}": v for k, v in asdict(module.cfg).items()}
    # trainer_kwargs may hold objects (callbacks)
    settings |= {f"trainer/{k}": v for k, v in asdict(cfg).items() if k != "trainer_kwargs"}
    settings = {
        k: v if isinstance(v, (int, float, str, bool, type(None))) else str(v)
        for k, v in settings.items()
    }
    for logger in trainer.loggers:
        logger.log_hyperparams(settings)


# Stage 1: a loss that ends above its lowest (an epoch's mean, or its first step's) by more than this fraction of
# that loss's size, or of its fall before it, has diverged: a healthy stage 1 only falls (no term of its objective
# ramps up), and a finite blow-up gives no NaN to stop at. Measured from the loss's own scale, as Gaussian NLLs can
# be negative.
DIVERGED_RISE = 0.5
# Stage 2: an encoder that places held-out cells no better than their mean latent would has failed (a learning
# rate too high collapses it onto about the mean); its loss is no guide there: with partly paired data an epoch's
# mean moves with how many batches hold a modality's cells.
ENCODERS_LOST = 1.0
# the held-out cells with a modality its encoder's score needs before it is read: on fewer, 1 - R^2 is noise, and
# only an encoder ENCODERS_LOST_FEW times worse than the mean (on at least FEWEST_HELD_OUT cells) has surely failed
MIN_HELD_OUT = 50
FEWEST_HELD_OUT, ENCODERS_LOST_FEW = 10, 10.0
RATES = {1: "lr_latent and lr_network", 2: "lr_encoder"}


def warn_if_diverged(
    stage: int,
    rows: list[dict],
    metrics: dict,
    first_loss: float | None = None,
    held_out: dict[str, int] | None = None,
) -> str:
    """Warn, naming the fix, when stage 1's training loss ended well above its lowest (``first_loss``: its first
    step's) or a stage-2 encoder places the held-out cells' shared latents no better than their mean would (where
    ``held_out``, the held-out cells per modality, counts at least ``MIN_HELD_OUT``; on ``FEWEST_HELD_OUT`` to
    ``MIN_HELD_OUT`` of them, ``ENCODERS_LOST_FEW`` times worse); what failed ("" if nothing did)."""
    why = ""
    if stage == 1:
        key = "stage1/train/loss_epoch"
        losses = [(f"epoch {r['epoch']}", r[key]) for r in rows if np.isfinite(r.get(key, np.nan))]
        if first_loss is not None and np.isfinite(first_loss):
            losses.insert(0, ("its first step", first_loss))
        if len(losses) > 1:
            where, best = min(losses, key=lambda t: t[1])
            first, last = losses[0][1], losses[-1][1]
            if last - best > DIVERGED_RISE * max(abs(best), first - best):
                why = f"its training loss ended at {last:.4g}, above its lowest ({best:.4g}, {where})"
    else:
        prefix = "stage2/val/latent_shared/"
        unexplained = {
            k[len(prefix) :]: v
            for k, v in metrics.items()
            # a modality's own encoder: not a region's block ("shared:a+b/m") or the joint encoder
            if k.startswith(prefix) and "/" not in k[len(prefix) :] and k[len(prefix) :] != "joint"
        }
        counts = held_out or {}

        def failed(v: float, n: int) -> bool:
            if n >= MIN_HELD_OUT:
                return v >= ENCODERS_LOST
            return n >= FEWEST_HELD_OUT and v >= ENCODERS_LOST_FEW

        lost = sorted(
            m
            for m, v in unexplained.items()
            if not np.isnan(v) and failed(v, counts.get(m, MIN_HELD_OUT))
        )
        if lost:
            why = (
                f"the encoders of {lost} place the held-out cells' shared latents no better than their mean would "
                f"(fraction not explained {', '.join(f'{unexplained[m]:.3g}' for m in lost)})"
            )
    if why and rank_zero_only.rank == 0:
        warnings.warn(
            f"Stage {stage} failed: {why}. Its latents and any new cells' embeddings are not "
            f"to be trusted. Train again with lower learning rates ({RATES[stage]}) or, where the losses were "
            "still falling, more epochs (model.epoch_history() shows the losses by epoch).",
            VennCellTrainingWarning,
            stacklevel=user_stacklevel(),
        )
    return why


def _stage_metrics(
    trainer: L.Trainer, run_dir: Path, stage: str, seconds: float, resumed: bool, step: int
) -> tuple[dict[str, float], float]:
    """A finished stage's last metrics and wall time, kept beside its checkpoints: a run resumed after the stage
    had finished trains nothing in it, so its own metrics would be empty and its wall time ~0 s."""
    path = Path(run_dir) / "checkpoints" / f"{stage}_metrics.json"
    if resumed and _batches_done(trainer) == step and path.exists():
        kept = json.loads(path.read_text())
        return kept["metrics"], kept["seconds"]
    got = _numbers(trainer.callback_metrics)
    if rank_zero_only.rank == 0:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps({"metrics": got, "seconds": seconds}))
    return got, seconds


def _numbers(d) -> dict[str, float]:
    return {k: float(v) for k, v in d.items() if torch.is_tensor(v) and v.numel() == 1}
