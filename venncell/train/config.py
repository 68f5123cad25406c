"""How the two stages are trained: ``TrainConfig``, the one place its defaults are written and checked."""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any

from venncell.data.validate import VennCellInputError, check_range, did_you_mean

# float32 only: the count likelihoods' sparse sums fail under autocast (float16 vs float32 index_add), stage 1's
# held-out-only batches step no gradient through AMP's scaler, bf16 diverges in stage 1 and float64 modules meet
# float32 batches after training
PRECISIONS = ("32-true", "32")
PROGRESS_BARS = ("rich", "tqdm", "none")

# Host-bound GPU steps cost about the same at 1,024 cells as at 128, so large data take larger batches; a latent row
# moves once per epoch at any batch size, and quality holds with fewer than 50 batches per epoch (experiments/batch_size).
SMALLEST_BATCH, LARGEST_BATCH, BATCHES_PER_EPOCH = 128, 1024, 50
STRATEGIES = ("auto", "ddp")

# An epoch takes the networks through every cell, so larger data give them more steps per epoch: past
# FULL_EPOCHS_CELLS cells the default epochs fall in proportion to the cells, to a floor that still moves every
# latent row enough times (experiments/epochs_at_scale).
STAGE1_EPOCHS, STAGE2_EPOCHS = 100, 40
FULL_EPOCHS_CELLS = 20_000
FEWEST_STAGE1_EPOCHS, FEWEST_STAGE2_EPOCHS = 10, 4


# Trainer keywords the two-stage schedule sets itself: given in trainer_kwargs they would silently override it
EPOCHS = (
    "set stage1_epochs and stage2_epochs instead (train(stage1_epochs=...), trainer.stage1_epochs=... on the "
    "command line)"
)
SCHEDULE_OWNS = {
    "max_epochs": EPOCHS,
    "min_epochs": EPOCHS,
    "max_steps": EPOCHS,
    "min_steps": EPOCHS,
    "default_root_dir": "set run_dir instead (train(run_dir=...); on the command line the run's folder is "
    "hydra.run.dir)",
    "enable_progress_bar": "set progress_bar instead (train(progress_bar=...), trainer.progress_bar=... on the "
    "command line)",
    "use_distributed_sampler": "leave it out: VennCell's own samplers give each process its share of the cells",
    # VennCell steps its optimisers itself (manual optimisation), which Lightning's clipping and accumulation refuse
    "gradient_clip_val": "set grad_clip instead (train(grad_clip=...), trainer.grad_clip=... on the command line)",
    "gradient_clip_algorithm": "leave it out: grad_clip clips the gradients' norm",
    "accumulate_grad_batches": "leave it out: VennCell steps its optimisers once per batch; a larger batch_size "
    "averages over more cells",
}


def check_trainer_kwargs(extra) -> None:
    """``trainer_kwargs`` must be ``lightning.Trainer`` keywords that neither the schedule nor a ``TrainConfig``
    field sets (those would be overridden without a word)."""
    from collections.abc import Mapping

    if not isinstance(extra, Mapping):
        raise VennCellInputError(
            f"trainer_kwargs must be a dict of lightning.Trainer keywords, got {type(extra).__name__}."
        )
    if not extra:
        return
    import inspect

    import lightning as L

    ours = {f.name for f in fields(TrainConfig)} - {"trainer_kwargs", "strategy"}
    for key in extra:
        if key in SCHEDULE_OWNS or key in ours:
            fix = SCHEDULE_OWNS.get(
                key, f"set {key} instead (train({key}=...), trainer.{key}=... on the command line)"
            )
            raise VennCellInputError(
                f"trainer_kwargs['{key}'] would override VennCell's own setting; {fix}."
            )
    known = set(inspect.signature(L.Trainer.__init__).parameters) - {"self"}
    unknown = sorted(set(extra) - known)
    if unknown:
        raise VennCellInputError(
            f"trainer_kwargs {unknown} are not lightning.Trainer keywords{did_you_mean(unknown, known)}; "
            "VennCell's own training options go to train(...) directly."
        )


def default_batch_size(n_cells: int) -> int:
    """The batch size ``TrainConfig(batch_size=None)`` trains ``n_cells`` cells with: 128, doubled up to 1,024 while
    an epoch keeps at least ``BATCHES_PER_EPOCH`` batches (12,800 cells take 256, 51,200 take 1,024)."""
    size = SMALLEST_BATCH
    while size < LARGEST_BATCH and n_cells >= 2 * size * BATCHES_PER_EPOCH:
        size *= 2
    return size


