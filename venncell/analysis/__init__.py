"""Analyses of a trained model: recovery against ground truth, attribution (which block carries what), report."""

from venncell.analysis.probes import cv_r2
from venncell.analysis.recovery import evaluate_recovery, recovery_matrix, summarise_recovery

__all__ = ["cv_r2", "evaluate_recovery", "recovery_matrix", "summarise_recovery"]
