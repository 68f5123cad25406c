"""Lightning plans for the two stages and the schedule that runs them."""

from venncell.train.plans import NonFiniteLossError, Stage1Plan, Stage2Plan
from venncell.train.schedule import TrainConfig, run_two_stage

__all__ = ["NonFiniteLossError", "Stage1Plan", "Stage2Plan", "TrainConfig", "run_two_stage"]
