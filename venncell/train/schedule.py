"""The two-stage schedule: one function used by both the Python API and the Hydra CLI."""

from __future__ import annotations

import csv
import logging
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint, RichProgressBar, TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.utilities import rank_zero_only

from venncell.data.backed import chunk_groups, shuffle_chunks
from venncell.data.dataset import CellBatches, MultiModalData, batch_loader, make_loader
from venncell.model.venn import VennModule
from venncell.train.plans import Stage1Plan, Stage2Plan, owned_cells

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    stage1_epochs: int = 100
    stage2_epochs: int = 40
    batch_size: int = 128
    lr_network: float = 1e-3
    lr_latent: float = 1e-2  # RowAdam: a row moves ~lr per epoch; see venncell/train/row_adam.py
    lr_encoder: float = 1e-3
    grad_clip: float = 10.0
    seed: int = 0
    accelerator: str = "cpu"
    devices: int | str = 1
    strategy: str = "auto"
    num_nodes: int = 1
    # strategy=ddp only: None = Lightning's default for the device (nccl on GPU, gloo on CPU). Unused
    # parameters are the norm here (a rank's batch may lack a modality or have no training cells; the
    # apollo preset leaves encoders out of stage 1), so DDP must look for them.
    process_group_backend: str | None = None
    find_unused_parameters: bool = True
    precision: str = "32-true"
    progress_bar: str = "rich"  # rich | tqdm | none
    log_every_n_steps: int = 10
    check_val_every_n_epoch: int = 5
    limit_train_batches: float | int | None = None
    num_workers: int = 0  # batch-assembly processes (training batches; in-memory data only)
    pin_memory: bool = False  # page-locked batches for the host-to-device copy (accelerators only)
    trainer_kwargs: dict = field(default_factory=dict)


def _bar_metrics(items: dict) -> dict:
    """The progress bar's columns: the stage is in the bar's description already, and Lightning truncates long names
    ("stage1/train/loss_step" and "..._epoch" both showed as "stage1/train/los…"); the logger's version (the stage
    name, shown as a cut "v_num") says nothing."""
    return {k.replace("/train/", "/").split("/", 1)[-1].removesuffix("_step"): v for k, v in items.items() if k != "v_num"}


class _RichBar(RichProgressBar):
    def get_metrics(self, trainer, pl_module):
        return _bar_metrics(super().get_metrics(trainer, pl_module))


class _TQDMBar(TQDMProgressBar):
    def get_metrics(self, trainer, pl_module):
        return _bar_metrics(super().get_metrics(trainer, pl_module))


def _progress(kind: str) -> list[Callback]:
    if kind == "rich":
        return [_RichBar(leave=True)]
    if kind == "tqdm":
        return [_TQDMBar()]
    return []


