"""The errors training raises. Kept free of Lightning so that ``import venncell`` does not load it."""

from __future__ import annotations

import signal
from pathlib import Path


class NonFiniteLossError(RuntimeError):
    """Training produced NaN/inf; the message names the term and the last good checkpoint."""


class TrainingFailedError(RuntimeError):
    """Training ran to its end but failed (``schedule.warn_if_diverged``); the command line raises it after writing
    its outputs, which are kept for inspection."""


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped on a signal (SIGTERM, SIGINT) after finishing its current step; the checkpoints of the
    epochs before it are intact, and ``resume`` continues from them. A ``KeyboardInterrupt``, so that code catching
    ``Exception`` (a retry loop, a notebook cell's handler) does not swallow a stop the user asked for. A model
    that was trained before keeps its earlier networks."""

    def __init__(self, signum: int, run_dir: Path):
        self.signum = signum
        self.exit_code = 128 + signum
        name = signal.Signals(signum).name
        super().__init__(
            f"Training stopped by {name}; its checkpoints are in {run_dir}/checkpoints. Continue with "
            "resume=true in the same run folder and the same training settings (in Python: "
            f"model.train(run_dir={str(run_dir)!r}, resume=True, ...))."
        )
