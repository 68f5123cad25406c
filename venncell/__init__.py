"""VennCell: one shared latent plus one private latent per modality for multi-modal single cells."""

import mudata as _md

# Keep modality .obs/.var columns where they are; silences mudata's FutureWarning on every update().
_md.set_options(pull_on_update=False)

from venncell.api import VennCell  # noqa: E402
from venncell.data.synthetic import make_synthetic  # noqa: E402
from venncell.data.validate import VennCellInputError  # noqa: E402

__all__ = ["VennCell", "VennCellInputError", "make_synthetic"]
__version__ = "0.1.0"
