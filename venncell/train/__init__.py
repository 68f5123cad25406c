"""Training: Lightning plans for the two stages, the schedule that runs them, test-time refinement."""

from venncell.train.config import PRESETS, TrainConfig
from venncell.train.plans import NonFiniteLossError, Stage1Plan, Stage2Plan
from venncell.train.schedule import run_two_stage

__all__ = [
    "PRESETS",
    "NonFiniteLossError",
    "Stage1Plan",
    "Stage2Plan",
    "TrainConfig",
    "run_two_stage",
]
