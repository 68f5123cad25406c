"""Data: the registry of modalities, reading and aligning MuData, samplers, transforms and the synthetic generator.

The bottom layer: imports nothing else of VennCell's.
"""

from venncell.data.dataset import Batch, MultiModalData, make_loader
from venncell.data.panels import split_panels
from venncell.data.registry import DataRegistry, fit_registry, setup_options
from venncell.data.spec import ModalitySpec
from venncell.data.split import validation_split
from venncell.data.synthetic import SyntheticTruth, make_synthetic, truth_from_mudata
from venncell.data.validate import VennCellInputError, VennCellInputWarning

__all__ = [
    "Batch",
    "DataRegistry",
    "ModalitySpec",
    "MultiModalData",
    "SyntheticTruth",
    "VennCellInputError",
    "VennCellInputWarning",
    "fit_registry",
    "make_loader",
    "make_synthetic",
    "setup_options",
    "split_panels",
    "truth_from_mudata",
    "validation_split",
]
