"""The two-stage schedule: one function used by both the Python API and the Hydra CLI."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint, RichProgressBar, TQDMProgressBar

from venncell.data.dataset import MultiModalData, make_loader
from venncell.model.venn import VennModule
from venncell.train.plans import Stage1Plan, Stage2Plan

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    stage1_epochs: int = 100
    stage2_epochs: int = 40
    batch_size: int = 128
    lr_network: float = 1e-3
    lr_latent: float = 5e-2
    lr_encoder: float = 1e-3
    grad_clip: float = 10.0
    seed: int = 0
    accelerator: str = "cpu"
    devices: int | str = 1
    strategy: str = "auto"
    num_nodes: int = 1
    precision: str = "32-true"
    progress_bar: str = "rich"  # rich | tqdm | none
    log_every_n_steps: int = 10
    check_val_every_n_epoch: int = 5
    limit_train_batches: float | int | None = None
    trainer_kwargs: dict = field(default_factory=dict)


def _progress(kind: str) -> list[Callback]:
    if kind == "rich":
        return [RichProgressBar(leave=True)]
    if kind == "tqdm":
        return [TQDMProgressBar()]
    return []


def _trainer(cfg: TrainConfig, stage: str, epochs: int, run_dir: Path, loggers) -> tuple[L.Trainer, ModelCheckpoint]:
    ckpt = ModelCheckpoint(dirpath=run_dir / "checkpoints" / stage, filename="epoch{epoch:04d}",
                           auto_insert_metric_name=False, save_last=True, save_top_k=1, every_n_epochs=1)
    callbacks = [ckpt, *_progress(cfg.progress_bar)]
    kwargs = dict(
        max_epochs=epochs,
        accelerator=cfg.accelerator,
        devices=cfg.devices,
        strategy=cfg.strategy,
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
    )
    if cfg.limit_train_batches is not None:
        kwargs["limit_train_batches"] = cfg.limit_train_batches
    if stage == "stage2":
        kwargs["check_val_every_n_epoch"] = cfg.check_val_every_n_epoch
    kwargs.update(cfg.trainer_kwargs or {})
    return L.Trainer(**kwargs), ckpt


def _resume_path(run_dir: Path, stage: str, resume: bool) -> str | None:
    """The newest readable checkpoint of a stage: a kill during a checkpoint write can leave
    ``last.ckpt`` truncated, and then the per-epoch copy beside it is used instead."""
    if not resume:
        return None
    folder = run_dir / "checkpoints" / stage
    candidates = [folder / "last.ckpt"] + sorted(folder.glob("epoch*.ckpt"), reverse=True)
    for path in candidates:
        if not path.exists():
            continue
        try:
            torch.load(path, map_location="cpu", weights_only=False)
        except Exception as e:  # truncated zip, pickle error, ...
            log.warning("Checkpoint %s is unreadable (%s); trying an older one.", path, e)
            continue
        log.info("Resuming %s from %s", stage, path)
        return str(path)
    return None


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

    plan1 = Stage1Plan(module, is_train, cfg.lr_network, cfg.lr_latent, cfg.grad_clip, cfg.seed)
    trainer1, _ = _trainer(cfg, "stage1", cfg.stage1_epochs, run_dir, loggers)
    t0 = time.perf_counter()
    trainer1.fit(plan1, train_dataloaders=make_loader(data, all_idx, cfg.batch_size, True, cfg.seed),
                 ckpt_path=_resume_path(run_dir, "stage1", resume))
    metrics = {"stage1": _numbers(trainer1.callback_metrics), "wall_time_s": {"stage1": time.perf_counter() - t0}}
    t0 = time.perf_counter()

    plan2 = Stage2Plan(module, cfg.lr_encoder, seed=cfg.seed)
    trainer2, _ = _trainer(cfg, "stage2", cfg.stage2_epochs, run_dir, loggers)
    val_loader = make_loader(data, val_idx, 1024, False) if len(val_idx) else None
    trainer2.fit(plan2, train_dataloaders=make_loader(data, train_idx, cfg.batch_size, True, cfg.seed + 1),
                 val_dataloaders=val_loader, ckpt_path=_resume_path(run_dir, "stage2", resume))
    if val_loader is not None:
        trainer2.validate(plan2, dataloaders=val_loader, verbose=False)
    metrics["stage2"] = _numbers(trainer2.callback_metrics)
    metrics["wall_time_s"]["stage2"] = time.perf_counter() - t0
    module.eval()
    return metrics


def _numbers(d) -> dict[str, float]:
    return {k: float(v) for k, v in d.items() if torch.is_tensor(v) and v.numel() == 1}
