"""Analyses of a trained model: recovery against ground truth."""

from venncell.analysis.recovery import evaluate_recovery, recovery_matrix

__all__ = ["evaluate_recovery", "recovery_matrix"]
