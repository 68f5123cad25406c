"""Training: Lightning plans for the two stages, the schedule that runs them, test-time refinement.

The plans and the schedule load on first use: they import Lightning, which ``import venncell`` does not need.
"""

from importlib import import_module

from venncell.train.config import PRESETS, TrainConfig
from venncell.train.errors import NonFiniteLossError, TrainingFailedError, TrainingInterrupted

_LAZY = {"Stage1Plan": "plans", "Stage2Plan": "plans", "run_two_stage": "schedule"}

__all__ = [
    "PRESETS",
    "NonFiniteLossError",
    "Stage1Plan",
    "Stage2Plan",
    "TrainConfig",
    "TrainingFailedError",
    "TrainingInterrupted",
    "run_two_stage",
]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(f"venncell.train.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'venncell.train' has no attribute {name!r}")
