"""Which cells train the networks and which are held out (their latents are fitted, their loss never reaches a
network: honest validation)."""

from __future__ import annotations

import numpy as np

VALIDATION_FRACTION = (
    0.1  # the default share of held-out cells (VennCell(...) and the CLI's data groups)
)


def validation_split(n_cells: int, fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of the training cells: ``round(fraction * n_cells)`` cells, drawn by ``seed``, are held out.

    Parameters
    ----------
    n_cells
        Number of cells.
    fraction
        Fraction of the cells to hold out.
    seed
        Seed of the draw; a model built with the same seed holds out the same cells.
    """
    is_train = np.ones(n_cells, dtype=bool)
    is_train[
        np.random.default_rng(seed).permutation(n_cells)[: int(round(fraction * n_cells))]
    ] = False
    return is_train
