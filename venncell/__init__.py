"""VennCell: one shared latent plus one private latent per modality for multi-modal single cells."""

from venncell.data.files import package_version
from venncell.data.split import validation_split
from venncell.data.synthetic import make_synthetic
from venncell.data.validate import (
    VennCellInputError,
    VennCellInputWarning,
    VennCellTrainingWarning,
)
from venncell.model import VennCell
from venncell.train.errors import TrainingInterrupted

__version__ = package_version()

__all__ = [
    "TrainingInterrupted",
    "VennCell",
    "VennCellInputError",
    "VennCellInputWarning",
    "VennCellTrainingWarning",
    "__version__",
    "make_synthetic",
    "validation_split",
]
