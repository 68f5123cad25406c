"""Training progress: a live bar in a terminal or notebook, a line per epoch where output goes to a file or pipe."""

from __future__ import annotations

import sys
import time

from lightning.pytorch.callbacks import Callback, RichProgressBar, TQDMProgressBar
from lightning.pytorch.callbacks.progress.progress_bar import ProgressBar


def _bar_metrics(items: dict) -> dict:
    """The progress bar's columns: the stage is in the bar's description already, and Lightning truncates long names
    ("stage1/train/loss_step" and "..._epoch" both showed as "stage1/train/los…"); the logger's version (the stage
    name, shown as a cut "v_num") says nothing."""
    return {
        k.replace("/train/", "/").split("/", 1)[-1].removesuffix("_step"): v
        for k, v in items.items()
        if k != "v_num"
    }


class _BarMetrics:
    """The bars' metrics, read again only when a logged value can have changed: every ``log_every_n_steps`` batches
    and at epoch ends. Reading a metric tensor waits for the device, and the bars ask after every batch."""

    _key = None
    _cached: dict = {}

    def get_metrics(self, trainer, pl_module):
        steps_per_batch = max(1, len(trainer.optimizers))  # stage 1 steps two optimisers per batch
        key = (
            trainer.current_epoch,
            trainer.global_step // steps_per_batch // trainer.log_every_n_steps,
        )
        if key != self._key:
            self._key, self._cached = key, _bar_metrics(super().get_metrics(trainer, pl_module))
        return self._cached

    def on_train_epoch_end(self, trainer, pl_module):
        self._key = None  # the epoch's means have just been logged
        super().on_train_epoch_end(trainer, pl_module)


def stage_name(pl_module) -> str:
    """How the bars and lines name a fit: "Stage 1", "Stage 2", or the plan's own ``progress_label``
    (refinement)."""
    return getattr(pl_module, "progress_label", None) or f"Stage {pl_module.stage}"


def _epoch_label(trainer, pl_module) -> str:
    """ "Stage 1 epoch 3/100": counted from 1 to max_epochs, as the per-epoch lines print them (Lightning's bars
    show 0 to max_epochs - 1; metrics.csv and ``epoch_history`` index from 0); each stage counts its own."""
    label = f"{stage_name(pl_module)} epoch {trainer.current_epoch + 1}"
    return f"{label}/{trainer.max_epochs}" if trainer.max_epochs is not None else label


class _RichBar(_BarMetrics, RichProgressBar):
    def _get_train_description(self, current_epoch: int) -> str:
        label = _epoch_label(self.trainer, self.trainer.lightning_module)
        # as Lightning pads: a shorter training label than the validation bar's flickers
        return f"{label:{len(self.validation_description)}}"


class _TQDMBar(_BarMetrics, TQDMProgressBar):
    def on_train_epoch_start(self, trainer, pl_module, *args):
        super().on_train_epoch_start(trainer, pl_module, *args)
        self.train_progress_bar.set_description(_epoch_label(trainer, pl_module))


class EpochLines(ProgressBar):
    """One line per finished epoch on stdout: a redrawn bar written to a log file leaves a frame per epoch, cut and
    wrapped at 80 columns. Being Lightning's progress bar, it stands in for the default one, and is off on every
    DDP rank but the first."""

    def __init__(self) -> None:
        super().__init__()
        self._enabled = True
        self._started = time.perf_counter()
        self._validated = False
        # (stage, its name, epoch, validated) of an epoch not yet shown
        self._done: tuple[int, str, int, bool] | None = None

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def _show(self, trainer) -> None:
        # an epoch's means are logged after every callback's on_train_epoch_end, and its checkpoint written: its
        # line waits until the next epoch starts (or training ends), and its time covers both
        if self._done is None or not self._enabled:
            return
        (stage, name, epoch, validated), self._done = self._done, None
        seconds = time.perf_counter() - self._started
        # the epoch's training and held-out losses; stage 2 scores its held-out cells only in some epochs, and
        # an earlier epoch's score would pass for this one's. An epoch stopped before its means were logged
        # (an error in another callback) shows none rather than the epoch before's.
        logged = trainer.callback_metrics if trainer.current_epoch >= epoch else {}
        names = {"loss": f"stage{stage}/train/loss_epoch"}
        if stage == 1 or validated:
            names["held-out"] = f"stage{stage}/val/loss"
        metrics = "  ".join(
            f"{name} {float(logged[key]):.4g}" for name, key in names.items() if key in logged
        )
        print(
            f"{name} epoch {epoch}/{trainer.max_epochs}  {seconds:.1f} s  {metrics}".rstrip(),
            file=sys.stdout,
            flush=True,
        )

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._show(trainer)
        self._started, self._validated = time.perf_counter(), False

    def on_validation_end(self, trainer, pl_module) -> None:
        self._validated = True

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        self._done = (
            pl_module.stage,
            stage_name(pl_module),
            trainer.current_epoch + 1,
            self._validated,
        )

    def on_train_end(self, trainer, pl_module) -> None:
        self._show(trainer)

    def on_exception(self, trainer, pl_module, exception) -> None:
        self._show(trainer)


def display() -> str:
    """Where stdout goes: ``"live"`` (a terminal, or a notebook with ipywidgets: rich redraws a bar there),
    ``"text"`` (a notebook without ipywidgets, where rich shows nothing but a warning and tqdm's text bar works)
    or ``"lines"`` (a file or a pipe)."""
    import importlib.util

    from rich.console import Console

    console = Console()
    if console.is_jupyter:
        return "live" if importlib.util.find_spec("ipywidgets") is not None else "text"
    return "live" if console.is_terminal else "lines"


def progress_bars(kind: str) -> list[Callback]:
    """The callbacks that show ``kind`` (``TrainConfig.progress_bar``) of progress."""
    if kind == "rich":
        where = display()
        if where == "live":
            return [_RichBar(leave=True)]
        return [_TQDMBar() if where == "text" else EpochLines()]
    if kind == "tqdm":
        return [_TQDMBar()]
    return []