class RankBatches(CellBatches):
    """One DDP rank's mini-batches. Every rank yields the same number of batches (DDP ranks must take the
    same number of steps, or they wait on each other's all-reduce forever).

    ``fixed_shard=True`` (stage 1): the rank always gets the same cells (``owned_cells``), so only it updates
    their latent rows. ``False`` (stage 2): a fresh global permutation per epoch is dealt out, like
    ``DistributedSampler``. Order depends only on (seed, epoch), as in ``CellBatches``, so resume is exact.
    ``chunk_size`` (backed data): cells are dealt by whole reader chunks and shuffled chunk by chunk, as
    ``ChunkedCellBatches`` does in one process, so each rank's disk reads stay contiguous.
    """

    def __init__(self, indices, batch_size: int, shuffle: bool, seed: int, rank: int, world: int, fixed_shard: bool,
                 chunk_size: int | None = None):
        super().__init__(indices, batch_size, shuffle, seed)
        self.rank, self.world, self.fixed_shard = rank, world, fixed_shard
        chunks = np.unique(self.indices // chunk_size) if chunk_size else np.array([])
        # dealing whole chunks needs at least one chunk per rank; fewer chunks than ranks deal cells instead
        self.chunk_size = chunk_size if chunk_size and len(chunks) >= world else None
        if self.chunk_size:  # a rank's share is at most ceil(chunks / world) full chunks
            largest_share = min(len(self.indices), -(-len(chunks) // world) * self.chunk_size)
        else:
            largest_share = -(-len(self.indices) // world)
        self.n_batches = max(1, -(-largest_share // self.batch_size))

    def __iter__(self):
        rng = np.random.default_rng((self.seed, self.epoch))
        if self.chunk_size:
            if self.fixed_shard:
                owned = owned_cells(len(self.indices), self.rank, self.world, self.chunk_size)
                groups = chunk_groups(self.indices[owned], self.chunk_size)
            else:
                groups = chunk_groups(self.indices, self.chunk_size)
                if self.shuffle:
                    groups = [groups[g] for g in rng.permutation(len(groups))]
                groups = groups[self.rank :: self.world]
            mine = np.concatenate(shuffle_chunks(groups, rng) if self.shuffle else groups)
        elif self.fixed_shard:
            mine = self.indices[owned_cells(len(self.indices), self.rank, self.world)]
            if self.shuffle:
                mine = mine[rng.permutation(len(mine))]
        else:
            order = self.indices[rng.permutation(len(self.indices))] if self.shuffle else self.indices
            mine = order[self.rank :: self.world]
        # array_split, not fixed-size chunks: shares differ by one cell, batch counts must not
        yield from np.array_split(mine, self.n_batches)

    def __len__(self) -> int:
        return self.n_batches


def _loader(data: MultiModalData, indices, seed: int, trainer: L.Trainer, fixed_shard: bool, cfg: TrainConfig):
    """A stage's shuffled training batches of ``cfg.batch_size`` cells (per rank under DDP)."""
    if trainer.world_size == 1:  # the single-process path stays bit-identical to earlier releases
        return make_loader(data, indices, cfg.batch_size, True, seed, cfg.num_workers, cfg.pin_memory)
    sampler = RankBatches(indices, cfg.batch_size, True, seed, trainer.global_rank, trainer.world_size, fixed_shard,
                          data.chunk_size)
    return batch_loader(data, sampler, cfg.num_workers, cfg.pin_memory)


def _strategy(cfg: TrainConfig):
    if cfg.strategy != "ddp":
        return cfg.strategy
    from lightning.pytorch.strategies import DDPStrategy

    return DDPStrategy(process_group_backend=cfg.process_group_backend,
                       find_unused_parameters=cfg.find_unused_parameters)


def _trainer(cfg: TrainConfig, stage: str, epochs: int, run_dir: Path, loggers) -> tuple[L.Trainer, ModelCheckpoint]:
    # save_on_train_epoch_end: every epoch, also in stage 2, whose validation (every check_val_every_n_epoch epochs)
    # would otherwise decide when a checkpoint is written, so a killed run could lose several epochs
    ckpt = ModelCheckpoint(dirpath=run_dir / "checkpoints" / stage, filename="epoch{epoch:04d}",
                           auto_insert_metric_name=False, save_last=True, save_top_k=1, every_n_epochs=1,
                           save_on_train_epoch_end=True)
    callbacks = [ckpt, *_progress(cfg.progress_bar)]
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
    kwargs.update(cfg.trainer_kwargs or {})
    return quiet_trainer(**kwargs), ckpt


def quiet_trainer(**kwargs) -> L.Trainer:
    """``L.Trainer(**kwargs)`` without the banner Lightning logs at every Trainer (accelerators found, an advert for
    its cloud logger): train() builds two, refine() and attribution more. Lightning's warnings still show."""
    info = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    level = info.level
    info.setLevel(max(level, logging.WARNING))
    try:
        return L.Trainer(**kwargs)
    finally:
        info.setLevel(level)


def _resume_path(run_dir: Path, stage: str, resume: bool) -> tuple[str | None, int]:
    """The newest readable checkpoint of a stage and its global step (None, 0 without one): a kill during a
    checkpoint write can leave ``last.ckpt`` truncated, and then the per-epoch copy beside it is used instead."""
    if not resume:
        return None, 0
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
        log.info("Resuming %s from %s", stage, path)
        return str(path), _logged_step(ckpt)
    return None, 0


def _logged_step(ckpt: dict) -> int:
    """The step the loggers had reached at the checkpoint. Not ``global_step``: that counts optimiser steps, two per
    batch in stage 1 (networks and latents), while the logged step counts batches."""
    try:
        return int(ckpt["loops"]["fit_loop"]["epoch_loop.state_dict"]["_batches_that_stepped"])
    except (KeyError, TypeError):
        return int(ckpt.get("global_step", 0))


def _keep_csv_history(trainer: L.Trainer, step: int) -> None:
    """Keeps a resumed stage's CSV log: Lightning's CSV writer deletes an existing metrics.csv when it opens it.

    The rows logged before the checkpoint's logged ``step`` are read first and handed back to the new writer, which
    writes them ahead of the resumed rows; rows logged after the checkpoint are dropped, because the resumed run
    logs those steps again. A row a kill cut short is skipped. Rank 0 only: it alone writes the log.
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
                        kept = {k: (int(float(v)) if k in ("step", "epoch") else float(v))
                                for k, v in row.items() if v != ""}
                    except (TypeError, ValueError):  # a line cut short (None) or garbled by the kill
                        bad += 1
                        continue
                    if kept.get("step", step) < step:
                        rows.append(kept)
        if bad:
            log.warning("Skipped %d damaged row(s) of %s while resuming.", bad, path)
        with warnings.catch_warnings():  # "Previous log files ... will be deleted": not so, they are kept here
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

    Returns the last logged metrics of each stage.
    """
    run_dir = Path(run_dir)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    train_idx = np.flatnonzero(is_train)
    val_idx = np.flatnonzero(~is_train)
    all_idx = np.arange(data.n_cells)

    plan1 = Stage1Plan(module, is_train, cfg.lr_network, cfg.lr_latent, cfg.grad_clip, cfg.seed, data.chunk_size)
    trainer1, _ = _trainer(cfg, "stage1", cfg.stage1_epochs, run_dir, loggers)
    ckpt1, step1 = _resume_path(run_dir, "stage1", resume)
    if resume:
        _keep_csv_history(trainer1, step1)
    t0 = time.perf_counter()
    # every cell, in row order: RankBatches' shard positions are then exactly the rows Stage1Plan gathers
    trainer1.fit(plan1, train_dataloaders=_loader(data, all_idx, cfg.seed, trainer1, True, cfg),
                 ckpt_path=ckpt1)
    metrics = {"stage1": _numbers(trainer1.callback_metrics), "wall_time_s": {"stage1": time.perf_counter() - t0}}
    t0 = time.perf_counter()

    plan2 = Stage2Plan(module, cfg.lr_encoder, seed=cfg.seed)
    trainer2, _ = _trainer(cfg, "stage2", cfg.stage2_epochs, run_dir, loggers)
    # not sharded: every rank scores every held-out cell, so the logged values agree without a sync
    val_loader = make_loader(data, val_idx, 1024, False) if len(val_idx) else None
    train2 = _loader(data, train_idx, cfg.seed + 1, trainer2, False, cfg)
    ckpt2, step2 = _resume_path(run_dir, "stage2", resume)
    if resume:
        _keep_csv_history(trainer2, step2)
    trainer2.fit(plan2, train_dataloaders=train2, val_dataloaders=val_loader, ckpt_path=ckpt2)
    if val_loader is not None:
        trainer2.validate(plan2, dataloaders=val_loader, verbose=False)
    metrics["stage2"] = _numbers(trainer2.callback_metrics)
    metrics["wall_time_s"]["stage2"] = time.perf_counter() - t0
    if trainer2.world_size > 1:
        metrics["ddp"] = {"world_size": trainer2.world_size, "global_rank": trainer2.global_rank}
    module.eval()
    return metrics


def _numbers(d) -> dict[str, float]:
    return {k: float(v) for k, v in d.items() if torch.is_tensor(v) and v.numel() == 1}
