"""VennCell: one shared latent plus one private latent per modality for multi-modal single cells."""

from importlib.metadata import PackageNotFoundError, version

from venncell.data.split import validation_split
from venncell.data.synthetic import make_synthetic
from venncell.data.validate import (
    VennCellInputError,
    VennCellInputWarning,
    VennCellTrainingWarning,
)
from venncell.model import VennCell

try:
    __version__ = version("venncell")
except PackageNotFoundError:  # a source tree that is not installed
    __version__ = "0+unknown"

__all__ = [
    "VennCell",
    "VennCellInputError",
    "VennCellInputWarning",
    "VennCellTrainingWarning",
    "__version__",
    "make_synthetic",
    "validation_split",
]