def default_epochs(n_cells: int) -> tuple[int, int]:
    """The epochs of stage 1 and stage 2 that ``TrainConfig(stage1_epochs=None, stage2_epochs=None)`` trains
    ``n_cells`` cells for: 100 and 40 up to 20,000 cells, then in proportion to 20,000 / cells, at least 10 and 4
    (100,000 cells: 20 and 8)."""
    scale = min(1.0, FULL_EPOCHS_CELLS / max(1, n_cells))
    return (
        max(FEWEST_STAGE1_EPOCHS, round(STAGE1_EPOCHS * scale)),
        max(FEWEST_STAGE2_EPOCHS, round(STAGE2_EPOCHS * scale)),
    )


@dataclass
class TrainConfig:
    """Training of both stages (``model.train(**fields)``, ``trainer.<field>=`` on the command line).

    Parameters
    ----------
    stage1_epochs, stage2_epochs
        Epochs of stage 1 (latents and decoders) and stage 2 (encoders). None: ``default_epochs`` of the number of
        cells, 100 and 40 up to 20,000 cells and fewer beyond (100,000 cells: 20 and 8; experiments/epochs_at_scale).
    batch_size
        Cells per mini-batch (per process under DDP). None: ``default_batch_size`` of the number of cells, 128 up
        to 12,799 cells and 1,024 from 51,200 (experiments/batch_size).
    lr_network, lr_latent, lr_encoder
        Learning rates of the networks, of the per-cell latent tables (row-wise Adam: a row moves about ``lr`` per
        epoch) and of the stage-2 encoders.
    lr_anneal
        Fraction of stage 1's epochs, at its end, over which the networks' and latent tables' learning rates fall
        to 0 (a cosine): the per-cell latents settle rather than end on their last noisy step. 0: constant rates.
    grad_clip
        Clip of the networks' gradient norm (0 = off).
    seed
        Seed of every random draw of training (the model's own seed by default).
    accelerator, devices, strategy, num_nodes, precision
        Passed to ``lightning.Trainer``; ``strategy="ddp"`` shards stage 1's latent tables by rank (several
        ``devices`` or ``num_nodes`` with ``strategy="auto"`` train with it; no other strategy). Precision is
        float32 (``"32-true"``) only.
    process_group_backend, find_unused_parameters
        DDP only: the process-group backend (None = nccl on GPU, gloo on CPU) and whether DDP looks for unused
        parameters (the norm here: a rank's batch may lack a modality or training cells).
    progress_bar
        ``rich``, ``tqdm`` or ``none`` (``True`` / ``False``: ``rich`` / ``none``). ``rich`` draws a live bar in a
        terminal or notebook and prints a line per epoch where output goes to a file or pipe.
    log_every_n_steps, check_val_every_n_epoch
        Logging interval (steps) and stage-2 validation interval (epochs).
    limit_train_batches
        Batches per epoch (None = all; a float = a fraction).
    data_on_device
        Hold the data on the training device and assemble every training batch there (``venncell.data.resident``):
        no DataLoader, no per-step copies. None: whenever it can, i.e. one process, ``num_workers=0``, data in
        memory without per-batch image reads and, on an accelerator, within half its free memory. False: batches
        from a DataLoader. Either way the batches, and so the model, are the same.
    num_workers, pin_memory
        Batch-assembly processes (in-memory data only; they imply the DataLoader) and page-locked batches
        (accelerators only).
    num_threads
        CPU threads of each training process. None: ``OMP_NUM_THREADS`` where set, else the cores no other
        process is using (load), shared among this job's processes, at most 4, and 1 on a GPU
        (``venncell.train.threads``). Latents are bitwise reproducible for a fixed count; another count changes
        their last float digits.
    trainer_kwargs
        Further ``lightning.Trainer`` keywords.
    """

    stage1_epochs: int | None = None
    stage2_epochs: int | None = None
    batch_size: int | None = None
    lr_network: float = 1e-3
    lr_latent: float = 3e-2
    lr_encoder: float = 1e-3
    lr_anneal: float = 0.0
    grad_clip: float = 10.0
    seed: int = 0
    accelerator: str = "cpu"
    devices: Any = 1
    strategy: str = "auto"
    num_nodes: int = 1
    process_group_backend: str | None = None
    find_unused_parameters: bool = True
    precision: str = "32-true"
    progress_bar: str = "rich"
    log_every_n_steps: int = 10
    check_val_every_n_epoch: int = 5
    limit_train_batches: Any = None
    data_on_device: bool | None = None
    num_workers: int = 0
    pin_memory: bool = False
    num_threads: int | None = None
    trainer_kwargs: dict = field(default_factory=dict)

    def __post_init__(self):
        for name, low in (("stage1_epochs", 1), ("stage2_epochs", 1), ("batch_size", 2)):
            if getattr(self, name) is not None:  # None: derived from the number of cells
                check_range(f"trainer.{name}", getattr(self, name), low, integer=True)
        for name, low in (
            ("num_workers", 0),
            ("num_nodes", 1),
            ("log_every_n_steps", 1),
            ("check_val_every_n_epoch", 1),
            ("seed", 0),
        ):
            check_range(f"trainer.{name}", getattr(self, name), low, integer=True)
        for name in ("lr_network", "lr_latent", "lr_encoder"):
            check_range(f"trainer.{name}", getattr(self, name), 0.0)
        check_range("trainer.grad_clip", self.grad_clip, 0.0)
        check_range("trainer.lr_anneal", self.lr_anneal, 0.0, 1.0)
        if self.num_threads is not None:
            check_range("trainer.num_threads", self.num_threads, 1, integer=True)
        if str(self.precision) not in PRECISIONS:
            raise VennCellInputError(
                f"Config value trainer.precision={self.precision!r} is not supported: VennCell trains in "
                "float32 (its count likelihoods and latent tables are not written for mixed or double "
                "precision). Use trainer.precision='32-true'."
            )
        # scvi-tools' progress_bar=False / True; on the command line Hydra hands this str field "False" / "True"
        if str(self.progress_bar).lower() in ("true", "false"):
            self.progress_bar = "rich" if str(self.progress_bar).lower() == "true" else "none"
        if self.progress_bar not in PROGRESS_BARS:
            raise VennCellInputError(
                f"Config value trainer.progress_bar={self.progress_bar!r} must be one of {list(PROGRESS_BARS)}."
            )
        if self.limit_train_batches is not None:
            check_range("trainer.limit_train_batches", self.limit_train_batches, 0.0)
        check_trainer_kwargs(self.trainer_kwargs)
        devices = self.devices
        if not (
            devices in ("auto", -1)
            or (isinstance(devices, int) and not isinstance(devices, bool) and devices > 0)
            or (
                isinstance(devices, (list, tuple))
                and devices
                and all(isinstance(d, int) and d >= 0 for d in devices)
            )
        ):
            raise VennCellInputError(
                f"Config value trainer.devices={devices!r} must be a positive count, 'auto', or a "
                "list of device indices."
            )
        if self.strategy not in STRATEGIES:
            raise VennCellInputError(
                f"Config value trainer.strategy={self.strategy!r} is not supported: VennCell trains on one device "
                "('auto') or with one process per device ('ddp', which shards stage 1's latent tables by rank and "
                "lets a rank's batch leave parameters unused). Use trainer.strategy='ddp'."
            )
        # several devices asked for: Lightning's "auto" would pick a DDP that refuses unused parameters
        several = (isinstance(self.devices, int) and self.devices > 1) or (
            isinstance(self.devices, (list, tuple)) and len(self.devices) > 1
        )
        if self.strategy == "auto" and (several or self.num_nodes > 1):
            self.strategy = "ddp"
        if self.accelerator not in ("cpu", "gpu", "cuda", "mps", "tpu", "auto"):
            raise VennCellInputError(
                f"Config value trainer.accelerator={self.accelerator!r} must be one of cpu, gpu, cuda, mps, tpu, auto."
            )

    def for_cells(self, n_cells: int) -> TrainConfig:
        """This config with the batch size and epochs it trains ``n_cells`` cells with (``default_batch_size`` and
        ``default_epochs`` where None)."""
        epochs1, epochs2 = default_epochs(n_cells)
        return replace(
            self,
            batch_size=self.batch_size or default_batch_size(n_cells),
            stage1_epochs=self.stage1_epochs or epochs1,
            stage2_epochs=self.stage2_epochs or epochs2,
        )

    @classmethod
    def from_kwargs(cls, **kwargs) -> tuple[TrainConfig, dict]:
        """A config from keyword arguments; keywords that are not fields are returned for ``lightning.Trainer``."""
        known = {f.name for f in fields(cls)}
        extra = {k: kwargs.pop(k) for k in list(kwargs) if k not in known}
        return cls(**kwargs), extra


# Named variants of the defaults: ``trainer=<name>`` on the command line.
PRESETS = {
    "default": {},
    # a few epochs: tests and smoke runs
    "fast": {
        "stage1_epochs": 3,
        "stage2_epochs": 2,
        "progress_bar": "none",
        "check_val_every_n_epoch": 1,
    },
    # multi-GPU data parallel (NCCL), stage 1's latent table sharded by rank (docs/scaling.md)
    "ddp": {"accelerator": "gpu", "devices": "auto", "strategy": "ddp", "progress_bar": "tqdm"},
    # DDP on CPU: 2 processes over gloo, for CI and for trying the distributed path without GPUs
    "ddp_cpu": {
        "accelerator": "cpu",
        "devices": 2,
        "strategy": "ddp",
        "process_group_backend": "gloo",
        "progress_bar": "none",
    },
}
