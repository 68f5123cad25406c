"""Data layer: modality specs, validation, aligned sparse batches, synthetic ground truth."""

from venncell.data.dataset import MultiModalData, make_loader
from venncell.data.spec import ModalitySpec
from venncell.data.synthetic import SyntheticTruth, make_synthetic, truth_from_mudata
from venncell.data.validate import VennCellInputError, VennCellInputWarning

__all__ = [
    "ModalitySpec",
    "MultiModalData",
    "SyntheticTruth",
    "VennCellInputError",
    "VennCellInputWarning",
    "make_loader",
    "make_synthetic",
    "truth_from_mudata",
]
